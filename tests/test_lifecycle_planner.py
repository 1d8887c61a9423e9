"""The planner: steps, order, questions, answers and reuse, without running anything."""

from __future__ import annotations

import pytest

from symphonyd.lifecycle.model import (
    Catalog,
    Lifecycle,
    Require,
    RequireExternal,
    RequireLocal,
    State,
    provide,
)
from symphonyd.lifecycle.planner import Planner, View, undo_steps
from symphonyd.lifecycle.variables import Password, Port, Str, Url


class Server(Lifecycle):
    class Off(State):
        pass

    class Installed(State):
        pass

    class Configured(State):
        @provide(requires=[Require([Port("port", default=80)])])
        def enter(self, port):
            pass

        @provide(requires=[Require([Str("path", default="www")])], returns=[Str("root")])
        def create_root(self, path):
            return {"root": path}

    class Active(State):
        @provide(returns=[Url("url")])
        def start(self):
            return {"url": "http://x/"}

    states = [Off, Installed, Configured, Active]
    transitions = [(Off, Installed), (Installed, Configured), (Configured, Active)]
    initial_state = Off


class Site(Lifecycle):
    class Off(State):
        pass

    class Templated(State):
        @provide(
            requires=[
                RequireLocal(
                    "//Server//create_root",
                    provide_args=[Str("path", default="www/site")],
                    provide_ret=[Str("root")],
                ),
                Require([Password("secret", required=False)]),
            ]
        )
        def enter(self, path, root, secret):
            pass

    class Active(State):
        @provide(requires=[RequireLocal("//Server//start", provide_ret=[Url("url")])])
        def enter(self, url):
            pass

        @provide(returns=[Url("url")])
        def start(self):
            return {"url": "http://x/"}

    states = [Off, Templated, Active]
    transitions = [(Off, Templated), (Templated, Active)]
    initial_state = Off


class Front(Lifecycle):
    class Off(State):
        pass

    class Configured(State):
        @provide(
            requires=[
                Require([Port("port", default=8080)]),
                RequireExternal("//Site//start", provide_ret=[Url("url")], nargs="*", name="sites"),
            ]
        )
        def enter(self, port, sites):
            pass

    class Active(State):
        @provide(returns=[Url("url")])
        def start(self):
            return {"url": "http://x/"}

    states = [Off, Configured, Active]
    transitions = [(Off, Configured), (Configured, Active)]
    initial_state = Off


CATALOG = Catalog([Server, Site, Front])
MEMBERS = ["n1", "n2", "n3"]


def view(**extra: object) -> View:
    names = set(CATALOG.names())
    return View(MEMBERS, {m: set(names) for m in MEMBERS}, **extra)  # type: ignore[arg-type]


def test_the_catalog_used_here_is_consistent() -> None:
    assert CATALOG.problems() == {}


def test_a_local_chain_is_planned_in_dependency_order() -> None:
    plan = Planner(CATALOG, view(), take_suggestions=True).deploy("Site//start", "n1")
    assert plan.ready, (plan.problems, [q.id for q in plan.missing])
    assert [(s.node, s.xpath) for s in plan.steps] == [
        ("n1", "Server/Installed/enter"),
        ("n1", "Server/Configured/enter"),
        ("n1", "Server/Configured/create_root"),
        ("n1", "Site/Templated/enter"),
        ("n1", "Server/Active/enter"),
        ("n1", "Server/Active/start"),
        ("n1", "Site/Active/enter"),
        ("n1", "Site/Active/start"),
    ]
    steps = plan.steps
    assert 2 in steps[3].after  # the site's template waits for the document root
    assert 5 in steps[6].after  # the site's Active waits for the server's start
    assert steps[1].values == {"port": 80}
    # the requirer's provide_args decide what the provider is called with
    assert steps[2].values == {"path": "www/site"}
    assert steps[3].values["path"] == "www/site"
    assert steps[3].inputs[0].providers == (("n1", "Server", "Configured/create_root"),)
    assert plan.result == ("n1", "Site", "Active/start") and plan.result_step == 7


def test_without_suggestions_every_value_is_a_question_with_its_suggestion() -> None:
    plan = Planner(CATALOG, view()).deploy("Site//start", "n1")
    missing = {q.id: q for q in plan.missing}
    assert missing["/n1/Server/Configured/enter/port"].suggestion == 80
    assert missing["/n1/Site/Templated/enter/path"].suggestion == "www/site"
    # an optional secret is not missing, and is never shown
    assert "/n1/Site/Templated/enter/secret" not in missing


def test_answers_match_by_the_most_specific_tail_and_are_validated() -> None:
    answers = {"port": 8081, "Configured/enter/port": 8082, "path": "srv"}
    plan = Planner(CATALOG, view(), answers, take_suggestions=True).deploy("Site//start", "n1")
    assert plan.steps[1].values == {"port": 8082}
    assert plan.steps[2].values == {"path": "srv"}
    bad = Planner(CATALOG, view(), {"port": "eighty"}, take_suggestions=True)
    plan = bad.deploy("Site//start", "n1")
    assert not plan.ready
    (question,) = plan.missing
    assert question.id == "/n1/Server/Configured/enter/port" and "eighty" not in question.id
    assert question.error and "whole number" in question.error


