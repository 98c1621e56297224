"""AWS App Mesh -> .mesh: reads App Mesh API bodies (API version 2019-01-25: Create*/Update*
request bodies or describe-* output, JSON), CloudFormation templates (`AWS::AppMesh::*`
resources, JSON or YAML) and appmesh-controller resources (appmesh.k8s.aws/v1beta2).

- VirtualService: a service (`catalog.shop.svc.cluster.local` -> `catalog` in `shop`); one whose
  name is not a cluster name and whose node is discovered at that host is external.
- VirtualRouter + Routes: the route table in priority order. Routes with the same action
  next to each other are one rule with OR-ed matches (App Mesh has one method per route and
  `under` is two routes). Weighted targets name virtual nodes: a node `S-<version>` is
  that version of `S`; a node several routers send to is a version of each service, with the
  node's podSelector labels. gRPC service/method names are paths, metadata are headers.
- VirtualNode: ports (listeners), mTLS mode, connection pool, outlier detection, health check,
  identity (the SDS certificate's SPIFFE ID), backends (`calls`); a listener's client
  certificate SAN allow-list is `allow <callers> -> S`; the mesh's egress filter `DROP_ALL`
  is deny_by_default. A backend client policy with a public trust and a SAN is TLS
  origination to that external service.
- VirtualNode without a virtual service (a frontend): a service of its own.
- VirtualGateway + GatewayRoutes: `expose ingress` on the gateway's port, by path and host;
  App Mesh's prefix rewriting and header/method/query conditions are reported.

App Mesh gives routes without a retry policy a default one; that is written out (reported).
"""

from __future__ import annotations

import json
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
    canonical_matches,
    dns_name,
    finish,
    lift_routes,
    load_yaml,
    merge_under,
    read_input,
    version_name,
    weights_to_percent,
)
from meshc.model import (
    AuthzRule,
    CircuitBreaker,
    Destination,
    External,
    HealthCheck,
    Ingress,
    Match,
    Outlier,
    PathMatch,
    Retry,
    RouteRule,
    Source,
    StringMatch,
    Timeout,
)

NO_TIMEOUT_MS = 365 * 24 * 3600 * 1000
UNIT_MS = {"ms": 1, "s": 1000}
HTTP_EVENTS = {"server-error": "5xx", "gateway-error": "gateway-error", "client-error": "retriable-4xx",
               "stream-error": "refused-stream"}
ROUTE_KINDS = ("httpRoute", "http2Route", "grpcRoute", "tcpRoute")
NAME_KEYS = {"VirtualNode": "virtualNodeName", "VirtualRouter": "virtualRouterName", "Route": "routeName",
             "VirtualService": "virtualServiceName", "VirtualGateway": "virtualGatewayName",
             "GatewayRoute": "gatewayRouteName", "Mesh": "meshName"}
SPIFFE = re.compile(r"^spiffe://([^/]+)/ns/([^/]+)/sa/([^/]+)$")
# App Mesh's documented default for HTTP routes without a retry policy.
DEFAULT_RETRY = Retry(attempts=2, on=("gateway-error", "connect-failure"), per_try_ms=15_000)


# --------------------------------------------------------------------------- reading


def _camel(key: str) -> str:
    """CloudFormation `VirtualNodeName` / `DNS` / `TLS` -> API `virtualNodeName` / `dns` / `tls`."""
    special = {"DNS": "dns", "TLS": "tls", "SDS": "sds", "ACM": "acm", "AWSCloudMap": "awsCloudMap",
               "GRPCRoute": "grpcRoute", "TCPRoute": "tcpRoute", "HTTPRoute": "httpRoute",
               "HTTP2Route": "http2Route", "SubjectAlternativeNames": "subjectAlternativeNames",
               "IpPreference": "ipPreference", "GRPC": "grpc", "HTTP": "http", "HTTP2": "http2", "TCP": "tcp"}
    if key in special:
        return special[key]
    return key[0].lower() + key[1:] if key else key


