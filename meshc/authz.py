"""The authorization semantics of a resolved mesh, as a pure evaluator.

One meaning, shared by the graph checks (dead traffic, W204), `meshc diff` and `meshc why`:

- Deny beats allow. Under `deny_by_default` a request no allow rule matches is refused (403);
  under `allow_by_default` it passes.
- Rules match the identity *proven by mTLS*, per connection. A meshed caller's sidecar speaks
  mTLS to every port whose mode is not `disabled`, so its identity is proven on strict and
  permissive ports alike. A plaintext caller (no sidecar: `unauthenticated`) presents no
  identity: a strict port refuses it outright, a permissive port admits it, and there only `*`
  and `unauthenticated` sources can match it (named deny rules do not stop it either). On a
  `disabled` port nobody speaks mTLS, so every caller is plaintext. This is what Envoy (a TLS
  and a plaintext filter chain under one RBAC), Istio, Linkerd and the native proxy do.
  External destinations are the exception: egress authorization runs in the caller's own
  sidecar, which knows the caller's identity without a handshake.
- Paths are normalized before matching when `path_normalization strict` (`normalize_path`);
  an encoded slash or a malformed escape is rejected (400) before any rule is consulted.
- `prefix` is a byte prefix, `under` a segment prefix, `exact` equality, `regex` a full match;
  header names are case-insensitive, values case-sensitive.
- A request attribute that is not given (`method=None`, `path=None`, ...) satisfies no
  constraint on it: `decide` answers for that concrete request. `matrix` summarises over all
  requests instead.

Public API: `decide` (one concrete request), `access` / `matrix` (summaries for `meshc diff`
and `meshc why`), `reachable` / `representative_callers` (cheap yes/no questions for the graph
checks), `normalize_path`, `path_matches`, `header_matches`, `render_path`, `render_header`.

Rules are indexed once per mesh (cached by object identity, dropped with the model) by
destination and, within one destination, by the caller identity they name, so a question
about one caller costs O(rules naming that caller + rules for everyone), never O(all rules).
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from meshc.model import AuthzRule, Identity, Mesh, PathMatch, Service, Source, StringMatch
from meshc.paths import normalize

INGRESS = "ingress"
UNAUTHENTICATED = "unauthenticated"  # the matrix's name for plaintext callers (source=None)

AccessLevel = Literal["none", "partial", "full"]

# --------------------------------------------------------------------------- paths



def normalize_path(raw: str) -> str | None:
    """The path authorization sees for a request target (query and fragment dropped), or None
    when the request must be rejected (400). See meshc.paths for the steps."""
    path = raw.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        return None
    return normalize(path)


@lru_cache(maxsize=4096)
def _regex(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None


def path_matches(m: PathMatch, path: str) -> bool:
    """Does `path` (already normalized if the mesh normalizes) satisfy the match?"""
    if m.kind == "exact":
        return path == m.value
    if m.kind == "prefix":
        return path.startswith(m.value)
    if m.kind == "under":
        base = m.value.rstrip("/")
        return path == base or path.startswith(base + "/") or base == ""
    rx = _regex(m.value)
    return rx is not None and rx.fullmatch(path) is not None


def header_matches(m: StringMatch, headers: Mapping[str, str]) -> bool:
    """`headers` keys must already be lower-cased."""
    value = headers.get(m.name.lower())
    if m.kind == "absent":
        return value is None
    if value is None:
        return False
    if m.kind == "present":
        return True
    if m.kind == "exact":
        return value == m.value
    if m.kind == "prefix":
        return value.startswith(m.value)
    rx = _regex(m.value)
    return rx is not None and rx.fullmatch(value) is not None


def render_path(m: PathMatch) -> str:
    return f"{m.kind} {json.dumps(m.value)}"


def render_header(m: StringMatch) -> str:
    if m.kind in ("present", "absent"):
        return f"{m.name} {m.kind}"
    op = {"exact": "==", "prefix": "prefix", "regex": "regex"}[m.kind]
    return f"{m.name} {op} {json.dumps(m.value)}"


# --------------------------------------------------------------------------- index


@dataclass(frozen=True)
class _Index:
    """Rules grouped once per mesh: (deny, allow) rules per destination, `*` kept apart."""

    by_dest: dict[str, tuple[list[AuthzRule], list[AuthzRule]]]
    wildcard: tuple[list[AuthzRule], list[AuthzRule]]
    by_spiffe: dict[str, list[str]]  # identity -> the services that run as it
    services: dict[str, Service]  # by name (Mesh.service goes through pydantic's slow __getattr__)
    spiffe_of: dict[str, str]  # service name -> its identity
    sources: dict[int, _RuleSources]  # id(rule) -> its sources, compiled
    order: dict[int, int] = field(default_factory=dict)  # id(rule) -> position in the source
    by_account: dict[str, list[str]] = field(default_factory=dict)  # "sa" and "ns/sa" -> services
    by_caller: dict[str, _ByCaller] = field(default_factory=dict)  # filled lazily per destination
    ingress_spiffe: str = ""  # the ingress gateway's identity
    slots: dict[str, list[tuple[int | None, str]]] = field(default_factory=dict)  # lazily: _port_slots
    callers: dict[tuple[str | None, bool], Caller] = field(default_factory=dict)  # (source, proven) -> Caller

    def candidates(self, dest: str, spiffe: str | None) -> tuple[list[AuthzRule], list[AuthzRule]]:
        """(denies, allows) of `dest` that can match a caller with this identity (None:
        plaintext), in source order."""
        split = self.for_caller(dest)
        return (_ByCaller.pick(split.denies, spiffe, self.order),
                _ByCaller.pick(split.allows, spiffe, self.order))

    def for_caller(self, dest: str) -> _ByCaller:
        """The rules of `dest` split by the caller identity they name, so that asking about one
        caller costs O(rules naming it + rules for everyone), not O(all rules of dest)."""
        hit = self.by_caller.get(dest)
        if hit is None:
            denies, allows = self.rules_for(dest)
            hit = self.by_caller[dest] = _ByCaller(_split(denies, self.sources), _split(allows, self.sources))
        return hit

    def rules_for(self, dest: str) -> tuple[list[AuthzRule], list[AuthzRule]]:
        """(denies, allows) that can apply to `dest`, in source order within each group."""
        own = self.by_dest.get(dest)
        if own is None:
            return self.wildcard
        if not self.wildcard[0] and not self.wildcard[1]:
            return own
        return own[0] + self.wildcard[0], own[1] + self.wildcard[1]


@dataclass(slots=True)
class _RuleSources:
    """A rule's sources folded into sets, so matching a caller is O(1) however many it names.
    (Not a frozen dataclass: index() makes one per rule, and frozen ones cost 2x to make.
    Never changed after it is made.)"""

    anyone: bool
    unauthenticated: bool
    authenticated: bool
    spiffes: frozenset[str]  # `service` sources (by their identity) and `ingress`
    identities: frozenset[str]  # `identity NAME` sources
    ports: frozenset[int]  # the rule's port list (empty: every port)
    constrained: bool  # narrowed by methods, paths or headers

    @classmethod
    def of(cls, mesh: Mesh, rule: AuthzRule, spiffe_of: Mapping[str, str],
           ingress_spiffe: str | None = None) -> _RuleSources:
        # One pass over the sources: index() compiles every rule of a 10k-service mesh.
        kinds: set[str] = set()
        spiffes: set[str] = set()
        identities: set[str] = set()
        for s in rule.sources:
            kind = s.kind
            kinds.add(kind)
            if kind == "service":
                spiffe = spiffe_of.get(s.name)
                if spiffe is not None:
                    spiffes.add(spiffe)
            elif kind == "identity":
                identities.add(s.name)
        if "ingress" in kinds:
            spiffes.add(ingress_spiffe if ingress_spiffe is not None else mesh.ingress_identity.spiffe)
        return cls("any" in kinds, "unauthenticated" in kinds, "authenticated" in kinds, frozenset(spiffes),
                   frozenset(identities), frozenset(rule.ports), is_constrained(rule))

    def on_port(self, number: int | None) -> bool:
        return not self.ports or number is None or number in self.ports

    def blocks(self, caller: Caller, trust_domain: str, number: int | None) -> bool:
        """As a deny rule: does it refuse this caller everything on this port?"""
        return self.whole(number) and self.on_port(number) and self.admit(caller, trust_domain)

    def whole(self, number: int | None) -> bool:
        """Covers every request on this port (see `_whole`)."""
        return not self.constrained and (not self.ports or number is not None)

    def admit(self, caller: Caller, trust_domain: str) -> bool:
        if self.anyone:
            return True
        ident = caller.identity
        if ident is None:
            return self.unauthenticated
        if self.authenticated and ident.trust_domain == trust_domain:
            return True
        if caller.spiffe in self.spiffes:
            return True
        return bool(self.identities) and (
            ident.name in self.identities or f"{ident.namespace}/{ident.name}" in self.identities)


_Split = tuple[list[AuthzRule], dict[str, list[AuthzRule]]]  # (rules for anyone-ish, by identity)


@dataclass(frozen=True)
class _ByCaller:
    denies: _Split
    allows: _Split

    @staticmethod
    def pick(split: _Split, spiffe: str | None, order: Mapping[int, int] | None = None) -> list[AuthzRule]:
        generic, named = split
        own = named.get(spiffe, []) if spiffe is not None else []
        if not own:
            return generic
        if not generic:
            return own
        both = generic + own
        return sorted(both, key=lambda r: order[id(r)]) if order is not None else both


def _split(rules: list[AuthzRule], compiled: Mapping[int, _RuleSources]) -> _Split:
    generic: list[AuthzRule] = []
    named: dict[str, list[AuthzRule]] = {}
    for r in rules:
        rs = compiled[id(r)]
        if rs.anyone or rs.unauthenticated or rs.authenticated or rs.identities:
            generic.append(r)
        for spiffe in rs.spiffes:
            named.setdefault(spiffe, []).append(r)
    return generic, named


_CACHE: dict[int, tuple[weakref.ref[Mesh], _Index]] = {}


def index(mesh: Mesh) -> _Index:
    """The rule index of `mesh`, built once per model object."""
    hit = _CACHE.get(id(mesh))
    if hit is not None and hit[0]() is mesh:
        return hit[1]
    by_dest: dict[str, tuple[list[AuthzRule], list[AuthzRule]]] = {}
    wildcard: tuple[list[AuthzRule], list[AuthzRule]] = ([], [])
    for rule in mesh.rules:
        slot = 0 if rule.action == "deny" else 1
        for dest in dict.fromkeys(rule.destinations):
            group = wildcard if dest == "*" else by_dest.setdefault(dest, ([], []))
            group[slot].append(rule)
    by_spiffe: dict[str, list[str]] = {}
    spiffe_of: dict[str, str] = {}
    by_account: dict[str, list[str]] = {}
    for svc in mesh.services:
        ident = svc.identity
        spiffe_of[svc.name] = spiffe = ident.spiffe
        by_spiffe.setdefault(spiffe, []).append(svc.name)
        for account in (ident.name, f"{ident.namespace}/{ident.name}"):
            by_account.setdefault(account, []).append(svc.name)
    ingress_spiffe = mesh.ingress_identity.spiffe
    compiled = {id(r): _RuleSources.of(mesh, r, spiffe_of, ingress_spiffe) for r in mesh.rules}
    idx = _Index(by_dest, wildcard, by_spiffe, {s.name: s for s in mesh.services}, spiffe_of, compiled,
                 {id(r): i for i, r in enumerate(mesh.rules)}, by_account, ingress_spiffe=ingress_spiffe)
    key = id(mesh)
    _CACHE[key] = (weakref.ref(mesh), idx)
    weakref.finalize(mesh, _CACHE.pop, key, None)
    return idx


def lookup(mesh: Mesh, name: str) -> Service | None:
    """`mesh.service(name)`, through the cached index (fast in hot loops)."""
    return index(mesh).services.get(name)


# --------------------------------------------------------------------------- callers


@dataclass(frozen=True)
class Caller:
    """Who the destination's sidecar sees: an identity it could prove, or plaintext."""

    name: str | None  # service name, "ingress", or None (unauthenticated)
    identity: Identity | None  # None: not proven (plaintext)
    spiffe: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.identity is not None and self.spiffe is None:
            object.__setattr__(self, "spiffe", self.identity.spiffe)


