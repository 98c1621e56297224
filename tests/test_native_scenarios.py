"""Every shared end-to-end scenario (tests/scenarios/*.yaml) against the native proxy: the same
compiled meshes and the same expected outcomes as on Envoy (tests/e2e/test_scenarios.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the e2e package, as its own tests import it

from e2e.harness import Run, Scenario, load_scenarios  # noqa: E402
from e2e.native_runner import NativeRunner  # noqa: E402

SCENARIOS = load_scenarios()


@pytest.mark.e2e
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario_on_native(scenario: Scenario, tmp_path: Path) -> None:
    runner = NativeRunner()
    missing = set(scenario.requires) - runner.capabilities
    assert not missing, f"the native runner must support every scenario; lacks {sorted(missing)}"
    with Run(scenario, runner, tmp_path) as run:
        run.run()
