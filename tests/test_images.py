"""Image import, listing, content and deletion against a real node, through the CLI and
the HTTP API: in-place imports on the control socket, streamed uploads over HTTPS, and
every kind of bad input the issue names."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from symphonyd.errors import Conflict, Invalid, NotFound
from symphonyd.image import formats
from tests.nodes import NodeProcess, NodeSet, wait_until

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeSet, NodeProcess]]:
    nodes = NodeSet(tmp_path_factory.mktemp("images"))
    try:
        (first,) = nodes.form(1)
        yield nodes, first
    finally:
        nodes.cleanup()


def random_file(path: Path, size: int, seed: int = 1) -> str:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def images_on_disk(n: NodeProcess) -> list[str]:
    return sorted(os.listdir(n.data_dir / "images" / "sha256"))


def temp_files(n: NodeProcess) -> list[str]:
    return sorted(os.listdir(n.data_dir / "images" / "tmp"))


def cli_json(n: NodeProcess, *args: str) -> Any:
    result = n.cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.cluster
def test_import_in_place_lists_shows_and_serves_content(
    node: tuple[NodeSet, NodeProcess], tmp_path: Path
) -> None:
    nodes, n = node
    path = tmp_path / "focal.img"
    digest = random_file(path, 3 * MiB + 17)
    record = cli_json(
        n, "image", "new", "Ubuntu Server 20.04 LTS (Focal Fossa)", "Ubuntu 20.04", str(path)
    )
    assert record["status"] == "ready" and record["fingerprint"] == digest
    assert record["size"] == 3 * MiB + 17 and record["format"] == "raw"
    assert "accepted as raw" in record["status_message"]
    assert record["holders"] == ["n1"]
    assert digest in images_on_disk(n) and temp_files(n) == []
    listed = cli_json(n, "image", "list")["images"]
    assert [r["name"] for r in listed] == ["Ubuntu 20.04"]
    for ref in (record["id"], record["id"][:8], "Ubuntu 20.04"):
        assert cli_json(n, "image", "show", ref)["id"] == record["id"]
    # content, whole and by range
    client = n.https(nodes.admin_token)
    whole = client.request("GET", f"/v1/images/{record['id']}/content")
    assert hashlib.sha256(whole).hexdigest() == digest
    part = _get(
        n, nodes.admin_token, f"/v1/images/{record['id']}/content", {"Range": "bytes=100-199"}
    )
    assert part[0] == 206 and part[1] == path.read_bytes()[100:200]
    assert cli_json(n, "image", "rm", "Ubuntu 20.04")["deleted"] == record["id"]
    wait_until(lambda: images_on_disk(n) == [], 10, "the file to be removed")


@pytest.mark.cluster
def test_upload_over_https_and_same_content_stored_once(
    node: tuple[NodeSet, NodeProcess], tmp_path: Path
) -> None:
    nodes, n = node
    path = tmp_path / "disk.raw"
    digest = random_file(path, 2 * MiB, seed=2)
    remote = ["--addr", f"https://127.0.0.1:{n.api_port}", "--token", str(nodes.admin_token)]
    first = cli_json(n, *remote, "image", "new", "first", "up-1", str(path))
    second = cli_json(n, "image", "new", "second", "up-2", str(path), "--sha256", digest)
    assert first["fingerprint"] == second["fingerprint"] == digest
    assert images_on_disk(n) == [digest]  # stored once
    cli_json(n, "image", "rm", "up-1")
    assert images_on_disk(n) == [digest]  # still used by up-2
    cli_json(n, "image", "rm", "up-2")
    wait_until(lambda: images_on_disk(n) == [], 10, "the shared file to go")


@pytest.mark.cluster
def test_image_new_on_a_terminal_draws_progress_then_the_record(
    node: tuple[NodeSet, NodeProcess], tmp_path: Path
) -> None:
    nodes, n = node
    path = tmp_path / "big.img"
    digest = random_file(path, 48 * MiB, seed=7)
    # On the local socket the node reads the file in place and the CLI follows the import.
    code, text = n.cli_on_terminal("image", "new", "on a terminal", "tty-local", str(path))
    assert code == 0, text
    assert "importing" in text and "\x1b[" in text  # the bar, drawn with escape codes
    assert "tty-local" in text and digest in text and "ready" in text
    # Over HTTPS with the original CLI's flag the file is uploaded, with its own bar.
    code, text = n.cli_on_terminal(
        "--manager-addr",
        f"127.0.0.1:{n.api_port}",
        "--token",
        str(nodes.admin_token),
        "image",
        "new",
        "uploaded from a terminal",
        "tty-upload",
        str(path),
    )
    assert code == 0, text
    assert "uploading" in text and "tty-upload" in text and digest in text
    for name in ("tty-local", "tty-upload"):
        cli_json(n, "image", "rm", name)
    wait_until(lambda: images_on_disk(n) == [], 10, "the file to be removed")


@pytest.mark.cluster
def test_checksum_mismatch_keeps_nothing(node: tuple[NodeSet, NodeProcess], tmp_path: Path) -> None:
    _, n = node
    path = tmp_path / "x.img"
    random_file(path, MiB, seed=3)
    for transport in (
        [],
        ["--manager-addr", f"127.0.0.1:{n.api_port}", "--token", str(node[0].admin_token)],
    ):
        result = n.cli(*transport, "image", "new", "d", "mismatch", str(path), "--sha256", "0" * 64)
        assert result.returncode == 1 and "checksum mismatch" in result.stderr
        assert "Traceback" not in result.stderr
        left = [r for r in cli_json(n, "image", "list")["images"] if r["name"] == "mismatch"]
        if transport:  # an upload is refused whole: not even a record
            assert left == []
        else:  # an import read in place had returned its record: it stays, failed
            assert [(r["status"], r["fingerprint"]) for r in left] == [("failed", None)]
            assert "nothing was kept" in left[0]["status_message"]
            cli_json(n, "image", "rm", left[0]["id"])
        assert images_on_disk(n) == [] and temp_files(n) == []


@pytest.mark.cluster
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["desc", "missing", "/nonexistent/file.img"], "no such file"),
        (["desc\x01", "ctl", "FILE"], "control characters"),
        (["desc", "name\x1b[31m", "FILE"], "control characters"),
        (["desc", "empty", "EMPTY"], "empty"),
        (["desc", "bad-sum", "FILE", "--sha256", "xyz"], "64 hexadecimal"),
    ],
)
def test_bad_input_is_refused_clearly(
    node: tuple[NodeSet, NodeProcess], tmp_path: Path, args: list[str], message: str
) -> None:
    _, n = node
    (tmp_path / "f").write_bytes(b"data")
    (tmp_path / "e").write_bytes(b"")
    args = [
        str(tmp_path / "f") if a == "FILE" else str(tmp_path / "e") if a == "EMPTY" else a
        for a in args
    ]
    before = cli_json(n, "image", "list")["images"]
    result = n.cli("image", "new", *args)
    assert result.returncode == 1, result.stdout
    assert message in result.stderr and "Traceback" not in result.stderr
    assert cli_json(n, "image", "list")["images"] == before


@pytest.mark.cluster
def test_duplicate_name_is_a_conflict(node: tuple[NodeSet, NodeProcess], tmp_path: Path) -> None:
    _, n = node
    path = tmp_path / "a.img"
    random_file(path, 4096, seed=4)
    cli_json(n, "image", "new", "d", "taken", str(path))
    with pytest.raises(Conflict, match="already exists"):
        n.client().request("POST", "/v1/images", body={"path": str(path), "name": "taken"})
    cli_json(n, "image", "rm", "taken")


@pytest.mark.cluster
def test_path_import_is_only_for_the_local_socket(
    node: tuple[NodeSet, NodeProcess], tmp_path: Path
) -> None:
    nodes, n = node
    status, body = _post_json(
        n, nodes.admin_token, "/v1/images", {"path": "/etc/passwd", "name": "steal"}
    )
    assert status == 403 and body["error"]["code"] == "forbidden"


@pytest.mark.cluster
def test_an_interrupted_upload_fails_and_leaves_no_file(node: tuple[NodeSet, NodeProcess]) -> None:
    nodes, n = node
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", n.api_port), timeout=10)
    conn = context.wrap_socket(raw)
    head = (
        f"POST /v1/images?name=cut HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        f"{nodes.admin_token}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {64 * MiB}\r\n\r\n"
    )
    conn.sendall(head.encode() + os.urandom(5 * MiB))
    time.sleep(0.5)
    conn.close()

    def failed() -> dict[str, Any] | None:
        for record in n.client().request("GET", "/v1/images")["images"]:
            if record["name"] == "cut" and record["status"] == "failed":
                return dict(record)
        return None

    record = wait_until(failed, 15, "the interrupted upload to be marked failed")
    assert "interrupted" in record["status_message"]
    assert temp_files(n) == []
    n.client().request("DELETE", f"/v1/images/{record['id']}")


@pytest.mark.cluster
def test_unknown_image_is_404(node: tuple[NodeSet, NodeProcess]) -> None:
    _, n = node
    with pytest.raises(NotFound):
        n.client().request("GET", "/v1/images/no-such-image")
    with pytest.raises(NotFound):
        n.client().request("DELETE", "/v1/images/no-such-image")
    with pytest.raises(Invalid):
        n.client().request("POST", "/v1/images", body={"path": "relative.img", "name": "r"})


@pytest.mark.cluster
def test_status_says_which_copier_is_in_use(node: tuple[NodeSet, NodeProcess]) -> None:
    _, n = node
    status = n.status()
    assert status["image_copier"]["implementation"] in ("native", "python")
    assert "Image copier" in n.cli("status").stdout


def test_formats_are_told_from_the_header(tmp_path: Path) -> None:
    qcow2 = tmp_path / "q"
    qcow2.write_bytes(b"QFI\xfb" + struct.pack(">I", 3) + bytes(16) + struct.pack(">Q", 10 << 30))
    iso = tmp_path / "iso"
    iso.write_bytes(bytes(32769) + b"CD001" + bytes(100))
    mbr = tmp_path / "mbr"
    mbr.write_bytes(bytes(510) + b"\x55\xaa" + bytes(512))
    text = tmp_path / "notes.qcow2"  # the name says qcow2; the content does not
    text.write_bytes(b"hello world\n")
    expected = {
        qcow2: ("qcow2", 10 << 30, True),
        iso: ("iso", 32874, True),
        mbr: ("raw", 1024, True),
        text: ("raw", 12, False),
    }
    for path, (fmt, virtual, recognised) in expected.items():
        fd = os.open(path, os.O_RDONLY)
        try:
            found = formats.detect(fd, path.stat().st_size)
        finally:
            os.close(fd)
        assert (found.format, found.virtual_size, found.recognised) == (fmt, virtual, recognised)


def _get(
    n: NodeProcess, token: str | None, path: str, headers: dict[str, str]
) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", n.api_port, timeout=10, context=ssl._create_unverified_context()
    )
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}", **headers})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _post_json(
    n: NodeProcess, token: str | None, path: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", n.api_port, timeout=10, context=ssl._create_unverified_context()
    )
    try:
        conn.request(
            "POST",
            path,
            body=json.dumps(body),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.cluster
@pytest.mark.privileged
def test_a_disk_that_fills_up_fails_the_import_and_leaves_nothing(tmp_path: Path) -> None:
    """The node's data dir is a 48 MiB tmpfs; an 80 MiB import fills it."""
    import subprocess

    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(small)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (tests run as root): {mounted.stderr}")
    nodes = NodeSet(small)
    try:
        (n,) = nodes.form(1)
        big = tmp_path / "big.img"
        random_file(big, 80 * MiB, seed=5)
        result = n.cli("image", "new", "too big", "big", str(big))
        assert result.returncode == 1 and "disk filled up" in result.stderr
        record = n.client().request("GET", "/v1/images/big")
        assert record["status"] == "failed" and "nothing was kept" in record["status_message"]
        assert images_on_disk(n) == [] and temp_files(n) == []
        # The node and its other data are fine: a small image still imports.
        n.client().request("DELETE", "/v1/images/big")
        little = tmp_path / "little.img"
        random_file(little, MiB, seed=6)
        assert n.cli("image", "new", "ok", "little", str(little)).returncode == 0
    finally:
        nodes.cleanup()
        subprocess.run(["umount", str(small)], check=False)


