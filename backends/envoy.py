"""Envoy backend: one Envoy v3 bootstrap per service sidecar (Envoy 1.40 API, `envoy.*.v3`).

Local topology (written to `index.json` in the bundle, which tests and tools read):

- The sidecar of service S (`S/envoy.yaml`) terminates S's inbound traffic on each of S's ports
  (`<inbound_address>:<port number>`): mTLS with S's SPIFFE certificate (strict: TLS only;
  permissive: tls_inspector picks a TLS or a plaintext filter chain), path normalization, RBAC
  (a DENY filter, then an ALLOW filter under deny_by_default: deny beats allow), local rate
  limit, faults, then forwards to S's static endpoints. The endpoint-facing clusters carry what
  needs to see real endpoints: load-balancing policy, outlier detection, active health checks.
- The caller chooses the route (versions, splits, retries, timeouts) on its outbound listener
  and tells the callee's sidecar which version it picked in the `x-meshc-version` header,
  which the caller always overwrites (or removes), so an application cannot pick a version.
- Outbound: for every dependency D of S (declared `calls`, allow-rule edges from S, and what
  D's route table sends to), one listener on `127.0.0.1:<outbound_base + i>` where `i` is the
  position of (D, port) in the sorted list of S's dependencies, so adding a service elsewhere
  never renumbers S's ports. Clusters are per callee port and version
  (`outbound|<port>|<version>|<service>`) and point to the callee's sidecar at `peer_host`,
  with the callee's circuit-breaker limits, retry budget and upstream mTLS that accepts only
  the callee's SPIFFE ID.
- Faults: a service's `fault` lines run in its own sidecar (inbound, before forwarding); a
  `fault` inside a route rule runs where that rule is matched, in the caller's sidecar, before
  routing (so, as with Istio, the caller's retries do not retry an injected abort).
- Rate limits: one token bucket per inbound filter chain, i.e. per port; a permissive port has
  two chains (mTLS and plaintext), each with the full bucket.
- Limits the mesh leaves unset are written as unlimited, and "no timeout" as `0s`: no hidden
  Envoy default (15 s route timeout, 1024 requests, 3 concurrent retries) applies silently.
- A sidecar holds only its own dependencies, so its size does not grow with the mesh.
- Services with `expose ingress` get an `ingress-gateway/envoy.yaml` (identity:
  `mesh.ingress_identity`) routing the exposed paths to the service's default destination.

Certificates are read at run time from `certs_dir` in the layout `meshc certs` writes
(see meshc/certs.py). With `--option dynamic`, listeners and clusters go to `S/lds.yaml` and
`S/cds.yaml` (file-based xDS); replace them by an atomic rename and Envoy reloads them.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import yaml
from meshc.backends.base import (
    Backend,
    Bundle,
    Option,
    boolean,
    choice,
    dump_yaml,
    file_path,
    host_address,
    integer,
)

from meshc.certs import cert_file_names
from meshc.diagnostics import Diagnostic
from meshc.model import (
    HTTP_PROTOCOLS,
    AuthzRule,
    CircuitBreaker,
    Destination,
    Endpoint,
    Fault,
    HeaderOps,
    HealthCheck,
    Identity,
    LoadBalance,
    Match,
    Mesh,
    Outlier,
    PathMatch,
    Port,
    Retry,
    RouteRule,
    Service,
    Source,
    StringMatch,
)

T = "type.googleapis.com/"
HCM = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY = T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER = T + "envoy.extensions.filters.http.router.v3.Router"
RBAC_HTTP = T + "envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_NET = T + "envoy.extensions.filters.network.rbac.v3.RBAC"
FAULT = T + "envoy.extensions.filters.http.fault.v3.HTTPFault"
LOCAL_RL = T + "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
BUFFER = T + "envoy.extensions.filters.http.buffer.v3.Buffer"
TLS_INSPECTOR = T + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
DOWNSTREAM_TLS = T + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS = T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HTTP_OPTIONS = T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
FILE_LOG = T + "envoy.extensions.access_loggers.file.v3.FileAccessLog"
LISTENER = T + "envoy.config.listener.v3.Listener"
CLUSTER = T + "envoy.config.cluster.v3.Cluster"

VERSION_HEADER = "x-meshc-version"
OVERWRITE = "OVERWRITE_IF_EXISTS_OR_ADD"
APPEND = "APPEND_IF_EXISTS_OR_ADD"

RETRY_ON: dict[str, str] = {
    "5xx": "5xx", "gateway-error": "gateway-error", "connect-failure": "connect-failure",
    "reset": "reset", "retriable-4xx": "retriable-4xx", "refused-stream": "refused-stream",
}
LB_POLICY: dict[str, str] = {
    "round_robin": "ROUND_ROBIN", "least_request": "LEAST_REQUEST", "random": "RANDOM",
    "consistent_hash": "RING_HASH",
}
REDIRECT_CODES: dict[int, str] = {
    301: "MOVED_PERMANENTLY", 302: "FOUND", 303: "SEE_OTHER", 307: "TEMPORARY_REDIRECT",
    308: "PERMANENT_REDIRECT",
}
FILL_INTERVAL: dict[str, str] = {"s": "1s", "m": "60s", "h": "3600s"}
ACCESS_LOG_JSON: dict[str, str] = {
    "start_time": "%START_TIME%", "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%", "bytes_in": "%BYTES_RECEIVED%",
    "bytes_out": "%BYTES_SENT%", "duration_ms": "%DURATION%", "upstream": "%UPSTREAM_HOST%",
    "cluster": "%UPSTREAM_CLUSTER%", "peer": "%DOWNSTREAM_PEER_URI_SAN%",
    "request_id": "%REQ(X-REQUEST-ID)%", "traceparent": "%REQ(TRACEPARENT)%",
    "authority": "%REQ(:AUTHORITY)%",
}
ACCESS_LOG_TEXT = ("[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" "
                   "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
                   "\"%UPSTREAM_HOST%\" \"%DOWNSTREAM_PEER_URI_SAN%\" \"%REQ(X-REQUEST-ID)%\"\n")
# Trace context headers the sidecar passes through untouched (never strips), listed in index.json
# so applications know what to copy from inbound to outbound requests.
TRACE_HEADERS = ("x-request-id", "traceparent", "tracestate", "x-b3-traceid", "x-b3-spanid",
                 "x-b3-parentspanid", "x-b3-sampled")


def dur(ms: int) -> str:
    """Milliseconds as a protobuf Duration string (`1.5s`, `0s`)."""
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms / 1000:.3f}".rstrip("0") + "s"


def pct(p: int) -> dict[str, Any]:
    """A model Percent (hundredths) as a FractionalPercent."""
    return {"numerator": p, "denominator": "TEN_THOUSAND"}


def socket(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


@functools.lru_cache(maxsize=4096)
def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def typed(name: str, type_url: str, config: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": type_url, **config}}


# --------------------------------------------------------------------------- matching


def string_matcher(kind: str, value: str) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {"exact": {"exact": value}, "prefix": {"prefix": value},
                                        "regex": {"safe_regex": {"regex": value}}}
    return table[kind]


def header_matcher(m: StringMatch) -> dict[str, Any]:
    if m.kind == "present":
        return {"name": m.name, "present_match": True}
    if m.kind == "absent":
        return {"name": m.name, "present_match": True, "invert_match": True}
    return {"name": m.name, "string_match": string_matcher(m.kind, m.value)}


def query_absent(m: StringMatch) -> dict[str, Any]:
    """Envoy's query-parameter matcher cannot say "absent": no `NAME` parameter in `:path`."""
    name = re.escape(m.name)
    return {"name": ":path", "invert_match": True,
            "string_match": {"safe_regex": {"regex": f"[^?]*\\?(.*&)?{name}(=[^&]*)?(&.*)?"}}}


