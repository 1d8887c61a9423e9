"""lossyfs: a FUSE filesystem that loses what was not synced, to test power loss.

kill -9 of a process keeps the kernel's page cache, so it never shows whether a program
calls fsync/fdatasync where it must. This filesystem passes a backing directory through,
but keeps every file's data written since that file's last fsync/fdatasync *in its own
memory*; on `crash` it dies at once, and everything it held is gone, as the contents of
a disk's volatile cache and of the page cache are when the power goes.

    python -m tests.chaos.lossyfs BACKING_DIR MOUNTPOINT --control SOCKET

runs in the foreground until unmounted (`fusermount3 -u MOUNTPOINT`: a clean unmount
writes everything out first, as an unmount does) or crashed. `LossyMount` below starts,
crashes, remounts and cleans it up from a test.

The model (what a program sees, what survives):

* **File data** (write, truncate, ftruncate, O_TRUNC) stays in memory until fsync or
  fdatasync *of that file*; then its writes and truncations reach the backing file, which
  is fsynced. Before a crash every read, and the size in stat, shows the pending data
  (read-your-writes); close (flush, release) syncs nothing.
* **Metadata** (create, mkdir, rename, unlink, rmdir, chmod, utimens, mknod) reaches the
  backing directory at once, as on a journaling filesystem whose metadata is synchronous.
  So a file created and never synced survives a crash empty, and a file renamed over
  another before its data was synced replaces it with whatever of its data was synced:
  the classic lost-rename. fsync of a directory is therefore a no-op (passed through).
* **A crash** (`crash` on the control socket) drops every pending write and truncation
  and ends the process without unmounting: the mount answers ENOTCONN until it is
  unmounted, as a vanished disk would. With `keep` > 0 a random share (seeded) of the
  pending 4 KiB blocks is written to the backing files first, unsynced and in no order:
  the dirty pages the kernel happened to write back before the power went, so a file
  can end in a torn tail or hold new blocks among old ones.
* **A failed sync** (`fail-sync N [NAME]` on the control socket: the next N
  fsync/fdatasync of a file with pending data, named NAME if given, answer EIO) behaves
  as Linux does after a writeback error ("fsyncgate"): the pending blocks are marked
  clean without reaching the disk. Reads still see them (they stay in the page cache)
  until a crash, but no later sync writes them, so a retried fsync succeeds and the data
  is lost all the same. A truncation drops them as it drops any block.

Data goes through with FUSE's direct_io (no page cache of the mount's own: every read is
served from the model). symphonyd's data dir needs nothing else: its journal is pwrite +
fdatasync + ftruncate (raft/journal.py), every other file is written whole and renamed
(durable.py); no mmap, no sqlite. Its control socket is a socket node (mknod), and its
lock an flock (served by the kernel: this filesystem does not implement locks). Hard
links, symlinks and xattrs are not served.

Single-threaded (one FUSE request at a time); the control socket runs in a thread and
shares the one lock. Test-only: never mount it under anything that matters.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

BLOCK = 4096


class FileData:
    """One file's content as the filesystem serves it: the backing file (what is on the
    "disk") plus the blocks written and the truncation done since its last sync."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.handles = 0
        self.synced_size = os.fstat(fd).st_size
        self.size = self.synced_size  # what a reader sees
        self.cut = self.synced_size  # the least size since the sync: backing bytes past it are gone
        self.blocks: dict[int, bytearray] = {}
        self.lost: dict[int, bytearray] = {}  # blocks of a failed sync: seen, never written

    @property
    def pending(self) -> bool:
        return bool(self.blocks) or self.cut != self.synced_size or self.size != self.synced_size

    @property
    def pending_bytes(self) -> int:
        """The dirty data, counted in whole blocks."""
        return len(self.blocks) * BLOCK

    def _backing(self, start: int, end: int) -> bytes:
        """The backing bytes of [start, end) that still count (zeros past the cut)."""
        upto = min(end, self.cut)
        data = os.pread(self.fd, upto - start, start) if upto > start else b""
        return data + bytes(end - start - len(data))

    def _block(self, index: int) -> bytes | bytearray:
        found = self.blocks.get(index, self.lost.get(index))
        if found is not None:
            return found
        return self._backing(index * BLOCK, (index + 1) * BLOCK)

    def read(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.size)
        if end <= offset:
            return b""
        first, last = offset // BLOCK, (end - 1) // BLOCK
        data = b"".join(bytes(self._block(i)) for i in range(first, last + 1))
        start = offset - first * BLOCK
        return data[start : start + end - offset]

    def write(self, offset: int, data: bytes) -> int:
        pos = 0
        while pos < len(data):
            index, within = divmod(offset + pos, BLOCK)
            block = self.blocks.get(index)
            if block is None:
                block = self.blocks[index] = bytearray(self._block(index))
            take = min(BLOCK - within, len(data) - pos)
            block[within : within + take] = data[pos : pos + take]
            pos += take
        self.size = max(self.size, offset + len(data))
        return len(data)

    def truncate(self, length: int) -> None:
        if length < self.size:
            self.cut = min(self.cut, length)
            index, within = divmod(length, BLOCK)
            for blocks in (self.blocks, self.lost):
                for i in [i for i in blocks if i > index or (i == index and within == 0)]:
                    del blocks[i]
                if within and index in blocks:
                    blocks[index][within:] = bytes(BLOCK - within)
        self.size = length

    def sync(self, data_only: bool = False) -> None:
        """Write what is pending to the backing file and fsync it."""
        if self.pending:
            if self.cut < self.synced_size:
                os.ftruncate(self.fd, self.cut)
            for index, block in sorted(self.blocks.items()):
                start = index * BLOCK
                os.pwrite(self.fd, bytes(block[: max(0, min(BLOCK, self.size - start))]), start)
            os.ftruncate(self.fd, self.size)
            self.blocks.clear()
            self.synced_size = self.cut = self.size
        (os.fdatasync if data_only else os.fsync)(self.fd)

    def fail_sync(self) -> None:
        """A writeback error: the pending blocks are marked clean, never to be written."""
        self.lost.update(self.blocks)
        self.blocks.clear()

    def tear(self, rng: random.Random, keep: float) -> int:
        """Write a random share of the pending blocks, unsynced (a crash's torn state);
        returns how many."""
        kept = [i for i in sorted(self.blocks) if rng.random() < keep]
        for index in kept:
            start = index * BLOCK
            block = self.blocks[index][: max(0, min(BLOCK, self.size - start))]
            if block:
                os.pwrite(self.fd, bytes(block), start)
        return len(kept)


