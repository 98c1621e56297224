"""Consul service mesh backend: config entries as HCL (`consul config write`) and consul-k8s CRDs.

Targets Consul 1.17+ config entries and consul-k8s v2.x CRDs (consul.hashicorp.com/v1alpha1):
proxy-defaults, mesh, service-defaults, service-resolver, service-splitter, service-router and
service-intentions. Every entry is built once as Consul API data (CamelCase keys, as `consul
config write` reads them) and rendered twice: to HCL through a jinja2 template with an HCL
string-escaping filter, and to a CRD whose spec is the same data with camelCase keys.

Lowering decisions (see docs/language.md for the meshc meaning):
- Versions are resolver subsets selected by `Service.Meta.<label>`; with consul-k8s put the
  labels on the pods as `consul.hashicorp.com/service-meta-<label>` annotations.
- Every HTTP service gets a service-router whose every route (a catch-all last) carries an
  explicit request timeout, retries included. Consul treats a zero timeout as Envoy's hidden 15 s
  default, so "no timeout" is written as `NO_TIMEOUT` (365 days), never left to the default.
- A weighted split of one route rule goes to a virtual service `<svc>-route-<i>` whose
  service-splitter carries the weights (Consul weights are percentages with two decimals, so
  meshc hundredths map exactly).
- Circuit breakers and outlier detection describe the callee, but Consul configures them on
  the caller's upstream: they become `UpstreamConfig.Overrides` on every other service.
- Intentions: Consul applies only the most specific source's intention, and an L7 intention's
  permissions are first-match. So for each source the permissions are: every deny that applies
  to it (its own and the `*` ones), then every allow, then an explicit catch-all with the mesh
  default; `deny beats allow` and the default hold whatever Consul's fallthrough would do.
  The mesh default is also a `* -> *` intention.
- Ingress: an ingress-gateway entry named after the mesh's ingress identity (deploy the gateway
  with consul-k8s `ingressGateways`). Exposed paths go through a virtual service
  `<svc>-ingress` whose router matches only them; other paths reach no instance (Consul answers
  503, where meshc says 404). A `*` host needs a listener of its own.
- External services are Consul destinations (service-defaults `Destination`, transparent proxy)
  linked to a terminating gateway, which originates TLS when asked (`CAFile`, `SNI`).
- Rate limits (service-defaults `RateLimits`) are Consul Enterprise: accepted only with
  `--option enterprise`. Consul has no fault injection config entry, so faults are E301.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, ClassVar

import jinja2
from meshc.backends.base import Backend, Bundle, Option, boolean, dns_name, file_path

from meshc.diagnostics import Diagnostic
from meshc.model import (
    FULL,
    HTTP_PROTOCOLS,
    AuthzRule,
    Match,
    Mesh,
    PathMatch,
    Retry,
    RouteRule,
    Service,
    Source,
    Span,
    StringMatch,
)

API_VERSION = "consul.hashicorp.com/v1alpha1"
NO_TIMEOUT_MS = 365 * 24 * 3600 * 1000  # Consul reads 0 as "Envoy default (15 s)"
E330 = "E330"

# config entry kind -> (CRD kind, order for `consul config write`: defaults before routers)
KINDS: dict[str, tuple[str, int]] = {
    "proxy-defaults": ("ProxyDefaults", 0),
    "mesh": ("Mesh", 1),
    "service-defaults": ("ServiceDefaults", 2),
    "service-resolver": ("ServiceResolver", 3),
    "service-splitter": ("ServiceSplitter", 4),
    "service-router": ("ServiceRouter", 5),
    "service-intentions": ("ServiceIntentions", 6),
    "ingress-gateway": ("IngressGateway", 7),
    "terminating-gateway": ("TerminatingGateway", 8),
}

PROTOCOLS = {"http": "http", "http2": "http2", "grpc": "grpc", "tcp": "tcp", "tls": "tcp"}
LB_POLICIES = {"round_robin": "round_robin", "least_request": "least_request", "random": "random",
               "consistent_hash": "ring_hash"}
HASH_FIELDS = {"header": "header", "cookie": "cookie", "query": "query_parameter"}
RETRY_ON = {"5xx": "5xx", "gateway-error": "gateway-error", "connect-failure": "connect-failure",
            "reset": "reset", "retriable-4xx": "retriable-4xx", "refused-stream": "refused-stream"}
HEADER_KINDS = {"exact": "Exact", "prefix": "Prefix", "regex": "Regex"}
PATH_KINDS = {"exact": "PathExact", "prefix": "PathPrefix", "regex": "PathRegex"}


class FreeMap(dict):  # type: ignore[type-arg]
    """A map whose keys are data (header names, subset names), not Consul field names:
    quoted in HCL and never camelCased in CRDs."""


@dataclass
class Entry:
    kind: str
    name: str
    namespace: str
    body: dict[str, Any]  # Consul API fields (CamelCase), without Kind and Name

    @property
    def crd_name(self) -> str:
        return "meshc-default" if self.name == "*" else self.name


@dataclass
class _Ctx:
    mesh: Mesh
    diags: list[Diagnostic] = field(default_factory=list)

    def error(self, message: str, span: Span, help: str = "") -> None:
        d = Diagnostic(E330, message, span, label="not expressible on consul", help=help)
        if d not in self.diags:  # a callee's setting is seen once per caller
            self.diags.append(d)


# --------------------------------------------------------------------------- small helpers


def duration(ms: int) -> str:
    """A Go duration string, in the largest exact unit."""
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def weight(p: int) -> int | float:
    """meshc hundredths of a percent -> Consul's percentage with two decimals (exact)."""
    return p // 100 if p % 100 == 0 else round(p / 100, 2)


