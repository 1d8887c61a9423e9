"""Volume from image benchmark: the file driver making a volume from a raw image (native
sparse copy, and its pure-Python fallback), from a qcow2 image (`qemu-img convert` to raw)
and as a qcow2 overlay, against `cp --sparse=always` and `qemu-img convert -f raw -O raw`.

Usage (repository root, symphonyd installed):

    python bench/volume_from_image.py           # 1 GiB dense + 4 GiB sparse (256 MiB data)
    python bench/volume_from_image.py --quick   # 256 MiB dense + 1 GiB sparse (64 MiB data)
    python bench/volume_from_image.py --no-cluster   # skip the end-to-end CLI rows

It makes the images in a temp dir (removed at the end) with a seeded generator, converts
each once to qcow2 (not timed) and reads every source once so all tools start from the page
cache (nothing is dropped from it: sources are warm, as they are for an image a node has
just imported or recently used). Each command runs --runs times and the best is reported;
before each run the previous destination is deleted and `sync` is called (not timed). The
first result of every command is checked against its source with `qemu-img compare` and
its allocated size (st_blocks * 512) is reported.

`FileDriver.create` fsyncs the volume it makes from a raw image; `cp` and `qemu-img
convert` do not (convert writes with cache=unsafe by default), so `cp --sparse=always` is
also timed followed by an fsync of the copy. `FileDriver.create` from a qcow2 image runs
`qemu-img convert` and then fsyncs the result.
Unless --no-cluster, a one-node cluster (tests/nodes.py) imports both images (not timed) and
`symphonyd volume create NAME --size 5G --image IMG` is timed through the CLI, from start
to the volume being ready (the CLI polls every 0.2 s); `volume create` without an image
gives the fixed cost of the CLI and the Raft entries. Every process it starts is stopped
by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.testfiles import make_dense, make_sparse, warm
from symphonyd.block import file as file_module
from symphonyd.block.file import FileDriver
from symphonyd.image import copier
from tests.nodes import NodeProcess, NodeSet

MiB = 1024 * 1024
GiB = 1024 * MiB
QEMU_IMG = shutil.which("qemu-img") or "qemu-img"


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr.strip()}")
    return result


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def same_content(src: Path, src_format: str, dst: Path, dst_format: str) -> bool:
    """qemu-img compare: holes and zeros are equal; a larger dst must be zero beyond src."""
    result = subprocess.run(
        [QEMU_IMG, "compare", "-q", "-f", src_format, "-F", dst_format, str(src), str(dst)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode > 1:  # 0: the same, 1: different, 2 and above: an error
        raise RuntimeError(f"qemu-img compare failed: {result.stderr.strip()}")
    return result.returncode == 0


@dataclass
class Row:
    label: str
    kind: str
    seconds: float
    allocated: int | None
    verified: bool | None


@contextlib.contextmanager
def python_fallback() -> Iterator[None]:
    """Make the file driver use the pure-Python sparse copy (in this process only)."""
    saved = file_module.sparse_copy
    file_module.sparse_copy = functools.partial(copier.sparse_copy, implementation="python")
    try:
        yield
    finally:
        file_module.sparse_copy = saved


class Bench:
    def __init__(self, runs: int) -> None:
        self.runs = runs
        self.rows: list[Row] = []

    def measure(
        self,
        label: str,
        kind: str,
        make: Callable[[], Path],
        remove: Callable[[], None],
        check: Callable[[Path], bool] | None,
    ) -> Row:
        """Best of `runs` of make() (which returns the result's path); remove() and sync
        before each run and after the last (not timed); check() and the allocated size on
        the first result."""
        times: list[float] = []
        alloc: int | None = None
        verified: bool | None = None
        for i in range(self.runs):
            remove()
            os.sync()
            t0 = time.perf_counter()
            result = make()
            times.append(time.perf_counter() - t0)
            if i == 0:
                alloc = allocated(result)
                verified = check(result) if check is not None else None
        remove()
        os.sync()
        row = Row(label, kind, min(times), alloc, verified)
        self.rows.append(row)
        mark = {True: "ok", False: "DIFFERS", None: "-"}[verified]
        alloc_text = f"{alloc / MiB:9.1f} MiB" if alloc is not None else "            -"
        print(f"  {kind:6} {label:50} {row.seconds:8.3f} s {alloc_text}  {mark}", flush=True)
        return row


def unlinker(path: Path) -> Callable[[], None]:
    return lambda: path.unlink(missing_ok=True)


def driver_remover(driver: FileDriver, volume_id: str) -> Callable[[], None]:
    def remove() -> None:
        if volume_id in driver.volumes():
            driver.delete(volume_id)

    return remove


def local_rows(bench: Bench, base: Path, kind: str, raw: Path, qcow2: Path, size: int) -> None:
    """Everything in this process or its children: no cluster."""
    driver = FileDriver(root=str(base / "pool"))
    vid = uuid.uuid4().hex
    remove_volume = driver_remover(driver, vid)
    copy = base / "copy.raw"

    def raw_check(dst: Path) -> bool:
        return same_content(raw, "raw", dst, "raw")

    def cp_sparse() -> Path:
        run(["cp", "--sparse=always", str(raw), str(copy)])
        return copy

    def cp_sparse_fsync() -> Path:
        cp_sparse()
        fd = os.open(copy, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return copy

    def qemu_raw() -> Path:
        run([QEMU_IMG, "convert", "-f", "raw", "-O", "raw", str(raw), str(copy)])
        return copy

    def qemu_from_qcow2() -> Path:
        run([QEMU_IMG, "convert", "-f", "qcow2", "-O", "raw", str(qcow2), str(copy)])
        return copy

    def from_raw() -> Path:
        return Path(driver.create(vid, size, image=str(raw), image_format="raw").path)

    def from_raw_python() -> Path:
        with python_fallback():
            return from_raw()

    def from_qcow2() -> Path:
        return Path(driver.create(vid, size, image=str(qcow2), image_format="qcow2").path)

    def overlay() -> Path:
        info = driver.create(vid, size, image=str(qcow2), image_format="qcow2", overlay=True)
        return Path(info.path)

    def overlay_check(dst: Path) -> bool:
        return same_content(raw, "raw", dst, "qcow2")

    rm_copy = unlinker(copy)
    bench.measure("cp --sparse=always", kind, cp_sparse, rm_copy, raw_check)
    bench.measure("cp --sparse=always, then fsync", kind, cp_sparse_fsync, rm_copy, raw_check)
    bench.measure("qemu-img convert -f raw -O raw", kind, qemu_raw, rm_copy, raw_check)
    bench.measure(
        f"FileDriver.create, raw image ({copier.IMPLEMENTATION})",
        kind,
        from_raw,
        remove_volume,
        raw_check,
    )
    bench.measure(
        "FileDriver.create, raw image (pure-Python)",
        kind,
        from_raw_python,
        remove_volume,
        raw_check,
    )
    bench.measure("qemu-img convert -f qcow2 -O raw", kind, qemu_from_qcow2, rm_copy, raw_check)
    bench.measure(
        "FileDriver.create, qcow2 image (qemu-img convert)",
        kind,
        from_qcow2,
        remove_volume,
        raw_check,
    )
    bench.measure(
        "FileDriver.create, qcow2 image, overlay=True", kind, overlay, remove_volume, overlay_check
    )


def cli_json(node: NodeProcess, *args: str) -> dict[str, object]:
    result = node.cli(*args, "--json", timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"symphonyd {' '.join(args)} failed: {result.stderr.strip()}")
    return dict(json.loads(result.stdout))


def cluster_rows(bench: Bench, node: NodeProcess, images: dict[str, Path]) -> None:
    """`symphonyd volume create` on a one-node cluster, the images already imported: through
    the CLI (which polls every 0.2 s) and through the API on the control socket, polled
    every 10 ms (closer to the node's own time)."""
    cli_json(node, "service", "new")
    for kind, path in images.items():
        cli_json(node, "image", "new", "bench", f"img-{kind}", str(path))
    pool = node.data_dir / "volumes" / "default"
    client = node.client(timeout=600)
    made: dict[str, str] = {}

    def volume_path(record: dict[str, object]) -> Path:
        made["id"] = str(record["id"])
        return pool / f"{record['id']}.{record['format']}"

    def by_cli(image: str | None) -> Path:
        args = ["volume", "create", "bench", "--size", "5G"]
        record = cli_json(node, *args, *(["--image", image] if image else []))
        if record["status"] != "ready":
            raise RuntimeError(f"volume not ready: {record}")
        return volume_path(record)

    def by_api(image: str | None) -> Path:
        body = {"name": "bench", "size": "5G", "image": image}
        record = client.request("POST", "/v1/volumes", body=body)
        deadline = time.monotonic() + 600
        while record["status"] != "ready":
            if record["status"] == "failed" or time.monotonic() > deadline:
                raise RuntimeError(f"volume not ready: {record}")
            time.sleep(0.01)
            record = client.request("GET", f"/v1/volumes/{record['id']}")
        return volume_path(record)

    def remove() -> None:
        if made.pop("id", None) is not None:
            result = node.cli("volume", "rm", "bench", timeout=600)  # waits until it is gone
            if result.returncode != 0:
                raise RuntimeError(f"symphonyd volume rm failed: {result.stderr.strip()}")

    ways = (
        ("symphonyd volume create --size 5G", "--image", by_cli),
        ("API POST /v1/volumes, size 5G", "+ image", by_api),
    )
    for way, with_image, create in ways:
        bench.measure(
            f"{way} (no image)",
            "empty",
            lambda c=create: c(None),  # type: ignore[misc]
            remove,
            None,
        )
        for kind, path in images.items():
            bench.measure(
                f"{way} {with_image}",
                kind,
                lambda c=create, k=kind: c(f"img-{k}"),  # type: ignore[misc]
                remove,
                lambda dst, p=path: same_content(p, "raw", dst, "raw"),  # type: ignore[misc]
            )


def summary(bench: Bench, sizes: dict[str, str], runs: int) -> None:
    kinds = list(sizes)
    by = {(r.label, r.kind): r for r in bench.rows}
    labels = list(dict.fromkeys(r.label for r in bench.rows if r.kind in kinds))
    print()
    print(f"best of {runs}; sources in the page cache; x cp: time / `cp --sparse=always`")
    head = [""]
    for kind in kinds:
        head += [f"{sizes[kind]}", "x cp", "allocated"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label in labels:
        cells = [f"`{label}`"]
        for kind in kinds:
            row = by.get((label, kind))
            if row is None:
                cells += ["", "", ""]
                continue
            cp = by.get(("cp --sparse=always", kind))
            bad = "" if row.verified is not False else " (CONTENT DIFFERS)"
            cells += [
                f"{row.seconds:.3f} s{bad}",
                f"{row.seconds / cp.seconds:.2f}x" if cp else "-",
                f"{row.allocated / MiB:.1f} MiB" if row.allocated is not None else "-",
            ]
        print("| " + " | ".join(cells) + " |")
    for row in bench.rows:
        if row.kind == "empty":
            print(f"fixed cost: `{row.label}`: {row.seconds:.3f} s")
    print()
    for kind in kinds:
        cp = by.get(("cp --sparse=always", kind))
        native = by.get((f"FileDriver.create, raw image ({copier.IMPLEMENTATION})", kind))
        fallback = by.get(("FileDriver.create, raw image (pure-Python)", kind))
        cp_fsync = by.get(("cp --sparse=always, then fsync", kind))
        if cp and native and fallback and cp_fsync:
            print(
                f"{sizes[kind]}: FileDriver.create (raw, {copier.IMPLEMENTATION}) is "
                f"{native.seconds / cp.seconds:.2f}x of cp --sparse=always, "
                f"{native.seconds / cp_fsync.seconds:.2f}x of cp + fsync; "
                f"the pure-Python fallback takes {fallback.seconds / native.seconds:.2f}x as long"
            )
    failed = [r for r in bench.rows if r.verified is False]
    if failed:
        print("CONTENT DIFFERS: " + ", ".join(f"{r.kind} {r.label}" for r in failed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-cluster", action="store_true", help="skip the CLI rows")
    args = parser.parse_args()
    if not 1 <= args.runs <= 100:
        parser.error("--runs must be between 1 and 100")
    dense_size = (256 if args.quick else 1024) * MiB
    sparse_size, sparse_data = (1024, 64) if args.quick else (4096, 256)
    sizes = {
        "dense": f"dense {dense_size // MiB} MiB",
        "sparse": f"sparse {sparse_size} MiB ({sparse_data} MiB data)",
    }
    base = Path(tempfile.mkdtemp(prefix="volume-bench-"))
    nodes = NodeSet(base / "cluster")
    bench = Bench(args.runs)
    try:
        raw = {"dense": base / "dense.img", "sparse": base / "sparse.img"}
        make_dense(raw["dense"], dense_size)
        make_sparse(raw["sparse"], sparse_size * MiB, sparse_data * MiB)
        qcow2 = {kind: path.with_suffix(".qcow2") for kind, path in raw.items()}
        for kind in raw:
            run([QEMU_IMG, "convert", "-f", "raw", "-O", "qcow2", str(raw[kind]), str(qcow2[kind])])
        for path in (*raw.values(), *qcow2.values()):
            warm(path)
        print(
            f"copier: {copier.describe()}; {run([QEMU_IMG, '--version']).stdout.splitlines()[0]}; "
            f"{run(['cp', '--version']).stdout.splitlines()[0]}; "
            f"allocated: dense {allocated(raw['dense']) / MiB:.1f} MiB, "
            f"sparse {allocated(raw['sparse']) / MiB:.1f} MiB, "
            f"qcow2 {allocated(qcow2['dense']) / MiB:.1f} / {allocated(qcow2['sparse']) / MiB:.1f}"
            " MiB",
            flush=True,
        )
        for kind in raw:
            size = os.stat(raw[kind]).st_size
            local_rows(bench, base, kind, raw[kind], qcow2[kind], size)
        if not args.no_cluster:
            (node,) = nodes.form(1)
            implementation = node.status()["image_copier"]["implementation"]
            print(f"  one-node cluster up (copier: {implementation})", flush=True)
            cluster_rows(bench, node, raw)
        summary(bench, sizes, args.runs)
    finally:
        nodes.cleanup()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
