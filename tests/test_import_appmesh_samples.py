"""`meshc import --from appmesh` on inputs shaped like real App Mesh setups (controller CRDs and
API bodies, written here, small): shared virtual nodes, podSelector labels, client-only nodes,
gRPC matches, gateway routes (rewrites, hosts, regex paths) and what must be reported."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from meshc.backends import compile_mesh

from meshc.compiler import load_text
from meshc.importers import import_files
from meshc.importers.common import Result

CRD = "apiVersion: appmesh.k8s.aws/v1beta2\n"


def crd(kind: str, name: str, spec: str, ns: str = "shop") -> str:
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return f"{CRD}kind: {kind}\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}\n"


def node(name: str, labels: str, extra: str = "", proto: str = "http") -> str:
    extra = textwrap.indent(textwrap.dedent(extra), "    ")  # more keys of the listener
    return crd("VirtualNode", name, f"""
podSelector: {{matchLabels: {labels}}}
listeners:
  - portMapping: {{port: 8080, protocol: {proto}}}
{extra}
serviceDiscovery: {{dns: {{hostname: {name}.shop.svc.cluster.local}}}}""")


def vs(name: str, router: str) -> str:
    return crd("VirtualService", name, f"""
awsName: {name}.shop.svc.cluster.local
provider: {{virtualRouter: {{virtualRouterRef: {{name: {router}}}}}}}""")


def run(tmp_path: Path, *docs: str, name: str = "in.yaml") -> Result:
    p = tmp_path / name
    p.write_text("---\n".join(docs))
    result = import_files("appmesh", [p])
    load_text(result.text)  # the output is a valid .mesh program
    return result


def fields(result: Result) -> list[tuple[str, str]]:
    return [(e.resource, e.field) for e in result.report]


ROUTERS = [
    node("blue", "{app: color, version: blue}", """healthCheck: {protocol: http, path: /ping, healthyThreshold: 2,
              unhealthyThreshold: 2, timeoutMillis: 2000, intervalMillis: 5000}"""),
    node("white", "{app: color, version: white}"),
    vs("color-headers", "color-headers"),
    vs("color-paths", "color-paths"),
    crd("VirtualRouter", "color-headers", """
listeners: [{portMapping: {port: 8080, protocol: http}}]
routes:
  - name: blue
    priority: 10
    httpRoute:
      match: {prefix: /, headers: [{name: color_header, match: {exact: blue}}]}
      action: {weightedTargets: [{virtualNodeRef: {name: blue}, weight: 1}]}
  - name: present
    priority: 20
    httpRoute:
      match: {prefix: /, headers: [{name: color_header}]}
      action: {weightedTargets: [{virtualNodeRef: {name: white}, weight: 1}]}
  - name: rest
    httpRoute:
      match: {prefix: /}
      action: {weightedTargets: [{virtualNodeRef: {name: white}, weight: 1}]}
      retryPolicy: {maxRetries: 4, perRetryTimeout: {unit: ms, value: 2000}, httpRetryEvents: [server-error],
                    tcpRetryEvents: [connection-error]}
      timeout: {perRequest: {unit: s, value: 10}}"""),
    crd("VirtualRouter", "color-paths", """
