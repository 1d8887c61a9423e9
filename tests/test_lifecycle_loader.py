"""Loading lifecycle modules from a directory: good ones load, each broken one is listed
with its error, and the rest are not affected."""

from __future__ import annotations

from pathlib import Path

from symphonyd.lifecycle.loader import load

GOOD = """
from symphonyd.lifecycle.model import Lifecycle, Require, State, provide
from symphonyd.lifecycle.variables import Port


class Server(Lifecycle):
    class Off(State):
        pass

    class Configured(State):
        @provide(requires=[Require([Port("port", default=80)])])
        def enter(self, port):
            pass

    states = [Off, Configured]
    transitions = [(Off, Configured)]
    initial_state = Off
"""

BAD_GRAPH = """
from symphonyd.lifecycle.model import Lifecycle, State


class Loopy(Lifecycle):
    class A(State):
        pass

    class B(State):
        pass

    states = [A, B]
    transitions = [(A, B), (B, Nowhere)]
    initial_state = A
""".replace("Nowhere", '"Nowhere"')

REFERS = """
from symphonyd.lifecycle.model import Lifecycle, RequireLocal, State, provide


class Client(Lifecycle):
    class Off(State):
        pass

    class On(State):
        @provide(requires=[RequireLocal("Missing//start")])
        def enter(self):
            pass

    states = [Off, On]
    transitions = [(Off, On)]
    initial_state = Off
"""


def test_broken_modules_are_listed_and_the_rest_load(tmp_path: Path) -> None:
    (tmp_path / "a_good.py").write_text(GOOD)
    (tmp_path / "b_syntax.py").write_text("def (:\n")
    (tmp_path / "c_graph.py").write_text(BAD_GRAPH)
    (tmp_path / "d_twin.py").write_text(GOOD)  # the same lifecycle name again
    (tmp_path / "e_import.py").write_text("import no_such_module_anywhere\n")
    (tmp_path / "f_refers.py").write_text(REFERS)
    (tmp_path / "_private.py").write_text("raise SystemExit(1)\n")  # not a module to load
    (tmp_path / "notes.txt").write_text("not python")

    loaded = load([str(tmp_path), str(tmp_path / "missing-dir")], builtins=())

    assert loaded.catalog.names() == ["Server"]
    assert loaded.origin == {"Server": str(tmp_path / "a_good.py")}
    broken = {Path(k).name: v for k, v in loaded.broken.items()}
    assert sorted(broken) == [
        "b_syntax.py",
        "c_graph.py",
        "d_twin.py",
        "e_import.py",
        "f_refers.py",
    ]
    assert broken["b_syntax.py"].startswith("SyntaxError")
    assert "Nowhere" in broken["c_graph.py"]
    assert "already loaded: Server" in broken["d_twin.py"]
    assert "no_such_module_anywhere" in broken["e_import.py"]
    assert "Missing//start" in broken["f_refers.py"]
    assert loaded.catalog.resolve("Server/Configured/enter").provide.name == "enter"
    assert loaded.describe()["broken"] == dict(sorted(loaded.broken.items()))


def test_a_module_directory_cannot_shadow_a_package(tmp_path: Path) -> None:
    (tmp_path / "json.py").write_text(GOOD)
    loaded = load([str(tmp_path)], builtins=())
    import json

    assert hasattr(json, "dumps")  # the real json module is untouched
    assert loaded.catalog.names() == ["Server"]


def test_modules_anyone_but_root_may_write_are_refused(tmp_path: Path) -> None:
    """Issue 14, finding 9: a file owned by nobody in a 0777 directory ran on import."""
    import os

    import pytest

    if os.geteuid() != 0:
        pytest.skip("changes file owners: needs root (CI runs as root)")
    ran = tmp_path / "ran"
    trap = f"open({str(ran)!r}, 'w').write('imported')\n"
    folder = tmp_path / "modules"
    folder.mkdir(mode=0o755)
    (folder / "a_good.py").write_text(GOOD)
    (folder / "b_world_writable.py").write_text(trap)
    os.chmod(folder / "b_world_writable.py", 0o666)
    (folder / "c_nobodys.py").write_text(trap)
    os.chown(folder / "c_nobodys.py", 65534, 65534)
    loaded = load([str(folder)], builtins=())
    assert "Server" in loaded.catalog
    broken = loaded.broken
    assert "writable by others (mode 0666)" in broken[str(folder / "b_world_writable.py")]
    assert "owned by uid 65534" in broken[str(folder / "c_nobodys.py")]
    assert not ran.exists()  # neither ran
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    (open_dir / "good.py").write_text(GOOD)
    assert (
        "writable by others (mode 0777)"
        in load([str(open_dir)], builtins=()).broken[str(open_dir / "good.py")]
    )
