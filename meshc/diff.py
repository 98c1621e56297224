"""`meshc diff`: a semantic diff of two resolved meshes, for pull-request review.

Two versions of a mesh are compared by meaning, never by lines or raw model dumps: spans are
left out, order-free collections are sorted, and access is compared as sets of effective
grants (`meshc.authz.decide` probed over the request classes both sides' rules distinguish),
so a reformat, a reordering of declarations or an equivalent rewrite (one allow rule split in
two) reports nothing.

Categories: services (inventory), access, routing, resilience, posture (mTLS, default
authorization, exposure, egress) and targets (generated files per backend). Every change is
classed widening (more access, weaker security, more amplification), narrowing or neutral.

Scaling: services with equal span-free signatures are skipped, and access is probed only for
destinations whose rules, service or mesh-wide settings differ, so a one-rule change in a
10,000-service mesh costs one pass of signatures plus a handful of `decide` calls. A large
mesh's two sides load at once on two cores when one is idle (meshc.diff_sides).

Renderers: terminal text (colour on a tty), markdown for a PR comment, JSON for bots. The
command is meshc.commands.diff; the old side at a git revision is read by meshc.gitrev.
"""

from __future__ import annotations

import functools
import json
import re
import typing
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from meshc.ast import size_text
from meshc.model import (
    FULL,
    AuthzRule,
    BodyLimit,
    Destination,
    Match,
    Mesh,
    Node,
    PathMatch,
    Retry,
    RouteRule,
    Service,
    Span,
    StringMatch,
)
from meshc.units import dur, pct

Effect = Literal["widening", "narrowing", "neutral"]
Op = Literal["added", "removed", "changed", "error"]

CATEGORIES: tuple[str, ...] = ("services", "access", "routing", "resilience", "posture", "targets")
CATEGORY_TITLES: dict[str, str] = {
    "services": "Services",
    "access": "Access",
    "routing": "Routing",
    "resilience": "Resilience",
    "posture": "Security posture",
    "targets": "Generated files",
}
OP_SIGN: dict[str, str] = {"added": "+", "removed": "-", "changed": "~", "error": "!"}
EFFECTS: tuple[Effect, ...] = ("widening", "narrowing", "neutral")


# --------------------------------------------------------------------------- the result


@dataclass(frozen=True, order=True)
class Change:
    """One semantic change. `text` is the line body (without the sign); `where` is the
    `file:line` of the construct on the side that has it (new side first)."""

    category: str
    subject: str
    text: str
    op: Op = "changed"
    effect: Effect = "neutral"
    where: str = ""
    old: Any = field(default=None, compare=False)
    new: Any = field(default=None, compare=False)

    @property
    def sign(self) -> str:
        # `!` flags a weakening of the security posture, as reviewers scan for it.
        if self.category == "posture" and self.effect == "widening":
            return "!"
        return OP_SIGN[self.op]

    @property
    def tag(self) -> str:
        if self.effect == "neutral":
            return ""
        if self.category == "posture":
            return " (weakens)" if self.effect == "widening" else " (strengthens)"
        return " (widens)" if self.effect == "widening" else " (narrows)"

    def line(self) -> str:
        return f"{self.sign} {self.text}{self.tag}"

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["sign"] = self.sign
        return d


@dataclass
class Diff:
    changes: list[Change] = field(default_factory=list)

    def __post_init__(self) -> None:
        order = {c: i for i, c in enumerate(CATEGORIES)}
        self.changes = sorted(set(self.changes), key=lambda c: (order.get(c.category, 99), c))

    @property
    def empty(self) -> bool:
        return not self.changes

    @property
    def widens(self) -> bool:
        return any(c.effect == "widening" for c in self.changes)

    def by_category(self) -> dict[str, list[Change]]:
        out: dict[str, list[Change]] = {}
        for c in self.changes:
            out.setdefault(c.category, []).append(c)
        return out

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = dict.fromkeys(EFFECTS, 0)
        for c in self.changes:
            out[c.effect] += 1
        return out

    def relabel(self, old: str, new: str) -> Diff:
        """Rewrite a path prefix in locations (the virtual git root of `--base` becomes `REF:`)."""
        return Diff([Change(c.category, c.subject, c.text, c.op, c.effect,
                            c.where.replace(old, new), c.old, c.new) for c in self.changes])


# --------------------------------------------------------------------------- formatting helpers


def loc(span: Span | None) -> str:
    if span is None or span.line <= 0:
        return ""
    return f"{span.file}:{span.line}"


def fmt_path(p: PathMatch) -> str:
    return f'path {p.kind} "{p.value}"'


def fmt_string(word: str, m: StringMatch) -> str:
    if m.kind in ("present", "absent"):
        return f"{word} {m.name} {m.kind}"
    op = "==" if m.kind == "exact" else m.kind
    return f'{word} {m.name} {op} "{m.value}"'


def fmt_match(m: Match) -> str:
    parts: list[str] = []
    if m.path is not None:
        parts.append(fmt_path(m.path))
    parts += [fmt_string("header", h) for h in sorted(m.headers, key=lambda h: (h.name, h.kind, h.value))]
    parts += [fmt_string("query", q) for q in sorted(m.query, key=lambda q: (q.name, q.kind, q.value))]
    if m.methods:
        parts.append("method " + ", ".join(sorted(m.methods)))
    return " and ".join(parts) or "always"


def rule_key(rule: RouteRule) -> str:
    """A route rule's condition, canonical: OR-ed groups sorted, conditions in fixed order."""
    if rule.is_default:
        return "otherwise"
    return "when " + " or ".join(sorted({fmt_match(m) for m in rule.matches}))


def dest_label(owner: str, d: Destination) -> str:
    if d.service == owner:
        return d.version or f"{owner} (all versions)"
    return f"{d.service}.{d.version}" if d.version else d.service


def plain(value: Any) -> Any:
    """A model value as sorted plain data without spans: what two sides compare on."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    return _strip(value)


def _strip(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _strip(x) for k, x in sorted(v.items()) if not _is_position(k)}
    if isinstance(v, list | tuple):
        return [_strip(x) for x in v]
    return v


def _is_position(field: str) -> bool:
    """`span` and the parallel `*_spans` tuples say where, not what."""
    return field == "span" or field.endswith("_spans")


def _node_in(annotation: Any) -> tuple[type[Node], bool] | None:
    """The model class inside a field's type, and whether the field holds many of them."""
    if isinstance(annotation, type) and issubclass(annotation, Node):
        return annotation, False
    for arg in typing.get_args(annotation):
        found = _node_in(arg)
        if found is not None:
            return found[0], found[1] or typing.get_origin(annotation) is tuple
    return None


