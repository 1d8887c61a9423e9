"""A failed fdatasync ("fsyncgate"): on lossyfs (tests/chaos/lossyfs.py), a sync armed to
fail answers EIO and marks the pending data clean, as Linux does, so that a retried sync
succeeds and the data is lost anyway. The journal must treat the first failure as final:
it cuts itself back to its last good sync and refuses to go on; the node stops with exit
status 1 and a message, the cluster goes on without it, and once restarted it catches
up with every acknowledged write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from symphonyd.raft.journal import DurableJournal, SyncFailed
from tests.chaos.lossyfs import LossyMount
from tests.chaos.power import LEDGER, Ledger, PowerCluster, local_keys
from tests.chaos.test_powerloss import needs_fuse, settled
from tests.nodes import NodeProcess, wait_until

pytestmark = [pytest.mark.privileged, needs_fuse]


def test_negative_control_a_retried_fsync_succeeds_and_the_data_is_lost(
    lossy: LossyMount,
) -> None:
    """The trap itself, on the filesystem alone: the first fsync fails, the second
    succeeds, reads still show the data, and a crash takes it away."""
    path = lossy.mountpoint / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"synced ")
        os.fsync(fd)
        os.write(fd, b"lost")
        assert lossy.fail_syncs(1)["failed_syncs"] == 0
        with pytest.raises(OSError) as failed:
            os.fsync(fd)
        assert failed.value.errno == 5  # EIO
        os.fsync(fd)  # the retry "works"
        assert os.pread(fd, 100, 0) == b"synced lost"  # still in the "page cache"
    finally:
        os.close(fd)
    stats = lossy.stats()
    assert stats["failed_syncs"] == 1 and stats["lost_bytes"] > 0
    lossy.crash()
    lossy.start()
    assert path.read_bytes() == b"synced " + bytes(4)  # the size reached the disk, not the data


def test_a_journal_whose_sync_failed_refuses_to_go_on_and_keeps_what_was_synced(
    lossy: LossyMount,
) -> None:
    raft_dir = str(lossy.mountpoint / "raft")
    journal = DurableJournal(raft_dir)
    for idx in range(1, 4):
        journal.add(b"kept-%d" % idx, idx, 1)
    journal.sync()
    journal.add(b"unsynced-4", 4, 1)
    journal.add(b"unsynced-5", 5, 1)
    lossy.fail_syncs(1)
    with pytest.raises(SyncFailed, match=r"fdatasync of .*journal\.log failed"):
        journal.sync()
    with pytest.raises(SyncFailed):  # never retried: a retry would "succeed"
        journal.sync()
    with pytest.raises(SyncFailed):
        journal.add(b"more", 6, 1)
    kept = [(b"kept-%d" % i, i, 1) for i in range(1, 4)]
    # before the power goes: the file was cut back, so the lost entries cannot be read
    # back from the page cache by a restart
    reopened = DurableJournal(raft_dir)
    assert list(reopened) == kept
    reopened._destroy()
    journal._destroy()
    lossy.crash()
    lossy.start()
    after = DurableJournal(raft_dir)
    assert list(after) == kept
    after._destroy()


def stopped(node: NodeProcess, timeout: float = 30.0) -> int:
    assert node.proc is not None
    wait_until(
        lambda: node.proc is not None and node.proc.poll() is not None,
        timeout,
        f"{node.name} to stop after its failed fdatasync",
    )
    return int(node.proc.returncode)


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_node_whose_fdatasync_fails_stops_and_catches_up_after_a_restart(
    tmp_path: Path,
) -> None:
    """A follower, then the leader: each stops with status 1 and says why; the others
    go on taking writes; restarted, it holds every acknowledged write."""
    cluster = PowerCluster(tmp_path)
    try:
        members = cluster.form(3)
        ledger = Ledger(cluster, seed=18)
        ledger.start(max_seconds=150)
        try:
            ledger.wait_for(10, timeout=30)
            for role in ("follower", "leader"):
                leader = cluster.leader(among=members)
                victim = leader if role == "leader" else next(n for n in members if n is not leader)
                acked_before = len(ledger.acked)
                cluster.disks[victim.name].fail_syncs(1, "journal.log")
                assert stopped(victim) == 1, victim.log()
                with cluster._lock:
                    cluster.down.add(victim.name)
                log = victim.log()
                assert "fdatasync of" in log and "this node stops" in log, log
                assert cluster.disks[victim.name].stats()["failed_syncs"] == 1
                ledger.wait_for(acked_before + 10, timeout=30)  # the others go on
                victim.start()
                with cluster._lock:
                    cluster.down.discard(victim.name)
                ledger.wait_for(len(ledger.acked) + 5, timeout=30)
        finally:
            ledger.stop()
        cluster.leader(among=members)
        settled(cluster, members)
        for node in members:
            assert ledger.missing(node) == [], f"{node.name} lacks acknowledged writes"
        copies = [local_keys(n, LEDGER) for n in members]
        assert all(c == copies[0] for c in copies), "members differ"
    finally:
        cluster.cleanup()
