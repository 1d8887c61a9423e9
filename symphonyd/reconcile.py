"""The one agent pattern: decide (pure), then act, one worker per object, bounded.

An agent owns the records of one kind that its node must make true (volumes placed here,
this node's physical volumes, ...). On every wake-up it reads them (`wanted`), asks the
host what is there (`observe`), and for each object that has no worker running computes
the actions still to do (`decide`: pure, no I/O, testable without a cluster). An object
with actions gets a worker task that runs them in order (`act`); at most `concurrency`
workers act at once on a node, so independent objects progress side by side (a long image
copy does not hold up a delete) while one object's actions never overlap. When a worker
ends the agent looks again, so the next actions are decided from the state the last ones
left: level-triggered, a restart or a missed event does no harm.

Errors a worker meets:
* `RetryLater(message, delay)`: the object is left alone for `delay` seconds (no delay:
  a backoff doubling from `retry_delay` to `max_retry_delay`), then decided again;
* `GiveUp(message)`: `give_up` records the reason (usually the record goes `failed`);
* `Conflict` or `NotFound`: the record changed meanwhile (a patch expecting a status
  found another, the record is gone): logged as such, not as an error, and decided again
  from what the record is after the backoff (never at once: a decision that keeps
  meeting a change must not spin);
* any other `SymphonyError` or `OSError`: counted, logged, retried with the backoff;
* anything else is a bug: logged with its traceback, retried with the backoff, and the
  agent goes on (one object's bug must not stop the node's agent).

Also here: the claim (`pending -> creating` only if still pending), the record patch, the
cancel-safe runner for blocking calls and the progress of long work. This module knows
the cluster (to propose) and the store (to read); it must not know any service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from symphonyd import metrics
from symphonyd.errors import Conflict, NotFound, SymphonyError
from symphonyd.raft.cluster import Cluster
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.security import now_rfc3339

__all__ = [
    "Action",
    "GiveUp",
    "Progress",
    "Reconciler",
    "RetryLater",
    "claim",
    "patch",
    "run_blocking",
]

log = logging.getLogger("symphonyd.reconcile")

R = TypeVar("R")  # what `wanted` gives for one object (a record, or a record and more)
T = TypeVar("T")


class RetryLater(SymphonyError):
    """Not now: try this object again after `delay` seconds (None: the agent's backoff)."""

    http_status = 503
    code = "retry_later"

    def __init__(self, message: str, delay: float | None = None, **details: Any) -> None:
        super().__init__(message, **details)
        self.delay = delay


class GiveUp(SymphonyError):
    """Never: the object cannot be made as asked; `give_up` records why."""

    http_status = 500
    code = "gave_up"


@dataclass(frozen=True)
class Action:
    """One thing to do to one object: a verb and what it needs (a size, a snapshot name)."""

    verb: str
    arg: Any = None

    def __str__(self) -> str:
        return self.verb if self.arg is None else f"{self.verb} {self.arg}"


# -- helpers every agent shares -----------------------------------------------------------


async def run_blocking(
    fn: Callable[..., T], *args: Any, on_cancel: Callable[[], None] | None = None
) -> T:
    """Run blocking `fn(*args)` in a thread. If the caller is cancelled, ask the work to
    stop (`on_cancel`) and wait for the thread before re-raising: a cancelled agent never
    leaves a thread working behind it (nor closes descriptors a thread still uses)."""
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if on_cancel is not None:
            on_cancel()
        with contextlib.suppress(BaseException):
            await future
        raise


async def patch(
    cluster: Cluster,
    entry_type: EntryType,
    record_id: str,
    *,
    expect: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Change fields of one record (`updated_at` set); with `expect`, only while its status
    is still that (else Conflict). Without `expect` the patch is idempotent, so it is
    proposed again when its first outcome is unknown."""
    fields["updated_at"] = now_rfc3339()
    body: dict[str, Any] = {"id": record_id, "fields": fields}
    if expect is not None:
        body["expect_status"] = expect
    return await cluster.propose_ok(Entry(entry_type, body), idempotent=expect is None)


# The patch a claim falls back to while a member speaks a schema before RECORD_CLAIM.
CLAIM_FALLBACK = {
    "volumes": EntryType.VOLUME_UPDATE,
    "pvs": EntryType.PV_UPDATE,
    "vgs": EntryType.VG_UPDATE,
    "instances": EntryType.INSTANCE_UPDATE,
}


async def claim(
    cluster: Cluster,
    table: str,
    record_id: str,
    node: str,
    *,
    from_status: str = "pending",
    to_status: str = "creating",
) -> None:
    """Take a record placed on `node` for its work: `from_status -> to_status` only if it
    is still `from_status` there (`RECORD_CLAIM`, state/claims.py). Conflict when it
    changed meanwhile (a worker then stops, and the next pass decides from what the record
    is now). Mid rolling upgrade, a member older than RECORD_CLAIM gets the patch it knows."""
    try:
        cluster.require_schema(EntryType.RECORD_CLAIM)
    except Conflict:
        fallback = CLAIM_FALLBACK[table]
        await patch(cluster, fallback, record_id, expect=from_status, status=to_status)
        return
    body = {
        "table": table,
        "id": record_id,
        "node": node,
        "from_status": from_status,
        "to_status": to_status,
        "at": now_rfc3339(),
    }
    await cluster.propose_ok(Entry(EntryType.RECORD_CLAIM, body))


@dataclass
class Progress:
    """How far one piece of long work is: its stage and bytes done of total. Fed from any
    thread (`copied`, `set_stage`); read with `snapshot`. `source`, when set, is asked
    for the bytes done instead (a transfer counted elsewhere)."""

    stage: str | None = None
    total: int = 0
    done: int = 0
    source: Callable[[], int] | None = None
    cancelled: bool = False

    def set_stage(self, stage: str, total: int, source: Callable[[], int] | None = None) -> None:
        self.stage, self.total, self.done, self.source = stage, total, 0, source

    def copied(self, done: int) -> bool:
        """The copy callback: bytes done so far; True asks the copy to stop."""
        self.done = done
        return self.cancelled

    def snapshot(self) -> dict[str, Any]:
        done = self.source() if self.source is not None else self.done
        return {"stage": self.stage, "done": done, "total": self.total}


# -- the agent base ------------------------------------------------------------------------


@dataclass
class _Backoff:
    attempts: int = 0
    not_before: float = 0.0


class Reconciler(Generic[R]):
    """Base of every agent. Subclasses give `name`, `tables` and the four steps."""

    name: ClassVar[str] = "agent"  # for logs and metrics
    tables: ClassVar[frozenset[str]] = frozenset()  # changes to these wake the agent
    concurrency: ClassVar[int] = 4  # workers acting at once on this node
    rest: ClassVar[float] = 30.0  # a pass at least this often, with nothing changing
    retry_delay: ClassVar[float] = 1.0
    max_retry_delay: ClassVar[float] = 60.0

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.workers: dict[str, asyncio.Task[None]] = {}
        self._backoff: dict[str, _Backoff] = {}
        self._slots = asyncio.Semaphore(self.concurrency)
        self._woken = asyncio.Event()

    # -- the steps a subclass writes ---------------------------------------------------------

    def wanted(self) -> dict[str, R]:
        """The records this node must make true, by id (read from the store)."""
        raise NotImplementedError

    async def observe(self, wanted: Mapping[str, R]) -> Any:
        """What the host has, for `decide` (None by default). Objects with a worker
        running are in `self.workers`; skip asking about them."""
        return None

    def decide(self, record: R, observed: Any) -> list[Action]:
        """The actions still to do for one record, from the record and what is observed.
        Pure: no I/O, no clock."""
        raise NotImplementedError

    async def act(self, record: R, action: Action) -> None:
        """Do one action (blocking work through `run_blocking`)."""
        raise NotImplementedError

    async def give_up(self, record: R, reason: str) -> None:
        """Record that `record` cannot be made (a `GiveUp` was raised)."""
        log.warning("%s: gave up on %r: %s", self.name, record, reason)

    async def after_pass(self, wanted: Mapping[str, R], observed: Any) -> None:
        """Work over all objects at once after each pass (e.g. removing orphans)."""

    # -- running ------------------------------------------------------------------------------

    def wake(self) -> None:
        """Look again now (a worker ended, or a node-local change)."""
        self._woken.set()

    async def reconcile_once(self) -> list[str]:
        """One pass: start a worker for every object that has actions; their ids."""
        # A worker busy before the records are read may end while `observe` awaits: the
        # record read for it is then older than what the worker wrote. It is decided at the
        # next pass (its end wakes one), never from that stale read.
        busy = set(self.workers)
        wanted = self.wanted()
        observed = await self.observe(wanted)
        now = time.monotonic()
        started = []
        for record_id, record in wanted.items():
            if record_id in self.workers or record_id in busy:
                continue
            backoff = self._backoff.get(record_id)
            if backoff is not None and backoff.not_before > now:
                continue
            actions = self.decide(record, observed)
            if not actions:
                self._backoff.pop(record_id, None)
                continue
            self.workers[record_id] = asyncio.create_task(
                self._work(record_id, record, actions), name=f"{self.name}:{record_id}"
            )
            started.append(record_id)
        for gone in set(self._backoff) - set(wanted):
            del self._backoff[gone]
        await self.after_pass(wanted, observed)
        return started

    async def _work(self, record_id: str, record: R, actions: list[Action]) -> None:
        try:
            async with self._slots:
                for action in actions:
                    await self.act(record, action)
            self._backoff.pop(record_id, None)
        except RetryLater as exc:
            self._retry(record_id, exc.delay)
            log.info("%s %s: %s; trying again later", self.name, record_id, exc.message)
        except GiveUp as exc:
            self._backoff.pop(record_id, None)
            await self._guarded(record_id, self.give_up(record, exc.message))
        except (Conflict, NotFound) as exc:  # the record changed meanwhile
            self._retry(record_id, None)
            log.info("%s %s: changed meanwhile (%s)", self.name, record_id, exc.message)
        except (SymphonyError, OSError) as exc:
            self._retry(record_id, None)
            metrics.RECONCILE_ERRORS.labels(self.name).inc()
            log.warning("%s %s: %s", self.name, record_id, exc)
        except Exception:
            self._retry(record_id, None)
            metrics.RECONCILE_ERRORS.labels(self.name).inc()
            log.exception("%s %s: unexpected error", self.name, record_id)
        finally:
            self.workers.pop(record_id, None)
            self.wake()

    async def _guarded(self, record_id: str, step: Any) -> None:
        try:
            await step
        except (SymphonyError, OSError) as exc:
            self._retry(record_id, None)
            log.warning("%s %s: cannot record the outcome: %s", self.name, record_id, exc)

    def _retry(self, record_id: str, delay: float | None) -> None:
        backoff = self._backoff.setdefault(record_id, _Backoff())
        if delay is None:
            delay = min(self.retry_delay * 2**backoff.attempts, self.max_retry_delay)
            backoff.attempts += 1
        backoff.not_before = time.monotonic() + delay

    def _next_retry(self) -> float | None:
        waits = [b.not_before for b in self._backoff.values()]
        return max(0.0, min(waits) - time.monotonic()) if waits else None

    async def run(self) -> None:
        """The agent's loop, until cancelled (its workers are cancelled with it). It acts
        only once this node's store holds what was committed when it started."""
        try:
            await self._caught_up()
            while True:
                # The revision seen *before* reading: a change made while the pass runs
                # wakes the next one at once.
                seen = self.cluster.store.revision
                self._woken.clear()
                ok = True
                try:
                    await self.reconcile_once()
                except (SymphonyError, OSError) as exc:
                    ok = False
                    metrics.RECONCILE_ERRORS.labels(self.name).inc()
                    log.warning("%s: %s", self.name, exc)
                except Exception:
                    ok = False
                    metrics.RECONCILE_ERRORS.labels(self.name).inc()
                    log.exception("%s: unexpected error", self.name)
                timeout = self.rest if ok else self.retry_delay
                retry = self._next_retry()
                if retry is not None:
                    timeout = min(timeout, retry + 0.01)
                await self._sleep(seen, timeout)
        finally:
            await self.close()

    async def _caught_up(self) -> None:
        """Wait for a barrier: after a restart the node replays its log and hears the
        rest from the leader, and a pass decided from that partial store would act on
        old records (build again an instance stopped since, or remove what a later entry
        keeps). Tried again every `retry_delay` seconds while there is no quorum."""
        said = False
        while True:
            try:
                await self.cluster.barrier()
                return
            except SymphonyError as exc:
                if not said:
                    log.info("%s: waiting for the cluster before acting: %s", self.name, exc)
                    said = True
            await asyncio.sleep(self.retry_delay)

    async def _sleep(self, seen: int, timeout: float) -> None:
        changed = asyncio.ensure_future(
            self.cluster.wait_for_tables(set(self.tables), seen, timeout)
        )
        woken = asyncio.ensure_future(self._woken.wait())
        try:
            await asyncio.wait({changed, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (changed, woken):
                waiter.cancel()
            await asyncio.gather(changed, woken, return_exceptions=True)

    async def close(self) -> None:
        """Cancel the workers and wait for them (their blocking calls end first)."""
        workers = list(self.workers.values())
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
