"""Istio backend: lowers a mesh to Istio resources (Istio 1.30; networking.istio.io/v1,
security.istio.io/v1 — the served, storage versions since Istio 1.22).

Per HTTP service: a VirtualService (ordered `http` routes, first match wins, as meshc rules)
and a DestinationRule (subsets, mTLS mode, load balancer, connection pool, outlier detection,
retry budget). Per namespace: an ALLOW policy without rules under `deny_by_default` (Istio's
"allow-nothing"), AuthorizationPolicies for allow/deny rules, PeerAuthentications at mesh,
namespace, workload and port level. External services: ServiceEntry (+ DestinationRule for TLS
origination). Sidecars scope each workload's egress to its declared dependencies. Ingress:
a Gateway plus a VirtualService bound to it. Core objects: Namespace (with
`istio-injection: enabled`), ServiceAccount, Service.

Lowering decisions (docs/language.md semantics -> Istio):
- `path prefix` is a byte prefix, exactly Istio's `uri.prefix`. `path under "/p"` is written as
  two OR-ed matches, `exact: /p` and `prefix: /p/` (a trailing `/` in the value is kept as a
  plain byte prefix; `under "/"` is `prefix: /`). A prefix rewrite on an `under` rule rewrites
  `/p` to P and `/p/...` to `P/...` (two consecutive routes, so first-match order is kept).
- `timeout none` / no timeout: the `timeout` field is omitted. Istio's documented default for
  HTTP routes is "disabled" (no hidden 15 s as in raw Envoy), and `0s` is rejected by the
  CRD's `duration(self) >= duration('1ms')` rule, so omission is the exact spelling.
- No `retry`: `retries: {attempts: 0}` is written, because Istio's implicit default is 2
  retries; `retry N` -> `attempts: N` (Istio counts retries, as meshc does), `retryOn` maps the
  conditions one to one and status codes are listed as numbers.
- `retry ... backoff B` -> `retries.backoff: B`; Istio's maximum is fixed at 10 x B (Envoy's
  default), so `max` is accepted only when it equals 10 x B (otherwise E301).
- Weights: whole percentages are written as such; otherwise the hundredths are divided by
  their greatest common divisor (Istio weights are relative), which is exact.
- Header `present`/`absent`: `regex: ".*"` under `headers` / `withoutHeaders` (Envoy regex
  matchers never match a missing header). Several methods: `method.regex: GET|HEAD`.
- Faults with their own `when`: the rule is split into (rule and fault condition, with the
  fault) followed by (rule, without), keeping order. One delay and one abort per route.
- Authorization: `service`/`identity`/`ingress` sources -> `principals`
  (`<trust-domain>/ns/<ns>/sa/<sa>`); `authenticated` -> `principals: ["*"]`;
  `unauthenticated` -> `notPrincipals: ["*"]`; `*` -> no `from`. Both match identities per
  connection, as meshc does: a sidecar speaks mTLS (ISTIO_MUTUAL) to strict and permissive
  ports, a plaintext caller has no principal, and a DISABLE port sees none. Paths: exact as is, byte
  prefix `/p` -> `/p*`, `under /p` -> `/p` and `/p/*`; regex paths cannot be written (E301).
  Under `allow_by_default` allow rules are no-ops in meshc, so they are not written (an Istio
  ALLOW policy would otherwise deny everything it does not match).
- Local rate limits and active health checks need EnvoyFilter / are not Istio features, and
  are not schema-checked here: E301. SLOs describe the mesh (the prometheus target lowers
  them); like every traffic target this one leaves them out (NEUTRAL_FEATURES).
- `path_normalization strict` is MeshConfig (`meshConfig.pathNormalization`), not a CRD:
  warning W321 asks for `normalization: MERGE_SLASHES` at install time when rules use paths.
- TCP services: splits become `tcp` routes (TCP ports) or SNI-matched `tls` routes (TLS
  ports, which `tcp` routes do not cover); conditions, timeouts and retries there are E301.
- Ingress: the gateway's VirtualService routes exposed paths to the service's default
  destination (its `otherwise` rule, subsets and weights), as the Envoy and native gateways
  do, with the service's timeout and retries (Istio's gateway default would otherwise be 2
  retries).
- External services: ServiceEntry (MESH_EXTERNAL, DNS), a VirtualService pinning retries and
  timeouts for HTTP callers, and a DestinationRule for load balancing, pools, outlier
  detection and TLS origination (`SIMPLE`, SNI) — never ISTIO_MUTUAL.
- Generated names (`<svc>-allow`, `default-deny`, `<mesh>-gateway`, ...) that collide are E301.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from meshc.backends import k8s
from meshc.backends.base import (
    FEATURES,
    MESH_SETTING_FEATURES,
    Backend,
    Bundle,
    Option,
    boolean,
    dns_name,
    label,
)

from meshc.diagnostics import Diagnostic
from meshc.model import (
    FULL,
    Destination,
    Fault,
    HeaderOps,
    Match,
    Mesh,
    PathMatch,
    Retry,
    RouteRule,
    Service,
    Source,
    Span,
    StringMatch,
    Timeout,
)

NET = "networking.istio.io/v1"
SEC = "security.istio.io/v1"

# slo: neutral, never E301; max_request_body: no field for it in the published resources
_NOT_SUPPORTED = {"health_check", "rate_limit", "max_request_body", "slo"}

MTLS_PEER = {"strict": "STRICT", "permissive": "PERMISSIVE", "disabled": "DISABLE"}
# What clients send: Istio mTLS unless the server has mTLS disabled.
MTLS_CLIENT = {"strict": "ISTIO_MUTUAL", "permissive": "ISTIO_MUTUAL", "disabled": "DISABLE"}
LB_SIMPLE = {"round_robin": "ROUND_ROBIN", "least_request": "LEAST_REQUEST", "random": "RANDOM"}
RETRY_ON = {"5xx": "5xx", "gateway-error": "gateway-error", "connect-failure": "connect-failure",
            "reset": "reset", "retriable-4xx": "retriable-4xx", "refused-stream": "refused-stream"}
PROTOCOL = {"http": "HTTP", "http2": "HTTP2", "grpc": "GRPC", "tcp": "TCP", "tls": "TLS"}
MATCH_ANY = ".*"


def _pct(p: int) -> dict[str, float]:
    return {"value": p / 100}


def _string(kind: str, value: str) -> dict[str, str]:
    if kind in ("present", "absent"):
        return {"regex": MATCH_ANY}
    return {kind: value}


def path_matches(p: PathMatch) -> list[tuple[dict[str, str], str]]:
    """Istio `uri` matchers (OR-ed) for one meshc path condition, with a tag saying which part
    of an `under` they are ("under-exact" / "under-prefix"; "" otherwise)."""
    if p.kind == "under":
        if p.value.endswith("/"):
            return [({"prefix": p.value}, "")]
        return [({"exact": p.value}, "under-exact"), ({"prefix": p.value + "/"}, "under-prefix")]
    return [({p.kind: p.value}, "")]


def _method(methods: tuple[str, ...]) -> dict[str, str]:
    if len(methods) == 1:
        return {"exact": methods[0]}
    return {"regex": "|".join(re.escape(m) for m in methods)}


def match_requests(m: Match, gaps: k8s.Gaps) -> list[tuple[dict[str, Any], str]]:
    base: dict[str, Any] = {}
    headers = [h for h in m.headers if h.kind != "absent"]
    absent = [h for h in m.headers if h.kind == "absent"]
    for group in (m.headers, m.query):
        names = [s.name for s in group]
        if len(names) != len(set(names)):
            gaps.add("two conditions on the same header or query parameter in one match", m.span,
                     "Istio keys conditions by name")
    if headers:
        base["headers"] = {h.name: _string(h.kind, h.value) for h in headers}
    if absent:
        base["withoutHeaders"] = {h.name: _string(h.kind, h.value) for h in absent}
    if m.query:
        base["queryParams"] = {q.name: _string(q.kind, q.value) for q in m.query}
    if m.methods:
        base["method"] = _method(m.methods)
    if m.path is None:
        return [(base, "")]
    return [({"uri": uri, **base}, tag) for uri, tag in path_matches(m.path)]


def _header_ops(ops: HeaderOps | None) -> dict[str, Any]:
    if ops is None:
        return {}
    out: dict[str, Any] = {}
    if ops.set:
        out["set"] = dict(ops.set)
    if ops.add:
        out["add"] = dict(ops.add)
    if ops.remove:
        out["remove"] = list(ops.remove)
    return out


def istio_weights(weights: list[int]) -> list[int]:
    """meshc hundredths of a percent -> Istio integer weights (relative, exact)."""
    if all(w % 100 == 0 for w in weights):
        return [w // 100 for w in weights]
    g = math.gcd(*weights)
    return [w // g for w in weights]


def retry_policy(r: Retry | None) -> dict[str, Any]:
    if r is None or r.attempts == 0:
        return {"attempts": 0}
    on = [RETRY_ON[c] for c in r.on] + [str(c) for c in r.status_codes]
    out: dict[str, Any] = {"attempts": r.attempts}
    if on:
        out["retryOn"] = ",".join(on)
    if r.per_try_ms is not None:
        out["perTryTimeout"] = k8s.go_duration(r.per_try_ms)
    if r.backoff_base_ms is not None:
        out["backoff"] = k8s.go_duration(r.backoff_base_ms)
    return out


class IstioBackend(Backend):
    name: ClassVar[str] = "istio"
    description: ClassVar[str] = "Istio 1.30 CRDs (networking.istio.io/v1, security.istio.io/v1) + core objects"
    # Static endpoints are for local targets: on Kubernetes the Service selector finds the pods.
    CAPABILITIES: ClassVar[frozenset[str]] = frozenset(FEATURES) - _NOT_SUPPORTED - MESH_SETTING_FEATURES
    # the folders of meshc/schemas whose published CRD schemas this target's objects are checked against
    SCHEMAS: ClassVar[tuple[str, ...]] = ('istio',)
    OPTIONS: ClassVar[Mapping[str, Option]] = {
        "root_namespace": Option("Istio root namespace for the mesh-wide PeerAuthentication (default istio-system)", dns_name),
        "cluster_domain": Option("Kubernetes cluster DNS domain (default cluster.local)", dns_name),
        "ingress_selector": Option("label selector of the ingress gateway pods, key=value (default istio=ingressgateway)", label),
        "sidecar_scope": Option("write Sidecar resources scoping egress to declared calls (default true)", boolean),
    }

    # ----------------------------------------------------------------- entry points

    def unsupported(self, mesh: Mesh) -> list[Diagnostic]:
        gaps = k8s.Gaps(self.name)
        self._objects(mesh, gaps)
        return super().unsupported(mesh) + gaps.items

    def lower(self, mesh: Mesh) -> Bundle:
        bundle = Bundle()
        k8s.add_streams(bundle, self._objects(mesh, k8s.Gaps(self.name)))
        bundle.diagnostics += k8s.normalization_warning(
            mesh, self.name, "install Istio with meshConfig.pathNormalization.normalization: MERGE_SLASHES (or "
                             "DECODE_AND_MERGE_SLASHES, which decodes %2F instead of refusing it) so that `//` and "
                             "`.`/`..` cannot bypass path rules")
        return bundle

    def _objects(self, mesh: Mesh, gaps: k8s.Gaps) -> list[dict[str, Any]]:
        self.mesh = mesh
        self.gaps = gaps
        self.domain = self.options.get("cluster_domain", "cluster.local")
        objs = k8s.core_objects(mesh, namespace_labels={"istio-injection": "enabled"}, externals=False)
        for svc in mesh.services:
            if svc.external is not None:
                objs += self.lower_external(svc)
                continue
            objs.append(self.lower_destination_rule(svc))
            vs = self.lower_virtual_service(svc)
            if vs is not None:
                objs.append(vs)
            if self.options.get("sidecar_scope", "true").lower() not in ("0", "false", "no", "off"):
                objs.append(self.lower_sidecar(svc))
        objs += self.lower_peer_authentications(mesh)
        objs += self.lower_authorization(mesh)
        objs += self.lower_ingress(mesh)
        k8s.check_unique(objs, gaps, mesh.span)
        return objs

    # ----------------------------------------------------------------- helpers

    def host(self, name: str, from_ns: str) -> str:
        svc = self.mesh.service(name)
        if svc is None:
            return name
        return k8s.host_for(svc, from_ns, self.domain)

    def destination(self, d: Destination, from_ns: str) -> dict[str, Any]:
        out: dict[str, Any] = {"host": self.host(d.service, from_ns)}
        if d.version is not None:
            out["subset"] = d.version
        return out

    # ----------------------------------------------------------------- VirtualService

    def effective_timeout(self, svc: Service, rule: RouteRule | None) -> Timeout | None:
        for t in (rule.timeout if rule else None, svc.resilience.timeout, self.mesh.timeout):
            if t is not None:
                return t
        return None

    def lower_virtual_service(self, svc: Service) -> dict[str, Any] | None:
        host = self.host(svc.name, svc.namespace)
        if not svc.is_http:
            k8s.check_tcp_service(svc, self.gaps)
            if not svc.routes:
                return None
            routes = [self.route_destinations(r.destinations, svc.namespace)
                      for r in svc.routes if r.is_default and r.destinations]
            spec: dict[str, Any] = {"hosts": [host]}
            # Istio applies `tcp` routes to opaque TCP ports only; TLS ports take `tls` routes by SNI
            if any(p.protocol == "tcp" for p in svc.ports):
                spec["tcp"] = [{"route": r} for r in routes]
            if any(p.protocol == "tls" for p in svc.ports):
                spec["tls"] = [{"match": [{"sniHosts": [host]}], "route": r} for r in routes]
            return k8s.cr(NET, "VirtualService", svc.name, svc.namespace, spec)
        rules = svc.routes or (RouteRule(destinations=(Destination(service=svc.name),), span=svc.span),)
        http: list[dict[str, Any]] = []
        for rule in rules:
            http += self.lower_rule(svc, rule)
        return k8s.cr(NET, "VirtualService", svc.name, svc.namespace, {"hosts": [host], "http": http})

    def route_destinations(self, dests: Iterable[Destination], ns: str) -> list[dict[str, Any]]:
        dests = list(dests)
        weights = istio_weights([d.weight for d in dests])
        out = []
        for d, w in zip(dests, weights, strict=True):
            entry: dict[str, Any] = {"destination": self.destination(d, ns)}
            if len(dests) > 1 or d.weight != FULL:
                entry["weight"] = w
            out.append(entry)
        return out

    def lower_rule(self, svc: Service, rule: RouteRule) -> list[dict[str, Any]]:
        """One meshc rule -> consecutive Istio HTTP routes (several when a fault has its own
        condition or an `under` prefix rewrite needs two rewrites)."""
        body = self.rule_body(svc, rule)
        out = []
        for matches, faults in self.fault_variants(svc, rule):
            fault = self.fault(faults, rule.span)
            reqs = [r for m in matches for r in match_requests(m, self.gaps)]
            groups: list[tuple[list[dict[str, Any]], dict[str, Any]]]
            rw = rule.rewrite
            if rw is not None and rw.prefix is not None and any(m.path is not None and m.path.kind == "regex"
                                                               for m in rule.matches):
                self.gaps.add("a prefix rewrite after a regex path match", rw.span,
                              "Envoy rewrites a matched prefix only; use `rewrite path` or a prefix condition")
            if rw is not None and rw.prefix is not None and any(t == "under-prefix" for _, t in reqs):
                slash = rw.prefix.rstrip("/") + "/"
                groups = [([r for r, t in reqs if t != "under-prefix"], {"uri": rw.prefix}),
                          ([r for r, t in reqs if t == "under-prefix"], {"uri": slash})]
                groups = [(g, u) for g, u in groups if g]
            else:
                groups = [([r for r, _ in reqs], {})]
            for reqs_, uri in groups:
                route = dict(body)
                if reqs_:
                    route["match"] = reqs_
                if uri:
                    route["rewrite"] = {**route.get("rewrite", {}), **uri}
                if fault:
                    route["fault"] = fault
                out.append(dict(sorted(route.items())))
        return out

    def rule_body(self, svc: Service, rule: RouteRule) -> dict[str, Any]:
        ns = svc.namespace
        body: dict[str, Any] = {}
        if rule.redirect is not None:
            rd = rule.redirect
            red: dict[str, Any] = {"redirectCode": rd.code}
            for key, val in (("uri", rd.path), ("authority", rd.host), ("scheme", rd.scheme), ("port", rd.port)):
                if val is not None:
                    red[key] = val
            body["redirect"] = red
            return body
        if rule.respond is not None:
            dr: dict[str, Any] = {"status": rule.respond.status}
            if rule.respond.body:
                dr["body"] = {"string": rule.respond.body}
            body["directResponse"] = dr
            return body
        body["route"] = self.route_destinations(rule.destinations, ns)
        rw = rule.rewrite
        if rw is not None:
            rewrite: dict[str, Any] = {}
            if rw.path is not None:
                # the whole path, whatever the match kind
                rewrite["uriRegexRewrite"] = {"match": "^.*$", "rewrite": rw.path}
            elif rw.prefix is not None and not any(m.path is not None and m.path.kind == "regex"
                                                   for m in rule.matches):
                rewrite["uri"] = rw.prefix
            if rw.host is not None:
                rewrite["authority"] = rw.host
            if rewrite:
                body["rewrite"] = rewrite
        headers = {}
        if (req := _header_ops(rule.request_headers)):
            headers["request"] = req
        if (resp := _header_ops(rule.response_headers)):
            headers["response"] = resp
        if headers:
            body["headers"] = headers
        if rule.mirror is not None:
            body["mirror"] = self.destination(rule.mirror.destination, ns)
            body["mirrorPercentage"] = _pct(rule.mirror.percent)
        timeout = self.effective_timeout(svc, rule)
        if timeout is not None and timeout.ms is not None:
            body["timeout"] = k8s.go_duration(timeout.ms)
        retry = rule.retry or svc.resilience.retry
        if retry is not None and retry.backoff_max_ms is not None and retry.backoff_base_ms is not None \
                and retry.backoff_max_ms != 10 * retry.backoff_base_ms:
            self.gaps.add("a retry backoff maximum other than 10 x the base interval", retry.span,
                          "Istio fixes the maximum at 10 x `backoff`; drop `max`")
        body["retries"] = retry_policy(retry)
        return body

    def fault_variants(self, svc: Service, rule: RouteRule) -> list[tuple[tuple[Match, ...], list[Fault]]]:
        variants: list[tuple[tuple[Match, ...], list[Fault]]] = [(rule.matches, [])]
        for f in svc.faults + rule.faults:
            new: list[tuple[tuple[Match, ...], list[Fault]]] = []
            for ms, fs in variants:
                if not f.matches:
                    new.append((ms, fs + [f]))
                    continue
                both = k8s.and_matches(ms, f.matches)
                if both is k8s.UNKNOWN:
                    self.gaps.add("a fault condition combined with this rule's conditions", f.span,
                                  "move the fault into a rule of its own")
                elif both is not None:
                    new.append((both, fs + [f]))
                new.append((ms, fs))
            variants = new
        return variants

    def fault(self, faults: list[Fault], span: Span) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in faults:
            if f.delay_ms is not None:
                if "delay" in out:
                    self.gaps.add("two delay faults on the same requests", f.span, "Istio takes one delay per route")
                out["delay"] = {"fixedDelay": k8s.go_duration(f.delay_ms), "percentage": _pct(f.delay_percent)}
            if f.abort_status is not None:
                if "abort" in out:
                    self.gaps.add("two abort faults on the same requests", f.span, "Istio takes one abort per route")
                out["abort"] = {"httpStatus": f.abort_status, "percentage": _pct(f.abort_percent)}
        return out

    # ----------------------------------------------------------------- DestinationRule

    def traffic_policy(self, svc: Service) -> dict[str, Any]:
        res = svc.resilience
        tp: dict[str, Any] = {"tls": {"mode": MTLS_CLIENT[svc.mtls]}}
        lb = res.load_balance
        if lb is not None:
            if lb.policy == "consistent_hash":
                ch: dict[str, Any] = {}
                if lb.hash_on == "header":
                    ch["httpHeaderName"] = lb.hash_key
                elif lb.hash_on == "cookie":
                    cookie: dict[str, Any] = {"name": lb.hash_key}
                    if lb.cookie_ttl_ms is not None:
                        cookie["ttl"] = k8s.go_duration(lb.cookie_ttl_ms)
                    ch["httpCookie"] = cookie
                elif lb.hash_on == "query":
                    ch["httpQueryParameterName"] = lb.hash_key
                else:
                    ch["useSourceIp"] = True
                tp["loadBalancer"] = {"consistentHash": ch}
            else:
                tp["loadBalancer"] = {"simple": LB_SIMPLE[lb.policy]}
        cb = res.circuit_breaker
        if cb is not None:
            pool: dict[str, Any] = {}
            if cb.max_connections is not None:
                pool["tcp"] = {"maxConnections": cb.max_connections}
            http = {key: val for key, val in (("http1MaxPendingRequests", cb.max_pending),
                                               ("http2MaxRequests", cb.max_requests),
                                               ("maxRetries", cb.max_retries)) if val is not None}
            if http:
                pool["http"] = http
            tp["connectionPool"] = pool
        od = res.outlier
        if od is not None:
            if od.max_percent % 100:
                self.gaps.add("an outlier max_percent with decimals", od.span,
                              "Istio's maxEjectionPercent is a whole percentage")
            tp["outlierDetection"] = {
                "consecutive5xxErrors": od.consecutive_5xx,
                "interval": k8s.go_duration(od.interval_ms),
                "baseEjectionTime": k8s.go_duration(od.eject_ms),
                "maxEjectionPercent": od.max_percent // 100,
            }
        budgets = {r.budget: r for r in [res.retry, *(x.retry for x in svc.routes)]
                   if r is not None and r.budget is not None}
        if len(budgets) > 1:
            self.gaps.add("different retry budgets for one service", list(budgets.values())[1].span,
                          "Istio sets the budget per destination (DestinationRule)")
        if budgets:
            tp["retryBudget"] = {"percent": next(iter(budgets)) / 100}
        port_tls = [{"port": {"number": p.number}, "tls": {"mode": MTLS_CLIENT[p.mtls]}}
                    for p in svc.ports if MTLS_CLIENT[p.mtls] != MTLS_CLIENT[svc.mtls]]
        if port_tls:
            tp["portLevelSettings"] = port_tls
        return tp

    def lower_destination_rule(self, svc: Service) -> dict[str, Any]:
        spec: dict[str, Any] = {"host": self.host(svc.name, svc.namespace), "trafficPolicy": self.traffic_policy(svc)}
        if svc.versions:
            spec["subsets"] = [{"name": v.name, "labels": dict(v.labels)} for v in svc.versions]
        return k8s.cr(NET, "DestinationRule", svc.name, svc.namespace, spec)

    # ----------------------------------------------------------------- external services

    def lower_external(self, svc: Service) -> list[dict[str, Any]]:
        ext = svc.external
        assert ext is not None
        ports = []
        for p in svc.ports:
            # with TLS origination callers speak plain HTTP to the TLS port
            proto = "HTTP" if (ext.tls_originate and p.protocol == "tls") else PROTOCOL[p.protocol]
            ports.append({"number": p.number, "name": f"{proto.lower()}-{p.number}", "protocol": proto})
        spec = {"hosts": [ext.host], "location": "MESH_EXTERNAL", "resolution": "DNS", "ports": ports}
        out = [k8s.cr(NET, "ServiceEntry", svc.name, svc.namespace, spec)]
        # load balancing, circuit breaking, outlier detection apply to egress too; the
        # in-mesh tls mode does not (an external host has no Istio identity)
        tp = {k: v for k, v in self.traffic_policy(svc).items() if k not in ("tls", "portLevelSettings")}
        if ext.tls_originate:
            tls = {"mode": "SIMPLE", "sni": ext.sni or ext.host}
            levels = [{"port": {"number": p.number}, "tls": tls} for p in svc.ports if p.protocol == "tls"]
            if levels:
                tp["portLevelSettings"] = levels
            else:
                tp["tls"] = tls
        if tp:
            out.append(k8s.cr(NET, "DestinationRule", svc.name, svc.namespace, {"host": ext.host, "trafficPolicy": tp}))
        self.check_passthrough_timeouts(svc)
        if svc.is_http or ext.tls_originate:  # callers speak HTTP: route it (and pin retries/timeouts)
            rules = svc.routes or (RouteRule(destinations=(Destination(service=svc.name),), span=svc.span),)
            http = [r for rule in rules for r in self.lower_rule(svc, rule)]
            out.append(k8s.cr(NET, "VirtualService", svc.name, svc.namespace, {"hosts": [ext.host], "http": http}))
        else:
            k8s.check_tcp_service(svc, self.gaps)
        return out

    def check_passthrough_timeouts(self, svc: Service) -> None:
        """A timeout the `.mesh` sets on an external service with a TLS passthrough port: the
        VirtualService's `http` routes carry it for the HTTP ports, but passthrough has no
        requests to time out (Istio `tls` routes have no timeout, and a DestinationRule's
        connectTimeout bounds the TCP handshake, not the request). A TLS-only service is
        reported by `check_tcp_service`."""
        ext = svc.external
        if ext is None or ext.tls_originate or not svc.is_http or all(p.protocol != "tls" for p in svc.ports):
            return
        for t in (svc.resilience.timeout, *(r.timeout for r in svc.routes)):
            if t is not None and t.ms is not None:
                self.gaps.add("timeouts on an external service", t.span,
                              "its TLS passthrough port carries no requests to time out (a connect timeout "
                              "is not a request timeout); use `tls originate`, or declare the TLS port as "
                              "its own external service without a timeout")

    # ----------------------------------------------------------------- Sidecar

    def egress_hosts(self, svc: Service) -> list[str]:
        hosts: set[str] = set()
        for name in svc.calls:
            callee = self.mesh.service(name)
            if callee is None:
                continue
            # routes of the callee are applied at the caller: their destinations are needed too
            targets = {callee.name} | {d.service for r in callee.routes for d in r.destinations}
            targets |= {r.mirror.destination.service for r in callee.routes if r.mirror}
            for t in targets:
                tsvc = self.mesh.service(t)
                if tsvc is not None:
                    dns = tsvc.external.host if tsvc.external else k8s.fqdn(tsvc, self.domain)
                    hosts.add(f"{tsvc.namespace}/{dns}")
        return sorted(hosts) or ["~/*"]

    def lower_sidecar(self, svc: Service) -> dict[str, Any]:
        spec = {"workloadSelector": {"labels": {"app": svc.name}}, "egress": [{"hosts": self.egress_hosts(svc)}]}
        return k8s.cr(NET, "Sidecar", svc.name, svc.namespace, spec)

    # ----------------------------------------------------------------- PeerAuthentication

    def lower_peer_authentications(self, mesh: Mesh) -> list[dict[str, Any]]:
        root = self.options.get("root_namespace", "istio-system")
        out = [k8s.cr(SEC, "PeerAuthentication", "default", root, {"mtls": {"mode": MTLS_PEER[mesh.mtls]}})]
        internal = [s for s in mesh.services if s.external is None]
        ns_mode: dict[str, str] = {}
        for ns in sorted({s.namespace for s in internal}):
            modes = {s.mtls for s in internal if s.namespace == ns}
            ns_mode[ns] = modes.pop() if len(modes) == 1 else mesh.mtls
            if ns_mode[ns] != mesh.mtls:
                out.append(k8s.cr(SEC, "PeerAuthentication", "default", ns, {"mtls": {"mode": MTLS_PEER[ns_mode[ns]]}}))
        for svc in internal:
            port_modes = {str(p.number): {"mode": MTLS_PEER[p.mtls]} for p in svc.ports if p.mtls != svc.mtls}
            if svc.mtls == ns_mode[svc.namespace] and not port_modes:
                continue
            spec: dict[str, Any] = {"selector": {"matchLabels": {"app": svc.name}},
                                    "mtls": {"mode": MTLS_PEER[svc.mtls]}}
            if port_modes:
                spec["portLevelMtls"] = port_modes
            out.append(k8s.cr(SEC, "PeerAuthentication", svc.name, svc.namespace, spec))
        return out

    # ----------------------------------------------------------------- AuthorizationPolicy

    def principal(self, src: Source) -> str:
        mesh = self.mesh
        if src.kind == "ingress":
            ident = mesh.ingress_identity
        elif src.kind == "service":
            svc = mesh.service(src.name)
            ident = svc.identity if svc is not None else None  # type: ignore[assignment]
            if ident is None:
                return f"{mesh.trust_domain}/ns/{mesh.namespace}/sa/{src.name}"
        else:  # identity: the namespace of a service using it, else the mesh namespace
            owner = next((s for s in mesh.services if s.identity.name == src.name), None)
            ns = owner.identity.namespace if owner else mesh.namespace
            return f"{mesh.trust_domain}/ns/{ns}/sa/{src.name}"
        return f"{ident.trust_domain}/ns/{ident.namespace}/sa/{ident.name}"

    def sources(self, sources: tuple[Source, ...]) -> list[dict[str, Any]]:
        if any(s.kind == "any" for s in sources):
            return []
        principals = sorted({self.principal(s) for s in sources if s.kind in ("service", "identity", "ingress")})
        out: list[dict[str, Any]] = []
        if principals:
            out.append({"source": {"principals": principals}})
        if any(s.kind == "authenticated" for s in sources):
            out.append({"source": {"principals": ["*"]}})
        if any(s.kind == "unauthenticated" for s in sources):
            out.append({"source": {"notPrincipals": ["*"]}})
        return out

    def authz_paths(self, paths: tuple[PathMatch, ...]) -> list[str]:
        out: list[str] = []
        for p in paths:
            if p.kind == "exact":
                out.append(p.value)
            elif p.kind == "prefix":
                out.append(p.value + "*")
            elif p.kind == "under":
                out += [p.value + "*"] if p.value.endswith("/") else [p.value, p.value + "/*"]
            else:
                self.gaps.add("a regex path in an authorization rule", p.span,
                              "Istio authorization matches exact, prefix (`/p*`) and suffix paths only")
        return out

    def when(self, headers: tuple[StringMatch, ...]) -> list[dict[str, Any]]:
        out = []
        for h in headers:
            key = f"request.headers[{h.name}]"
            if h.kind == "exact":
                out.append({"key": key, "values": [h.value]})
            elif h.kind == "prefix":
                out.append({"key": key, "values": [h.value + "*"]})
            elif h.kind == "present":
                out.append({"key": key, "values": ["*"]})
            elif h.kind == "absent":
                out.append({"key": key, "notValues": ["*"]})
            else:
                self.gaps.add("a regex header condition in an authorization rule", h.span,
                              "Istio authorization matches exact, prefix, suffix and presence")
        return out

    def authz_rule(self, rule: Any) -> dict[str, Any] | None:
        """The Istio rule, or None when a condition cannot be written (reported as E301):
        with --unsupported=warn the whole rule is left out, never just its condition, which
        would widen it."""
        expressible = (all(p.kind != "regex" for p in rule.paths + rule.not_paths)
                       and all(h.kind != "regex" for h in rule.headers))
        out: dict[str, Any] = {}
        src = self.sources(rule.sources)
        if src:
            out["from"] = src
        op: dict[str, Any] = {}
        if rule.methods:
            op["methods"] = list(rule.methods)
        if rule.paths:
            op["paths"] = self.authz_paths(rule.paths)
        if rule.not_paths:
            op["notPaths"] = self.authz_paths(rule.not_paths)
        if rule.ports:
            op["ports"] = [str(p) for p in rule.ports]
        if op:
            out["to"] = [{"operation": op}]
        when = self.when(rule.headers)
        if when:
            out["when"] = when
        return out if expressible else None

    def lower_authorization(self, mesh: Mesh) -> list[dict[str, Any]]:
        internal = [s for s in mesh.services if s.external is None]
        namespaces = sorted({s.namespace for s in internal})
        out = []
        if mesh.authz == "deny_by_default":
            # an ALLOW policy with no rules matches nothing: everything not allowed is denied
            out += [k8s.cr(SEC, "AuthorizationPolicy", "default-deny", ns, {}) for ns in namespaces]
        grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for rule in mesh.rules:
            if rule.action == "allow" and mesh.authz == "allow_by_default":
                continue  # a no-op in meshc; an Istio ALLOW policy would deny the rest
            if any(s is not None and s.external is not None for s in map(mesh.service, rule.destinations)) or (
                    "*" in rule.destinations and any(s.external is not None for s in mesh.services)):
                # egress authorization runs in the caller's sidecar (docs/language.md); Istio checks
                # AuthorizationPolicies at the receiving proxy, which an external host does not run
                self.gaps.add("authorization of calls to an external service (egress)", rule.span,
                              "Istio enforces authorization where requests arrive: an external host has no "
                              "sidecar, and egress gateways are not generated")
            targets = internal if "*" in rule.destinations else \
                [s for s in map(mesh.service, rule.destinations) if s is not None and s.external is None]
            body = self.authz_rule(rule)
            if body is None:
                continue
            for ns, name in ([(ns, "") for ns in namespaces] if "*" in rule.destinations
                             else [(s.namespace, s.name) for s in targets]):
                grouped.setdefault((ns, name, rule.action), []).append(body)
        for (ns, name, action), rules in sorted(grouped.items()):
            spec: dict[str, Any] = {"action": action.upper(), "rules": rules}
            if name:
                spec["selector"] = {"matchLabels": {"app": name}}
            obj_name = f"{name}-{action}" if name else f"all-services-{action}"
            out.append(k8s.cr(SEC, "AuthorizationPolicy", obj_name, ns, spec))
        return out

    # ----------------------------------------------------------------- ingress

    def lower_ingress(self, mesh: Mesh) -> list[dict[str, Any]]:
        exposed = k8s.exposed_http_services(mesh, self.gaps)
        if not exposed:
            return []
        ns = mesh.namespace
        gw_name = f"{mesh.name}-gateway"
        key, _, val = self.options.get("ingress_selector", "istio=ingressgateway").partition("=")
        by_port: dict[int, set[str]] = {}
        groups: dict[tuple[int, tuple[str, ...]], list[Service]] = {}
        for svc in exposed:
            assert svc.expose is not None
            hosts = tuple(sorted(svc.expose.hosts))
            by_port.setdefault(svc.expose.port, set()).update(hosts)
            groups.setdefault((svc.expose.port, hosts), []).append(svc)
        servers = [{"port": {"number": port, "name": f"http-{port}", "protocol": "HTTP"}, "hosts": sorted(hosts)}
                   for port, hosts in sorted(by_port.items())]
        out = [k8s.cr(NET, "Gateway", gw_name, ns, {"selector": {key: val}, "servers": servers})]
        for i, ((_port, hosts), svcs) in enumerate(sorted(groups.items(), key=lambda kv: kv[0])):
            http = []
            # services exposing every path go last: Istio routes are first-match
            for svc in sorted(svcs, key=lambda s: (not s.expose.paths, s.name)):  # type: ignore[union-attr]
                assert svc.expose is not None
                route: dict[str, Any] = {}
                if svc.expose.paths:
                    route["match"] = [{"uri": uri} for p in svc.expose.paths for uri, _ in path_matches(p)]
                # to the service's default destination (its `otherwise` rule), as the Envoy and
                # native gateways do: a canary split applies to ingress traffic too
                default = next((r for r in svc.routes if r.is_default and r.destinations), None)
                dests = default.destinations if default else (Destination(service=svc.name),)
                route["route"] = self.route_destinations(dests, ns)
                for entry, d in zip(route["route"], dests, strict=True):
                    entry["destination"]["port"] = {"number": _http_port(mesh.service(d.service) or svc)}
                # the gateway's hop gets the service's own timeout and retries, never Istio's defaults
                timeout = self.effective_timeout(svc, None)
                if timeout is not None and timeout.ms is not None:
                    route["timeout"] = k8s.go_duration(timeout.ms)
                route["retries"] = retry_policy(svc.resilience.retry)
                http.append(route)
            taken = mesh.service(mesh.name) is not None  # a service's own VirtualService has its name
            name = mesh.name if len(groups) == 1 and not taken else f"{mesh.name}-ingress-{i}"
            out.append(k8s.cr(NET, "VirtualService", name, ns,
                              {"hosts": list(hosts), "gateways": [gw_name], "http": http}))
        return out


def _http_port(svc: Service) -> int:
    """The port a gateway sends a service's HTTP traffic to: its first HTTP-family port."""
    return next((p.number for p in svc.ports if p.protocol in ("http", "http2", "grpc")),
                svc.ports[0].number if svc.ports else 80)
