"""`meshc import` on small inputs written in the shapes real NGINX Service Mesh (SMI), Linkerd
and Consul configurations take (older API versions, Consul's HCL1 documentation style,
Linkerd's Server defaults): each construct is carried over with its meaning, or reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshc.compiler import load_text
from meshc.importers import import_files
from meshc.importers.common import Result


def run(tmp_path: Path, source: str, files: dict[str, str]) -> Result:
    paths = []
    for name, text in files.items():
        p = tmp_path / name
        p.write_text(text, encoding="utf-8")
        paths.append(p)
    result = import_files(source, paths)
    load_text(result.text)  # what was written compiles
    return result


def reported(result: Result, resource: str, fld: str = "") -> bool:
    return any(e.resource == resource and fld in e.field for e in result.report)


def rules(result: Result) -> list[tuple[str, tuple[str, ...], tuple[str, ...], tuple[int, ...]]]:
    return [(r.action, tuple(str(s) for s in r.sources), r.destinations, r.ports) for r in result.mesh.rules]


# --------------------------------------------------------------------------- NGINX Service Mesh

SERVICE_A = """
apiVersion: v1
kind: Service
metadata: {name: svc-a}
spec:
  selector: {app: svc-a}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: http-admin, port: 9000}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: svc-a}
spec:
  template:
    metadata: {labels: {app: svc-a}}
    spec: {serviceAccountName: svc-a}
"""


def test_smi_v1alpha1_traffic_target_has_top_level_fields_and_specs(tmp_path: Path) -> None:
    result = run(tmp_path, "nginx-mesh", {"a.yaml": SERVICE_A + """
---
apiVersion: access.smi-spec.io/v1alpha1
kind: TrafficTarget
metadata: {name: scrape}
destination: {kind: ServiceAccount, name: svc-a, namespace: default, port: "8080"}
specs:
- {kind: HTTPRouteGroup, name: routes, matches: [metrics]}
sources:
- {kind: ServiceAccount, name: scraper, namespace: default}
---
apiVersion: specs.smi-spec.io/v1alpha1
kind: HTTPRouteGroup
metadata: {name: routes}
matches:
- {name: metrics, pathRegex: "^/metrics$", methods: [GET]}
- {name: other, pathRegex: "/other/.*"}
"""})
    (rule,) = result.mesh.rules
    # only GET /metrics, on the Service port the pod port 8080 is reached by
    assert (rule.methods, [(p.kind, p.value) for p in rule.paths], rule.ports) == (("GET",), [("exact", "/metrics")], (80,))
    assert [str(s) for s in rule.sources] == ["scraper"] and rule.destinations == ("svc-a",)


def test_smi_tcp_route_ports_narrow_the_allow(tmp_path: Path) -> None:
    result = run(tmp_path, "nginx-mesh", {"a.yaml": SERVICE_A + """
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {name: admin-port}
spec: {matches: {ports: [9000]}}
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: t}
spec:
  destination: {kind: ServiceAccount, name: svc-a, namespace: default}
  rules: [{kind: TCPRoute, name: admin-port}]
  sources: [{kind: ServiceAccount, name: ops, namespace: default}]
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: missing}
spec:
  destination: {kind: ServiceAccount, name: svc-a, namespace: default}
  rules: [{kind: TCPRoute, name: nowhere}]
  sources: [{kind: ServiceAccount, name: other, namespace: default}]
"""})
    assert rules(result) == [("allow", ("ops",), ("svc-a",), (9000,))]
    assert reported(result, "TrafficTarget default/missing", "spec.rules")  # fail closed, said so


def test_smi_v1alpha1_quantity_weights(tmp_path: Path) -> None:
    result = run(tmp_path, "nginx-mesh", {"a.yaml": """
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: split.smi-spec.io/v1alpha1
kind: TrafficSplit
metadata: {name: web}
spec:
  service: web
  backends:
  - {service: web-v1, weight: "1"}
  - {service: web-v2, weight: 500m}
"""})
    web = result.mesh.service("web")
    assert web is not None
    (rule,) = web.routes
    assert [(d.version, d.weight) for d in rule.destinations] == [("v1", 6667), ("v2", 3333)]


@pytest.mark.parametrize(("extra", "bucket", "delay_reported"), [
    ("", 1, False),  # NSM's default burst is 0: a bucket of one request
    ("  burst: 5\n  delay: nodelay\n", 6, False),
    ("  burst: 5\n", 6, True),  # without nodelay NSM queues the burst
])
def test_nsm_rate_limit_burst(tmp_path: Path, extra: str, bucket: int, delay_reported: bool) -> None:
    result = run(tmp_path, "nginx-mesh", {"a.yaml": SERVICE_A + """
