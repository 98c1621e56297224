"""What every importer shares: reading input files, the report of what could not be carried
over, unit conversions, and `Draft` services that become the frozen model.

An importer reads documents into `Draft`s, then `finish()` builds the `Mesh`, prints it with
`meshc.unparse`, and loads the text back with the real front end, so the `.mesh` it writes is
exactly what `meshc compile` will see (and an importer bug cannot produce a file that does not
compile: it becomes an error naming the importer, never a silently wrong file).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshc.diagnostics import MeshcError
from meshc.model import (
    FULL,
    AuthzRule,
    Destination,
    External,
    Fault,
    Identity,
    Ingress,
    Match,
    Mesh,
    Observability,
    PathMatch,
    Port,
    Resilience,
    Retry,
    RouteRule,
    Service,
    Timeout,
    Version,
)
from meshc.unparse import unparse

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_UNIT_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class ImportError_(Exception):
    """Input that cannot be read at all (not YAML/JSON/HCL, unknown format)."""


@dataclass(frozen=True)
class Entry:
    resource: str  # e.g. "VirtualService default/reviews"
    field: str  # e.g. "spec.http[0].corsPolicy"
    why: str

    def line(self) -> str:
        return f"{self.resource}\t{self.field}\t{self.why}"

    def comment(self) -> str:
        return f"meshc import: {self.resource} {self.field}: {self.why}"


@dataclass
class Report:
    """Everything that was not carried over (or was changed on the way), with its place in the
    `.mesh` (a key of `meshc.unparse` notes: "", "mesh", "service:NAME", "route:NAME", "authz")."""

    entries: list[tuple[str, Entry]] = field(default_factory=list)

    def add(self, resource: str, fld: str, why: str, place: str = "") -> None:
        e = (place, Entry(resource, fld, why))
        if e not in self.entries:
            self.entries.append(e)

    def notes(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for place, e in self.entries:
            out.setdefault(place, []).append(e.comment())
        return out

    def text(self) -> str:
        lines = ["resource\tfield\twhy"] + [e.line() for _, e in self.entries]
        return "\n".join(lines) + "\n"

    def __iter__(self) -> Iterator[Entry]:
        return (e for _, e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)


# --------------------------------------------------------------------------- reading


def read_documents(paths: Iterable[Path]) -> list[tuple[str, Any]]:
    """(file name, document) for every YAML or JSON document in the files, in order. Kubernetes
    `List` objects are flattened; empty documents are skipped."""
    out: list[tuple[str, Any]] = []
    for p in paths:
        text = Path(p).read_text(encoding="utf-8")
        try:
            docs = list(yaml.safe_load_all(text))  # JSON is YAML
        except yaml.YAMLError as e:
            raise ImportError_(f"{p}: not YAML or JSON: {e}") from None
        for d in docs:
            if d is None:
                continue
            if isinstance(d, dict) and d.get("kind") == "List" and isinstance(d.get("items"), list):
                out += [(str(p), i) for i in d["items"] if i]
            else:
                out.append((str(p), d))
    return out


def kind_of(doc: Any) -> str:
    return doc.get("kind", "") if isinstance(doc, dict) else ""


def meta(doc: dict[str, Any], default_ns: str = "default") -> tuple[str, str]:
    m = doc.get("metadata") or {}
    return str(m.get("name", "")), str(m.get("namespace") or default_ns)


def resource(doc: dict[str, Any]) -> str:
    name, ns = meta(doc)
    return f"{kind_of(doc)} {ns}/{name}"


# --------------------------------------------------------------------------- units


def duration_ms(value: Any) -> int | None:
    """A Go/protobuf duration ("1.5s", "500ms", "1h30m", "30s") or a number of seconds -> ms."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return round(value * 1000)
    text = str(value).strip()
    if not text:
        return None
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(a + b for a, b in parts) != text:
        return None
    return round(sum(float(n) * _UNIT_MS[u] for n, u in parts))


