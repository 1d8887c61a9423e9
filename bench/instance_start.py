"""Instance start benchmark: how long a compute instance takes from the request to running,
against the floor of defining and starting the same libvirt domain directly.

Usage (repository root, symphonyd installed):

    python bench/instance_start.py               # 20 runs of each sequential figure
    python bench/instance_start.py --quick       # 5 runs (the 3-node burst is still 20)
    python bench/instance_start.py --no-cluster  # the floor only
    python bench/instance_start.py --qemu        # also a real guest under qemu (TCG): root

What it times, in one run:

1. Floor: the domain XML symphonyd makes (`domain_xml` of a `DomainSpec` like the agent's:
   1 vCPU, 64 MiB, one raw disk, the seed ISO, a file console) defined and started with
   libvirt-python (`defineXML` + `create`) on an isolated test driver (`LibvirtDriver`
   with uri "" writes its node file), and the same through `LibvirtDriver.define` +
   `start`. Each domain is destroyed and undefined afterwards (not timed). Also the seed
   ISO the agent writes for each instance (`cloudinit.build_seed`) and the root volume
   copy (`FileDriver.create` of 16 MiB from the 1 MiB boot image). The target line at the
   end: 3 x (direct define + create + seed) + copy, against the one-node p50.
2. One node (block + compute on the test driver with 64 CPUs and 64 GiB, an image made
   with `testimage.write_image`, `images.min_replicas 1`): `POST /v1/instances` (disk 16M,
   memory 64M) on the control socket, followed on `GET /v1/events` (opened before the
   POST) until it shows `running` (at most 60 s), sequentially: each change is timed as it
   reaches the client (posted, placed, its root volume ready, running), with no polling.
   One creation before them warms the node up (its time is shown, not counted).
   Also `symphonyd instance create` (which waits itself) and, for the CLI's own cost,
   `symphonyd instance list`. Every instance is removed after it ran (DELETE, then until
   the instance and its root volume are gone, at most 60 s), also timed.
3. Three nodes (the same on each, `images.min_replicas 3` so every node holds the image
   before the clock starts, one instance per node made and removed to warm them): 20
   POSTs sent at once from 20 threads to n1, followed on its events stream until all 20
   run (at most 120 s); the spread over the nodes; then all 20 removed at once.
4. `--qemu` (root, with libvirtd, virtlogd and qemu-system-x86_64): a libvirtd of its own
   on a socket in the temp dir (tests/libvirtd.py: stopped by PID, the iptables
   rules it added removed), the direct floor on it (`defineXML` + `create` until
   the boot sector's marker is in the console file) and one node with compute on it
   (`-o virt_type=qemu`): POST until the marker is in `GET /v1/instances/{id}/console`
   (every 50 ms, at most 120 s), 5 runs each, each removed after. With --no-cluster, only
   the floor on it.

p50 and p90 are nearest-rank percentiles. The figures end as a markdown table for
docs/performance.md with the command line that made them. Every loop is bounded in count
and in time; every process it starts is stopped by its PID (NodeSet.cleanup, and the
libvirtd/virtlogd it started), also when a step fails. It must not touch libvirt domains
it did not define (leftovers under its own socket are removed by their `symphonyd-`
names only).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from symphonyd.block.file import FileDriver
from symphonyd.client import Client
from symphonyd.compute import cloudinit
from symphonyd.compute.domain_xml import domain_xml
from symphonyd.compute.driver import DiskSpec, DomainSpec
from symphonyd.compute.libvirt import LibvirtDriver
from symphonyd.compute.testimage import MARKER, write_image
from symphonyd.errors import NotFound
from tests.libvirtd import running_libvirtd
from tests.nodes import NodeProcess, NodeSet

T = TypeVar("T")
MiB = 1 << 20
GiB = 1 << 30
IMAGE = "boot"
PREFIX = "bench-"  # every instance and floor domain: `symphonyd-bench-...` in libvirt
TEST_CAPACITY = ("-o", "test_cpus=64", "-o", f"test_memory={64 * GiB}")
SIZES = {"disk": "16M", "memory": "64M"}
POLL = 0.01  # s between GETs of one removed instance
POLL_ALL = 0.02  # s between GETs of the list, 20 removed at once
POLL_CONSOLE = 0.05  # s between reads of a console
LIMIT = 60.0  # s for one instance to run, or to be gone
LIMIT_ALL = 120.0  # s for 20 at once, and for a guest's marker
CLI_RUNS = 5
QEMU_RUNS = 5
BURST = 20
FLOOR_DIRECT = "floor, test driver: libvirt-python `defineXML` + `create`"
FLOOR_SEED = "floor: `cloudinit.build_seed` (one per instance, fsynced)"
FLOOR_COPY = "floor: the root volume from the image (`FileDriver.create`, 16 MiB, fsynced)"
ONE_NODE = "1 node, test driver: API POST -> `running` (followed on /v1/events)"
MARKER_TEXT = MARKER.decode().strip()


# -- figures ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.3f} s"


@dataclass
class Figure:
    label: str
    values: list[float]
    note: str = ""

    def cells(self) -> list[str]:
        """n, p50, p90 (p90 of one value: -)."""
        p50 = duration(percentile(self.values, 50)) if self.values else "-"
        p90 = duration(percentile(self.values, 90)) if len(self.values) > 1 else "-"
        return [str(len(self.values)), p50, p90]


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)

    def add(self, label: str, values: list[float], note: str = "") -> None:
        figure = Figure(label, values, note)
        self.figures.append(figure)
        n, p50, p90 = figure.cells()
        print(f"  {label}: n={n} p50 {p50} p90 {p90} {note}".rstrip(), flush=True)

    def p50(self, label: str) -> float | None:
        found = [f for f in self.figures if f.label == label]
        return percentile(found[0].values, 50) if found else None

    def target(self) -> str | None:
        """The issue's target against the p50s: within 3x the direct floor (define and
        start, and the seed the agent writes for every instance) plus the volume copy."""
        direct, seed = self.p50(FLOOR_DIRECT), self.p50(FLOOR_SEED)
        copy, measured = self.p50(FLOOR_COPY), self.p50(ONE_NODE)
        if None in (direct, seed, copy, measured):
            return None
        assert direct is not None and seed is not None and copy is not None
        assert measured is not None
        limit = 3 * (direct + seed) + copy
        verdict = "met" if measured <= limit else "not met"
        return (
            f"target: 3 x (define+create {duration(direct)} + seed {duration(seed)}) + copy "
            f"{duration(copy)} = {duration(limit)}; measured p50 {duration(measured)}: {verdict}"
        )

    def table(self) -> str:
        lines = ["| measurement | n | p50 | p90 | notes |", "|---|---|---|---|---|"]
        for f in self.figures:
            lines.append("| " + " | ".join([f.label, *f.cells(), f.note]) + " |")
        return "\n".join(lines)


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} cores, kernel {platform.release()}, "
        f"Python {platform.python_version()}, load average at start {load}"
    )


def versions(qemu: bool) -> str:
    import libvirt

    v = libvirt.getVersion()
    text = f"libvirt {v // 1000000}.{v // 1000 % 1000}.{v % 1000}"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        describe = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        text = f"symphonyd {describe or '?'}, {text}"
    if qemu:
        with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
            out = subprocess.run(
                ["qemu-system-x86_64", "--version"], capture_output=True, text=True, timeout=30
            ).stdout
            text += f", {out.splitlines()[0]}"
    return text


# -- bounded waiting --------------------------------------------------------------------------


def poll(check: Callable[[], T | None], limit: float, every: float, what: str) -> T:
    """`check()` until it returns something other than None or False; at most `limit`
    seconds and limit / every + 1 tries."""
    deadline = time.monotonic() + limit
    for _ in range(int(limit / every) + 1):
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(every)
    raise RuntimeError(f"timed out after {limit:g} s waiting for {what}")


def gone(client: Client, path: str) -> bool:
    try:
        client.request("GET", path)
    except NotFound:
        return True
    return False


# -- the floor: libvirt-python directly --------------------------------------------------------


@dataclass(frozen=True)
class Guest:
    """A disk and a seed to define domains with, as the agent lays them out."""

    folder: Path

    @classmethod
    def make(cls, folder: Path) -> Guest:
        folder.mkdir(mode=0o711)
        os.chmod(folder, 0o711)  # qemu (libvirt-qemu) opens what is in it
        disk = folder / "disk.raw"
        write_image(str(disk))
        os.truncate(disk, 16 * MiB)
        guest = cls(folder)
        guest.seed(folder / "seed.iso")
        return guest

    def seed(self, path: Path) -> None:
        """A seed as the agent writes one for an instance without user-data."""
        name = PREFIX + "floor"
        user_data = cloudinit.default_user_data([], name)
        cloudinit.build_seed(str(path), uuid.uuid4().hex, name, user_data)

    def spec(self, index: int) -> DomainSpec:
        iid = uuid.uuid4().hex
        disk = DiskSpec(str(self.folder / "disk.raw"), "raw", "vda", iid[:20])
        return DomainSpec(
            instance_id=iid,
            name=f"{PREFIX}floor-{index}",
            vcpus=1,
            memory=64 * MiB,
            disks=(disk,),
            console_log=str(self.folder / f"console-{index}.log"),
            seed=str(self.folder / "seed.iso"),
        )


def floor_test(report: Report, base: Path, runs: int) -> None:
    guest = Guest.make(base / "floor")
    driver = LibvirtDriver(
        "", str(base / "floor-data"), test_cpus=64, test_memory=64 * GiB
    )  # its own test:///<tmp>/compute/libvirt-test.xml
    try:
        conn = driver.connection
        direct = []
        for i in range(runs):
            xml = domain_xml(guest.spec(i), "test", None)
            t0 = time.perf_counter()
            dom = conn.defineXML(xml)
            dom.create()
            direct.append(time.perf_counter() - t0)
            dom.destroy()
            dom.undefine()
        report.add(FLOOR_DIRECT, direct)
        through = []
        for i in range(runs):
            spec = guest.spec(runs + i)
            t0 = time.perf_counter()
            driver.define(spec)
            driver.start(spec.instance_id)
            through.append(time.perf_counter() - t0)
            driver.undefine(spec.instance_id)
        report.add("floor, test driver: `LibvirtDriver.define` + `start`", through)
        seeds = []
        for i in range(runs):
            t0 = time.perf_counter()
            guest.seed(base / f"seed-{i}.iso")
            seeds.append(time.perf_counter() - t0)
        report.add(FLOOR_SEED, seeds)
        pool = FileDriver(str(base / "floor-pool"))
        image = str(guest.folder / "image.raw")
        write_image(image)
        copies = []
        for _ in range(runs):
            vid = uuid.uuid4().hex
            t0 = time.perf_counter()
            pool.create(vid, 16 * MiB, image, "raw")
            copies.append(time.perf_counter() - t0)
            pool.delete(vid)
        report.add(FLOOR_COPY, copies)
        left = conn.listAllDomains(0)
        if left:
            raise RuntimeError(f"the floor left domains: {[d.name() for d in left]}")
    finally:
        driver.close()


# -- nodes -------------------------------------------------------------------------------------


def cli_json(node: NodeProcess, *args: str, timeout: float = 120.0) -> Any:
    result = node.cli(*args, "--json", timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"symphonyd {' '.join(args)} failed: {result.stderr.strip()}")
    return json.loads(result.stdout)


def enable(node: NodeProcess, *compute_args: str) -> None:
    cli_json(node, "service", "new")
    cli_json(node, "service", "new", "compute", *compute_args)


def import_image(node: NodeProcess, base: Path, replicas: int) -> None:
    result = node.cli("config", "set", "images.min_replicas", str(replicas))
    if result.returncode != 0:
        raise RuntimeError(f"config set failed: {result.stderr.strip()}")
    disk = base / "boot.raw"
    if not disk.exists():
        write_image(str(disk))
    cli_json(node, "image", "new", "boot sector", IMAGE, str(disk))


def services_healthy(node: NodeProcess, members: int) -> None:
    """Until every member's block and compute services report healthy with a capacity."""

    def ready() -> bool:
        listed = node.client().request("GET", "/v1/services")["services"]
        ok = [s for s in listed if (s.get("health") or {}).get("ok") and s.get("capacity")]
        return len(ok) == 2 * members

    poll(ready, LIMIT, 0.1, f"{2 * members} healthy services")


