"""App Mesh backend: CRDs against the appmesh-controller schemas, API bodies against botocore's
service model, and the lowering decisions (exact integer weights, retries, SAN allow-lists, E301)."""

from __future__ import annotations

import json
from typing import Any

import botocore.session
import botocore.validate
import pytest
import yaml
from meshc.backends.appmesh import NO_TIMEOUT_MS, AppMeshBackend, scale_weights
from meshc.backends.base import Bundle
from model_fixtures import bookinfo, example, example_ids, replace, update_service, validate_crds

from meshc.model import AuthzRule, Destination, Ingress, PathMatch, Retry, RouteRule, Source

MODEL = botocore.session.get_session().get_service_model("appmesh")


def lower(mesh: Any, **options: str) -> Bundle:
    return AppMeshBackend(options).lower(mesh)


def api_bodies(bundle: Bundle) -> dict[str, dict[str, Any]]:
    return {p: json.loads(v) for p, v in bundle.files.items() if p.startswith("aws/")}


def crds(bundle: Bundle) -> dict[str, dict[str, Any]]:
    return {p: yaml.safe_load(v) for p, v in bundle.files.items() if p.startswith("k8s/")}


def botocore_errors(operation: str, params: dict[str, Any]) -> str:
    shape = MODEL.operation_model(operation).input_shape
    report = botocore.validate.ParamValidator().validate(params, shape)
    return report.generate_report() if report.has_errors() else ""


def simple_mesh() -> Any:
    """bookinfo without what App Mesh cannot say (so the whole bundle is error-free)."""
    mesh = bookinfo()
    rv = mesh.service("reviews")
    assert rv is not None
    routes = (rv.routes[0],
              RouteRule(matches=rv.routes[1].matches, destinations=(
                  Destination(service="reviews", version="v2", weight=1250),
                  Destination(service="reviews", version="v3", weight=8750))),
              RouteRule(matches=rv.routes[2].matches, destinations=rv.routes[2].destinations,
                        retry=Retry(attempts=2, on=("gateway-error", "connect-failure"), per_try_ms=300)),
              rv.routes[3])
    mesh = update_service(mesh, "reviews", routes=routes, resilience=rv.resilience.model_copy(update={
        "load_balance": None, "circuit_breaker": rv.resilience.circuit_breaker.model_copy(  # type: ignore[union-attr]
            update={"max_requests": None})}))
    mesh = update_service(mesh, "ratings", resilience=mesh.service("ratings").resilience.model_copy(  # type: ignore[union-attr]
        update={"rate_limit": None}))
    mesh = update_service(mesh, "productpage", expose=Ingress(paths=(PathMatch(kind="exact", value="/productpage"),
                                                                     PathMatch(kind="under", value="/static")),
                                                              port=8080))
    rules = (AuthzRule(action="allow", sources=(Source(kind="ingress"),), destinations=("productpage",)),
             AuthzRule(action="allow", sources=(Source(kind="service", name="productpage"),),
                       destinations=("details", "reviews")),
             AuthzRule(action="allow", sources=(Source(kind="any"),), destinations=("ratings",)),
             AuthzRule(action="deny", sources=(Source(kind="service", name="details"),), destinations=("ratings",)))
    return replace(mesh, rules=rules)


# --------------------------------------------------------------------------- real consumers


@pytest.mark.parametrize("name", example_ids())
def test_every_crd_validates_and_every_api_body_passes_botocore(name: str) -> None:
    bundle = lower(example(name))
    validate_crds("appmesh", list(crds(bundle).values()))
    bodies = api_bodies(bundle)
    assert bodies
    for path, body in sorted(bodies.items()):
        operation = path.split("/")[1].split("-")[1]
        assert not botocore_errors(operation, body), (path, botocore_errors(operation, body))


