"""Istio -> .mesh: reads networking.istio.io (v1, v1beta1, v1alpha3) and security.istio.io
(v1, v1beta1) resources plus core Services, ServiceAccounts and workloads.

- Service/Deployment: services, ports, versions (`version` label), identities.
- DestinationRule: versions (subsets), load balancing, connection pool (circuit breaker),
  outlier detection, retry budget.
- VirtualService: ordered HTTP routes (matches, splits, redirects, direct responses, rewrites,
  header operations, mirrors, timeouts, retries, faults). Settings that every route of a
  service repeats are lifted to the service. A VirtualService bound to a Gateway becomes
  `expose ingress` on its service.
- ServiceEntry (+ DestinationRule with TLS `SIMPLE`): external services, TLS origination.
- PeerAuthentication: mesh, namespace, workload and port mTLS modes (Istio's default is
  PERMISSIVE when there is none).
- AuthorizationPolicy: allow/deny rules. Istio allows everything to a workload no ALLOW policy
  selects; meshc has one default, so when any ALLOW policy exists the mesh is
  `deny_by_default` and every service no ALLOW policy selects gets `allow * -> svc` (the same
  meaning). A condition that cannot be written makes an ALLOW rule be left out (fail closed) and
  is dropped from a DENY rule (which then denies more); both are reported.
- Sidecar egress hosts: `calls`.

Istio's implicit default retry policy (2 retries) is written out explicitly on HTTP services.
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
    version_name,
    weights_to_percent,
)
from meshc.importers.kube import WORKLOADS, lookup_host, read_services, workload_labels
from meshc.model import (
    FULL,
    AuthzRule,
    CircuitBreaker,
    Destination,
    DirectResponse,
    External,
    Fault,
    HeaderOps,
    Ingress,
    LoadBalance,
    Match,
    Mirror,
    Outlier,
    PathMatch,
    Redirect,
    Retry,
    RetryOn,
    Rewrite,
    RouteRule,
    Source,
    StringMatch,
    StringMatchKind,
    Timeout,
)

ROOT_NAMESPACE = "istio-system"
MTLS = {"STRICT": "strict", "PERMISSIVE": "permissive", "DISABLE": "disabled"}
LB = {"ROUND_ROBIN": "round_robin", "LEAST_REQUEST": "least_request", "LEAST_CONN": "least_request",
      "RANDOM": "random"}
RETRY_ON = {"5xx", "gateway-error", "connect-failure", "reset", "retriable-4xx", "refused-stream"}
ISTIO_DEFAULT_RETRY_ON: tuple[RetryOn, ...] = ("connect-failure", "refused-stream")
METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
PRESENT = {".*", ".+", "^.*$", "^.+$"}
# Istio StringMatch keys that map one-to-one onto a .mesh match kind
STRING_MATCH_KINDS: dict[str, StringMatchKind] = {"exact": "exact", "prefix": "prefix", "regex": "regex"}
SE_PROTOCOL = {"HTTP": "http", "HTTP2": "http2", "GRPC": "grpc", "TCP": "tcp", "TLS": "tls", "HTTPS": "tls",
               "MONGO": "tcp"}
HANDLED_ROUTE_KEYS = {"match", "route", "redirect", "directResponse", "rewrite", "headers", "mirror",
                      "mirrorPercentage", "mirror_percent", "mirrorPercent", "timeout", "retries", "fault", "name"}

READ_KINDS = {"Service", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Pod", "ServiceEntry", "DestinationRule", "VirtualService", "Gateway", "PeerAuthentication", "AuthorizationPolicy", "Sidecar"}


class IstioImporter:
    origin = "istio"

    def __init__(self, docs: list[tuple[str, Any]], mesh_name: str | None = None):
        self.report = Report()
        self.docs = self.latest([d for _, d in docs if isinstance(d, dict)])
        self.drafts: dict[str, Draft] = {}
        self.external_hosts: dict[str, str] = {}
        self.settings = MeshSettings(mtls="permissive", authz="allow_by_default")
        self.mesh_name = mesh_name
        self.rules: list[AuthzRule] = []
        self.routed: set[str] = set()  # services with a VirtualService (no implicit retry default)
        self.target_ports: dict[str, dict[int, int]] = {}  # service -> workload port -> Service port
        # gateway routes: (VirtualService, field, service, timeout ms, retries)
        self.ingress_hops: list[tuple[dict[str, Any], str, Draft, int | None, Retry | None]] = []

    def latest(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One document per kind, namespace and name: a later one replaces an earlier one, as
        `kubectl apply` of the files in order would (Istio's samples define alternative
        VirtualServices under one name)."""
        last: dict[tuple[str, str, str], int] = {}
        for i, d in enumerate(docs):
            name, ns = meta(d)
            if name and kind_of(d):
                key = (kind_of(d), ns, name)
                if key in last:
                    self.note(d, "metadata.name", "defined more than once; the last definition replaces the "
                              "earlier ones (as `kubectl apply` would)")
                last[key] = i
        return [d for i, d in enumerate(docs)
                if not (meta(d)[0] and kind_of(d)) or last[(kind_of(d), meta(d)[1], meta(d)[0])] == i]

    def of(self, *kinds: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if kind_of(d) in kinds]

    def note(self, doc: dict[str, Any] | str, fld: str, why: str, place: str = "") -> None:
        self.report.add(doc if isinstance(doc, str) else resource(doc), fld, why, place)

    # ----------------------------------------------------------------- entry
    def run(self) -> Result:
        read_services([("", d) for d in self.docs], self.report, self.drafts)
        self.read_target_ports()
        self.settings.namespace = self.main_namespace()
        for se in self.of("ServiceEntry"):
            self.service_entry(se)
        for dr in self.of("DestinationRule"):
            self.destination_rule(dr)
        gateways = {meta(g)[0]: g for g in self.of("Gateway")}
        ingress_vs = []
        for vs in self.of("VirtualService"):
            gws = (vs.get("spec") or {}).get("gateways") or []
            if gws and any(g != "mesh" for g in gws):
                ingress_vs.append(vs)
            if not gws or "mesh" in gws:
                self.virtual_service(vs)
        for vs in ingress_vs:
            self.ingress(vs, gateways)
        self.default_retries()
        self.ingress_settings()
        self.peer_authentications()
        self.trust_domain()
        self.authorization()
        self.sidecars()
        self.settings.name = self.mesh_name or self.guess_name(gateways)
        report_unread(self.docs, READ_KINDS, self.report, self.origin)
        mesh = build_mesh(self.settings, self.drafts, self.rules, self.report)
        return finish(mesh, self.report, self.origin)

    def read_target_ports(self) -> None:
        """Workload (container) port -> Service port, per service: PeerAuthentication port modes and
        AuthorizationPolicy ports name workload ports, a .mesh names the service's."""
        named: dict[tuple[str, str], int] = {}  # (namespace, container port name) -> number
        for w in self.of(*WORKLOADS):
            for c in workload_labels(w)[1].get("containers") or []:
                for cp in c.get("ports") or []:
                    if cp.get("name") and isinstance(cp.get("containerPort"), int):
                        named[(meta(w)[1], str(cp["name"]))] = cp["containerPort"]
        for svc in self.of("Service"):
            name, ns = meta(svc)
            d = self.drafts.get(dns_name(name))
            if d is None or d.namespace != ns:
                continue
            for sp in (svc.get("spec") or {}).get("ports") or []:
                number, target = sp.get("port"), sp.get("targetPort", sp.get("port"))
                if isinstance(target, str) and not target.isdigit():
                    target = named.get((ns, target))
                if isinstance(number, int) and target is not None and str(target).isdigit():
                    self.target_ports.setdefault(d.name, {})[int(target)] = number

    def service_port(self, d: Draft, workload_port: int) -> int | None:
        """The Service port of `d` that forwards to `workload_port`, None when there is none."""
        ports = self.target_ports.get(d.name)
        if ports is None:  # no Service in the input (declared from a reference): nothing to translate
            return workload_port
        return ports.get(workload_port)

    def main_namespace(self) -> str:
        counts = Counter(d.namespace for d in self.drafts.values())
        if not counts:
            counts = Counter(meta(d)[1] for d in self.docs if (d.get("metadata") or {}).get("namespace")
                             and meta(d)[1] != ROOT_NAMESPACE)
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] if counts else "default"

    def guess_name(self, gateways: dict[str, Any]) -> str:
        for g in sorted(gateways):
            if g.endswith("-gateway"):
                return dns_name(g[: -len("-gateway")])
        return dns_name(self.settings.namespace)

    def draft_for(self, host: str, ns: str, doc: dict[str, Any], fld: str) -> Draft | None:
        name = lookup_host(host, ns, self.drafts, self.external_hosts)
        if name is not None:
            return self.drafts[name]
        if host == "*" or "*" in host:
            self.note(doc, fld, f"wildcard host '{host}' has no .mesh equivalent")
            return None
        parts = host.split(".")
        if len(parts) > 1 and not (len(parts) >= 3 and parts[2] == "svc") and len(parts) != 2:
            self.note(doc, fld, f"host '{host}' is neither a Kubernetes service nor a ServiceEntry host")
            return None
        key = dns_name(parts[0])
        d = self.drafts.setdefault(key, Draft(key, parts[1] if len(parts) > 1 else ns))
        self.note(doc, fld, f"no Kubernetes Service '{host}' in the input; declared from this reference",
                  f"service:{key}")
        return d

    # ----------------------------------------------------------------- ServiceEntry
    def service_entry(self, se: dict[str, Any]) -> None:
        name, ns = meta(se)
        spec = se.get("spec") or {}
        hosts = spec.get("hosts") or []
        if not hosts:
            self.note(se, "spec.hosts", "no host")
            return
        key = dns_name(name)
        if spec.get("location") == "MESH_INTERNAL":
            self.note(se, "spec.location", "a MESH_INTERNAL entry is imported as an external service",
                      f"service:{key}")
        d = self.drafts.setdefault(key, Draft(key, ns))
        d.external = External(host=hosts[0])
        for h in hosts:
            self.external_hosts[h] = key
        if len(hosts) > 1:
            self.note(se, "spec.hosts", f"only the first host ({hosts[0]}) is kept", f"service:{key}")
        for p in spec.get("ports") or []:
            proto = SE_PROTOCOL.get(str(p.get("protocol", "TCP")).upper())
            if proto is None or not isinstance(p.get("number"), int):
                self.note(se, f"spec.ports[{p.get('name')}]", f"protocol {p.get('protocol')} is not supported",
                          f"service:{key}")
                continue
            d.ports[p["number"]] = proto
            target = p.get("targetPort")
            if target is not None and target != p["number"]:
                self.note(se, f"spec.ports[{p.get('name')}].targetPort", f"target port {target} is not "
                          f"expressible: connections go to port {p['number']} of the host", f"service:{key}")
        for fld in ("endpoints", "addresses", "workloadSelector", "subjectAltNames", "exportTo"):
            if spec.get(fld):
                self.note(se, f"spec.{fld}", "not expressible for external services", f"service:{key}")

    # ----------------------------------------------------------------- DestinationRule
    def destination_rule(self, dr: dict[str, Any]) -> None:
        _, ns = meta(dr)
        spec = dr.get("spec") or {}
        d = self.draft_for(str(spec.get("host", "")), ns, dr, "spec.host")
        if d is None:
            return
        place = f"service:{d.name}"
        for s in spec.get("subsets") or []:
            vname = version_name(str(s.get("name", "")))
            labels = {str(k): str(v) for k, v in (s.get("labels") or {}).items()}
            if d.external is not None:
                self.note(dr, f"spec.subsets[{vname}]", "external services have no versions", place)
                continue
            d.versions[vname] = labels or {"version": vname}
            if s.get("trafficPolicy"):
                self.note(dr, f"spec.subsets[{vname}].trafficPolicy", "per-version traffic policies are not "
                          "expressible; the service-level policy applies", place)
        tp = spec.get("trafficPolicy") or {}
        if d.external is not None:
            self.external_tls(dr, d, tp)
            return
        self.traffic_policy(dr, d, tp)

    def external_tls(self, dr: dict[str, Any], d: Draft, tp: dict[str, Any]) -> None:
        assert d.external is not None
        settings = [(pl.get("port", {}).get("number"), pl.get("tls") or {}) for pl in tp.get("portLevelSettings") or []]
        if tp.get("tls"):
            settings.append((None, tp["tls"]))
        passthrough = {n for n, proto in d.ports.items() if proto == "tls"}  # callers speak TLS themselves
        for number, tls in settings:
            if tls.get("mode") == "SIMPLE":
                d.external = External(host=d.external.host, tls_originate=True,
                                      sni=tls.get("sni") if tls.get("sni") != d.external.host else None)
                for n, proto in list(d.ports.items()):
                    if number in (None, n) and proto in ("http", "tls"):
                        d.ports[n] = "tls"
                        passthrough.discard(n)
            elif tls.get("mode") not in (None, "DISABLE"):
                self.note(dr, "spec.trafficPolicy.tls", f"TLS mode {tls.get('mode')} to an external service",
                          f"service:{d.name}")
        if d.external.tls_originate:
            # `tls originate` makes every tls port of the external originate TLS: a port whose
            # callers speak TLS themselves would be encrypted twice
            for n in sorted(passthrough):
                del d.ports[n]
                self.note(dr, "spec.trafficPolicy.portLevelSettings", f"port {n} (TLS from the callers, passed "
                          "through) is left out: `tls originate` applies to every tls port of an external service",
                          f"service:{d.name}")
        rest = {k for k in tp if k not in ("tls", "portLevelSettings")}
        if rest:
            self.traffic_policy(dr, d, {k: tp[k] for k in rest})

    def traffic_policy(self, dr: dict[str, Any], d: Draft, tp: dict[str, Any]) -> None:
        place = f"service:{d.name}"
        lb = tp.get("loadBalancer") or {}
        if "simple" in lb:
            policy = LB.get(str(lb["simple"]))
            if policy:
                d.resilience["load_balance"] = LoadBalance(policy=policy)  # type: ignore[arg-type]
            else:
                self.note(dr, "spec.trafficPolicy.loadBalancer.simple", f"{lb['simple']} has no .mesh equivalent",
                          place)
        elif "consistentHash" in lb:
            ch = lb["consistentHash"] or {}
            if "httpHeaderName" in ch:
                d.resilience["load_balance"] = LoadBalance(policy="consistent_hash", hash_on="header",
                                                           hash_key=str(ch["httpHeaderName"]).lower())
            elif "httpCookie" in ch:
                c = ch["httpCookie"] or {}
                d.resilience["load_balance"] = LoadBalance(policy="consistent_hash", hash_on="cookie",
                                                           hash_key=str(c.get("name", "")),
                                                           cookie_ttl_ms=duration_ms(c.get("ttl")))
            elif "httpQueryParameterName" in ch:
                d.resilience["load_balance"] = LoadBalance(policy="consistent_hash", hash_on="query",
                                                           hash_key=str(ch["httpQueryParameterName"]))
            elif ch.get("useSourceIp"):
                d.resilience["load_balance"] = LoadBalance(policy="consistent_hash", hash_on="source_ip")
            else:
                self.note(dr, "spec.trafficPolicy.loadBalancer.consistentHash", "hash key not supported", place)
        for k in set(lb) - {"simple", "consistentHash"}:
            self.note(dr, f"spec.trafficPolicy.loadBalancer.{k}", "not expressible", place)
        pool = tp.get("connectionPool") or {}
        if pool:
            tcp, http = pool.get("tcp") or {}, pool.get("http") or {}
            cb = CircuitBreaker(max_connections=tcp.get("maxConnections"), max_pending=http.get("http1MaxPendingRequests"),
                                max_requests=http.get("http2MaxRequests"), max_retries=http.get("maxRetries"))
            if any(v is not None for v in (cb.max_connections, cb.max_pending, cb.max_requests, cb.max_retries)):
                d.resilience["circuit_breaker"] = cb
            for k in set(tcp) - {"maxConnections"}:
                self.note(dr, f"spec.trafficPolicy.connectionPool.tcp.{k}", "not expressible", place)
            for k in set(http) - {"http1MaxPendingRequests", "http2MaxRequests", "maxRetries"}:
                self.note(dr, f"spec.trafficPolicy.connectionPool.http.{k}", "not expressible", place)
        od = tp.get("outlierDetection")
        if od:
            kw: dict[str, Any] = {}
            c5 = od.get("consecutive5xxErrors", od.get("consecutiveErrors", od.get("consecutiveGatewayErrors")))
            if c5 is not None:
                kw["consecutive_5xx"] = int(c5)
            for src, dst in (("interval", "interval_ms"), ("baseEjectionTime", "eject_ms")):
                if od.get(src) is not None and duration_ms(od[src]) is not None:
                    kw[dst] = duration_ms(od[src])
            if od.get("maxEjectionPercent") is not None:
                kw["max_percent"] = int(od["maxEjectionPercent"]) * 100
            d.resilience["outlier"] = Outlier(**kw)
            for k in set(od) - {"consecutive5xxErrors", "consecutiveErrors", "consecutiveGatewayErrors", "interval",
                                "baseEjectionTime", "maxEjectionPercent"}:
                self.note(dr, f"spec.trafficPolicy.outlierDetection.{k}", "not expressible", place)
        if tp.get("retryBudget"):
            d.resilience["_budget"] = percent((tp["retryBudget"] or {}).get("percent"))
        tls = (tp.get("tls") or {}).get("mode")
        if tls not in (None, "ISTIO_MUTUAL", "DISABLE"):
            self.note(dr, "spec.trafficPolicy.tls.mode", f"client TLS mode {tls} to a mesh service is not "
                      "expressible (meshc uses the mesh's mTLS)", place)
        for pl in tp.get("portLevelSettings") or []:
            if set(pl) - {"port", "tls"}:
                self.note(dr, "spec.trafficPolicy.portLevelSettings", "per-port traffic policies are not "
                          "expressible", place)
        for k in set(tp) - {"loadBalancer", "connectionPool", "outlierDetection", "tls", "portLevelSettings",
                            "retryBudget"}:
            self.note(dr, f"spec.trafficPolicy.{k}", "not expressible", place)

    # ----------------------------------------------------------------- VirtualService
    def virtual_service(self, vs: dict[str, Any]) -> None:
        _, ns = meta(vs)
        spec = vs.get("spec") or {}
        targets = [d for h in spec.get("hosts") or [] if (d := self.draft_for(str(h), ns, vs, "spec.hosts"))]
        if not targets:
            return
        for k in ("exportTo",):
            if spec.get(k):
                self.note(vs, f"spec.{k}", "not expressible", f"service:{targets[0].name}")
        for d in targets:
            if (spec.get("tcp") or spec.get("tls")) and (d.is_http or spec.get("http")):
                for k in ("tcp", "tls"):
                    if spec.get(k):
                        self.note(vs, f"spec.{k}", "TCP/TLS routes of a service with HTTP ports are not "
                                  "expressible (its routes are HTTP routes)", f"service:{d.name}")
            elif spec.get("tcp") or spec.get("tls"):
                self.set_routes(d, self.stream_routes(vs, spec, d, ns))
                continue
            rules = [r for i, h in enumerate(spec.get("http") or [])
                     if (r := self.http_route(vs, i, h, d, ns)) is not None]
            self.set_routes(d, rules)

    def stream_routes(self, vs: dict[str, Any], spec: dict[str, Any], d: Draft, ns: str) -> list[RouteRule]:
        """`tcp` and `tls` routes of a service without HTTP ports. A .mesh route table there is one
        split that every connection takes (the `tcp` routes of its tcp ports, the `tls` routes of
        its tls ports), so the input must say the same for every port; anything else is reported."""
        place = f"route:{d.name}"
        chosen: dict[str, tuple[Destination, ...]] = {}  # section -> destinations of every connection
        for key, proto in (("tcp", "tcp"), ("tls", "tls")):
            ports = {n for n, pr in d.ports.items() if pr == proto}
            routes = spec.get(key) or []
            if routes and not ports:
                self.note(vs, f"spec.{key}", f"service {d.name} has no {proto} port; these routes never apply",
                          place)
                continue
            if not ports:
                continue
            dests: tuple[Destination, ...] = (Destination(service=d.name),)  # Istio: no route matches
            for i, r in enumerate(routes):
                at = f"spec.{key}[{i}]"
                covered = self.stream_match(vs, at, r.get("match") or [], d, ns, ports)
                if covered is None:
                    return []
                if not covered:
                    continue  # matches no connection to this service
                if covered != ports:
                    self.note(vs, f"{at}.match", f"a route for port(s) {', '.join(map(str, sorted(covered)))} "
                              f"only is not expressible (a .mesh route applies to every port of {d.name})", place)
                    return []
                for k in sorted(set(r) - {"match", "route"}):
                    self.note(vs, f"{at}.{k}", "not expressible", place)
                dests = self.destinations(vs, at, r.get("route") or [], d, ns)
                if not dests:
                    self.note(vs, f"{at}.route", "the route is left out: no destination could be resolved", place)
                    return []
                break
            chosen[key] = dests
        if len(set(chosen.values())) > 1:
            self.note(vs, "spec", "different tcp and tls routes for one service are not expressible", place)
            return []
        if not chosen:
            return []
        return [RouteRule(destinations=next(iter(chosen.values())))]

    def stream_match(self, vs: dict[str, Any], at: str, ms: list[dict[str, Any]], d: Draft, ns: str,
                     ports: set[int]) -> set[int] | None:
        """The ports of `d` whose connections an OR of L4 matches takes; None when a condition
        cannot be written (reported)."""
        if not ms:
            return set(ports)
        covered: set[int] = set()
        for j, m in enumerate(ms):
            bad = sorted(set(m) - {"port", "sniHosts"})
            if bad:
                for k in bad:
                    self.note(vs, f"{at}.match[{j}].{k}", "match condition not expressible; the routes are left "
                              "out", f"route:{d.name}")
                return None
            sni = [str(h) for h in m.get("sniHosts") or []]
            if sni and not any(h == "*" or lookup_host(h, ns, self.drafts, self.external_hosts) == d.name
                               for h in sni):
                continue  # names another host
            if m.get("port") is None:
                covered |= ports
            elif str(m["port"]).isdigit() and int(m["port"]) in ports:
                covered.add(int(m["port"]))
        return covered

    def http_route(self, vs: dict[str, Any], i: int, h: dict[str, Any], owner: Draft, ns: str) -> RouteRule | None:
        place = f"route:{owner.name}"
        at = f"spec.http[{i}]"
        for k in set(h) - HANDLED_ROUTE_KEYS:
            self.note(vs, f"{at}.{k}", "not expressible", place)
        # `exact /p` + `prefix /p/` is meshc's `under /p`, except under a `uri` rewrite: Istio
        # replaces the matched prefix (`/p/` of `/p/x`), which is not meshc's `under` rewrite.
        settled = self.port_matches(vs, at, h.get("match") or [], owner)
        if settled is None:
            self.note(vs, f"{at}.match", "the route is left out: it never applies", place)
            return None
        matches = self.matches(vs, at, settled, place, merge="uri" not in (h.get("rewrite") or {}))
        if matches is None:
            self.note(vs, f"{at}.match", "the route is left out: a match condition cannot be written", place)
            return None
        kw: dict[str, Any] = {"matches": matches}
        if h.get("redirect"):
            rd = h["redirect"]
            code = int(rd.get("redirectCode", 301))
            kw["redirect"] = Redirect(path=rd.get("uri"), host=rd.get("authority"), scheme=rd.get("scheme"),
                                      port=rd.get("port"), code=code)
            for k in set(rd) - {"uri", "authority", "scheme", "port", "redirectCode"}:
                self.note(vs, f"{at}.redirect.{k}", "not expressible", place)
        elif h.get("directResponse"):
            dr = h["directResponse"]
            body = (dr.get("body") or {})
            if body.get("bytes"):
                self.note(vs, f"{at}.directResponse.body.bytes", "binary bodies are not expressible", place)
            kw["respond"] = DirectResponse(status=int(dr.get("status", 200)), body=str(body.get("string", "")))
        else:
            dests = self.destinations(vs, at, h.get("route") or [], owner, ns)
            if not dests:
                self.note(vs, f"{at}.route", "the route is left out: no destination could be resolved", place)
                return None
            kw["destinations"] = dests
        rw = h.get("rewrite") or {}
        if rw:
            rkw: dict[str, Any] = {}
            if "uri" in rw:
                rkw["prefix"] = rw["uri"]
            if "authority" in rw:
                rkw["host"] = rw["authority"]
            urr = rw.get("uriRegexRewrite") or {}
            if urr:
                if urr.get("match") in ("^.*$", ".*"):
                    rkw["path"] = urr.get("rewrite")
                else:
                    self.note(vs, f"{at}.rewrite.uriRegexRewrite", "regex rewrites are not expressible", place)
            if rkw:
                kw["rewrite"] = Rewrite(**rkw)
        hdrs = h.get("headers") or {}
        for direction, key in (("request", "request_headers"), ("response", "response_headers")):
            ops = hdrs.get(direction) or {}
            if ops:
                kw[key] = HeaderOps(set=tuple((k.lower(), str(v)) for k, v in (ops.get("set") or {}).items()),
                                    add=tuple((k.lower(), str(v)) for k, v in (ops.get("add") or {}).items()),
                                    remove=tuple(k.lower() for k in ops.get("remove") or []))
        if h.get("mirror"):
            md = self.destination(vs, f"{at}.mirror", h["mirror"], owner, ns)
            mp = h.get("mirrorPercentage", {}).get("value") if isinstance(h.get("mirrorPercentage"), dict) else \
                h.get("mirror_percent", h.get("mirrorPercent"))
            if md is not None:
                mirror_percent = required_percent(mp, "mirror percentage") if mp is not None else FULL
                kw["mirror"] = Mirror(destination=md, percent=mirror_percent)
        if "timeout" in h:
            ms = duration_ms(h["timeout"])
            kw["timeout"] = Timeout(ms=ms or None)
        else:
            kw["timeout"] = None
        kw["retry"] = self.retries(vs, at, h.get("retries"), place)
        if h.get("fault"):
            f = self.fault(vs, at, h["fault"], place)
            if f is not None:
                kw["faults"] = (f,)
        return RouteRule(**kw)

    def retries(self, doc: dict[str, Any], at: str, r: dict[str, Any] | None, place: str) -> Retry | None:
        if r is None:
            return Retry(attempts=2, on=ISTIO_DEFAULT_RETRY_ON)  # marker: Istio's implicit default
        attempts = int(r.get("attempts", 0) or 0)
        if attempts == 0:
            return Retry(attempts=0, on=())
        on: list[str] = []
        codes: list[int] = []
        conds = str(r.get("retryOn") or "connect-failure,refused-stream,unavailable,cancelled").split(",")
        for c in (c.strip() for c in conds if c.strip()):
            if c in RETRY_ON:
                on.append(c)
            elif c.isdigit():
                codes.append(int(c))
            elif c != "retriable-status-codes":
                self.note(doc, f"{at}.retries.retryOn", f"retry condition '{c}' has no .mesh equivalent", place)
        if not on and not codes:
            on = ["connect-failure"]
        extra = set(r) - {"attempts", "retryOn", "perTryTimeout", "backoff", "retryRemoteLocalities"}
        for k in sorted(extra):
            self.note(doc, f"{at}.retries.{k}", "not expressible", place)
        return Retry(attempts=attempts, on=tuple(dict.fromkeys(on)), status_codes=tuple(codes),  # type: ignore[arg-type]
                     per_try_ms=duration_ms(r.get("perTryTimeout")), backoff_base_ms=(b := duration_ms(r.get("backoff"))),
                     backoff_max_ms=10 * b if b is not None else None)  # Istio: max is 10 x base

    def fault(self, doc: dict[str, Any], at: str, f: dict[str, Any], place: str) -> Fault | None:
        kw: dict[str, Any] = {}
        delay = f.get("delay") or {}
        if delay:
            ms = duration_ms(delay.get("fixedDelay"))
            if ms is None:
                self.note(doc, f"{at}.fault.delay", "only fixed delays are expressible", place)
            else:
                kw["delay_ms"] = ms
                p = (delay.get("percentage") or {}).get("value", delay.get("percent"))
                kw["delay_percent"] = percent(p) if p is not None else FULL
        abort = f.get("abort") or {}
        if abort:
            if "httpStatus" in abort:
                kw["abort_status"] = int(abort["httpStatus"])
                p = (abort.get("percentage") or {}).get("value", abort.get("percent"))
                kw["abort_percent"] = percent(p) if p is not None else FULL
            else:
                self.note(doc, f"{at}.fault.abort", "only HTTP status aborts are expressible", place)
        return Fault(**kw) if kw else None

    def destinations(self, doc: dict[str, Any], at: str, route: list[dict[str, Any]], owner: Draft,
                     ns: str) -> tuple[Destination, ...]:
        found = []
        for j, r in enumerate(route):
            d = self.destination(doc, f"{at}.route[{j}]", r.get("destination") or {}, owner, ns)
            if d is not None:
                found.append((d, int(r.get("weight", 0) or 0)))
            for k in set(r) - {"destination", "weight"}:
                self.note(doc, f"{at}.route[{j}].{k}", "not expressible", f"route:{owner.name}")
        if not found:
            return ()
        weights = [w for _, w in found]
        if len(found) == 1:
            weights = [1]
        pcts = weights_to_percent(weights)
        merged: dict[tuple[str, str | None], int] = {}
        for (d, _), p in zip(found, pcts, strict=True):
            merged[(d.service, d.version)] = merged.get((d.service, d.version), 0) + p
        return tuple(Destination(service=s, version=v, weight=p) for (s, v), p in merged.items() if p > 0)

    def destination(self, doc: dict[str, Any], at: str, dest: dict[str, Any], owner: Draft,
                    ns: str) -> Destination | None:
        d = self.draft_for(str(dest.get("host", "")), ns, doc, f"{at}.host")
        if d is None:
            return None
        subset = dest.get("subset")
        version = version_name(str(subset)) if subset else None
        if version is not None and version not in d.versions:
            d.versions[version] = {"version": str(subset)}
            self.note(doc, f"{at}.subset", f"subset '{subset}' is not defined by a DestinationRule; "
                      f"assumed labels version={subset}", f"service:{d.name}")
        return Destination(service=d.name, version=version)

    def port_matches(self, vs: dict[str, Any], at: str, ms: list[dict[str, Any]], owner: Draft
                     ) -> list[dict[str, Any]] | None:
        """Matches with their `port` condition settled: on the only HTTP port of the service it always
        holds (dropped); on a port the service does not have it never does (the match is dropped,
        and a route left with no match is left out). Otherwise it stays, to be reported."""
        http_ports = {n for n, proto in owner.ports.items() if proto in ("http", "http2", "grpc")}
        out = []
        for j, m in enumerate(ms):
            port = m.get("port") if isinstance(m, dict) else None
            if port is None or not str(port).isdigit():
                out.append(m)
            elif int(port) not in owner.ports and owner.ports:
                self.note(vs, f"{at}.match[{j}].port", f"{owner.name} has no port {port}: the match never holds "
                          "and is left out", f"route:{owner.name}")
            elif http_ports == {int(port)}:
                out.append({k: v for k, v in m.items() if k != "port"})
            else:
                out.append(m)
        return None if ms and not out else out

    def matches(self, doc: dict[str, Any], at: str, ms: list[dict[str, Any]], place: str,
                merge: bool = True) -> tuple[Match, ...] | None:
        out: list[Match] = []
        for j, m in enumerate(ms):
            got = self.match(doc, f"{at}.match[{j}]", m, place)
            if got is None:
                return None
            out.append(got)
        return merge_under(tuple(out)) if merge else tuple(out)

    def match(self, doc: dict[str, Any], at: str, m: dict[str, Any], place: str) -> Match | None:
        kw: dict[str, Any] = {}
        ok = True
        for k in set(m) - {"uri", "headers", "withoutHeaders", "queryParams", "method", "name"}:
            self.note(doc, f"{at}.{k}", "match condition not expressible", place)
            ok = False
        if m.get("uri"):
            kind, value = next(iter(m["uri"].items()))
            if kind not in ("exact", "prefix", "regex"):
                self.note(doc, f"{at}.uri", f"uri {kind} not expressible", place)
                ok = False
            else:
                kw["path"] = PathMatch(kind=kind, value=str(value))
        headers = []
        for name, sm in (m.get("headers") or {}).items():
            s = self.string_match(str(name).lower(), sm or {})
            if s is None:
                self.note(doc, f"{at}.headers.{name}", "header match not expressible", place)
                ok = False
            else:
                headers.append(s)
        for name, sm in (m.get("withoutHeaders") or {}).items():
            if (sm or {}).get("regex") in PRESENT:
                headers.append(StringMatch(name=str(name).lower(), kind="absent"))
            else:
                self.note(doc, f"{at}.withoutHeaders.{name}", "only `absent` is expressible", place)
                ok = False
        query = []
        for name, sm in (m.get("queryParams") or {}).items():
            s = self.string_match(str(name), sm or {})
            if s is None or s.kind == "absent":
                self.note(doc, f"{at}.queryParams.{name}", "query match not expressible", place)
                ok = False
            else:
                query.append(s)
        if m.get("method"):
            kind, value = next(iter(m["method"].items()))
            methods = [value] if kind == "exact" else str(value).split("|") if kind == "regex" else []
            methods = [x.replace("\\", "") for x in methods]
            if not methods or any(x not in METHODS for x in methods):
                self.note(doc, f"{at}.method", f"method {kind} '{value}' not expressible", place)
                ok = False
            else:
                kw["methods"] = tuple(methods)
        if not ok:
            return None
        return Match(headers=tuple(headers), query=tuple(query), **kw)

    @staticmethod
    def string_match(name: str, sm: dict[str, Any]) -> StringMatch | None:
        if not sm:
            return None
        kind, value = next(iter(sm.items()))
        if kind == "regex" and value in PRESENT:
            return StringMatch(name=name, kind="present")
        match_kind = STRING_MATCH_KINDS.get(kind)
        if match_kind is not None:
            return StringMatch(name=name, kind=match_kind, value=str(value))
        return None

    def set_routes(self, d: Draft, rules: list[RouteRule]) -> None:
        if rules:
            self.routed.add(d.name)
        lift_routes(d, rules)

    def default_retries(self) -> None:
        """The Istio-default retry marker becomes an explicit retry (or none) per service."""
        default = Retry(attempts=2, on=ISTIO_DEFAULT_RETRY_ON)
        used = False
        for d in self.drafts.values():
            budget = d.resilience.pop("_budget", None)
            # Istio's default applies to every HTTP route a sidecar has, ServiceEntry hosts included
            # (callers of an external service with TLS origination speak HTTP too)
            speaks_http = d.is_http or (d.external is not None and d.external.tls_originate)
            if speaks_http and "retry" not in d.resilience and d.name not in self.routed:
                d.resilience["retry"] = default
            if d.resilience.get("retry") == default:
                used = True
            if budget is not None and d.resilience.get("retry") is not None:
                d.resilience["retry"] = d.resilience["retry"].model_copy(update={"budget": budget})
        if used:
            self.report.add("Istio defaults", "retries", "Istio's implicit retry policy (2 retries on "
                            "connect-failure, refused-stream, unavailable, cancelled) is written out; the gRPC "
                            "conditions unavailable and cancelled have no .mesh equivalent", "mesh")

    # ----------------------------------------------------------------- ingress
    def ingress(self, vs: dict[str, Any], gateways: dict[str, Any]) -> None:
        _, ns = meta(vs)
        spec = vs.get("spec") or {}
        hosts = tuple(sorted(str(h) for h in spec.get("hosts") or ["*"]))
        port = 80
        for g in spec.get("gateways") or []:
            gw = gateways.get(str(g).split("/")[-1])
            if gw is None:
                continue
            sel = (gw.get("spec") or {}).get("selector") or {}
            if sel and sel != {"istio": "ingressgateway"}:
                self.note(gw, "spec.selector", "the ingress gateway is meshc's single ingress", "mesh")
            servers = (gw.get("spec") or {}).get("servers") or []
            if servers:
                port = int((servers[0].get("port") or {}).get("number", 80))
            for s in servers:
                if s.get("tls"):
                    self.note(gw, "spec.servers.tls", "TLS termination at the gateway is not expressible", "mesh")
        for k in ("tcp", "tls"):
            if spec.get(k):
                self.note(vs, f"spec.{k}", "TCP/TLS routes at the ingress gateway are not expressible (meshc's "
                          "ingress routes HTTP)", "mesh")
        for i, h in enumerate(spec.get("http") or []):
            at = f"spec.http[{i}]"
            route = h.get("route") or []
            hosts_of = {str((r.get("destination") or {}).get("host")) for r in route}
            if len(hosts_of) != 1:
                self.note(vs, f"{at}.route", "an ingress route to several destinations is not expressible" if route
                          else "an ingress route without a destination (redirect, direct response) is not "
                          "expressible")
                continue
            d = self.draft_for(hosts_of.pop(), ns, vs, f"{at}.route")
            if d is None:
                continue
            subsets = sorted({str(s) for r in route if (s := (r.get("destination") or {}).get("subset"))})
            if subsets or len(route) > 1:
                self.note(vs, f"{at}.route", f"the ingress sends to every version of {d.name}; the split over "
                          f"subsets ({', '.join(subsets) or 'none'}) at the gateway is not expressible",
                          f"service:{d.name}")
            paths: list[PathMatch] = []
            for j, m in enumerate(h.get("match") or []):
                uri = m.get("uri") or {}
                if set(m) - {"uri"} or not uri:
                    self.note(vs, f"{at}.match[{j}]", "ingress exposure is by path only; other conditions dropped",
                              f"service:{d.name}")
                if uri:
                    kind, value = next(iter(uri.items()))
                    if kind in STRING_MATCH_KINDS:
                        paths.append(PathMatch(kind=kind, value=str(value)))
                    else:
                        self.note(vs, f"{at}.match[{j}].uri", f"uri {kind} not expressible; the condition is "
                                  "dropped", f"service:{d.name}")
            paths_t = tuple(m.path for m in merge_under(tuple(Match(path=p) for p in paths)) if m.path)
            for k in set(h) - {"match", "route", "timeout", "retries", "name"}:
                self.note(vs, f"{at}.{k}", "ingress routes carry no settings of their own", f"service:{d.name}")
            # the gateway's hop takes the service's timeout and retries: compared once those are known
            self.ingress_hops.append((vs, at, d, duration_ms(h.get("timeout")) or None,
                                      self.retries(vs, at, h.get("retries"), f"service:{d.name}")))
            if d.expose is not None and (d.expose.hosts, d.expose.port) != (hosts, port):
                self.note(vs, "spec.hosts", f"{d.name} is already exposed on port {d.expose.port} for hosts "
                          f"{', '.join(d.expose.hosts)}; one exposure per service is expressible, this one is kept",
                          f"service:{d.name}")
            if d.expose is not None:
                paths_t = d.expose.paths + paths_t if d.expose.paths and paths_t else ()
            d.expose = Ingress(paths=paths_t, hosts=hosts, port=port)

    def ingress_settings(self) -> None:
        """Istio's gateway route has its own timeout and retries (2 retries when it says none); meshc's
        ingress hop uses the service's. A difference is reported."""
        for vs, at, d, timeout_ms, retry in self.ingress_hops:
            t = d.resilience.get("timeout")
            if (t.ms if t is not None else None) != timeout_ms:
                self.note(vs, f"{at}.timeout", f"the gateway's timeout ({f'{timeout_ms} ms' if timeout_ms else 'none'}) is not "
                          f"expressible; the ingress hop uses {d.name}'s own", f"service:{d.name}")
            own = d.resilience.get("retry")
            if (own if own is not None and own.attempts else None) != (retry if retry and retry.attempts else None):
                self.note(vs, f"{at}.retries", f"the gateway's retries ({retry.attempts if retry else 0}) are not "
                          f"expressible; the ingress hop uses {d.name}'s own", f"service:{d.name}")
            # meshc's ingress follows the service's default route on every target; Istio's
            # gateway, routing to the bare host, reaches every pod of the service
            default = next((r for r in d.routes if r.is_default and r.destinations), None)
            versions = sorted({x.version for x in default.destinations if x.version}) if default else []
            if versions and set(versions) != set(d.versions):
                self.note(vs, f"{at}.route", f"the gateway sends to every pod of {d.name}; meshc's ingress follows "
                          f"{d.name}'s default route (versions {', '.join(versions)})", f"service:{d.name}")

    # ----------------------------------------------------------------- mTLS
    def peer_authentications(self) -> None:
        ns_modes: dict[str, str] = {}
        for pa in self.of("PeerAuthentication"):
            _, ns = meta(pa)
            spec = pa.get("spec") or {}
            mode = MTLS.get(str((spec.get("mtls") or {}).get("mode", "UNSET")))
            sel = (spec.get("selector") or {}).get("matchLabels")
            if not sel:
                if mode is None:
                    continue
                if ns == ROOT_NAMESPACE:
                    self.settings.mtls = mode
                else:
                    ns_modes[ns] = mode
                if spec.get("portLevelMtls"):
                    self.note(pa, "spec.portLevelMtls", "port-level modes need a selector in Istio")
                continue
            d = self.selected(sel)
            if d is None:
                self.note(pa, "spec.selector", "selects no service of the input")
                continue
            self.narrowed(pa, "spec.selector", sel, d, f"service:{d.name}")
            if mode is not None:
                d.mtls = mode
            for port, pm in (spec.get("portLevelMtls") or {}).items():
                pmode = MTLS.get(str((pm or {}).get("mode", "UNSET")))
                number = self.service_port(d, int(port)) if str(port).isdigit() else None
                if pmode is not None and number is not None:
                    d.port_mtls[number] = pmode
                elif pmode is not None:
                    # Istio keys port modes by workload (container) port, not by Service port
                    self.note(pa, f"spec.portLevelMtls.{port}", f"no port of service {d.name} forwards to "
                              f"workload port {port}; the mode is not carried over", f"service:{d.name}")
        for d in self.drafts.values():
            if d.mtls is None and d.namespace in ns_modes and d.external is None:
                d.mtls = ns_modes[d.namespace]

    def narrowed(self, doc: dict[str, Any], fld: str, labels: dict[str, Any], d: Draft, place: str) -> None:
        """Report a selector that picks some versions of `d` only: the .mesh setting covers them all."""
        extra = {str(k): str(v) for k, v in labels.items() if str(k) not in d.selector}
        if extra and any(not extra.items() <= v.items() for v in d.versions.values()):
            self.note(doc, fld, f"selects only the workloads of {d.name} labelled "
                      f"{', '.join(f'{k}={v}' for k, v in sorted(extra.items()))}; applied to the whole service",
                      place)

    def selected(self, labels: dict[str, Any]) -> Draft | None:
        labels = {str(k): str(v) for k, v in labels.items()}
        for d in sorted(self.drafts.values(), key=lambda x: x.name):
            if d.selector and d.selector.items() <= labels.items():
                return d
        name = labels.get("app")
        return self.drafts.get(dns_name(name)) if name else None

    # ----------------------------------------------------------------- authorization
    def trust_domain(self) -> None:
        for ap in self.of("AuthorizationPolicy"):
            for rule in (ap.get("spec") or {}).get("rules") or []:
                for f in rule.get("from") or []:
                    for p in (f.get("source") or {}).get("principals") or []:
                        m = re.match(r"^([^/]+)/ns/([^/]+)/sa/([^/]+)$", str(p))
                        if m:
                            self.settings.trust_domain = m.group(1)
                            return

    def principal(self, p: str) -> Source | None:
        if p == "*":
            return Source(kind="authenticated")
        m = re.match(r"^(?:spiffe://)?(?:[^/]+/)?ns/([^/]+)/sa/([^/]+)$", p)
        if not m:
            return None
        ns, sa = m.group(1), m.group(2)
        for d in sorted(self.drafts.values(), key=lambda x: x.name):
            if d.external is None and (d.identity or d.name) == sa and d.namespace == ns:
                return Source(kind="service", name=d.name)
        if "ingress" in sa:
            self.settings.ingress_identity = (sa, ns)
            return Source(kind="ingress")
        return Source(kind="identity", name=dns_name(sa))

    def authorization(self) -> None:
        policies = self.of("AuthorizationPolicy")
        internal = sorted(n for n, d in self.drafts.items() if d.external is None)
        allow_scopes: set[str] = set()  # service names an ALLOW policy selects
        for ap in policies:
            name, ns = meta(ap)
            spec = ap.get("spec") or {}
            action = str(spec.get("action", "ALLOW")).lower()
            if action not in ("allow", "deny"):
                self.note(ap, "spec.action", f"{action.upper()} policies are not expressible", "authz")
                continue
            sel = (spec.get("selector") or {}).get("matchLabels")
            if spec.get("targetRef") or spec.get("targetRefs"):
                self.note(ap, "spec.targetRefs", "policies attached to gateways are not expressible", "authz")
                continue
            if sel:
                d = self.selected(sel)
                if d is None:
                    self.note(ap, "spec.selector", "selects no service of the input", "authz")
                    continue
                self.narrowed(ap, "spec.selector", sel, d, "authz")
                targets = [d.name]
            elif ns == ROOT_NAMESPACE or {self.drafts[n].namespace for n in internal} <= {ns}:
                targets = ["*"]
            else:
                targets = [n for n in internal if self.drafts[n].namespace == ns]
            if action == "allow":
                allow_scopes.update(internal if targets == ["*"] else targets)
            for i, rule in enumerate(spec.get("rules") or []):
                self.authz_rule(ap, f"spec.rules[{i}]", action, rule, tuple(targets))
        if allow_scopes:
            self.settings.authz = "deny_by_default"
            rest = [n for n in internal if n not in allow_scopes]
            if rest:
                self.rules.append(AuthzRule(action="allow", sources=(Source(kind="any"),),
                                            destinations=tuple(rest)))
                self.report.add("AuthorizationPolicy", "(none)", f"no ALLOW policy selects {', '.join(rest)}: "
                                "Istio admits every caller there, written as `allow * ->`", "authz")
            # deny rules first is not needed: order carries no meaning

    def authz_rule(self, ap: dict[str, Any], at: str, action: str, rule: dict[str, Any],
                   targets: tuple[str, ...]) -> None:
        problems: list[tuple[str, str]] = []
        sources: list[Source] = []
        for j, f in enumerate(rule.get("from") or []):
            src = f.get("source") or {}
            for k in set(src) - {"principals", "notPrincipals"}:
                problems.append((f"{at}.from[{j}].source.{k}", "source condition not expressible"))
            for p in src.get("principals") or []:
                s = self.principal(str(p))
                if s is None:
                    problems.append((f"{at}.from[{j}].source.principals", f"principal '{p}' not understood"))
                else:
                    sources.append(s)
            np = src.get("notPrincipals") or []
            if np == ["*"]:
                sources.append(Source(kind="unauthenticated"))
            elif np:
                problems.append((f"{at}.from[{j}].source.notPrincipals", "only ['*'] is expressible"))
        if not rule.get("from"):
            sources = [Source(kind="any")]
        ops = [(t.get("operation") or {}) for t in rule.get("to") or []] or [{}]
        headers, ports_from_when = self.when(rule.get("when") or [], at, problems)
        if action == "allow" and problems:
            for fld, why in problems:
                self.note(ap, fld, why + "; the ALLOW rule is left out (fail closed)", "authz")
            return
        for fld, why in problems:
            self.note(ap, fld, why + "; the condition is dropped, so the DENY rule denies more", "authz")
        if not sources:
            return
        for k, op in enumerate(ops):
            bad = set(op) - {"methods", "paths", "notPaths", "ports"}
            if bad:
                for b in sorted(bad):
                    self.note(ap, f"{at}.to[{k}].operation.{b}", "not expressible" +
                              ("; the ALLOW rule is left out" if action == "allow" else "; dropped"), "authz")
                if action == "allow":
                    continue
            paths = self.authz_paths(ap, f"{at}.to[{k}].operation.paths", op.get("paths") or [])
            not_paths = self.authz_paths(ap, f"{at}.to[{k}].operation.notPaths", op.get("notPaths") or [])
            if paths is None or not_paths is None:
                if action == "allow":
                    continue
                paths, not_paths = paths or (), not_paths or ()
            methods = tuple(str(m) for m in op.get("methods") or [])
            unknown = [m for m in methods if m not in METHODS]
            if unknown:
                methods = tuple(m for m in methods if m in METHODS)
                # an ALLOW for fewer methods admits less; a DENY must not deny less, so it loses the condition
                if action == "deny":
                    methods = ()
                self.note(ap, f"{at}.to[{k}].operation.methods", f"method(s) {', '.join(unknown)} not expressible; "
                          + ("dropped from the ALLOW rule" if action == "allow" else
                             "the DENY rule applies to every method"), "authz")
                if action == "allow" and not methods:
                    continue
            op_ports = [str(p) for p in op.get("ports") or []]
            if any(not p.isdigit() for p in op_ports):
                self.note(ap, f"{at}.to[{k}].operation.ports", "a port that is not a number is not expressible"
                          + ("; the ALLOW rule is left out" if action == "allow" else "; dropped"), "authz")
                if action == "allow":
                    continue
                op_ports = [p for p in op_ports if p.isdigit()]
            if op_ports and ports_from_when and not set(map(int, op_ports)) & set(ports_from_when):
                continue  # `to.ports` and a `destination.port` condition no request satisfies both
            wanted = tuple(sorted(set(map(int, op_ports)) & set(ports_from_when))) if op_ports and ports_from_when \
                else tuple(int(p) for p in op_ports) or ports_from_when
            for dests, ports in self.authz_ports(ap, f"{at}.to[{k}]", targets, wanted):
                self.rules.append(AuthzRule(action=action, sources=tuple(dict.fromkeys(sources)),  # type: ignore[arg-type]
                                            destinations=dests, methods=methods, paths=paths, not_paths=not_paths,
                                            ports=ports, headers=headers))

    def authz_ports(self, ap: dict[str, Any], at: str, targets: tuple[str, ...], ports: tuple[int, ...]
                    ) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
        """(destinations, Service ports) for a rule on workload `ports`: Istio matches the port of the
        workload, a .mesh the port of the service. Targets whose Service ports differ get rules of
        their own; a target no port reaches gets none (no request can match there)."""
        if not ports:
            return [(targets, ())]
        names = [n for n, d in sorted(self.drafts.items()) if d.external is None] if targets == ("*",) else targets
        by_ports: dict[tuple[int, ...], list[str]] = {}
        for n in names:
            d = self.drafts[n]
            mapped = tuple(sorted({q for p in ports if (q := self.service_port(d, p)) is not None}))
            if mapped:
                by_ports.setdefault(mapped, []).append(n)
        if len(by_ports) == 1 and len(next(iter(by_ports.values()))) == len(names) and next(iter(by_ports)) == ports:
            return [(targets, ports)]  # every target serves these ports as they are
        if not by_ports:
            self.note(ap, at, f"no service port forwards to workload port(s) {', '.join(map(str, ports))}; "
                      "the rule matches no request and is left out", "authz")
        return [(tuple(ns), ps) for ps, ns in by_ports.items()]

    def when(self, conds: list[dict[str, Any]], at: str, problems: list[tuple[str, str]]
             ) -> tuple[tuple[StringMatch, ...], tuple[int, ...]]:
        headers: list[StringMatch] = []
        ports: list[int] = []
        for j, c in enumerate(conds):
            key = str(c.get("key", ""))
            values, not_values = c.get("values") or [], c.get("notValues") or []
            m = re.fullmatch(r"request\.headers\[(.+)\]", key)
            if m and len(values) == 1 and not not_values:
                v = str(values[0])
                name = m.group(1).lower()
                headers.append(StringMatch(name=name, kind="present") if v == "*" else
                               StringMatch(name=name, kind="prefix", value=v[:-1]) if v.endswith("*") else
                               StringMatch(name=name, kind="exact", value=v))
            elif m and not values and not_values == ["*"]:
                headers.append(StringMatch(name=m.group(1).lower(), kind="absent"))
            elif key == "destination.port" and values and all(str(v).isdigit() for v in values) and not not_values:
                ports += [int(v) for v in values]
            else:
                problems.append((f"{at}.when[{j}]", f"condition on '{key}' not expressible"))
        return tuple(headers), tuple(ports)

    def authz_paths(self, ap: dict[str, Any], at: str, paths: list[str]) -> tuple[PathMatch, ...] | None:
        out: list[PathMatch] = []
        values = [str(p) for p in paths]
        for p in values:
            if p.endswith("/*") and p[:-2] in values:
                out.append(PathMatch(kind="under", value=p[:-2]))
            elif p.endswith("*") and not p.startswith("*"):
                if p[:-1] in values and p[:-1].endswith("/") is False and p[:-1] + "/*" == p:
                    continue
                out.append(PathMatch(kind="prefix", value=p[:-1] or "/"))
            elif p == "*":
                out.append(PathMatch(kind="prefix", value="/"))
            elif p.startswith("*"):
                self.note(ap, at, f"suffix path '{p}' not expressible")
                return None
            elif p + "/*" in values:
                continue  # the exact half of an `under`
            else:
                out.append(PathMatch(kind="exact", value=p))
        return tuple(out)

    # ----------------------------------------------------------------- Sidecar
    def sidecars(self) -> None:
        for sc in self.of("Sidecar"):
            _, ns = meta(sc)
            spec = sc.get("spec") or {}
            sel = (spec.get("workloadSelector") or {}).get("labels")
            d = self.selected(sel) if sel else None
            if d is None:
                continue
            for eg in spec.get("egress") or []:
                for h in eg.get("hosts") or []:
                    hns, _, host = str(h).partition("/")
                    if host in ("*", "") or "*" in host:
                        continue
                    name = lookup_host(host, ns if hns in ("~", ".") else hns, self.drafts, self.external_hosts)
                    if name is not None and name != d.name:
                        d.calls.append(name)


def import_files(paths: list[Path], mesh_name: str | None = None) -> Result:
    return IstioImporter(read_documents(paths), mesh_name).run()
