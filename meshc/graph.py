"""Graph checks over the resolved mesh: the call, routing and authorization graph.

`check(mesh)` runs every check below and returns their diagnostics (sorted, deterministic).
Codes are stable; each has a section in docs/errors.md.

| code | finding |
|------|---------|
| E201 | split weights that do not add up to 100% |
| W202 | route table without `otherwise` (unmatched requests get 404) |
| W203 | route rule shadowed by an earlier, broader rule (never matches) |
| W204 | dead traffic: a declared call, route, mirror or exposure the callee's authorization refuses |
| W205 | retry amplification above the limit (default 10 attempts per client request) |
| W206 | a caller's timeout shorter than what its callee may take with its retries |
| W207 | identity-based allow rule on a service or port whose mTLS is permissive or disabled |
| W208 | path-based rules that raw paths bypass while `path_normalization off` |
| W209 | a service nobody may call that is not exposed (unreachable) |
| W210 | a call cycle |
| E211 | two services or versions bound to the same static endpoint ip:port |
| E212 | a per-try timeout not shorter than the request timeout |

Everything is linear in services, rules and edges: authorization is answered by the rule index
of meshc.authz (per destination and caller identity), amplification is a longest-product DP
over the condensation of the traffic graph, and route shadowing compares rules within one
service's table only. tests/test_graph.py counts the work to keep it that way.

Also here: `call_graph`, `amplification` and `to_dot` / `to_mermaid` (the `meshc graph` command is meshc.commands.graph).
"""

from __future__ import annotations

import ipaddress
import re
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshc import authz, parallel
from meshc.diagnostics import Diagnostic
from meshc.gc_pause import paused_gc
from meshc.model import (
    FULL,
    AuthzRule,
    Endpoint,
    Identity,
    Match,
    Mesh,
    PathMatch,
    Retry,
    RouteRule,
    Service,
    Span,
    StringMatch,
    Timeout,
)

if TYPE_CHECKING:
    import networkx as nx

INGRESS_NODE = "ingress"
DEFAULT_AMPLIFICATION_LIMIT = 10
# Envoy's defaults, used when a retry names no backoff: base 25 ms, cap 10x base.
DEFAULT_BACKOFF_BASE_MS = 25
# Components up to this size get every simple path tried (at most 7! orders); larger ones a
# greedy relaxation that still only follows simple paths.
EXACT_CYCLE_SIZE = 7
GREEDY_ROUNDS = 4
CHAIN_LOOKBACK = 64

# --------------------------------------------------------------------------- helpers


def fmt_ms(ms: int) -> str:
    if ms < 1000:
        return f"{ms}ms"
    return f"{ms / 1000:g}s"


def fmt_percent(p: int) -> str:
    return f"{p / 100:g}%"


def _forwarding(svc: Service) -> list[RouteRule]:
    return [r for r in svc.routes if r.destinations]


def _effective_retry(svc: Service, rule: RouteRule | None) -> Retry | None:
    return (rule.retry if rule is not None and rule.retry is not None else svc.resilience.retry)


def _effective_timeout(mesh: Mesh, svc: Service, rule: RouteRule | None) -> Timeout | None:
    """Precedence: route rule > service (policies already merged) > mesh default."""
    for t in (rule.timeout if rule is not None else None, svc.resilience.timeout, mesh.timeout):
        if t is not None:
            return t
    return None


def _rule_slots(svc: Service) -> list[RouteRule | None]:
    """The settings a request to `svc` may run under: one per forwarding rule, or the service's."""
    return list(_forwarding(svc)) or [None]


def backoff_ms(retry: Retry) -> int:
    """Worst-case total backoff between attempts (exponential, capped)."""
    base = retry.backoff_base_ms if retry.backoff_base_ms is not None else DEFAULT_BACKOFF_BASE_MS
    cap = retry.backoff_max_ms if retry.backoff_max_ms is not None else 10 * base
    return sum(min(base * 2 ** k, cap) for k in range(retry.attempts))


def attempts_into(svc: Service) -> tuple[float, Retry | None]:
    """The most attempts one request to `svc` can become when it keeps failing, and the retry
    that allows it: the retry's total attempts, or, with a retry `budget`, at most 1 + budget
    (retries may be at most that share of the requests in flight, so in a retry storm each
    request becomes at most that many attempts on average)."""
    best, why = 1.0, None
    for rule in _rule_slots(svc):
        retry = _effective_retry(svc, rule)
        if retry is None:
            continue
        n = float(retry.total_attempts)
        if retry.budget is not None:
            n = min(n, 1 + retry.budget / FULL)
        if n > best:
            best, why = n, retry
    return best, why


def fmt_attempts(n: float) -> str:
    """`4`, or `1.2` for a factor a retry budget caps."""
    return str(int(n)) if float(n).is_integer() else f"{n:.2f}".rstrip("0")


# --------------------------------------------------------------------------- the graph


def _calls(svc: Service) -> Iterator[tuple[str, Span]]:
    """Each declared callee once, with the span to blame: the `calls` entry if the model keeps
    one (`Service.call_spans`, parallel to `calls`), else the service."""
    spans = svc.call_spans
    seen: set[str] = set()
    for i, callee in enumerate(svc.calls):
        if callee not in seen:
            seen.add(callee)
            yield callee, spans[i] if i < len(spans) else svc.span


def _traffic_edges(mesh: Mesh) -> Iterator[tuple[str, str, str, Span, dict[str, object]]]:
    """(source, target, kind, span, extra) for every edge requests can travel."""
    known = authz.index(mesh).services
    for svc in mesh.services:
        for callee, span in _calls(svc):
            if callee in known:
                yield svc.name, callee, "calls", span, {}
        if svc.expose is not None:
            yield INGRESS_NODE, svc.name, "expose", svc.expose.span, {}
        for rule in svc.routes:
            # one edge per rule and callee, with the share of that rule's requests it gets (the
            # sum of its versions' weights: `split { next.v1 5%, next.v2 5% }` sends next 10%)
            share: dict[str, tuple[int, Span]] = {}
            for d in rule.destinations:
                if d.service != svc.name and d.service in known:
                    weight, span = share.get(d.service, (0, d.span))
                    share[d.service] = (weight + d.weight, span)
            kind = "split" if len(rule.destinations) > 1 else "route"
            for callee, (weight, span) in share.items():
                yield svc.name, callee, kind, span, {"weight": weight}
            if rule.mirror is not None:
                target = rule.mirror.destination.service
                if target != svc.name and target in known:
                    yield svc.name, target, "mirror", rule.mirror.span, {"percent": rule.mirror.percent}


