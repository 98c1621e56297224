"""meshc.parallel: a function run in a forked child, its result or its failure brought back."""

from __future__ import annotations

import os

import pytest

from meshc import parallel
from meshc.diagnostics import Diagnostic, MeshcError
from meshc.model import Span

pytestmark = pytest.mark.skipif(not parallel.enabled, reason="needs fork and two cores")


def test_result_comes_back() -> None:
    big = list(range(100_000))
    assert parallel.Forked(lambda: sum(big)).result() == sum(big)  # the child sees our memory


def test_child_is_not_parallel_itself() -> None:
    assert parallel.Forked(lambda: parallel.enabled).result() is False
    assert parallel.enabled


def test_meshc_errors_keep_their_diagnostics() -> None:
    diags = [Diagnostic("E104", "unknown service 'x'", Span("a.mesh", 3, 7))]

    def fail() -> None:
        raise MeshcError(diags)
    with pytest.raises(parallel.ChildFailed) as info:
        parallel.Forked(fail).result()
    assert isinstance(info.value.__cause__, MeshcError) and info.value.__cause__.diagnostics == diags


@pytest.mark.parametrize("fn", [lambda: os._exit(3), lambda: (lambda: 1)], ids=["dies", "unpicklable"])
def test_failures_are_reported_not_raised_raw(fn: object) -> None:
    with pytest.raises(parallel.ChildFailed):
        parallel.Forked(fn).result()  # type: ignore[arg-type]


def test_graph_checks_in_two_halves_equal_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    from pathlib import Path

    from meshc import graph
    from meshc.compiler import load
    from meshc.parse import parse_text
    from meshc.resolve import resolve

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from meshgen import generate

    examples = Path(__file__).resolve().parents[1] / "examples"
    meshes = [resolve([parse_text(generate(300), "big.mesh", keep_tree=False).ast])]
    meshes += [load(sorted((examples / name).rglob("*.mesh")), checks=False) for name in ("shop", "bookinfo")]
    monkeypatch.setattr(graph, "PARALLEL_SERVICES", 1)
    forked: list[int] = []
    real = parallel.Forked
    monkeypatch.setattr(parallel, "Forked", lambda fn: forked.append(1) or real(fn))
    found = []
    for mesh in meshes:
        monkeypatch.setattr(parallel, "idle_core", lambda: False)
        one = graph.check(mesh)
        monkeypatch.setattr(parallel, "idle_core", lambda: True)
        two = graph.check(mesh)
        assert one == two
        found.append(len(one))
    assert len(forked) == len(meshes) and found[0] > 100  # the child's checks found some of them


def test_idle_core_is_never_claimed_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(parallel.idle_core(), bool)
    monkeypatch.setattr(parallel, "enabled", False)
    assert parallel.idle_core() is False