@dataclass
class Timeline:
    """One instance's record as last seen, and when (s after the POST) each step was first
    seen: `posted` (the POST answered), `placed` (it has a node), and each status."""

    record: dict[str, Any]
    seen: dict[str, float]

    def note(self, current: dict[str, Any], at: float) -> bool:
        """Keep what `current` shows (seen `at` s after the POST); True once it runs."""
        self.record = current
        if current.get("node"):
            self.seen.setdefault("placed", at)
        self.seen.setdefault(current["status"], at)
        if current["status"] == "failed":
            raise RuntimeError(f"instance {current['name']} failed: {current['status_message']}")
        return bool(current["status"] == "running")


def follow(
    client: Client, post: Callable[[], dict[str, Any]], t0: float, limit: float
) -> dict[str, Timeline]:
    """Open `GET /v1/events`, then `post()` (the POSTs: their answers, by id) and read the
    stream until every instance posted runs (at most `limit` s): each change is timed when
    it reaches this client, with no polling (a poll would add up to its period to every
    figure and load the node with GETs). A root volume's `ready` is kept as `root ready`."""
    deadline = time.monotonic() + limit
    with client.events(read_timeout=limit) as stream:
        timelines: dict[str, Timeline] = {}
        for record, answered in post().values():
            timelines[record["id"]] = Timeline(record, {"posted": answered})
            timelines[record["id"]].note(record, answered)
        waiting = {i for i, t in timelines.items() if t.record["status"] != "running"}
        if not waiting:
            return timelines
        for event in stream:
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {limit:g} s: {len(waiting)} not running")
            at = time.perf_counter() - t0
            if not event.data:
                continue  # a keep-alive
            change = json.loads(event.data)
            record = change.get("record")
            if record is None:
                continue
            if change["table"] == "volumes" and record["status"] == "ready":
                for timeline in timelines.values():
                    if timeline.record.get("root_volume_id") == change["key"]:
                        timeline.seen.setdefault("root ready", at)
            elif change["table"] != "instances" or change["key"] not in timelines:
                continue
            elif timelines[change["key"]].note(record, at):
                waiting.discard(change["key"])
                if not waiting:
                    break
        if waiting:
            raise RuntimeError(f"the events stream ended with {len(waiting)} not running")
    return timelines


