"""The AST of one `.mesh` file: typed nodes with spans, built while parsing (Builder).

The AST is still unresolved: names are plain strings (with their spans), policies are not
applied and overlays are not merged; `meshc.resolve` turns a set of files into the model.
Literal values are already converted here (durations to ms, percentages to hundredths), and
malformed literals become E006 diagnostics. Spans never take part in equality, so
`parse(fmt(x)) == parse(x)` compares meaning and layout-free structure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, TypeVar, dataclass_transform

from lark import Token, Transformer, Tree

from meshc.diagnostics import Sink
from meshc.model import MAX_DURATION_MS, MAX_INT, NO_SPAN, Span, text_problem

try:
    import meshc._lalrc as _lalrc
except ImportError:  # installed without a C compiler
    _lalrc = None  # type: ignore[assignment]

T = TypeVar("T")

# Span(...) without its Python-level __new__: the Builder makes one per node.
_new_span = tuple.__new__


@dataclass_transform(frozen_default=True)
def node(cls: type[T]) -> type[T]:
    """An AST node class: a slotted dataclass, immutable for the type checker (mypy sees it as
    frozen) and hashable. A 10,000-service file makes about a million nodes: slots keep them
    small, and a runtime-frozen dataclass would set each field through object.__setattr__
    (~25% of building the AST)."""
    return dataclass(slots=True, unsafe_hash=True)(cls)


def _span_field() -> Any:
    return field(default=NO_SPAN, compare=False, repr=False)


@node
class Name:
    text: str
    span: Span = _span_field()

    def __str__(self) -> str:
        return self.text


@node
class Value:
    """A literal with its converted value (ms, hundredths of a percent, int, str)."""

    value: Any
    raw: str
    span: Span = _span_field()


# --------------------------------------------------------------------------- statements


@node
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


@node
class PortDecl:
    protocol: Name
    number: Value
    span: Span = _span_field()


@node
class EndpointRef:
    host: str
    port: int
    span: Span = _span_field()


@node
class Endpoints:
    items: tuple[EndpointRef, ...]
    span: Span = _span_field()


@node
class Labels:
    items: tuple[tuple[Name, Value | Name], ...]
    span: Span = _span_field()


@node
class VersionDecl:
    name: Name
    stmts: tuple[Any, ...]
    span: Span = _span_field()


@node
class NameList:
    """`calls a, b` and `use p, q`."""

    key: str
    names: tuple[Name, ...]
    span: Span = _span_field()


@node
class PathPattern:
    kind: Name
    value: Value
    span: Span = _span_field()


@node
class StrMatch:
    name: Name
    op: Name  # "==", prefix, regex, present, absent
    value: Value | None = None
    span: Span = _span_field()


@node
class Expose:
    port: Value | None
    hosts: tuple[Value, ...]
    paths: tuple[PathPattern, ...]
    span: Span = _span_field()


@node
class TimeoutDecl:
    ms: Value | None  # None: `timeout none`
    span: Span = _span_field()


@node
class RetryDecl:
    attempts: Value | None  # None: `retry none`
    on: tuple[Value | Name, ...] = ()
    per_try: Value | None = None
    backoff: Value | None = None
    backoff_max: Value | None = None
    budget: Value | None = None
    span: Span = _span_field()


@node
class LoadBalanceDecl:
    policy: Name
    hash_on: str | None = None
    hash_key: Value | None = None
    ttl: Value | None = None
    span: Span = _span_field()


@node
class SettingsDecl:
    """`circuit_breaker k v ...`, `outlier k v ...`, `health_check proto "path" k v ...`."""

    key: str
    items: tuple[tuple[Name, Value], ...]
    protocol: Name | None = None
    path: Value | None = None
    span: Span = _span_field()


@node
class RateLimitDecl:
    requests: int
    unit: str
    burst: Value | None = None
    span: Span = _span_field()


@node
class Cond:
    kind: str  # path | header | query | method
    path: PathPattern | None = None
    match: StrMatch | None = None
    methods: tuple[Name, ...] = ()
    span: Span = _span_field()


# OR of AND-groups
Condition = tuple[tuple[Cond, ...], ...]


@node
class FaultDecl:
    when: Condition = ()
    delay: Value | None = None
    delay_percent: Value | None = None
    abort: Value | None = None
    abort_percent: Value | None = None
    span: Span = _span_field()


@node
class ObjectiveDecl:
    kind: Name
    args: tuple[Value | Name, ...]
    window: Value | None = None
    span: Span = _span_field()


@node
class DestRef:
    first: Name
    version: Name | None = None  # `svc.version`
    span: Span = _span_field()


@node
class SplitItem:
    dest: DestRef
    percent: Value
    span: Span = _span_field()


@node
class Action:
    kind: str  # forward | split | redirect | respond
    dests: tuple[SplitItem, ...] = ()  # forward: one item at 100%
    options: tuple[tuple[Name, Value | Name], ...] = ()  # redirect options
    status: Value | None = None
    body: Value | None = None
    span: Span = _span_field()


@node
class HeaderOp:
    direction: str  # request | response
    op: Name  # set | add | remove
    name: Name
    value: Value | None = None
    span: Span = _span_field()


@node
class RewriteDecl:
    kind: Name  # prefix | path | host
    value: Value
    span: Span = _span_field()


@node
class MirrorDecl:
    dest: DestRef
    percent: Value | None = None
    span: Span = _span_field()


@node
class RuleDecl:
    when: Condition  # () for otherwise
    action: Action
    body: tuple[Any, ...] = ()
    span: Span = _span_field()


@node
class RouteDecl:
    rules: tuple[RuleDecl, ...]
    span: Span = _span_field()


# --------------------------------------------------------------------------- declarations


@node
class ImportDecl:
    path: Value
    span: Span = _span_field()


@node
class MeshDecl:
    name: Name | None  # None for `overlay mesh`
    stmts: tuple[Any, ...]
    span: Span = _span_field()


@node
class BlockDecl:
    """`service`, `external`, `policy` and `overlay service` blocks."""

    kind: str  # service | external | policy | overlay
    name: Name
    stmts: tuple[Any, ...]
    span: Span = _span_field()


@node
class SourceRef:
    kind: str  # name | any | identity
    name: Name | None = None
    span: Span = _span_field()


@node
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


@node
class File:
    path: str
    decls: tuple[Any, ...]


# --------------------------------------------------------------------------- literals

_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION_RE = re.compile(r"([0-9]+)(?:\.([0-9]+))?(ms|s|m|h|d)")
_MAX_INT = MAX_INT
# Digits are counted on the token before any int() (Python refuses to convert more than 4300
# digits, and a float would lose precision or overflow): a number with more significant digits
# than these is out of range whatever its unit, and more fraction digits cannot be exact.
_MAX_DIGITS = 12
_MAX_FRACTION = 12
_SIZE_BYTES = {"B": 1, "KB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2, "GB": 1000**3, "GiB": 1024**3}
_SIZE_RE = re.compile(r"([0-9]+)(?:\.([0-9]+))?(B|KB|KiB|MB|MiB|GB|GiB)")
# Sizes are whole bytes, from 1B to 1GiB: every target takes that range (Envoy's buffer
# limit is a 32-bit count), and a larger request body is a file transfer, not a request.
MAX_SIZE = 1024**3


def size_text(n: int) -> str:
    """Bytes as .mesh writes them, in the largest unit that is exact (10485760 -> `10MiB`,
    1500 -> `1500B`): for unparse, diagnostics and diff lines."""
    for unit in ("GiB", "GB", "MiB", "MB", "KiB", "KB"):
        if n and n % _SIZE_BYTES[unit] == 0:
            return f"{n // _SIZE_BYTES[unit]}{unit}"
    return f"{n}B"


def unquote(raw: str) -> str:
    if "\\" not in raw:  # most strings have no escapes
        return raw[1:-1]
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


def _unknown_escape(raw: str) -> str | None:
    """The first escape in a string literal that `unquote` does not know (`\\r`, `\\.`): it
    would silently stand for the character itself (`\\r` for `r`), so it is refused."""
    i = 1
    while i < len(raw) - 1:
        if raw[i] == "\\":
            if raw[i + 1] not in '"\\nt':
                return raw[i + 1]
            i += 2
        else:
            i += 1
    return None


def _int(digits: str) -> int:
    """A digit string whose significant digits were counted: leading zeros (any number of
    them) are dropped before int(), which refuses more than 4300 digits."""
    return int(digits.lstrip("0") or "0")


def _short(raw: str) -> str:
    """A literal as a message shows it: a 5,000-digit number is cut, not printed whole."""
    return raw if len(raw) <= 40 else f"{raw[:20]}...{raw[-10:]} ({len(raw)} characters)"


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


class Part:
    """The value of a rule with no AST node of its own (`label`, `setting`, `methods`, ...): what
    its parent needs of it: its meaningful children, and its extent (a Span only on demand)."""

    __slots__ = ("data", "kids", "children", "file")

    def __init__(self, data: str, kids: Any, children: list[Any], file: str):
        self.data, self.kids, self.children, self.file = data, kids, children, file

    @property
    def span(self) -> Span:
        (line, column), (end_line, end_column) = _start(self.children[0]), _end(self.children[-1])
        return Span(file=self.file, line=line or 0, column=column or 0, end_line=end_line or 0,
                    end_column=end_column or 0)


# Terminals that carry meaning; every other token is a keyword or punctuation.
MEANINGFUL = frozenset({"AUTHZ_ACTION", "OTHERWISE", "NONE", "STAR", "EQ", "NAME", "STRING",
                        "ENDPOINT", "DURATION", "PERCENT", "SIZE", "RATE", "STATUS_CLASS", "INT"})


def _py_kids(children: list[Any]) -> list[Any]:
    """The children that carry meaning: not keyword or punctuation tokens."""
    return [c for c in children if c.__class__ is not Token or c.type in MEANINGFUL]


# A rule's children are tokens, Parts and AST nodes: lark splices `_rule` trees into their
# parent before the parent's method sees them, so no tree reaches these.
def _start(node: Any) -> tuple[int | None, int | None]:
    if node.__class__ is Token:
        return node.line, node.column
    if node.__class__ is Part:
        return _start(node.children[0])
    return node.span.line, node.span.column


def _end(node: Any) -> tuple[int | None, int | None]:
    if node.__class__ is Token:
        return node.end_line, node.end_column
    if node.__class__ is Part:
        return _end(node.children[-1])
    return node.span.end_line, node.span.end_column


def _py_span(children: list[Any], path: str) -> Span:
    """The extent of a rule's children, from the tokens at its edges."""
    first, last = children[0], children[-1]
    # most rules start and end with a token (a keyword, a brace): skip the generic walk
    line, column = (first.line, first.column) if first.__class__ is Token else _start(first)
    end_line, end_column = (last.end_line, last.end_column) if last.__class__ is Token else _end(last)
    return _new_span(Span, (path, line or 0, column or 0, end_line or 0, end_column or 0))