def _allow_edges(mesh: Mesh) -> Iterator[tuple[str, str, AuthzRule]]:
    """Edges from named sources (services, ingress) of allow rules to their destinations."""
    names = [s.name for s in mesh.services]
    for rule in mesh.rules:
        if rule.action != "allow":
            continue
        dests = names if "*" in rule.destinations else [d for d in rule.destinations if authz.lookup(mesh, d)]
        for src in rule.sources:
            if src.kind == "service" and authz.lookup(mesh, src.name) is not None:
                origin = src.name
            elif src.kind == "ingress":
                origin = INGRESS_NODE
            else:
                continue
            for dest in dests:
                yield origin, dest, rule


def call_graph(mesh: Mesh) -> nx.DiGraph:
    """Services (and the ingress) as nodes; an edge where traffic may flow or is allowed.

    Edge attributes: `kinds` (sorted tuple of calls / expose / route / split / mirror / allow),
    `spans` (one per reason, same order as found), and `weight` / `percent` for splits and mirrors.
    Node attributes: `kind` (service, external, ingress) and `span`.
    """
    import networkx as nx  # for `meshc graph` only: the checks use plain dicts (import: 0.1 s)

    g = nx.DiGraph()
    for svc in mesh.services:
        g.add_node(svc.name, kind="external" if svc.external is not None else "service", span=svc.span)
    if any(s.expose is not None for s in mesh.services) or any(
            src.kind == "ingress" for r in mesh.rules for src in r.sources):
        g.add_node(INGRESS_NODE, kind="ingress", span=mesh.span)

    def add(u: str, v: str, kind: str, span: Span, extra: dict[str, object]) -> None:
        if g.has_edge(u, v):
            data = g.edges[u, v]
            if kind not in data["kinds"]:
                data["kinds"] = tuple(sorted((*data["kinds"], kind)))
            data["spans"] = (*data["spans"], span)
            # several rules route (or mirror) to one callee: each sends its own share of different
            # requests, so the edge says the largest, never their sum (10% + 100% is not 110%)
            for key, value in extra.items():
                data[key] = max(data.get(key, 0), value)  # type: ignore[call-overload]
        else:
            g.add_edge(u, v, kinds=(kind,), spans=(span,), **extra)

    for u, v, kind, span, extra in _traffic_edges(mesh):
        add(u, v, kind, span, extra)
    for u, v, rule in _allow_edges(mesh):
        add(u, v, "allow", rule.span, {})
    return g


TRAFFIC_KINDS = frozenset({"calls", "route", "split", "mirror"})


class _Traffic:
    """The service-to-service traffic graph as plain dicts (networkx costs more to build than
    every check below takes to run on it), with its strongly connected components."""

    def __init__(self, nodes: Iterable[str]):
        self.succ: dict[str, dict[str, bool]] = {n: {} for n in nodes}  # u -> v -> a declared call?
        self.pred: dict[str, list[str]] = {n: [] for n in self.succ}
        self.sccs: list[list[str]] = []  # in topological order: a component before those it reaches
        self.component: dict[str, int] = {}  # node -> its position in `sccs`

    def add_edge(self, u: str, v: str, calls: bool) -> None:
        out = self.succ[u]
        if v in out:
            out[v] = out[v] or calls
        else:
            out[v] = calls
            self.pred[v].append(u)

    def has_edge(self, u: str, v: str) -> bool:
        return v in self.succ[u]

    def find_components(self) -> None:
        """Tarjan's algorithm without recursion; it finds components sinks first."""
        succ = self.succ
        order: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        found: list[list[str]] = []
        for root in succ:
            if root in order:
                continue
            order[root] = low[root] = len(order)
            stack.append(root)
            on_stack.add(root)
            work = [(root, iter(succ[root]))]
            while work:
                v, edges = work[-1]
                for w in edges:
                    if w not in order:
                        order[w] = low[w] = len(order)
                        stack.append(w)
                        on_stack.add(w)
                        work.append((w, iter(succ[w])))
                        break
                    if w in on_stack and order[w] < low[v]:
                        low[v] = order[w]
                else:
                    work.pop()
                    if work:
                        parent = work[-1][0]
                        if low[v] < low[parent]:
                            low[parent] = low[v]
                    if low[v] == order[v]:
                        comp: list[str] = []
                        while True:
                            w = stack.pop()
                            on_stack.discard(w)
                            comp.append(w)
                            if w == v:
                                break
                        found.append(comp)
        self.sccs = found[::-1]
        self.component = {n: i for i, comp in enumerate(self.sccs) for n in comp}


_Cache = dict[int, tuple["weakref.ref[Mesh]", object]]
_GRAPHS: _Cache = {}
_FACTS: _Cache = {}


def _per_model(cache: _Cache, mesh: Mesh, build: Callable[[Mesh], object]) -> object:
    """`build(mesh)`, computed once per model object and dropped with it."""
    hit = cache.get(id(mesh))
    if hit is not None and hit[0]() is mesh:
        return hit[1]
    value = build(mesh)
    key = id(mesh)
    cache[key] = (weakref.ref(mesh), value)
    weakref.finalize(mesh, cache.pop, key, None)
    return value


def _traffic_graph(mesh: Mesh) -> _Traffic:
    """Service-to-service traffic only (no ingress, no allow-only edges); built once per model
    (amplification and cycles share it). Edge value: a declared call (multiplies)."""
    g = _per_model(_GRAPHS, mesh, _build_traffic_graph)
    assert isinstance(g, _Traffic)
    return g


def _build_traffic_graph(mesh: Mesh) -> _Traffic:
    """The edges of `_traffic_edges` of a TRAFFIC_KIND, in the same order, without making the
    spans and attributes nobody reads here."""
    g = _Traffic(s.name for s in mesh.services)
    known = authz.index(mesh).services
    for svc in mesh.services:
        name = svc.name
        for callee in dict.fromkeys(svc.calls):
            if callee in known:
                g.add_edge(name, callee, True)
        for rule in svc.routes:
            for d in rule.destinations:
                if d.service != name and d.service in known:
                    g.add_edge(name, d.service, False)
            if rule.mirror is not None:
                target = rule.mirror.destination.service
                if target != name and target in known:
                    g.add_edge(name, target, False)
    g.find_components()
    return g