---
apiVersion: specs.smi.nginx.com/v1alpha2
kind: RateLimit
metadata: {name: rl}
spec:
  destination: {kind: Service, name: svc-a, namespace: default}
  name: rl
  rate: 10r/m
""" + extra})
    svc = result.mesh.service("svc-a")
    assert svc is not None and svc.resilience.rate_limit is not None
    assert (svc.resilience.rate_limit.requests, svc.resilience.rate_limit.unit, svc.resilience.rate_limit.burst) == \
        (10, "m", bucket)
    assert reported(result, "RateLimit default/rl", "spec.delay") is delay_reported


def test_nsm_circuit_breaker_and_helm_values(tmp_path: Path) -> None:
    result = run(tmp_path, "nginx-mesh", {"a.yaml": SERVICE_A + """
---
apiVersion: specs.smi.nginx.com/v1alpha1
kind: CircuitBreaker
metadata: {name: cb}
spec:
  destination: {kind: Service, name: svc-a, namespace: default}
  errors: 3
  timeoutSeconds: 30
  fallback: {service: default/fallback, port: 8080}
""", "values.yaml": "mtls: {mode: strict}\naccessControlMode: deny\n"})
    m = result.mesh
    assert (m.mtls, m.authz) == ("strict", "deny_by_default")
    svc = m.service("svc-a")
    assert svc is not None and svc.resilience.outlier is not None
    assert (svc.resilience.outlier.consecutive_5xx, svc.resilience.outlier.interval_ms) == (3, 30_000)
    assert reported(result, "CircuitBreaker default/cb", "spec.fallback")


# --------------------------------------------------------------------------- Linkerd

EMOJI = """
apiVersion: v1
kind: Service
metadata: {name: emoji-svc, namespace: emojivoto}
spec:
  selector: {app: emoji-svc}
  ports: [{name: grpc, port: 8080, targetPort: 8080}, {name: prom, port: 8801, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-svc, namespace: emojivoto}
spec:
  selector: {app: web-svc}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: emojivoto}
spec:
  template:
    metadata: {labels: {app: web-svc}}
    spec:
      serviceAccountName: web
      containers: [{name: web, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: emoji, namespace: emojivoto}
spec:
  template:
    metadata: {labels: {app: emoji-svc}}
    spec:
      serviceAccountName: emoji
      containers: [{name: emoji, ports: [{name: grpc, containerPort: 8080}]}]
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: emoji-grpc, namespace: emojivoto, labels: {app: emoji}}
spec:
  podSelector: {matchLabels: {app: emoji-svc}}
  port: grpc
  proxyProtocol: gRPC
"""


def test_linkerd_server_authorization_and_named_ports(tmp_path: Path) -> None:
    result = run(tmp_path, "linkerd", {"a.yaml": EMOJI + """
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {name: emoji-grpc, namespace: emojivoto}
spec:
  server: {selector: {matchLabels: {app: emoji}}}
  client:
    meshTLS:
      serviceAccounts: [{name: web}]
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: web-http, namespace: emojivoto}
spec:
  podSelector: {matchLabels: {app: web-svc}}
  port: 8080
  proxyProtocol: HTTP/1
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {name: web-public, namespace: emojivoto}
spec:
  server: {name: web-http}
  client: {unauthenticated: true}
"""})
    m = result.mesh
    emoji = m.service("emoji-svc")
    assert emoji is not None and [(p.number, p.protocol) for p in emoji.ports] == [(8080, "grpc"), (8801, "http")]
    # A Server without accessPolicy denies what is not authorized: the mesh denies by default and
    # the port no Server covers keeps Linkerd's default (everyone).
    assert m.authz == "deny_by_default"
    assert sorted(rules(result)) == sorted([
        ("allow", ("web-svc",), ("emoji-svc",), (8080,)),  # the named port `grpc`
        ("allow", ("*",), ("web-svc",), ()),  # pod port 8080 is Service port 80, its only port
        ("allow", ("*",), ("emoji-svc",), (8801,)),
    ])
    assert not any("named ports" in e.why for e in result.report)


def test_linkerd_server_access_policy_under_a_deny_namespace(tmp_path: Path) -> None:
    result = run(tmp_path, "linkerd", {"a.yaml": EMOJI.replace("proxyProtocol: gRPC", "proxyProtocol: gRPC\n"
                                                                  "  accessPolicy: all-authenticated") + """
