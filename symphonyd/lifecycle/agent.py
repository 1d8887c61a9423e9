"""This node's lifecycles: loads the modules, publishes what it loaded, plans deployments
for the API, and runs the steps assigned to this node.

At start the modules are loaded, the catalog is published and every applied state on
this node is re-ensured (`State.ensure`: the web server runs again). Then `steps` (the
`step_agent.StepAgent`, a `reconcile.Reconciler`) runs this node's steps: one lifecycle
at a time per lifecycle, in order, a few lifecycles side by side; a step cut short by a
crash runs again. The supervisor restarts the processes that die.

On the leader, a step that waits on a node without a live Raft connection for
`deployments.step_patience` seconds (a cluster setting, default 30) is failed with that
reason; `deploy` run again resumes it.

This module decides nothing about which step runs next (that is `step_agent`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from symphonyd import scheduler
from symphonyd.errors import Conflict, Invalid, NotFound, SymphonyError, Unavailable
from symphonyd.keyring import Keyring
from symphonyd.lifecycle import loader
from symphonyd.lifecycle.context import InWorkDir, NodeContext, make_work_dir
from symphonyd.lifecycle.executor import ensure_applied
from symphonyd.lifecycle.model import Catalog, XPath
from symphonyd.lifecycle.planner import (
    Plan,
    PlannedStep,
    Planner,
    SecretValue,
    View,
    leave_problems,
    undo_steps,
)
from symphonyd.lifecycle.step_agent import (
    TABLES,
    WAKE_EVERY,
    StepAgent,
    returns_of,
    running_deployments,
    step_entry,
    still_waits,
)
from symphonyd.lifecycle.supervisor import RunAs, Supervisor
from symphonyd.raft.cluster import Cluster
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.security import new_id, now_rfc3339
from symphonyd.state import cluster as cluster_config
from symphonyd.state import lifecycles, nodes
from symphonyd.state.lookup import resolve_one

RESUME_WAIT = 30.0  # seconds a resume waits for the steps still running elsewhere

log = logging.getLogger("symphonyd.lifecycle")


class LifecycleService:
    def __init__(
        self,
        cluster: Cluster,
        node: str,
        address: str,
        data_dir: str,
        keyring: Keyring,
        module_dirs: list[str],
        run_as: RunAs | None = None,
    ) -> None:
        self.cluster = cluster
        self.node = node
        self.address = address
        self.data_dir = data_dir
        self.keyring = keyring  # seals secret values, opens them again
        self.module_dirs = [os.path.join(data_dir, "lifecycles"), *module_dirs]
        self.loaded = loader.Loaded()
        self.supervisor = Supervisor(os.path.join(data_dir, "run", "lifecycles"), run_as=run_as)
        if run_as is not None:
            log.info("lifecycle processes run as %s (uid %d)", run_as.name, run_as.uid)
        self.steps = StepAgent(
            cluster,
            node,
            keyring=keyring,
            catalog=lambda: self.catalog,
            make_context=self._context_factory(),
        )
        self._waiting_since: dict[tuple[str, int], float] = {}
        self.ready = asyncio.Event()

    @property
    def catalog(self) -> Catalog:
        return self.loaded.catalog

    # -- start -----------------------------------------------------------------------

    async def start(self) -> None:
        os.makedirs(self.module_dirs[0], exist_ok=True)
        self.loaded = await asyncio.to_thread(loader.load, self.module_dirs)
        catalog = {
            "node": self.node,
            "lifecycles": dict(self.loaded.origin),
            "broken": dict(self.loaded.broken),
            "updated_at": now_rfc3339(),
        }
        attempt = 0
        while True:  # no quorum yet, or members too old for the entry: keep trying
            try:
                await self.cluster.propose_ok(
                    Entry(EntryType.LIFECYCLE_CATALOG, {"catalog": catalog}), idempotent=True
                )
                break
            except (SymphonyError, OSError) as exc:
                if attempt % 60 == 0:
                    log.info("lifecycles: publishing the catalog: %s; retrying", exc)
                attempt += 1
                await asyncio.sleep(1.0)
        with self.cluster.store.lock:
            records = [dict(r) for r in lifecycles.on_node(self.cluster.store, self.node)]
        for record in records:
            problems = await asyncio.to_thread(
                ensure_applied, self.catalog, record, self._context_factory()
            )
            for problem in problems:
                log.warning("lifecycle %s: %s", record["lifecycle"], problem)
        self.ready.set()

    async def run_agent(self) -> None:
        """Start, then run this node's steps (`steps`) and watch the supervised processes,
        until cancelled."""
        await self.start()
        watcher = asyncio.create_task(self.supervisor.watch())
        try:
            await self.steps.run()  # its workers are cancelled and awaited with it
        finally:  # the daemon closes the supervisor (its processes stop with the node)
            watcher.cancel()

    async def close(self) -> None:
        """Stop the processes the supervisor runs for this node's lifecycles (they stop
        with the node). Call it after cancelling the task running `run_agent`."""
        await asyncio.to_thread(self.supervisor.close)

    # -- what step bodies get, and the leader's loop --------------------------------------

    def _context_factory(self) -> Any:
        def make(lifecycle: str, data: dict[str, Any]) -> NodeContext:
            work_dir = make_work_dir(
                os.path.join(self.data_dir, "lifecycle-work"),
                lifecycle,
                shared=self.supervisor.run_as is not None,
            )
            return NodeContext(
                node=self.node,
                address=self.address,
                work_dir=work_dir,
                supervisor=InWorkDir(self.supervisor, work_dir),
                data=data,
                log=logging.getLogger(f"symphonyd.lifecycle.{lifecycle}"),
            )

        return make

    async def fail_unreachable_steps(self) -> None:
        """The leader's loop: a step waiting on a node it cannot reach fails once it has
        waited `deployments.step_patience` (counted from when this node began to lead)."""
        self._waiting_since.clear()
        while True:
            seen = self.cluster.store.revision
            try:
                await self._fail_unreachable()
            except (SymphonyError, OSError) as exc:
                log.warning("lifecycle steps on lost nodes: %s", exc)
            await self.cluster.wait_for_tables(set(TABLES), seen, WAKE_EVERY)

    async def _fail_unreachable(self) -> None:
        reachable = scheduler.reachable_nodes(self.cluster, self.node)
        now = time.monotonic()
        with self.cluster.store.lock:
            config = cluster_config.config(self.cluster.store)
        patience = float(config["deployments.step_patience"])
        deployments = running_deployments(self.cluster.store)
        waiting: set[tuple[str, int]] = set()
        for deployment in deployments:
            steps = deployment["steps"]
            for step in steps:
                if step["status"] not in ("pending", "running") or step["node"] in reachable:
                    continue
                if still_waits(steps, step):
                    continue
                key = (deployment["id"], step["index"])
                waiting.add(key)
                since = self._waiting_since.setdefault(key, now)
                if now - since < patience:
                    continue
                fields = {
                    "status": "failed",
                    "error": f"node {step['node']} is unreachable "
                    f"(waited {patience:.0f} s); run the deployment again to resume",
                    "finished_at": now_rfc3339(),
                }
                await self.cluster.propose(
                    step_entry(deployment["id"], step["index"], step["status"], fields)
                )
        self._waiting_since = {k: v for k, v in self._waiting_since.items() if k in waiting}

    # -- for the API ----------------------------------------------------------------------

    def view(self) -> View:
        store = self.cluster.store
        with store.lock:
            members = [m["name"] for m in nodes.all_nodes(store)]
            catalogs = {
                m: set(published.get("lifecycles", {}))
                for m in members
                if (published := lifecycles.catalog(store, m)) is not None
            }
            applied: dict[tuple[str, str], list[str]] = {}
            calls: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
            for record in lifecycles.all_lifecycles(store):
                key = (record["node"], record["lifecycle"])
                applied[key] = list(record["applied"])
                calls[key] = {k: dict(v) for k, v in record["calls"].items()}
        reachable = scheduler.reachable_nodes(self.cluster, self.node)
        return View(members, catalogs, applied, calls, reachable)

    def plan(
        self,
        kind: str,
        target: str,
        node: str | None,
        answers: Mapping[str, object],
        *,
        yes: bool,
        state: str | None = None,
    ) -> Plan:
        planner = Planner(self.catalog, self.view(), answers, take_suggestions=yes)
        if kind == "goto":
            assert state is not None
            return planner.goto(node or self.node, target, state)
        return planner.deploy(target, node or self.node)

    async def create(
        self, kind: str, plan: Plan, *, simulate: bool, undoes: str | None = None
    ) -> dict[str, Any]:
        if plan.problems:
            raise Conflict(
                "the plan cannot be carried out: " + "; ".join(plan.problems),
                problems=plan.problems,
            )
        missing = plan.missing
        if missing:
            raise Invalid(
                "values are missing or invalid: "
                + "; ".join(f"{q.id}: {q.error or 'no value'}" for q in missing),
                questions=[q.describe() for q in missing],
            )
        now = now_rfc3339()
        record = {
            "id": new_id(),
            "kind": kind,
            "target": plan.target,
            "node": plan.node,
            "simulate": simulate,
            "undoes": undoes,
            "steps": [self._step_record(step) for step in plan.steps],
            "result_step": plan.result_step,
            "result": None,
            "reused": list(plan.reused),
            "created_at": now,
            "updated_at": now,
        }
        if plan.result_step is None and plan.result is not None:
            record["result"] = returns_of(self.cluster.store, "", *plan.result) or {}
        result = await self.cluster.propose_ok(
            Entry(EntryType.DEPLOYMENT_CREATE, {"deployment": record})
        )
        return dict(result["deployment"])

    def _step_record(self, step: PlannedStep) -> dict[str, Any]:
        def sealed(values: Mapping[str, Any]) -> dict[str, Any]:
            return {
                k: self.keyring.seal(v) if isinstance(v, SecretValue) else v
                for k, v in values.items()
            }

        return {
            "index": step.index,
            "node": step.node,
            "lifecycle": step.lifecycle,
            "action": step.action,
            "state": step.state,
            "provide": step.provide,
            "values": sealed(step.values),
            "inputs": [{**i.describe(), "args": sealed(i.args)} for i in step.inputs],
            "after": list(step.after),
            "why": step.why,
            "status": "pending",
            "error": None,
            "returns": None,
            "started_at": None,
            "finished_at": None,
        }

    async def deploy(
        self,
        xpath: str,
        node: str | None,
        answers: Mapping[str, object],
        *,
        yes: bool,
        simulate: bool,
    ) -> dict[str, Any]:
        """The same deployment again: a failed one resumes, a finished or running one is
        returned as it is; otherwise a new one is planned and started."""
        parsed = XPath.parse(xpath)
        ref = self.catalog.resolve(parsed)
        target_node = parsed.node or node or self.node
        with self.cluster.store.lock:
            earlier = [
                dict(d)
                for d in lifecycles.all_deployments(self.cluster.store)
                if d["kind"] == "deploy"
                and d["target"] == ref.xpath
                and d["node"] == target_node
                and bool(d.get("simulate")) == simulate
                and d["status"] in ("running", "failed", "done")
            ]
        if earlier:
            last = max(earlier, key=lambda d: d["created_at"])
            if last["status"] == "failed":
                return {**(await self.resume(last["id"])), "outcome": "resumed"}
            return {**last, "outcome": "unchanged"}
        plan = self.plan("deploy", xpath, target_node, answers, yes=yes)
        return {**(await self.create("deploy", plan, simulate=simulate)), "outcome": "created"}

    async def resume(self, deployment_id: str) -> dict[str, Any]:
        record = await self._settled(self.find(deployment_id)["id"])
        if record["status"] != "failed":
            raise Conflict(f"deployment {record['id']} is {record['status']}, not failed")
        steps = [
            {**s, "status": "pending", "error": None} if s["status"] == "failed" else s
            for s in record["steps"]
        ]
        result = await self.cluster.propose_ok(
            Entry(
                EntryType.DEPLOYMENT_UPDATE,
                {"id": record["id"], "fields": {"steps": steps, "updated_at": now_rfc3339()}},
            )
        )
        return dict(result["deployment"])

    async def _settled(self, deployment_id: str) -> dict[str, Any]:
        """The deployment once none of its steps runs any more, read after a barrier.

        A failed deployment may still have steps running on other nodes (they finish
        and record what they did). Resuming from a copy read before they finish would
        put them back as they were, and run again what already happened. A step on a
        node that cannot be reached is not waited for (it stays running, as it was)."""
        await self.cluster.barrier()
        deadline = time.monotonic() + RESUME_WAIT
        while True:
            record = self.find(deployment_id)
            reachable = scheduler.reachable_nodes(self.cluster, self.node)
            running = [
                s for s in record["steps"] if s["status"] == "running" and s["node"] in reachable
            ]
            if not running:
                return record
            if time.monotonic() > deadline:
                step = running[0]
                raise Conflict(
                    f"step {step['index']} of deployment {record['id']} is still running on "
                    f"{step['node']}: resume once it finished"
                )
            seen = self.cluster.store.revision
            await self.cluster.wait_for_revision(seen, 1.0)

    async def undo(self, deployment_id: str) -> dict[str, Any]:
        record = self.find(deployment_id)
        if record["status"] == "running":
            raise Conflict(f"deployment {record['id']} is running: wait for it to finish")
        if record["status"] == "undone":
            raise Conflict(f"deployment {record['id']} is already undone")
        view = self.view()
        initial = {name: self.catalog.get(name).initial() for name in self.catalog.names()}
        unknown = sorted({s["lifecycle"] for s in record["steps"]} - set(initial))
        if unknown:
            raise NotFound(
                f"this node has not loaded {', '.join(unknown)}: undo from a node that has"
            )
        plan = Plan(target=f"undo {record['id']}", node=record["node"])
        plan.steps = undo_steps(record, view.applied, initial)
        problems = leave_problems(plan.steps, view)
        if problems:
            raise Conflict("; ".join(problems), problems=problems)
        return await self.create(
            "undo", plan, simulate=bool(record.get("simulate")), undoes=record["id"]
        )

    def find(self, ref: str) -> dict[str, Any]:
        with self.cluster.store.lock:
            found = lifecycles.find_deployments(self.cluster.store, ref)
            return dict(resolve_one(found, ref, "deployment"))

    def require_node(self, node: str) -> None:
        with self.cluster.store.lock:
            known = nodes.get(self.cluster.store, node) is not None
        if not known:
            raise NotFound(f"no node {node!r}")

    async def wait_ready(self, timeout: float = 15.0) -> None:
        """Requests wait (a little) for the modules to load and the catalog to publish."""
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except TimeoutError:
            raise Unavailable(
                "lifecycles are still loading on this node; retry in a moment"
            ) from None


__all__ = ["LifecycleService"]
