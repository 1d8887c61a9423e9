"""Deployments on real clusters: the built-in WebServer, WebSite and Proxy deployed across
three nodes, fetched over HTTP through the proxy, surviving a kill -9, resumed after a
failure, re-run as a no-op and undone; the interactive prompts on a pseudo-terminal."""

from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.nodes import NodeProcess, NodeSet, free_port, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def fetch_or_none(url: str) -> str | None:
    try:
        return fetch(url)
    except (urllib.error.URLError, OSError):
        return None


def lifecycle_states(node: NodeProcess, on: str) -> dict[str, str]:
    result = node.client().request("GET", f"/v1/nodes/{on}/lifecycles")
    return {item["name"]: item["state"] for item in result["lifecycles"]}


def deploy(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return node.cli("deploy", *args, timeout=120)


def test_proxy_over_two_websites_deployed_restarted_resumed_and_undone(
    nodeset: NodeSet, tmp_path: Path
) -> None:
    n1, n2, n3 = nodeset.form(3)
    for name in ("n1", "n2", "n3"):
        wait_until(
            lambda n=name: n1.client().request("GET", f"/v1/nodes/{n}/lifecycles")["published"],
            20,
            f"{name} to publish its lifecycles",
        )
    ports = {name: free_port() for name in ("n1", "n2", "n3")}
    answers = tmp_path / "answers.yaml"
    answers.write_text(
        "websites: [n2, n3]\n"
        f"/n1/Proxy/Configured/enter/port: {ports['n1']}\n"
        f"/n2/WebServer/Configured/enter/port: {ports['n2']}\n"
        f"/n3/WebServer/Configured/enter/port: {ports['n3']}\n"
        "title: Hello\n"
    )
    # n3's port is taken: its web server cannot start, the deployment stops there
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", ports["n3"]))
    blocker.listen(1)
    try:
        plan = deploy(n1, "Proxy//start", "--answers", str(answers), "--yes", "--plan", "--json")
        assert plan.returncode == 0, plan.stderr
        steps = json.loads(plan.stdout)["steps"]
        assert {s["node"] for s in steps} == {"n1", "n2", "n3"}
        assert n1.client().request("GET", "/v1/deployments")["deployments"] == []  # no change

        failed = deploy(n1, "Proxy//start", "--answers", str(answers), "--yes")
        assert failed.returncode == 1
        assert "WebServer/Active on n3" in failed.stderr and "again to resume" in failed.stderr
        assert lifecycle_states(n1, "n3")["WebServer"] == "Configured"  # the rest stays
        (record,) = n1.client().request("GET", "/v1/deployments")["deployments"]
        assert record["status"] == "failed"
    finally:
        blocker.close()

    resumed = deploy(n1, "Proxy//start", "--answers", str(answers), "--yes")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming deployment" in resumed.stderr
    assert f"info: proxying http://127.0.0.1:{ports['n1']}/ to http" in resumed.stderr
    url = resumed.stdout.strip().splitlines()[-1].removeprefix("url: ")
    assert url == f"http://127.0.0.1:{ports['n1']}/"
    pages = {fetch(url) for _ in range(4)}  # round robin over both sites
    assert any("<strong>n2</strong>" in p for p in pages)
    assert any("<strong>n3</strong>" in p for p in pages)
    assert all("Hello" in p for p in pages)
    assert lifecycle_states(n2, "n1")["Proxy"] == "Active"
    assert lifecycle_states(n3, "n2") == {
        "Proxy": "NotInstalled",
        "WebServer": "Active",
        "WebSite": "Active",
    }

    # the same command again: nothing to do
    again = deploy(n1, "Proxy//start", "--answers", str(answers), "--yes")
    assert again.returncode == 0 and "already done" in again.stderr
    assert len(n1.client().request("GET", "/v1/deployments")["deployments"]) == 1

    # kill -9 a web site's node: its server dies with it, and comes back with the node
    site = f"http://127.0.0.1:{ports['n2']}/"
    assert "<strong>n2</strong>" in fetch(site)
    n2.kill()
    wait_until(lambda: fetch_or_none(site) is None, 10, "n2's web server to die with it")
    n2.start()
    wait_until(lambda: fetch_or_none(site), 30, "n2's web server to be re-ensured")
    assert lifecycle_states(n2, "n2")["WebSite"] == "Active"
    wait_until(lambda: any("<strong>n2</strong>" in fetch(url) for _ in range(2)), 10, "the proxy")

    # a web server the proxy's sites still use cannot be stopped from under them
    refused = n1.cli("lifecycle", "goto", "WebServer", "Configured", "--node", "n2")
    assert refused.returncode == 1
    assert "WebSite/Active/enter on n2 uses its Active/start" in refused.stderr
    deployment_id = record["id"]
    undone = deploy(n1, "--undo", deployment_id[:8])
    assert undone.returncode == 0, undone.stderr
    for node in ("n1", "n2", "n3"):
        assert set(lifecycle_states(n1, node).values()) == {"NotInstalled"}
    assert fetch_or_none(url) is None and fetch_or_none(site) is None
    shown = n1.cli("deployment", "show", deployment_id, "--json")
    assert json.loads(shown.stdout)["status"] == "undone"
    twice = deploy(n1, "--undo", deployment_id)
    assert twice.returncode == 1 and "already undone" in twice.stderr


def test_bad_input_is_refused_before_anything_runs(nodeset: NodeSet) -> None:
    (n1,) = nodeset.form(1)
    cases = [
        (["Nothing//start", "--yes"], "no provide matches 'Nothing//start'"),
        (["//start", "--yes"], "is ambiguous: it matches"),
        (["WebSite//start"], "values missing or invalid (--yes takes the suggestions)"),
        (["Proxy//start", "--yes", "--node", "n9"], "n9 is not a cluster member"),
    ]
    for args, message in cases:
        result = deploy(n1, *args)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
    typo = deploy(n1, "WebSite//start", "--yes", "--set", "prot=1", "--set", "tilte=x", "--plan")
    assert typo.returncode == 0
    warned = [line for line in typo.stderr.splitlines() if "match no question" in line]
    assert warned == ["warning: answers that match no question of this plan: 'prot', 'tilte'"]
    bad = n1.cli("lifecycle", "goto", "WebServer", "Configured", "--set", "port=99999")
    assert bad.returncode == 1 and "port" in bad.stderr and "65535" in bad.stderr
    unknown = n1.cli("lifecycle", "goto", "WebServer", "Nowhere")
    assert unknown.returncode == 1 and "no state 'Nowhere'" in unknown.stderr
    assert n1.client().request("GET", "/v1/deployments")["deployments"] == []
    assert set(lifecycle_states(n1, "n1").values()) == {"NotInstalled"}


def test_a_plan_without_a_terminal_is_printed_with_what_is_missing(
    nodeset: NodeSet, tmp_path: Path
) -> None:
    (n1,) = nodeset.form(1)
    plan = deploy(n1, "WebSite//start", "--plan", "--set", "port=abc")
    assert plan.returncode == 0, plan.stderr
    assert "WebServer/Configured/enter" in plan.stdout and "port=?" in plan.stdout
    missing = [line.strip() for line in plan.stdout.splitlines() if "missing:" in line]
    assert missing == [
        "missing: /n1/WebSite/Templated/enter/path: no value (suggested: www/website)",
        "missing: /n1/WebServer/Configured/enter/port: must be a whole number, not 'abc' "
        "(suggested: 80)",
        "missing: /n1/WebSite/Templated/enter/title: no value (suggested: Welcome)",
    ]  # the document root WebSite passes on is derived from its path: not asked
    assert "3 values missing" in plan.stderr
    as_json = json.loads(deploy(n1, "WebSite//start", "--plan", "--json").stdout)
    assert len(as_json["missing"]) == 3
    derived = [q["id"] for q in as_json["questions"] if q["derived"]]
    assert derived == ["/n1/WebServer/Configured/create_document_root/path"]
    one = deploy(n1, "WebSite//start", "--set", "path=www/a", "--set", "title=T")
    assert "1 value missing or invalid" in one.stderr

    broken = tmp_path / "broken.yaml"
    broken.write_text("port: [1,\n  title: x\n")
    refused = deploy(n1, "WebSite//start", "--answers", str(broken))
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "is not valid JSON or YAML: while parsing a flow sequence" in refused.stderr

    port = free_port()
    saved = tmp_path / "saved.yaml"
    done = deploy(n1, "WebSite//start", "--yes", "--set", f"port={port}", "--save-answers",
                  str(saved))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"port: {port}\n" in saved.read_text()  # a number, as the plan read it
    again = deploy(n1, "WebSite//start", "--answers", str(saved))
    assert again.returncode == 0 and "already done" in again.stderr
    assert "match no question" not in again.stderr  # nothing to do: no answer needed


def test_goto_call_simulate_and_show_on_one_node(nodeset: NodeSet) -> None:
    (n1,) = nodeset.form(1)
    port = free_port()
    simulated = deploy(n1, "WebSite//start", "--yes", "--simulate")
    assert simulated.returncode == 0, simulated.stderr
    assert "url: (simulated url)" in simulated.stdout
    assert set(lifecycle_states(n1, "n1").values()) == {"NotInstalled"}  # nothing ran

    checked = n1.client().request(
        "POST",
        "/v1/nodes/n1/lifecycles/provides/WebServer%2F%2Fstart/validate",
        body={"values": {"port": "99999"}},
    )
    assert checked["valid"] is False
    assert list(checked["errors"]) == ["/n1/WebServer/Configured/enter/port"]
    assert "65535" in checked["errors"]["/n1/WebServer/Configured/enter/port"]
    goto = n1.cli("lifecycle", "goto", "WebServer", "Active", "--set", f"port={port}")
    assert goto.returncode == 0, goto.stderr
    assert "<strong>" not in (fetch_or_none(f"http://127.0.0.1:{port}/") or "<strong>")
    called = n1.cli("lifecycle", "call", "WebServer//start", "--json")
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["result"] == {"url": f"http://127.0.0.1:{port}/"}
    shown = json.loads(n1.cli("lifecycle", "show", "WebServer", "--json").stdout)
    assert shown["state"] == "Active" and shown["calls"]["Configured/enter"]["values"] == {
        "port": port
    }
    table = n1.cli("lifecycle", "show", "WebServer").stdout  # what holds, not the default
    held = next(line for line in table.splitlines() if line.startswith("Configured"))
    assert f"port={port}" in held and "port=80" not in held and held.rstrip().endswith("yes")
    graph = n1.cli("lifecycle", "graph", "WebServer").stdout
    assert graph.startswith('digraph "WebServer"') and '"Configured" -> "Active"' in graph
    down = n1.cli("lifecycle", "goto", "WebServer", "NotInstalled")
    assert down.returncode == 0, down.stderr
    wait_until(lambda: fetch_or_none(f"http://127.0.0.1:{port}/") is None, 10, "server stop")


def test_interactive_prompts_on_a_terminal(nodeset: NodeSet, tmp_path: Path) -> None:
    """The plan first; one question at a time, an invalid port asked again at once; the
    derived document root never asked; Enter takes the suggestion, so the site lands
    where --yes puts it; the saved answers keep the port as a number."""
    (n1,) = nodeset.form(1)
    port = free_port()
    saved = tmp_path / "saved.json"
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [
            *n1.program,
            "--data-dir",
            str(n1.data_dir),
            "deploy",
            "WebSite//start",
            "--save-answers",
            str(saved),
        ],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=n1.environment(),
        close_fds=True,
    )
    os.close(slave)
    port_answers = iter(["eighty", str(port)])  # an invalid one first: asked again
    output: list[str] = []
    prompts: list[str] = []
    pending = ""
    try:
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096).decode(errors="replace")
            except OSError:
                break
            output.append(chunk)
            pending += chunk
            line = pending.rsplit("\n", 1)[-1]
            if line.endswith(": ") and "/n1/" in line:  # a prompt
                prompts.append(line.split(" (")[0].strip())
                answer = next(port_answers) if "/port" in line else ""
                os.write(master, answer.encode() + b"\n")
                pending = ""
        assert proc.wait(timeout=30) == 0, "".join(output)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)
    text = "".join(output)
    assert "must be a whole number" in text and f"url: http://127.0.0.1:{port}/" in text
    assert text.index("Plan for WebSite/Active/start") < text.index(prompts[0])
    port_id = "/n1/WebServer/Configured/enter/port"
    assert prompts == [
        "/n1/WebSite/Templated/enter/path",
        port_id,
        port_id,  # "eighty" is refused before anything else is asked
        "/n1/WebSite/Templated/enter/title",
    ], prompts
    assert "WebServer/www/website at http" in text  # the derived path followed the answer
    replay = json.loads(saved.read_text())
    assert replay[port_id] == port
    assert "<strong>n1</strong>" in fetch(f"http://127.0.0.1:{port}/")


