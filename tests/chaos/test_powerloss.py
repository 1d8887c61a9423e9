"""Power loss (issue 15, item 4): real `symphonyd run` processes whose data dirs are on
lossyfs mounts (tests/chaos/lossyfs.py), which keep unsynced writes in memory and lose
them on a crash, so a missing or misplaced fdatasync loses data here where kill -9 alone
(which keeps the page cache) would hide it.

* A 3-node cluster under the chaos workload (4 clients, 3 keys) and a ledger of fresh
  keys loses the power of a follower, then of the leader (the second time with half of
  the unsynced blocks left behind, torn); each comes back on its own disk, opens its
  journal, catches up, and holds the same data; no acknowledged write is lost, every key's
  history is linearizable.
* All three lose the power at once, twice (everything unsynced dropped; then a torn
  crash); after each, every acknowledged write is there on every member.
* Controls: the filesystem drops unsynced data and keeps synced data, and its model
  (sizes, truncation, renames, torn blocks) is what its docstring says; a cluster whose
  journal skips fdatasync (tests/chaos/nosync.py) loses acknowledged writes in the same
  all-at-once power loss, which shows the suite can see what it checks for.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from symphonyd.raft.journal import DurableJournal
from tests.chaos.checker import check
from tests.chaos.lossyfs import BLOCK, FileData, LossyMount
from tests.chaos.power import LEDGER, Ledger, PowerCluster, local_keys
from tests.chaos.run import failed_seen, lost_writes
from tests.chaos.workload import KEY_PREFIX, Workload
from tests.nodes import NodeProcess, wait_until


def fuse_missing() -> str | None:
    if os.geteuid() != 0:
        return "mounts FUSE filesystems: needs root (CI runs as root)"
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        return "needs /dev/fuse and fusermount3 (Debian's fuse3; scripts/bootstrap --test)"
    return None


needs_fuse = pytest.mark.skipif(fuse_missing() is not None, reason=str(fuse_missing()))


# -- the filesystem's own model (no FUSE) -----------------------------------------------------


def test_the_model_serves_pending_writes_and_keeps_only_synced_ones(tmp_path: Path) -> None:
    """Random writes, truncations and syncs on FileData, against a bytearray: every read
    sees every write; after a drop the file is what the last sync left."""
    rng = random.Random(4)
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDWR)
    try:
        data, model, synced = FileData(fd), bytearray(), b""
        for _ in range(400):
            action = rng.choice(["write"] * 5 + ["truncate", "sync", "read"])
            if action == "write":
                offset = rng.randrange(0, 5 * BLOCK)
                chunk = os.urandom(rng.randrange(1, 2 * BLOCK))
                data.write(offset, chunk)
                model.extend(bytes(max(0, offset + len(chunk) - len(model))))
                model[offset : offset + len(chunk)] = chunk
            elif action == "truncate":
                length = rng.randrange(0, 6 * BLOCK)
                data.truncate(length)
                del model[length:]
                model.extend(bytes(length - len(model)))
            elif action == "sync":
                data.sync()
                synced = bytes(model)
                assert path.read_bytes() == synced
            assert data.size == len(model)
            assert data.read(0, len(model) + 10) == bytes(model)
            offset = rng.randrange(0, len(model) + 1)
            assert data.read(offset, 100) == bytes(model[offset : offset + 100])
        assert path.read_bytes() == synced  # the backing file: only what was synced
    finally:
        os.close(fd)


# -- the filesystem, mounted --------------------------------------------------------------------


@pytest.mark.privileged
@needs_fuse
def test_negative_control_unsynced_data_is_gone_after_a_crash(lossy: LossyMount) -> None:
    mnt = lossy.mountpoint
    with open(mnt / "synced", "wb") as f:
        f.write(b"on disk")
        f.flush()
        os.fsync(f.fileno())
        f.write(b" and in memory")  # after the sync
        f.flush()
        assert os.fstat(f.fileno()).st_size == len(b"on disk and in memory")
    (mnt / "unsynced").write_bytes(b"x" * 10_000)
    with open(mnt / "cut", "wb") as f:
        f.write(b"0123456789")
        f.flush()
        os.fdatasync(f.fileno())
        f.truncate(4)  # not synced: the cut is lost too
    (mnt / "dir").mkdir()
    (mnt / "dir" / "tmp").write_bytes(b"renamed before its sync")
    os.rename(mnt / "dir" / "tmp", mnt / "dir" / "final")
    # read-your-writes before the crash
    assert (mnt / "synced").read_bytes() == b"on disk and in memory"
    assert (mnt / "unsynced").stat().st_size == 10_000
    assert (mnt / "cut").read_bytes() == b"0123"
    assert (mnt / "dir" / "final").read_bytes() == b"renamed before its sync"
    assert not (lossy.backing / "unsynced").read_bytes()  # nothing reached the disk yet

    report = lossy.crash()
    assert report["pending_paths"] == ["/cut", "/dir/final", "/synced", "/unsynced"]
    assert report["pending_bytes"] >= 10_000
    assert not os.path.ismount(mnt)
    lossy.start()
    assert (mnt / "synced").read_bytes() == b"on disk"
    assert (mnt / "unsynced").read_bytes() == b""  # metadata survived, data did not
    assert (mnt / "cut").read_bytes() == b"0123456789"
    assert sorted(os.listdir(mnt / "dir")) == ["final"]  # the rename is on disk, its data not
    assert (mnt / "dir" / "final").read_bytes() == b""


@pytest.mark.privileged
@needs_fuse
def test_synced_data_and_a_clean_unmount_keep_everything(lossy: LossyMount) -> None:
    mnt = lossy.mountpoint
    fd = os.open(mnt / "journal", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        for i in range(50):
            os.pwrite(fd, f"record {i:03d}\n".encode(), i * 11)
            if i % 10 == 9:
                os.fdatasync(fd)
    finally:
        os.close(fd)
    (mnt / "left").write_bytes(b"not synced, but unmounted cleanly")
    assert lossy.stats()["syncs"] == 5
    lossy.crash()
    lossy.start()
    assert (mnt / "journal").read_bytes() == b"".join(
        f"record {i:03d}\n".encode() for i in range(50)
    )
    (mnt / "left").write_bytes(b"not synced, but unmounted cleanly")
    lossy.stop()  # a clean unmount writes everything out
    assert (lossy.backing / "left").read_bytes() == b"not synced, but unmounted cleanly"


@pytest.mark.privileged
@needs_fuse
def test_a_torn_crash_leaves_some_unsynced_blocks_behind(lossy: LossyMount) -> None:
    with open(lossy.mountpoint / "f", "wb") as f:
        for i in range(64):
            f.write(bytes([65 + i % 26]) * BLOCK)
    report = lossy.crash(keep=0.5, seed=3)
    assert 0 < report["kept_blocks"] < 64
    lossy.start()
    content = (lossy.mountpoint / "f").read_bytes()
    kept = [
        i for i in range(64) if content[i * BLOCK : (i + 1) * BLOCK] == bytes([65 + i % 26]) * BLOCK
    ]
    assert len(kept) == report["kept_blocks"]
    assert all(b == 0 for i in range(len(content) // BLOCK) if i not in kept
               for b in content[i * BLOCK : (i + 1) * BLOCK])  # fmt: skip


@pytest.mark.privileged
@needs_fuse
def test_the_journals_term_and_vote_survive_a_power_loss(lossy: LossyMount) -> None:
    """The bug this suite found: the commit index, saved once a second, replaced
    journal.meta (term and vote too) by a renamed file it never synced; after a power
    loss the meta was empty and the node started from term 0 with its vote forgotten."""
    raft_dir = str(lossy.mountpoint / "raft")
    journal = DurableJournal(raft_dir)
    journal.add(b"entry", 1, 7)
    journal.sync()
    journal.setCurrentTerm(7, "127.0.0.1:1")  # synced: a vote was sent on it
    journal.setRaftCommitIndex(1)
    journal.onOneSecondTimer()  # the lazy save of the commit index
    lossy.crash()
    lossy.start()
    reopened = DurableJournal(raft_dir)
    assert (reopened.getCurrentTerm(), reopened.getVotedForNodeId()) == (7, "127.0.0.1:1")
    assert reopened[0] == (b"entry", 1, 7)
    reopened._destroy()


@pytest.mark.privileged
@needs_fuse
def test_a_journal_torn_by_a_power_loss_keeps_every_synced_entry(
    lossy: LossyMount, caplog: pytest.LogCaptureFixture
) -> None:
    """Entries synced, then more written but not synced; the crash leaves a seeded half
    of the unsynced blocks behind, so the file ends in a torn tail: reopened, the journal
    cuts it and holds every synced entry, in order."""
    raft_dir = str(lossy.mountpoint / "raft")
    journal = DurableJournal(raft_dir)
    for idx in range(1, 41):
        journal.add(os.urandom(500), idx, 1)
    journal.sync()
    synced = [journal[i] for i in range(40)]
    for idx in range(41, 121):
        journal.add(os.urandom(500), idx, 1)
    report = lossy.crash(keep=0.5, seed=1)
    assert report["kept_blocks"] > 0 and report["pending_paths"] == ["/raft/journal.log"]
    lossy.start()
    reopened = DurableJournal(raft_dir)
    assert [reopened[i] for i in range(40)] == synced
    assert [e[1] for e in reopened] == list(range(1, len(reopened) + 1))
    assert 40 <= len(reopened) < 120
    assert "torn or corrupt tail" in caplog.text
    reopened._destroy()


# -- symphonyd on lossyfs -----------------------------------------------------------------------


def settled(cluster: PowerCluster, members: list[NodeProcess], timeout: float = 60.0) -> int:
    """Every member at the same revision, unchanged for a second; that revision."""
    seen: list[float] = [-1.0, time.monotonic()]

    def same() -> int | None:
        revisions = {n.status()["revision"] for n in members}
        if len(revisions) != 1:
            return None
        (revision,) = revisions
        if revision != seen[0]:
            seen[:] = [float(revision), time.monotonic()]
            return None
        return int(revision) if time.monotonic() - seen[1] >= 1.0 else None

    return int(wait_until(same, timeout, "every member at the same revision", interval=0.2))


def summary(members: list[NodeProcess], ledger: Ledger, workload: Workload | None) -> str:
    """One line for docs/reliability.md (shown with pytest -s)."""
    outcomes = Counter(r.op.outcome for r in workload.records) if workload else Counter()
    cuts = sum(n.log().count("torn or corrupt tail") for n in members)
    return (
        f"ledger {len(ledger.acked)} acknowledged of {ledger.attempted}; workload "
        f"{sum(outcomes.values())} ops ({outcomes['ok']} ok, {outcomes['fail']} failed, "
        f"{outcomes['unknown']} unknown); torn journal tails cut at start: {cuts}"
    )


def assert_nothing_acknowledged_was_lost(
    cluster: PowerCluster, members: list[NodeProcess], ledger: Ledger, workload: Workload | None
) -> None:
    leader = cluster.leader(among=members)
    settled(cluster, members)
    assert ledger.acked, "the ledger wrote nothing"
    for node in members:
        assert ledger.missing(node) == [], f"{node.name} lost acknowledged ledger writes"
    copies = {n.name: local_keys(n, LEDGER) for n in members}
    assert all(c == copies[members[0].name] for c in copies.values()), "members differ"
    for node in members:  # each opened its journal whole (a torn tail may be cut)
        assert "is unreadable" not in node.log() and "Traceback" not in node.log(), node.log()
    if workload is None:
        return
    final = workload.final_reads(leader)
    records = list(workload.records)
    for key in workload.keys:
        history = workload.history(key)
        verdict = check(history)
        assert verdict.valid is True, f"{key}: {verdict.message}"
        assert lost_writes(history, final[key]) == [], f"{key}: acknowledged writes lost"
    assert failed_seen(records) == []
    contents = {n.name: local_keys(n, KEY_PREFIX) for n in members}
    assert all(c == contents[members[0].name] for c in contents.values()), contents


@pytest.fixture
def power_cluster(tmp_path: Path) -> Iterator[PowerCluster]:
    cluster = PowerCluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.cleanup()


def follower(cluster: PowerCluster, members: list[NodeProcess]) -> NodeProcess:
    leader = cluster.leader(among=members)
    return next(n for n in members if n is not leader)


CHAOS_KEYS = ["k0", "k1", "k2"]


@pytest.mark.privileged
@pytest.mark.cluster
@pytest.mark.slow
@needs_fuse
def test_power_loss_of_a_follower_then_of_the_leader(power_cluster: PowerCluster) -> None:
    members = power_cluster.form(3)
    workload = Workload(power_cluster.up, CHAOS_KEYS, clients=4, seed=15)
    ledger = Ledger(power_cluster, seed=15)
    workload.start(max_seconds=90)
    ledger.start(max_seconds=90)
    try:
        time.sleep(2)
        for role, keep in (("follower", 0.0), ("leader", 0.5)):
            leader = power_cluster.leader(among=members)
            victim = leader if role == "leader" else follower(power_cluster, members)
            acked_before = len(ledger.acked)
            power_cluster.power_loss([victim], keep=keep, seed=len(ledger.acked))
            time.sleep(2)  # the others go on meanwhile
            power_cluster.power_on([victim])
            ledger.wait_for(acked_before + 5, timeout=30)
            time.sleep(1)
    finally:
        workload.stop()
        ledger.stop()
    assert_nothing_acknowledged_was_lost(power_cluster, members, ledger, workload)
    crashes = [power_cluster.disks[n.name].crashes for n in members]
    print(f"\nfollower then leader: {summary(members, ledger, workload)}; crashes {crashes}")
    syncs = [power_cluster.disks[n.name].stats()["syncs"] for n in members]
    assert all(syncs), syncs  # the journals' syncs went through the filesystems


@pytest.mark.privileged
@pytest.mark.cluster
@pytest.mark.slow
@needs_fuse
def test_power_loss_of_all_three_at_once(power_cluster: PowerCluster) -> None:
    members = power_cluster.form(3)
    workload = Workload(power_cluster.up, CHAOS_KEYS, clients=4, seed=16)
    ledger = Ledger(power_cluster, seed=16)
    workload.start(max_seconds=90)
    ledger.start(max_seconds=90)
    reports = []
    try:
        for keep in (0.0, 0.5):
            time.sleep(3)
            reports += power_cluster.power_loss(members, keep=keep, seed=len(ledger.acked))
            acked_before = len(ledger.acked)
            power_cluster.power_on(members)
            power_cluster.leader(among=members)
            ledger.wait_for(acked_before + 5, timeout=30)
    finally:
        workload.stop()
        ledger.stop()
    assert_nothing_acknowledged_was_lost(power_cluster, members, ledger, workload)
    print(f"\nall three: {summary(members, ledger, workload)}; crashes {reports}")
    assert any(r["pending_files"] for r in reports), reports  # the crashes dropped something


@pytest.mark.privileged
@pytest.mark.cluster
@pytest.mark.slow
@needs_fuse
def test_negative_control_without_fdatasync_acknowledged_writes_are_lost(
    tmp_path: Path,
) -> None:
    """The same power loss of all three, with the journal's fdatasync skipped after the
    cluster formed (tests/chaos/nosync.py): acknowledged writes are gone."""
    cluster = PowerCluster(tmp_path, nosync=True)
    try:
        members = cluster.form(3)
        (tmp_path / "nosync").write_text("")
        ledger = Ledger(cluster)
        ledger.start(max_seconds=30, max_writes=40)
        ledger.wait_for(30, timeout=30)
        ledger.stop()
        cluster.power_loss(members)
        (tmp_path / "nosync").unlink()
        cluster.power_on(members)
        cluster.leader(among=members)
        missing = ledger.missing(cluster.leader(among=members))
        print(f"\nno fdatasync: {len(missing)} of {len(ledger.acked)} acknowledged writes lost")
        assert missing, "every write survived although the journal never synced"
    finally:
        cluster.cleanup()