@dataclass(frozen=True)
class _Facts:
    """Per-service values several checks need, computed once per model."""

    attempts: dict[str, tuple[float, Retry | None]]  # attempts_into(svc)
    settings: dict[str, list[_Setting]]  # _settings(mesh, svc)


def _facts(mesh: Mesh) -> _Facts:
    facts = _per_model(_FACTS, mesh, lambda m: _Facts(
        {s.name: attempts_into(s) for s in m.services}, {s.name: _settings(m, s) for s in m.services}))
    assert isinstance(facts, _Facts)
    return facts


# --------------------------------------------------------------------------- amplification


class _Chain:
    """A path as a cons list, so that 10k services share their prefixes instead of copying.
    (A plain slotted class: a frozen dataclass costs 3x as much to make.)"""

    __slots__ = ("node", "factor", "prev")

    def __init__(self, node: str, factor: float, prev: _Chain | None):
        self.node = node
        self.factor = factor
        self.prev = prev

    def nodes(self) -> tuple[str, ...]:
        return tuple(c.node for c in self._walk())[::-1]

    def factors(self) -> tuple[float, ...]:
        return tuple(c.factor for c in self._walk())[::-1]

    def _walk(self) -> Iterator[_Chain]:
        c: _Chain | None = self
        while c is not None:
            yield c
            c = c.prev


def _amplify(mesh: Mesh, g: _Traffic) -> dict[str, tuple[float, _Chain]]:
    """Worst-case attempts reaching each service for one client request, with the path.

    A `calls` hop multiplies by the callee's attempts; a route or mirror hop to another service
    carries the attempts already made (the caller's sidecar sends them straight on). Over the
    condensation DAG this is a longest-product DP in topological order; inside a cycle the
    relaxation only extends simple paths (each service at most once), so it terminates.
    """
    attempts = _facts(mesh).attempts
    factor = {name: attempts[name][0] for name in g.succ}
    best: dict[str, tuple[float, _Chain]] = {}
    members = g.component  # node -> scc id
    for scc, component in enumerate(g.sccs):
        nodes = sorted(component)
        for v in nodes:
            best[v] = (factor[v], _Chain(v, factor[v], None))
        # entries from earlier components (already final)
        for v in nodes:
            for u in sorted(g.pred[v]):
                if members[u] == scc:
                    continue
                _relax(best, g, factor, u, v)
        if len(nodes) > 1 or g.has_edge(nodes[0], nodes[0]):
            scc_set = set(nodes)
            if len(nodes) <= EXACT_CYCLE_SIZE:
                _exact_in_scc(best, g, factor, nodes, scc_set)
                continue
            # A handful of rounds: enough for rings and chains of cycles, and linear however
            # large the component (a big cycle is W210's finding; this is its lower bound).
            for _ in range(GREEDY_ROUNDS):
                changed = False
                for u in nodes:
                    for v in sorted(g.succ[u]):
                        if v in scc_set and not _on_chain(best[u][1], v, scc_set):
                            changed |= _relax(best, g, factor, u, v)
                if not changed:
                    break
    return best


def _exact_in_scc(best: dict[str, tuple[float, _Chain]], g: _Traffic, factor: dict[str, float],
                  nodes: list[str], scc: set[str]) -> None:
    """Every simple path inside a small component, from each node's best entry."""
    starts = {v: best[v] for v in nodes}

    def walk(u: str, value: float, chain: _Chain, seen: frozenset[str]) -> None:
        for v in sorted(g.succ[u]):
            if v not in scc or v in seen:
                continue
            f = factor[v] if g.succ[u][v] else 1
            link = _Chain(v, f, chain)
            if value * f > best[v][0]:
                best[v] = (value * f, link)
            walk(v, value * f, link, seen | {v})

    for s in nodes:
        walk(s, starts[s][0], starts[s][1], frozenset({s}))


def _relax(best: dict[str, tuple[float, _Chain]], g: _Traffic, factor: dict[str, float], u: str, v: str) -> bool:
    f = factor[v] if g.succ[u][v] else 1
    value = best[u][0] * f
    if value > best[v][0]:
        best[v] = (value, _Chain(v, f, best[u][1]))
        return True
    return False


def _on_chain(chain: _Chain, node: str, scc: set[str]) -> bool:
    """Is `node` already on the part of the chain inside this component? Past CHAIN_LOOKBACK
    steps the answer is "yes" (the path is not extended), which keeps each test O(1)."""
    c: _Chain | None = chain
    steps = 0
    while c is not None and c.node in scc:
        if c.node == node or steps >= CHAIN_LOOKBACK:
            return True
        c = c.prev
        steps += 1
    return False


def amplification(mesh: Mesh) -> dict[str, tuple[float, tuple[str, ...]]]:
    """For each service: the worst-case number of attempts reaching it over any call path
    (the product of total attempts per hop) and that path, first service first."""
    best = _amplify(mesh, _traffic_graph(mesh))
    return {name: (value, chain.nodes()) for name, (value, chain) in sorted(best.items())}


def describe_path(chain_nodes: tuple[str, ...], factors: tuple[float, ...], total: float) -> str:
    """`a -> b -> c (4x3x2 = 24 attempts)`; very long paths keep their ends."""
    shown = list(chain_nodes)
    nums = [fmt_attempts(f) for f in factors]
    if len(shown) > 12:
        shown = shown[:5] + ["..."] + shown[-5:]
        nums = nums[:5] + ["..."] + nums[-5:]
    return f"{' -> '.join(shown)} ({'x'.join(nums)} = {fmt_attempts(total)} attempts)"


# --------------------------------------------------------------------------- checks

Check = Callable[[Mesh], Iterable[Diagnostic]]


def check_split_weights(mesh: Mesh) -> Iterator[Diagnostic]:
    """E201."""
    for svc in mesh.services:
        for rule in svc.routes:
            if len(rule.destinations) < 1:
                continue
            total = sum(d.weight for d in rule.destinations)
            if total != FULL:
                yield Diagnostic(
                    "E201", f"split weights of '{svc.name}' add up to {fmt_percent(total)}, not 100%",
                    rule.span, label=f"sums to {fmt_percent(total)}",
                    help="make the weights add up to exactly 100%" + (
                        f" (e.g. give the last destination {fmt_percent(FULL - total + rule.destinations[-1].weight)})"
                        if FULL - total + rule.destinations[-1].weight > 0 else ""))


def _is_catch_all(rule: RouteRule) -> bool:
    return not rule.matches or any(_match_is_empty(m) for m in rule.matches)


