"""This node's share of the deployments: the agent that runs the steps placed here.

Built on `reconcile.Reconciler`. The object is a lifecycle on this node: one worker per
lifecycle, so its steps run one at a time and in order, while steps of other lifecycles
(independent branches of a plan) run beside them, at most `concurrency` at once.
`decide_steps` (pure) picks the step a lifecycle runs next from the running deployments:

* a step of ours found `running` with no worker was cut short (the node stopped before
  its outcome was recorded): it runs again, without a claim;
* else the first `pending` step, oldest deployment first, whose steps it comes `after`
  are all `done`: it is claimed (pending -> running, through the log, so one node and
  one worker run it) and run.

`act` runs the step in a thread (`executor.run_step`) and records its outcome together
with the lifecycle's new state in one entry. A body that fails is a failed step (the
executor says why), not an agent error; an error of the cluster (no quorum) leaves the
step where it is and the base tries again with its backoff.

This module must not plan, publish catalogs or re-ensure states (`agent.LifecycleService`
does), nor fail the steps of unreachable nodes (the leader's loop there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from symphonyd.errors import Conflict
from symphonyd.keyring import Keyring
from symphonyd.lifecycle.context import NodeContext
from symphonyd.lifecycle.executor import Outcome, StepEnv, run_step
from symphonyd.lifecycle.model import Catalog
from symphonyd.raft.cluster import Cluster
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.reconcile import Action, GiveUp, Reconciler, run_blocking
from symphonyd.security import now_rfc3339
from symphonyd.state import lifecycles, nodes
from symphonyd.state.store import Record, Store

__all__ = [
    "TABLES",
    "WAKE_EVERY",
    "LifecycleSteps",
    "StepAgent",
    "StepRef",
    "decide_steps",
    "returns_of",
    "running_deployments",
    "step_entry",
    "still_waits",
]

log = logging.getLogger("symphonyd.lifecycle")

WAKE_EVERY = 5.0
TABLES = frozenset({"deployments", "lifecycles", "nodes", "lifecycle_catalogs"})


@dataclass(frozen=True)
class StepRef:
    """One step of one deployment."""

    deployment: str
    index: int

    def __str__(self) -> str:
        return f"{self.deployment[:8]}/{self.index}"


@dataclass(frozen=True)
class LifecycleSteps:
    """One lifecycle of this node with the running deployments (their steps say where it
    stands in each)."""

    lifecycle: str
    deployments: tuple[Record, ...]


def decide_steps(
    node: str, lifecycle: str, deployments: Iterable[Mapping[str, Any]]
) -> list[Action]:
    """What `lifecycle` on `node` does next, given the running deployments: run again the
    step cut short, else claim and run the first runnable one (oldest deployment first,
    then by index); nothing while it waits. Call it only when no worker has it."""
    mine = [
        (deployment, step)
        for deployment in sorted(deployments, key=lambda d: d["created_at"])
        for step in deployment["steps"]
        if step["node"] == node and step["lifecycle"] == lifecycle
    ]
    for deployment, step in mine:
        if step["status"] == "running":  # ours, cut short by a restart
            return [Action("run", StepRef(deployment["id"], step["index"]))]
    for deployment, step in mine:
        if step["status"] == "pending" and not still_waits(deployment["steps"], step):
            ref = StepRef(deployment["id"], step["index"])
            return [Action("claim", ref), Action("run", ref)]
    return []


class StepAgent(Reconciler[LifecycleSteps]):
    """Runs the steps of the running deployments that are placed on this node."""

    name = "lifecycle"
    tables = TABLES
    concurrency = 4
    rest = WAKE_EVERY

    def __init__(
        self,
        cluster: Cluster,
        node: str,
        *,
        keyring: Keyring,
        catalog: Callable[[], Catalog],
        make_context: Callable[[str, dict[str, Any]], NodeContext],
    ) -> None:
        super().__init__(cluster)
        self.node = node
        self.keyring = keyring
        self.catalog = catalog  # what this node loaded (known once the service started)
        self.make_context = make_context

    def wanted(self) -> dict[str, LifecycleSteps]:
        deployments = tuple(running_deployments(self.cluster.store))
        names = {
            step["lifecycle"]
            for deployment in deployments
            for step in deployment["steps"]
            if step["node"] == self.node and step["status"] in ("pending", "running")
        }
        return {name: LifecycleSteps(name, deployments) for name in sorted(names)}

    def decide(self, record: LifecycleSteps, observed: Any) -> list[Action]:
        return decide_steps(self.node, record.lifecycle, record.deployments)

    async def act(self, record: LifecycleSteps, action: Action) -> None:
        ref = action.arg
        if not isinstance(ref, StepRef):
            raise GiveUp(f"unknown action {action}")
        if action.verb == "claim":
            claimed = {"status": "running", "started_at": now_rfc3339()}
            result = await self.cluster.propose(
                step_entry(ref.deployment, ref.index, "pending", claimed)
            )
            if not result.get("ok"):  # the base decides again at once, from what it is now
                raise Conflict(f"step {ref} was changed meanwhile")
        elif action.verb == "run":
            await self._run(ref)
        else:
            raise GiveUp(f"unknown action {action}")

    async def _run(self, ref: StepRef) -> None:
        store = self.cluster.store
        with store.lock:
            deployment = lifecycles.deployment(store, ref.deployment)
            if deployment is None:
                return
            step = dict(deployment["steps"][ref.index])
            record = lifecycles.get(store, self.node, step["lifecycle"])
            record = dict(record) if record is not None else None
            members = [m["name"] for m in nodes.all_nodes(store)]
        short = ref.deployment[:8]
        log.info("deployment %s: step %d: %s %s", short, ref.index, step["action"], _xpath(step))
        env = StepEnv(
            node=self.node,
            returns_of=lambda n, lc, p: returns_of(store, ref.deployment, n, lc, p),
            make_context=self.make_context,
            seal=self.keyring.seal,
            unseal=self.keyring.unseal,
            members=members,
            deployment=ref.deployment,
            now=now_rfc3339(),
            simulate=bool(deployment.get("simulate")),
        )
        outcome: Outcome = await run_blocking(run_step, self.catalog(), step, record, env)
        if outcome.status == "failed":
            log.warning("deployment %s: step %d failed: %s", short, ref.index, outcome.error)
        fields = {
            "status": outcome.status,
            "error": outcome.error,
            "returns": outcome.returns,
            "log": outcome.log,
            "finished_at": now_rfc3339(),
        }
        await self.cluster.propose_ok(
            step_entry(ref.deployment, ref.index, "running", fields, outcome.lifecycle),
            timeout=30.0,
        )


# -- shared with the service and the leader's loop ------------------------------------------


def running_deployments(store: Store) -> list[Record]:
    with store.lock:
        return [d for d in lifecycles.all_deployments(store) if d["status"] == "running"]


def still_waits(steps: list[dict[str, Any]], step: Mapping[str, Any]) -> bool:
    """Whether a step still waits for one it comes after."""
    return any(steps[i]["status"] != "done" for i in step["after"])


def returns_of(
    store: Store, deployment_id: str, node: str, lifecycle: str, provide: str
) -> dict[str, Any] | None:
    """What `provide` of `lifecycle` on `node` returned: in this deployment if one of its
    steps called it, else the call that holds there (None: it does not hold)."""
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


def step_entry(
    deployment_id: str,
    index: int,
    expect: str | None,
    fields: dict[str, Any],
    lifecycle: dict[str, Any] | None = None,
) -> Entry:
    """The change of one step (only while it is still `expect`), with the change of the
    lifecycle record the step made, if any."""
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


def _xpath(step: Mapping[str, Any]) -> str:
    return f"{step['lifecycle']}/{step['state']}/{step['provide'] or step['action']}"
