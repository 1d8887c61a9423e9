"""The registry of service types: what a type brings, how `enable` checks a request before
anything is recorded, and `service new` through it on a real node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from symphonyd.drivers import Health
from symphonyd.errors import Invalid, SymphonyError
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.service_types import SERVICE_TYPES
from symphonyd.services import Registry, RunningService, ServiceHost, ServiceType
from tests.nodes import NodeSet


class Proposals:
    """Stands in for the cluster at the registry's one seam: it records the entries."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []

    async def propose_ok(self, entry: Entry, **_: Any) -> dict[str, Any]:
        self.entries.append(entry)
        return {"ok": True, "service": entry.body["service"]}


def toy(probe_ok: bool = True) -> ServiceType:
    def check_options(driver: str, options: Any) -> dict[str, Any]:
        if set(options) - {"speed"}:
            raise Invalid(f"the {driver} driver has no option {sorted(options)[0]!r}")
        return dict(options)

    return ServiceType(
        name="toy",
        help="a type made for this test",
        drivers=("fake", "other"),
        default_driver="fake",
        check_options=check_options,
        probe=lambda driver, pool, data_dir, options: Health(probe_ok, "no toys here"),
        start=lambda host: RunningService(verbs=None),
    )


def host(cluster: Proposals, settings: dict[str, Any] | None = None) -> ServiceHost:
    return ServiceHost(cluster, "n1", "/nonexistent", settings or {})  # type: ignore[arg-type]


def test_the_builtin_types_are_registered_once() -> None:
    registry = Registry(SERVICE_TYPES)
    assert registry.names() == ["block", "compute"]
    assert registry.get("block").drivers == ("file", "lvm")
    assert registry.get("compute").drivers == ("libvirt",)
    with pytest.raises(
        Invalid, match=r"unknown service type 'nosuch' \(this node offers: block, compute\)"
    ):
        registry.get("nosuch")
    with pytest.raises(ValueError, match="registered twice"):
        Registry([*SERVICE_TYPES, *SERVICE_TYPES])


async def test_a_new_type_is_enabled_through_the_registry() -> None:
    cluster = Proposals()
    registry = Registry([*SERVICE_TYPES, toy()])
    record = await registry.enable(host(cluster, {"pool": "p1"}), "toy", None, None, None)
    assert (record["type"], record["driver"], record["pool"], record["node"]) == (
        "toy",
        "fake",
        "p1",
        "n1",
    )
    assert [e.type for e in cluster.entries] == [EntryType.SERVICE_CREATE]


async def test_bad_requests_are_refused_before_anything_is_recorded() -> None:
    cluster = Proposals()
    registry = Registry([toy()])
    for kind, driver, pool, options, message in (
        ("toy", "nosuch", None, None, "unknown toy driver 'nosuch' (known: fake, other)"),
        ("toy", None, "bad/pool", None, "pool name"),
        ("toy", None, None, {"colour": "red"}, "no option 'colour'"),
        ("zzz", None, None, None, "unknown service type 'zzz'"),
    ):
        with pytest.raises(Invalid, match=message.replace("(", r"\(").replace(")", r"\)")):
            await registry.enable(host(cluster), kind, driver, pool, options)
    unable = Registry([toy(probe_ok=False)])
    with pytest.raises(Invalid, match="the fake driver cannot work here: no toys here"):
        await unable.enable(host(cluster), "toy", None, None, None)
    assert cluster.entries == []


@pytest.mark.cluster
def test_service_new_goes_through_the_registry(nodeset: NodeSet, tmp_path: Path) -> None:
    (n1,) = nodeset.form(1)
    refused = n1.cli("service", "new", "nosuch")
    assert refused.returncode == 1
    assert "unknown service type 'nosuch' (this node offers: block, compute)" in refused.stderr
    with pytest.raises(SymphonyError, match="unknown block driver 'nosuch'") as caught:
        n1.client().request("POST", "/v1/services", body={"driver": "nosuch"})
    assert caught.value.http_status == 400
    assert n1.client().request("GET", "/v1/services")["services"] == []
    made = n1.cli("service", "new", "--json")
    assert made.returncode == 0, made.stderr
    record = json.loads(made.stdout)
    assert (record["type"], record["driver"]) == ("block", "file")
    shown = n1.client().request("GET", f"/v1/services/{record['id'][:6]}")
    assert shown["health"]["ok"] is True  # reported at once, not at the next check
    schema = n1.client().request("GET", "/v1/openapi.json")
    body = schema["paths"]["/v1/services"]["post"]["requestBody"]["content"]["application/json"]
    name = body["schema"]["$ref"].rsplit("/", 1)[1]
    field = schema["components"]["schemas"][name]["properties"]["type"]
    enums = [choice.get("enum") for choice in field["anyOf"]]  # the type, or null
    assert ["block", "compute"] in enums, field