def _match_is_empty(m: Match) -> bool:
    """A match every request satisfies: no conditions, or only a path matching every path."""
    universal = m.path is None or (m.path.kind == "prefix" and m.path.value in ("", "/")) or (
        m.path.kind == "under" and m.path.value.rstrip("/") == "")
    return universal and not m.headers and not m.query and not m.methods


def check_route_default(mesh: Mesh) -> Iterator[Diagnostic]:
    """W202."""
    for svc in mesh.services:
        if svc.routes and not any(_is_catch_all(r) for r in svc.routes):
            last = svc.routes[-1]
            yield Diagnostic(
                "W202", f"route table of '{svc.name}' has no `otherwise`: requests no rule matches get 404",
                last.span, label="last rule; nothing catches the rest",
                help="add `otherwise -> <version>` as the last rule (or `otherwise -> respond 404` to say so)")


# -- shadowing: does every request that matches `later` also match `earlier`?


def path_covers(a: PathMatch, b: PathMatch) -> bool:
    """Every path matched by `b` is matched by `a`."""
    if a.kind == "regex":
        if b.kind == "regex":
            return a.value == b.value
        rx = authz._regex(a.value)
        return b.kind == "exact" and rx is not None and rx.fullmatch(b.value) is not None
    if b.kind == "regex":  # only a match-everything path covers an arbitrary regex
        return a.kind == "prefix" and a.value in ("", "/") or a.kind == "under" and a.value.rstrip("/") == ""
    if a.kind == "exact":
        return b.kind == "exact" and b.value == a.value
    if a.kind == "prefix":
        if b.kind in ("exact", "prefix"):
            return b.value.startswith(a.value)
        return b.value.rstrip("/").startswith(a.value)  # b under: b's base and everything below
    base = a.value.rstrip("/")  # a under
    if b.kind == "exact":
        return authz.path_matches(a, b.value)
    if b.kind == "prefix":
        return base == "" or b.value.startswith(base + "/")
    b_base = b.value.rstrip("/")
    return base == "" or b_base == base or b_base.startswith(base + "/")


def _string_implies(b: StringMatch, a: StringMatch) -> bool:
    """Does condition `b` (on the same name) imply condition `a`?"""
    if a.kind == "absent" or b.kind == "absent":
        return a.kind == b.kind
    if a.kind == "present":
        return True
    if b.kind == "present":
        return False
    if a.kind == "exact":
        return b.kind == "exact" and b.value == a.value
    if a.kind == "prefix":
        return b.kind in ("exact", "prefix") and b.value.startswith(a.value)
    if b.kind == "regex":
        return b.value == a.value
    rx = authz._regex(a.value)
    return b.kind == "exact" and rx is not None and rx.fullmatch(b.value) is not None


def _conds_covered(a: tuple[StringMatch, ...], b: tuple[StringMatch, ...], fold: bool) -> bool:
    """Is every condition of `a` implied by one of `b` on the same name? (`fold`: names are
    case-insensitive, as header names; query parameter names are not.)"""
    def key(m: StringMatch) -> str:
        return m.name.lower() if fold else m.name

    return all(any(key(x) == key(y) and _string_implies(y, x) for y in b) for x in a)


def match_covers(a: Match, b: Match) -> bool:
    """Every request satisfying `b` satisfies `a` (conservative: False when unsure)."""
    if a.path is not None and (b.path is None or not path_covers(a.path, b.path)):
        return False
    if a.methods and (not b.methods or not {m.upper() for m in b.methods} <= {m.upper() for m in a.methods}):
        return False
    return _conds_covered(a.headers, b.headers, True) and _conds_covered(a.query, b.query, False)


def rule_covers(earlier: RouteRule, later: RouteRule, catch_all: bool | None = None) -> bool:
    """Whether `earlier` matches every request `later` does; `catch_all`: `_is_catch_all(earlier)`
    if the caller knows it already."""
    if _is_catch_all(earlier) if catch_all is None else catch_all:
        return True
    if not later.matches:
        return False
    return all(any(match_covers(a, b) for a in earlier.matches) for b in later.matches)


def _describe_rule(rule: RouteRule, index: int) -> str:
    what = "`otherwise`" if not rule.matches else (
        "the unconditional rule" if _is_catch_all(rule) else "the earlier rule")
    return f"{what} at line {rule.span.line}" if rule.span.line else f"{what} (rule {index + 1})"


SMALL_TABLE = 32  # route tables up to this size compare every pair; larger ones use an index


def _shadowers(rules: tuple[RouteRule, ...]) -> Iterator[tuple[int, int]]:
    """(j, i): rule j can never match because earlier rule i covers it (the first such i)."""
    if len(rules) <= SMALL_TABLE:
        catch_all = [_is_catch_all(r) for r in rules]  # once per rule, not once per pair
        for j in range(1, len(rules)):
            i = next((i for i in range(j) if rule_covers(rules[i], rules[j], catch_all[i])), None)
            if i is not None:
                yield j, i
        return
    # Large tables (API gateways with thousands of paths): an earlier match with a literal path
    # can only cover a later one whose path starts with it, so index earlier matches by their
    # literal and look up the later path's prefixes. Matches without a literal path (headers
    # only, regex, match-everything) are candidates for every later rule.
    by_literal: dict[str, list[int]] = {}
    generic: list[int] = []
    for j, rule in enumerate(rules):
        if j:
            first = rule.matches[0] if rule.matches else None
            cands = set(generic)
            if first is not None and first.path is not None and first.path.kind != "regex":
                v = first.path.value
                for k in range(len(v) + 1):
                    cands.update(by_literal.get(v[:k], ()))
            i = next((i for i in sorted(cands) if rule_covers(rules[i], rule)), None)
            if i is not None:
                yield j, i
        for m in rule.matches or (Match(),):
            literal = m.path is not None and m.path.kind != "regex" and not _match_is_empty(m)
            if literal:
                assert m.path is not None
                key = m.path.value.rstrip("/") if m.path.kind == "under" else m.path.value
                by_literal.setdefault(key, []).append(j)
            else:
                generic.append(j)


def check_shadowed_routes(mesh: Mesh) -> Iterator[Diagnostic]:
    """W203."""
    for svc in mesh.services:
        rules = svc.routes
        for j, i in _shadowers(rules):
            yield Diagnostic(
                "W203", f"route rule of '{svc.name}' can never match: {_describe_rule(rules[i], i)} "
                "matches every request it would",
                rules[j].span, label="unreachable rule",
                help="move this rule above the broader one, or narrow the earlier rule")