def query_matcher(m: StringMatch) -> dict[str, Any]:
    if m.kind == "present":
        return {"name": m.name, "present_match": True}
    return {"name": m.name, "string_match": string_matcher(m.kind, m.value)}


def method_matcher(methods: Iterable[str]) -> dict[str, Any]:
    ms = sorted(set(methods))
    if len(ms) == 1:
        return {"name": ":method", "string_match": {"exact": ms[0]}}
    return {"name": ":method", "string_match": {"safe_regex": {"regex": "|".join(map(re.escape, ms))}}}


def route_path(p: PathMatch | None) -> dict[str, Any]:
    """Route path matcher. `under` is whole-segment: Envoy's path_separated_prefix."""
    if p is None:
        return {"prefix": "/"}
    if p.kind == "under":
        value = p.value.rstrip("/")
        return {"path_separated_prefix": value} if value else {"prefix": "/"}
    table: dict[str, dict[str, Any]] = {"exact": {"path": p.value}, "prefix": {"prefix": p.value},
                                        "regex": {"safe_regex": {"regex": p.value}}}
    return table[p.kind]


def route_match(m: Match | None) -> dict[str, Any]:
    out = route_path(m.path if m else None)
    if m is None:
        return out
    headers = [header_matcher(h) for h in m.headers]
    if m.methods:
        headers.append(method_matcher(m.methods))
    headers += [query_absent(q) for q in m.query if q.kind == "absent"]
    if headers:
        out["headers"] = headers
    query = [query_matcher(q) for q in m.query if q.kind != "absent"]
    if query:
        out["query_parameters"] = query
    return out


def and_match(a: Match | None, b: Match) -> Match | None:
    """Both matches at once (a rule's and its conditional fault's), or None when they cannot
    both be written in one Envoy route (two path conditions) or never hold together."""
    if a is None:
        return b
    if a.path is not None and b.path is not None:
        return None
    methods = a.methods
    if a.methods and b.methods:
        methods = tuple(x for x in a.methods if x in b.methods)
        if not methods:
            return None
    return Match(path=a.path or b.path, headers=a.headers + b.headers, query=a.query + b.query,
                 methods=methods or b.methods, span=b.span)


