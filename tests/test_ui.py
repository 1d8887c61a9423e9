"""The web dashboard in a real browser: Debian's chromium driven by Playwright (the pip
package only: no browser is ever downloaded), against real symphonyd nodes on 127.0.0.1.

Checked: the static files' security headers and that no path leads out of the static
directory; sign-in (a wrong token shows the API's message); a 3-node cluster's overview
with its leader, and a node killed with kill -9 shown unreachable without a reload; an
image uploaded with a progress bar; an instance created (libvirt's test driver), stopped
and seen stopped live; a deployment started from its form, a bad port shown beside its
field, watched until done; the KV browser's CAS-safe edit showing a conflict; the page
saying it lost the events stream and catching up once the node is back; a reader token
seeing everything with no change allowed; a phone-sized screen without horizontal
overflow; and every request the page makes going to the node itself.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from symphonyd.compute.testimage import write_image
from tests.nodes import NodeProcess, NodeSet, free_port, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 15_000
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
SCREENSHOT_WIDTH = 1280
SCREENSHOT_MAX_BYTES = 250_000


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the cluster's self-signed certificate
    return context


def fetch(node: NodeProcess, path: str, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(
        f"https://127.0.0.1:{node.api_port}{path}", headers=headers or {}
    )

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(
        NoRedirect, urllib.request.HTTPSHandler(context=_context())
    )
    try:
        return opener.open(request, timeout=10)
    except urllib.error.HTTPError as exc:
        return exc


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: run scripts/bootstrap --test")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--ignore-certificate-errors"],
        )
        try:
            yield launched
        finally:
            launched.close()


VAULT_MODULE = """
import hashlib

from symphonyd.lifecycle.model import Lifecycle, Require, State, provide
from symphonyd.lifecycle.variables import Password, Str


class Vault(Lifecycle):
    class Sealed(State):
        pass

    class Open(State):
        @provide(
            requires=[Require([
                Password("passphrase"),
                Str("label", default="main", expert=True, label="Key label"),
            ])],
            returns=[Str("digest")],
        )
        def enter(self, passphrase, label):
            return {"digest": hashlib.sha256(passphrase.reveal().encode()).hexdigest() + label}

    states = [Sealed, Open]
    transitions = [(Sealed, Open)]
    initial_state = Sealed
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeSet]:
    """Three nodes; n1 has block and compute on libvirt's test driver."""
    base = tmp_path_factory.mktemp("ui")
    modules = base / "n1" / "lifecycles"
    modules.mkdir(parents=True)
    (modules / "vault.py").write_text(VAULT_MODULE)
    nodes = NodeSet(base)
    try:
        n1, _, _ = nodes.form(3)
        for args in (("service", "new"), ("service", "new", "compute")):
            made = n1.cli(*args, "--json", timeout=120)
            assert made.returncode == 0, made.stderr
        assert n1.cli("config", "set", "images.min_replicas", "1").returncode == 0
        yield nodes
    finally:
        nodes.cleanup()