def test_secrets_are_never_shown_in_questions() -> None:
    answers = {"secret": "hunter22"}
    plan = Planner(CATALOG, view(), answers, take_suggestions=True).deploy("Site//start", "n1")
    described = plan.questions["/n1/Site/Templated/enter/secret"].describe()
    assert described["value"] == "********" and "hunter22" not in repr(described)


def test_external_requires_choose_nodes_and_plan_each_first() -> None:
    answers = {"sites": ["n2", "n3"]}
    plan = Planner(CATALOG, view(), answers, take_suggestions=True).deploy("Front//start", "n1")
    assert plan.ready, plan.problems
    front = next(s for s in plan.steps if s.xpath == "Front/Configured/enter")
    starts = [s.index for s in plan.steps if s.xpath == "Site/Active/start"]
    assert {plan.steps[i].node for i in starts} == {"n2", "n3"}
    assert set(starts) <= set(front.after)
    assert front.inputs[0].argument == "sites"
    assert {p[0] for p in front.inputs[0].providers} == {"n2", "n3"}


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (["n1"], "requiring node itself"),
        (["n9"], "cannot provide it"),
        (["n2", "n2"], "named twice"),
        (5, "give node names"),
    ],
)
def test_bad_node_choices_are_refused(answer: object, error: str) -> None:
    planner = Planner(CATALOG, view(), {"sites": answer}, take_suggestions=True)
    plan = planner.deploy("Front//start", "n1")
    question = plan.questions["/n1/Front/Configured/enter/sites"]
    assert question.error is not None and error in question.error


def test_what_already_holds_is_reused_so_a_finished_plan_has_no_steps() -> None:
    first = Planner(CATALOG, view(), take_suggestions=True).deploy("Site//start", "n1")
    applied = {("n1", "Server"): ["Off", "Installed", "Configured", "Active"]}
    applied[("n1", "Site")] = ["Off", "Templated", "Active"]
    calls = {("n1", s.lifecycle): {} for s in first.steps}
    for step in first.steps:
        calls[("n1", step.lifecycle)][f"{step.state}/{step.provide}"] = {
            "values": dict(step.values),
            "returns": {},
        }
    again = Planner(CATALOG, view(applied=applied, calls=calls), take_suggestions=True)
    plan = again.deploy("Site//start", "n1")
    assert plan.ready and plan.steps == []
    assert plan.result == ("n1", "Site", "Active/start") and plan.result_step is None
    # called with another value, the provide runs again (its state is already applied)
    other = Planner(CATALOG, view(applied=applied, calls=calls), {"path": "elsewhere"})
    plan = other.deploy("Server//create_root", "n1")
    assert [s.xpath for s in plan.steps] == ["Server/Configured/create_root"]


def test_goto_goes_down_by_leaving_and_problems_are_reported() -> None:
    applied = {("n1", "Server"): ["Off", "Installed", "Configured", "Active"]}
    plan = Planner(CATALOG, view(applied=applied)).goto("n1", "Server", "Installed")
    assert [(s.action, s.state) for s in plan.steps] == [
        ("leave", "Active"),
        ("leave", "Configured"),
    ]
    plan = Planner(CATALOG, view(), take_suggestions=True).deploy("Site//start", "n9")
    assert any("n9 is not a cluster member" in p for p in plan.problems)
    lacking = View(MEMBERS, {"n1": {"Site"}})
    plan = Planner(CATALOG, lacking, take_suggestions=True).deploy("Site//start", "n1")
    assert any("has not loaded the lifecycle Server" in p for p in plan.problems)


def test_undo_leaves_what_was_entered_newest_first() -> None:
    plan = Planner(CATALOG, view(), take_suggestions=True).deploy("Site//start", "n1")
    deployment = {
        "id": "d1",
        "steps": [
            {
                "node": s.node,
                "lifecycle": s.lifecycle,
                "action": s.action,
                "state": s.state,
                "status": "done",
            }
            for s in plan.steps
        ],
    }
    applied = {
        ("n1", "Server"): ["Off", "Installed", "Configured", "Active"],
        ("n1", "Site"): ["Off", "Templated", "Active"],
    }
    initial = {"Server": "Off", "Site": "Off"}
    steps = undo_steps(deployment, applied, initial)
    assert [(s.lifecycle, s.state) for s in steps] == [
        ("Site", "Active"),
        ("Server", "Active"),
        ("Site", "Templated"),
        ("Server", "Configured"),
        ("Server", "Installed"),
    ]
    assert all(s.after == [s.index - 1] for s in steps[1:])