def merge_match(base: dict[str, Any], extra_headers: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(base)
    if extra_headers:
        out["headers"] = list(base.get("headers", [])) + extra_headers
    return out


# --------------------------------------------------------------------------- RBAC


# The caller's identity is THE SPIFFE URI SAN of its certificate (docs/language.md, "mTLS"):
# Envoy's RBAC principals accept a certificate if ANY of its SANs matches, so a certificate
# with two SPIFFE ids would pass as either. The inbound connection manager writes the verified
# peer's URI SANs into x-forwarded-client-cert (SANITIZE_SET: never the client's own header),
# one `URI=` per SAN; a request whose certificate has two SPIFFE ids is denied (403) before the
# authorization rules. (TCP ports have no such header: there a certificate from the mesh's own
# CA, which `meshc certs` issues with one URI SAN, is trusted as it is.)
_SPIFFE_SCHEME = "[sS][pP][iI][fF][fF][eE]://"


def one_spiffe_id() -> dict[str, Any]:
    """The deny policy for a certificate with two SPIFFE ids (see above)."""
    return {"meshc-one-spiffe-id": {
        "permissions": [{"any": True}],
        "principals": [{"header": {"name": "x-forwarded-client-cert", "string_match": {"safe_regex": {
            "regex": f"(?:.*;)?URI={_SPIFFE_SCHEME}[^;]*;(?:.*;)?URI={_SPIFFE_SCHEME}.*"}}}}]}}


def rbac_path(p: PathMatch) -> dict[str, Any]:
    """An RBAC permission on the (normalized) path; `under` = exact OR `/`-terminated prefix."""
    def url(m: dict[str, Any]) -> dict[str, Any]:
        return {"url_path": {"path": m}}
    if p.kind == "under":
        value = p.value.rstrip("/")
        if not value:
            return url({"prefix": "/"})
        return {"or_rules": {"rules": [url({"exact": value}), url({"prefix": value + "/"})]}}
    if p.kind == "regex":
        return url({"safe_regex": {"regex": p.value}})
    return url({p.kind: p.value})


def any_of(items: list[dict[str, Any]]) -> dict[str, Any]:
    return items[0] if len(items) == 1 else {"or_rules": {"rules": items}}


def principal(src: Source, mesh: Mesh) -> dict[str, Any]:
    td = re.escape(mesh.trust_domain)
    if src.kind == "service":
        svc = mesh.service(src.name)
        spiffe = svc.identity.spiffe if svc else f"spiffe://{mesh.trust_domain}/ns/{mesh.namespace}/sa/{src.name}"
        return {"authenticated": {"principal_name": {"exact": spiffe}}}
    if src.kind == "identity":
        # A service account by name, in any namespace of the trust domain.
        return {"authenticated": {"principal_name": {
            "safe_regex": {"regex": f"spiffe://{td}/ns/[^/]+/sa/{re.escape(src.name)}"}}}}
    if src.kind == "ingress":
        return {"authenticated": {"principal_name": {"exact": mesh.ingress_identity.spiffe}}}
    if src.kind == "authenticated":
        return {"authenticated": {"principal_name": {"prefix": f"spiffe://{mesh.trust_domain}/"}}}
    if src.kind == "unauthenticated":
        return {"not_id": {"authenticated": {}}}
    return {"any": True}


def is_l7(rule: AuthzRule) -> bool:
    return bool(rule.methods or rule.paths or rule.not_paths or rule.headers)


def permission(rule: AuthzRule, l7: bool) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if rule.ports:
        parts.append(any_of([{"destination_port": p} for p in sorted(rule.ports)]))
    if l7:
        if rule.methods:
            parts.append({"header": method_matcher(rule.methods)})
        if rule.paths:
            parts.append(any_of([rbac_path(p) for p in rule.paths]))
        if rule.not_paths:
            parts.append({"not_rule": any_of([rbac_path(p) for p in rule.not_paths])})
        parts.extend({"header": header_matcher(h)} for h in rule.headers)
    if not parts:
        return {"any": True}
    return parts[0] if len(parts) == 1 else {"and_rules": {"rules": parts}}


def rbac_policies(rules: list[tuple[int, AuthzRule]], mesh: Mesh, l7: bool) -> dict[str, Any]:
    """Policies named after the rule's source line, so a denied request's log names the rule."""
    out: dict[str, Any] = {}
    for i, rule in rules:
        if not l7 and is_l7(rule):
            # HTTP attributes cannot be seen on a TCP port: an allow never matches there and a
            # deny refuses the whole connection (fail closed).
            if rule.action == "allow":
                continue
            perm: dict[str, Any] = permission(rule, False)
        else:
            perm = permission(rule, l7)
        out[f"{rule.action}-{i:03d}-line-{rule.span.line}"] = {
            "permissions": [perm],
            "principals": [principal(s, mesh) for s in rule.sources],
        }
    return out


# --------------------------------------------------------------------------- the backend


@dataclass
class Sidecar:
    """What one sidecar needs: its listeners and clusters, plus the index entry."""

    name: str
    identity: Identity
    listeners: list[dict[str, Any]] = field(default_factory=list)
    clusters: dict[str, dict[str, Any]] = field(default_factory=dict)
    index: dict[str, Any] = field(default_factory=dict)


class EnvoyBackend(Backend):
    name: ClassVar[str] = "envoy"
    description: ClassVar[str] = "Envoy v3 bootstrap per sidecar (Envoy 1.40), static or file-based xDS"
    CAPABILITIES: ClassVar[frozenset[str]] = frozenset({
        "protocol.http", "protocol.http2", "protocol.grpc", "protocol.tcp", "protocol.tls",
        "mtls.strict", "mtls.permissive", "mtls.disabled", "endpoints.static", "versions",
        "route.match.path.exact", "route.match.path.prefix", "route.match.path.under",
        "route.match.path.regex", "route.match.header", "route.match.header.regex",
        "route.match.header.absent", "route.match.method", "route.match.query",
        "route.split", "route.split.services", "route.rewrite", "route.rewrite.host",
        "route.redirect", "route.respond", "route.headers.request", "route.headers.response",
        "route.mirror", "route.no_default", "timeout", "retry", "retry.per_try", "retry.backoff",
        "retry.budget", "retry.status_codes", "load_balance.round_robin",
        "load_balance.least_request", "load_balance.random", "load_balance.consistent_hash",
        "circuit_breaker", "outlier", "health_check", "rate_limit", "max_request_body", "fault.delay",
        "fault.abort", "authz.allow", "authz.deny", "authz.identity", "authz.unauthenticated", "authz.methods",
        "authz.paths", "authz.not_paths", "authz.ports", "authz.headers", "ingress", "external",
        "external.tls_originate",
        "path_normalization.off", "access_log.text", "access_log.off", "metrics.off", "trace_sampling",
    })
    OPTIONS: ClassVar[Mapping[str, Option]] = {
        "dynamic": Option("write listeners and clusters as file-based xDS (S/lds.yaml, S/cds.yaml)", boolean),
        "certs_dir": Option("where the `meshc certs` files are at run time (default: certs)", file_path),
        "config_dir": Option("where this bundle is at run time, for --dynamic xDS paths (default: .)", file_path),
        "admin_port": Option("admin port on 127.0.0.1 (default 15000; 0 picks a free port)", integer(0, 65535)),
        "inbound_address": Option("address the inbound and Prometheus listeners bind (default 0.0.0.0)", host_address),
        "prometheus_port": Option("port serving /stats/prometheus (default 15090; 0: none)", integer(0, 65535)),
        "outbound_base": Option("first outbound loopback port of every sidecar (default 15100)", integer(1, 65535)),
        "peer_host": Option("host where callee sidecars are reached (default 127.0.0.1)", host_address),
        "format": Option("yaml (default) or json: compact JSON is ~40x faster to write for very large meshes", choice("yaml", "json")),
        "system_ca": Option("CA bundle for TLS origination to external services "
                     "(default /etc/ssl/certs/ca-certificates.crt)", file_path),
    }

    # ------------------------------------------------------------------ options

    def opt(self, key: str, default: str) -> str:
        return self.options.get(key, default)

    def int_opt(self, key: str, default: int) -> int:
        try:
            return int(self.opt(key, str(default)))
        except ValueError:
            return default

    def cert_paths(self, ident: Identity) -> tuple[str, str, str]:
        d = self.opt("certs_dir", "certs").rstrip("/")
        cert, key = cert_file_names(ident)
        return f"{d}/ca.pem", f"{d}/{cert}", f"{d}/{key}"

    # ------------------------------------------------------------------ entry point

    def prepare(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.diags: list[Diagnostic] = []
        self.index_rules(mesh)
        # A callee's route table is the same in every caller's sidecar: computed once, with the
        # clusters it needs, which are then added to each caller (with the caller's own cert).
        self.route_cache: dict[tuple[str, int], tuple[list[dict[str, Any]], list[tuple[Destination, Port]]]] = {}
        self.recording: list[tuple[Destination, Port]] | None = None

    def lower_one(self, mesh: Mesh, service: str) -> Bundle:
        """Only the sidecar of `service` (for tools and benchmarks; `lower` writes them all)."""
        self.prepare(mesh)
        svc = mesh.service(service)
        if svc is None or svc.external is not None or not svc.ports:
            raise KeyError(f"no sidecar for '{service}'")
        bundle = Bundle()
        self.check_service(svc)
        self.emit(bundle, self.lower_sidecar(svc))
        bundle.diagnostics.extend(self.diags)
        return bundle

    def lower(self, mesh: Mesh) -> Bundle:
        bundle = Bundle()
        self.prepare(mesh)
        index: dict[str, Any] = {
            "topology": "one sidecar per service; see the module docstring of meshc.backends.envoy",
            "version_header": VERSION_HEADER,
            "trace_headers": list(TRACE_HEADERS),
            "sidecars": {},
        }
        for svc in mesh.services:
            if svc.external is not None or not svc.ports:
                continue
            self.check_service(svc)
            sc = self.lower_sidecar(svc)
            self.emit(bundle, sc)
            index["sidecars"][sc.name] = sc.index
        gw = self.lower_ingress_gateway()
        if gw is not None:
            self.emit(bundle, gw)
            index["sidecars"][gw.name] = gw.index
        bundle.add_json("index.json", index)
        bundle.diagnostics.extend(self.diags)
        return bundle

    def emit(self, bundle: Bundle, sc: Sidecar) -> None:
        self.add_prometheus(sc)
        clusters = [sc.clusters[k] for k in sorted(sc.clusters)]
        boot = self.bootstrap(sc)
        fmt = "json" if self.opt("format", "yaml") == "json" else "yaml"
        put = put_json if fmt == "json" else put_yaml
        if self.flag("dynamic"):
            base = self.opt("config_dir", ".").rstrip("/")
            boot["dynamic_resources"] = {
                "lds_config": {"path_config_source": {"path": f"{base}/{sc.name}/lds.{fmt}"},
                               "resource_api_version": "V3"},
                "cds_config": {"path_config_source": {"path": f"{base}/{sc.name}/cds.{fmt}"},
                               "resource_api_version": "V3"},
            }
            put(bundle, f"{sc.name}/lds.{fmt}", xds(LISTENER, sc.listeners))
            put(bundle, f"{sc.name}/cds.{fmt}", xds(CLUSTER, clusters))
        else:
            boot["static_resources"] = {"listeners": sc.listeners, "clusters": clusters}
        put(bundle, f"{sc.name}/envoy.{fmt}", boot)
        sc.index["config"] = f"{sc.name}/envoy.{fmt}"

    def bootstrap(self, sc: Sidecar) -> dict[str, Any]:
        admin_port = self.int_opt("admin_port", 15000)
        sc.index["admin"] = {"address": "127.0.0.1", "port": admin_port,
                             "prometheus": "/stats/prometheus"}
        boot: dict[str, Any] = {
            "node": {"id": f"{sc.name}.{sc.identity.namespace}", "cluster": sc.name,
                     "metadata": {"spiffe": sc.identity.spiffe}},
            "admin": {"address": socket("127.0.0.1", admin_port)},
        }
        if not self.mesh.observability.metrics:
            boot["stats_config"] = {"stats_matcher": {"reject_all": True}}
        return boot

    def add_prometheus(self, sc: Sidecar) -> None:
        """Prometheus scrapes `/stats/prometheus` on its own port; admin stays on loopback.
        Nothing else of admin is reachable through it (exact path, GET only)."""
        admin_port = self.int_opt("admin_port", 15000)
        port = self.int_opt("prometheus_port", 15090)
        if not self.mesh.observability.metrics or port == 0 or admin_port == 0:
            return
        sc.clusters["prometheus_stats"] = static_cluster("prometheus_stats", [("127.0.0.1", admin_port)])
        hcm = {"stat_prefix": "prometheus", "codec_type": "AUTO",
               "route_config": {"name": "prometheus", "virtual_hosts": [{
                   "name": "prometheus", "domains": ["*"], "routes": [{
                       "match": {"path": "/stats/prometheus",
                                 "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
                       "route": {"cluster": "prometheus_stats"}}]}]},
               "http_filters": [typed("envoy.filters.http.router", ROUTER, {})]}
        addr = self.opt("inbound_address", "0.0.0.0")
        sc.listeners.append({"name": "prometheus", "address": socket(addr, port), "filter_chains": [
            {"filters": [typed("envoy.filters.network.http_connection_manager", HCM, hcm)]}]})
        sc.index["prometheus"] = {"address": addr, "port": port, "path": "/stats/prometheus"}

    def index_rules(self, mesh: Mesh) -> None:
        """Rules by destination and allow edges by source, once: lowering stays linear."""
        self.rules_by_dest: dict[str, list[tuple[int, AuthzRule]]] = {}
        self.allow_edges: dict[str, set[str]] = {}
        for i, rule in enumerate(mesh.rules):
            for d in sorted(set(rule.destinations)):
                self.rules_by_dest.setdefault(d, []).append((i, rule))
            if rule.action == "allow":
                for src in rule.sources:
                    if src.kind == "service":
                        self.allow_edges.setdefault(src.name, set()).update(
                            d for d in rule.destinations if d != "*")

    def rules_for(self, svc: Service) -> list[tuple[int, AuthzRule]]:
        """The rules that apply to `svc`, in source order."""
        found = dict(self.rules_by_dest.get(svc.name, []) + self.rules_by_dest.get("*", []))
        return sorted(found.items())

    # ------------------------------------------------------------------ checks

    def check_service(self, svc: Service) -> None:
        """E302: HTTP-only settings on a service without any HTTP port. E306: retry budgets that
        differ between rules (Envoy keeps one budget per cluster)."""
        budgets = [rt for rt in [svc.resilience.retry] + [r.retry for r in svc.routes]
                   if rt is not None and rt.budget is not None]
        for rt in budgets[1:]:
            if rt.budget != budgets[0].budget:
                self.diags.append(Diagnostic(
                    "E306", f"'{svc.name}' sets different retry budgets; Envoy keeps one per cluster",
                    rt.span, label="another budget", help=f"use one budget for the service (the first is at "
                    f"{budgets[0].span}), or set it once on the service"))
        body_limit = svc.resilience.max_request_body
        grpc = next((p for p in svc.ports if p.protocol == "grpc"), None)
        if body_limit is not None and grpc is not None:
            self.diags.append(Diagnostic(
                "E330", f"Envoy limits request bodies by buffering each request whole; the streams of "
                f"gRPC port {grpc.number} of '{svc.name}' would stall", body_limit.span,
                label="buffers whole requests",
                help="declare the limit on a service without gRPC ports, or compile for nginx"))
        if svc.is_http:
            return
        used: list[tuple[str, Any]] = []
        r = svc.resilience
        if r.retry is not None:
            used.append(("retries", r.retry.span))
        if r.timeout is not None and r.timeout.ms is not None:  # `timeout none` says nothing
            used.append(("request timeouts", r.timeout.span))
        if r.rate_limit is not None:
            used.append(("rate limits", r.rate_limit.span))
        if svc.faults:
            used.append(("fault injection", svc.faults[0].span))
        for rule in svc.routes:
            http_only = (rule.matches, rule.redirect, rule.respond, rule.rewrite, rule.mirror,
                         rule.request_headers, rule.response_headers, rule.faults, rule.retry,
                         rule.timeout, any(d.version for d in rule.destinations))
            if any(x for x in http_only):
                used.append(("HTTP routing (matches, versions, rewrites)", rule.span))
        for label, span in used:
            self.diags.append(Diagnostic(
                "E302", f"{label} on TCP service '{svc.name}' cannot be expressed when targeting envoy",
                span, label="needs an HTTP port",
                help="Envoy forwards TCP ports with tcp_proxy, which sees no requests; "
                     "declare the port http/http2/grpc or remove the setting"))

    # ------------------------------------------------------------------ sidecar

    def lower_sidecar(self, svc: Service) -> Sidecar:
        sc = Sidecar(name=svc.name, identity=svc.identity,
                     index={"service": svc.name, "spiffe": svc.identity.spiffe, "inbound": {},
                            "outbound": {}})
        for port in svc.ports:
            self.lower_inbound(sc, svc, port)
        self.lower_outbound(sc, svc)
        return sc

    # ------------------------------------------------------------------ inbound

    def app_port(self, svc: Service, port: Port, ep: Endpoint) -> int:
        """An endpoint's port serves the first declared port; further ports keep their offset."""
        return ep.port + (port.number - svc.ports[0].number)

    def inbound_clusters(self, sc: Sidecar, svc: Service, port: Port) -> tuple[str, dict[str, str]]:
        """The local-app clusters of one port: all endpoints, and one per version with its own."""
        base = f"inbound|{port.number}|"
        sc.clusters[base] = self.app_cluster(base, svc, port, svc.all_endpoints())
        by_version = {}
        for v in svc.versions:
            name = f"inbound|{port.number}|{v.name}"
            sc.clusters[name] = self.app_cluster(name, svc, port, svc.endpoints_of(v.name))
            by_version[v.name] = name
        return base, by_version

    def app_cluster(self, name: str, svc: Service, port: Port, eps: Iterable[Endpoint]) -> dict[str, Any]:
        r = svc.resilience
        eps = sorted(set(eps), key=lambda e: (e.host, e.port))
        hosts = [(e.host, self.app_port(svc, port, e)) for e in eps]
        c = static_cluster(name, hosts)
        c["connect_timeout"] = "5s"
        lb = r.load_balance
        if lb is not None:
            c["lb_policy"] = LB_POLICY[lb.policy]
        if r.outlier is not None:
            c["outlier_detection"] = outlier(r.outlier)
        if r.health_check is not None:
            c["health_checks"] = [health_check(r.health_check)]
        if port.protocol in ("http2", "grpc"):
            c["typed_extension_protocol_options"] = http2_options()
        return c

    def lower_inbound(self, sc: Sidecar, svc: Service, port: Port) -> None:
        name = f"inbound_{port.number}"
        addr = self.opt("inbound_address", "0.0.0.0")
        base_cluster, by_version = self.inbound_clusters(sc, svc, port)
        rules = self.rules_for(svc)
        http = port.protocol in HTTP_PROTOCOLS
        if http:
            filters = [self.inbound_hcm(svc, port, rules, base_cluster, by_version)]
        else:
            filters = self.network_rbac(rules, name) + [
                typed("envoy.filters.network.tcp_proxy", TCP_PROXY,
                      {"stat_prefix": name, "cluster": base_cluster})]
        listener: dict[str, Any] = {"name": name, "address": socket(addr, port.number),
                                    "traffic_direction": "INBOUND"}
        tls = self.downstream_tls(sc.identity, http)
        if port.mtls == "strict":
            listener["filter_chains"] = [{"filters": filters, "transport_socket": tls}]
        elif port.mtls == "permissive":
            listener["listener_filters"] = [typed("envoy.filters.listener.tls_inspector", TLS_INSPECTOR, {})]
            listener["filter_chains"] = [
                {"name": "mtls", "filter_chain_match": {"transport_protocol": "tls"},
                 "filters": filters, "transport_socket": tls},
                {"name": "plaintext", "filter_chain_match": {"transport_protocol": "raw_buffer"},
                 "filters": filters},
            ]
        else:
            listener["filter_chains"] = [{"filters": filters}]
        sc.listeners.append(listener)
        sc.index["inbound"][port.name] = {"address": addr, "port": port.number, "mtls": port.mtls,
                                          "protocol": port.protocol}

    def downstream_tls(self, ident: Identity, http: bool) -> dict[str, Any]:
        ca, cert, key = self.cert_paths(ident)
        ctx: dict[str, Any] = {
            "tls_certificates": [{"certificate_chain": {"filename": cert},
                                  "private_key": {"filename": key}}],
            # Only peers of this mesh's CA and trust domain get past the handshake.
            "validation_context": {
                "trusted_ca": {"filename": ca},
                "match_typed_subject_alt_names": [{
                    "san_type": "URI",
                    "matcher": {"prefix": f"spiffe://{self.mesh.trust_domain}/"}}],
            },
        }
        if http:
            ctx["alpn_protocols"] = ["h2", "http/1.1"]
        return typed("envoy.transport_sockets.tls", DOWNSTREAM_TLS,
                     {"common_tls_context": ctx, "require_client_certificate": True})

    def network_rbac(self, rules: list[tuple[int, AuthzRule]], prefix: str) -> list[dict[str, Any]]:
        out = []
        deny = [r for r in rules if r[1].action == "deny"]
        allow = [r for r in rules if r[1].action == "allow"]
        if deny:
            out.append(typed("envoy.filters.network.rbac", RBAC_NET, {
                "stat_prefix": f"{prefix}_deny_",
                "rules": {"action": "DENY", "policies": rbac_policies(deny, self.mesh, False)}}))
        if self.mesh.authz == "deny_by_default":
            out.append(typed("envoy.filters.network.rbac", RBAC_NET, {
                "stat_prefix": f"{prefix}_allow_",
                "rules": {"action": "ALLOW", "policies": rbac_policies(allow, self.mesh, False)}}))
        return out

    def http_rbac(self, rules: list[tuple[int, AuthzRule]], one_identity: bool = False) -> list[dict[str, Any]]:
        """The deny filter (with ONE_SPIFFE_ID's policy first on mTLS ports), then the allow filter."""
        out = []
        deny = [r for r in rules if r[1].action == "deny"]
        allow = [r for r in rules if r[1].action == "allow"]
        if deny or one_identity:
            policies = {**(one_spiffe_id() if one_identity else {}), **rbac_policies(deny, self.mesh, True)}
            out.append(typed("envoy.filters.http.rbac", RBAC_HTTP, {"rules": {"action": "DENY", "policies": policies}}))
        if self.mesh.authz == "deny_by_default":
            out.append(typed("envoy.filters.http.rbac", RBAC_HTTP, {
                "rules": {"action": "ALLOW", "policies": rbac_policies(allow, self.mesh, True)}}))
        return out

    def inbound_hcm(self, svc: Service, port: Port, rules: list[tuple[int, AuthzRule]],
                    base_cluster: str, by_version: dict[str, str]) -> dict[str, Any]:
        filters = self.http_rbac(rules, one_identity=port.mtls != "disabled")
        rl = svc.resilience.rate_limit
        if rl is not None:
            filters.append(typed("envoy.filters.http.local_ratelimit", LOCAL_RL, {
                "stat_prefix": f"inbound_{port.number}_rate_limit",
                "token_bucket": {"max_tokens": rl.burst if rl.burst is not None else rl.requests,
                                 "tokens_per_fill": rl.requests, "fill_interval": FILL_INTERVAL[rl.unit]},
                "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"},
                                   "runtime_key": "meshc_rate_limit_enabled"},
                "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"},
                                    "runtime_key": "meshc_rate_limit_enforced"},
            }))
        if svc.faults:
            filters.append(typed("envoy.filters.http.fault", FAULT, {}))
        body_limit = svc.resilience.max_request_body
        if body_limit is not None:
            # After authorization, rate limit and faults, as on the native proxy (they answer on
            # the headers); the buffer filter answers 413 once the body passes the limit.
            filters.append(typed("envoy.filters.http.buffer", BUFFER, {"max_request_bytes": body_limit.bytes}))
        routes = self.inbound_routes(svc, base_cluster, by_version)
        hcm = self.hcm(f"inbound_{port.number}", filters, routes, inbound=True)
        # The version header is between sidecars only; the application never sees it.
        hcm["route_config"]["request_headers_to_remove"] = [VERSION_HEADER]
        return typed("envoy.filters.network.http_connection_manager", HCM, hcm)

    def inbound_routes(self, svc: Service, base_cluster: str, by_version: dict[str, str]) -> list[dict[str, Any]]:
        """Version chosen by the caller (header) x service faults (first matching fault wins;
        unconditional faults merge into every route)."""
        hash_policy = hash_policies(svc.resilience.load_balance)

        def action(cluster: str) -> dict[str, Any]:
            a: dict[str, Any] = {"cluster": cluster, "timeout": "0s"}
            if hash_policy:
                a["hash_policy"] = hash_policy
            return a

        unconditional = [f for f in svc.faults if not f.matches]
        conditional = [f for f in svc.faults if f.matches]
        fault_cases: list[tuple[Match | None, list[Fault]]] = [
            (m, [f, *unconditional]) for f in conditional for m in f.matches]
        fault_cases.append((None, unconditional))
        routes = []
        for match, faults in fault_cases:
            base = route_match(match)
            per_filter = {"envoy.filters.http.fault": fault_config(faults)} if faults else {}
            for version in sorted(by_version):
                r = {"match": merge_match(base, [{"name": VERSION_HEADER, "string_match": {"exact": version}}]),
                     "route": action(by_version[version])}
                if per_filter:
                    r["typed_per_filter_config"] = per_filter
                routes.append(r)
            r = {"match": base, "route": action(base_cluster)}
            if per_filter:
                r["typed_per_filter_config"] = per_filter
            routes.append(r)
        return routes

    def hcm(self, prefix: str, filters: list[dict[str, Any]], routes: list[dict[str, Any]],
            inbound: bool, domains: Iterable[str] = ("*",), vhosts: list[dict[str, Any]] | None = None,
            ) -> dict[str, Any]:
        strict = self.mesh.path_normalization == "strict"
        vhosts = vhosts or [{"name": prefix, "domains": list(domains), "routes": routes}]
        hcm: dict[str, Any] = {
            "stat_prefix": prefix,
            "codec_type": "AUTO",
            # Pinned normalization (docs/language.md): RFC 3986 dot segments and
            # percent-decoding of unreserved characters, merged slashes, encoded slashes -> 400.
            "normalize_path": strict,
            "merge_slashes": strict,
            "path_with_escaped_slashes_action": "REJECT_REQUEST" if strict else "KEEP_UNCHANGED",
            "generate_request_id": True,
            # Keep the caller's request id along the whole call chain (trace propagation); the
            # ingress gateway, facing the outside, overrides this and mints its own.
            "preserve_external_request_id": True,
            "route_config": {"name": prefix, "virtual_hosts": vhosts},
            "http_filters": filters + [typed("envoy.filters.http.router", ROUTER, {})],
            "tracing": {"random_sampling": {"value": self.mesh.observability.trace_sampling / 100}},
        }
        if inbound:
            hcm["forward_client_cert_details"] = "SANITIZE_SET"
            hcm["set_current_client_cert_details"] = {"uri": True}
        log = self.access_log()
        if log:
            hcm["access_log"] = log
        return hcm

    def access_log(self) -> list[dict[str, Any]]:
        kind = self.mesh.observability.access_log
        if kind == "off":
            return []
        fmt: dict[str, Any] = ({"json_format": ACCESS_LOG_JSON} if kind == "json"
                               else {"text_format_source": {"inline_string": ACCESS_LOG_TEXT}})
        return [typed("envoy.access_loggers.file", FILE_LOG, {"path": "/dev/stdout", "log_format": fmt})]

    # ------------------------------------------------------------------ outbound

    def dependencies(self, svc: Service) -> list[str]:
        """Declared calls, allow-rule edges from this service, and their route targets."""
        names = set(svc.calls) | self.allow_edges.get(svc.name, set())
        names.discard(svc.name)
        return sorted(n for n in names if self.mesh.service(n) is not None)

    def lower_outbound(self, sc: Sidecar, svc: Service) -> None:
        base = self.int_opt("outbound_base", 15100)
        slots = [(dep, p) for dep in self.dependencies(svc) for p in self.mesh.service(dep).ports]  # type: ignore[union-attr]
        for i, (dep, port) in enumerate(slots):
            callee = self.mesh.service(dep)
            assert callee is not None
            listen = base + i
            if listen > 65535:
                self.diags.append(Diagnostic(
                    "E304", f"service '{svc.name}' has too many dependencies for outbound ports "
                            f"from {base}", svc.span, label="outbound ports exhausted",
                    help="lower --option outbound_base=PORT or split the service's dependencies"))
                return
            self.lower_outbound_listener(sc, callee, port, listen)

    def lower_outbound_listener(self, sc: Sidecar, callee: Service, port: Port, listen: int) -> None:
        name = f"outbound_{callee.name}_{port.number}"
        http = port.protocol in HTTP_PROTOCOLS or (
            callee.external is not None and callee.external.tls_originate)
        if http:
            routes = self.outbound_routes(sc, callee, port)
            filters = []
            if any(r.faults for r in callee.routes):
                filters.append(typed("envoy.filters.http.fault", FAULT, {}))
            hcm = self.hcm(name, filters, routes, inbound=False, domains=["*"])
            chain_filter = typed("envoy.filters.network.http_connection_manager", HCM, hcm)
        else:
            dests = default_destinations(callee)
            tcp: dict[str, Any] = {"stat_prefix": name}
            clusters = [(self.outbound_cluster(sc, d, port), d.weight) for d in dests]
            if len(clusters) == 1:
                tcp["cluster"] = clusters[0][0]
            else:
                tcp["weighted_clusters"] = {"clusters": [{"name": c, "weight": w} for c, w in clusters]}
            chain_filter = typed("envoy.filters.network.tcp_proxy", TCP_PROXY, tcp)
        sc.listeners.append({"name": name, "address": socket("127.0.0.1", listen),
                             "traffic_direction": "OUTBOUND", "filter_chains": [{"filters": [chain_filter]}]})
        sc.index["outbound"].setdefault(callee.name, {})[port.name] = listen

    def outbound_routes(self, sc: Sidecar, callee: Service, port: Port) -> list[dict[str, Any]]:
        key = (callee.name, port.number)
        if key in self.route_cache:
            routes, needed = self.route_cache[key]
            for d, like in needed:
                self.outbound_cluster(sc, d, like)
            return routes
        self.recording = []
        try:
            routes = self.build_outbound_routes(sc, callee, port)
            self.route_cache[key] = (routes, self.recording)
        finally:
            self.recording = None
        return routes

    def build_outbound_routes(self, sc: Sidecar, callee: Service, port: Port) -> list[dict[str, Any]]:
        rules = callee.routes or (RouteRule(destinations=(Destination(service=callee.name),)),)
        routes = []
        for rule in rules:
            action = self.route_action(sc, callee, port, rule)
            unconditional = [f for f in rule.faults if not f.matches]
            for m in rule.matches or (None,):
                # A conditional fault of the rule: the rule's match AND the fault's, first.
                cases: list[tuple[Match | None, list[Fault]]] = []
                for f in (f for f in rule.faults if f.matches):
                    for fm in f.matches:
                        both = and_match(m, fm)
                        if both is None and m is not None and m.path is not None and fm.path is not None:
                            self.diags.append(Diagnostic(
                                "E305", "a conditional fault with a path condition, in a route rule that "
                                        "matches on the path, cannot be expressed when targeting envoy",
                                fm.span, label="second path condition",
                                help="move the path condition into the rule's `when`, or the fault to the "
                                     "service (service faults run in the callee's sidecar)"))
                        elif both is not None:
                            cases.append((both, [f, *unconditional]))
                cases.append((m, unconditional))
                for match, faults in cases:
                    entry = {"match": route_match(match), **action}
                    if faults:
                        entry["typed_per_filter_config"] = {"envoy.filters.http.fault": fault_config(faults)}
                    if rule.rewrite is not None and rule.rewrite.prefix is not None and "route" in entry:
                        # the matched prefix depends on the match, so the rewrite does too
                        path = match.path if match else None
                        route = {k: v for k, v in entry["route"].items()
                                 if k not in ("prefix_rewrite", "regex_rewrite")}
                        entry["route"] = {**route, **prefix_rewrite(path, rule.rewrite.prefix)}
                    routes.append(entry)
        return routes

    def resolve_port(self, svc: Service, like: Port) -> Port:
        """The port of `svc` a route to it uses: same number, else same protocol, else first."""
        return (next((p for p in svc.ports if p.number == like.number), None)
                or next((p for p in svc.ports if p.protocol == like.protocol), None) or svc.ports[0])

    def outbound_cluster(self, sc: Sidecar, d: Destination, like: Port) -> str:
        if self.recording is not None:
            self.recording.append((d, like))
        svc = self.mesh.service(d.service)
        assert svc is not None
        port = self.resolve_port(svc, like)
        name = f"outbound|{port.number}|{d.version or ''}|{svc.name}"
        if name not in sc.clusters:
            sc.clusters[name] = self.callee_cluster(name, sc, svc, port)
        return name

    def callee_cluster(self, name: str, sc: Sidecar, svc: Service, port: Port) -> dict[str, Any]:
        r = svc.resilience
        if svc.external is not None:
            ext = svc.external
            c = dns_cluster(name, ext.host, port.number, "LOGICAL_DNS")
            if ext.tls_originate:
                c["transport_socket"] = typed("envoy.transport_sockets.tls", UPSTREAM_TLS, {
                    "sni": ext.sni or ext.host,
                    "common_tls_context": {"validation_context": {
                        "trusted_ca": {"filename": self.opt("system_ca", "/etc/ssl/certs/ca-certificates.crt")},
                        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": ext.sni or ext.host}}],
                    }}})
        else:
            peer = self.opt("peer_host", "127.0.0.1")
            c = static_cluster(name, [(peer, port.number)]) if is_ip(peer) else dns_cluster(
                name, peer, port.number, "STRICT_DNS")
            if port.mtls != "disabled":
                c["transport_socket"] = self.upstream_tls(sc.identity, svc, port)
        c["connect_timeout"] = "5s"
        c["circuit_breakers"] = {"thresholds": [circuit_breaker(r.circuit_breaker, self.retry_budget(svc))]}
        if port.protocol in ("http2", "grpc"):
            c["typed_extension_protocol_options"] = http2_options()
        return c

    def retry_budget(self, svc: Service) -> Retry | None:
        """The cluster's retry budget: the service's retry, else the first rule that sets one."""
        candidates = [svc.resilience.retry] + [r.retry for r in svc.routes]
        return next((rt for rt in candidates if rt is not None and rt.budget is not None), None)

    def upstream_tls(self, ident: Identity, callee: Service, port: Port) -> dict[str, Any]:
        ca, cert, key = self.cert_paths(ident)
        ctx: dict[str, Any] = {
            "tls_certificates": [{"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}],
            # The callee must prove exactly its own SPIFFE identity.
            "validation_context": {
                "trusted_ca": {"filename": ca},
                "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": callee.identity.spiffe}}],
            },
        }
        if port.protocol in ("http2", "grpc"):
            ctx["alpn_protocols"] = ["h2"]
        return typed("envoy.transport_sockets.tls", UPSTREAM_TLS,
                     {"common_tls_context": ctx, "sni": f"{callee.name}.{callee.namespace}"})

    def route_action(self, sc: Sidecar, callee: Service, port: Port, rule: RouteRule) -> dict[str, Any]:
        """Everything of a route entry but its match."""
        out: dict[str, Any] = {}
        if rule.request_headers is not None:
            out.update(header_ops(rule.request_headers, "request"))
        if rule.response_headers is not None:
            out.update(header_ops(rule.response_headers, "response"))
        if rule.redirect is not None:
            out["redirect"] = self.redirect(rule)
            return out
        if rule.respond is not None:
            out["direct_response"] = {"status": rule.respond.status}
            if rule.respond.body:
                out["direct_response"]["body"] = {"inline_string": rule.respond.body}
            return out
        route: dict[str, Any] = {}
        dests = rule.destinations or (Destination(service=callee.name),)
        if len(dests) == 1:
            d = dests[0]
            route["cluster"] = self.outbound_cluster(sc, d, port)
            version_op = version_header_ops(d)
            for key, vals in version_op.items():
                out[key] = out.get(key, []) + vals
        else:
            route["weighted_clusters"] = {"clusters": [
                {"name": self.outbound_cluster(sc, d, port), "weight": d.weight, **version_header_ops(d)}
                for d in dests]}
        timeout = rule.timeout or callee.resilience.timeout or self.mesh.timeout
        # An explicit 0s: "no timeout" is written, never Envoy's hidden 15 s default.
        route["timeout"] = dur(timeout.ms) if timeout is not None and timeout.ms is not None else "0s"
        retry = rule.retry or callee.resilience.retry
        if retry is not None:
            route["retry_policy"] = retry_policy(retry)
        if rule.rewrite is not None:
            rw = rule.rewrite
            if rw.prefix is not None:
                route.update(prefix_rewrite(None, rw.prefix))  # refined per match by the caller
            elif rw.path is not None:
                route["regex_rewrite"] = {"pattern": {"regex": "^.*$"}, "substitution": rw.path}
            if rw.host is not None:
                route["host_rewrite_literal"] = rw.host
        if rule.mirror is not None:
            md = rule.mirror.destination
            mirror: dict[str, Any] = {"cluster": self.outbound_cluster(sc, md, port),
                                      "runtime_fraction": {"default_value": pct(rule.mirror.percent)}}
            mirror["request_headers_mutations"] = (
                [{"append": {"header": {"key": VERSION_HEADER, "value": md.version}, "append_action": OVERWRITE}}]
                if md.version else [{"remove": VERSION_HEADER}])
            route["request_mirror_policies"] = [mirror]
        hp = hash_policies(callee.resilience.load_balance)
        if hp:
            route["hash_policy"] = hp
        out["route"] = route
        return out

    def redirect(self, rule: RouteRule) -> dict[str, Any]:
        rd = rule.redirect
        assert rd is not None
        out: dict[str, Any] = {}
        if rd.code in REDIRECT_CODES:
            out["response_code"] = REDIRECT_CODES[rd.code]
        else:
            self.diags.append(Diagnostic(
                "E303", f"redirect code {rd.code} cannot be expressed when targeting envoy", rd.span,
                label="unsupported code", help="Envoy redirects with 301, 302, 303, 307 or 308"))
        for key, val in (("path_redirect", rd.path), ("host_redirect", rd.host),
                         ("scheme_redirect", rd.scheme), ("port_redirect", rd.port)):
            if val is not None:
                out[key] = val
        return out

    # ------------------------------------------------------------------ ingress gateway

    def lower_ingress_gateway(self) -> Sidecar | None:
        exposed = [s for s in self.mesh.services if s.expose is not None and s.ports and s.external is None]
        if not exposed:
            return None
        ident = self.mesh.ingress_identity
        gw = Sidecar(name="ingress-gateway", identity=ident,
                     index={"service": "ingress-gateway", "spiffe": ident.spiffe, "inbound": {}, "outbound": {}})
        by_port: dict[int, list[Service]] = {}
        for s in exposed:
            assert s.expose is not None
            by_port.setdefault(s.expose.port, []).append(s)
        addr = self.opt("inbound_address", "0.0.0.0")
        for listen, services in sorted(by_port.items()):
            # One virtual host per domain (Envoy rejects a domain in two virtual hosts); a domain
            # several services expose gets the routes of each, in service order.
            by_domain: dict[str, list[dict[str, Any]]] = {}
            for s in services:
                assert s.expose is not None
                port = next((p for p in s.ports if p.protocol in HTTP_PROTOCOLS), s.ports[0])
                default = next((r for r in s.routes if r.is_default), None)
                rule = RouteRule(destinations=default.destinations if default and default.destinations
                                 else (Destination(service=s.name),))
                action = self.route_action(gw, s, port, rule)
                paths = s.expose.paths or (PathMatch(kind="prefix", value="/"),)
                routes = [{"match": route_path(p), **action} for p in paths]
                for host in sorted(set(s.expose.hosts)):
                    by_domain.setdefault(host, []).extend(routes)
            vhosts = [{"name": f"ingress_{listen}_{i}", "domains": [host], "routes": by_domain[host]}
                      for i, host in enumerate(sorted(by_domain))]
            name = f"ingress_{listen}"
            hcm = self.hcm(name, [], [], inbound=False, vhosts=vhosts)
            hcm["preserve_external_request_id"] = False
            gw.listeners.append({"name": name, "address": socket(addr, listen), "traffic_direction": "INBOUND",
                                 "filter_chains": [{"filters": [
                                     typed("envoy.filters.network.http_connection_manager", HCM, hcm)]}]})
            gw.index["inbound"][f"http-{listen}"] = {"address": addr, "port": listen, "mtls": "disabled",
                                                     "protocol": "http"}
        return gw


