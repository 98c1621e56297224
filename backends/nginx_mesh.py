"""NGINX Service Mesh backend (NSM v2.0, archived): the SMI versions it serves and its own kinds.

Objects: split.smi-spec.io/v1alpha3 TrafficSplit, access.smi-spec.io/v1alpha2 TrafficTarget,
specs.smi-spec.io/v1alpha3 HTTPRouteGroup and TCPRoute, specs.smi.nginx.com/v1alpha2 RateLimit
and specs.smi.nginx.com/v1alpha1 CircuitBreaker; plus `helm-values.yaml` with the mesh-wide
settings NSM takes at install time (`mtls.mode`, `accessControlMode`).

Core objects (`core.yaml`, kubernetes client models as in backends/k8s.py): a Namespace per
namespace, a ServiceAccount per identity, a Service per service (its ports) and per version.

Lowering decisions:
- Versions are Kubernetes Services named `<service>-<version>` (SMI splits between Services),
  written for every version, whether a split names it or not.
- Splits: TrafficSplit weights are relative integers with no upper bound, so meshc hundredths
  are written as they are (exact).
- Routes: a TrafficSplit with `matches` (an HTTPRouteGroup) for each conditional rule and one
  without for `otherwise`. SMI gives TrafficSplits no order, so a route table is expressible
  only while its conditional rules cannot overlap: at most one conditional rule (E330 beyond).
- Paths and header values are SMI regexes; meshc matches are written anchored (`^...$`), which
  keeps their meaning whether the implementation searches or matches whole values.
- Access: SMI TrafficTargets only allow, between service accounts, and NSM denies the rest
  (`accessControlMode: deny`). Deny rules cannot be said (E301). `*` and `authenticated`
  enumerate the mesh's identities. Under `allow_by_default` (`accessControlMode: allow`) no
  TrafficTarget is written: allow rules add nothing there, and a TrafficTarget would admit only
  its own sources to its destination.
- RateLimit: nginx `limit_req` semantics (`burst` = bucket - 1, `delay: nodelay`), per hour
  only when it is a whole number per minute.
- CircuitBreaker is NSM's passive ejection (nginx `max_fails`/`fail_timeout`): meshc `outlier`
  with `consecutive_5xx` errors, when its interval equals its ejection time in whole seconds.
  NSM counts errors within the window rather than consecutive ones and has no maximum
  ejection percentage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from meshc.backends import k8s
from meshc.backends.base import Backend, Bundle

from meshc.diagnostics import Diagnostic
from meshc.model import HTTP_PROTOCOLS, AuthzRule, Match, Mesh, PathMatch, Service, Span, StringMatch

E330 = "E330"
SPLIT = "split.smi-spec.io/v1alpha3"
ACCESS = "access.smi-spec.io/v1alpha2"
SPECS = "specs.smi-spec.io/v1alpha3"
NGINX_SPECS = "specs.smi.nginx.com"
RATE_UNIT = {"s": "r/s", "m": "r/m"}


_SPECIAL = frozenset("\\.+*?()|[]{}^$")


def escape(s: str) -> str:
    """A regex literal valid for RE2 (Go) and PCRE alike: only metacharacters are escaped."""
    return "".join("\\" + c if c in _SPECIAL else c for c in s)


def anchored(p: PathMatch) -> str:
    v = escape(p.value)
    if p.kind == "exact":
        return f"^{v}$"
    if p.kind == "prefix":
        return f"^{v}.*$"
    if p.kind == "under":
        base = escape(p.value.rstrip("/"))
        return f"^{base}(/.*)?$" if base else "^/.*$"
    body = p.value.removeprefix("^").removesuffix("$")
    return f"^(?:{body})$"


def header_regex(h: StringMatch) -> str | None:
    if h.kind == "exact":
        return f"^{escape(h.value)}$"
    if h.kind == "prefix":
        return f"^{escape(h.value)}.*$"
    if h.kind == "regex":
        return f"^(?:{h.value.removeprefix('^').removesuffix('$')})$"
    if h.kind == "present":
        return ".+"
    return None  # absent: not expressible


@dataclass
class _Ctx:
    diags: list[Diagnostic] = field(default_factory=list)

    def error(self, message: str, span: Span, help: str = "") -> None:
        d = Diagnostic(E330, message, span, label="not expressible on nginx-mesh", help=help)
        if d not in self.diags:  # a callee's setting is seen once per caller
            self.diags.append(d)


class NginxMeshBackend(Backend):
    name: ClassVar[str] = "nginx-mesh"
    description: ClassVar[str] = "NGINX Service Mesh: SMI TrafficSplit/TrafficTarget/HTTPRouteGroup/TCPRoute, RateLimit, CircuitBreaker"
    CAPABILITIES: ClassVar[frozenset[str]] = frozenset({
        "protocol.http", "protocol.http2", "protocol.grpc", "protocol.tcp",
        "mtls.strict", "mtls.permissive", "mtls.disabled", "endpoints.static", "versions",
        "route.match.path.exact", "route.match.path.prefix", "route.match.path.under", "route.match.path.regex",
        "route.match.header", "route.match.header.regex", "route.match.method",
        "route.split", "route.split.services", "rate_limit", "outlier",
        "authz.allow", "authz.identity", "authz.methods", "authz.paths", "authz.headers", "authz.ports",
    })
    # the folders of meshc/schemas whose published CRD schemas this target's objects are checked against
    SCHEMAS: ClassVar[tuple[str, ...]] = ('nginx-service-mesh', 'smi')
    OPTIONS: ClassVar[Mapping[str, str]] = {}

    def lower(self, mesh: Mesh) -> Bundle:
        self.mesh = mesh
        ctx = _Ctx()
        objs: list[dict[str, Any]] = []
        modes = {p.mtls for s in mesh.services for p in s.ports} | {mesh.mtls}
        if len(modes) > 1:
            svc = next(s for s in mesh.services if any(p.mtls != mesh.mtls for p in s.ports))
            ctx.error("NGINX Service Mesh sets one mTLS mode for the whole mesh (at install)", svc.span,
                      help="set mtls in the mesh block only, or choose another target")
        for svc in mesh.services:
            if svc.external is not None or not svc.ports:
                continue
            for v in svc.versions:
                vname = k8s.version_service_name(svc, v.name)
                if len(vname) > k8s.SERVICE_NAME_MAX:
                    ctx.error(f"the per-version Service name '{vname}' is longer than 63 characters", v.span,
                              help="shorten the service or version name (versions are Services named "
                                   "<service>-<version>)")
            objs += self.lower_splits(svc, ctx)
            objs += self.lower_rate_limit(svc, ctx)
            objs += self.lower_circuit_breaker(svc, ctx)
            objs += self.lower_access(svc, ctx)
        bundle = Bundle(diagnostics=ctx.diags)
        # SMI objects name Services (splits between `<service>-<version>` Services) and service
        # accounts (access): the core objects carry the ports and every version, routed or not.
        # External services are E301 here, so they get no (ExternalName) Service.
        core = k8s.core_objects(mesh, versions=True, externals=False)
        seen: set[tuple[str, str, str]] = set()
        for o in core:  # `api-v1`: a service, or version v1 of `api`? One would overwrite the other
            key = (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])
            if key in seen:
                ctx.error(f"two generated {key[0]} objects named '{key[2]}' in namespace '{key[1]}'", mesh.span,
                          help="rename the service or version (versions are Services named <service>-<version>)")
            seen.add(key)
        bundle.add_yaml("core.yaml", core)
        for o in objs:
            bundle.add_yaml(f"{o['kind']}-{o['metadata']['name']}.yaml", o)
        bundle.add_yaml("helm-values.yaml", {
            "mtls": {"mode": {"strict": "strict", "permissive": "permissive", "disabled": "off"}[mesh.mtls]},
            "accessControlMode": "deny" if mesh.authz == "deny_by_default" else "allow"})
        return bundle

    def obj(self, api: str, kind: str, name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": api, "kind": kind,
                "metadata": {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "meshc"}},
                "spec": spec}

    @staticmethod
    def backend_service(svc: str, version: str | None) -> str:
        return f"{svc}-{version}" if version else svc

    # ------------------------------------------------------------------ traffic splits

    def lower_splits(self, svc: Service, ctx: _Ctx) -> list[dict[str, Any]]:
        if not svc.routes:
            return []
        http = any(p.protocol in HTTP_PROTOCOLS for p in svc.ports)
        conditional = [r for r in svc.routes if r.matches]
        if len(conditional) > 1:
            ctx.error("SMI TrafficSplits have no order: NGINX Service Mesh can route on at most one condition "
                      "per service besides `otherwise`", conditional[1].span,
                      help="keep one conditional rule besides `otherwise`, or choose another target")
        out = []
        for i, rule in enumerate(svc.routes):
            name = f"{svc.name}-default" if rule.is_default else f"{svc.name}-r{i}"
            spec: dict[str, Any] = {"service": svc.name, "backends": [
                {"service": self.backend_service(d.service, d.version), "weight": d.weight}
                for d in rule.destinations]}
            if not rule.destinations:
                continue  # redirects and direct responses: E301 (not capabilities)
            if rule.matches:
                if not http:
                    ctx.error("SMI traffic splits match HTTP requests only", rule.span,
                              help="route TCP services with `otherwise` only, or choose another target")
                    continue
                group = f"{svc.name}-r{i}"
                out.append(self.obj(SPECS, "HTTPRouteGroup", group, svc.namespace,
                                    {"matches": [self.http_match(f"m{j}", m, ctx)
                                                 for j, m in enumerate(rule.matches)]}))
                spec["matches"] = [{"kind": "HTTPRouteGroup", "name": group, "apiGroup": "specs.smi-spec.io"}]
            out.append(self.obj(SPLIT, "TrafficSplit", name, svc.namespace, spec))
        return out

    def http_match(self, name: str, m: Match, ctx: _Ctx) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name, "pathRegex": anchored(m.path) if m.path else ".*",
                               "methods": list(m.methods) or ["*"]}
        if m.query:
            ctx.error("SMI HTTP route groups cannot match query parameters", m.query[0].span,
                      help="match on a path or header instead, or choose another target")
        headers = {}
        for h in m.headers:
            rx = header_regex(h)
            if rx is None:
                ctx.error("SMI HTTP route groups cannot match an absent header", h.span,
                          help="match on a header that is present, or choose another target")
                continue
            headers[h.name] = rx
        if headers:
            out["headers"] = headers
        return out

    # ------------------------------------------------------------------ rate limits, breakers

    def lower_rate_limit(self, svc: Service, ctx: _Ctx) -> list[dict[str, Any]]:
        rl = svc.resilience.rate_limit
        if rl is None:
            return []
        if rl.unit in RATE_UNIT:
            rate = f"{rl.requests}{RATE_UNIT[rl.unit]}"
        else:
            if rl.requests % 60:
                ctx.error("NGINX Service Mesh rates are per second or minute; this hourly rate is not a whole "
                          "number per minute", rl.span, help="write the rate per second or minute (e.g. 60/h as 1/m)")
            rate = f"{max(rl.requests // 60, 1)}r/m"
        bucket = rl.burst if rl.burst is not None else rl.requests
        spec = {"name": f"{svc.name}-rate-limit", "destination": {"kind": "Service", "name": svc.name,
                                                                  "namespace": svc.namespace},
                "rate": rate, "burst": max(bucket - 1, 0), "delay": "nodelay"}
        return [self.obj(f"{NGINX_SPECS}/v1alpha2", "RateLimit", f"{svc.name}-rate-limit", svc.namespace, spec)]

    def lower_circuit_breaker(self, svc: Service, ctx: _Ctx) -> list[dict[str, Any]]:
        ol = svc.resilience.outlier
        if ol is None:
            return []
        if ol.interval_ms != ol.eject_ms or ol.eject_ms % 1000:
            ctx.error("NGINX Service Mesh ejects for the same whole number of seconds it counts errors in "
                      "(interval must equal eject)", ol.span, help="set `eject` equal to `interval` in the outlier")
        spec = {"destination": {"kind": "Service", "name": svc.name, "namespace": svc.namespace},
                "errors": ol.consecutive_5xx, "timeoutSeconds": max(ol.eject_ms // 1000, 1)}
        return [self.obj(f"{NGINX_SPECS}/v1alpha1", "CircuitBreaker", f"{svc.name}-circuit-breaker",
                         svc.namespace, spec)]

    # ------------------------------------------------------------------ access

    def identities(self) -> list[tuple[str, str]]:
        """(namespace, service account) of every mesh identity, ingress included."""
        ids = {(s.identity.namespace, s.identity.name) for s in self.mesh.services if s.external is None}
        ids.add((self.mesh.ingress_identity.namespace, self.mesh.ingress_identity.name))
        return sorted(ids)

    def sources(self, r: AuthzRule, ctx: _Ctx) -> list[tuple[str, str]]:
        out: set[tuple[str, str]] = set()
        for s in r.sources:
            if s.kind in ("any", "authenticated"):
                out |= set(self.identities())
            elif s.kind == "ingress":
                out.add((self.mesh.ingress_identity.namespace, self.mesh.ingress_identity.name))
            elif s.kind == "service":
                svc = self.mesh.service(s.name)
                if svc is not None:
                    out.add((svc.identity.namespace, svc.identity.name))
            elif s.kind == "identity":
                ns, _, sa = s.name.rpartition("/")
                out.add((ns or self.mesh.namespace, sa))
            else:
                ctx.error("SMI access control has no unauthenticated sources", r.span,
                          help="name authenticated callers (services or identities), or choose another target")
        return sorted(out)

    def lower_access(self, svc: Service, ctx: _Ctx) -> list[dict[str, Any]]:
        if self.mesh.authz == "allow_by_default":
            # Everything is allowed already, so an allow rule adds nothing; written as a
            # TrafficTarget it would restrict: in NSM's `allow` mode a destination with a
            # TrafficTarget admits only the sources it lists (every other caller got 403).
            return []
        rules = [r for r in self.mesh.rules if r.action == "allow"
                 and (svc.name in r.destinations or "*" in r.destinations)]
        http = any(p.protocol in HTTP_PROTOCOLS for p in svc.ports)
        out: list[dict[str, Any]] = []
        for i, r in enumerate(rules):
            name = f"{svc.name}-allow-{i}"
            if http:
                matches = [{"name": "all", "pathRegex": ".*", "methods": ["*"]}]
                if r.paths or r.methods or r.headers:
                    headers = {}
                    for h in r.headers:
                        rx = header_regex(h)
                        if rx is None:
                            ctx.error("SMI HTTP route groups cannot match an absent header", h.span,
                                      help="match on a header that is present, or choose another target")
                        else:
                            headers[h.name] = rx
                    matches = []
                    for j, p in enumerate(r.paths or (None,)):
                        m: dict[str, Any] = {"name": f"m{j}", "pathRegex": anchored(p) if p else ".*",
                                             "methods": list(r.methods) or ["*"]}
                        if headers:
                            m["headers"] = headers
                        matches.append(m)
                out.append(self.obj(SPECS, "HTTPRouteGroup", name, svc.namespace, {"matches": matches}))
                rule_ref = {"kind": "HTTPRouteGroup", "name": name, "matches": [m["name"] for m in matches]}
            else:
                if r.paths or r.methods or r.headers:
                    continue  # a TCP connection has no method, path or headers: it never matches
                out.append(self.obj(SPECS, "TCPRoute", name, svc.namespace, {}))
                rule_ref = {"kind": "TCPRoute", "name": name}
            for port in r.ports or (None,):
                dest: dict[str, Any] = {"kind": "ServiceAccount", "name": svc.identity.name,
                                        "namespace": svc.identity.namespace}
                if port is not None:
                    dest["port"] = port
                spec = {"destination": dest, "rules": [rule_ref],
                        "sources": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}
                                    for ns, sa in self.sources(r, ctx)]}
                tname = name if port is None else f"{name}-{port}"
                out.append(self.obj(ACCESS, "TrafficTarget", tname, svc.namespace, spec))
        return out
