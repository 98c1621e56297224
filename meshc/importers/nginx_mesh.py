"""NGINX Service Mesh (v1.x-2.0, archived) -> .mesh: reads SMI resources (split.smi-spec.io
TrafficSplit v1alpha1-v1alpha4, access.smi-spec.io TrafficTarget v1alpha1-v1alpha3,
specs.smi-spec.io HTTPRouteGroup/TCPRoute), NSM's own specs.smi.nginx.com RateLimit and
CircuitBreaker, core Services/ServiceAccounts/workloads, and the Helm values NSM was installed
with (`mtls.mode`, `accessControlMode`; a YAML file with those keys).

- A Service `<svc>-<version>` whose selector is `<svc>`'s plus labels is that version.
- TrafficSplit: the root service's routes; one with `matches` (an HTTPRouteGroup) is a
  conditional rule, one without is `otherwise`. SMI splits have no order: several conditional
  splits of one service are reported (their order in the .mesh is the files' order).
- HTTPRouteGroup regexes: `^x$` is an exact path, `^x.*$` a prefix, `^x(/.*)?$` meshc's
  `under`, anything else a regex; methods `*` is every method.
- TrafficTarget: allow rules between service accounts (NSM denies the rest under
  `accessControlMode: deny`, its default).
- RateLimit: rate and burst (NSM's burst excludes the request itself: bucket = burst + 1;
  no burst is NSM's default 0, a bucket of one).
- CircuitBreaker: outlier detection with `errors` and `timeoutSeconds` (interval = ejection).
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
    finish,
    kind_of,
    lift_routes,
    meta,
    read_documents,
    report_unread,
    resource,
    split_versions,
    version_name,
    weights_to_percent,
)
from meshc.importers.kube import read_services
from meshc.model import (
    AuthzRule,
    Destination,
    Match,
    Outlier,
    PathMatch,
    RateLimit,
    RouteRule,
    Source,
    StringMatch,
)

METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
MTLS = {"strict": "strict", "permissive": "permissive", "off": "disabled"}
_META = re.compile(r"\\(.)")
_PLAIN = r"(?:[^\\.^$|?*+()\[\]{}]|\\.)*"


def unescape(s: str) -> str:
    return _META.sub(r"\1", s)


def path_of(rx: str) -> PathMatch | None:
    """An anchored SMI path regex -> a meshc path match (None: every path)."""
    if rx in (".*", "^.*$", "/.*", "^/.*$", ""):
        return None
    if m := re.fullmatch(rf"\^({_PLAIN})\$", rx):
        return PathMatch(kind="exact", value=unescape(m.group(1)))
    if m := re.fullmatch(rf"\^({_PLAIN})\(/\.\*\)\?\$", rx):
        return PathMatch(kind="under", value=unescape(m.group(1)))
    if m := re.fullmatch(rf"\^?({_PLAIN})\.\*\$?", rx):
        return PathMatch(kind="prefix", value=unescape(m.group(1)))
    body = rx
    if m := re.fullmatch(r"\^\(\?:(.*)\)\$", rx):
        body = m.group(1)
    return PathMatch(kind="regex", value=body)


def spec_of(doc: dict[str, Any]) -> dict[str, Any]:
    """The spec of an SMI object; v1alpha1 TrafficTarget and HTTPRouteGroup have their fields
    (destination, specs, sources, matches) at the top level."""
    spec = doc.get("spec")
    if isinstance(spec, dict):
        return spec
    return {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}


def weight_of(value: Any) -> float | None:
    """A TrafficSplit weight: an integer (v1alpha2+) or a Kubernetes quantity (v1alpha1:
    `500m` is half of `1`)."""
    text = str(value if value is not None else 0).strip()
    scale = 1.0
    if text.endswith("m"):
        text, scale = text[:-1], 0.001
    try:
        w = float(text) * scale
    except ValueError:
        return None
    return w if w >= 0 else None


def target_rules(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """A TrafficTarget's route references: `rules` (v1alpha2+) or `specs` (v1alpha1)."""
    return list(spec.get("rules") or spec.get("specs") or [])


def header_of(name: str, rx: str) -> StringMatch:
    name = name.lower()
    if rx in (".+", "^.+$"):
        return StringMatch(name=name, kind="present")
    if m := re.fullmatch(rf"\^({_PLAIN})\$", rx):
        return StringMatch(name=name, kind="exact", value=unescape(m.group(1)))
    if m := re.fullmatch(rf"\^({_PLAIN})\.\*\$", rx):
        return StringMatch(name=name, kind="prefix", value=unescape(m.group(1)))
    if m := re.fullmatch(r"\^\(\?:(.*)\)\$", rx):
        return StringMatch(name=name, kind="regex", value=m.group(1))
    return StringMatch(name=name, kind="regex", value=rx)

