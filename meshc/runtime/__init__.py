"""The native sidecar proxy runtime (reads only the native backend output).

setup.py compiles the per-request modules below with mypyc when it can (docs/native.md,
"Compiled request path"); their .py files stay the source of truth and the fallback. The
compiled modules call each other directly, so they are used all together or not at all: the
.py files are imported instead when MESHC_PURE_PYTHON is set or when any .py is newer than its
compiled module by more than a few seconds (an edited checkout whose build is stale must run
the code as edited; installing a wheel writes both at about the same time, in any order).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from importlib.abc import MetaPathFinder
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

COMPILED_MODULES = ("http", "server", "match", "observability", "cluster")
_STALE_AFTER_S = 5.0

_here = Path(__file__).parent


def _compiled_file(name: str) -> Path | None:
    for suffix in EXTENSION_SUFFIXES:
        path = _here / (name + suffix)
        if path.exists():
            return path
    return None


def _compiled_usable() -> bool:
    # The code is in one library (setup.py's group_name); each module's own .so is a small shim
    # that a rebuild leaves as it was.
    library = _compiled_file("_compiled__mypyc")
    if os.environ.get("MESHC_PURE_PYTHON") or library is None:
        return False
    built = library.stat().st_mtime
    for name in COMPILED_MODULES:
        source = _here / (name + ".py")
        if _compiled_file(name) is None or (source.exists() and source.stat().st_mtime > built + _STALE_AFTER_S):
            return False
    return True


class _PythonSources(MetaPathFinder):
    """Imports meshc.runtime's compiled modules from their .py files."""

    names = {f"{__name__}.{name}" for name in COMPILED_MODULES}

    def find_spec(self, fullname: str, path: Any = None, target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname not in self.names:
            return None
        return importlib.util.spec_from_file_location(fullname, _here / (fullname.rsplit(".", 1)[1] + ".py"))


# True when the mypyc-compiled request path is in use.
COMPILED = _compiled_usable()
if (not COMPILED and any(_compiled_file(name) for name in COMPILED_MODULES)
        and not any(isinstance(f, _PythonSources) for f in sys.meta_path)):
    sys.meta_path.insert(0, _PythonSources())