listeners: [{portMapping: {port: 8080, protocol: http}}]
routes:
  - name: blue
    priority: 10
    httpRoute:
      match: {prefix: /blue}
      action: {weightedTargets: [{virtualNodeRef: {name: blue}, weight: 1}]}
  - name: split
    httpRoute:
      match: {prefix: /}
      action: {weightedTargets: [{virtualNodeRef: {name: blue}, weight: 1},
                                 {virtualNodeRef: {name: white}, weight: 3}]}"""),
]


def test_a_node_behind_two_routers_is_a_version_of_each(tmp_path: Path) -> None:
    result = run(tmp_path, *ROUTERS)
    headers, paths = result.mesh.service("color-headers"), result.mesh.service("color-paths")
    assert headers is not None and paths is not None
    # before: node `blue` belonged to the last router read, so color-headers sent to color-paths.blue
    for rule in headers.routes + paths.routes:
        assert {d.service for d in rule.destinations} <= {headers.name, paths.name}
    assert [d.service for d in headers.routes[0].destinations] == ["color-headers"]
    assert [(d.service, d.version) for d in paths.routes[0].destinations] == [("color-paths", "blue")]
    assert [(d.version, d.weight) for d in paths.routes[-1].destinations] == [("blue", 2500), ("white", 7500)]
    # node settings (the health check of `blue`) hold for both services
    for svc in (headers, paths):
        assert svc.resilience.health_check is not None and svc.resilience.health_check.path == "/ping"
        assert svc.resilience.health_check.interval_ms == 5000 and svc.resilience.health_check.unhealthy == 2


def test_versions_select_the_pods_of_the_pod_selector(tmp_path: Path) -> None:
    result = run(tmp_path, *ROUTERS)
    svc = result.mesh.service("color-paths")
    assert svc is not None
    assert {v.name: dict(v.labels) for v in svc.versions} == {
        "blue": {"app": "color", "version": "blue"}, "white": {"app": "color", "version": "white"}}


def test_header_routes_retries_and_timeouts(tmp_path: Path) -> None:
    result = run(tmp_path, *ROUTERS)
    svc = result.mesh.service("color-headers")
    assert svc is not None
    first, present = svc.routes[0], svc.routes[1]
    assert [(h.name, h.kind, h.value) for h in first.matches[0].headers] == [("color_header", "exact", "blue")]
    assert [(h.name, h.kind) for h in present.matches[0].headers] == [("color_header", "present")]
    # the explicit policy of the last route: 4 retries on 5xx and connection errors, 2 s each, 10 s
    policies = [r.retry for r in svc.routes] + [svc.resilience.retry]
    explicit = [p for p in policies if p is not None and p.attempts == 4]
    assert explicit and explicit[0].on == ("5xx", "connect-failure") and explicit[0].per_try_ms == 2000
    timeouts = [r.timeout for r in svc.routes] + [svc.resilience.timeout]
    assert any(t is not None and t.ms == 10_000 for t in timeouts)


def test_compiles_back_to_appmesh_and_envoy(tmp_path: Path) -> None:
    result = run(tmp_path, *ROUTERS)
    for target in ("appmesh", "envoy"):
        paths = compile_mesh(result.mesh, target, unsupported="warn").write(tmp_path / target)
        assert paths
    # the App Mesh output routes `color-paths` to its own virtual nodes, 1:3
    router = json.loads(next(p for p in (tmp_path / "appmesh").rglob("*.json")
                             if "Route" in p.name and "color-paths" in p.read_text()
                             and '"weight": 3' in p.read_text()).read_text())
    targets = router["spec"]["httpRoute"]["action"]["weightedTargets"]
    assert sorted(t["weight"] for t in targets) == [1, 3]


CLIENT_AND_GRPC = [
    CRD + "kind: Mesh\nmetadata: {name: demo}\nspec: {egressFilter: {type: DROP_ALL}}\n",
    crd("VirtualNode", "front", """
podSelector: {matchLabels: {app: front}}
listeners: [{portMapping: {port: 8080, protocol: http}}]
backends: [{virtualService: {virtualServiceRef: {name: color}}}]
backendDefaults:
  clientPolicy:
    tls:
      enforce: true
      certificate: {sds: {secretName: "spiffe://demo.local/ns/shop/sa/front"}}
      validation: {trust: {sds: {secretName: "spiffe://demo.local"}}}
serviceDiscovery: {dns: {hostname: front.shop.svc.cluster.local}}"""),
    node("color-server", "{app: color_server}", """      tls:
        mode: STRICT
        certificate: {sds: {secretName: "spiffe://demo.local/ns/shop/sa/color"}}
        validation:
          trust: {sds: {secretName: "spiffe://demo.local"}}
          subjectAlternativeNames: {match: {exact: ["spiffe://demo.local/ns/shop/sa/front"]}}
      timeout: {grpc: {perRequest: {unit: s, value: 60}, idle: {unit: s, value: 600}}}
      connectionPool: {grpc: {maxRequests: 10}}
      outlierDetection: {maxServerErrors: 5, interval: {unit: s, value: 10},
                         baseEjectionDuration: {unit: s, value: 30}, maxEjectionPercent: 50}""", proto="grpc"),
    vs("color", "color-router"),
    crd("VirtualRouter", "color-router", """