@functools.cache
def _span_free(cls: type[Node]) -> dict[str, Any]:
    """A pydantic `exclude` spec dropping every `span` under `cls`, so that the exclusion runs
    in pydantic-core instead of calling the Span serializer for each node."""
    spec: dict[str, Any] = {name: True for name in cls.model_fields if _is_position(name)}
    for name, info in cls.model_fields.items():
        found = _node_in(info.annotation) if not _is_position(name) else None
        if found is not None:
            sub = _span_free(found[0])
            spec[name] = {"__all__": sub} if found[1] else sub
    return spec


def sig(node: Node | None) -> str:
    """A fast span-free serialisation. Equal signatures mean equal meaning; unequal ones only
    mean "compare in detail" (order-free collections are not normalised here)."""
    if node is None:
        return "null"
    return node.model_dump_json(exclude=_span_free(type(node)))


# --------------------------------------------------------------------------- services


def _diff_services(old: Mesh, new: Mesh, changed: Iterable[str]) -> Iterator[Change]:
    o, n = {s.name for s in old.services}, {s.name for s in new.services}
    for name in sorted(n - o):
        s = new.service(name)
        assert s is not None
        kind = "external service" if s.external else "service"
        yield Change("services", name, f"{kind} {name}", "added", "neutral", loc(s.span))
    for name in sorted(o - n):
        s = old.service(name)
        assert s is not None
        kind = "external service" if s.external else "service"
        yield Change("services", name, f"{kind} {name}", "removed", "neutral", loc(s.span))
    for name in changed:
        a, b = old.service(name), new.service(name)
        assert a is not None and b is not None
        yield from _diff_inventory(a, b)


def _diff_inventory(a: Service, b: Service) -> Iterator[Change]:
    """Ports, versions, endpoints, identity, namespace, declared calls: neutral facts."""
    name = b.name
    where = loc(b.span)
    if a.namespace != b.namespace:
        yield Change("services", name, f"{name}: namespace {a.namespace} -> {b.namespace}", where=where)
    # A trust-domain change moves every identity; it is reported once, on the mesh.
    ia, ib = a.identity, b.identity
    if (ia.namespace, ia.name) != (ib.namespace, ib.name):
        yield Change("services", name, f"{name}: identity {ia.namespace}/{ia.name} -> {ib.namespace}/{ib.name}",
                     where=where)
    ap = {(p.protocol, p.number) for p in a.ports}
    bp = {(p.protocol, p.number) for p in b.ports}
    for proto, num in sorted(bp - ap):
        yield Change("services", name, f"{name}: port {proto} {num}", "added", where=where)
    for proto, num in sorted(ap - bp):
        yield Change("services", name, f"{name}: port {proto} {num}", "removed", where=where)
    av = {v.name: v for v in a.versions}
    bv = {v.name: v for v in b.versions}
    for v in sorted(bv.keys() - av.keys()):
        yield Change("services", name, f"{name}: version {v}", "added", where=loc(bv[v].span))
    for v in sorted(av.keys() - bv.keys()):
        yield Change("services", name, f"{name}: version {v}", "removed", where=loc(av[v].span))
    for v in sorted(av.keys() & bv.keys()):
        if plain(av[v].labels) != plain(bv[v].labels):
            yield Change("services", name, f"{name}: version {v} labels changed", where=loc(bv[v].span))
        ea = sorted(str(e) for e in av[v].endpoints)
        eb = sorted(str(e) for e in bv[v].endpoints)
        if ea != eb:
            yield Change("services", name, f"{name}: version {v} endpoints {_list(ea)} -> {_list(eb)}",
                         where=loc(bv[v].span))
    ea = sorted(str(e) for e in a.endpoints)
    eb = sorted(str(e) for e in b.endpoints)
    if ea != eb:
        yield Change("services", name, f"{name}: endpoints {_list(ea)} -> {_list(eb)}", where=where)
    ca, cb = set(a.calls), set(b.calls)
    for c in sorted(cb - ca):
        yield Change("services", name, f"{name}: calls {c}", "added", where=where)
    for c in sorted(ca - cb):
        yield Change("services", name, f"{name}: calls {c}", "removed", where=where)


def _list(items: Sequence[str]) -> str:
    return ", ".join(items) if items else "(none)"


# --------------------------------------------------------------------------- routing


@dataclass(frozen=True)
class RouteRow:
    key: str
    split: dict[str, int]  # destination label -> effective percentage (hundredths)
    action: dict[str, Any]  # redirect / respond / rewrite / headers / mirror, plain data
    span: Span


def route_table(s: Service) -> list[RouteRow]:
    if not s.routes:
        # No route table: every request goes to the service's endpoints.
        return [RouteRow("otherwise", {f"{s.name} (all versions)": FULL}, {}, s.span)]
    out = []
    for r in s.routes:
        split: dict[str, int] = defaultdict(int)
        for d in r.destinations:
            split[dest_label(s.name, d)] += d.weight
        action = {k: plain(getattr(r, k)) for k in
                  ("redirect", "respond", "rewrite", "request_headers", "response_headers", "mirror")
                  if getattr(r, k) is not None}
        out.append(RouteRow(rule_key(r), dict(split), action, r.span))
    return out


def _fmt_split(split: dict[str, int]) -> str:
    if not split:
        return "(no destination)"
    if len(split) == 1:
        return next(iter(split))
    return "split { " + ", ".join(f"{k} {pct(v)}" for k, v in sorted(split.items())) + " }"


def fmt_action(rule: RouteRow) -> str:
    if "redirect" in rule.action:
        return "redirect " + _kv(rule.action["redirect"])
    if "respond" in rule.action:
        return "respond " + _kv(rule.action["respond"])
    return _fmt_split(rule.split)


def _kv(d: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(d.items()) if v not in (None, (), []))