def _camel_all(v: Any, keep: bool = False) -> Any:
    if isinstance(v, dict):
        return {(k if keep else _camel(k)): _camel_all(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_camel_all(x) for x in v]
    return v


def _resolve_refs(v: Any) -> Any:
    """Controller CRD references -> API names: `virtualNodeRef: {name}` -> `virtualNode: name`."""
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if k == "virtualNodeRef":
                out["virtualNode"] = (x or {}).get("name")
            elif k == "virtualServiceRef":
                out["virtualServiceName"] = (x or {}).get("name")
            elif k == "virtualRouterRef":
                out["virtualRouterName"] = (x or {}).get("name")
            else:
                out[k] = _resolve_refs(x)
        return out
    if isinstance(v, list):
        return [_resolve_refs(x) for x in v]
    return v


def read_objects(paths: list[Path]) -> list[dict[str, Any]]:
    """Objects as {kind, name, mesh, router, gateway, namespace, spec} in API spelling."""
    out: list[dict[str, Any]] = []
    for p in paths:
        docs = [d for d in load_yaml(p, read_input(p)) if d is not None]
        for d in docs:
            out += objects_of(d)
    return out


def objects_of(d: Any) -> list[dict[str, Any]]:
    if not isinstance(d, dict):
        return []
    if isinstance(d.get("Resources"), dict):  # CloudFormation
        out = []
        for res in d["Resources"].values():
            t = str((res or {}).get("Type", ""))
            if t.startswith("AWS::AppMesh::"):
                props = _camel_all((res or {}).get("Properties") or {})
                out += objects_of({**props, "_kind": t.split("::")[-1]})
        return out
    if str(d.get("apiVersion", "")).startswith("appmesh.k8s.aws/"):
        kind = d.get("kind")
        meta = d.get("metadata") or {}
        spec = _resolve_refs(d.get("spec") or {})
        aws_name = spec.pop("awsName", None)
        ns = meta.get("namespace")
        # references between controller objects use Kubernetes names; a VirtualService's App Mesh
        # name is the DNS name callers use
        name = (aws_name or meta.get("name")) if kind == "VirtualService" else meta.get("name")
        base = {"kind": kind, "name": name, "namespace": ns, "k8s_name": meta.get("name")}
        if kind == "VirtualRouter":
            routes = spec.pop("routes", []) or []
            return [{**base, "spec": spec}] + [
                {"kind": "Route", "name": r.get("name"), "router": name, "namespace": ns,
                 "spec": {k: v for k, v in r.items() if k != "name"}} for r in routes]
        if kind == "GatewayRoute":
            return [{**base, "spec": spec, "gateway": None}]
        return [{**base, "spec": spec}]
    for wrapper in ("virtualNode", "virtualRouter", "route", "virtualService", "virtualGateway", "gatewayRoute",
                    "mesh"):
        if isinstance(d.get(wrapper), dict) and "spec" in d[wrapper]:  # describe-* output
            return objects_of(d[wrapper])
    kind = d.get("_kind")
    if kind is None:  # the most specific name key decides: a Route body also names its router
        kind = next((k for k in ("Route", "GatewayRoute", "VirtualNode", "VirtualService", "VirtualRouter",
                                 "VirtualGateway", "Mesh") if NAME_KEYS[k] in d), None)
    if kind is None:
        return []
    return [{"kind": kind, "name": d.get(NAME_KEYS[kind]), "mesh": d.get("meshName"),
             "router": d.get("virtualRouterName"), "gateway": d.get("virtualGatewayName"),
             "spec": d.get("spec") or {}}]


def _ms(v: Any) -> int | None:
    if not isinstance(v, dict) or "value" not in v:
        return None
    return int(v["value"]) * UNIT_MS.get(str(v.get("unit", "ms")), 1)


# --------------------------------------------------------------------------- import


class AppMeshImporter:
    origin = "appmesh"

    def __init__(self, objects: list[dict[str, Any]], mesh_name: str | None = None):
        self.objs = objects
        self.report = Report()
        self.drafts: dict[str, Draft] = {}
        self.rules: list[AuthzRule] = []
        self.settings = MeshSettings(mtls="disabled", authz="allow_by_default")
        self.mesh_name = mesh_name
        # node -> (service, version); a route target without a virtualNode name is keyed None
        self.node_owner: dict[str | None, tuple[str, str | None]] = {}
        # a node that several virtual services route to (one set of pods behind a path router
        # and a header router) is a version of each of them; node_owner holds the first
        self.node_owners: dict[str | None, list[tuple[str, str | None]]] = {}
        self.identities: dict[str, str] = {}  # spiffe id -> service

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objs if o["kind"] == kind]

    def note(self, o: dict[str, Any], fld: str, why: str, place: str = "") -> None:
        self.report.add(f"{o['kind']} {o['name']}", fld, why, place)

    def run(self) -> Result:
        meshes = self.of("Mesh")
        names = {o["mesh"] for o in self.objs if o.get("mesh")} | {m["name"] for m in meshes if m.get("name")}
        self.settings.name = self.mesh_name or dns_name(sorted(names)[0] if names else "appmesh")
        validated = any(((lst.get("tls") or {}).get("validation")) for n in self.of("VirtualNode")
                        for lst in n["spec"].get("listeners") or [])
        for m in meshes:
            egress = ((m["spec"].get("egressFilter") or {}).get("type"))
            self.settings.authz = "deny_by_default" if egress == "DROP_ALL" and validated else "allow_by_default"
            if egress == "DROP_ALL" and not validated:
                self.note(m, "spec.egressFilter", "DROP_ALL restricts egress only: without client-certificate "
                          "validation on listeners every caller is admitted (allow_by_default)", "mesh")
        self.nodes = {o["name"]: o for o in self.of("VirtualNode")}
        self.routers = {o["name"]: o for o in self.of("VirtualRouter")}
        self.services()
        # external nodes first: their ports must exist before a caller's TLS origination is read
        for node in sorted(self.nodes.values(), key=lambda n: (self.node_owner.get(n["name"], ("", None))[0] not in
                                                                {k for k, d in self.drafts.items() if d.external},
                                                                str(n["name"]))):
            if node["name"] not in self.node_owner:
                self.note(node, "name", "no virtual service reaches this node; left out")
                continue
            for owner in self.node_owners.get(node["name"]) or [self.node_owner[node["name"]]]:
                self.node(node, owner)
        self.trust()
        for d in self.drafts.values():
            self.route_table(d)
        for node in self.nodes.values():
            self.node_authz(node)
        self.gateways()
        modes = Counter(m for d in self.drafts.values() if d.external is None for m in d.port_mtls.values())
        if modes:  # the most common listener mode is the mesh's; the others are per service/port
            self.settings.mtls = sorted(modes.items(), key=lambda kv: (-kv[1], kv[0] != "strict", kv[0]))[0][0]
        if any(r.retry == DEFAULT_RETRY for d in self.drafts.values() for r in d.routes) or \
                any(d.resilience.get("retry") == DEFAULT_RETRY for d in self.drafts.values()):
            self.report.add("App Mesh defaults", "retryPolicy", "routes without a retry policy get App Mesh's "
                            "default (2 retries); written out", "mesh")
        mesh = build_mesh(self.settings, self.drafts, self.rules, self.report)
        return finish(mesh, self.report, self.origin)

    # ----------------------------------------------------------------- services and nodes
    def services(self) -> None:
        self.vs_service: dict[str, str] = {}
        namespaces: Counter[str] = Counter()
        for vs in self.of("VirtualService"):
            vname = str(vs["name"])
            parts = vname.split(".")
            internal = len(parts) >= 3 and parts[2] == "svc" or len(parts) == 1
            ns = vs.get("namespace") or (parts[1] if len(parts) >= 2 and internal else None)
            key = dns_name(parts[0] if internal else vs.get("k8s_name") or parts[0])
            if vs.get("k8s_name"):
                self.vs_service[str(vs["k8s_name"])] = key
            provider = vs["spec"].get("provider") or {}
            router = (provider.get("virtualRouter") or {}).get("virtualRouterName")
            node = (provider.get("virtualNode") or {}).get("virtualNodeName") or \
                (provider.get("virtualNode") or {}).get("virtualNode")
            nodes: list[str | None] = [node] if node else [t.get("virtualNode") for r in self.routes_of(router)
                                                           for t in self.targets(r)]
            if not internal:
                hosts = {(self.nodes.get(n, {}).get("spec", {}).get("serviceDiscovery") or {}).get("dns", {})
                         .get("hostname") for n in nodes}
                if vname in hosts or not nodes:
                    key = dns_name(self.node_key(nodes, key))
                    d = self.drafts.setdefault(key, Draft(key, ns or "default"))
                    d.external = External(host=vname)
                    self.vs_service[vname] = key
                    if vs.get("k8s_name"):
                        self.vs_service[str(vs["k8s_name"])] = key
                    for n in nodes:
                        self.node_owner[n] = (key, None)
                    continue
            if ns:
                namespaces[ns] += 1
            d = self.drafts.setdefault(key, Draft(key, ns or "default"))
            self.vs_service[vname] = key
            if vs.get("k8s_name"):
                self.vs_service[str(vs["k8s_name"])] = key
            d.selector = {"router": str(router or "")}
            for n in dict.fromkeys(x for x in nodes if x):
                version = n[len(key) + 1:] if n.startswith(key + "-") else (None if n == key else n)
                owner = (key, version_name(version) if version else None)
                self.node_owner.setdefault(n, owner)
                if owner not in self.node_owners.setdefault(n, []):
                    self.node_owners[n].append(owner)
                if version:
                    d.versions[version_name(version)] = self.version_labels(n, key, version)
        # nodes no route reaches yet: `<svc>-<version>` is still a version of that service
        for n in sorted(self.nodes):
            if n in self.node_owner:
                continue
            service = next((k for k in sorted(self.drafts, key=len, reverse=True)
                            if n.startswith(k + "-") and self.drafts[k].external is None), None)
            if service is not None:
                version = version_name(n[len(service) + 1:])
                self.node_owner[n] = (service, version)
                self.drafts[service].versions.setdefault(version, self.version_labels(n, service,
                                                                                      n[len(service) + 1:]))
        # a node no virtual service provides is a client (a frontend, a job): a service of its own,
        # so that its backends, identity and listeners are kept
        for n in sorted(self.nodes):
            if n in self.node_owner or not n:
                continue
            key = dns_name(str(n))
            if key in self.drafts:
                continue
            self.drafts[key] = Draft(key, self.nodes[n].get("namespace") or "default")
            self.node_owner[n] = (key, None)
        ns_main = sorted(namespaces.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] if namespaces else "default"
        self.settings.namespace = ns_main
        for d in self.drafts.values():
            if d.external is not None:
                d.namespace = ns_main

    def version_labels(self, node: str, service: str, version: str) -> dict[str, str]:
        """The pods of a version: the controller's podSelector (without the `app` label that names
        the service itself, which every target adds), else `version=<version>`."""
        spec = (self.nodes.get(node) or {}).get("spec") or {}
        labels = {str(k): str(v) for k, v in ((spec.get("podSelector") or {}).get("matchLabels") or {}).items()}
        if labels.get("app") == service:
            del labels["app"]
        return labels or {"version": version}

    @staticmethod
    def node_key(nodes: list[str | None], default: str) -> str:
        return nodes[0] if len(nodes) == 1 and nodes[0] else default

    def routes_of(self, router: str | None) -> list[dict[str, Any]]:
        routes = [r for r in self.of("Route") if r.get("router") == router]
        return sorted(routes, key=lambda r: (r["spec"].get("priority", 1000), str(r["name"])))

    @staticmethod
    def targets(route: dict[str, Any]) -> list[dict[str, Any]]:
        for k in ROUTE_KINDS:
            if k in route["spec"]:
                return ((route["spec"][k] or {}).get("action") or {}).get("weightedTargets") or []
        return []

    def node(self, node: dict[str, Any], owner: tuple[str, str | None]) -> None:
        d = self.drafts[owner[0]]
        place = f"service:{d.name}"
        spec = node["spec"]
        for i, lst in enumerate(spec.get("listeners") or []):
            pm = lst.get("portMapping") or {}
            port, proto = pm.get("port"), str(pm.get("protocol", "http"))
            if not isinstance(port, int):
                continue
            if d.external is not None:
                d.ports.setdefault(port, "http" if proto in ("http", "http2", "grpc") else "tcp")
                continue
            d.ports[port] = proto if proto in ("http", "http2", "grpc", "tcp") else "tcp"
            tls = lst.get("tls") or {}
            mode = {"STRICT": "strict", "PERMISSIVE": "permissive", "DISABLED": "disabled"}.get(
                str(tls.get("mode", "DISABLED")), "disabled")
            d.port_mtls[port] = mode
            cert = ((tls.get("certificate") or {}).get("sds") or {}).get("secretName", "")
            m = SPIFFE.match(str(cert))
            if m:
                d.identity = m.group(3)
                self.identities[str(cert)] = d.name
            cp = lst.get("connectionPool") or {}
            pool = next(iter(cp.values()), None) if cp else None
            if pool:
                d.resilience["circuit_breaker"] = CircuitBreaker(
                    max_connections=pool.get("maxConnections"), max_pending=pool.get("maxPendingRequests"),
                    max_requests=pool.get("maxRequests"))
            od = lst.get("outlierDetection") or {}
            if od:
                d.resilience["outlier"] = Outlier(
                    consecutive_5xx=int(od.get("maxServerErrors", 5)), interval_ms=_ms(od.get("interval")) or 10_000,
                    eject_ms=_ms(od.get("baseEjectionDuration")) or 30_000,
                    max_percent=int(od.get("maxEjectionPercent", 10)) * 100)
            hc = lst.get("healthCheck") or {}
            if hc.get("protocol") == "http2":
                self.note(node, f"spec.listeners[{i}].healthCheck.protocol", "an http2 health check is "
                          "written as an http one (meshc probes over HTTP/1.1)", place)
            hc_port = hc.get("port")
            if hc_port is not None and hc_port != (lst.get("portMapping") or {}).get("port"):
                self.note(node, f"spec.listeners[{i}].healthCheck.port", f"the health check probes port "
                          f"{hc_port}; meshc probes the service port", place)
            if hc:
                d.resilience["health_check"] = HealthCheck(
                    protocol=hc.get("protocol", "http") if hc.get("protocol") in ("http", "tcp", "grpc") else "http",
                    path=hc.get("path", "/") if hc.get("protocol") != "tcp" else "/",
                    interval_ms=int(hc.get("intervalMillis", 10_000)), timeout_ms=int(hc.get("timeoutMillis", 2000)),
                    unhealthy=int(hc.get("unhealthyThreshold", 3)), healthy=int(hc.get("healthyThreshold", 2)))
            for kind, limits in (lst.get("timeout") or {}).items():  # {http: {perRequest, idle}}
                for what, value in (limits or {}).items():
                    t = _ms(value)
                    if t is not None and t < NO_TIMEOUT_MS:
                        self.note(node, f"spec.listeners[{i}].timeout.{kind}.{what}", "a listener timeout is not "
                                  "expressible; the route timeout is the request timeout", place)
        # a client without TLS listeners shows its identity in the certificate it presents to backends
        client_tls = ((spec.get("backendDefaults") or {}).get("clientPolicy") or {}).get("tls") or {}
        client_cert = str(((client_tls.get("certificate") or {}).get("sds") or {}).get("secretName", ""))
        m = SPIFFE.match(client_cert)
        if m and d.external is None and d.identity is None:
            d.identity = m.group(3)
            self.identities[client_cert] = d.name
        for b in spec.get("backends") or []:
            vs = b.get("virtualService") or {}
            target = self.vs_service.get(str(vs.get("virtualServiceName")))
            if target is None:
                self.note(node, "spec.backends", f"{vs.get('virtualServiceName')} is not a virtual service of the input",
                          place)
                continue
            d.calls.append(target)
            tls = ((vs.get("clientPolicy") or {}).get("tls") or {})
            trust = (tls.get("validation") or {}).get("trust") or {}
            callee = self.drafts[target]
            if callee.external is not None and tls and ("file" in trust or "acm" in trust):
                sans = (((tls.get("validation") or {}).get("subjectAlternativeNames") or {}).get("match") or {}) \
                    .get("exact") or []
                sni = sans[0] if sans and sans[0] != callee.external.host else None
                callee.external = External(host=callee.external.host, tls_originate=True, sni=sni)
                for n, proto in list(callee.ports.items()):
                    if proto in ("http", "tls"):
                        callee.ports[n] = "tls"
                rule = AuthzRule(action="allow", sources=(Source(kind="service", name=d.name),),
                                 destinations=(target,))
                if rule not in self.rules:
                    self.rules.append(rule)
        if spec.get("serviceDiscovery", {}).get("awsCloudMap"):
            attrs = spec["serviceDiscovery"]["awsCloudMap"].get("attributes") or []
            if owner[1] and attrs:
                d.versions[owner[1]] = {str(a["key"]): str(a["value"]) for a in attrs}

    def trust(self) -> None:
        for n in self.nodes.values():
            for lst in n["spec"].get("listeners") or []:
                secret = (((lst.get("tls") or {}).get("validation") or {}).get("trust") or {}).get("sds", {}) \
                    .get("secretName", "")
                if str(secret).startswith("spiffe://"):
                    self.settings.trust_domain = str(secret)[len("spiffe://"):].strip("/")
                    return

    # ----------------------------------------------------------------- routes
    def route_table(self, d: Draft) -> None:
        router = d.selector.pop("router", None) if d.external is None else None
        if d.external is not None:
            for vs in self.of("VirtualService"):
                if self.vs_service.get(str(vs["name"])) == d.name:
                    router = ((vs["spec"].get("provider") or {}).get("virtualRouter") or {}).get("virtualRouterName")
        if not router:
            return
        rules: list[RouteRule] = []
        prev: Any = None
        for r in self.routes_of(router):
            kind = next((k for k in ROUTE_KINDS if k in r["spec"]), None)
            if kind is None:
                continue
            body = r["spec"][kind] or {}
            if kind == "tcpRoute":
                rule = self.rule(r, body, d, tcp=True)
                if rule is not None:
                    rules.append(rule)
                continue
            rule = self.rule(r, body, d)
            if rule is None:
                prev = None
                continue
            key = (json.dumps(body.get("action"), sort_keys=True), json.dumps(body.get("retryPolicy"), sort_keys=True),
                   json.dumps(body.get("timeout"), sort_keys=True))
            if rules and key == prev and rule.matches and rules[-1].matches:
                rules[-1] = rules[-1].model_copy(update={
                    "matches": canonical_matches(rules[-1].matches + rule.matches)})
            else:
                rules.append(rule)
            prev = key
        if d.external is not None or not d.is_http:
            # the route of an external or TCP service only forwards; keep its timeout and retries
            for route_rule in rules:
                if route_rule.timeout is not None and route_rule.timeout.ms is not None:
                    d.resilience["timeout"] = route_rule.timeout
                if route_rule.retry is not None and route_rule.retry.attempts:
                    d.resilience["retry"] = route_rule.retry
            return
        lift_routes(d, rules)

    def rule(self, r: dict[str, Any], body: dict[str, Any], d: Draft, tcp: bool = False) -> RouteRule | None:
        place = f"route:{d.name}"
        targets = (body.get("action") or {}).get("weightedTargets") or []
        dests, weights = [], []
        for t in targets:
            node_name = str(t.get("virtualNode"))
            # a node shared by several services is, in this route table, a version of this one
            owner = next((o for o in self.node_owners.get(node_name, []) if o[0] == d.name),
                         self.node_owner.get(node_name))
            if owner is None:
                self.note(r, "action.weightedTargets", f"node {t.get('virtualNode')} belongs to no service", place)
                continue
            dests.append(Destination(service=owner[0], version=owner[1]))
            weights.append(int(t.get("weight", 1)))
        if not dests:
            return None
        pcts = weights_to_percent(weights)
        merged: dict[tuple[str, str | None], int] = {}
        for dd, p in zip(dests, pcts, strict=True):
            merged[(dd.service, dd.version)] = merged.get((dd.service, dd.version), 0) + p
        own_versions = {v for s, v in merged if s == d.name}
        if len(merged) > 1 and own_versions == set(d.versions) and len(own_versions) == len(merged) and \
                len(set(merged.values())) == 1 or len(merged) == 1 and set(merged) == {(d.name, v) for v in d.versions}:
            merged = {(d.name, None): sum(merged.values())}  # every version, equally: the whole service
        kw: dict[str, Any] = {"destinations": tuple(Destination(service=s, version=v, weight=p)
                                                    for (s, v), p in merged.items() if p)}
        t = _ms((body.get("timeout") or {}).get("perRequest"))
        kw["timeout"] = Timeout(ms=t) if t is not None and t < NO_TIMEOUT_MS else None
        idle = _ms((body.get("timeout") or {}).get("idle"))
        if idle is not None and idle < NO_TIMEOUT_MS:
            self.note(r, "timeout.idle", "an idle (stream) timeout is not expressible", place)
        if tcp:
            kw["timeout"] = None
            return RouteRule(**kw)
        match = self.match(r, body.get("match") or {}, place)
        if match is None:
            self.note(r, "match", "the route is left out: a condition cannot be written", place)
            return None
        if match.path == PathMatch(kind="prefix", value="/"):
            match = match.model_copy(update={"path": None})  # App Mesh needs a path: `/` is every path
        kw["matches"] = () if match == Match() else (match,)
        kw["retry"] = self.retry(r, body.get("retryPolicy"), kw["timeout"], place)
        return RouteRule(**kw)

    def retry(self, r: dict[str, Any], rp: dict[str, Any] | None, timeout: Timeout | None, place: str) -> Retry:
        if rp is None:
            return DEFAULT_RETRY
        n = int(rp.get("maxRetries", 0))
        if n == 0:
            return Retry(attempts=0, on=())
        on = [HTTP_EVENTS[e] for e in rp.get("httpRetryEvents") or [] if e in HTTP_EVENTS]
        if "connection-error" in (rp.get("tcpRetryEvents") or []):
            on.append("connect-failure")
        for e in rp.get("grpcRetryEvents") or []:
            self.note(r, "retryPolicy.grpcRetryEvents", f"gRPC retry event '{e}' not expressible", place)
        per_try = _ms(rp.get("perRetryTimeout"))
        if timeout is not None and per_try == timeout.ms:
            per_try = None  # App Mesh requires one: the request timeout stands in for "none"
        if per_try is not None and per_try >= NO_TIMEOUT_MS:
            per_try = None
        return Retry(attempts=n, on=tuple(dict.fromkeys(on)), per_try_ms=per_try)  # type: ignore[arg-type]

    def match(self, r: dict[str, Any], m: dict[str, Any], place: str) -> Match | None:
        kw: dict[str, Any] = {}
        if "prefix" in m:
            kw["path"] = PathMatch(kind="prefix", value=str(m["prefix"]))
        path = m.get("path") or {}
        if path.get("exact") is not None:
            kw["path"] = PathMatch(kind="exact", value=str(path["exact"]))
        elif path.get("regex") is not None:
            kw["path"] = PathMatch(kind="regex", value=str(path["regex"]))
        if m.get("serviceName"):  # gRPC: the path is /<package.Service>/<Method>
            service = str(m["serviceName"])
            kw["path"] = PathMatch(kind="exact", value=f"/{service}/{m['methodName']}") if m.get("methodName") \
                else PathMatch(kind="prefix", value=f"/{service}/")
        elif m.get("methodName"):
            self.note(r, "match.methodName", "a gRPC method without its service is not expressible", place)
            return None
        headers, query = [], []
        for h in (m.get("headers") or []) + (m.get("metadata") or []):  # gRPC metadata are HTTP/2 headers
            hm = h.get("match") or {}
            if "suffix" in hm and len(hm) == 1:
                hm = {"regex": ".*" + re.escape(str(hm["suffix"]))}  # RE2 full match: ends with it
            kind = next((k for k in ("exact", "prefix", "regex") if k in hm), None)
            if h.get("invert") and not hm:
                headers.append(StringMatch(name=str(h["name"]).lower(), kind="absent"))
            elif not hm and not h.get("invert"):
                headers.append(StringMatch(name=str(h["name"]).lower(), kind="present"))
            elif kind is None or h.get("invert"):
                return None
            else:
                headers.append(StringMatch(name=str(h["name"]).lower(), kind=kind, value=str(hm[kind])))  # type: ignore[arg-type]
        for q in m.get("queryParameters") or []:
            qm = q.get("match") or {}
            if "exact" in qm:
                query.append(StringMatch(name=str(q["name"]), kind="exact", value=str(qm["exact"])))
            elif not qm:
                query.append(StringMatch(name=str(q["name"]), kind="present"))
            else:
                return None
        if m.get("method"):
            kw["methods"] = (str(m["method"]),)
        if m.get("port") is not None and len((self.routers.get(str(r.get("router"))) or {}).get("spec", {})
                                             .get("listeners") or []) > 1:
            self.note(r, "match.port", f"a route for port {m['port']} of a router with several listeners is not "
                      "expressible; it is written for every port", place)
        for k in sorted(set(m) - {"prefix", "path", "headers", "queryParameters", "method", "port", "serviceName",
                                  "methodName", "metadata"}):
            self.note(r, f"match.{k}", "not expressible", place)
            return None
        return Match(headers=tuple(headers), query=tuple(query), **kw)

    # ----------------------------------------------------------------- authorization and ingress
    def source(self, san: str) -> Source | None:
        if san in self.identities:
            return Source(kind="service", name=self.identities[san])
        m = SPIFFE.match(san)
        if not m:
            return None
        if "ingress" in m.group(3) or m.group(3) in {g["name"] for g in self.of("VirtualGateway")}:
            self.settings.ingress_identity = (dns_name(m.group(3)), m.group(2))
            return Source(kind="ingress")
        return Source(kind="identity", name=dns_name(m.group(3)))

    def node_authz(self, node: dict[str, Any]) -> None:
        first = self.node_owner.get(node["name"])
        for owner in self.node_owners.get(node["name"]) or ([first] if first else []):
            if self.drafts[owner[0]].external is None:
                self.listener_authz(node, self.drafts[owner[0]])

    def listener_authz(self, node: dict[str, Any], d: Draft) -> None:
        listeners = node["spec"].get("listeners") or []
        checked = [lst for lst in listeners if str((lst.get("tls") or {}).get("mode")) == "STRICT"
                   and (lst.get("tls") or {}).get("validation")]
        if self.settings.authz == "deny_by_default" and listeners and not any(
                ((lst.get("tls") or {}).get("validation") or {}).get("subjectAlternativeNames") for lst in listeners):
            # no client-certificate SAN list: App Mesh admits every caller the listener lets in,
            # every certificate of the trust when it validates them, else everyone
            source = Source(kind="authenticated" if len(checked) == len(listeners) else "any")
            rule = AuthzRule(action="allow", sources=(source,), destinations=(d.name,))
            if rule not in self.rules:
                self.rules.append(rule)
        for i, lst in enumerate(listeners):
            sans = (((((lst.get("tls") or {}).get("validation") or {}).get("subjectAlternativeNames") or {})
                     .get("match") or {}).get("exact")) or []
            sources = []
            for san in sans:
                s = self.source(str(san))
                if s is None:
                    self.note(node, f"spec.listeners[{i}].tls.validation", f"SAN '{san}' is not a SPIFFE ID; "
                              "left out", "authz")
                else:
                    sources.append(s)
            if sources:
                rule = AuthzRule(action="allow", sources=tuple(dict.fromkeys(sources)), destinations=(d.name,))
                if rule not in self.rules:
                    self.rules.append(rule)

    def gateways(self) -> None:
        gws = {g["name"]: g for g in self.of("VirtualGateway")}
        for g in gws.values():
            for i, lst in enumerate(g["spec"].get("listeners") or []):
                if lst.get("healthCheck"):
                    self.note(g, f"spec.listeners[{i}].healthCheck", "the gateway's own health check is "
                              "not expressible (the ingress is not a service of the mesh)", "mesh")
            cert = (((((g["spec"].get("backendDefaults") or {}).get("clientPolicy") or {}).get("tls") or {})
                     .get("certificate") or {}).get("sds") or {}).get("secretName", "")
            m = SPIFFE.match(str(cert))
            if m:
                self.settings.ingress_identity = (dns_name(m.group(3)), m.group(2))
        # per service, the (host, path, port) each gateway route exposes; None: every host / path
        exposed: dict[str, list[tuple[str | None, PathMatch | None, int]]] = {}
        for gr in self.of("GatewayRoute"):
            gw = self.gateway_of(gr, gws)
            kind = next((k for k in ("httpRoute", "http2Route", "grpcRoute") if k in gr["spec"]), None)
            if kind is None:
                continue
            body = gr["spec"][kind] or {}
            target = ((body.get("action") or {}).get("target") or {}).get("virtualService") or {}
            svc = self.vs_service.get(str(target.get("virtualServiceName")))
            if svc is None:
                self.note(gr, "action.target", "not a virtual service of the input", "mesh")
                continue
            place = f"service:{svc}"
            route_match = body.get("match") or {}
            narrowing = sorted(k for k in ("headers", "method", "queryParameters", "metadata") if route_match.get(k))
            unknown = sorted(set(route_match) - {"prefix", "path", "hostname", "port", "serviceName", "headers",
                                                 "method", "queryParameters", "metadata"})
            if narrowing or unknown:
                self.note(gr, "match." + (narrowing + unknown)[0], "an ingress can only select by host and path; "
                          "the gateway route is left out", place)
                continue
            path = None
            if route_match.get("serviceName"):
                path = PathMatch(kind="prefix", value=f"/{route_match['serviceName']}/")
            elif "prefix" in route_match and route_match["prefix"] != "/":
                path = PathMatch(kind="prefix", value=str(route_match["prefix"]))
            elif (route_match.get("path") or {}).get("exact") is not None:
                path = PathMatch(kind="exact", value=str(route_match["path"]["exact"]))
            elif (route_match.get("path") or {}).get("regex") is not None:
                path = PathMatch(kind="regex", value=str(route_match["path"]["regex"]))
            hostname = route_match.get("hostname") or {}
            host: str | None = None
            if hostname.get("exact"):
                host = str(hostname["exact"])
            elif hostname.get("suffix"):
                if not str(hostname["suffix"]).startswith("."):
                    self.note(gr, "match.hostname.suffix", f"a host suffix that is not a domain "
                              f"('{hostname['suffix']}') is not expressible; the gateway route is left out", place)
                    continue
                host = "*" + str(hostname["suffix"])
            self.gateway_rewrite(gr, body, path, place)
            port = route_match.get("port")
            if not isinstance(port, int):
                lst = ((gw or {}).get("spec", {}).get("listeners") or [{}])[0]
                port = int((lst.get("portMapping") or {}).get("port", 80))
            exposed.setdefault(svc, []).append((host, path, port))
        for svc, entries in exposed.items():
            self.expose(svc, entries)

    def gateway_of(self, gr: dict[str, Any], gws: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        if gr.get("gateway") in gws:
            return gws[str(gr["gateway"])]
        if len(gws) == 1:
            return next(iter(gws.values()))
        same_ns = [g for g in gws.values() if g.get("namespace") and g.get("namespace") == gr.get("namespace")]
        return same_ns[0] if len(same_ns) == 1 else None

    def gateway_rewrite(self, gr: dict[str, Any], body: dict[str, Any], path: PathMatch | None, place: str) -> None:
        """meshc's ingress hands the request on as the client sent it; App Mesh rewrites a matched
        prefix to `/` unless told not to, and can rewrite prefixes and paths."""
        rw = (body.get("action") or {}).get("rewrite") or {}
        prefix = rw.get("prefix") or {}
        if path is not None and path.kind == "prefix" and "serviceName" not in (body.get("match") or {}):
            to = prefix.get("value") if prefix.get("value") is not None else \
                (None if prefix.get("defaultPrefix") == "DISABLED" else "/")
            if to is not None and to != path.value:
                self.note(gr, "action.rewrite.prefix", f"the gateway rewrites the prefix '{path.value}' to '{to}'; "
                          f"the ingress keeps the path (if the service relies on it, route `when path prefix "
                          f"\"{path.value}\"` with `rewrite prefix \"{to}\"`)", place)
        if (rw.get("path") or {}).get("exact") is not None:
            self.note(gr, "action.rewrite.path", f"the gateway rewrites the path to '{rw['path']['exact']}'; the "
                      "ingress keeps the path", place)
        if (rw.get("hostname") or {}).get("defaultTargetHostname") != "DISABLED":
            self.note(gr, "action.rewrite.hostname", "the gateway sets Host to the target virtual service's "
                      "name (App Mesh's default); the ingress keeps the client's Host", place)

    def expose(self, svc: str, entries: list[tuple[str | None, PathMatch | None, int]]) -> None:
        d = self.drafts[svc]
        ports = sorted({port for _, _, port in entries})
        if len(ports) > 1:
            self.report.add(f"service {svc}", "GatewayRoute", f"exposed on ports {ports}: an ingress has one port; "
                            f"written for port {ports[0]}", f"service:{svc}")
        hosts = ("*",) if any(h is None for h, _, _ in entries) else tuple(dict.fromkeys(str(h) for h, _, _ in entries))
        every_path = any(p is None for _, p, _ in entries)
        paths = () if every_path else tuple(
            m.path for m in merge_under(tuple(Match(path=p) for p in dict.fromkeys(p for _, p, _ in entries if p)))
            if m.path)
        # an ingress exposes every path on every host: routes that pair different hosts with
        # different paths are exposed more widely than App Mesh did
        pairs = {(h, p) for h, p, _ in entries}
        if len(hosts) > 1 and not every_path and any((h, p) not in pairs for h in hosts
                                                     for p in {p for _, p, _ in entries}):
            self.report.add(f"service {svc}", "GatewayRoute", "gateway routes pair different hosts with different "
                            "paths; the ingress exposes every path on every host", f"service:{svc}")
        d.expose = Ingress(paths=paths, hosts=hosts, port=ports[0])


def import_files(paths: list[Path], mesh_name: str | None = None) -> Result:
    return AppMeshImporter(read_objects(paths), mesh_name).run()
