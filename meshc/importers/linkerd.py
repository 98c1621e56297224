"""Linkerd -> .mesh: reads policy.linkerd.io (Server v1beta1-v1beta3, HTTPRoute v1beta1-v1beta3,
AuthorizationPolicy / MeshTLSAuthentication / NetworkAuthentication v1alpha1), Gateway API
HTTPRoutes (gateway.networking.k8s.io/v1) and core Services, ServiceAccounts and workloads.

- Services; a Service whose selector is another's plus labels (`reviews-v2`: app=reviews,
  version=v2) is a version of it (Linkerd addresses versions by such Services).
- Service annotations: `timeout.linkerd.io/request`, `retry.linkerd.io/{http,limit,timeout}`,
  `balancer.linkerd.io/failure-accrual*` (outlier detection: max failures, penalty).
- Outbound HTTPRoutes (parentRef a Service): ordered route rules, weighted backendRefs (version
  Services become versions), header modifiers, redirects, rule timeouts; retry annotations.
- Inbound: Servers (port, protocol, accessPolicy), AuthorizationPolicies on Servers, inbound
  HTTPRoutes or Namespaces, MeshTLSAuthentication (service accounts, identities) and
  NetworkAuthentication (all networks only). An allow on an inbound HTTPRoute carries that
  route's matches as conditions. Namespace `config.linkerd.io/default-inbound-policy` gives the
  default: `deny` -> deny_by_default, `all-authenticated` -> strict mTLS,
  `all-unauthenticated` (Linkerd's default) -> permissive.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from meshc.importers.common import (
    Draft,
    MeshSettings,
    Report,
    Result,
    build_mesh,
    dns_name,
    duration_ms,
    finish,
    kind_of,
    lift_routes,
    merge_under,
    meta,
    percent,
    read_documents,
    report_unread,
    required_percent,
    resource,
    simplify_matches,
    split_versions,
    weights_to_percent,
)
from meshc.importers.kube import port_protocol, read_services
from meshc.model import (
    FULL,
    AuthzRule,
    Destination,
    External,
    HeaderOps,
    Match,
    Mirror,
    Outlier,
    PathMatch,
    RateLimit,
    Redirect,
    Retry,
    Rewrite,
    RouteRule,
    Source,
    StringMatch,
    Timeout,
)

RETRY_ON = {"5xx": "5xx", "gateway-error": "gateway-error"}
PROXY_PROTOCOL = {"HTTP/1": "http", "HTTP/2": "http2", "gRPC": "grpc", "opaque": "tcp", "TLS": "tls"}
DEFAULT_POLICY = {"all-unauthenticated": ("allow_by_default", "permissive"),
                  "all-authenticated": ("allow_by_default", "strict"),
                  "cluster-unauthenticated": ("allow_by_default", "permissive"),
                  "cluster-authenticated": ("allow_by_default", "strict"),
                  "deny": ("deny_by_default", "strict")}
METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
ALL_NETWORKS = {"0.0.0.0/0", "::/0"}
PRESENT = {".*", "^.*$", ".+", "^.+$"}
PROFILE_TIMEOUT_MS = 10_000  # ServiceProfile routes: "if unspecified, a default of 10 seconds is used"

READ_KINDS = {"Service", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Pod", "Server", "ServerAuthorization", "HTTPRoute", "AuthorizationPolicy", "MeshTLSAuthentication", "NetworkAuthentication", "HTTPLocalRateLimitPolicy", "Namespace", "ServiceProfile"}


class LinkerdImporter:
    origin = "linkerd"

    def __init__(self, docs: list[tuple[str, Any]], mesh_name: str | None = None):
        self.docs = [d for _, d in docs if isinstance(d, dict)]
        self.report = Report()
        self.drafts: dict[str, Draft] = {}
        self.version_services: dict[str, tuple[str, str]] = {}  # Service name -> (service, version)
        self.settings = MeshSettings(mtls="permissive", authz="allow_by_default")
        self.mesh_name = mesh_name
        self.rules: list[AuthzRule] = []
        self.default_policy = "all-unauthenticated"  # Linkerd's default inbound policy
        self.port_policy: dict[tuple[str, int], str] = {}  # (service, port) -> a Server's accessPolicy
        self.server_ports_of: dict[str, list[int]] = {}  # Server name -> the Service ports it covers

    def of(self, *kinds: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if kind_of(d) in kinds]

    def note(self, doc: dict[str, Any] | str, fld: str, why: str, place: str = "") -> None:
        self.report.add(doc if isinstance(doc, str) else resource(doc), fld, why, place)

    def run(self) -> Result:
        read_services([("", d) for d in self.docs], self.report, self.drafts, default_protocol="http")
        self.split_versions()
        self.externals()
        counts = Counter(d.namespace for d in self.drafts.values())
        self.settings.namespace = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] if counts else "default"
        self.settings.name = self.mesh_name or dns_name(self.settings.namespace)
        self.defaults()
        for svc in self.of("Service"):
            self.annotations(svc)
        routes = self.of("HTTPRoute")
        for r in routes:
            if any(p.get("kind", "Service") == "Service" for p in (r.get("spec") or {}).get("parentRefs") or []):
                self.outbound(r)
        for sp in self.of("ServiceProfile"):
            self.service_profile(sp)
        self.read_ports()
        self.servers = {meta(s)[0]: s for s in self.of("Server")}
        for s in self.servers.values():
            self.server(s)
        for rl in self.of("HTTPLocalRateLimitPolicy"):
            self.rate_limit(rl)
        self.authorization(routes)
        self.port_defaults()
        self.merge_ports()
        report_unread(self.docs, READ_KINDS, self.report, self.origin)
        mesh = build_mesh(self.settings, self.drafts, self.rules, self.report)
        return finish(mesh, self.report, self.origin)

    # ----------------------------------------------------------------- services
    def split_versions(self) -> None:
        split_versions(self.drafts, self.version_services)

    def externals(self) -> None:
        """ExternalName Services: external services reached by host name."""
        for svc in self.of("Service"):
            spec = svc.get("spec") or {}
            if spec.get("type") != "ExternalName" or not spec.get("externalName"):
                continue
            name, ns = meta(svc)
            d = self.drafts.setdefault(dns_name(name), Draft(dns_name(name), ns))
            d.external = External(host=str(spec["externalName"]))
            for p in spec.get("ports") or []:
                if isinstance(p.get("port"), int):
                    d.ports[p["port"]] = port_protocol(p) or "tcp"

    def rate_limit(self, rl: dict[str, Any]) -> None:
        spec = rl.get("spec") or {}
        server = self.servers.get(str((spec.get("targetRef") or {}).get("name")))
        d = self.server_service(server) if server else None
        rps = (spec.get("total") or {}).get("requestsPerSecond")
        if d is None or not isinstance(rps, int):
            self.note(rl, "spec", "targets no Server of the input or has no total.requestsPerSecond")
            return
        d.resilience["rate_limit"] = RateLimit(requests=rps, unit="s")
        for k in sorted(set(spec) - {"targetRef", "total"}):
            self.note(rl, f"spec.{k}", "per-identity and per-route limits are not expressible", f"service:{d.name}")

    def backend(self, ref: dict[str, Any]) -> Destination | None:
        name = dns_name(str(ref.get("name", "")))
        if ref.get("kind", "Service") != "Service":
            return None
        if name in self.version_services:
            svc, version = self.version_services[name]
            return Destination(service=svc, version=version)
        if name in self.drafts:
            return Destination(service=name)
        return None

    def defaults(self) -> None:
        modes = set()
        for ns in self.of("Namespace"):
            ann = (ns.get("metadata") or {}).get("annotations") or {}
            if "config.linkerd.io/default-inbound-policy" in ann:
                modes.add(str(ann["config.linkerd.io/default-inbound-policy"]))
        if len(modes) > 1:
            self.note("Namespace", "config.linkerd.io/default-inbound-policy", "namespaces with different default "
                      f"policies ({', '.join(sorted(modes))}); the first is the mesh's", "mesh")
        if modes:
            mode = sorted(modes)[0]
            if mode in DEFAULT_POLICY:
                self.settings.authz, self.settings.mtls = DEFAULT_POLICY[mode]
                self.default_policy = mode
            else:
                self.note("Namespace", "config.linkerd.io/default-inbound-policy", f"{mode} not expressible", "mesh")

    def annotations(self, svc: dict[str, Any]) -> None:
        name, _ = meta(svc)
        d = self.drafts.get(dns_name(name))
        ann = (svc.get("metadata") or {}).get("annotations") or {}
        if d is None or not ann:
            return
        self.unread_annotations(svc, ann, f"service:{d.name}")
        t = duration_ms(ann.get("timeout.linkerd.io/request"))
        if t:
            d.resilience["timeout"] = Timeout(ms=t)
        retry = self.retry(svc, ann)
        if retry is not None:
            d.resilience["retry"] = retry
        if ann.get("balancer.linkerd.io/failure-accrual") == "consecutive":
            kw: dict[str, Any] = {}
            mf = ann.get("balancer.linkerd.io/failure-accrual-consecutive-max-failures")
            if mf and str(mf).isdigit():
                kw["consecutive_5xx"] = int(mf)
            pen = duration_ms(ann.get("balancer.linkerd.io/failure-accrual-consecutive-max-penalty"))
            if pen:
                kw["eject_ms"] = pen
            d.resilience["outlier"] = Outlier(**kw)

    def unread_annotations(self, doc: dict[str, Any], ann: dict[str, Any], place: str) -> None:
        """Linkerd's retry, timeout and balancer annotations this importer does not carry."""
        read = {"timeout.linkerd.io/request", "retry.linkerd.io/http", "retry.linkerd.io/limit",
                "retry.linkerd.io/timeout"}
        if kind_of(doc) == "Service":
            read |= {"balancer.linkerd.io/failure-accrual",
                     "balancer.linkerd.io/failure-accrual-consecutive-max-failures",
                     "balancer.linkerd.io/failure-accrual-consecutive-max-penalty"}
        for k in sorted(ann):
            if k.split("/")[0] in ("retry.linkerd.io", "timeout.linkerd.io", "balancer.linkerd.io") and k not in read:
                self.note(doc, f"metadata.annotations.{k}", "not expressible", place)

    def retry(self, doc: dict[str, Any], ann: dict[str, Any]) -> Retry | None:
        limit = ann.get("retry.linkerd.io/limit")
        conds = ann.get("retry.linkerd.io/http")
        if limit is None and conds is None:
            return None
        if conds is None:
            self.note(doc, "retry.linkerd.io/limit", "no retry.linkerd.io/http conditions: nothing is retried")
            return None
        on, codes = [], []
        for c in str(conds).split(","):
            c = c.strip()
            if c in RETRY_ON:
                on.append(RETRY_ON[c])
            elif c.isdigit():
                codes.append(int(c))
            elif c:
                self.note(doc, "retry.linkerd.io/http", f"retry condition '{c}' not expressible")
        return Retry(attempts=int(limit) if str(limit).isdigit() else 1, on=tuple(on),  # type: ignore[arg-type]
                     status_codes=tuple(codes), per_try_ms=duration_ms(ann.get("retry.linkerd.io/timeout")))

    # ----------------------------------------------------------------- outbound routes
    def outbound(self, route: dict[str, Any]) -> None:
        spec = route.get("spec") or {}
        ann = (route.get("metadata") or {}).get("annotations") or {}
        retry = self.retry(route, ann)
        rt = duration_ms(ann.get("timeout.linkerd.io/request"))
        for p in spec.get("parentRefs") or []:
            d = self.drafts.get(dns_name(str(p.get("name", ""))))
            if d is None:
                self.note(route, "spec.parentRefs", f"{p.get('name')} is not a Service of the input")
                continue
            self.unread_annotations(route, ann, f"route:{d.name}")
            port = p.get("port")
            if port is not None and set(d.ports) != {port}:
                # meshc routes belong to the service, not to one of its ports
                self.note(route, "spec.parentRefs.port", f"the route applies to every port of {d.name}, "
                          f"not only {port}", f"route:{d.name}")
            rules = []
            for i, r in enumerate(spec.get("rules") or []):
                rule = self.route_rule(route, f"spec.rules[{i}]", r, d)
                if rule is not None:
                    rules.append(rule.model_copy(update={
                        "retry": retry or Retry(attempts=0, on=()),
                        "timeout": rule.timeout or (Timeout(ms=rt) if rt else d.resilience.get("timeout"))}))
            if retry is not None and not d.resilience.get("retry"):
                d.resilience["retry"] = retry
            lift_routes(d, rules)

    def route_rule(self, doc: dict[str, Any], at: str, r: dict[str, Any], d: Draft) -> RouteRule | None:
        place = f"route:{d.name}"
        matches = []
        for j, m in enumerate(r.get("matches") or []):
            got = self.match(doc, f"{at}.matches[{j}]", m, place)
            if got is None:
                self.note(doc, f"{at}.matches[{j}]", "the rule is left out: a condition cannot be written", place)
                return None
            matches.append(got)
        if matches == [Match(path=PathMatch(kind="under", value="/"))]:
            matches = []
        kw: dict[str, Any] = {"matches": simplify_matches(merge_under(tuple(matches)))}
        dests, weights = [], []
        for k, b in enumerate(r.get("backendRefs") or []):
            dest = self.backend(b)
            if dest is None:
                self.note(doc, f"{at}.backendRefs[{k}]", f"{b.get('name')} is not a Service of the input", place)
                continue
            dests.append(dest)
            weights.append(int(b.get("weight", 1)))
        for f in r.get("filters") or []:
            self.filter(doc, at, f, kw, place)
        if not dests and "redirect" not in kw:
            dests, weights = [Destination(service=d.name)], [1]
        if dests and "redirect" not in kw:
            kw["destinations"] = tuple(x.model_copy(update={"weight": w}) for x, w in
                                       zip(dests, weights_to_percent(weights), strict=True) if w)
        t = duration_ms((r.get("timeouts") or {}).get("request"))
        kw["timeout"] = Timeout(ms=t) if t else None
        for key in sorted(set(r.get("timeouts") or {}) - {"request"}):
            self.note(doc, f"{at}.timeouts.{key}", "not expressible", place)
        for key in sorted(set(r) - {"matches", "backendRefs", "filters", "timeouts"}):
            self.note(doc, f"{at}.{key}", "not expressible", place)
        return RouteRule(**kw)

    def filter(self, doc: dict[str, Any], at: str, f: dict[str, Any], kw: dict[str, Any], place: str) -> None:
        t = f.get("type")
        if t in ("RequestHeaderModifier", "ResponseHeaderModifier"):
            body = f.get("requestHeaderModifier" if t == "RequestHeaderModifier" else "responseHeaderModifier") or {}
            kw["request_headers" if t == "RequestHeaderModifier" else "response_headers"] = HeaderOps(
                set=tuple((h["name"].lower(), str(h["value"])) for h in body.get("set") or []),
                add=tuple((h["name"].lower(), str(h["value"])) for h in body.get("add") or []),
                remove=tuple(str(h).lower() for h in body.get("remove") or []))
        elif t == "RequestRedirect":
            rd = f.get("requestRedirect") or {}
            path = (rd.get("path") or {}).get("replaceFullPath")
            kw["redirect"] = Redirect(path=path, host=rd.get("hostname"), scheme=rd.get("scheme"),
                                      port=rd.get("port"), code=int(rd.get("statusCode", 302)))
        elif t == "URLRewrite":
            rw = f.get("urlRewrite") or {}
            p = rw.get("path") or {}
            kw["rewrite"] = Rewrite(prefix=p.get("replacePrefixMatch"), path=p.get("replaceFullPath"),
                                    host=rw.get("hostname"))
        elif t == "RequestMirror":
            rm = f.get("requestMirror") or {}
            dest = self.backend(rm.get("backendRef") or {})
            pct = rm.get("percent")
            frac = rm.get("fraction") or {}
            if frac:
                pct = 100 * int(frac.get("numerator", 0)) / int(frac.get("denominator", 100) or 100)
            if dest is None:
                self.note(doc, f"{at}.filters.RequestMirror", "mirror target is not a Service of the input", place)
            else:
                mirror_percent = required_percent(pct, "mirror percent") if pct is not None else FULL
                kw["mirror"] = Mirror(destination=dest, percent=mirror_percent)
        else:
            self.note(doc, f"{at}.filters.{t}", "not expressible", place)

    def match(self, doc: dict[str, Any], at: str, m: dict[str, Any], place: str) -> Match | None:
        kw: dict[str, Any] = {}
        path = m.get("path") or {}
        if path:
            kind = {"Exact": "exact", "PathPrefix": "under", "RegularExpression": "regex"}.get(path.get("type",
                                                                                                   "PathPrefix"))
            value = str(path.get("value", "/"))
            if kind is None:
                return None
            if kind == "under" and value != "/" and value.endswith("/"):
                value = value.rstrip("/")  # Gateway API ignores a trailing slash of a PathPrefix
            kw["path"] = PathMatch(kind=kind, value=value)  # type: ignore[arg-type]
        headers, query = [], []
        for h in m.get("headers") or []:
            kind = {"Exact": "exact", "RegularExpression": "regex"}.get(h.get("type", "Exact"))
            if kind is None:
                return None
            value = str(h.get("value", ""))
            if kind == "regex" and value in PRESENT:
                headers.append(StringMatch(name=str(h["name"]).lower(), kind="present"))
                continue
            headers.append(StringMatch(name=str(h["name"]).lower(), kind=kind, value=value))  # type: ignore[arg-type]
        for q in m.get("queryParams") or []:
            kind = {"Exact": "exact", "RegularExpression": "regex"}.get(q.get("type", "Exact"))
            if kind is None:
                return None
            query.append(StringMatch(name=str(q["name"]), kind=kind, value=str(q.get("value", ""))))  # type: ignore[arg-type]
        if m.get("method"):
            if m["method"] not in METHODS:
                return None
            kw["methods"] = (m["method"],)
        return Match(headers=tuple(headers), query=tuple(query), **kw)

    def service_profile(self, sp: dict[str, Any]) -> None:
        """linkerd.io/v1alpha2 ServiceProfile (legacy): per-route timeouts and retries."""
        name, _ = meta(sp)
        d = self.drafts.get(dns_name(name.split(".")[0]))
        if d is None:
            self.note(sp, "metadata.name", "not a Service of the input")
            return
        if d.routes:
            self.note(sp, "spec.routes", "the service also has HTTPRoutes, which Linkerd prefers; ignored",
                      f"route:{d.name}")
            return
        spec = sp.get("spec") or {}
        place = f"route:{d.name}"
        budget = spec.get("retryBudget") or {}
        ratio = budget.get("retryRatio")
        rules = []
        for i, r in enumerate(spec.get("routes") or []):
            cond = profile_condition(r.get("condition") or {})
            if cond is None or set(cond) - {"method", "pathRegex"}:
                self.note(sp, f"spec.routes[{i}].condition", "only method and pathRegex are expressible; the "
                          "route is left out", place)
                continue
            m = Match(path=PathMatch(kind="regex", value=str(cond["pathRegex"])) if cond.get("pathRegex") else None,
                      methods=(str(cond["method"]),) if cond.get("method") in METHODS else ())
            retry = Retry(attempts=1, on=("5xx",), budget=percent(float(ratio) * 100) if ratio is not None else None) \
                if r.get("isRetryable") else Retry(attempts=0, on=())
            # a profile route without a timeout has Linkerd's default of 10s
            t = duration_ms(r.get("timeout")) or PROFILE_TIMEOUT_MS
            rules.append(RouteRule(matches=(m,) if m != Match() else (), destinations=(Destination(service=d.name),),
                                   timeout=Timeout(ms=t), retry=retry))
            if r.get("isRetryable"):
                self.note(sp, f"spec.routes[{i}].isRetryable", "Linkerd retries within a budget, not a count: "
                          "written as 1 retry on 5xx", place)
            if r.get("responseClasses"):
                self.note(sp, f"spec.routes[{i}].responseClasses", "not expressible", place)
        if rules:
            rules.append(RouteRule(destinations=(Destination(service=d.name),), retry=Retry(attempts=0, on=())))
            lift_routes(d, rules)

    # ----------------------------------------------------------------- inbound
    def server_service(self, server: dict[str, Any]) -> Draft | None:
        sel = ((server.get("spec") or {}).get("podSelector") or {}).get("matchLabels") or {}
        sel = {str(k): str(v) for k, v in sel.items()}
        for d in sorted(self.drafts.values(), key=lambda x: x.name):
            if d.selector and d.selector.items() <= sel.items():
                return d
        return None

    def server(self, s: dict[str, Any]) -> None:
        spec = s.get("spec") or {}
        d = self.server_service(s)
        if d is None:
            self.note(s, "spec.podSelector", "selects no Service of the input")
            return
        ports = self.server_ports(s, d)
        self.server_ports_of[meta(s)[0]] = ports
        proto = PROXY_PROTOCOL.get(str(spec.get("proxyProtocol", "")))
        for port in ports:
            if proto:
                d.ports[port] = proto
        # a Server without accessPolicy denies what no authorization allows (Linkerd's default)
        policy = str(spec.get("accessPolicy") or "deny")
        if policy not in DEFAULT_POLICY:
            self.note(s, "spec.accessPolicy", f"{policy} not expressible; taken as deny (fail closed)", "authz")
            policy = "deny"
        for port in ports:
            self.port_policy[(d.name, port)] = policy
            if policy != "deny":
                d.port_mtls[port] = DEFAULT_POLICY[policy][1]

    def server_ports(self, s: dict[str, Any], d: Draft) -> list[int]:
        """The Service ports of `d` a Server's port (a pod port: number or name) is reached by."""
        port = (s.get("spec") or {}).get("port")
        found = sorted({svc_port for (name, target), svc_port in self.target_ports.items()
                        if name == d.name and target == port})
        if not found and isinstance(port, int) and port in d.ports:
            found = [port]
        if not found:
            self.note(s, "spec.port", f"port {port} is not a port of Service {d.name} (nor the target of one); "
                      "the Server and its authorizations are left out (fail closed)", "authz")
        return found

    def read_ports(self) -> None:
        """(service, pod port number or name) -> Service port, from Services' targetPorts and the
        workloads' named container ports (Servers name pod ports)."""
        self.target_ports: dict[tuple[str, Any], int] = {}
        container_ports: dict[tuple[str, str], int] = {}  # (namespace, port name) -> number
        for w in self.of("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Pod"):
            pod = (w.get("spec") or {}) if kind_of(w) == "Pod" else \
                (((w.get("spec") or {}).get("template") or {}).get("spec") or {})
            for c in pod.get("containers") or []:
                for cp in c.get("ports") or []:
                    if cp.get("name") and isinstance(cp.get("containerPort"), int):
                        container_ports.setdefault((meta(w)[1], str(cp["name"])), cp["containerPort"])
        for svc in self.of("Service"):
            name, ns = meta(svc)
            key = dns_name(name)
            key = self.version_services.get(key, (key, ""))[0]
            for p in (svc.get("spec") or {}).get("ports") or []:
                number = p.get("port")
                if not isinstance(number, int):
                    continue
                target = p.get("targetPort", number)
                self.target_ports.setdefault((key, target), number)
                if isinstance(target, str) and (ns, target) in container_ports:
                    self.target_ports.setdefault((key, container_ports[(ns, target)]), number)
                if isinstance(target, int):
                    for (cns, cname), cnum in container_ports.items():
                        if cns == ns and cnum == target:
                            self.target_ports.setdefault((key, cname), number)

    def port_defaults(self) -> None:
        """Linkerd decides per port (a Server's accessPolicy, else the default policy); meshc has
        one default for the mesh. When they differ, the mesh denies by default and every port
        whose policy lets callers in gets an allow for them."""
        default = self.default_policy
        policies = {(d.name, p): self.port_policy.get((d.name, p), default)
                    for d in self.drafts.values() if d.external is None for p in d.ports}
        if not any(v == "deny" for v in policies.values()):
            return
        self.settings.authz = "deny_by_default"
        opened: dict[tuple[str, str], list[int]] = {}
        for (svc, port), policy in sorted(policies.items()):
            if policy != "deny":
                opened.setdefault((svc, policy), []).append(port)
        for (svc, policy), ports in sorted(opened.items()):
            d = self.drafts[svc]
            everyone = Source(kind="authenticated") if policy.endswith("-authenticated") else Source(kind="any")
            self.rules.append(AuthzRule(action="allow", sources=(everyone,), destinations=(svc,),
                                        ports=() if set(d.ports) <= set(ports) else tuple(ports)))
            if policy.startswith("cluster-"):
                self.note(f"service {svc}", "accessPolicy", f"{policy}: the cluster's networks are not expressible; "
                          "written as every network", "authz")

    def authorization(self, routes: list[dict[str, Any]]) -> None:
        auths = {(kind_of(a), meta(a)[0]): a for a in self.of("MeshTLSAuthentication", "NetworkAuthentication")}
        inbound = {meta(r)[0]: r for r in routes
                   if any(p.get("kind") == "Server" for p in (r.get("spec") or {}).get("parentRefs") or [])}
        for sa in self.of("ServerAuthorization"):
            self.server_authorization(sa)
        for ap in self.of("AuthorizationPolicy"):
            spec = ap.get("spec") or {}
            target = spec.get("targetRef") or {}
            sources = self.sources(ap, spec.get("requiredAuthenticationRefs") or [], auths)
            if sources is None:
                continue
            if target.get("kind") == "Server":
                server = self.servers.get(str(target.get("name")))
                d = self.server_service(server) if server else None
                if d is None:
                    self.note(ap, "spec.targetRef", "targets no Server of the input", "authz")
                    continue
                self.allow(sources, d, server, [Match()])
            elif target.get("kind") == "HTTPRoute":
                route = inbound.get(str(target.get("name")))
                if route is None:
                    self.note(ap, "spec.targetRef", "targets no inbound HTTPRoute of the input", "authz")
                    continue
                for p in (route.get("spec") or {}).get("parentRefs") or []:
                    server = self.servers.get(str(p.get("name")))
                    d = self.server_service(server) if server else None
                    if d is None:
                        continue
                    ms = []
                    for i, r in enumerate((route.get("spec") or {}).get("rules") or []):
                        for j, m in enumerate(r.get("matches") or [{}]):
                            got = self.match(route, f"spec.rules[{i}].matches[{j}]", m, "authz")
                            if got is None:
                                self.note(route, f"spec.rules[{i}].matches[{j}]", "condition not expressible; "
                                          "the allow is left out (fail closed)", "authz")
                                continue
                            ms.append(got)
                    self.allow(sources, d, server, ms)
            elif target.get("kind") == "Namespace":
                ns = str(target.get("name", meta(ap)[1]))
                for d in sorted(self.drafts.values(), key=lambda x: x.name):
                    if d.namespace == ns and d.external is None:
                        self.allow(sources, d, None, [Match()])
            else:
                self.note(ap, "spec.targetRef", f"target kind {target.get('kind')} not expressible", "authz")

    def server_authorization(self, sa: dict[str, Any]) -> None:
        """policy.linkerd.io/v1beta1 ServerAuthorization (before AuthorizationPolicy): the clients
        of the Servers it names or selects."""
        spec = sa.get("spec") or {}
        ref = spec.get("server") or {}
        if ref.get("name"):
            servers = [self.servers[str(ref["name"])]] if str(ref["name"]) in self.servers else []
        else:
            want = ((ref.get("selector") or {}).get("matchLabels") or {}).items()
            servers = [x for x in self.servers.values() if want and
                       want <= ((x.get("metadata") or {}).get("labels") or {}).items()]
            if (ref.get("selector") or {}).get("matchExpressions"):
                servers = []
        if not servers:
            self.note(sa, "spec.server", "names or selects no Server of the input (matchExpressions are not "
                      "read); left out (fail closed)", "authz")
            return
        client = spec.get("client") or {}
        nets = client.get("networks") or []
        if nets and not ({str(n.get("cidr")) for n in nets} & ALL_NETWORKS and not any(n.get("except") for n in nets)):
            self.note(sa, "spec.client.networks", "network-based authorization is not expressible; left out "
                      "(fail closed)", "authz")
            return
        tls = client.get("meshTLS") or {}
        sources: tuple[Source, ...] | None
        if client.get("unauthenticated"):
            sources = (Source(kind="any"),)
        elif tls.get("unauthenticatedTLS"):
            self.note(sa, "spec.client.meshTLS.unauthenticatedTLS", "TLS clients without a mesh identity are not "
                      "expressible; left out (fail closed)", "authz")
            return
        else:
            refs = [{"kind": "ServiceAccount", **a} for a in tls.get("serviceAccounts") or []]
            sources = self.mesh_tls_sources(sa, {"identities": tls.get("identities") or [], "identityRefs": refs})
        if not sources:
            self.note(sa, "spec.client", "no client this importer can name; left out (fail closed)", "authz")
            return
        for server in servers:
            d = self.server_service(server)
            if d is not None:
                self.allow(sources, d, server, [Match()])

    def sources(self, ap: dict[str, Any], refs: list[dict[str, Any]],
                auths: dict[tuple[str, str], dict[str, Any]]) -> tuple[Source, ...] | None:
        out: list[Source] = []
        for ref in refs:
            kind = ref.get("kind")
            if kind == "ServiceAccount":
                out.append(self.identity(str(ref.get("name")), str(ref.get("namespace") or meta(ap)[1])))
                continue
            a = auths.get((str(kind), str(ref.get("name"))))
            if a is None:
                self.note(ap, "spec.requiredAuthenticationRefs", f"{kind} {ref.get('name')} is not in the input; "
                          "the policy is left out (fail closed)", "authz")
                return None
            spec = a.get("spec") or {}
            if kind == "NetworkAuthentication":
                nets = {str(n.get("cidr")) for n in spec.get("networks") or [] if not n.get("except")}
                if nets & ALL_NETWORKS and not any(n.get("except") for n in spec.get("networks") or []):
                    out.append(Source(kind="any"))
                else:
                    self.note(a, "spec.networks", "network-based authorization is not expressible; the policy is "
                              "left out (fail closed)", "authz")
                    return None
                continue
            out += self.mesh_tls_sources(a, spec) or ()
        return tuple(dict.fromkeys(out)) or None

    def mesh_tls_sources(self, a: dict[str, Any], spec: dict[str, Any]) -> tuple[Source, ...] | None:
        """The sources of a MeshTLSAuthentication spec (identities, identityRefs)."""
        out: list[Source] = []
        for ident in spec.get("identities") or []:
            if ident == "*":
                out.append(Source(kind="authenticated"))
                continue
            m = re.match(r"^([a-z0-9][-a-z0-9.]*?)\.([a-z0-9][-a-z0-9]*)\.serviceaccount\.identity\.", str(ident))
            if m:
                out.append(self.identity(m.group(1), m.group(2)))
            else:  # e.g. `*.ns.serviceaccount.identity...`: every account of a namespace
                self.note(a, "spec.identities", f"identity '{ident}' not expressible; left out", "authz")
        for r in spec.get("identityRefs") or []:
            if r.get("kind") == "ServiceAccount":
                out.append(self.identity(str(r.get("name")), str(r.get("namespace") or meta(a)[1])))
            elif r.get("kind") == "Namespace":
                self.note(a, "spec.identityRefs", "every identity of a namespace is not expressible; left out",
                          "authz")
            else:
                self.note(a, "spec.identityRefs", f"identity kind {r.get('kind')} not expressible; left out", "authz")
        return tuple(dict.fromkeys(out)) or None

    def identity(self, sa: str, ns: str) -> Source:
        for d in sorted(self.drafts.values(), key=lambda x: x.name):
            if (d.identity or d.name) == sa and d.namespace == ns:
                return Source(kind="service", name=d.name)
        if "ingress" in sa:
            self.settings.ingress_identity = (dns_name(sa), ns)
            return Source(kind="ingress")
        return Source(kind="identity", name=dns_name(sa))

    def allow(self, sources: tuple[Source, ...], d: Draft, server: dict[str, Any] | None, ms: list[Match]) -> None:
        ports: tuple[int, ...] = ()
        if server is not None:
            ports = tuple(self.server_ports_of.get(meta(server)[0], ()))
            if not ports:
                return  # the Server's port was reported: nothing to allow (fail closed)
        for m in ms:
            if m == Match(path=PathMatch(kind="under", value="/")):
                m = Match()
            self.rules.append(AuthzRule(action="allow", sources=sources, destinations=(d.name,),
                                        methods=m.methods, paths=(m.path,) if m.path else (),
                                        headers=m.headers, ports=ports))

    def merge_ports(self) -> None:
        """Rules that name every port of their service need no port condition."""
        out: list[AuthzRule] = []
        for r in self.rules:
            d = self.drafts[r.destinations[0]]
            if r.ports and set(d.ports) <= set(r.ports) | {p for x in self.rules if x.model_copy(update={"ports": ()})
                                                           == r.model_copy(update={"ports": ()}) for p in x.ports}:
                r = r.model_copy(update={"ports": ()})
            if r not in out:
                out.append(r)
        self.rules = out


def profile_condition(cond: dict[str, Any]) -> dict[str, Any] | None:
    """A ServiceProfile route condition as one {method, pathRegex} map: `all` of such conditions
    is their union; None when two of them say different things."""
    out = {k: v for k, v in cond.items() if k != "all"}
    for part in cond.get("all") or []:
        inner = profile_condition(part or {})
        if inner is None or any(k in out and out[k] != v for k, v in inner.items()):
            return None
        out.update(inner)
    return out


def import_files(paths: list[Path], mesh_name: str | None = None) -> Result:
    return LinkerdImporter(read_documents(paths), mesh_name).run()
