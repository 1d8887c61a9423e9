"""The image service of a node: imports (a local file read in place, or a streamed upload),
deletion, and the level-triggered clean-up of files nobody refers to any more.

Every import is first a record (`importing`; how far it is lives in this node's memory,
`progress.py`, not in the log), then `ready` with its
fingerprint, size, format and this node as a holder, or `failed` with the reason; its file
appears under `images/sha256/` only once the checksum is known. A checksum mismatch keeps
nothing, not even the record. What happens here goes through the log (`Cluster.propose`);
the file work runs in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import stat
from collections.abc import AsyncIterator
from typing import Any

from symphonyd import metrics
from symphonyd.client import MemberCaller, NodeClient, TransferInterrupted, download
from symphonyd.errors import Conflict, Invalid, SymphonyError, Unavailable
from symphonyd.image import copier, formats
from symphonyd.image.agent import ImageAgent
from symphonyd.image.copier import CopyError, CopyResult, StreamCopier
from symphonyd.image.files import HEX64, ImageFiles
from symphonyd.progress import ProgressBoard
from symphonyd.raft.cluster import Cluster
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.reconcile import run_blocking
from symphonyd.security import new_id, now_rfc3339
from symphonyd.state import cluster as cluster_table
from symphonyd.state import images, nodes
from symphonyd.state.lookup import resolve_one

log = logging.getLogger("symphonyd.image")

MAX_NAME = 255
MAX_DESCRIPTION = 2000
WRITE_BATCH = 4 * 1024 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_text(value: object, what: str, limit: int, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise Invalid(f"{what} is required")
    if _CONTROL.search(value):
        raise Invalid(f"{what} must not contain control characters")
    if len(value) > limit:
        raise Invalid(f"{what} is longer than {limit} characters")
    return value


def check_sha256(value: object) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not HEX64.match(value.lower()):
        raise Invalid("--sha256 must be 64 hexadecimal characters")
    return value.lower()


class ImageService:
    def __init__(
        self,
        cluster: Cluster,
        files: ImageFiles,
        node: str,
        *,
        caller: MemberCaller,
        board: ProgressBoard | None = None,
    ) -> None:
        self.cluster = cluster
        self.board = board or ProgressBoard()  # imports in progress (never in the log)
        self.files = files
        self.node = node
        self.caller = caller  # how to call other members
        self.fetching: dict[str, asyncio.Task[Any]] = {}
        self.fetched_bytes: dict[str, int] = {}  # by image id, while a fetch runs
        self.files_lock = asyncio.Lock()
        self.running: dict[str, asyncio.Task[Any]] = {}
        # Fingerprints published but not yet recorded, and ids of imports writing a temp
        # file: the clean-up must leave both alone.
        self.publishing: set[str] = set()
        self.importing: set[str] = set()

    # -- reading ---------------------------------------------------------------------------

    def resolve(self, ref: str) -> dict[str, Any]:
        with self.cluster.store.lock:
            return dict(resolve_one(images.find(self.cluster.store, ref), ref, "image"))

    def records(self) -> list[dict[str, Any]]:
        with self.cluster.store.lock:
            return [dict(r) for r in images.all_images(self.cluster.store)]

    # -- importing -------------------------------------------------------------------------

    async def _create(self, name: str, description: str) -> dict[str, Any]:
        """Record a new import; its id is in `importing` from before the record exists (the
        agent fails `importing` records no import of this node is running)."""
        image_id = new_id()
        self.importing.add(image_id)
        try:
            return await self._propose_create(image_id, name, description)
        except BaseException:
            self.importing.discard(image_id)
            raise

    async def _propose_create(self, image_id: str, name: str, description: str) -> dict[str, Any]:
        now = now_rfc3339()
        record = {
            "id": image_id,
            "name": name,
            "description": description,
            "status": "importing",
            "status_message": "",
            "progress": 0,
            "fingerprint": None,
            "size": None,
            "virtual_size": None,
            "format": None,
            "node": self.node,
            "holders": [],
            "created_at": now,
            "updated_at": now,
        }
        result = await self.cluster.propose_ok(Entry(EntryType.IMAGE_CREATE, {"image": record}))
        return dict(result["image"])

    async def _update(
        self, image_id: str, expect: str | None = "importing", **fields: Any
    ) -> dict[str, Any]:
        """Record an import's outcome, only while it is still `importing` (a late entry
        must never overwrite a final state)."""
        fields["updated_at"] = now_rfc3339()
        body: dict[str, Any] = {"id": image_id, "fields": fields}
        if expect is not None:
            body["expect_status"] = expect
        result = await self.cluster.propose_ok(Entry(EntryType.IMAGE_UPDATE, body), idempotent=True)
        return dict(result["image"])

    async def import_path(
        self, path: str, name: object, description: object, expected: str | None
    ) -> dict[str, Any]:
        """Start importing a file of this host, read in place; returns the record at once."""
        name_text = check_text(name, "name", MAX_NAME)
        description_text = check_text(description, "description", MAX_DESCRIPTION, required=False)
        try:
            src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise Invalid(f"no such file: {path}") from None
        except OSError as exc:
            raise Invalid(f"cannot open {path}: {exc.strerror}") from None
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):
                raise Invalid(f"{path} is not a regular file")
            if st.st_size == 0:
                raise Invalid(f"{path} is empty: an image needs content")
            record = await self._create(name_text, description_text)
        except BaseException:
            os.close(src)
            raise
        image_id = record["id"]
        try:
            task = asyncio.create_task(self._copy_file(image_id, src, expected))
        except BaseException:
            self.importing.discard(image_id)
            os.close(src)
            raise
        self.running[image_id] = task

        def forget(_task: asyncio.Task[Any]) -> None:
            self.running.pop(image_id, None)

        task.add_done_callback(forget)
        return record

    async def _copy_file(self, image_id: str, src: int, expected: str | None) -> None:
        dst = -1
        try:
            dst = self.files.open_temp(image_id)
            with self.board.track("images", image_id) as progress:
                progress.set_stage("importing", os.fstat(src).st_size)
                result = await run_blocking(
                    copier.copy_and_hash,
                    src,
                    dst,
                    progress.copied,
                    on_cancel=lambda: setattr(progress, "cancelled", True),
                )
            await self._finish(image_id, dst, result, expected)
        except BaseException as exc:
            # The caller already has the record: it stays, `failed`, with the reason.
            await self._fail(image_id, exc, keep_record=True)
            if not isinstance(exc, Exception):
                raise
        finally:
            self.importing.discard(image_id)
            os.close(src)
            if dst >= 0:
                os.close(dst)

    async def import_stream(
        self,
        chunks: AsyncIterator[bytes],
        length: int | None,
        name: object,
        description: object,
        expected: str | None,
    ) -> dict[str, Any]:
        """Import an upload as it arrives; returns the final record."""
        name_text = check_text(name, "name", MAX_NAME)
        description_text = check_text(description, "description", MAX_DESCRIPTION, required=False)
        if length == 0:
            raise Invalid("the upload is empty: an image needs content")
        record = await self._create(name_text, description_text)
        image_id = record["id"]
        dst = -1
        try:
            dst = self.files.open_temp(image_id)
            stream = StreamCopier(dst)
            received = 0
            batch = bytearray()
            with self.board.track("images", image_id) as progress:
                progress.set_stage("importing", length or 0)
                async for chunk in chunks:
                    batch += chunk
                    received += len(chunk)
                    if len(batch) >= WRITE_BATCH:
                        await run_blocking(stream.write, bytes(batch))
                        batch.clear()
                        progress.done = received
                if batch:
                    await run_blocking(stream.write, bytes(batch))
            if length is not None and received != length:
                raise Invalid(f"upload interrupted: {received} of {length} bytes arrived")
            result = await run_blocking(stream.finish)
            return await self._finish(image_id, dst, result, expected)
        except BaseException as exc:
            await self._fail(image_id, exc)
            raise
        finally:
            self.importing.discard(image_id)
            if dst >= 0:
                os.close(dst)

    async def _finish(
        self, image_id: str, fd: int, result: CopyResult, expected: str | None
    ) -> dict[str, Any]:
        if result.size == 0:
            raise _Discard("the file is empty: an image needs content")
        if expected and result.sha256 != expected:
            raise _Discard(
                f"checksum mismatch: expected {expected}, got {result.sha256}; nothing was kept"
            )
        found = await run_blocking(formats.detect, fd, result.size)
        note = "" if found.recognised else "not a recognised disk image format: accepted as raw"
        self.publishing.add(result.sha256)
        try:
            async with self.files_lock:
                await run_blocking(self.files.publish, image_id, fd, result.sha256)
            record = await self._update(
                image_id,
                status="ready",
                status_message=note,
                fingerprint=result.sha256,
                size=result.size,
                virtual_size=found.virtual_size,
                format=found.format,
                progress=result.size,
                holders=[self.node],
            )
        finally:
            self.publishing.discard(result.sha256)
        metrics.IMAGE_BYTES.labels("import").inc(result.size)
        log.info(
            "image %s ready: %s (%s, %d bytes)",
            image_id,
            result.sha256,
            found.format,
            result.size,
            extra={"resource": image_id},
        )
        return record

    async def _fail(self, image_id: str, exc: BaseException, keep_record: bool = False) -> None:
        self.files.discard_temp(image_id)
        with contextlib.suppress(SymphonyError):
            if isinstance(exc, _Discard) and not keep_record:
                await self.cluster.propose(Entry(EntryType.IMAGE_DELETE, {"id": image_id}))
                return
            reason = _reason(exc)
            log.warning("image %s failed: %s", image_id, reason, extra={"resource": image_id})
            await self._update(image_id, status="failed", status_message=reason)

    # -- deleting ----------------------------------------------------------------------------

    async def delete(self, ref: str) -> dict[str, Any]:
        record = self.resolve(ref)
        task = self.running.get(record["id"])
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await self.cluster.propose_ok(Entry(EntryType.IMAGE_DELETE, {"id": record["id"]}))
        await self.collect_garbage()
        return {"deleted": record["id"], "name": record["name"]}

    async def fail_orphans(self) -> None:
        """Imports this node was running when it stopped (kill -9, power loss) are over:
        say so, so no image stays `importing` for ever. Decided on a store known to be
        current, and applied only if the image is still `importing`."""

        def orphans() -> list[dict[str, Any]]:
            return [
                r
                for r in self.records()
                if r["status"] == "importing"
                and r["node"] == self.node
                and r["id"] not in self.importing
            ]

        if not orphans():
            return
        await self.cluster.barrier()
        for record in orphans():
            with contextlib.suppress(Conflict):  # it finished meanwhile
                await self._update(
                    record["id"],
                    status="failed",
                    status_message="the node stopped during the import; nothing was kept",
                )
            self.files.discard_temp(record["id"])

    async def collect_garbage(self) -> None:
        """Remove local files no image refers to, and temp files of dead imports (against a
        store known to be current: a restarted node may not have caught up yet)."""

        def unwanted() -> set[str]:
            with self.cluster.store.lock:
                wanted = images.referenced_fingerprints(self.cluster.store) | self.publishing
            return self.files.fingerprints() - wanted

        stale_temp = self.files.temp_ids() - self.importing
        if not unwanted() and not stale_temp:
            return
        await self.cluster.barrier()  # decide on a current store before deleting anything
        # Under the files lock, as publishing is: a file is judged and removed in one step.
        async with self.files_lock:
            with self.cluster.store.lock:
                wanted = images.referenced_fingerprints(self.cluster.store) | self.publishing
            for fingerprint in self.files.fingerprints():
                if fingerprint not in wanted and self.files.remove(fingerprint):
                    log.info("removed image file %s (no image refers to it)", fingerprint)
            self.files.clean_temp(set(self.importing))

    # -- replication ---------------------------------------------------------------------

    def placement(self, image: dict[str, Any]) -> list[str]:
        """The nodes that should hold an image: `images.min_replicas` of the members, chosen
        by rendezvous hashing on the image id, so every node computes the same set and a
        member leaving moves only its own share."""
        store = self.cluster.store
        with store.lock:
            wanted = cluster_table.config(store)["images.min_replicas"]
            members = [n["name"] for n in nodes.all_nodes(store) if n["status"] == "active"]
        ranked = sorted(
            members,
            key=lambda name: hashlib.sha256(f"{image['id']}/{name}".encode()).hexdigest(),
        )
        return ranked[: min(wanted, len(ranked))]

    async def ensure_local(self, ref: str) -> dict[str, Any]:
        """Make sure this node holds a verified copy of an image, fetching it if need be."""
        record = self.resolve(ref)
        if record["status"] != "ready" or not record["fingerprint"]:
            raise Conflict(f"image {record['id']} is {record['status']}, not ready")
        if self.files.has(record["fingerprint"]):
            if self.node not in record["holders"]:
                return await self._add_holder(record["id"])
            return record
        task = self.fetching.get(record["id"])
        if task is None:
            task = asyncio.create_task(self._fetch(record))
            self.fetching[record["id"]] = task
            task.add_done_callback(lambda _t: self.fetching.pop(record["id"], None))
        await asyncio.shield(task)
        return self.resolve(record["id"])

    async def _add_holder(self, image_id: str) -> dict[str, Any]:
        entry = Entry(
            EntryType.IMAGE_ADD_HOLDER, {"id": image_id, "node": self.node, "now": now_rfc3339()}
        )
        return dict((await self.cluster.propose_ok(entry, idempotent=True))["image"])

    async def remove_holder(self, image_id: str) -> None:
        entry = Entry(
            EntryType.IMAGE_REMOVE_HOLDER, {"id": image_id, "node": self.node, "now": now_rfc3339()}
        )
        await self.cluster.propose_ok(entry, idempotent=True)

    async def _fetch(self, record: dict[str, Any]) -> None:
        """Copy an image from its holders: verify the SHA-256 while writing, resume a broken
        transfer with a Range request, move on to another holder when one fails."""
        image_id, fingerprint = record["id"], record["fingerprint"]
        sources = self._sources(record)
        if not sources:
            raise Unavailable(f"no reachable node holds image {image_id}")
        self.importing.add(image_id)
        self.files.discard_temp(image_id)
        dst = self.files.open_temp(image_id)
        try:
            stream = StreamCopier(dst)
            received, failures = 0, []

            async def write(chunk: bytes) -> None:
                await run_blocking(stream.write, chunk)
                self.fetched_bytes[image_id] = self.fetched_bytes.get(image_id, 0) + len(chunk)

            for attempt in range(FETCH_ATTEMPTS):
                client = sources[attempt % len(sources)]
                try:
                    received += await download(
                        client, f"/v1/images/{image_id}/content", received, write
                    )
                    break
                except TransferInterrupted as exc:
                    received += exc.received
                    failures.append(exc.message)
                except CopyError:
                    raise  # writing here failed (disk full, ...): no other holder helps
                except SymphonyError as exc:
                    failures.append(f"{client.host}:{client.port}: {exc.message}")
                await asyncio.sleep(min(0.2 * (attempt + 1), 2.0))
            else:
                raise Unavailable(f"could not fetch image {image_id}: " + "; ".join(failures))
            result = await run_blocking(stream.finish)
            if result.sha256 != fingerprint or result.size != record["size"]:
                raise Unavailable(
                    f"fetched copy of image {image_id} does not match its checksum "
                    f"(got {result.sha256}); discarded"
                )
            self.publishing.add(fingerprint)
            try:
                async with self.files_lock:
                    await run_blocking(self.files.publish, image_id, dst, fingerprint)
                await self._add_holder(image_id)
            finally:
                self.publishing.discard(fingerprint)
            metrics.IMAGE_BYTES.labels("fetch").inc(result.size)
            log.info(
                "image %s fetched (%d bytes) and verified",
                image_id,
                result.size,
                extra={"resource": image_id},
            )
        finally:
            os.close(dst)
            self.files.discard_temp(image_id)
            self.importing.discard(image_id)
            self.fetched_bytes.pop(image_id, None)

    def _sources(self, record: dict[str, Any]) -> list[NodeClient]:
        """Clients for the other holders, the ones this node is connected to first."""
        store = self.cluster.store
        status = self.cluster.status()
        peers = status.get("peers", {})
        with store.lock:
            members = {n["name"]: n for n in nodes.all_nodes(store)}
        found = []
        for name in record["holders"]:
            member = members.get(name)
            if member is None or name == self.node:
                continue
            connected = peers.get(member["raft_addr"], {}).get("connected", False)
            found.append((not connected, name, member))
        return [self.caller.client(m) for _, _, m in sorted(found)]

    async def verify_local(self, ref: str | None = None) -> list[dict[str, Any]]:
        """Read local copies back; a copy whose checksum does not match its name is removed
        (and this node stops being a holder), to be fetched again. Returns what it found."""
        checked = []
        for record in self.records() if ref is None else [self.resolve(ref)]:
            fingerprint = record.get("fingerprint")
            if record["status"] != "ready" or not fingerprint:
                continue
            if not self.files.has(fingerprint):
                if self.node in record["holders"]:  # claimed, but the file is gone
                    checked.append(
                        {"id": record["id"], "fingerprint": fingerprint, "intact": False}
                    )
                    await self.remove_holder(record["id"])
                continue
            intact = await run_blocking(self.files.verify, fingerprint)
            checked.append({"id": record["id"], "fingerprint": fingerprint, "intact": intact})
            if not intact:
                log.error("image %s: local copy is corrupted; removing it", record["id"])
                await run_blocking(self.files.remove, fingerprint)
                for image in self.records():
                    if image.get("fingerprint") == fingerprint and self.node in image["holders"]:
                        await self.remove_holder(image["id"])
        return checked

    async def close(self) -> None:
        """Cancel the imports this node runs and wait until each is over (a cancelled
        import marks its record failed and removes its temporary file). The agent's task
        belongs to its owner, who cancels it."""
        for task in list(self.running.values()):
            task.cancel()
        for task in list(self.running.values()):
            with contextlib.suppress(BaseException):
                await task

    async def run_agent(self) -> None:
        """This node's image agent (`image/agent.py`): fetch what this node should hold,
        drop claims without a file, clean up, scrub; until cancelled."""
        await ImageAgent(self).run()


FETCH_ATTEMPTS = 6


class _Discard(Invalid):
    """An import refused in a way that keeps nothing (empty, checksum mismatch)."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, CopyError) and exc.errno == 28:
        return f"the disk filled up during the import ({exc.message}); nothing was kept"
    if isinstance(exc, SymphonyError):
        return exc.message
    if isinstance(exc, asyncio.CancelledError):
        return "the import was interrupted (the node stopped or the image was deleted)"
    return f"upload interrupted: {exc or type(exc).__name__}"