def _declared_callers(mesh: Mesh) -> dict[str, list[str]]:
    callers: dict[str, list[str]] = {}
    for svc in mesh.services:
        for callee in dict.fromkeys(svc.calls):
            callers.setdefault(callee, []).append(svc.name)
        if svc.expose is not None:
            callers.setdefault(svc.name, []).append(authz.INGRESS)
    return callers


def _refusal(mesh: Mesh, source: str, dest: str) -> str | None:
    """Why `source` can never reach `dest`, or None if some request gets through."""
    if authz.reachable(mesh, source, dest):
        return None
    svc = authz.lookup(mesh, dest)
    assert svc is not None
    modes = {p.mtls for p in svc.ports} or {svc.mtls}
    if svc.external is None and "strict" not in modes:
        d = authz.decide(mesh, source, dest, port=svc.ports[0].number if svc.ports else None)
        if d.rule is not None and d.rule.action == "allow":
            return d.reason
    denies, _ = authz.index(mesh).rules_for(dest)
    caller = authz.Caller(source, authz.identity_of(mesh, source))
    for rule in denies:
        if authz.rule_source_matches(mesh, rule, caller) and not authz.is_constrained(rule) and not rule.ports:
            return f"denied by the rule at {rule.span}"
    return f"no allow rule admits it under {mesh.authz}"


def _dead_help(why: str, source: str, dest: str, alternative: str) -> str:
    if why.startswith("identity cannot be proven"):
        return f"set `mtls strict` on '{dest}' (or the port) so that the identity of '{source}' can be proven"
    if why.startswith("denied"):
        return f"narrow the deny rule, or {alternative}"
    return f"add `allow {source} -> {dest}` (narrowed as needed), or {alternative}"


def check_dead_traffic(mesh: Mesh) -> Iterator[Diagnostic]:
    """W204: declared calls, exposures, cross-service routes and mirrors that authz refuses."""
    known = authz.index(mesh).services
    for svc in mesh.services:
        for callee, span in _calls(svc):
            if callee not in known:
                continue
            why = _refusal(mesh, svc.name, callee)
            if why:
                yield Diagnostic(
                    "W204", f"'{svc.name}' calls '{callee}', but '{callee}' refuses every request from it ({why})",
                    span, label=f"calls {callee}: dead traffic",
                    help=_dead_help(why, svc.name, callee, "drop the call"))
        if svc.expose is not None:
            why = _refusal(mesh, authz.INGRESS, svc.name)
            if why:
                yield Diagnostic(
                    "W204", f"'{svc.name}' is exposed on the ingress, but refuses every request from it ({why})",
                    svc.expose.span, label="exposed, but ingress is denied",
                    help=_dead_help(why, authz.INGRESS, svc.name, "stop exposing it"))
    callers = _declared_callers(mesh)
    refusals: dict[tuple[str, str], str | None] = {}  # a routing service's callers repeat per rule
    for svc in mesh.services:
        if not svc.routes or svc.name not in callers:
            continue
        for rule in svc.routes:
            targets = [(d.service, d.span, "routes") for d in rule.destinations if d.service != svc.name]
            if rule.mirror is not None and rule.mirror.destination.service != svc.name:
                targets.append((rule.mirror.destination.service, rule.mirror.span, "mirrors"))
            for target, span, verb in targets:
                if target not in known:
                    continue
                for caller in callers[svc.name]:
                    pair = (caller, target)
                    if pair not in refusals:
                        refusals[pair] = _refusal(mesh, caller, target)
                    why = refusals[pair]
                    if why:
                        yield Diagnostic(
                            "W204", f"'{svc.name}' {verb} requests from its caller '{caller}' to '{target}', "
                            f"which refuses them ({why})",
                            span, label=f"dead traffic for {caller}",
                            help=_dead_help(why, caller, target, "route elsewhere") +
                            " (routed requests keep the caller's identity)")


def check_amplification(mesh: Mesh, limit: int = DEFAULT_AMPLIFICATION_LIMIT) -> Iterator[Diagnostic]:
    """W205."""
    best = _amplify(mesh, _traffic_graph(mesh))
    attempts = _facts(mesh).attempts
    for svc in mesh.services:
        value, chain = best[svc.name]
        if value <= limit:
            continue
        own, retry = attempts[svc.name]
        span = retry.span if retry is not None and chain.factor > 1 else svc.span
        yield Diagnostic(
            "W205", f"retry amplification: one request may become {fmt_attempts(value)} attempts at '{svc.name}': "
                    f"{describe_path(chain.nodes(), chain.factors(), value)}",
            span, label=f"{fmt_attempts(value)} attempts > {limit}",
            help="retry at one layer only (usually the edge), lower retry counts, or add a retry budget")


@dataclass(frozen=True)
class _Setting:
    """The (timeout, retry) a request to a service may run under, and whether the timeout is
    the service's own choice (rule, service or policy) rather than the inherited mesh default."""

    timeout: Timeout | None
    retry: Retry | None
    own_timeout: bool


def _same(a: Timeout, b: Timeout | None) -> bool:
    """The same timeout node (value and where written); cheaper than pydantic's deep __eq__."""
    return b is not None and (a is b or (a.ms == b.ms and a.span.line == b.span.line
                                         and a.span.column == b.span.column and a.span.file == b.span.file))


def _settings(mesh: Mesh, svc: Service) -> list[_Setting]:
    """The distinct settings over `svc`'s forwarding rules (most rules share the service's)."""
    out: dict[tuple[int, int], _Setting] = {}
    res = svc.resilience
    service_own = res.timeout is not None and not _same(res.timeout, mesh.timeout)
    service_timeout = _effective_timeout(mesh, svc, None)
    for rule in _rule_slots(svc):
        if rule is None or (rule.timeout is None and rule.retry is None):
            timeout, retry = service_timeout, res.retry  # the usual case: the rule sets neither
        else:
            timeout, retry = _effective_timeout(mesh, svc, rule), _effective_retry(svc, rule)
        key = (id(timeout), id(retry))
        if key not in out:
            # The resolver copies the mesh default into the service; same span and value = inherited.
            own = (rule is not None and rule.timeout is not None) or service_own
            out[key] = _Setting(timeout, retry, own)
    return list(out.values())


