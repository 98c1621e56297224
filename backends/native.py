"""The native target: JSON configs for meshc's own asyncio sidecar proxy (meshc.runtime).

Output (schema: meshc/runtime/config.py, exported to docs/native-config.schema.json, version 1):
- `mesh.json`: the index of sidecars with their config file and listener ports;
- `<service>.json`: one sidecar per mesh service (external services have none; an exposed
  mesh also gets `_ingress.json`, the ingress gateway).

Topology (docs/native.md): a service's sidecar has one *inbound* listener per (application
instance, service port) that terminates mTLS, normalizes the path, authorizes and forwards to
that instance; and one *outbound* loopback listener per (callee, callee port) in `calls`, which
applies the callee's route table and load-balances over the callee's inbound listeners.

Ports are allocated deterministically from the `base_port` option (default 15000): sidecars in
order (ingress gateway first, then services by name); for each, the admin (metrics) port, then
its inbound listeners (instances in declaration order x ports in declaration order), then its
outbound listeners (callees by name x their ports in declaration order).

Semantics are the Envoy target's: `retry N` = N retries; the route timeout covers every retry
and "no timeout" is written explicitly (`timeout_ms: null`); `prefix` is a byte prefix and
`under` a segment prefix; deny rules are listed (and evaluated) before allow rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, ClassVar, Literal

from meshc.backends.base import FEATURES, Backend, Bundle, Option, file_path, host_address, integer

from meshc.certs import cert_file_names
from meshc.diagnostics import Diagnostic
from meshc.model import (
    HTTP_PROTOCOLS,
    AuthzRule,
    Destination,
    Endpoint,
    Fault,
    HeaderOps,
    Identity,
    Match,
    Mesh,
    PathMatch,
    Port,
    Retry,
    RouteRule,
    Service,
    Source,
    Span,
    StringMatch,
    Timeout,
)
from meshc.runtime import config as C

DEFAULT_BASE_PORT = 15000
INGRESS = "_ingress"

# Protocols the runtime proxies at L7 vs as bytes. The runtime speaks HTTP/1.1 only: HTTP/2 and
# gRPC ports are proxied at L4 (mTLS, connection-level authorization, load balancing per
# connection), and W312 says which per-request settings cannot apply there.
_LISTENER_PROTOCOL: dict[str, Literal["http", "tcp"]] = {
    "http": "http", "tcp": "tcp", "tls": "tcp", "http2": "tcp", "grpc": "tcp"}


def _pct(p: int) -> float:
    """Model percent (hundredths) -> config percent (float 0..100)."""
    return p / 100


@dataclass
class _Instance:
    """One application instance of a service: an endpoint (or none) and the versions it serves."""

    endpoint: Endpoint | None
    versions: list[str] = field(default_factory=list)


def instances(svc: Service) -> list[_Instance]:
    """The service's instances in declaration order; a version with no endpoints anywhere gets
    a placeholder instance (no app: `meshc up` runs a demo upstream there)."""
    out: list[_Instance] = []
    by_ep: dict[str, _Instance] = {}
    if not svc.versions:
        return [_Instance(ep) for ep in svc.endpoints] or [_Instance(None)]
    for v in svc.versions:
        eps = svc.endpoints_of(v.name)
        if not eps:
            out.append(_Instance(None, [v.name]))
            continue
        for ep in eps:
            inst = by_ep.get(str(ep))
            if inst is None:
                inst = by_ep[str(ep)] = _Instance(ep)
                out.append(inst)
            inst.versions.append(v.name)
    return out


def cluster_name(service: str, port: int, version: str | None) -> str:
    return f"outbound|{port}|{version or ''}|{service}"


class NativeBackend(Backend):
    name: ClassVar[str] = "native"
    description: ClassVar[str] = "meshc's own asyncio sidecar proxy (meshc proxy / meshc up)"
    OPTIONS: ClassVar[Mapping[str, Option]] = {
        "base_port": Option(f"first port of the deterministic allocation (default {DEFAULT_BASE_PORT})", integer(1024, 65000)),
        "certs_dir": Option("certificate directory relative to mesh.json (default: certs)", file_path),
        "host": Option("address every listener binds (default 127.0.0.1)", host_address),
    }
    # Everything but SLOs (the runtime exports the metrics; it does not evaluate objectives).
    CAPABILITIES: ClassVar[frozenset[str]] = frozenset(f for f in FEATURES if f != "slo")

    # ------------------------------------------------------------------ entry point

    @staticmethod
    def value_gaps(mesh: Mesh) -> list[Diagnostic]:
        """Settings whose feature the runtime has, but not with these values (E313)."""
        out = []
        for svc in mesh.services:
            lb, hc = svc.resilience.load_balance, svc.resilience.health_check
            if lb is not None and lb.hash_on == "cookie" and lb.cookie_ttl_ms is not None:
                out.append(Diagnostic(
                    "E313", "the native proxy hashes on an existing cookie but does not issue one (`ttl`)",
                    lb.span, label="cookie ttl", help="drop `ttl ...` (clients must send the cookie themselves), "
                    "or compile for envoy, which issues it"))
            if hc is not None and hc.protocol == "grpc":
                out.append(Diagnostic(
                    "E313", "the native proxy has no gRPC health checks (it proxies gRPC ports as TCP)", hc.span,
                    label="grpc health check", help="use `health_check tcp ...`, or compile for envoy"))
        return out

    def lower(self, mesh: Mesh) -> Bundle:
        bundle = Bundle()
        self.base_port = self.values.get("base_port", DEFAULT_BASE_PORT)  # 1024..65000, checked as an option
        self.host = self.options.get("host", "127.0.0.1")
        self.certs = self.options.get("certs_dir", "certs").rstrip("/")
        self.mesh = mesh
        self._index_rules(mesh)
        self._alloc(mesh)
        if self._next_port > 65535:
            bundle.diagnostics.append(Diagnostic(
                "E311", f"the native port range starting at {self.base_port} overflows 65535 "
                f"({self._next_port - self.base_port} ports needed)",
                help="pass a lower --option base_port=..."))
            return bundle
        bundle.diagnostics += self.l4_warnings(mesh) + self.value_gaps(mesh)
        if any(d.severity == "error" for d in bundle.diagnostics):
            return bundle
        uses_tls = False
        entries = []
        for name in self._order:
            cfg = self.lower_sidecar(name)
            uses_tls = uses_tls or any(x.tls.mode != "disabled" for x in cfg.inbound) or any(
                c.tls is not None and c.tls.mode == "mtls" for c in cfg.clusters)
            fname = f"{name}.json"
            # pydantic's serializer writes the JSON (fields in schema order, deterministic):
            # json.dumps with indent runs in pure Python and dominated compile time at scale.
            bundle.add_text(fname, cfg.model_dump_json(indent=2) + "\n")
            entries.append(C.IndexEntry(
                service=name, config=fname, identity=cfg.identity, admin_port=cfg.admin.port,
                inbound=tuple(C.IndexListener(name=x.name, port=x.port, protocol=x.protocol,
                                              service_port=x.service_port, versions=x.versions, app=x.app)
                              for x in cfg.inbound),
                outbound=tuple(C.IndexListener(name=x.name, port=x.port, protocol=x.protocol,
                                               callee=x.callee, service_port=x.callee_port)
                               for x in cfg.outbound)))
        index = C.MeshIndex(mesh=mesh.name, base_port=self.base_port,
                            certs_dir=self.certs if uses_tls else None, sidecars=tuple(entries))
        bundle.add_text("mesh.json", index.model_dump_json(indent=2) + "\n")
        return bundle

    def _index_rules(self, mesh: Mesh) -> None:
        """Rules by destination and allow edges by source, built once: per-service lookups
        stay O(rules that concern the service), so compile time grows linearly."""
        self._rules_for: dict[str, list[AuthzRule]] = {}
        self._wildcard_rules: list[AuthzRule] = []
        self._allowed_callees: dict[str, set[str]] = {}
        self._pos = {id(r): i for i, r in enumerate(mesh.rules)}
        for r in mesh.rules:
            for d in dict.fromkeys(r.destinations):
                (self._wildcard_rules if d == "*" else self._rules_for.setdefault(d, [])).append(r)
            if r.action == "allow":
                for src in r.sources:
                    if src.kind == "service":
                        self._allowed_callees.setdefault(src.name, set()).update(
                            d for d in r.destinations if d != "*")
        self._instances: dict[str, list[_Instance]] = {s.name: instances(s) for s in mesh.services}
        # Mesh.service() goes through a pydantic private attribute: slow enough to matter at scale.
        self._svc: dict[str, Service] = {s.name: s for s in mesh.services}
        self._cluster_cache: dict[str, C.ClusterCfg] = {}

    def _rules(self, service: str) -> list[AuthzRule]:
        """Rules naming `service` or `*`, in source order."""
        own = self._rules_for.get(service, [])
        if not self._wildcard_rules:
            return own
        if not own:
            return self._wildcard_rules
        merged = {id(r): r for r in own + self._wildcard_rules}
        return sorted(merged.values(), key=lambda r: self._pos[id(r)])

    def l4_warnings(self, mesh: Mesh) -> list[Diagnostic]:
        """W312: per-request settings on a service whose HTTP/2 or gRPC port is proxied at L4."""
        out = []
        for svc in mesh.services:
            l4 = [p for p in svc.ports if p.protocol in ("http2", "grpc")]
            if not l4:
                continue
            r = svc.resilience
            used = [name for name, present in (
                ("route rules", bool(svc.routes)), ("timeouts", r.timeout is not None),
                ("retries", r.retry is not None), ("faults", bool(svc.faults)),
                ("rate limits", r.rate_limit is not None),
                ("request body limits", r.max_request_body is not None),
                ("authorization by method, path or header", any(
                    a.methods or a.paths or a.not_paths or a.headers for a in self._rules(svc.name))),
            ) if present]
            if used:
                p = l4[0]
                out.append(Diagnostic(
                    "W312", f"{p.protocol} port {p.number} of '{svc.name}' is proxied as TCP by the native "
                    f"target: its {', '.join(used)} do not apply to it", p.span,
                    label="proxied at L4",
                    help="the native proxy speaks HTTP/1.1; declare the port `http` to get per-request "
                         "behaviour, or use the envoy target"))
        return out

    # ------------------------------------------------------------------ ports

    def _alloc(self, mesh: Mesh) -> None:
        """Deterministic port allocation (the order is documented in docs/native.md)."""
        port = self.base_port
        self._order: list[str] = []
        self._admin: dict[str, int] = {}
        self._inbound: dict[tuple[str, int, int], int] = {}  # (service, instance#, svc port) -> port
        self._outbound: dict[tuple[str, str, int], int] = {}  # (caller, callee, callee port) -> port
        self._ingress_ports: dict[int, int] = {}  # exposed port -> listener port
        if any(s.expose is not None for s in mesh.services):
            self._order.append(INGRESS)
            self._admin[INGRESS] = port
            port += 1
            for p in sorted({s.expose.port for s in mesh.services if s.expose is not None}):
                self._ingress_ports[p] = port
                port += 1
        for svc in mesh.services:
            if svc.external is not None:
                continue
            self._order.append(svc.name)
            self._admin[svc.name] = port
            port += 1
            for i, _inst in enumerate(self._instances[svc.name]):
                for sp in svc.ports:
                    self._inbound[(svc.name, i, sp.number)] = port
                    port += 1
            for callee in self._callees(svc):
                for cp in callee.ports:
                    self._outbound[(svc.name, callee.name, cp.number)] = port
                    port += 1
        self._next_port = port

    def _callees(self, svc: Service) -> list[Service]:
        """Declared `calls`, services an allow rule lets it call by name, and whatever those
        services' route tables send to (splits across services), sorted by name."""
        names = set(svc.calls) | self._allowed_callees.get(svc.name, set())
        for n in list(names):
            callee = self._svc.get(n)
            for rule in callee.routes if callee else ():
                names.update(d.service for d in rule.destinations)
                if rule.mirror is not None:
                    names.add(rule.mirror.destination.service)
        names.discard(svc.name)
        found = (self._svc.get(n) for n in sorted(names))
        return [c for c in found if c is not None and c.ports]

    # ------------------------------------------------------------------ sidecars

    def lower_sidecar(self, name: str) -> C.SidecarConfig:
        mesh = self.mesh
        obs = C.ObservabilityCfg(access_log=mesh.observability.access_log, metrics=mesh.observability.metrics,
                                 trace_sampling_percent=_pct(mesh.observability.trace_sampling))
        if name == INGRESS:
            ident = mesh.ingress_identity
            outbound = self.lower_ingress()
            inbound: list[C.InboundListenerCfg] = []
        else:
            svc = self._svc.get(name)
            assert svc is not None
            ident = svc.identity
            inbound = self.lower_inbound(svc)
            body_limit = svc.resilience.max_request_body
            if body_limit is not None:  # on the service's own HTTP listeners, not its outbound ones
                inbound = [lst.model_copy(update={"max_request_body_bytes": body_limit.bytes})
                           if lst.protocol == "http" else lst for lst in inbound]
            outbound = [self.lower_outbound(svc, callee, p)
                        for callee in self._callees(svc) for p in callee.ports]
        clusters = self.lower_clusters(ident, outbound)
        return C.SidecarConfig(mesh=mesh.name, service=name, identity=ident.spiffe,
                               admin=C.AdminCfg(host=self.host, port=self._admin[name]),
                               inbound=tuple(inbound), outbound=tuple(outbound), clusters=tuple(clusters),
                               observability=obs)

    def _cert_paths(self, ident: Identity) -> dict[str, str]:
        """The layout `meshc certs` writes (meshc/certs.py)."""
        cert, key = cert_file_names(ident)
        return {"ca": f"{self.certs}/ca.pem", "cert": f"{self.certs}/{cert}", "key": f"{self.certs}/{key}"}

    def lower_inbound(self, svc: Service) -> list[C.InboundListenerCfg]:
        out = []
        rate = svc.resilience.rate_limit
        rate_cfg = None if rate is None else C.RateLimitCfg(
            tokens_per_second=rate.per_second, burst=rate.burst or rate.requests)
        faults = tuple(self.lower_fault(f) for f in svc.faults)
        hc = svc.resilience.health_check
        for i, inst in enumerate(self._instances[svc.name]):
            tag = "-".join(inst.versions) if inst.versions else "default"
            for p in svc.ports:
                proto = _LISTENER_PROTOCOL.get(p.protocol, "http")
                app = None
                if inst.endpoint is not None:
                    # An endpoint's port serves the first declared port; further ports keep their
                    # offset from it (as on the Envoy target).
                    app = C.EndpointCfg(host=inst.endpoint.host,
                                        port=inst.endpoint.port + (p.number - svc.ports[0].number))
                tls = C.InboundTlsCfg(mode=p.mtls, **(self._cert_paths(svc.identity)
                                                      if p.mtls != "disabled" else {}))
                out.append(C.InboundListenerCfg(
                    name=f"inbound|{p.number}|{tag}|{i}", protocol=proto, host=self.host,
                    port=self._inbound[(svc.name, i, p.number)], service_port=p.number,
                    versions=tuple(inst.versions), app=app, tls=tls,
                    authz=self.lower_authz(svc.name, p.number),
                    path_normalization=self.mesh.path_normalization,
                    rate_limit=rate_cfg if proto == "http" else None,
                    faults=faults if proto == "http" else (),
                    health_check_path=hc.path if hc is not None and hc.protocol == "http" and proto == "http"
                    else None))
        return out

    def lower_outbound(self, caller: Service, callee: Service, port: Port) -> C.OutboundListenerCfg:
        proto = _LISTENER_PROTOCOL.get(port.protocol, "http")
        common: dict[str, Any] = dict(
            name=f"outbound|{port.number}||{callee.name}", protocol=proto, host=self.host,
            port=self._outbound[(caller.name, callee.name, port.number)], callee=callee.name,
            callee_port=port.number, path_normalization=self.mesh.path_normalization)
        if callee.external is not None:
            common["authz"] = self.lower_authz(callee.name, port.number)
        if proto == "tcp":
            return C.OutboundListenerCfg(cluster=cluster_name(callee.name, port.number, None), **common)
        return C.OutboundListenerCfg(routes=tuple(self.lower_routes(callee, port)), **common)

    def lower_ingress(self) -> list[C.OutboundListenerCfg]:
        """One listener per exposed port; exposed paths (and hosts) route to the service's
        endpoints. The service's own route table is applied by its callers' sidecars, not here."""
        out = []
        for ext_port, listen in self._ingress_ports.items():
            routes = []
            for svc in self.mesh.services:
                if svc.expose is None or svc.expose.port != ext_port:
                    continue
                port = next((p for p in svc.ports if p.protocol in HTTP_PROTOCOLS), None)
                if port is None:
                    continue
                hosts = [h for h in svc.expose.hosts if h != "*"]
                host_match = () if not hosts else (C.StringMatchCfg(
                    name="host", kind="regex", value=_host_regex(hosts)),)
                paths = svc.expose.paths or (PathMatch(kind="prefix", value="/"),)
                # To the service's default destination (its `otherwise` rule), as the Envoy target.
                default = next((r for r in svc.routes if r.is_default and r.destinations), None)
                dests = default.destinations if default else (Destination(service=svc.name),)
                routes.append(C.RouteCfg(
                    name=f"ingress|{svc.name}",
                    matches=tuple(C.MatchCfg(path=self.lower_path(pm), headers=host_match) for pm in paths),
                    clusters=_weighted([(self._cluster(d, port), d.weight) for d in dests]),
                    timeout_ms=self._timeout(None, svc), retry=self.lower_retry(svc.resilience.retry)))
            out.append(C.OutboundListenerCfg(
                name=f"ingress|{ext_port}", protocol="http", host=self.host, port=listen,
                callee="*", callee_port=ext_port, path_normalization=self.mesh.path_normalization,
                routes=tuple(routes)))
        return out

    # ------------------------------------------------------------------ routes

    def _timeout(self, rule_timeout: Timeout | None, svc: Service) -> int | None:
        """Route timeout by precedence; None everywhere means explicitly no timeout."""
        for t in (rule_timeout, svc.resilience.timeout, self.mesh.timeout):
            if t is not None:
                return t.ms
        return None

    def _dest_port(self, dest: Destination, port: Port) -> int:
        svc = self._svc.get(dest.service)
        if svc is None or any(p.number == port.number for p in svc.ports):
            return port.number
        http = [p for p in svc.ports if p.protocol in HTTP_PROTOCOLS] or list(svc.ports)
        return http[0].number if http else port.number

    def _cluster(self, dest: Destination, port: Port) -> str:
        return cluster_name(dest.service, self._dest_port(dest, port), dest.version)

    def lower_routes(self, svc: Service, port: Port) -> list[C.RouteCfg]:
        if not svc.routes:
            return [C.RouteCfg(name=f"{svc.name}|default",
                               clusters=(C.WeightedCluster(cluster=cluster_name(svc.name, port.number, None),
                                                           weight=10_000),),
                               timeout_ms=self._timeout(None, svc),
                               retry=self.lower_retry(svc.resilience.retry))]
        return [self.lower_route(svc, port, i, rule) for i, rule in enumerate(svc.routes)]

    def lower_route(self, svc: Service, port: Port, i: int, rule: RouteRule) -> C.RouteCfg:
        kw: dict[str, Any] = {}
        if rule.redirect is not None:
            r = rule.redirect
            kw["redirect"] = C.RedirectCfg(path=r.path, host=r.host, scheme=r.scheme, port=r.port, code=r.code)
        elif rule.respond is not None:
            kw["respond"] = C.DirectResponseCfg(status=rule.respond.status, body=rule.respond.body)
        else:
            kw["clusters"] = _weighted([(self._cluster(d, port), d.weight) for d in rule.destinations])
        if rule.rewrite is not None:
            kw["rewrite"] = C.RewriteCfg(prefix=rule.rewrite.prefix, path=rule.rewrite.path,
                                         host=rule.rewrite.host)
        if rule.mirror is not None:
            kw["mirror"] = C.MirrorCfg(cluster=self._cluster(rule.mirror.destination, port),
                                       percent=_pct(rule.mirror.percent))
        return C.RouteCfg(
            name=f"{svc.name}|{i}", matches=tuple(self.lower_match(m) for m in rule.matches),
            request_headers=self.lower_header_ops(rule.request_headers),
            response_headers=self.lower_header_ops(rule.response_headers),
            timeout_ms=self._timeout(rule.timeout, svc),
            retry=self.lower_retry(rule.retry if rule.retry is not None else svc.resilience.retry),
            faults=tuple(self.lower_fault(f) for f in rule.faults), **kw)

    def lower_retry(self, r: Retry | None) -> C.RetryCfg | None:
        if r is None or r.attempts <= 0:
            return None
        base = r.backoff_base_ms if r.backoff_base_ms is not None else 25
        return C.RetryCfg(num_retries=r.attempts, on=tuple(r.on), status_codes=tuple(r.status_codes),
                          per_try_timeout_ms=r.per_try_ms, backoff_base_ms=base,
                          backoff_max_ms=r.backoff_max_ms if r.backoff_max_ms is not None else base * 10,
                          budget_percent=None if r.budget is None else _pct(r.budget))

    @staticmethod
    def lower_path(p: PathMatch) -> C.PathMatchCfg:
        return C.PathMatchCfg(kind=p.kind, value=p.value)

    @staticmethod
    def lower_string(m: StringMatch) -> C.StringMatchCfg:
        return C.StringMatchCfg(name=m.name, kind=m.kind, value=m.value)

    def lower_match(self, m: Match) -> C.MatchCfg:
        return C.MatchCfg(path=None if m.path is None else self.lower_path(m.path),
                          headers=tuple(C.StringMatchCfg(name=h.name.lower(), kind=h.kind, value=h.value)
                                        for h in m.headers),
                          query=tuple(self.lower_string(q) for q in m.query),
                          methods=tuple(x.upper() for x in m.methods))

    @staticmethod
    def lower_header_ops(h: HeaderOps | None) -> C.HeaderOpsCfg | None:
        if h is None:
            return None
        return C.HeaderOpsCfg(set=tuple(C.HeaderKV(name=k, value=v) for k, v in h.set),
                              add=tuple(C.HeaderKV(name=k, value=v) for k, v in h.add),
                              remove=tuple(h.remove))

    def lower_fault(self, f: Fault) -> C.FaultCfg:
        return C.FaultCfg(matches=tuple(self.lower_match(m) for m in f.matches), delay_ms=f.delay_ms,
                          delay_percent=_pct(f.delay_percent), abort_status=f.abort_status,
                          abort_percent=_pct(f.abort_percent))

    # ------------------------------------------------------------------ clusters

    def lower_clusters(self, own_identity: Identity, listeners: Iterable[C.OutboundListenerCfg]) -> list[C.ClusterCfg]:
        names: set[str] = set()
        for lst in listeners:
            if lst.cluster:
                names.add(lst.cluster)
            for r in lst.routes:
                names.update(w.cluster for w in r.clusters)
                if r.mirror:
                    names.add(r.mirror.cluster)
        return [self.lower_cluster(n, own_identity) for n in sorted(names)]

    def lower_cluster(self, name: str, own_identity: Identity) -> C.ClusterCfg:
        """A cluster as every caller sees it; only the client certificate differs per caller."""
        cached = self._cluster_cache.get(name)
        if cached is None:
            cached = self._cluster_cache[name] = self._lower_cluster(name)
        if cached.tls is not None and cached.tls.mode == "mtls":
            return cached.model_copy(update={"tls": cached.tls.model_copy(update=self._cert_paths(own_identity))})
        return cached

    def _lower_cluster(self, name: str) -> C.ClusterCfg:
        _, port_s, version, service = name.split("|")
        port_no = int(port_s)
        svc = self._svc.get(service)
        assert svc is not None
        port = next((p for p in svc.ports if p.number == port_no), None)
        proto = _LISTENER_PROTOCOL.get(port.protocol if port else "http", "http")
        res = svc.resilience
        kw: dict[str, Any] = {}
        if res.load_balance is not None:
            lb = res.load_balance
            kw["lb"] = C.LbCfg(policy=lb.policy, hash_on=lb.hash_on, hash_key=lb.hash_key)
        if res.circuit_breaker is not None:
            cb = res.circuit_breaker
            kw["circuit_breaker"] = C.CircuitBreakerCfg(**{
                k: v for k, v in cb.model_dump(exclude={"span"}).items() if v is not None})
        if res.outlier is not None:
            o = res.outlier
            kw["outlier"] = C.OutlierCfg(consecutive_5xx=o.consecutive_5xx, interval_ms=o.interval_ms,
                                         base_ejection_ms=o.eject_ms, max_ejection_percent=_pct(o.max_percent))
        if res.health_check is not None:
            h = res.health_check
            kw["health_check"] = C.HealthCheckCfg(
                protocol="tcp" if h.protocol == "tcp" else "http", path=h.path, interval_ms=h.interval_ms,  # grpc: E313
                timeout_ms=h.timeout_ms, unhealthy_threshold=h.unhealthy, healthy_threshold=h.healthy)
        if svc.external is not None:
            ext = svc.external
            endpoints: tuple[C.EndpointCfg, ...] = (C.EndpointCfg(host=ext.host, port=port_no),)
            if ext.tls_originate:
                kw["tls"] = C.UpstreamTlsCfg(mode="tls", sni=ext.sni or ext.host)
            kw["host_header"] = ext.host
        else:
            endpoints = tuple(
                C.EndpointCfg(host=self.host, port=self._inbound[(svc.name, i, port_no)])
                for i, inst in enumerate(self._instances[svc.name])
                if (not version or version in inst.versions) and (svc.name, i, port_no) in self._inbound)
            if port is not None and port.mtls != "disabled":
                kw["tls"] = C.UpstreamTlsCfg(mode="mtls", expected_spiffe=(svc.identity.spiffe,))
        return C.ClusterCfg(name=name, protocol=proto, endpoints=endpoints,
                            endpoints_file=f"endpoints/{service}{'.' + version if version else ''}.json",
                            **kw)

    # ------------------------------------------------------------------ authorization

    def lower_principal(self, src: Source) -> C.PrincipalCfg:
        mesh = self.mesh
        if src.kind == "service":
            target = self._svc.get(src.name)
            value = target.identity.spiffe if target is not None else ""
            return C.PrincipalCfg(kind="spiffe", value=value)
        if src.kind == "identity":
            return C.PrincipalCfg(kind="service_account", value=src.name)
        if src.kind == "ingress":
            return C.PrincipalCfg(kind="spiffe", value=mesh.ingress_identity.spiffe)
        if src.kind == "authenticated":
            return C.PrincipalCfg(kind="authenticated", value=mesh.trust_domain)
        return C.PrincipalCfg(kind=src.kind)  # any, unauthenticated

    def lower_authz_rule(self, rule: AuthzRule) -> C.AuthzRuleCfg:
        return C.AuthzRuleCfg(
            name=_where(rule.span), action=rule.action,
            principals=tuple(self.lower_principal(s) for s in rule.sources),
            methods=tuple(m.upper() for m in rule.methods),
            paths=tuple(self.lower_path(p) for p in rule.paths),
            not_paths=tuple(self.lower_path(p) for p in rule.not_paths),
            ports=tuple(rule.ports),
            headers=tuple(C.StringMatchCfg(name=h.name.lower(), kind=h.kind, value=h.value) for h in rule.headers))

    def lower_authz(self, service: str, port: int) -> C.AuthzCfg:
        """The rules naming this service (or `*`) that can apply to this port, deny first."""
        rules = [r for r in self._rules(service) if not r.ports or port in r.ports]
        ordered = [r for r in rules if r.action == "deny"] + [r for r in rules if r.action == "allow"]
        return C.AuthzCfg(default="deny" if self.mesh.authz == "deny_by_default" else "allow",
                          rules=tuple(self.lower_authz_rule(r) for r in ordered))


