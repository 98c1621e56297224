"""The AST of one `.mesh` file: typed nodes with spans, built from lark's parse tree.

The AST is still unresolved: names are plain strings (with their spans), policies are not
applied and overlays are not merged; `meshc.resolve` turns a set of files into the model.
Literal values are already converted here (durations to ms, percentages to hundredths), and
malformed literals become E006 diagnostics. Spans never take part in equality, so
`parse(fmt(x)) == parse(x)` compares meaning and layout-free structure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lark import Token, Tree

from meshc.diagnostics import Sink
from meshc.model import NO_SPAN, Span


def _span_field() -> Any:
    return field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Name:
    text: str
    span: Span = _span_field()

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Value:
    """A literal with its converted value (ms, hundredths of a percent, int, str)."""

    value: Any
    raw: str
    span: Span = _span_field()


# --------------------------------------------------------------------------- statements


@dataclass(frozen=True)
class Setting:
    """A one-value statement: `mtls strict`, `identity x`, `trust_domain "t"`, `host "h"` ..."""

    key: str
    value: Value | Name
    extra: Value | Name | None = None  # `mtls disabled on port 9090`, `ingress_identity x in ns`
    span: Span = _span_field()

    # The grammar fixes which kind each key takes; these say so to the type checker.
    @property
    def name(self) -> Name:
        assert isinstance(self.value, Name), self.key
        return self.value

    @property
    def literal(self) -> Value:
        assert isinstance(self.value, Value), self.key
        return self.value


@dataclass(frozen=True)
class PortDecl:
    protocol: Name
    number: Value
    span: Span = _span_field()


@dataclass(frozen=True)
class EndpointRef:
    host: str
    port: int
    span: Span = _span_field()


@dataclass(frozen=True)
class Endpoints:
    items: tuple[EndpointRef, ...]
    span: Span = _span_field()


@dataclass(frozen=True)
class Labels:
    items: tuple[tuple[Name, Value | Name], ...]
    span: Span = _span_field()


@dataclass(frozen=True)
class VersionDecl:
    name: Name
    stmts: tuple[Any, ...]
    span: Span = _span_field()


@dataclass(frozen=True)
class NameList:
    """`calls a, b` and `use p, q`."""

    key: str
    names: tuple[Name, ...]
    span: Span = _span_field()


@dataclass(frozen=True)
class PathPattern:
    kind: Name
    value: Value
    span: Span = _span_field()


@dataclass(frozen=True)
class StrMatch:
    name: Name
    op: Name  # "==", prefix, regex, present, absent
    value: Value | None = None
    span: Span = _span_field()


@dataclass(frozen=True)
class Expose:
    port: Value | None
    hosts: tuple[Value, ...]
    paths: tuple[PathPattern, ...]
    span: Span = _span_field()


@dataclass(frozen=True)
class TimeoutDecl:
    ms: Value | None  # None: `timeout none`
    span: Span = _span_field()


@dataclass(frozen=True)
class RetryDecl:
    attempts: Value | None  # None: `retry none`
    on: tuple[Value | Name, ...] = ()
    per_try: Value | None = None
    backoff: Value | None = None
    backoff_max: Value | None = None
    budget: Value | None = None
    span: Span = _span_field()


@dataclass(frozen=True)
class LoadBalanceDecl:
    policy: Name
    hash_on: str | None = None
    hash_key: Value | None = None
    ttl: Value | None = None
    span: Span = _span_field()


@dataclass(frozen=True)
class SettingsDecl:
    """`circuit_breaker k v ...`, `outlier k v ...`, `health_check proto "path" k v ...`."""

    key: str
    items: tuple[tuple[Name, Value], ...]
    protocol: Name | None = None
    path: Value | None = None
    span: Span = _span_field()


@dataclass(frozen=True)
class RateLimitDecl:
    requests: int
    unit: str
    burst: Value | None = None
    span: Span = _span_field()


@dataclass(frozen=True)
class Cond:
    kind: str  # path | header | query | method
    path: PathPattern | None = None
    match: StrMatch | None = None
    methods: tuple[Name, ...] = ()
    span: Span = _span_field()


# OR of AND-groups
Condition = tuple[tuple[Cond, ...], ...]


@dataclass(frozen=True)
class FaultDecl:
    when: Condition = ()
    delay: Value | None = None
    delay_percent: Value | None = None
    abort: Value | None = None
    abort_percent: Value | None = None
    span: Span = _span_field()


@dataclass(frozen=True)
class ObjectiveDecl:
    kind: Name
    args: tuple[Value | Name, ...]
    window: Value | None = None
    span: Span = _span_field()


@dataclass(frozen=True)
class DestRef:
    first: Name
    version: Name | None = None  # `svc.version`
    span: Span = _span_field()


@dataclass(frozen=True)
class SplitItem:
    dest: DestRef
    percent: Value
    span: Span = _span_field()


@dataclass(frozen=True)
class Action:
    kind: str  # forward | split | redirect | respond
    dests: tuple[SplitItem, ...] = ()  # forward: one item at 100%
    options: tuple[tuple[Name, Value | Name], ...] = ()  # redirect options
    status: Value | None = None
    body: Value | None = None
    span: Span = _span_field()


@dataclass(frozen=True)
class HeaderOp:
    direction: str  # request | response
    op: Name  # set | add | remove
    name: Name
    value: Value | None = None
    span: Span = _span_field()


@dataclass(frozen=True)
class RewriteDecl:
    kind: Name  # prefix | path | host
    value: Value
    span: Span = _span_field()


@dataclass(frozen=True)
class MirrorDecl:
    dest: DestRef
    percent: Value | None = None
    span: Span = _span_field()


@dataclass(frozen=True)
class RuleDecl:
    when: Condition  # () for otherwise
    action: Action
    body: tuple[Any, ...] = ()
    span: Span = _span_field()


@dataclass(frozen=True)
class RouteDecl:
    rules: tuple[RuleDecl, ...]
    span: Span = _span_field()


# --------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class ImportDecl:
    path: Value
    span: Span = _span_field()


@dataclass(frozen=True)
class MeshDecl:
    name: Name | None  # None for `overlay mesh`
    stmts: tuple[Any, ...]
    span: Span = _span_field()


@dataclass(frozen=True)
class BlockDecl:
    """`service`, `external`, `policy` and `overlay service` blocks."""

    kind: str  # service | external | policy | overlay
    name: Name
    stmts: tuple[Any, ...]
    span: Span = _span_field()


@dataclass(frozen=True)
class SourceRef:
    kind: str  # name | any | identity
    name: Name | None = None
    span: Span = _span_field()


@dataclass(frozen=True)
class AuthzDecl:
    action: str
    sources: tuple[SourceRef, ...]
    targets: tuple[Name, ...]
    methods: tuple[Name, ...] = ()
    paths: tuple[PathPattern, ...] = ()
    except_paths: tuple[PathPattern, ...] = ()
    ports: tuple[Value, ...] = ()
    headers: tuple[StrMatch, ...] = ()
    span: Span = _span_field()


@dataclass(frozen=True)
class File:
    path: str
    decls: tuple[Any, ...]


# --------------------------------------------------------------------------- literals

_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_MAX_INT = 2**31 - 1


def _unquote(raw: str) -> str:
    out, i = [], 1
    while i < len(raw) - 1:
        c = raw[i]
        if c == "\\" and i + 1 < len(raw) - 1:
            nxt = raw[i + 1]
            out.append({"n": "\n", "t": "\t"}.get(nxt, nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def quote(s: str) -> str:
    """The canonical spelling of a string literal (used by fmt and error messages)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def first_token(tree: Tree) -> Token:
    """Spans come from the tokens at a subtree's edges (every rule holds at least one token),
    which is cheaper than having lark propagate positions to every tree node."""
    node: Tree | Token = tree
    while isinstance(node, Tree):
        node = node.children[0]
    return node