def test_simple_mesh_lowers_without_diagnostics_and_validates() -> None:
    mesh = simple_mesh()
    backend = AppMeshBackend()
    assert not backend.unsupported(mesh)
    bundle = backend.lower(mesh)
    assert not bundle.diagnostics, bundle.diagnostics
    validate_crds("appmesh", list(crds(bundle).values()))
    ops = set()
    for path, body in api_bodies(bundle).items():
        operation = path.split("/")[1].split("-")[1]
        ops.add(operation)
        assert not botocore_errors(operation, body), path
    assert ops == {"CreateMesh", "CreateVirtualNode", "CreateVirtualRouter", "CreateRoute", "CreateVirtualService",
                   "CreateVirtualGateway", "CreateGatewayRoute"}


def test_botocore_validation_is_not_a_rubber_stamp() -> None:
    body = api_bodies(lower(simple_mesh()))["aws/4-CreateRoute-reviews-r1-0.json"]
    body["spec"]["httpRoute"]["action"]["weightedTargets"][0]["weight"] = "7"
    assert "weight" in botocore_errors("CreateRoute", body)


def test_output_is_deterministic() -> None:
    assert lower(simple_mesh()).files == lower(simple_mesh()).files


# --------------------------------------------------------------------------- lowering decisions


@pytest.mark.parametrize("weights, expected", [
    ([5000, 5000], [1, 1]), ([1250, 8750], [1, 7]), ([2000, 8000], [1, 4]), ([10_000], [1]),
    ([100, 9900], [1, 99]), ([3333, 6667], None), ([1, 9999], None), ([0, 10_000], [0, 1]),
])
def test_weights_scale_exactly_or_not_at_all(weights: list[int], expected: list[int] | None) -> None:
    got = scale_weights(weights)
    assert got == expected
    if got is not None:  # same ratios, no drift
        assert all(a * sum(weights) == w * sum(got) for a, w in zip(got, weights, strict=True))


def test_inexact_split_is_an_error_at_the_rule() -> None:
    diags = lower(bookinfo()).diagnostics
    assert any(d.code == "E330" and "33.33%" in d.message for d in diags)


def route(bundle: Bundle, name: str) -> dict[str, Any]:
    return api_bodies(bundle)[f"aws/4-CreateRoute-{name}.json"]["spec"]


