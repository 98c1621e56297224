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