def _where(span: Span) -> str:
    """`file:line:col` with the file's base name (stable wherever the mesh is compiled from)."""
    return f"{PurePath(span.file).name}:{span.line}:{span.column}"


def _weighted(pairs: list[tuple[str, int]]) -> tuple[C.WeightedCluster, ...]:
    """Merge duplicate clusters (two versions sharing endpoints stay distinct by name)."""
    merged: dict[str, int] = {}
    for name, w in pairs:
        merged[name] = merged.get(name, 0) + w
    return tuple(C.WeightedCluster(cluster=n, weight=w) for n, w in merged.items())


def _host_regex(hosts: list[str]) -> str:
    import re

    alts = [re.escape(h).replace(r"\*", "[^.]+") for h in hosts]
    return "(" + "|".join(alts) + r")(:[0-9]+)?"


def validate(files: dict[str, bytes]) -> list[str]:
    """Problems of a native bundle as its consumer (the runtime's schema) sees them: every file
    must validate as `MeshIndex` (mesh.json) or `SidecarConfig`, and the index must name files
    that exist. Empty: the runtime will accept the bundle. (For `meshc compile --validate`.)"""
    import json

    from pydantic import ValidationError

    out: list[str] = []
    for name in sorted(files):
        if not name.endswith(".json") or "/" in name:
            continue
        model = C.MeshIndex if name == "mesh.json" else C.SidecarConfig
        try:
            obj = model.model_validate(json.loads(files[name]))
        except (ValueError, ValidationError) as e:
            out.append(f"{name}: {e}")
            continue
        if isinstance(obj, C.MeshIndex):
            out += [f"mesh.json: sidecar {e.service!r} names missing file {e.config!r}"
                    for e in obj.sidecars if e.config not in files]
    return out