# --------------------------------------------------------------------------- output


class _FastDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """libyaml's emitter with the representers of backends.base.dump_yaml (same bytes, ~5x
    faster: Envoy output is the largest any backend writes, one file per sidecar)."""


_FastDumper.add_representer(str, lambda d, s: d.represent_scalar(
    "tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))
_FastDumper.add_representer(tuple, lambda d, data: d.represent_list(list(data)))


def to_yaml(data: Any) -> str:
    if not getattr(yaml, "__with_libyaml__", False):
        return dump_yaml(data)
    return yaml.dump(data, Dumper=_FastDumper, sort_keys=True, default_flow_style=False,  # type: ignore[no-any-return]
                     allow_unicode=True, width=120)


def put_yaml(bundle: Bundle, path: str, data: Any) -> None:
    bundle.add_text(path, to_yaml(data))


def put_json(bundle: Bundle, path: str, data: Any) -> None:
    bundle.add_text(path, json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n")


# --------------------------------------------------------------------------- pure helpers


def xds(type_url: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"version_info": "meshc", "resources": [{"@type": type_url, **r} for r in resources]}


def static_cluster(name: str, hosts: Iterable[tuple[str, int]]) -> dict[str, Any]:
    hosts = list(hosts)
    dns = any(not is_ip(h) for h, _ in hosts)
    return {
        "name": name,
        "type": "STRICT_DNS" if dns else "STATIC",
        "load_assignment": {"cluster_name": name, "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": socket(h, p)}} for h, p in hosts]}]},
    }


