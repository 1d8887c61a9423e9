"""Loading lifecycle modules: the package's built-ins and every `*.py` file of the module
directories (`<data-dir>/lifecycles/` and any configured path).

A module that fails (a syntax error, an import error, a lifecycle whose graph is bad, a
name already taken, references to other lifecycles that do not hold) is listed as broken
with its error, and the rest load. Files are imported under a private module name, so a
module directory cannot shadow a real package. A file, or a directory holding one, that
anyone but root may write (or that another user owns) is refused the same way: its code
would run with the daemon's rights.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import stat
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from symphonyd.errors import SymphonyError
from symphonyd.lifecycle.model import Catalog, Lifecycle

log = logging.getLogger("symphonyd.lifecycle")

BUILTIN_MODULES: tuple[str, ...] = ("symphonyd.lifecycle.builtin.web",)


@dataclass
class Loaded:
    """What a node knows: its catalog, where each lifecycle came from, what is broken."""

    catalog: Catalog = field(default_factory=Catalog)
    origin: dict[str, str] = field(default_factory=dict)  # lifecycle name -> module
    broken: dict[str, str] = field(default_factory=dict)  # module -> the error

    def describe(self) -> dict[str, Any]:
        return {
            "lifecycles": {name: self.origin[name] for name in self.catalog.names()},
            "broken": dict(sorted(self.broken.items())),
        }


def lifecycles_in(module: ModuleType) -> list[type[Lifecycle]]:
    """The concrete lifecycles a module defines itself (not the ones it imports)."""
    found = []
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, Lifecycle)
            and value.__module__ == module.__name__
            and value._by_name
        ):
            found.append(value)
    return found


def check_trusted(path: str) -> None:
    """Refuse a module file (or its directory) that someone other than root (or the user
    the daemon runs as) owns or may write: its code would run with the daemon's rights."""
    trusted = {0, os.geteuid()}
    for where in (path, os.path.dirname(os.path.abspath(path))):
        info = os.stat(where)
        if info.st_uid not in trusted:
            raise SymphonyError(
                f"refused: {where} is owned by uid {info.st_uid}; lifecycle modules and their "
                "directories must be owned by root"
            )
        if info.st_mode & 0o022:
            raise SymphonyError(
                f"refused: {where} is writable by others (mode {stat.S_IMODE(info.st_mode):04o});"
                " lifecycle modules and their directories must be writable by root only"
            )


def _import_file(path: str) -> ModuleType:
    check_trusted(path)
    digest = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:12]
    name = f"symphonyd_lifecycle_module_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _error(exc: BaseException) -> str:
    if isinstance(exc, SymphonyError):
        return exc.message
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} (line {exc.lineno})"
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def module_files(directories: Iterable[str]) -> list[str]:
    files = []
    for directory in directories:
        if not os.path.isdir(directory):
            continue
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if entry.is_file() and entry.name.endswith(".py") and not entry.name.startswith("_"):
                files.append(entry.path)
    return files


def load(directories: Iterable[str] = (), builtins: Iterable[str] = BUILTIN_MODULES) -> Loaded:
    """Load every module; a broken one is recorded, never fatal."""
    loaded = Loaded()
    sources: list[tuple[str, Any]] = [(name, importlib.import_module) for name in builtins]
    sources += [(path, _import_file) for path in module_files(directories)]
    for where, importer in sources:
        try:
            module = importer(where)
            found = lifecycles_in(module)
            taken = [lc.name for lc in found if lc.name in loaded.catalog]
            if taken:
                owners = ", ".join(f"{n} (from {loaded.origin[n]})" for n in taken)
                raise SymphonyError(f"lifecycles already loaded: {owners}")
        except Exception as exc:
            loaded.broken[where] = _error(exc)
            log.warning("lifecycle module %s is broken: %s", where, loaded.broken[where])
            continue
        for lifecycle in found:
            loaded.catalog.add(lifecycle)
            loaded.origin[lifecycle.name] = where
    _drop_inconsistent(loaded)
    return loaded


def _drop_inconsistent(loaded: Loaded) -> None:
    """Modules whose lifecycles refer to others wrongly are broken too (with the reason);
    what remains is checked again until it holds."""
    for _ in range(len(loaded.origin) + 1):
        problems = loaded.catalog.problems()
        if not problems:
            return
        bad_modules = {loaded.origin[name] for name in problems}
        for module in bad_modules:
            names = [n for n, origin in loaded.origin.items() if origin == module]
            loaded.broken[module] = "; ".join(p for n in names for p in problems.get(n, []))
            log.warning("lifecycle module %s is broken: %s", module, loaded.broken[module])
        keep = [lc for lc in loaded.catalog if loaded.origin[lc.name] not in bad_modules]
        loaded.origin = {lc.name: loaded.origin[lc.name] for lc in keep}
        loaded.catalog = Catalog(keep)