def test_routes_keep_rule_order_as_priority_and_retries_count_retries() -> None:
    bundle = lower(simple_mesh())
    names = [p.split("CreateRoute-")[1][:-5] for p in api_bodies(bundle) if "CreateRoute-reviews" in p]
    prios = {n: route(bundle, n)["priority"] for n in names}
    assert sorted(prios, key=prios.__getitem__) == ["reviews-r0-0", "reviews-r1-0", "reviews-r2-0", "reviews-r2-1",
                                                    "reviews-r2-2", "reviews-r2-3", "reviews-r3-0"]
    split = route(bundle, "reviews-r1-0")["httpRoute"]["action"]["weightedTargets"]
    assert [(t["virtualNode"], t["weight"]) for t in split] == [("reviews-v2", 1), ("reviews-v3", 7)]
    api = route(bundle, "reviews-r2-0")["httpRoute"]
    assert api["match"] == {"path": {"exact": "/api"}, "method": "GET"}  # `under` = exact + "/api/" prefix
    assert api["retryPolicy"] == {"maxRetries": 2, "perRetryTimeout": {"unit": "ms", "value": 300},
                                  "httpRetryEvents": ["gateway-error"], "tcpRetryEvents": ["connection-error"]}
    assert route(bundle, "reviews-r2-1")["httpRoute"]["match"] == {"path": {"exact": "/api"}, "method": "HEAD"}
    assert route(bundle, "reviews-r2-2")["httpRoute"]["match"] == {"prefix": "/api/", "method": "GET"}
    default = route(bundle, "reviews-r3-0")["httpRoute"]
    assert default["retryPolicy"]["maxRetries"] == 3 and default["timeout"]["perRequest"] == {"unit": "s", "value": 2}
    # no timeout anywhere: explicit, never App Mesh's 15 s default
    details = route(bundle, "details-r0-0")["httpRoute"]
    assert details["timeout"]["perRequest"] == {"unit": "s", "value": NO_TIMEOUT_MS // 1000}
    # no retries: explicit zero, never App Mesh's default policy (2 retries)
    assert details["retryPolicy"]["maxRetries"] == 0


def listener_sans(bundle: Bundle, node: str) -> list[str] | None:
    lst = api_bodies(bundle)[f"aws/2-CreateVirtualNode-{node}.json"]["spec"]["listeners"][0]
    san = lst["tls"]["validation"].get("subjectAlternativeNames")
    return None if san is None else san["match"]["exact"]


def test_authorization_becomes_client_san_allow_lists() -> None:
    bundle = lower(simple_mesh())
    sp = "spiffe://cluster.local/ns/default/sa/"
    assert listener_sans(bundle, "productpage-v1") == [sp + "ingress-gateway"]
    assert listener_sans(bundle, "reviews-v1") == [sp + "bookinfo-productpage"]
    # `allow *` minus `deny details`: every mesh identity but details
    assert listener_sans(bundle, "ratings-v1") == sorted(
        [sp + "bookinfo-productpage", sp + "bookinfo-ratings", sp + "bookinfo-reviews", sp + "ingress-gateway"])
    # productpage may only reach its declared backends, verified by SAN
    pp = api_bodies(bundle)["aws/2-CreateVirtualNode-productpage-v1.json"]["spec"]
    assert [b["virtualService"]["virtualServiceName"] for b in pp["backends"]] == [
        "details.default.svc.cluster.local", "reviews.default.svc.cluster.local"]


def test_gateway_routes_keep_the_path_and_the_host() -> None:
    bodies = api_bodies(lower(simple_mesh()))
    routes = [b["spec"]["httpRoute"] for p, b in bodies.items() if "CreateGatewayRoute" in p]
    assert [r["match"] for r in routes] == [{"path": {"exact": "/productpage"}}, {"path": {"exact": "/static"}},
                                            {"prefix": "/static/"}]
    keep_host = {"hostname": {"defaultTargetHostname": "DISABLED"}}
    assert [r["action"]["rewrite"] for r in routes] == [
        keep_host, keep_host, {**keep_host, "prefix": {"defaultPrefix": "DISABLED"}}]


def test_unsupported_features_are_e301() -> None:
    messages = {d.message for d in AppMeshBackend().unsupported(bookinfo())}
    assert any("rate limits" in m for m in messages)
    assert any("authorization by path" in m for m in messages)
    assert any("least-request" in m for m in messages)


def test_external_service_with_tls_origination() -> None:
    from model_fixtures import ident

    from meshc.model import External, Port, Service, Timeout

    mesh = bookinfo()
    ext = Service(name="payments", namespace="default", identity=ident("payments"),
                  ports=(Port(protocol="tls", number=443, mtls="disabled"),),
                  external=External(host="api.stripe.com", tls_originate=True, sni="api.stripe.com"),
                  resilience=bookinfo().service("details").resilience.model_copy(  # type: ignore[union-attr]
                      update={"timeout": Timeout(ms=3000)}))
    mesh = replace(update_service(mesh, "ratings", calls=("payments",)),
                   services=tuple(sorted((*update_service(mesh, "ratings", calls=("payments",)).services, ext),
                                         key=lambda s: s.name)))
    bundle = lower(mesh)
    bodies = api_bodies(bundle)
    node = bodies["aws/2-CreateVirtualNode-payments.json"]["spec"]
    assert node == {"listeners": [{"portMapping": {"port": 443, "protocol": "http"}}],
                    "serviceDiscovery": {"dns": {"hostname": "api.stripe.com"}}}
    assert bodies["aws/5-CreateVirtualService-payments.json"]["virtualServiceName"] == "api.stripe.com"
    assert route(bundle, "payments-r0-0")["httpRoute"]["timeout"]["perRequest"] == {"unit": "s", "value": 3}
    (backend,) = bodies["aws/2-CreateVirtualNode-ratings-v1.json"]["spec"]["backends"]
    assert backend["virtualService"] == {
        "virtualServiceName": "api.stripe.com",
        "clientPolicy": {"tls": {"enforce": True, "validation": {
            "trust": {"file": {"certificateChain": "/etc/ssl/certs/ca-certificates.crt"}},
            "subjectAlternativeNames": {"match": {"exact": ["api.stripe.com"]}}}}}}
    validate_crds("appmesh", list(crds(bundle).values()))
    for path, body in bodies.items():
        assert not botocore_errors(path.split("/")[1].split("-")[1], body), path


def test_http1_request_limit_is_a_connection_limit() -> None:
    """circuit_breaker max_connections 100 max_pending 10 max_requests 200 on an HTTP/1.1 port:
    one request per connection, so at most 100 in flight and 10 waiting."""
    bundle = lower(bookinfo())
    lst = api_bodies(bundle)["aws/2-CreateVirtualNode-reviews-v1.json"]["spec"]["listeners"][0]
    assert lst["connectionPool"] == {"http": {"maxConnections": 100, "maxPendingRequests": 10}}
    assert not [d for d in bundle.diagnostics if "max_requests" in d.message]


def test_grpc_paths_become_service_and_method_names() -> None:
    """gRPC requests go to /<package.Service>/<Method>: App Mesh's serviceName/methodName."""
    from meshc.compiler import load_text

    text = ('mesh m {}\nservice cart {\n  port grpc 9000\n  version v1 { labels version=v1 }\n'
            '  version v2 { labels version=v2 }\n  route {\n'
            '    when path exact "/shop.Cart/Add" -> v2\n'
            '    when path prefix "/shop.Cart/" and header x-tenant == "a" -> v2\n'
            '    when path under "/shop.Admin" -> v2\n'
            '    otherwise -> v1\n  }\n}\nallow * -> cart\n')
    bundle = lower(load_text(text, checks=False))
    assert not [d for d in bundle.diagnostics if d.severity == "error"], bundle.diagnostics
    matches = [route(bundle, f"cart-r{i}-0")["grpcRoute"]["match"] for i in range(4)]
    assert matches == [{"serviceName": "shop.Cart", "methodName": "Add"},
                       {"serviceName": "shop.Cart", "metadata": [{"name": "x-tenant", "match": {"exact": "a"}}]},
                       {"serviceName": "shop.Admin"}, {}]
    validate_crds("appmesh", list(crds(bundle).values()))
    for path, body in api_bodies(bundle).items():
        assert not botocore_errors(path.split("/")[1].split("-")[1], body), path
    # a path that names no gRPC service or method cannot be said
    bad = lower(load_text(text.replace('prefix "/shop.Cart/"', 'prefix "/shop"'), checks=False)).diagnostics
    assert any(d.code == "E330" and "gRPC" in d.message for d in bad)


def test_client_tls_only_towards_ports_that_speak_it() -> None:
    # `mtls disabled` gave every backend clientPolicy.tls {enforce: true} while the callee's
    # listener had no TLS: every call failed. Mixed ports name the TLS ports.
    from meshc.compiler import load_text

    text = """mesh m {{ mtls {mode} authz allow_by_default }}
service web {{ port http 8080 calls api expose ingress on port 80 paths prefix "/" }}
service api {{ port http 9090 {extra} calls db }}
service db {{ port tcp 5432 }}
"""
    off = lower(load_text(text.format(mode="disabled", extra=""), "m.mesh"))
    bodies = api_bodies(off)
    for path, body in bodies.items():
        assert "clientPolicy" not in json.dumps(body), path
        operation = path.split("/")[1].split("-")[1]
        assert not botocore_errors(operation, body), (path, botocore_errors(operation, body))
    validate_crds("appmesh", list(crds(off).values()))
    mixed = lower(load_text(text.format(mode="disabled", extra="port http 9443 mtls strict on port 9443"), "m.mesh"))
    web = next(b for p, b in api_bodies(mixed).items() if b.get("virtualNodeName") == "web")
    (backend,) = [b for b in web["spec"]["backends"] if b["virtualService"]["virtualServiceName"].startswith("api")]
    assert backend["virtualService"]["clientPolicy"]["tls"]["ports"] == [9443]