# The Builder calls these for nearly every reduction: meshc/_lalrc.c has them in C when built
# (tests/test_lalrc.py holds both versions equal).
if _lalrc is not None:
    _lalrc.set_ast_types(Token, Part, Span, MEANINGFUL)
    _kids, _span = _lalrc.kids, _lalrc.span
else:
    _kids, _span = _py_kids, _py_span


class Builder(Transformer):  # type: ignore[type-arg]
    """Builds the typed AST of one file bottom-up, one grammar rule at a time: the parser calls
    the method named after each rule it reduces (meshc.lalr), with the rule's children (tokens,
    as the tree keeps them all, and the values already built for its sub-rules). The same
    methods transform a lark tree (`transform`), for input only lark itself parses.

    Rules with no method here become a `Part` (`__default__`); rules whose names start with `_`
    are inlined into their parent by lark and stay trees. Helper names start with `_b_` so
    that they never shadow a rule."""

    def __init__(self, path: str, sink: Sink):
        super().__init__(visit_tokens=False)
        self.path = path
        self.sink = sink

    # ----------------------------------------------------------------- helpers
    def _b_tok_span(self, tok: Token) -> Span:
        return _new_span(Span, (self.path, tok.line or 0, tok.column or 0, tok.end_line or 0, tok.end_column or 0))

    def _b_name(self, tok: Token) -> Name:
        return Name(tok.value, _new_span(Span, (self.path, tok.line or 0, tok.column or 0, tok.end_line or 0,
                                                tok.end_column or 0)))

    def _b_literal(self, tok: Token) -> Value | Name:
        """Convert any literal token; NAMEs stay names."""
        kind = tok.type
        raw = tok.value
        sp = self._b_tok_span(tok)
        if kind == "NAME":
            return Name(raw, sp)
        if kind == "STRING":
            text = unquote(raw)
            problem = text_problem("string", text)
            bad = _unknown_escape(raw) if "\\" in raw else None
            if bad is not None and problem is None:
                self.sink.error("E009", f"unknown escape '\\{bad}' in a string", sp, label="not an escape",
                                help='strings know \\" \\\\ \\n and \\t; write \\\\ for a backslash '
                                     '(a regex\'s \\. is "\\\\." in .mesh)')
            if problem is not None:
                code, message, help = problem
                self.sink.error(code, message, sp, label="not allowed in a string", help=help)
            return Value(text, raw, sp)
        if kind == "INT":
            return Value(self._b_int(raw, raw, sp), raw, sp)
        if kind == "DURATION":
            return Value(self._b_duration(raw, sp), raw, sp)
        if kind == "PERCENT":
            num = raw[:-1]
            whole, _, frac = num.partition(".")
            if len(frac) > 2:
                self.sink.error("E006", f"percentage {_short(raw)} has more than two decimals", sp,
                                label="too precise", help="write at most two decimals, e.g. 12.5% or 33.33%")
            if len(whole.lstrip("0")) > 3:
                self.sink.error("E006", f"percentage {_short(raw)} is above 100%", sp, label="out of range",
                                help="percentages go from 0% to 100%")
                return Value(10_000, raw, sp)
            hundredths = _int(whole) * 100 + int((frac + "00")[:2])
            if hundredths > 10_000:
                self.sink.error("E006", f"percentage {raw} is above 100%", sp, label="out of range",
                                help="percentages go from 0% to 100%")
            return Value(hundredths, raw, sp)
        if kind == "SIZE":
            return Value(self._b_size(raw, sp), raw, sp)
        if kind == "RATE":
            count, unit = raw.split("/")
            return Value((self._b_int(count, raw, sp), unit), raw, sp)
        if kind == "STATUS_CLASS":
            return Value(raw, raw, sp)
        if kind == "ENDPOINT":
            host, _, port = raw.rpartition(":")
            return Value((host.strip("[]"), self._b_int(port, raw, sp)), raw, sp)
        return Name(raw, sp)

    def _b_int(self, digits: str, raw: str, sp: Span) -> int:
        """An integer of at most MAX_INT, its digits counted before conversion; E006 above."""
        if len(digits.lstrip("0")) > _MAX_DIGITS or _int(digits) > _MAX_INT:
            self.sink.error("E006", f"integer {_short(raw)} is too large", sp, label="out of range",
                            help=f"integers are at most {_MAX_INT}")
            return _MAX_INT
        return _int(digits)

    def _b_duration(self, raw: str, sp: Span) -> int:
        """A duration in whole milliseconds, computed exactly (no float: `99999999999999999999d`
        must not round); E006 for fractions of a millisecond and durations above 365d."""
        m = _DURATION_RE.fullmatch(raw)
        assert m is not None
        whole, frac, unit = m.group(1), (m.group(2) or "").rstrip("0"), m.group(3)
        too_long = f"duration {_short(raw)} is above {MAX_DURATION_MS // 86_400_000}d"
        if len(whole.lstrip("0")) > _MAX_DIGITS:
            self.sink.error("E006", too_long, sp, label="out of range",
                            help=f"durations go up to {MAX_DURATION_MS // 86_400_000}d, which every target accepts")
            return MAX_DURATION_MS
        if len(frac) > _MAX_FRACTION:
            self.sink.error("E006", f"duration {_short(raw)} is not a whole number of milliseconds", sp,
                            label="too precise", help="durations have millisecond resolution, e.g. 1500ms")
            return 0
        ms, rest = divmod((_int(whole) * 10 ** len(frac) + _int(frac)) * _DURATION_MS[unit], 10 ** len(frac))
        if rest:
            self.sink.error("E006", f"duration {_short(raw)} is not a whole number of milliseconds", sp,
                            label="too precise", help="durations have millisecond resolution, e.g. 1500ms")
        elif ms > MAX_DURATION_MS:
            self.sink.error("E006", too_long, sp, label="out of range",
                            help=f"durations go up to {MAX_DURATION_MS // 86_400_000}d, which every target accepts")
            return MAX_DURATION_MS
        return ms

    def _b_size(self, raw: str, sp: Span) -> int:
        """A size in whole bytes; E006 for fractions of a byte and sizes out of range."""
        m = _SIZE_RE.fullmatch(raw)
        assert m is not None
        whole, frac, unit = m.group(1), (m.group(2) or "").rstrip("0"), m.group(3)
        if len(whole.lstrip("0")) > _MAX_DIGITS:
            self.sink.error("E006", f"size {_short(raw)} is above 1GiB", sp, label="out of range",
                            help="sizes go from 1B to 1GiB")
            return MAX_SIZE
        if len(frac) > _MAX_FRACTION:
            self.sink.error("E006", f"size {_short(raw)} is not a whole number of bytes", sp, label="too precise",
                            help="write it in a smaller unit")
            return 1
        scale = _SIZE_BYTES[unit]
        # exact arithmetic: 1.1MB is 1100000 bytes, not 1100000.0000000002
        numerator = (_int(whole) * 10 ** len(frac) + _int(frac)) * scale
        n, rest = divmod(numerator, 10 ** len(frac))
        if rest:
            self.sink.error("E006", f"size {raw} is not a whole number of bytes", sp, label="too precise",
                            help=f"write it in a smaller unit, e.g. {n}B")
        elif n == 0:
            self.sink.error("E006", f"size {raw} is zero", sp, label="out of range",
                            help="sizes go from 1B to 1GiB")
        elif n > MAX_SIZE:
            self.sink.error("E006", f"size {raw} is above 1GiB", sp, label="out of range",
                            help="sizes go from 1B to 1GiB")
        return n

    def _b_lit(self, tok: Token) -> Value:
        v = self._b_literal(tok)
        return v if isinstance(v, Value) else Value(v.text, v.text, v.span)

    def __default__(self, data: str, children: list[Any], meta: Any) -> Any:
        if data.startswith("_"):
            return Tree(data, children)  # inlined into the parent by lark
        return Part(data, _kids(children), children, self.path)

    # ----------------------------------------------------------------- file
    def start(self, children: list[Any]) -> File:
        return File(self.path, tuple(children))

    def import_decl(self, c: list[Any]) -> ImportDecl:
        (s,) = _kids(c)
        return ImportDecl(self._b_lit(s), _span(c, self.path))

    def mesh_decl(self, c: list[Any]) -> MeshDecl:
        name, *stmts = _kids(c)
        return MeshDecl(self._b_name(name), tuple(stmts), _span(c, self.path))

    def overlay_mesh(self, c: list[Any]) -> MeshDecl:
        return MeshDecl(None, tuple(_kids(c)), _span(c, self.path))

    def _b_block(self, kind: str, c: list[Any]) -> BlockDecl:
        name, *stmts = _kids(c)
        return BlockDecl(kind, self._b_name(name), tuple(stmts), _span(c, self.path))

    def service_decl(self, c: list[Any]) -> BlockDecl:
        return self._b_block("service", c)

    def external_decl(self, c: list[Any]) -> BlockDecl:
        return self._b_block("external", c)

    def policy_decl(self, c: list[Any]) -> BlockDecl:
        return self._b_block("policy", c)

    def overlay_service(self, c: list[Any]) -> BlockDecl:
        return self._b_block("overlay", c)

    def authz_decl(self, c: list[Any]) -> AuthzDecl:
        action, *rest = _kids(c)
        sources: list[SourceRef] = []
        targets: list[Name] = []
        opts: dict[str, Any] = {}
        for p in rest:
            if p.data == "source_any":
                sources.append(SourceRef("any", None, p.span))
            elif p.data in ("source", "source_identity"):
                sources.append(SourceRef("identity" if p.data == "source_identity" else "name",
                                         self._b_name(p.kids[0]), p.span))
            elif p.data == "target":
                targets.append(self._b_name(p.kids[0]))
            elif p.data == "methods":
                opts["methods"] = tuple(self._b_name(v) for v in p.kids)
            elif p.data == "ports":
                opts["ports"] = tuple(self._b_lit(v) for v in p.kids)
            else:  # paths, except_paths (PathPatterns), headers (StrMatches)
                opts[p.data] = tuple(p.kids)
        return AuthzDecl(str(action), tuple(sources), tuple(targets), span=_span(c, self.path), **opts)

    # ----------------------------------------------------------------- statements
    def _b_setting(self, key: str, c: list[Any]) -> Setting:
        (v,) = _kids(c)
        return Setting(key, self._b_literal(v), None, _span(c, self.path))

    def trust_domain(self, c: list[Any]) -> Setting:
        return self._b_setting("trust_domain", c)

    def namespace(self, c: list[Any]) -> Setting:
        return self._b_setting("namespace", c)

    def authz_default(self, c: list[Any]) -> Setting:
        return self._b_setting("authz_default", c)

    def path_normalization(self, c: list[Any]) -> Setting:
        return self._b_setting("path_normalization", c)

    def access_log(self, c: list[Any]) -> Setting:
        return self._b_setting("access_log", c)

    def metrics(self, c: list[Any]) -> Setting:
        return self._b_setting("metrics", c)

    def trace_sampling(self, c: list[Any]) -> Setting:
        return self._b_setting("trace_sampling", c)

    def identity(self, c: list[Any]) -> Setting:
        return self._b_setting("identity", c)

    def host(self, c: list[Any]) -> Setting:
        return self._b_setting("host", c)

    def mtls(self, c: list[Any]) -> Setting:
        k = _kids(c)
        return Setting("mtls", self._b_name(k[0]), self._b_lit(k[1]) if len(k) > 1 else None, _span(c, self.path))

    def ingress_identity(self, c: list[Any]) -> Setting:
        k = _kids(c)
        return Setting("ingress_identity", self._b_name(k[0]), self._b_name(k[1]) if len(k) > 1 else None,
                       _span(c, self.path))

    def tls_originate(self, c: list[Any]) -> Setting:
        k = _kids(c)
        sp = _span(c, self.path)
        return Setting("tls_originate", self._b_lit(k[0]) if k else Value("", "", sp), None, sp)

    def port(self, c: list[Any]) -> PortDecl:
        proto, num = _kids(c)
        return PortDecl(self._b_name(proto), self._b_lit(num), _span(c, self.path))

    def endpoints(self, c: list[Any]) -> Endpoints:
        items = []
        for tok in _kids(c):
            v = self._b_lit(tok)
            items.append(EndpointRef(v.value[0], v.value[1], v.span))
        return Endpoints(tuple(items), _span(c, self.path))

    def version(self, c: list[Any]) -> VersionDecl:
        name, *stmts = _kids(c)
        return VersionDecl(self._b_name(name), tuple(stmts), _span(c, self.path))

    def labels(self, c: list[Any]) -> Labels:
        items = []
        for lab in _kids(c):
            k, v = lab.kids
            items.append((self._b_name(k), self._b_literal(v)))
        return Labels(tuple(items), _span(c, self.path))

    def calls(self, c: list[Any]) -> NameList:
        return NameList("calls", tuple(self._b_name(n) for n in _kids(c)), _span(c, self.path))

    def use(self, c: list[Any]) -> NameList:
        return NameList("use", tuple(self._b_name(n) for n in _kids(c)), _span(c, self.path))

    def expose(self, c: list[Any]) -> Expose:
        port: Value | None = None
        hosts: tuple[Value, ...] = ()
        paths: tuple[PathPattern, ...] = ()
        for p in _kids(c):
            if p.data == "expose_port":
                port = self._b_lit(p.kids[0])
            elif p.data == "expose_hosts":
                hosts = tuple(self._b_lit(h) for h in p.kids)
            else:
                paths = tuple(p.kids)
        return Expose(port, hosts, paths, _span(c, self.path))

    def objective(self, c: list[Any]) -> ObjectiveDecl:
        kind, *args = _kids(c)
        window = None
        if args and isinstance(args[-1], Part):
            window = self._b_lit(args.pop().kids[0])
        return ObjectiveDecl(self._b_name(kind), tuple(self._b_literal(a) for a in args), window, _span(c, self.path))

    def timeout(self, c: list[Any]) -> TimeoutDecl:
        (v,) = _kids(c)
        return TimeoutDecl(None if v.type == "NONE" else self._b_lit(v), _span(c, self.path))

    def max_request_body(self, c: list[Any]) -> Setting:
        """`max_request_body 10MiB`; `none` (a Name) lifts a limit set by a policy."""
        (v,) = _kids(c)
        return Setting("max_request_body", self._b_name(v) if v.type == "NONE" else self._b_lit(v), None,
                       _span(c, self.path))

    def retry(self, c: list[Any]) -> RetryDecl:
        first, *opts = _kids(c)
        if first.type == "NONE":
            return RetryDecl(None, span=_span(c, self.path))
        fields: dict[str, Any] = {}
        for o in opts:
            k = o.kids
            if o.data == "retry_on":
                fields["on"] = tuple(self._b_literal(x) for x in k)
            elif o.data == "per_try":
                fields["per_try"] = self._b_lit(k[0])
            elif o.data == "backoff":
                fields["backoff"] = self._b_lit(k[0])
                if len(k) > 1:
                    fields["backoff_max"] = self._b_lit(k[1])
            elif o.data == "budget":
                fields["budget"] = self._b_lit(k[0])
        return RetryDecl(self._b_lit(first), span=_span(c, self.path), **fields)

    def load_balance(self, c: list[Any]) -> LoadBalanceDecl:
        policy, *rest = _kids(c)
        if not rest:
            return LoadBalanceDecl(self._b_name(policy), span=_span(c, self.path))
        h = rest[0]
        on = {"hash_key": "header", "hash_cookie": "cookie", "hash_query": "query",
              "hash_source_ip": "source_ip"}[h.data]
        k = h.kids
        return LoadBalanceDecl(self._b_name(policy), on, self._b_lit(k[0]) if k else None,
                               self._b_lit(k[1]) if len(k) > 1 else None, _span(c, self.path))

    def _b_settings(self, c: list[Any], key: str) -> SettingsDecl:
        items, proto, path = [], None, None
        for x in _kids(c):
            if isinstance(x, Part):
                k, v = x.kids
                items.append((self._b_name(k), self._b_lit(v)))
            elif x.type == "NAME":
                proto = self._b_name(x)
            else:
                path = self._b_lit(x)
        return SettingsDecl(key, tuple(items), proto, path, _span(c, self.path))

    def circuit_breaker(self, c: list[Any]) -> SettingsDecl:
        return self._b_settings(c, "circuit_breaker")

    def outlier(self, c: list[Any]) -> SettingsDecl:
        return self._b_settings(c, "outlier")

    def health_check(self, c: list[Any]) -> SettingsDecl:
        return self._b_settings(c, "health_check")

    def rate_limit(self, c: list[Any]) -> RateLimitDecl:
        rate, *burst = _kids(c)
        v = self._b_lit(rate)
        return RateLimitDecl(v.value[0], v.value[1], self._b_lit(burst[0]) if burst else None, _span(c, self.path))

    def fault(self, c: list[Any]) -> FaultDecl:
        fields: dict[str, Any] = {}
        for p in _kids(c):
            if p.data == "condition":
                fields["when"] = p.kids
            else:  # delay, abort
                k = p.kids
                fields[p.data] = self._b_lit(k[0])
                if len(k) > 1:
                    fields[f"{p.data}_percent"] = self._b_lit(k[1])
        return FaultDecl(span=_span(c, self.path), **fields)

    def route(self, c: list[Any]) -> RouteDecl:
        return RouteDecl(tuple(_kids(c)), _span(c, self.path))

    def rewrite(self, c: list[Any]) -> RewriteDecl:
        kind, val = _kids(c)
        return RewriteDecl(self._b_name(kind), self._b_lit(val), _span(c, self.path))

    def _b_header_op(self, c: list[Any], direction: str) -> HeaderOp:
        (op,) = _kids(c)
        k = op.kids
        return HeaderOp(direction, self._b_name(k[0]), self._b_name(k[1]), self._b_lit(k[2]) if len(k) > 2 else None,
                        _span(c, self.path))

    def request_headers(self, c: list[Any]) -> HeaderOp:
        return self._b_header_op(c, "request")

    def response_headers(self, c: list[Any]) -> HeaderOp:
        return self._b_header_op(c, "response")

    def mirror(self, c: list[Any]) -> MirrorDecl:
        dest, *pct = _kids(c)
        return MirrorDecl(dest, self._b_lit(pct[0]) if pct else None, _span(c, self.path))

    # ----------------------------------------------------------------- routing pieces
    def rule(self, c: list[Any]) -> RuleDecl:
        k = _kids(c)
        when: Condition = k[0].kids if isinstance(k[0], Part) else ()
        action = k[1]
        if isinstance(action, DestRef):  # `-> dest`: all of it to one destination
            sp = action.span
            action = Action("forward", (SplitItem(action, Value(10_000, "100%", sp), sp),), span=sp)
        body: tuple[Any, ...] = tuple(k[2].kids) if len(k) > 2 else ()
        return RuleDecl(when, action, body, _span(c, self.path))

    def split(self, c: list[Any]) -> Action:
        return Action("split", tuple(_kids(c)), span=_span(c, self.path))

    def split_item(self, c: list[Any]) -> SplitItem:
        d, pct = _kids(c)
        return SplitItem(d, self._b_lit(pct), _span(c, self.path))

    def redirect(self, c: list[Any]) -> Action:
        opts = []
        for o in _kids(c):
            k, v = o.kids
            opts.append((self._b_name(k), self._b_literal(v)))
        return Action("redirect", options=tuple(opts), span=_span(c, self.path))

    def respond(self, c: list[Any]) -> Action:
        k = _kids(c)
        return Action("respond", status=self._b_lit(k[0]), body=self._b_lit(k[1]) if len(k) > 1 else None,
                      span=_span(c, self.path))

    def destination(self, c: list[Any]) -> DestRef:
        k = _kids(c)
        return DestRef(self._b_name(k[0]), self._b_name(k[1]) if len(k) > 1 else None, _span(c, self.path))

    def condition(self, c: list[Any]) -> Part:
        """An OR of AND-groups; its `kids` are the Condition (a tuple of tuples of Conds)."""
        return Part("condition", tuple(tuple(conj.kids) for conj in _kids(c)), c, self.path)

    def path_cond(self, c: list[Any]) -> Cond:
        return Cond("path", path=_kids(c)[0], span=_span(c, self.path))

    def method_cond(self, c: list[Any]) -> Cond:
        return Cond("method", methods=tuple(self._b_name(n) for n in _kids(c)), span=_span(c, self.path))

    def header_cond(self, c: list[Any]) -> Cond:
        return Cond("header", match=_kids(c)[0], span=_span(c, self.path))

    def query_cond(self, c: list[Any]) -> Cond:
        return Cond("query", match=_kids(c)[0], span=_span(c, self.path))

    def path_pattern(self, c: list[Any]) -> PathPattern:
        kind, val = _kids(c)
        return PathPattern(self._b_name(kind), self._b_lit(val), _span(c, self.path))

    def string_match(self, c: list[Any]) -> StrMatch:
        k = _kids(c)
        return StrMatch(self._b_name(k[0]), Name(str(k[1]), self._b_tok_span(k[1])),
                        self._b_lit(k[2]) if len(k) > 2 else None, _span(c, self.path))
