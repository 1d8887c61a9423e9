"""A KV workload for chaos runs: a few client threads doing consistent reads, writes,
deletes and CAS on a few keys against random nodes, recording every operation.

What it is for: producing, per key, the history the checker judges. Each operation is
recorded with its invoke and complete time (time.monotonic) and an outcome read from the
API's answer: an answer is `ok` (a CAS with its true/false), `no_quorum` and
`not_initialized` (a node that left the cluster) are `fail` (refused, nothing written),
anything else (`indeterminate`, a timeout, a lost connection, any other error) is
`unknown`. Every write writes a value never written before (`c<client>-<n>`),
which is what lets the checker compare values where the API compares ModifyIndex
(tests/chaos/checker.py). A CAS uses the index of the client's own last read of the key.

Bounded: at most `max_ops` operations per client and `max_seconds`; each request at most
`timeout` seconds. Requests go to the node's control socket (the client beside the node).
"""

from __future__ import annotations

import base64
import itertools
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from symphonyd.errors import NotFound, SymphonyError
from tests.chaos.checker import Op
from tests.nodes import NodeProcess

KEY_PREFIX = "chaos/"
MUTATIONS = ("write", "delete", "cas", "cas_delete")
WEIGHTS = {"read": 40, "write": 25, "cas": 20, "delete": 7, "cas_delete": 8}


@dataclass(frozen=True)
class Record:
    key: str
    op: Op
    node: str
    returned: float  # when the answer or the error came (also for unknown outcomes)
    error: str = ""  # the error code, if any
    modify_index: int | None = None  # a read's ModifyIndex


REFUSED = ("no_quorum", "not_initialized")  # nothing was proposed (a node out of the cluster)


def outcome_of(error: SymphonyError) -> str:
    return "fail" if error.code in REFUSED else "unknown"


def read_key(node: NodeProcess, key: str, timeout: float) -> tuple[str | None, int | None]:
    """A consistent read: (value, ModifyIndex), (None, None) when absent."""
    try:
        found = node.client(timeout=timeout).request(
            "GET", f"/v1/kv/{KEY_PREFIX}{key}", query={"consistent": ""}
        )
    except NotFound:
        return None, None
    entry = found[0]
    value = base64.b64decode(entry["Value"]).decode() if entry["Value"] else ""
    return value, int(entry["ModifyIndex"])


class Workload:
    """`targets()` gives the nodes a client may pick from now (those not killed)."""

    def __init__(
        self,
        targets: Callable[[], list[NodeProcess]],
        keys: list[str],
        *,
        clients: int = 4,
        seed: int = 0,
        timeout: float = 5.0,
        think: tuple[float, float] = (0.005, 0.03),
        max_ops: int = 100_000,
    ) -> None:
        self.targets = targets
        self.keys = keys
        self.clients = clients
        self.seed = seed
        self.timeout = timeout
        self.think = think
        self.max_ops = max_ops
        self.records: list[Record] = []
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, max_seconds: float) -> None:
        deadline = time.monotonic() + max_seconds
        for client in range(self.clients):
            thread = threading.Thread(
                target=self._client, args=(client, deadline), name=f"chaos-client-{client}"
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Ask the clients to stop and wait for them (each ends within one request)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 30)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise AssertionError(f"client threads did not stop: {alive}")

    def _client(self, client: int, deadline: float) -> None:
        rng = random.Random(self.seed * 1000 + client)
        last_read: dict[str, tuple[str | None, int | None]] = {}
        for n in range(self.max_ops):
            if self._stop.is_set() or time.monotonic() >= deadline:
                return
            targets = self.targets()
            if targets:
                node = rng.choice(targets)
                key = rng.choice(self.keys)
                kind = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
                record = self._perform(client, node, key, kind, f"c{client}-{n}", last_read)
                with self._lock:
                    self.records.append(record)
            time.sleep(rng.uniform(*self.think))

    def _perform(
        self,
        client: int,
        node: NodeProcess,
        key: str,
        kind: str,
        fresh: str,
        last_read: dict[str, tuple[str | None, int | None]],
    ) -> Record:
        expected, index = last_read.get(key, (None, None))
        if kind == "cas_delete" and index is None:
            kind = "delete"  # no index to compare with
        path = f"/v1/kv/{KEY_PREFIX}{key}"
        fields: dict[str, Any] = {"kind": kind, "process": client, "id": next(self._ids)}
        if kind in ("write", "cas"):
            fields["value"] = fresh
        if kind in ("cas", "cas_delete"):
            fields["expected"] = expected
        invoke = time.monotonic()
        try:
            answer: Any = None
            read_index = None
            if kind == "read":
                fields["value"], read_index = read_key(node, key, self.timeout)
                last_read[key] = (fields["value"], read_index)
            else:
                query = {"cas": index or 0} if kind in ("cas", "cas_delete") else None
                method = "PUT" if kind in ("write", "cas") else "DELETE"
                raw = fresh.encode() if method == "PUT" else None
                client_ = node.client(timeout=self.timeout)
                answer = client_.request(method, path, raw=raw, query=query)
            returned = time.monotonic()
            if kind in ("cas", "cas_delete"):
                fields["result"] = answer is True
            op = Op(invoke=invoke, complete=returned, outcome="ok", **fields)
            return Record(key, op, node.name, returned, modify_index=read_index)
        except SymphonyError as exc:
            returned = time.monotonic()
            outcome = outcome_of(exc)
            complete = math.inf if outcome == "unknown" else returned
            op = Op(invoke=invoke, complete=complete, outcome=outcome, **fields)
            return Record(key, op, node.name, returned, error=exc.code)

    def final_reads(self, node: NodeProcess) -> dict[str, str | None]:
        """One consistent read of every key, recorded as part of the histories."""
        seen = {}
        for key in self.keys:
            record = self._perform(-1, node, key, "read", "", {})
            with self._lock:
                self.records.append(record)
            if record.op.outcome != "ok":
                raise AssertionError(f"final read of {key} on {node.name}: {record.error}")
            seen[key] = record.op.value
        return seen

    def history(self, key: str) -> list[Op]:
        with self._lock:
            return [r.op for r in self.records if r.key == key]
