"""Consul backend: CRDs against the consul-k8s schemas, HCL parsed back and compared with the CRDs,
and the lowering decisions (intention precedence, split weights, retries, timeouts, E301)."""

from __future__ import annotations

import itertools
import re
from typing import Any

import hcl2
import pytest
import yaml
from meshc.backends.base import Bundle
from meshc.backends.consul import NO_TIMEOUT_MS, ConsulBackend, crd_key, hcl_string
from model_fixtures import (
    bookinfo,
    example,
    example_ids,
    replace,
    update_service,
    validate_crds,
    with_fault,
)

from meshc import authz
from meshc.model import AuthzRule, Mesh, PathMatch, Source, StringMatch


def lower(mesh: Mesh, **options: str) -> Bundle:
    b = ConsulBackend(options)
    bundle = b.lower(mesh)
    assert not [d for d in bundle.diagnostics if d.severity == "error"], bundle.diagnostics
    return bundle


def crds(bundle: Bundle) -> dict[str, dict[str, Any]]:
    return {p: yaml.safe_load(v) for p, v in bundle.files.items() if p.startswith("crds/")}


def entry(bundle: Bundle, kind: str, name: str) -> dict[str, Any]:
    docs = [d for d in crds(bundle).values() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(docs) == 1, (kind, name)
    return docs[0]["spec"]


# --------------------------------------------------------------------------- HCL read back

_ESC = re.compile(r'\\(["\\nrt]|u[0-9a-fA-F]{4})')


def unquote(s: str) -> str:
    assert s.startswith('"') and s.endswith('"'), s
    return _ESC.sub(lambda m: {"n": "\n", "r": "\r", "t": "\t"}.get(m[1], m[1]) if len(m[1]) == 1
                    else chr(int(m[1][1:], 16)), s[1:-1])


def hcl_data(v: Any, free: bool = False) -> Any:
    """python-hcl2's output -> plain data with CRD key spelling (keys of free maps kept)."""
    if isinstance(v, dict):
        return {(unquote(k) if k.startswith('"') else k) if free else crd_key(k):
                hcl_data(x, free=k in FREE_KEYS) for k, x in v.items()}
    if isinstance(v, list):
        return [hcl_data(x) for x in v]
    if isinstance(v, str):
        return unquote(v)
    return v


FREE_KEYS = {"Subsets", "Set", "Add", "Config"}


def parse_hcl(text: str) -> dict[str, Any]:
    return hcl2.loads(text, serialization_options=hcl2.SerializationOptions(with_comments=False))


@pytest.mark.parametrize("name", example_ids())
def test_every_crd_validates_and_hcl_carries_the_same_content(name: str) -> None:
    mesh = example(name)
    backend = ConsulBackend({"enterprise": "true"})
    bundle = backend.lower(mesh)
    hcl_files = {p: v for p, v in bundle.files.items() if p.startswith("hcl/")}
    crd_docs = crds(bundle)
    assert len(hcl_files) == len(crd_docs) > 0
    validate_crds("consul", list(crd_docs.values()))
    for path, raw in sorted(hcl_files.items()):
        doc = crd_docs["crds/" + path[len("hcl/"):-len(".hcl")] + ".yaml"]
        parsed = hcl_data(parse_hcl(raw.decode()))
        kind, name_ = parsed.pop("kind"), parsed.pop("name")
        assert kind.replace("-", "") == doc["kind"].lower()
        spec = dict(doc["spec"])
        if doc["kind"] == "ServiceIntentions":
            assert spec.pop("destination") == {"name": name_}
        else:
            assert name_ == doc["metadata"]["name"]
        assert parsed == spec, path


def test_hcl_string_round_trips_hostile_values() -> None:
    for value in ['a"b', "back\\slash", "line\nbreak\ttab", "${var.x}", "%{ if x }", "$$", "é ü"]:
        text = f"A = {hcl_string(value)}\n"
        assert unquote(parse_hcl(text)["A"]) == value


def test_output_is_deterministic() -> None:
    assert lower(bookinfo()).files == lower(bookinfo()).files


# --------------------------------------------------------------------------- lowering decisions


def test_split_weights_are_exact_hundredths() -> None:
    bundle = lower(bookinfo())
    router = entry(bundle, "ServiceRouter", "reviews")
    beta = next(r for r in router["routes"] if r.get("match", {}).get("http", {}).get("pathPrefix") == "/beta")
    virtual = beta["destination"]["service"]
    splits = entry(bundle, "ServiceSplitter", virtual)["splits"]
    assert [(s["serviceSubset"], s["weight"]) for s in splits] == [("v2", 33.33), ("v3", 66.67)]
    assert round(sum(s["weight"] for s in splits), 2) == 100
    # the virtual service carries the protocol a splitter needs
    assert entry(bundle, "ServiceDefaults", virtual)["protocol"] == "http"


def test_retries_count_retries_and_timeouts_are_explicit() -> None:
    bundle = lower(bookinfo())
    routes = entry(bundle, "ServiceRouter", "reviews")["routes"]
    default = routes[-1]
    assert "match" not in default
    assert default["destination"]["numRetries"] == 3  # retry 3 = 3 retries, 4 attempts
    assert default["destination"]["retryOn"] == ["5xx", "connect-failure"]
    assert default["destination"]["requestTimeout"] == "2s"
    # a rule's own retry and timeout win
    api = [r for r in routes if r.get("destination", {}).get("numRetries") == 2]
    assert {r["destination"]["requestTimeout"] for r in api} == {"1s"}
    # no timeout anywhere: written explicitly, never Consul's 15 s default
    details = entry(bundle, "ServiceRouter", "details")["routes"]
    assert details[-1]["destination"]["requestTimeout"] == f"{NO_TIMEOUT_MS // 3_600_000}h"


def test_under_is_exact_plus_slash_prefix() -> None:
    routes = entry(lower(bookinfo()), "ServiceRouter", "reviews")["routes"]
    paths = [r["match"]["http"].get("pathExact") or r["match"]["http"].get("pathPrefix")
             for r in routes if "match" in r]
    assert "/api" in paths and "/api/" in paths


def test_subsets_filter_on_service_meta() -> None:
    res = entry(lower(bookinfo()), "ServiceResolver", "reviews")
    assert res["subsets"]["v2"] == {"filter": 'Service.Meta.version == "v2"'}
    assert res["loadBalancer"] == {"policy": "least_request"}


def test_breaker_and_outlier_go_to_callers_upstream_overrides() -> None:
    bundle = lower(bookinfo())
    pp = entry(bundle, "ServiceDefaults", "productpage")
    (ov,) = [o for o in pp["upstreamConfig"]["overrides"] if o["name"] == "reviews"]
    assert ov["limits"] == {"maxConnections": 100, "maxPendingRequests": 10, "maxConcurrentRequests": 200}
    assert ov["passiveHealthCheck"]["maxEjectionPercent"] == 50
    assert "upstreamConfig" not in entry(bundle, "ServiceDefaults", "reviews") or all(
        o["name"] != "reviews" for o in entry(bundle, "ServiceDefaults", "reviews")["upstreamConfig"]["overrides"])


def test_enterprise_gates_rate_limits_and_faults_stay_unsupported() -> None:
    mesh = bookinfo()
    oss = {d.message for d in ConsulBackend().unsupported(mesh)}
    assert any("rate limits" in m for m in oss)
    ent = ConsulBackend({"enterprise": "true"})
    assert not ent.unsupported(mesh)
    limits = entry(ent.lower(mesh), "ServiceDefaults", "ratings")["rateLimits"]
    assert limits == {"instanceLevel": {"requestsPerSecond": 100, "requestsMaxBurst": 20}}
    gaps = ent.unsupported(with_fault(mesh))
    assert [d.code for d in gaps] == ["E301"] and "fault injection" in gaps[0].message


# --------------------------------------------------------------------------- intentions vs meshc meaning


def intentions(bundle: Bundle) -> dict[str, list[dict[str, Any]]]:
    return {d["spec"]["destination"]["name"]: d["spec"]["sources"]
            for d in crds(bundle).values() if d["kind"] == "ServiceIntentions"}


def consul_decide(ints: dict[str, list[dict[str, Any]]], source: str, dest: str, method: str, path: str,
                  headers: dict[str, str]) -> bool:
    """Consul's intention semantics: the most specific (source, destination) intention applies;
    L7 permissions are first-match. Asserts that no request falls through a permission list."""
    for dst, src in ((dest, source), (dest, "*"), ("*", source), ("*", "*")):
        found = next((s for s in ints.get(dst, []) if s["name"] == src), None)
        if found is None:
            continue
        if "action" in found:
            return bool(found["action"] == "allow")
        for perm in found["permissions"]:
            if permission_matches(perm["http"], method, path, headers):
                return bool(perm["action"] == "allow")
        raise AssertionError(f"request fell through the permissions of {src} -> {dst}")
    raise AssertionError("no intention applies")


def permission_matches(http: dict[str, Any], method: str, path: str, headers: dict[str, str]) -> bool:
    if "methods" in http and method not in http["methods"]:
        return False
    if "pathExact" in http and path != http["pathExact"]:
        return False
    if "pathPrefix" in http and not path.startswith(http["pathPrefix"]):
        return False
    if "pathRegex" in http and not re.fullmatch(http["pathRegex"], path):
        return False
    for h in http.get("header", []):
        v = headers.get(h["name"])
        ok = {"present": v is not None, "exact": v == h.get("exact"),
              "prefix": v is not None and v.startswith(h.get("prefix", "\0"))}
        kind = next(k for k in ("present", "exact", "prefix") if k in h)
        if ok[kind] == bool(h.get("invert")):
            return False
    return True


def extra_rules(mesh: Mesh) -> Mesh:
    rules = mesh.rules + (
        AuthzRule(action="allow", sources=(Source(kind="any"),), destinations=("details",),
                  paths=(PathMatch(kind="under", value="/public"),)),
        AuthzRule(action="deny", sources=(Source(kind="service", name="productpage"),), destinations=("*",),
                  headers=(StringMatch(name="x-debug", kind="present"),)),
        AuthzRule(action="allow", sources=(Source(kind="authenticated"),), destinations=("ratings",),
                  methods=("HEAD",)),
    )
    return replace(mesh, rules=rules)


@pytest.mark.parametrize("authz_default", ["deny_by_default", "allow_by_default"])
def test_intentions_keep_the_meshc_meaning(authz_default: str) -> None:
    mesh = extra_rules(bookinfo(authz=authz_default))
    ints = intentions(lower(mesh))
    callers = [s.name for s in mesh.services] + ["ingress"]
    requests = [("GET", "/"), ("GET", "/ratings/1"), ("POST", "/ratings/1"), ("GET", "/admin/x"),
                ("HEAD", "/admin"), ("GET", "/public"), ("GET", "/public/a"), ("GET", "/publicity")]
    checked = 0
    for src, dst, (method, path), hdrs in itertools.product(
            callers, [s.name for s in mesh.services], requests, [{}, {"x-debug": "1"}]):
        if src == dst:
            continue
        want = authz.decide(mesh, src, dst, method=method, path=path, headers=hdrs).allowed
        consul_src = mesh.ingress_identity.name if src == "ingress" else src
        got = consul_decide(ints, consul_src, dst, method, path, hdrs)
        assert got == want, (src, dst, method, path, hdrs)
        checked += 1
    assert checked > 200


def test_star_deny_is_repeated_before_a_specific_allow() -> None:
    perms = next(s for s in entry(lower(bookinfo()), "ServiceIntentions", "ratings")["sources"]
                 if s["name"] == "reviews")["permissions"]
    assert perms[0] == {"action": "deny", "http": {"pathPrefix": "/admin"}}
    assert perms[1]["action"] == "allow"
    assert perms[-1] == {"action": "deny", "http": {"pathPrefix": "/"}}


def test_default_intention_follows_the_mesh_posture() -> None:
    for posture, action in (("deny_by_default", "deny"), ("allow_by_default", "allow")):
        spec = entry(lower(bookinfo(authz=posture)), "ServiceIntentions", "meshc-default")
        assert spec == {"destination": {"name": "*"}, "sources": [{"name": "*", "action": action}]}


def test_permissive_service_under_default_deny_is_an_error() -> None:
    mesh = bookinfo()
    bundle = ConsulBackend().lower(update_service(mesh, "details", mtls="permissive"))
    assert [d.code for d in bundle.diagnostics] == ["E330"]
    assert "plaintext" in bundle.diagnostics[0].message


def test_ingress_exposes_only_the_listed_paths() -> None:
    from meshc.model import Ingress

    mesh = update_service(bookinfo(), "productpage", expose=Ingress(
        paths=(PathMatch(kind="exact", value="/productpage"), PathMatch(kind="under", value="/static")), port=8080))
    bundle = lower(mesh)
    gw = entry(bundle, "IngressGateway", "ingress-gateway")
    assert gw == {"listeners": [{"port": 8080, "protocol": "http",
                                 "services": [{"name": "productpage-ingress", "hosts": ["*"]}]}]}
    routes = entry(bundle, "ServiceRouter", "productpage-ingress")["routes"]
    assert [r["match"]["http"] for r in routes] == [{"pathExact": "/productpage"}, {"pathExact": "/static"},
                                                   {"pathPrefix": "/static/"}]
    assert {r["destination"]["service"] for r in routes} == {"productpage"}
    assert entry(bundle, "ServiceDefaults", "productpage-ingress") == {"protocol": "http"}
    validate_crds("consul", list(crds(bundle).values()))
    # a service with its own route rules cannot have its paths filtered (no router behind a router)
    mesh = update_service(bookinfo(), "reviews", expose=Ingress(paths=(PathMatch(kind="prefix", value="/r"),)))
    assert [d.code for d in ConsulBackend().lower(mesh).diagnostics] == ["E330"]


def test_external_service_is_a_destination_behind_the_terminating_gateway() -> None:
    from model_fixtures import ident

    from meshc.model import External, Port, Service

    ext = Service(name="payments", namespace="default", identity=ident("payments"),
                  ports=(Port(protocol="tls", number=443, mtls="disabled"),),
                  external=External(host="api.stripe.com", tls_originate=True))
    mesh = replace(bookinfo(), services=tuple(sorted((*bookinfo().services, ext), key=lambda s: s.name)),
                   rules=(*bookinfo().rules, AuthzRule(action="allow", sources=(Source(kind="service", name="ratings"),),
                                                       destinations=("payments",))))
    bundle = lower(mesh)
    assert entry(bundle, "ServiceDefaults", "payments") == {
        "protocol": "http", "destination": {"addresses": ["api.stripe.com"], "port": 443}}
    assert entry(bundle, "TerminatingGateway", "terminating-gateway") == {"services": [
        {"name": "payments", "caFile": "/etc/ssl/certs/ca-certificates.crt", "sni": "api.stripe.com"}]}
    sources = entry(bundle, "ServiceIntentions", "payments")["sources"]
    assert sources == [{"name": "ratings", "action": "allow"}]
    validate_crds("consul", list(crds(bundle).values()))


def test_rules_narrowed_by_request_attributes_never_match_a_tcp_service() -> None:
    from meshc.model import Port

    mesh = update_service(bookinfo(), "details", ports=(Port(protocol="tcp", number=5432, mtls="strict"),),
                          routes=())
    rules = (AuthzRule(action="allow", sources=(Source(kind="service", name="productpage"),),
                       destinations=("details",)),
             AuthzRule(action="deny", sources=(Source(kind="any"),), destinations=("*",),
                       paths=(PathMatch(kind="prefix", value="/admin"),)),
             AuthzRule(action="allow", sources=(Source(kind="service", name="reviews"),), destinations=("details",),
                       methods=("GET",)))
    bundle = lower(replace(mesh, rules=rules))
    assert entry(bundle, "ServiceIntentions", "details")["sources"] == [
        {"name": "*", "action": "deny"}, {"name": "productpage", "action": "allow"},
        {"name": "reviews", "action": "deny"}]
    assert authz.decide(replace(mesh, rules=rules), "productpage", "details").allowed
    assert not authz.decide(replace(mesh, rules=rules), "reviews", "details").allowed


def test_the_ingress_gateway_applies_the_exposed_services_limits() -> None:
    # The gateway calls the service like any sidecar: its circuit breaker and outlier detection
    # were left out of the IngressGateway (only sidecars' upstream overrides carried them).
    from meshc.compiler import load_text

    mesh = load_text("""mesh m { mtls strict authz allow_by_default }
service web {
  port http 8080
  expose ingress on port 80
  circuit_breaker max_connections 100 max_pending 10 max_requests 200
  outlier consecutive_5xx 5 interval 10s eject 30s max_percent 50%
}
""", "m.mesh")
    bundle = lower(mesh)
    validate_crds("consul", list(crds(bundle).values()))
    (gateway,) = [d["spec"] for d in crds(bundle).values() if d["kind"] == "IngressGateway"]
    (svc,) = gateway["listeners"][0]["services"]
    assert (svc["maxConnections"], svc["maxPendingRequests"], svc["maxConcurrentRequests"]) == (100, 10, 200)
    assert svc["passiveHealthCheck"] == {"interval": "10s", "maxFailures": 5, "enforcingConsecutive5xx": 100,
                                         "maxEjectionPercent": 50, "baseEjectionTime": "30s"}
    hcl = parse_hcl(bundle.files[next(p for p in bundle.files if p.endswith(".hcl") and "ingress" in p)].decode())
    assert hcl["Listeners"][0]["Services"][0]["MaxConnections"] == 100