def test_a_provider_state_in_use_cannot_be_left_before_its_consumer() -> None:
    applied = {
        ("n1", "Server"): ["Off", "Installed", "Configured", "Active"],
        ("n1", "Site"): ["Off", "Templated", "Active"],
    }
    calls = {
        ("n1", "Server"): {"Active/start": {"values": {}, "returns": {"url": "http://x/"}}},
        ("n1", "Site"): {
            "Active/enter": {"values": {}, "uses": [["n1", "Server", "Active/start"]]},
        },
    }
    plan = Planner(CATALOG, view(applied=applied, calls=calls)).goto("n1", "Server", "Off")
    assert plan.problems == [
        "cannot leave Server/Active on n1: Site/Active/enter on n1 uses its Active/start "
        "(leave or undo that first)"
    ]
    # leaving the consumer first is fine
    site_down = Planner(CATALOG, view(applied=applied, calls=calls)).goto("n1", "Site", "Off")
    assert site_down.problems == []


class Pinned(Lifecycle):
    class Off(State):
        pass

    class On(State):
        @provide(requires=[RequireExternal("/n3/Site//start", provide_ret=[Url("url")])])
        def enter(self, url):
            pass

    states = [Off, On]
    transitions = [(Off, On)]
    initial_state = Off


def test_an_external_xpath_naming_a_node_pins_the_choice() -> None:
    catalog = Catalog([Server, Site, Pinned])
    members = {m: set(catalog.names()) for m in MEMBERS}
    plan = Planner(catalog, View(MEMBERS, members), take_suggestions=True).deploy(
        "Pinned/On/enter", "n1"
    )
    question = plan.questions["/n1/Pinned/On/enter/start"]
    assert question.choices == ["n3"] and question.value == ["n3"]
    other = Planner(catalog, View(MEMBERS, members), {"start": ["n2"]}).deploy(
        "Pinned/On/enter", "n1"
    )
    assert "n2 cannot provide it (nodes that can: n3)" in (
        other.questions["/n1/Pinned/On/enter/start"].error or ""
    )


class Blog(Lifecycle):
    """A second requirer of Server's create_root, with another path by default."""

    class Off(State):
        pass

    class On(State):
        @provide(
            requires=[
                RequireLocal(
                    "//Server//create_root",
                    provide_args=[Str("path", default="www/blog")],
                    provide_ret=[Str("root")],
                )
            ]
        )
        def enter(self, path, root):
            pass

    states = [Off, On]
    transitions = [(Off, On)]
    initial_state = Off


class Both(Lifecycle):
    """Needs the site and the blog on its node."""

    class Off(State):
        pass

    class On(State):
        @provide(
            requires=[
                RequireLocal("//Site//start", provide_ret=[Url("url")], name="site"),
                RequireLocal("//Blog/On/enter", name="blog"),
            ]
        )
        def enter(self, url):
            pass

    states = [Off, On]
    transitions = [(Off, On)]
    initial_state = Off


class Tuned(Lifecycle):
    """Requires the server configured on another port than its default."""

    class Off(State):
        pass

    class On(State):
        @provide(requires=[RequireLocal("//Server/Configured/enter", provide_args=[Port("port")])])
        def enter(self, port):
            pass

    states = [Off, On]
    transitions = [(Off, On)]
    initial_state = Off


def test_one_provider_asked_for_two_sets_of_values_is_a_problem_not_a_silent_choice() -> None:
    catalog = Catalog([Server, Site, Blog, Both])
    assert catalog.problems() == {}
    members = {m: set(catalog.names()) for m in MEMBERS}
    plan = Planner(catalog, View(MEMBERS, members), take_suggestions=True).deploy(
        "Both/On/enter", "n1"
    )
    assert not plan.ready
    (problem,) = plan.problems
    assert "/n1/Server/Configured/create_root is needed with path='www/blog'" in problem
    assert "this plan has 'www/site'" in problem and "/n1/Blog/On/enter" in problem
    # answering one path for both requirers makes a plan that calls the provider once
    answers = {"Site/Templated/enter/path": "www/shared", "Blog/On/enter/path": "www/shared"}
    planner = Planner(catalog, View(MEMBERS, members), answers, take_suggestions=True)
    plan = planner.deploy("Both/On/enter", "n1")
    assert plan.ready, plan.problems
    calls = [s for s in plan.steps if s.xpath == "Server/Configured/create_root"]
    assert [s.values for s in calls] == [{"path": "www/shared"}]


def test_a_state_already_entered_with_other_values_is_not_reused_silently() -> None:
    catalog = Catalog([Server, Tuned])
    members = {m: set(catalog.names()) for m in MEMBERS}
    applied = {("n1", "Server"): ["Off", "Installed", "Configured"]}
    calls = {("n1", "Server"): {"Configured/enter": {"values": {"port": 80}, "returns": {}}}}
    held = View(MEMBERS, members, applied=applied, calls=calls)  # type: ignore[arg-type]
    plan = Planner(catalog, held, {"port": 8081}).deploy("Tuned/On/enter", "n1")
    assert not plan.ready
    assert any("port=8081 (it holds 80)" in p for p in plan.problems), plan.problems
    same = Planner(catalog, held, {"port": 80}).deploy("Tuned/On/enter", "n1")
    assert same.ready, same.problems
    assert [s.xpath for s in same.steps] == ["Tuned/On/enter"]
