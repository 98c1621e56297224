"""The resolved mesh model: what every backend, the graph checks and `meshc diff` read.

The model is frozen pydantic. It is produced only by `meshc.resolve` from the AST; backends
import this module and nothing of the front end. Every construct keeps the `Span` of the
`.mesh` text it came from, so a backend can point at the line it cannot lower.

Units are fixed so that backends never convert ambiguously:
- durations are integer milliseconds (`Millis`);
- percentages are integer hundredths of a percent (`Percent`; 100% == 10_000), so weights
  with two decimals add up exactly;
- rates are requests per second, minute or hour as written (`RateLimit.unit`);
- sizes are integer bytes (`10MiB` == 10_485_760).

Semantics pinned here (see docs/language.md for the reference):
- `Retry.attempts` counts retries: `retry 3` means at most 4 attempts in total.
- `Timeout.ms` bounds the whole request including retries; `None` means "no timeout" and is
  lowered explicitly (never a target's hidden default). `Retry.per_try_ms` bounds one attempt.
- `PathMatch(kind="prefix")` matches bytes (`/api` matches `/apix`); `kind="under"` matches
  whole segments (`/api` matches `/api` and `/api/...` only).
- Authorization: deny beats allow; under `deny_by_default` an unmatched request is refused.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, PrivateAttr
from pydantic_core import CoreSchema, core_schema

Millis = int
Percent = int  # hundredths of a percent: 10_000 == 100%
FULL = 10_000

MtlsMode = Literal["strict", "permissive", "disabled"]
AuthzDefault = Literal["deny_by_default", "allow_by_default"]
Protocol = Literal["http", "http2", "grpc", "tcp", "tls"]
PathKind = Literal["exact", "prefix", "under", "regex"]
StringMatchKind = Literal["exact", "prefix", "regex", "present", "absent"]
LbPolicy = Literal["round_robin", "least_request", "random", "consistent_hash"]
HashOn = Literal["header", "cookie", "source_ip", "query"]
RetryOn = Literal["5xx", "gateway-error", "connect-failure", "reset", "retriable-4xx", "refused-stream"]
SourceKind = Literal["service", "identity", "any", "authenticated", "unauthenticated", "ingress"]
RateUnit = Literal["s", "m", "h"]

HTTP_PROTOCOLS: frozenset[str] = frozenset({"http", "http2", "grpc"})


class Span(NamedTuple):
    """Where a construct was written. Dumps as `file:line:col` to keep goldens readable.

    A named tuple, not a pydantic model: the parser makes one per AST node (about a million
    for a 10,000-service mesh), and a tuple is built several times faster. Model fields of
    this type accept only `Span` instances (nothing to convert) and serialize as text."""

    file: str
    line: int
    column: int
    end_line: int = 0
    end_column: int = 0

    def __str__(self) -> str:
        # line 0: the file as a whole (one that cannot be read), not a position in it
        return f"{self.file}:{self.line}:{self.column}" if self.line > 0 else self.file

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.is_instance_schema(
            cls, serialization=core_schema.plain_serializer_function_ser_schema(str))


NO_SPAN = Span(file="<builtin>", line=0, column=0)


class Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    span: Span = NO_SPAN


# --------------------------------------------------------------------------- strings and limits
#
# The one place that decides which text each kind of string may hold and how long it may be.
# The parser applies the `string` kind to every string literal (so no literal, whatever field it
# lands in, carries CR, LF, NUL or ESC), the resolver applies the field's own kind; both report
# the problem at the literal. Backends then only quote for their format. The limits are ones
# every target's consumer accepts (docs/language.md, "Strings and limits"): nginx refuses a
# config token of 4096 bytes or more and its quoting may double a value, Envoy's direct
# responses are at most 4096 bytes, DNS names 253, Kubernetes label values 63.


class TextKind(NamedTuple):
    what: str  # "a header value": for messages
    max_bytes: int  # UTF-8 bytes
    allowed: str  # the help line: what the kind may hold
    pattern: re.Pattern[str] | None = None  # the whole value must match (charset and shape)
    tab: bool = False  # HTAB allowed (header values, RFC 9110 field-value)
    empty: bool = False  # "" allowed
    ascii: bool = True  # only printable ASCII (and tab if `tab`); else any non-control character
    trim: bool = False  # no space or tab at either end (a recipient would strip them)
    shape_code: str = "E009"  # the code when the pattern does not match


_DNS = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*"
_IPV4 = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}"
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # RFC 9110 token: header names, cookie names
# RFC 3986 path-absolute; non-ASCII letters as written (`/café`), as the targets compare bytes
_PATH = r"/([-A-Za-z0-9._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2}|[^\x00-\x7f])*"
_LABEL = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"  # Kubernetes label value
_DNS_HELP = "lower-case letters, digits, '-' and '.'; labels of at most 63 characters"

TEXT_KINDS: dict[str, TextKind] = {
    # every string literal, whatever it is for: the resolver narrows it per field
    "string": TextKind("a string", 4096, "printable text and tab; write no control characters",
                       tab=True, empty=True, ascii=False),
    "trust_domain": TextKind(
        "a trust domain", 253, "lower-case letters, digits, '.', '-' and '_', beginning and ending with a "
        "letter or digit, at most 253 characters (it becomes part of every SPIFFE ID)",
        re.compile(r"[a-z0-9]([-a-z0-9._]*[a-z0-9])?")),
    "host_pattern": TextKind(
        "a host name", 253, f"a DNS name ({_DNS_HELP}), an IPv4 address, '*.' and a DNS name, or '*'",
        re.compile(rf"\*|(\*\.)?{_DNS}|{_IPV4}")),
    "host": TextKind("a host name", 253, f"a DNS name ({_DNS_HELP}) or an IPv4 address",
                     re.compile(rf"{_DNS}|{_IPV4}")),
    "sni": TextKind("an SNI server name", 253, f"a DNS name ({_DNS_HELP})", re.compile(_DNS)),
    "endpoint_host": TextKind("an endpoint host", 253, "a DNS name or an IP address"),
    "header_name": TextKind("a header name", 256, "an HTTP token: letters, digits and !#$%&'*+-.^_`|~, "
                            "at most 256 characters", re.compile(_TOKEN), shape_code="E108"),
    "cookie_name": TextKind("a cookie name", 256, "an HTTP token: letters, digits and !#$%&'*+-.^_`|~, "
                            "at most 256 characters", re.compile(_TOKEN)),
    "query_name": TextKind("a query parameter name", 256, "ASCII letters, digits and -._~, at most 256 characters",
                           re.compile(r"[-A-Za-z0-9._~]+")),
    "header_value": TextKind(
        "a header value", 1024, "printable text, spaces and tabs (not at either end), at most 1024 bytes",
        tab=True, ascii=False, trim=True),
    # set/add values: Envoy reads `%...%` there as a command (Istio, Consul and Gateway API
    # implementations on Envoy pass the value through), so a `%` has no one meaning across targets
    "added_header_value": TextKind(
        "an added header value", 1024, "printable text, spaces and tabs (not at either end) but '%' (Envoy-based "
        "meshes expand %...% in added headers), at most 1024 bytes", re.compile(r"[^%]*"),
        tab=True, ascii=False, trim=True),
    "query_value": TextKind("a query parameter value", 1024, "printable text and spaces (not at either end), "
                            "at most 1024 bytes", ascii=False, trim=True),
    "path": TextKind(
        "a path", 1024, "'/' and then letters, digits, -._~!$&'()*+,;=:@/ and %XX escapes, at most "
        "1024 bytes (no spaces, no query '?' and no fragment '#')", re.compile(_PATH), ascii=False),
    # a path meshc writes into a request or a response (health checks, rewrites, redirects): what
    # goes on the wire is visible ASCII, non-ASCII is percent-encoded (the native proxy's loader
    # refuses anything else too)
    "wire_path": TextKind(
        "a path", 1024, "'/' and then ASCII letters, digits, -._~!$&'()*+,;=:@/ and %XX escapes, at most "
        "1024 characters (no spaces, no non-ASCII letters: percent-encode them, no query '?' and no "
        "fragment '#')", re.compile(_PATH)),
    "regex": TextKind("a regular expression", 1024, "printable text (\\t, \\n, \\x1b in RE2 syntax for "
                      "control characters), at most 1024 characters", ascii=False),
    "label_key": TextKind("a label key", 63, "at most 63 ASCII letters, digits, '-', '_' and '.', beginning "
                          "and ending with a letter or digit", re.compile(_LABEL), shape_code="E108"),
    "label_value": TextKind("a label value", 63, "at most 63 ASCII letters, digits, '-', '_' and '.', "
                            "beginning and ending with a letter or digit", re.compile(_LABEL), empty=True,
                            shape_code="E108"),
    "body": TextKind("a response body", 1024, "text without control characters but tab, at most 1024 bytes",
                     tab=True,
                     empty=True, ascii=False),
}

# Characters no string may hold: C0 controls but tab, DEL, C1 controls (a terminal or a config
# parser may act on them), the line and paragraph separators (line breaks in YAML 1.1 and
# JavaScript) and the bidirectional overrides (text that reads differently than it is).
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029\ufeff")


def control_char(s: str, tab: bool = False) -> str | None:
    """The first character of `s` that is a control character (tab only if not `tab`)."""
    for c in s:
        if (c < " " and not (tab and c == "\t")) or "\x7f" <= c <= "\x9f" or c in _BIDI:
            return c
    return None


def char_name(c: str) -> str:
    """`U+000D (CR)`: how a message names a character without printing it."""
    short = {"\r": "CR", "\n": "LF", "\t": "TAB", "\0": "NUL", "\x1b": "ESC", "\x7f": "DEL", " ": "space"}
    name = short.get(c) or unicodedata.name(c, "")
    return f"U+{ord(c):04X}" + (f" ({name})" if name else "") if not c.isprintable() or c == " " else repr(c)


def text_problem(kind: str, s: str) -> tuple[str, str, str] | None:
    """(code, message, help) if `s` may not be a string of this kind, else None: E007 a control
    character, E008 too long, E009 (or the kind's code) a character or shape the kind does not
    allow. Control characters are checked first: they are the dangerous case."""
    k = TEXT_KINDS[kind]
    c = control_char(s, k.tab)
    if c is not None:
        where = f" at character {s.index(c) + 1}" if len(s) > 1 else ""
        return ("E007", f"{k.what} may not contain the control character {char_name(c)}{where}",
                f"{k.what} holds {k.allowed}")
    n = len(s.encode())
    if n > k.max_bytes:
        return ("E008", f"{k.what} of {n} bytes is longer than the {k.max_bytes} allowed", f"{k.what} holds {k.allowed}")
    if not s:
        return None if k.empty else (k.shape_code, f"{k.what} may not be empty", f"{k.what} holds {k.allowed}")
    if k.ascii:
        bad = next((ch for ch in s if not " " <= ch <= "~" and ch != "\t"), None)
        if bad is not None:
            return (k.shape_code, f"{k.what} may not contain {char_name(bad)}", f"{k.what} holds {k.allowed}")
    if k.trim and s != s.strip(" \t"):
        # a recipient strips them (RFC 9110 5.5): the value would silently mean another one
        return (k.shape_code, f"{k.what} may not begin or end with a space or tab", f"{k.what} holds {k.allowed}")
    if k.pattern is not None and not k.pattern.fullmatch(s):
        bad = _first_bad(k.pattern, s)
        detail = f" may not contain {char_name(bad)}" if bad else " is not well-formed"
        return (k.shape_code, f"{k.what}{detail}", f"{k.what} holds {k.allowed}")
    return None


def _first_bad(pattern: re.Pattern[str], s: str) -> str | None:
    """A character that no string of the pattern's kind contains, if there is one in `s` (for a
    precise message); None when every character is fine and only the shape is wrong."""
    for ch in dict.fromkeys(s):
        if not any(pattern.fullmatch(t) for t in (ch, f"a{ch}a", f"/{ch}", f"/{ch}a", f"/{ch}41", f"a{ch}0", f"*.a{ch}a")):
            return ch
    return None


# Durations are whole milliseconds up to 365 days: every target takes that (Envoy's protobuf
# Duration, Go durations in Kubernetes, Consul and Linkerd, the Gateway API's 99999h, App Mesh).
MAX_DURATION_MS = 365 * 86_400_000
MAX_INT = 2**31 - 1  # integers (counts, ports, status codes) before their own range checks


# --------------------------------------------------------------------------- matching


class PathMatch(Node):
    kind: PathKind
    value: str


class StringMatch(Node):
    """A header or query-parameter match. Header names are lower-cased (case-insensitive)."""

    name: str
    kind: StringMatchKind
    value: str = ""


class Match(Node):
    """All conditions must hold (AND). A rule holds several matches that are OR-ed."""

    path: PathMatch | None = None
    headers: tuple[StringMatch, ...] = ()
    query: tuple[StringMatch, ...] = ()
    methods: tuple[str, ...] = ()


# --------------------------------------------------------------------------- resilience


class Timeout(Node):
    ms: Millis | None  # None: explicitly no timeout


class Retry(Node):
    attempts: int  # retries, not attempts: total attempts = attempts + 1
    on: tuple[RetryOn, ...] = ("5xx", "connect-failure", "reset")
    status_codes: tuple[int, ...] = ()
    per_try_ms: Millis | None = None
    backoff_base_ms: Millis | None = None
    backoff_max_ms: Millis | None = None
    budget: Percent | None = None  # max share of active requests that may be retries

    @property
    def total_attempts(self) -> int:
        return self.attempts + 1


class LoadBalance(Node):
    policy: LbPolicy
    hash_on: HashOn | None = None
    hash_key: str = ""  # header, cookie or query parameter name
    cookie_ttl_ms: Millis | None = None


class CircuitBreaker(Node):
    max_connections: int | None = None
    max_pending: int | None = None
    max_requests: int | None = None
    max_retries: int | None = None


class Outlier(Node):
    consecutive_5xx: int = 5
    interval_ms: Millis = 10_000
    eject_ms: Millis = 30_000
    max_percent: Percent = 1_000


class HealthCheck(Node):
    protocol: Literal["http", "tcp", "grpc"] = "http"
    path: str = "/"
    interval_ms: Millis = 10_000
    timeout_ms: Millis = 1_000
    unhealthy: int = 3
    healthy: int = 2


class RateLimit(Node):
    requests: int
    unit: RateUnit = "s"
    burst: int | None = None

    @property
    def per_second(self) -> float:
        return self.requests / {"s": 1, "m": 60, "h": 3600}[self.unit]


class BodyLimit(Node):
    """`max_request_body`: a request whose body is larger is refused with 413 by the callee's
    sidecar (on its HTTP ports); the application never gets it whole (docs/language.md)."""

    bytes: int  # 1 .. 1GiB


class Fault(Node):
    """Applied on the callee's side before routing; delay and abort draw independently."""

    matches: tuple[Match, ...] = ()  # empty: every request
    delay_ms: Millis | None = None
    delay_percent: Percent = FULL
    abort_status: int | None = None
    abort_percent: Percent = FULL