def create(client: Client, name: str, **extra: str) -> Timeline:
    """POST an instance (`extra`: more fields of the request) and follow it until it runs
    (at most LIMIT s)."""
    t0 = time.perf_counter()

    def post() -> dict[str, tuple[dict[str, Any], float]]:
        body = {"name": name, "image": IMAGE, **SIZES, **extra}
        record = client.request("POST", "/v1/instances", body=body)
        return {record["id"]: (record, time.perf_counter() - t0)}

    (timeline,) = follow(client, post, t0, LIMIT).values()
    return timeline


def remove(client: Client, record: dict[str, Any]) -> float:
    """DELETE an instance; seconds until it is gone (then until its root volume is)."""
    t0 = time.perf_counter()
    client.request("DELETE", f"/v1/instances/{record['id']}")
    poll(lambda: gone(client, f"/v1/instances/{record['id']}"), LIMIT, POLL, "removal")
    took = time.perf_counter() - t0
    root = record.get("root_volume_id")
    if root:
        poll(lambda: gone(client, f"/v1/volumes/{root}"), LIMIT, POLL, "its root volume gone")
    return took


def phases(report: Report, where: str, timelines: list[Timeline]) -> None:
    steps = (
        ("posted", "POST answered"),
        ("placed", "placed (has a node)"),
        ("root ready", "its root volume `ready` (copied from the image)"),
    )
    for key, what in steps:
        values = [t.seen[key] for t in timelines if key in t.seen]
        if values:
            report.add(f"{where}: {what}", values, "as the events stream brought it")