listeners: [{portMapping: {port: 8080, protocol: grpc}}]
routes:
  - name: get
    priority: 1
    grpcRoute:
      match:
        serviceName: color.ColorService
        methodName: GetColor
        metadata: [{name: x-canary, match: {exact: "yes"}}]
      action: {weightedTargets: [{virtualNodeRef: {name: color-server}, weight: 1}]}
      retryPolicy: {maxRetries: 3, perRetryTimeout: {unit: ms, value: 500}, grpcRetryEvents: [unavailable],
                    tcpRetryEvents: [connection-error]}
      timeout: {perRequest: {unit: s, value: 5}, idle: {unit: s, value: 30}}
  - name: all
    priority: 2
    grpcRoute:
      match: {serviceName: color.ColorService}
      action: {weightedTargets: [{virtualNodeRef: {name: color-server}, weight: 1}]}"""),
]


def test_grpc_service_method_and_metadata_are_paths_and_headers(tmp_path: Path) -> None:
    result = run(tmp_path, *CLIENT_AND_GRPC)
    svc = result.mesh.service("color")
    assert svc is not None and [p.protocol for p in svc.ports] == ["grpc"]
    get, every = svc.routes
    assert get.matches[0].path is not None and get.matches[0].path.kind == "exact"
    assert get.matches[0].path.value == "/color.ColorService/GetColor"
    assert [(h.name, h.value) for h in get.matches[0].headers] == [("x-canary", "yes")]
    assert every.matches[0].path is not None and (every.matches[0].path.kind, every.matches[0].path.value) == \
        ("prefix", "/color.ColorService/")
    assert get.retry is not None and get.retry.attempts == 3 and get.retry.per_try_ms == 500
    assert get.timeout is not None and get.timeout.ms == 5000
    assert svc.resilience.circuit_breaker is not None and svc.resilience.circuit_breaker.max_requests == 10
    assert svc.resilience.outlier is not None and svc.resilience.outlier.max_percent == 5000
    # what has no .mesh form is reported, never dropped silently
    got = fields(result)
    assert ("Route get", "retryPolicy.grpcRetryEvents") in got
    assert ("Route get", "timeout.idle") in got
    assert ("VirtualNode color-server", "spec.listeners[0].timeout.grpc.idle") in got


def test_a_node_without_virtual_service_is_a_client_service(tmp_path: Path) -> None:
    result = run(tmp_path, *CLIENT_AND_GRPC)
    front = result.mesh.service("front")
    # before: "no virtual service reaches this node; left out", with its backends
    assert front is not None and front.calls == ("color",)
    # its identity is the client certificate it presents, so the SAN allow-list names it
    assert front.identity.name == "front"
    assert result.mesh.authz == "deny_by_default"
    rules = [(tuple((s.kind, s.name) for s in r.sources), r.destinations) for r in result.mesh.rules]
    assert ((("service", "front"),), ("color",)) in rules
    # its listener validates no client certificate: App Mesh lets every caller in
    assert any(r[1] == ("front",) and r[0][0][0] == "any" for r in rules)
    compile_mesh(result.mesh, "envoy", unsupported="warn")


GATEWAY = [
    crd("VirtualGateway", "ingress-gw", """
listeners: [{portMapping: {port: 8088, protocol: http}}]"""),
    crd("GatewayRoute", "to-paths", """
httpRoute:
  match: {prefix: /paths}
  action: {target: {virtualService: {virtualServiceRef: {name: color-paths}}}}"""),
    crd("GatewayRoute", "to-headers", """
