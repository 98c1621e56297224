"""Diagnostics goldens: each tests/diagnostics/<case>.mesh is checked with `meshc check`, and
what it prints must equal <case>.expected (regenerate: pytest tests/test_diagnostics.py
--snapshot-update). Every case must produce at least one diagnostic with a code and a
position, and no traceback."""

from __future__ import annotations

import re

import pytest
from examples_index import ROOT

from meshc.cli import main

CASES = sorted((ROOT / "tests" / "diagnostics").glob("*.mesh"))
POSITION = re.compile(r"^tests/diagnostics/[\w.-]+\.mesh:\d+:\d+: (error|warning)\[[EW]\d{3}\]: ", re.M)


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_diagnostic_golden(case, snapshot, capsys, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("NO_COLOR", "1")
    rc = main(["check", str(case.relative_to(ROOT))])
    out = capsys.readouterr()
    text = out.err
    assert "Traceback" not in text
    assert POSITION.search(text), f"no positioned diagnostic in:\n{text}"
    if re.search(r"\berror\[E", text):
        assert rc == 1
    snapshot.snapshot_dir = ROOT / "tests" / "diagnostics"
    snapshot.assert_match(text, case.stem + ".expected")