def identity_of(mesh: Mesh, source: str | None) -> Identity | None:
    if source is None or source == UNAUTHENTICATED:
        return None
    if source == INGRESS:
        return mesh.ingress_identity
    svc = lookup(mesh, source)
    if svc is None:
        raise ValueError(f"unknown source service '{source}'")
    return svc.identity


def source_matches(mesh: Mesh, src: Source, caller: Caller) -> bool:
    """Does the rule source admit this caller? Named sources need a proven identity."""
    kind = src.kind
    if kind == "any":
        return True
    if kind == "unauthenticated":
        return caller.identity is None
    ident = caller.identity
    if ident is None:
        return False
    if kind == "authenticated":
        return ident.trust_domain == mesh.trust_domain
    if kind == "ingress":
        return ident.spiffe == mesh.ingress_identity.spiffe
    if kind == "service":
        # Two services sharing a service account cannot be told apart by mTLS.
        return index(mesh).spiffe_of.get(src.name) == ident.spiffe
    # kind == "identity": a service account by name, optionally "namespace/name".
    return src.name in (ident.name, f"{ident.namespace}/{ident.name}")


def rule_source_matches(mesh: Mesh, rule: AuthzRule, caller: Caller) -> bool:
    """Does any source of the rule admit this caller? (Same as `source_matches`, compiled.)"""
    compiled = index(mesh).sources.get(id(rule))
    if compiled is None:  # a rule that is not part of this mesh
        return any(source_matches(mesh, s, caller) for s in rule.sources)
    return compiled.admit(caller, mesh.trust_domain)


