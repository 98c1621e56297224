"""Istio backend: every lowering decision, schema validity of every example, E301 cases."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from meshc.backends import compile_mesh
from meshc.backends.istio import IstioBackend, istio_weights

from meshc.compiler import load, load_text
from meshc.diagnostics import MeshcError
from meshc.validate import BUNDLED_SCHEMAS, check_core, validate_bundle

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = BUNDLED_SCHEMAS
sys.path.insert(0, str(Path(__file__).parent))
from examples_index import example_roots  # noqa: E402

MESH = "mesh m { authz deny_by_default }\n"


def objects(src: str, **options: str) -> list[dict[str, Any]]:
    bundle = compile_mesh(load_text(MESH + src), "istio", options=options)
    assert [str(p) for p in validate_bundle(bundle, SCHEMAS, target="istio")] == []
    return [d for f in sorted(bundle.files) for d in yaml.safe_load_all(bundle.files[f]) if d]


def get(objs: list[dict[str, Any]], kind: str, name: str, ns: str | None = None) -> dict[str, Any]:
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"] == name and (ns is None or o["metadata"].get("namespace") == ns):
            return o
    raise AssertionError(f"no {kind} {name} in {[(o['kind'], o['metadata']['name']) for o in objs]}")


def http(src: str, svc: str = "a") -> list[dict[str, Any]]:
    return get(objects(src), "VirtualService", svc)["spec"]["http"]  # type: ignore[no-any-return]


def errors(src: str) -> list[str]:
    with pytest.raises(MeshcError) as e:
        compile_mesh(load_text(MESH + src), "istio")
    return [f"{d.code} {d.span.line}: {d.message}" for d in e.value.diagnostics]


SVC = """service a {
  port http 8080
  version v1 { labels version=v1 }
  version v2 { labels version=v2 }
  %s
}
"""


# --------------------------------------------------------------------------- examples


@pytest.mark.parametrize("example", sorted(example_roots()))
def test_every_example_validates_strictly(example: str) -> None:
    bundle = compile_mesh(load([example_roots()[example]]), "istio", unsupported="warn")
    assert [str(p) for p in validate_bundle(bundle, SCHEMAS, target="istio")] == []
    for text in bundle.files.values():
        for doc in yaml.safe_load_all(text):
            if doc and doc["apiVersion"] == "v1":
                assert check_core(doc) == [], doc["metadata"]["name"]


def test_layout_one_stream_per_namespace_and_kustomization() -> None:
    bundle = compile_mesh(load_text(MESH + "service a { namespace shop port http 80 }\nservice b { port http 80 }"),
                          "istio")
    assert sorted(bundle.files) == ["default.yaml", "istio-system.yaml", "kustomization.yaml", "shop.yaml"]
    kust = yaml.safe_load(bundle.files["kustomization.yaml"])
    assert kust["resources"] == ["default.yaml", "istio-system.yaml", "shop.yaml"]
    first = next(yaml.safe_load_all(bundle.files["shop.yaml"]))
    assert first["kind"] == "Namespace" and first["metadata"]["labels"]["istio-injection"] == "enabled"


# --------------------------------------------------------------------------- routing


def test_under_is_exact_or_slash_prefix_and_prefix_is_bytes() -> None:
    routes = http(SVC % 'route { when path under "/api" -> v2\n when path prefix "/b" -> v1\n otherwise -> v1 }')
    assert routes[0]["match"] == [{"uri": {"exact": "/api"}}, {"uri": {"prefix": "/api/"}}]
    assert routes[1]["match"] == [{"uri": {"prefix": "/b"}}]
    assert "match" not in routes[2]


def test_under_rewrite_keeps_segment_boundary() -> None:
    routes = http(SVC % 'route { when path under "/api" -> v2 { rewrite prefix "/v2" }\n otherwise -> v1 }')
    assert [(r["match"], r["rewrite"]) for r in routes[:2]] == [
        ([{"uri": {"exact": "/api"}}], {"uri": "/v2"}),
        ([{"uri": {"prefix": "/api/"}}], {"uri": "/v2/"}),
    ]


def test_or_and_conditions() -> None:
    routes = http(SVC % ('route {\n when path exact "/a" or header x-k == "v" and method GET, HEAD -> v2\n'
                         ' when header x-p present and header x-q absent and query d regex "[0-9]+" -> v1\n'
                         ' otherwise -> v1 }'))
    assert routes[0]["match"] == [{"uri": {"exact": "/a"}},
                                  {"headers": {"x-k": {"exact": "v"}}, "method": {"regex": "GET|HEAD"}}]
    assert routes[1]["match"] == [{"headers": {"x-p": {"regex": ".*"}}, "withoutHeaders": {"x-q": {"regex": ".*"}},
                                   "queryParams": {"d": {"regex": "[0-9]+"}}}]


def test_weights() -> None:
    assert istio_weights([5000, 5000]) == [50, 50]
    assert istio_weights([3333, 6667]) == [3333, 6667]
    assert istio_weights([1250, 8750]) == [1, 7]
    routes = http(SVC % "route { otherwise -> split { v1 12.5%, v2 87.5% } }")
    assert [d["weight"] for d in routes[0]["route"]] == [1, 7]


def test_redirect_respond_headers_mirror() -> None:
    routes = http(SVC % ('route {\n when path exact "/old" -> redirect path "/new" code 302\n'
                         ' when path exact "/gone" -> respond 410 "gone"\n'
                         ' otherwise -> v2 {\n request_headers set x-a "1"\n request_headers remove x-b\n'
                         ' response_headers add x-c "2"\n mirror v1 12.5%\n rewrite host "internal"\n }\n}'))
    assert routes[0] == {"match": [{"uri": {"exact": "/old"}}], "redirect": {"redirectCode": 302, "uri": "/new"}}
    assert routes[1] == {"match": [{"uri": {"exact": "/gone"}}], "directResponse": {"status": 410, "body": {"string": "gone"}}}
    last = routes[2]
    assert last["headers"] == {"request": {"set": {"x-a": "1"}, "remove": ["x-b"]}, "response": {"add": {"x-c": "2"}}}
    assert last["mirror"] == {"host": "a", "subset": "v1"} and last["mirrorPercentage"] == {"value": 12.5}
    assert last["rewrite"] == {"authority": "internal"}


def test_timeouts_none_is_omitted_and_precedence_holds() -> None:
    src = "mesh m { timeout 10s }\n" + SVC % 'route { when path exact "/x" -> v1 { timeout none }\n otherwise -> v1 }\n timeout 2s'
    routes = get(_objects_raw(src), "VirtualService", "a")["spec"]["http"]
    assert "timeout" not in routes[0]  # explicit none: Istio's default is "disabled"
    assert routes[1]["timeout"] == "2s"  # service beats mesh
    plain = _objects_raw("mesh m { timeout 90s }\nservice b { port http 80 }")
    assert get(plain, "VirtualService", "b")["spec"]["http"][0]["timeout"] == "1m30s"


def _objects_raw(src: str) -> list[dict[str, Any]]:
    bundle = compile_mesh(load_text(src), "istio")
    assert [str(p) for p in validate_bundle(bundle, SCHEMAS, target="istio")] == []
    return [d for f in sorted(bundle.files) for d in yaml.safe_load_all(bundle.files[f]) if d]


def test_retries_count_retries_and_default_is_explicitly_off() -> None:
    routes = http(SVC % 'route { otherwise -> v1 }\n retry 3 on gateway-error, reset, 503, 504 per_try 250ms backoff 25ms')
    assert routes[0]["retries"] == {"attempts": 3, "retryOn": "gateway-error,reset,503,504",
                                    "perTryTimeout": "250ms", "backoff": "25ms"}
    assert http("service a { port http 80 }")[0]["retries"] == {"attempts": 0}


def test_faults_split_rule_and_keep_order() -> None:
    routes = http(SVC % ('route { otherwise -> v1 }\n fault when header x-test == "1" delay 7s 50%\n'
                         ' fault abort 503 0.5%'))
    assert routes[0]["match"] == [{"headers": {"x-test": {"exact": "1"}}}]
    assert routes[0]["fault"] == {"delay": {"fixedDelay": "7s", "percentage": {"value": 50.0}},
                                  "abort": {"httpStatus": 503, "percentage": {"value": 0.5}}}
    assert "match" not in routes[1] and routes[1]["fault"] == {"abort": {"httpStatus": 503, "percentage": {"value": 0.5}}}


# --------------------------------------------------------------------------- destination rules


def test_destination_rule_policies() -> None:
    objs = objects(SVC % ("route { otherwise -> v1 }\n load_balance consistent_hash header \"x-user\"\n"
                          " circuit_breaker max_connections 100 max_pending 10 max_requests 200 max_retries 3\n"
                          " outlier consecutive_5xx 7 interval 5s eject 1m max_percent 25%\n"
                          " retry 2 budget 20%\n mtls disabled on port 8080"))
    tp = get(objs, "DestinationRule", "a")["spec"]["trafficPolicy"]
    assert tp["loadBalancer"] == {"consistentHash": {"httpHeaderName": "x-user"}}
    assert tp["connectionPool"] == {"tcp": {"maxConnections": 100},
                                    "http": {"http1MaxPendingRequests": 10, "http2MaxRequests": 200, "maxRetries": 3}}
    assert tp["outlierDetection"] == {"consecutive5xxErrors": 7, "interval": "5s", "baseEjectionTime": "1m",
                                      "maxEjectionPercent": 25}
    assert tp["retryBudget"] == {"percent": 20.0}
    assert tp["tls"] == {"mode": "ISTIO_MUTUAL"}
    assert tp["portLevelSettings"] == [{"port": {"number": 8080}, "tls": {"mode": "DISABLE"}}]


# --------------------------------------------------------------------------- security


def test_peer_authentication_levels() -> None:
    objs = objects("service a { namespace legacy port http 80 mtls permissive }\n"
                   "service b { namespace legacy port http 80 mtls permissive }\n"
                   "service c { port http 80 port tcp 5432 mtls permissive on port 5432 }\n"
                   "service d { port http 80 mtls disabled }\nservice e { port http 80 }")
    pas = {(o["metadata"]["namespace"], o["metadata"]["name"]): o["spec"] for o in objs if o["kind"] == "PeerAuthentication"}
    assert pas == {
        ("istio-system", "default"): {"mtls": {"mode": "STRICT"}},
        ("legacy", "default"): {"mtls": {"mode": "PERMISSIVE"}},
        ("default", "c"): {"selector": {"matchLabels": {"app": "c"}}, "mtls": {"mode": "STRICT"},
                           "portLevelMtls": {"5432": {"mode": "PERMISSIVE"}}},
        ("default", "d"): {"selector": {"matchLabels": {"app": "d"}}, "mtls": {"mode": "DISABLE"}},
    }


def test_authorization_policies() -> None:
    objs = objects("service a { port http 80 identity acct }\nservice b { namespace other port http 80 }\n"
                   'allow a -> b methods GET paths under "/x", prefix "/y", exact "/z" except paths prefix "/x/admin"\n'
                   "allow unauthenticated, authenticated -> b ports 80\n"
                   'allow ingress -> a headers x-t == "1"\n'
                   'deny * -> * paths prefix "/debug"')
    assert get(objs, "AuthorizationPolicy", "default-deny", "default")["spec"] == {}
    assert get(objs, "AuthorizationPolicy", "default-deny", "other")["spec"] == {}
    allow_b = get(objs, "AuthorizationPolicy", "b-allow")["spec"]
    assert allow_b["action"] == "ALLOW" and allow_b["selector"] == {"matchLabels": {"app": "b"}}
    assert allow_b["rules"][0] == {
        "from": [{"source": {"principals": ["cluster.local/ns/default/sa/acct"]}}],
        "to": [{"operation": {"methods": ["GET"], "paths": ["/x", "/x/*", "/y*", "/z"], "notPaths": ["/x/admin*"]}}]}
    assert allow_b["rules"][1] == {"from": [{"source": {"principals": ["*"]}}, {"source": {"notPrincipals": ["*"]}}],
                                   "to": [{"operation": {"ports": ["80"]}}]}
    allow_a = get(objs, "AuthorizationPolicy", "a-allow")["spec"]
    assert allow_a["rules"] == [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/ingress-gateway"]}}],
                                 "when": [{"key": "request.headers[x-t]", "values": ["1"]}]}]
    deny = get(objs, "AuthorizationPolicy", "all-services-deny", "other")["spec"]
    assert deny == {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/debug*"]}}]}]}


def test_allow_rules_are_noops_under_allow_by_default() -> None:
    objs = _objects_raw("mesh m { authz allow_by_default }\nservice a { port http 80 }\nservice b { port http 80 }\n"
                        "allow a -> b\ndeny * -> b paths exact \"/x\"")
    kinds = [(o["metadata"]["name"], o["spec"].get("action")) for o in objs if o["kind"] == "AuthorizationPolicy"]
    assert kinds == [("b-deny", "DENY")]


# --------------------------------------------------------------------------- egress, sidecars, ingress


def test_external_with_tls_origination() -> None:
    objs = objects('service a { port http 80 calls pay }\n'
                   'external pay { host "api.pay.example" port tls 443 tls originate sni "pay.example" }')
    se = get(objs, "ServiceEntry", "pay")["spec"]
    assert se == {"hosts": ["api.pay.example"], "location": "MESH_EXTERNAL", "resolution": "DNS",
                  "ports": [{"number": 443, "name": "http-443", "protocol": "HTTP"}]}
    dr = get(objs, "DestinationRule", "pay")["spec"]
    assert dr["trafficPolicy"]["portLevelSettings"] == [
        {"port": {"number": 443}, "tls": {"mode": "SIMPLE", "sni": "pay.example"}}]
    assert not [o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "pay"]
    assert get(objs, "Sidecar", "a")["spec"]["egress"] == [{"hosts": ["default/api.pay.example"]}]


def test_sidecar_egress_follows_calls_and_callee_routes() -> None:
    objs = objects("service a { port http 80 calls b }\n"
                   "service b { port http 80 route { otherwise -> split { b 90%, b-next 10% } } }\n"
                   "service b-next { namespace canary port http 80 }")
    assert get(objs, "Sidecar", "a")["spec"] == {
        "workloadSelector": {"labels": {"app": "a"}},
        "egress": [{"hosts": ["canary/b-next.canary.svc.cluster.local", "default/b.default.svc.cluster.local"]}]}
    assert get(objs, "Sidecar", "b-next")["spec"]["egress"] == [{"hosts": ["~/*"]}]
    route = get(objs, "VirtualService", "b")["spec"]["http"][0]["route"]
    assert [d["destination"]["host"] for d in route] == ["b", "b-next.canary.svc.cluster.local"]


def test_ingress_gateway_and_virtual_service() -> None:
    objs = objects('service web { port http 8080 expose ingress on port 80 hosts "shop.example" paths under "/app" }\n'
                   'service api { port http 9090 expose ingress on port 80 hosts "shop.example" }')
    gw = get(objs, "Gateway", "m-gateway")["spec"]
    assert gw == {"selector": {"istio": "ingressgateway"},
                  "servers": [{"port": {"number": 80, "name": "http-80", "protocol": "HTTP"}, "hosts": ["shop.example"]}]}
    vs = get(objs, "VirtualService", "m")["spec"]
    assert vs["gateways"] == ["m-gateway"] and vs["hosts"] == ["shop.example"]
    # the catch-all service goes last (first match wins)
    assert vs["http"] == [
        {"match": [{"uri": {"exact": "/app"}}, {"uri": {"prefix": "/app/"}}],
         "route": [{"destination": {"host": "web", "port": {"number": 8080}}}], "retries": {"attempts": 0}},
        {"route": [{"destination": {"host": "api", "port": {"number": 9090}}}], "retries": {"attempts": 0}}]


def test_ingress_goes_to_the_default_destination_as_on_envoy() -> None:
    """The gateway sends exposed traffic where the service's `otherwise` rule sends it (the
    Envoy and native gateways do the same): a canary split holds for ingress traffic too."""
    src = SVC % ("expose ingress\n  route {\n    when header x-canary == \"on\" -> v2\n"
                 "    otherwise -> split { v1 90%, v2 10% }\n  }")
    vs = get(objects(src), "VirtualService", "m")["spec"]
    assert vs["http"][0]["route"] == [
        {"destination": {"host": "a", "subset": "v1", "port": {"number": 8080}}, "weight": 90},
        {"destination": {"host": "a", "subset": "v2", "port": {"number": 8080}}, "weight": 10}]


# --------------------------------------------------------------------------- E301


@pytest.mark.parametrize("src, needle", [
    ("service a { port http 80 rate_limit 100/s burst 10 }", "local rate limits are not supported"),
    ('service a { port http 80 health_check http "/h" }', "active health checks are not supported"),
    ("service a { port http 80 retry 2 backoff 10ms max 50ms }", "retry backoff maximum"),
    ('service a { port http 80 }\nallow * -> a paths regex "/x[0-9]+"', "regex path in an authorization rule"),
    ('service a { port http 80 }\nallow * -> a headers x-a regex "v.*"', "regex header condition"),
    ("service a { port http 80 outlier max_percent 12.5% }", "outlier max_percent with decimals"),
])
def test_unsupported_constructs_are_e301(src: str, needle: str) -> None:
    errs = errors(src)
    assert errs and all(e.startswith("E301") for e in errs)
    assert any(needle in e for e in errs), errs


def test_unsupported_warn_drops_with_warning() -> None:
    bundle = compile_mesh(load_text(MESH + "service a { port http 80 rate_limit 100/s }"), "istio",
                          unsupported="warn")
    assert [d.code for d in bundle.diagnostics] == ["W301"]


def test_capabilities_are_data() -> None:
    assert "rate_limit" not in IstioBackend.CAPABILITIES
    assert {"route.mirror", "fault.delay", "authz.deny", "external.tls_originate"} <= IstioBackend.CAPABILITIES


def test_generated_name_collisions_are_reported() -> None:
    errs = errors("service default { port http 80 }\nservice x { port http 80 }\ndeny x -> default")
    assert any("two generated AuthorizationPolicy objects named 'default-deny'" in e for e in errs)
    objs = _objects_raw('mesh shop { }\nservice shop { port http 80 expose ingress }')
    assert sorted(o["metadata"]["name"] for o in objs if o["kind"] == "VirtualService") == ["shop", "shop-ingress-0"]


def test_conditional_fault_inside_a_conditional_rule() -> None:
    routes = http(SVC % ('route {\n when path under "/api" -> v2 { fault when header x-f == "1" abort 503 100% }\n'
                         ' otherwise -> v1 }'))
    assert [(r.get("match"), "fault" in r) for r in routes] == [
        ([{"uri": {"exact": "/api"}, "headers": {"x-f": {"exact": "1"}}},
          {"uri": {"prefix": "/api/"}, "headers": {"x-f": {"exact": "1"}}}], True),
        ([{"uri": {"exact": "/api"}}, {"uri": {"prefix": "/api/"}}], False),
        (None, False)]


def test_path_rules_warn_that_normalization_is_install_time() -> None:
    bundle = compile_mesh(load_text(MESH + 'service a { port http 80 }\nallow * -> a paths under "/x"'), "istio")
    assert [d.code for d in bundle.diagnostics] == ["W321"]
    assert "MERGE_SLASHES" in bundle.diagnostics[0].help
    off = compile_mesh(load_text('mesh m { path_normalization off }\nservice a { port http 80 }\n'
                                 'allow * -> a paths under "/x"'), "istio")
    assert off.diagnostics == []


def test_tcp_and_tls_splits() -> None:
    objs = objects("service db { port tcp 5432 version a { labels v=a } version b { labels v=b }\n"
                   " route { otherwise -> split { a 75%, b 25% } } }\n"
                   "service vault { port tls 8200 version a { labels v=a } version b { labels v=b }\n"
                   " route { otherwise -> split { a 50%, b 50% } } }")
    assert get(objs, "VirtualService", "db")["spec"] == {"hosts": ["db"], "tcp": [{"route": [
        {"destination": {"host": "db", "subset": "a"}, "weight": 75},
        {"destination": {"host": "db", "subset": "b"}, "weight": 25}]}]}
    tls = get(objs, "VirtualService", "vault")["spec"]
    assert "tcp" not in tls and tls["tls"][0]["match"] == [{"sniHosts": ["vault"]}]


def test_external_policies_and_routes() -> None:
    objs = objects('service a { port http 80 calls ext }\n'
                   'external ext { host "api.example" port http 80 circuit_breaker max_connections 5 }')
    assert get(objs, "DestinationRule", "ext")["spec"] == {
        "host": "api.example", "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 5}}}}
    assert get(objs, "VirtualService", "ext")["spec"]["http"] == [
        {"retries": {"attempts": 0}, "route": [{"destination": {"host": "api.example"}}]}]
    errs = errors("service db { port tcp 5432 expose ingress }")
    assert any("ingress exposure of a service without HTTP ports" in e for e in errs)


def test_prefix_rewrite_after_regex_is_e301() -> None:
    errs = errors(SVC % 'route { when path regex "/r[0-9]+" -> v1 { rewrite prefix "/x" }\n otherwise -> v1 }')
    assert any("prefix rewrite after a regex path match" in e for e in errs)


def test_warn_mode_leaves_out_whole_authorization_rules() -> None:
    src = MESH + 'service a { port http 80 }\nservice b { port http 80 }\nallow b -> a paths regex "/x[0-9]+"'
    bundle = compile_mesh(load_text(src), "istio", unsupported="warn")
    docs = [d for f in bundle.files.values() for d in yaml.safe_load_all(f) if d]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "AuthorizationPolicy"] == ["default-deny"]