class Resilience(Node):
    """Settings that a policy, a service or a single route rule may carry."""

    timeout: Timeout | None = None
    retry: Retry | None = None
    load_balance: LoadBalance | None = None
    circuit_breaker: CircuitBreaker | None = None
    outlier: Outlier | None = None
    health_check: HealthCheck | None = None
    rate_limit: RateLimit | None = None
    max_request_body: BodyLimit | None = None


# --------------------------------------------------------------------------- routing


class Destination(Node):
    service: str
    version: str | None = None  # None: every endpoint of the service
    weight: Percent = FULL


class HeaderOps(Node):
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


class Rewrite(Node):
    prefix: str | None = None  # replaces the matched path prefix
    path: str | None = None  # replaces the whole path
    host: str | None = None


class Redirect(Node):
    path: str | None = None
    host: str | None = None
    scheme: Literal["http", "https"] | None = None
    port: int | None = None
    code: int = 301


class DirectResponse(Node):
    status: int
    body: str = ""


class Mirror(Node):
    destination: Destination
    percent: Percent = FULL


class RouteRule(Node):
    """One ordered rule; the first rule whose matches hold wins. No matches: `otherwise`."""

    matches: tuple[Match, ...] = ()
    destinations: tuple[Destination, ...] = ()  # weights sum to FULL when forwarding
    redirect: Redirect | None = None
    respond: DirectResponse | None = None
    rewrite: Rewrite | None = None
    request_headers: HeaderOps | None = None
    response_headers: HeaderOps | None = None
    mirror: Mirror | None = None
    timeout: Timeout | None = None
    retry: Retry | None = None
    faults: tuple[Fault, ...] = ()

    @property
    def is_default(self) -> bool:
        return not self.matches


