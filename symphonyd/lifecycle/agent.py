"""This node's lifecycles: loads the modules, publishes what it loaded, plans deployments
for the API, and runs the steps assigned to this node.

The agent is level-triggered: on every change of the deployments it looks for steps of
this node that are `pending` with every step they wait for `done`, claims one per
lifecycle (pending -> running, through the log, so one node and one worker run it), runs
it in a thread, and records the outcome together with the lifecycle's new state in one
entry. A step found `running` for this node at start was cut short by a crash: it runs
again (the state change it would have made was not recorded). At start, every applied
state on this node is re-ensured (`State.ensure`: the web server runs again).

On the leader, a step that waits on a node without a live Raft connection for
`deployments.step_patience` seconds (a cluster setting, default 30) is failed with that
reason; `deploy` run again resumes it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from symphonyd import metrics, scheduler
from symphonyd.errors import Conflict, Invalid, NotFound, SymphonyError, Unavailable
from symphonyd.lifecycle import loader
from symphonyd.lifecycle.context import NodeContext
from symphonyd.lifecycle.executor import Outcome, StepEnv, ensure_applied, run_step
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
from symphonyd.lifecycle.supervisor import Supervisor
from symphonyd.raft.cluster import Cluster
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.security import new_id, now_rfc3339, seal, unseal
from symphonyd.state import cluster as cluster_config
from symphonyd.state import lifecycles, nodes
from symphonyd.state.lookup import resolve_one

log = logging.getLogger("symphonyd.lifecycle")

WAKE_EVERY = 5.0
TABLES = {"deployments", "lifecycles", "nodes", "lifecycle_catalogs"}


class LifecycleService:
    def __init__(
        self,
        cluster: Cluster,
        node: str,
        address: str,
        data_dir: str,
        secret: str,
        module_dirs: list[str],
    ) -> None:
        self.cluster = cluster
        self.node = node
        self.address = address
        self.data_dir = data_dir
        self.secret = secret
        self.module_dirs = [os.path.join(data_dir, "lifecycles"), *module_dirs]
        self.loaded = loader.Loaded()
        self.supervisor = Supervisor(os.path.join(data_dir, "run", "lifecycles"))
        self._busy: dict[str, asyncio.Task[None]] = {}  # lifecycle -> the step running
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
        await self.start()
        watcher = asyncio.create_task(self.supervisor.watch())
        try:
            while True:
                seen = self.cluster.store.revision
                try:
                    self._start_runnable()
                except (SymphonyError, OSError) as exc:
                    log.warning("lifecycle agent: %s", exc)
                except Exception:
                    metrics.RECONCILE_ERRORS.labels("lifecycle").inc()
                    log.exception("lifecycle agent: unexpected error")
                await self.cluster.wait_for_tables(TABLES, seen, WAKE_EVERY)
        finally:  # the daemon closes the supervisor (its processes stop with the node)
            watcher.cancel()
            for task in self._busy.values():
                task.cancel()

    async def close(self) -> None:
        """Stop the processes the supervisor runs for this node's lifecycles (they stop
        with the node). Call it after cancelling the task running `run_agent`."""
        await asyncio.to_thread(self.supervisor.close)

    # -- running steps ------------------------------------------------------------------

    def _running_deployments(self) -> list[dict[str, Any]]:
        with self.cluster.store.lock:
            return [
                d
                for d in lifecycles.all_deployments(self.cluster.store)
                if d["status"] == "running"
            ]

    def _start_runnable(self) -> None:
        deployments = self._running_deployments()
        running_elsewhere = {
            step["lifecycle"]
            for d in deployments
            for step in d["steps"]
            if step["node"] == self.node and step["status"] == "running"
        }
        for deployment in sorted(deployments, key=lambda d: d["created_at"]):
            steps = deployment["steps"]
            for step in steps:
                if step["node"] != self.node or step["lifecycle"] in self._busy:
                    continue
                if step["status"] == "pending" and not _waits(steps, step):
                    if step["lifecycle"] in running_elsewhere:
                        continue
                    claim = True
                elif step["status"] == "running":
                    claim = False  # ours, cut short by a restart
                else:
                    continue
                task = asyncio.create_task(
                    self._run(deployment["id"], step["index"], step["lifecycle"], claim)
                )
                self._busy[step["lifecycle"]] = task
                running_elsewhere.add(step["lifecycle"])

    async def _run(self, deployment_id: str, index: int, lifecycle: str, claim: bool) -> None:
        try:
            if claim:
                result = await self.cluster.propose(
                    _step_entry(
                        deployment_id,
                        index,
                        "pending",
                        {"status": "running", "started_at": now_rfc3339()},
                    )
                )
                if not result.get("ok"):
                    return
            store = self.cluster.store
            with store.lock:
                deployment = lifecycles.deployment(store, deployment_id)
                if deployment is None:
                    return
                step = dict(deployment["steps"][index])
                record = lifecycles.get(store, self.node, step["lifecycle"])
                record = dict(record) if record is not None else None
                members = [m["name"] for m in nodes.all_nodes(store)]
            log.info(
                "deployment %s: step %d: %s %s",
                deployment_id[:8],
                index,
                step["action"],
                _step_xpath(step),
            )
            env = StepEnv(
                node=self.node,
                returns_of=lambda n, lc, p: self._returns_of(deployment_id, n, lc, p),
                make_context=self._context_factory(),
                seal=lambda text: seal(self.secret, text),
                unseal=lambda text: unseal(self.secret, text),
                members=members,
                deployment=deployment_id,
                now=now_rfc3339(),
                simulate=bool(deployment.get("simulate")),
            )
            outcome: Outcome = await asyncio.to_thread(run_step, self.catalog, step, record, env)
            if outcome.status == "failed":
                log.warning(
                    "deployment %s: step %d failed: %s", deployment_id[:8], index, outcome.error
                )
            fields = {
                "status": outcome.status,
                "error": outcome.error,
                "returns": outcome.returns,
                "log": outcome.log,
                "finished_at": now_rfc3339(),
            }
            await self.cluster.propose_ok(
                _step_entry(deployment_id, index, "running", fields, outcome.lifecycle),
                timeout=30.0,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("deployment %s: step %d: unexpected error", deployment_id[:8], index)
        finally:
            if self._busy.get(lifecycle) is asyncio.current_task():
                del self._busy[lifecycle]
            # look again: the next step may be runnable now
            self.cluster.loop.call_soon(self._start_runnable_safely)

    def _start_runnable_safely(self) -> None:
        try:
            self._start_runnable()
        except Exception:
            log.exception("lifecycle agent: unexpected error")

    def _returns_of(
        self, deployment_id: str, node: str, lifecycle: str, provide: str
    ) -> dict[str, Any] | None:
        store = self.cluster.store
        with store.lock:
            deployment = lifecycles.deployment(store, deployment_id)
            for step in (deployment or {}).get("steps", []):
                if (step["node"], step["lifecycle"], f"{step['state']}/{step['provide']}") == (
                    node,
                    lifecycle,
                    provide,
                ) and step["status"] == "done":
                    return dict(step.get("returns") or {})
            record = lifecycles.get(store, node, lifecycle)
            call = (record or {}).get("calls", {}).get(provide)
            return None if call is None else dict(call.get("returns") or {})

    def _context_factory(self) -> Any:
        def make(lifecycle: str, data: dict[str, Any]) -> NodeContext:
            work_dir = os.path.join(self.data_dir, "lifecycle-work", lifecycle)
            os.makedirs(work_dir, exist_ok=True)
            return NodeContext(
                node=self.node,
                address=self.address,
                work_dir=work_dir,
                supervisor=self.supervisor,
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
            await self.cluster.wait_for_tables(TABLES, seen, WAKE_EVERY)

    async def _fail_unreachable(self) -> None:
        reachable = scheduler.reachable_nodes(self.cluster, self.node)
        now = time.monotonic()
        with self.cluster.store.lock:
            config = cluster_config.config(self.cluster.store)
        patience = float(config["deployments.step_patience"])
        deployments = self._running_deployments()
        waiting: set[tuple[str, int]] = set()
        for deployment in deployments:
            steps = deployment["steps"]
            for step in steps:
                if step["status"] not in ("pending", "running") or step["node"] in reachable:
                    continue
                if _waits(steps, step):
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
                    _step_entry(deployment["id"], step["index"], step["status"], fields)
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
            record["result"] = self._returns_of("", *plan.result) or {}
        result = await self.cluster.propose_ok(
            Entry(EntryType.DEPLOYMENT_CREATE, {"deployment": record})
        )
        return dict(result["deployment"])

    def _step_record(self, step: PlannedStep) -> dict[str, Any]:
        def sealed(values: Mapping[str, Any]) -> dict[str, Any]:
            return {
                k: seal(self.secret, v) if isinstance(v, SecretValue) else v
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
        record = self.find(deployment_id)
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


def _step_entry(
    deployment_id: str,
    index: int,
    expect: str | None,
    fields: dict[str, Any],
    lifecycle: dict[str, Any] | None = None,
) -> Entry:
    return Entry(
        EntryType.DEPLOYMENT_STEP,
        {
            "id": deployment_id,
            "index": index,
            "expect": expect,
            "fields": fields,
            "lifecycle": lifecycle,
            "at": now_rfc3339(),
        },
    )


def _waits(steps: list[dict[str, Any]], step: dict[str, Any]) -> bool:
    """Whether a step still waits for one it comes after."""
    return any(steps[i]["status"] != "done" for i in step["after"])


def _step_xpath(step: Mapping[str, Any]) -> str:
    return f"{step['lifecycle']}/{step['state']}/{step['provide'] or step['action']}"


__all__ = ["LifecycleService"]