class Page:
    """A browser tab on one node's dashboard that records every URL it asks for."""

    def __init__(self, browser: Any, node: NodeProcess, width: int = SCREENSHOT_WIDTH) -> None:
        self.origin = f"https://127.0.0.1:{node.api_port}"
        self.context = browser.new_context(
            viewport={"width": width, "height": 800}, ignore_https_errors=True
        )
        self.requested: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _route(self, route: Any) -> None:
        self.requested.append(route.request.url)
        if route.request.url.startswith(self.origin + "/"):
            route.continue_()
        else:
            route.abort()

    def sign_in(self, token: str) -> None:
        self.page.goto(self.origin + "/")
        self.page.get_by_label("API token").fill(token)
        self.page.get_by_role("button", name="Sign in").click()

    def plan(self, xpath: str, node: str) -> None:
        """Ask the deployments page for the plan of `xpath` on `node` (its form appears)."""
        self.page.get_by_role("link", name="Deployments").click()
        self.page.get_by_label("xpath").fill(xpath)
        self.page.get_by_label("node (optional)").fill(node)
        self.page.get_by_role("button", name="Plan").click()

    def shot(self, name: str) -> Path:
        """The visible page as docs/screenshots/NAME.png (what the README shows), checked
        to be a PNG of the viewport's width and small enough to keep in the repository."""
        SCREENSHOTS.mkdir(exist_ok=True)
        target = SCREENSHOTS / f"{name}.png"
        self.page.wait_for_timeout(300)  # a redraw scheduled by the last event lands first
        self.page.screenshot(path=str(target))
        data = target.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        (width,) = struct.unpack(">I", data[16:20])  # the IHDR chunk's width
        assert width == SCREENSHOT_WIDTH == self.page.viewport_size["width"], (name, width)
        assert len(data) <= SCREENSHOT_MAX_BYTES, (name, len(data))
        return target

    def close(self) -> None:
        foreign = [u for u in self.requested if not u.startswith(self.origin + "/")]
        self.context.close()
        assert not foreign, f"the page asked for other origins: {foreign}"
        assert not self.errors, f"script errors: {self.errors}"


@pytest.fixture
def tab(browser: Any, cluster: NodeSet) -> Iterator[Page]:
    page = Page(browser, cluster.nodes[0])
    try:
        yield page
    finally:
        page.close()


def admin(cluster: NodeSet) -> str:
    assert cluster.admin_token
    return cluster.admin_token


def test_static_files_are_served_with_their_security_headers(cluster: NodeSet) -> None:
    n1 = cluster.nodes[0]
    index = fetch(n1, "/ui/")
    assert index.status == 200
    assert index.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in index.headers["Content-Security-Policy"]
    assert index.headers["X-Content-Type-Options"] == "nosniff"
    etag = index.headers["ETag"]
    assert fetch(n1, "/ui/", {"If-None-Match": etag}).status == 304
    assert fetch(n1, "/ui/app.js").headers["Content-Type"].startswith("text/javascript")
    assert fetch(n1, "/", {"Accept": "text/html"}).headers["Location"] == "/ui/"
    assert fetch(n1, "/ui").headers["Location"] == "/ui/"
    for wrong in (
        "/ui/..%2Fapi%2Fui.py",
        "/ui/%2e%2e/__init__.py",
        "/ui/../api/ui.py",
        "/ui/nope.js",
    ):
        answer = fetch(n1, wrong)
        assert answer.status == 404, wrong
        assert json.load(answer)["error"]["code"] == "not_found"


def test_whoami_tells_the_scope(cluster: NodeSet) -> None:
    n1 = cluster.nodes[0]
    made = n1.client().request(
        "POST", "/v1/tokens", body={"kind": "admin", "scope": "reader", "description": "eyes"}
    )
    me = n1.https(made["token"]).request("GET", "/v1/whoami")
    assert (me["scope"], me["description"], me["id"]) == ("reader", "eyes", made["id"])
    assert "secret_sha256" not in me and "token" not in me


def test_sign_in_and_the_cluster_overview(cluster: NodeSet, tab: Page) -> None:
    tab.sign_in("sy-not-a-token")
    error = tab.page.locator("#signin-error")
    error.wait_for()
    assert "not valid" in error.inner_text()
    tab.page.get_by_label("API token").fill(admin(cluster))
    tab.page.get_by_role("button", name="Sign in").click()
    rows = tab.page.locator("tr[data-node]")
    rows.nth(2).wait_for()
    assert rows.count() == 3
    assert tab.page.locator("#signin").is_hidden()  # signed in: the form is gone
    leader = cluster.leader().name
    assert tab.page.locator("#leader").inner_text() == leader
    assert tab.page.locator("#quorum").inner_text() == "yes"
    tab.shot("cluster")


