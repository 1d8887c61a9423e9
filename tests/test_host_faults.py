"""Faults of the host under a node (issue 15, item 5): a data dir whose filesystem fills
up (a small tmpfs: writes refused with 507 disk_full and a clear message, reads go on,
nothing corrupted, writes work again once space is freed); a follower whose journal was
damaged on disk in its middle, or cut short (the bad part is cut at start and the node
catches up from the leader, with the same data); a snapshot that is damaged (refused at
start with a message, never served as an empty store)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from symphonyd.errors import DiskFull, SymphonyError
from symphonyd.raft.snapshots import CorruptSnapshot, read_snapshot_file, write_snapshot_file
from tests.nodes import NodeProcess, NodeSet, wait_until

pytestmark = pytest.mark.cluster

MiB = 1 << 20
COMPACT_OFTEN = "[raft]\nlogCompactionMinEntries = 40\nlogCompactionMinTime = 1\n"


def put(node: NodeProcess, key: str, value: bytes) -> None:
    node.client().request("PUT", f"/v1/kv/{key}", raw=value)


def get(node: NodeProcess, key: str) -> bytes | None:
    result = node.cli("kv", "get", key)
    return result.stdout.strip().encode() if result.returncode == 0 else None


def fill(disk: Path) -> Path:
    """Fill the filesystem to the last byte (again: the daemon frees what it fails to
    write); the filler file."""
    filler = disk / "filler"
    with open(filler, "ab") as f:
        for _ in range(200):
            try:
                f.write(b"\0" * MiB)
                f.flush()
            except OSError:
                break
    return filler


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 96 MiB tmpfs, unmounted at the end (by its path: it is this test's mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounts a tmpfs: needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


@pytest.mark.privileged
def test_a_full_disk_refuses_writes_clearly_and_recovers(small_disk: Path) -> None:
    nodes = NodeSet(small_disk, settings='[store]\ndisk_reserve = "32M"\n')
    try:
        (n1,) = nodes.form(1)
        put(n1, "before", b"kept")
        # Something else fills the filesystem to under the reserve.
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        filler = small_disk / "filler"
        with open(filler, "wb") as f:
            f.truncate(0)
            for _ in range((free - 4 * MiB) // MiB):  # the reserve: a tenth of 96 MiB
                f.write(b"\0" * MiB)
        with pytest.raises(DiskFull) as refused:
            put(n1, "new", b"x" * 1000)
        message = refused.value.message
        assert "nearly full" in message and "[store] disk_reserve" in message, message
        assert "deletes and updates still work" in message
        cli = n1.cli("kv", "put", "new", "x")
        assert cli.returncode == 1 and "nearly full" in cli.stderr
        assert get(n1, "before") == b"kept"  # reads go on
        n1.client().request("DELETE", "/v1/kv/before")  # a delete still fits
        # Filled to the last byte: still refused clearly, the daemon stays up.
        fill(small_disk)
        with pytest.raises(DiskFull):
            put(n1, "new", b"x")
        assert n1.status()["has_quorum"]
        # Space comes back: writes work, and everything survives a restart.
        filler.unlink()
        put(n1, "after", b"works")
        n1.stop()
        n1.start()
        wait_until(lambda: n1.status()["has_quorum"], 20, "n1 back")
        assert get(n1, "after") == b"works" and get(n1, "before") is None
        assert "torn or corrupt tail" not in n1.log()  # the journal was never half-written
    finally:
        nodes.cleanup()


@pytest.mark.privileged
def test_a_follower_whose_disk_fills_falls_behind_and_catches_up(
    small_disk: Path, tmp_path: Path
) -> None:
    """Only the node that takes a write checks its own disk: a follower whose disk is full
    cannot write the entries it is sent. It must not acknowledge them, stay up, say why
    (once in a while, not a traceback per tick), and catch up when space returns."""
    nodes = NodeSet(tmp_path / "others")
    try:
        n1, _n2 = nodes.form(2)
        n3 = NodeProcess(small_disk, "n3")
        n3.log_path = tmp_path / "n3.log"  # the log must not need the full disk
        nodes.nodes.append(n3)
        n3.start()
        nodes.join(n3, via=n1)
        wait_until(lambda: len(n3.status()["members"]) == 3, 20, "n3 to join")
        put(n1, "before", b"kept")
        wait_until(lambda: get(n3, "before") == b"kept", 20, "n3 to have it")
        filler = fill(small_disk)  # to the last byte
        for i in range(20):  # the other two are a majority: these commit
            put(n1, f"while-full/{i}", b"y" * 4096)
        wait_until(lambda: n3.status()["raft"]["host_errors"] > 0, 20, "n3 to fail a write")
        assert get(n3, "while-full/19") is None  # it has fallen behind, and is up
        filler.unlink()
        revision = n1.settled_revision()
        wait_until(lambda: n3.settled_revision() == revision, 30, "n3 to catch up")
        assert all(get(n3, f"while-full/{i}") == b"y" * 4096 for i in (0, 7, 19))
        assert "the Raft journal in" in n3.log() and "No space left on device" in n3.log()
        assert n3.log().count("Traceback") == 0
        n3.stop()
        n3.start()
        wait_until(
            lambda: n3.settled_revision() == n1.settled_revision(), 30, "n3 back after a restart"
        )
        assert get(n3, "while-full/19") == b"y" * 4096
        assert "torn or corrupt tail" not in n3.log()
    finally:
        nodes.cleanup()


def try_put(node: NodeProcess, key: str) -> bool:
    try:
        node.client(timeout=10).request("PUT", f"/v1/kv/{key}", raw=b"z" * 4096)
    except SymphonyError:
        return False
    return True


@pytest.mark.privileged
def test_a_leader_whose_disk_fills_hands_leadership_over(small_disk: Path, tmp_path: Path) -> None:
    """The leader cannot append the writes a follower forwards to it (its own disk is
    full; the follower checks only its own): it hands leadership to a caught-up follower,
    and the two healthy nodes take writes again; once space returns it catches up."""
    nodes = NodeSet(tmp_path / "others")
    try:
        n3 = NodeProcess(small_disk, "n3")
        n3.log_path = tmp_path / "n3.log"
        nodes.nodes.append(n3)
        n3.start()
        n3.client().request("POST", "/v1/cluster/init", body={})
        n1, n2 = nodes.new("n1"), nodes.new("n2")
        for node in (n1, n2):
            nodes.join(node, via=n3)
        wait_until(lambda: len(n1.status()["members"]) == 3, 20, "three members")
        assert nodes.leader() is n3
        put(n1, "before", b"kept")
        filler = fill(small_disk)
        deadline = time.monotonic() + 30
        attempts: list[bool] = []
        while time.monotonic() < deadline:  # bounded: 30 s of writes, each at most 10 s
            fill(small_disk)  # kept full: the daemon frees what it failed to write
            attempts.append(try_put(n1, f"while-full/{len(attempts)}"))
            if attempts[-1] and nodes.leader() is not n3:
                break
        else:
            raise AssertionError(f"the full leader kept leading: {attempts}")
        assert not attempts[0], "the first write reached a leader whose disk is full"
        assert n3.status()["raft"]["leadership_handed_over"] >= 1
        assert "cannot write its journal: handing leadership over" in n3.log()
        last = f"while-full/{len(attempts) - 1}"
        filler.unlink()
        revision = n1.settled_revision()
        wait_until(lambda: n3.settled_revision() == revision, 30, "n3 to catch up")
        assert get(n3, last) == b"z" * 4096
        assert n3.log().count("Traceback") == 0
    finally:
        nodes.cleanup()


def damage(path: Path, where: str) -> None:
    data = path.read_bytes()
    if where == "middle":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64])
                         + data[middle + 64 :])  # fmt: skip
    else:  # cut short, as a disk that lost its last blocks
        path.write_bytes(data[: len(data) * 2 // 3])


@pytest.mark.parametrize("where", ["middle", "cut short"])
def test_a_damaged_follower_journal_is_cut_and_caught_up(nodeset: NodeSet, where: str) -> None:
    n1, _n2, n3 = nodeset.form(3)
    for i in range(30):
        put(n1, f"k{i}", f"v{i}".encode())
    revision = n1.settled_revision()
    wait_until(lambda: n3.settled_revision() == revision, 20, "n3 caught up")
    n3.stop()
    journal = n3.data_dir / "raft" / "journal.log"
    damage(journal, where)
    for i in range(30, 40):  # the others go on meanwhile
        put(n1, f"k{i}", f"v{i}".encode())
    n3.start()
    assert "cut" in n3.log() and "torn or corrupt tail" in n3.log()
    wait_until(lambda: n3.settled_revision() == n1.settled_revision(), 30, "n3 to catch up again")
    assert all(get(n3, f"k{i}") == f"v{i}".encode() for i in range(0, 40, 3))
    put(n3, "from-n3", b"ok")  # and it takes part in writes
    assert get(n1, "from-n3") == b"ok"


def test_a_damaged_snapshot_is_refused_at_start(tmp_path: Path) -> None:
    nodes = NodeSet(tmp_path, settings=COMPACT_OFTEN)
    try:
        (n1,) = nodes.form(1)
        for i in range(80):
            put(n1, f"k{i}", f"v{i}".encode())
        snapshot = n1.data_dir / "raft" / "snapshot"
        wait_until(snapshot.exists, 20, "a snapshot")
        n1.stop()
        damage(snapshot, "middle")
        n1.start(wait=False)
        assert n1.proc is not None
        code = n1.proc.wait(timeout=60)
        assert code != 0
        log = n1.log()
        assert "snapshot" in log and "is damaged" in log and "refuses to start" in log, log
    finally:
        nodes.cleanup()


def test_snapshot_files_are_checked_and_older_ones_still_read(tmp_path: Path) -> None:
    path = str(tmp_path / "snapshot")
    last, prev = (b"\x00last", 9, 2), (b"\x00prev", 8, 2)
    write_snapshot_file(path, last, prev, ["127.0.0.1:2", "127.0.0.1:1"], b"state bytes")
    snapshot = read_snapshot_file(path)
    assert (snapshot.last, snapshot.prev, snapshot.state) == (last, prev, b"state bytes")
    assert snapshot.members == ["127.0.0.1:1", "127.0.0.1:2"]
    data = Path(path).read_bytes()
    flipped = data.replace(b"state bytes", b"state bytez")
    assert flipped != data
    Path(path).write_bytes(flipped)  # still valid msgpack: only the checksum tells
    with pytest.raises(CorruptSnapshot, match="checksum does not match"):
        read_snapshot_file(path)
    older = {"last": list(last), "prev": list(prev), "members": ["a:1"], "state": b"s"}
    Path(path).write_bytes(msgpack.packb(older, use_bin_type=True))  # before the checksum
    assert read_snapshot_file(path).state == b"s"