READ_KINDS = {"Service", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Pod", "TrafficSplit", "TrafficTarget", "HTTPRouteGroup", "TCPRoute", "RateLimit", "CircuitBreaker"}


class NginxMeshImporter:
    origin = "nginx-mesh"

    def __init__(self, docs: list[tuple[str, Any]], mesh_name: str | None = None):
        self.docs = [d for _, d in docs if isinstance(d, dict)]
        self.report = Report()
        self.drafts: dict[str, Draft] = {}
        self.version_services: dict[str, tuple[str, str]] = {}
        # NSM's defaults: mTLS permissive, access control allow (helm chart values)
        self.settings = MeshSettings(mtls="permissive", authz="allow_by_default")
        self.mesh_name = mesh_name
        self.rules: list[AuthzRule] = []

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if kind_of(d) == kind]

    def note(self, doc: dict[str, Any] | str, fld: str, why: str, place: str = "") -> None:
        self.report.add(doc if isinstance(doc, str) else resource(doc), fld, why, place)

    def run(self) -> Result:
        self.helm_values()
        self.groups = {meta(g)[0]: g for g in self.of("HTTPRouteGroup")}
        self.tcp_routes = {meta(g)[0]: g for g in self.of("TCPRoute")}
        # (service, targetPort) -> Service port: SMI names the ports the pods listen on
        self.target_ports: dict[tuple[str, int], int] = {}
        for svc in self.of("Service"):
            for p in (svc.get("spec") or {}).get("ports") or []:
                if isinstance(p.get("port"), int) and isinstance(p.get("targetPort"), int):
                    self.target_ports.setdefault((dns_name(meta(svc)[0]), p["targetPort"]), p["port"])
        read_services([("", d) for d in self.docs], self.report, self.drafts, default_protocol="http")
        self.split_versions()
        self.smi_services()
        counts = Counter(d.namespace for d in self.drafts.values())
        self.settings.namespace = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] if counts else "default"
        self.settings.name = self.mesh_name or dns_name(self.settings.namespace)
        self.splits()
        self.targets()
        for rl in self.of("RateLimit"):
            self.rate_limit(rl)
        for cb in self.of("CircuitBreaker"):
            self.circuit_breaker(cb)
        report_unread(self.docs, READ_KINDS, self.report, self.origin)
        mesh = build_mesh(self.settings, self.drafts, self.rules, self.report)
        return finish(mesh, self.report, self.origin)

    def helm_values(self) -> None:
        for d in self.docs:
            if "kind" in d or not ({"mtls", "accessControlMode"} & set(d)):
                continue
            mode = str((d.get("mtls") or {}).get("mode", "permissive"))
            self.settings.mtls = MTLS.get(mode, "permissive")
            self.settings.authz = "deny_by_default" if d.get("accessControlMode", "allow") == "deny" \
                else "allow_by_default"

    def split_versions(self) -> None:
        split_versions(self.drafts, self.version_services)

    def smi_services(self) -> None:
        """Without core Services in the input, SMI objects name the services: split roots, the
        destinations of rate limits and circuit breakers, and `<root>-<version>` backends."""
        declared = set(self.drafts)
        roots: dict[str, str] = {}
        for ts in self.of("TrafficSplit"):
            root = dns_name(str(spec_of(ts).get("service", "")).split(".")[0])
            roots[root] = meta(ts)[1]
        for doc in self.of("RateLimit") + self.of("CircuitBreaker"):
            dest = spec_of(doc).get("destination") or {}
            if dest.get("kind", "Service") == "Service" and dest.get("name"):
                roots.setdefault(dns_name(str(dest["name"])), str(dest.get("namespace") or meta(doc)[1]))
        for name, ns in sorted(roots.items()):
            if name not in self.drafts:
                self.drafts[name] = Draft(name, ns)
        for ts in self.of("TrafficSplit"):
            spec = spec_of(ts)
            root = dns_name(str(spec.get("service", "")).split(".")[0])
            for b in spec.get("backends") or []:
                bname = dns_name(str(b.get("service", "")))
                if bname in declared or bname in self.version_services or bname == root:
                    continue
                if bname.startswith(root + "-"):
                    version = version_name(bname[len(root) + 1:])
                    self.drafts[root].versions.setdefault(version, {"version": version})
                    self.version_services[bname] = (root, version)
                    self.drafts.pop(bname, None)
                elif bname not in self.drafts:
                    self.drafts[bname] = Draft(bname, meta(ts)[1])
        for tt in self.of("TrafficTarget"):
            spec = spec_of(tt)
            for acct in [spec.get("destination") or {}, *(spec.get("sources") or [])]:
                name, ns = str(acct.get("name", "")), str(acct.get("namespace") or meta(tt)[1])
                if not name or self.by_account(name, ns) or "ingress" in name:
                    continue
                if acct is spec.get("destination"):
                    key = dns_name(self.strip_account_prefix(name))
                    self.drafts[key] = Draft(key, ns, identity=name)
                    self.note(tt, "spec.destination", f"no Service runs as {name}: a service of that name is "
                              "declared", f"service:{key}")
        for tt in self.of("TrafficTarget"):
            spec = spec_of(tt)
            dest = spec.get("destination") or {}
            for name in self.by_account(str(dest.get("name")), str(dest.get("namespace") or meta(tt)[1])):
                d = self.drafts[name]
                kinds = {r.get("kind") for r in target_rules(spec)}
                port_text = str(dest.get("port") or "")
                if not d.ports:
                    number = int(port_text) if port_text.isdigit() else 80
                    d.ports[number] = "tcp" if kinds == {"TCPRoute"} else "http"
                    if number == 80 and not port_text.isdigit():
                        self.report.add(f"service {name}", "ports", "SMI objects carry no port; assumed "
                                        f"{d.ports[number]} 80 (include the Kubernetes Service to carry it)",
                                        f"service:{name}")

    def service_port(self, name: str, port: int) -> int | None:
        """The Service port of `name` that a pod (target) port or a Service port `port` is."""
        d = self.drafts.get(name)
        if d is not None and port in d.ports:
            return port
        return self.target_ports.get((name, port))

    def strip_account_prefix(self, account: str) -> str:
        """`bookinfo-productpage` -> `productpage` when the other services' accounts are all
        `bookinfo-<service>` (a common naming scheme)."""
        prefixes = {d.identity[: -len(d.name) - 1] for d in self.drafts.values()
                    if d.identity and d.identity.endswith("-" + d.name)}
        if len(prefixes) == 1:
            prefix = next(iter(prefixes)) + "-"
            if account.startswith(prefix) and len(account) > len(prefix):
                return account[len(prefix):]
        return account

    def backend(self, name: str) -> Destination | None:
        key = dns_name(name)
        if key in self.version_services:
            svc, version = self.version_services[key]
            return Destination(service=svc, version=version)
        if key in self.drafts:
            return Destination(service=key)
        return None

    # ----------------------------------------------------------------- routing
    def splits(self) -> None:
        by_service: dict[str, list[dict[str, Any]]] = {}
        for ts in self.of("TrafficSplit"):
            root = dns_name(str(spec_of(ts).get("service", "")).split(".")[0])
            if root not in self.drafts:
                self.note(ts, "spec.service", "not a Service of the input")
                continue
            by_service.setdefault(root, []).append(ts)
        for name, splits in sorted(by_service.items()):
            d = self.drafts[name]
            conditional = [s for s in splits if spec_of(s).get("matches")]
            default = [s for s in splits if not spec_of(s).get("matches")]
            if len(conditional) > 1:
                self.note(f"service {name}", "TrafficSplit", "SMI traffic splits have no order; their conditions "
                          "are tried in the order of the input files", f"route:{name}")
            if len(default) > 1:
                self.note(f"service {name}", "TrafficSplit", "several unconditional splits; the first is kept",
                          f"route:{name}")
            rules = [r for s in conditional + default[:1] if (r := self.rule(s, d)) is not None]
            lift_routes(d, rules)

    def rule(self, ts: dict[str, Any], d: Draft) -> RouteRule | None:
        spec = spec_of(ts)
        place = f"route:{d.name}"
        dests, weights = [], []
        for b in spec.get("backends") or []:
            dest = self.backend(str(b.get("service", "")))
            if dest is None:
                self.note(ts, "spec.backends", f"{b.get('service')} is not a Service of the input", place)
                continue
            w = weight_of(b.get("weight", 0))
            if w is None:
                self.note(ts, "spec.backends", f"weight {b.get('weight')!r} of {b.get('service')} is not a number; "
                          "the backend is left out", place)
                continue
            dests.append(dest)
            weights.append(round(w * 1000))  # thousandths keep v1alpha1's `500m` exact
        if not dests:
            return None
        matches: list[Match] = []
        for ref in spec.get("matches") or []:
            group = self.groups.get(str(ref.get("name")))
            if ref.get("kind") != "HTTPRouteGroup" or group is None:
                self.note(ts, "spec.matches", f"{ref.get('kind')} {ref.get('name')} is not an HTTPRouteGroup of the "
                          "input; the split is left out", place)
                return None
            wanted = set(ref.get("matches") or [])
            for m in spec_of(group).get("matches") or []:
                if wanted and m.get("name") not in wanted:
                    continue
                got = self.match(group, m, place)
                if got is None:
                    return None
                matches.append(got)
        pcts = weights_to_percent(weights)
        return RouteRule(matches=tuple(m for m in matches if m != Match()) if spec.get("matches") else (),
                         destinations=tuple(x.model_copy(update={"weight": p})
                                            for x, p in zip(dests, pcts, strict=True) if p))

    def match(self, group: dict[str, Any], m: dict[str, Any], place: str) -> Match | None:
        methods = [str(x) for x in m.get("methods") or ["*"]]
        if "*" in methods:
            methods = []
        if any(x not in METHODS for x in methods):
            self.note(group, f"spec.matches.{m.get('name')}.methods", f"methods {methods} not expressible", place)
            return None
        path = path_of(str(m.get("pathRegex", ".*")))
        headers = tuple(header_of(str(k), str(v)) for k, v in (m.get("headers") or {}).items())
        for k in sorted(set(m) - {"name", "pathRegex", "methods", "headers"}):
            self.note(group, f"spec.matches.{m.get('name')}.{k}", "not expressible", place)
        return Match(path=path, headers=headers, methods=tuple(methods))

    # ----------------------------------------------------------------- access
    def by_account(self, name: str, ns: str) -> list[str]:
        """Services running as a service account: known identities first, else by name
        (`<svc>`, `<svc>-sa`, `<prefix>-<svc>`)."""
        same = [d for d in self.drafts.values() if d.namespace == ns]
        found = sorted(d.name for d in same if (d.identity or d.name) == name)
        if not found:
            guess = sorted(d.name for d in same if d.identity is None and
                           (name.startswith(d.name + "-") or name.endswith("-" + d.name)))
            if len(guess) == 1:
                self.drafts[guess[0]].identity = name
                found = guess
        return found

    def source(self, name: str, ns: str) -> Source:
        services = self.by_account(name, ns)
        if services:
            return Source(kind="service", name=services[0])
        if "ingress" in name:
            self.settings.ingress_identity = (dns_name(name), ns)
            return Source(kind="ingress")
        return Source(kind="identity", name=dns_name(name))

    def targets(self) -> None:
        for tt in self.of("TrafficTarget"):
            spec = spec_of(tt)
            _, ns = meta(tt)
            dest = spec.get("destination") or {}
            services = self.by_account(str(dest.get("name")), str(dest.get("namespace") or ns))
            if not services:
                self.note(tt, "spec.destination", f"service account {dest.get('name')} runs no Service of the input",
                          "authz")
                continue
            for s in spec.get("sources") or []:
                if s.get("kind") != "ServiceAccount":
                    self.note(tt, "spec.sources", f"source kind {s.get('kind')} is not a service account; not "
                              "allowed (fail closed)", "authz")
            sources = tuple(dict.fromkeys(self.source(str(s.get("name")), str(s.get("namespace") or ns))
                                          for s in spec.get("sources") or [] if s.get("kind") == "ServiceAccount"))
            if not sources:
                continue
            dest_port = int(dest["port"]) if str(dest.get("port", "")).isdigit() else None
            for rule in target_rules(spec) or [{"kind": "TCPRoute"}]:
                route_ports: list[int] | None = None  # None: every port
                if rule.get("kind") == "TCPRoute":
                    conds = [Match()]
                    tcp = self.tcp_routes.get(str(rule.get("name")))
                    if rule.get("name") and tcp is None:
                        self.note(tt, "spec.rules", f"TCPRoute {rule.get('name')} is not in the input; the allow is "
                                  "left out (fail closed)", "authz")
                        continue
                    listed = ((spec_of(tcp) if tcp else {}).get("matches") or {}).get("ports") or []
                    route_ports = [int(p) for p in listed if str(p).isdigit()] or None
                else:
                    group = self.groups.get(str(rule.get("name")))
                    if group is None:
                        self.note(tt, "spec.rules", f"HTTPRouteGroup {rule.get('name')} is not in the input; "
                                  "the allow is left out (fail closed)", "authz")
                        continue
                    wanted = set(rule.get("matches") or [])
                    conds = []
                    for m in spec_of(group).get("matches") or []:
                        if not wanted or m.get("name") in wanted:
                            got = self.match(group, m, "authz")
                            if got is not None:
                                conds.append(got)
                wanted_ports = [p for p in (route_ports or []) if dest_port is None or p == dest_port] \
                    if route_ports is not None else ([dest_port] if dest_port is not None else None)
                for svc in services:
                    ports: tuple[int, ...] = ()
                    if wanted_ports is not None:
                        mapped = [self.service_port(svc, p) for p in wanted_ports]
                        ports = tuple(sorted({p for p in mapped if p is not None}))
                        if None in mapped or not ports:
                            self.note(tt, "spec.destination.port" if route_ports is None else "spec.rules",
                                      f"port(s) {wanted_ports} are not ports of service {svc}"
                                      + ("; the allow is left out (fail closed)" if not ports else
                                         "; those are left out"), "authz")
                            if not ports:
                                continue
                    for c in conds:
                        self.rules.append(AuthzRule(action="allow", sources=sources, destinations=(svc,),
                                                    methods=c.methods, paths=(c.path,) if c.path else (),
                                                    headers=c.headers, ports=ports))
        # identical rules that differ only in their paths are one rule with several paths
        merged: list[AuthzRule] = []
        for r in self.rules:
            twin = next((i for i, o in enumerate(merged) if o.paths and r.paths and
                         o.model_copy(update={"paths": ()}) == r.model_copy(update={"paths": ()})), None)
            if twin is not None:
                merged[twin] = merged[twin].model_copy(update={"paths": merged[twin].paths + r.paths})
            elif r not in merged:
                merged.append(r)
        self.rules = merged

    # ----------------------------------------------------------------- resilience
    def destination_of(self, doc: dict[str, Any]) -> Draft | None:
        dest = spec_of(doc).get("destination") or {}
        d = self.drafts.get(dns_name(str(dest.get("name", ""))))
        if d is None:
            self.note(doc, "spec.destination", "not a Service of the input")
        return d

    def rate_limit(self, rl: dict[str, Any]) -> None:
        d = self.destination_of(rl)
        if d is None:
            return
        spec = spec_of(rl)
        m = re.fullmatch(r"(\d+)r/([sm])", str(spec.get("rate", "")))
        if not m:
            self.note(rl, "spec.rate", f"rate {spec.get('rate')} not understood", f"service:{d.name}")
            return
        burst = spec.get("burst", 0)  # NSM's default: no burst, a bucket of one request
        if not str(burst).isdigit():
            self.note(rl, "spec.burst", f"burst {burst!r} not understood; the limit is left out", f"service:{d.name}")
            return
        d.resilience["rate_limit"] = RateLimit(requests=int(m.group(1)), unit=m.group(2),  # type: ignore[arg-type]
                                               burst=int(burst) + 1)
        if spec.get("sources") or spec.get("rules"):
            self.note(rl, "spec.sources/rules", "per-source or per-route limits are not expressible: the limit "
                      "applies to every request", f"service:{d.name}")
        if spec.get("delay") != "nodelay" and int(burst) > 0:
            # without `delay: nodelay` NSM (nginx limit_req) queues the burst instead of passing it at once
            self.note(rl, "spec.delay", "delayed (queued) excess requests are not expressible: the burst is "
                      "passed without delay", f"service:{d.name}")

    def circuit_breaker(self, cb: dict[str, Any]) -> None:
        d = self.destination_of(cb)
        if d is None:
            return
        spec = spec_of(cb)
        secs = int(spec.get("timeoutSeconds", 10))
        d.resilience["outlier"] = Outlier(consecutive_5xx=int(spec.get("errors", 5)), interval_ms=secs * 1000,
                                          eject_ms=secs * 1000, max_percent=10_000)
        if spec.get("fallback"):
            self.note(cb, "spec.fallback", "a fallback service is not expressible", f"service:{d.name}")


def import_files(paths: list[Path], mesh_name: str | None = None) -> Result:
    return NginxMeshImporter(read_documents(paths), mesh_name).run()