def one_node(report: Report, base: Path, runs: int) -> None:
    nodes = NodeSet(base / "one")
    try:
        (node,) = nodes.form(1)
        enable(node, *TEST_CAPACITY)
        import_image(node, base, replicas=1)
        services_healthy(node, 1)
        client = node.client(timeout=LIMIT)
        warm = create(client, f"{PREFIX}warm")
        remove(client, warm.record)
        timelines, removals = [], []
        for i in range(runs):
            timeline = create(client, f"{PREFIX}api-{i}")
            timelines.append(timeline)
            removals.append(remove(client, timeline.record))
        where = "1 node, test driver"
        report.add(
            ONE_NODE,
            [t.seen["running"] for t in timelines],
            f"first (warm-up, not counted): {duration(warm.seen['running'])}",
        )
        phases(report, where, timelines)
        report.add(f"{where}: DELETE -> gone", removals)
        by_cli = []
        for i in range(CLI_RUNS):
            t0 = time.perf_counter()
            record = cli_json(
                node, "instance", "create", f"{PREFIX}cli-{i}", "--image", IMAGE,
                "--disk", SIZES["disk"], "--memory", SIZES["memory"],
            )  # fmt: skip
            by_cli.append(time.perf_counter() - t0)
            if record["status"] != "running":
                raise RuntimeError(f"instance create answered {record['status']}")
            remove(client, record)
        report.add(f"{where}: `symphonyd instance create` (waits itself)", by_cli)
        listing = []
        for _ in range(CLI_RUNS):
            t0 = time.perf_counter()
            cli_json(node, "instance", "list")
            listing.append(time.perf_counter() - t0)
        report.add(f"{where}: `symphonyd instance list` (the CLI's own cost)", listing)
    finally:
        nodes.cleanup()