def test_a_node_killed_with_kill_9_shows_unreachable_without_a_reload(
    cluster: NodeSet, tab: Page
) -> None:
    tab.sign_in(admin(cluster))
    tab.page.locator("tr[data-node] .health", has_text="online").nth(2).wait_for()
    leader = cluster.leader().name
    tab.page.evaluate("window.sameDocument = true")
    # kill -9 a follower: its row says unreachable within seconds, with no reload.
    victim = next(n for n in cluster.nodes if n.name != leader and n is not cluster.nodes[0])
    victim.kill()
    try:
        tab.page.locator(f"tr[data-node={victim.name}] .health", has_text="unreachable").wait_for(
            timeout=20_000
        )
    finally:
        victim.start()
    tab.page.locator(f"tr[data-node={victim.name}] .health", has_text="online").wait_for(
        timeout=30_000
    )
    assert tab.page.evaluate("window.sameDocument") is True


def test_an_image_uploaded_and_an_instance_run_and_stopped(
    browser: Any, cluster: NodeSet, tab: Page, tmp_path: Path
) -> None:
    n1 = cluster.nodes[0]
    disk = tmp_path / "boot.raw"
    write_image(str(disk))
    tab.sign_in(admin(cluster))
    tab.page.get_by_role("link", name="Images").click()
    tab.page.get_by_text("no images yet: upload one").wait_for()
    tab.page.get_by_label("file").set_input_files(str(disk))
    tab.page.get_by_label("name", exact=True).fill("boot")
    tab.page.get_by_role("button", name="Upload").click()
    tab.page.locator("tr[data-image=boot] .status", has_text="ready").wait_for()
    assert tab.page.locator("#upload-progress").get_attribute("value") == "100"
    image = n1.client().request("GET", "/v1/images/boot")
    assert image["status"] == "ready" and image["size"] == disk.stat().st_size
    tab.shot("images")
    tab.page.locator("tr[data-image=boot]").get_by_role("button", name="Verify").click()
    tab.page.locator("#image-result", has_text="boot: the copy on n1 is intact").wait_for()
    # a tab on a node that holds no copy (min_replicas 1): verify finds none, fetch makes one
    holders = n1.client().request("GET", "/v1/images/boot")["holders"]
    spare = next(n for n in cluster.nodes if n.name not in holders)
    other = Page(browser, spare)
    try:
        other.sign_in(admin(cluster))
        other.page.get_by_role("link", name="Images").click()
        boot = other.page.locator("tr[data-image=boot]")
        boot.get_by_role("button", name="Verify").click()
        result = other.page.locator("#image-result")
        result.filter(has_text="boot: ").wait_for()
        assert result.inner_text() == f"boot: {spare.name} holds no copy to check", (
            result.inner_text(),
            other.page.get_by_role("alert").all_inner_texts(),
        )
        boot.get_by_role("button", name="Fetch here").click()
        result.filter(has_text="a verified copy is held on").wait_for()
        assert spare.name in result.inner_text()
        assert spare.name in n1.client().request("GET", "/v1/images/boot")["holders"]
    finally:
        other.close()

    tab.page.get_by_role("link", name="Instances").click()
    tab.page.get_by_label("name", exact=True).fill("web")
    tab.page.get_by_label("memory").fill("64M")
    tab.page.get_by_label("disk").fill("16M")
    tab.page.locator("select[name=image]").select_option("boot")
    tab.page.get_by_role("button", name="Create").click()
    row = tab.page.locator("tr[data-instance=web]")
    row.locator(".status", has_text="running").wait_for(timeout=30_000)
    tab.shot("instances")
    row.get_by_role("button", name="Stop").click()
    row.locator(".status", has_text="stopped").wait_for(timeout=30_000)  # live, no reload
    assert n1.client().request("GET", "/v1/instances/web")["status"] == "stopped"
    row.get_by_role("button", name="Resize").click()
    resize = tab.page.get_by_role("form", name="Resize web")
    assert resize.get_by_label("new memory").input_value() == "64M"
    resize.get_by_label("new cpus").fill("2")
    resize.get_by_label("new memory").fill("96M")
    resize.get_by_role("button", name="Resize").click()
    resize.wait_for(state="detached")
    resized = n1.client().request("GET", "/v1/instances/web")
    assert (resized["cpus"], resized["memory"]) == (2, 96 * 1024 * 1024)
    row.get_by_role("button", name="Move", exact=True).click()
    move = tab.page.get_by_role("form", name="Move web")
    move.get_by_label("to node (empty: the best)").fill("n2")  # n2 runs no compute service
    move.get_by_role("button", name="Move", exact=True).click()
    alert = tab.page.get_by_role("alert")
    alert.filter(has_text="n2").wait_for()
    assert "409" not in alert.inner_text()  # the API's message, not a status code
    assert n1.client().request("GET", "/v1/instances/web")["node"] == "n1"
    row.get_by_role("link", name="web").click()
    console = tab.page.locator("#console")
    console.filter(has_text="(no console output yet)").wait_for()
    # The guest writes to its serial console (the test driver runs no guest: the test
    # writes the console file libvirt would): the page follows it without a reload.
    tab.page.evaluate("window.sameDocument = true")
    record = n1.client().request("GET", "/v1/instances/web")
    log_file = n1.data_dir / "compute" / "instances" / record["id"] / "console.log"
    with open(log_file, "a") as f:
        f.write("Booting from hard disk...\n")
    console.filter(has_text="Booting from hard disk...").wait_for()
    with open(log_file, "a") as f:
        f.write("login: \n")
    console.filter(has_text="login:").wait_for()
    text = console.inner_text()
    assert "(no console output yet)" not in text
    assert text.index("Booting from hard disk...") < text.index("login:")  # in order, once
    assert text.count("Booting from hard disk...") == 1
    assert tab.page.evaluate("window.sameDocument") is True
    tab.page.get_by_role("link", name="Instances").click()
    tab.page.locator("tr[data-instance=web]").get_by_role("button", name="Remove").click()
    wait_until(
        lambda: not n1.client().request("GET", "/v1/instances")["instances"], 30, "web removed"
    )