def percent(value: Any) -> int | None:
    """A percentage as a float or string (12.5, "12.5%") -> hundredths, rounded to two decimals."""
    if value is None:
        return None
    try:
        v = float(str(value).rstrip("%"))
    except ValueError:
        return None
    return max(0, min(FULL, round(v * 100)))


def required_percent(value: Any, what: str) -> int:
    """`percent(value)` where the model needs a number: a value that is not one is malformed input."""
    parsed = percent(value)
    if parsed is None:
        raise ValueError(f"{what} {value!r} is not a percentage")
    return parsed


def dns_name(text: str, lead: str = "x-") -> str:
    """A DNS-1123 label that is also a .mesh name, made from any name (`Reviews_V2` ->
    `reviews-v2`; a leading digit gets `lead`: `1.0` -> `x-1-0`, or `v1-0` for versions)."""
    s = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if s[:1].isdigit():
        s = lead + s
    return s[:63].strip("-") or "x"


def version_name(text: str) -> str:
    return dns_name(text, lead="v")


def split_versions(drafts: dict[str, Any], version_services: dict[str, tuple[str, str]]) -> None:
    """Per-version Services become versions: `reviews-v2` selecting app=reviews,version=v2 is
    version v2 of `reviews` (the Service whose selector is the largest proper subset)."""
    for name, d in sorted(drafts.items()):
        parents = [p for p in drafts.values() if p is not d and p.selector and p.namespace == d.namespace
                   and p.selector.items() < d.selector.items()]
        if not parents:
            continue
        parent = max(parents, key=lambda p: len(p.selector))
        extra = {k: v for k, v in d.selector.items() if k not in parent.selector}
        vname = version_name(name[len(parent.name) + 1:]) if name.startswith(parent.name + "-") else \
            version_name(extra.get("version", name))
        parent.versions[vname] = extra
        version_services[name] = (parent.name, vname)
    for name in version_services:
        del drafts[name]


