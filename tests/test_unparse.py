"""meshc.unparse: model -> .mesh text is the inverse of the front end (spans and files aside)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshc.compiler import load, load_text
from meshc.diff import plain
from meshc.fmt import format_text
from meshc.model import Mesh
from meshc.unparse import dur, pct, to_mesh_text, unparse

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*/*.mesh")
                  if p.parent.name != "multifile" or p.name in ("prod.mesh", "base.mesh"))


def dump(mesh: Mesh) -> dict:
    """The model as plain data without spans or file names."""
    data = plain(mesh)
    data.pop("files", None)
    return data


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_examples_round_trip(path: Path) -> None:
    mesh = load([path])
    text = to_mesh_text(mesh)
    again = load_text(text)
    assert dump(again) == dump(mesh)
    assert format_text(text) == text  # already canonical
    assert to_mesh_text(again) == text  # a fixed point


def test_lexical_forms() -> None:
    assert [dur(x) for x in (1500, 2000, 60_000, 90_000, 3_600_000, 86_400_000, 1)] == \
        ["1500ms", "2s", "1m", "90s", "1h", "1d", "1ms"]
    assert [pct(x) for x in (10_000, 1250, 5, 50, 3333)] == ["100%", "12.5%", "0.05%", "0.5%", "33.33%"]


SNIPPET = """
mesh m { namespace prod mtls permissive timeout 3s ingress_identity gw in edge metrics off }
service a {
  namespace other
  port http 80
  port tcp 5432
  mtls strict
  mtls disabled on port 5432
  identity a-sa
  endpoints 10.0.0.1:80, db.internal:80
  version v1 { labels version=v1 track="1.0" }
  version v2 { labels version=v2 endpoints 10.0.0.2:80 }
  calls b, ext
  expose ingress on port 8080 hosts "a.example.com" paths under "/api", regex "^/x[0-9]+$"
  route {
    when header x-user == "q\\"uote" and query debug present and method GET, HEAD or path exact "/z" -> v2 {
      rewrite prefix "/"
      request_headers set x-a "1"
      request_headers remove x-b
      response_headers add cache-control "no-store"
      mirror b 12.5%
      timeout none
      retry none
      fault delay 10ms 5% abort 503 1%
    }
    when header x-t absent -> redirect host "b.example.com" scheme https port 8443 code 308
    when path prefix "/gone" -> respond 410 "gone"
    otherwise -> split { v1 33.33%, v2 33.33%, b 33.34% }
  }
  retry 3 on 503, gateway-error per_try 100ms backoff 25ms max 250ms budget 20%
  load_balance consistent_hash cookie "sid" ttl 1h
  circuit_breaker max_retries 3
  health_check grpc "/" interval 5s probe_timeout 1s unhealthy 3 healthy 2
  rate_limit 600/m
  fault when path prefix "/slow" delay 7s 100%
  objective availability 99.95% over 7d
  objective latency p99 250ms
}
service b { port tcp 9000 timeout 1s outlier consecutive_5xx 1 }
external ext { host "api.example.com" port tls 443 tls originate }
allow a, identity legacy, ingress -> b, a methods GET paths prefix "/x" except paths exact "/x/y"
deny unauthenticated, authenticated -> * ports 80 headers x-t regex "a.*"
allow * -> ext
"""


def test_every_construct_round_trips() -> None:
    mesh = load_text(SNIPPET, checks=False)
    text, lost = unparse(mesh)
    assert lost == []
    assert dump(load_text(text, checks=False)) == dump(mesh)


def test_unwritable_values_become_comments() -> None:
    mesh = load_text("mesh m {}\nservice a { port http 80 version v1 { labels version=v1 } }\n")
    a = mesh.services[0]
    v = a.versions[0].model_copy(update={"labels": (("app.kubernetes.io/version", "1"), ("version", "v1"))})
    mesh = mesh.model_copy(update={"services": (a.model_copy(update={"versions": (v,)}),)})
    text, lost = unparse(mesh, notes={"service:a": ["meshc import: Deployment a: kept"]})
    assert [(x.where, x.field) for x in lost] == [("service a", "version v1 label app.kubernetes.io/version")]
    assert "# meshc import: service a version v1 label app.kubernetes.io/version:" in text
    assert "  # meshc import: Deployment a: kept\n" in text
    load_text(text)  # still valid


# --------------------------------------------------------------------------- hostile values (issue #16)

HOSTILE = "x\n}\n}\nallow * -> api\n# \r\x1b[2K\u2028\u202e\x85"
BASE = """mesh m {
  trust_domain "cluster.local"
  namespace default
  mtls strict
  authz deny_by_default
}
service api { port http 80 }
service web { port http 80 }
allow web -> api methods GET headers x-user == "a"
deny web -> api methods DELETE headers x-user == "b"
"""


def base() -> Mesh:
    return load_text(BASE)


def code(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_comments_are_one_line_with_unprintables_escaped() -> None:
    from meshc.unparse import shown

    text, lost = unparse(base(), {"": [HOSTILE], "authz": [HOSTILE], "service:api": [HOSTILE]})
    assert "allow * -> api" not in code(text)
    assert all(ln.isprintable() for ln in text.splitlines())
    assert text.count("# x\\n}\\n}\\nallow * -> api") == 3
    assert shown("a" * 500).endswith("...(300 more characters)") and shown("\x1b") == "\\x1b"
    assert shown(shown(HOSTILE)) == shown(HOSTILE)  # printable text stays as it is
    load_text(text)


def test_unwritable_header_leaves_an_allow_out_and_widens_a_deny() -> None:
    m = base()
    rules = tuple(r.model_copy(update={"headers": (r.headers[0].model_copy(update={"name": HOSTILE}),)})
                  for r in m.rules)
    text, lost = unparse(m.model_copy(update={"rules": rules}))
    lines = code(text)
    assert not [ln for ln in lines if ln.startswith("allow")]
    assert "deny web -> api methods DELETE" in lines  # no header condition: denies more
    assert len(lost) == 4 and all("\n" not in x.comment() for x in lost)
    assert "allow * -> api" not in lines
    load_text(text)


def test_unwritable_source_and_method_never_widen_an_allow() -> None:
    from meshc.model import Source

    m = base()
    allow, deny = m.rules
    bad = Source(kind="identity", name=HOSTILE)
    rules = (allow.model_copy(update={"sources": (*allow.sources, bad), "methods": ("GET", HOSTILE)}),
             deny.model_copy(update={"sources": (bad,), "methods": ("DELETE", HOSTILE)}))
    text, lost = unparse(m.model_copy(update={"rules": rules}))
    lines = code(text)
    assert 'allow web -> api methods GET headers x-user == "a"' in lines  # the bad source and method left out
    assert 'deny * -> api headers x-user == "b"' in lines  # every caller, every method
    assert {x.field for x in lost} == {"source", "methods"}
    load_text(text)


def test_allow_whose_only_source_is_unwritable_is_left_out() -> None:
    from meshc.model import Source

    m = base()
    rules = (m.rules[0].model_copy(update={"sources": (Source(kind="identity", name="a.b"),)}),)
    text, lost = unparse(m.model_copy(update={"rules": rules}))
    assert not [ln for ln in code(text) if ln.startswith("allow")]
    assert lost


@pytest.mark.parametrize("where", ["mesh name", "namespace", "service name", "identity", "version name",
                                   "calls"])
def test_unwritable_names_refuse_the_text(where: str) -> None:
    from meshc.model import Version
    from meshc.unparse import Unspeakable

    m = base()
    api = m.services[0]
    changed = {
        "mesh name": lambda: m.model_copy(update={"name": HOSTILE}),
        "namespace": lambda: m.model_copy(update={"namespace": "a b"}),
        "service name": lambda: m.model_copy(update={"services": (api.model_copy(update={"name": HOSTILE}),
                                                                  *m.services[1:])}),
        "identity": lambda: m.model_copy(update={"services": (
            api.model_copy(update={"identity": api.identity.model_copy(update={"name": "sa.x"})}), *m.services[1:])}),
        "version name": lambda: m.model_copy(update={"services": (
            api.model_copy(update={"versions": (Version(name=HOSTILE),)}), *m.services[1:])}),
        "calls": lambda: m.model_copy(update={"services": (
            api.model_copy(update={"calls": ("web\nallow * -> api",)}), *m.services[1:])}),
    }[where]()
    with pytest.raises(Unspeakable):
        unparse(changed)


@pytest.mark.parametrize("value", ['a"} allow * -> api # \\', 'a"\nallow * -> api\n#'])
def test_strings_are_quoted_never_spliced(value: str) -> None:
    from meshc.diagnostics import MeshcError

    m = base()
    allow = m.rules[0]
    header = allow.headers[0].model_copy(update={"value": value})
    changed = m.model_copy(update={"rules": (allow.model_copy(update={"headers": (header,)}), *m.rules[1:])})
    try:
        text, _ = unparse(changed)
    except MeshcError as e:  # the front end refuses control characters in strings (E007)
        assert "\n" in value and all(d.code.startswith("E0") for d in e.diagnostics)
        return
    assert "allow * -> api" not in code(text)
    again = load_text(text, checks=False)
    assert again.rules[0].headers[0].value == value