---
apiVersion: v1
kind: Namespace
metadata:
  name: emojivoto
  annotations: {config.linkerd.io/default-inbound-policy: deny}
"""})
    # the Server opens its port to every meshed client; everything else stays denied
    assert result.mesh.authz == "deny_by_default"
    assert rules(result) == [("allow", ("authenticated",), ("emoji-svc",), (8080,))]


def test_linkerd_wildcard_identity_is_reported_not_renamed(tmp_path: Path) -> None:
    result = run(tmp_path, "linkerd", {"a.yaml": EMOJI + """
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: authn, namespace: emojivoto}
spec:
  identities:
  - "web.emojivoto.serviceaccount.identity.linkerd.cluster.local"
  - "*.other.serviceaccount.identity.linkerd.cluster.local"
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ap, namespace: emojivoto}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: emoji-grpc}
  requiredAuthenticationRefs: [{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: authn}]
"""})
    sources = {(s.kind, s.name) for r in result.mesh.rules for s in r.sources}
    assert ("service", "web-svc") in sources
    assert not any(kind == "identity" for kind, _ in sources)  # `*.other...` did not become an identity "x"
    assert reported(result, "MeshTLSAuthentication emojivoto/authn", "spec.identities")


def test_linkerd_unknown_server_port_fails_closed(tmp_path: Path) -> None:
    result = run(tmp_path, "linkerd", {"a.yaml": EMOJI.replace("port: grpc", "port: admin") + """
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {name: all, namespace: emojivoto}
spec:
  server: {name: emoji-grpc}
  client: {unauthenticated: true}
"""})
    assert not any(r.action == "allow" and r.destinations == ("emoji-svc",) and not r.ports for r in result.mesh.rules)
    assert reported(result, "Server emojivoto/emoji-grpc", "spec.port")


def test_linkerd_service_profile(tmp_path: Path) -> None:
    result = run(tmp_path, "linkerd", {"a.yaml": """
apiVersion: v1
kind: Service
metadata: {name: webapp, namespace: booksapp}
spec: {selector: {app: webapp}, ports: [{name: http, port: 7000}]}
---
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {name: webapp.booksapp.svc.cluster.local, namespace: booksapp}
spec:
  retryBudget: {retryRatio: 0.2, minRetriesPerSecond: 10, ttl: 10s}
  routes:
  - name: GET /books/{id}
    condition:
      all:
      - method: GET
      - pathRegex: '/books/[^/]*'
  - name: POST /authors
    condition: {method: POST, pathRegex: /authors}
    isRetryable: true
    timeout: 300ms
"""})
    web = result.mesh.service("webapp")
    assert web is not None
    books, authors, _ = web.routes
    assert (books.matches[0].methods, books.matches[0].path and books.matches[0].path.value) == \
        (("GET",), "/books/[^/]*")
    assert books.timeout is not None and books.timeout.ms == 10_000  # a profile route's default timeout
    assert authors.timeout is not None and authors.timeout.ms == 300
    assert authors.retry is not None and (authors.retry.attempts, authors.retry.budget) == (1, 2000)


def test_linkerd_unread_annotations_and_route_fields_are_reported(tmp_path: Path) -> None:
    result = run(tmp_path, "linkerd", {"a.yaml": """
apiVersion: v1
kind: Service
metadata:
  name: books
  namespace: booksapp
  annotations:
    retry.linkerd.io/http: 5xx
    retry.linkerd.io/limit: "2"
    timeout.linkerd.io/response: 2s
spec: {selector: {app: books}, ports: [{name: http, port: 7002}]}
---
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {name: books, namespace: booksapp, annotations: {retry.linkerd.io/grpc: cancelled}}
spec:
  parentRefs: [{name: books, kind: Service, group: core, port: 7002}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /books}}]
    timeouts: {request: 3s, backendRequest: 1s}