httpRoute:
  match: {prefix: /headers}
  action:
    target: {virtualService: {virtualServiceRef: {name: color-headers}}}
    rewrite: {prefix: {defaultPrefix: DISABLED}}"""),
]


def test_gateway_prefix_rewrite_is_reported(tmp_path: Path) -> None:
    result = run(tmp_path, *ROUTERS, *GATEWAY)
    paths = result.mesh.service("color-paths")
    headers = result.mesh.service("color-headers")
    assert paths is not None and paths.expose is not None and paths.expose.port == 8088
    assert [(p.kind, p.value) for p in paths.expose.paths] == [("prefix", "/paths")]
    # App Mesh rewrites /paths/blue to /blue by default; the ingress keeps the path: reported
    assert ("GatewayRoute to-paths", "action.rewrite.prefix") in fields(result)
    # rewriting disabled: nothing to report
    assert headers is not None and headers.expose is not None
    assert ("GatewayRoute to-headers", "action.rewrite.prefix") not in fields(result)


def api(body: dict[str, object]) -> str:
    return json.dumps(body)


def test_api_gateway_routes_hosts_regex_and_narrowing(tmp_path: Path) -> None:
    mesh = "demo"
    gw_body = {"meshName": mesh, "virtualGatewayName": "gw",
               "spec": {"listeners": [{"portMapping": {"port": 443, "protocol": "http"}}]}}
    docs = [
        api({"meshName": mesh, "virtualNodeName": "web-v1",
             "spec": {"listeners": [{"portMapping": {"port": 80, "protocol": "http"}}],
                      "serviceDiscovery": {"dns": {"hostname": "web-v1.shop.svc.cluster.local"}}}}),
        api({"meshName": mesh, "virtualServiceName": "web.shop.svc.cluster.local",
             "spec": {"provider": {"virtualNode": {"virtualNodeName": "web-v1"}}}}),
        api(gw_body),
        api({"meshName": mesh, "virtualGatewayName": "gw", "gatewayRouteName": "by-host",
             "spec": {"httpRoute": {"match": {"hostname": {"suffix": ".example.com"}, "path": {"regex": "/v[0-9]+/.*"}},
                                    "action": {"target": {"virtualService": {
                                        "virtualServiceName": "web.shop.svc.cluster.local"}}}}}}),
        api({"meshName": mesh, "virtualGatewayName": "gw", "gatewayRouteName": "by-header",
             "spec": {"httpRoute": {"match": {"prefix": "/", "headers": [{"name": "x-beta", "match": {"exact": "1"}}]},
                                    "action": {"target": {"virtualService": {
                                        "virtualServiceName": "web.shop.svc.cluster.local"}}}}}}),
    ]
    paths = []
    for i, d in enumerate(docs):
        p = tmp_path / f"{i}.json"
        p.write_text(d)
        paths.append(p)
    result = import_files("appmesh", paths)
    load_text(result.text)
    web = result.mesh.service("web")
    assert web is not None and web.expose is not None
    # before: the suffix host was dropped (every host) and the regex path too (every path)
    assert web.expose.hosts == ("*.example.com",) and web.expose.port == 443
    assert [(p.kind, p.value) for p in web.expose.paths] == [("regex", "/v[0-9]+/.*")]
    # a header condition cannot be said of an ingress: that route is left out, and reported
    assert ("GatewayRoute by-header", "match.headers") in fields(result)


def test_host_rewrite_and_health_checks_that_change_meaning_are_reported(tmp_path: Path) -> None:
    """App Mesh sets Host to the target's name unless told not to; the ingress keeps it. A
    gateway's own health check, an http2 probe and a probe on another port are not said."""
    keep_host = crd("GatewayRoute", "keeps-host", """
httpRoute:
  match: {path: {exact: /blue}}
  action:
    target: {virtualService: {virtualServiceRef: {name: color-paths}}}
    rewrite: {hostname: {defaultTargetHostname: DISABLED}}""")
    gateway = crd("VirtualGateway", "ingress-gw", """
listeners:
  - portMapping: {port: 8088, protocol: http}
    healthCheck: {protocol: http, path: /ready, healthyThreshold: 2, unhealthyThreshold: 2,
                  timeoutMillis: 2000, intervalMillis: 5000}""")
    probed = node("black", "{app: color, version: black}", """healthCheck: {protocol: http2, path: /ping, port: 9901,
              healthyThreshold: 2, unhealthyThreshold: 2, timeoutMillis: 2000, intervalMillis: 5000}""")
    result = run(tmp_path, *ROUTERS, probed, gateway, *GATEWAY[1:], keep_host)
    got = fields(result)
    assert ("GatewayRoute to-paths", "action.rewrite.hostname") in got
    assert ("GatewayRoute keeps-host", "action.rewrite.hostname") not in got
    assert ("VirtualGateway ingress-gw", "spec.listeners[0].healthCheck") in got
    assert ("VirtualNode black", "spec.listeners[0].healthCheck.protocol") in got
    assert ("VirtualNode black", "spec.listeners[0].healthCheck.port") in got
    assert ("VirtualNode blue", "spec.listeners[0].healthCheck.port") not in got
