"""meshc/_lalrc.c runs meshc.lalr's parse loop in C: each of its terminal matchers must match
exactly what the grammar's regex matches, and a parse must give what the Python loop gives
(tests/test_lalr.py compares the parser in use, this C loop, with lark itself)."""

from __future__ import annotations

import re
import sys
from functools import cache
from pathlib import Path

import pytest
from examples_index import all_mesh_files
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import SOURCES, mutate
from test_lalr import dump, tokens

from meshc import lalr
from meshc.ast import Builder
from meshc.diagnostics import Sink
from meshc.lalr import LeanParser
from meshc.parse import lean_parser, parser

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from meshgen import generate  # noqa: E402

_lalrc = pytest.importorskip("meshc._lalrc") if lalr._lalrc is None else lalr._lalrc


def test_the_parser_in_use_runs_the_c_loop() -> None:
    """CI builds the extension (gcc is there): if it silently stopped building or stopped
    accepting this grammar's terminals, every parse would quietly be 4x slower."""
    assert lalr._lalrc is not None, "meshc._lalrc is not built"
    assert lean_parser().c_tables is not None, "the grammar has a terminal meshc/_lalrc.c cannot match"


@cache
def python_loop() -> LeanParser:
    lean = LeanParser(parser())
    lean.c_tables = None
    return lean


# ---------------------------------------------------------------------------------- matchers
# Strings over the characters the grammar's regexes care about, to hit their edges.
CHARS = "0123456789.:%/-_[]\"\\\n #\taAbBfFGiKMmshdxyzé€𝄞"
texts = st.text(alphabet=CHARS, max_size=14)


@pytest.mark.parametrize("regex, kind", sorted(lalr._C_MATCHERS.items()))
@given(text=texts, data=st.data())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_matcher_equals_its_regex(regex: str, kind: str, text: str, data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(pos, len(text)))
    m = re.compile(regex).match(text, pos, end)
    assert _lalrc.match(getattr(_lalrc, kind), None, text, pos, end) == (m.end() if m else -1)


@pytest.mark.parametrize("regex, kind", sorted(lalr._C_MATCHERS.items()))
@pytest.mark.parametrize("text", [
    "a", "a-", "a--b-", "_-_", "-a", "9a", '""', '"a\\"b"', '"a\\\nb"', '"a\nb"', '"\\', '"abc',
    "[::1]:80", "[]:80", "[::1]80", "a.b-c:8080", "a:", ":80", "1.5s", "1.s", "1.5", "10ms", "10msx",
    "10m_", "5m5", "3d", "2.25%", "2.%", "100/s", "100/sx", "100/", "5xx", "6xx", "5xxx", "5x", "007",
    "1.5ms:", "é", "𝄞1", "2B", "10KB", "10Kb", "1.5MiB", "1GiBx", "3GB_", "1.B", "7 MB",
])
def test_matcher_on_edge_cases(regex: str, kind: str, text: str) -> None:
    m = re.compile(regex).match(text)
    assert _lalrc.match(getattr(_lalrc, kind), None, text, 0, len(text)) == (m.end() if m else -1)


def test_word_choice_terminal_is_tried_word_by_word() -> None:
    """`AUTHZ_ACTION: "allow" | "deny"` is the regex `(?:allow|deny)`: a literal per word."""
    t = next(t for t in parser().terminals if t.name == "AUTHZ_ACTION")
    assert lalr._c_alternatives(t, 7) == [(_lalrc.LITERAL, 7, "allow"), (_lalrc.LITERAL, 7, "deny")]


def test_unknown_terminal_keeps_the_python_loop() -> None:
    from lark import Lark

    grammar = 'start: WORD+\nWORD: /[a-z]+!/\n%ignore " "\n'
    lean = LeanParser(Lark(grammar, parser="lalr", keep_all_tokens=True))
    assert lean.c_tables is None and lean.parse("ab! c!") is not None