def weights_to_percent(weights: list[int]) -> list[int]:
    """Relative integer weights -> hundredths that add up to exactly FULL (largest remainder)."""
    total = sum(weights)
    if total <= 0:
        return [FULL // len(weights)] * len(weights) if weights else []
    raw = [w * FULL / total for w in weights]
    out = [int(r) for r in raw]
    rest = FULL - sum(out)
    for i in sorted(range(len(raw)), key=lambda i: (out[i] - raw[i], i))[:rest]:
        out[i] += 1
    return out


# --------------------------------------------------------------------------- drafts


@dataclass
class Draft:
    """A service being assembled from several resources."""

    name: str
    namespace: str
    ports: dict[int, str] = field(default_factory=dict)  # number -> protocol
    port_mtls: dict[int, str] = field(default_factory=dict)
    mtls: str | None = None
    identity: str | None = None
    versions: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> labels
    routes: list[RouteRule] = field(default_factory=list)
    resilience: dict[str, Any] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    expose: Ingress | None = None
    external: External | None = None
    selector: dict[str, str] = field(default_factory=dict)

    @property
    def is_http(self) -> bool:
        return any(p in ("http", "http2", "grpc") for p in self.ports.values())


@dataclass
class MeshSettings:
    name: str = "imported"
    namespace: str = "default"
    trust_domain: str = "cluster.local"
    mtls: str = "strict"
    authz: str = "deny_by_default"
    path_normalization: str = "strict"
    ingress_identity: tuple[str, str] | None = None
    access_log: str = "json"
    trace_sampling: int = 100


def build_mesh(settings: MeshSettings, drafts: dict[str, Draft], rules: list[AuthzRule], report: Report) -> Mesh:
    services = []
    for name, d in sorted(drafts.items()):
        if not d.ports:
            d.ports[80] = "http"
            report.add(f"service {name}", "ports", "no port found in the input; assumed http 80",
                       f"service:{name}")
        mtls = d.mtls or settings.mtls
        ports = tuple(Port(protocol=proto, number=n, mtls=d.port_mtls.get(n, mtls))  # type: ignore[arg-type]
                      for n, proto in sorted(d.ports.items()))
        versions = tuple(Version(name=v, labels=tuple(sorted(labels.items())))
                         for v, labels in sorted(d.versions.items()))
        ident_name = d.identity or name
        if d.external is not None:
            ident_name, mtls, ns = name, settings.mtls, settings.namespace
            ports = tuple(p.model_copy(update={"mtls": mtls}) for p in ports)
        else:
            ns = d.namespace
        services.append(Service(
            name=name, namespace=ns,
            identity=Identity(name=ident_name, namespace=ns, trust_domain=settings.trust_domain),
            ports=ports, versions=versions, routes=tuple(d.routes), resilience=Resilience(**d.resilience),
            faults=tuple(d.faults), calls=tuple(c for c in dict.fromkeys(d.calls) if c in drafts and c != name),
            expose=d.expose, external=d.external, mtls=mtls))  # type: ignore[arg-type]
    ing = settings.ingress_identity or ("ingress-gateway", settings.namespace)
    return Mesh(name=settings.name, namespace=settings.namespace, trust_domain=settings.trust_domain,
                mtls=settings.mtls, authz=settings.authz,  # type: ignore[arg-type]
                path_normalization=settings.path_normalization,  # type: ignore[arg-type]
                observability=Observability(access_log=settings.access_log,  # type: ignore[arg-type]
                                            trace_sampling=settings.trace_sampling),
                ingress_identity=Identity(name=ing[0], namespace=ing[1], trust_domain=settings.trust_domain),
                services=tuple(services), rules=tuple(rules))


@dataclass
class Result:
    text: str
    report: Report
    mesh: Mesh  # the model of `text`, as the front end reads it


def finish(mesh: Mesh, report: Report, source: str) -> Result:
    """Print the model, note what the text cannot say, and read the text back."""
    from meshc.compiler import load_text

    try:
        text, lost = unparse(mesh, report.notes())
    except MeshcError as e:
        raise ImportError_(f"the {source} importer produced a model that cannot be printed:\n{e}") from None
    for x in lost:
        report.add(x.where, x.field, x.why)
    header = f"meshc import: generated from {source} configuration; {len(report)} item(s) not carried over " \
             "(see the comments below)" if len(report) else f"meshc import: generated from {source} configuration"
    text, _ = unparse(mesh, {"": [header], **report.notes()})
    try:
        model = load_text(text, "imported.mesh", checks=False)
    except MeshcError as e:
        raise ImportError_(f"the {source} importer produced a .mesh that does not compile:\n{e}") from None
    return Result(text, report, model)


def lift_routes(d: Draft, rules: list[RouteRule]) -> None:
    """Lift what every route repeats (timeout, retries, faults) to the service."""
    if not rules:
        return
    forwarding = [r for r in rules if r.destinations] or rules
    last = forwarding[-1]
    timeouts = [r.timeout for r in rules]
    svc_timeout = last.timeout
    retries = [r.retry for r in rules]
    svc_retry = last.retry
    if svc_timeout is not None:
        d.resilience["timeout"] = svc_timeout
    if svc_retry is not None and svc_retry.attempts > 0:
        d.resilience["retry"] = svc_retry
    faults = [r.faults for r in rules]
    lift_faults = len(set(faults)) == 1 and faults[0] and len(rules) == 1
    if lift_faults:
        d.faults = list(faults[0])
    out = []
    for r, t, rt in zip(rules, timeouts, retries, strict=True):
        upd: dict[str, Any] = {}
        upd["timeout"] = None if _same(t, svc_timeout) else (t or Timeout(ms=None))
        if _same(rt, svc_retry):
            upd["retry"] = None
        elif rt is None or rt.attempts == 0:
            upd["retry"] = Retry(attempts=0, on=()) if svc_retry is not None and svc_retry.attempts else None
        else:
            upd["retry"] = rt
        if lift_faults:
            upd["faults"] = ()
        if r.redirect is not None or r.respond is not None:
            upd["retry"] = upd["timeout"] = None  # no upstream request: nothing to time out or retry
        out.append(r.model_copy(update=upd))
    only = out[0] if len(out) == 1 else None
    if only is not None and only.is_default and len(only.destinations) == 1 and \
            only.destinations[0] == Destination(service=d.name) and \
            only == RouteRule(destinations=only.destinations):
        out = []
    d.routes = out


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return bool(a == b)


def merge_under(ms: tuple[Match, ...]) -> tuple[Match, ...]:
    """`exact /p` or `prefix /p/` with otherwise equal conditions: meshc's `under /p`."""
    out = list(ms)
    i = 0
    while i < len(out):
        m = out[i]
        if m.path is not None and m.path.kind == "exact" and m.path.value != "/":
            twin = m.model_copy(update={"path": PathMatch(kind="prefix", value=m.path.value + "/")})
            if twin in out:
                out.remove(twin)
                out[out.index(m)] = m.model_copy(update={"path": PathMatch(kind="under", value=m.path.value)})
        i += 1
    return tuple(out)


def implies(a: Match, b: Match) -> bool:
    """Every request `a` matches is matched by `b` (b's conditions are a subset of a's)."""
    if b.path is not None and b.path != a.path:
        return False
    if b.methods and not set(a.methods) <= set(b.methods) or (b.methods and not a.methods):
        return False
    return set(b.headers) <= set(a.headers) and set(b.query) <= set(a.query)


def simplify_matches(ms: tuple[Match, ...]) -> tuple[Match, ...]:
    """OR-ed matches in their shortest form: matches differing only in their method become one
    (Gateway API has one method per match), and a match implied by another is dropped (targets
    that rank routes by specificity repeat a rule's conditions in more specific forms)."""
    out: list[Match] = []
    for m in ms:
        twin = next((i for i, o in enumerate(out) if o.methods and m.methods and
                     o.model_copy(update={"methods": ()}) == m.model_copy(update={"methods": ()})), None)
        if twin is not None:
            out[twin] = out[twin].model_copy(update={"methods": tuple(dict.fromkeys(out[twin].methods + m.methods))})
        else:
            out.append(m)
    return tuple(m for i, m in enumerate(out)
                 if not any(j != i and implies(m, o) and not (implies(o, m) and j > i) for j, o in enumerate(out)))


def canonical_matches(ms: tuple[Match, ...]) -> tuple[Match, ...]:
    """OR-ed matches from targets that split them (one method per route, `under` as two paths),
    put back together: one method per match first, then `under`, then methods merged."""
    single = tuple(m.model_copy(update={"methods": (x,)}) for m in ms for x in m.methods) + \
        tuple(m for m in ms if not m.methods)
    return simplify_matches(merge_under(single))


# Kubernetes kinds that carry nothing a mesh configuration needs (no report for them).
NEUTRAL_KINDS = frozenset({"Namespace", "ConfigMap", "Secret", "ServiceAccount", "Role", "RoleBinding", "ClusterRole",
                           "ClusterRoleBinding", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Job", "CronJob",
                           "PersistentVolumeClaim", "Kustomization", "NetworkPolicy", "Ingress", "Endpoints",
                           "EndpointSlice"})


def report_unread(docs: list[Any], read: set[str], report: Report, source: str) -> None:
    """Every document of a kind the importer does not read is reported, never dropped silently."""
    seen: set[str] = set()
    for d in docs:
        if not isinstance(d, dict):
            continue
        k = kind_of(d)
        if not k and ("mtls" in d or "accessControlMode" in d):
            continue  # NGINX Service Mesh Helm values
        if k in read or k in NEUTRAL_KINDS or k in seen:
            continue
        seen.add(k)
        what = f"{k} {meta(d)[1]}/{meta(d)[0]}" if k else "document"
        report.add(what, "kind" if k else "(whole)", f"{'kind ' + k if k else 'a document without a kind'} is "
                   f"not read by the {source} importer; not carried over (other documents of this kind too)")
