"""Consul compatibility: the real `consul` client (py-consul) against a node's HTTPS KV API.

One real one-node cluster serves the module. Each test uses its own key prefix.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import consul
import pytest
from consul.api.kv import KV
from consul.exceptions import ACLDisabled, BadRequest

from tests.nodes import NodeSet

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
]


@pytest.fixture(scope="module")
def kv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KV]:
    nodeset = NodeSet(tmp_path_factory.mktemp("consul"))
    try:
        (node,) = nodeset.form(1)
        client = consul.Consul(
            host="127.0.0.1",
            port=node.api_port,
            token=nodeset.admin_token,
            scheme="https",
            verify=False,
        )
        try:
            yield client.kv
        finally:
            client.http.close()
    finally:
        nodeset.cleanup()


def test_put_and_get(kv: KV) -> None:
    assert kv.put("basic/key", b"\x00binary\xff") is True
    index, entry = kv.get("basic/key")
    assert entry["Key"] == "basic/key"
    assert entry["Value"] == b"\x00binary\xff"
    assert entry["Flags"] == 0
    assert entry["CreateIndex"] == entry["ModifyIndex"] > 0
    assert int(index) == entry["ModifyIndex"]

    assert kv.put("basic/key", "text") is True
    _, updated = kv.get("basic/key")
    assert updated["Value"] == b"text"
    assert updated["CreateIndex"] == entry["CreateIndex"]
    assert updated["ModifyIndex"] > entry["ModifyIndex"]


def test_missing_key_is_index_and_none(kv: KV) -> None:
    index, entry = kv.get("missing/never")
    assert entry is None
    assert int(index) >= 1
    index, entries = kv.get("missing/", recurse=True)
    assert entries is None
    assert int(index) >= 1


def test_cas(kv: KV) -> None:
    assert kv.put("cas/key", b"one", cas=0) is True
    assert kv.put("cas/key", b"again", cas=0) is False
    _, first = kv.get("cas/key")
    assert first["Value"] == b"one"

    assert kv.put("cas/key", b"two", cas=first["ModifyIndex"]) is True
    _, second = kv.get("cas/key")
    assert second["Value"] == b"two"

    assert kv.put("cas/key", b"stale", cas=first["ModifyIndex"]) is False
    _, after = kv.get("cas/key")
    assert after == second


def test_flags(kv: KV) -> None:
    assert kv.put("flags/key", b"v", flags=42) is True
    _, entry = kv.get("flags/key")
    assert entry["Flags"] == 42
    top = 2**64 - 1
    assert kv.put("flags/key", b"v", flags=top) is True
    _, entry = kv.get("flags/key")
    assert entry["Flags"] == top
    with pytest.raises(BadRequest):
        kv.put("flags/key", b"v", flags=2**64)
    _, entry = kv.get("flags/key")
    assert entry["Flags"] == top


def test_recurse_get(kv: KV) -> None:
    for key in ("tree/a", "tree/b/c", "tree/b/d", "treetop"):
        assert kv.put(key, key.encode()) is True
    index, entries = kv.get("tree/", recurse=True)
    assert [e["Key"] for e in entries] == ["tree/a", "tree/b/c", "tree/b/d"]
    assert [e["Value"] for e in entries] == [b"tree/a", b"tree/b/c", b"tree/b/d"]
    assert int(index) == max(e["ModifyIndex"] for e in entries)


def test_keys_with_separator(kv: KV) -> None:
    for key in ("dirs/a", "dirs/b/c", "dirs/b/d", "dirs/e/f/g"):
        assert kv.put(key, b"x") is True
    _, keys = kv.get("dirs/", keys=True, separator="/")
    assert keys == ["dirs/a", "dirs/b/", "dirs/e/"]
    _, keys = kv.get("dirs/", keys=True)
    assert keys == ["dirs/a", "dirs/b/c", "dirs/b/d", "dirs/e/f/g"]


def test_delete_recurse(kv: KV) -> None:
    for key in ("gone/a", "gone/b/c", "gonezo"):
        assert kv.put(key, b"x") is True
    assert kv.delete("gone/", recurse=True) is True
    _, entries = kv.get("gone/", recurse=True)
    assert entries is None
    _, kept = kv.get("gonezo")
    assert kept is not None and kept["Value"] == b"x"


def test_delete_with_cas(kv: KV) -> None:
    assert kv.put("del/key", b"x") is True
    _, entry = kv.get("del/key")
    assert kv.delete("del/key", cas=entry["ModifyIndex"] + 1000) is False
    assert kv.delete("del/key", cas=0) is False
    _, still = kv.get("del/key")
    assert still == entry
    assert kv.delete("del/key", cas=entry["ModifyIndex"]) is True
    _, gone = kv.get("del/key")
    assert gone is None


def test_blocking_get_returns_when_the_key_changes(kv: KV) -> None:
    assert kv.put("watch/key", b"before") is True
    index, entry = kv.get("watch/key")

    def write_later() -> bool:
        time.sleep(0.5)
        return bool(kv.put("watch/key", b"after"))

    with ThreadPoolExecutor(max_workers=1) as pool:
        started = time.monotonic()
        writer = pool.submit(write_later)
        new_index, changed = kv.get("watch/key", index=index, wait="20s")
        elapsed = time.monotonic() - started
        assert writer.result(timeout=10) is True
    assert 0.4 <= elapsed < 10, elapsed
    assert changed["Value"] == b"after"
    assert int(new_index) == changed["ModifyIndex"] > entry["ModifyIndex"]


def test_blocking_get_waits_when_nothing_changes(kv: KV) -> None:
    assert kv.put("quiet/key", b"v") is True
    index, entry = kv.get("quiet/key")
    started = time.monotonic()
    same_index, same = kv.get("quiet/key", index=index, wait="1s")
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 10, elapsed
    assert same_index == index
    assert same == entry


def test_sessions_are_refused(kv: KV) -> None:
    assert kv.put("lock/key", b"v") is True
    with pytest.raises(BadRequest):
        kv.put("lock/key", b"mine", acquire="00000000-0000-0000-0000-000000000000")
    _, entry = kv.get("lock/key")
    assert entry["Value"] == b"v"


def test_wrong_token_is_refused(kv: KV) -> None:
    # py-consul maps HTTP 401 to ACLDisabled
    with pytest.raises(ACLDisabled):
        kv.put("auth/key", b"v", token="not-a-token")
    with pytest.raises(ACLDisabled):
        kv.get("auth/key", token="not-a-token")
    _, entry = kv.get("auth/key")
    assert entry is None
