"""The pipeline's file handling: a directory is read once per file."""

from __future__ import annotations

from pathlib import Path

import pytest
from examples_index import ROOT

import meshc.compiler as compiler


def test_a_directory_parses_each_file_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """expand_paths parses every file to find the roots; the load reuses those results."""
    monkeypatch.chdir(ROOT)
    calls: list[str] = []
    real = compiler.parse_file

    def counting(name: str, data: bytes):  # type: ignore[no-untyped-def]
        calls.append(name)
        return real(name, data)

    monkeypatch.setattr(compiler, "parse_file", counting)
    directory = Path("examples/multifile")
    loaded = compiler.load_all(compiler.expand_paths([directory]))
    assert sorted(calls) == sorted(str(p) for p in directory.glob("*.mesh"))
    assert {Path(p.path).name for p in loaded.parsed} == {"prod.mesh", "base.mesh", "common.mesh"}
    assert not compiler._parsed_by_expand  # nothing kept alive after the load