def _start_upload(n: NodeProcess, token: str | None, name: str, sent: int) -> socket.socket:
    """An upload that declares 64 MiB, sends `sent` bytes, and then stalls (still open)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = context.wrap_socket(socket.create_connection(("127.0.0.1", n.api_port), timeout=10))
    head = (
        f"POST /v1/images?name={name} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {64 * MiB}\r\n\r\n"
    )
    conn.sendall(head.encode() + random.Random(8).randbytes(sent))
    return conn


@pytest.mark.cluster
@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_stopping_the_node_during_an_upload_never_leaves_a_partial_image(
    tmp_path: Path, how: str
) -> None:
    nodes = NodeSet(tmp_path)
    try:
        (n,) = nodes.form(1)
        conn = _start_upload(n, nodes.admin_token, "halfway", 6 * MiB)
        wait_until(
            lambda: any(
                r["name"] == "halfway" for r in n.client().request("GET", "/v1/images")["images"]
            ),
            10,
            "the upload to start",
        )
        if how == "sigterm":
            assert n.stop(timeout=30) == 0, n.log()  # a stalled upload must not block it
        else:
            n.kill()
        conn.close()
        n.start()
        wait_until(lambda: n.status()["has_quorum"], 15, "the node back")

        def settled() -> list[dict[str, Any]] | None:
            found = [
                r
                for r in n.client().request("GET", "/v1/images")["images"]
                if r["name"] == "halfway"
            ]
            return found if all(r["status"] == "failed" for r in found) else None

        records = wait_until(settled, 20, "the interrupted import to be failed or gone")
        assert all(r["fingerprint"] is None for r in records)  # never ready, never a file
        assert temp_files(n) == [] and images_on_disk(n) == []
    finally:
        nodes.cleanup()


@pytest.mark.cluster
def test_deleting_an_import_in_progress_stops_it_cleanly(
    node: tuple[NodeSet, NodeProcess], tmp_path: Path
) -> None:
    """`image rm` of an import still copying: the copy thread is asked to stop and waited
    for before its files close (a closed number reused by the next file must not receive
    the old copy's bytes); nothing is left, and the next import is intact."""
    _, n = node
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        for _ in range(24):
            f.write(random.Random(11).randbytes(16 * MiB))
    started = n.client().request("POST", "/v1/images", body={"path": str(big), "name": "cancel-me"})
    n.client().request("DELETE", f"/v1/images/{started['id']}")
    wait_until(lambda: temp_files(n) == [], 20, "the temp file to go")
    assert all(r["name"] != "cancel-me" for r in n.client().request("GET", "/v1/images")["images"])
    small = tmp_path / "small.img"
    digest = random_file(small, 5 * MiB, seed=12)
    record = cli_json(n, "image", "new", "after", "after-cancel", str(small))
    path = n.data_dir / "images" / "sha256" / digest
    assert record["fingerprint"] == digest
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    cli_json(n, "image", "rm", "after-cancel")


@pytest.mark.cluster
def test_an_import_in_progress_shows_its_bytes_without_writing_them_to_the_log(
    tmp_path: Path,
) -> None:
    """A stalled upload's bytes so far are served from the importing node's memory, on
    that node and on another, and no recorded change of the image carries them."""
    nodes = NodeSet(tmp_path)
    try:
        n1, n2 = nodes.form(2)
        before = int(n1.status()["revision"])
        conn = _start_upload(n1, nodes.admin_token, "halfway", 6 * MiB)
        try:

            def importing(node: NodeProcess) -> dict[str, Any] | None:
                found = [
                    r
                    for r in node.client().request("GET", "/v1/images")["images"]
                    if r["name"] == "halfway"
                ]
                return found[0] if found and found[0]["progress"] >= 4 * MiB else None

            here = wait_until(lambda: importing(n1), 10, "the bytes to show on n1")
            there = wait_until(lambda: importing(n2), 10, "the bytes to show on n2")
            assert here["status"] == there["status"] == "importing"
            shown = n2.client().request("GET", f"/v1/images/{here['id']}")
            assert 4 * MiB <= shown["progress"] <= 6 * MiB
            work = n1.client().request("GET", "/v1/progress")["work"]
            assert [(w["table"], w["id"], w["total"]) for w in work] == [
                ("images", here["id"], 64 * MiB)
            ]
        finally:
            conn.close()
        changes = [c for _, c in n1.recorded_events(before, "images") if c["key"] == here["id"]]
        assert changes and all((c["record"] or {}).get("progress", 0) == 0 for c in changes)
    finally:
        nodes.cleanup()


def test_failed_records_are_due_once_kept_long_enough() -> None:
    from datetime import UTC, datetime

    from symphonyd.image.expiry import stale_failed

    now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    records = [
        {"id": "old", "status": "failed", "updated_at": "2026-12-01T11:00:00.000000Z"},
        {"id": "new", "status": "failed", "updated_at": "2026-12-01T11:59:00Z"},
        {"id": "ready", "status": "ready", "updated_at": "2026-01-01T00:00:00Z"},
        {"id": "odd", "status": "failed", "updated_at": "yesterday"},
    ]
    assert stale_failed(records, now, 600) == (["old"], 540.0)
    assert stale_failed(records, now, 30) == (["new", "old"], None)
    assert stale_failed([], now, 30) == ([], None)


@pytest.mark.cluster
def test_a_failed_import_is_removed_after_images_failed_keep(tmp_path: Path) -> None:
    nodes = NodeSet(tmp_path)
    try:
        (n,) = nodes.form(1)
        assert n.cli("config", "set", "images.failed_keep", "2").returncode == 0
        conn = _start_upload(n, nodes.admin_token, "broken", MiB)
        wait_until(
            lambda: any(
                r["name"] == "broken" for r in n.client().request("GET", "/v1/images")["images"]
            ),
            10,
            "the upload to start",
        )
        conn.close()  # the upload breaks: the record goes failed, with the reason

        def names() -> list[tuple[str, str]]:
            return [
                (r["name"], r["status"]) for r in n.client().request("GET", "/v1/images")["images"]
            ]

        wait_until(lambda: names() == [("broken", "failed")], 10, "the import to fail")
        wait_until(lambda: names() == [], 15, "the failed record to be removed")
    finally:
        nodes.cleanup()