def dns_cluster(name: str, host: str, port: int, kind: str) -> dict[str, Any]:
    c = static_cluster(name, [(host, port)])
    c["type"] = kind
    c["dns_lookup_family"] = "V4_PREFERRED"
    return c


def default_destinations(svc: Service) -> tuple[Destination, ...]:
    rule = next((r for r in svc.routes if r.is_default and r.destinations), None)
    return rule.destinations if rule else (Destination(service=svc.name),)


def prefix_rewrite(path: PathMatch | None, new: str) -> dict[str, Any]:
    """`rewrite prefix NEW`: replace the part of the path the match matched.

    Envoy's prefix_rewrite does that for `prefix` and `exact` matches. For `under "/api"` the
    matched part is the segment `/api` plus its slash when NEW ends with one, so that
    `/api/items` -> `/items` (not `//items`) and `/api` -> `/`. For a regex match, the matched
    part is the whole path."""
    if path is None:
        return {"prefix_rewrite": new}
    if path.kind == "under":
        base = re.escape(path.value.rstrip("/"))
        pattern = f"^{base}/?" if new.endswith("/") else f"^{base}"
        return {"regex_rewrite": {"pattern": {"regex": pattern}, "substitution": new}}
    if path.kind == "regex":
        return {"regex_rewrite": {"pattern": {"regex": "^.*$"}, "substitution": new}}
    return {"prefix_rewrite": new}


