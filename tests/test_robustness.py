"""The front end never raises anything but MeshcError, whatever the input (hypothesis), and
compiled output is byte-identical across runs and hash seeds."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
from examples_index import ROOT, example_roots
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import SOURCES, mutate

from meshc import backends
from meshc.compiler import load_text
from meshc.diagnostics import MeshcError


def compile_or_diagnose(text: str) -> None:
    try:
        load_text(text)
    except MeshcError as e:
        assert e.diagnostics, "a MeshcError always carries diagnostics"
        for d in e.diagnostics:
            assert d.code[0] in "EW" and d.message


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_random_text_never_crashes(text: str) -> None:
    compile_or_diagnose(text)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SOURCES), st.data())
def test_mutated_examples_never_crash(src: str, data: st.DataObject) -> None:
    """Cut, duplicate or splice random pieces of real files: near-valid input is the hard case."""
    compile_or_diagnose(mutate(src, data))


def _digest_all_targets(seed: str) -> str:
    code = (
        "import hashlib, sys\n"
        "from meshc import backends\nfrom meshc.compiler import load\nfrom meshc.diagnostics import MeshcError\n"
        "h = hashlib.sha256()\n"
        "for path in sys.argv[1:]:\n"
        "    mesh = load([path])\n"
        "    for t in backends.available():\n"
        "        try:\n"
        "            b = backends.compile_mesh(mesh, t, unsupported='warn')\n"
        "        except MeshcError as e:\n"
        "            h.update(repr(e).encode()); continue\n"
        "        for k in sorted(b.files):\n"
        "            h.update(k.encode()); h.update(b.files[k])\n"
        "print(h.hexdigest())\n")
    env = {**os.environ, "PYTHONHASHSEED": seed}
    roots = [str(p.relative_to(ROOT)) for p in example_roots().values()]
    out = subprocess.run([sys.executable, "-c", code, *roots], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.slow
def test_output_is_byte_identical_across_hash_seeds() -> None:
    assert _digest_all_targets("0") == _digest_all_targets("12345")


def test_output_is_identical_across_runs() -> None:
    mesh = load_text((ROOT / "examples/bookinfo/bookinfo.mesh").read_text(), "bookinfo.mesh")
    for t in backends.available():
        try:
            a = backends.compile_mesh(mesh, t, unsupported="warn").files
            b = backends.compile_mesh(mesh, t, unsupported="warn").files
        except MeshcError:
            continue
        assert {k: hashlib.sha256(v).hexdigest() for k, v in a.items()} == \
            {k: hashlib.sha256(v).hexdigest() for k, v in b.items()}, t
