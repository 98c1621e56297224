"""`meshc fmt`: canonical, idempotent, meaning-preserving, comment-keeping.

Properties checked with hypothesis on re-laid-out examples and on generated programs:
fmt(fmt(x)) == fmt(x) and parse(fmt(x)) == parse(x) (AST equality ignores spans).
"""

from __future__ import annotations

import re

import pytest
from examples_index import all_mesh_files
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshc.fmt import format_text
from meshc.parse import parse_text

EXAMPLES = {p.name: p.read_text() for p in all_mesh_files()}
TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|\S+')


def ast_of(text: str):
    return parse_text(text, "x.mesh").ast.decls


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples_are_canonical(name: str) -> None:
    assert format_text(EXAMPLES[name], name) == EXAMPLES[name]


def test_layout_is_normalised_and_comments_kept() -> None:
    messy = ('# head\nmesh   m{mtls strict   # why\n}\nservice a{port http 80 version v1{labels version=v1}\n'
             '  route{when header x=="1"->v1 {timeout 1s}\n otherwise->split{v1 50%,a.v1 50%,}}}\n\n\n'
             'allow a->a methods GET,POST # trailing\n')
    out = format_text(messy)
    assert out == (
        "# head\nmesh m {\n  mtls strict  # why\n}\n\nservice a {\n  port http 80\n"
        "  version v1 { labels version=v1 }\n  route {\n    when header x == \"1\" -> v1 {\n      timeout 1s\n"
        "    }\n    otherwise -> split { v1 50%, a.v1 50% }\n  }\n}\n\nallow a -> a methods GET, POST  # trailing\n")
    assert format_text(out) == out
    assert ast_of(out) == ast_of(messy)


def relayout(text: str, data: st.DataObject) -> str:
    """The same tokens with random whitespace between them and comments at line ends."""
    out = []
    for m in TOKEN.finditer(text):
        tok = m.group()
        if tok.startswith("#"):
            out.append(tok + "\n")
            continue
        out.append(tok)
        sep = data.draw(st.sampled_from([" ", "  ", "\n", "\n\n", "\t", " \n  ", " # note\n"]))
        out.append(sep)
    return "".join(out)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(sorted(EXAMPLES)))
def test_fmt_round_trip_on_relaid_examples(data: st.DataObject, name: str) -> None:
    messy = relayout(EXAMPLES[name], data)
    once = format_text(messy)
    assert format_text(once) == once
    assert ast_of(once) == ast_of(messy)
    # every comment survives
    assert sorted(re.findall(r"#[^\n]*", once)) == sorted(c.rstrip() for c in re.findall(r"#[^\n]*", messy))


NAMES = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
STRINGS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=8)


@st.composite
def programs(draw: st.DrawFn) -> str:
    """Small random programs over most statement forms (not necessarily meaningful)."""
    from meshc.ast import quote

    lines = ["mesh m {", f"  trust_domain {quote(draw(STRINGS))}", "}"]
    for i in range(draw(st.integers(1, 4))):
        svc = f"s{i}"
        body = [f"port {draw(st.sampled_from(['http', 'grpc', 'tcp']))} {draw(st.integers(1, 65535))}"]
        for v in range(draw(st.integers(0, 2))):
            body.append(f"version v{v} {{ labels version=v{v} endpoints 127.0.0.1:{draw(st.integers(1, 65535))} }}")
        body += draw(st.lists(st.sampled_from([
            "timeout 2s", "timeout none", "retry 2 on 5xx, 503 per_try 100ms", "retry none",
            "load_balance least_request", 'load_balance consistent_hash cookie "sid" ttl 1h',
            "circuit_breaker max_connections 1 max_pending 2", "rate_limit 10/s burst 2",
            'fault when header x present delay 1s 5% abort 503 1.5%', "objective availability 99.9% over 30d",
            f"calls {draw(NAMES)}", 'expose ingress on port 80 paths exact "/a", under "/b"',
        ]), max_size=5, unique=True))
        rules = []
        for _ in range(draw(st.integers(0, 3))):
            cond = draw(st.sampled_from(['path prefix "/x"', "header h present", "method GET, POST",
                                         f'query q == {quote(draw(STRINGS))}', 'path regex "^/a"']))
            rules.append(f"when {cond} -> {draw(NAMES)}")
        if rules:
            rules.append(f"otherwise -> split {{ {draw(NAMES)} 50%, {draw(NAMES)} 50% }}")
            body.append("route {\n" + "\n".join(rules) + "\n}")
        lines.append(f"service {svc} {{\n" + "\n".join(body) + "\n}")
    lines.append(f"allow {draw(NAMES)} -> {draw(NAMES)} methods GET paths prefix {quote('/' + draw(STRINGS))}")
    return "\n".join(lines) + "\n"


@settings(max_examples=50, deadline=None)
@given(programs())
def test_fmt_round_trip_on_generated_programs(text: str) -> None:
    once = format_text(text)
    assert format_text(once) == once
    assert ast_of(once) == ast_of(text)
