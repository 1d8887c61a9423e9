"""`symphonyd lifecycle ...`, `symphonyd deploy` and `symphonyd deployment ...`.

`deploy` plans first (asking the node for the plan and its questions), asks what is
missing — on a terminal: the plan first, then one question at a time, each checked as
soon as it is answered (the node plans again: an invalid value is asked again at once,
and a value derived from an answer is never asked); otherwise from `--answers` and
`--yes`, naming every missing value at once —, then starts the deployment and follows it
step by step until it is done or a step fails. Enter takes the suggestion, so a terminal
and `--yes` give the same plan for the same answers. `--plan` without a terminal prints
the plan as it stands, marking what is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import urllib.parse
from collections.abc import Callable
from typing import Any

import click

from symphonyd.cli.command import CommandGroup, Context, json_option
from symphonyd.cli.output import cell, print_json, print_kv_table, print_table, resource_path
from symphonyd.cli.wait import follow_record
from symphonyd.client import Client
from symphonyd.errors import DriverError, Invalid

WAIT_LIMIT = 3600.0
MAX_ROUNDS = 200  # prompts (one per round): a plan that keeps asking is a bug, not a loop


def _node_path(node: str, *rest: str) -> str:
    parts = [urllib.parse.quote(p, safe="") for p in (node, *rest)]
    return "/v1/nodes/" + "/".join(parts)


def _this_node(client: Client) -> str:
    return str(client.request("GET", "/v1/cluster")["node"])


def _assignments(items: tuple[str, ...]) -> dict[str, str]:
    result: dict[str, str] = {}
    for index, item in enumerate(items, 1):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise Invalid(f"--set #{index}: expected VAR=VALUE")
        result[key.strip()] = value
    return result


def load_answers(path: str) -> dict[str, Any]:
    """An answers file: a JSON or YAML mapping of question ids (or their tails) to values."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise Invalid(f"cannot read answers file {path}: {exc.strerror}") from None
    import yaml  # here, not at start-up: only answers files need it

    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())  # yaml's reasons span lines: one line here
        raise Invalid(f"answers file {path} is not valid JSON or YAML: {reason}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise Invalid(f"answers file {path} must be a mapping of question ids to values")
    return data


def matches(key: str, question_id: str) -> bool:
    """Whether an answer's key (a question id or a tail of one at a `/`) names a question."""
    return question_id == key or question_id.endswith("/" + key.strip("/"))


def write_answers(path: str, answers: dict[str, Any], plan: dict[str, Any]) -> int:
    """Write the answers as the plan read them (a port as a number, not the text typed),
    secrets left out (never written in clear); how many were left out."""
    import yaml

    kept = {}
    for key, value in answers.items():
        named = [q for q in plan["questions"] if matches(key, q["id"])]
        if any(q["secret"] for q in named):
            continue
        typed = [q["value"] for q in named if q["value"] is not None]
        kept[key] = typed[0] if typed else value
    text = (
        json.dumps(kept, indent=2, sort_keys=True) + "\n"
        if path.endswith(".json")
        else yaml.safe_dump(kept, sort_keys=True)
    )
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return len(answers) - len(kept)


def missing_questions(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [q for q in plan["questions"] if q["id"] in plan["missing"]]


def count(number: int, thing: str) -> str:
    return f"{number} {thing}" + ("" if number == 1 else "s")


def print_plan(plan: dict[str, Any]) -> None:
    """The plan's steps with their values (`?`: not known yet), then what is missing."""
    click.echo(f"Plan for {plan['target']} on {plan['node']}:")
    if not plan["steps"]:
        click.echo("  nothing to do")
    rows = []
    for step in plan["steps"]:
        values = ", ".join(
            f"{k}={'?' if v is None else cell(v)}" for k, v in step["values"].items()
        )
        after = ",".join(str(i) for i in step["after"])
        rows.append([step["index"], step["node"], step["xpath"], values, after or "-"])
    if rows:
        print_table(["#", "NODE", "STEP", "VALUES", "AFTER"], rows)
    for note in plan.get("reused", []):
        click.echo(f"  reused: {note}")
    for problem in plan["problems"]:
        click.echo(f"  problem: {problem}")
    for question in missing_questions(plan):
        why = question["error"] or "no value"
        hint = f" (suggested: {cell(question['suggestion'])})" if question["suggestion"] else ""
        click.echo(f"  missing: {question['id']}: {why}{hint}")


def _prompt(question: dict[str, Any]) -> Any:
    label = question["label"]
    where = question["id"]
    if question.get("error"):
        click.echo(f"  {where}: {question['error']}", err=True)
    if question["help"]:
        click.echo(f"  {question['help']}", err=True)
    suggestion = question.get("suggestion")
    if question["kind"] == "nodes":
        choices = ", ".join(question["choices"]) or "none"
        default = ",".join(suggestion or [])
        text = click.prompt(
            f"{where} ({label}; nodes: {choices}; nargs {question['nargs']})",
            default=default,
            show_default=True,
            err=True,
        )
        return [item.strip() for item in str(text).split(",") if item.strip()]
    if question["secret"]:
        return click.prompt(f"{where} ({label})", hide_input=True, err=True)
    return click.prompt(
        f"{where} ({label})",
        default=None if suggestion is None else str(suggestion),
        show_default=True,
        err=True,
    )


def plan_with_answers(
    client: Client,
    body: dict[str, Any],
    answers: dict[str, Any],
    *,
    interactive: bool,
    partial: bool = False,
) -> dict[str, Any]:
    """The plan once nothing is missing. On a terminal: the plan first, then one question
    at a time, planned again after each answer (so an invalid value is asked again at
    once, and a derived value follows from the answer it comes from). Otherwise an error
    naming every missing or invalid value, or with `partial` (a plan to read) the plan as
    it stands."""
    shown = False
    for _ in range(MAX_ROUNDS):
        plan = client.request(
            "POST", "/v1/deployments", body={**body, "answers": answers, "plan": True}
        )
        if plan["problems"]:
            raise Invalid("the plan cannot be carried out: " + "; ".join(plan["problems"]))
        missing = missing_questions(plan)
        if not missing:
            unused = plan.get("unused_answers", [])
            if unused and plan["steps"]:  # nothing to do: no answer was needed
                names = ", ".join(repr(key) for key in unused)
                click.echo(
                    f"warning: answers that match no question of this plan: {names}", err=True
                )
            return plan
        if not interactive:
            if partial:
                return plan
            listing = "; ".join(f"{q['id']}: {q['error'] or 'no value'}" for q in missing)
            hint = "" if body.get("yes") else " (--yes takes the suggestions)"
            raise Invalid(f"{count(len(missing), 'value')} missing or invalid{hint}: {listing}")
        if not shown:  # what the answers are for, before the first question
            with contextlib.redirect_stdout(sys.stderr):
                print_plan(plan)
            shown = True
        question = missing[0]
        answers[question["id"]] = _prompt(question)
    raise Invalid("the plan keeps asking for values: giving up")


def follow(client: Client, record: dict[str, Any], *, quiet: bool = False) -> dict[str, Any]:
    """Print each step as it starts and ends, until the deployment is done or failed."""
    seen: dict[int, str] = {}

    def done(record: dict[str, Any]) -> bool:
        for step in record["steps"]:
            status = step["status"]
            if seen.get(step["index"]) == status or status == "pending":
                continue
            seen[step["index"]] = status
            xpath = f"{step['lifecycle']}/{step['state']}/{step['provide'] or step['action']}"
            line = f"[{step['node']}] {xpath}: {status}"
            if step.get("error"):
                line += f": {step['error']}"
            if not quiet:
                click.echo(line, err=True)
                for logged in step.get("log") or []:
                    click.echo(f"    {logged}", err=True)
        return bool(record["status"] != "running")

    found = follow_record(
        client,
        "deployments",
        resource_path("deployments", record["id"]),
        record,
        done,
        timeout=WAIT_LIMIT,
        expired=lambda record: DriverError(
            f"deployment {record['id']} still running after {WAIT_LIMIT:.0f} s"
        ),
    )
    assert found is not None  # not gone_ok: a vanished deployment raised NotFound
    return found


def finish(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(record)
    if record["status"] == "failed":
        failed = [s for s in record["steps"] if s["status"] == "failed"]
        reasons = "; ".join(
            f"step {s['index']} ({s['lifecycle']}/{s['state']} on {s['node']}): {s['error']}"
            for s in failed
        )
        raise DriverError(
            f"deployment {record['id'][:12]} failed: {reasons}. "
            "Run the same command again to resume from there."
        )
    if not as_json:
        result = record.get("result") or {}
        click.echo(f"Deployment {record['id'][:12]} {record['status']}.")
        for key, value in result.items():
            click.echo(f"{key}: {value}")


@click.group(cls=CommandGroup)
def lifecycle() -> None:
    """Lifecycles: state machines of the applications on each node."""


@lifecycle.command("list")
@click.option("--node", help="Only this node (default: every member).")
@json_option
@click.pass_obj
def lifecycle_list(obj: Context, node: str | None, as_json: bool) -> None:
    """The lifecycles each node loaded, their current state, and broken modules."""
    client = obj.client()
    names = [node] if node else [n["name"] for n in client.request("GET", "/v1/nodes")["nodes"]]
    found = [client.request("GET", _node_path(name, "lifecycles")) for name in names]
    if as_json:
        print_json({"nodes": found})
        return
    rows = [
        [entry["node"], item["name"], item["state"], item["origin"]]
        for entry in found
        for item in entry["lifecycles"]
    ]
    print_table(["NODE", "LIFECYCLE", "STATE", "MODULE"], rows)
    for entry in found:
        for module, error in entry["broken"].items():
            click.echo(f"broken on {entry['node']}: {module}: {error}", err=True)


@lifecycle.command("show")
@click.argument("name", metavar="LIFECYCLE")
@click.option("--node", help="The node (default: the one answering).")
@json_option
@click.pass_obj
def lifecycle_show(obj: Context, name: str, node: str | None, as_json: bool) -> None:
    """States, transitions, provides with their requires, and where it stands."""
    client = obj.client()
    result = client.request("GET", _node_path(node or _this_node(client), "lifecycles", name))
    if as_json:
        print_json(result)
        return
    print_kv_table(
        [
            ("lifecycle", result["name"]),
            ("node", result["node"]),
            ("state", result["state"]),
            ("applied", " -> ".join(result["applied"])),
            ("transitions", ", ".join(f"{s}->{t}" for s, t in result["transitions"])),
        ]
    )
    rows = []
    for state in result["states"]:
        for item in state["provides"]:
            # a provide that holds shows the values it was called with (what holds), the
            # others their defaults
            call = result["calls"].get(f"{state['name']}/{item['name']}")
            held = (call or {}).get("values") or {}
            needs = []
            for require in item["requires"]:
                if require["type"] == "user":
                    for v in require["variables"]:
                        value = held.get(v["name"], v["default"])
                        needs.append(v["name"] if value is None else f"{v['name']}={value}")
                else:
                    needs.append(f"{require['type']} {require['xpath']} ({require['nargs']})")
            rows.append([state["name"], item["name"], ", ".join(needs), "yes" if call else ""])
    print_table(["STATE", "PROVIDE", "REQUIRES (held values, else defaults)", "HOLDS"], rows)


@lifecycle.command("graph")
@click.argument("name", metavar="LIFECYCLE")
@click.option("--node", help="The node (default: the one answering).")
@click.pass_obj
def lifecycle_graph(obj: Context, name: str, node: str | None) -> None:
    """The transition graph in Graphviz DOT (pipe it to `dot -Tsvg`)."""
    client = obj.client()
    result = client.request("GET", _node_path(node or _this_node(client), "lifecycles", name))
    click.echo(result["dot"], nl=False)


change_options: list[Callable[[Any], Any]] = [
    click.option("--node", help="The node (default: the one answering)."),
    click.option(
        "--set",
        "values",
        multiple=True,
        metavar="VAR=VALUE",
        help="A value (a variable name, or a tail of its question id).",
    ),
    click.option("--simulate", is_flag=True, help="Run the steps without the bodies."),
    click.option("--plan", "plan_only", is_flag=True, help="Print the plan; change nothing."),
    click.option("--no-wait", is_flag=True, help="Return once started."),
    json_option,
    click.pass_obj,
]


def with_change_options(fn: Any) -> Any:
    for option in reversed(change_options):
        fn = option(fn)
    return fn


def _change(obj: Context, path: str, body: dict[str, Any], flags: dict[str, Any]) -> None:
    client = obj.client()
    body = {**body, "values": _assignments(flags["values"]), "simulate": flags["simulate"]}
    if flags["plan_only"]:
        plan = client.request("POST", path, body={**body, "plan": True})
        if flags["as_json"]:
            print_json(plan)
        else:
            print_plan(plan)
        return
    record = client.request("POST", path, body=body)
    if flags["no_wait"]:
        print_json(record)
        return
    finish(follow(client, record, quiet=flags["as_json"]), flags["as_json"])


@lifecycle.command("goto")
@click.argument("name", metavar="LIFECYCLE")
@click.argument("state")
@with_change_options
def lifecycle_goto(obj: Context, name: str, state: str, node: str | None, **flags: Any) -> None:
    """Move a lifecycle to STATE along the shortest path (leaving, then entering)."""
    node = node or _this_node(obj.client())
    _change(obj, _node_path(node, "lifecycles", name, "goto"), {"state": state}, flags)


@lifecycle.command("call")
@click.argument("xpath")
@with_change_options
def lifecycle_call(obj: Context, xpath: str, node: str | None, **flags: Any) -> None:
    """Call a provide (moving to its state first). XPATH: e.g. WebServer//start."""
    node = node or _this_node(obj.client())
    path = _node_path(node, "lifecycles", "provides", xpath, "call")
    _change(obj, path, {}, flags)


@click.command("deploy")
@click.argument("xpath", required=False)
@click.option("--node", help="Where the target provide runs (default: the answering node).")
@click.option(
    "--answers",
    "answers_file",
    type=click.Path(dir_okay=False),
    help="Answers file (YAML or JSON): question id or tail -> value.",
)
@click.option(
    "--save-answers",
    type=click.Path(dir_okay=False),
    help="Write the answers used to this file, to replay (secrets left out).",
)
@click.option(
    "--set",
    "values",
    multiple=True,
    metavar="VAR=VALUE",
    help="An answer (a variable name or a tail of its question id).",
)
@click.option("--yes", "-y", is_flag=True, help="Take the suggestions for unset values.")
@click.option("--plan", "plan_only", is_flag=True, help="Print the plan; change nothing.")
@click.option("--simulate", is_flag=True, help="Run the plan without running the bodies.")
@click.option("--undo", metavar="DEPLOYMENT", help="Leave the states DEPLOYMENT entered.")
@click.option("--no-wait", is_flag=True, help="Return once started.")
@json_option
@click.pass_obj
def deploy(
    obj: Context,
    xpath: str | None,
    node: str | None,
    answers_file: str | None,
    save_answers: str | None,
    values: tuple[str, ...],
    yes: bool,
    plan_only: bool,
    simulate: bool,
    undo: str | None,
    no_wait: bool,
    as_json: bool,
) -> None:
    """Deploy a provide with everything it requires, across the cluster.

    For example `symphonyd deploy WebSite//start`. Run again: resumes a failed
    deployment, does nothing for a finished one."""
    client = obj.client()
    if undo:
        if xpath:
            raise click.UsageError("give either XPATH or --undo DEPLOYMENT")
        record = client.request("POST", resource_path("deployments", undo) + "/undo")
    else:
        if not xpath:
            raise click.UsageError("give the provide to deploy, e.g. WebSite//start")
        answers = load_answers(answers_file) if answers_file else {}
        answers.update(_assignments(values))
        body: dict[str, Any] = {"xpath": xpath, "yes": yes, "simulate": simulate}
        if node:
            body["node"] = node
        interactive = sys.stdin.isatty() and not yes and not as_json
        plan = plan_with_answers(client, body, answers, interactive=interactive, partial=plan_only)
        if save_answers:
            left = write_answers(save_answers, answers, plan)
            if left:
                click.echo(f"{count(left, 'secret answer')} not saved.", err=True)
        if plan_only:
            print_json(plan) if as_json else print_plan(plan)
            if plan["missing"] and not as_json:
                click.echo(
                    f"{count(len(missing_questions(plan)), 'value')} missing: give them with "
                    "--set ID=VALUE or --answers FILE (--yes takes the suggestions).",
                    err=True,
                )
            return
        record = client.request("POST", "/v1/deployments", body={**body, "answers": answers})
        if record.get("outcome") == "unchanged" and record["status"] == "done":
            click.echo(f"Deployment {record['id'][:12]} is already done: nothing to do.", err=True)
        elif record.get("outcome") == "resumed":
            click.echo(f"Resuming deployment {record['id'][:12]}.", err=True)
    if no_wait:
        print_json(record) if as_json else click.echo(f"Deployment {record['id']} started.")
        return
    finish(follow(client, record, quiet=as_json), as_json)


@click.group(cls=CommandGroup)
def deployment() -> None:
    """Deployments: their plans, steps and results."""


@deployment.command("list")
@json_option
@click.pass_obj
def deployment_list(obj: Context, as_json: bool) -> None:
    """Every deployment, oldest first."""
    result = obj.client().request("GET", "/v1/deployments")
    if as_json:
        print_json(result)
        return
    rows = []
    for d in result["deployments"]:
        done = sum(1 for s in d["steps"] if s["status"] == "done")
        rows.append(
            [
                d["id"][:12],
                d["kind"],
                d["target"],
                d["node"],
                d["status"],
                f"{done}/{len(d['steps'])}",
                d["created_at"],
            ]
        )
    print_table(["ID", "KIND", "TARGET", "NODE", "STATUS", "STEPS", "CREATED"], rows)


@deployment.command("show")
@click.argument("ref", metavar="DEPLOYMENT")
@json_option
@click.pass_obj
def deployment_show(obj: Context, ref: str, as_json: bool) -> None:
    """A deployment's steps with their status, errors and result."""
    record = obj.client().request("GET", resource_path("deployments", ref))
    if as_json:
        print_json(record)
        return
    print_kv_table(
        [
            ("id", record["id"]),
            ("kind", record["kind"]),
            ("target", record["target"]),
            ("node", record["node"]),
            ("status", record["status"]),
            ("simulate", record.get("simulate")),
            ("undoes", record.get("undoes")),
            ("result", json.dumps(record.get("result"))),
        ]
    )
    print_table(
        ["#", "NODE", "STEP", "STATUS", "ERROR"],
        [
            [
                s["index"],
                s["node"],
                f"{s['lifecycle']}/{s['state']}/{s['provide'] or s['action']}",
                s["status"],
                s.get("error"),
            ]
            for s in record["steps"]
        ],
    )


@deployment.command("rm")
@click.argument("ref", metavar="DEPLOYMENT")
@click.pass_obj
def deployment_rm(obj: Context, ref: str) -> None:
    """Forget a deployment record (its effects stay: undo them first)."""
    result = obj.client().request("DELETE", resource_path("deployments", ref))
    click.echo(f"Deleted deployment {result['deleted']}.")
