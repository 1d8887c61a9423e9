"""Built-in lifecycles for serving web pages: `WebServer`, `WebSite` and `Proxy`.

* `WebServer` serves one document root on a port (`staticserver.py`, run as its own
  process, never serving a file outside the root);
* `WebSite` writes a page into a document root it asks the local `WebServer` for, and is
  published at the web server's URL;
* `Proxy` forwards requests, round robin, to the `WebSite`s of any number of nodes
  (`proxyserver.py`, run as its own process).

Bodies work only through `self.context` (a `NodeContext`): files only inside the node's
lifecycle work directories (a path a user gives goes through `context.path`), runtime
values in `context.data` (no secret there), processes through `context.supervisor`. This
module must not import the daemon, the store, Raft or the API, nor run anything but
through the supervisor.
"""

from __future__ import annotations

import html
import os
import socket
import sys
import tempfile
import time
from typing import Any

from symphonyd.errors import Conflict, DriverError
from symphonyd.lifecycle.context import NodeContext, is_inside
from symphonyd.lifecycle.model import (
    Lifecycle,
    Require,
    RequireExternal,
    RequireLocal,
    State,
    provide,
)
from symphonyd.lifecycle.variables import Path, Port, Str, Url

__all__ = [
    "PROXYSERVER",
    "PROXY_PROCESS",
    "STATICSERVER",
    "WEBSERVER_PROCESS",
    "Proxy",
    "WebServer",
    "WebSite",
]

WEBSERVER_PROCESS = "webserver"
PROXY_PROCESS = "proxy"
PROXYSERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "proxyserver.py")
STATICSERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "staticserver.py")
READY_TIMEOUT = 5.0  # how long a started server has to accept connections
DEFAULT_DOCUMENT_ROOT = "www"


# -- helpers shared by the bodies ----------------------------------------------------------


def url_of(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}/"


def wait_listening(context: NodeContext, name: str, port: int) -> None:
    """Wait until `port` on the node's address accepts a TCP connection, or DriverError."""
    host = context.address
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if not context.supervisor.status(name)["running"]:
            raise DriverError(f"process {name} exited while starting; see its log", name=name)
        try:
            with socket.create_connection((host, port), timeout=0.5):
                pass
        except OSError as exc:
            problem = exc.strerror or str(exc)
        else:
            if context.supervisor.status(name)["running"]:  # not someone else on the port
                return
            continue
        if time.monotonic() >= deadline:
            raise DriverError(
                f"process {name} does not accept connections on {host}:{port} after "
                f"{READY_TIMEOUT:.0f} s ({problem}); see its log",
                name=name,
                port=port,
            )
        time.sleep(0.05)


def make_directory(path: str, what: str) -> None:
    """Make `path` and its missing parents, readable by all (the servers may run as the
    node's unprivileged lifecycle user; the daemon's umask would make them 0700)."""
    try:
        missing = []
        head = os.path.abspath(path)
        while not os.path.exists(head):
            missing.append(head)
            head = os.path.dirname(head)
        os.makedirs(path, exist_ok=True)
        for made in missing:
            os.chmod(made, 0o755)
    except OSError as exc:
        raise DriverError(f"cannot create {what} {path}: {exc.strerror or exc}") from None