def last_token(tree: Tree) -> Token:
    node: Tree | Token = tree
    while isinstance(node, Tree):
        node = node.children[-1]
    return node


class Builder:
    """Turns lark's tree (built with keep_all_tokens) into the typed AST of one file."""

    # Terminals that carry meaning; every other token is a keyword or punctuation.
    MEANINGFUL = frozenset({"AUTHZ_ACTION", "OTHERWISE", "NONE", "STAR", "EQ", "NAME", "STRING",
                            "ENDPOINT", "DURATION", "PERCENT", "RATE", "STATUS_CLASS", "INT"})

    def __init__(self, path: str, sink: Sink):
        self.path = path
        self.sink = sink

    # ----------------------------------------------------------------- helpers
    def span(self, node: Tree | Token) -> Span:
        first, last = (node, node) if isinstance(node, Token) else (first_token(node), last_token(node))
        return Span(file=self.path, line=first.line or 0, column=first.column or 0,
                    end_line=last.end_line or 0, end_column=last.end_column or 0)

    def kids(self, t: Tree) -> list[Any]:
        return [c for c in t.children if isinstance(c, Tree) or c.type in self.MEANINGFUL]

    def name(self, tok: Token) -> Name:
        return Name(str(tok), self.span(tok))

    def literal(self, tok: Token) -> Value | Name:
        """Convert any literal token; NAMEs stay names."""
        kind = tok.type
        raw = str(tok)
        sp = self.span(tok)
        if kind == "NAME":
            return Name(raw, sp)
        if kind == "STRING":
            return Value(_unquote(raw), raw, sp)
        if kind == "INT":
            n = int(raw)
            if n > _MAX_INT:
                self.sink.error("E006", f"integer {raw} is too large", sp, label="out of range",
                                help=f"integers are at most {_MAX_INT}")
            return Value(n, raw, sp)
        if kind == "DURATION":
            m = _DURATION_RE.fullmatch(raw)
            assert m is not None
            ms = float(m.group(1)) * _DURATION_MS[m.group(2)]
            if ms != int(ms):
                self.sink.error("E006", f"duration {raw} is not a whole number of milliseconds", sp,
                                label="too precise", help="durations have millisecond resolution, e.g. 1500ms")
            return Value(int(ms), raw, sp)
        if kind == "PERCENT":
            num = raw[:-1]
            whole, _, frac = num.partition(".")
            if len(frac) > 2:
                self.sink.error("E006", f"percentage {raw} has more than two decimals", sp,
                                label="too precise", help="write at most two decimals, e.g. 12.5% or 33.33%")
            hundredths = int(whole) * 100 + int((frac + "00")[:2])
            if hundredths > 10_000:
                self.sink.error("E006", f"percentage {raw} is above 100%", sp, label="out of range",
                                help="percentages go from 0% to 100%")
            return Value(hundredths, raw, sp)
        if kind == "RATE":
            count, unit = raw.split("/")
            return Value((int(count), unit), raw, sp)
        if kind == "STATUS_CLASS":
            return Value(raw, raw, sp)
        if kind == "ENDPOINT":
            host, _, port = raw.rpartition(":")
            return Value((host.strip("[]"), int(port)), raw, sp)
        return Name(raw, sp)

    def lit(self, tok: Token) -> Value:
        v = self.literal(tok)
        return v if isinstance(v, Value) else Value(v.text, v.text, v.span)

    # ----------------------------------------------------------------- file
    def file(self, tree: Tree) -> File:
        decls = []
        for child in tree.children:
            if isinstance(child, Tree):
                decls.append(getattr(self, "d_" + child.data)(child))
        return File(self.path, tuple(decls))

    def d_import_decl(self, t: Tree) -> ImportDecl:
        (s,) = self.kids(t)
        return ImportDecl(self.lit(s), self.span(t))

    def d_mesh_decl(self, t: Tree) -> MeshDecl:
        name, *stmts = self.kids(t)
        return MeshDecl(self.name(name), tuple(self.stmt(s) for s in stmts), self.span(t))

    def d_overlay_mesh(self, t: Tree) -> MeshDecl:
        return MeshDecl(None, tuple(self.stmt(s) for s in self.kids(t)), self.span(t))

    def _block(self, kind: str, t: Tree) -> BlockDecl:
        name, *stmts = self.kids(t)
        return BlockDecl(kind, self.name(name), tuple(self.stmt(s) for s in stmts), self.span(t))

    def d_service_decl(self, t: Tree) -> BlockDecl:
        return self._block("service", t)

    def d_external_decl(self, t: Tree) -> BlockDecl:
        return self._block("external", t)

    def d_policy_decl(self, t: Tree) -> BlockDecl:
        return self._block("policy", t)

    def d_overlay_service(self, t: Tree) -> BlockDecl:
        return self._block("overlay", t)

    def d_authz_decl(self, t: Tree) -> AuthzDecl:
        action, *rest = self.kids(t)
        sources: list[SourceRef] = []
        targets: list[Name] = []
        opts: dict[str, Any] = {}
        for c in rest:
            if c.data in ("source", "source_any", "source_identity"):
                k = self.kids(c)
                if c.data == "source_any":
                    sources.append(SourceRef("any", None, self.span(c)))
                else:
                    sources.append(SourceRef("identity" if c.data == "source_identity" else "name",
                                             self.name(k[0]), self.span(c)))
            elif c.data == "target":
                targets.append(self.name(self.kids(c)[0]))
            elif c.data in ("methods", "ports"):
                vals = self.kids(c)
                opts[c.data] = tuple(self.name(v) if c.data == "methods" else self.lit(v) for v in vals)
            elif c.data in ("paths", "except_paths"):
                opts[c.data] = tuple(self.path_pattern(p) for p in self.kids(c))
            elif c.data == "headers":
                opts["headers"] = tuple(self.string_match(m) for m in self.kids(c))
        return AuthzDecl(str(action), tuple(sources), tuple(targets), span=self.span(t), **opts)

    # ----------------------------------------------------------------- statements
    SIMPLE = frozenset({"trust_domain", "namespace", "authz_default", "path_normalization", "access_log",
                        "metrics", "trace_sampling", "identity", "host"})

    def stmt(self, t: Tree) -> Any:
        if t.data in self.SIMPLE:
            (v,) = self.kids(t)
            return Setting(str(t.data), self.literal(v), None, self.span(t))
        return getattr(self, "s_" + t.data)(t)

    def s_mtls(self, t: Tree) -> Setting:
        k = self.kids(t)
        return Setting("mtls", self.name(k[0]), self.lit(k[1]) if len(k) > 1 else None, self.span(t))

    def s_ingress_identity(self, t: Tree) -> Setting:
        k = self.kids(t)
        return Setting("ingress_identity", self.name(k[0]), self.name(k[1]) if len(k) > 1 else None,
                       self.span(t))

    def s_tls_originate(self, t: Tree) -> Setting:
        k = self.kids(t)
        return Setting("tls_originate", self.lit(k[0]) if k else Value("", "", self.span(t)), None, self.span(t))

    def s_port(self, t: Tree) -> PortDecl:
        proto, num = self.kids(t)
        return PortDecl(self.name(proto), self.lit(num), self.span(t))

    def s_endpoints(self, t: Tree) -> Endpoints:
        items = []
        for tok in self.kids(t):
            v = self.lit(tok)
            items.append(EndpointRef(v.value[0], v.value[1], v.span))
        return Endpoints(tuple(items), self.span(t))

    def s_version(self, t: Tree) -> VersionDecl:
        name, *stmts = self.kids(t)
        return VersionDecl(self.name(name), tuple(self.stmt(s) for s in stmts), self.span(t))

    def s_labels(self, t: Tree) -> Labels:
        items = []
        for lab in self.kids(t):
            k, v = self.kids(lab)
            items.append((self.name(k), self.literal(v)))
        return Labels(tuple(items), self.span(t))

    def s_calls(self, t: Tree) -> NameList:
        return NameList("calls", tuple(self.name(n) for n in self.kids(t)), self.span(t))

    def s_use(self, t: Tree) -> NameList:
        return NameList("use", tuple(self.name(n) for n in self.kids(t)), self.span(t))

    def s_expose(self, t: Tree) -> Expose:
        port: Value | None = None
        hosts: tuple[Value, ...] = ()
        paths: tuple[PathPattern, ...] = ()
        for c in self.kids(t):
            if c.data == "expose_port":
                port = self.lit(self.kids(c)[0])
            elif c.data == "expose_hosts":
                hosts = tuple(self.lit(h) for h in self.kids(c))
            else:
                paths = tuple(self.path_pattern(p) for p in self.kids(c))
        return Expose(port, hosts, paths, self.span(t))

    def s_objective(self, t: Tree) -> ObjectiveDecl:
        kind, *args = self.kids(t)
        window = None
        if args and isinstance(args[-1], Tree):
            window = self.lit(self.kids(args.pop())[0])
        return ObjectiveDecl(self.name(kind), tuple(self.literal(a) for a in args), window, self.span(t))

    def s_timeout(self, t: Tree) -> TimeoutDecl:
        (v,) = self.kids(t)
        return TimeoutDecl(None if v.type == "NONE" else self.lit(v), self.span(t))

    def s_retry(self, t: Tree) -> RetryDecl:
        first, *opts = self.kids(t)
        if first.type == "NONE":
            return RetryDecl(None, span=self.span(t))
        fields: dict[str, Any] = {}
        for o in opts:
            k = self.kids(o)
            if o.data == "retry_on":
                fields["on"] = tuple(self.literal(x) for x in k)
            elif o.data == "per_try":
                fields["per_try"] = self.lit(k[0])
            elif o.data == "backoff":
                fields["backoff"] = self.lit(k[0])
                if len(k) > 1:
                    fields["backoff_max"] = self.lit(k[1])
            elif o.data == "budget":
                fields["budget"] = self.lit(k[0])
        return RetryDecl(self.lit(first), span=self.span(t), **fields)

    def s_load_balance(self, t: Tree) -> LoadBalanceDecl:
        policy, *rest = self.kids(t)
        if not rest:
            return LoadBalanceDecl(self.name(policy), span=self.span(t))
        h = rest[0]
        on = {"hash_key": "header", "hash_cookie": "cookie", "hash_query": "query",
              "hash_source_ip": "source_ip"}[h.data]
        k = self.kids(h)
        return LoadBalanceDecl(self.name(policy), on, self.lit(k[0]) if k else None,
                               self.lit(k[1]) if len(k) > 1 else None, self.span(t))

    def _settings(self, t: Tree, key: str) -> SettingsDecl:
        items, proto, path = [], None, None
        for c in self.kids(t):
            if isinstance(c, Tree):
                k, v = self.kids(c)
                items.append((self.name(k), self.lit(v)))
            elif c.type == "NAME":
                proto = self.name(c)
            else:
                path = self.lit(c)
        return SettingsDecl(key, tuple(items), proto, path, self.span(t))

    def s_circuit_breaker(self, t: Tree) -> SettingsDecl:
        return self._settings(t, "circuit_breaker")

    def s_outlier(self, t: Tree) -> SettingsDecl:
        return self._settings(t, "outlier")

    def s_health_check(self, t: Tree) -> SettingsDecl:
        return self._settings(t, "health_check")

    def s_rate_limit(self, t: Tree) -> RateLimitDecl:
        rate, *burst = self.kids(t)
        v = self.lit(rate)
        return RateLimitDecl(v.value[0], v.value[1], self.lit(burst[0]) if burst else None, self.span(t))

    def s_fault(self, t: Tree) -> FaultDecl:
        fields: dict[str, Any] = {}
        for c in self.kids(t):
            if c.data == "condition":
                fields["when"] = self.condition(c)
            else:
                k = self.kids(c)
                fields[c.data] = self.lit(k[0])
                if len(k) > 1:
                    fields[f"{c.data}_percent"] = self.lit(k[1])
        return FaultDecl(span=self.span(t), **fields)

    def s_route(self, t: Tree) -> RouteDecl:
        return RouteDecl(tuple(self.rule(r) for r in self.kids(t)), self.span(t))

    def s_rewrite(self, t: Tree) -> RewriteDecl:
        kind, val = self.kids(t)
        return RewriteDecl(self.name(kind), self.lit(val), self.span(t))

    def _header_op(self, t: Tree, direction: str) -> HeaderOp:
        (op_tree,) = self.kids(t)
        k = self.kids(op_tree)
        return HeaderOp(direction, self.name(k[0]), self.name(k[1]), self.lit(k[2]) if len(k) > 2 else None,
                        self.span(t))

    def s_request_headers(self, t: Tree) -> HeaderOp:
        return self._header_op(t, "request")

    def s_response_headers(self, t: Tree) -> HeaderOp:
        return self._header_op(t, "response")

    def s_mirror(self, t: Tree) -> MirrorDecl:
        dest, *pct = self.kids(t)
        return MirrorDecl(self.destination(dest), self.lit(pct[0]) if pct else None, self.span(t))

    # ----------------------------------------------------------------- routing pieces
    def rule(self, t: Tree) -> RuleDecl:
        k = self.kids(t)
        when: Condition = ()
        if isinstance(k[0], Tree) and k[0].data == "condition":
            when = self.condition(k[0])
        action_tree = k[1]
        body: tuple[Any, ...] = ()
        if len(k) > 2:
            body = tuple(self.stmt(s) for s in self.kids(k[2]))
        return RuleDecl(when, self.action(action_tree), body, self.span(t))

    def action(self, t: Tree) -> Action:
        sp = self.span(t)
        if t.data == "destination":
            d = self.destination(t)
            return Action("forward", (SplitItem(d, Value(10_000, "100%", sp), sp),), span=sp)
        if t.data == "split":
            items = []
            for it in self.kids(t):
                d, pct = self.kids(it)
                items.append(SplitItem(self.destination(d), self.lit(pct), self.span(it)))
            return Action("split", tuple(items), span=sp)
        if t.data == "redirect":
            opts = []
            for o in self.kids(t):
                k, v = self.kids(o)
                opts.append((self.name(k), self.literal(v)))
            return Action("redirect", options=tuple(opts), span=sp)
        k = self.kids(t)
        return Action("respond", status=self.lit(k[0]), body=self.lit(k[1]) if len(k) > 1 else None, span=sp)

    def destination(self, t: Tree) -> DestRef:
        k = self.kids(t)
        return DestRef(self.name(k[0]), self.name(k[1]) if len(k) > 1 else None, self.span(t))

    def condition(self, t: Tree) -> Condition:
        return tuple(tuple(self.cond(c) for c in self.kids(conj)) for conj in self.kids(t))

    def cond(self, t: Tree) -> Cond:
        sp = self.span(t)
        (first, *rest) = self.kids(t)
        if t.data == "path_cond":
            return Cond("path", path=self.path_pattern(first), span=sp)
        if t.data == "method_cond":
            return Cond("method", methods=tuple(self.name(n) for n in [first, *rest]), span=sp)
        return Cond("header" if t.data == "header_cond" else "query", match=self.string_match(first), span=sp)

    def path_pattern(self, t: Tree) -> PathPattern:
        kind, val = self.kids(t)
        return PathPattern(self.name(kind), self.lit(val), self.span(t))

    def string_match(self, t: Tree) -> StrMatch:
        k = self.kids(t)
        name = self.name(k[0])
        op = Name(str(k[1]), self.span(k[1]))
        value = self.lit(k[2]) if len(k) > 2 else None
        return StrMatch(name, op, value, self.span(t))