def version_header_ops(d: Destination) -> dict[str, Any]:
    if d.version:
        return {"request_headers_to_add": [
            {"header": {"key": VERSION_HEADER, "value": d.version}, "append_action": OVERWRITE}]}
    return {"request_headers_to_remove": [VERSION_HEADER]}


def literal_value(v: str) -> str:
    """A header value Envoy adds as written: in `*_headers_to_add` a `%...%` is a command
    (`%DOWNSTREAM_REMOTE_ADDRESS%` would be expanded, `%zz` refused), and `%%` is a literal `%`."""
    return v.replace("%", "%%")


def header_ops(ops: HeaderOps, direction: str) -> dict[str, Any]:
    add = [{"header": {"key": k, "value": literal_value(v)}, "append_action": OVERWRITE} for k, v in ops.set]
    add += [{"header": {"key": k, "value": literal_value(v)}, "append_action": APPEND} for k, v in ops.add]
    out: dict[str, Any] = {}
    if add:
        out[f"{direction}_headers_to_add"] = add
    if ops.remove:
        out[f"{direction}_headers_to_remove"] = list(ops.remove)
    return out


def retry_policy(rt: Retry) -> dict[str, Any]:
    conds = [RETRY_ON[c] for c in rt.on]
    if rt.status_codes:
        conds.append("retriable-status-codes")
    out: dict[str, Any] = {"retry_on": ",".join(conds) or "5xx", "num_retries": rt.attempts}
    if rt.status_codes:
        out["retriable_status_codes"] = list(rt.status_codes)
    if rt.per_try_ms is not None:
        out["per_try_timeout"] = dur(rt.per_try_ms)
    if rt.backoff_base_ms is not None:
        out["retry_back_off"] = {"base_interval": dur(rt.backoff_base_ms)}
        if rt.backoff_max_ms is not None:
            out["retry_back_off"]["max_interval"] = dur(rt.backoff_max_ms)
    return out


