"""The native sidecar proxy runtime (reads only the native backend output).

setup.py compiles the per-request modules below with mypyc when it can (docs/native.md,
"Compiled request path"); their .py files stay the source of truth and the fallback. The
compiled modules call each other directly, so they are used all together or not at all: the
.py files are imported instead when MESHC_PURE_PYTHON is set, when nothing was compiled, or when
any .py differs from the one the library was compiled from (the build records their SHA-256 in
`_compiled_sources.json`): an edited checkout, or a source edited while a build ran, must run
the code as edited. File times are not enough for that: a build reads its sources before it
writes the library.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from importlib.abc import MetaPathFinder
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

COMPILED_MODULES = ("http", "server", "match", "observability", "cluster")
SOURCES_RECORD = "_compiled_sources.json"

_here = Path(__file__).parent


def _compiled_file(name: str) -> Path | None:
    for suffix in EXTENSION_SUFFIXES:
        path = _here / (name + suffix)
        if path.exists():
            return path
    return None


def _why_not_compiled() -> str | None:
    """None when the compiled request path can be used, else why the .py files run instead."""
    # The code is in one library (setup.py's group_name); each module's own .so is a small shim.
    if os.environ.get("MESHC_PURE_PYTHON"):
        return "MESHC_PURE_PYTHON is set"
    if _compiled_file("_compiled__mypyc") is None:
        return "not compiled (no C compiler or mypyc at install time)"
    try:
        compiled_from = json.loads((_here / SOURCES_RECORD).read_text())
    except (OSError, ValueError):
        return f"the build left no readable {SOURCES_RECORD}"
    for name in COMPILED_MODULES:
        if _compiled_file(name) is None:
            return f"the compiled {name} module is missing"
        try:
            digest = hashlib.sha256((_here / (name + ".py")).read_bytes()).hexdigest()
        except OSError:
            return f"{name}.py cannot be read"
        if compiled_from.get(name) != digest:
            return f"{name}.py differs from the source that was compiled"
    return None


def _compiled_usable() -> bool:
    return _why_not_compiled() is None


class _PythonSources(MetaPathFinder):
    """Imports meshc.runtime's compiled modules from their .py files."""

    names = {f"{__name__}.{name}" for name in COMPILED_MODULES}

    def find_spec(self, fullname: str, path: Any = None, target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname not in self.names:
            return None
        return importlib.util.spec_from_file_location(fullname, _here / (fullname.rsplit(".", 1)[1] + ".py"))


# True when the mypyc-compiled request path is in use; PATH_NOTE says which runs and why.
_reason = _why_not_compiled()
COMPILED = _reason is None
PATH_NOTE = "compiled (mypyc)" if COMPILED else f"pure Python ({_reason})"
if (not COMPILED and any(_compiled_file(name) for name in COMPILED_MODULES)
        and not any(isinstance(f, _PythonSources) for f in sys.meta_path)):
    sys.meta_path.insert(0, _PythonSources())
