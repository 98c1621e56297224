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