def _diff_routes(a: Service, b: Service) -> Iterator[Change]:
    name = b.name
    ta, tb = route_table(a), route_table(b)
    ia = {r.key: r for r in ta}
    ib = {r.key: r for r in tb}
    for key in [r.key for r in tb if r.key not in ia]:
        r = ib[key]
        yield Change("routing", name, f"{name}: route {key} -> {fmt_action(r)}", "added", where=loc(r.span))
    for key in [r.key for r in ta if r.key not in ib]:
        r = ia[key]
        yield Change("routing", name, f"{name}: route {key} -> {fmt_action(r)}", "removed",
                     where=loc(r.span))
    for r in tb:
        if r.key not in ia:
            continue
        o = ia[r.key]
        head = name if r.key == "otherwise" else f"{name} [{r.key}]"
        if o.split != r.split:
            moves = [f"{lab} {pct(o.split.get(lab, 0))} -> {pct(r.split.get(lab, 0))}"
                     for lab in sorted(o.split.keys() | r.split.keys())
                     if o.split.get(lab, 0) != r.split.get(lab, 0)]
            yield Change("routing", name, f"{head}: " + ", ".join(moves), where=loc(r.span),
                         old={k: pct(v) for k, v in o.split.items()},
                         new={k: pct(v) for k, v in r.split.items()})
        for k in sorted(o.action.keys() | r.action.keys()):
            if o.action.get(k) != r.action.get(k):
                before = _kv(o.action[k]) if k in o.action else "none"
                after = _kv(r.action[k]) if k in r.action else "none"
                yield Change("routing", name, f"{head}: {k.replace('_', ' ')} {before} -> {after}",
                             where=loc(r.span), old=o.action.get(k), new=r.action.get(k))
    common_a = [r.key for r in ta if r.key in ib]
    common_b = [r.key for r in tb if r.key in ia]
    if common_a != common_b:
        # First match wins: reordering rules can change where a request goes.
        yield Change("routing", name, f"{name}: route rule order changed ({' | '.join(common_b)})",
                     where=loc(b.span), old=common_a, new=common_b)


# --------------------------------------------------------------------------- resilience


def _cmp(old: float | None, new: float | None, *, none_is_unlimited: bool = True) -> Effect:
    """Effect of a change in a protective limit: a higher (or removed) limit widens."""
    inf = float("inf")
    o = inf if old is None and none_is_unlimited else (old if old is not None else 0)
    n = inf if new is None and none_is_unlimited else (new if new is not None else 0)
    return "widening" if n > o else "narrowing" if n < o else "neutral"


def _fmt_retry(r: Retry | None) -> str:
    if r is None:
        return "none"
    bits = [f"{r.attempts} ({r.total_attempts} attempts) on {', '.join(sorted(r.on + tuple(map(str, r.status_codes))))}"]
    if r.per_try_ms is not None:
        bits.append(f"per_try {dur(r.per_try_ms)}")
    if r.backoff_base_ms is not None:
        bits.append(f"backoff {dur(r.backoff_base_ms)} max {dur(r.backoff_max_ms)}")
    if r.budget is not None:
        bits.append(f"budget {pct(r.budget)}")
    return " ".join(bits)


def _timeout_ms(t: Any) -> int | None:
    return None if t is None else t.ms


def _diff_timeout(subject: str, head: str, a: Any, b: Any, where: str) -> Iterator[Change]:
    oa, ob = _timeout_ms(a), _timeout_ms(b)
    if oa != ob:
        yield Change("resilience", subject, f"{head}: timeout {dur(oa)} -> {dur(ob)}", "changed",
                     _cmp(oa, ob), where, oa, ob)


def _diff_retry(subject: str, head: str, a: Retry | None, b: Retry | None, where: str) -> Iterator[Change]:
    if plain(a) == plain(b):
        return
    ta = a.total_attempts if a else 1
    tb = b.total_attempts if b else 1
    effect: Effect = "widening" if tb > ta else "narrowing" if tb < ta else "neutral"
    if effect == "neutral" and a and b:
        # Same attempts: a larger budget or more retry conditions still retries more.
        more = set(b.on) - set(a.on) or set(b.status_codes) - set(a.status_codes)
        fewer = set(a.on) - set(b.on) or set(a.status_codes) - set(b.status_codes)
        effect = "widening" if more or _cmp(a.budget, b.budget) == "widening" else \
            "narrowing" if fewer else "neutral"
    op: Op = "added" if a is None else "removed" if b is None else "changed"
    yield Change("resilience", subject, f"{head}: retry {_fmt_retry(a)} -> {_fmt_retry(b)}", op, effect,
                 where, plain(a), plain(b))


_LIMITS: dict[str, tuple[str, ...]] = {
    "circuit_breaker": ("max_connections", "max_pending", "max_requests", "max_retries"),
}


def _diff_policy(s_name: str, key: str, a: Any, b: Any, where: str) -> Iterator[Change]:
    pa, pb = plain(a), plain(b)
    if pa == pb:
        return
    word = key.replace("_", " ")
    if a is None or b is None:
        # Adding a protection narrows; removing one widens (load balancing is neither).
        op: Op = "added" if a is None else "removed"
        effect: Effect = "neutral" if key == "load_balance" else "narrowing" if a is None else "widening"
        shown = _kv(pb if b is not None else pa)
        yield Change("resilience", s_name, f"{s_name}: {word} {shown}".rstrip(), op, effect, where, pa, pb)
        return
    if key == "circuit_breaker":
        for f in _LIMITS[key]:
            va, vb = pa.get(f), pb.get(f)
            if va != vb:
                yield Change("resilience", s_name,
                             f"{s_name}: circuit breaker {f} {va if va is not None else 'unlimited'} -> "
                             f"{vb if vb is not None else 'unlimited'}",
                             "changed", _cmp(va, vb), where, va, vb)
        return
    if key == "rate_limit":
        ra, rb = a.per_second, b.per_second
        effect = _cmp(ra, rb)
        if effect == "neutral":
            effect = _cmp(a.burst or 0, b.burst or 0, none_is_unlimited=False)
        yield Change("resilience", s_name, f"{s_name}: rate limit {_fmt_rate(a)} -> {_fmt_rate(b)}", "changed",
                     effect, where, pa, pb)
        return
    yield Change("resilience", s_name, f"{s_name}: {word} {_kv(pa)} -> {_kv(pb)}", "changed", "neutral",
                 where, pa, pb)


def _diff_body_limit(subject: str, a: BodyLimit | None, b: BodyLimit | None, where: str) -> Iterator[Change]:
    """A larger or removed limit lets bigger requests through (widens); a smaller one narrows."""
    oa, ob = (a.bytes if a else None), (b.bytes if b else None)
    if oa == ob:
        return
    op: Op = "added" if a is None else "removed" if b is None else "changed"
    shown = [size_text(x) if x is not None else "unlimited" for x in (oa, ob)]
    yield Change("resilience", subject, f"{subject}: max request body {shown[0]} -> {shown[1]}", op,
                 _cmp(oa, ob), where, oa, ob)


def _fmt_rate(r: Any) -> str:
    return f"{r.requests}/{r.unit}" + (f" burst {r.burst}" if r.burst is not None else "")


