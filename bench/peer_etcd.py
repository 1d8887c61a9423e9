"""Against etcd (issue 18): symphonyd's HTTPS KV API and etcd 3.4, same machine, one run.

Usage (from the repository root, symphonyd installed editable; root, for apt-get):

    python bench/peer_etcd.py --rounds 3             # the documented run, ~3 minutes
    python bench/peer_etcd.py --rounds 1 --seconds 2 # a quick look
    python bench/peer_etcd.py --only etcd            # one system (debugging): etcd|symphonyd
    python bench/peer_etcd.py --no-grpc --json out.json

Options: --rounds N (the table shows the best round), --seconds S (pipelined window;
sequential phases stop after 2*S), --seq N (operations per sequential phase), --clients N
(pipelined, default 32), --pipe-max N, --quiet-wait S (before each phase wait up to S s
for other work on the machine to stop), --no-grpc, --etcd-auto-tls, --json, --keep.

It starts, on 127.0.0.1 only (ports picked free by the kernel, data dirs in one temp
dir), three `python -m symphonyd run` (tests/nodes.py's NodeSet: init, token, join) and
three `etcd` members (peer TLS `--peer-auto-tls`; client TLS with a self-signed P-256
certificate like symphonyd's own, or `--auto-tls` with --etcd-auto-tls: its P-521 key is
refused by grpcio's BoringSSL; ETCD_* variables dropped from their environment). Without
`etcd` on PATH it runs `apt-get install -y etcd-server etcd-client` (after `apt-get
update` if that fails) and, on a systemd host, disables the packaged service it started.
etcd's native gRPC reference uses the stubs of aetcd (a maintained asyncio client, pip
installed into this interpreter if missing) on a TLS channel of its own: aetcd's client
opens only plaintext channels.

One load generator (`drive`: N workers, one request at a time each, keep-alive) drives
both, with a request builder per system: symphonyd `PUT /v1/kv/KEY`, `GET /v1/kv/KEY`,
`GET /v1/kv/KEY?consistent` (admin token); etcd's HTTP/JSON gateway `POST /v3/kv/put`,
`POST /v3/kv/range` (base64 keys, `"serializable": true` for the default read row). All
requests go to the leader. Phase by phase, each system in turn, the order reversed every
round: sequential writes, pipelined writes, reads, linearizable reads. Each phase reads
utime + stime of all of a system's processes (and children) from /proc: CPU per
committed write holds on a busy machine; it also reports CPU used by processes not ours.
Every process it starts is stopped by its PID in a `finally` (SIGTERM, then SIGKILL);
every request loop is bounded in count and time.

One file past 600 lines on purpose: the whole comparison (both systems' set-up, the one
load generator, the report) reads and reruns as a unit, like the other bench scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.raft_write import (  # noqa: E402
    fmt,
    fsync_micro,
    machine_busy,
    machine_info,
    pct,
    proc_cpu,
    run_coro,
    self_cpu,
    wait_quiet,
)

VALUE = b"v" * 32  # the value of every write, both systems
READ_KEY = "bench/read"
Op = Callable[[str], Awaitable[bool]]  # one request for a key -> did it succeed


# -- the one load generator -------------------------------------------------------------------


@dataclass
class Load:
    ok: int
    errors: int
    elapsed_s: float
    latencies_s: list[float]

    def p(self, q: float) -> float | None:
        v = pct(self.latencies_s, q)
        return None if v is None else v * 1000


async def drive(op: Op, prefix: str, clients: int, count: int, max_s: float) -> Load:
    """`clients` workers, each one request at a time, until `count` are issued or `max_s`
    has passed. Keys are `prefix/<worker>-<n>` (reads ignore them)."""
    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.monotonic() + max_s

    async def worker(w: int) -> None:
        nonlocal issued, errors
        n = 0
        while issued < count and time.monotonic() < deadline:
            issued += 1
            n += 1
            t0 = time.perf_counter()
            if await op(f"{prefix}/{w}-{n}"):
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1
                await asyncio.sleep(0.05)

    start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker(w) for w in range(clients))), max_s + 30)
    return Load(len(latencies), errors, time.perf_counter() - start, latencies)


@dataclass
class Ops:
    put: Op
    get: Op  # symphonyd's default read; etcd serializable
    get_linearizable: Op  # symphonyd ?consistent; etcd's default


@dataclass
class Request:
    method: str
    url: str
    body: bytes | None
    accept: Callable[[bytes], bool]  # the response body of a success (status 200)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Builders:
    """How one HTTP API spells the three operations."""

    put: Callable[[str], Request]
    get: Callable[[str], Request]
    get_linearizable: Callable[[str], Request]


@contextlib.asynccontextmanager
async def http_ops(builders: Builders, clients: int) -> AsyncIterator[Ops]:
    """aiohttp, keep-alive, one connection per client, TLS without verification."""
    import aiohttp

    connector = aiohttp.TCPConnector(ssl=False, limit=clients)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        def op(build: Callable[[str], Request]) -> Op:
            async def run(key: str) -> bool:
                req = build(key)
                try:
                    async with session.request(
                        req.method, req.url, data=req.body, headers=req.headers
                    ) as r:
                        body = await r.read()
                except (aiohttp.ClientError, TimeoutError):
                    return False
                return r.status == 200 and req.accept(body)

            return run

        yield Ops(op(builders.put), op(builders.get), op(builders.get_linearizable))


def symphonyd_builders(url: str, token: str) -> Builders:
    auth = {"Authorization": f"Bearer {token}"}
    read = f"{url}/v1/kv/{READ_KEY}"
    return Builders(
        put=lambda k: Request("PUT", f"{url}/v1/kv/{k}", VALUE, lambda b: b == b"true", auth),
        get=lambda _k: Request("GET", read, None, lambda b: b[:1] == b"[", auth),
        get_linearizable=lambda _k: Request(
            "GET", f"{read}?consistent", None, lambda b: b[:1] == b"[", auth
        ),
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def etcd_builders(url: str) -> Builders:
    json_type = {"Content-Type": "application/json"}
    read_key = b64(READ_KEY.encode())

    def put(key: str) -> Request:
        body = json.dumps({"key": b64(key.encode()), "value": b64(VALUE)}).encode()
        return Request("POST", f"{url}/v3/kv/put", body, lambda b: b'"header"' in b, json_type)

    def get(serializable: bool) -> Callable[[str], Request]:
        doc: dict[str, Any] = {"key": read_key, **({"serializable": True} if serializable else {})}
        body = json.dumps(doc).encode()
        return lambda _k: Request(
            "POST", f"{url}/v3/kv/range", body, lambda b: b'"kvs"' in b, json_type
        )

    return Builders(put=put, get=get(True), get_linearizable=get(False))


@contextlib.asynccontextmanager
async def grpc_ops(target: str, ca_pem: bytes) -> AsyncIterator[Ops]:
    """etcd's native KV service: aetcd's generated stubs on one TLS channel (HTTP/2, the
    clients' calls multiplexed on it, as gRPC clients do)."""
    import grpc
    from aetcd import rpc

    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    name = [("grpc.ssl_target_name_override", "symphonyd")]  # the certificate's DNS name
    async with grpc.aio.secure_channel(target, credentials, options=name) as channel:
        kv = rpc.KVStub(channel)

        async def put(key: str) -> bool:
            try:
                await kv.Put(rpc.PutRequest(key=key.encode(), value=VALUE), timeout=10)
            except grpc.aio.AioRpcError:
                return False
            return True

        def get(serializable: bool) -> Op:
            request = rpc.RangeRequest(key=READ_KEY.encode(), serializable=serializable)

            async def run(_key: str) -> bool:
                try:
                    response = await kv.Range(request, timeout=10)
                except grpc.aio.AioRpcError:
                    return False
                return len(response.kvs) == 1

            return run

        yield Ops(put, get(True), get(False))


# -- the systems ------------------------------------------------------------------------------


def family(pids: list[int]) -> list[int]:
    """These processes and all their descendants (from /proc/*/stat)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with (
                contextlib.suppress(OSError, IndexError, ValueError),
                open(f"/proc/{entry}/stat") as f,
            ):
                parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
    found = set(pids)
    grew = True
    while grew:
        children = {p for p, pp in parent.items() if pp in found and p not in found}
        found |= children
        grew = bool(children)
    return sorted(found)


def cpu_of(pids: list[int]) -> float:
    return sum(proc_cpu(p) for p in family(pids))


@dataclass
class System:
    label: str
    pids: list[int]
    ops: Callable[[int], contextlib.AbstractAsyncContextManager[Ops]]  # clients -> Ops
    cluster: str  # systems on the same processes share it (etcd gateway and gRPC)


def start_symphonyd(base: Path, stack: contextlib.ExitStack) -> tuple[System, Any]:
    from tests.nodes import NodeSet

    nodeset = NodeSet(base / "symphonyd")
    stack.callback(stop_symphonyd, nodeset)
    members = nodeset.form(3)
    leader = nodeset.leader(members)
    assert nodeset.admin_token
    url = f"https://127.0.0.1:{leader.api_port}"
    auth = {"Authorization": f"Bearer {nodeset.admin_token}"}
    call(f"{url}/v1/kv/{READ_KEY}", VALUE, "PUT", **auth)
    builders = symphonyd_builders(url, nodeset.admin_token)
    pids = [n.proc.pid for n in members if n.proc]
    print(f"symphonyd: 3 members, leader {leader.name} at {url}", flush=True)
    system = System("symphonyd", pids, lambda c: http_ops(builders, c), "symphonyd")
    return system, nodeset


def stop_symphonyd(nodeset: Any) -> None:
    nodeset.cleanup()  # SIGTERM then SIGKILL, each by its PID
    for node in nodeset.nodes:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(timeout=10)


def ensure_etcd() -> str:
    found = shutil.which("etcd")
    if found:
        return found
    print("etcd is not on PATH: apt-get install -y etcd-server etcd-client", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "etcd-server", "etcd-client"]
    if subprocess.run(install, env=env, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True, timeout=900)
        subprocess.run(install, env=env, check=True, timeout=900)
    if Path("/run/systemd/system").exists():  # a systemd host started the packaged service
        subprocess.run(["systemctl", "disable", "--now", "etcd.service"], timeout=60)
    found = shutil.which("etcd")
    if not found:
        raise SystemExit("etcd is still not on PATH after apt-get install")
    return found


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"


UNVERIFIED = ssl.create_default_context()
UNVERIFIED.check_hostname = False
UNVERIFIED.verify_mode = ssl.CERT_NONE


def call(url: str, doc: Any = None, method: str | None = None, **headers: str) -> Any:
    """One HTTPS request outside the measurements (set-up): JSON in and out."""
    data = None if doc is None else doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=3, context=UNVERIFIED) as r:
        return json.loads(r.read())


def start_etcd(
    binary: str, base: Path, stack: contextlib.ExitStack, auto_tls: bool
) -> list[System]:
    """Three members; client TLS with a certificate of the kind symphonyd's API has
    (self-signed ECDSA P-256, from symphonyd.security), or etcd's own `--auto-tls` (P-521,
    which the BoringSSL in grpcio does not accept: no gRPC reference then)."""
    from symphonyd.security import make_certificate
    from tests.nodes import free_port, wait_until

    ports: set[int] = set()
    while len(ports) < 6:  # the kernel may hand out a port twice
        ports.add(free_port())
    it = iter(sorted(ports))
    members = [EtcdMember(f"e{i}", next(it), next(it), base / "etcd" / f"e{i}") for i in (1, 2, 3)]
    stack.callback(stop_etcd, members)
    cluster = ",".join(f"{m.name}=https://127.0.0.1:{m.peer_port}" for m in members)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    cert_pem, key_pem = make_certificate("etcd-bench")
    (base / "etcd").mkdir(parents=True)
    cert, key = base / "etcd" / "cert.pem", base / "etcd" / "key.pem"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    client_tls = ["--auto-tls"] if auto_tls else [f"--cert-file={cert}", f"--key-file={key}"]
    for m in members:
        m.data_dir.mkdir(parents=True)
        log = open(m.data_dir.parent / f"{m.name}.log", "ab")  # noqa: SIM115 (the child's)
        m.proc = subprocess.Popen(
            [
                binary,
                f"--name={m.name}",
                f"--data-dir={m.data_dir}",
                f"--listen-client-urls={m.url}",
                f"--advertise-client-urls={m.url}",
                f"--listen-peer-urls=https://127.0.0.1:{m.peer_port}",
                f"--initial-advertise-peer-urls=https://127.0.0.1:{m.peer_port}",
                f"--initial-cluster={cluster}",
                "--initial-cluster-state=new",
                "--initial-cluster-token=symphonyd-bench",
                *client_tls,
                "--peer-auto-tls",
                "--logger=zap",
                "--log-outputs=stderr",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        log.close()

    def healthy() -> bool:
        for m in members:
            if m.proc is not None and m.proc.poll() is not None:
                raise SystemExit(f"etcd {m.name} exited with {m.proc.returncode}")
        return all(call(f"{m.url}/health").get("health") == "true" for m in members)

    wait_until(healthy, 30, "3 healthy etcd members", interval=0.2)

    def is_leader(m: EtcdMember) -> bool:
        status = call(f"{m.url}/v3/maintenance/status", {})
        return bool(status["header"]["member_id"] == status["leader"])

    leader = next(m for m in members if is_leader(m))
    call(f"{leader.url}/v3/kv/put", {"key": b64(READ_KEY.encode()), "value": b64(VALUE)})
    pids = [m.proc.pid for m in members if m.proc]
    print(f"etcd: 3 members, leader {leader.name} at {leader.url}", flush=True)
    builders = etcd_builders(leader.url)
    gateway = System("etcd (HTTPS gateway)", pids, lambda c: http_ops(builders, c), "etcd")
    target = f"127.0.0.1:{leader.client_port}"
    grpc = System("etcd gRPC (reference)", pids, lambda c: grpc_ops(target, cert_pem), "etcd")
    return [gateway] if auto_tls else [gateway, grpc]


def stop_etcd(members: list[EtcdMember]) -> None:
    for m in members:
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(signal.SIGTERM)
    for m in members:
        if m.proc is None:
            continue
        try:
            m.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            m.proc.kill()
            m.proc.wait(timeout=10)


def ensure_aetcd() -> str | None:
    """aetcd's version, installed with pip into this interpreter if missing; None if that
    fails (the gRPC reference is then skipped)."""
    for attempt in (1, 2):
        with contextlib.suppress(PackageNotFoundError):
            return version("aetcd")
        if attempt == 1:
            print("aetcd is not installed: pip install aetcd (for the gRPC reference)")
            pip = [sys.executable, "-m", "pip", "install", "--quiet", "aetcd"]
            subprocess.run(pip, timeout=600)
            importlib.invalidate_caches()
    return None


# -- the rounds -------------------------------------------------------------------------------

PHASES = (  # name, operation, pipelined?
    ("seq_write", "put", False),
    ("pipe_write", "put", True),
    ("read", "get", False),
    ("lin_read", "get_linearizable", False),
)
ROWS = (  # label, phase, figure, unit (ms: lower is better; /s: higher)
    ("sequential write p50", "seq_write", "p50_ms", "ms"),
    ("pipelined writes/s, {clients} clients", "pipe_write", "per_s", "/s"),
    ("read p50 (symphonyd default; etcd serializable)", "read", "p50_ms", "ms"),
    ("linearizable read p50 (?consistent; etcd default)", "lin_read", "p50_ms", "ms"),
    ("CPU per committed write, pipelined", "pipe_write", "cpu_ms_per_op", "ms"),
    ("CPU per committed write, sequential", "seq_write", "cpu_ms_per_op", "ms"),
)


def counters(pids: list[int], everyone: list[int]) -> tuple[float, ...]:
    return (time.monotonic(), machine_busy(), self_cpu(), cpu_of(pids), cpu_of(everyone))


async def run_phase(
    system: System, phase: str, operation: str, pipelined: bool, r: int,
    args: argparse.Namespace, everyone: list[int],
) -> dict[str, Any]:  # fmt: skip
    clients = args.clients if pipelined else 1
    count = args.pipe_max if pipelined else args.seq
    max_s = args.seconds if pipelined else 2 * args.seconds
    prefix = f"bench/{system.cluster}-{phase}-r{r}"
    async with system.ops(clients) as ops:
        op: Op = getattr(ops, operation)
        await drive(op, f"{prefix}/warm", clients, clients * 5, 10.0)  # connections, TLS
        t0, busy0, self0, cpu0, all0 = counters(system.pids, everyone)
        load = await drive(op, prefix, clients, count, max_s)
        t1, busy1, self1, cpu1, all1 = counters(system.pids, everyone)
    wall = t1 - t0
    return {
        "ok": load.ok,
        "errors": load.errors,
        "elapsed_s": load.elapsed_s,
        "p50_ms": load.p(50),
        "p99_ms": load.p(99),
        "per_s": load.ok / load.elapsed_s if load.elapsed_s > 0 else None,
        "cpu_ms_per_op": 1000 * (cpu1 - cpu0) / load.ok if load.ok else None,
        "cores": (cpu1 - cpu0) / wall if wall > 0 else None,
        "load_generator_cores": (self1 - self0) / wall if wall > 0 else None,
        "other_cores": max(0.0, (busy1 - busy0) - (all1 - all0) - (self1 - self0)) / wall
        if wall > 0
        else None,
    }


def run_rounds(systems: list[System], args: argparse.Namespace) -> list[dict[str, Any]]:
    everyone = sorted({p for s in systems for p in s.pids})
    quiet_pids = {str(p): p for p in everyone}
    rounds = []
    for r in range(args.rounds):
        order = systems if r % 2 == 0 else systems[::-1]
        figures: dict[str, dict[str, Any]] = {s.label: {} for s in systems}
        for phase, operation, pipelined in PHASES:
            for system in order:
                wait_quiet(quiet_pids, args.quiet_wait)
                result = run_coro(run_phase(system, phase, operation, pipelined, r, args, everyone))
                figures[system.label][phase] = result
                print(
                    f"round {r + 1} {phase:10} {system.label:22} ok {result['ok']:6} "
                    f"err {result['errors']} p50 {fmt(result['p50_ms'])} ms "
                    f"{fmt(result['per_s'], ',.0f')}/s cpu/op {fmt(result['cpu_ms_per_op'])} ms "
                    f"(other load {fmt(result['other_cores'])} cores)",
                    flush=True,
                )
        rounds.append(figures)
    return rounds


# -- the report -------------------------------------------------------------------------------


def best(rounds: list[dict[str, Any]], label: str, phase: str, figure: str, unit: str) -> Any:
    values = [r[label][phase][figure] for r in rounds if r[label][phase][figure] is not None]
    if not values:
        return None
    return max(values) if unit == "/s" else min(values)


def show(value: float | None, unit: str) -> str:
    return fmt(value, ",.0f") if unit == "/s" else f"{fmt(value)} ms"


def print_report(results: dict[str, Any], systems: list[System], args: argparse.Namespace) -> None:
    m, v, disk = results["machine"], results["versions"], results["fsync"]
    rounds = results["rounds"]
    labels = [s.label for s in systems]
    print()
    print(f"machine: {m['nproc']} x {m['cpu']}; kernel {m['kernel']}; temp dir on {m['tmp_fs']}")
    print("versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    print(
        f"disk: 100 B O_APPEND write + fdatasync in the temp dir: p50 "
        f"{disk['append_fdatasync_p50_us']:.0f} us, p99 {disk['append_fdatasync_p99_us']:.0f} us"
    )
    print(
        f"run: {args.rounds} interleaved rounds, sequential {args.seq} ops (<= "
        f"{2 * args.seconds:g} s), pipelined {args.seconds:g} s x {args.clients} clients; "
        f"best of the rounds"
    )
    ratio = "symphonyd" in labels and "etcd (HTTPS gateway)" in labels
    head = f"{'':52}" + "".join(f"{label:>24}" for label in labels)
    print()
    print(head + (f"{'symphonyd/etcd':>16}" if ratio else ""))
    for text, phase, figure, unit in ROWS:
        values = {label: best(rounds, label, phase, figure, unit) for label in labels}
        line = f"{text.format(clients=args.clients):52}"
        line += "".join(f"{show(values[label], unit):>24}" for label in labels)
        if ratio:
            a, b = values["symphonyd"], values["etcd (HTTPS gateway)"]
            line += f"{fmt(a / b) if a is not None and b else '-':>16}"
        print(line)
    print()
    print(
        "per round (seq write p50 ms | pipelined w/s | read p50 | lin. read p50 | CPU/write "
        "pipelined ms | most other load in a phase, cores):"
    )
    for r, figures in enumerate(rounds):
        for label in labels:
            f = figures[label]
            other = max((x["other_cores"] or 0.0) for x in f.values())
            print(
                f"  round {r + 1} {label:22} {fmt(f['seq_write']['p50_ms']):>6} | "
                f"{fmt(f['pipe_write']['per_s'], ',.0f'):>6} | {fmt(f['read']['p50_ms']):>5} | "
                f"{fmt(f['lin_read']['p50_ms']):>5} | {fmt(f['pipe_write']['cpu_ms_per_op']):>5} "
                f"| {other:.2f}"
            )
    for note in results.get("notes", []):
        print(f"note: {note}")


def versions(etcd_binary: str | None, grpc: str | None) -> dict[str, str]:
    found: dict[str, str] = {}
    git = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    for name in ("symphonyd", "pysyncobj", "aiohttp"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    found["symphonyd"] = f"{found.get('symphonyd', '?')} ({git or '?'})"
    found["python"] = sys.version.split()[0]
    if etcd_binary:
        out = subprocess.run([etcd_binary, "--version"], capture_output=True, text=True).stdout
        fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
        found["etcd"] = f"{fields.get('etcd Version', '?')} ({fields.get('Go Version', '?')})"
    if grpc:
        found["aetcd"] = grpc
        with contextlib.suppress(PackageNotFoundError):
            found["grpcio"] = version("grpcio")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best shown)")
    parser.add_argument("--seconds", type=float, default=4.0, help="pipelined window (s)")
    parser.add_argument("--seq", type=int, default=1000, help="operations per sequential phase")
    parser.add_argument("--clients", type=int, default=32, help="pipelined clients")
    parser.add_argument("--pipe-max", type=int, default=15000, help="cap per pipelined phase")
    parser.add_argument("--only", choices=("etcd", "symphonyd"), help="one system only")
    parser.add_argument("--no-grpc", action="store_true", help="skip etcd's gRPC reference")
    parser.add_argument(
        "--etcd-auto-tls",
        action="store_true",
        help="etcd's client TLS from --auto-tls (P-521) instead of symphonyd's kind of "
        "certificate (P-256); no gRPC reference then",
    )
    parser.add_argument("--quiet-wait", type=float, default=10.0, help="wait for a quiet machine")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the finally stops our processes
    base = Path(tempfile.mkdtemp(prefix="symphonyd-peer-etcd-"))
    results: dict[str, Any] = {"machine": machine_info(str(base)), "args": vars(args)}
    results["notes"] = notes = []
    try:
        with contextlib.ExitStack() as stack:  # stops every process by its PID, in reverse
            etcd_binary = ensure_etcd() if args.only != "symphonyd" else None
            args.no_grpc = args.no_grpc or args.etcd_auto_tls
            grpc = None if args.no_grpc or not etcd_binary else ensure_aetcd()
            if etcd_binary and not args.no_grpc and not grpc:
                notes.append("aetcd did not install: no gRPC reference")
            results["versions"] = versions(etcd_binary, grpc)
            results["fsync"] = fsync_micro(str(base))
            systems: list[System] = []
            nodeset = None
            if args.only != "etcd":
                symphonyd, nodeset = start_symphonyd(base, stack)
                systems.append(symphonyd)
            if etcd_binary:
                systems += start_etcd(etcd_binary, base, stack, args.etcd_auto_tls)[
                    : 2 if grpc else 1
                ]
            results["rounds"] = run_rounds(systems, args)
            if nodeset is not None and any(
                (n.data_dir / "raft" / "snapshot").exists() for n in nodeset.nodes
            ):
                notes.append("symphonyd took a Raft snapshot (log compaction) during the run")
            print_report(results, systems, args)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))
            print(f"wrote {args.json}")
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