def is_identity_based(src: Source) -> bool:
    """Sources that only match a caller whose identity mTLS proved."""
    return src.kind in ("service", "identity", "authenticated", "ingress")


def is_constrained(rule: AuthzRule) -> bool:
    """A rule narrowed by request attributes ("partial"), ports aside."""
    return bool(rule.methods or rule.paths or rule.not_paths or rule.headers)


# --------------------------------------------------------------------------- decide


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: AuthzRule | None  # the deciding rule; None when a default or the transport decided
    reason: str
    status: int = 200  # what the caller sees: 200 (forwarded), 403, 400 (path rejected), 0 (refused TLS)

    def __bool__(self) -> bool:
        return self.allowed


def _port_mode(svc: Service, port: int | None) -> tuple[str, str]:
    """(mtls mode, where it is set) for a request to `port` of `svc`."""
    if port is not None:
        for p in svc.ports:
            if p.number == port:
                return p.mtls, f"port {p.name} of {svc.name}"
    return svc.mtls, f"service {svc.name}"


def _proven(dest: Service, mode: str, ident: Identity | None) -> Identity | None:
    """The identity the destination's sidecar sees for a caller holding `ident` (None: plaintext).
    External destinations are checked in the caller's own sidecar, which knows its identity."""
    if dest.external is None and mode == "disabled":
        return None  # no TLS on the port: nobody's identity is proven
    return ident