def _fmt_faults(faults: Iterable[Any]) -> list[str]:
    out = []
    for f in faults:
        when = (" when " + " or ".join(sorted(fmt_match(m) for m in f.matches))) if f.matches else ""
        bits = []
        if f.delay_ms is not None:
            bits.append(f"delay {dur(f.delay_ms)} {pct(f.delay_percent)}")
        if f.abort_status is not None:
            bits.append(f"abort {f.abort_status} {pct(f.abort_percent)}")
        out.append(f"fault{when} " + " ".join(bits))
    return sorted(out)


def _diff_faults(subject: str, head: str, a: Iterable[Any], b: Iterable[Any], where: str) -> Iterator[Change]:
    fa, fb = _fmt_faults(a), _fmt_faults(b)
    for f in sorted(set(fb) - set(fa)):
        yield Change("resilience", subject, f"{head}: {f}", "added", "neutral", where)
    for f in sorted(set(fa) - set(fb)):
        yield Change("resilience", subject, f"{head}: {f}", "removed", "neutral", where)


def _diff_resilience(old: Mesh, new: Mesh, a: Service, b: Service) -> Iterator[Change]:
    name = b.name
    ra, rb = a.resilience, b.resilience
    where = loc(b.span)
    # Effective timeout: the service's, else the mesh default.
    # (Inherited on both sides: the mesh-level change is reported once, on the mesh.)
    if ra.timeout is not None or rb.timeout is not None:
        ta = ra.timeout if ra.timeout is not None else old.timeout
        tb = rb.timeout if rb.timeout is not None else new.timeout
        yield from _diff_timeout(name, name, ta, tb, loc(rb.timeout.span if rb.timeout else b.span))
    yield from _diff_retry(name, name, ra.retry, rb.retry, loc(rb.retry.span if rb.retry else b.span))
    for key in ("load_balance", "circuit_breaker", "outlier", "health_check", "rate_limit"):
        nb = getattr(rb, key)
        yield from _diff_policy(name, key, getattr(ra, key), nb, loc(nb.span if nb else b.span))
    yield from _diff_body_limit(name, ra.max_request_body, rb.max_request_body,
                                loc(rb.max_request_body.span if rb.max_request_body else b.span))
    yield from _diff_faults(name, name, a.faults, b.faults, where)
    rules_a = {rule_key(r): r for r in a.routes}
    for r in b.routes:
        k = rule_key(r)
        o = rules_a.get(k)
        if o is None:
            continue
        head = f"{name} [{k}]"
        yield from _diff_timeout(name, head, o.timeout, r.timeout, loc(r.span))
        yield from _diff_retry(name, head, o.retry, r.retry, loc(r.span))
        yield from _diff_faults(name, head, o.faults, r.faults, loc(r.span))


def _amplification_key(s: Service) -> str:
    """What worst-case attempts depend on in one service: calls, retries, route targets."""
    return json.dumps([sorted(s.calls), sig(s.resilience.retry),
                       [[sig(r.retry), sorted((d.service, d.version or "") for d in r.destinations),
                         r.mirror.destination.service if r.mirror else ""] for r in s.routes]])


def _amplification_changed(old: Mesh, new: Mesh, changed: Iterable[str]) -> bool:
    if {s.name for s in old.services} != {s.name for s in new.services}:
        return True
    for name in changed:
        a, b = old.service(name), new.service(name)
        if a is None or b is None or _amplification_key(a) != _amplification_key(b):
            return True
    return False


def _diff_amplification(old: Mesh, new: Mesh, changed: Iterable[str]) -> Iterator[Change]:
    from meshc import graph  # the largest module: only when amplification may have changed

    if not _amplification_changed(old, new, changed):
        return
    aa, ab = graph.amplification(old), graph.amplification(new)
    for svc in sorted(aa.keys() | ab.keys()):
        oa = aa.get(svc, (1, [svc]))
        ob = ab.get(svc, (1, [svc]))
        if oa[0] == ob[0]:
            continue
        path = ob[1] if svc in ab else oa[1]
        chain = " -> ".join(str(p) for p in path) if path else svc
        effect: Effect = "widening" if ob[0] > oa[0] else "narrowing"
        yield Change("resilience", svc, f"{chain}: worst-case attempts {graph.fmt_attempts(oa[0])} -> "
                     f"{graph.fmt_attempts(ob[0])}", "changed", effect,
                     "", oa[0], ob[0])


# --------------------------------------------------------------------------- posture

_MTLS_STRENGTH = {"strict": 2, "permissive": 1, "disabled": 0}
_AUTHZ_STRENGTH = {"deny_by_default": 1, "allow_by_default": 0}
_NORMALIZATION_STRENGTH = {"strict": 1, "off": 0}


def _strength(table: dict[str, int], a: str, b: str) -> Effect:
    return "widening" if table[b] < table[a] else "narrowing" if table[b] > table[a] else "neutral"


def _observability_words(mesh: Mesh) -> dict[str, str]:
    """The observability settings as .mesh writes them (`trace_sampling 0.5%`, `metrics off`),
    not as the model stores them (hundredths of a percent, a bool)."""
    obs = mesh.observability
    return {"access_log": obs.access_log, "metrics": "on" if obs.metrics else "off",
            "trace_sampling": pct(obs.trace_sampling)}


def _diff_mesh_settings(old: Mesh, new: Mesh) -> Iterator[Change]:
    where = loc(new.span)
    if old.mtls != new.mtls:
        yield Change("posture", "mesh", f"mesh: mtls {old.mtls} -> {new.mtls}", "changed",
                     _strength(_MTLS_STRENGTH, old.mtls, new.mtls), where, old.mtls, new.mtls)
    if old.authz != new.authz:
        yield Change("posture", "mesh", f"mesh: authz {old.authz} -> {new.authz}", "changed",
                     _strength(_AUTHZ_STRENGTH, old.authz, new.authz), where, old.authz, new.authz)
    if old.path_normalization != new.path_normalization:
        yield Change("posture", "mesh",
                     f"mesh: path_normalization {old.path_normalization} -> {new.path_normalization}", "changed",
                     _strength(_NORMALIZATION_STRENGTH, old.path_normalization, new.path_normalization), where)
    for attr in ("name", "trust_domain", "namespace"):
        if getattr(old, attr) != getattr(new, attr):
            yield Change("posture", "mesh", f"mesh: {attr.replace('_', ' ')} {getattr(old, attr)} -> "
                                            f"{getattr(new, attr)}", where=where)
    ia, ib = old.ingress_identity, new.ingress_identity
    if (ia.namespace, ia.name) != (ib.namespace, ib.name):
        yield Change("posture", "mesh", f"mesh: ingress identity {ia.namespace}/{ia.name} -> "
                                        f"{ib.namespace}/{ib.name}", where=where)
    oo, no = _observability_words(old), _observability_words(new)
    for k in sorted(oo.keys() | no.keys()):
        if oo.get(k) != no.get(k):
            yield Change("posture", "mesh", f"mesh: {k.replace('_', ' ')} {oo.get(k)} -> {no.get(k)}", where=where)
    if _timeout_ms(old.timeout) != _timeout_ms(new.timeout):
        yield Change("resilience", "mesh", f"mesh: default timeout {dur(_timeout_ms(old.timeout))} -> "
                                           f"{dur(_timeout_ms(new.timeout))}", "changed",
                     _cmp(_timeout_ms(old.timeout), _timeout_ms(new.timeout)), where)