"""})
    books = result.mesh.service("books")
    assert books is not None and books.resilience.retry is not None and books.resilience.retry.attempts == 2
    assert reported(result, "Service booksapp/books", "timeout.linkerd.io/response")
    assert reported(result, "HTTPRoute booksapp/books", "retry.linkerd.io/grpc")
    assert reported(result, "HTTPRoute booksapp/books", "timeouts.backendRequest")


def test_linkerd_route_for_one_port_of_several_is_reported(tmp_path: Path) -> None:
    """meshc routes belong to a service: a parentRef port on a one-port service loses nothing,
    on a service with more ports the route widens to all of them, which is said."""
    route = """
---
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {name: books, namespace: booksapp}
spec:
  parentRefs: [{name: books, kind: Service, group: core, port: 7002}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /books}}]
"""
    service = """
apiVersion: v1
kind: Service
metadata: {name: books, namespace: booksapp}
spec: {selector: {app: books}, ports: [%s]}
"""
    one = run(tmp_path, "linkerd", {"a.yaml": service % "{name: http, port: 7002}" + route})
    assert not reported(one, "HTTPRoute booksapp/books", "parentRefs.port")
    two = run(tmp_path, "linkerd", {"a.yaml": service % "{name: http, port: 7002}, {name: admin, port: 9990}" + route})
    assert reported(two, "HTTPRoute booksapp/books", "parentRefs.port")


# --------------------------------------------------------------------------- Consul

ROUTER_HCL1 = '''
Kind = "service-router"
Name = "api"
Routes = [
  {
    Match {
      HTTP {
        PathPrefix = "/admin"
        Header = [
          {
            Name  = "x-debug"
            Exact = "1"
          },
        ]
      }
    }
    Destination {
      Service               = "admin"
      RequestTimeout        = "5s"
      NumRetries            = 3
      RetryOnConnectFailure = true
      RetryOnStatusCodes    = [503]
    }
  },
  {
    # a comment with a brace { in it
    Match { HTTP { PathPrefix = "/v2" } }
    Destination { ServiceSubset = "v2" }
  },
]
'''


def test_consul_hcl1_nested_blocks(tmp_path: Path) -> None:
    result = run(tmp_path, "consul", {
        "defaults.hcl": 'Kind = "proxy-defaults"\nName = "global"\nConfig {\n  protocol = "http"\n}\n',
        "resolver.hcl": 'Kind = "service-resolver"\nName = "api"\nDefaultSubset = "v1"\nSubsets = {\n'
                        '  v1 = { Filter = "Service.Meta.version == v1" }\n'
                        '  v2 = { Filter = "Service.Meta.version == v2" }\n}\n',
        "router.hcl": ROUTER_HCL1})
    api = result.mesh.service("api")
    assert api is not None and [p.protocol for p in api.ports] == ["http"]
    admin, v2, default = api.routes
    assert admin.matches[0].path is not None and admin.matches[0].path.value == "/admin"
    assert [(h.name, h.value) for h in admin.matches[0].headers] == [("x-debug", "1")]
    assert admin.destinations[0].service == "admin" and admin.timeout is not None and admin.timeout.ms == 5000
    assert admin.retry is not None and (admin.retry.attempts, admin.retry.on, admin.retry.status_codes) == \
        (3, ("connect-failure",), (503,))
    assert v2.destinations[0].version == "v2" and default.destinations[0].version == "v1"


def test_consul_top_level_blocks_are_maps(tmp_path: Path) -> None:
    result = run(tmp_path, "consul", {"web.hcl": '''
Kind = "service-defaults"
Name = "web"
Protocol = "http"
UpstreamConfig {
  Overrides = [
    {
      Name = "api"
      Limits {
        MaxConnections = 512
        MaxPendingRequests = 64
      }
      PassiveHealthCheck {
        Interval = "10s"
        MaxFailures = 5
        EnforcingConsecutive5xx = 100
      }
      ConnectTimeoutMs = 5000
    }
  ]
}
''', "api.hcl": 'Kind = "service-defaults"\nName = "api"\nProtocol = "http"\n'})
    api = result.mesh.service("api")
    assert api is not None and api.resilience.circuit_breaker is not None and api.resilience.outlier is not None
    assert (api.resilience.circuit_breaker.max_connections, api.resilience.circuit_breaker.max_pending) == (512, 64)
    assert (api.resilience.outlier.consecutive_5xx, api.resilience.outlier.interval_ms) == (5, 10_000)
    assert reported(result, "service-defaults web", "ConnectTimeoutMs")
    assert not reported(result, "service-defaults web", "EnforcingConsecutive5xx")  # Envoy's default, 100


def test_consul_conflicting_caller_limits_are_reported(tmp_path: Path) -> None:
    entries = [{"Kind": "service-defaults", "Name": caller, "Protocol": "http",
                "UpstreamConfig": {"Overrides": [{"Name": "api", "Limits": {"MaxConnections": n}}]}}
               for caller, n in (("a", 10), ("b", 20))]
    import json
    result = run(tmp_path, "consul", {"e.json": json.dumps(entries)})
    api = result.mesh.service("api")
    assert api is not None and api.resilience.circuit_breaker is not None
    assert api.resilience.circuit_breaker.max_connections == 10
    assert reported(result, "service-defaults b", "Limits")


def test_consul_retry_conditions_as_consul_applies_them(tmp_path: Path) -> None:
    result = run(tmp_path, "consul", {"e.json": """[
 {"Kind": "service-defaults", "Name": "api", "Protocol": "http"},
 {"Kind": "service-router", "Name": "api", "Routes": [
   {"Match": {"HTTP": {"PathPrefix": "/a"}}, "Destination": {"NumRetries": 2}},
   {"Match": {"HTTP": {"PathPrefix": "/b"}}, "Destination": {"RetryOnConnectFailure": true}},
   {"Match": {"HTTP": {"PathPrefix": "/c"}}, "Destination": {"NumRetries": 2, "RetryOn": ["5xx"]}}]}]"""})
    api = result.mesh.service("api")
    assert api is not None
    a, b, c, _ = api.routes
    # NumRetries alone retries nothing in Consul (no retry_on): no retry, reported
    assert a.retry is None or a.retry.attempts == 0
    assert reported(result, "service-router api", "Routes[0].Destination.NumRetries")
    # a condition without NumRetries: Envoy's default of one retry
    assert b.retry is not None and (b.retry.attempts, b.retry.on) == (1, ("connect-failure",))
    assert c.retry is not None and (c.retry.attempts, c.retry.on) == (2, ("5xx",))


def test_consul_resolver_options_are_reported(tmp_path: Path) -> None:
    result = run(tmp_path, "consul", {"r.hcl": '''
Kind = "service-resolver"
Name = "api"
ConnectTimeout = "15s"
Subsets = {
  v1 = {
    Filter = "Service.Meta.version == v1"
    OnlyPassing = true
  }
}
''', "p.hcl": 'Kind = "proxy-defaults"\nName = "global"\nConfig {\n  protocol = "http"\n'
              '  local_connect_timeout_ms = 1000\n}\n'})
    assert reported(result, "service-resolver api", "ConnectTimeout")
    assert reported(result, "service-resolver api", "Subsets.v1.OnlyPassing")
    assert reported(result, "proxy-defaults global", "Config.local_connect_timeout_ms")


def test_consul_crd_proxy_config_keys_keep_their_case(tmp_path: Path) -> None:
    result = run(tmp_path, "consul", {"p.yaml": """