def _worst_case(mesh: Mesh, svc: Service, settings: list[_Setting] | None = None) -> tuple[int, str, Span] | None:
    """The longest a request to `svc` can take (bounded settings only), how, and where set.

    Only settings the callee chose count: its retries, or its own (rule, service or policy)
    timeout. A callee that merely inherits the mesh default and does not retry is cut by the
    caller's shorter timeout as intended, so it is not a finding.
    """
    if not svc.is_http:
        return None  # request timeouts and retries do not apply to TCP/TLS ports
    worst: tuple[int, str, Span] | None = None
    for st in _settings(mesh, svc) if settings is None else settings:
        timeout, retry = st.timeout, st.retry
        if not st.own_timeout and (retry is None or retry.attempts == 0):
            continue
        candidates: list[tuple[int, str, Span]] = []
        if timeout is not None and timeout.ms is not None:
            candidates.append((timeout.ms, f"timeout {fmt_ms(timeout.ms)}", timeout.span))
        if retry is not None and retry.per_try_ms is not None:
            total = retry.per_try_ms * retry.total_attempts + backoff_ms(retry)
            candidates.append((total, f"{retry.total_attempts} attempts x per_try {fmt_ms(retry.per_try_ms)}"
                                      f" + backoff {fmt_ms(backoff_ms(retry))}", retry.span))
        if candidates:
            shortest = min(candidates, key=lambda c: c[0])
            if worst is None or shortest[0] > worst[0]:
                worst = shortest
    return worst


def _budget(settings: list[_Setting]) -> Timeout | None:
    """The timeout bounding every request a service serves (the largest), if all are bounded."""
    found: Timeout | None = None
    for st in settings:
        t = st.timeout
        if t is None or t.ms is None:
            return None
        if found is None or t.ms > (found.ms or 0):
            found = t
    return found


def check_timeouts(mesh: Mesh) -> Iterator[Diagnostic]:
    """W206 (caller budget below callee worst case) and E212 (per_try >= timeout)."""
    worst_cache: dict[str, tuple[int, str, Span] | None] = {}
    known = authz.index(mesh).services
    settings = _facts(mesh).settings
    for svc in mesh.services:
        budget = _budget(settings[svc.name]) if svc.is_http and svc.calls else None
        if budget is None or budget.ms is None:
            continue
        for callee in dict.fromkeys(svc.calls):
            target = known.get(callee)
            if target is None:
                continue
            if callee not in worst_cache:
                worst_cache[callee] = _worst_case(mesh, target, settings[callee])
            worst = worst_cache[callee]
            if worst is None or worst[0] <= budget.ms:
                continue
            yield Diagnostic(
                "W206", f"'{svc.name}' times out after {fmt_ms(budget.ms)}, but its call to '{callee}' may take "
                        f"{fmt_ms(worst[0])} ({worst[1]})",
                budget.span if budget.span.line else svc.span,
                label=f"shorter than the {fmt_ms(worst[0])} '{callee}' may take",
                help=f"raise this timeout above {fmt_ms(worst[0])}, or lower the timeout or retries of '{callee}'")
    seen: set[tuple[int, int]] = set()
    for svc in mesh.services:
        for st in settings[svc.name]:
            retry, timeout = st.retry, st.timeout
            if retry is None or retry.per_try_ms is None or timeout is None or timeout.ms is None:
                continue
            if retry.per_try_ms < timeout.ms or (id(retry), id(timeout)) in seen:
                continue
            seen.add((id(retry), id(timeout)))
            yield Diagnostic(
                "E212", f"per-try timeout {fmt_ms(retry.per_try_ms)} of '{svc.name}' is not shorter than its "
                        f"request timeout {fmt_ms(timeout.ms)}: retries can never run",
                retry.span, label=f"per_try {fmt_ms(retry.per_try_ms)} >= timeout {fmt_ms(timeout.ms)}",
                help=f"make per_try shorter than {fmt_ms(timeout.ms)} (e.g. timeout / attempts), or raise the timeout")


def _weak_mtls(svc: Service) -> list[str]:
    """Where identities cannot be proven on `svc`: 'service X' or 'port http-80'."""
    if svc.external is not None:
        return []
    if svc.ports:
        return [f"port {p.name} ({p.mtls})" for p in svc.ports if p.mtls != "strict"]
    return [f"service mtls {svc.mtls}"] if svc.mtls != "strict" else []


def check_weak_identity(mesh: Mesh) -> Iterator[Diagnostic]:
    """W207."""
    # Usually every service is strict: find the weak ones once, then rules only look them up.
    weak_services = {svc.name: svc for svc in mesh.services if _weak_mtls(svc)}
    if not weak_services:
        return
    for rule in mesh.rules:
        if rule.action != "allow":
            continue
        named = [str(s) for s in rule.sources if authz.is_identity_based(s)]
        if not named:
            continue
        dests = list(weak_services.values()) if "*" in rule.destinations else [
            weak_services[d] for d in dict.fromkeys(rule.destinations) if d in weak_services]
        weak = [(svc.name, _weak_mtls(svc)) for svc in dests]
        weak = [(n, w) for n, w in weak if w]
        if rule.ports:
            weak = [(n, w) for n, w in weak if _ports_weak(mesh, n, rule.ports)]
        if not weak:
            continue
        shown = "; ".join(f"'{n}': {', '.join(w)}" for n, w in weak[:5]) + ("; ..." if len(weak) > 5 else "")
        yield Diagnostic(
            "W207", f"allow rule for {', '.join(named)} relies on an identity mTLS does not always prove ({shown})",
            rule.span, label="plaintext connections carry no identity",
            help="set `mtls strict` on the service or port (a permissive port also admits plaintext callers, "
                 "which only `*` / `unauthenticated` rules match; a disabled one proves no identity), or allow "
                 "`*` / `unauthenticated` explicitly if plaintext callers are intended")


def _ports_weak(mesh: Mesh, name: str, ports: tuple[int, ...]) -> bool:
    svc = authz.lookup(mesh, name)
    assert svc is not None
    if not svc.ports:
        return svc.mtls != "strict"
    return any(p.number in ports and p.mtls != "strict" for p in svc.ports) or not any(
        p.number in ports for p in svc.ports) and svc.mtls != "strict"