def _diff_service_posture(old: Mesh, new: Mesh, a: Service, b: Service) -> Iterator[Change]:
    name = b.name
    # Report a service's mode only where it is not just the mesh-wide change inherited.
    if a.mtls != b.mtls and (a.mtls, b.mtls) != (old.mtls, new.mtls):
        yield Change("posture", name, f"{name}: mtls {a.mtls} -> {b.mtls}", "changed",
                     _strength(_MTLS_STRENGTH, a.mtls, b.mtls), loc(b.span), a.mtls, b.mtls)
    pa = {(p.protocol, p.number): p for p in a.ports}
    for p in b.ports:
        q = pa.get((p.protocol, p.number))
        if q is None or q.mtls == p.mtls or (q.mtls, p.mtls) == (a.mtls, b.mtls):
            continue
        yield Change("posture", name, f"{name} port {p.name}: mtls {q.mtls} -> {p.mtls}", "changed",
                     _strength(_MTLS_STRENGTH, q.mtls, p.mtls), loc(p.span), q.mtls, p.mtls)
    yield from _diff_exposure(a, b)
    yield from _diff_external(a, b)


def _fmt_ingress(i: Any) -> str:
    paths = ", ".join(f'{p.kind} "{p.value}"' for p in sorted(i.paths, key=lambda p: (p.kind, p.value))) or "all paths"
    return f"port {i.port} hosts {', '.join(sorted(i.hosts))} paths {paths}"


def _diff_exposure(a: Service, b: Service) -> Iterator[Change]:
    name = b.name
    ea, eb = a.expose, b.expose
    if ea is None and eb is None:
        return
    if ea is None:
        assert eb is not None
        yield Change("posture", name, f"{name}: exposed on ingress {_fmt_ingress(eb)}", "added", "widening",
                     loc(eb.span))
        return
    if eb is None:
        yield Change("posture", name, f"{name}: exposed on ingress {_fmt_ingress(ea)}", "removed", "narrowing",
                     loc(ea.span))
        return
    if plain(ea) == plain(eb):
        return
    where = loc(eb.span)
    pa = {(p.kind, p.value) for p in ea.paths}
    pb = {(p.kind, p.value) for p in eb.paths}
    # An empty path list exposes every path.
    for kind, value in sorted(pb - pa):
        effect: Effect = "narrowing" if not pa else "widening"
        yield Change("posture", name, f'{name}: ingress path {kind} "{value}"', "added", effect, where)
    for kind, value in sorted(pa - pb):
        effect = "widening" if not pb else "narrowing"
        yield Change("posture", name, f'{name}: ingress path {kind} "{value}"', "removed", effect, where)
    ha, hb = set(ea.hosts), set(eb.hosts)
    if ha != hb:
        effect = "widening" if "*" in hb - ha or (hb - ha and "*" not in ha) else \
            "narrowing" if ha - hb else "neutral"
        yield Change("posture", name, f"{name}: ingress hosts {_list(sorted(ha))} -> {_list(sorted(hb))}",
                     "changed", effect, where)
    if ea.port != eb.port:
        yield Change("posture", name, f"{name}: ingress port {ea.port} -> {eb.port}", "changed", "neutral", where)


def _diff_external(a: Service, b: Service) -> Iterator[Change]:
    name = b.name
    xa, xb = a.external, b.external
    if plain(xa) == plain(xb):
        return
    if xa is None:
        assert xb is not None
        yield Change("posture", name, f"{name}: egress to {xb.host}", "added", "widening", loc(xb.span))
        return
    if xb is None:
        yield Change("posture", name, f"{name}: egress to {xa.host}", "removed", "narrowing", loc(b.span))
        return
    where = loc(xb.span)
    if xa.host != xb.host:
        yield Change("posture", name, f"{name}: egress host {xa.host} -> {xb.host}", "changed", "widening", where)
    if xa.tls_originate != xb.tls_originate:
        effect: Effect = "widening" if xa.tls_originate else "narrowing"
        yield Change("posture", name, f"{name}: tls originate {_onoff(xa.tls_originate)} -> "
                                      f"{_onoff(xb.tls_originate)}", "changed", effect, where)
    if xa.sni != xb.sni:
        yield Change("posture", name, f"{name}: egress sni {xa.sni} -> {xb.sni}", "changed", "neutral", where)


def _onoff(v: bool) -> str:
    return "on" if v else "off"


def _diff_new_service_posture(new: Mesh, names: Iterable[str]) -> Iterator[Change]:
    """A new service's exposure and egress widen the mesh even though the service is new."""
    for name in names:
        s = new.service(name)
        if s is None:
            continue
        if s.expose is not None:
            yield Change("posture", name, f"{name}: exposed on ingress {_fmt_ingress(s.expose)}", "added",
                         "widening", loc(s.expose.span))
        if s.external is not None:
            yield Change("posture", name, f"{name}: egress to {s.external.host}", "added", "widening",
                         loc(s.external.span))


# --------------------------------------------------------------------------- access


def _identity_of(mesh: Mesh, name: str) -> str:
    s = mesh.service(name)
    return s.identity.spiffe if s else ""


def _access_head(mesh: Mesh) -> tuple[str, ...]:
    """Mesh settings every authorization decision depends on."""
    return (mesh.mtls, mesh.authz, mesh.path_normalization, mesh.trust_domain, mesh.ingress_identity.spiffe)


_RULE_FIELDS = {"span", "action", "sources", "destinations", "methods", "paths", "not_paths", "ports", "headers"}


