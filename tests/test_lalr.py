"""meshc.lalr drives lark's tables: it must accept exactly what lark accepts and build an
equal tree with equal token positions (the AST's spans and `fmt` depend on them)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from examples_index import ROOT, all_mesh_files
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lark import Token, Tree
from lark.exceptions import UnexpectedInput
from mutations import SOURCES, mutate

from meshc.ast import Builder
from meshc.diagnostics import Sink
from meshc.model import Span
from meshc.parse import lean_parser, parser

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from meshgen import generate  # noqa: E402

DIAGNOSTICS = sorted((Path(__file__).parent / "diagnostics").glob("*.mesh"))


def tokens(tree: Tree) -> list[tuple]:
    return [(t.type, str(t), t.line, t.column, t.end_line, t.end_column, t.start_pos, t.end_pos)
            for t in tree.scan_values(lambda v: isinstance(v, Token))]


def dump(x: object) -> object:
    """An AST with its spans (AST equality ignores them)."""
    if dataclasses.is_dataclass(x):
        return (type(x).__name__, *((f.name, dump(getattr(x, f.name))) for f in dataclasses.fields(x)))
    if isinstance(x, (tuple, list)):
        return tuple(dump(i) for i in x)
    if isinstance(x, Span):
        return (x.file, x.line, x.column, x.end_line, x.end_column)
    return x


def agree(text: str) -> bool:
    """Both parse to equal trees and tokens, or both reject; the AST built while parsing equals
    the one built from lark's tree, spans included. Returns whether it parsed."""
    lean = lean_parser().parse(text)
    try:
        want = parser().parse(text)
    except UnexpectedInput:
        assert lean is None, "lark rejects what the lean parser accepted"
        return False
    assert lean is not None, "the lean parser rejects what lark accepts"
    assert lean == want
    assert tokens(lean) == tokens(want)
    built = lean_parser().parse(text, lean_parser().callbacks_for(Builder("x.mesh", Sink())))
    assert dump(built) == dump(Builder("x.mesh", Sink()).transform(want))
    return True


@pytest.mark.parametrize("path", all_mesh_files() + DIAGNOSTICS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_examples_and_diagnostics_corpus(path: Path) -> None:
    agree(path.read_bytes().decode("utf-8", "replace"))


def test_generated_mesh_and_layouts() -> None:
    text = generate(30)
    assert agree(text)
    # every token on its own line, CRLF line ends, comments and tabs between tokens
    assert agree(text.replace(" ", "\n"))
    assert agree(text.replace("\n", "\r\n"))
    assert agree(text.replace("{\n", "{ # a comment\n\t"))
    assert not agree(text + "service {")


def test_keywords_are_names_where_no_keyword_fits() -> None:
    assert agree("service version {\n  port http 80\n  version route { labels version=v1 }\n}\n")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SOURCES), st.data())
def test_mutations_agree(src: str, data: st.DataObject) -> None:
    agree(mutate(src, data))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('service mesh{}"#\n 0123456789%:.-_abxyz=*,')), max_size=120))
def test_random_text_agrees(text: str) -> None:
    agree(text)


def test_a_lean_parser_that_cannot_start_falls_back_to_lark(monkeypatch, capsys) -> None:
    # meshc.lalr reads lark internals; a lark release that moved them must not break parsing.
    import meshc.parse as P
    from meshc.compiler import load_text
    from meshc.diagnostics import MeshcError

    text = (ROOT / "examples" / "bookinfo" / "bookinfo.mesh").read_text()
    expected = load_text(text, "bookinfo.mesh")

    def broken(*_: object) -> None:
        raise AttributeError("'LALR_Parser' object has no attribute 'parser' (simulated lark change)")

    monkeypatch.setattr(P, "LeanParser", broken)
    P.lean_parser.cache_clear()
    try:
        assert isinstance(P.lean_parser(), P.LarkParser)
        assert "the fast parser could not start" in capsys.readouterr().err
        assert load_text(text, "bookinfo.mesh") == expected
        with pytest.raises(MeshcError) as e:
            load_text(text.replace("mesh bookinfo {", "mesh bookinfo {{"), "bookinfo.mesh")
        assert e.value.diagnostics[0].code.startswith("E00")
    finally:
        P.lean_parser.cache_clear()
