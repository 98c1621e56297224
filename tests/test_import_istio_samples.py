"""`meshc import --from istio` on the constructs of Istio's own samples (bookinfo traffic
management, tcp-echo, httpbin, helloworld, egress and security tasks). Every input is a small
document written here that says what the sample says; each import is read back with the graph
checks and compiled for Istio, and what cannot be carried over must be in the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from meshc.backends import compile_mesh

from meshc.compiler import load_text
from meshc.importers import import_files
from meshc.importers.common import Result
from meshc.model import FULL, Service

SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: reviews, labels: {app: reviews}}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: ratings, labels: {app: ratings}}
spec: {selector: {app: ratings}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: httpbin, labels: {app: httpbin}}
spec: {selector: {app: httpbin}, ports: [{name: http, port: 8000, targetPort: 8080}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: httpbin}
spec:
  template:
    metadata: {labels: {app: httpbin, version: v1}}
    spec: {serviceAccountName: httpbin, containers: [{name: httpbin, image: x}]}
---
apiVersion: v1
kind: Service
metadata: {name: sleep, labels: {app: sleep}}
spec: {selector: {app: sleep}, ports: [{name: http, port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: sleep}
spec:
  template:
    metadata: {labels: {app: sleep}}
    spec: {serviceAccountName: sleep, containers: [{name: sleep, image: x}]}
"""
for _svc in ("reviews", "ratings"):
    for _v in ("v1", "v2", "v3"):
        SERVICES += f"""---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {_svc}-{_v}}}
spec:
  template:
    metadata: {{labels: {{app: {_svc}, version: {_v}}}}}
    spec: {{serviceAccountName: bookinfo-{_svc}, containers: [{{name: c, image: x}}]}}
"""

SUBSETS = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""

TCP_ECHO = """
apiVersion: v1
kind: Service
metadata: {name: tcp-echo}
spec: {selector: {app: tcp-echo}, ports: [{name: tcp, port: 9000}, {name: tcp-other, port: 9001}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tcp-echo-destination}
spec:
  host: tcp-echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def run(tmp_path: Path, *texts: str) -> Result:
    paths = []
    for i, text in enumerate(texts):
        p = tmp_path / f"in{i}.yaml"
        p.write_text(text)
        paths.append(p)
    result = import_files("istio", paths)
    load_text(result.text)  # with the graph checks
    bundle = compile_mesh(result.mesh, "istio", unsupported="warn")
    assert not [d for d in bundle.diagnostics if d.severity == "error"]
    return result


def fields(result: Result) -> set[tuple[str, str]]:
    return {(e.resource, e.field) for e in result.report}


def service(result: Result, name: str) -> Service:
    svc = result.mesh.service(name)
    assert svc is not None
    return svc


def istio_docs(result: Result, kind: str) -> list[dict[str, Any]]:
    bundle = compile_mesh(result.mesh, "istio", unsupported="warn")
    return [d for name, data in sorted(bundle.files.items()) if name.endswith(".yaml")
            for d in yaml.safe_load_all(data) if d and d.get("kind") == kind]


# --------------------------------------------------------------------------- traffic management


def test_weighted_shift_and_header_route(tmp_path: Path) -> None:
    result = run(tmp_path, SERVICES, SUBSETS, """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers: {end-user: {exact: jason}}
    route: [{destination: {host: reviews, subset: v2}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v3}, weight: 20}
""")
    reviews = service(result, "reviews")
    first, last = reviews.routes
    assert [(h.name, h.kind, h.value) for h in first.matches[0].headers] == [("end-user", "exact", "jason")]
    assert [(d.version, d.weight) for d in first.destinations] == [("v2", FULL)]
    assert last.is_default and [(d.version, d.weight) for d in last.destinations] == [("v1", 8000), ("v3", 2000)]


def test_fault_timeout_retries_mirror(tmp_path: Path) -> None:
    result = run(tmp_path, SERVICES, SUBSETS, """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - fault:
      delay: {percentage: {value: 100}, fixedDelay: 2s}
      abort: {httpStatus: 555, percentage: {value: 10.5}}
    route: [{destination: {host: ratings, subset: v1}}]
    timeout: 0.5s
    retries: {attempts: 3, perTryTimeout: 100ms, retryOn: "gateway-error,connect-failure,refused-stream"}
    mirror: {host: ratings, subset: v2}
    mirrorPercentage: {value: 50.0}
