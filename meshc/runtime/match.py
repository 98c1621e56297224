"""Request matching for the native proxy: path normalization, route and fault matches, and the
authorization evaluator. Pure functions over the config models, compiled once per config.

Semantics (the same as the Envoy target and meshc.authz):
- the request target (`split_target`, every listener): origin-form or absolute-form (reduced to
  its path), no fragment; anything else is refused (400), as Envoy does;
- normalization (`strict`): meshc.paths.normalize, the one implementation `meshc why` uses
  too: a raw `\\` is a `/`; a `.`/`..` segment before a `;` is that dot segment; percent-decode
  unreserved characters, reject `%2F`/`%5C`/`%00` and malformed escapes (400), resolve
  `.`/`..`, merge repeated slashes.
  docs/language.md ("Path normalization") is the rule; tests/scenarios/normalization.yaml
  holds Envoy's measured answers, which the native proxy must give too;
- `prefix` = byte prefix, `under` = segment prefix, `regex` = full match; header names are
  case-insensitive, values case-sensitive;
- authorization: deny before allow (the config is already ordered), default posture last.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from urllib.parse import parse_qsl

from meshc.runtime import config as C


def split_target(target: str) -> tuple[str, str] | None:
    """(path, query) of a request target; absolute-form is reduced to its path. None: refused
    with 400 (asterisk-form, a target that is no path, a fragment: Envoy refuses fragments
    whether or not it normalizes; a client never sends one, RFC 9112 3.2)."""
    if "#" in target:
        return None
    if not target.startswith("/"):
        low = target[:8].lower()
        if low.startswith("http://") or low.startswith("https://"):
            rest = target.split("//", 1)[1]
            slash = rest.find("/")
            target = rest[slash:] if slash >= 0 else "/"
        else:
            return None
    path, sep, query = target.partition("?")
    return path, query


@lru_cache(maxsize=1024)
def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


PathPred = Callable[[str], bool]


def path_pred(m: C.PathMatchCfg) -> PathPred:
    v = m.value
    if m.kind == "exact":
        return v.__eq__
    if m.kind == "prefix":
        return lambda p: p.startswith(v)
    if m.kind == "under":
        base = v.rstrip("/")
        if not base:
            return lambda p: True
        slash = base + "/"
        return lambda p: p == base or p.startswith(slash)
    rx = _rx(v)
    return lambda p: rx.fullmatch(p) is not None


def string_pred(m: C.StringMatchCfg) -> Callable[[Mapping[str, str]], bool]:
    name, v, kind = m.name.lower(), m.value, m.kind
    if kind == "absent":
        return lambda h: name not in h
    if kind == "present":
        return lambda h: name in h
    if kind == "exact":
        return lambda h: h.get(name) == v
    if kind == "prefix":
        return lambda h: (x := h.get(name)) is not None and x.startswith(v)
    rx = _rx(v)
    return lambda h: (x := h.get(name)) is not None and rx.fullmatch(x) is not None


class RequestView:
    """What matching looks at: method, normalized path, lower-cased headers, lazy query."""

    __slots__ = ("method", "path", "headers", "_query", "raw_query")

    def __init__(self, method: str, path: str, raw_query: str, headers: Mapping[str, str]):
        self.method = method
        self.path = path
        self.raw_query = raw_query
        self.headers = headers
        self._query: dict[str, str] | None = None

    @property
    def query(self) -> dict[str, str]:
        if self._query is None:
            self._query = dict(parse_qsl(self.raw_query, keep_blank_values=True))
        return self._query


class CompiledMatch:
    __slots__ = ("path", "headers", "query", "methods")

    def __init__(self, m: C.MatchCfg):
        self.path = path_pred(m.path) if m.path is not None else None
        self.headers = [string_pred(h) for h in m.headers]
        self.query = [string_pred(q) for q in m.query]
        self.methods = frozenset(x.upper() for x in m.methods)

    def __call__(self, r: RequestView) -> bool:
        if self.methods and r.method not in self.methods:
            return False
        if self.path is not None and not self.path(r.path):
            return False
        for h in self.headers:
            if not h(r.headers):
                return False
        if self.query:
            q = r.query
            for pred in self.query:
                if not pred(q):
                    return False
        return True


def any_match(matches: list[CompiledMatch]) -> Callable[[RequestView], bool]:
    """OR of the matches; no matches at all = always."""
    if not matches:
        return lambda r: True
    if len(matches) == 1:
        return matches[0]
    return lambda r: any(m(r) for m in matches)


# --------------------------------------------------------------------------- authorization


def spiffe_parts(spiffe: str) -> tuple[str, str, str] | None:
    """(trust domain, namespace, service account) of `spiffe://td/ns/NS/sa/SA`."""
    if not spiffe.startswith("spiffe://"):
        return None
    parts = spiffe[9:].split("/")
    if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa":
        return parts[0], parts[2], parts[4]
    return None


def principal_pred(p: C.PrincipalCfg) -> Callable[[str | None], bool]:
    v = p.value
    if p.kind == "any":
        return lambda peer: True
    if p.kind == "unauthenticated":
        return lambda peer: peer is None
    if p.kind == "spiffe":
        return lambda peer: peer == v
    if p.kind == "authenticated":
        return lambda peer: peer is not None and (parts := spiffe_parts(peer)) is not None and parts[0] == v

    def sa(peer: str | None) -> bool:
        parts = spiffe_parts(peer) if peer else None
        return parts is not None and v in (parts[2], f"{parts[1]}/{parts[2]}")
    return sa


class CompiledRule:
    __slots__ = ("name", "action", "principals", "anyone", "methods", "paths", "not_paths", "ports", "headers",
                 "is_l7")

    def __init__(self, r: C.AuthzRuleCfg):
        self.name = r.name
        self.action = r.action
        self.principals = [principal_pred(p) for p in r.principals]
        self.anyone = any(p.kind == "any" for p in r.principals)  # no principal check needed
        self.methods = frozenset(m.upper() for m in r.methods)
        self.paths = [path_pred(p) for p in r.paths]
        self.not_paths = [path_pred(p) for p in r.not_paths]
        self.ports = frozenset(r.ports)
        self.headers = [string_pred(h) for h in r.headers]
        self.is_l7 = bool(r.methods or r.paths or r.not_paths or r.headers)

    def matches(self, peer: str | None, port: int, r: RequestView | None) -> bool:
        if not self.anyone:
            for who in self.principals:
                if who(peer):
                    break
            else:
                return False
        if self.ports and port not in self.ports:
            return False
        if r is None:  # tcp: HTTP conditions cannot be evaluated; fail closed
            return not self.is_l7 or self.action == "deny"
        if self.methods and r.method not in self.methods:
            return False
        if self.paths:
            for p in self.paths:
                if p(r.path):
                    break
            else:
                return False
        if self.not_paths and any(p(r.path) for p in self.not_paths):
            return False
        for h in self.headers:
            if not h(r.headers):
                return False
        return True


class Authorizer:
    """Deny rules first (the config lists them first), then allow, then the default."""

    def __init__(self, cfg: C.AuthzCfg):
        self.rules = [CompiledRule(r) for r in cfg.rules]
        self.default_allow = cfg.default == "allow"

    def decide(self, peer: str | None, port: int, r: RequestView | None) -> tuple[bool, str]:
        for rule in self.rules:
            if rule.matches(peer, port, r):
                return rule.action == "allow", rule.name
        return self.default_allow, "default"