UNLIMITED = 2**32 - 1


def circuit_breaker(cb: CircuitBreaker | None, budget: Retry | None) -> dict[str, Any]:
    """Thresholds of a callee cluster. A limit the mesh does not set is written as unlimited:
    Envoy's hidden defaults (1024 connections/requests, 3 concurrent retries) would otherwise
    throttle a service that declared no circuit breaker, or cut `retry 5` short under load."""
    cb = cb or CircuitBreaker()
    out: dict[str, Any] = {"priority": "DEFAULT"}
    for key, val in (("max_connections", cb.max_connections), ("max_pending_requests", cb.max_pending),
                     ("max_requests", cb.max_requests), ("max_retries", cb.max_retries)):
        out[key] = UNLIMITED if val is None else val
    if budget is not None and budget.budget is not None:
        # A budget replaces max_retries in Envoy (a share of active requests, at least 3 retries).
        out["retry_budget"] = {"budget_percent": {"value": budget.budget / 100}}
    return out


def outlier(o: Outlier) -> dict[str, Any]:
    return {"consecutive_5xx": o.consecutive_5xx, "interval": dur(o.interval_ms),
            "base_ejection_time": dur(o.eject_ms), "max_ejection_percent": o.max_percent // 100,
            "enforcing_consecutive_5xx": 100,
            # Only consecutive 5xx ejects, as the model says; success-rate ejection stays off.
            "enforcing_success_rate": 0}


