"""Lifecycle processes run as an unprivileged user (issue 14, finding 10: they ran as root
with the daemon's full rights): the built-in web server serves its document root as
`nobody`, from its work dir, and cannot change it; a missing user is a clear error."""

from __future__ import annotations

import os
import pwd
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from symphonyd.config import Settings, validate
from symphonyd.errors import Invalid
from symphonyd.lifecycle.builtin.web import WebServer, WebSite
from symphonyd.lifecycle.context import InWorkDir, NodeContext, make_work_dir
from symphonyd.lifecycle.supervisor import (
    DEFAULT_USER,
    RunAs,
    Supervisor,
    closed_to,
    run_as_user,
)
from tests.test_lifecycle_builtin import call, fetch, free_port

pytestmark = pytest.mark.privileged


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A data dir another user can pass through, as a real one (0711) is: pytest's own
    temp dirs are 0700 all the way up."""
    base = Path(tempfile.mkdtemp(prefix="symphonyd-lcuser-", dir="/tmp"))
    try:
        base.chmod(0o711)
        yield base
    finally:
        shutil.rmtree(base)


def uid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def test_who_lifecycle_processes_run_as() -> None:
    if os.geteuid() != 0:
        pytest.skip("switching users needs root")
    nobody = pwd.getpwnam("nobody")
    assert run_as_user("") is None
    assert run_as_user("root") is None  # the daemon's own user: nothing to switch
    try:
        pwd.getpwnam(DEFAULT_USER)
    except KeyError:
        assert run_as_user("auto") is None  # not created on this host: the daemon's user
    with pytest.raises(Invalid, match="does not exist on this host"):
        run_as_user("no-such-user-here")
    as_nobody = RunAs("nobody", nobody.pw_uid, nobody.pw_gid)
    if closed_to(as_nobody, sys.executable) is None:
        assert run_as_user("nobody") == as_nobody
    else:  # e.g. a Python under /root (pyenv): the user could not start a single process
        with pytest.raises(Invalid, match="cannot run this daemon's Python"):
            run_as_user("nobody")
    settings = Settings(lifecycle_user="no-such-user-here")
    with pytest.raises(Invalid, match="useradd"):
        validate(settings)


def test_what_a_user_cannot_reach_is_named(open_dir: Path) -> None:
    user = RunAs("nobody", 65534, 65534)
    program = open_dir / "bin" / "program"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    assert closed_to(user, str(program)) is None
    program.chmod(0o700)
    assert closed_to(user, str(program)) == str(program)
    program.chmod(0o755)
    program.parent.chmod(0o750)
    assert closed_to(user, str(program)) == str(program.parent)
    os.chown(program.parent, 0, 65534)  # its group may pass
    assert closed_to(user, str(program)) is None
    link = open_dir / "link"
    link.symlink_to(program)
    program.parent.chmod(0o700)
    assert closed_to(user, str(link)) == str(program.parent)  # where the link leads counts


def test_the_web_server_runs_as_the_lifecycle_user_and_cannot_change_its_files(
    open_dir: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("switching users needs root")
    nobody = RunAs("nobody", pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid)
    if closed_to(nobody, sys.executable) is not None:
        pytest.skip(f"this Python ({sys.executable}) is closed to nobody")
    assert run_as_user("nobody") == nobody
    old = os.umask(0o077)  # the daemon's umask under systemd is 0077
    supervisor = Supervisor(open_dir / "run", run_as=nobody)
    try:
        lifecycles = str(open_dir / "lifecycle-work")
        contexts = {}
        for name in ("WebServer", "WebSite"):
            work_dir = make_work_dir(lifecycles, name, shared=True)
            contexts[name] = NodeContext(
                node="n1",
                address="127.0.0.1",
                work_dir=work_dir,
                supervisor=InWorkDir(supervisor, work_dir),
            )
        server, site = contexts["WebServer"], contexts["WebSite"]
        call(WebServer, "Configured", "enter", server, port=free_port())
        root = call(WebServer, "Configured", "create_document_root", server, path="www/site")
        root_dir = root["document_root"]
        call(
            WebSite,
            "Templated",
            "enter",
            site,
            path="www/site",
            document_root=root_dir,
            title="Hello",
        )
        call(WebServer, "Active", "enter", server)
        url = call(WebServer, "Active", "start", server)["url"]

        status, body = fetch(url)
        assert status == 200 and b"<strong>n1</strong>" in body
        pid = supervisor.status("webserver")["pid"]
        assert uid_of(pid) == nobody.uid
        assert os.readlink(f"/proc/{pid}/cwd") == server.work_dir
        # what it serves is root's: readable by it, not writable
        assert os.stat(root_dir).st_uid == 0 and os.stat(root_dir).st_mode & 0o777 == 0o755
        assert fetch(url, method="PUT")[0] >= 400
        assert sorted(os.listdir(root_dir)) == ["index.html"]
    finally:
        supervisor.close()
        os.umask(old)
