"""The mypyc-compiled request path (setup.py) and its pure-Python fallback (meshc/runtime/__init__.py)."""

from __future__ import annotations

import ast
import hashlib
import json
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


def _fake_build(tmp: Path, names: tuple[str, ...], record: dict[str, str] | None) -> None:
    suffix = EXTENSION_SUFFIXES[0]
    for name in names:
        (tmp / f"{name}.py").write_text(f"# {name}\n")
        (tmp / f"{name}{suffix}").write_bytes(b"")
    (tmp / f"_compiled__mypyc{suffix}").write_bytes(b"")
    if record is not None:
        (tmp / runtime.SOURCES_RECORD).write_text(json.dumps(record))


def _digests(tmp: Path) -> dict[str, str]:
    return {n: hashlib.sha256((tmp / f"{n}.py").read_bytes()).hexdigest() for n in runtime.COMPILED_MODULES}


def test_the_compiled_library_is_used_only_for_the_sources_it_was_built_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHC_PURE_PYTHON", raising=False)
    monkeypatch.setattr(runtime, "_here", tmp_path)
    _fake_build(tmp_path, runtime.COMPILED_MODULES, None)
    assert runtime._why_not_compiled() == "the build left no readable _compiled_sources.json"
    _fake_build(tmp_path, runtime.COMPILED_MODULES, _digests(tmp_path))
    assert runtime._compiled_usable() is True
    # A source edited after (or while) the library was built runs as edited, whatever the file times say.
    library = tmp_path / f"_compiled__mypyc{EXTENSION_SUFFIXES[0]}"
    (tmp_path / "match.py").write_text("# match, edited\n")
    os.utime(library, (library.stat().st_mtime + 3600,) * 2)
    assert runtime._why_not_compiled() == "match.py differs from the source that was compiled"


def test_no_compiled_library_means_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_here", tmp_path)
    for name in runtime.COMPILED_MODULES:
        (tmp_path / f"{name}.py").write_text("")
    assert runtime._compiled_usable() is False


# Runs in a fresh interpreter so each request-path choice is made from scratch: builds the
# metrics registry (the call that crashed a compiled build, issue 15), scrapes it, and lists
# every class of the compiled modules whose instances would look for their __dict__ before the
# object (a negative __dictoffset__: CPython's managed dict, which mypyc never allocates).
_PROBE = """
import inspect, importlib, json, meshc.runtime as r
from prometheus_client import generate_latest
from meshc.runtime.observability import Metrics
m = Metrics()
m.observe_request("sc", "in", "r1", "up", 200, 0.003)
text = generate_latest(m.registry).decode()
bad = []
for name in r.COMPILED_MODULES:
    mod = importlib.import_module("meshc.runtime." + name)
    for cname, cls in vars(mod).items():
        if inspect.isclass(cls) and cls.__module__ == mod.__name__ and cls.__dictoffset__ < 0:
            bad.append(f"{name}.{cname}")
print(json.dumps({"compiled": r.COMPILED, "note": r.PATH_NOTE, "bad": bad,
                  "scraped": 'meshc_requests_total{listener="in"' in text.replace('sidecar="sc",', '')}))
"""


def _probe(**env: str) -> dict[str, object]:
    import json

    base = {k: v for k, v in os.environ.items() if k != "MESHC_PURE_PYTHON"}
    out = subprocess.run([sys.executable, "-c", _PROBE], env={**base, **env}, capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_metrics_are_built_and_scraped_on_the_pure_path() -> None:
    probe = _probe(MESHC_PURE_PYTHON="1")
    assert probe["compiled"] is False and probe["note"] == "pure Python (MESHC_PURE_PYTHON is set)"
    assert probe["scraped"] is True


def test_the_compiled_path_builds_metrics_and_every_class_owns_its_dict() -> None:
    # On the path this install chose (compiled where the build is fresh). CI requires the
    # compiled one (MESHC_REQUIRE_COMPILED in .ci/run), so a broken or missing build fails there.
    probe = _probe()
    if os.environ.get("MESHC_REQUIRE_COMPILED"):
        assert probe["compiled"] is True, probe["note"]
    assert probe["scraped"] is True
    if probe["compiled"]:
        assert probe["bad"] == []