""")
    ratings = service(result, "ratings")
    fault = ratings.faults[0]
    assert (fault.delay_ms, fault.delay_percent, fault.abort_status, fault.abort_percent) == (2000, FULL, 555, 1050)
    assert ratings.resilience.timeout is not None and ratings.resilience.timeout.ms == 500
    retry = ratings.resilience.retry
    assert retry is not None and (retry.attempts, retry.per_try_ms) == (3, 100)
    assert retry.on == ("gateway-error", "connect-failure", "refused-stream")
    mirror = ratings.routes[0].mirror
    assert mirror is not None and (mirror.destination.version, mirror.percent) == ("v2", 5000)


def test_circuit_breaker_and_outlier(tmp_path: Path) -> None:
    result = run(tmp_path, SERVICES, """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}
""")
    res = service(result, "httpbin").resilience
    assert res.circuit_breaker is not None and (res.circuit_breaker.max_connections, res.circuit_breaker.max_pending) \
        == (1, 1)
    assert res.outlier is not None and (res.outlier.consecutive_5xx, res.outlier.interval_ms, res.outlier.eject_ms,
                                        res.outlier.max_percent) == (1, 1000, 180_000, FULL)
    assert res.load_balance is not None and res.load_balance.policy == "random"
    assert ("DestinationRule default/httpbin", "spec.trafficPolicy.connectionPool.http.maxRequestsPerConnection") \
        in fields(result)


def test_later_definition_replaces_earlier(tmp_path: Path) -> None:
    """Istio's samples define alternative VirtualServices under one name; applied in order,
    the last one is in force."""
    vs = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http: [{{route: [{{destination: {{host: reviews, subset: {v}}}}}]}}]
"""
    result = run(tmp_path, SERVICES, SUBSETS, vs.format(v="v1"), vs.format(v="v3"))
    assert [d.version for r in service(result, "reviews").routes for d in r.destinations] == ["v3"]
    assert ("VirtualService default/reviews", "metadata.name") in fields(result)


def test_match_on_the_only_port(tmp_path: Path) -> None:
    result = run(tmp_path, SERVICES, SUBSETS, """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{port: 9080, uri: {prefix: /api}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{port: 7000}]
    route: [{destination: {host: reviews, subset: v3}}]
  - route: [{destination: {host: reviews, subset: v1}}]
""")
    routes = service(result, "reviews").routes
    path = routes[0].matches[0].path
    assert path is not None and (path.kind, path.value) == ("prefix", "/api")
    assert [d.version for r in routes for d in r.destinations] == ["v2", "v1"]  # port 7000 never matches
    assert ("VirtualService default/reviews", "spec.http[1].match[0].port") in fields(result)


# --------------------------------------------------------------------------- TCP


def test_tcp_split_on_every_port(tmp_path: Path) -> None:
    result = run(tmp_path, TCP_ECHO, """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo}
spec:
  hosts: [tcp-echo]
  tcp:
  - route:
    - {destination: {host: tcp-echo, port: {number: 9000}, subset: v1}, weight: 80}
    - {destination: {host: tcp-echo, port: {number: 9000}, subset: v2}, weight: 20}
""")
    assert not len(result.report)
    routes = service(result, "tcp-echo").routes
    assert [(d.version, d.weight) for r in routes for d in r.destinations] == [("v1", 8000), ("v2", 2000)]
    vs = istio_docs(result, "VirtualService")
    assert [(r["destination"]["subset"], r["weight"]) for r in vs[0]["spec"]["tcp"][0]["route"]] == \
        [("v1", 80), ("v2", 20)]


def test_tcp_route_for_one_port_of_two_is_reported(tmp_path: Path) -> None:
    result = run(tmp_path, TCP_ECHO, """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo}
spec:
  hosts: [tcp-echo]
  tcp:
  - match: [{port: 9000}]
    route: [{destination: {host: tcp-echo, subset: v2}}]
""")
    assert not service(result, "tcp-echo").routes
    assert ("VirtualService default/tcp-echo", "spec.tcp[0].match") in fields(result)