def _request_matches(rule: AuthzRule, method: str | None, path: str | None, port: int | None,
                     headers: Mapping[str, str]) -> bool:
    if rule.ports and port not in rule.ports:
        return False
    if rule.methods and (method is None or method.upper() not in {m.upper() for m in rule.methods}):
        return False
    if rule.paths and (path is None or not any(path_matches(m, path) for m in rule.paths)):
        return False
    if rule.not_paths and path is not None and any(path_matches(m, path) for m in rule.not_paths):
        return False
    return all(header_matches(h, headers) for h in rule.headers)


def _service(mesh: Mesh, name: str) -> Service:
    svc = lookup(mesh, name)
    if svc is None:
        raise ValueError(f"unknown destination service '{name}'")
    return svc


def decide(mesh: Mesh, source: str | None, destination: str, *, method: str | None = None,
           path: str | None = None, port: int | None = None, headers: Mapping[str, str] | None = None,
           authenticated: bool = True) -> Decision:
    """Is this request from `source` to `destination` admitted, and by which rule?

    `source` is a service name (its identity), "ingress", or None for a plaintext caller;
    `authenticated=False` says the named caller speaks plaintext (no sidecar).
    Raises ValueError for a source or destination that is not in the mesh.
    """
    dest = _service(mesh, destination)
    ident = identity_of(mesh, source) if authenticated else None
    mode, where = _port_mode(dest, port)
    if dest.external is None and mode == "strict" and ident is None:
        return Decision(False, None, f"plaintext caller refused: {where} mtls is strict", 0)
    proven = _proven(dest, mode, ident)
    caller = Caller(source, proven)

    norm = path
    if path is not None:
        if mesh.path_normalization == "strict":
            norm = normalize_path(path)
            if norm is None:
                return Decision(False, None, f"path {path!r} rejected by normalization "
                                "(encoded slash or malformed escape)", 400)
        else:
            norm = path.split("?", 1)[0]
    hdrs = {k.lower(): v for k, v in (headers or {}).items()}

    idx = index(mesh)
    denies, allows = idx.candidates(destination, caller.spiffe)
    for rule in denies:
        if rule_source_matches(mesh, rule, caller) and _request_matches(rule, method, norm, port, hdrs):
            return Decision(False, rule, "denied by rule", 403)
    for rule in allows:
        if rule_source_matches(mesh, rule, caller) and _request_matches(rule, method, norm, port, hdrs):
            return Decision(True, rule, "allowed by rule")
    if mesh.authz == "allow_by_default":
        return Decision(True, None, "allow_by_default")
    if ident is not None and proven is None:
        would = Caller(source, ident)
        for rule in idx.candidates(destination, would.spiffe)[1]:
            if rule_source_matches(mesh, rule, would) and _request_matches(rule, method, norm, port, hdrs):
                return Decision(False, rule, f"identity cannot be proven: {where} mtls is {mode}", 403)
    return Decision(False, None, "no allow rule matches under deny_by_default", 403)