def crd_key(key: str) -> str:
    """Consul API field -> consul-k8s CRD field: `HTTP` -> `http`, `MutualTLSMode` ->
    `mutualTLSMode`, `CAFile` -> `caFile` (a leading acronym is lowered up to its last letter)."""
    n = len(key) - len(key.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    if n == len(key):
        return key.lower()
    keep = max(n - 1, 1)
    return key[:keep].lower() + key[keep:]


def to_crd(value: Any) -> Any:
    if isinstance(value, FreeMap):
        return {k: to_crd(v) for k, v in value.items()}
    if isinstance(value, dict):
        return {crd_key(k): to_crd(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_crd(v) for v in value]
    return value


_META_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def subset_filter(labels: tuple[tuple[str, str], ...]) -> str:
    """A go-bexpr filter selecting the instances whose service metadata carries the labels."""
    def sel(k: str) -> str:
        return f"Service.Meta.{k}" if _META_KEY.match(k) else f"Service.Meta[{json.dumps(k)}]"
    return " and ".join(f"{sel(k)} == {json.dumps(v)}" for k, v in labels)


# --------------------------------------------------------------------------- HCL rendering

_HCL_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def hcl_string(value: str) -> str:
    """A double-quoted string that HCL1 (Consul) and HCL2 read back as exactly `value`.

    `${` and `%{` start interpolations in HCL2 (and confuse HCL1's brace tracking), and HCL1
    has no `$${` escape, so `$`/`%` before `{` are written as `\\u0024`/`\\u0025`, which both
    decode. Other control characters become `\\uXXXX`.
    """
    out = []
    for i, ch in enumerate(value):
        nxt = value[i + 1] if i + 1 < len(value) else ""
        if ch in _HCL_ESCAPES:
            out.append(_HCL_ESCAPES[ch])
        elif ch in "$%" and nxt == "{":
            out.append(f"\\u{ord(ch):04x}")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def hcl_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return hcl_string(str(value))


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("meshc.backends", "templates"),
                             autoescape=False, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["hcl_string"] = hcl_string
    env.filters["hcl_scalar"] = hcl_scalar
    env.tests["freemap"] = lambda v: isinstance(v, FreeMap)
    return env


def render_hcl(entry: Entry) -> str:
    return _env().get_template("consul_entry.hcl.j2").render(entry=entry, body=entry.body)


def crd(entry: Entry) -> dict[str, Any]:
    spec = to_crd(entry.body)
    if entry.kind == "service-intentions":
        # the CRD names its destination in the spec (metadata.name cannot be `*`)
        spec["destination"] = {"name": entry.name}
    return {"apiVersion": API_VERSION, "kind": KINDS[entry.kind][0],
            "metadata": {"name": entry.crd_name, "namespace": entry.namespace,
                         "labels": {"app.kubernetes.io/managed-by": "meshc"}},
            "spec": spec}


# --------------------------------------------------------------------------- the backend


class ConsulBackend(Backend):
    name: ClassVar[str] = "consul"
    description: ClassVar[str] = "Consul config entries (HCL for `consul config write`) and consul-k8s CRDs"
    # the folders of meshc/schemas whose published CRD schemas this target's objects are checked against
    SCHEMAS: ClassVar[tuple[str, ...]] = ('consul',)
    OPTIONS: ClassVar[Mapping[str, Option]] = {
        "enterprise": Option("the cluster runs Consul Enterprise: allow Enterprise-only features (rate limits)", boolean),
        "terminating_gateway": Option("name of the terminating gateway that reaches external services "
                               "(default terminating-gateway)", dns_name),
        "system_ca": Option("CA file the terminating gateway trusts for TLS origination "
                     "(default /etc/ssl/certs/ca-certificates.crt)", file_path)}
    CAPABILITIES: ClassVar[frozenset[str]] = frozenset({
        # Consul discovers endpoints itself: static endpoints serve the local targets only.
        "endpoints.static",
        "protocol.http", "protocol.http2", "protocol.grpc", "protocol.tcp", "protocol.tls",
        "mtls.strict", "mtls.permissive", "versions",
        "route.match.path.exact", "route.match.path.prefix", "route.match.path.under",
        "route.match.path.regex", "route.match.header", "route.match.header.regex",
        "route.match.header.absent", "route.match.method", "route.match.query",
        "route.split", "route.split.services", "route.rewrite",
        "route.headers.request", "route.headers.response",
        "timeout", "retry", "retry.status_codes",
        "load_balance.round_robin", "load_balance.least_request", "load_balance.random",
        "load_balance.consistent_hash", "circuit_breaker", "outlier",
        "authz.allow", "authz.deny", "authz.identity", "authz.unauthenticated", "authz.methods",
        "authz.paths", "authz.headers", "authz.ports", "ingress", "external", "external.tls_originate",
        "path_normalization.off", "access_log.off", "metrics.off",
    })
    ENTERPRISE: ClassVar[frozenset[str]] = frozenset({"rate_limit"})

    def __init__(self, options: Any = None):
        super().__init__(options)
        if self.flag("enterprise"):
            self.CAPABILITIES = type(self).CAPABILITIES | self.ENTERPRISE  # type: ignore[misc]

    # ------------------------------------------------------------------ entry points

    def lower(self, mesh: Mesh) -> Bundle:
        ctx = _Ctx(mesh)
        entries = self.entries(mesh, ctx)
        bundle = Bundle(diagnostics=list(ctx.diags))
        for e in entries:
            order = KINDS[e.kind][1]
            stem = f"{order}-{e.kind}-{e.crd_name}"
            bundle.add_text(f"hcl/{stem}.hcl", render_hcl(e))
            bundle.add_yaml(f"crds/{stem}.yaml", crd(e))
        return bundle

    def entries(self, mesh: Mesh, ctx: _Ctx) -> list[Entry]:
        out = [self.lower_proxy_defaults(mesh), self.lower_mesh_entry(mesh)]
        inner = [s for s in mesh.services if s.external is None]
        externals = [as_http(s) for s in mesh.services if s.external is not None and s.ports]
        for svc in inner:
            out.append(self.lower_service_defaults(mesh, svc, inner + externals, ctx))
            out += self.lower_routing(mesh, svc, ctx)
        for ext in externals:
            out += self.lower_external(mesh, ext, ctx)
        out += self.lower_intentions(mesh, inner + externals, ctx)
        out += self.lower_ingress(mesh, inner, ctx)
        links = [link for e in out if e.kind == "terminating-gateway" for link in e.body["Services"]]
        out = [e for e in out if e.kind != "terminating-gateway"]
        if links:
            out.append(Entry("terminating-gateway", self.options.get("terminating_gateway", "terminating-gateway"),
                             mesh.namespace, {"Services": sorted(links, key=lambda x: x["Name"])}))
        unique = {(e.kind, e.name): e for e in out}  # a split shared by a route and the ingress
        return sorted(unique.values(), key=lambda e: (KINDS[e.kind][1], e.name))

    # ------------------------------------------------------------------ mesh-wide

    def lower_proxy_defaults(self, mesh: Mesh) -> Entry:
        body: dict[str, Any] = {"MutualTLSMode": mesh.mtls if mesh.mtls != "disabled" else "strict",
                                "AccessLogs": {"Enabled": mesh.observability.access_log != "off"}}
        if mesh.observability.access_log != "off":
            body["AccessLogs"]["Type"] = "stdout"
        config = FreeMap()
        if mesh.observability.metrics:
            config["envoy_prometheus_bind_addr"] = "0.0.0.0:9102"
        if config:
            body["Config"] = config
        return Entry("proxy-defaults", "global", mesh.namespace, body)

    def lower_mesh_entry(self, mesh: Mesh) -> Entry:
        strict = mesh.path_normalization == "strict"
        body: dict[str, Any] = {
            "AllowEnablingPermissiveMutualTLS": any(
                s.mtls == "permissive" or any(p.mtls == "permissive" for p in s.ports) for s in mesh.services),
            "HTTP": {"Incoming": {"RequestNormalization": {
                "InsecureDisablePathNormalization": not strict,
                "MergeSlashes": strict,
                "PathWithEscapedSlashesAction": "REJECT_REQUEST" if strict else "KEEP_UNCHANGED"}}},
        }
        return Entry("mesh", "mesh", mesh.namespace, body)

    # ------------------------------------------------------------------ per service

    def protocol(self, svc: Service, ctx: _Ctx) -> str:
        protos = sorted({PROTOCOLS[p.protocol] for p in svc.ports})
        if len(protos) > 1:
            ctx.error(f"service '{svc.name}' mixes protocols {', '.join(protos)}; Consul has one protocol "
                      "per service", svc.ports[1].span, help="split it into one service per protocol")
        return protos[0] if protos else "tcp"

    def lower_service_defaults(self, mesh: Mesh, svc: Service, inner: list[Service], ctx: _Ctx) -> Entry:
        proto = self.protocol(svc, ctx)
        body: dict[str, Any] = {"Protocol": proto}
        modes = sorted({p.mtls for p in svc.ports} or {svc.mtls})
        if len(modes) > 1:
            ctx.error(f"service '{svc.name}' has ports with different mTLS modes; Consul sets one mode "
                      "per service", svc.ports[0].span)
        body["MutualTLSMode"] = modes[0]
        if proto in HTTP_PROTOCOLS:
            # The callers' routes bound the request; the local app route must not cut it at 15 s.
            body["LocalRequestTimeoutMs"] = NO_TIMEOUT_MS
        overrides = [o for o in (self.upstream_override(callee, ctx) for callee in inner
                                 if callee.name != svc.name) if o]
        if overrides:
            body["UpstreamConfig"] = {"Overrides": overrides}
        rl = svc.resilience.rate_limit
        if rl is not None and "rate_limit" in self.CAPABILITIES:
            if rl.per_second != int(rl.per_second) or rl.per_second < 1:
                ctx.error(f"Consul rate limits are whole requests per second; {rl.requests}/{rl.unit} is "
                          f"{rl.per_second:g}/s", rl.span, help="write the rate per second")
            inst: dict[str, Any] = {"RequestsPerSecond": int(rl.per_second)}
            if rl.burst is not None:
                inst["RequestsMaxBurst"] = rl.burst
            body["RateLimits"] = {"InstanceLevel": inst}
        return Entry("service-defaults", svc.name, svc.namespace, body)

    def upstream_override(self, callee: Service, ctx: _Ctx) -> dict[str, Any] | None:
        r = callee.resilience
        o: dict[str, Any] = {}
        if r.circuit_breaker is not None:
            cb = r.circuit_breaker
            limits = {k: v for k, v in (("MaxConnections", cb.max_connections),
                                        ("MaxPendingRequests", cb.max_pending),
                                        ("MaxConcurrentRequests", cb.max_requests)) if v is not None}
            if cb.max_retries is not None:
                ctx.error("Consul upstream limits have no concurrent-retries limit (max_retries)", cb.span)
            if limits:
                o["Limits"] = limits
        if r.outlier is not None:
            ol = r.outlier
            if ol.max_percent % 100:
                ctx.error("Consul's max ejection percent is a whole percentage", ol.span)
            o["PassiveHealthCheck"] = {"Interval": duration(ol.interval_ms), "MaxFailures": ol.consecutive_5xx,
                                       "EnforcingConsecutive5xx": 100,
                                       "MaxEjectionPercent": ol.max_percent // 100,
                                       "BaseEjectionTime": duration(ol.eject_ms)}
        if not o:
            return None
        return {"Name": callee.name, **o}

    def lower_routing(self, mesh: Mesh, svc: Service, ctx: _Ctx) -> list[Entry]:
        out: list[Entry] = []
        resolver: dict[str, Any] = {}
        if svc.versions:
            subsets = FreeMap()
            for v in svc.versions:
                if not v.labels:
                    ctx.error(f"version '{v.name}' has no labels; Consul selects subsets by service metadata",
                              v.span, help="add `labels version=...`")
                    continue
                subsets[v.name] = {"Filter": subset_filter(v.labels)}
            resolver["Subsets"] = subsets
        lb = svc.resilience.load_balance
        if lb is not None:
            resolver["LoadBalancer"] = self.load_balancer(lb)
        proto = self.protocol(svc, ctx) if svc.ports else "tcp"
        if proto not in HTTP_PROTOCOLS:
            self.lower_tcp_routes(svc, resolver, ctx)
        if resolver:
            out.append(Entry("service-resolver", svc.name, svc.namespace, resolver))
        if proto in HTTP_PROTOCOLS:
            out += self.lower_router(mesh, svc, ctx)
        return out

    @staticmethod
    def load_balancer(lb: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"Policy": LB_POLICIES[lb.policy]}
        if lb.policy == "consistent_hash":
            if lb.hash_on == "source_ip":
                hp: dict[str, Any] = {"SourceIP": True}
            else:
                hp = {"Field": HASH_FIELDS[lb.hash_on or "header"], "FieldValue": lb.hash_key}
                if lb.hash_on == "cookie" and lb.cookie_ttl_ms is not None:
                    hp["CookieConfig"] = {"TTL": duration(lb.cookie_ttl_ms)}
            out["HashPolicies"] = [hp]
        return out

    def lower_tcp_routes(self, svc: Service, resolver: dict[str, Any], ctx: _Ctx) -> None:
        """TCP services have no router: only `otherwise -> one destination` is expressible."""
        for rule in svc.routes:
            if rule.matches or len(rule.destinations) != 1:
                ctx.error(f"Consul routes TCP service '{svc.name}' only to one default destination",
                          rule.span, help="use an HTTP protocol for conditional routes and splits")
                continue
            d = rule.destinations[0]
            if d.service != svc.name:
                resolver["Redirect"] = {"Service": d.service, **({"ServiceSubset": d.version} if d.version else {})}
            elif d.version:
                resolver["DefaultSubset"] = d.version
        for what, val in (("timeouts", svc.resilience.timeout), ("retries", svc.resilience.retry)):
            if val is not None:
                ctx.error(f"Consul applies {what} to HTTP services only", val.span)

    # ------------------------------------------------------------------ routers and splitters

    def lower_router(self, mesh: Mesh, svc: Service, ctx: _Ctx) -> list[Entry]:
        routes: list[dict[str, Any]] = []
        splitters: list[Entry] = []
        # A redirect or direct response is E301 here (not a capability); with --unsupported=warn
        # its rule is left out whole, never lowered as a forward to the service.
        rules = [r for r in svc.routes if r.redirect is None and r.respond is None]
        # No rules: one catch-all carrying the service's timeout and retries. Rules without
        # `otherwise` (meshc answers 404) are E301: `route.no_default` is not a capability.
        if not rules:
            rules.append(RouteRule(span=svc.span, destinations=()))
        for i, rule in enumerate(rules):
            dest = self.route_destination(mesh, svc, rule, i, splitters, ctx)
            matches = [self.http_matches(m, ctx) for m in rule.matches] or [[{}]]
            for group in matches:
                for match in group:
                    route: dict[str, Any] = {}
                    if match:
                        route["Match"] = {"HTTP": match}
                    d = dict(dest)
                    if rule.rewrite is not None and rule.rewrite.prefix is not None:
                        d["PrefixRewrite"] = self.prefix_rewrite(rule, match, ctx)
                    elif rule.rewrite is not None and rule.rewrite.path is not None:
                        if "PathExact" not in match:
                            ctx.error("Consul replaces a whole path only after an exact path match",
                                      rule.rewrite.span)
                        d["PrefixRewrite"] = rule.rewrite.path
                    route["Destination"] = d
                    routes.append(route)
        return [Entry("service-router", svc.name, svc.namespace, {"Routes": routes}), *splitters]

    def route_destination(self, mesh: Mesh, svc: Service, rule: RouteRule, index: int,
                          splitters: list[Entry], ctx: _Ctx) -> dict[str, Any]:
        dests = rule.destinations or ()
        d: dict[str, Any]
        if len(dests) > 1 or any(x.weight != FULL for x in dests):
            virtual = f"{svc.name}-route-{index}"
            splits = []
            for x in dests:
                split: dict[str, Any] = {"Weight": weight(x.weight), "Service": x.service}
                if x.version:
                    split["ServiceSubset"] = x.version
                splits.append(split)
            splitters.append(Entry("service-splitter", virtual, svc.namespace, {"Splits": splits}))
            # a splitter needs its (virtual) service's protocol
            splitters.append(Entry("service-defaults", virtual, svc.namespace,
                                   {"Protocol": self.protocol(svc, ctx)}))
            d = {"Service": virtual}
        elif dests:
            d = {"Service": dests[0].service}
            if dests[0].version:
                d["ServiceSubset"] = dests[0].version
        else:
            d = {"Service": svc.name}
        timeout = rule.timeout or svc.resilience.timeout or mesh.timeout
        ms = timeout.ms if timeout is not None and timeout.ms is not None else NO_TIMEOUT_MS
        d["RequestTimeout"] = duration(ms)
        retry = rule.retry or svc.resilience.retry
        # `retry 0` writes nothing: a retry condition without NumRetries means Envoy's default, 1
        if retry is not None and retry.attempts > 0:
            d.update(self.retry(retry, ctx))
        for key, ops in (("RequestHeaders", rule.request_headers), ("ResponseHeaders", rule.response_headers)):
            if ops is not None:
                h: dict[str, Any] = {}
                if ops.add:
                    h["Add"] = FreeMap(ops.add)
                if ops.set:
                    h["Set"] = FreeMap(ops.set)
                if ops.remove:
                    h["Remove"] = list(ops.remove)
                if len(dict(ops.add)) != len(ops.add):
                    ctx.error("Consul adds one value per header name", ops.span)
                d[key] = h
        return d

    @staticmethod
    def retry(r: Retry, ctx: _Ctx) -> dict[str, Any]:
        out: dict[str, Any] = {"NumRetries": r.attempts}  # meshc and Consul both count retries
        on = [RETRY_ON[c] for c in r.on]
        if on:
            out["RetryOn"] = on
        if "connect-failure" in r.on:
            out["RetryOnConnectFailure"] = True
        if r.status_codes:
            out["RetryOnStatusCodes"] = list(r.status_codes)
        return out

    @staticmethod
    def prefix_rewrite(rule: RouteRule, match: dict[str, Any], ctx: _Ctx) -> str:
        assert rule.rewrite is not None and rule.rewrite.prefix is not None
        if "PathPrefix" not in match and "PathExact" not in match:
            ctx.error("Consul rewrites a prefix only after a prefix or exact path match", rule.rewrite.span)
        return rule.rewrite.prefix

    def http_matches(self, m: Match, ctx: _Ctx) -> list[dict[str, Any]]:
        """One meshc match -> Consul HTTP matches (OR-ed): `under` needs two."""
        base: dict[str, Any] = {}
        if m.headers:
            base["Header"] = [self.header_match(h, ctx) for h in m.headers]
        if m.methods:
            base["Methods"] = list(m.methods)
        if m.query:
            base["QueryParam"] = [self.query_match(q, ctx) for q in m.query]
        return [{**base, **p} for p in path_matches(m.path)] if m.path else [base]

    @staticmethod
    def header_match(h: StringMatch, ctx: _Ctx) -> dict[str, Any]:
        if h.kind == "present":
            return {"Name": h.name, "Present": True}
        if h.kind == "absent":
            return {"Name": h.name, "Present": True, "Invert": True}
        return {"Name": h.name, HEADER_KINDS[h.kind]: h.value}

    @staticmethod
    def query_match(q: StringMatch, ctx: _Ctx) -> dict[str, Any]:
        if q.kind == "present":
            return {"Name": q.name, "Present": True}
        if q.kind in ("exact", "regex"):
            return {"Name": q.name, HEADER_KINDS[q.kind]: q.value}
        ctx.error(f"Consul matches query parameters by exact value, regex or presence, not '{q.kind}'", q.span)
        return {"Name": q.name, "Present": True}

    # ------------------------------------------------------------------ external services

    def lower_external(self, mesh: Mesh, ext: Service, ctx: _Ctx) -> list[Entry]:
        """A Consul destination (service-defaults `Destination`, reached through the terminating
        gateway by transparent proxies), its routing like any service, and its terminating
        gateway link (TLS origination: `CAFile` + `SNI`)."""
        assert ext.external is not None
        if len(ext.ports) > 1:
            ctx.error("a Consul destination has one port", ext.ports[1].span)
        port = ext.ports[0]
        body: dict[str, Any] = {"Protocol": self.protocol(ext, ctx),
                                "Destination": {"Addresses": [ext.external.host], "Port": port.number}}
        link: dict[str, Any] = {"Name": ext.name}
        if ext.external.tls_originate:
            link["CAFile"] = self.options.get("system_ca", "/etc/ssl/certs/ca-certificates.crt")
            link["SNI"] = ext.external.sni or ext.external.host
        gateway = self.options.get("terminating_gateway", "terminating-gateway")
        return [Entry("service-defaults", ext.name, ext.namespace, body),
                *self.lower_routing(mesh, ext, ctx),
                Entry("terminating-gateway", gateway, mesh.namespace, {"Services": [link]})]

    # ------------------------------------------------------------------ ingress

    def lower_ingress(self, mesh: Mesh, inner: list[Service], ctx: _Ctx) -> list[Entry]:
        """One ingress-gateway entry named after the ingress identity; exposed paths go through a
        virtual service `<svc>-ingress` whose router matches only them."""
        exposed = [s for s in inner if s.expose is not None]
        if not exposed:
            return []
        out: list[Entry] = []
        listeners: dict[int, list[tuple[dict[str, Any], Service]]] = {}
        protocols: dict[int, str] = {}
        for svc in exposed:
            assert svc.expose is not None
            proto = self.protocol(svc, ctx)
            http = proto in HTTP_PROTOCOLS
            name = svc.name
            if svc.expose.paths:
                if not http:
                    ctx.error("Consul's ingress gateway cannot select paths of a TCP service", svc.expose.span)
                else:
                    name = f"{svc.name}-ingress"
                    out += self.ingress_router(mesh, svc, name, ctx)
            entry: dict[str, Any] = {"Name": name}
            # The gateway is a caller too: the service's circuit breaker and outlier detection
            # apply on its upstream as on every sidecar's (the same fields, per gateway service).
            override = self.upstream_override(svc, ctx) or {}
            entry.update(override.get("Limits", {}))
            if "PassiveHealthCheck" in override:
                entry["PassiveHealthCheck"] = override["PassiveHealthCheck"]
            hosts = list(svc.expose.hosts)
            if http and hosts != ["*"]:
                entry["Hosts"] = hosts
            elif http:
                entry["Hosts"] = ["*"]
            listeners.setdefault(svc.expose.port, []).append((entry, svc))
            lproto = "http" if http else "tcp"
            if protocols.setdefault(svc.expose.port, lproto) != lproto:
                ctx.error(f"Consul ingress listener {svc.expose.port} mixes HTTP and TCP services", svc.expose.span)
        for port, services in listeners.items():
            if len(services) > 1 and any(e.get("Hosts") == ["*"] for e, _ in services):
                ctx.error("a Consul ingress listener serves a `*` host only when it has a single service",
                          services[0][1].expose.span if services[0][1].expose else services[0][1].span,
                          help="give the services on this port their own hosts")
            if protocols[port] == "tcp" and len(services) > 1:
                ctx.error("a Consul TCP ingress listener serves one service", services[1][1].span)
        body = {"Listeners": [{"Port": port, "Protocol": protocols[port],
                               "Services": [e for e, _ in sorted(listeners[port], key=lambda x: x[0]["Name"])]}
                              for port in sorted(listeners)]}
        out.append(Entry("ingress-gateway", mesh.ingress_identity.name, mesh.ingress_identity.namespace, body))
        return out

    def ingress_router(self, mesh: Mesh, svc: Service, virtual: str, ctx: _Ctx) -> list[Entry]:
        """Routes of `<svc>-ingress`: the exposed paths, to the service's default destination.
        A router cannot route to another router, so a service with its own conditional route
        table cannot have its paths filtered (E330). Unexposed paths find no instance (503)."""
        assert svc.expose is not None
        if any(r.matches for r in svc.routes):
            ctx.error(f"Consul cannot expose some paths of '{svc.name}', which has its own route rules "
                      "(a service-router cannot route to another router)", svc.expose.span,
                      help="expose every path (no `paths`), or move the path choice into the route table")
        splitters: list[Entry] = []
        default = next((r for r in svc.routes if r.is_default), None)
        index = svc.routes.index(default) if default is not None else 0
        dest = self.route_destination(mesh, svc, default or RouteRule(span=svc.span), index, splitters, ctx)
        routes = [{"Match": {"HTTP": m}, "Destination": dict(dest)}
                  for p in svc.expose.paths for m in path_matches(p)]
        return [Entry("service-defaults", virtual, svc.namespace, {"Protocol": "http"}),
                Entry("service-router", virtual, svc.namespace, {"Routes": routes}), *splitters]

    # ------------------------------------------------------------------ intentions

    def lower_intentions(self, mesh: Mesh, inner: list[Service], ctx: _Ctx) -> list[Entry]:
        default = "deny" if mesh.authz == "deny_by_default" else "allow"
        out = [Entry("service-intentions", "*", mesh.namespace,
                     {"Sources": [{"Name": "*", "Action": default}]})]
        for svc in inner:
            sources = self.intention_sources(mesh, svc, default, ctx)
            if sources:
                out.append(Entry("service-intentions", svc.name, svc.namespace, {"Sources": sources}))
        return out

    def intention_sources(self, mesh: Mesh, svc: Service, default: str, ctx: _Ctx) -> list[dict[str, Any]]:
        rules = [r for r in mesh.rules if svc.name in r.destinations or "*" in r.destinations]
        # Intentions have no port: a rule naming every port of the service holds whole, one
        # naming none of them does not apply, one naming some of them cannot be said.
        ports = {p.number for p in svc.ports}
        for r in [r for r in rules if r.ports]:
            if not ports & set(r.ports):
                rules.remove(r)
            elif not ports <= set(r.ports):
                ctx.error(f"Consul intentions cannot tell the ports of '{svc.name}' apart", r.span,
                          help="name every port of the service, or split it into one service per port")
        l7 = self.protocol(svc, ctx) in HTTP_PROTOCOLS if svc.ports else False
        plaintext = svc.mtls == "permissive" or any(p.mtls == "permissive" for p in svc.ports)
        if plaintext and (default == "deny" or any(r.action == "deny" for r in rules)):
            ctx.error(f"Consul does not apply intentions to plaintext callers of permissive service "
                      f"'{svc.name}', so its authorization would not hold", svc.span,
                      help="use mtls strict for services with deny rules or under deny_by_default")
        # Consul source name -> the meshc rules a caller with that name is subject to.
        by_source: dict[str, list[AuthzRule]] = {}
        for r in rules:
            for s in r.sources:
                for name in consul_sources(mesh, s):
                    by_source.setdefault(name, [])
                    if r not in by_source[name]:
                        by_source[name].append(r)
        wildcard = by_source.get("*", [])
        out = []
        for name in sorted(by_source):
            applicable = by_source[name] + ([r for r in wildcard if r not in by_source[name]] if name != "*" else [])
            out.append({"Name": name, **self.source_decision(applicable, default, l7, svc, ctx)})
        return out

    def source_decision(self, rules: list[AuthzRule], default: str, l7: bool, svc: Service,
                        ctx: _Ctx) -> dict[str, Any]:
        """An L4 action when every applicable rule is unconditional, else ordered L7 permissions."""
        if not l7:
            # A TCP connection has no method, path or headers, so a rule narrowed by them never
            # matches it (meshc's meaning): it drops out, exactly.
            rules = [r for r in rules if not conditional(r)]
        denies = [r for r in rules if r.action == "deny"]
        allows = [r for r in rules if r.action == "allow"]
        if any(not conditional(r) for r in denies):
            return {"Action": "deny"}
        if not any(conditional(r) for r in rules):
            return {"Action": "allow" if allows else default}
        perms: list[dict[str, Any]] = []
        for r in denies + allows:
            perms += [{"Action": r.action, "HTTP": http} for http in self.permission_https(r, ctx)]
            if r.action == "allow" and not conditional(r):
                break  # everything after an unconditional allow is unreachable
        else:
            perms.append({"Action": default, "HTTP": {"PathPrefix": "/"}})
        if all(p["Action"] == default for p in perms):
            return {"Action": default}  # every permission says the same: an L4 intention
        return {"Permissions": perms}

    def permission_https(self, r: AuthzRule, ctx: _Ctx) -> list[dict[str, Any]]:
        base: dict[str, Any] = {}
        if r.methods:
            base["Methods"] = list(r.methods)
        if r.headers:
            base["Header"] = [self.header_match(h, ctx) for h in r.headers]
        if not r.paths:
            return [base or {"PathPrefix": "/"}]
        return [{**base, **p} for path in r.paths for p in path_matches(path)]


def as_http(svc: Service) -> Service:
    """An external service whose callers speak HTTP (the gateway originates TLS) is an HTTP one."""
    if svc.external is None or not svc.external.tls_originate:
        return svc
    return svc.model_copy(update={"ports": tuple(p.model_copy(update={"protocol": "http"}) for p in svc.ports)})


def conditional(r: AuthzRule) -> bool:
    """Narrowed by request attributes. Ports are settled per service (see intention_sources)."""
    return bool(r.methods or r.paths or r.headers or r.not_paths)


def consul_sources(mesh: Mesh, s: Source) -> list[str]:
    """The Consul source names a meshc source stands for.

    A Consul identity is a service name, while meshc matches service accounts: a service source
    stands for every service sharing its service account, an `identity` source for the services
    running as that account (or the name itself, for callers outside the mesh).
    """
    if s.kind in ("any", "authenticated"):
        return ["*"]  # every caller reaching a strict Consul proxy is an authenticated mesh service
    if s.kind == "unauthenticated":
        return []  # plaintext never reaches intentions (strict), see the permissive check
    if s.kind == "ingress":
        return [mesh.ingress_identity.name]
    if s.kind == "service":
        svc = mesh.service(s.name)
        if svc is None:
            return [s.name]
        return sorted(o.name for o in mesh.services if o.identity.spiffe == svc.identity.spiffe)
    named = sorted(o.name for o in mesh.services if s.name in (o.identity.name,
                                                              f"{o.identity.namespace}/{o.identity.name}"))
    return named or [s.name.split("/")[-1]]


def path_matches(p: PathMatch) -> list[dict[str, str]]:
    """meshc path match -> Consul path fields (OR-ed). `under "/p"`: exact `/p` or prefix `/p/`."""
    if p.kind == "under":
        base = p.value.rstrip("/")
        if not base:
            return [{"PathPrefix": "/"}]
        return [{"PathExact": base}, {"PathPrefix": base + "/"}]
    return [{PATH_KINDS[p.kind]: p.value}]
