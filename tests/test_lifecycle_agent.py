"""Which step of a lifecycle runs next on a node, without a cluster.

`decide_steps` is pure: the running deployments in, the next actions for one lifecycle
out. The step agent's objects (one per lifecycle on the node) are read from a plain store
and its passes driven one at a time with the step bodies replaced, so the rules are
checked without Raft; real deployments over real daemons are in test_lifecycle_cluster.py.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from symphonyd.keyring import Keyring
from symphonyd.lifecycle.step_agent import LifecycleSteps, StepAgent, StepRef, decide_steps
from symphonyd.reconcile import Action
from symphonyd.state import lifecycles
from symphonyd.state.store import Store


def step(
    index: int,
    lifecycle: str,
    status: str = "pending",
    node: str = "n1",
    after: tuple[int, ...] = (),
) -> dict[str, Any]:
    return {
        "index": index,
        "node": node,
        "lifecycle": lifecycle,
        "action": "enter",
        "state": "Running",
        "provide": None,
        "after": list(after),
        "status": status,
    }


def deployment(id_: str, created_at: str, *steps: dict[str, Any]) -> dict[str, Any]:
    return {"id": id_, "created_at": created_at, "status": "running", "steps": list(steps)}


def claim_and_run(deployment_id: str, index: int) -> list[Action]:
    ref = StepRef(deployment_id, index)
    return [Action("claim", ref), Action("run", ref)]


# -- decide ----------------------------------------------------------------------------------


def test_the_first_runnable_step_is_claimed_then_run() -> None:
    d1 = deployment("d1", "1", step(0, "Web"), step(1, "Web", after=(0,)))
    assert decide_steps("n1", "Web", [d1]) == claim_and_run("d1", 0)
    d1["steps"][0]["status"] = "done"
    assert decide_steps("n1", "Web", [d1]) == claim_and_run("d1", 1)
    d1["steps"][1]["status"] = "done"
    assert decide_steps("n1", "Web", [d1]) == []


def test_the_oldest_deployment_goes_first_then_the_lowest_index() -> None:
    newer = deployment("d2", "2", step(0, "Web"))
    older = deployment("d1", "1", step(0, "Db"), step(1, "Web"), step(2, "Web"))
    assert decide_steps("n1", "Web", [newer, older]) == claim_and_run("d1", 1)
    older["steps"][1]["status"] = older["steps"][2]["status"] = "done"
    assert decide_steps("n1", "Web", [newer, older]) == claim_and_run("d2", 0)


def test_a_step_waits_for_every_step_it_comes_after_on_any_node() -> None:
    d1 = deployment(
        "d1",
        "1",
        step(0, "Db", node="n2", status="running"),
        step(1, "Proxy", node="n1", status="done"),
        step(2, "Web", after=(0, 1)),
    )
    assert decide_steps("n1", "Web", [d1]) == []  # step 0 on n2 is not done yet
    d1["steps"][0]["status"] = "failed"
    assert decide_steps("n1", "Web", [d1]) == []  # nor will it be: it waits
    d1["steps"][0]["status"] = "done"
    assert decide_steps("n1", "Web", [d1]) == claim_and_run("d1", 2)


def test_one_step_per_lifecycle_at_a_time() -> None:
    # Web runs a step of d2: d1's runnable Web step waits, though d1 is older; Db is free.
    d1 = deployment("d1", "1", step(0, "Web"), step(1, "Db"))
    d2 = deployment("d2", "2", step(0, "Web", status="running"))
    assert decide_steps("n1", "Web", [d1, d2]) == [Action("run", StepRef("d2", 0))]
    assert decide_steps("n1", "Db", [d1, d2]) == claim_and_run("d1", 1)


def test_a_step_cut_short_by_a_restart_runs_again_without_a_claim() -> None:
    d1 = deployment("d1", "1", step(0, "Web", status="done"), step(1, "Web", status="running"))
    assert decide_steps("n1", "Web", [d1]) == [Action("run", StepRef("d1", 1))]


def test_steps_of_other_nodes_and_lifecycles_are_not_ours() -> None:
    d1 = deployment("d1", "1", step(0, "Web", node="n2"), step(1, "Db", status="running"))
    assert decide_steps("n1", "Web", [d1]) == []
    assert decide_steps("n2", "Web", [d1]) == claim_and_run("d1", 0)
    assert decide_steps("n2", "Db", [d1]) == []


# -- the agent's objects and workers ----------------------------------------------------------


class Recording(StepAgent):
    """A step agent on a plain store whose steps only record that they ran."""

    def __init__(self, store: Store) -> None:
        super().__init__(
            SimpleNamespace(store=store),  # type: ignore[arg-type]  # passes need no Raft
            "n1",
            keyring=Keyring("s"),
            catalog=lambda: None,  # type: ignore[arg-type,return-value]
            make_context=lambda lifecycle, data: None,  # type: ignore[arg-type,return-value]
        )
        self.log: list[tuple[str, str]] = []
        self.running = self.most_running = 0
        self.gate = asyncio.Event()

    async def act(self, record: LifecycleSteps, action: Action) -> None:
        self.log.append((record.lifecycle, str(action)))
        if action.verb == "run":
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            try:
                await self.gate.wait()
            finally:
                self.running -= 1


def store_with(*records: dict[str, Any]) -> Store:
    store = Store()
    for record in records:
        lifecycles.create_deployment(store, record)
    store.commit()
    return store


def test_one_object_per_lifecycle_with_work_on_this_node() -> None:
    store = store_with(
        deployment("d1", "1", step(0, "Web"), step(1, "Web", after=(0,)), step(2, "Db")),
        deployment("d2", "2", step(0, "Proxy", status="done"), step(1, "Db", node="n2")),
        deployment("d3", "3", step(0, "Cache", status="failed"), step(1, "Cache")),
    )
    agent = Recording(store)
    wanted = agent.wanted()
    # d3 failed: its pending step waits for a resume; Proxy is done; Db of n2 is not ours
    assert sorted(wanted) == ["Db", "Web"]
    assert [d["id"] for d in wanted["Web"].deployments] == ["d1", "d2"]


async def test_independent_lifecycles_run_side_by_side_within_the_bound() -> None:
    names = ["A", "B", "C", "D", "E", "F"]
    store = store_with(deployment("d1", "1", *(step(i, n) for i, n in enumerate(names))))
    agent = Recording(store)
    assert sorted(await agent.reconcile_once()) == names
    assert await agent.reconcile_once() == []  # one worker per lifecycle
    for _ in range(50):
        if agent.running == agent.concurrency:
            break
        await asyncio.sleep(0.01)
    assert agent.running == agent.concurrency == 4
    agent.gate.set()
    while agent.workers:
        await asyncio.gather(*agent.workers.values())
    assert agent.most_running == 4
    assert [entry for name, entry in agent.log if name == "C"] == ["claim d1/2", "run d1/2"]