# --------------------------------------------------------------------------- matrix


@dataclass(frozen=True, order=True)
class Grant:
    """One way in (from an allow rule), or one carve-out (from a deny rule), as text."""

    methods: tuple[str, ...] = ()  # empty: any method
    paths: tuple[str, ...] = ()  # rendered path matches, e.g. 'prefix "/api"'; empty: any path
    not_paths: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()  # empty: every port
    headers: tuple[str, ...] = ()

    def __str__(self) -> str:
        parts = []
        if self.methods:
            parts.append("methods " + ", ".join(self.methods))
        if self.paths:
            parts.append("paths " + ", ".join(self.paths))
        if self.not_paths:
            parts.append("except paths " + ", ".join(self.not_paths))
        if self.ports:
            parts.append("ports " + ", ".join(map(str, self.ports)))
        if self.headers:
            parts.append("headers " + ", ".join(self.headers))
        return " ".join(parts) or "everything"


@dataclass(frozen=True)
class Access:
    """What one caller may do on one destination. Equality ignores the citing rules."""

    level: AccessLevel
    grants: tuple[Grant, ...] = ()  # partial: the allowed shapes (OR); empty under allow_by_default
    excepts: tuple[Grant, ...] = ()  # partial: deny carve-outs (deny beats allow)
    rules: tuple[AuthzRule, ...] = field(default=(), compare=False)  # allow rules granting access
    denies: tuple[AuthzRule, ...] = field(default=(), compare=False)  # deny rules narrowing it

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(sorted({m for g in self.grants for m in g.methods}))

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(sorted({p for g in self.grants for p in g.paths}))

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(sorted({p for g in self.grants for p in g.ports}))

    def __str__(self) -> str:
        if self.level != "partial":
            return self.level
        text = "partial: " + (" | ".join(map(str, self.grants)) or "everything")
        if self.excepts:
            text += " except " + " | ".join(map(str, self.excepts))
        return text


