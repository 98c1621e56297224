"""Resolution: the ASTs of a set of files -> one frozen `Mesh`.

Here names become references (services, versions, policies, identities), policies are applied,
overlays are merged, enumerations are checked, and every value is validated before any backend
sees it. All problems are collected (E1xx) and raised together.

Precedence of resilience settings: mesh defaults < policies (in `use` order) < the service's
own lines < overlays of the service. Within one block a setting may be given once.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from meshc import ast as A
from meshc.diagnostics import Sink, did_you_mean
from meshc.model import (
    FULL,
    AuthzRule,
    BodyLimit,
    CircuitBreaker,
    Destination,
    DirectResponse,
    Endpoint,
    External,
    Fault,
    HeaderOps,
    HealthCheck,
    Identity,
    Ingress,
    LoadBalance,
    Match,
    Mesh,
    Mirror,
    Observability,
    Outlier,
    PathMatch,
    Port,
    RateLimit,
    Redirect,
    Resilience,
    Retry,
    Rewrite,
    RouteRule,
    Service,
    Slo,
    Source,
    Span,
    StringMatch,
    Timeout,
    Version,
    text_problem,
)
from meshc.units import pct

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
RESERVED_SOURCES = {"ingress", "authenticated", "unauthenticated"}

MTLS_MODES = ("strict", "permissive", "disabled")
PROTOCOLS = ("http", "http2", "grpc", "tcp", "tls")
PATH_KINDS = ("exact", "prefix", "under", "regex")
STRING_OPS = {"==": "exact", "prefix": "prefix", "regex": "regex", "present": "present", "absent": "absent"}
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
LB_POLICIES = ("round_robin", "least_request", "random", "consistent_hash")
RETRY_CONDITIONS = ("5xx", "gateway-error", "connect-failure", "reset", "retriable-4xx", "refused-stream")
REDIRECT_CODES = (301, 302, 303, 307, 308)
CB_KEYS = {"max_connections": "int", "max_pending": "int", "max_requests": "int", "max_retries": "int"}
OUTLIER_KEYS = {"consecutive_5xx": "int", "interval": "ms", "eject": "ms", "max_percent": "percent"}
HC_KEYS = {"interval": "ms", "probe_timeout": "ms", "unhealthy": "int", "healthy": "int"}
SERVICE_SETTINGS = frozenset({"mtls", "namespace", "identity", "host", "tls_originate"})


@dataclass
class _ServiceAcc:
    """What a service's blocks (declaration, then overlays) add up to; later blocks override."""

    res: dict[str, Any]
    single: dict[str, Any] = field(default_factory=dict)  # one-value settings
    ports: dict[int, tuple[str, Span]] = field(default_factory=dict)  # number -> (protocol, span)
    port_mtls: dict[int, tuple[str, Span]] = field(default_factory=dict)
    versions: dict[str, Version] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    call_spans: list[A.Name] = field(default_factory=list)
    routes: tuple[A.RuleDecl, ...] | None = None
    endpoints: tuple[Endpoint, ...] = ()
    objectives: list[Slo] = field(default_factory=list)
    expose: Ingress | None = None
    host: str | None = None
    tls: A.Setting | None = None


@dataclass
class _ServiceParts:
    """Statements of one service gathered from its block, then its overlays."""

    decl: A.BlockDecl
    blocks: list[A.BlockDecl] = field(default_factory=list)


