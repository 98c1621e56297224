"""meshc.lalr drives lark's tables: it must accept exactly what lark accepts and build an
equal tree with equal token positions (the AST's spans and `fmt` depend on them)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from examples_index import all_mesh_files
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


# --------------------------------------------------------------------------- two parts at once
# A large file is parsed in two parts, the second in a forked child (meshc.parse). The result
# must be the one-part parse, spans and diagnostics included, whatever the text.

def _both(head: str, tail: str, monkeypatch: pytest.MonkeyPatch) -> tuple[object, object, list[bool]]:
    """(one-part result, two-part result, [whether the two-part parse was used]) for head +
    tail, with the split searched from where tail starts."""
    import meshc.parse as P

    text = head + tail
    monkeypatch.setattr(P, "PARALLEL_BYTES", 1000)
    monkeypatch.setattr(P, "CHILD_SHARE", (len(tail) + 0.5) / len(text))
    used: list[bool] = []
    real = P._parse_in_two
    monkeypatch.setattr(P, "_parse_in_two", lambda *a: used.append(real(*a) is not None) or real(*a))

    def parse(parallel: bool) -> object:
        monkeypatch.setattr(P.parallel, "idle_core", lambda: parallel)  # whatever the machine's load
        try:
            return dump(P.parse_text(text, "big.mesh", keep_tree=False).ast)
        except P.MeshcError as e:
            return [(d.code, d.message, d.span) for d in e.diagnostics]
    return parse(False), parse(True), used


HEAD = generate(40)
TAIL = generate(40).split("\n", 7)[7].replace("svc-", "b-")  # services and rules, no mesh block


def test_two_parts_give_the_one_part_ast(monkeypatch: pytest.MonkeyPatch) -> None:
    serial, parallel, used = _both(HEAD, TAIL, monkeypatch)
    assert used == [True] and isinstance(serial, tuple) and serial == parallel


@pytest.mark.parametrize("case, split", [
    # a `}` at column 1 that closes a nested block, right where the split is searched from
    ("service zz {\n  route {\n    otherwise -> v1\n}\n  port http 1\n}\n", False),
    # a syntax error in the child's part
    ("service ??? {\n}\n", False),
    # names that are top-level keywords right after the split (it follows `service allow`'s `}`)
    ("service allow {\n  port http 9\n}\nallow allow -> deny\nservice deny {\n  port http 8\n}\n", True),
])
def test_two_parts_fall_back_or_agree(case: str, split: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    serial, parallel, used = _both(HEAD, case + TAIL, monkeypatch)
    assert used == [split] and serial == parallel


def test_two_parts_report_literal_errors_in_file_order(monkeypatch: pytest.MonkeyPatch) -> None:
    head = HEAD.replace("timeout 10s", "timeout 1.0005s", 1)
    tail = TAIL.replace("80%", "180%", 1)
    serial, parallel, used = _both(head, tail, monkeypatch)
    assert used == [True] and serial == parallel
    assert [code for code, *_ in serial] == ["E006", "E006"]  # type: ignore[union-attr]
