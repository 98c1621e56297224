"""Linkerd backend: Servers, routes, authorization, annotations, options, schema validity, E301."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from meshc.backends import compile_mesh
from meshc.backends.linkerd import LinkerdBackend

from meshc.compiler import load, load_text
from meshc.diagnostics import MeshcError
from meshc.validate import BUNDLED_SCHEMAS, validate_bundle

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = BUNDLED_SCHEMAS
sys.path.insert(0, str(Path(__file__).parent))
from examples_index import example_roots  # noqa: E402

MESH = "mesh m { authz deny_by_default }\n"
SVC = """service a {
  port http 8080
  version v1 { labels version=v1 }
  version v2 { labels version=v2 }
  %s
}
"""
OPTION_SETS = [{}, {"gateway_api_routes": "true"}, {"legacy_service_profile": "true"}]


def objects(src: str, mesh: str = MESH, **options: str) -> list[dict[str, Any]]:
    bundle = compile_mesh(load_text(mesh + src), "linkerd", options=options)
    assert [str(p) for p in validate_bundle(bundle, SCHEMAS, target="linkerd")] == []
    return [d for f in sorted(bundle.files) for d in yaml.safe_load_all(bundle.files[f]) if d]


def get(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert found, f"no {kind} {name}: {sorted((o['kind'], o['metadata']['name']) for o in objs)}"
    return found[0]


def kinds(objs: list[dict[str, Any]], kind: str) -> list[str]:
    return sorted(o["metadata"]["name"] for o in objs if o["kind"] == kind)


def errors(src: str, **options: str) -> list[str]:
    with pytest.raises(MeshcError) as e:
        compile_mesh(load_text(MESH + src), "linkerd", options=options)
    return [d.message for d in e.value.diagnostics]


@pytest.mark.parametrize("options", OPTION_SETS, ids=["policy", "gateway", "legacy"])
@pytest.mark.parametrize("example", sorted(example_roots()))
def test_every_example_validates_strictly(example: str, options: dict[str, str]) -> None:
    bundle = compile_mesh(load([example_roots()[example]]), "linkerd", unsupported="warn", options=options)
    assert [str(p) for p in validate_bundle(bundle, SCHEMAS, target="linkerd")] == []


def test_servers_and_default_policy() -> None:
    objs = objects("service a { port http 80 port grpc 9090 port tcp 5432 }")
    assert kinds(objs, "Server") == ["a-5432", "a-80", "a-9090"]
    s = get(objs, "Server", "a-80")["spec"]
    assert s == {"podSelector": {"matchLabels": {"app": "a"}}, "port": 80, "proxyProtocol": "HTTP/1",
                 "accessPolicy": "deny"}
    assert get(objs, "Server", "a-9090")["spec"]["proxyProtocol"] == "gRPC"
    assert get(objs, "Server", "a-5432")["spec"]["proxyProtocol"] == "opaque"
    ns = get(objs, "Namespace", "default")["metadata"]["annotations"]
    assert ns == {"linkerd.io/inject": "enabled", "config.linkerd.io/default-inbound-policy": "deny"}
    assert get(objs, "Service", "a")["metadata"]["annotations"] == {"config.linkerd.io/opaque-ports": "5432"}


def test_allow_by_default_policies_follow_mtls() -> None:
    objs = objects("service a { port http 80 port http 81\n mtls permissive on port 81 }",
                   mesh="mesh m { authz allow_by_default }\n")
    assert get(objs, "Server", "a-80")["spec"]["accessPolicy"] == "all-authenticated"
    assert get(objs, "Server", "a-81")["spec"]["accessPolicy"] == "all-unauthenticated"
    assert kinds(objs, "AuthorizationPolicy") == []


def test_http_route_splits_through_version_services() -> None:
    objs = objects(SVC % ('route {\n when header x-canary == "1" -> split { v1 50%, v2 50% }\n otherwise -> v1 }\n'
                          ' retry 2 on 5xx, 503 per_try 300ms\n timeout 2s'))
    route = get(objs, "HTTPRoute", "a")
    assert route["apiVersion"] == "policy.linkerd.io/v1beta3"
    assert route["metadata"]["annotations"] == {"retry.linkerd.io/limit": "2", "retry.linkerd.io/http": "5xx,503",
                                                "retry.linkerd.io/timeout": "300ms"}
    spec = route["spec"]
    assert spec["parentRefs"] == [{"group": "", "kind": "Service", "name": "a"}]
    assert [(b["name"], b.get("weight")) for b in spec["rules"][0]["backendRefs"]] == [("a-v1", 50), ("a-v2", 50)]
    assert spec["rules"][0]["timeouts"] == {"request": "2s"}
    assert get(objs, "Service", "a-v2")["spec"]["selector"] == {"app": "a", "version": "v2"}


def test_gateway_api_routes_option() -> None:
    objs = objects(SVC % 'route { otherwise -> v1 { response_headers set x-a "1" } }', gateway_api_routes="true")
    route = get(objs, "HTTPRoute", "a")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["rules"][0]["filters"] == [
        {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "x-a", "value": "1"}]}}]
    # the policy API has this filter on backendRefs only
    policy = get(objects(SVC % 'route { otherwise -> v1 { response_headers set x-a "1" } }'), "HTTPRoute", "a")
    assert "filters" not in policy["spec"]["rules"][0]
    assert policy["spec"]["rules"][0]["backendRefs"][0]["filters"][0]["type"] == "ResponseHeaderModifier"


def test_no_timeout_is_the_absent_field_and_service_annotations() -> None:
    objs = objects("service b { port http 80\n timeout 1500ms\n retry 1 on gateway-error\n"
                   " outlier consecutive_5xx 3 eject 45s }")
    assert not kinds(objs, "HTTPRoute")
    assert get(objs, "Service", "b")["metadata"]["annotations"] == {
        "timeout.linkerd.io/request": "1s500ms", "retry.linkerd.io/limit": "1", "retry.linkerd.io/http": "gateway-error",
        "balancer.linkerd.io/failure-accrual": "consecutive",
        "balancer.linkerd.io/failure-accrual-consecutive-max-failures": "3",
        "balancer.linkerd.io/failure-accrual-consecutive-min-penalty": "45s",
        "balancer.linkerd.io/failure-accrual-consecutive-max-penalty": "45s"}
    route = get(objects(SVC % "route { otherwise -> v1 }\n timeout none"), "HTTPRoute", "a")
    assert "timeouts" not in route["spec"]["rules"][0]


def test_authorization_objects() -> None:
    objs = objects("service a { port http 80 identity acct }\nservice b { port http 80 }\n"
                   "service c { port http 80 mtls permissive }\n"
                   "allow a -> b\nallow authenticated -> b ports 80\nallow * -> c\nallow ingress -> a")
    mtls = get(objs, "MeshTLSAuthentication", "b-allow-0")["spec"]
    assert mtls == {"identityRefs": [{"kind": "ServiceAccount", "name": "acct", "namespace": "default"}]}
    assert get(objs, "MeshTLSAuthentication", "b-allow-1")["spec"] == {"identities": ["*"]}
    assert get(objs, "NetworkAuthentication", "c-allow-2-any")["spec"] == {
        "networks": [{"cidr": "0.0.0.0/0"}, {"cidr": "::/0"}]}
    policy = get(objs, "AuthorizationPolicy", "b-allow-0-80-mtls")["spec"]
    assert policy == {"targetRef": {"group": "policy.linkerd.io", "kind": "Server", "name": "b-80"},
                      "requiredAuthenticationRefs": [{"group": "policy.linkerd.io", "kind": "MeshTLSAuthentication",
                                                      "name": "b-allow-0"}]}
    assert get(objs, "MeshTLSAuthentication", "a-allow-3")["spec"]["identityRefs"][0]["name"] == "ingress-gateway"


def test_l7_authorization_uses_inbound_routes_and_nested_rules() -> None:
    objs = objects("service a { port http 80 }\nservice b { port http 80 }\nservice c { port http 80 }\n"
                   'allow a -> c methods GET paths under "/api"\n'
                   'allow b -> c methods GET paths under "/api/public"')
    assert kinds(objs, "HTTPRoute") == ["c-allow-0", "c-allow-1", "c-inbound"]
    inner = get(objs, "HTTPRoute", "c-allow-1")["spec"]
    assert inner["parentRefs"] == [{"group": "policy.linkerd.io", "kind": "Server", "name": "c-80"}]
    assert inner["rules"] == [{"matches": [{"path": {"type": "PathPrefix", "value": "/api/public"}, "method": "GET"}]}]
    assert get(objs, "HTTPRoute", "c-inbound")["spec"]["rules"] == [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}]
    # /api/public is inside /api: a's rule is attached to b's (more specific) route too
    assert kinds(objs, "AuthorizationPolicy") == ["c-allow-0-from-0-mtls", "c-allow-1-from-0-mtls",
                                                  "c-allow-1-from-1-mtls"]


def test_partly_overlapping_l7_rules_are_e301() -> None:
    errs = errors("service a { port http 80 }\nservice b { port http 80 }\nservice c { port http 80 }\n"
                  'allow a -> c methods GET\nallow b -> c paths under "/x"')
    assert any("partly overlap" in m for m in errs)


def test_rate_limit() -> None:
    objs = objects("service a { port http 80 rate_limit 600/m }")
    assert get(objs, "HTTPLocalRateLimitPolicy", "a-80")["spec"] == {
        "targetRef": {"group": "policy.linkerd.io", "kind": "Server", "name": "a-80"},
        "total": {"requestsPerSecond": 10}}


def test_legacy_service_profile_replaces_routes() -> None:
    objs = objects("service a { port http 80\n route {\n when path prefix \"/api\" and method GET -> a\n"
                   " when path under \"/v1\" -> a { timeout 200ms }\n otherwise -> a }\n timeout 1s }",
                   legacy_service_profile="true")
    assert not kinds(objs, "HTTPRoute")
    sp = get(objs, "ServiceProfile", "a.default.svc.cluster.local")["spec"]
    assert sp["routes"] == [
        {"name": "rule-0-0", "condition": {"pathRegex": "^/api.*", "method": "GET"}, "timeout": "1s"},
        {"name": "rule-1-0", "condition": {"pathRegex": "^/v1(/.*)?$"}, "timeout": "200ms"},
        {"name": "rule-2-0", "condition": {"pathRegex": ".*"}, "timeout": "1s"}]
    plain = objects("service b { port http 80 timeout 2s }", legacy_service_profile="true")
    assert get(plain, "ServiceProfile", "b.default.svc.cluster.local")["spec"]["routes"] == [
        {"name": "rule-0-0", "condition": {"pathRegex": ".*"}, "timeout": "2s"}]
    errs = errors("service a { port http 80 retry 2 on 5xx }", legacy_service_profile="true")
    assert any("counted retries with legacy ServiceProfiles" in m for m in errs)


@pytest.mark.parametrize("src, needle", [
    (SVC % 'route { when path prefix "/api" -> v2\n otherwise -> v1 }', "byte-prefix path matches"),
    (SVC % "route { otherwise -> v1 { mirror v2 10% } }", "mirroring"),
    (SVC % 'route { otherwise -> v1 { rewrite prefix "/x" } }', "path rewrites"),
    (SVC % "circuit_breaker max_connections 10", "circuit breakers"),
    (SVC % "load_balance least_request", "least-request load balancing"),
    (SVC % "fault delay 1s 10%", "fault injection (delay)"),
    (SVC % "retry 2 on connect-failure", "retries on connect-failure"),
    (SVC % "rate_limit 100/s burst 10", "rate-limit burst"),
    ("service a { port http 80 }\ndeny * -> a", "deny rules"),
    ("service a { port http 80 }\nallow unauthenticated -> a", "unauthenticated sources"),
    ("service a { port http 80 mtls disabled }", "disabled mTLS"),
    ('service a { port http 80 expose ingress }', "ingress exposure"),
])
def test_unsupported_constructs_are_e301(src: str, needle: str) -> None:
    errs = errors(src)
    assert any(needle in m for m in errs), errs


def test_capabilities_are_honest() -> None:
    caps = LinkerdBackend.CAPABILITIES
    assert not {"route.mirror", "circuit_breaker", "authz.deny", "route.match.path.prefix"} & caps
    assert {"route.split", "retry", "timeout", "outlier", "rate_limit", "authz.identity"} <= caps


def test_star_admits_plaintext_only_on_permissive_ports() -> None:
    objs = objects("service a { port http 80 port http 81\n mtls permissive on port 81 }\nallow * -> a")
    assert get(objs, "MeshTLSAuthentication", "a-allow-0")["spec"] == {"identities": ["*"]}
    assert get(objs, "NetworkAuthentication", "a-allow-0-plain-any")["spec"]["networks"][0] == {"cidr": "0.0.0.0/0"}
    assert get(objs, "AuthorizationPolicy", "a-allow-0-80-mtls")["spec"]["targetRef"]["name"] == "a-80"
    assert get(objs, "AuthorizationPolicy", "a-allow-0-81-net")["spec"]["targetRef"]["name"] == "a-81"
    assert "a-allow-0-80-net" not in kinds(objs, "AuthorizationPolicy")


def test_resilience_on_external_services_is_not_dropped_silently() -> None:
    errs = errors('external pay { host "api.pay.example" port http 80 timeout 2s }')
    assert any("timeouts on an external service" in m for m in errs)


def test_grpc_timeout_is_an_annotation_on_the_grpc_route() -> None:
    objs = objects('service g { port grpc 9090 timeout 3s route {\n when path under "/pkg.Admin" -> g\n otherwise -> g } }')
    route = get(objs, "GRPCRoute", "g")
    assert route["metadata"]["annotations"] == {"timeout.linkerd.io/request": "3s"}
    assert route["spec"]["rules"][0]["matches"] == [{"method": {"type": "Exact", "service": "pkg.Admin"}}]
    errs = errors('service g { port grpc 9090 route {\n when path under "/pkg.Admin" -> g { timeout 1s }\n otherwise -> g } }')
    assert any("different timeouts per rule on a gRPC service" in m for m in errs)


def test_outlier_on_external_services_is_e301() -> None:
    errs = errors('external pay { host "api.pay.example" port http 80 outlier consecutive_5xx 3 }')
    assert any("outlier detection on an external service" in m for m in errs)


def test_match_limit_is_reported() -> None:
    conds = " or ".join(f'path exact "/p{i}"' for i in range(9))
    errs = errors(SVC % f"route {{\n when {conds} -> v2\n otherwise -> v1 }}")
    assert any("more than 8 matches" in m for m in errs)
    bundle = compile_mesh(load_text(MESH + SVC % f"route {{\n when {conds} -> v2\n otherwise -> v1 }}"), "linkerd",
                          unsupported="warn")
    assert validate_bundle(bundle, SCHEMAS, target="linkerd") == []


def test_authorization_route_matches_are_chunked() -> None:
    paths = ", ".join(f'exact "/p{i}"' for i in range(10))
    objs = objects(f"service a {{ port http 80 }}\nservice b {{ port http 80 }}\nallow a -> b paths {paths}")
    rules = get(objs, "HTTPRoute", "b-allow-0")["spec"]["rules"]
    assert [len(r["matches"]) for r in rules] == [8, 2]


def test_warn_mode_never_widens_an_allow_rule() -> None:
    src = (MESH + "service a { port http 80 }\nservice b { port http 80 }\n"
           'allow a -> b paths under "/x" except paths exact "/x/admin"\nallow a -> b headers x-debug absent')
    errs = errors(src.replace(MESH, ""))
    assert any("path exclusions" in m for m in errs) and any("header-absent" in m for m in errs)
    bundle = compile_mesh(load_text(src), "linkerd", unsupported="warn")
    docs = [d for f in bundle.files.values() for d in yaml.safe_load_all(f) if d]
    assert not [d for d in docs if d["kind"] == "AuthorizationPolicy"]


def test_outlier_settings_linkerd_cannot_count_are_reported() -> None:
    from meshc.backends import compile_mesh

    from meshc.compiler import load_text
    from meshc.diagnostics import MeshcError

    text = "mesh m {\n  authz allow_by_default\n}\nservice a {\n  port http 80\n  outlier consecutive_5xx 3%s\n}\n"
    with pytest.raises(MeshcError) as e:
        compile_mesh(load_text(text % " interval 5s", checks=False), "linkerd")
    assert [(d.code, d.span.line) for d in e.value.diagnostics] == [("E301", 6)]
    assert compile_mesh(load_text(text % "", checks=False), "linkerd").files


def test_overlap_candidates_never_miss_a_pair_that_relation_finds_overlapping() -> None:
    # The backend compares only candidate pairs of authorization routes (it compared every pair:
    # 38 s for 1,000 rules, hours for 16,000); a missed pair would lose an attachment or a gap.
    import random

    from meshc.model import Match, PathMatch

    rnd = random.Random(7)
    values = ["/", "/a", "/a/", "/ab", "/a/b", "/a/bc", "/b", "/x/y"]
    backend = LinkerdBackend({})
    for _ in range(300):
        l7 = []
        for idx in range(rnd.randint(2, 6)):
            ms = []
            for _ in range(rnd.randint(1, 3)):
                kind = rnd.choice(["exact", "prefix", "under", "regex", None])
                path = None if kind is None else PathMatch(kind=kind, value="/a.*" if kind == "regex" else rnd.choice(values))
                ms.append(Match(path=path, methods=("GET",) if rnd.random() < 0.3 else ()))
            l7.append((idx, None, ms, None, None))
        candidates = backend.overlap_candidates(l7)
        for i, (idx, _, ms, _, _) in enumerate(l7):
            for j, (_, _, ms2, _, _) in enumerate(l7):
                if i != j and backend.relation(ms, ms2) != "disjoint":
                    assert j in candidates[idx], (ms, ms2)
