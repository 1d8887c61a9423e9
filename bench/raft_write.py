"""Raft write benchmark: the HTTPS KV API of a 3-node cluster against bare pysyncobj.

Usage (from the repository root, symphonyd installed editable):

    python bench/raft_write.py            # full run, about 1-2 minutes
    python bench/raft_write.py --quick    # short run (fewer writes, 2 s windows), ~40 s
    python bench/raft_write.py --profile /tmp/raft-prof   # also py-spy the leaders (slower)
    python bench/raft_write.py --json out.json            # also write the figures as JSON
    python bench/raft_write.py --node-class scratch/variant.py:MyNode --api-variant
                                          # measure a prototype change to raft/node.py

Options: --seq N (sequential writes per run), --seq-time S, --pipe-time S, --pipe-max N,
--clients N (API concurrency), --inflight N (bare pysyncobj in-flight writes),
--only api,bare,nofsync (subset), --api-nodes N (daemons in the API run, default 3;
1 measures a one-node cluster, the quick start's), --keep (keep the temp dir with the
daemons' logs),
--quiet-wait S (before each phase, wait up to S s for other work on the machine to stop),
--node-class MODULE:CLASS (bare runs use this RaftNode subclass: try a change to
symphonyd/raft/node.py in a scratch file and measure it before making it; with
--api-variant the three daemons of the API run use it too).

In one run it measures, each on a fresh 3-node cluster on 127.0.0.1 (free ports, a temp
dir under $TMPDIR):

1. api     three real `python -m symphonyd run` processes (init, token, join), written
           through `PUT /v1/kv/bench/...` on the leader's HTTPS port with the admin token
           (aiohttp client, keep-alive, ssl=False):
             sequential: one client, one write at a time -> latency p50/p99;
             pipelined:  --clients concurrent clients -> writes/s (and latency under load).
2. bare    three processes each running `symphonyd.raft.node.RaftNode` directly (same
           DurableJournal and fsync, same password and SyncObjConf, FSM(Store()) fed the
           same KV_PUT entries), no HTTP: submit() -> callback on the leader, sequential
           and pipelined (up to --inflight writes in flight).
3. nofsync the same as 2 with os.fdatasync/os.fsync made no-ops inside those processes
           only, so the price of durability is visible.

For every pipelined phase it reports, per node, fsyncs per committed entry, journal adds
per committed entry (above 1 means entries were deleted and re-added), CPU used by each
process, and how busy the whole machine was (other work on the machine skews the figures:
the report says how much CPU went to processes that are not ours).

Every process it starts is stopped by its PID in a `finally` (SIGTERM, then SIGKILL);
every loop is bounded in count and time. Targets (docs/performance.md): API sequential
p50 < 3 ms; API pipelined >= 2,000 writes/s and >= half of bare pysyncobj's figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import multiprocessing
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VALUE = b"v" * 32  # the value of every write (API and bare)
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


# -- small helpers -------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def lat_summary(lat_s: list[float]) -> dict[str, Any]:
    ms = [x * 1000 for x in lat_s]
    return {
        "n": len(ms),
        "p50_ms": pct(ms, 50),
        "p90_ms": pct(ms, 90),
        "p99_ms": pct(ms, 99),
        "max_ms": max(ms) if ms else None,
        "mean_ms": statistics.fmean(ms) if ms else None,
    }


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process (0.0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds per thread (tid) of a process."""
    out = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                out[int(tid)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def machine_busy() -> float:
    """CPU seconds the whole machine spent not idle (all cores) since boot."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return (sum(parts[:8]) - idle) / CLK_TCK


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def count_lines(path: Path, needle: str) -> int:
    try:
        with open(path, errors="replace") as f:
            return sum(1 for line in f if needle in line)
    except OSError:
        return 0


def fmt(value: Any, spec: str = ".2f") -> str:
    if value is None:
        return "-"
    return format(value, spec)


def machine_info(tmp: str) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    fs = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["df", "-T", tmp], capture_output=True, text=True, timeout=10
        ).stdout.splitlines()
        if len(out) > 1:
            fs = f"{out[1].split()[1]} ({out[1].split()[0]})"
    try:
        from importlib.metadata import version

        pso = version("pysyncobj")
    except Exception:
        pso = "?"
    return {
        "nproc": NCPU,
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pysyncobj": pso,
        "tmp_fs": fs,
        "loadavg_at_start": os.getloadavg(),
    }


def fsync_micro(directory: str, count: int = 200) -> dict[str, float]:
    """Cost of one 100-byte O_APPEND write + fdatasync, and of fdatasync per 10 appends."""
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        rec = b"x" * 100
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            os.write(fd, rec)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(count * 10):
            os.write(fd, rec)
            if i % 10 == 9:
                os.fdatasync(fd)
        grouped = (time.perf_counter() - t0) / (count * 10)
    finally:
        os.close(fd)
        os.unlink(path)
    return {
        "append_fdatasync_p50_us": (pct(times, 50) or 0) * 1e6,
        "append_fdatasync_p99_us": (pct(times, 99) or 0) * 1e6,
        "per_entry_10_per_sync_us": grouped * 1e6,
    }


# -- per-phase accounting ------------------------------------------------------------------


def wait_quiet(pids: dict[str, int], max_s: float, threshold: float = 0.25) -> float:
    """Wait (at most max_s) until processes that are not ours use under `threshold` cores.

    Returns the last measured foreign load in cores. Other work on a 2-core machine
    changes the figures more than anything measured here, so every phase starts quiet
    when it can, and its accounting says how busy the machine was.
    """
    deadline = time.monotonic() + max_s
    other = 0.0
    while True:
        t0, b0, s0 = time.monotonic(), machine_busy(), self_cpu()
        c0 = sum(proc_cpu(p) for p in pids.values())
        time.sleep(0.5)
        wall = time.monotonic() - t0
        ours = sum(proc_cpu(p) for p in pids.values()) - c0 + self_cpu() - s0
        other = max(0.0, machine_busy() - b0 - ours) / wall
        if other < threshold or time.monotonic() > deadline:
            if other >= threshold:
                print(f"  (machine still busy with other work: {other:.2f} cores)", flush=True)
            return other


def snapshot(pids: dict[str, int], statuses: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "t": time.monotonic(),
        "busy": machine_busy(),
        "self": self_cpu(),
        "cpu": {name: proc_cpu(pid) for name, pid in pids.items()},
        "threads": {name: thread_cpu(pid) for name, pid in pids.items()},
        "pids": dict(pids),
        "raft": statuses,
    }


def account(before: dict[str, Any], after: dict[str, Any], leader: str) -> dict[str, Any]:
    """Deltas between two snapshots: CPU per process, fsyncs and adds per committed entry."""
    wall = after["t"] - before["t"]
    ours = 0.0
    nodes: dict[str, Any] = {}
    committed = None
    la, lb = after["raft"].get(leader, {}), before["raft"].get(leader, {})
    if la and lb:
        committed = la.get("commit_index", 0) - lb.get("commit_index", 0)
    for name in after["cpu"]:
        cpu = after["cpu"][name] - before["cpu"].get(name, 0.0)
        ours += cpu
        a, b = after["raft"].get(name, {}), before["raft"].get(name, {})
        syncs = a.get("journal_syncs", 0) - b.get("journal_syncs", 0)
        adds = a.get("journal_synced_entries", 0) - b.get("journal_synced_entries", 0)
        pid = after["pids"][name]
        tb, ta = before["threads"].get(name, {}), after["threads"].get(name, {})
        tdelta = {tid: ta[tid] - tb.get(tid, 0.0) for tid in ta}
        main_cpu = tdelta.pop(pid, 0.0)
        busiest = max(tdelta.values(), default=0.0)  # the Raft thread, in practice
        nodes[name] = {
            "role": "leader" if name == leader else "follower",
            "cpu_s": cpu,
            "main_thread_pct": 100 * main_cpu / wall if wall > 0 else None,
            "busiest_other_thread_pct": 100 * busiest / wall if wall > 0 else None,
            "cpu_pct_of_core": 100 * cpu / wall if wall > 0 else None,
            "fsyncs": syncs,
            "adds": adds,
            "fsyncs_per_entry": syncs / committed if committed else None,
            "adds_per_entry": adds / committed if committed else None,
            "trimmed": a.get("trimmed_entries", 0) - b.get("trimmed_entries", 0),
        }
    client = after["self"] - before["self"]
    ours += client
    busy = after["busy"] - before["busy"]
    return {
        "wall_s": wall,
        "committed": committed,
        "nodes": nodes,
        "bench_process_cpu_s": client,
        "machine_busy_cores": busy / wall if wall > 0 else None,
        "other_busy_cores": max(0.0, busy - ours) / wall if wall > 0 else None,
        "cpu_ms_per_entry": 1000 * ours / committed if committed else None,
    }


# -- py-spy ----------------------------------------------------------------------------------

_RULES: list[tuple[str, re.Pattern[str]]] = [
    # --native only: a thread waiting to take the GIL back, or idle in a wait
    ("GIL wait", re.compile(r"take_gil|pthread_cond_timedwait")),
    ("idle (poll/epoll)", re.compile(r"^(poll|__poll|epoll_pwait|epoll_wait|select) \(")),
    ("idle (lock/queue wait)", re.compile(r"PyThread_acquire_lock_timed")),
    ("fsync (journal)", re.compile(r"fdatasync|\bfsync\b|DurableJournal\.sync")),
    (
        "Fernet encrypt/decrypt",
        re.compile(r"fernet\.py|pysyncobj/encryptor\.py|tcp_connection\.py:(146|285|286|290)\)"),
    ),
    ("pickle+zlib (send)", re.compile(r"tcp_connection\.py:144\)")),
    ("unpickle+unzlib (recv)", re.compile(r"tcp_connection\.py:291\)")),
    ("socket send/recv", re.compile(r"tcp_connection\.py")),
    ("journal write", re.compile(r"symphonyd/raft/journal\.py")),
    ("FSM + store (apply)", re.compile(r"symphonyd/raft/fsm\.py|symphonyd/state/")),
    ("pysyncobj poll", re.compile(r"pysyncobj/poller\.py|pipe_notifier")),
    ("pysyncobj raft logic", re.compile(r"pysyncobj/|symphonyd/raft/node\.py")),
    ("asyncio bridge (cluster.py)", re.compile(r"symphonyd/raft/cluster\.py")),
    ("TLS", re.compile(r"ssl\.py|sslproto|libssl|\bSSL_|_ssl\.c")),
    ("zlib (C)", re.compile(r"libz\.so|zlibmodule\.c")),
    ("pickle (C)", re.compile(r"_pickle\.c")),
    ("our API handlers", re.compile(r"symphonyd/api/")),
    ("aiohttp HTTP", re.compile(r"aiohttp/")),
    ("event loop", re.compile(r"asyncio/|uvloop")),
    ("msgpack/json", re.compile(r"msgpack|json/")),
    ("bench driver", re.compile(r"raft_write\.py")),
]


def categorise(stack: list[str]) -> str:
    for frame in reversed(stack):  # innermost frame first
        for name, rule in _RULES:
            if rule.search(frame):
                return name
    return "other"


def summarise_pyspy(path: Path, rate: int, duration: float) -> dict[str, Any]:
    """Read py-spy's collapsed (raw) output: time per thread and per category, top leaves."""
    per_thread: dict[str, Counter[str]] = defaultdict(Counter)
    leaves: Counter[str] = Counter()
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"error": f"no output in {path}"}
    for line in lines:
        stack_text, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack_text.split(";") if f and not f.startswith("process ")]
        thread_frames = [f for f in frames if f.startswith("thread ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        text = ";".join(frames)
        if "_tick_loop" in text or "_autoTickThread" in text:
            thread = "raft thread"
        elif re.search(r"_bootstrap \([^)]*threading\.py", text):
            thread = "other threads"
        else:
            thread = "main thread"
        if thread_frames and thread == "other threads":
            thread = "other threads"
        per_thread[thread][categorise(frames)] += count
        if frames:
            leaves[frames[-1]] += count
        total += count
    possible = rate * duration
    return {
        "samples": total,
        "threads": {
            t: {
                "active_pct": 100 * sum(c.values()) / possible if possible else None,
                "categories": {k: round(100 * v / sum(c.values()), 1) for k, v in c.most_common()},
            }
            for t, c in per_thread.items()
        },
        "top_leaves": [(k, round(100 * v / total, 1)) for k, v in leaves.most_common(15)]
        if total
        else [],
    }


class Profiler:
    """py-spy record against some PIDs for the length of one phase (all by PID)."""

    def __init__(self, directory: str | None, rate: int = 100, native: bool = False) -> None:
        self.directory = Path(directory) if directory else None
        self.native = native
        self.rate = rate
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path, float]] = []
        self.available = bool(directory) and shutil.which("py-spy") is not None
        if directory and not self.available:
            print("  (py-spy not found: pip install py-spy; profiling skipped)")

    def start(self, label: str, targets: dict[str, int], duration: float) -> None:
        if not self.available or self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for name, pid in targets.items():
            out = self.directory / f"{label}-{name}.txt"
            with contextlib.suppress(FileNotFoundError):
                out.unlink()
            proc = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(self.rate),
                    "--duration",
                    str(max(1, int(duration))),
                    "--format",
                    "raw",
                    "--threads",
                    "--output",
                    str(out),
                    # --native needs the target paused for each sample (slower)
                    *(["--native"] if self.native else ["--nonblocking"]),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )
            self.procs.append((f"{label}-{name}", proc, out, max(1, int(duration))))
        time.sleep(0.5)  # let py-spy attach before the phase starts

    def finish(self) -> dict[str, Any]:
        results = {}
        for label, proc, out, duration in self.procs:
            try:
                proc.wait(timeout=duration + 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            results[label] = summarise_pyspy(out, self.rate, duration)
            results[label]["file"] = str(out)
        self.procs = []
        return results

    def kill_all(self) -> None:
        for _label, proc, _out, _d in self.procs:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        self.procs = []


# -- 1. the API of a real 3-node cluster -------------------------------------------------------


async def api_sequential(
    url: str, token: str, count: int, max_s: float, warmup: int
) -> dict[str, Any]:
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"}
    lat: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(ssl=False, limit=1)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        for i in range(warmup):
            async with session.put(f"{url}/v1/kv/bench/warm-{i}", data=VALUE) as r:
                await r.read()
        deadline = time.monotonic() + max_s
        for i in range(count):
            if time.monotonic() > deadline:
                break
            t0 = time.perf_counter()
            async with session.put(f"{url}/v1/kv/bench/seq-{i}", data=VALUE) as r:
                body = await r.read()
            lat.append(time.perf_counter() - t0)
            if r.status != 200 or body.strip() != b"true":
                errors += 1
        # The floor under a write: the same connection, requests that touch no Raft.
        floor: dict[str, Any] = {}
        for label, path in (("health", "/v1/health"), ("kv_get", "/v1/kv/bench/warm-0")):
            flat: list[float] = []
            for _ in range(min(count, 500)):
                t0 = time.perf_counter()
                async with session.get(f"{url}{path}") as r:
                    await r.read()
                flat.append(time.perf_counter() - t0)
                if r.status != 200:
                    errors += 1
            floor[label] = lat_summary(flat)
    return {**lat_summary(lat), "errors": errors, "floor": floor}


async def api_pipelined(
    urls: list[str], token: str, clients: int, count: int, max_s: float
) -> dict[str, Any]:
    """Client w writes to urls[w % len(urls)] (one URL: all to the leader)."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"}
    lat: list[float] = []
    errors: Counter[str] = Counter()
    issued = 0
    connector = aiohttp.TCPConnector(ssl=False, limit=clients)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        # Open every connection (TLS handshakes) before the clock starts.
        async def warm(w: int) -> None:
            url = urls[w % len(urls)]
            async with session.put(f"{url}/v1/kv/bench/warm-pipe-{w}", data=VALUE) as r:
                await r.read()

        await asyncio.gather(*(warm(w) for w in range(clients)))
        deadline = time.monotonic() + max_s

        async def worker(w: int) -> None:
            nonlocal issued
            url = urls[w % len(urls)]
            j = 0
            while issued < count and time.monotonic() < deadline:
                issued += 1
                j += 1
                t0 = time.perf_counter()
                try:
                    async with session.put(f"{url}/v1/kv/bench/pipe-{w}-{j}", data=VALUE) as r:
                        body = await r.read()
                    if r.status != 200 or body.strip() != b"true":
                        errors[f"http {r.status}"] += 1
                        continue
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[type(exc).__name__] += 1
                    await asyncio.sleep(0.05)
                    continue
                lat.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker(w) for w in range(clients))), max_s + 30)
        elapsed = time.perf_counter() - start
    return {
        "clients": clients,
        "ok": len(lat),
        "errors": dict(errors),
        "elapsed_s": elapsed,
        "writes_per_s": len(lat) / elapsed if elapsed > 0 else None,
        "latency": lat_summary(lat),
    }


def run_coro(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


# `python -c LAUNCHER CLASS_SPEC <symphonyd args>`: symphonyd with another RaftNode class.
LAUNCHER = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
spec = sys.argv.pop(1)
import symphonyd.daemon
from bench.raft_write import load_node_class
symphonyd.daemon.RaftNode = load_node_class(spec)
sys.argv[0] = "symphonyd"
from symphonyd.cli.main import main
main()
"""


def make_nodeset(base: Path, node_class: str | None) -> Any:
    """tests/nodes.py's NodeSet; with node_class, its daemons run that RaftNode subclass."""
    from tests.nodes import NodeProcess, NodeSet

    if not node_class:
        return NodeSet(base)
    spec: str = node_class

    class VariantNode(NodeProcess):
        @property
        def program(self) -> list[str]:
            return [sys.executable, "-c", LAUNCHER, spec]

    class VariantNodeSet(NodeSet):
        def new(self, name: str, start: bool = True) -> NodeProcess:
            node = VariantNode(self.base, name)
            self.nodes.append(node)
            if start:
                node.start()
            return node

    return VariantNodeSet(base)


def bench_api(args: argparse.Namespace, base: Path, profiler: Profiler) -> dict[str, Any]:
    from tests.nodes import wait_until

    nodeset = make_nodeset(base / "api", args.node_class if args.api_variant else None)
    try:
        print(
            f"api: starting {args.api_nodes} symphonyd processes (init, token, join) ...",
            flush=True,
        )
        t0 = time.monotonic()
        members = nodeset.form(args.api_nodes)
        leader = nodeset.leader(members)
        print(
            f"api: cluster formed in {time.monotonic() - t0:.1f}s; leader {leader.name} "
            f"(pid {leader.proc.pid if leader.proc else '?'})",
            flush=True,
        )
        assert nodeset.admin_token
        token = nodeset.admin_token
        url = f"https://127.0.0.1:{leader.api_port}"
        pids = {n.name: n.proc.pid for n in members if n.proc}

        def statuses() -> dict[str, dict[str, Any]]:
            time.sleep(0.15)  # RaftNode.status() is refreshed every ~50 ms
            return {n.name: dict(n.status().get("raft") or {}) for n in members}

        # Every node must have caught up with the joins before the clock starts.
        wait_until(
            lambda: len({s.get("commit_index") for s in statuses().values()}) == 1,
            20,
            "the followers to catch up",
        )
        result: dict[str, Any] = {"leader": leader.name, "pids": pids}

        wait_quiet(pids, args.quiet_wait)
        before = snapshot(pids, statuses())
        result["seq"] = run_coro(api_sequential(url, token, args.seq, args.seq_time, 50))
        result["seq"]["accounting"] = account(before, snapshot(pids, statuses()), leader.name)

        wait_quiet(pids, args.quiet_wait)
        profiler.start(
            "api",
            {
                f"leader-{leader.name}": pids[leader.name],
                f"follower-{members[-1].name}": pids[members[-1].name],
            },
            args.pipe_time,
        )
        before = snapshot(pids, statuses())
        result["pipe"] = run_coro(
            api_pipelined([url], token, args.clients, args.pipe_max, args.pipe_time)
        )
        result["pipe"]["accounting"] = account(before, snapshot(pids, statuses()), leader.name)
        # The same clients spread over every member (followers forward to the leader), which
        # takes HTTP and TLS work off the leader's one GIL.
        wait_quiet(pids, args.quiet_wait)
        spread = [f"https://127.0.0.1:{n.api_port}" for n in members]
        before = snapshot(pids, statuses())
        result["spread"] = run_coro(
            api_pipelined(spread, token, args.clients, args.pipe_max, args.pipe_time)
        )
        result["spread"]["accounting"] = account(before, snapshot(pids, statuses()), leader.name)
        result["profile"] = profiler.finish()
        result["truncation_warnings"] = {
            n.name: count_lines(n.log_path, "truncating already-applied") for n in members
        }
        result["snapshots_taken"] = {
            n.name: (n.data_dir / "raft" / "snapshot").exists() for n in members
        }
        return result
    finally:
        profiler.kill_all()
        nodeset.cleanup()  # SIGTERM then SIGKILL, each by its PID
        for node in nodeset.nodes:  # belt and braces: nothing may outlive the run
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait(timeout=10)


# -- 2./3. bare pysyncobj (RaftNode without the daemon) ---------------------------------------


def load_node_class(spec: str | None) -> Any:
    """`module:Class` or `path/file.py:Class` (a RaftNode subclass), or RaftNode itself."""
    from symphonyd.raft.node import RaftNode

    if not spec:
        return RaftNode
    import importlib
    import importlib.util

    where, _, name = spec.rpartition(":")
    if where.endswith(".py"):
        module_spec = importlib.util.spec_from_file_location("bench_node_variant", where)
        assert module_spec and module_spec.loader, f"cannot load {where}"
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    cls = getattr(module, name)
    if not issubclass(cls, RaftNode):
        raise TypeError(f"{spec} is not a RaftNode subclass")
    return cls


def _bare_child(
    conn: Any,
    index: int,
    addrs: list[str],
    raft_dir: str,
    secret: str,
    fsync: bool,
    node_class: str | None = None,
) -> None:
    """One bare RaftNode process; answers commands from the parent over a pipe."""
    parent = os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not fsync:
        os.fdatasync = lambda fd: None
        os.fsync = lambda fd: None
    critical = Counter[str]()

    class CountCritical(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.CRITICAL:
                critical[record.getMessage()[:40]] += 1

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().addHandler(CountCritical())

    from symphonyd.raft.entries import Entry, EntryType
    from symphonyd.raft.fsm import FSM
    from symphonyd.state.store import Store

    node_cls = load_node_class(node_class)
    node = node_cls(
        self_addr=addrs[index],
        peers=[a for i, a in enumerate(addrs) if i != index],
        raft_dir=raft_dir,
        secret=secret,
        fsm=FSM(Store()),
    )
    node.start()

    def entry(key: str) -> bytes:
        return Entry(
            EntryType.KV_PUT, {"key": key, "value": VALUE, "flags": 0, "cas": None}
        ).encode()

    def sequential(count: int, max_s: float, warmup: int) -> dict[str, Any]:
        def cb(done: threading.Event, outcome: list[Any], result: Any, error: int) -> None:
            outcome[:] = [result, error]
            done.set()

        lat: list[float] = []
        errors = 0
        deadline = None
        for i in range(warmup + count):
            if i == warmup:
                deadline = time.monotonic() + max_s
            if deadline is not None and time.monotonic() > deadline:
                break
            data = entry(f"bench/seq-{i}")
            done = threading.Event()  # one per write: a late callback cannot end the next
            outcome: list[Any] = [None, None]
            t0 = time.perf_counter()
            node.submit(data, functools.partial(cb, done, outcome))
            if not done.wait(5.0):
                errors += 1
                continue
            if i >= warmup:
                lat.append(time.perf_counter() - t0)
            if outcome[1] != 0 or not (outcome[0] or {}).get("ok"):
                errors += 1
        return {**lat_summary(lat), "errors": errors}

    def pipelined(count: int, max_s: float, inflight: int) -> dict[str, Any]:
        slots = threading.BoundedSemaphore(inflight)
        lat: list[float] = []
        errors: Counter[int] = Counter()
        finished = threading.Event()
        state = {"outstanding": 0, "last": 0.0}
        lock = threading.Lock()

        def cb(t0: float, result: Any, error: int) -> None:  # on the Raft thread
            now = time.perf_counter()
            if error == 0 and (result or {}).get("ok"):
                lat.append(now - t0)
            else:
                errors[error] += 1
            with lock:
                state["outstanding"] -= 1
                state["last"] = now
                if state["outstanding"] == 0:
                    finished.set()
            slots.release()

        start = time.perf_counter()
        deadline = time.monotonic() + max_s
        issued = 0
        while issued < count and time.monotonic() < deadline:
            if not slots.acquire(timeout=1.0):
                continue
            data = entry(f"bench/pipe-{issued}")
            with lock:
                state["outstanding"] += 1
                finished.clear()
            issued += 1
            node.submit(data, functools.partial(cb, time.perf_counter()))
        finished.wait(30.0)
        end = state["last"] or time.perf_counter()
        elapsed = end - start
        return {
            "inflight": inflight,
            "ok": len(lat),
            "errors": {str(k): v for k, v in errors.items()},
            "unfinished": state["outstanding"],
            "elapsed_s": elapsed,
            "writes_per_s": len(lat) / elapsed if elapsed > 0 else None,
            "latency": lat_summary(lat),
        }

    try:
        while True:
            if not conn.poll(1.0):
                if os.getppid() != parent:
                    break  # the benchmark died: do not outlive it
                continue
            command, *params = conn.recv()
            if command == "status":
                time.sleep(0.1)
                conn.send({**node.status(), "critical": dict(critical), "pid": os.getpid()})
            elif command == "seq":
                conn.send(sequential(*params))
            elif command == "pipe":
                conn.send(pipelined(*params))
            elif command == "stop":
                break
    finally:
        node.stop()
        with contextlib.suppress(OSError):
            conn.send("stopped")


def bench_bare(
    args: argparse.Namespace, base: Path, fsync: bool, profiler: Profiler, label: str
) -> dict[str, Any]:
    from symphonyd.security import new_secret
    from tests.nodes import free_port

    ctx = multiprocessing.get_context("spawn")
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    secret = new_secret()
    procs: list[Any] = []
    conns: list[Any] = []
    names = [f"b{i + 1}" for i in range(3)]
    try:
        print(
            f"{label}: starting 3 RaftNode processes (fsync {'on' if fsync else 'OFF'}) ...",
            flush=True,
        )
        for i in range(3):
            parent_conn, child_conn = ctx.Pipe()
            proc = ctx.Process(
                target=_bare_child,
                name=f"bare-{names[i]}",
                daemon=True,
                args=(
                    child_conn,
                    i,
                    addrs,
                    str(base / label / names[i]),
                    secret,
                    fsync,
                    args.node_class,
                ),
            )
            proc.start()
            procs.append(proc)
            conns.append(parent_conn)

        def ask(i: int, *command: Any, timeout: float = 30.0) -> Any:
            conns[i].send(command)
            if not conns[i].poll(timeout):
                raise TimeoutError(f"{names[i]} did not answer {command[0]} in {timeout}s")
            return conns[i].recv()

        def statuses() -> dict[str, dict[str, Any]]:
            return {names[i]: ask(i, "status") for i in range(3)}

        leader = None
        deadline = time.monotonic() + 30
        while leader is None and time.monotonic() < deadline:
            for name, s in statuses().items():
                if (
                    s.get("role") == "leader"
                    and s.get("has_quorum")
                    and all(p["connected"] for p in s["peers"].values())
                ):
                    leader = name
            if leader is None:
                time.sleep(0.2)
        if leader is None:
            raise RuntimeError(f"{label}: no leader within 30s")
        li = names.index(leader)
        follower = names[(li + 1) % 3]
        pids = {names[i]: procs[i].pid for i in range(3)}
        print(f"{label}: leader {leader} (pid {pids[leader]})", flush=True)
        result: dict[str, Any] = {"leader": leader, "pids": pids}

        wait_quiet(pids, args.quiet_wait)
        before = snapshot(pids, statuses())
        result["seq"] = ask(li, "seq", args.seq, args.seq_time, 50, timeout=args.seq_time + 60)
        result["seq"]["accounting"] = account(before, snapshot(pids, statuses()), leader)

        wait_quiet(pids, args.quiet_wait)
        profiler.start(
            label,
            {f"leader-{leader}": pids[leader], f"follower-{follower}": pids[follower]},
            args.pipe_time,
        )
        before = snapshot(pids, statuses())
        result["pipe"] = ask(
            li, "pipe", args.pipe_max, args.pipe_time, args.inflight, timeout=args.pipe_time + 60
        )
        final = statuses()
        result["pipe"]["accounting"] = account(before, snapshot(pids, final), leader)
        result["profile"] = profiler.finish()
        result["truncation_warnings"] = {
            n: sum(v for k, v in s.get("critical", {}).items() if "truncat" in k)
            for n, s in final.items()
        }
        result["snapshots_taken"] = {n: (base / label / n / "snapshot").exists() for n in names}
        return result
    finally:
        profiler.kill_all()
        for i, proc in enumerate(procs):
            with contextlib.suppress(Exception):
                if proc.is_alive():
                    conns[i].send(("stop",))
        for proc in procs:  # each by its own PID: SIGTERM, then SIGKILL
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for conn in conns:
            conn.close()


# -- report --------------------------------------------------------------------------------


def print_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    m = results["machine"]
    print()
    print(
        f"machine: {m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}, Python {m['python']}, "
        f"pysyncobj {m['pysyncobj']}, temp fs {m['tmp_fs']}, "
        f"loadavg at start {' '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}"
    )
    f = results.get("fsync_micro")
    if f:
        print(
            f"disk: 100 B append + fdatasync p50 {f['append_fdatasync_p50_us']:.0f} us "
            f"(p99 {f['append_fdatasync_p99_us']:.0f} us); one fdatasync per 10 appends: "
            f"{f['per_entry_10_per_sync_us']:.1f} us/entry"
        )
    print()
    bare_name = (args.node_class or "RaftNode").rpartition(":")[2]
    api_name = f"API ({bare_name})" if args.api_variant and args.node_class else "API"
    rows = [
        ("api", f"{api_name}: HTTPS PUT /v1/kv, {args.api_nodes} daemons"),
        ("bare", f"bare {bare_name}, fsync (durable)"),
        ("nofsync", f"bare {bare_name}, fsync disabled"),
    ]
    header = (
        f"{'':36} {'seq p50':>8} {'seq p99':>8} {'n':>5} | {'pipe w/s':>9} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'errs':>5} | {'fsync/entry L,F,F':>18} "
        f"{'adds/entry':>11} {'CPU ms/entry':>12}"
    )
    print(header)
    print("-" * len(header))
    for key, title in rows:
        r = results.get(key)
        if not r:
            continue
        seq, pipe = r["seq"], r["pipe"]
        acc = pipe["accounting"]
        order = sorted(acc["nodes"], key=lambda n: acc["nodes"][n]["role"] != "leader")
        fpe = ",".join(fmt(acc["nodes"][n]["fsyncs_per_entry"]) for n in order)
        ape = ",".join(fmt(acc["nodes"][n]["adds_per_entry"], ".1f") for n in order)
        errs = sum(pipe["errors"].values()) if isinstance(pipe["errors"], dict) else 0
        print(
            f"{title:36} {fmt(seq['p50_ms']):>8} {fmt(seq['p99_ms']):>8} {seq['n']:>5} | "
            f"{fmt(pipe['writes_per_s'], ',.0f'):>9} {fmt(pipe['latency']['p50_ms']):>7} "
            f"{fmt(pipe['latency']['p99_ms']):>7} {errs:>5} | {fpe:>18} {ape:>11} "
            f"{fmt(acc['cpu_ms_per_entry']):>12}"
        )
    print(
        "(fsync/entry: fsyncs per committed entry, leader first; adds/entry: journal adds per "
        "committed entry;\n CPU ms/entry: all the nodes plus this process, from the pipelined "
        "phase)"
    )
    if results.get("api", {}).get("spread"):
        sp = results["api"]["spread"]
        print(
            f"{'API, clients spread over the members':36} {'':>8} {'':>8} {'':>5} | "
            f"{fmt(sp['writes_per_s'], ',.0f'):>9} {fmt(sp['latency']['p50_ms']):>7} "
            f"{fmt(sp['latency']['p99_ms']):>7} "
            f"{sum(sp['errors'].values()) if isinstance(sp['errors'], dict) else 0:>5} |"
        )
    print()
    print(f"CPU per phase (% of one core; the machine has {NCPU}); [main thread, Raft thread]:")
    for key, _title in rows:
        r = results.get(key)
        if not r:
            continue
        for phase in ("seq", "pipe", "spread"):
            if phase not in r:
                continue
            acc = r[phase]["accounting"]
            procs = ", ".join(
                f"{n} ({v['role'][0].upper()}) {fmt(v['cpu_pct_of_core'], '.0f')}% "
                f"[main {fmt(v['main_thread_pct'], '.0f')}, raft "
                f"{fmt(v['busiest_other_thread_pct'], '.0f')}]"
                for n, v in sorted(acc["nodes"].items(), key=lambda kv: kv[1]["role"] != "leader")
            )
            bench_pct = 100 * acc["bench_process_cpu_s"] / acc["wall_s"]
            print(
                f"  {key:8} {phase:4}: {procs}, bench process {bench_pct:.0f}%; machine busy "
                f"{fmt(acc['machine_busy_cores'])} cores, not ours "
                f"{fmt(acc['other_busy_cores'])} cores"
            )
        print(
            f"  {key:8} truncation warnings: {r.get('truncation_warnings')}, "
            f"snapshot taken: {r.get('snapshots_taken')}"
        )
    api, bare, nof = results.get("api"), results.get("bare"), results.get("nofsync")
    if api and api["seq"].get("floor"):
        fl = api["seq"]["floor"]
        print(
            "API floor on the same connection (no Raft): "
            f"GET /v1/health p50 {fmt(fl['health']['p50_ms'])} ms, "
            f"GET /v1/kv/<key> p50 {fmt(fl['kv_get']['p50_ms'])} ms "
            f"(p99 {fmt(fl['kv_get']['p99_ms'])} ms)"
        )
    print()

    def rate(r: dict[str, Any] | None) -> float | None:
        return r["pipe"]["writes_per_s"] if r else None

    ratios = {}
    if api and bare:
        ratios["api_pipe / bare_pipe"] = rate(api) / rate(bare)  # type: ignore[operator]
    if api and nof:
        ratios["api_pipe / nofsync_pipe"] = rate(api) / rate(nof)  # type: ignore[operator]
    if bare and nof:
        ratios["bare_pipe / nofsync_pipe"] = rate(bare) / rate(nof)  # type: ignore[operator]
        ratios["bare seq p50 / nofsync seq p50"] = bare["seq"]["p50_ms"] / nof["seq"]["p50_ms"]
    if api and bare:
        ratios["api seq p50 / bare seq p50"] = api["seq"]["p50_ms"] / bare["seq"]["p50_ms"]
    results["ratios"] = ratios
    for k, v in ratios.items():
        print(f"ratio {k}: {v:.2f}")
    if api:
        targets = {
            "API sequential p50 < 3 ms": api["seq"]["p50_ms"] < 3.0,
            "API pipelined >= 2,000 writes/s": (rate(api) or 0) >= 2000,
        }
        if bare:
            targets["API pipelined >= 0.5 x bare"] = ratios["api_pipe / bare_pipe"] >= 0.5
        results["targets"] = targets
        for k, ok in targets.items():
            print(f"target {k}: {'met' if ok else 'NOT met'}")
    profiles = {
        k: r.get("profile")
        for k, r in (("api", api), ("bare", bare), ("nofsync", nof))
        if r and r.get("profile")
    }
    for prof in profiles.values():
        for label, p in prof.items():
            print()
            print(f"py-spy {label} ({p.get('samples', 0)} samples, {p.get('file')}):")
            for thread, t in p.get("threads", {}).items():
                cats = ", ".join(f"{c} {v}%" for c, v in list(t["categories"].items())[:8])
                print(f"  {thread}: active {fmt(t['active_pct'], '.0f')}% of samples; {cats}")
            for leaf, share in p.get("top_leaves", [])[:8]:
                print(f"    {share:5.1f}%  {leaf}")


# -- main ------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run")
    parser.add_argument("--seq", type=int, default=None, help="sequential writes (default 2000)")
    parser.add_argument("--seq-time", type=float, default=None, help="max s of sequential")
    parser.add_argument("--pipe-time", type=float, default=None, help="s of pipelined writes")
    parser.add_argument(
        "--pipe-max",
        type=int,
        default=15000,
        help="max pipelined writes (keeps each cluster under pysyncobj's "
        "20,000-entry log compaction)",
    )
    parser.add_argument("--clients", type=int, default=32, help="concurrent API clients")
    parser.add_argument("--inflight", type=int, default=1000, help="bare in-flight writes")
    parser.add_argument(
        "--node-class",
        metavar="MODULE:CLASS",
        help="run the bare benchmarks with this RaftNode subclass (module "
        "or path/file.py), to measure a change before making it",
    )
    parser.add_argument(
        "--api-variant", action="store_true", help="the API cluster's daemons also use --node-class"
    )
    parser.add_argument("--only", default="api,bare,nofsync", help="subset to run")
    parser.add_argument(
        "--api-nodes", type=int, default=3, help="daemons in the API run (1: a one-node cluster)"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each phase wait up to this many s for other work on "
        "the machine to stop (0: do not wait)",
    )
    parser.add_argument("--profile", metavar="DIR", help="py-spy record leaders into DIR")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples/s")
    parser.add_argument(
        "--profile-native",
        action="store_true",
        help="py-spy --native: C frames too (TLS, zlib, crypto)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    args.seq = args.seq or (500 if args.quick else 2000)
    args.seq_time = args.seq_time or (5.0 if args.quick else 15.0)
    args.pipe_time = args.pipe_time or (2.0 if args.quick else 4.0)
    only = {x.strip() for x in args.only.split(",") if x.strip()}

    base = Path(tempfile.mkdtemp(prefix="symphonyd-bench-"))
    results: dict[str, Any] = {
        "machine": machine_info(str(base)),
        "args": {k: v for k, v in vars(args).items()},
    }
    profiler = Profiler(args.profile, args.profile_rate, args.profile_native)
    if args.profile:
        print("note: py-spy runs on the same cores; figures of a --profile run are lower.")
    try:
        results["fsync_micro"] = fsync_micro(str(base))
        if "api" in only:
            results["api"] = bench_api(args, base, profiler)
        if "bare" in only:
            results["bare"] = bench_bare(args, base, True, profiler, "bare")
        if "nofsync" in only:
            results["nofsync"] = bench_bare(args, base, False, profiler, "nofsync")
        print_report(results, args)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))
            print(f"\nwrote {args.json}")
    finally:
        profiler.kill_all()
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
