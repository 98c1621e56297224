"""Consul -> .mesh: reads Consul config entries (Consul 1.17+) as HCL or JSON (`consul config
write` files), consul-k8s CRDs (consul.hashicorp.com/v1alpha1, YAML), and agent service
definitions (`service { name port meta }`, HCL or JSON) for ports and versions.

- service-defaults: protocol, mTLS mode, request timeout, upstream overrides (the callee's
  circuit breaker and outlier detection, as Consul configures them on the caller), rate limits.
- service-resolver: versions (subsets with `Service.Meta.<k> == "<v>"` filters), default
  subset, load balancing.
- service-router: ordered routes (consecutive routes to the same destination are one rule with
  OR-ed matches); service-splitter: weighted splits (a splitter behind a router destination is
  inlined as that rule's split).
- service-intentions: allow/deny rules. Consul applies the most specific source and an L7
  intention's permissions first-match; the `* -> *` intention is the mesh default. Permissions
  in the order meshc writes them (denies, allows, a catch-all with the default) translate
  exactly; another order is reported.
- ingress-gateway: `expose ingress` (a virtual `<svc>-ingress` router gives the paths).
- proxy-defaults: mesh mTLS mode and access logs.

Config entries carry no port numbers: they come from service definitions when given, else a
port is assumed (reported).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from meshc.importers.common import (
    MAX_DEPTH,
    Draft,
    ImportError_,
    MeshSettings,
    Report,
    Result,
    build_mesh,
    canonical_matches,
    dns_name,
    duration_ms,
    finish,
    lift_routes,
    load_yaml,
    merge_under,
    percent,
    read_input,
    version_name,
)
from meshc.model import (
    FULL,
    AuthzRule,
    CircuitBreaker,
    Destination,
    External,
    HeaderOps,
    Ingress,
    LoadBalance,
    Match,
    Outlier,
    PathMatch,
    RateLimit,
    Retry,
    Rewrite,
    RouteRule,
    Source,
    StringMatch,
    Timeout,
)

NO_TIMEOUT_MS = 365 * 24 * 3600 * 1000
# python-hcl2 parses about 50 KiB a second here: this bounds one HCL file to a few seconds. Config
# entries are a few KiB; JSON input (read by the C YAML parser) has the common 4 MiB limit.
MAX_HCL_BYTES = 256 * 1024
ASSUMED_PORT = 8080
CRD_KINDS = {"ProxyDefaults": "proxy-defaults", "Mesh": "mesh", "ServiceDefaults": "service-defaults",
             "ServiceResolver": "service-resolver", "ServiceSplitter": "service-splitter",
             "ServiceRouter": "service-router", "ServiceIntentions": "service-intentions",
             "IngressGateway": "ingress-gateway", "TerminatingGateway": "terminating-gateway"}
PROTOCOLS = {"http": "http", "http2": "http2", "grpc": "grpc", "tcp": "tcp"}
LB = {"round_robin": "round_robin", "least_request": "least_request", "random": "random"}
RETRY_ON = {"5xx", "gateway-error", "connect-failure", "reset", "retriable-4xx", "refused-stream"}
METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
ACRONYMS = {"http": "HTTP", "tls": "TLS", "id": "ID", "ttl": "TTL", "acl": "ACL", "ip": "IP"}


# --------------------------------------------------------------------------- reading


def _unquote(v: Any) -> Any:
    """python-hcl2 keeps the quotes of string literals: `"x"` -> x (with HCL escapes)."""
    if isinstance(v, str) and len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        try:
            return json.loads(v)
        except ValueError:
            return v[1:-1]
    return v


def _clean(v: Any) -> Any:
    if isinstance(v, dict):
        return {_unquote(k): _clean(_one_block(x)) for k, x in v.items() if not str(k).startswith("__")}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return _unquote(v)


def _one_block(v: Any) -> Any:
    """python-hcl2 gives every block as a list of bodies; Consul (HCL1) reads one block `X { ... }`
    as the map `X = { ... }`. Repeated blocks (agent `service { }` definitions) stay a list."""
    if isinstance(v, list) and len(v) == 1 and isinstance(v[0], dict) and v[0].get("__is_block__"):
        return v[0]
    return v


_HCL_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


class _TooDeep(ValueError):
    def __init__(self, line: int) -> None:
        super().__init__(f"nested deeper than {MAX_DEPTH} levels at line {line}")
        self.line = line


def hcl1_blocks(text: str) -> str:
    """Consul reads config entries with HCL1, which allows a block inside an object literal
    (`Routes = [{ Match { HTTP { ... } } }]`, as Consul's documentation writes them); HCL2 does not.
    Such a nested `X {` is rewritten `X = {`, the same map; strings and comments are left alone.
    Nesting of braces, brackets and parentheses deeper than MAX_DEPTH raises _TooDeep (python-hcl2
    and the walks over its result recurse once per level)."""
    out: list[str] = []
    stack: list[str] = []  # "block" (a body of attributes and blocks), "object" or "list"
    parens = 0
    i, n = 0, len(text)
    last = ""  # the last significant character written
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i, last = j + 1, '"'
            continue
        if c == "#" or text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(text[i:j])
            i = j
            continue
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(text[i:j])
            i = j
            continue
        if text.startswith("<<", i) and (m := re.match(r"<<-?([A-Za-z_]+)\n", text[i:])):
            end = re.compile(rf"^\s*{m.group(1)}\s*$", re.M).search(text, i + m.end())
            j = n if end is None else end.end()
            out.append(text[i:j])
            i, last = j, '"'
            continue
        m = _HCL_IDENT.match(text, i) if (c.isalpha() or c == "_") and (i == 0 or not (
            text[i - 1].isalnum() or text[i - 1] in "_.-")) else None
        if m:
            brace = re.compile(r"[ \t]*\{").match(text, m.end())
            in_literal = bool(stack) and stack[-1] != "block"
            if brace and last != "=" and in_literal:
                out.append(m.group(0) + " =")
                i, last = m.end(), "="
                continue
            block = brace and last != "="
            out.append(m.group(0))
            i, last = m.end(), "a"
            if block and brace:
                out.append(text[i:brace.end()])
                stack.append("block")
                i, last = brace.end(), "{"
                if len(stack) + parens > MAX_DEPTH:
                    raise _TooDeep(text.count("\n", 0, i) + 1)
            continue
        if c == "{":
            stack.append("object")
        elif c == "[":
            stack.append("list")
        elif c in "}]" and stack:
            stack.pop()
        elif c == "(":
            parens += 1
        elif c == ")" and parens:
            parens -= 1
        if len(stack) + parens > MAX_DEPTH:
            raise _TooDeep(text.count("\n", 0, i) + 1)
        out.append(c)
        if not c.isspace():
            last = c
        i += 1
    return "".join(out)


def _api_key(key: str) -> str:
    """consul-k8s CRD field or snake_case field (which `consul config write` accepts, and older
    Consul docs use) -> Consul API field: `http` -> `HTTP`, `mutualTLSMode` -> `MutualTLSMode`,
    `path_prefix` -> `PathPrefix`, `mutual_tls_mode` -> `MutualTLSMode`."""
    if "_" in key.strip("_"):
        return "".join(_api_key(part) for part in key.split("_") if part)
    if key in ACRONYMS:
        return ACRONYMS[key]
    return key[0].upper() + key[1:] if key else key


def _from_crd(v: Any, free: bool = False) -> Any:
    if isinstance(v, dict):
        # header maps (Set/Add), Meta and proxy Config keep their keys as written
        return {(k if free else _api_key(k)): _from_crd(x, free=k in ("set", "add", "meta", "config", "Set", "Add", "Meta", "Config"))
                for k, x in v.items()}
    if isinstance(v, list):
        return [_from_crd(x) for x in v]
    return v


def read_entries(paths: list[Path]) -> list[dict[str, Any]]:
    """Config entries (Kind, Name, ...) and service definitions (Kind "service-definition")."""
    out: list[dict[str, Any]] = []
    for p in paths:
        text = read_input(p)
        docs: list[Any]
        if p.suffix == ".hcl":
            try:
                import hcl2
            except ImportError:  # pragma: no cover - dev extra
                raise ImportError_("reading HCL needs python-hcl2 (pip install 'meshc[dev]')") from None
            if len(text.encode("utf-8")) > MAX_HCL_BYTES:
                raise ImportError_(f"{p}: error[E121]: cannot read it: HCL input is limited to {MAX_HCL_BYTES // 1024} "
                                   "KiB (python-hcl2 parses about 50 KiB a second); give the entries as JSON "
                                   "(`consul config read -kind KIND -name NAME` prints them so) or split the file")
            try:
                text = hcl1_blocks(text)
            except _TooDeep as e:
                raise ImportError_(f"{p}:{e.line}: error[E124]: the document is nested deeper than {MAX_DEPTH} "
                                   "levels; refused (a bound on every input keeps meshc's time and memory "
                                   "bounded)") from None
            try:
                docs = [_clean(hcl2.loads(text))]
            except Exception as e:  # python-hcl2 raises lark errors of several kinds
                raise ImportError_(f"{p}: not HCL: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
        else:
            docs = [d for d in load_yaml(p, text) if d is not None]
        for d in docs:
            out += _entries_of(d)
    return out


def _entries_of(d: Any) -> list[dict[str, Any]]:
    if isinstance(d, list):
        return [e for x in d for e in _entries_of(x)]
    if not isinstance(d, dict):
        return []
    if d.get("kind") in CRD_KINDS and "spec" in d:
        meta = d.get("metadata") or {}
        body = _from_crd(d.get("spec") or {})
        name = meta.get("name", "")
        if d["kind"] == "ServiceIntentions":  # the CRD names its destination in the spec
            name = (body.pop("Destination", None) or {}).get("Name", name)
        ns = {"Namespace": meta["namespace"]} if meta.get("namespace") else {}
        return [{"Kind": CRD_KINDS[d["kind"]], "Name": name, **ns, **body}]
    if "Kind" in d:
        return [d]
    if "kind" in d and "name" in d:  # lower-case (snake_case) keys are accepted by `consul config write`
        return [_from_crd(d)]
    out = []
    for key in ("service", "services", "Service", "Services"):
        v = d.get(key)
        for s in (v if isinstance(v, list) else [v] if isinstance(v, dict) else []):
            out.append({"Kind": "service-definition", **{_api_key(k): x for k, x in s.items()}})
    return out


# --------------------------------------------------------------------------- import


class ConsulImporter:
    origin = "consul"

    def __init__(self, entries: list[dict[str, Any]], mesh_name: str | None = None):
        self.entries = entries
        self.report = Report()
        self.drafts: dict[str, Draft] = {}
        self.settings = MeshSettings(name=mesh_name or "consul", mtls="strict", authz="allow_by_default")
        self.rules: list[AuthzRule] = []
        self.by_kind: dict[str, dict[str, dict[str, Any]]] = {}
        self.namespaces: dict[str, str] = {}  # service -> namespace (CRD metadata or Enterprise Namespace)
        for e in entries:
            table = self.by_kind.setdefault(str(e.get("Kind", "")), {})
            name = str(e.get("Name", ""))
            table[name] = {**table.get(name, {}), **e}  # an entry given as HCL and as a CRD is one entry
            if e.get("Namespace") and e.get("Kind") != "ingress-gateway":
                self.namespaces.setdefault(dns_name(name), dns_name(str(e["Namespace"])))
        if self.namespaces:
            counts: dict[str, int] = {}
            for ns in self.namespaces.values():
                counts[ns] = counts.get(ns, 0) + 1
            self.settings.namespace = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]

    def of(self, kind: str) -> dict[str, dict[str, Any]]:
        return self.by_kind.get(kind, {})

    def note(self, e: dict[str, Any], fld: str, why: str, place: str = "") -> None:
        self.report.add(f"{e.get('Kind')} {e.get('Name')}", fld, why, place)

    def unknown_keys(self, e: dict[str, Any], known: set[str], prefix: str = "", place: str = "") -> None:
        for k in sorted(set(e) - known - {"Kind", "Name", "Namespace", "Partition", "Meta"}):
            self.note(e, prefix + k, "not expressible", place)

    def run(self) -> Result:
        self.virtual = self.virtual_services()
        self.default_subset: dict[str, str] = {}
        self.default_protocol = "tcp"  # Consul's default without proxy-defaults Config.protocol
        self.proxy_defaults()
        self.mesh_entry()
        for _, e in sorted(self.of("service-definition").items()):
            self.service_definition(e)
        for name in sorted({*self.of("service-defaults"), *self.of("service-resolver"), *self.of("service-router"),
                            *self.of("service-splitter"), *self.of("service-intentions")} - self.virtual - {"*"}):
            self.draft(name)
        for e in self.of("service-defaults").values():
            if e["Name"] not in self.virtual:
                self.service_defaults(e)
        for e in self.of("service-resolver").values():
            if e["Name"] not in self.virtual:
                self.resolver(e)
        for _, d in sorted(self.drafts.items()):
            for n, proto in list(d.ports.items()):
                d.ports[n] = proto or self.default_protocol
            self.routes(d)
        self.ingress()
        self.intentions()
        for name, d in sorted(self.drafts.items()):
            if not d.ports:
                proto = self.protocols.get(name, self.default_protocol)
                d.ports[ASSUMED_PORT] = proto
                self.report.add(f"service {name}", "port", f"Consul config entries carry no port number; "
                                f"assumed {ASSUMED_PORT} (give the service definition to carry it)", f"service:{name}")
        handled = {"proxy-defaults", "mesh", "service-defaults", "service-resolver", "service-splitter",
                   "service-router", "service-intentions", "ingress-gateway", "service-definition"}
        for kind in sorted(set(self.by_kind) - handled):
            for name in sorted(self.by_kind[kind]):
                self.report.add(f"{kind} {name}", "Kind", f"{kind} config entries are not read by the consul "
                                "importer; not carried over")
        mesh = build_mesh(self.settings, self.drafts, self.rules, self.report)
        return finish(mesh, self.report, self.origin)

    def draft(self, name: str) -> Draft:
        key = dns_name(name)
        return self.drafts.setdefault(key, Draft(key, self.namespaces.get(key, self.settings.namespace)))

    # ----------------------------------------------------------------- virtual services
    def virtual_services(self) -> set[str]:
        """Names that only exist to carry a split (`<svc>-route-<i>`) or an ingress path filter
        (`<svc>-ingress`): a splitter or router reached from another service's router or from
        the ingress gateway, whose destinations are all other services."""
        out: set[str] = set()
        referenced: set[str] = set()
        for r in self.of("service-router").values():
            for route in r.get("Routes") or []:
                s = (route.get("Destination") or {}).get("Service")
                if s and s != r["Name"]:
                    referenced.add(s)
        gw_services = {s.get("Name") for g in self.of("ingress-gateway").values() for lst in g.get("Listeners") or []
                       for s in lst.get("Services") or []}
        for name, sp in self.of("service-splitter").items():
            targets = {s.get("Service") or name for s in sp.get("Splits") or []}
            if name in referenced and name not in targets:
                out.add(name)
        for name, r in self.of("service-router").items():
            targets = {(x.get("Destination") or {}).get("Service") or name for x in r.get("Routes") or []}
            if name in gw_services and name not in targets and len(targets) == 1:
                out.add(name)
        return out

    # ----------------------------------------------------------------- entries
    def proxy_defaults(self) -> None:
        pd = self.of("proxy-defaults").get("global")
        if pd is None:
            return
        mode = str(pd.get("MutualTLSMode") or "strict").lower()
        self.settings.mtls = "permissive" if mode == "permissive" else "strict"
        logs = pd.get("AccessLogs") or {}
        if logs:
            self.settings.access_log = "off" if not logs.get("Enabled") else \
                "text" if logs.get("TextFormat") else "json"
        self.default_protocol = PROTOCOLS.get(str((pd.get("Config") or {}).get("protocol", "tcp")).lower(), "tcp")
        for k in sorted(set(pd.get("Config") or {}) - {"protocol"}):
            self.note(pd, f"Config.{k}", "proxy configuration not expressible", "mesh")
        self.unknown_keys(pd, {"MutualTLSMode", "AccessLogs", "Config", "Mode", "TransparentProxy"}, place="mesh")

    def mesh_entry(self) -> None:
        m = self.of("mesh").get("mesh")
        if m is None:
            return
        norm = ((m.get("HTTP") or {}).get("Incoming") or {}).get("RequestNormalization") or {}
        if norm.get("InsecureDisablePathNormalization"):
            self.settings.path_normalization = "off"
        self.unknown_keys(m, {"HTTP", "AllowEnablingPermissiveMutualTLS", "TransparentProxy", "TLS"}, place="mesh")

    def service_definition(self, e: dict[str, Any]) -> None:
        name = str(e.get("Name") or e.get("ID") or "")
        if not name:
            return
        d = self.draft(name)
        port = e.get("Port")
        proto = str((e.get("Meta") or {}).get("protocol") or "")
        if isinstance(port, int):
            d.ports[port] = PROTOCOLS.get(proto, d.ports.get(port, ""))  # protocol filled in later
        version = (e.get("Meta") or {}).get("version")
        if version:
            d.versions.setdefault(version_name(str(version)), {"version": str(version)})

    @property
    def protocols(self) -> dict[str, str]:
        out = {}
        for name, e in self.of("service-defaults").items():
            out[dns_name(name)] = PROTOCOLS.get(str(e.get("Protocol") or self.default_protocol).lower(), "tcp")
        return out

    def service_defaults(self, e: dict[str, Any]) -> None:
        d = self.draft(e["Name"])
        place = f"service:{d.name}"
        proto = PROTOCOLS.get(str(e.get("Protocol") or self.default_protocol).lower())  # unset: proxy-defaults'
        if proto is None:
            self.note(e, "Protocol", f"protocol {e.get('Protocol')} is not expressible; assumed tcp", place)
            proto = "tcp"
        for n in list(d.ports):
            d.ports[n] = proto
        dest = e.get("Destination") or {}
        if dest.get("Addresses"):
            addrs = [str(a) for a in dest["Addresses"]]
            d.external = External(host=addrs[0])
            if isinstance(dest.get("Port"), int):
                d.ports = {dest["Port"]: proto}
            if len(addrs) > 1:
                self.note(e, "Destination.Addresses", f"only the first address ({addrs[0]}) is kept", place)
            self.note(e, "Destination", "TLS origination to an external destination is configured on the "
                      "terminating gateway, which is not read; not carried over", place)
        mode = str(e.get("MutualTLSMode") or "").lower()
        if mode in ("strict", "permissive"):
            d.mtls = mode
        ms = e.get("LocalRequestTimeoutMs")
        if isinstance(ms, int) and ms > 0 and ms < NO_TIMEOUT_MS:
            d.resilience.setdefault("timeout", Timeout(ms=ms))
        for ov in (e.get("UpstreamConfig") or {}).get("Overrides") or []:
            callee = self.draft(str(ov.get("Name", "")))
            if str(ov.get("Name")) in self.virtual:
                continue
            self.upstream_limits(e, ov, callee)
        defaults = (e.get("UpstreamConfig") or {}).get("Defaults")
        if defaults:
            self.note(e, "UpstreamConfig.Defaults", "limits for every upstream of a caller are not expressible "
                      "(meshc sets them on the callee)", place)
        rl = (e.get("RateLimits") or {}).get("InstanceLevel") or {}
        if rl.get("RequestsPerSecond"):
            burst = rl.get("RequestsMaxBurst")
            d.resilience["rate_limit"] = RateLimit(requests=int(rl["RequestsPerSecond"]), unit="s",
                                                   burst=int(burst) if burst else None)
        self.unknown_keys(e, {"Protocol", "MutualTLSMode", "LocalRequestTimeoutMs", "UpstreamConfig", "RateLimits",
                              "TransparentProxy", "Mode", "Destination"}, place=place)

    def upstream_limits(self, e: dict[str, Any], ov: dict[str, Any], callee: Draft) -> None:
        at = f"UpstreamConfig.Overrides.{ov.get('Name')}"
        place = f"service:{callee.name}"
        for k in sorted(set(ov) - {"Name", "Namespace", "Partition", "Peer", "Limits", "PassiveHealthCheck"}):
            self.note(e, f"{at}.{k}", "not expressible", place)
        lim = ov.get("Limits") or {}
        for k in sorted(set(lim) - {"MaxConnections", "MaxPendingRequests", "MaxConcurrentRequests"}):
            self.note(e, f"{at}.Limits.{k}", "not expressible", place)
        if lim:
            cb = CircuitBreaker(max_connections=lim.get("MaxConnections"), max_pending=lim.get("MaxPendingRequests"),
                                max_requests=lim.get("MaxConcurrentRequests"))
            old = callee.resilience.setdefault("circuit_breaker", cb)
            if old != cb:
                self.note(e, f"{at}.Limits", "another caller sets other limits for this service; meshc has one "
                          "circuit breaker per service: the first is kept", place)
        phc = ov.get("PassiveHealthCheck") or {}
        for k in sorted(set(phc) - {"MaxFailures", "Interval", "BaseEjectionTime", "MaxEjectionPercent"}):
            if k == "EnforcingConsecutive5xx" and phc[k] == 100:
                continue  # Envoy's default: every detected host is ejected
            self.note(e, f"{at}.PassiveHealthCheck.{k}", "not expressible", place)
        if phc:
            kw: dict[str, Any] = {}
            if phc.get("MaxFailures") is not None:
                kw["consecutive_5xx"] = int(phc["MaxFailures"])
            for src, dst in (("Interval", "interval_ms"), ("BaseEjectionTime", "eject_ms")):
                if duration_ms(phc.get(src)) is not None:
                    kw[dst] = duration_ms(phc.get(src))
            if phc.get("MaxEjectionPercent") is not None:
                kw["max_percent"] = int(phc["MaxEjectionPercent"]) * 100
            outlier = Outlier(**kw)
            if callee.resilience.setdefault("outlier", outlier) != outlier:
                self.note(e, f"{at}.PassiveHealthCheck", "another caller sets other outlier detection for this "
                          "service; meshc has one per service: the first is kept", place)

    def resolver(self, e: dict[str, Any]) -> None:
        d = self.draft(e["Name"])
        place = f"service:{d.name}"
        for vname, sub in sorted((e.get("Subsets") or {}).items()):
            labels = parse_filter(str((sub or {}).get("Filter", "")))
            if labels is None:
                self.note(e, f"Subsets.{vname}.Filter", "only `Service.Meta.<key> == \"<value>\"` filters joined "
                          "by `and` are expressible; assumed version=<subset>", place)
                labels = {"version": vname}
            d.versions[version_name(vname)] = labels or {"version": vname}
            for k in sorted(set(sub or {}) - {"Filter"}):
                self.note(e, f"Subsets.{vname}.{k}", "not expressible (meshc sends to every endpoint with the "
                          "version's labels)", place)
        lb = e.get("LoadBalancer") or {}
        policy = str(lb.get("Policy", "")).lower()
        if policy in LB:
            d.resilience["load_balance"] = LoadBalance(policy=LB[policy])  # type: ignore[arg-type]
        elif policy in ("ring_hash", "maglev"):
            hp = (lb.get("HashPolicies") or [{}])[0]
            field = str(hp.get("Field", "")).lower()
            if hp.get("SourceIP"):
                d.resilience["load_balance"] = LoadBalance(policy="consistent_hash", hash_on="source_ip")
            elif field in ("header", "cookie", "query_parameter"):
                on = {"header": "header", "cookie": "cookie", "query_parameter": "query"}[field]
                key = str(hp.get("FieldValue", ""))
                d.resilience["load_balance"] = LoadBalance(policy="consistent_hash", hash_on=on,  # type: ignore[arg-type]
                                                           hash_key=key.lower() if on == "header" else key)
            else:
                self.note(e, "LoadBalancer.HashPolicies", "hash policy not expressible", place)
        elif policy:
            self.note(e, "LoadBalancer.Policy", f"{policy} not expressible", place)
        if e.get("DefaultSubset"):
            self.default_subset[d.name] = version_name(str(e["DefaultSubset"]))
        if e.get("RequestTimeout") and duration_ms(e["RequestTimeout"]):
            d.resilience.setdefault("timeout", Timeout(ms=duration_ms(e["RequestTimeout"])))
        self.unknown_keys(e, {"Subsets", "LoadBalancer", "DefaultSubset", "RequestTimeout"}, place=place)

    # ----------------------------------------------------------------- routing
    def routes(self, d: Draft) -> None:
        router = self.of("service-router").get(d.name)
        splitter = self.of("service-splitter").get(d.name)
        rules: list[RouteRule] = []
        if router is not None:
            prev_dest: Any = None
            for i, route in enumerate(router.get("Routes") or []):
                rule = self.route(router, i, route, d)
                if rule is None:
                    prev_dest = None
                    continue
                dest = route.get("Destination") or {}
                if rules and dest == prev_dest and rule.matches and rules[-1].matches:
                    rules[-1] = rules[-1].model_copy(update={"matches": canonical_matches(rules[-1].matches + rule.matches)})
                else:
                    rules.append(rule)
                prev_dest = dest
        if not any(r.is_default for r in rules) and (splitter is not None or
                                                     d.name in self.default_subset):
            dests = self.splits(splitter, d) if splitter is not None else \
                (Destination(service=d.name, version=self.default_subset[d.name]),)
            if dests:
                rules.append(RouteRule(destinations=dests))
        if router is not None and not any(r.is_default for r in rules):
            # Consul sends unmatched requests to the service itself (its default subset)
            rules.append(RouteRule(destinations=(Destination(service=d.name, version=self.default_subset.get(d.name)),)))
        lift_routes(d, rules)

    def route(self, router: dict[str, Any], i: int, route: dict[str, Any], d: Draft) -> RouteRule | None:
        at = f"Routes[{i}]"
        place = f"route:{d.name}"
        http = (route.get("Match") or {}).get("HTTP") or {}
        match = self.match(router, f"{at}.Match.HTTP", http, place)
        if match is None:
            self.note(router, f"{at}.Match", "the route is left out: a condition cannot be written", place)
            return None
        dest = route.get("Destination") or {}
        kw: dict[str, Any] = {"matches": (match,) if match != Match() else ()}
        svc = str(dest.get("Service") or d.name)
        if svc in self.virtual and svc in self.of("service-splitter"):
            kw["destinations"] = self.splits(self.of("service-splitter")[svc], d)
        else:
            subset = dest.get("ServiceSubset") or self.default_subset.get(dns_name(svc))
            kw["destinations"] = (Destination(service=dns_name(svc), version=version_name(subset) if subset else None),)
            self.ensure_version(router, self.draft(svc), subset)
        if dest.get("PrefixRewrite") is not None:
            kw["rewrite"] = Rewrite(prefix=str(dest["PrefixRewrite"]))
        t = duration_ms(dest.get("RequestTimeout"))
        kw["timeout"] = Timeout(ms=None if t is None or t >= NO_TIMEOUT_MS else t) if dest.get("RequestTimeout") \
            else None
        n = int(dest.get("NumRetries") or 0)
        on = [c for c in dest.get("RetryOn") or [] if c in RETRY_ON]
        for c in dest.get("RetryOn") or []:
            if c not in RETRY_ON and c != "retriable-status-codes":
                self.note(router, f"{at}.Destination.RetryOn", f"'{c}' not expressible", place)
        if dest.get("RetryOnConnectFailure") and "connect-failure" not in on:
            on.append("connect-failure")
        codes = tuple(int(c) for c in dest.get("RetryOnStatusCodes") or [])
        if (on or codes) and not n:
            n = 1  # a retry condition without NumRetries: Envoy's default, one retry
        if n and not (on or codes):
            # Consul retries only on the conditions it is given (Envoy's retry_on stays empty)
            self.note(router, f"{at}.Destination.NumRetries", "no RetryOn, RetryOnConnectFailure or "
                      "RetryOnStatusCodes: Consul retries nothing; written as no retry", place)
            n = 0
        kw["retry"] = Retry(attempts=n, on=tuple(on), status_codes=codes) if n \
            else Retry(attempts=0, on=())  # type: ignore[arg-type]
        for key, fld in (("RequestHeaders", "request_headers"), ("ResponseHeaders", "response_headers")):
            h = dest.get(key) or {}
            if h:
                kw[fld] = HeaderOps(set=tuple((k.lower(), str(v)) for k, v in (h.get("Set") or {}).items()),
                                    add=tuple((k.lower(), str(v)) for k, v in (h.get("Add") or {}).items()),
                                    remove=tuple(str(k).lower() for k in h.get("Remove") or []))
        for k in sorted(set(dest) - {"Service", "ServiceSubset", "PrefixRewrite", "RequestTimeout", "NumRetries",
                                     "RetryOn", "RetryOnConnectFailure", "RetryOnStatusCodes", "RequestHeaders",
                                     "ResponseHeaders", "Namespace", "Partition"}):
            self.note(router, f"{at}.Destination.{k}", "not expressible", place)
        return RouteRule(**kw)

    def ensure_version(self, e: dict[str, Any], d: Draft, subset: Any) -> None:
        if subset and version_name(str(subset)) not in d.versions:
            d.versions[version_name(str(subset))] = {"version": str(subset)}
            self.note(e, f"ServiceSubset {subset}", f"no service-resolver of {d.name} defines it; assumed "
                      f"version={subset}", f"service:{d.name}")

    def splits(self, sp: dict[str, Any], owner: Draft) -> tuple[Destination, ...]:
        out: dict[tuple[str, str | None], int] = {}
        for s in sp.get("Splits") or []:
            svc = dns_name(str(s.get("Service") or owner.name))
            sub = s.get("ServiceSubset")
            key = (svc, version_name(sub) if sub else None)
            out[key] = out.get(key, 0) + (percent(s.get("Weight", 0)) or 0)
            self.ensure_version(sp, self.draft(svc), sub)
            for k in set(s) - {"Service", "ServiceSubset", "Weight", "Namespace", "Partition"}:
                self.note(sp, f"Splits.{k}", "not expressible", f"route:{owner.name}")
        total = sum(out.values())
        if total != FULL and out:
            self.note(sp, "Splits", f"weights add up to {total / 100}%, scaled to 100%", f"route:{owner.name}")
            first = next(iter(out))
            out[first] += FULL - total
        return tuple(Destination(service=s, version=v, weight=w) for (s, v), w in out.items() if w > 0)

    def match(self, e: dict[str, Any], at: str, http: dict[str, Any], place: str) -> Match | None:
        kw: dict[str, Any] = {}
        for key, kind in (("PathExact", "exact"), ("PathPrefix", "prefix"), ("PathRegex", "regex")):
            if http.get(key) is not None:
                kw["path"] = PathMatch(kind=kind, value=str(http[key]))  # type: ignore[arg-type]
        headers, query = [], []
        for h in http.get("Header") or []:
            s = string_match(h, header=True)
            if s is None:
                self.note(e, f"{at}.Header", f"header condition {h} not expressible", place)
                return None
            headers.append(s)
        for q in http.get("QueryParam") or []:
            s = string_match(q, header=False)
            if s is None:
                self.note(e, f"{at}.QueryParam", f"query condition {q} not expressible", place)
                return None
            query.append(s)
        methods = tuple(m for m in http.get("Methods") or [] if m in METHODS)
        for k in set(http) - {"PathExact", "PathPrefix", "PathRegex", "Header", "QueryParam", "Methods"}:
            self.note(e, f"{at}.{k}", "not expressible", place)
            return None
        return Match(headers=tuple(headers), query=tuple(query), methods=methods, **kw)

    # ----------------------------------------------------------------- ingress
    def ingress(self) -> None:
        for g in self.of("ingress-gateway").values():
            self.settings.ingress_identity = (dns_name(g["Name"]), self.settings.namespace)
            for lst in g.get("Listeners") or []:
                port = int(lst.get("Port", 80))
                for s in lst.get("Services") or []:
                    name = str(s.get("Name", ""))
                    hosts = tuple(sorted(s.get("Hosts") or ["*"]))
                    paths: tuple[PathMatch, ...] = ()
                    if name in self.virtual:
                        router = self.of("service-router")[name]
                        target = {(r.get("Destination") or {}).get("Service") for r in router.get("Routes") or []}
                        ms = []
                        for i, r in enumerate(router.get("Routes") or []):
                            m = self.match(router, f"Routes[{i}].Match.HTTP", (r.get("Match") or {}).get("HTTP") or {},
                                           "mesh")
                            if m is not None and m.path is not None:
                                ms.append(Match(path=m.path))
                        paths = tuple(m.path for m in merge_under(tuple(ms)) if m.path)
                        name = str(next(iter(target)))
                    d = self.drafts.get(dns_name(name))
                    if d is None:
                        self.report.add(f"ingress-gateway {g['Name']}", f"Listeners.Services.{name}",
                                        "not a service of the input", "mesh")
                        continue
                    d.expose = Ingress(paths=paths, hosts=hosts, port=port)
                if lst.get("TLS"):
                    self.note(g, "Listeners.TLS", "TLS at the gateway is not expressible", "mesh")

    # ----------------------------------------------------------------- intentions
    def source(self, name: str) -> Source:
        if name == "*":
            return Source(kind="any")
        ing = self.settings.ingress_identity
        if ing is not None and dns_name(name) == ing[0]:
            return Source(kind="ingress")
        if dns_name(name) in self.drafts:
            return Source(kind="service", name=dns_name(name))
        return Source(kind="identity", name=dns_name(name))

    def intentions(self) -> None:
        default_entry = self.of("service-intentions").get("*")
        default = "allow"
        if default_entry is not None:
            for s in default_entry.get("Sources") or []:
                if s.get("Name") == "*" and s.get("Action") in ("allow", "deny"):
                    default = s["Action"]
        else:
            self.report.add("service-intentions", "*", "no `* -> *` intention: the default is Consul's ACL "
                            "default policy; assumed allow", "authz")
        self.settings.authz = "deny_by_default" if default == "deny" else "allow_by_default"
        for name, e in sorted(self.of("service-intentions").items()):
            if name == "*":
                for s in e.get("Sources") or []:
                    if s.get("Name") != "*":
                        self.note(e, f"Sources.{s.get('Name')}", "intentions to every service from one source "
                                  "are not expressible", "authz")
                continue
            dest = dns_name(name)
            if dest not in self.drafts:
                continue
            for s in e.get("Sources") or []:
                self.intention_source(e, s, dest, default)

    def intention_source(self, e: dict[str, Any], s: dict[str, Any], dest: str, default: str) -> None:
        src_name = str(s.get("Name", ""))
        src = self.source(src_name)
        unknown = sorted(set(s) - {"Name", "Action", "Permissions", "Description", "Precedence", "Type",
                                   "Namespace", "Partition", "LegacyID", "LegacyMeta"})
        allows = s.get("Action") == "allow" or any(p.get("Action") == "allow" for p in s.get("Permissions") or [])
        for k in unknown:
            self.note(e, f"Sources.{src_name}.{k}", "source condition not expressible" +
                      ("; its allows are left out (fail closed)" if allows else "; dropped"), "authz")
        if unknown and allows:
            return
        if s.get("Action") in ("allow", "deny"):
            action = s["Action"]
            if action == default and src.kind == "any":
                return  # the default, said again
            if action == "deny" and src.kind == "any":
                named = [x for x in e.get("Sources") or [] if x.get("Name") != "*"]
                if named:
                    self.note(e, "Sources.*", "a `*` deny next to named sources (which Consul lets through by "
                              "precedence) is written as a deny for everyone", "authz")
            self.rules.append(AuthzRule(action=action, sources=(src,), destinations=(dest,)))
            return
        perms = s.get("Permissions") or []
        seen_allow = False
        for i, p in enumerate(perms):
            action = p.get("Action")
            http = p.get("HTTP") or {}
            catch_all = http == {"PathPrefix": "/"}
            last = i == len(perms) - 1
            if catch_all and last and action == default:
                break  # meshc's explicit fallthrough
            if action == "deny" and seen_allow:
                self.note(e, f"Sources.{src_name}.Permissions[{i}]", "a deny after an allow (first match) is "
                          "written as a deny, which beats the earlier allow", "authz")
            if catch_all and last and action == "deny":
                self.note(e, f"Sources.{src_name}.Permissions[{i}]", "a final deny-all for this source under an "
                          "allow default is not expressible", "authz")
                continue
            seen_allow |= action == "allow"
            rule = self.permission(e, f"Sources.{src_name}.Permissions[{i}]", p, src, dest)
            if rule is not None:
                self.rules.append(rule)

    def permission(self, e: dict[str, Any], at: str, perm: dict[str, Any], src: Source,
                   dest: str) -> AuthzRule | None:
        action, http = perm.get("Action"), perm.get("HTTP") or {}
        if action not in ("allow", "deny"):
            return None
        for k in sorted(set(perm) - {"Action", "HTTP"}):
            self.note(e, f"{at}.{k}", "not expressible" + ("; the ALLOW is left out" if action == "allow"
                                                          else "; dropped"), "authz")
            if action == "allow":
                return None
        kw: dict[str, Any] = {}
        path = None
        for key, kind in (("PathExact", "exact"), ("PathPrefix", "prefix"), ("PathRegex", "regex")):
            if http.get(key) is not None:
                path = PathMatch(kind=kind, value=str(http[key]))  # type: ignore[arg-type]
        if path is not None and not (path.kind == "prefix" and path.value == "/"):
            kw["paths"] = (path,)
        if http.get("Methods"):
            kw["methods"] = tuple(m for m in http["Methods"] if m in METHODS)
        headers = []
        for h in http.get("Header") or []:
            sm = string_match(h, header=True)
            if sm is None:
                self.note(e, f"{at}.HTTP.Header", f"header condition {h} not expressible" +
                          ("; the ALLOW is left out" if action == "allow" else "; dropped"), "authz")
                if action == "allow":
                    return None
            else:
                headers.append(sm)
        kw["headers"] = tuple(headers)
        for k in sorted(set(http) - {"PathExact", "PathPrefix", "PathRegex", "Methods", "Header"}):
            self.note(e, f"{at}.HTTP.{k}", "not expressible" + ("; the ALLOW is left out" if action == "allow"
                                                                else "; dropped"), "authz")
            if action == "allow":
                return None
        return AuthzRule(action=action, sources=(src,), destinations=(dest,), **kw)


def string_match(h: dict[str, Any], header: bool) -> StringMatch | None:
    name = str(h.get("Name", ""))
    name = name.lower() if header else name
    invert = bool(h.get("Invert"))
    if h.get("Present"):
        return StringMatch(name=name, kind="absent" if invert else "present")
    if invert:
        return None
    for key, kind in (("Exact", "exact"), ("Prefix", "prefix"), ("Regex", "regex")):
        if h.get(key) is not None:
            return StringMatch(name=name, kind=kind, value=str(h[key]))  # type: ignore[arg-type]
    return None


_FILTER = re.compile(r'^\s*Service\.Meta(?:\.([A-Za-z_][A-Za-z0-9_]*)|\[("(?:[^"\\]|\\.)*")\])\s*==\s*'
                     r'("(?:[^"\\]|\\.)*"|[A-Za-z0-9_.-]+)\s*$')


def parse_filter(text: str) -> dict[str, str] | None:
    """`Service.Meta.version == "v1" and Service.Meta["a.b"] == "x"` -> labels; None if other."""
    if not text.strip():
        return {}
    out = {}
    for part in re.split(r"\s+and\s+", text.strip()):
        m = _FILTER.match(part)
        if not m:
            return None
        key = m.group(1) or json.loads(m.group(2))
        val = m.group(3)
        out[key] = json.loads(val) if val.startswith('"') else val
    return out


def import_files(paths: list[Path], mesh_name: str | None = None) -> Result:
    return ConsulImporter(read_entries(paths), mesh_name).run()
