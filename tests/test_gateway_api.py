"""Gateway API (GAMMA) backend: lowering decisions, order preservation, schema validity, E301."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from meshc.backends import compile_mesh
from meshc.backends.gateway_api import GatewayApiBackend, preserve_order, rank
from meshc.backends.k8s import Gaps

from meshc.compiler import load, load_text
from meshc.diagnostics import MeshcError
from meshc.model import Match, PathMatch, StringMatch
from meshc.validate import BUNDLED_SCHEMAS, validate_bundle

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = BUNDLED_SCHEMAS
sys.path.insert(0, str(Path(__file__).parent))
from examples_index import example_roots  # noqa: E402

MESH = "mesh m { authz allow_by_default }\n"
SVC = """service a {
  port http 8080
  version v1 { labels version=v1 }
  version v2 { labels version=v2 }
  %s
}
"""


def objects(src: str, **options: str) -> list[dict[str, Any]]:
    bundle = compile_mesh(load_text(MESH + src), "gateway-api", options=options)
    probs = validate_bundle(bundle, SCHEMAS, target="gateway-api", experimental="experimental" in options)
    assert [str(p) for p in probs] == []
    return [d for f in sorted(bundle.files) for d in yaml.safe_load_all(bundle.files[f]) if d]


def get(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def rules(src: str, svc: str = "a", **options: str) -> list[dict[str, Any]]:
    return get(objects(src, **options), "HTTPRoute", svc)["spec"]["rules"]  # type: ignore[no-any-return]


def errors(src: str, **options: str) -> list[str]:
    with pytest.raises(MeshcError) as e:
        compile_mesh(load_text(MESH + src), "gateway-api", options=options)
    return [d.message for d in e.value.diagnostics]


@pytest.mark.parametrize("channel", ["standard", "experimental"])
@pytest.mark.parametrize("example", sorted(example_roots()))
def test_every_example_validates_strictly(example: str, channel: str) -> None:
    opts = {"experimental": "true"} if channel == "experimental" else {}
    bundle = compile_mesh(load([example_roots()[example]]), "gateway-api", unsupported="warn", options=opts)
    assert [str(p) for p in validate_bundle(bundle, SCHEMAS, target="gateway-api",
                                            experimental=bool(opts))] == []


def test_parent_is_the_service_and_versions_are_services() -> None:
    objs = objects(SVC % "route { otherwise -> split { v1 90%, v2 10% } }")
    route = get(objs, "HTTPRoute", "a")["spec"]
    assert route["parentRefs"] == [{"group": "", "kind": "Service", "name": "a"}]
    assert route["rules"][0]["backendRefs"] == [
        {"group": "", "kind": "Service", "name": "a-v1", "port": 8080, "weight": 90},
        {"group": "", "kind": "Service", "name": "a-v2", "port": 8080, "weight": 10}]
    v2 = get(objs, "Service", "a-v2")["spec"]
    assert v2["selector"] == {"app": "a", "version": "v2"}


def test_first_match_order_is_kept_against_specificity() -> None:
    # Gateway API would send GET /api/x with x-beta to the `under` rule (longer prefix);
    # meshc sends it to the header rule, which is first
    got = rules(SVC % 'route {\n when header x-beta == "1" -> v2\n when path under "/api" -> v1\n otherwise -> v1 }')
    assert got[0]["matches"] == [
        {"headers": [{"name": "x-beta", "type": "Exact", "value": "1"}]},
        {"path": {"type": "PathPrefix", "value": "/api"}, "headers": [{"name": "x-beta", "type": "Exact", "value": "1"}]}]
    assert got[1]["matches"] == [{"path": {"type": "PathPrefix", "value": "/api"}}]
    assert "matches" not in got[2]


def test_preserve_order_unit() -> None:
    gaps = Gaps("gateway-api")
    beta = Match(path=PathMatch(kind="under", value="/beta"))
    jason = Match(headers=(StringMatch(name="end-user", kind="exact", value="jason"),))
    out = preserve_order([(jason,), (beta,), ()], gaps, [None, None, None])
    assert len(out[0]) == 2 and out[0][1].path == beta.path and out[0][1].headers == jason.headers
    assert out[1] == [beta] and gaps.items == []
    # already more specific: nothing to add
    exact = Match(path=PathMatch(kind="exact", value="/beta/x"))
    assert preserve_order([(exact,), (beta,)], gaps, [None, None]) == [[exact], [beta]]
    assert rank(exact) > rank(beta)  # type: ignore[operator]
    # the same regex on both sides ranks by the other conditions
    rx = Match(path=PathMatch(kind="regex", value="/b.*"))
    assert len(preserve_order([(jason,), (rx,)], gaps, [None, None])[0]) == 2 and gaps.items == []
    # regex against a prefix: precedence is implementation-specific, reported
    preserve_order([(rx,), (beta,)], gaps, [None, None])
    assert [d.code for d in gaps.items] == ["E301"]


def test_matches_filters_and_methods() -> None:
    got = rules(SVC % ('route {\n when path exact "/x" and method GET, POST and query q regex "[0-9]+" -> v2 {\n'
                       ' request_headers set x-a "1"\n response_headers remove x-b\n mirror v1 12.5%\n }\n'
                       ' when header x-h prefix "ab" and header x-p present -> v1\n otherwise -> v1 }'))
    assert got[0]["matches"] == [
        {"path": {"type": "Exact", "value": "/x"}, "queryParams": [{"name": "q", "type": "RegularExpression",
                                                                    "value": "^(?:[0-9]+)$"}], "method": "GET"},
        {"path": {"type": "Exact", "value": "/x"}, "queryParams": [{"name": "q", "type": "RegularExpression",
                                                                    "value": "^(?:[0-9]+)$"}], "method": "POST"}]
    assert got[0]["filters"] == [
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}]}},
        {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"remove": ["x-b"]}},
        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "a-v1", "port": 8080},
                                                    "fraction": {"numerator": 1250, "denominator": 10000}}}]
    assert got[1]["matches"][0]["headers"] == [
        {"name": "x-h", "type": "RegularExpression", "value": "^ab.*$"},
        {"name": "x-p", "type": "RegularExpression", "value": "^.*$"}]


def test_rewrites_and_redirects() -> None:
    got = rules(SVC % ('route {\n when path under "/api" -> v2 { rewrite prefix "/" }\n'
                       ' when path exact "/old" -> redirect path "/new" code 308\n'
                       ' otherwise -> v1 { rewrite path "/index" }\n}'))
    assert got[0]["filters"] == [{"type": "URLRewrite", "urlRewrite": {"path": {
        "type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}]
    assert got[1]["filters"] == [{"type": "RequestRedirect", "requestRedirect": {
        "statusCode": 308, "path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}}}]
    assert "backendRefs" not in got[1]
    assert got[2]["filters"] == [{"type": "URLRewrite", "urlRewrite": {"path": {
        "type": "ReplaceFullPath", "replaceFullPath": "/index"}}}]


def test_timeouts_are_explicit() -> None:
    got = rules(SVC % 'route {\n when path exact "/slow" -> v1 { timeout 30s }\n otherwise -> v1 }\n timeout none')
    assert got[0]["timeouts"] == {"request": "30s"}
    assert got[1]["timeouts"] == {"request": "0s"}  # the spec's "disabled", never the implementation default


def test_retries_only_on_the_experimental_channel() -> None:
    src = SVC % "route { otherwise -> v1 }\n retry 2 on gateway-error, 429 per_try 500ms backoff 100ms"
    assert any("retries are not supported" in m for m in errors(src))
    got = rules(src, experimental="true")
    assert got[0]["retry"] == {"attempts": 2, "codes": [429, 502, 503, 504], "backoff": "100ms"}
    assert got[0]["timeouts"] == {"request": "0s", "backendRequest": "500ms"}
    five = rules(SVC % "route { otherwise -> v1 }\n retry 1 on 5xx", experimental="true")
    assert five[0]["retry"]["codes"] == list(range(500, 600))


def test_grpc_and_tcp_routes() -> None:
    objs = objects('service g { port grpc 9090 route {\n when path exact "/pkg.Svc/Get" -> g\n'
                   ' when path under "/pkg.Admin" -> g\n otherwise -> g } }\n'
                   "service db { port tcp 5432 version a { labels v=a } version b { labels v=b }\n"
                   " route { otherwise -> split { a 50%, b 50% } } }")
    grpc = get(objs, "GRPCRoute", "g")["spec"]["rules"]
    assert grpc[0]["matches"] == [{"method": {"type": "Exact", "service": "pkg.Svc", "method": "Get"}}]
    assert grpc[1]["matches"] == [{"method": {"type": "Exact", "service": "pkg.Admin"}}]
    tcp = get(objs, "TCPRoute", "db")["spec"]["rules"]
    assert [r["name"] for r in tcp[0]["backendRefs"]] == ["db-a", "db-b"]


def test_ingress_gateway() -> None:
    objs = objects('service web { port http 8080 expose ingress on port 80 hosts "shop.example" paths under "/app" }',
                   gateway_class="eg")
    gw = get(objs, "Gateway", "m-gateway")["spec"]
    assert gw["gatewayClassName"] == "eg"
    assert gw["listeners"] == [{"name": "http-80-0", "port": 80, "protocol": "HTTP", "hostname": "shop.example",
                                "allowedRoutes": {"namespaces": {"from": "All"}}}]
    route = get(objs, "HTTPRoute", "web-ingress")["spec"]
    assert route["hostnames"] == ["shop.example"]
    assert route["rules"] == [{"backendRefs": [{"group": "", "kind": "Service", "name": "web", "port": 8080}],
                               "matches": [{"path": {"type": "PathPrefix", "value": "/app"}}],
                               "timeouts": {"request": "0s"}}]


@pytest.mark.parametrize("src, needle", [
    (SVC % 'route { when path prefix "/api" -> v2\n otherwise -> v1 }', "byte-prefix path matches"),
    (SVC % 'route { when header x absent -> v2\n otherwise -> v1 }', "header-absent matches"),
    (SVC % 'route { when path exact "/x" -> respond 404 ""\n otherwise -> v1 }', "direct responses"),
    (SVC % "load_balance random", "random load balancing"),
    (SVC % "fault abort 503 10%", "fault injection (abort)"),
    ("service a { port http 80 }\nservice b { port http 80 }\nallow a -> b", "allow rules"),
    ("service a { port http 80 }\nservice b { port http 80 }\nallow a -> b", "identity-based authorization"),
    (SVC % 'route { when path regex "/r.*" -> v2\n when path under "/r" -> v1\n otherwise -> v1 }', "rule order"),
])
def test_unsupported_constructs_are_e301(src: str, needle: str) -> None:
    errs = errors(src)
    assert any(needle in m for m in errs), errs


def test_warn_mode_drops_whole_rule_not_its_condition() -> None:
    bundle = compile_mesh(load_text(MESH + SVC % 'route { when path prefix "/api" -> v2\n otherwise -> v1 }'),
                          "gateway-api", unsupported="warn")
    route = [d for d in yaml.safe_load_all(bundle.files["default.yaml"]) if d["kind"] == "HTTPRoute"][0]
    assert [r["backendRefs"][0]["name"] for r in route["spec"]["rules"]] == ["a-v1"]
    assert "W301" in {d.code for d in bundle.diagnostics}


def test_deny_by_default_posture_is_a_warning() -> None:
    bundle = compile_mesh(load_text("mesh m { authz deny_by_default }\nservice a { port http 80 }"), "gateway-api")
    assert [d.code for d in bundle.diagnostics] == ["W320"]


def test_capabilities() -> None:
    assert "authz.identity" not in GatewayApiBackend.CAPABILITIES
    assert "retry" not in GatewayApiBackend.CAPABILITIES
    assert "retry" in GatewayApiBackend({"experimental": "true"}).CAPABILITIES


def test_more_headers_later_do_not_steal_earlier_requests() -> None:
    got = rules(SVC % 'route {\n when header a == "1" -> v2\n when header b == "2" and header c == "3" -> v1\n otherwise -> v1 }')
    assert [[h["name"] for h in m["headers"]] for m in got[0]["matches"]] == [["a"], ["a", "b", "c"]]


def test_version_service_names_must_fit_and_not_collide() -> None:
    long = "s" * 40
    errs = errors(f"service {long} {{ port http 80 version {'v' * 30} {{ labels v=x }} }}")
    assert any("longer than 63" in m for m in errs)
    errs = errors("service a { port http 80 version v1 { labels version=v1 } }\nservice a-v1 { port http 80 }")
    assert any("collides" in m for m in errs)


def test_grpc_first_match_order_is_kept() -> None:
    objs = objects('service g { port grpc 9090 version a { labels v=a } version b { labels v=b }\n'
                   ' route {\n when header x-canary == "1" -> b\n when path exact "/pkg.Svc/Get" -> a\n otherwise -> a } }')
    rules = get(objs, "GRPCRoute", "g")["spec"]["rules"]
    assert rules[0]["matches"] == [
        {"headers": [{"name": "x-canary", "type": "Exact", "value": "1"}]},
        {"method": {"type": "Exact", "service": "pkg.Svc", "method": "Get"},
         "headers": [{"name": "x-canary", "type": "Exact", "value": "1"}]}]


def test_non_strict_mtls_is_a_warning_not_silence() -> None:
    from meshc.backends import compile_mesh

    from meshc.compiler import load_text

    text = "mesh m {\n  authz allow_by_default\n}\nservice a {\n  port http 80\n  mtls %s\n}\n"
    warned = compile_mesh(load_text(text % "permissive", checks=False), "gateway-api").diagnostics
    assert [(d.code, d.span.line) for d in warned] == [("W320", 5)]
    assert compile_mesh(load_text(text % "strict", checks=False), "gateway-api").diagnostics == []