def test_a_deployment_from_its_form(cluster: NodeSet, tab: Page) -> None:
    tab.sign_in(admin(cluster))
    tab.plan("WebSite//start", "n1")
    port = tab.page.get_by_label("/n1/WebServer/Configured/enter/port")
    port.fill("99999")
    tab.page.get_by_role("button", name="Deploy").click()
    beside = tab.page.locator('[data-for="/n1/WebServer/Configured/enter/port"]')
    beside.get_by_text("between 1 and 65535").wait_for()
    tab.page.get_by_label("/n1/WebServer/Configured/enter/port").fill(str(free_port()))
    tab.page.get_by_role("button", name="Deploy").click()
    tab.page.locator("#deployment-status", has_text="done").wait_for(timeout=60_000)
    assert tab.page.locator("tr[data-step]").count() >= 4
    tab.shot("deployments")
    n1 = cluster.nodes[0]
    done = n1.client().request("GET", "/v1/deployments")["deployments"]
    assert [d["status"] for d in done] == ["done"]


def test_a_secret_question_is_masked_and_an_expert_one_folded(cluster: NodeSet, tab: Page) -> None:
    tab.sign_in(admin(cluster))
    tab.plan("Vault/Open/enter", "n1")
    secret = tab.page.get_by_label("/n1/Vault/Open/enter/passphrase")
    secret.wait_for()
    assert secret.get_attribute("type") == "password" and secret.input_value() == ""
    expert = tab.page.locator("#questions details")
    assert expert.get_attribute("open") is None  # folded until asked for
    assert "expert questions (1)" in expert.locator("summary").inner_text()
    label = tab.page.get_by_label("/n1/Vault/Open/enter/label")
    assert not label.is_visible() and label.input_value() == "main"
    expert.locator("summary").click()
    label.fill("disk")
    secret.fill("correct horse")
    tab.page.get_by_role("button", name="Deploy").click()
    tab.page.locator("#deployment-status", has_text="done").wait_for(timeout=60_000)
    digest = hashlib.sha256(b"correct horse").hexdigest() + "disk"
    assert digest in tab.page.locator("#page").inner_text()  # the body got the typed secret
    assert "correct horse" not in tab.page.content()


