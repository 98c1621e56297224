"""Documentation that is checked: every diagnostic code has a section in docs/errors.md, and
docs/capabilities.md matches the backends' CAPABILITIES."""

from __future__ import annotations

import re

from examples_index import ROOT

from meshc import capabilities


def codes_in_source() -> set[str]:
    codes: set[str] = set()
    for folder in ("meshc", "backends"):
        for path in (ROOT / folder).rglob("*.py"):
            codes |= set(re.findall(r"""["']([EW][0-9]{3})["']""", path.read_text()))
    return codes


def test_every_code_is_documented() -> None:
    doc = (ROOT / "docs" / "errors.md").read_text()
    sections = set(re.findall(r"^## ([EW][0-9]{3})\b", doc, re.M))
    emitted = codes_in_source()
    # A W-code that is an E-code downgraded (W301 from E301) shares the E-code's section.
    missing = sorted(c for c in emitted if c not in sections and "E" + c[1:] not in sections)
    assert not missing, f"docs/errors.md lacks sections for {missing}"
    assert len(emitted) > 20


def test_capabilities_doc_in_sync() -> None:
    current = (ROOT / "docs" / "capabilities.md").read_text()
    assert current == capabilities.render(), "regenerate: python -m meshc.capabilities > docs/capabilities.md"
