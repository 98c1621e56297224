"""What every importer shares: reading input files, the report of what could not be carried
over, unit conversions, and `Draft` services that become the frozen model.

An importer reads documents into `Draft`s, then `finish()` builds the `Mesh`, prints it with
`meshc.unparse`, and loads the text back with the real front end, so the `.mesh` it writes is
exactly what `meshc compile` will see (and an importer bug cannot produce a file that does not
compile: it becomes an error naming the importer, never a silently wrong file).

Input is bounded before an importer sees it: files are read with `meshc.compiler.read_bounded`
(regular files, at most MAX_INPUT_BYTES), YAML and JSON are loaded by `load_yaml` (nesting at most
MAX_DEPTH levels, at most MAX_NODES nodes with every alias counted as the nodes it stands for,
so a billion-laughs document is refused while it is composed), and HCL is checked for its
nesting depth before it is parsed. The importers' own walks over documents recurse, so this
depth bound is what keeps them below Python's recursion limit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode
from yaml.resolver import Resolver

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
from meshc.unparse import Unparser, Unspeakable, shown, unparse

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
        # Each part holds text from the input (names, header names): one line each, every
        # unprintable character escaped, so no entry can end its comment in the .mesh, add a
        # column or line to the report, or rewrite the reviewer's terminal.
        # Escaped, not cut: two entries differing after a cut would become one.
        e = (place, Entry(shown(resource, 0), shown(fld, 0), shown(why, 0)))
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


MAX_DEPTH = 100  # nesting levels of one YAML/JSON/HCL document (Kubernetes objects use ~12)
MAX_NODES = 1_000_000  # nodes of one YAML/JSON file once its aliases are expanded
# One input file: about 10,000 Kubernetes resources. The importers and the unparser take about
# 2 ms per service, so this bounds an import's time as the node budget bounds its memory.
MAX_INPUT_BYTES = 4 * 2**20


class _InputBound(yaml.YAMLError):
    def __init__(self, what: str, mark: Any) -> None:
        super().__init__(what)
        self.what, self.mark = what, mark


class _BoundedComposer(Composer):
    """PyYAML's composer, counting as it goes: the nesting depth of the node being composed, and
    each node's size with aliases expanded (an alias weighs what its anchor's node weighs). The
    document is refused at the first node above a bound, before anything is constructed."""

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0
        self._sizes: dict[int, int] = {}
        self._total = 0  # nodes of the documents composed before this one

    def compose_document(self) -> Node | None:
        events: Any = self  # the parser half of the loader gives the events
        mark = events.peek_event().start_mark
        try:
            node = super().compose_document()
            self._total += self._sizes.get(id(node), 1)
        finally:
            self._sizes = {}
        if self._total > MAX_NODES:
            raise _InputBound(f"more than {MAX_NODES:,} nodes once its aliases are expanded", mark)
        return node  # type: ignore[no-any-return]

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        events: Any = self
        if events.check_event(AliasEvent):
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        mark = events.peek_event().start_mark
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _InputBound(f"nested deeper than {MAX_DEPTH} levels", mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        size = 1
        if isinstance(node, SequenceNode):
            size += sum(self._sizes.get(id(c), 1) for c in node.value)
        elif isinstance(node, MappingNode):
            size += sum(self._sizes.get(id(k), 1) + self._sizes.get(id(v), 1) for k, v in node.value)
        if self._total + size > MAX_NODES:
            raise _InputBound(f"more than {MAX_NODES:,} nodes once its aliases are expanded", mark)
        self._sizes[id(node)] = size
        return node  # type: ignore[no-any-return]


# libyaml's parser (C, fast) feeds the Python composer its events when it is available.
_Parser: Any
try:
    from yaml._yaml import CParser

    _Parser = CParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    _Parser = None
if _Parser is not None:
    class _BoundedLoader(_BoundedComposer, _Parser, SafeConstructor, Resolver):  # type: ignore[misc]
        def __init__(self, stream: str) -> None:
            _Parser.__init__(self, stream)
            _BoundedComposer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
else:  # pragma: no cover - PyYAML without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _BoundedLoader(Reader, Scanner, Parser, _BoundedComposer, SafeConstructor, Resolver):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)
            _BoundedComposer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)


def read_input(path: Path) -> str:
    """The text of one input file: a regular file of at most MAX_INPUT_BYTES, UTF-8 (ImportError_
    else)."""
    from meshc.compiler import UnreadableInput, read_bounded

    try:
        data = read_bounded(path, MAX_INPUT_BYTES)
    except UnreadableInput as e:
        raise ImportError_(f"{path}: error[{e.code}]: cannot read it: {e.reason} ({e.help})") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise ImportError_(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def load_yaml(path: Path | str, text: str) -> list[Any]:
    """Every document of a YAML (or JSON) text, loaded within MAX_DEPTH and MAX_NODES."""
    try:
        return list(yaml.load_all(text, Loader=_BoundedLoader))  # type: ignore[arg-type]  # noqa: S506 - safe
    except _InputBound as e:
        line = f":{e.mark.line + 1}" if e.mark is not None else ""
        raise ImportError_(f"{path}{line}: error[E124]: the document is {e.what}; refused "
                           "(a bound on every input keeps meshc's time and memory bounded)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        if "maximum nesting depth" in str(e):  # libyaml's own bound (PyYAML >= 6.0.4), met while scanning
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ImportError_(f"{path}{line}: error[E124]: the document is nested deeper than libyaml allows; "
                               "refused (a bound on every input keeps meshc's time and memory bounded)") from None
        raise ImportError_(f"{path}: not YAML or JSON: {e}") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of more digits than Python converts
        raise ImportError_(f"{path}: not YAML or JSON: {type(e).__name__}: {e}") from None


def read_documents(paths: Iterable[Path]) -> list[tuple[str, Any]]:
    """(file name, document) for every YAML or JSON document in the files, in order. Kubernetes
    `List` objects are flattened; empty documents are skipped."""
    out: list[tuple[str, Any]] = []
    for p in paths:
        docs = load_yaml(p, read_input(Path(p)))  # JSON is YAML
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
        # What the text cannot say does not depend on the notes: one bare pass finds it, and the
        # text is formatted (parsed) once, with the notes, below.
        printer = Unparser(mesh)
        printer.run()
        for x in printer.lost:
            report.add(x.where, x.field, x.why)
        header = f"meshc import: generated from {source} configuration; {len(report)} item(s) not carried " \
                 "over (see the comments below)" if len(report) else \
                 f"meshc import: generated from {source} configuration"
        notes = report.notes()
        notes[""] = [header, *notes.get("", [])]  # entries without a place follow the header
        text, _ = unparse(mesh, notes)
    except Unspeakable as e:
        raise ImportError_(f"the {source} input cannot be written as .mesh: {e}") from None
    except MeshcError as e:  # values the front end refuses (control characters, ...): say which
        raw = Unparser(mesh, notes).run().splitlines()
        shown_lines = [f"  {d.code}: {d.message}: {shown(raw[d.span.line - 1])}" if 0 < d.span.line <= len(raw)
                       else f"  {d.code}: {d.message}" for d in e.diagnostics]
        raise ImportError_(f"the {source} input holds values a .mesh cannot hold (nothing was written):\n" +
                           "\n".join(shown_lines)) from None
    try:
        model = load_text(text, "imported.mesh", checks=False)
    except MeshcError as e:
        raise ImportError_(f"the {source} importer produced a .mesh that does not compile:\n{e}") from None
    _no_new_grants(mesh, model, source)
    return Result(text, report, model)


def _no_new_grants(mesh: Mesh, written: Mesh, source: str) -> None:
    """The text read back grants nothing the model does not: its default is the model's, and each
    of its allow rules is one of the model's, or narrower (the unparser leaves out what it cannot
    write). A guard independent of how the text was printed: a value spliced into the text as
    a rule makes the import fail instead of writing a wider mesh."""
    def who(rule: AuthzRule) -> set[str]:
        return {s.name if s.kind in ("service", "identity") else s.kind for s in rule.sources}

    def matches(rule: AuthzRule) -> tuple[Any, ...]:  # spans aside
        return (tuple((p.kind, p.value) for p in rule.paths), tuple((p.kind, p.value) for p in rule.not_paths),
                tuple(rule.ports), tuple((h.name, h.kind, h.value) for h in rule.headers))

    allows = [r for r in mesh.rules if r.action == "allow"]
    for r in written.rules:
        if r.action != "allow":
            continue
        if not any(who(r) <= who(m) and set(r.destinations) <= set(m.destinations) and matches(r) == matches(m)
                   and (set(r.methods) <= set(m.methods) if m.methods else True) and (r.methods or not m.methods)
                   for m in allows):
            raise ImportError_(f"the {source} importer wrote an allow rule its model does not hold (line "
                               f"{r.span.line} of the generated text); nothing was written")
    if written.authz != mesh.authz:
        raise ImportError_(f"the {source} importer wrote `authz {written.authz}` for a model with {mesh.authz}")


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
