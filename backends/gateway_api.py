"""Gateway API backend, GAMMA mesh profile (Gateway API v1.6: gateway.networking.k8s.io/v1
HTTPRoute, GRPCRoute, TCPRoute and Gateway; `retry` only from the experimental channel).

Each HTTP service with routing or resilience settings gets an HTTPRoute whose parentRef is the
Service itself (GAMMA: the route applies to traffic addressed to that Service); gRPC-only
services get a GRPCRoute, TCP-only services with a default split a TCPRoute. Versions are
addressed through per-version Services (`reviews-v2`, selecting `app` + the version's labels),
since Gateway API backendRefs name Services, not subsets. Ingress exposure becomes a Gateway
(class from the `gateway_class` option) plus an HTTPRoute bound to it.

Lowering decisions (docs/language.md semantics -> Gateway API):
- First match wins in meshc; the Gateway API instead ranks matches by specificity (exact path,
  longest prefix, method, number of header matches, number of query matches; ties go to the
  earlier rule). Order is preserved exactly by adding to an earlier rule the conjunction of
  its match with every later, more specific match it overlaps (so the earlier rule wins that
  overlap by specificity, or by rule order on a tie). Where the conjunction cannot be written
  or ranked (regex paths, conflicting conditions) the rule is E301.
- `path under "/p"` is `PathPrefix /p` (both match whole segments). `path prefix` (bytes)
  has no Gateway API spelling (PathPrefix `/p` would not match `/px`): E301, except `prefix "/"`
  which matches everything. `path regex` -> RegularExpression, anchored `^(?:...)$` so that
  full-match and search implementations agree (Support: Implementation-specific).
- Header/query `prefix` and `present` -> anchored RegularExpression; `absent` cannot be written.
- Several methods -> one match per method (Gateway API matches hold one method).
- Weights: relative integers, exact (hundredths divided by their gcd).
- Timeouts: `timeouts.request` = the effective timeout; no timeout is written as `0s`, which
  the spec defines as "disabled" (an omitted field is implementation-specific). `per_try` ->
  `timeouts.backendRequest`.
- Retries need the experimental channel (option `experimental`): `retry N` -> `attempts: N`,
  `backoff` -> `backoff`; conditions become status `codes` (5xx = 500-599, gateway-error =
  502-504, and listed codes). Connection-level conditions (connect-failure, reset,
  refused-stream) and retriable-4xx have no Gateway API spelling: E301.
- Mirroring -> RequestMirror with an exact `fraction` of 10000.
- Ingress: one Gateway (listeners per port and host) and an HTTPRoute per exposed service
  with the service's timeout; byte-prefix ingress paths are E301 like route matches.
- External services are ExternalName Services; routes cannot attach to them, so route rules
  and resilience settings on an external are E301. TCP services: TCPRoute splits only.
- No identity authorization, faults, load balancing, circuit breaking, outlier detection,
  health checks, rate limits or direct responses in the Gateway API: E301. mTLS and the
  authorization posture are the mesh implementation's (warning W320 says so for
  deny_by_default, which these objects cannot enforce).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from meshc.backends import k8s
from meshc.backends.base import FEATURES, MESH_SETTING_FEATURES, Backend, Bundle, Option, boolean, dns_name

from meshc.diagnostics import Diagnostic
from meshc.model import (
    HTTP_PROTOCOLS,
    Destination,
    HeaderOps,
    Match,
    Mesh,
    PathMatch,
    Port,
    Retry,
    RouteRule,
    Service,
    StringMatch,
    Timeout,
)

GW = "gateway.networking.k8s.io/v1"

# Features with no Gateway API (GAMMA) spelling.
_NOT_SUPPORTED = {
    "max_request_body",  # no field for it in the published resources
    "mtls.disabled", "route.match.path.prefix", "route.match.header.absent", "route.respond",
    "retry.budget", "load_balance.round_robin", "load_balance.least_request", "load_balance.random",
    "load_balance.consistent_hash", "circuit_breaker", "outlier", "health_check", "rate_limit",
    "fault.delay", "fault.abort", "authz.allow", "authz.deny", "authz.identity", "authz.unauthenticated",
    "authz.methods", "authz.paths", "authz.not_paths", "authz.ports", "authz.headers",
    "external.tls_originate", "slo", "protocol.tls",
}
_RETRY_FEATURES = {"retry", "retry.per_try", "retry.backoff", "retry.status_codes"}
CODES = {"5xx": list(range(500, 600)), "gateway-error": [502, 503, 504]}


def anchored(regex: str) -> str:
    return f"^(?:{regex})$"


def string_match(s: StringMatch) -> dict[str, str]:
    """A header/query condition as Gateway API {type, value} (name added by the caller)."""
    if s.kind == "exact":
        return {"type": "Exact", "value": s.value}
    if s.kind == "prefix":
        return {"type": "RegularExpression", "value": "^" + re.escape(s.value) + ".*$"}
    if s.kind == "present":
        return {"type": "RegularExpression", "value": "^.*$"}
    return {"type": "RegularExpression", "value": anchored(s.value)}


def path_match(p: PathMatch) -> dict[str, str]:
    if p.kind == "exact":
        return {"type": "Exact", "value": p.value}
    if p.kind == "regex":
        return {"type": "RegularExpression", "value": anchored(p.value)}
    return {"type": "PathPrefix", "value": p.value.rstrip("/") or "/"}


def normalise_path(p: PathMatch | None) -> PathMatch | None:
    """`prefix "/"` and `under "/"` match every path: the same as no path condition."""
    if p is not None and p.kind in ("prefix", "under") and p.value == "/":
        return None
    return p


def relative_weights(weights: list[int]) -> list[int]:
    if all(w % 100 == 0 for w in weights):
        return [w // 100 for w in weights]
    g = math.gcd(*weights)
    return [w // g for w in weights]


# --------------------------------------------------------------------------- precedence

def rank(m: Match) -> tuple[int, int, int, int, int] | None:
    """Gateway API precedence of a match (bigger wins); None where the spec leaves it open."""
    p = normalise_path(m.path)
    if p is None:
        path = (0, 1)  # the implicit PathPrefix "/"
    elif p.kind == "exact":
        path = (2, len(p.value))
    elif p.kind == "under":
        path = (1, len(p.value.rstrip("/")))
    else:
        return None
    return (*path, int(bool(m.methods)), len(m.headers), len(m.query))


def rank_ge(c: Match, b: Match) -> bool | None:
    rc, rb = rank(c), rank(b)
    if rc is None or rb is None:
        same_regex = (c.path is not None and b.path is not None and c.path.kind == b.path.kind == "regex"
                      and c.path.value == b.path.value)
        if not same_regex:
            return None
        return (bool(c.methods), len(c.headers), len(c.query)) >= (bool(b.methods), len(b.headers), len(b.query))
    return rc >= rb


def _same(a: Match, b: Match) -> bool:
    return a.model_dump(exclude={"span"}) == b.model_dump(exclude={"span"})


def preserve_order(rules: list[tuple[Match, ...]], gaps: k8s.Gaps, spans: list[Any],
                   limit: int = 256) -> list[list[Match]]:
    """Matches per rule such that Gateway API precedence picks, for every request, the first
    meshc rule that matches it. An empty tuple (otherwise) stands for the match-all Match().

    For rules h < j, wherever a match `a` of h overlaps a match `b` of j and `a` ranks below
    `b`, h also gets `a and b` (a subset of h's own requests) ranking at least as high as `b`,
    so h wins there (by specificity, or by rule order on a tie). A match added to h may in turn
    outrank an earlier rule g on their overlap, so this runs to a fixpoint (bounded by `limit`
    additions; beyond that the table is reported)."""
    original = [list(ms) if ms else [Match()] for ms in rules]
    out = [list(ms) for ms in original]
    added = 0
    changed = True
    while changed:
        changed = False
        for h, ms_h in enumerate(original):
            for a in ms_h:
                for j in range(h + 1, len(out)):
                    for b in list(out[j]):
                        c = k8s.and_match(a, b)
                        if c is None or rank_ge(a, b):
                            continue  # disjoint, or `a` already wins wherever both match
                        ge = None if c is k8s.UNKNOWN else rank_ge(c, b)
                        if ge is None or ge is False:
                            gaps.add("rule order (a later, overlapping rule could take precedence)", spans[h],
                                     "Gateway API ranks matches by specificity; make the rules disjoint")
                            continue
                        if any(_same(c, x) for x in out[h]):
                            continue
                        out[h].append(c)
                        changed = True
                        added += 1
                        if added > limit:
                            gaps.add("rule order (too many overlapping conditions to keep first-match order)",
                                     spans[h], "simplify the route table")
                            return out
    return out


# --------------------------------------------------------------------------- backend


class GatewayApiBackend(Backend):
    name: ClassVar[str] = "gateway-api"
    description: ClassVar[str] = "Gateway API v1.6 GAMMA mesh routes (gateway.networking.k8s.io/v1) + core objects"
    CAPABILITIES: ClassVar[frozenset[str]] = frozenset(FEATURES) - _NOT_SUPPORTED - _RETRY_FEATURES - \
        MESH_SETTING_FEATURES
    # the folders of meshc/schemas whose published CRD schemas this target's objects are checked against
    SCHEMAS: ClassVar[tuple[str, ...]] = ('gateway-api',)
    OPTIONS: ClassVar[Mapping[str, Option]] = {
        "experimental": Option("use experimental-channel fields (HTTPRoute retry)", boolean),
        "gateway_class": Option("gatewayClassName of the ingress Gateway (default istio)", dns_name),
        "cluster_domain": Option("Kubernetes cluster DNS domain (default cluster.local)", dns_name),
    }
    # HTTPRoute dialect; subclasses (Linkerd) narrow it.
    ROUTE_API: ClassVar[str] = GW
    RULE_FILTERS: ClassVar[frozenset[str]] = frozenset(
        {"RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "RequestRedirect", "URLRewrite"})
    MAX_RULES: ClassVar[int] = 16  # rules maxItems
    MAX_MATCHES: ClassVar[int] = 64  # rules[].matches maxItems
    MAX_TOTAL_MATCHES: ClassVar[int] = 128  # CEL rule on spec.rules

    def __init__(self, options: Any = None):
        super().__init__(options)
        if self.retries_supported():
            self.CAPABILITIES = type(self).CAPABILITIES | _RETRY_FEATURES  # type: ignore[misc]

    def retries_supported(self) -> bool:
        return "experimental" in self.options and self.flag("experimental")

    # ----------------------------------------------------------------- entry points

    def unsupported(self, mesh: Mesh) -> list[Diagnostic]:
        gaps = k8s.Gaps(self.name)
        self._objects(mesh, gaps)
        return super().unsupported(mesh) + gaps.items

    def lower(self, mesh: Mesh) -> Bundle:
        bundle = Bundle()
        k8s.add_streams(bundle, self._objects(mesh, k8s.Gaps(self.name)))
        bundle.diagnostics += self.posture_warnings(mesh)
        return bundle

    def posture_warnings(self, mesh: Mesh) -> list[Diagnostic]:
        out = [Diagnostic(
            "W320", f"mtls {port.mtls} on '{svc.name}' is not expressed by {self.name} objects", port.span,
            label="delegated to the mesh implementation",
            help="configure the implementation's mTLS mode for this workload (e.g. an Istio PeerAuthentication), "
                 "or compile for istio or linkerd")
            for svc in mesh.services for port in svc.ports if port.mtls != "strict"]
        if mesh.authz != "deny_by_default":
            return out
        return out + [Diagnostic(
            "W320", f"authz deny_by_default is not enforced by {self.name} objects", mesh.span,
            label="delegated to the mesh implementation",
            help="configure the implementation's default-deny policy (e.g. an Istio allow-nothing "
                 "AuthorizationPolicy), or compile for istio or linkerd")]

    def _objects(self, mesh: Mesh, gaps: k8s.Gaps) -> list[dict[str, Any]]:
        self.mesh, self.gaps = mesh, gaps
        self.domain = self.options.get("cluster_domain", "cluster.local")
        objs = self.core(mesh)
        for svc in mesh.services:
            if svc.external is None:
                objs += self.lower_service_routes(svc)
            else:
                self.check_external(svc)
        objs += self.lower_ingress(mesh)
        k8s.check_unique(objs, gaps, mesh.span)
        return objs

    def check_external(self, svc: Service) -> None:
        """External services are ExternalName Services here, which routes cannot attach to."""
        res = svc.resilience
        for what, node in (("route rules", svc.routes[0] if svc.routes else None), ("timeouts", res.timeout),
                           ("retries", res.retry), ("outlier detection", res.outlier),
                           ("rate limits", res.rate_limit), ("circuit breakers", res.circuit_breaker),
                           ("load balancing", res.load_balance), ("faults", svc.faults[0] if svc.faults else None)):
            if node is not None:
                self.gaps.add(f"{what} on an external service", node.span,
                              f"{self.name} routes attach to in-cluster Services only")

    def core(self, mesh: Mesh) -> list[dict[str, Any]]:
        self.check_version_service_names(mesh)
        return k8s.core_objects(mesh, versions=True)

    def check_version_service_names(self, mesh: Mesh) -> None:
        names = {s.name for s in mesh.services}
        for svc in mesh.services:
            for v in svc.versions:
                vname = k8s.version_service_name(svc, v.name)
                if len(vname) > k8s.SERVICE_NAME_MAX:
                    self.gaps.add(f"the per-version Service name '{vname}' (longer than 63 characters)", v.span,
                                  "shorten the service or version name")
                elif vname in names:
                    self.gaps.add(f"the per-version Service '{vname}', which collides with a declared service",
                                  v.span, "rename the version or the service")

    # ----------------------------------------------------------------- references

    def backend_ref(self, d: Destination, from_ns: str, port: int | None) -> dict[str, Any]:
        target = self.mesh.service(d.service)
        name = d.service if d.version is None or target is None else k8s.version_service_name(target, d.version)
        ref: dict[str, Any] = {"group": "", "kind": "Service", "name": name}
        if target is not None:
            if target.namespace != from_ns:
                ref["namespace"] = target.namespace
                self.gaps.add("a route destination in another namespace", d.span,
                              "cross-namespace backendRefs need a ReferenceGrant, which is not schema-checked here")
            numbers = [p.number for p in target.ports]
            ref["port"] = port if port in numbers else (numbers[0] if numbers else 80)
        return ref

    def parent_ref(self, svc: Service, port: Port | None) -> dict[str, Any]:
        ref: dict[str, Any] = {"group": "", "kind": "Service", "name": svc.name}
        if port is not None:
            ref["port"] = port.number
        return ref

    # ----------------------------------------------------------------- routes

    def needs_route(self, svc: Service) -> bool:
        return True  # timeouts are always written explicitly

    def lower_service_routes(self, svc: Service) -> list[dict[str, Any]]:
        http_ports = [p for p in svc.ports if p.protocol in HTTP_PROTOCOLS]
        if not http_ports:
            return self.lower_tcp_route(svc)
        if not self.needs_route(svc):
            return []
        grpc_only = all(p.protocol == "grpc" for p in http_ports)
        out = []
        # one route per port when a service has several (backendRef ports must be explicit)
        per_port: list[Port | None] = list(http_ports) if len(http_ports) > 1 else [None]
        for port in per_port:
            name = svc.name if port is None else f"{svc.name}-{port.number}"
            number = (port or http_ports[0]).number
            if grpc_only:
                spec = self.grpc_route_spec(svc, port, number)
                out.append(k8s.cr(GW, "GRPCRoute", name, svc.namespace, spec))
            else:
                spec = self.http_route_spec(svc, port, number)
                out.append(k8s.cr(self.ROUTE_API, "HTTPRoute", name, svc.namespace, spec))
        return out

    def default_rules(self, svc: Service) -> tuple[RouteRule, ...]:
        """The rules to write. A rule using a condition or action this target cannot write is
        left out whole (it was reported as E301; with --unsupported=warn, dropping the rule is
        safer than dropping one of its conditions, which would widen it)."""
        kept = tuple(r for r in svc.routes if self.expressible(r))
        return kept or (RouteRule(destinations=(Destination(service=svc.name),), span=svc.span),)

    def expressible(self, rule: RouteRule) -> bool:
        if rule.respond is not None and "route.respond" not in self.CAPABILITIES:
            return False
        for m in rule.matches:
            p = normalise_path(m.path)
            if p is not None and p.kind == "prefix" and "route.match.path.prefix" not in self.CAPABILITIES:
                return False
            if p is not None and p.kind == "under" and p.value.endswith("/"):
                return False
            if any(h.kind == "absent" for h in m.headers) and "route.match.header.absent" not in self.CAPABILITIES:
                return False
        return True

    def checked_matches(self, rule: RouteRule) -> tuple[Match, ...]:
        out: list[Match] = []
        for m in rule.matches:
            p = m.path
            if p is not None and p.kind == "under" and p.value.endswith("/") and p.value != "/":
                self.gaps.add(f'`under "{p.value}"` with a trailing slash', p.span,
                              f'Gateway API PathPrefix ignores trailing slashes; write `under "{p.value.rstrip("/")}"`')
            out.append(m.model_copy(update={"path": normalise_path(p)}))
        return tuple(out)

    def http_route_spec(self, svc: Service, port: Port | None, number: int) -> dict[str, Any]:
        for r in svc.routes:
            self.checked_matches(r)  # reports trailing-slash `under` values
        rules = self.default_rules(svc)
        matches = preserve_order([self.checked_matches(r) for r in rules], self.gaps, [r.span for r in rules])
        out_rules = []
        for rule, ms in zip(rules, matches, strict=True):
            out_rules += self.http_rules(svc, rule, ms, number)
        return {"parentRefs": [self.parent_ref(svc, port)], "rules": self.within_limits(svc, out_rules)}

    def within_limits(self, svc: Service, out_rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The CRD's size limits; beyond them E301 (with --unsupported=warn the excess is cut,
        which loses the rules or the order-keeping matches that did not fit)."""
        span = svc.routes[-1].span if svc.routes else svc.span
        if len(out_rules) > self.MAX_RULES:
            self.gaps.add(f"more than {self.MAX_RULES} route rules (after splitting)", span)
            out_rules = out_rules[:self.MAX_RULES]
        for r in out_rules:
            if len(r.get("matches", [])) > self.MAX_MATCHES:
                self.gaps.add(f"a rule needing more than {self.MAX_MATCHES} matches (conditions OR-ed, methods "
                              "and the matches that keep first-match order)", span, "simplify the route table")
                r["matches"] = r["matches"][:self.MAX_MATCHES]
        if sum(len(r.get("matches", [])) for r in out_rules) > self.MAX_TOTAL_MATCHES:
            self.gaps.add(f"more than {self.MAX_TOTAL_MATCHES} matches in one route", span, "simplify the route table")
            budget = self.MAX_TOTAL_MATCHES
            for r in out_rules:
                if "matches" in r:
                    r["matches"] = r["matches"][:max(budget, 1)]
                    budget -= len(r["matches"])
        return out_rules

    def gateway_matches(self, ms: Iterable[Match]) -> list[dict[str, Any]]:
        out = []
        for m in ms:
            base: dict[str, Any] = {}
            if m.path is not None:
                base["path"] = path_match(m.path)
            if m.headers:
                base["headers"] = [{"name": h.name, **string_match(h)} for h in m.headers]
            if m.query:
                base["queryParams"] = [{"name": q.name, **string_match(q)} for q in m.query]
            if m.methods:
                out += [{**base, "method": meth} for meth in m.methods]
            else:
                out.append(base)
        return out

    def http_rules(self, svc: Service, rule: RouteRule, ms: list[Match], port: int) -> list[dict[str, Any]]:
        """One meshc rule -> Gateway API rules (several when a prefix rewrite needs one
        PathPrefix match per rule, as the URLRewrite CEL rule demands)."""
        matches = self.gateway_matches(ms)
        body = self.rule_body(svc, rule, port)
        rw = rule.rewrite
        if rw is None or rw.prefix is None or "URLRewrite" not in self.RULE_FILTERS:
            return [{**body, "matches": matches}] if matches != [{}] else [body]
        out = []
        for m in matches:
            kind = m.get("path", {}).get("type")
            path = ({"type": "ReplacePrefixMatch", "replacePrefixMatch": rw.prefix} if kind == "PathPrefix"
                    else {"type": "ReplaceFullPath", "replaceFullPath": rw.prefix})
            if kind not in ("PathPrefix", "Exact"):
                self.gaps.add("a prefix rewrite on a rule without a path condition", rw.span,
                              "Gateway API replaces a matched PathPrefix; add `when path under ...`")
            filters = [f for f in body.get("filters", []) if f["type"] != "URLRewrite"]
            url = {"path": path}
            if rw.host is not None:
                url["hostname"] = rw.host  # type: ignore[assignment]
            filters.append({"type": "URLRewrite", "urlRewrite": url})
            out.append({**body, "filters": filters, "matches": [m]})
        return out

    def header_filter(self, ops: HeaderOps) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if ops.set:
            out["set"] = [{"name": n, "value": v} for n, v in ops.set]
        if ops.add:
            out["add"] = [{"name": n, "value": v} for n, v in ops.add]
        if ops.remove:
            out["remove"] = list(ops.remove)
        return out

    def filters(self, svc: Service, rule: RouteRule, port: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if rule.request_headers is not None:
            out.append({"type": "RequestHeaderModifier", "requestHeaderModifier": self.header_filter(rule.request_headers)})
        if rule.response_headers is not None and "ResponseHeaderModifier" in self.RULE_FILTERS:
            out.append({"type": "ResponseHeaderModifier",
                        "responseHeaderModifier": self.header_filter(rule.response_headers)})
        rw = rule.rewrite
        if rw is not None and "URLRewrite" in self.RULE_FILTERS and (rw.path is not None or rw.host is not None):
            url: dict[str, Any] = {}
            if rw.path is not None:
                url["path"] = {"type": "ReplaceFullPath", "replaceFullPath": rw.path}
            if rw.host is not None:
                url["hostname"] = rw.host
            out.append({"type": "URLRewrite", "urlRewrite": url})
        if rule.mirror is not None and "RequestMirror" in self.RULE_FILTERS:
            mirror: dict[str, Any] = {"backendRef": self.backend_ref(rule.mirror.destination, svc.namespace, port)}
            mirror["backendRef"].pop("group", None)
            mirror["backendRef"].pop("kind", None)
            if rule.mirror.percent != 10_000:
                mirror["fraction"] = {"numerator": rule.mirror.percent, "denominator": 10_000}
            out.append({"type": "RequestMirror", "requestMirror": mirror})
        return out

    def redirect(self, rule: RouteRule) -> dict[str, Any]:
        rd = rule.redirect
        assert rd is not None
        red: dict[str, Any] = {"statusCode": rd.code}
        if rd.code not in (301, 302, 303, 307, 308):
            self.gaps.add(f"redirect code {rd.code}", rd.span, "Gateway API redirects use 301, 302, 303, 307 or 308")
        if rd.path is not None:
            red["path"] = {"type": "ReplaceFullPath", "replaceFullPath": rd.path}
        if rd.host is not None:
            red["hostname"] = rd.host
        if rd.scheme is not None:
            red["scheme"] = rd.scheme
        if rd.port is not None:
            red["port"] = rd.port
        return {"type": "RequestRedirect", "requestRedirect": red}

    def effective_timeout(self, svc: Service, rule: RouteRule) -> Timeout | None:
        for t in (rule.timeout, svc.resilience.timeout, self.mesh.timeout):
            if t is not None:
                return t
        return None

    def timeouts(self, svc: Service, rule: RouteRule) -> dict[str, str]:
        t = self.effective_timeout(svc, rule)
        out = {"request": k8s.go_duration(t.ms) if t is not None and t.ms is not None else "0s"}
        retry = rule.retry or svc.resilience.retry
        if retry is not None and retry.per_try_ms is not None:
            out["backendRequest"] = k8s.go_duration(retry.per_try_ms)
        return out

    def retry(self, r: Retry | None) -> dict[str, Any] | None:
        if r is None or r.attempts == 0 or not self.retries_supported():
            return None
        codes: set[int] = set(r.status_codes)
        for cond in r.on:
            if cond in CODES:
                codes.update(CODES[cond])
            else:
                self.gaps.add(f"retries on {cond}", r.span,
                              "Gateway API retries on status codes only; use `on 5xx`, `gateway-error` or codes")
        out: dict[str, Any] = {"attempts": r.attempts}
        if codes:
            out["codes"] = sorted(codes)
        if r.backoff_base_ms is not None:
            out["backoff"] = k8s.go_duration(r.backoff_base_ms)
            if r.backoff_max_ms is not None:
                self.gaps.add("a retry backoff maximum", r.span, "Gateway API sets the minimum backoff only")
        return out

    def rule_body(self, svc: Service, rule: RouteRule, port: int) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if rule.redirect is not None:
            body["filters"] = [self.redirect(rule)]
        else:
            dests = list(rule.destinations)
            weights = relative_weights([d.weight for d in dests])
            refs = []
            for d, w in zip(dests, weights, strict=True):
                ref = self.backend_ref(d, svc.namespace, port)
                if len(dests) > 1:
                    ref["weight"] = w
                refs.append(ref)
            body["backendRefs"] = refs
            filters = self.filters(svc, rule, port)
            if filters:
                body["filters"] = filters
        body["timeouts"] = self.timeouts(svc, rule)
        retry = self.retry(rule.retry or svc.resilience.retry)
        if retry is not None:
            body["retry"] = retry
        return body

    # ----------------------------------------------------------------- gRPC and TCP

    def grpc_matches(self, ms: Iterable[Match]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for m in ms:
            base: dict[str, Any] = {}
            p = m.path
            if p is not None:
                parts = p.value.strip("/").split("/")
                if p.kind == "exact" and len(parts) == 2:
                    base["method"] = {"type": "Exact", "service": parts[0], "method": parts[1]}
                elif p.kind == "under" and len(parts) == 1:
                    base["method"] = {"type": "Exact", "service": parts[0]}
                else:
                    self.gaps.add("this path condition on a gRPC service", p.span,
                                  'GRPCRoute matches `path exact "/pkg.Service/Method"` or `path under "/pkg.Service"`')
            if m.headers:
                base["headers"] = [{"name": h.name, **string_match(h)} for h in m.headers]
            if m.query or m.methods:
                self.gaps.add("query or method conditions on a gRPC service", m.span)
            if base not in out:
                out.append(base)
        return out

    def grpc_resilience(self, svc: Service) -> dict[str, str]:
        """Timeouts and retries of a gRPC service: GRPCRoute has no fields for them (E301);
        a subclass may return route annotations instead."""
        for rule in self.default_rules(svc):
            for what, val in (("timeouts", rule.timeout or svc.resilience.timeout),
                              ("retries", rule.retry or svc.resilience.retry)):
                if val is not None:
                    self.gaps.add(f"{what} on a gRPC service", val.span, "GRPCRoute has no timeouts or retries")
        return {}

    def grpc_route_spec(self, svc: Service, port: Port | None, number: int) -> dict[str, Any]:
        rules = []
        self.grpc_resilience(svc)
        table = self.default_rules(svc)
        # GRPCRoute ranks by service, then method characters, then header count: the same
        # order-keeping analysis as HTTPRoute (exact /S/M > under /S > none)
        ordered = preserve_order([self.checked_matches(r) for r in table], self.gaps, [r.span for r in table])
        for rule, ms in zip(table, ordered, strict=True):
            body = self.rule_body(svc, rule, number)
            body.pop("timeouts", None)
            body.pop("retry", None)
            body["filters"] = [f for f in body.get("filters", [])
                               if f["type"] in ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror")]
            if not body["filters"]:
                del body["filters"]
            if rule.redirect is not None or (rule.rewrite is not None):
                self.gaps.add("redirects or rewrites on a gRPC service", rule.span)
            matches = self.grpc_matches(ms)
            if matches and matches != [{}]:
                body["matches"] = matches
            rules.append(body)
        return {"parentRefs": [self.parent_ref(svc, port)], "rules": self.within_limits(svc, rules)}

    def lower_tcp_route(self, svc: Service) -> list[dict[str, Any]]:
        k8s.check_tcp_service(svc, self.gaps)
        if not svc.routes:
            return []
        rules = []
        for rule in svc.routes:
            if not rule.is_default:
                continue
            dests = list(rule.destinations)
            weights = relative_weights([d.weight for d in dests])
            port = svc.ports[0].number if svc.ports else None
            refs = []
            for d, w in zip(dests, weights, strict=True):
                ref = self.backend_ref(d, svc.namespace, port)
                if len(dests) > 1:
                    ref["weight"] = w
                refs.append(ref)
            rules.append({"backendRefs": refs})
        return [k8s.cr(GW, "TCPRoute", svc.name, svc.namespace,
                       {"parentRefs": [self.parent_ref(svc, None)], "rules": rules})]

    # ----------------------------------------------------------------- ingress

    def lower_ingress(self, mesh: Mesh) -> list[dict[str, Any]]:
        exposed = k8s.exposed_http_services(mesh, self.gaps)
        if not exposed:
            return []
        ns = mesh.namespace
        gw_name = f"{mesh.name}-gateway"
        listeners: dict[tuple[int, str], dict[str, Any]] = {}
        routes = []
        for svc in exposed:
            ex = svc.expose
            assert ex is not None
            for host in ex.hosts:
                key = (ex.port, host)
                if key not in listeners:
                    lst: dict[str, Any] = {"name": f"http-{ex.port}-{len(listeners)}", "port": ex.port,
                                           "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}}
                    if host != "*":
                        lst["hostname"] = host
                    listeners[key] = lst
            http_port = next((p.number for p in svc.ports if p.protocol in HTTP_PROTOCOLS),
                             svc.ports[0].number if svc.ports else 80)
            ms = []
            for p in ex.paths:
                if p.kind == "prefix" and p.value != "/":
                    self.gaps.add("a byte-prefix ingress path", p.span, "Gateway API PathPrefix matches whole segments; "
                                  "use `under`")
                np = normalise_path(p)
                if np is not None:
                    ms.append({"path": path_match(np)})
            rule: dict[str, Any] = {"backendRefs": [{"group": "", "kind": "Service", "name": svc.name,
                                                     "port": http_port}]}
            if ms:
                rule["matches"] = ms
            # the gateway hop gets the service's own timeout, never the implementation's default
            rule["timeouts"] = self.timeouts(svc, RouteRule(span=svc.span))
            if not rule["timeouts"]:
                del rule["timeouts"]
            spec: dict[str, Any] = {"parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                                    "name": gw_name, "namespace": ns}],
                                    "rules": [rule]}
            hostnames = sorted(h for h in ex.hosts if h != "*")
            if hostnames:
                spec["hostnames"] = hostnames
            routes.append(k8s.cr(GW, "HTTPRoute", f"{svc.name}-ingress", svc.namespace, spec))
        gw_spec = {"gatewayClassName": self.options.get("gateway_class", "istio"),
                   "listeners": [listeners[k] for k in sorted(listeners)]}
        return [k8s.cr(GW, "Gateway", gw_name, ns, gw_spec), *routes]