def deploy_website(node: NodeProcess, on: str, port: int) -> dict[str, Any]:
    """WebSite//start on node `on` with its web server on `port`, through the API."""
    answers = {f"/{on}/WebServer/Configured/enter/port": port}
    body = {"xpath": "WebSite//start", "node": on, "answers": answers, "yes": True}
    return dict(node.client().request("POST", "/v1/deployments", body=body))


def deployment_status(node: NodeProcess, deployment_id: str, wanted: set[str]) -> str:
    def settled() -> str | None:
        status = node.client().request("GET", f"/v1/deployments/{deployment_id}")["status"]
        return status if status in wanted else None

    return str(wait_until(settled, 90, f"deployment {deployment_id} to be {wanted}"))


def test_a_lifecycle_graph_marks_its_state_and_follows_a_goto(cluster: NodeSet, tab: Page) -> None:
    n1 = cluster.nodes[0]
    record = deploy_website(n1, "n2", free_port())
    assert deployment_status(n1, record["id"], {"done", "failed"}) == "done"
    tab.sign_in(admin(cluster))
    tab.page.get_by_role("link", name="Lifecycles").click()
    tab.page.get_by_label("node", exact=True).select_option("n2")
    tab.page.locator("tr[data-lifecycle=WebSite] .state", has_text="Active").wait_for()
    tab.page.get_by_role("link", name="WebSite", exact=True).click()
    graph = tab.page.locator("#state-graph svg.state-graph")
    current = graph.locator("g.state[aria-current=true]")
    current.wait_for()
    assert current.get_attribute("data-state") == "Active"
    assert graph.locator("g.state").count() == 3  # NotInstalled, Templated, Active
    assert graph.locator("path.transition").count() == 2
    assert graph.locator("g.state.applied").count() == 3  # the stack up to Active
    tab.shot("lifecycles")
    tab.page.evaluate("window.sameDocument = true")
    tab.page.get_by_role("button", name="Go to Templated").click()
    link = tab.page.locator("#goto-result a")
    link.wait_for()
    graph.locator("g.state[data-state=Templated][aria-current=true]").wait_for(timeout=60_000)
    assert graph.locator("g.state[aria-current=true]").count() == 1
    assert tab.page.evaluate("window.sameDocument") is True  # redrawn live, not reloaded
    states = n1.client().request("GET", "/v1/nodes/n2/lifecycles/WebSite")
    assert states["state"] == "Templated"
    link.click()
    tab.page.locator("#deployment-status", has_text="done").wait_for(timeout=30_000)
    assert "goto WebSite" in tab.page.locator("#page").inner_text()


def test_a_failed_deployment_resumed_then_undone(cluster: NodeSet, tab: Page) -> None:
    n1 = cluster.nodes[0]
    port = free_port()
    # n3's web server cannot bind its port: the deployment fails there. Bound, not
    # listening: a listener would answer the readiness check while the server starts.
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))
    try:
        record = deploy_website(n1, "n3", port)
        assert deployment_status(n1, record["id"], {"done", "failed"}) == "failed"
        tab.sign_in(admin(cluster))
        tab.page.goto(f"{tab.origin}/ui/#/deployments/{record['id']}")
        tab.page.locator("#deployment-status", has_text="failed").wait_for()
    finally:
        blocker.close()
    tab.page.get_by_role("button", name="Resume").click()
    tab.page.locator("#deployment-status", has_text="done").wait_for(timeout=60_000)
    assert n1.client().request("GET", f"/v1/deployments/{record['id']}")["status"] == "done"
    tab.page.get_by_role("button", name="Undo").click()
    tab.page.wait_for_url(lambda url: record["id"] not in url)  # the undo's own page
    tab.page.locator("#deployment-status", has_text="done").wait_for(timeout=60_000)
    assert "undo" in tab.page.locator("#page").inner_text()
    states = n1.client().request("GET", "/v1/nodes/n3/lifecycles/WebSite")
    assert states["state"] == "NotInstalled"
    assert n1.client().request("GET", f"/v1/deployments/{record['id']}")["status"] == "undone"