class Resolver:
    def __init__(self, files: list[A.File]):
        self.files = files
        self.sink = Sink()
        # filled by service(), read by link_routes() once every service is known
        self.pending_calls: dict[str, list[A.Name]] = {}
        self.pending_routes: dict[str, tuple[A.RuleDecl, ...]] = {}

    # ----------------------------------------------------------------- diagnostics
    def err(self, code: str, msg: str, span: Span, label: str = "", help: str = "") -> None:
        self.sink.error(code, msg, span, label=label, help=help)

    def enum(self, name: A.Name, allowed: Collection[str], what: str) -> str | None:
        if name.text in allowed:  # (a tuple, or a dict's keys)
            return name.text
        allowed = tuple(allowed)
        self.err("E109", f"unknown {what} '{name.text}'", name.span, label="not one of the allowed values",
                 help=did_you_mean(name.text, allowed) if len(allowed) > 8 else
                 f"{'did you mean ' + repr(m) + '? ' if (m := _close(name.text, allowed)) else ''}"
                 f"allowed: {', '.join(allowed)}")
        return None

    def text(self, v: A.Value | A.Name, kind: str) -> str:
        """The string of a literal (or name) as a `kind` string (meshc.model.TEXT_KINDS decides
        what each kind may hold); E007/E008/E009/E108 at the literal if it may not."""
        s: str = v.text if isinstance(v, A.Name) else v.value
        problem = text_problem(kind, s)
        if problem is not None:
            code, message, help = problem
            self.err(code, message, v.span, label="not allowed here", help=help)
        return s

    def url_path(self, v: A.Value, what: str) -> str:
        """A path meshc writes into a request or a response: it starts with '/' (E112), then the
        `wire_path` kind's characters."""
        if not v.value.startswith("/"):
            self.err("E112", f"{what} '{v.value}' does not start with '/'", v.span, help=f'write "/{v.value}"')
            return str(v.value)
        return self.text(v, "wire_path")

    def dns(self, name: A.Name, what: str) -> None:
        if len(name.text) > 63 or not DNS_LABEL.match(name.text):
            fixed = re.sub(r"[^a-z0-9-]", "-", name.text.lower()).strip("-")[:63] or "x"
            self.err("E108", f"{what} name '{name.text}' is not a DNS-1123 label", name.span,
                     label="invalid name",
                     help=f"use lower-case letters, digits and '-', at most 63 characters, e.g. '{fixed}'")

    # ----------------------------------------------------------------- entry
    def run(self) -> Mesh:
        decls = [d for f in self.files for d in f.decls]
        mesh_decls = [d for d in decls if isinstance(d, A.MeshDecl) and d.name is not None]
        overlay_meshes = [d for d in decls if isinstance(d, A.MeshDecl) and d.name is None]
        first_file = self.files[-1].path if self.files else "<input>"
        if not mesh_decls:
            self.err("E107", "no `mesh` block: every mesh needs exactly one", Span(file=first_file, line=1, column=1),
                     help='add e.g. `mesh shop { trust_domain "cluster.local" }` to the root file')
            mesh_name = A.Name("mesh", Span(file=first_file, line=1, column=1))
            mesh_span = mesh_name.span
        else:
            for dup in mesh_decls[1:]:
                self.err("E102", "a second `mesh` block", dup.span, label="duplicate",
                         help=f"the mesh is already declared at {mesh_decls[0].span}; "
                              "use `overlay mesh { ... }` to change its settings")
            mesh_name = mesh_decls[0].name or A.Name("mesh")
            mesh_span = mesh_decls[0].span
            self.dns(mesh_name, "mesh")
        settings = self.mesh_settings([*mesh_decls[:1], *overlay_meshes])
        self.mesh_defaults = settings

        self.policies: dict[str, A.BlockDecl] = {}
        self.services: dict[str, _ServiceParts] = {}
        overlays: list[A.BlockDecl] = []
        for d in decls:
            if isinstance(d, A.BlockDecl):
                if d.kind == "policy":
                    self.declare(self.policies, d.name, d, "policy")
                elif d.kind == "overlay":
                    overlays.append(d)
                else:
                    self.dns(d.name, d.kind)
                    if d.name.text in RESERVED_SOURCES:
                        self.err("E113", f"'{d.name.text}' is a reserved word and cannot name a service",
                                 d.name.span, help="it stands for a kind of caller in allow/deny rules")
                    if d.name.text in self.services:
                        prev = self.services[d.name.text].decl
                        self.err("E102", f"{d.kind} '{d.name.text}' is declared twice", d.name.span,
                                 label="duplicate", help=f"first declared at {prev.span}; to change it from "
                                 "another file use `overlay service`")
                    else:
                        self.services[d.name.text] = _ServiceParts(d, [d])
        for ov in overlays:
            parts = self.services.get(ov.name.text)
            if parts is None:
                self.err("E105", f"overlay of undeclared service '{ov.name.text}'", ov.name.span,
                         label="no such service", help=did_you_mean(ov.name.text, self.services))
            elif parts.decl.kind == "external" and any(isinstance(s, A.VersionDecl) for s in ov.stmts):
                self.err("E112", "external services have no versions", ov.name.span,
                         help="an external service is one host; declare a version on an in-mesh `service`")
            else:
                parts.blocks.append(ov)

        services = tuple(self.service(p) for _, p in sorted(self.services.items()))
        self.by_name = {s.name: s for s in services}
        # version names per service: route destinations look them up (Service.version is a scan)
        self.version_names = {s.name: {v.name for v in s.versions} for s in services}
        services = tuple(self.link_routes(s) for s in services)
        rules = tuple(r for d in decls if isinstance(d, A.AuthzDecl) if (r := self.authz(d)) is not None)
        self.sink.check()
        return Mesh(name=mesh_name.text, span=mesh_span, services=services, rules=rules,
                    files=tuple(f.path for f in reversed(self.files)), **settings)

    def declare(self, table: dict[str, Any], name: A.Name, decl: Any, what: str) -> None:
        self.dns(name, what)
        if name.text in table:
            self.err("E102", f"{what} '{name.text}' is declared twice", name.span, label="duplicate",
                     help=f"first declared at {table[name.text].span}")
        else:
            table[name.text] = decl

    # ----------------------------------------------------------------- mesh
    def mesh_settings(self, blocks: list[A.MeshDecl]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        obs: dict[str, Any] = {}
        ingress: tuple[str, str | None] = ("ingress-gateway", None)
        for block in blocks:
            seen: dict[str, A.Setting | A.TimeoutDecl] = {}
            for s in block.stmts:
                key = s.key if isinstance(s, A.Setting) else "timeout"
                if key in seen:
                    self.err("E103", f"'{key}' is set twice in this block", s.span, label="again",
                             help=f"first set at {seen[key].span}; keep one")
                    continue
                seen[key] = s
                if isinstance(s, A.TimeoutDecl):
                    out["timeout"] = Timeout(ms=s.ms.value if s.ms else None, span=s.span)
                    continue
                v = s.value
                if key == "trust_domain":
                    out["trust_domain"] = self.text(v, "trust_domain")
                elif key == "namespace":
                    self.dns(v, "namespace")
                    out["namespace"] = v.text
                elif key == "mtls":
                    if s.extra is not None:
                        self.err("E112", "per-port mTLS belongs in a service", s.span,
                                 help="write `mtls MODE on port N` inside the service block")
                    out["mtls"] = self.enum(v, MTLS_MODES, "mTLS mode") or "strict"
                elif key == "authz_default":
                    out["authz"] = self.enum(v, ("deny_by_default", "allow_by_default"), "authz default") \
                        or "deny_by_default"
                elif key == "path_normalization":
                    out["path_normalization"] = self.enum(v, ("strict", "off"), "path normalization") or "strict"
                elif key == "access_log":
                    obs["access_log"] = self.enum(v, ("json", "text", "off"), "access log format") or "json"
                elif key == "metrics":
                    obs["metrics"] = (self.enum(v, ("on", "off"), "metrics setting") or "on") == "on"
                elif key == "trace_sampling":
                    obs["trace_sampling"] = v.value
                elif key == "ingress_identity":
                    self.dns(v, "identity")
                    if isinstance(s.extra, A.Name):
                        self.dns(s.extra, "namespace")
                    ingress = (v.text, s.extra.text if isinstance(s.extra, A.Name) else None)
                else:
                    self.err("E112", f"'{key}' is not a mesh setting", s.span,
                             help="set it in a service or policy block, or see docs/language.md for the mesh settings")
        if obs:
            out["observability"] = Observability(**obs)
        td = out.get("trust_domain", "cluster.local")
        out["ingress_identity"] = Identity(name=ingress[0], namespace=ingress[1] or out.get("namespace", "default"),
                                           trust_domain=td)
        return out

    # ----------------------------------------------------------------- services
    def service(self, parts: _ServiceParts) -> Service:
        decl = parts.decl
        name = decl.name.text
        mesh = self.mesh_defaults
        ns = mesh.get("namespace", "default")
        acc = _ServiceAcc(res={"timeout": mesh.get("timeout")})
        faults: list[Fault] = []

        for block in parts.blocks:
            seen: dict[str, Span] = {}
            block_versions: set[str] = set()
            block_faults: list[Fault] = []
            # policies first, so the block's own lines win
            for s in block.stmts:
                if isinstance(s, A.NameList) and s.key == "use":
                    for pname in s.names:
                        policy = self.policies.get(pname.text)
                        if policy is None:
                            self.err("E110", f"unknown policy '{pname.text}'", pname.span, label="not declared",
                                     help=did_you_mean(pname.text, self.policies))
                            continue
                        for ps in policy.stmts:
                            if isinstance(ps, A.FaultDecl):
                                block_faults.append(self.fault(ps, name))
                            else:
                                self.resilience_stmt(ps, acc.res)
            for s in block.stmts:
                key = _stmt_key(s)
                if key in seen and key not in ("port", "version", "calls", "use", "fault", "objective", "mtls_port",
                                               "endpoints_"):
                    self.err("E103", f"'{key}' is set twice in {decl.kind} '{name}'", s.span, label="again",
                             help=f"first set at {seen[key]}; keep one (an overlay may change it)")
                    continue
                seen[key] = s.span
                self.service_stmt(s, acc, name, block_versions, block_faults)
            if block_faults:
                faults = block_faults  # an overlay's faults replace the base's

        single, res, ports, port_mtls, host, tls = acc.single, acc.res, acc.ports, acc.port_mtls, acc.host, acc.tls
        if not any(proto in ("http", "http2", "grpc") for proto, _ in ports.values()) and \
                res.get("timeout") is mesh.get("timeout"):
            res["timeout"] = None  # the mesh's request timeout means nothing to a TCP service
        svc_ns = single.get("namespace", ns)
        svc_mtls = single.get("mtls", mesh.get("mtls", "strict"))
        for number, (_mode, span) in port_mtls.items():
            if number not in ports:
                self.err("E104", f"'{name}' has no port {number}", span, label="unknown port",
                         help=f"declared ports: {', '.join(map(str, sorted(ports))) or 'none'}")
        final_ports = tuple(
            Port(protocol=proto, number=number, mtls=port_mtls.get(number, (svc_mtls,))[0], span=span)  # type: ignore[arg-type]
            for number, (proto, span) in sorted(ports.items()))
        external = None
        if decl.kind == "external":
            if host is None:
                self.err("E114", f"external service '{name}' has no host", decl.name.span,
                         help='add e.g. `host "api.example.com"`')
            # `tls originate` alone has an empty Value with no text: no SNI; `sni ""` is refused
            sni = self.text(tls.literal, "sni") if tls is not None and tls.literal.raw else None
            external = External(host=host or "", tls_originate=tls is not None, sni=sni,
                                span=(tls.span if tls is not None else decl.span))
        elif host is not None or tls is not None:
            self.err("E112", "`host` and `tls originate` belong to external services", decl.name.span,
                     help=f"declare it as `external {name} {{ ... }}`")
        body_limit = res.get("max_request_body")
        if body_limit is not None and (decl.kind == "external" or not any(
                proto in ("http", "http2", "grpc") for proto, _ in ports.values())):
            external_svc = decl.kind == "external"
            self.err("E112", f"external service '{name}' cannot limit request bodies" if external_svc else
                     f"'{name}' has no HTTP port to limit request bodies on", body_limit.span,
                     label="nothing to limit",
                     help="the limit is enforced by the callee's sidecar, and an external service has none"
                     if external_svc else "max_request_body applies to HTTP ports; remove it or declare the port http")
        wrote_port = any(isinstance(s, A.PortDecl) for b in parts.blocks for s in b.stmts)
        if not wrote_port and decl.kind == "service":
            self.err("E115", f"service '{name}' declares no port", decl.name.span, label="no port",
                     help="add e.g. `port http 8080`")
        self.pending_calls[name] = acc.call_spans
        self.pending_routes[name] = acc.routes or ()
        return Service(
            name=name, namespace=svc_ns, span=decl.span,
            identity=Identity(name=single.get("identity", name), namespace=svc_ns,
                              trust_domain=mesh.get("trust_domain", "cluster.local"),
                              span=single.get("identity_span", decl.span)),
            ports=final_ports, endpoints=acc.endpoints, versions=tuple(sorted(acc.versions.values(), key=lambda v: v.name)),
            resilience=Resilience(span=decl.span, **res), faults=tuple(faults), calls=tuple(acc.calls),
            call_spans=tuple(n.span for n in acc.call_spans),
            expose=acc.expose, external=external, mtls=svc_mtls, objectives=tuple(acc.objectives))

    def port(self, s: A.PortDecl) -> tuple[str, Span] | None:
        """(protocol, span) of a valid port; the `Port` is made once its mTLS mode is known."""
        proto = self.enum(s.protocol, PROTOCOLS, "protocol")
        n = s.number.value
        if not 1 <= n <= 65535:
            self.err("E112", f"port {n} is out of range", s.number.span, label="not 1-65535",
                     help="a port is a number from 1 to 65535")
            return None
        return proto or "http", s.span

    def service_stmt(self, s: Any, acc: _ServiceAcc, name: str, block_versions: set[str],
                     block_faults: list[Fault]) -> None:
        """One statement of a service block (or overlay) into what the service is made of."""
        if isinstance(s, A.PortDecl):
            p = self.port(s)
            if p is not None:
                acc.ports[s.number.value] = p
        elif isinstance(s, A.Setting) and s.key in SERVICE_SETTINGS:
            if s.key == "mtls" and s.extra is not None:
                assert isinstance(s.extra, A.Value)
                acc.port_mtls[s.extra.value] = (self.enum(s.name, MTLS_MODES, "mTLS mode") or "strict", s.span)
            elif s.key == "mtls":
                acc.single["mtls"] = self.enum(s.name, MTLS_MODES, "mTLS mode") or "strict"
            elif s.key == "namespace":
                self.dns(s.name, "namespace")
                acc.single["namespace"] = s.name.text
            elif s.key == "identity":
                self.dns(s.name, "identity")
                acc.single["identity"] = s.name.text
                acc.single["identity_span"] = s.span
            elif s.key == "host":
                acc.host = self.text(s.literal, "host")
            else:  # tls_originate
                acc.tls = s
        elif isinstance(s, A.Endpoints):
            acc.endpoints = self.endpoints(s)
        elif isinstance(s, A.VersionDecl):
            v = self.version(s, name)
            if v.name in block_versions:
                self.err("E102", f"version '{v.name}' of '{name}' is declared twice", s.name.span,
                         label="duplicate", help=f"first declared at {acc.versions[v.name].span}")
            block_versions.add(v.name)
            acc.versions[v.name] = v
        elif isinstance(s, A.NameList) and s.key == "calls":
            for n in s.names:
                if n.text not in acc.calls:
                    acc.calls.append(n.text)
                    acc.call_spans.append(n)
        elif isinstance(s, A.NameList):
            pass  # `use`, applied above
        elif isinstance(s, A.Expose):
            acc.expose = self.expose(s)
        elif isinstance(s, A.RouteDecl):
            acc.routes = s.rules
        elif isinstance(s, A.FaultDecl):
            block_faults.append(self.fault(s, name))
        elif isinstance(s, A.ObjectiveDecl):
            slo = self.objective(s)
            if slo is not None:
                acc.objectives.append(slo)
        else:
            self.resilience_stmt(s, acc.res)

    def endpoints(self, s: A.Endpoints) -> tuple[Endpoint, ...]:
        out = []
        for e in s.items:
            if not 1 <= e.port <= 65535:
                self.err("E112", f"endpoint port {e.port} is out of range", e.span, label="not 1-65535",
                         help="write endpoints as host:port with a port from 1 to 65535")
                continue
            problem = text_problem("endpoint_host", e.host)
            if problem is not None:
                self.err(problem[0], problem[1], e.span, label="not allowed here", help=problem[2])
            out.append(Endpoint(host=e.host, port=e.port, span=e.span))
        return tuple(out)

    def version(self, s: A.VersionDecl, service: str) -> Version:
        self.dns(s.name, "version")
        labels: dict[str, str] = {}
        eps: tuple[Endpoint, ...] = ()
        for st in s.stmts:
            if isinstance(st, A.Labels):
                for k, v in st.items:
                    # a label key becomes a pod selector: the same syntax as a value, never empty
                    self.text(k, "label_key")
                    if k.text in labels:
                        self.err("E103", f"label '{k.text}' is set twice in version '{s.name.text}'", k.span,
                                 label="again", help="keep one: a pod carries one value per label")
                    val = self.text(A.Value(str(v.value), v.raw, v.span) if isinstance(v, A.Value) else v,
                                    "label_value")
                    labels[k.text] = val
            else:
                eps = self.endpoints(st)
        if not labels:
            labels = {"version": s.name.text}
        return Version(name=s.name.text, labels=tuple(sorted(labels.items())), endpoints=eps, span=s.span)

    def expose(self, s: A.Expose) -> Ingress:
        port = s.port.value if s.port else 80
        if not 1 <= port <= 65535:
            self.err("E112", f"port {port} is out of range", s.span, help="a port is a number from 1 to 65535")
        return Ingress(paths=tuple(p for x in s.paths if (p := self.path(x)) is not None),
                       hosts=tuple(self.text(h, "host_pattern") for h in s.hosts) or ("*",), port=port, span=s.span)

    def objective(self, s: A.ObjectiveDecl) -> Slo | None:
        kind = self.enum(s.kind, ("availability", "latency"), "objective kind")
        window = {"window_ms": s.window.value} if s.window else {}
        args = list(s.args)
        if kind == "availability":
            if len(args) != 1 or not isinstance(args[0], A.Value) or not args[0].raw.endswith("%"):
                self.err("E112", "an availability objective is a percentage", s.span,
                         help="e.g. `objective availability 99.9% over 30d`")
                return None
            return Slo(kind="availability", objective=args[0].value, span=s.span, **window)
        if kind == "latency":
            q = args[0] if args else None
            if (len(args) != 2 or not isinstance(q, A.Name) or not re.fullmatch(r"p\d{1,2}(\.\d{1,2})?", q.text)
                    or not isinstance(args[1], A.Value) or args[1].raw[-1] not in "smhd"):
                self.err("E112", "a latency objective is a quantile and a duration", s.span,
                         help="e.g. `objective latency p99 300ms`")
                return None
            quant = round(float(q.text[1:]) * 100)
            return Slo(kind="latency", objective=quant, quantile=quant, threshold_ms=args[1].value, span=s.span,
                       **window)
        return None

    # ----------------------------------------------------------------- resilience
    def resilience_stmt(self, s: Any, res: dict[str, Any]) -> None:
        if isinstance(s, A.TimeoutDecl):
            res["timeout"] = Timeout(ms=s.ms.value if s.ms else None, span=s.span)
        elif isinstance(s, A.RetryDecl):
            res["retry"] = self.retry(s)
        elif isinstance(s, A.LoadBalanceDecl):
            res["load_balance"] = self.load_balance(s)
        elif isinstance(s, A.SettingsDecl):
            res[s.key] = getattr(self, s.key)(s)
        elif isinstance(s, A.RateLimitDecl):
            if s.requests <= 0:
                self.err("E112", "a rate limit must allow at least one request", s.span,
                         help="e.g. `rate_limit 100/s burst 20`; to refuse everything, use a deny rule")
            res["rate_limit"] = RateLimit(requests=s.requests, unit=s.unit,  # type: ignore[arg-type]
                                          burst=s.burst.value if s.burst else None,
                                          span=s.span)
        elif isinstance(s, A.Setting) and s.key == "max_request_body":
            # `none` (a Name) lifts a limit that a policy or the base declaration set
            res["max_request_body"] = BodyLimit(bytes=s.value.value, span=s.span) \
                if isinstance(s.value, A.Value) else None
        else:
            self.err("E112", "this statement cannot appear here", s.span, help="see docs/language.md for where it belongs")

    def retry(self, s: A.RetryDecl) -> Retry | None:
        if s.attempts is None:
            return None
        on: list[str] = []
        codes: list[int] = []
        for c in s.on:
            if isinstance(c, A.Value) and isinstance(c.value, int):
                if not 100 <= c.value <= 599:
                    self.err("E112", f"{c.value} is not an HTTP status code", c.span,
                             help="retry on a status from 100 to 599, e.g. `on 503, 504`")
                codes.append(c.value)
            else:
                text = c.text if isinstance(c, A.Name) else str(c.value)
                cond = self.enum(A.Name(text, c.span), RETRY_CONDITIONS, "retry condition")
                if cond:
                    on.append(cond)
        kw: dict[str, Any] = {}
        if s.on:
            kw["on"] = tuple(on)
            kw["status_codes"] = tuple(codes)
        if s.backoff_max and s.backoff and s.backoff_max.value < s.backoff.value:
            self.err("E112", "the backoff maximum is below its base", s.backoff_max.span,
                     help="e.g. `backoff 25ms max 250ms`: the maximum is at least the base")
        if s.attempts.value > 100:
            self.err("E112", f"{s.attempts.value} retries is beyond any sane limit", s.attempts.span,
                     help="meshc caps retries at 100")
        return Retry(attempts=s.attempts.value, per_try_ms=s.per_try.value if s.per_try else None,
                     backoff_base_ms=s.backoff.value if s.backoff else None,
                     backoff_max_ms=s.backoff_max.value if s.backoff_max else None,
                     budget=s.budget.value if s.budget else None, span=s.span, **kw)

    def load_balance(self, s: A.LoadBalanceDecl) -> LoadBalance:
        policy = self.enum(s.policy, LB_POLICIES, "load-balancing policy") or "round_robin"
        if policy == "consistent_hash" and s.hash_on is None:
            self.err("E112", "consistent_hash needs a key", s.span,
                     help='add `header "x-user"`, `cookie "sid"`, `query "id"` or `source_ip`')
        if policy != "consistent_hash" and s.hash_on is not None:
            self.err("E112", f"a hash key only applies to consistent_hash, not {policy}", s.span,
                     help="remove the key, or write `load_balance consistent_hash` with it")
        key = self.text(s.hash_key, {"header": "header_name", "cookie": "cookie_name"}.get(s.hash_on or "", "query_name")) \
            if s.hash_key else ""
        return LoadBalance(policy=policy, hash_on=s.hash_on if policy == "consistent_hash" else None,  # type: ignore[arg-type]
                           hash_key=key.lower() if s.hash_on == "header" else key,
                           cookie_ttl_ms=s.ttl.value if s.ttl else None, span=s.span)

    def _kv(self, s: A.SettingsDecl, keys: dict[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in s.items:
            kind = keys.get(k.text)
            if kind is None:
                self.err("E109", f"unknown {s.key} setting '{k.text}'", k.span, label="unknown",
                         help=did_you_mean(k.text, keys))
                continue
            raw = v.raw
            ok = {"int": raw.isdigit(), "ms": raw[-1:] in "smhd" and not raw.endswith("%"),
                  "percent": raw.endswith("%") or raw.isdigit()}[kind]
            if not ok:
                self.err("E112", f"'{k.text}' takes {'a number' if kind == 'int' else 'a duration' if kind == 'ms' else 'a percentage'}",
                         v.span, label="wrong kind of value", help="e.g. `max_connections 100`, `interval 10s`, `max_percent 50%`")
                continue
            out[k.text] = v.value * 100 if kind == "percent" and raw.isdigit() else v.value
        return out

    def circuit_breaker(self, s: A.SettingsDecl) -> CircuitBreaker:
        return CircuitBreaker(span=s.span, **self._kv(s, CB_KEYS))

    def outlier(self, s: A.SettingsDecl) -> Outlier:
        kv = self._kv(s, OUTLIER_KEYS)
        renamed = {{"interval": "interval_ms", "eject": "eject_ms"}.get(k, k): v for k, v in kv.items()}
        return Outlier(span=s.span, **renamed)

    def health_check(self, s: A.SettingsDecl) -> HealthCheck:
        proto = self.enum(s.protocol, ("http", "tcp", "grpc"), "health-check protocol") if s.protocol else "http"
        kv = self._kv(s, HC_KEYS)
        renamed = {{"interval": "interval_ms", "probe_timeout": "timeout_ms"}.get(k, k): v for k, v in kv.items()}
        path = self.url_path(s.path, "health-check path") if s.path else "/"
        if proto == "tcp" and s.path:
            self.err("E112", "a tcp health check has no path", s.path.span,
                     help="remove the path, or use `health_check http \"/healthz\" ...`")
        return HealthCheck(protocol=proto or "http", path=path, span=s.span, **renamed)  # type: ignore[arg-type]

    def fault(self, s: A.FaultDecl, service: str) -> Fault:
        if s.delay is None and s.abort is None:
            self.err("E112", "a fault needs `delay` or `abort`", s.span, help="e.g. `fault delay 2s 10%` or `fault abort 503 5%`")
        if s.abort is not None and not 200 <= s.abort.value <= 599:
            self.err("E112", f"{s.abort.value} is not an HTTP status code to abort with", s.abort.span,
                     help="abort with a status from 200 to 599, e.g. `abort 503 10%`")
        return Fault(matches=self.condition(s.when), delay_ms=s.delay.value if s.delay else None,
                     delay_percent=s.delay_percent.value if s.delay_percent else FULL,
                     abort_status=s.abort.value if s.abort else None,
                     abort_percent=s.abort_percent.value if s.abort_percent else FULL, span=s.span)

    # ----------------------------------------------------------------- matching
    def path(self, p: A.PathPattern) -> PathMatch | None:
        kind = self.enum(p.kind, PATH_KINDS, "path match")
        if kind is None:
            return None
        v = p.value.value
        if kind == "regex":
            self.regex(p.value)
        elif not v.startswith("/"):
            self.err("E112", f"path '{v}' does not start with '/'", p.value.span, help=f'write "/{v}"')
        elif text_problem("path", v) is not None:
            self.text(p.value, "path")
        elif kind == "under" and v != "/" and v.endswith("/"):
            self.err("E112", "an `under` path names a segment and must not end with '/'", p.value.span,
                     help=f'write "{v.rstrip("/")}" (it matches that path and everything below it)')
        return PathMatch(kind=kind, value=v, span=p.span)  # type: ignore[arg-type]

    def string_match(self, m: A.StrMatch, what: str) -> StringMatch | None:
        op = self.enum(m.op, STRING_OPS, f"{what} match")
        if op is None:
            return None
        kind = STRING_OPS[op]
        if kind in ("present", "absent") and m.value is not None:
            self.err("E112", f"`{op}` takes no value", m.value.span, help=f"write `{what} {m.name.text} {op}`")
        if kind not in ("present", "absent") and m.value is None:
            self.err("E112", f"`{op}` needs a value", m.span, help=f'e.g. `{what} {m.name.text} {op} "v"`')
        self.text(m.name, "header_name" if what == "header" else "query_name")
        if kind == "regex" and m.value is not None:
            self.regex(m.value)
        elif kind == "prefix" and m.value is not None and m.value.value == "":
            # Envoy refuses an empty prefix; `present` says what it would mean on every target
            self.err("E009", f"an empty {what} prefix matches every value", m.value.span, label="empty",
                     help=f"write `{what} {m.name.text} present` to match any value")
        elif m.value is not None:
            self.text(m.value, "header_value" if what == "header" else "query_value")
        name = m.name.text.lower() if what == "header" else m.name.text
        return StringMatch(name=name, kind=kind, value=m.value.value if m.value else "", span=m.span)  # type: ignore[arg-type]

    def regex(self, v: A.Value) -> None:
        """A regular expression: the `regex` kind's characters, and it compiles."""
        if self.text(v, "regex") and text_problem("regex", v.value) is None:
            try:
                re.compile(v.value)
            except re.error as e:
                self.err("E112", f"invalid regular expression: {e.msg}", v.span,
                         help="regexes use RE2 syntax and must compile")

    def methods(self, names: Iterable[A.Name]) -> tuple[str, ...]:
        out = []
        for n in names:
            if self.enum(n, METHODS, "HTTP method"):
                out.append(n.text)
        return tuple(out)

    def condition(self, cond: A.Condition) -> tuple[Match, ...]:
        out = []
        for group in cond:
            path = None
            headers: list[StringMatch] = []
            query: list[StringMatch] = []
            methods: tuple[str, ...] = ()
            for c in group:
                if c.kind == "path":
                    if path is not None:
                        self.err("E112", "two path conditions in one `and` group can't both hold", c.span,
                                 help="join alternatives with `or`")
                    path = self.path(c.path) if c.path else None
                elif c.kind == "method":
                    methods = self.methods(c.methods)
                elif c.match is not None:
                    sm = self.string_match(c.match, c.kind)
                    if sm is not None:
                        (headers if c.kind == "header" else query).append(sm)
            span = group[0].span if group else Span(file="", line=0, column=0)
            out.append(Match(path=path, headers=tuple(headers), query=tuple(query), methods=methods, span=span))
        return tuple(out)

    # ----------------------------------------------------------------- routing
    def dest(self, ref: A.DestRef, service: str, weight: int = FULL) -> Destination | None:
        first = ref.first.text
        if ref.version is not None:
            target = self.by_name.get(first)
            if target is None:
                self.err("E101", f"unknown service '{first}'", ref.first.span, label="not declared",
                         help=did_you_mean(first, self.by_name))
                return None
            if ref.version.text not in self.version_names[first]:
                self.unknown_version(ref.version, target)
                return None
            return Destination(service=first, version=ref.version.text, weight=weight, span=ref.span)
        if first in self.version_names[service]:
            return Destination(service=service, version=first, weight=weight, span=ref.span)
        if first in self.by_name:
            return Destination(service=first, weight=weight, span=ref.span)
        svc = self.by_name[service]
        names = [v.name for v in svc.versions]
        if names:
            self.unknown_version(ref.first, svc, also_services=True)
        else:
            self.err("E101", f"unknown service '{first}'", ref.first.span, label="not declared",
                     help=did_you_mean(first, self.by_name))
        return None

    def unknown_version(self, name: A.Name, svc: Service, also_services: bool = False) -> None:
        declared = [v.name for v in svc.versions]
        close = _close(name.text, declared)
        hint = f"did you mean '{close}'? " if close else ""
        hint += f"declared versions are {', '.join(declared)}" if declared else f"'{svc.name}' has no versions"
        self.err("E104", f"unknown version '{name.text}' of service '{svc.name}'"
                 + (" (and no service has that name)" if also_services else ""),
                 name.span, label="not declared", help=hint)

    def link_routes(self, svc: Service) -> Service:
        """Second pass: routes and calls refer to other services, now all known."""
        for n in self.pending_calls.get(svc.name, ()):
            if n.text not in self.by_name:
                self.err("E101", f"unknown service '{n.text}'", n.span, label="not declared",
                         help=did_you_mean(n.text, self.by_name))
            elif n.text == svc.name:
                self.err("E112", f"'{svc.name}' calls itself", n.span, help="remove it from `calls`")
        rules = tuple(r for r in (self.rule(r, svc.name) for r in self.pending_routes.get(svc.name, ())) if r)
        return svc.model_copy(update={"routes": rules}) if rules else svc

    def rule(self, r: A.RuleDecl, service: str) -> RouteRule | None:
        a = r.action
        fields: dict[str, Any] = {"matches": self.condition(r.when), "span": r.span}
        if a.kind in ("forward", "split"):
            dests = [d for it in a.dests if (d := self.dest(it.dest, service, it.percent.value)) is not None]
            total = sum(it.percent.value for it in a.dests)
            if a.kind == "split" and total != FULL:
                self.err("E111", f"split weights add up to {pct(total)}, not 100%", a.span,
                         label=f"sums to {pct(total)}",
                         help="make the percentages add up to exactly 100% (at most two decimals each)")
            keys = [(d.service, d.version) for d in dests]
            for i, k in enumerate(keys):
                if k in keys[:i]:
                    self.err("E112", "the same destination appears twice in a split", dests[i].span,
                             help="merge the two entries")
            fields["destinations"] = tuple(dests)
        elif a.kind == "redirect":
            fields["redirect"] = self.redirect(a)
        else:
            status = a.status.value if a.status else 200
            if not 200 <= status <= 599:
                self.err("E112", f"{status} is not a status code to respond with", a.span,
                         help="respond with a status from 200 to 599")
            fields["respond"] = DirectResponse(status=status, body=self.text(a.body, "body") if a.body else "",
                                               span=a.span)
        if r.body:  # most rules have none
            self.rule_body(r, service, fields)
        if fields.get("redirect") or fields.get("respond"):
            for useless in ("rewrite", "mirror", "retry"):
                if useless in fields:
                    self.err("E112", f"`{useless}` has no effect on a {a.kind} rule", r.span,
                             help=f"remove `{useless}`: a {a.kind} rule sends no request upstream")
        return RouteRule(**fields)

    def rule_body(self, r: A.RuleDecl, service: str, fields: dict[str, Any]) -> None:
        req: dict[str, list[Any]] = {"set": [], "add": [], "remove": []}
        resp: dict[str, list[Any]] = {"set": [], "add": [], "remove": []}
        rewrite: dict[str, Any] = {}
        seen: dict[str, Span] = {}
        faults = []
        for s in r.body:
            key = _stmt_key(s)
            if key in seen and key not in ("request_headers", "response_headers", "rewrite", "fault"):
                self.err("E103", f"'{key}' is set twice in this rule", s.span, help=f"first set at {seen[key]}")
            seen[key] = s.span
            if isinstance(s, A.HeaderOp):
                op = self.enum(s.op, ("set", "add", "remove"), "header operation")
                if op is None:
                    continue
                self.text(s.name, "header_name")
                if (op == "remove") != (s.value is None):
                    self.err("E112", f"`{op}` {'takes no value' if op == 'remove' else 'needs a value'}", s.span,
                             help=f"e.g. `request_headers {op} x-name" + ("`" if op == "remove" else ' "value"`'))
                    continue
                if s.value is not None:
                    self.text(s.value, "added_header_value")
                table = req if s.direction == "request" else resp
                table[op].append(s.name.text.lower() if s.value is None else (s.name.text.lower(), s.value.value))
                fields[f"{s.direction}_headers_span"] = s.span
            elif isinstance(s, A.RewriteDecl):
                kind = self.enum(s.kind, ("prefix", "path", "host"), "rewrite")
                if kind:
                    if kind in rewrite:
                        self.err("E103", f"'rewrite {kind}' is set twice in this rule", s.span, help="keep one")
                    rewrite[kind] = self.text(s.value, "host") if kind == "host" else \
                        self.url_path(s.value, f"rewrite {kind}")
                    rewrite.setdefault("span", s.span)
            elif isinstance(s, A.MirrorDecl):
                d = self.dest(s.dest, service)
                if d is not None:
                    fields["mirror"] = Mirror(destination=d, percent=s.percent.value if s.percent else FULL,
                                              span=s.span)
            elif isinstance(s, A.FaultDecl):
                faults.append(self.fault(s, service))
            elif isinstance(s, A.TimeoutDecl):
                fields["timeout"] = Timeout(ms=s.ms.value if s.ms else None, span=s.span)
            elif isinstance(s, A.RetryDecl):
                fields["retry"] = self.retry(s) or Retry(attempts=0, on=(), span=s.span)
        if "prefix" in rewrite and "path" in rewrite:
            self.err("E112", "`rewrite prefix` and `rewrite path` exclude each other", rewrite["span"],
                     help="keep one: `prefix` replaces the matched prefix, `path` the whole path")
        if rewrite:
            fields["rewrite"] = Rewrite(**rewrite)
        for direction, table in (("request", req), ("response", resp)):
            if any(table.values()):
                fields[f"{direction}_headers"] = HeaderOps(
                    set=tuple(table["set"]), add=tuple(table["add"]), remove=tuple(table["remove"]),
                    span=fields.pop(f"{direction}_headers_span"))
        if faults:
            fields["faults"] = tuple(faults)

    def redirect(self, a: A.Action) -> Redirect:
        kw: dict[str, Any] = {}
        for k, v in a.options:
            key = self.enum(k, ("path", "host", "scheme", "port", "code"), "redirect option")
            if key is None:
                continue
            val = v.text if isinstance(v, A.Name) else v.value
            if key == "code" and val not in REDIRECT_CODES:
                self.err("E112", f"{val} is not a redirect status", v.span,
                         help="use 301, 302, 303, 307 or 308")
                continue
            if key == "scheme" and val not in ("http", "https"):
                self.err("E109", f"unknown scheme '{val}'", v.span, help="allowed: http, https")
                continue
            if key in ("port", "code") and not isinstance(val, int) or key in ("path", "host") and \
                    not isinstance(val, str):
                self.err("E112", f"redirect {key} has the wrong kind of value", v.span,
                         help='e.g. `redirect path "/new" code 301`, `host "a.example"`, `port 8443`')
                continue
            if key == "host":
                val = self.text(v, "host")
            elif key == "path":
                val = self.url_path(v, "redirect path")  # type: ignore[arg-type]
            kw[key] = val
        return Redirect(span=a.span, **kw)

    # ----------------------------------------------------------------- authorization
    def authz(self, d: A.AuthzDecl) -> AuthzRule | None:
        sources = []
        for s in d.sources:
            if s.kind == "any":
                sources.append(Source(kind="any", span=s.span))
            elif s.kind == "identity" and s.name is not None:
                self.dns(s.name, "identity")
                sources.append(Source(kind="identity", name=s.name.text, span=s.span))
            elif s.name is not None:
                n = s.name.text
                if n in RESERVED_SOURCES:
                    sources.append(Source(kind=n, span=s.span))  # type: ignore[arg-type]
                elif n in self.by_name:
                    sources.append(Source(kind="service", name=n, span=s.span))
                else:
                    self.err("E101", f"unknown service '{n}'", s.name.span, label="not declared",
                             help=did_you_mean(n, [*self.by_name, *sorted(RESERVED_SOURCES)])
                             + " (write `identity NAME` for a service account that is not a service)")
        targets = []
        for t in d.targets:
            if t.text == "*":
                targets.append("*")
            elif t.text not in self.by_name:
                self.err("E101", f"unknown service '{t.text}'", t.span, label="not declared",
                         help=did_you_mean(t.text, self.by_name))
            else:
                targets.append(t.text)
        ports = []
        for p in d.ports:
            declared = {pt.number for t in targets if t != "*" for pt in self.by_name[t].ports}
            if "*" not in targets and p.value not in declared:
                self.err("E104", f"port {p.value} is not a port of {', '.join(targets)}", p.span,
                         help=f"declared ports: {', '.join(map(str, sorted(declared)))}")
            ports.append(p.value)
        # (the `if`s skip building generators for the many rules without paths or headers)
        return AuthzRule(action=d.action, sources=tuple(sources), destinations=tuple(targets),  # type: ignore[arg-type]
                         methods=self.methods(d.methods) if d.methods else (),
                         paths=tuple(pm for x in d.paths if (pm := self.path(x)) is not None) if d.paths else (),
                         not_paths=tuple(pm for x in d.except_paths if (pm := self.path(x)) is not None)
                         if d.except_paths else (),
                         ports=tuple(ports),
                         headers=tuple(h for x in d.headers if (h := self.string_match(x, "header")) is not None)
                         if d.headers else (),
                         span=d.span)


def _stmt_key(s: Any) -> str:
    if isinstance(s, A.Setting):
        return "mtls_port" if s.key == "mtls" and s.extra is not None else s.key
    if isinstance(s, A.NameList):
        return s.key
    if isinstance(s, A.SettingsDecl):
        return s.key
    if isinstance(s, A.HeaderOp):
        return f"{s.direction}_headers"
    return _STMT_KEYS.get(type(s), type(s).__name__)


_STMT_KEYS: dict[type, str] = {
    A.PortDecl: "port", A.Endpoints: "endpoints", A.VersionDecl: "version", A.Expose: "expose",
    A.TimeoutDecl: "timeout", A.RetryDecl: "retry", A.LoadBalanceDecl: "load_balance",
    A.RateLimitDecl: "rate_limit", A.FaultDecl: "fault", A.ObjectiveDecl: "objective",
    A.RouteDecl: "route", A.RewriteDecl: "rewrite", A.MirrorDecl: "mirror"}


def _close(name: str, pool: Iterable[str]) -> str | None:
    import difflib

    m = difflib.get_close_matches(name, list(pool), n=1, cutoff=0.6)
    return m[0] if m else None


def resolve(files: list[A.File]) -> Mesh:
    return Resolver(files).run()
