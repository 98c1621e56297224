"""Every scenario in tests/scenarios/ on every runner (real proxies, real HTTP on loopback).

Adding a data plane = adding a Runner to RUNNERS; the scenarios stay as they are.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from e2e.envoy_runner import EnvoyRunner
from e2e.harness import Run, Runner, Scenario, load_scenarios

# runner name -> (factory, why it cannot run here or None)
RUNNERS: dict[str, tuple[Callable[[], Runner], str | None]] = {
    "envoy": (EnvoyRunner, None if shutil.which("envoy") else "envoy binary not on PATH"),
}

SCENARIOS = load_scenarios()


@pytest.mark.e2e
@pytest.mark.parametrize("runner_name", sorted(RUNNERS))
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario(scenario: Scenario, runner_name: str, tmp_path: Path) -> None:
    factory, unavailable = RUNNERS[runner_name]
    if unavailable:
        pytest.skip(unavailable)
    runner = factory()
    missing = set(scenario.requires) - runner.capabilities
    if missing:
        pytest.skip(f"{runner_name} runner lacks {sorted(missing)}")
    with Run(scenario, runner, tmp_path) as run:
        run.run()


def test_scenarios_are_well_formed() -> None:
    """Every scenario names declared upstreams and has checkable steps (not an e2e run)."""
    assert len(SCENARIOS) >= 10
    for s in SCENARIOS:
        assert s.steps, s.name
        for step in s.steps:
            assert ("request" in step) != ("update" in step), (s.name, step)
            assert step.get("expect"), (s.name, step.get("name"))