def test_a_volume_resized_snapshotted_attached_and_detached(
    cluster: NodeSet, tab: Page, tmp_path: Path
) -> None:
    n1 = cluster.nodes[0]
    if not any(x["name"] == "boot" for x in n1.client().request("GET", "/v1/images")["images"]):
        disk = tmp_path / "boot.raw"  # this test alone: the image test did not upload it
        write_image(str(disk))
        n1.client().request("POST", "/v1/images", body={"path": str(disk), "name": "boot"})
    wait_until(
        lambda: n1.client().request("GET", "/v1/images/boot")["status"] == "ready", 30, "boot"
    )
    vm = {"name": "vm", "image": "boot", "memory": "64M", "disk": "16M"}
    n1.client().request("POST", "/v1/instances", body=vm)
    tab.sign_in(admin(cluster))
    tab.page.get_by_role("link", name="Volumes").click()
    tab.page.get_by_label("name", exact=True).fill("data")
    tab.page.get_by_label("size", exact=True).fill("8M")
    tab.page.get_by_role("button", name="Create").click()
    row = tab.page.locator("tr[data-volume=data]")
    row.locator(".status", has_text="ready").wait_for(timeout=30_000)
    row.get_by_role("button", name="Resize").click()
    resize = tab.page.get_by_role("form", name="Resize data")
    resize.get_by_label("new size").fill("16M")
    resize.get_by_role("button", name="Resize").click()
    row.locator(".size", has_text="16 MiB").wait_for()
    row.get_by_role("button", name="Snapshot").click()
    snapshot = tab.page.get_by_role("form", name="Snapshot data")
    snapshot.get_by_label("snapshot name").fill("before-upgrade")
    snapshot.get_by_role("button", name="Snapshot").click()
    row.locator(".snapshots", has_text="before-upgrade").wait_for()
    wait_until(
        lambda: n1.client().request("GET", "/v1/volumes/data")["status"] == "ready",
        30,
        "data ready after its snapshot",
    )
    volume = n1.client().request("GET", "/v1/volumes/data")
    assert (volume["size"], volume["snapshots"]) == (16 * 1024 * 1024, ["before-upgrade"])
    wait_until(
        lambda: n1.client().request("GET", "/v1/instances/vm")["status"] == "running", 30, "vm"
    )
    row.get_by_role("button", name="Attach").click()
    attach = tab.page.get_by_role("form", name="Attach data")
    attach.get_by_label("instance").fill("vm")
    attach.get_by_role("button", name="Attach").click()
    row.locator(".attached", has_text="vm").wait_for()
    root = tab.page.locator("tr[data-volume=vm-root]")
    assert root.locator(".attached").inner_text() == "vm (root disk)"
    assert root.get_by_role("button", name="Detach").count() == 0
    assert n1.client().request("GET", "/v1/instances/vm")["volumes"] == [volume["id"]]
    tab.shot("volumes")
    tab.page.get_by_role("link", name="Nodes").click()
    tab.page.locator("section[data-node=n1]", has_text="data").wait_for()
    services = tab.page.locator("section[data-node=n1] .services").inner_text()
    assert "block (file: " in services and " free of " in services, services
    assert "compute (" in services and " CPUs, " in services, services
    n2_services = tab.page.locator("section[data-node=n2] .services").inner_text()
    assert n2_services.startswith("services: none · "), n2_services
    tab.shot("nodes")
    tab.page.get_by_role("link", name="Volumes").click()
    row.get_by_role("button", name="Detach").click()
    row.get_by_role("button", name="Detach").wait_for(state="detached")
    assert n1.client().request("GET", "/v1/instances/vm")["volumes"] == []
    n1.client().request("DELETE", "/v1/instances/vm")
    wait_until(
        lambda: not n1.client().request("GET", "/v1/instances")["instances"], 30, "vm removed"
    )
    row.get_by_role("button", name="Remove").click()
    row.wait_for(state="detached", timeout=30_000)