# --------------------------------------------------------------------------- services


class Port(Node):
    protocol: Protocol
    number: int
    mtls: MtlsMode  # effective: port setting, else service, else mesh

    @property
    def name(self) -> str:
        return f"{self.protocol}-{self.number}"


class Endpoint(Node):
    host: str  # an IP address or a DNS name (re-resolved by the native and Envoy targets)
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class Version(Node):
    name: str
    labels: tuple[tuple[str, str], ...] = ()  # sorted by key
    endpoints: tuple[Endpoint, ...] = ()


class Ingress(Node):
    paths: tuple[PathMatch, ...] = ()  # empty: every path
    hosts: tuple[str, ...] = ("*",)
    port: int = 80


class External(Node):
    """Egress: a service outside the mesh, reached by host name."""

    host: str
    tls_originate: bool = False  # callers speak plain text; the sidecar originates TLS
    sni: str | None = None


class Identity(Node):
    name: str  # the service account
    namespace: str
    trust_domain: str

    @property
    def spiffe(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.name}"


class Slo(Node):
    kind: Literal["availability", "latency"]
    objective: Percent  # e.g. 9990 for 99.9%
    window_ms: Millis = 30 * 24 * 3600 * 1000
    threshold_ms: Millis | None = None  # latency objectives
    quantile: Percent | None = None  # p99 -> 9900