def rule_key_of(mesh: Mesh) -> Callable[[AuthzRule], tuple[Any, ...]]:
    """A rule of `mesh` as a span-free tuple, its service sources resolved to their identities
    (a renamed service account changes the grant). Not order-normalised: a rule rewritten in
    another order only costs a probe, which then finds no difference."""
    if set(AuthzRule.model_fields) != _RULE_FIELDS:  # the model grew: fall back to the full form
        return lambda r: (sig(r), tuple(_identity_of(mesh, x.name) for x in r.sources if x.kind == "service"))
    spiffe = {s.name: s.identity.spiffe for s in mesh.services}

    def sm(ms: tuple[StringMatch, ...]) -> tuple[tuple[str, str, str], ...]:
        return tuple((m.name, m.kind, m.value) for m in ms)

    def key(r: AuthzRule) -> tuple[Any, ...]:
        return (r.action, tuple((x.kind, x.name, spiffe.get(x.name, "") if x.kind == "service" else "")
                                for x in r.sources),
                r.destinations, r.methods, tuple((p.kind, p.value) for p in r.paths),
                tuple((p.kind, p.value) for p in r.not_paths), r.ports, sm(r.headers))
    return key


def _rule_keys(mesh: Mesh) -> dict[tuple[Any, ...], AuthzRule]:
    key = rule_key_of(mesh)
    return {key(r): r for r in mesh.rules}


def _affected_destinations(old: Mesh, new: Mesh, changed: Iterable[str]) -> list[str]:
    """Destinations whose effective grants may differ; every other one is provably unchanged:
    same rules naming it (or `*`), same service, same mesh-wide settings."""
    everyone = sorted({s.name for s in old.services} | {s.name for s in new.services})
    if _access_head(old) != _access_head(new):
        return everyone
    names_a, names_b = {s.name for s in old.services}, {s.name for s in new.services}
    moved = set(changed) | (names_a ^ names_b)
    affected = set(moved)
    ka, kb = _rule_keys(old), _rule_keys(new)
    differing = [ka[k] for k in ka.keys() - kb.keys()] + [kb[k] for k in kb.keys() - ka.keys()]
    # `identity NAME` sources match whichever services run as NAME: a service that changed
    # (or appeared) may now match one, which affects that rule's destinations too.
    idents = {f"{s.identity.namespace}/{s.identity.name}" for m in (old, new) for n in moved
              if (s := m.service(n)) is not None}
    idents |= {i.split("/", 1)[1] for i in idents}
    if idents:
        differing += [r for r in (*old.rules, *new.rules)
                      if any(src.kind == "identity" and src.name in idents for src in r.sources)]
    for r in differing:
        if "*" in r.destinations:
            return everyone
        affected.update(r.destinations)
    return sorted(affected & (names_a | names_b))


ANY = "*"
OTHER_SOURCES = "(other services)"
_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE")


@dataclass(frozen=True)
class _Probe:
    """One class of requests both sides' rules distinguish: (method, path, port, header)."""

    method: str | None
    path: str | None
    port: int | None
    header: tuple[tuple[str, str], ...] | None  # request headers; None: none at all

    def key(self) -> tuple[str, str, str, str]:
        return (self.method or "", self.path or "", str(self.port or ""),
                ",".join("=".join(h) for h in self.header or ()))


_CATEGORY_SAMPLE = {"CATEGORY_DIGIT": "0", "CATEGORY_WORD": "a", "CATEGORY_SPACE": " ",
                    "CATEGORY_NOT_DIGIT": "a", "CATEGORY_NOT_WORD": "-", "CATEGORY_NOT_SPACE": "a"}


def regex_sample(pattern: str) -> str | None:
    """A short string the regex fully matches (None when unsure), so that a rule written as
    a regex has a concrete request in its region."""
    try:
        from re import _parser as sre  # type: ignore[attr-defined]

        parsed = sre.parse(pattern)
    except Exception:
        return None

    def gen(items: Any) -> str:
        out = []
        for op, arg in items:
            name = str(op)
            if name == "LITERAL":
                out.append(chr(arg))
            elif name == "NOT_LITERAL":
                out.append("a" if chr(arg) != "a" else "b")
            elif name == "ANY":
                out.append("a")
            elif name == "IN":
                out.append(_in_sample(arg))
            elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                lo, _hi, sub = arg
                out.append(gen(sub) * lo)
            elif name == "SUBPATTERN":
                out.append(gen(arg[-1]))
            elif name == "BRANCH":
                out.append(gen(arg[1][0]))
            elif name == "AT":
                continue
            else:
                raise ValueError(name)
        return "".join(out)

    def _in_sample(items: Any) -> str:
        negate = any(str(op) == "NEGATE" for op, _ in items)
        for op, arg in items:
            name = str(op)
            if negate:
                break
            if name == "LITERAL":
                return chr(arg)
            if name == "RANGE":
                return chr(arg[0])
            if name == "CATEGORY":
                return _CATEGORY_SAMPLE.get(str(arg), "a")
        return "a" if not negate or ("a" not in str(items)) else "b"

    try:
        sample = gen(parsed)
    except (ValueError, TypeError, IndexError):
        return None
    return sample if re.fullmatch(pattern, sample) else None


def _path_candidates(atoms: list[PathMatch]) -> list[str]:
    """Concrete paths that land in every region the path atoms distinguish (one per region)."""
    from meshc import authz

    cands = {"/", "/meshc-diff-unmatched"}
    for a in atoms:
        v = a.value if a.kind != "regex" else (regex_sample(a.value) or re.sub(r"[\\^$.*+?()\[\]{}|]", "", a.value))
        if not v.startswith("/"):
            v = "/" + v
        base = v.rstrip("/") or "/"
        cands |= {v, v + "x", v + "/x", base, base + "/", base + "/x", base + "x"}
    regions: dict[tuple[bool, ...], str] = {}
    for c in sorted(cands, key=lambda p: (len(p), p)):
        norm = authz.normalize_path(c)
        if norm is None:
            continue
        sig = tuple(authz.path_matches(a, norm) for a in atoms)
        regions.setdefault(sig, norm)
    return sorted(set(regions.values()))


def _header_probe(m: StringMatch) -> tuple[str, str] | None:
    if m.kind == "absent":
        return None
    if m.kind == "regex":
        return (m.name, regex_sample(m.value) or re.sub(r"[\\^$.*+?()\[\]{}|]", "", m.value))
    return (m.name, m.value or "1")