def test_tcp_route_at_the_gateway_is_reported(tmp_path: Path) -> None:
    result = run(tmp_path, TCP_ECHO, """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: tcp-echo-gateway}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 31400, name: tcp, protocol: TCP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo}
spec:
  hosts: ["*"]
  gateways: [tcp-echo-gateway]
  tcp:
  - match: [{port: 31400}]
    route: [{destination: {host: tcp-echo, port: {number: 9000}, subset: v1}}]
""")
    assert ("VirtualService default/tcp-echo", "spec.tcp") in fields(result)


# --------------------------------------------------------------------------- ingress


GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: httpbin-gateway}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [httpbin.example.com]}]
"""


def test_ingress_paths(tmp_path: Path) -> None:
    result = run(tmp_path, SERVICES, GATEWAY, """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin.example.com]
  gateways: [httpbin-gateway]
  http:
  - match: [{uri: {prefix: /status}}, {uri: {prefix: /delay}}]
    route: [{destination: {host: httpbin, port: {number: 8000}}}]
""")
    expose = service(result, "httpbin").expose
    assert expose is not None and expose.hosts == ("httpbin.example.com",) and expose.port == 80
    assert [(p.kind, p.value) for p in expose.paths] == [("prefix", "/status"), ("prefix", "/delay")]
    assert not [e for e in result.report if e.resource.startswith(("VirtualService", "Gateway"))]


def test_ingress_split_and_timeout_are_reported(tmp_path: Path) -> None:
    result = run(tmp_path, SERVICES, SUBSETS, GATEWAY, """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-ingress}
spec:
  hosts: [httpbin.example.com]
  gateways: [httpbin-gateway]
  http:
  - match: [{uri: {exact: /hello}}]
    timeout: 5s
    route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
""")
    assert service(result, "reviews").expose is not None
    got = fields(result)
    assert ("VirtualService default/reviews-ingress", "spec.http[0].route") in got
    assert ("VirtualService default/reviews-ingress", "spec.http[0].timeout") in got


# --------------------------------------------------------------------------- egress


def test_service_entry_gets_istio_default_retries(tmp_path: Path) -> None:
    result = run(tmp_path, SERVICES, """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: googleapis}
spec:
  hosts: [www.googleapis.com]
  ports: [{number: 443, name: https, protocol: http}]
  location: MESH_EXTERNAL
  resolution: DNS
""")
    ext = service(result, "googleapis")
    assert ext.external is not None and [(p.protocol, p.number) for p in ext.ports] == [("http", 443)]
    retry = ext.resilience.retry
    assert retry is not None and retry.attempts == 2  # Istio's implicit default, as for mesh services


def test_external_timeout(tmp_path: Path) -> None:
    result = run(tmp_path, SERVICES, """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin-ext}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin-ext}
spec:
  hosts: [httpbin.org]
  http: [{timeout: 3s, route: [{destination: {host: httpbin.org}, weight: 100}]}]
""")
    ext = service(result, "httpbin-ext")
    assert ext.resilience.timeout is not None and ext.resilience.timeout.ms == 3000


def test_tls_origination_on_one_port(tmp_path: Path) -> None:
    result = run(tmp_path, SERVICES, """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: edition-cnn-com}
spec:
  hosts: [edition.cnn.com]
  ports:
  - {number: 80, name: http-port, protocol: HTTP, targetPort: 443}
  - {number: 443, name: https-port, protocol: HTTPS}
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: edition-cnn-com}
spec:
  host: edition.cnn.com
  trafficPolicy:
    portLevelSettings: [{port: {number: 80}, tls: {mode: SIMPLE}}]
""")
    ext = service(result, "edition-cnn-com")
    assert ext.external is not None and ext.external.tls_originate
    # the passthrough port 443 would be re-encrypted by `tls originate`: left out, reported
    assert [p.number for p in ext.ports] == [80]
    got = fields(result)
    assert ("DestinationRule default/edition-cnn-com", "spec.trafficPolicy.portLevelSettings") in got
    assert ("ServiceEntry default/edition-cnn-com", "spec.ports[http-port].targetPort") in got


# --------------------------------------------------------------------------- security


def test_mesh_namespace_and_workload_port_mtls(tmp_path: Path) -> None:
    result = run(tmp_path, SERVICES, """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin, namespace: default}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: STRICT}
  portLevelMtls: {8080: {mode: DISABLE}}