def test_a_step_on_a_lost_node_fails_after_the_patience_then_resumes(nodeset: NodeSet) -> None:
    n1, _n2, n3 = nodeset.form(3)
    assert n1.cli("config", "set", "deployments.step_patience", "3").returncode == 0
    wait_until(lambda: n1.client().request("GET", "/v1/nodes/n3/lifecycles")["published"], 20, "n3")
    n3.kill()
    port = free_port()
    started = time.monotonic()
    lost = deploy(n1, "WebServer//start", "--node", "n3", "--yes", "--set", f"port={port}")
    assert lost.returncode == 1
    assert "node n3 is unreachable (waited 3 s)" in lost.stderr, lost.stderr
    assert time.monotonic() - started < 60
    n3.start()
    wait_until(lambda: n3.status()["has_quorum"], 30, "n3 back in the cluster")
    resumed = deploy(n1, "WebServer//start", "--node", "n3", "--yes", "--set", f"port={port}")
    assert resumed.returncode == 0, resumed.stderr
    assert f"url: http://127.0.0.1:{port}/" in resumed.stdout


VAULT_MODULE = """
import hashlib

from symphonyd.lifecycle.model import Lifecycle, Require, State, provide
from symphonyd.lifecycle.variables import Password, Str


class Vault(Lifecycle):
    class Sealed(State):
        pass

    class Open(State):
        @provide(
            requires=[Require([Password("passphrase"), Str("label", default="main")])],
            returns=[Str("digest")],
        )
        def enter(self, passphrase, label):
            digest = hashlib.sha256(passphrase.reveal().encode()).hexdigest()
            with open(self.context.path(label), "w") as f:
                f.write(digest)
            return {"digest": digest}

    states = [Sealed, Open]
    transitions = [(Sealed, Open)]
    initial_state = Sealed
"""


