"""Copying a volume from the node that holds it (an instance's cold move): the receiving
side. The same verified, resumable transfer the image store uses: the source node states
the SHA-256 and size of the volume (`GET /v1/volumes/{id}/digest`, computed on its node),
the content comes with Range requests that resume a broken transfer, is hashed and
written sparsely as it arrives (`StreamCopier`), and a copy whose checksum differs is
discarded. The verified file is then made into the new volume by its driver, like an
image.

On the source, the volume is only read while no instance runs on it (`api/block.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from symphonyd.client import MemberCaller, NodeClient, TransferInterrupted, download
from symphonyd.errors import SymphonyError, Unavailable
from symphonyd.image.copier import CopyError, StreamCopier
from symphonyd.reconcile import Progress, run_blocking
from symphonyd.state import nodes
from symphonyd.state.store import Store

__all__ = ["VolumeSource", "fetch_volume", "transfer_dir"]

log = logging.getLogger("symphonyd.block")

ATTEMPTS = 6


def transfer_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "volumes", ".transfer")


class VolumeSource:
    """How to reach the node holding a volume (the cluster certificate pinned)."""

    def __init__(self, store: Store, caller: MemberCaller) -> None:
        self.store = store
        self.caller = caller

    def client(self, node: str) -> NodeClient:
        with self.store.lock:
            member = nodes.get(self.store, node)
        if member is None:
            raise Unavailable(f"node {node} is not a member any more")
        return self.caller.client(member)


async def fetch_volume(
    source: VolumeSource,
    origin: dict[str, Any],
    path: str,
    progress: Progress,
    pause: Callable[[int], float] = lambda attempt: min(0.2 * (attempt + 1), 2.0),
) -> int:
    """Fetch the volume `origin` ({volume_id, node}) into the new file `path`, verified;
    returns its size. Raises Unavailable when it cannot (the file is then removed)."""
    client = source.client(origin["node"])
    volume_id = origin["volume_id"]
    digest = await client.request("GET", f"/v1/volumes/{volume_id}/digest")
    size, expected = int(digest["size"]), str(digest["sha256"])
    progress.set_stage("fetching volume", size)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    ok = False
    try:
        stream = StreamCopier(fd)
        received, failures = 0, []

        async def write(chunk: bytes) -> None:
            await run_blocking(stream.write, chunk)
            progress.done += len(chunk)

        for attempt in range(ATTEMPTS):
            try:
                received += await download(
                    client, f"/v1/volumes/{volume_id}/content", received, write
                )
                break
            except TransferInterrupted as exc:
                received += exc.received
                failures.append(exc.message)
            except CopyError:
                raise
            except SymphonyError as exc:
                failures.append(exc.message)
            await asyncio.sleep(pause(attempt))
        else:
            raise Unavailable(f"could not copy volume {volume_id}: " + "; ".join(failures))
        result = await run_blocking(stream.finish)
        await run_blocking(os.fsync, fd)
        if result.sha256 != expected or result.size != size:
            raise Unavailable(
                f"the copy of volume {volume_id} does not match its checksum "
                f"(got {result.sha256[:16]}..., {result.size} bytes); discarded"
            )
        ok = True
        log.info("volume %s copied from %s (%d bytes), verified", volume_id, origin["node"], size)
        return size
    finally:
        os.close(fd)
        if not ok:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