def program_in_work_dir(context: NodeContext, program: str, what: str) -> str:
    """A copy of the package's `program` in the lifecycle's work dir, where the user its
    processes run as can read it (the package may sit where it cannot: a zipapp's
    extraction dir is private to the daemon), rewritten when the package's differs."""
    try:
        with open(program, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise DriverError(f"{what} {program} cannot be read: {exc.strerror or exc}") from None
    copy = os.path.join(context.work_dir, os.path.basename(program))
    try:
        with open(copy, encoding="utf-8") as f:
            if f.read() == text:
                return copy
    except OSError:
        pass
    write_atomically(copy, text)
    return copy


def write_atomically(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file renamed over it (readers see the
    old content or the new one, never a part)."""
    directory = os.path.dirname(path)
    try:
        fd, temporary = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError as exc:
        raise DriverError(f"cannot write {path}: {exc.strerror or exc}") from None


def page(node: str, title: str) -> str:
    """The web site's index.html."""
    node, title = html.escape(node), html.escape(title)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n'
        '<head><meta charset="utf-8"><title>' + title + "</title></head>\n"
        "<body>\n"
        "<h1>" + title + "</h1>\n"
        "<p>Served by node <strong>" + node + "</strong>.</p>\n"
        "</body>\n"
        "</html>\n"
    )


# -- WebServer ------------------------------------------------------------------------------


class WebServer(Lifecycle):
    """Serves the files of one document root over HTTP (`staticserver.py`)."""

    label = "Web server"

    class NotInstalled(State):
        """Nothing is set up for the web server on this node."""

        label = "Not installed"

    class Installed(State):
        """The server program is there: it ships with symphonyd, nothing to install."""

        label = "Installed"

    class Configured(State):
        """The server has a port and a document root, but does not run."""

        label = "Configured"

        @provide(
            requires=[Require([Port("port", default=80, help="the TCP port to serve HTTP on")])],
            label="configure",
        )
        def enter(self, port: int) -> None:
            """Choose the port the server listens on."""
            self.context.data["port"] = port

        @provide(
            requires=[
                Require(
                    [
                        Path(
                            "path",
                            default=DEFAULT_DOCUMENT_ROOT,
                            help="a directory inside the web server's work directory "
                            "(relative; no '..')",
                        )
                    ]
                )
            ],
            returns=[Str("document_root", help="the absolute path of the directory")],
            flags={"reload": True},
            label="create a document root",
        )
        def create_document_root(self, path: str) -> dict[str, str]:
            """Create the directory the server serves; it replaces the earlier one (a running
            server is restarted on it)."""
            root = self.context.path(path)
            make_directory(root, "the document root")
            self.context.data["document_root"] = root
            return {"document_root": root}

        def leave(self) -> None:
            """Forget the port and the document root (its files are kept)."""
            self.context.data.pop("port", None)
            self.context.data.pop("document_root", None)

    class Active(State):
        """The server runs (restarted if it dies, and after a node restart)."""

        label = "Active"

        @provide(label="start the server")
        def enter(self) -> None:
            """Start the server, on the default document root if none was created."""
            self._run()

        @provide(returns=[Url("url", help="where the server answers")], label="start")
        def start(self) -> dict[str, str]:
            """Make sure the server runs and give its URL."""
            return {"url": self._run()}

        def leave(self) -> None:
            """Stop the server."""
            self.context.supervisor.stop(WEBSERVER_PROCESS)
            self.context.data.pop("url", None)

        def ensure(self) -> None:
            """Start the server again if it does not run."""
            self._run()

        def cross(self, **flags: object) -> None:
            """On `reload` (a new document root), restart the server on it."""
            if flags.get("reload"):
                self._run()

        def _run(self) -> str:
            context = self.context
            port = context.data.get("port")
            if not isinstance(port, int):
                raise Conflict("the web server has no port: it must be Configured first")
            root = context.data.get("document_root")
            if not isinstance(root, str):
                root = context.path(DEFAULT_DOCUMENT_ROOT)
                context.data["document_root"] = root
            if not is_inside(context.work_dir, root):  # recorded by a version without checks
                raise Conflict(
                    f"the document root {root} is outside the web server's work directory "
                    f"{context.work_dir}: create a document root again"
                )
            make_directory(root, "the document root")
            program = program_in_work_dir(context, STATICSERVER, "the web server program")
            argv = [sys.executable, "-I", program, "--bind", context.address]
            argv += ["--port", str(port), "--directory", root]
            context.supervisor.ensure(WEBSERVER_PROCESS, argv)
            wait_listening(context, WEBSERVER_PROCESS, port)
            url = url_of(context.address, port)
            context.log.info("serving %s at %s", root, url)
            context.data["url"] = url
            return url

    states = [NotInstalled, Installed, Configured, Active]
    transitions = [(NotInstalled, Installed), (Installed, Configured), (Configured, Active)]
    initial_state = NotInstalled


# -- WebSite --------------------------------------------------------------------------------


class WebSite(Lifecycle):
    """A page served by the web server of the same node."""

    label = "Web site"

    class NotInstalled(State):
        """The site has no files on this node."""

        label = "Not installed"

    class Templated(State):
        """The site's page is written into a document root of the local web server."""

        label = "Templated"

        @provide(
            requires=[
                RequireLocal(
                    "//WebServer//create_document_root",
                    provide_args=[Path("path", default="www/website")],
                    provide_ret=[Str("document_root")],
                    help="the local web server makes the directory the site lives in",
                ),
                Require(
                    [Str("title", default="Welcome", min_length=1, max_length=200)],
                    name="page",
                    help="what the page says",
                ),
            ],
            label="write the page",
        )
        def enter(self, path: str, document_root: str, title: str) -> None:
            """Write index.html (the title and the node's name) into the document root."""
            self.context.check_inside_node(document_root, "the document root")
            make_directory(document_root, "the document root")
            index = os.path.join(document_root, "index.html")
            write_atomically(index, page(self.context.node, title))
            self.context.log.info("wrote %s", index)
            self.context.data["document_root"] = document_root
            self.context.data["title"] = title

        def leave(self) -> None:
            """Remove the page."""
            root = self.context.data.pop("document_root", None)
            self.context.data.pop("title", None)
            if isinstance(root, str) and not is_inside(self.context.lifecycles_dir, root):
                self.context.log.warning("not removing a page outside the work dirs: %s", root)
            elif isinstance(root, str):
                try:
                    os.unlink(os.path.join(root, "index.html"))
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise DriverError(f"cannot remove the page in {root}: {exc.strerror}") from None

    class Active(State):
        """The site is published at the local web server's URL."""

        label = "Active"

        @provide(
            requires=[
                RequireLocal(
                    "//WebServer//start",
                    provide_ret=[Url("url")],
                    help="the local web server runs and serves the page",
                )
            ],
            label="publish",
        )
        def enter(self, url: str) -> None:
            """Record the URL the site is served at."""
            self.context.data["url"] = url

        @provide(returns=[Url("url", help="where the site answers")], label="start")
        def start(self) -> dict[str, str]:
            """The URL of the site (the web server's)."""
            url = self.context.data.get("url")
            if not isinstance(url, str):
                raise Conflict("the web site has no URL: it must be Active first")
            return {"url": url}

        def leave(self) -> None:
            """Forget the URL."""
            self.context.data.pop("url", None)

    states = [NotInstalled, Templated, Active]
    transitions = [(NotInstalled, Templated), (Templated, Active)]
    initial_state = NotInstalled


# -- Proxy ----------------------------------------------------------------------------------


class Proxy(Lifecycle):
    """An HTTP reverse proxy spreading requests over the web sites of other nodes."""

    label = "Proxy"

    class NotInstalled(State):
        """Nothing is set up for the proxy on this node."""

        label = "Not installed"

    class Configured(State):
        """The proxy has its port and the URLs of its web sites, but does not run."""

        label = "Configured"

        @provide(
            requires=[
                Require([Port("port", default=8080, help="the TCP port the proxy listens on")]),
                RequireExternal(
                    "//WebSite//start",
                    provide_ret=[Url("url")],
                    nargs="*",
                    name="websites",
                    help="the web sites to forward to (any number, on any nodes)",
                ),
            ],
            label="configure",
        )
        def enter(self, port: int, websites: list[dict[str, Any]]) -> None:
            """Record the port and the web sites' URLs (the backends)."""
            backends: list[str] = []
            for site in websites:
                url = str(site["url"])
                if url not in backends:
                    backends.append(url)
            self.context.data["port"] = port
            self.context.data["backends"] = backends

        def leave(self) -> None:
            """Forget the port and the backends."""
            self.context.data.pop("port", None)
            self.context.data.pop("backends", None)

    class Active(State):
        """The proxy runs (restarted if it dies, and after a node restart)."""

        label = "Active"

        @provide(label="start the proxy")
        def enter(self) -> None:
            """Start the proxy."""
            self._run()

        @provide(returns=[Url("url", help="where the proxy answers")], label="start")
        def start(self) -> dict[str, str]:
            """Make sure the proxy runs and give its URL."""
            return {"url": self._run()}

        def leave(self) -> None:
            """Stop the proxy."""
            self.context.supervisor.stop(PROXY_PROCESS)
            self.context.data.pop("url", None)

        def ensure(self) -> None:
            """Start the proxy again if it does not run."""
            self._run()

        def _run(self) -> str:
            context = self.context
            port = context.data.get("port")
            if not isinstance(port, int):
                raise Conflict("the proxy has no port: it must be Configured first")
            backends = [str(url) for url in context.data.get("backends") or []]
            program = program_in_work_dir(context, PROXYSERVER, "the proxy program")
            argv = [sys.executable, "-I", program]
            argv += ["--bind", context.address, "--port", str(port), *backends]
            context.supervisor.ensure(PROXY_PROCESS, argv)
            wait_listening(context, PROXY_PROCESS, port)
            url = url_of(context.address, port)
            context.log.info("proxying %s to %s", url, ", ".join(backends) or "no backends")
            context.data["url"] = url
            return url

    states = [NotInstalled, Configured, Active]
    transitions = [(NotInstalled, Configured), (Configured, Active)]
    initial_state = NotInstalled