def test_module_directory_secrets_sealed_and_broken_modules_listed(
    nodeset: NodeSet, tmp_path: Path
) -> None:
    modules = tmp_path / "n1" / "lifecycles"
    modules.mkdir(parents=True)
    (modules / "vault.py").write_text(VAULT_MODULE)
    (modules / "broken.py").write_text("raise RuntimeError('this module is broken')\n")
    (n1,) = nodeset.form(1)
    listed = json.loads(n1.cli("lifecycle", "list", "--json").stdout)["nodes"][0]
    assert "Vault" in {item["name"] for item in listed["lifecycles"]}
    (error,) = listed["broken"].values()
    assert error == "RuntimeError: this module is broken"

    passphrase = "correct horse battery staple"
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps({"passphrase": passphrase}))
    saved = tmp_path / "saved.json"
    result = deploy(
        n1, "Vault/Open/enter", "--answers", str(answers), "--yes", "--save-answers", str(saved)
    )
    assert result.returncode == 0, result.stderr
    digest = hashlib.sha256(passphrase.encode()).hexdigest()
    assert f"digest: {digest}" in result.stdout
    assert "1 secret answer not saved" in result.stderr
    assert passphrase not in saved.read_text()
    work = tmp_path / "n1" / "lifecycle-work" / "Vault" / "main"
    assert work.read_text() == digest  # the body got the real passphrase

    shown = json.loads(n1.cli("lifecycle", "show", "Vault", "--json").stdout)
    assert shown["calls"]["Open/enter"]["values"]["passphrase"] == "********"
    listing = n1.cli("deployment", "list", "--json").stdout
    assert "sealed:" not in listing and passphrase not in listing
    # nowhere on the node's disk (journal, snapshots, logs) is the passphrase in clear
    n1.stop()
    for path in (tmp_path / "n1").rglob("*"):
        if path.is_file():
            assert passphrase.encode() not in path.read_bytes(), path