def test_a_node_evacuated_then_restored(cluster: NodeSet, tab: Page) -> None:
    n1 = cluster.nodes[0]

    def cordoned() -> list[str]:
        members = n1.client().request("GET", "/v1/cluster")["members"]
        return [m["name"] for m in members if m["cordoned"]]

    tab.sign_in(admin(cluster))
    tab.page.get_by_role("link", name="Nodes").click()
    n3 = tab.page.locator("section[data-node=n3]")
    n3.get_by_role("button", name="Evacuate").click()
    n3.locator(".badge", has_text="cordoned").wait_for()
    assert cordoned() == ["n3"]
    n3.get_by_role("button", name="Restore").click()
    n3.get_by_role("button", name="Evacuate").wait_for()
    assert n3.locator(".badge", has_text="cordoned").count() == 0
    assert cordoned() == []


def test_kv_edit_is_cas_safe(cluster: NodeSet, tab: Page) -> None:
    n1 = cluster.nodes[0]
    n1.client().request("PUT", "/v1/kv/app/colour", raw=b"blue")
    tab.sign_in(admin(cluster))
    tab.page.get_by_role("link", name="KV").click()
    tab.page.get_by_role("link", name="app").click()
    tab.page.get_by_role("button", name="colour").click()
    value = tab.page.get_by_label("value of app/colour")
    value.fill("green")
    n1.client().request("PUT", "/v1/kv/app/colour", raw=b"red")  # someone else, meanwhile
    tab.page.get_by_role("button", name="Save").click()
    tab.page.get_by_role("alert").get_by_text("conflict").wait_for()
    assert n1.client().request("GET", "/v1/kv/app/colour?raw") == b"red"


def test_the_page_says_when_it_lost_the_stream_and_catches_up(cluster: NodeSet, tab: Page) -> None:
    n1, n2 = cluster.nodes[0], cluster.nodes[1]
    tab.sign_in(admin(cluster))
    tab.page.get_by_role("link", name="KV").click()
    tab.page.get_by_text("no keys here yet").or_(tab.page.locator("ul.kv")).first.wait_for()
    n1.stop()
    try:
        live = tab.page.locator("#live")
        live.get_by_text("disconnected").wait_for()
        cluster.leader(among=cluster.nodes[1:])
        wait_until(  # a PUT is idempotent: tried again if the leader changed under it
            lambda: n2.client().request("PUT", "/v1/kv/while-away", raw=b"1"), 30, "the put"
        )
    finally:
        n1.start()
    tab.page.get_by_role("button", name="while-away").wait_for(timeout=30_000)
    live.wait_for(state="hidden", timeout=10_000)


def test_a_reader_sees_everything_and_changes_nothing(browser: Any, cluster: NodeSet) -> None:
    n1 = cluster.nodes[0]
    made = n1.client().request("POST", "/v1/tokens", body={"kind": "admin", "scope": "reader"})
    tab = Page(browser, n1)
    try:
        tab.sign_in(made["token"])
        tab.page.locator("tr[data-node]").first.wait_for()
        tab.page.get_by_role("link", name="Images").click()
        upload = tab.page.get_by_role("button", name="Upload")
        upload.wait_for()
        assert upload.is_disabled()
        tab.page.get_by_role("link", name="Volumes").click()
        assert tab.page.get_by_role("button", name="Create").is_disabled()
    finally:
        tab.close()


def test_a_phone_sized_screen_has_no_horizontal_overflow(browser: Any, cluster: NodeSet) -> None:
    tab = Page(browser, cluster.nodes[0], width=390)
    try:
        tab.sign_in(admin(cluster))
        for name in ("Cluster", "Nodes", "Images", "Volumes", "Instances", "Deployments", "KV"):
            tab.page.get_by_role("link", name=name, exact=True).click()
            tab.page.locator("#page h1").wait_for()
            tab.page.wait_for_timeout(300)
            wide = tab.page.evaluate("document.documentElement.scrollWidth")
            assert wide <= 390, (name, wide)
    finally:
        tab.close()
