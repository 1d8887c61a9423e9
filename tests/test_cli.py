"""The CLI as a user runs it, against a real one-node cluster process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nodes import NodeProcess, NodeSet

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeSet, NodeProcess]]:
    nodes = NodeSet(tmp_path_factory.mktemp("cli"))
    try:
        (node,) = nodes.form(1)
        yield nodes, node
    finally:
        nodes.cleanup()


def test_status_human_and_json(single: tuple[NodeSet, NodeProcess]) -> None:
    _, node = single
    human = node.cli("status")
    assert human.returncode == 0, human.stderr
    assert "Leader" in human.stdout and "n1" in human.stdout and "yes" in human.stdout
    data = json.loads(node.cli("status", "--json").stdout)
    assert data["initialized"] is True and data["has_quorum"] is True
    assert [m["name"] for m in data["members"]] == ["n1"]


def test_node_list_and_show(single: tuple[NodeSet, NodeProcess]) -> None:
    _, node = single
    listed = json.loads(node.cli("node", "list", "--json").stdout)["nodes"]
    assert listed[0]["name"] == "n1" and listed[0]["role"] == "leader"
    shown = node.cli("node", "show", "n1")
    assert shown.returncode == 0 and node.raft_addr in shown.stdout
    missing = node.cli("node", "show", "nope")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "Error: no node named 'nope'"


def test_kv_commands(single: tuple[NodeSet, NodeProcess]) -> None:
    _, node = single
    assert node.cli("kv", "put", "cli/a", "one").returncode == 0
    assert node.cli("kv", "put", "cli/b", "-", input=b"from stdin").returncode == 0
    assert node.cli("kv", "get", "cli/a").stdout == "one"
    assert node.cli("kv", "get", "cli/b").stdout == "from stdin"
    listed = json.loads(node.cli("kv", "list", "cli/", "--json").stdout)
    assert [e["Key"] for e in listed] == ["cli/a", "cli/b"]
    index = listed[0]["ModifyIndex"]
    stale = node.cli("kv", "put", "cli/a", "two", "--cas", str(index - 1))
    assert stale.returncode == 1 and "changed since" in stale.stderr
    assert node.cli("kv", "put", "cli/a", "two", "--cas", str(index)).returncode == 0
    assert node.cli("kv", "delete", "cli/", "--recurse").returncode == 0
    gone = node.cli("kv", "get", "cli/a")
    assert gone.returncode == 1 and gone.stderr.strip() == "Error: no key 'cli/a'"
    assert "Traceback" not in gone.stderr


def test_remote_access_over_https(single: tuple[NodeSet, NodeProcess]) -> None:
    nodes, node = single
    token = nodes.admin_token
    assert token
    ok = node.cli(
        "--manager-addr",
        f"127.0.0.1:{node.api_port}",
        "--token",
        token,
        "kv",
        "put",
        "remote/x",
        "1",
    )
    assert ok.returncode == 0, ok.stderr
    ok = node.cli(
        "--addr", f"https://127.0.0.1:{node.api_port}", "--token", token, "kv", "get", "remote/x"
    )
    assert ok.stdout == "1"
    bad = node.cli("--addr", f"https://127.0.0.1:{node.api_port}", "--token", "x.y", "node", "list")
    assert bad.returncode == 1 and bad.stderr.strip() == "Error: the API token is not valid"
    wrong_pin = node.cli(
        "--addr",
        f"https://127.0.0.1:{node.api_port}",
        "--token",
        token,
        "--fingerprint",
        "00" * 32,
        "node",
        "list",
    )
    assert wrong_pin.returncode == 1 and "fingerprint" in wrong_pin.stderr


def test_token_create_prints_token_last(single: tuple[NodeSet, NodeProcess]) -> None:
    _, node = single
    result = node.cli("token", "create", "--expires", "10m")
    assert result.returncode == 0
    assert result.stdout.strip().splitlines()[-1].startswith("sy1.")
    bad = node.cli("token", "create", "--expires", "soon")
    assert bad.returncode == 1 and "invalid duration" in bad.stderr


def test_second_daemon_on_same_data_dir_is_refused(
    single: tuple[NodeSet, NodeProcess], tmp_path: Path
) -> None:
    _, node = single
    result = node.cli(
        "run",
        "--name",
        "n1",
        "--address",
        "127.0.0.1",
        "--api-port",
        str(node.api_port),
        "--raft-port",
        str(node.raft_port),
        "--config",
        "/dev/null",
        timeout=30,
    )
    assert result.returncode == 1
    assert "already running" in result.stderr
    assert node.cli("status").returncode == 0  # the first one still serves


def test_bad_settings_file_is_reported(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("api_port = 'x'\nnot_a_setting = 1\n")
    probe = NodeProcess(tmp_path, "probe")
    result = probe.cli("run", "--config", str(config), timeout=30)
    assert result.returncode == 2
    assert "unknown settings: not_a_setting" in result.stderr


@pytest.mark.parametrize("key", ["p%2Fq", "x?cas=0", "sp ace", "hash#tag"])
def test_kv_keys_with_url_characters_are_kept_as_typed(
    single: tuple[NodeSet, NodeProcess], key: str
) -> None:
    _, node = single
    assert node.cli("kv", "put", key, "v").returncode == 0
    assert node.cli("kv", "get", key).stdout == "v"
    listed = json.loads(node.cli("kv", "list", "--json").stdout)
    assert key in [e["Key"] for e in listed]
    assert node.cli("kv", "delete", key).returncode == 0


def test_config_lists_every_setting_and_says_when_a_value_is_capped(
    single: tuple[NodeSet, NodeProcess],
) -> None:
    from click.testing import CliRunner

    from symphonyd.cli.main import main
    from symphonyd.state.cluster import SETTINGS

    helped = CliRunner().invoke(main, ["config", "--help"])
    assert helped.exit_code == 0
    flat = " ".join(helped.output.split())
    assert all(name in flat for name in SETTINGS), flat
    _, node = single
    capped = node.cli("config", "set", "images.min_replicas", "5")
    assert capped.returncode == 0, capped.stderr
    assert capped.stdout.strip() == "images.min_replicas = 5"
    assert "the cluster has 1 member: each image is held by every member" in capped.stderr
    ratio = node.cli("config", "set", "compute.cpu_overcommit", "2.5")
    assert ratio.returncode == 0 and ratio.stdout.strip() == "compute.cpu_overcommit = 2.5"
    bad = node.cli("config", "set", "compute.cpu_overcommit", "0.5")
    assert bad.returncode == 1 and "must be a number from 1 to 64" in bad.stderr


def test_options_in_the_wrong_place_say_what_to_do(single: tuple[NodeSet, NodeProcess]) -> None:
    """Issue 16, item 7."""
    _, node = single
    after = node.cli("status", "--data-dir", str(node.data_dir))
    assert after.returncode == 2
    assert "--data-dir is a global option: it goes before the command" in after.stderr
    addr = f"https://127.0.0.1:{node.api_port}"
    local = node.cli("--addr", addr, "service", "new")
    assert local.returncode == 2 and "cannot be used with it; run it on the host" in local.stderr
    stray = node.cli("--token", "x.y", "status")
    assert stray.returncode == 0 and "--token is for --addr" in stray.stderr
    tokenless = node.cli("--addr", addr, "node", "list")
    assert tokenless.returncode == 1 and "--token or SYMPHONYD_TOKEN" in tokenless.stderr
    raft = node.cli("--addr", f"https://127.0.0.1:{node.raft_port}", "--token", "x.y",
                    "node", "list", timeout=120)  # fmt: skip
    assert raft.returncode == 1 and "is it the Raft port?" in raft.stderr, raft.stderr


def test_piped_tables_are_one_record_per_line_without_reprs(
    single: tuple[NodeSet, NodeProcess], tmp_path: Path
) -> None:
    """Issue 16, item 4: piped tables were cut at 80 columns and wrapped; show printed
    Python reprs."""
    _, node = single
    (tmp_path / "img").write_bytes(b"x" * 4096)
    made = node.cli("image", "new", "a description long enough to need a wide column", "img",
                    str(tmp_path / "img"), "--json")  # fmt: skip
    assert made.returncode == 0, made.stderr
    fingerprint = json.loads(made.stdout)["fingerprint"]
    listed = node.cli("image", "list")
    lines = listed.stdout.splitlines()
    assert len(lines) == 2 and fingerprint[:16] in lines[1], lines
    shown = node.cli("image", "show", "img")
    assert shown.returncode == 0
    assert "['" not in shown.stdout and "{'" not in shown.stdout, shown.stdout
    assert all(len(line.split()) >= 1 for line in shown.stdout.splitlines())