class Service(Node):
    name: str
    namespace: str
    identity: Identity
    ports: tuple[Port, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()  # endpoints shared by all versions
    versions: tuple[Version, ...] = ()
    routes: tuple[RouteRule, ...] = ()
    resilience: Resilience = Resilience()
    faults: tuple[Fault, ...] = ()
    calls: tuple[str, ...] = ()  # declared dependencies (services it calls)
    call_spans: tuple[Span, ...] = ()  # where each entry of `calls` was written (parallel to it)
    expose: Ingress | None = None
    external: External | None = None
    mtls: MtlsMode = "strict"  # effective service-level mode
    objectives: tuple[Slo, ...] = ()

    def version(self, name: str) -> Version | None:
        return next((v for v in self.versions if v.name == name), None)

    @property
    def is_http(self) -> bool:
        return any(p.protocol in HTTP_PROTOCOLS for p in self.ports)

    def all_endpoints(self) -> tuple[Endpoint, ...]:
        return self.endpoints + tuple(e for v in self.versions for e in v.endpoints)

    def endpoints_of(self, version: str | None) -> tuple[Endpoint, ...]:
        """Endpoints behind a destination: the version's own, else the service's."""
        if version is None:
            return self.all_endpoints()
        v = self.version(version)
        return (v.endpoints if v and v.endpoints else self.endpoints)


# --------------------------------------------------------------------------- authorization


class Source(Node):
    """Who calls. `service`: that service's identity; `identity`: a service account by name;
    `any` (`*`): anyone, authenticated or not; `authenticated`: any mTLS peer of the trust
    domain; `unauthenticated`: plaintext callers only; `ingress`: the ingress gateway."""

    kind: SourceKind
    name: str = ""  # the service or identity name, for those kinds

    def __str__(self) -> str:
        return self.name if self.kind in ("service", "identity") else {
            "any": "*", "authenticated": "authenticated", "unauthenticated": "unauthenticated",
            "ingress": "ingress"}[self.kind]


class AuthzRule(Node):
    action: Literal["allow", "deny"]
    sources: tuple[Source, ...]
    destinations: tuple[str, ...]  # service names; ("*",) for every service
    methods: tuple[str, ...] = ()
    paths: tuple[PathMatch, ...] = ()
    not_paths: tuple[PathMatch, ...] = ()
    ports: tuple[int, ...] = ()
    headers: tuple[StringMatch, ...] = ()


# --------------------------------------------------------------------------- the mesh


class Observability(Node):
    access_log: Literal["json", "text", "off"] = "json"
    metrics: bool = True
    trace_sampling: Percent = 100  # 1%


class Mesh(Node):
    name: str
    trust_domain: str = "cluster.local"
    namespace: str = "default"
    mtls: MtlsMode = "strict"
    authz: AuthzDefault = "deny_by_default"
    path_normalization: Literal["strict", "off"] = "strict"
    observability: Observability = Observability()
    # The identity of the ingress gateway: what `allow ingress -> svc` admits.
    ingress_identity: Identity = Identity(name="ingress-gateway", namespace="default",
                                          trust_domain="cluster.local")
    # The mesh-wide default request timeout, as written. The resolver has already applied it to
    # every HTTP service's resilience.timeout: backends and checks read only the service's.
    timeout: Timeout | None = None
    services: tuple[Service, ...] = ()  # sorted by name
    rules: tuple[AuthzRule, ...] = ()  # in source order (order does not change meaning)
    files: tuple[str, ...] = ()  # every source file, root first

    _by_name: dict[str, Service] = PrivateAttr(default_factory=dict)

    def model_post_init(self, _context: object) -> None:
        self._by_name = {s.name: s for s in self.services}

    def service(self, name: str) -> Service | None:
        return self._by_name.get(name)

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(sorted({s.namespace for s in self.services} | {self.namespace}))

    def dump(self) -> dict:
        """A plain-data dump (for goldens and `meshc compile --target model`)."""
        return self.model_dump(mode="json", exclude_defaults=True)