def _probes(rules: Iterable[AuthzRule], ports: set[int]) -> tuple[list[_Probe], dict[str, list[Any]]]:
    rules = list(rules)
    methods = sorted({m.upper() for r in rules for m in r.methods})
    if methods:
        other = next((m for m in _METHODS if m not in methods), "MESHC-OTHER")
        mvals: list[str | None] = [*methods, other]
    else:
        mvals = [None]
    atoms = {(p.kind, p.value): p for r in rules for p in (*r.paths, *r.not_paths)}
    pvals: list[str | None] = list(_path_candidates(list(atoms.values()))) if atoms else [None]
    rule_ports = {p for r in rules for p in r.ports}
    all_ports = sorted(ports | rule_ports)
    portvals: list[int | None] = list(all_ports) if all_ports else [None]
    # Each header condition alone, and each rule's conditions together (a rule may need all).
    sets: set[tuple[tuple[str, str], ...]] = set()
    for r in rules:
        pairs = [h for m in r.headers if (h := _header_probe(m)) is not None]
        sets |= {(h,) for h in pairs}
        if len(pairs) > 1:
            sets.add(tuple(sorted(dict(pairs).items())))
    hvals: list[tuple[tuple[str, str], ...] | None] = [None, *sorted(sets)]
    probes = [_Probe(m, p, po, h) for m in mvals for p in pvals for po in portvals for h in hvals]
    return probes, {"method": mvals, "path": pvals, "port": portvals, "header": hvals}


def _source_classes(old: Mesh, new: Mesh, rules: Iterable[AuthzRule]) -> list[str]:
    """Callers to compare: every service a relevant rule names (or names by identity), the
    ingress, plaintext callers, and one representative of every other service."""
    named: set[str] = set()
    idents: set[str] = set()
    for r in rules:
        for s in r.sources:
            if s.kind == "service":
                named.add(s.name)
            elif s.kind == "identity":
                idents.add(s.name)
    if idents:
        for mesh in (old, new):
            for svc in mesh.services:
                i = svc.identity
                if i.name in idents or f"{i.namespace}/{i.name}" in idents:
                    named.add(svc.name)
    return sorted(named) + [OTHER_SOURCES, INGRESS_SRC, PLAINTEXT_SRC]


INGRESS_SRC = "ingress"
PLAINTEXT_SRC = "unauthenticated"


def _representative(mesh: Mesh, named: set[str]) -> str | None:
    """A service no relevant rule names and that is not the ingress: stands for all such."""
    ingress = mesh.ingress_identity.spiffe
    named_ids = {_identity_of(mesh, n) for n in named}
    for s in mesh.services:
        if s.name not in named and s.identity.spiffe not in named_ids and s.identity.spiffe != ingress:
            return s.name
    return None


def _grants(mesh: Mesh, source: str | None, dest: str, probes: list[_Probe]) -> dict[_Probe, Any]:
    from meshc import authz

    out = {}
    for p in probes:
        d = authz.decide(mesh, source, dest, method=p.method, path=p.path, port=p.port,
                         headers=dict(p.header) if p.header else None)
        if d.allowed:
            out[p] = d
    return out


def _collapse(probes: set[_Probe], dims: dict[str, list[Any]]) -> list[tuple[Any, ...]]:
    """Summarise a set of probes: a dimension all of whose values are present becomes ANY."""
    rows: set[tuple[Any, ...]] = {(p.method, p.path, p.port, p.header) for p in probes}
    names = ("method", "path", "port", "header")
    for i, name in enumerate(names):
        values = dims[name]
        if len(values) <= 1:
            rows = {r[:i] + (ANY,) + r[i + 1:] for r in rows}
            continue
        groups: dict[tuple[Any, ...], set[Any]] = defaultdict(set)
        for r in rows:
            groups[r[:i] + r[i + 1:]].add(r[i])
        out = set()
        for rest, vals in groups.items():
            if vals >= set(values):
                out.add(rest[:i] + (ANY,) + rest[i:])
            else:
                out |= {rest[:i] + (v,) + rest[i:] for v in vals}
        rows = out
    return sorted(rows, key=lambda r: json.dumps(r, default=str))


def _merge(rows: list[tuple[Any, ...]], dim: int) -> list[tuple[Any, ...]]:
    """Rows that differ only in one (concrete) dimension become one row listing its values."""
    groups: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
    for r in rows:
        groups[(r[dim] == ANY,) + r[:dim] + r[dim + 1:]].append(r[dim])
    out = []
    for key, vals in groups.items():
        rest = key[1:]
        merged = ANY if key[0] else tuple(vals)
        out.append(rest[:dim] + (merged,) + rest[dim:])
    return sorted(out, key=lambda r: json.dumps(r, default=str))


def _fmt_request(row: tuple[Any, ...], dims: dict[str, list[Any]]) -> str:
    method, path, port, header = row
    methods = dims["method"]
    bits = []
    if method != ANY:
        named = [m for m in method if m != methods[-1]]
        if len(named) != len(method):
            named.append(f"(methods other than {', '.join(methods[:-1])})")
        bits.append(", ".join(named))
    if path != ANY:
        missing = [p for p in dims["path"] if p not in path]
        bits.append(f"any path except {', '.join(missing)}" if len(missing) < len(path) else ", ".join(path))
    if port != ANY:
        bits.append(f"port {port}")
    if header != ANY:
        bits.append("without matching headers" if header is None else
                    "headers " + ", ".join(f'{k} == "{v}"' for k, v in header))
    return " ".join(bits)


def _diff_access_pair(old: Mesh, new: Mesh, dest: str, probes: list[_Probe], dims: dict[str, list[Any]],
                      label: str, src_old: str | None, src_new: str | None,
                      has_old: bool, has_new: bool) -> Iterator[Change]:
    ga = _grants(old, src_old, dest, probes) if has_old else {}
    gb = _grants(new, src_new, dest, probes) if has_new else {}
    if ga.keys() == gb.keys():
        return
    for op, gained, decisions in (("added", gb.keys() - ga.keys(), gb), ("removed", ga.keys() - gb.keys(), ga)):
        if not gained:
            continue
        effect: Effect = "widening" if op == "added" else "narrowing"
        first = min(gained, key=_Probe.key)
        rule = decisions[first].rule
        where = loc(rule.span) if rule is not None else ""
        for row in _merge(_merge(_collapse(set(gained), dims), 1), 0):
            req = _fmt_request(row, dims)
            text = f"allow {label} -> {dest}" + (f" {req}" if req else "")
            yield Change("access", f"{label} -> {dest}", text, op, effect, where)  # type: ignore[arg-type]