def _bypass(rule: AuthzRule) -> str | None:
    """How a raw, unnormalized path gets around this rule, or None if it cannot."""
    def literal(m: PathMatch) -> str:
        return m.value if m.kind != "regex" else "/admin"

    if rule.action == "deny" and rule.paths:
        v = literal(rule.paths[0])
        return f"deny rule matches paths: '/{v}' or '/x/..{v}' is not denied"
    if rule.not_paths:
        v = literal(rule.not_paths[0])
        if rule.action == "deny":
            return f"deny rule excepts paths: '{v.rstrip('/')}/../admin' is excepted from it"
        return f"allow rule excepts paths: '/{v}' or '/x/..{v}' is not excepted"
    widening = [m for m in rule.paths if m.kind != "exact"]
    if rule.action == "allow" and widening:
        v = literal(widening[0])
        return f"allow rule matches paths by {widening[0].kind}: '{v.rstrip('/')}/../admin' is allowed"
    return None


def check_path_normalization(mesh: Mesh) -> Iterator[Diagnostic]:
    """W208: path-based rules that raw paths get around when normalization is off."""
    if mesh.path_normalization != "off":
        return
    for rule in mesh.rules:
        how = _bypass(rule)
        if how is None:
            continue
        yield Diagnostic(
            "W208", f"{how} (`path_normalization off`)",
            rule.span, label="bypassable without path normalization",
            help="set `path_normalization strict` in the mesh block (decode, resolve dot segments, "
                 "merge slashes, reject encoded slashes before authorization)")


def _outsiders(mesh: Mesh, allows: list[AuthzRule]) -> Iterator[Identity]:
    """Identities of workloads the model does not declare that allow rules still admit:
    `identity NAME` (a service account, e.g. a batch job) and `authenticated` (any mTLS peer)."""
    for rule in allows:
        for src in rule.sources:
            if src.kind == "identity":
                ns, _, name = src.name.rpartition("/")
                yield Identity(name=name, namespace=ns or mesh.namespace, trust_domain=mesh.trust_domain)
            elif src.kind == "authenticated":
                yield Identity(name="any-peer", namespace=mesh.namespace, trust_domain=mesh.trust_domain)


def check_unreachable(mesh: Mesh) -> Iterator[Diagnostic]:
    """W209: nobody may call it (authorization) and it is not exposed."""
    idx = authz.index(mesh)
    for svc in mesh.services:
        if svc.expose is not None:
            continue
        _, allows = idx.rules_for(svc.name)
        if mesh.authz == "deny_by_default" and not allows:
            reachable = False
        else:
            reachable = any(
                authz.reachable(mesh, None if src == authz.UNAUTHENTICATED else src, svc.name)
                for src in authz.representative_callers(mesh, svc.name)) or any(
                authz.reachable_by_identity(mesh, ident, svc.name) for ident in _outsiders(mesh, allows))
        if not reachable:
            yield Diagnostic(
                "W209", f"service '{svc.name}' is unreachable: no caller may call it and it is not exposed",
                svc.span, label="nobody may call this",
                help=f"add an allow rule for its callers (`allow <caller> -> {svc.name}`), expose it, "
                     "or remove it")


def check_cycles(mesh: Mesh) -> Iterator[Diagnostic]:
    """W210: one warning per strongly connected component of the traffic graph."""
    g = _traffic_graph(mesh)
    known = authz.index(mesh).services

    def position(name: str) -> tuple[str, int, int, str]:
        span = known[name].span
        return (span.file, span.line, span.column, name)

    for scc in g.sccs:
        first = min(scc, key=position)  # start the loop where the reader meets it first
        if len(scc) == 1 and not g.has_edge(first, first):
            continue
        cycle = _a_cycle(g, first, set(scc))
        svc = authz.lookup(mesh, first)
        assert svc is not None
        yield Diagnostic(
            "W210", f"call cycle: {' -> '.join(cycle)}", svc.span, label="part of a call cycle",
            help="break the cycle (a request can loop until timeouts fire, and retries multiply on each turn)")


def _a_cycle(g: _Traffic, start: str, scc: set[str]) -> list[str]:
    """A shortest cycle through `start` inside its component (BFS, deterministic)."""
    if g.has_edge(start, start):
        return [start, start]
    parent: dict[str, str] = {start: start}
    queue = [start]
    for u in queue:
        for v in sorted(g.succ[u]):
            if v not in scc:
                continue
            if v == start:
                path = [u]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return path[::-1] + [start]
            if v not in parent:
                parent[v] = u
                queue.append(v)
    return [start]


_LOOPBACK = {"localhost": "127.0.0.1", "::1": "127.0.0.1", "ip6-localhost": "127.0.0.1"}


# Dotted-quad IPv4 as ipaddress accepts it (0-255, no leading zeros): the common case, without
# ipaddress's per-octet parsing. Anything else still goes through ipaddress.
_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")


def _is_bound_address(host: str) -> bool:
    """IP literals and localhost name one listening socket; a DNS name may front several
    services legitimately (a shared database server, a load balancer), so it is not checked."""
    if host.lower() in _LOOPBACK:
        return True
    if not (host[:1].isdigit() or ":" in host):
        return False  # a DNS name (IP literals start with a digit; IPv6 ones contain ':')
    if _IPV4.fullmatch(host):
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def check_port_collisions(mesh: Mesh) -> Iterator[Diagnostic]:
    """E211: one host:port, two owners (services, or versions of one service)."""
    owner: dict[tuple[str, int], tuple[str, str | None, Span, Endpoint]] = {}
    for svc in mesh.services:
        shared = {(_LOOPBACK.get(e.host.lower(), e.host.lower()), e.port) for e in svc.endpoints}
        places = [(None, e) for e in svc.endpoints] + [(v.name, e) for v in svc.versions for e in v.endpoints]
        for version, ep in places:
            if not _is_bound_address(ep.host):
                continue
            key = (_LOOPBACK.get(ep.host.lower(), ep.host.lower()), ep.port)
            prev = owner.get(key)
            if prev is None:
                owner[key] = (svc.name, version, ep.span, ep)
                continue
            same_service = prev[0] == svc.name
            # A version listing one of its own service's shared endpoints is a subset, not a clash.
            if same_service and (version is None or prev[1] is None or prev[1] == version) and (
                    key in shared or prev[1] == version):
                continue
            who = prev[0] + (f" version {prev[1]}" if prev[1] else "")
            me = svc.name + (f" version {version}" if version else "")
            first = f" ({prev[3]})" if str(prev[3]) != str(ep) else ""
            yield Diagnostic(
                "E211", f"endpoint {ep} of {me} is already bound by {who}{first}",
                ep.span, label="port collision",
                help="give each service and version its own host:port" + (
                    f" (first bound at {prev[2]})" if prev[2].line else ""))