NO_ACCESS = Access("none")


def _whole(rule: AuthzRule, number: int | None) -> bool:
    """Does the rule cover every request on this port? (A port list on a service that
    declares no ports cannot be checked, so it narrows.)"""
    return not is_constrained(rule) and (not rule.ports or number is not None)


def _grant(rule: AuthzRule, number: int | None) -> Grant:
    # On a port slot the port is implied by the slot; without declared ports keep the rule's.
    ports = tuple(sorted(rule.ports)) if number is None else ()
    return Grant(methods=tuple(sorted({m.upper() for m in rule.methods})),
                 paths=tuple(render_path(p) for p in rule.paths),
                 not_paths=tuple(render_path(p) for p in rule.not_paths),
                 ports=ports,
                 headers=tuple(render_header(h) for h in rule.headers))


def _port_slots(svc: Service) -> list[tuple[int | None, str]]:
    if not svc.ports:
        return [(None, svc.mtls)]
    return [(p.number, p.mtls) for p in svc.ports]


_PortAccess = tuple[int | None, list[AuthzRule], list[AuthzRule], bool]


def _per_port(mesh: Mesh, source: str | None, destination: str) -> Iterator[_PortAccess]:
    """For each port `source` can get some request through on: (port, allow rules that admit
    it there, deny rules that narrow it there, whether everything is admitted)."""
    dest = _service(mesh, destination)
    ident = identity_of(mesh, source)
    idx = index(mesh)
    open_default = mesh.authz == "allow_by_default"
    td = mesh.trust_domain

    def applies(rule: AuthzRule, caller: Caller, number: int | None) -> bool:
        return ((not rule.ports or number is None or number in rule.ports)
                and idx.sources[id(rule)].admit(caller, td))

    for number, mode in _port_slots(dest):
        if ident is None and mode == "strict" and dest.external is None:
            continue  # strict refuses plaintext
        caller = Caller(source, _proven(dest, mode, ident))
        denies, allows = idx.candidates(destination, caller.spiffe)
        d = [r for r in denies if applies(r, caller, number)]
        if any(_whole(r, number) for r in d):
            continue
        a = [r for r in allows if applies(r, caller, number)]
        open_ = open_default or any(_whole(r, number) for r in a)
        if not a and not open_:
            continue
        yield number, a, d, open_ and not d


def reachable(mesh: Mesh, source: str | None, destination: str) -> bool:
    """Can some request from `source` get through? (`access(...).level != "none"`, cheaper:
    the graph checks ask this once per declared call.)"""
    idx = index(mesh)
    dest = idx.services.get(destination)
    if dest is None:
        raise ValueError(f"unknown destination service '{destination}'")
    _, allows = idx.rules_for(destination)
    if not allows and mesh.authz != "allow_by_default":
        return False
    spiffe: str | None
    if source is None or source == UNAUTHENTICATED:
        ident = spiffe = None
    elif source == INGRESS:
        ident, spiffe = mesh.ingress_identity, idx.ingress_spiffe
    else:
        caller = idx.services.get(source)
        if caller is None:
            raise ValueError(f"unknown source service '{source}'")
        ident, spiffe = caller.identity, idx.spiffe_of[source]
    return _reachable(mesh, idx, source, ident, dest, spiffe)


