"""AWS App Mesh backend: appmesh-controller resources (appmesh.k8s.aws/v1beta2, controller v1.13)
and the App Mesh API request bodies (API version 2019-01-25) a deploy script can send.

App Mesh reached end of support on 2026-09-30; this target exists so that a team can describe
its App Mesh setup in `.mesh` once and move to another target (docs/appmesh-migration.md).

Objects, named after the meshc service `S` (namespace `N`):
- Mesh `<mesh>`; egress `DROP_ALL` under deny_by_default, else `ALLOW_ALL`.
- VirtualNode `S-<version>` per version (`S` without versions), one listener per port, with
  mTLS through SDS (SPIFFE: certificate `spiffe://.../sa/<sa>`, trust bundle `spiffe://<td>`),
  outlier detection, connection pool, health check and an explicit listener timeout. Service
  discovery: DNS `S-<version>.N.svc.cluster.local` (one Kubernetes Service per version), or with
  `--option cloudmap_namespace=NS` Cloud Map instances filtered by the version's labels.
- VirtualRouter `S-router` with one Route per (rule, match, method): App Mesh routes have a
  single method and priorities (0 = first), so rule order becomes priority order. `under "/p"`
  becomes two routes (exact `/p`, prefix `/p/`).
- VirtualService `S.N.svc.cluster.local` (Kubernetes name `S`) provided by the router.
- External services: a VirtualNode discovered by DNS at the external host, a router, and a
  VirtualService named after the host; TLS origination is the callers' backend client policy
  (trust `system_ca`, SAN = the SNI name).
- VirtualGateway `<ingress identity>` and one GatewayRoute per exposed path (prefix rewriting
  disabled, so the service sees the path the client sent).

Lowering decisions:
- Weights: App Mesh weights are integers 0..100 (relative). meshc hundredths are divided by
  their greatest common divisor, which keeps the ratio exact (50/50 -> 1/1, 12.5/87.5 -> 1/7);
  a split that does not fit (33.33/66.67) is E330, never rounded.
- A destination without a version of a service with versions is every version, weighted
  equally (App Mesh routes to virtual nodes, not endpoints).
- Retries: `maxRetries` counts retries like meshc. App Mesh requires a per-retry timeout: the
  `per_try`, else the request timeout. `5xx` -> server-error, `gateway-error` -> gateway-error,
  `retriable-4xx` -> client-error, `refused-stream` -> stream-error, `connect-failure` and `reset`
  -> tcp connection-error. Specific status codes are E330.
- No retries: App Mesh gives routes without a retry policy a default one (2 retries), so every
  HTTP/gRPC route carries an explicit policy, `maxRetries: 0` when meshc has no retries.
- Timeouts: App Mesh defaults to 15 s on routes and listeners; "no timeout" is written as 365
  days on both. The listener never cuts what the caller's route allows.
- Authorization: App Mesh has no request-level authorization. Allow/deny rules without
  methods, paths, ports or headers become the listener's client-certificate SAN allow-list
  (the exact SPIFFE IDs of the mesh identities that may call); a caller can also only reach its
  declared backends. A `*` minus a denied identity is enumerated over the mesh's identities.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import reduce
from typing import Any, ClassVar

from meshc.backends.base import Backend, Bundle, Option, dns_name, file_path

from meshc.diagnostics import Diagnostic
from meshc.model import (
    FULL,
    Destination,
    Match,
    Mesh,
    PathMatch,
    Port,
    Retry,
    RouteRule,
    Service,
    Span,
    StringMatch,
    Timeout,
)

API_VERSION = "appmesh.k8s.aws/v1beta2"
E330 = "E330"
NO_TIMEOUT_MS = 365 * 24 * 3600 * 1000  # App Mesh defaults to 15 s when a timeout is left out
MAX_WEIGHT = 100  # WeightedTarget.weight: integer 0..100 (botocore model and CRD schema)
ROUTE_KEYS = {"http": "httpRoute", "http2": "http2Route", "grpc": "grpcRoute", "tcp": "tcpRoute", "tls": "tcpRoute"}
PROTOCOLS = {"http": "http", "http2": "http2", "grpc": "grpc", "tcp": "tcp", "tls": "tcp"}
HTTP_EVENTS = {"5xx": "server-error", "gateway-error": "gateway-error", "retriable-4xx": "client-error",
               "refused-stream": "stream-error"}
TCP_EVENTS = {"connect-failure": "connection-error", "reset": "connection-error"}
ACCESS_LOG_JSON = [("start_time", "%START_TIME%"), ("method", "%REQ(:METHOD)%"), ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
                   ("status", "%RESPONSE_CODE%"), ("duration_ms", "%DURATION%"), ("upstream", "%UPSTREAM_HOST%")]
# API operation order for a deploy script (names referenced by later bodies come first)
OPERATIONS = ("CreateMesh", "CreateVirtualNode", "CreateVirtualRouter", "CreateRoute", "CreateVirtualService",
              "CreateVirtualGateway", "CreateGatewayRoute")


def duration(ms: int) -> dict[str, Any]:
    return {"unit": "s", "value": ms // 1000} if ms % 1000 == 0 else {"unit": "ms", "value": ms}


def scale_weights(weights: list[int]) -> list[int] | None:
    """meshc hundredths -> App Mesh integer weights with the same ratios, or None if they cannot
    be exact within 0..100."""
    positive = [w for w in weights if w]
    g = reduce(math.gcd, positive, 0) or 1
    out = [w // g for w in weights]
    return out if max(out, default=0) <= MAX_WEIGHT else None


@dataclass
class _Ctx:
    diags: list[Diagnostic] = field(default_factory=list)

    def error(self, message: str, span: Span, help: str = "") -> None:
        d = Diagnostic(E330, message, span, label="not expressible on appmesh", help=help)
        if d not in self.diags:  # a callee's setting is seen once per caller
            self.diags.append(d)


@dataclass
class Resource:
    """One App Mesh resource: its Kubernetes object and its API request body."""

    kind: str
    name: str  # Kubernetes name
    operation: str
    crd: dict[str, Any]
    api: dict[str, Any]


class AppMeshBackend(Backend):
    name: ClassVar[str] = "appmesh"
    description: ClassVar[str] = "AWS App Mesh: appmesh-controller CRDs and API request bodies"
    CAPABILITIES: ClassVar[frozenset[str]] = frozenset({
        "protocol.http", "protocol.http2", "protocol.grpc", "protocol.tcp", "protocol.tls",
        "mtls.strict", "mtls.permissive", "mtls.disabled", "endpoints.static", "versions",
        "route.match.path.exact", "route.match.path.prefix", "route.match.path.under",
        "route.match.path.regex", "route.match.header", "route.match.header.regex",
        "route.match.header.absent", "route.match.method", "route.match.query",
        "route.split", "route.split.services", "route.no_default",
        "timeout", "retry", "retry.per_try", "load_balance.round_robin",
        "circuit_breaker", "outlier", "health_check",
        "authz.allow", "authz.deny", "authz.identity", "authz.ports", "ingress",
        "external", "external.tls_originate", "access_log.text", "access_log.off",
    })
    # the folders of meshc/schemas whose published CRD schemas this target's objects are checked against
    SCHEMAS: ClassVar[tuple[str, ...]] = ('appmesh',)
    OPTIONS: ClassVar[Mapping[str, Option]] = {
        "system_ca": Option("CA bundle the callers' Envoy trusts for TLS origination to external services "
                     "(default /etc/ssl/certs/ca-certificates.crt)", file_path),
        "cloudmap_namespace": Option("discover versions through this AWS Cloud Map namespace (instances "
                              "filtered by the version labels) instead of per-version DNS names", dns_name),
    }

    # ------------------------------------------------------------------ names

    def node_name(self, svc: Service, version: str | None) -> str:
        return f"{svc.name}-{version}" if version else svc.name

    @staticmethod
    def router_name(svc: Service) -> str:
        return f"{svc.name}-router"

    @staticmethod
    def vs_dns(svc: Service) -> str:
        return f"{svc.name}.{svc.namespace}.svc.cluster.local"

    def vs_name(self, svc: Service) -> str:
        """The virtual service's App Mesh name: the name applications resolve."""
        return svc.external.host if svc.external is not None else self.vs_dns(svc)

    def policy_of(self, caller: Service, callee: Service) -> dict[str, Any]:
        policy = self.client_policy(caller, callee)
        return {"clientPolicy": policy} if policy else {}

    # ------------------------------------------------------------------ entry point

    def lower(self, mesh: Mesh) -> Bundle:
        self.mesh = mesh
        ctx = _Ctx()
        resources = self.resources(mesh, ctx)
        bundle = Bundle(diagnostics=ctx.diags)
        for r in resources:
            if r.crd:  # routes live inside their VirtualRouter object
                bundle.add_yaml(f"k8s/{r.kind}-{r.name}.yaml", r.crd)
        for r in sorted(resources, key=lambda r: (OPERATIONS.index(r.operation), r.name)):
            bundle.add_json(f"aws/{OPERATIONS.index(r.operation) + 1}-{r.operation}-{r.name}.json", r.api)
        return bundle

    def resources(self, mesh: Mesh, ctx: _Ctx) -> list[Resource]:
        out = [self.lower_mesh(mesh)]
        inner = [s for s in mesh.services if s.external is None and s.ports]
        for svc in inner:
            out += self.lower_nodes(svc, ctx)
            out += self.lower_router(svc, ctx)
            out.append(self.lower_virtual_service(svc))
        for svc in mesh.services:
            if svc.external is not None and svc.ports:
                out += self.lower_external(svc, ctx)
        out += self.lower_gateway(mesh, inner, ctx)
        return out

    # ------------------------------------------------------------------ external services

    def lower_external(self, svc: Service, ctx: _Ctx) -> list[Resource]:
        """An external host: a virtual node discovered by DNS (no sidecar, no pods), behind a
        router (for timeouts and retries) and a virtual service named after the host. With TLS
        origination the callers speak HTTP and their Envoy originates TLS (see client_policy)."""
        ext = svc.external
        assert ext is not None
        if ext.tls_originate:
            svc = svc.model_copy(update={"ports": tuple(p.model_copy(update={"protocol": "http"})
                                                        for p in svc.ports)})
        listeners = [{"portMapping": {"port": p.number, "protocol": PROTOCOLS[p.protocol]}} for p in svc.ports]
        spec = {"listeners": listeners, "serviceDiscovery": {"dns": {"hostname": ext.host}}}
        node = Resource("VirtualNode", svc.name, "CreateVirtualNode",
                        self.crd("VirtualNode", svc.name, svc.namespace, {"awsName": svc.name, **spec}),
                        {"meshName": self.mesh.name, "virtualNodeName": svc.name, "spec": spec})
        router = self.router_name(svc)
        vs = Resource("VirtualService", svc.name, "CreateVirtualService",
                      self.crd("VirtualService", svc.name, svc.namespace, {
                          "awsName": ext.host,
                          "provider": {"virtualRouter": {"virtualRouterRef": {"name": router}}}}),
                      {"meshName": self.mesh.name, "virtualServiceName": ext.host,
                       "spec": {"provider": {"virtualRouter": {"virtualRouterName": router}}}})
        return [node, *self.lower_router(svc, ctx), vs]

    def meta(self, name: str, namespace: str) -> dict[str, Any]:
        return {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "meshc"}}

    def crd(self, kind: str, name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": kind, "metadata": self.meta(name, namespace), "spec": spec}

    # ------------------------------------------------------------------ mesh

    def lower_mesh(self, mesh: Mesh) -> Resource:
        egress = {"type": "DROP_ALL" if mesh.authz == "deny_by_default" else "ALLOW_ALL"}
        crd = {"apiVersion": API_VERSION, "kind": "Mesh",
               "metadata": {"name": mesh.name, "labels": {"app.kubernetes.io/managed-by": "meshc"}},
               "spec": {"awsName": mesh.name, "egressFilter": egress,
                        "namespaceSelector": {"matchLabels": {"mesh": mesh.name}}}}
        api = {"meshName": mesh.name, "spec": {"egressFilter": egress}}
        return Resource("Mesh", mesh.name, "CreateMesh", crd, api)

    # ------------------------------------------------------------------ virtual nodes

    def lower_nodes(self, svc: Service, ctx: _Ctx) -> list[Resource]:
        out = []
        versions: list[str | None] = [v.name for v in svc.versions] or [None]
        listeners = [self.listener(svc, p, ctx) for p in svc.ports]
        for lst, port in zip(listeners, svc.ports, strict=True):
            allowed = self.allowed_callers(svc, port, ctx)
            if port.mtls != "disabled":
                lst["tls"] = self.listener_tls(svc, port, allowed)
        deps = self.dependencies(svc)
        for version in versions:
            name = self.node_name(svc, version)
            base: dict[str, Any] = {"listeners": listeners, "serviceDiscovery": self.discovery(svc, version)}
            logging = self.logging()
            if logging:
                base["logging"] = logging
            api_spec = dict(base)
            crd_spec = dict(base)
            if deps:
                api_spec["backends"] = [{"virtualService": {"virtualServiceName": self.vs_name(d),
                                                            **self.policy_of(svc, d)}} for d in deps]
                crd_spec["backends"] = [{"virtualService": {"virtualServiceRef": {"name": d.name},
                                                            **self.policy_of(svc, d)}} for d in deps]
            labels = {"app": svc.name}
            v = svc.version(version) if version else None
            if v is not None:
                labels |= dict(v.labels)
            crd_spec = {"awsName": name, "podSelector": {"matchLabels": labels}, **crd_spec}
            out.append(Resource("VirtualNode", name, "CreateVirtualNode",
                                self.crd("VirtualNode", name, svc.namespace, crd_spec),
                                {"meshName": self.mesh.name, "virtualNodeName": name, "spec": api_spec}))
        return out

    def dependencies(self, svc: Service) -> list[Service]:
        names = set(svc.calls)
        for rule in self.mesh.rules:
            if rule.action == "allow" and any(s.kind == "service" and s.name == svc.name for s in rule.sources):
                names.update(x for x in rule.destinations if x != "*")
        for r in svc.routes:  # a route table may send to other services
            names.update(d.service for d in r.destinations)
        names.discard(svc.name)
        found = [self.mesh.service(n) for n in sorted(names)]
        return [s for s in found if s is not None and s.ports]

    def discovery(self, svc: Service, version: str | None) -> dict[str, Any]:
        ns = self.options.get("cloudmap_namespace")
        if ns:
            cm: dict[str, Any] = {"namespaceName": ns, "serviceName": svc.name}
            v = svc.version(version) if version else None
            if v is not None and v.labels:
                cm["attributes"] = [{"key": k, "value": val} for k, val in v.labels]
            return {"awsCloudMap": cm}
        return {"dns": {"hostname": f"{self.node_name(svc, version)}.{svc.namespace}.svc.cluster.local"}}

    def logging(self) -> dict[str, Any] | None:
        fmt = self.mesh.observability.access_log
        if fmt == "off":
            return None
        f: dict[str, Any] = {"path": "/dev/stdout"}
        if fmt == "json":
            f["format"] = {"json": [{"key": k, "value": v} for k, v in ACCESS_LOG_JSON]}
        return {"accessLog": {"file": f}}

    def listener(self, svc: Service, port: Port, ctx: _Ctx) -> dict[str, Any]:
        proto = PROTOCOLS[port.protocol]
        lst: dict[str, Any] = {"portMapping": {"port": port.number, "protocol": proto}}
        no = duration(NO_TIMEOUT_MS)
        lst["timeout"] = {proto: {"idle": no} if proto == "tcp" else {"perRequest": no}}
        r = svc.resilience
        if r.outlier is not None:
            ol = r.outlier
            if ol.max_percent % 100:
                ctx.error("App Mesh's max ejection percent is a whole percentage", ol.span)
            lst["outlierDetection"] = {"maxServerErrors": ol.consecutive_5xx, "interval": duration(ol.interval_ms),
                                       "baseEjectionDuration": duration(ol.eject_ms),
                                       "maxEjectionPercent": ol.max_percent // 100}
        if r.circuit_breaker is not None:
            lst["connectionPool"] = self.connection_pool(proto, r.circuit_breaker, ctx)
        if r.health_check is not None:
            lst["healthCheck"] = self.health_check(r.health_check, ctx)
        return lst

    @staticmethod
    def connection_pool(proto: str, cb: Any, ctx: _Ctx) -> dict[str, Any]:
        if cb.max_retries is not None:
            ctx.error("App Mesh connection pools have no retry limit", cb.span)
        if proto in ("http2", "grpc"):
            if cb.max_requests is None or cb.max_connections is not None or cb.max_pending is not None:
                ctx.error(f"App Mesh limits {proto} listeners by max_requests only", cb.span)
            return {proto: {"maxRequests": cb.max_requests or 1}}
        if proto == "http":
            # HTTP/1.1 carries one request per connection: a request limit is a connection limit
            limits = [x for x in (cb.max_connections, cb.max_requests) if x is not None]
            if cb.max_requests is not None and cb.max_connections is not None and \
                    cb.max_requests < cb.max_connections:
                # A request limit at or above the connection limit never binds on HTTP/1.1. One
                # below it does, and Envoy rejects the requests beyond it at once where App Mesh's
                # pool (connections only) would queue them as pending: not the same behaviour.
                ctx.error("App Mesh limits HTTP/1.1 listeners by connections only: a max_requests below "
                          "max_connections cannot be expressed", cb.span,
                          help="set max_connections to the limit you mean and drop max_requests")
            pool: dict[str, Any] = {"maxConnections": min(limits) if limits else 1}
            if not limits:
                ctx.error("App Mesh HTTP connection pools need max_connections (or max_requests)", cb.span)
            if cb.max_pending is not None:
                pool["maxPendingRequests"] = cb.max_pending
            return {proto: pool}
        if cb.max_connections is None:
            ctx.error("App Mesh connection pools need max_connections", cb.span)
        pool = {"maxConnections": cb.max_connections or 1}
        if cb.max_pending is not None or cb.max_requests is not None:
            ctx.error("App Mesh TCP listeners limit connections only", cb.span)
        return {proto: pool}

    @staticmethod
    def health_check(hc: Any, ctx: _Ctx) -> dict[str, Any]:
        ranges = (("interval", hc.interval_ms, 5000, 300_000), ("timeout", hc.timeout_ms, 2000, 60_000),
                  ("unhealthy", hc.unhealthy, 2, 10), ("healthy", hc.healthy, 2, 10))
        fixed = {}
        for label, value, lo, hi in ranges:
            if not lo <= value <= hi:
                ctx.error(f"App Mesh health check {label} must be within {lo}..{hi}, not {value}", hc.span)
            fixed[label] = min(max(value, lo), hi)  # the error stops the compile; keep objects valid
        out: dict[str, Any] = {"protocol": hc.protocol, "intervalMillis": fixed["interval"],
                               "timeoutMillis": fixed["timeout"], "unhealthyThreshold": fixed["unhealthy"],
                               "healthyThreshold": fixed["healthy"]}
        if hc.protocol == "http":
            out["path"] = hc.path
        return out

    def spiffe_bundle(self) -> str:
        return f"spiffe://{self.mesh.trust_domain}"

    def listener_tls(self, svc: Service, port: Port, allowed: list[str] | None) -> dict[str, Any]:
        validation: dict[str, Any] = {"trust": {"sds": {"secretName": self.spiffe_bundle()}}}
        if allowed is not None:
            validation["subjectAlternativeNames"] = {"match": {"exact": allowed}}
        return {"mode": port.mtls.upper(), "certificate": {"sds": {"secretName": svc.identity.spiffe}},
                "validation": validation}

    def client_policy(self, caller: Service, callee: Service) -> dict[str, Any]:
        ext = callee.external
        if ext is not None:
            if not ext.tls_originate:
                return {}
            ca = self.options.get("system_ca", "/etc/ssl/certs/ca-certificates.crt")
            return {"tls": {"enforce": True, "validation": {
                "trust": {"file": {"certificateChain": ca}},
                "subjectAlternativeNames": {"match": {"exact": [ext.sni or ext.host]}}}}}
        # The caller speaks mTLS to every port that is not `mtls disabled` (a disabled listener
        # has no TLS: enforcing it there failed every call).
        tls_ports = [p.number for p in callee.ports if p.mtls != "disabled"]
        if not tls_ports:
            return {}
        tls: dict[str, Any] = {"enforce": True, "certificate": {"sds": {"secretName": caller.identity.spiffe}},
                               "validation": {"trust": {"sds": {"secretName": self.spiffe_bundle()}},
                                              "subjectAlternativeNames": {"match": {"exact": [callee.identity.spiffe]}}}}
        if len(tls_ports) < len(callee.ports):
            tls["ports"] = tls_ports
        return {"tls": tls}

    # ------------------------------------------------------------------ authorization

    def identities(self) -> dict[str, str]:
        """Every mesh identity: spiffe -> service account name."""
        out = {s.identity.spiffe: s.identity.name for s in self.mesh.services if s.external is None}
        out[self.mesh.ingress_identity.spiffe] = self.mesh.ingress_identity.name
        return out

    def source_spiffes(self, src: Any) -> set[str] | None:
        """The identities a source stands for; None for everyone."""
        if src.kind in ("any", "authenticated"):
            return None
        if src.kind == "unauthenticated":
            return set()
        if src.kind == "ingress":
            return {self.mesh.ingress_identity.spiffe}
        if src.kind == "service":
            s = self.mesh.service(src.name)
            return {s.identity.spiffe} if s is not None else set()
        return {sp for sp, name in self.identities().items() if src.name in (name, sp.split("/ns/")[-1]
                                                                             .replace("/sa/", "/"))}

    def allowed_callers(self, svc: Service, port: Port, ctx: _Ctx) -> list[str] | None:
        """The client SAN allow-list of one listener (None: any mesh identity)."""
        rules = [r for r in self.mesh.rules if (svc.name in r.destinations or "*" in r.destinations)
                 and (not r.ports or port.number in r.ports)]
        everyone = set(self.identities())
        allowed: set[str] | None = None if self.mesh.authz == "allow_by_default" else set()
        for r in rules:
            # A narrowed allow cannot be said (E301 unless --unsupported=warn): it admits nobody,
            # and a narrowed deny counts whole; both fail closed.
            if r.action != "allow" or r.methods or r.paths or r.not_paths or r.headers:
                continue
            for s in r.sources:
                ids = self.source_spiffes(s)
                if ids is None or allowed is None:
                    allowed = None
                else:
                    allowed |= ids
        denied: set[str] = set()
        for r in rules:
            if r.action == "deny":
                for s in r.sources:
                    ids = self.source_spiffes(s)
                    denied |= everyone if ids is None else ids
        if port.mtls != "strict" and (denied or allowed is not None):
            # the port's own mode (`mtls permissive on port N`), which may differ from the service's
            ctx.error(f"App Mesh does not check plaintext callers of '{svc.name}' on port {port.number} "
                      f"(mTLS {port.mtls}), so its authorization would not hold", svc.span,
                      help=f"use mtls strict on port {port.number}")
        if allowed is None and not denied:
            return None
        result = (everyone if allowed is None else allowed) - denied
        # an empty list is not allowed: name an identity no workload has, so nobody matches
        return sorted(result) or [f"spiffe://{self.mesh.trust_domain}/meshc/deny-all"]

    # ------------------------------------------------------------------ routers and routes

    def lower_router(self, svc: Service, ctx: _Ctx) -> list[Resource]:
        router = self.router_name(svc)
        listeners = [{"portMapping": {"port": p.number, "protocol": PROTOCOLS[p.protocol]}} for p in svc.ports]
        crd_routes: list[dict[str, Any]] = []
        out: list[Resource] = []
        # A redirect or direct response is E301 here (not a capability); with --unsupported=warn
        # its rule is left out whole, never lowered as a forward to the service.
        rules = [r for r in svc.routes if r.redirect is None and r.respond is None] or \
            [RouteRule(span=svc.span, destinations=(Destination(service=svc.name),))]
        priority = 0
        multi = len(svc.ports) > 1
        for port in svc.ports:
            key = ROUTE_KEYS[port.protocol]
            for i, rule in enumerate(rules):
                for j, match in enumerate(self.route_matches(svc, port, rule, ctx)):
                    if priority > 1000:
                        ctx.error("App Mesh allows route priorities up to 1000", rule.span)
                        break
                    name = f"{svc.name}-{port.number}-r{i}-{j}" if multi else f"{svc.name}-r{i}-{j}"
                    if multi and port.protocol != "tcp":
                        match["port"] = port.number
                    api_route, crd_route = self.route(svc, port, rule, match, ctx)
                    crd_routes.append({"name": name, "priority": priority, key: crd_route})
                    out.append(Resource("Route", name, "CreateRoute", {}, {
                        "meshName": self.mesh.name, "virtualRouterName": router, "routeName": name,
                        "spec": {"priority": priority, key: api_route}}))
                    priority += 1
        crd_spec = {"awsName": router, "listeners": listeners, "routes": crd_routes}
        api = {"meshName": self.mesh.name, "virtualRouterName": router, "spec": {"listeners": listeners}}
        return [Resource("VirtualRouter", router, "CreateVirtualRouter",
                         self.crd("VirtualRouter", router, svc.namespace, crd_spec), api), *out]

    def route_matches(self, svc: Service, port: Port, rule: RouteRule, ctx: _Ctx) -> list[dict[str, Any]]:
        """App Mesh matches for one rule: one per meshc match, path alternative and method."""
        if port.protocol in ("tcp", "tls"):
            if rule.matches:
                ctx.error("App Mesh TCP routes cannot match requests", rule.span)
            return [{}]
        out = []
        for m in rule.matches or (Match(),):
            if port.protocol == "grpc":
                out += self.grpc_match(m, ctx)
                continue
            base: dict[str, Any] = {}
            if m.headers:
                base["headers"] = [self.header(h) for h in m.headers]
            if m.query:
                base["queryParameters"] = [self.query(q, ctx) for q in m.query]
            paths: list[dict[str, Any]] = [{"prefix": "/"}]
            if m.path is not None:
                p = m.path
                by_kind: dict[str, list[dict[str, Any]]] = {
                    "exact": [{"path": {"exact": p.value}}], "regex": [{"path": {"regex": p.value}}],
                    "prefix": [{"prefix": p.value}],
                    "under": [{"path": {"exact": p.value.rstrip("/") or "/"}}, {"prefix": p.value.rstrip("/") + "/"}]}
                paths = by_kind[p.kind]
                if p.kind == "under" and not p.value.rstrip("/"):
                    paths = [{"prefix": "/"}]
            for path in paths:
                for method in m.methods or (None,):
                    mm = {**base, **path}
                    if method is not None:
                        mm["method"] = method
                    out.append(mm)
        return out

    def grpc_match(self, m: Match, ctx: _Ctx) -> list[dict[str, Any]]:
        """gRPC requests go to `/<package.Service>/<Method>`: a path naming a service (prefix
        `/S/` or `under "/S"`) or one method (exact `/S/M`) is App Mesh's serviceName/methodName."""
        out: dict[str, Any] = {}
        if m.path is not None:
            named = _grpc_path(m.path)
            if named is None:
                ctx.error("App Mesh gRPC routes match a service (path prefix \"/pkg.Service/\") or a method "
                          "(path exact \"/pkg.Service/Method\"), not other paths", m.path.span)
            else:
                out["serviceName"] = named[0]
                if named[1]:
                    out["methodName"] = named[1]
        if m.methods or m.query:
            ctx.error("App Mesh gRPC routes match service, method name and metadata, not HTTP "
                      "methods or query parameters", m.span)
        if m.headers:
            out["metadata"] = [self.header(h) for h in m.headers]
        return [out]

    @staticmethod
    def header(h: StringMatch) -> dict[str, Any]:
        if h.kind == "present":
            return {"name": h.name}
        if h.kind == "absent":
            return {"name": h.name, "invert": True}
        return {"name": h.name, "match": {h.kind: h.value}}

    @staticmethod
    def query(q: StringMatch, ctx: _Ctx) -> dict[str, Any]:
        if q.kind == "present":
            return {"name": q.name}
        if q.kind != "exact":
            ctx.error(f"App Mesh matches query parameters by exact value or presence, not '{q.kind}'", q.span)
        return {"name": q.name, "match": {"exact": q.value}}

    def targets(self, svc: Service, rule: RouteRule, ctx: _Ctx) -> list[tuple[str, int]]:
        """(virtual node, weight in hundredths) of a rule's destinations."""
        out: list[tuple[str, int]] = []
        for dest in rule.destinations or (Destination(service=svc.name),):
            target = self.mesh.service(dest.service)
            if target is None:
                continue
            if dest.version is None and target.versions:
                n = len(target.versions)
                share = [dest.weight // n + (1 if k < dest.weight % n else 0) for k in range(n)]
                out += [(self.node_name(target, v.name), w) for v, w in zip(target.versions, share, strict=True)]
            else:
                out.append((self.node_name(target, dest.version), dest.weight))
        return out

    def route(self, svc: Service, port: Port, rule: RouteRule, match: dict[str, Any],
              ctx: _Ctx) -> tuple[dict[str, Any], dict[str, Any]]:
        pairs = self.targets(svc, rule, ctx)
        weights = scale_weights([w for _, w in pairs])
        if weights is None:
            shown = ", ".join(f"{w / 100:g}%" for _, w in pairs)
            ctx.error(f"App Mesh weights are integers up to {MAX_WEIGHT}; the split {shown} cannot be "
                      "represented exactly", rule.span,
                      help="use percentages whose ratio reduces to integers up to 100 (e.g. whole percents)")
            weights = [max(round(w / FULL * MAX_WEIGHT), 0) for _, w in pairs]
        api_targets = [{"virtualNode": n, "weight": w} for (n, _), w in zip(pairs, weights, strict=True)]
        crd_targets = [{"virtualNodeRef": {"name": n}, "weight": w} for (n, _), w in zip(pairs, weights, strict=True)]
        if len(svc.ports) > 1:
            for t in api_targets + crd_targets:
                t["port"] = port.number
        common: dict[str, Any] = {}
        proto = port.protocol
        timeout = rule.timeout or svc.resilience.timeout or self.mesh.timeout
        if proto in ("tcp", "tls"):
            common["timeout"] = {"idle": duration(NO_TIMEOUT_MS)}
        else:
            common["match"] = match
            common["timeout"] = {"perRequest": duration(ms_of(timeout))}
            retry = rule.retry or svc.resilience.retry
            if retry is not None and retry.attempts > 0:
                common["retryPolicy"] = self.retry_policy(retry, timeout, proto, ctx)
            else:
                # App Mesh adds a default policy (2 retries, 15 s per try) to routes without one;
                # meshc's "no retries" is an explicit policy of zero retries
                common["retryPolicy"] = {"maxRetries": 0, "perRetryTimeout": duration(ms_of(timeout)),
                                         "httpRetryEvents": ["server-error"]}
        api = {**common, "action": {"weightedTargets": api_targets}}
        crd = {**common, "action": {"weightedTargets": crd_targets}}
        if proto in ("tcp", "tls") and len(svc.ports) > 1:
            api["match"] = crd["match"] = {"port": port.number}
        return api, crd

    @staticmethod
    def retry_policy(r: Retry, timeout: Timeout | None, proto: str, ctx: _Ctx) -> dict[str, Any]:
        per_try = r.per_try_ms if r.per_try_ms is not None else ms_of(timeout)
        policy: dict[str, Any] = {"maxRetries": r.attempts, "perRetryTimeout": duration(per_try)}
        http_events = sorted({HTTP_EVENTS[c] for c in r.on if c in HTTP_EVENTS})
        tcp_events = sorted({TCP_EVENTS[c] for c in r.on if c in TCP_EVENTS})
        if r.status_codes:
            ctx.error("App Mesh retries on event classes (server-error, gateway-error, ...), not status codes",
                      r.span)
        if http_events:
            policy["httpRetryEvents"] = http_events  # gRPC routes take HTTP retry events too
        if tcp_events:
            policy["tcpRetryEvents"] = tcp_events
        if not http_events and not tcp_events:
            ctx.error("App Mesh needs at least one retry event", r.span)
            policy["httpRetryEvents"] = ["server-error"]
        return policy

    def lower_virtual_service(self, svc: Service) -> Resource:
        router = self.router_name(svc)
        crd_spec = {"awsName": self.vs_dns(svc), "provider": {"virtualRouter": {"virtualRouterRef": {"name": router}}}}
        api = {"meshName": self.mesh.name, "virtualServiceName": self.vs_dns(svc),
               "spec": {"provider": {"virtualRouter": {"virtualRouterName": router}}}}
        return Resource("VirtualService", svc.name, "CreateVirtualService",
                        self.crd("VirtualService", svc.name, svc.namespace, crd_spec), api)

    # ------------------------------------------------------------------ ingress

    def lower_gateway(self, mesh: Mesh, inner: list[Service], ctx: _Ctx) -> list[Resource]:
        exposed = [s for s in inner if s.expose is not None]
        if not exposed:
            return []
        gw = mesh.ingress_identity.name
        ns = mesh.ingress_identity.namespace
        ports = sorted({s.expose.port for s in exposed if s.expose is not None})
        listeners = [{"portMapping": {"port": p, "protocol": "http"}} for p in ports]
        spec: dict[str, Any] = {"listeners": listeners}
        # mTLS from the gateway to the exposed services' ports that are not `mtls disabled`
        tls_ports = sorted({p.number for s in exposed for p in s.ports if p.mtls != "disabled"})
        if tls_ports:
            tls: dict[str, Any] = {"enforce": True, "certificate": {"sds": {"secretName": mesh.ingress_identity.spiffe}},
                                   "validation": {"trust": {"sds": {"secretName": self.spiffe_bundle()}}}}
            if any(p.mtls == "disabled" for s in exposed for p in s.ports):
                tls["ports"] = tls_ports
            spec["backendDefaults"] = {"clientPolicy": {"tls": tls}}
        logging = self.logging()
        if logging:
            spec["logging"] = logging
        crd_spec = {"awsName": gw, "podSelector": {"matchLabels": {"app": gw}},
                    "namespaceSelector": {"matchLabels": {"mesh": mesh.name}},
                    "gatewayRouteSelector": {"matchLabels": {"appmesh.meshc.io/gateway": gw}}, **spec}
        out = [Resource("VirtualGateway", gw, "CreateVirtualGateway", self.crd("VirtualGateway", gw, ns, crd_spec),
                        {"meshName": mesh.name, "virtualGatewayName": gw, "spec": spec})]
        for svc in exposed:
            assert svc.expose is not None
            k = 0
            for path in svc.expose.paths or (None,):
                for host in svc.expose.hosts:
                    for m in self.gateway_matches(path):
                        if host != "*":
                            m["hostname"] = {"suffix": host[1:]} if host.startswith("*.") else {"exact": host}
                        if len(ports) > 1:
                            m["port"] = svc.expose.port
                        # meshc's ingress hands requests on as sent; App Mesh sets Host to the
                        # target's name, and rewrites a matched prefix to "/", unless told not to
                        rewrite: dict[str, Any] = {"hostname": {"defaultTargetHostname": "DISABLED"}}
                        if "prefix" in m:
                            rewrite["prefix"] = {"defaultPrefix": "DISABLED"}
                        action: dict[str, Any] = {"rewrite": rewrite}
                        name = f"{svc.name}-ingress-{k}"
                        k += 1
                        api_route = {"match": m, "action": {**action, "target": {
                            "virtualService": {"virtualServiceName": self.vs_dns(svc)}}}}
                        crd_route = {"match": m, "action": {**action, "target": {
                            "virtualService": {"virtualServiceRef": {"name": svc.name, "namespace": svc.namespace}}}}}
                        # the controller binds a route to the gateway whose gatewayRouteSelector
                        # matches its labels (virtualGatewayRef needs a uid only it knows)
                        obj = self.crd("GatewayRoute", name, ns, {"awsName": name, "httpRoute": crd_route})
                        obj["metadata"]["labels"]["appmesh.meshc.io/gateway"] = gw
                        out.append(Resource(
                            "GatewayRoute", name, "CreateGatewayRoute", obj,
                            {"meshName": mesh.name, "virtualGatewayName": gw, "gatewayRouteName": name,
                             "spec": {"httpRoute": api_route}}))
        return out

    @staticmethod
    def gateway_matches(path: Any) -> list[dict[str, Any]]:
        if path is None:
            return [{"prefix": "/"}]
        if path.kind == "exact":
            return [{"path": {"exact": path.value}}]
        if path.kind == "regex":
            return [{"path": {"regex": path.value}}]
        if path.kind == "prefix":
            return [{"prefix": path.value}]
        base = path.value.rstrip("/")
        return [{"path": {"exact": base}}, {"prefix": base + "/"}] if base else [{"prefix": "/"}]


def ms_of(timeout: Timeout | None) -> int:
    return timeout.ms if timeout is not None and timeout.ms is not None else NO_TIMEOUT_MS


def _grpc_path(p: PathMatch) -> tuple[str, str] | None:
    """(service, method or "") that a gRPC path match names, or None when it names neither."""
    value = p.value
    if p.kind == "exact":
        service, _, method = value[1:].partition("/")
        ok = value.startswith("/") and service and method and "/" not in method
        return (service, method) if ok else None
    if p.kind in ("prefix", "under"):
        service = value.strip("/")
        # `prefix` must end at the service's slash; `under "/S"` ends there by definition
        ok = value.startswith("/") and service and "/" not in service and (p.kind == "under" or value.endswith("/"))
        return (service, "") if ok else None
    return None