def three_nodes(report: Report, base: Path) -> None:
    nodes = NodeSet(base / "three")
    try:
        members = nodes.form(3)
        for node in members:
            enable(node, *TEST_CAPACITY)
        first = members[0]
        import_image(first, base, replicas=3)
        client = first.client(timeout=LIMIT)

        def held() -> bool:
            return len(client.request("GET", f"/v1/images/{IMAGE}")["holders"]) == 3

        poll(held, LIMIT, 0.1, "the image on all three nodes")
        services_healthy(first, 3)
        for node in members:  # warm each node up: one instance made there and removed
            remove(client, create(client, f"{PREFIX}warm-{node.name}", node=node.name).record)

        names = [f"{PREFIX}burst-{i}" for i in range(BURST)]
        started = time.perf_counter()

        def post_one(name: str) -> tuple[dict[str, Any], float]:
            body = {"name": name, "image": IMAGE, **SIZES}
            record = Client(socket_path=first.socket_path, timeout=LIMIT).request(
                "POST", "/v1/instances", body=body
            )
            return record, time.perf_counter() - started

        def post_all() -> dict[str, tuple[dict[str, Any], float]]:
            with ThreadPoolExecutor(max_workers=BURST) as pool:
                return {r["id"]: (r, at) for r, at in pool.map(post_one, names)}

        timelines = follow(client, post_all, started, LIMIT_ALL)
        ids = set(timelines)
        answers = [t.seen["posted"] for t in timelines.values()]
        placed_at = [t.seen["placed"] for t in timelines.values()]
        running_at = [t.seen["running"] for t in timelines.values()]
        spread = {node.name: 0 for node in members}
        for timeline in timelines.values():
            spread[timeline.record["node"]] += 1
        spread_text = ", ".join(f"{name} {count}" for name, count in spread.items())
        where = f"3 nodes, {BURST} at once"
        since = "from the first POST"
        report.add(f"{where}: POST answered", answers, since)
        report.add(f"{where}: each placed (has a node)", placed_at, since)
        report.add(f"{where}: each `running`", running_at, since)
        report.add(f"{where}: all `running`", [max(running_at)], f"spread: {spread_text}")

        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=BURST) as pool:
            list(pool.map(lambda i: client.request("DELETE", f"/v1/instances/{i}"), sorted(ids)))

        def none_left() -> bool:
            listed = client.request("GET", "/v1/instances")["instances"]
            return not any(record["id"] in ids for record in listed)

        poll(none_left, LIMIT_ALL, POLL_ALL, f"{BURST} instances gone")
        report.add(f"{where}: DELETE all -> all gone", [time.perf_counter() - t0])
    finally:
        nodes.cleanup()


# -- qemu ----------------------------------------------------------------------------------------


def marker_in(path: Path) -> bool:
    with contextlib.suppress(FileNotFoundError):
        return MARKER_TEXT in path.read_text(errors="replace")
    return False