apiVersion: consul.hashicorp.com/v1alpha1
kind: ProxyDefaults
metadata: {name: global}
spec:
  config: {protocol: http}
---
apiVersion: consul.hashicorp.com/v1alpha1
kind: ServiceDefaults
metadata: {name: api}
spec: {}
"""})
    api = result.mesh.service("api")
    assert api is not None and [p.protocol for p in api.ports] == ["http"]  # the CRD's `protocol` was read


def test_consul_snake_case_entries(tmp_path: Path) -> None:
    # older Consul documentation (and `consul config write`) use snake_case keys
    result = run(tmp_path, "consul", {"r.hcl": '''
kind = "service-router"
name = "web"
routes = [
  {
    match { http { path_prefix = "/admin" } }
    destination {
      service                  = "admin"
      num_retries              = 2
      retry_on_connect_failure = true
    }
  },
]
''', "d.hcl": 'kind = "service-defaults"\nname = "web"\nprotocol = "http"\nmutual_tls_mode = "permissive"\n'})
    web = result.mesh.service("web")
    assert web is not None and web.mtls == "permissive"
    admin, default = web.routes
    assert admin.matches[0].path is not None and admin.matches[0].path.value == "/admin"
    assert admin.destinations[0].service == "admin"
    assert admin.retry is not None and (admin.retry.attempts, admin.retry.on) == (2, ("connect-failure",))
    assert default.destinations[0].service == "web"
