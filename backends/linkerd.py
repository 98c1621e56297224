"""Linkerd backend (current edge releases: edge-26.x / 2.20 CRDs): policy.linkerd.io/v1beta3
Server and HTTPRoute, policy.linkerd.io/v1alpha1 AuthorizationPolicy, MeshTLSAuthentication,
NetworkAuthentication and HTTPLocalRateLimitPolicy; with option `gateway_api_routes` the routes
are gateway.networking.k8s.io/v1 HTTPRoutes (the Gateway API bundle Linkerd ships); with option
`legacy_service_profile`, linkerd.io/v1alpha2 ServiceProfiles instead of outbound routes
(never both for one service; ServiceProfile routes are first-match and carry timeouts, not
destinations or retry counts). TCP splits are gateway.networking.k8s.io/v1alpha2 TCPRoutes.

Outbound (the caller's proxy): an HTTPRoute per service with route rules, parentRef the
Service, weighted backendRefs to per-version Services (`reviews-v2`) for splits; routing order
is kept with the same specificity analysis as the gateway-api target (Linkerd ranks routes the
Gateway API way). Retries are annotations (`retry.linkerd.io/http`, `retry.linkerd.io/limit`,
`retry.linkerd.io/timeout`) on that HTTPRoute, or on the Service when it has no routes
(with `timeout.linkerd.io/request`); rule timeouts are the route rules' `timeouts.request`.
Outlier detection becomes failure-accrual annotations on the Service
(`balancer.linkerd.io/failure-accrual: consecutive`, max failures = consecutive_5xx, penalty =
eject time; `interval` and `max_percent` have no Linkerd counterpart: E301 when they differ from the defaults).

Inbound (the callee's proxy): a Server per port (proxyProtocol from the port protocol,
accessPolicy `deny` under deny_by_default, else all-authenticated / all-unauthenticated by the
port's mTLS mode), namespaces annotated `config.linkerd.io/default-inbound-policy` and
`linkerd.io/inject: enabled`. Allow rules become AuthorizationPolicies requiring a
MeshTLSAuthentication (service, identity, ingress: identityRefs to ServiceAccounts;
`authenticated`: identities `*`) or, for `*` on a permissive port, a NetworkAuthentication of
every address. A permissive port under deny_by_default keeps `accessPolicy: deny`: identities
are matched per connection, as in meshc (meshed callers speak mTLS to it and are admitted by
the MeshTLSAuthentications naming them; plaintext callers only by `*` rules; unauthenticated
sources are E301). Method/path/header conditions are inbound HTTPRoutes on the Server (plus a
catch-all route, so requests outside them still reach server-level authorizations); an
allow rule whose conditions contain another's is attached to that rule's route as well, so
OR-ed allows hold under Linkerd's one-route-per-request matching.

Path semantics: Linkerd PathPrefix matches whole segments, exactly meshc `under`; meshc
`prefix` (bytes) is rejected with E301 (except `prefix "/"`), see docs/language.md.

gRPC services get a GRPCRoute; their (uniform) timeout is `timeout.linkerd.io/request` on it.
Rate limits: an HTTPLocalRateLimitPolicy per HTTP Server (`total.requestsPerSecond`).
Path-based rules get warning W321 (Linkerd matches the path as sent, without normalization).

Not expressible (E301): deny rules, rules for unauthenticated-only sources, path exclusions,
header-absent conditions, mTLS disabled, load-balancer choice (Linkerd always uses EWMA),
circuit-breaker limits, mirroring, rewrites, direct responses, faults, active health checks,
retry backoff and budgets, connection-level retry conditions (connect-failure, reset,
refused-stream: Linkerd retries on response status), per-rule retries, gRPC retries, rate-limit
bursts, ingress exposure, TLS origination, resilience on external (ExternalName) services and
partly overlapping method/path/header allow rules. With --unsupported=warn a rule with such a
condition is left out whole, never widened.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from meshc.backends import k8s
from meshc.backends.base import FEATURES, MESH_SETTING_FEATURES, Option, boolean, dns_name
from meshc.backends.gateway_api import GW, GatewayApiBackend, rank

from meshc.model import Match, Mesh, Outlier, Port, Retry, RouteRule, Service, Source

POLICY = "policy.linkerd.io"
V1BETA3 = f"{POLICY}/v1beta3"
V1ALPHA1 = f"{POLICY}/v1alpha1"
PROFILE_API = "linkerd.io/v1alpha2"

PROXY_PROTOCOL = {"http": "HTTP/1", "http2": "HTTP/2", "grpc": "gRPC", "tcp": "opaque", "tls": "TLS"}
RETRY_HTTP = {"5xx": "5xx", "gateway-error": "gateway-error", "retriable-4xx": "409"}

_KIND_SUFFIX = {"MeshTLSAuthentication": "mtls", "NetworkAuthentication": "net"}

_NOT_SUPPORTED = {
    "max_request_body",  # no field for it in the published resources
    "mtls.disabled", "route.match.path.prefix", "route.match.header.absent", "route.rewrite",
    "route.rewrite.host", "route.respond", "route.mirror", "retry.backoff", "retry.budget",
    "load_balance.round_robin", "load_balance.least_request", "load_balance.random",
    "load_balance.consistent_hash", "circuit_breaker", "health_check", "fault.delay", "fault.abort",
    "authz.deny", "authz.unauthenticated", "authz.not_paths", "ingress", "external.tls_originate", "slo",
}


def _auth_ref(kind: str, name: str) -> dict[str, str]:
    return {"group": POLICY, "kind": kind, "name": name}


class LinkerdBackend(GatewayApiBackend):
    name: ClassVar[str] = "linkerd"
    description: ClassVar[str] = "Linkerd edge (policy.linkerd.io v1beta3/v1alpha1 CRDs, annotations) + core objects"
    CAPABILITIES: ClassVar[frozenset[str]] = frozenset(FEATURES) - _NOT_SUPPORTED - MESH_SETTING_FEATURES
    # the folders of meshc/schemas whose published CRD schemas this target's objects are checked against
    SCHEMAS: ClassVar[tuple[str, ...]] = ('linkerd',)
    OPTIONS: ClassVar[Mapping[str, Option]] = {
        "gateway_api_routes": Option("write gateway.networking.k8s.io/v1 HTTPRoutes instead of policy.linkerd.io/v1beta3", boolean),
        "legacy_service_profile": Option("write ServiceProfiles (linkerd.io/v1alpha2) instead of HTTPRoutes for routing", boolean),
        "cluster_domain": Option("Kubernetes cluster DNS domain (default cluster.local)", dns_name),
    }
    ROUTE_API: ClassVar[str] = V1BETA3
    RULE_FILTERS: ClassVar[frozenset[str]] = frozenset({"RequestHeaderModifier", "RequestRedirect"})
    MAX_MATCHES: ClassVar[int] = 8  # rules[].matches maxItems in the CRDs Linkerd ships

    def __init__(self, options: Any = None):
        super().__init__(options)
        if "gateway_api_routes" in self.options and self.flag("gateway_api_routes"):
            self.ROUTE_API = GW  # type: ignore[misc]
            self.RULE_FILTERS = frozenset({"RequestHeaderModifier", "ResponseHeaderModifier",  # type: ignore[misc]
                                           "RequestRedirect"})
        self.legacy = "legacy_service_profile" in self.options and self.flag("legacy_service_profile")
        # retries are annotations here, whatever the Gateway API channel
        # ServiceProfile conditions are regexes: byte prefixes are exact there
        self.CAPABILITIES = type(self).CAPABILITIES | (  # type: ignore[misc]
            {"route.match.path.prefix"} if self.legacy else set())

    def retries_supported(self) -> bool:
        return True  # as annotations, not the Gateway API `retry` field

    def posture_warnings(self, mesh: Mesh) -> list[Any]:
        # the posture is enforced by Servers' accessPolicy and the namespace default policy;
        # path normalization is not a Linkerd setting
        return k8s.normalization_warning(
            mesh, self.name, "Linkerd matches authorization routes on the request path as sent; normalize "
                             "paths in front of the mesh (ingress) or prefer identity-only rules")

    # ----------------------------------------------------------------- objects

    def _objects(self, mesh: Mesh, gaps: k8s.Gaps) -> list[dict[str, Any]]:
        self.mesh, self.gaps = mesh, gaps
        self.domain = self.options.get("cluster_domain", "cluster.local")
        objs = self.core(mesh)
        for svc in mesh.services:
            if svc.external is not None:
                self.check_external(svc)
                continue
            if self.legacy:
                objs += self.lower_service_profile(svc)
            else:
                objs += self.lower_service_routes(svc)
            objs += self.lower_servers(svc)
            objs += self.lower_rate_limit(svc)
        objs += self.lower_authorization(mesh)
        k8s.check_unique(objs, gaps, mesh.span)
        return objs

    def default_policy(self, mesh: Mesh, mtls: str) -> str:
        if mesh.authz == "deny_by_default":
            return "deny"
        return "all-authenticated" if mtls == "strict" else "all-unauthenticated"

    def core(self, mesh: Mesh) -> list[dict[str, Any]]:
        annotations = {"linkerd.io/inject": "enabled",
                       "config.linkerd.io/default-inbound-policy": self.default_policy(mesh, mesh.mtls)}
        self.check_version_service_names(mesh)
        svc_annotations = {s.name: self.service_annotations(s) for s in mesh.services}
        return k8s.core_objects(mesh, versions=True, namespace_annotations=annotations,
                                service_annotations=svc_annotations)

    def service_annotations(self, svc: Service) -> dict[str, str]:
        out: dict[str, str] = {}
        od = svc.resilience.outlier
        if od is not None:
            defaults = Outlier()
            if (od.interval_ms, od.max_percent) != (defaults.interval_ms, defaults.max_percent):
                self.gaps.add("an outlier `interval` or `max_percent`", od.span,
                              "Linkerd's failure accrual counts consecutive failures per endpoint only")
            out |= {"balancer.linkerd.io/failure-accrual": "consecutive",
                    "balancer.linkerd.io/failure-accrual-consecutive-max-failures": str(od.consecutive_5xx),
                    "balancer.linkerd.io/failure-accrual-consecutive-min-penalty": k8s.go_duration(od.eject_ms),
                    "balancer.linkerd.io/failure-accrual-consecutive-max-penalty": k8s.go_duration(od.eject_ms)}
        opaque = [str(p.number) for p in svc.ports if p.protocol == "tcp"]
        if opaque:
            out["config.linkerd.io/opaque-ports"] = ",".join(opaque)
        if svc.is_http and not svc.routes and not self.legacy:
            # no HTTPRoute: Linkerd reads retry and timeout settings from the Service
            out |= self.retry_annotations(svc.resilience.retry)
            t = svc.resilience.timeout or self.mesh.timeout
            if t is not None and t.ms is not None:
                out["timeout.linkerd.io/request"] = k8s.go_duration(t.ms)
        return out

    # ----------------------------------------------------------------- retries and timeouts

    def retry_annotations(self, r: Retry | None) -> dict[str, str]:
        if r is None or r.attempts == 0:
            return {}
        conds = []
        for c in r.on:
            if c in RETRY_HTTP:
                conds.append(RETRY_HTTP[c])
            else:
                self.gaps.add(f"retries on {c}", r.span,
                              "Linkerd retries on response status (5xx, gateway-error, codes); use those conditions")
        conds += [str(c) for c in r.status_codes]
        out = {"retry.linkerd.io/limit": str(r.attempts)}
        if conds:
            out["retry.linkerd.io/http"] = ",".join(conds)
        if r.per_try_ms is not None:
            out["retry.linkerd.io/timeout"] = k8s.go_duration(r.per_try_ms)
        return out

    def retry(self, r: Retry | None) -> dict[str, Any] | None:
        return None  # annotations on the route instead

    def timeouts(self, svc: Service, rule: RouteRule) -> dict[str, str]:
        t = self.effective_timeout(svc, rule)
        # Linkerd applies no timeout unless one is configured: "none" is the absent field
        return {"request": k8s.go_duration(t.ms)} if t is not None and t.ms is not None else {}

    def rule_body(self, svc: Service, rule: RouteRule, port: int) -> dict[str, Any]:
        body = super().rule_body(svc, rule, port)
        if not body.get("timeouts"):
            body.pop("timeouts", None)
        if rule.response_headers is not None and "ResponseHeaderModifier" not in self.RULE_FILTERS:
            # policy.linkerd.io/v1beta3 has this filter on backendRefs only: same effect
            f = {"type": "ResponseHeaderModifier", "responseHeaderModifier": self.header_filter(rule.response_headers)}
            for ref in body.get("backendRefs", []):
                ref["filters"] = [f]
        if rule.retry is not None and rule.retry != svc.resilience.retry:
            self.gaps.add("a retry policy on a single route rule", rule.retry.span,
                          "Linkerd sets retries per HTTPRoute (annotations); put `retry` on the service")
        return body

    def lower_service_routes(self, svc: Service) -> list[dict[str, Any]]:
        if not svc.is_http:
            return self.lower_tcp_route(svc)
        if not svc.routes:
            return []  # retries and timeouts are Service annotations then
        objs = super().lower_service_routes(svc)
        for o in objs:
            grpc = o["kind"] == "GRPCRoute"
            annotations = self.grpc_resilience(svc) if grpc else self.retry_annotations(svc.resilience.retry)
            if annotations:
                o["metadata"]["annotations"] = dict(annotations)
        return objs

    def grpc_resilience(self, svc: Service) -> dict[str, str]:
        """GRPCRoute has no timeout field, but Linkerd reads `timeout.linkerd.io/request` on it:
        exact when every rule has the same timeout. gRPC retry conditions are gRPC statuses,
        which meshc's HTTP conditions do not name: E301."""
        rules = self.default_rules(svc)
        timeouts = {(t.ms if t else None) for t in (self.effective_timeout(svc, r) for r in rules)}
        if len(timeouts) > 1:
            self.gaps.add("different timeouts per rule on a gRPC service", rules[0].span,
                          "Linkerd sets gRPC timeouts per route (annotation); use one service timeout")
        for r in rules:
            retry = r.retry or svc.resilience.retry
            if retry is not None and retry.attempts > 0:
                self.gaps.add("retries on a gRPC service", retry.span,
                              "Linkerd retries gRPC on gRPC status codes (retry.linkerd.io/grpc)")
        ms = next(iter(timeouts)) if len(timeouts) == 1 else None
        return {"timeout.linkerd.io/request": k8s.go_duration(ms)} if ms is not None else {}

    def lower_tcp_route(self, svc: Service) -> list[dict[str, Any]]:
        if svc.routes and any(p.protocol == "tls" for p in svc.ports):
            self.gaps.add("splits on TLS ports", svc.routes[0].span,
                          "Linkerd routes TLS by SNI (TLSRoute), which meshc splits do not name")
            return []
        objs = super().lower_tcp_route(svc)
        for o in objs:
            o["apiVersion"] = "gateway.networking.k8s.io/v1alpha2"  # the TCPRoute Linkerd ships
        return objs

    # ----------------------------------------------------------------- legacy ServiceProfile

    def lower_service_profile(self, svc: Service) -> list[dict[str, Any]]:
        """ServiceProfile routes are tried in order (first match wins), like meshc rules; they
        carry timeouts and route names but no destinations, filters or retry counts."""
        if not svc.is_http:
            return []
        routes = []
        for i, rule in enumerate(self.default_rules_all(svc)):
            if any(d.service != svc.name or d.version is not None for d in rule.destinations):
                self.gaps.add("version routing or splits with legacy ServiceProfiles", rule.span,
                              "ServiceProfiles only describe routes; drop `legacy_service_profile`")
            for what, node in (("redirects", rule.redirect), ("request header changes", rule.request_headers),
                               ("response header changes", rule.response_headers)):
                if node is not None:
                    self.gaps.add(f"{what} with legacy ServiceProfiles", node.span)
            retry = rule.retry or svc.resilience.retry
            if retry is not None and retry.attempts > 0:
                self.gaps.add("counted retries with legacy ServiceProfiles", retry.span,
                              "ServiceProfile retries are limited by a budget, not a count; drop "
                              "`legacy_service_profile` to get retry.linkerd.io annotations")
            conds = [self.profile_condition(m) for m in rule.matches] or [{"pathRegex": ".*"}]
            timeout = self.effective_timeout(svc, rule)
            for j, cond in enumerate(conds):
                entry: dict[str, Any] = {"name": f"rule-{i}-{j}", "condition": cond}
                if timeout is not None and timeout.ms is not None:
                    entry["timeout"] = k8s.go_duration(timeout.ms)
                routes.append(entry)
        name = f"{svc.name}.{svc.namespace}.svc.{self.domain}"
        return [k8s.cr(PROFILE_API, "ServiceProfile", name, svc.namespace, {"routes": routes})]

    def default_rules_all(self, svc: Service) -> tuple[RouteRule, ...]:
        return svc.routes or (RouteRule(destinations=(), span=svc.span),)

    def profile_condition(self, m: Match) -> dict[str, Any]:
        cond: dict[str, Any] = {}
        p = m.path
        if p is not None:
            v = re.escape(p.value)
            cond["pathRegex"] = {"exact": f"^{v}$", "prefix": f"^{v}.*", "regex": p.value,
                                 "under": f"^{re.escape(p.value.rstrip('/'))}(/.*)?$"}[p.kind]
        if m.headers or m.query:
            self.gaps.add("header or query conditions in legacy ServiceProfiles", m.span)
        if len(m.methods) > 1:
            return {"any": [{**cond, "method": meth} for meth in m.methods]}
        if m.methods:
            cond["method"] = m.methods[0]
        return cond or {"pathRegex": ".*"}

    # ----------------------------------------------------------------- inbound

    def server_name(self, svc: Service, port: Port) -> str:
        return f"{svc.name}-{port.number}"

    def lower_servers(self, svc: Service) -> list[dict[str, Any]]:
        return [k8s.cr(V1BETA3, "Server", self.server_name(svc, p), svc.namespace, {
            "podSelector": {"matchLabels": {"app": svc.name}},
            "port": p.number,
            "proxyProtocol": PROXY_PROTOCOL[p.protocol],
            "accessPolicy": self.default_policy(self.mesh, p.mtls),
        }) for p in svc.ports]

    def lower_rate_limit(self, svc: Service) -> list[dict[str, Any]]:
        rl = svc.resilience.rate_limit
        if rl is None:
            return []
        per_s = rl.per_second
        if per_s != int(per_s) or per_s < 1:
            self.gaps.add("a rate limit that is not a whole number of requests per second", rl.span,
                          "Linkerd limits in requests per second")
        if rl.burst is not None:
            self.gaps.add("a rate-limit burst", rl.span, "Linkerd's HTTPLocalRateLimitPolicy has no burst size")
        out = []
        for p in svc.ports:
            if p.protocol in ("http", "http2", "grpc"):
                out.append(k8s.cr(V1ALPHA1, "HTTPLocalRateLimitPolicy", self.server_name(svc, p), svc.namespace, {
                    "targetRef": {"group": POLICY, "kind": "Server", "name": self.server_name(svc, p)},
                    "total": {"requestsPerSecond": max(int(per_s), 1)}}))
        return out

    # ----------------------------------------------------------------- authorization

    def identity_ref(self, src: Source) -> dict[str, str]:
        mesh = self.mesh
        if src.kind == "ingress":
            ident = mesh.ingress_identity
            return {"kind": "ServiceAccount", "name": ident.name, "namespace": ident.namespace}
        if src.kind == "service":
            svc = mesh.service(src.name)
            if svc is not None:
                return {"kind": "ServiceAccount", "name": svc.identity.name, "namespace": svc.identity.namespace}
        owner = next((s for s in mesh.services if s.identity.name == src.name), None)
        ns = owner.identity.namespace if owner else mesh.namespace
        return {"kind": "ServiceAccount", "name": src.name, "namespace": ns}

    def l7_matches(self, rule: Any) -> list[Match]:
        paths = list(rule.paths) or [None]
        out = []
        for p in paths:
            if p is not None and p.kind == "prefix" and p.value != "/":
                self.gaps.add("a byte-prefix path in an authorization rule", p.span,
                              "Linkerd PathPrefix matches whole segments; use `under`")
                continue
            out.append(Match(path=p, methods=rule.methods, headers=rule.headers, span=rule.span))
        return out

    def authentications(self, svc: Service, idx: int, rule: Any, ports: list[Port],
                        suffix: str = "") -> tuple[list[dict], list[dict]]:
        """(authentication objects, refs to require) for `ports`, which share one mTLS
        strictness. Sources are OR-ed, refs within one AuthorizationPolicy are AND-ed: one
        policy per ref."""
        objs: list[dict[str, Any]] = []
        refs: list[dict[str, str]] = []
        base = f"{svc.name}-allow-{idx}{suffix}"
        idents = sorted({tuple(sorted(self.identity_ref(s).items())) for s in rule.sources
                         if s.kind in ("service", "identity", "ingress")})
        spec: dict[str, Any] = {}
        if idents:
            spec["identityRefs"] = [dict(i) for i in idents]
        if any(s.kind == "authenticated" for s in rule.sources) or (
                any(s.kind == "any" for s in rule.sources) and all(p.mtls == "strict" for p in ports)):
            spec = {"identities": ["*"]}  # any mesh identity (covers the listed ones)
        if spec:
            objs.append(k8s.cr(V1ALPHA1, "MeshTLSAuthentication", base, svc.namespace, spec))
            refs.append(_auth_ref("MeshTLSAuthentication", base))
        if any(s.kind == "any" for s in rule.sources) and not all(p.mtls == "strict" for p in ports):
            objs.append(k8s.cr(V1ALPHA1, "NetworkAuthentication", f"{base}-any", svc.namespace,
                               {"networks": [{"cidr": "0.0.0.0/0"}, {"cidr": "::/0"}]}))
            refs = [_auth_ref("NetworkAuthentication", f"{base}-any")]  # everyone: mTLS peers included
        return objs, refs

    def lower_authorization(self, mesh: Mesh) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if mesh.authz == "allow_by_default":
            return out  # allow rules are no-ops; deny rules are E301 on Linkerd
        internal = [s for s in mesh.services if s.external is None]
        per_svc: dict[str, list[tuple[int, Any]]] = {}
        for idx, rule in enumerate(mesh.rules):
            if rule.action != "allow":
                continue
            if any(s is not None and s.external is not None for s in map(mesh.service, rule.destinations)) or (
                    "*" in rule.destinations and any(s.external is not None for s in mesh.services)):
                # egress authorization runs in the caller's proxy (docs/language.md); Linkerd
                # authorizes inbound traffic only (Servers), and an external host runs no proxy
                self.gaps.add("authorization of calls to an external service (egress)", rule.span,
                              "Linkerd policy is inbound only: an external host has no proxy to enforce it")
            targets = internal if "*" in rule.destinations else [
                s for s in (mesh.service(d) for d in rule.destinations) if s is not None and s.external is None]
            for svc in targets:
                per_svc.setdefault(svc.name, []).append((idx, rule))
        for name, rules in sorted(per_svc.items()):
            target = mesh.service(name)
            assert target is not None
            out += self.service_authorization(target, rules)
        return out

    def service_authorization(self, svc: Service, rules: list[tuple[int, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        l7: list[tuple[int, Any, list[Match], list[Port], list[dict[str, str]]]] = []
        for idx, rule in rules:
            ports = [p for p in svc.ports if not rule.ports or p.number in rule.ports]
            if not ports:
                continue
            if any(h.kind == "absent" for h in rule.headers):
                self.gaps.add("a header-absent condition in an authorization rule", rule.span,
                              "Linkerd routes cannot match a missing header")
                continue  # leaving out a condition would widen the rule: leave out the rule
            if rule.not_paths:
                continue  # E301 (authz.not_paths); without its exception the rule would be wider
            if rule.methods or rule.paths or rule.headers:
                ports = [p for p in ports if p.protocol != "tcp"]
                if not ports:
                    self.gaps.add("authorization by method, path or header on TCP ports", rule.span)
                    continue
                if len({p.mtls == "strict" for p in ports}) > 1 and any(s.kind == "any" for s in rule.sources):
                    self.gaps.add("`*` in a method/path/header rule over strict and permissive ports", rule.span,
                                  "narrow the rule with `ports`")
                objs, refs = self.authentications(svc, idx, rule, ports)
                out += objs
                ms = self.l7_matches(rule)
                if ms:
                    l7.append((idx, rule, ms, ports, refs))
                continue
            # `*` means mTLS peers on strict ports and every address elsewhere
            groups = [g for g in ([p for p in ports if p.mtls == "strict"], [p for p in ports if p.mtls != "strict"]) if g]
            for group, suffix in zip(groups, ("", "-plain") if len(groups) > 1 else ("",), strict=False):
                objs, refs = self.authentications(svc, idx, rule, group, suffix)
                out += objs
                for p in group:
                    for ref in refs:
                        name = f"{svc.name}-allow-{idx}-{p.number}-{_KIND_SUFFIX[ref['kind']]}"
                        out.append(self.authz_policy(svc, name, {"group": POLICY, "kind": "Server",
                                                                 "name": self.server_name(svc, p)}, ref))
        if not l7:
            return out
        http_ports = sorted({p.number: p for _, _, _, ps, _ in l7 for p in ps}.values(), key=lambda p: p.number)
        parents = [{"group": POLICY, "kind": "Server", "name": self.server_name(svc, p)} for p in http_ports]
        # catch-all: requests outside the conditioned routes still meet server-level authorizations
        out.append(k8s.cr(self.ROUTE_API, "HTTPRoute", f"{svc.name}-inbound", svc.namespace,
                          {"parentRefs": parents, "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}]}))
        may_overlap = self.overlap_candidates(l7)
        for idx, rule, ms, _ports, refs in l7:
            route = f"{svc.name}-allow-{idx}"
            out.append(k8s.cr(self.ROUTE_API, "HTTPRoute", route, svc.namespace,
                              {"parentRefs": parents, "rules": self.chunked_rules(svc, self.gateway_matches(ms))}))
            attach = [(idx, refs)]
            for idx2, _rule2, ms2, _p2, refs2 in (l7[j] for j in may_overlap[idx]):
                rel = self.relation(ms, ms2)
                if rel in ("inside", "equal"):
                    attach.append((idx2, refs2))
                elif rel == "overlap":
                    self.gaps.add("allow rules whose method/path/header conditions partly overlap", rule.span,
                                  "Linkerd authorizes each request on one route; make the conditions disjoint or nested")
            for owner, rs in attach:
                for ref in rs:
                    out.append(self.authz_policy(svc, f"{route}-from-{owner}-{_KIND_SUFFIX[ref['kind']]}",
                                                 {"group": POLICY if self.ROUTE_API != GW else "gateway.networking.k8s.io",
                                                  "kind": "HTTPRoute", "name": route}, ref))
        return out

    @staticmethod
    def overlap_candidates(l7: list[tuple[int, Any, list[Match], Any, Any]]) -> dict[int, list[int]]:
        """For each rule (by idx), the positions in `l7` of the other rules whose matches may
        overlap it; the others are disjoint and need no `relation`. Two exact/prefix/under paths
        can match one request only if one value is a string prefix of the other (the request's
        path starts with both), so candidates come from a sorted index of the path values; a
        rule with a match without such a path (a regex, or no path) is a candidate for all.
        Comparing every pair took 38 s for 1,000 rules."""
        wild: list[int] = []
        by_value: dict[str, set[int]] = {}
        for pos, (_, _, ms, _, _) in enumerate(l7):
            values = [m.path.value for m in ms if m.path is not None and m.path.kind != "regex"]
            if len(values) < len(ms):
                wild.append(pos)
            else:
                for v in values:
                    by_value.setdefault(v, set()).add(pos)
        ordered = sorted(by_value)
        out: dict[int, list[int]] = {}
        for pos, (idx, _, ms, _, _) in enumerate(l7):
            found = set(wild)
            if pos in wild:
                found |= set(range(len(l7)))
            else:
                for m in ms:
                    assert m.path is not None
                    v = m.path.value
                    for k in range(1, len(v) + 1):  # values that are prefixes of v
                        found |= by_value.get(v[:k], set())
                    i = bisect.bisect_left(ordered, v)
                    while i < len(ordered) and ordered[i].startswith(v):  # values v is a prefix of
                        found |= by_value[ordered[i]]
                        i += 1
            found.discard(pos)
            out[idx] = sorted(found)
        return out

    def chunked_rules(self, svc: Service, matches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """An authorization route's matches, spread over rules of at most MAX_MATCHES (the
        route's authorizations apply to all of its rules alike)."""
        n = self.MAX_MATCHES
        return self.within_limits(svc, [{"matches": matches[i:i + n]} for i in range(0, len(matches), n)])

    def relation(self, a: list[Match], b: list[Match]) -> str:
        """How the requests matched by `a` relate to `b`: disjoint, equal, inside (a within b
        and a ranks above b wherever they overlap), or overlap (anything else)."""
        pairs = [(x, y, k8s.and_match(x, y)) for x in a for y in b]
        if all(c is None for _, _, c in pairs):
            return "disjoint"
        if any(c is k8s.UNKNOWN for _, _, c in pairs):
            return "overlap"

        def same(u: Any, v: Any) -> bool:
            return u.model_dump(exclude={"span"}) == v.model_dump(exclude={"span"})

        inside = all(any(c is not None and same(c, x) for c in (k8s.and_match(x, y) for y in b)) for x in a)
        b_inside = all(any(c is not None and same(c, y) for c in (k8s.and_match(x, y) for x in a)) for y in b)
        if inside and b_inside:
            return "equal"
        if inside:
            ranked = all(c is None or (rank(x) is not None and rank(y) is not None and rank(x) > rank(y))  # type: ignore[operator]
                         for x, y, c in pairs)
            return "inside" if ranked else "overlap"
        # b inside a: handled from b's side (a's sources are attached to b's route)
        return "contains" if b_inside else "overlap"

    def authz_policy(self, svc: Service, name: str, target: dict[str, str], ref: dict[str, str]) -> dict[str, Any]:
        return k8s.cr(V1ALPHA1, "AuthorizationPolicy", name, svc.namespace,
                      {"targetRef": target, "requiredAuthenticationRefs": [ref]})

