"""The mypyc-compiled request path (setup.py) and its pure-Python fallback (meshc/runtime/__init__.py)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import meshc.runtime as runtime

ROOT = Path(__file__).resolve().parent.parent


def test_setup_py_compiles_the_modules_the_runtime_falls_back_for() -> None:
    tree = ast.parse((ROOT / "setup.py").read_text())
    assigned = next(node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "COMPILED_MODULES" for t in node.targets))
    assert ast.literal_eval(assigned) == runtime.COMPILED_MODULES


def test_pure_python_when_asked() -> None:
    code = ("import meshc.runtime as r, meshc.runtime.http as h, meshc.runtime.server as s; "
            "print(r.COMPILED, h.__file__.endswith('.py'), s.__file__.endswith('.py'))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MESHC_PURE_PYTHON": "1"},
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.split() == ["False", "True", "True"]


def _fake_build(tmp: Path, names: tuple[str, ...], library_age: float) -> None:
    suffix = EXTENSION_SUFFIXES[0]
    for name in names:
        (tmp / f"{name}.py").write_text("")
        (tmp / f"{name}{suffix}").write_bytes(b"")
    lib = tmp / f"_compiled__mypyc{suffix}"
    lib.write_bytes(b"")
    now = lib.stat().st_mtime
    os.utime(lib, (now - library_age, now - library_age))


@pytest.mark.parametrize(("library_age", "usable"), [(0.0, True), (1.0, True), (60.0, False)])
def test_compiled_modules_older_than_their_source_are_not_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, library_age: float, usable: bool) -> None:
    # A .py edited after the build (60 s) runs as edited; a wheel's files written a moment apart do not count.
    monkeypatch.delenv("MESHC_PURE_PYTHON", raising=False)
    monkeypatch.setattr(runtime, "_here", tmp_path)
    _fake_build(tmp_path, runtime.COMPILED_MODULES, library_age)
    assert runtime._compiled_usable() is usable


def test_no_compiled_library_means_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_here", tmp_path)
    for name in runtime.COMPILED_MODULES:
        (tmp_path / f"{name}.py").write_text("")
    assert runtime._compiled_usable() is False