""")
    assert result.mesh.mtls == "permissive"
    assert service(result, "sleep").mtls == "strict"
    httpbin = service(result, "httpbin")
    # Istio keys port modes by workload port: 8080 is the target of Service port 8000
    assert [(p.number, p.mtls) for p in httpbin.ports] == [(8000, "disabled")]
    pas = {d["metadata"]["name"]: d["spec"] for d in istio_docs(result, "PeerAuthentication")}
    assert pas["httpbin"]["portLevelMtls"] == {"8000": {"mode": "DISABLE"}}


def test_port_mode_for_a_port_nothing_forwards_to(tmp_path: Path) -> None:
    result = run(tmp_path, SERVICES, """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin}
spec:
  selector: {matchLabels: {app: httpbin}}
  portLevelMtls: {9999: {mode: DISABLE}}
""")
    assert [p.mtls for p in service(result, "httpbin").ports] == ["permissive"]
    assert ("PeerAuthentication default/httpbin", "spec.portLevelMtls.9999") in fields(result)


def test_bookinfo_viewers_allow_nothing_and_require_mtls(tmp_path: Path) -> None:
    result = run(tmp_path, SERVICES, """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings-viewer}
spec:
  selector: {matchLabels: {app: ratings}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/bookinfo-reviews"]}}]
    to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-mtls}
spec:
  action: DENY
  rules: [{from: [{source: {notPrincipals: ["*"]}}]}]
""")
    m = result.mesh
    assert m.authz == "deny_by_default"
    rules = [(r.action, [str(s) for s in r.sources], r.destinations, r.methods) for r in m.rules]
    assert ("allow", ["reviews"], ("ratings",), ("GET",)) in rules
    assert ("deny", ["unauthenticated"], ("*",), ()) in rules
    assert not [r for r in rules if r[0] == "allow" and r[2] != ("ratings",)]  # allow-nothing everywhere else


def test_unknown_method_never_widens_a_rule(tmp_path: Path) -> None:
    result = run(tmp_path, SERVICES, """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: purge}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: ALLOW
  rules: [{to: [{operation: {methods: [PURGE]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-purge}
spec:
  selector: {matchLabels: {app: ratings}}
  action: DENY
  rules: [{to: [{operation: {methods: [GET, PURGE]}}]}]
""")
    rules = [(r.action, r.destinations, r.methods) for r in result.mesh.rules]
    assert not [r for r in rules if r[0] == "allow" and r[1] == ("httpbin",)]  # left out: fail closed
    assert ("deny", ("ratings",), ()) in rules  # denies more, never less
    got = fields(result)
    assert ("AuthorizationPolicy default/purge", "spec.rules[0].to[0].operation.methods") in got
    assert ("AuthorizationPolicy default/no-purge", "spec.rules[0].to[0].operation.methods") in got


@pytest.mark.parametrize(("ports", "want"), [(["8080"], (8000,)), (["8000"], None)])
def test_authz_ports_are_workload_ports(tmp_path: Path, ports: list[str], want: tuple[int, ...] | None) -> None:
    result = run(tmp_path, SERVICES, f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: httpbin}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  action: DENY
  rules: [{{to: [{{operation: {{ports: {ports}}}}}]}}]
""")
    denies = [r for r in result.mesh.rules if r.action == "deny"]
    if want is None:  # nothing forwards to workload port 8000: the rule matches no request
        assert not denies and ("AuthorizationPolicy default/httpbin", "spec.rules[0].to[0]") in fields(result)
    else:
        assert [(r.destinations, r.ports) for r in denies] == [(("httpbin",), want)]


def test_selector_of_one_version_is_reported(tmp_path: Path) -> None:
    result = run(tmp_path, SERVICES, """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-v2}
spec:
  selector: {matchLabels: {app: reviews, version: v2}}
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
""")
    assert ("AuthorizationPolicy default/reviews-v2", "spec.selector") in fields(result)
    # every version of httpbin (only v1) is selected: nothing to report
    result = run(tmp_path, SERVICES, """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin-v1}
spec:
  selector: {matchLabels: {app: httpbin, version: v1}}
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
""")
    assert ("AuthorizationPolicy default/httpbin-v1", "spec.selector") not in fields(result)