def reachable_by_identity(mesh: Mesh, identity: Identity | None, destination: str) -> bool:
    """`reachable` for a caller known only by its identity (e.g. a workload outside the model
    that holds the service account an `identity NAME` rule names), or None for plaintext."""
    idx = index(mesh)
    dest = idx.services.get(destination)
    if dest is None:
        raise ValueError(f"unknown destination service '{destination}'")
    _, allows = idx.rules_for(destination)
    if not allows and mesh.authz != "allow_by_default":
        return False
    return _reachable(mesh, idx, None, identity, dest)


def _reachable(mesh: Mesh, idx: _Index, source: str | None, ident: Identity | None, dest: Service,
               spiffe: str | None = None) -> bool:
    # Hot path of the graph checks (once per declared call): no list building, Callers made lazily,
    # the caller's identity string (`spiffe`, when known) not rebuilt.
    open_default = mesh.authz == "allow_by_default"
    split = idx.for_caller(dest.name)
    td = mesh.trust_domain
    sources = idx.sources
    # With `spiffe` given (by `reachable`), `source` alone fixes the identity: Callers are shared.
    made: dict[tuple[str | None, bool], Caller] = idx.callers if spiffe is not None else {}
    slots = idx.slots.get(dest.name)
    if slots is None:
        slots = idx.slots[dest.name] = _port_slots(dest)
    for number, mode in slots:
        if ident is None and mode == "strict" and dest.external is None:
            continue  # strict refuses plaintext
        proven = _proven(dest, mode, ident) is not None
        caller = made.get((source, proven))
        if caller is None:
            caller = made[(source, proven)] = Caller(source, ident, spiffe) if proven and spiffe is not None \
                else Caller(source, ident if proven else None)
        generic, named = split.denies
        own = named.get(caller.spiffe, ()) if caller.spiffe is not None else ()
        if (generic or own) and _blocked(sources, generic, own, caller, td, number):
            continue
        if open_default:
            return True
        generic, named = split.allows
        own = named.get(caller.spiffe, ()) if caller.spiffe is not None else ()
        for group in (generic, own):
            for r in group:
                rs = sources[id(r)]
                if rs.on_port(number) and rs.admit(caller, td):
                    return True
    return False


def _blocked(sources: Mapping[int, _RuleSources], generic: Iterable[AuthzRule], own: Iterable[AuthzRule],
             caller: Caller, td: str, number: int | None) -> bool:
    """Does one of these deny rules refuse `caller` everything on this port?"""
    for group in (generic, own):
        for r in group:
            if sources[id(r)].blocks(caller, td, number):
                return True
    return False


def access(mesh: Mesh, source: str | None, destination: str) -> Access:
    """Summarise every request `source` may send to `destination` (see `matrix`)."""
    dest = _service(mesh, destination)
    all_ports = tuple(sorted(n for n, _ in _port_slots(dest) if n is not None))
    per_port = list(_per_port(mesh, source, destination))
    if not per_port:
        return NO_ACCESS
    reached = tuple(sorted(n for n, *_ in per_port if n is not None))
    if all(full for *_, full in per_port) and reached == all_ports:
        return Access("full", rules=_dedup(r for _, a, _, _ in per_port for r in a))

    def port_tag(n: int | None) -> tuple[int, ...]:
        return () if n is None else (n,)

    grant_ports: dict[Grant, set[int]] = {}
    except_ports: dict[Grant, set[int]] = {}
    for number, a, d, _ in per_port:
        if mesh.authz == "allow_by_default" or any(_whole(r, number) for r in a):
            grant_ports.setdefault(Grant(), set()).update(port_tag(number))
        else:
            for r in a:
                grant_ports.setdefault(_grant(r, number), set()).update(port_tag(number))
        for r in d:
            except_ports.setdefault(_grant(r, number), set()).update(port_tag(number))

    def with_ports(table: dict[Grant, set[int]]) -> tuple[Grant, ...]:
        out = []
        for g, ports in table.items():
            ps = tuple(sorted(ports))
            shown = g.ports if not ps else (() if ps == all_ports else ps)
            out.append(Grant(g.methods, g.paths, g.not_paths, shown, g.headers))
        return tuple(sorted(set(out)))

    return Access("partial", grants=with_ports(grant_ports), excepts=with_ports(except_ports),
                  rules=_dedup(r for _, a, _, _ in per_port for r in a),
                  denies=_dedup(r for _, _, d, _ in per_port for r in d))


