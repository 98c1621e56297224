"""The grammar builds as LALR(1) with no conflicts, and every example parses."""

from __future__ import annotations

from importlib import resources

import pytest
from examples_index import all_mesh_files
from lark import Lark

from meshc.parse import grammar_text, parse_file


def test_grammar_is_conflict_free_lalr() -> None:
    text = resources.files("meshc.grammar").joinpath("mesh.lark").read_text()
    assert text == grammar_text()
    # strict=True turns shift/reduce conflicts and terminal collisions into errors
    Lark(text, parser="lalr", strict=True)


@pytest.mark.parametrize("path", all_mesh_files(), ids=lambda p: p.name)
def test_every_example_parses(path) -> None:
    parsed = parse_file(str(path), path.read_bytes())
    assert parsed.ast.decls


def test_keywords_stay_usable_as_names() -> None:
    from meshc.compiler import load_text

    mesh = load_text('mesh m {}\nservice version { port http 80 }\nservice route { port http 81 calls version }\n'
                     'allow route -> version\n', checks=False)
    assert [s.name for s in mesh.services] == ["route", "version"]
    assert mesh.rules[0].sources[0].name == "route"