CHECKS: tuple[Check, ...] = (
    check_split_weights, check_route_default, check_shadowed_routes, check_dead_traffic,
    check_timeouts, check_weak_identity, check_path_normalization, check_unreachable,
    check_cycles, check_port_collisions,
)


# A mesh this large is checked in two halves on two cores when one is idle: the checks that
# ask authorization questions (about 45% of the time at 10,000 services) run in a forked
# child, which sees the model without copying it and sends back only its diagnostics.
PARALLEL_SERVICES = 2_000
CHILD_CHECKS: tuple[Check, ...] = (check_dead_traffic, check_unreachable)


def check(mesh: Mesh, *, amplification_limit: int = DEFAULT_AMPLIFICATION_LIMIT) -> list[Diagnostic]:
    """Every graph check; diagnostics sorted by position then code."""
    def run(checks: Iterable[Check]) -> list[Diagnostic]:
        return [d for fn in checks for d in fn(mesh)]

    with paused_gc():
        child = None
        if len(mesh.services) >= PARALLEL_SERVICES and parallel.idle_core():
            child = parallel.Forked(lambda: run(CHILD_CHECKS))
        out = run(fn for fn in CHECKS if child is None or fn not in CHILD_CHECKS)
        out.extend(check_amplification(mesh, amplification_limit))
        if child is not None:
            try:
                out.extend(child.result())
            except parallel.ChildFailed:  # do them here
                out.extend(run(CHILD_CHECKS))
        # a total order: the same list whichever process found what
        out.sort(key=lambda d: (*d.sort_key(), d.message, d.label, d.help, d.notes))
    return out


# --------------------------------------------------------------------------- rendering


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _edge_style(mesh: Mesh, u: str, v: str, data: dict[str, object],
                callers: dict[str, list[str]]) -> tuple[str, str]:
    """(style, label) for an edge: denied / partial / allowed / split / mirror / allow.

    A declared call or exposure is judged by the caller's own access; a route or mirror hop by
    the access of the routing service's callers (routed requests keep the caller's identity)."""
    kinds = data["kinds"]
    assert isinstance(kinds, tuple)
    traffic = [k for k in kinds if k != "allow"]
    if not traffic:
        return "allow", "may call"
    labels = []
    if "split" in kinds or "route" in kinds:
        labels.append(f"route {fmt_percent(int(data.get('weight', FULL)))}")  # type: ignore[call-overload]
    if "mirror" in kinds:
        labels.append(f"mirror {fmt_percent(int(data.get('percent', FULL)))}")  # type: ignore[call-overload]
    if "calls" in kinds or "expose" in kinds:
        acc = authz.access(mesh, u if u != INGRESS_NODE else authz.INGRESS, v)
        if acc.level == "none":
            return "denied", ", ".join(labels + ["denied"])
        if acc.level == "partial":
            return "partial", ", ".join(labels + [_short(str(acc).removeprefix("partial: "))])
        return "allowed", ", ".join(labels)
    refused = [c for c in callers.get(u, []) if not authz.reachable(mesh, c, v)]
    if refused:
        return "denied", ", ".join(labels + [_short("denied for " + ", ".join(refused))])
    return ("split" if "split" in kinds or "route" in kinds else "mirror"), ", ".join(labels)


_DOT_STYLE = {
    "allowed": 'color="black"',
    "partial": 'color="darkgreen"',
    "denied": 'color="red", style="dashed", fontcolor="red"',
    "split": 'color="blue", fontcolor="blue"',
    "mirror": 'color="gray40", style="dotted"',
    "allow": 'color="gray70", style="dotted", arrowhead="empty"',
}
_DOT_NODE = {"service": "shape=ellipse", "external": 'shape=component, style="dashed"', "ingress": "shape=box"}


def _dq(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(mesh: Mesh) -> str:
    """Graphviz DOT of the call graph; edges coloured by authorization (denied: red dashed)."""
    g = call_graph(mesh)
    lines = [f"digraph {_dq(mesh.name)} {{", "  rankdir=LR;", '  node [fontname="Helvetica"];',
             '  edge [fontname="Helvetica", fontsize=10];']
    for n in sorted(g.nodes):
        lines.append(f"  {_dq(n)} [{_DOT_NODE[g.nodes[n]['kind']]}];")
    callers = _declared_callers(mesh)
    for u, v in sorted(g.edges):
        style, label = _edge_style(mesh, u, v, g.edges[u, v], callers)
        attrs = _DOT_STYLE[style] + (f", label={_dq(label)}" if label else "")
        lines.append(f"  {_dq(u)} -> {_dq(v)} [{attrs}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


_MERMAID_ARROW = {"allowed": "-->", "partial": "-->", "denied": "-.->", "split": "==>", "mirror": "-.->",
                  "allow": "-.->"}
_MERMAID_COLOR = {"denied": "red", "partial": "darkgreen", "split": "blue", "mirror": "gray", "allow": "lightgray"}


def _mermaid_text(s: str) -> str:
    return re.sub(r'["|<>]', "", s)


def to_mermaid(mesh: Mesh) -> str:
    """A Mermaid flowchart of the call graph, same styling as `to_dot`."""
    g = call_graph(mesh)
    ids = {n: f"n{i}" for i, n in enumerate(sorted(g.nodes))}
    shape = {"service": ('["', '"]'), "external": ('[/"', '"/]'), "ingress": ('(["', '"])')}
    lines = ["flowchart LR"]
    for n, i in ids.items():
        left, right = shape[g.nodes[n]["kind"]]
        lines.append(f"  {i}{left}{_mermaid_text(n)}{right}")
    link_styles = []
    callers = _declared_callers(mesh)
    for k, (u, v) in enumerate(sorted(g.edges)):
        style, label = _edge_style(mesh, u, v, g.edges[u, v], callers)
        arrow = _MERMAID_ARROW[style]
        lines.append(f"  {ids[u]} {arrow}{'|' + _mermaid_text(label) + '|' if label else ''} {ids[v]}")
        if style in _MERMAID_COLOR:
            link_styles.append(f"  linkStyle {k} stroke:{_MERMAID_COLOR[style]}")
    return "\n".join(lines + link_styles) + "\n"


# The text formats `meshc graph` writes (svg and png are drawn from dot by meshc.graph_image).
FORMATS: dict[str, Callable[[Mesh], str]] = {"dot": to_dot, "mermaid": to_mermaid}

__all__ = ["FORMATS", "amplification", "call_graph", "check", "to_dot", "to_mermaid"]