def health_check(h: HealthCheck) -> dict[str, Any]:
    out: dict[str, Any] = {"timeout": dur(h.timeout_ms), "interval": dur(h.interval_ms),
                           "unhealthy_threshold": h.unhealthy, "healthy_threshold": h.healthy}
    if h.protocol == "http":
        out["http_health_check"] = {"path": h.path}
    elif h.protocol == "grpc":
        out["grpc_health_check"] = {}
    else:
        out["tcp_health_check"] = {}
    return out


def hash_policies(lb: LoadBalance | None) -> list[dict[str, Any]]:
    if lb is None or lb.policy != "consistent_hash" or lb.hash_on is None:
        return []
    if lb.hash_on == "header":
        return [{"header": {"header_name": lb.hash_key}}]
    if lb.hash_on == "cookie":
        cookie: dict[str, Any] = {"name": lb.hash_key}
        if lb.cookie_ttl_ms is not None:
            cookie["ttl"] = dur(lb.cookie_ttl_ms)
        return [{"cookie": cookie}]
    if lb.hash_on == "query":
        return [{"query_parameter": {"name": lb.hash_key}}]
    return [{"connection_properties": {"source_ip": True}}]


def fault_config(faults: list[Fault]) -> dict[str, Any]:
    """One HTTPFault from faults in priority order (first delay and first abort win)."""
    out: dict[str, Any] = {"@type": FAULT}
    delay = next((f for f in faults if f.delay_ms is not None), None)
    abort = next((f for f in faults if f.abort_status is not None), None)
    if delay is not None:
        assert delay.delay_ms is not None
        out["delay"] = {"fixed_delay": dur(delay.delay_ms), "percentage": pct(delay.delay_percent)}
    if abort is not None:
        out["abort"] = {"http_status": abort.abort_status, "percentage": pct(abort.abort_percent)}
    return out


def http2_options() -> dict[str, Any]:
    """HTTP/2 towards an http2/grpc upstream (Envoy would otherwise speak HTTP/1.1)."""
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": HTTP_OPTIONS, "explicit_http_config": {"http2_protocol_options": {}}}}
