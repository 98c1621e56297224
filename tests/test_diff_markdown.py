"""Goldens of `meshc diff --format markdown` (the pull-request comment).

Regenerate with `pytest tests/test_diff_markdown.py --snapshot-update` and review the change.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_diff import SHOP, edit

from meshc.compiler import load_text
from meshc.diff import render_markdown, semantic_diff

GOLDEN = Path(__file__).parent / "diff_golden"


def _widening() -> str:
    new = SHOP + 'allow frontend -> payments methods POST paths exact "/refund"\n'
    new = edit("service ratings {\n  port http 9080\n", "service ratings {\n  port http 9080\n  mtls permissive\n", new)
    return new


def _mixed() -> str:
    new = edit("split { v1 90%, v2 10% }", "split { v1 50%, v2 50% }")
    new = edit("  retry 1 on 5xx\n  timeout 2s", "  retry 3 on 5xx\n  timeout 1s", new)
    new = edit('  expose ingress on port 80 paths prefix "/"\n', "", new)
    new = edit("allow frontend -> checkout, reviews methods GET, POST", "allow frontend -> checkout, reviews methods GET", new)
    return new + "service details {\n  port http 9080\n}\n"


CASES = {
    "no-changes": lambda: SHOP,
    "widening": _widening,
    "mixed": _mixed,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_markdown_golden(case, snapshot):
    old = load_text(SHOP, "shop.mesh")
    new = load_text(CASES[case](), "shop.mesh")
    snapshot.snapshot_dir = GOLDEN
    snapshot.assert_match(render_markdown(semantic_diff(old, new)), f"{case}.md")


def test_multifile_example_prod_against_dev():
    """The multi-file example: production (overlays) strengthens the development posture."""
    from meshc.compiler import load

    ex = Path(__file__).resolve().parents[1] / "examples" / "multifile"
    dev, prod = load([ex / "base.mesh"]), load([ex / "prod.mesh"])
    md = render_markdown(semantic_diff(dev, prod), title="prod vs dev")
    assert md.startswith("### prod vs dev\n")
    if dev.authz != prod.authz:
        assert f"~ mesh: authz {dev.authz} -> {prod.authz}" in md
    if dev.mtls != prod.mtls:
        assert f"mesh: mtls {dev.mtls} -> {prod.mtls}" in md
    assert "<details" in md and "```diff" in md