def qemu_floor(report: Report, base: Path, uri: str) -> None:
    import libvirt

    guest = Guest.make(base / "floor-qemu")
    conn = libvirt.open(uri)
    try:
        started, booted = [], []
        for i in range(QEMU_RUNS + 1):  # the first warms libvirtd up (not counted)
            spec = guest.spec(i)
            xml = domain_xml(spec, "qemu", None)
            t0 = time.perf_counter()
            dom = conn.defineXML(xml)
            try:
                dom.create()
                started.append(time.perf_counter() - t0)
                booted_now = functools.partial(marker_in, Path(spec.console_log))
                poll(booted_now, LIMIT_ALL, POLL_CONSOLE, "the marker in the console file")
                booted.append(time.perf_counter() - t0)
            finally:
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
                dom.undefine()
        where = "floor, qemu TCG"
        first = f"first (warm-up, not counted): {duration(booted[0])}"
        report.add(f"{where}: libvirt-python `defineXML` + `create`", started[1:])
        report.add(f"{where}: `defineXML` -> marker in the console file", booted[1:], first)
    finally:
        conn.close()


def boot(client: Client, name: str) -> dict[str, float]:
    """POST an instance; seconds until `running` is first seen and until the marker is in
    its console (both polled every 50 ms, at most LIMIT_ALL s); then remove it."""
    t0 = time.perf_counter()
    body = {"name": name, "image": IMAGE, **SIZES}
    record = client.request("POST", "/v1/instances", body=body)
    path = f"/v1/instances/{record['id']}"
    seen: dict[str, float] = {}

    def marker() -> bool:
        if "running" not in seen:
            status = client.request("GET", path)["status"]
            if status == "failed":
                raise RuntimeError(f"instance {name} failed")
            if status == "running":
                seen["running"] = time.perf_counter() - t0
        return MARKER_TEXT in client.request("GET", f"{path}/console")["text"]

    poll(marker, LIMIT_ALL, POLL_CONSOLE, "the marker in the console")
    seen["marker"] = time.perf_counter() - t0
    remove(client, record)
    return seen


def qemu_node(report: Report, base: Path, uri: str) -> None:
    nodes = NodeSet(base / "qemu")
    try:
        (node,) = nodes.form(1)
        enable(node, "--uri", uri, "-o", "virt_type=qemu")
        import_image(node, base, replicas=1)
        services_healthy(node, 1)
        client = node.client(timeout=LIMIT)
        cold = boot(client, f"{PREFIX}qemu-warm")
        runs = [boot(client, f"{PREFIX}qemu-{i}") for i in range(QEMU_RUNS)]
        where = "1 node, qemu TCG"
        running = [seen["running"] for seen in runs if "running" in seen]
        report.add(f"{where}: API POST -> `running` (GET every 50 ms)", running)
        report.add(
            f"{where}: API POST -> marker in `/console` (GET every 50 ms)",
            [seen["marker"] for seen in runs],
            f"first (warm-up, not counted): {duration(cold['marker'])}",
        )
    finally:
        nodes.cleanup()


def qemu_missing() -> str | None:
    if os.geteuid() != 0:
        return "--qemu starts libvirtd: run as root"
    for tool in ("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            return f"--qemu needs {tool} (scripts/bootstrap --test installs it)"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of each sequential figure")
    parser.add_argument("--quick", action="store_true", help="5 runs")
    parser.add_argument("--no-cluster", action="store_true", help="the floor only")
    parser.add_argument("--qemu", action="store_true", help="also a real guest (root)")
    args = parser.parse_args()
    runs = 5 if args.quick else args.runs
    if not 1 <= runs <= 200:
        parser.error("--runs must be between 1 and 200")
    if args.qemu and (why := qemu_missing()):
        parser.error(why)
    command = " ".join(["python", "bench/instance_start.py", *sys.argv[1:]])
    host = f"machine: {machine()}\nsoftware: {versions(args.qemu)}"
    print(host, flush=True)
    report = Report()
    base = Path(tempfile.mkdtemp(prefix="instance-bench-"))
    os.chmod(base, 0o711)  # qemu (libvirt-qemu) passes through it to the volumes
    try:
        floor_test(report, base, runs)
        if not args.no_cluster:
            one_node(report, base, runs)
            three_nodes(report, base)
        if args.qemu:
            with running_libvirtd(base) as daemon:
                uri = daemon.uri
                qemu_floor(report, base, uri)
                if not args.no_cluster:
                    qemu_node(report, base, uri)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print()
    print(f"`{command}`")
    print(host)
    print()
    print(report.table())
    if (target := report.target()) is not None:
        print()
        print(target)


if __name__ == "__main__":
    main()