def _diff_access(old: Mesh, new: Mesh, changed: Iterable[str]) -> Iterator[Change]:
    from meshc import authz

    ia, ib = authz.index(old), authz.index(new)
    for dest in _affected_destinations(old, new, changed):
        rules = [r for idx in (ia, ib) for group in idx.rules_for(dest) for r in group]
        sa, sb = old.service(dest), new.service(dest)
        ports = {p.number for s in (sa, sb) if s is not None for p in s.ports}
        probes, dims = _probes(rules, ports)
        classes = _source_classes(old, new, rules)
        named = set(classes[:-3])
        for label in classes:
            src_a: str | None
            src_b: str | None
            if label == OTHER_SOURCES:
                ra, rb = _representative(old, named), _representative(new, named)
                if ra is None or rb is None:
                    continue
                src_a, src_b, in_a, in_b = ra, rb, True, True
            elif label == PLAINTEXT_SRC:
                src_a = src_b = None
                in_a = in_b = True
            elif label == INGRESS_SRC:
                src_a = src_b = INGRESS_SRC
                in_a = in_b = True
            else:
                src_a = src_b = label
                in_a, in_b = old.service(label) is not None, new.service(label) is not None
            yield from _diff_access_pair(old, new, dest, probes, dims, label, src_a, src_b,
                                         in_a and sa is not None, in_b and sb is not None)


# --------------------------------------------------------------------------- targets


def _compile(mesh: Mesh, target: str) -> dict[str, bytes] | str:
    from meshc.backends import compile_mesh
    from meshc.diagnostics import MeshcError

    try:
        # Features a target cannot express are the business of `meshc compile`; the diff
        # shows what the target would receive (E301 downgraded, as with --unsupported=warn).
        return compile_mesh(mesh, target, unsupported="warn").files
    except MeshcError as e:
        errors = [d for d in e.diagnostics if d.severity == "error"] or e.diagnostics
        first = errors[0] if errors else None
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"{first.code}: {first.message}{more}" if first else "failed"
    except Exception as e:  # a backend bug must not hide the rest of the review
        return f"internal error: {type(e).__name__}: {e}"


def diff_targets(old: Mesh, new: Mesh, targets: Iterable[str]) -> Iterator[Change]:
    for t in targets:
        fa, fb = _compile(old, t), _compile(new, t)
        if isinstance(fa, str) and isinstance(fb, str) and fa == fb:
            yield Change("targets", t, f"{t}: does not compile (either side): {fb}", "error")
        else:
            for side, res in (("old", fa), ("new", fb)):
                if isinstance(res, str):
                    yield Change("targets", t, f"{t}: {side} side does not compile: {res}", "error")
        if isinstance(fa, str) or isinstance(fb, str):
            continue
        for path in sorted(fb.keys() - fa.keys()):
            yield Change("targets", t, f"{t}: {path}", "added")
        for path in sorted(fa.keys() - fb.keys()):
            yield Change("targets", t, f"{t}: {path}", "removed")
        for path in sorted(fa.keys() & fb.keys()):
            if fa[path] != fb[path]:
                yield Change("targets", t, f"{t}: {path}", "changed")


# --------------------------------------------------------------------------- the engine


def semantic_diff(old: Mesh, new: Mesh, *, targets: list[str] | None = None) -> Diff:
    """Compare two resolved meshes by meaning. `targets`: also list changed generated files."""
    changes: list[Change] = []
    by_a = {s.name: s for s in old.services}
    by_b = {s.name: s for s in new.services}
    names_a = set(by_a)
    # Most services of a large mesh are untouched by a change: skip them cheaply.
    changed = [n for n in sorted(names_a & by_b.keys())
               if by_a[n] is not by_b[n] and sig(by_a[n]) != sig(by_b[n])]
    changes += _diff_services(old, new, changed)
    changes += _diff_mesh_settings(old, new)
    for name in changed:
        a, b = old.service(name), new.service(name)
        assert a is not None and b is not None
        changes += _diff_routes(a, b)
        changes += _diff_resilience(old, new, a, b)
        changes += _diff_service_posture(old, new, a, b)
    changes += _diff_new_service_posture(new, sorted({s.name for s in new.services} - names_a))
    changes += _diff_access(old, new, changed)
    changes += _diff_amplification(old, new, changed)
    if targets:
        changes += diff_targets(old, new, targets)
    return Diff(changes)


# --------------------------------------------------------------------------- renderers

_COLOURS = {"widening": "\x1b[31m", "narrowing": "\x1b[32m", "neutral": "\x1b[33m"}
_BOLD, _RESET = "\x1b[1m", "\x1b[0m"


def summary_line(diff: Diff) -> str:
    if diff.empty:
        return "no semantic changes"
    n = len(diff.changes)
    c = diff.counts()
    return (f"{n} semantic change{'s' * (n != 1)}: {c['widening']} widening, {c['narrowing']} narrowing, "
            f"{c['neutral']} neutral")


def render_text(diff: Diff, color: bool = False) -> str:
    if diff.empty:
        return "no semantic changes\n"
    out = []
    for cat, items in diff.by_category().items():
        title = f"{CATEGORY_TITLES[cat]} ({len(items)})"
        out.append(f"{_BOLD}{title}{_RESET}" if color else title)
        for c in items:
            line = c.line()
            if color:
                line = f"{_COLOURS[c.effect]}{line}{_RESET}"
            where = f"  ({c.where})" if c.where else ""
            out.append(f"  {line}{where}")
        out.append("")
    out.append(summary_line(diff))
    return "\n".join(out) + "\n"


def _md_escape(s: str) -> str:
    return s.replace("`", "'")


def render_markdown(diff: Diff, title: str = "meshc diff") -> str:
    out = [f"### {title}", ""]
    if diff.empty:
        out += ["**No semantic changes.**", ""]
        return "\n".join(out)
    c = diff.counts()
    flag = " :warning: widens access or weakens protection" if c["widening"] else ""
    out += [f"**{summary_line(diff)}**{flag}", "",
            "| category | widening | narrowing | neutral |", "|---|---:|---:|---:|"]
    groups = diff.by_category()
    for cat, items in groups.items():
        counts = {e: sum(i.effect == e for i in items) for e in EFFECTS}
        out.append(f"| {CATEGORY_TITLES[cat]} | {counts['widening']} | {counts['narrowing']} | "
                   f"{counts['neutral']} |")
    out.append("")
    for cat, items in groups.items():
        # Widening categories start open: that is what a reviewer must look at.
        opened = " open" if any(i.effect == "widening" for i in items) else ""
        out += [f"<details{opened}><summary><b>{CATEGORY_TITLES[cat]}</b> ({len(items)})</summary>", "",
                "```diff"]
        out += [_md_escape(i.line()) + (f"  @ {i.where}" if i.where else "") for i in items]
        out += ["```", "", "</details>", ""]
    return "\n".join(out)


def render_json(diff: Diff) -> str:
    data = {"summary": {"changes": len(diff.changes), **diff.counts(), "widens": diff.widens},
            "changes": [c.as_json() for c in diff.changes]}
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


RENDERERS: dict[str, Callable[[Diff], str]] = {
    "markdown": render_markdown,
    "json": render_json,
}