def build_operations(root: str) -> Any:
    """The FUSE operations over `root` (mfusepy is imported here: only the filesystem's own
    process loads libfuse)."""
    import mfusepy

    class LossyOperations(mfusepy.Operations):  # type: ignore[misc]
        use_ns = True

        def __init__(self) -> None:
            self.root = root
            self.mutex = threading.Lock()
            self.files: dict[str, FileData] = {}  # by path: open or pending
            self.handles: dict[int, FileData] = {}
            self.next_fh = 1
            self.counts = {
                "writes": 0,
                "syncs": 0,
                "synced_bytes": 0,
                "failed_syncs": 0,
                "lost_bytes": 0,
            }
            self.failing_syncs = 0  # how many syncs of pending data are still to fail
            self.failing_name = ""  # ... of files of this name only, if set

        def _real(self, path: str) -> str:
            return os.path.join(self.root, path.lstrip("/"))

        def _data(self, path: str) -> FileData:
            data = self.files.get(path)
            if data is None:
                data = self.files[path] = FileData(os.open(self._real(path), os.O_RDWR))
            return data

        def _forget(self, data: FileData) -> None:
            """Close a file nobody has open and nothing is pending for."""
            if data.handles or data.pending:
                return
            for path in [p for p, d in self.files.items() if d is data]:
                del self.files[path]
            os.close(data.fd)

        def _handle(self, data: FileData) -> int:
            fh, self.next_fh = self.next_fh, self.next_fh + 1
            self.handles[fh] = data
            data.handles += 1
            return fh

        # -- the control socket's view --------------------------------------------------------

        def report(self) -> dict[str, Any]:
            pending = {p: d for p, d in self.files.items() if d.pending}
            return {
                **self.counts,
                "pending_files": len(pending),
                "pending_bytes": sum(d.pending_bytes for d in pending.values()),
                "pending_paths": sorted(pending),
            }

        def crash(self, keep: float, seed: int) -> dict[str, Any]:
            report = self.report()
            rng = random.Random(seed)
            report["kept_blocks"] = sum(d.tear(rng, keep) for d in self.files.values() if keep)
            return report

        # -- metadata: straight to the backing dir --------------------------------------------

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            with self.mutex:
                st = os.lstat(self._real(path))
                data = self.handles.get(fh) if fh is not None else self.files.get(path)
                size = st.st_size if data is None else data.size
                names = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_rdev")
                found = {name: getattr(st, name) for name in names}
                found.update(st_size=size, st_blocks=(size + 511) // 512)
                found.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns)
                found.update(st_ctime=st.st_ctime_ns)
                return found

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *os.listdir(self._real(path))]

        def mkdir(self, path: str, mode: int) -> int:
            os.mkdir(self._real(path), mode)
            return 0

        def rmdir(self, path: str) -> int:
            os.rmdir(self._real(path))
            return 0

        def mknod(self, path: str, mode: int, dev: int) -> int:
            os.mknod(self._real(path), mode, dev)
            return 0

        def unlink(self, path: str) -> int:
            with self.mutex:
                os.unlink(self._real(path))
                gone = self.files.pop(path, None)
                if gone is not None:
                    gone.blocks.clear()  # its data went with it
                    gone.cut = gone.size = gone.synced_size
                    self._forget(gone)
            return 0

        def rename(self, old: str, new: str) -> int:
            with self.mutex:
                os.rename(self._real(old), self._real(new))
                replaced = self.files.pop(new, None)
                for path in [p for p in self.files if p == old or p.startswith(old + "/")]:
                    self.files[new + path[len(old) :]] = self.files.pop(path)
                if replaced is not None and not replaced.handles:
                    os.close(replaced.fd)
            return 0

        def chmod(self, path: str, mode: int) -> int:
            os.chmod(self._real(path), mode)
            return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            os.chown(self._real(path), uid, gid)
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            if times is None:
                os.utime(self._real(path))
            else:
                os.utime(self._real(path), ns=times)
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            st = os.statvfs(self._real(path))
            names = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files")
            return {name: getattr(st, name) for name in (*names, "f_ffree", "f_namemax")}

        def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
            fd = os.open(self._real(path), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            return 0

        # -- data: held in memory until fsync -------------------------------------------------

        def create(self, path: str, mode: int, flags: int = 0) -> int:
            with self.mutex:
                fd = os.open(self._real(path), os.O_RDWR | os.O_CREAT | (flags & os.O_EXCL), mode)
                data = self.files.get(path)
                if data is None:
                    data = self.files[path] = FileData(fd)
                else:
                    os.close(fd)
                if flags & os.O_TRUNC:
                    data.truncate(0)
                return self._handle(data)

        def open(self, path: str, flags: int) -> int:
            with self.mutex:
                data = self._data(path)
                if flags & os.O_TRUNC:
                    data.truncate(0)
                return self._handle(data)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            with self.mutex:
                return self.handles[fh].read(offset, size)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            with self.mutex:
                self.counts["writes"] += 1
                return self.handles[fh].write(offset, data)

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            with self.mutex:
                data = self.handles[fh] if fh is not None else self._data(path)
                data.truncate(length)
                self._forget(data)
            return 0

        def flush(self, path: str, fh: int) -> int:
            return 0  # close syncs nothing

        def release(self, path: str, fh: int) -> int:
            with self.mutex:
                data = self.handles.pop(fh)
                data.handles -= 1
                self._forget(data)
            return 0

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            with self.mutex:
                data = self.handles[fh]
                named = os.path.basename(path) == self.failing_name or not self.failing_name
                if self.failing_syncs and data.blocks and named:
                    self.failing_syncs -= 1
                    self.counts["failed_syncs"] += 1
                    self.counts["lost_bytes"] += data.pending_bytes
                    data.fail_sync()
                    raise OSError(errno.EIO, os.strerror(errno.EIO), path)
                self.counts["syncs"] += 1
                self.counts["synced_bytes"] += data.pending_bytes
                data.sync(data_only=bool(datasync))
            return 0

        def destroy(self, path: str) -> None:
            """A clean unmount writes everything out."""
            with self.mutex:
                for data in self.files.values():
                    data.sync()

    return LossyOperations()


def serve_control(path: str, ops: Any) -> None:
    """Answer `stats`, `fail-sync N [NAME]` and `crash [keep [seed]]` (one JSON line
    each) on a unix socket; a crash answers, then ends the process at once, holding the lock so that
    no request is served in between."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    while True:
        conn, _ = server.accept()
        with conn:
            words = conn.makefile("r").readline().split()
            if not words:
                continue
            if words[0] == "crash":
                keep = float(words[1]) if len(words) > 1 else 0.0
                seed = int(words[2]) if len(words) > 2 else 0
                ops.mutex.acquire()  # never released: the process ends holding it
                conn.sendall(json.dumps(ops.crash(keep, seed)).encode() + b"\n")
                os._exit(0)
            with ops.mutex:
                if words[0] == "fail-sync" and len(words) in (2, 3) and words[1].isdigit():
                    ops.failing_syncs = int(words[1])
                    ops.failing_name = words[2] if len(words) == 3 else ""
                answer = (
                    ops.report()
                    if words[0] in ("stats", "fail-sync")
                    else {"error": "unknown command"}
                )
            conn.sendall(json.dumps(answer).encode() + b"\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.lossyfs", description=__doc__)
    parser.add_argument("backing")
    parser.add_argument("mountpoint")
    parser.add_argument("--control", required=True, help="the control socket's path")
    args = parser.parse_args(argv)
    import mfusepy

    ops = build_operations(os.path.abspath(args.backing))
    thread = threading.Thread(target=serve_control, args=(args.control, ops), daemon=True)
    thread.start()
    mfusepy.FUSE(
        ops,
        args.mountpoint,
        foreground=True,
        nothreads=True,
        direct_io=True,
        fsname="lossyfs",
        subtype="lossyfs",
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
    )


# -- the controller, for tests ----------------------------------------------------------------


def is_mounted(mountpoint: Path) -> bool:
    target = str(mountpoint.absolute())
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


class LossyMount:
    """One lossyfs mount, run as its own process: `start()`, `crash()` (drop what is
    unsynced, the mount is gone), `start()` again on the same backing dir, `stop()` (a
    clean unmount) and `cleanup()` (unmounts by path and kills by PID, whatever state it
    is in; for a test's finally)."""

    def __init__(self, backing: Path, mountpoint: Path, control: Path, log: Path) -> None:
        self.backing, self.mountpoint, self.control, self.log = backing, mountpoint, control, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.crashes: list[dict[str, Any]] = []

    def start(self, timeout: float = 15.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        assert not is_mounted(self.mountpoint), f"{self.mountpoint} is mounted already"
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": root, "PYTHONUNBUFFERED": "1"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.chaos.lossyfs", str(self.backing),
                 str(self.mountpoint), "--control", str(self.control)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"lossyfs exited with {self.proc.returncode}: {self.tail()}")
            if is_mounted(self.mountpoint):
                with contextlib.suppress(OSError):
                    self.stats()
                    return
            time.sleep(0.05)
        raise AssertionError(
            f"lossyfs did not mount {self.mountpoint} in {timeout}s: {self.tail()}"
        )

    def _ask(self, command: str) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(str(self.control))
            conn.sendall(command.encode() + b"\n")
            answer = conn.makefile("r").readline()
        if not answer:
            raise OSError(f"lossyfs gave no answer to {command!r}")
        return dict(json.loads(answer))

    def stats(self) -> dict[str, Any]:
        """Counts so far: writes, syncs, synced_bytes, and what is pending now."""
        return self._ask("stats")

    def fail_syncs(self, count: int, name: str = "") -> dict[str, Any]:
        """The next `count` syncs of a file with pending data (named `name`, if given) fail
        with EIO, and lose it (the module's docstring: a failed sync)."""
        return self._ask(f"fail-sync {count} {name}".strip())

    def crash(self, keep: float = 0.0, seed: int = 0) -> dict[str, Any]:
        """Power loss: every unsynced write dropped (or a share `keep` of its blocks left
        behind, unsynced), the filesystem's process gone, the mount removed. Returns what
        was pending when it happened."""
        assert self.proc is not None
        report = self._ask(f"crash {keep} {seed}")
        self.proc.wait(timeout=10)
        self._unmount()
        self.crashes.append(report)
        return report

    def stop(self) -> None:
        """A clean unmount: everything pending is written out first."""
        if self.proc is not None and self.proc.poll() is None:
            subprocess.run(["fusermount3", "-u", str(self.mountpoint)], check=True, timeout=30)
            self.proc.wait(timeout=30)

    def _unmount(self) -> None:
        if is_mounted(self.mountpoint):
            done = subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False)
            if done.returncode != 0 and is_mounted(self.mountpoint):
                subprocess.run(["umount", "-l", str(self.mountpoint)], check=False)

    def cleanup(self) -> None:
        """Unmount (by path) and end the process (by PID), whatever happened before."""
        try:
            self._unmount()
        finally:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


if __name__ == "__main__":
    main()