def _dedup(rules: Iterable[AuthzRule]) -> tuple[AuthzRule, ...]:
    seen: dict[int, AuthzRule] = {}
    for r in rules:
        seen.setdefault(id(r), r)
    return tuple(seen.values())


def _candidate_sources(mesh: Mesh, allows: list[AuthzRule], everyone: list[str]) -> Iterable[str]:
    """Callers an allow rule could admit: everyone if a rule names a wildcard-like source."""
    if mesh.authz == "allow_by_default":
        return everyone
    idx = index(mesh)
    named: set[str] = set()
    for rule in allows:
        for src in rule.sources:
            # On a disabled port every caller counts as plaintext, so an `unauthenticated`
            # rule may admit any service as well.
            if src.kind in ("any", "authenticated", "identity", "unauthenticated"):
                return everyone
            if src.kind == "ingress":
                named.add(INGRESS)
                named.update(idx.by_spiffe.get(mesh.ingress_identity.spiffe, ()))
            else:
                spiffe = idx.spiffe_of.get(src.name)
                if spiffe is not None:
                    named.update(idx.by_spiffe.get(spiffe, ()))
                    if spiffe == mesh.ingress_identity.spiffe:
                        named.add(INGRESS)
    return sorted(named)


def representative_callers(mesh: Mesh, destination: str) -> list[str]:
    """Callers that between them show every way into `destination`: the services the rules of
    `destination` name (by identity or service-account name), the ingress, a plaintext caller,
    and ONE service the rules do not name (every such service is treated alike). Asking
    `reachable` for these instead of for every service keeps "may anyone call it?" O(rules)."""
    idx = index(mesh)
    denies, allows = idx.rules_for(destination)
    spiffes: set[str] = set()
    names: set[str] = set()
    for r in denies + allows:
        rs = idx.sources[id(r)]
        spiffes |= rs.spiffes
        names |= rs.identities
    out = {INGRESS, UNAUTHENTICATED}
    for spiffe in spiffes:
        out.update(idx.by_spiffe.get(spiffe, ()))

    def named(svc: Service) -> bool:
        ident = svc.identity
        return ident.spiffe in spiffes or ident.name in names or f"{ident.namespace}/{ident.name}" in names

    for name in names:
        out.update(idx.by_account.get(name, ()))
    plain = next((s.name for s in mesh.services if not named(s)), None)
    if plain is not None:
        out.add(plain)
    return sorted(out)


def matrix(mesh: Mesh) -> dict[tuple[str, str], Access]:
    """(source, destination) -> Access for every pair with some access; absent pairs: none.

    Sources are service names, "ingress" and "unauthenticated" (plaintext callers). Under
    `allow_by_default` nearly every pair has access, so the result is dense (n^2 entries).
    """
    everyone = [s.name for s in mesh.services] + [INGRESS, UNAUTHENTICATED]
    out: dict[tuple[str, str], Access] = {}
    idx = index(mesh)
    for dest in mesh.services:
        _, allows = idx.rules_for(dest.name)
        for src in _candidate_sources(mesh, allows, everyone):
            acc = access(mesh, None if src == UNAUTHENTICATED else src, dest.name)
            if acc.level != "none":
                out[(src, dest.name)] = acc
    return dict(sorted(out.items()))