# ---------------------------------------------------------------------------------- whole parses
def same(text: str, start: int = 0, end: int | None = None) -> None:
    """The C loop and the Python loop give equal trees and tokens, and equal ASTs (spans and
    literal diagnostics included), or both reject the text."""
    c, py = lean_parser(), python_loop()
    tree = c.parse(text, start=start, end=end)
    assert (tree is None) == (py.parse(text, start=start, end=end) is None)
    if tree is not None:
        want = py.parse(text, start=start, end=end)
        assert tree == want and tokens(tree) == tokens(want)
    sinks = Sink(), Sink()
    built = [lean.parse(text, lean.callbacks_for(Builder("x.mesh", sink)), start=start, end=end)
             for lean, sink in zip((c, py), sinks, strict=True)]
    assert dump(built[0]) == dump(built[1])
    assert [(d.code, d.span) for d in sinks[0].items] == [(d.code, d.span) for d in sinks[1].items]


@pytest.mark.parametrize("path", all_mesh_files(), ids=lambda p: p.name)
def test_examples(path: Path) -> None:
    same(path.read_text())


def test_generated_mesh_and_slices() -> None:
    text = generate(60)
    same(text)
    same(text.replace("\n", "\r\n"))
    cut = text.index("\nservice ", len(text) // 2) + 1
    same(text, start=cut)  # positions and lines stay those of the whole text
    same(text, end=cut)


@given(src=st.sampled_from(SOURCES), data=st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutations(src: str, data: st.DataObject) -> None:
    same(mutate(src, data))


@given(text=st.text(alphabet=CHARS + "{}=,*>!()", max_size=60))
@settings(max_examples=300, deadline=None)
def test_random_text(text: str) -> None:
    same(text)
    same("service a {\n  port http " + text + "\n}\n")


def test_callback_errors_propagate() -> None:
    def boom(children: list[object]) -> object:
        raise ValueError("from a callback")

    with pytest.raises(ValueError, match="from a callback"):
        lean_parser().parse("service a {\n}\n", [boom] * len(lean_parser().rules))


@pytest.mark.parametrize("text", [p.read_text() for p in all_mesh_files()] + [generate(40)],
                         ids=[p.name for p in all_mesh_files()] + ["generated"])
def test_builder_helpers_in_c_equal_the_python_ones(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """meshc/_lalrc.c's `kids` and `span` (what the Builder calls per reduction) build the
    same AST, spans included, as meshc.ast's Python versions."""
    import meshc.ast as A

    def build() -> object:
        sink = Sink()
        ast = lean_parser().parse(text, lean_parser().callbacks_for(Builder("x.mesh", sink)))
        return dump(ast), [(d.code, d.span) for d in sink.items]

    assert A._kids is _lalrc.kids and A._span is _lalrc.span
    in_c = build()
    monkeypatch.setattr(A, "_kids", A._py_kids)
    monkeypatch.setattr(A, "_span", A._py_span)
    assert build() == in_c


def test_span_and_kids_on_edge_shapes() -> None:
    """Nested Parts, AST nodes with spans and tokens without positions (None becomes 0)."""
    from lark import Token

    import meshc.ast as A

    tok = Token("NAME", "a", start_pos=0, line=2, column=3, end_line=2, end_column=4)
    kw = Token("LBRACE", "{", start_pos=0, line=1, column=1, end_line=1, end_column=2)
    bare = Token("NAME", "b")  # lark leaves positions None
    name = A.Name("n", A.Span("f", 7, 8, 9, 10))
    part = A.Part("p", [], [A.Part("q", [], [kw, tok], "f"), name], "f")
    for children in ([kw, tok], [part], [name, part, tok], [bare], [tok, bare], [part, kw]):
        assert _lalrc.span(children, "x") == A._py_span(children, "x")
        assert type(_lalrc.span(children, "x")) is A.Span
        assert _lalrc.kids(children) == A._py_kids(children)

