"""Plain nginx sidecars: one `<service>/nginx.conf` per service (nginx >= 1.22, Debian `nginx`,
http core, ssl, rewrite, map, split_clients, limit_req, mirror and upstream modules; no njs,
no stream module, no NGINX Plus).

Topology (the same as the Envoy backend's, so tests and tools read one `index.json` shape):
- The sidecar of S terminates S's inbound traffic on `<inbound_address>:<port>` (mTLS), rejects
  encoded slashes, authorizes, rate-limits and proxies to S's endpoints, choosing the version
  the caller picked in `x-meshc-version`.
- For every dependency D of S (declared `calls` and allow-rule edges from S) and each port of D,
  an outbound server on `127.0.0.1:<outbound_base + i>` evaluates D's route table (versions,
  splits, retries, timeouts, rewrites, header operations, redirects, mirrors) and proxies to D's
  sidecar at `peer_host:<port>` over mTLS, setting `x-meshc-version` (or removing it).
- Services with `expose ingress` get `<ingress identity>/nginx.conf`: plaintext HTTP on each
  exposed port (server_name per host), a location per exposed path (`=` exact, `^~` byte
  prefix, `~` anchored regex; `under` is `=` plus `^~ /p/`) entering the service's route table
  as a caller would, with the ingress identity's certificate; every other path answers 404.

Lowering decisions, and where nginx cannot say exactly what meshc means:
- Identity. nginx exposes no subject-alternative-name variable (only njs, not in this target,
  could parse the URI SAN), and matching the SPIFFE URI inside `$ssl_client_raw_cert` (base64
  DER) is unsound. The sidecar therefore verifies the client certificate against the mesh CA
  (`ssl_verify_client on`, depth 1) and reads the identity from the verified certificate's
  subject DN, which `meshc certs` binds to the SPIFFE ID one to one (`meshc.certs.subject_cn`):
  `CN=<sa>.<namespace>,O=meshc` when it fits X.509's 64 characters (read back by a regex), else
  a prefix, `_` and 128 bits of SHA-256 of the SPIFFE ID (listed in the map for every identity
  the mesh knows: its services, the ingress, and `namespace/account` names in rules). Two known
  identities with one subject are refused (E332). A verified subject of neither form is an
  authenticated caller of no known identity (`spiffe://<td>/meshc/unrecognized-subject`:
  `authenticated` and `*` match it, no identity does). This is sound only for a CA that never
  issues one subject to two identities (true of `meshc certs`; not of SPIRE, whose subjects
  carry no identity); with another CA, use a per-workload CA or the Envoy target. For the same
  reason nginx cannot see, let alone refuse, a certificate with several URI SANs: `meshc certs`
  issues exactly one. Outbound, the callee is verified the same way (`proxy_ssl_name` is the
  callee's `subject_cn`: meshc leaves carry no DNS SAN, so OpenSSL checks the subject CN).
- Quoting (one helper, `ngx_arg`; nothing from a `.mesh` file is concatenated into the config).
  Every string is written quoted, with `\\`, `"`, CR, LF and tab escaped, so no value can end a
  string, a directive or a block. nginx has no escape for `$`: where it expands variables
  (`Lit`, and the literal parts of `expr(...)`) each `$` is `${meshc_dollar}`, a `geo` variable
  whose value is `$`; where it expands nothing (`Plain`: location URIs, server names, header
  names, split_clients values) `$` is written as is; regexes (`Rx`) keep `$` as an anchor. Map
  keys (`Key`) that nginx would read as a regex or keyword get its `\\` prefix. Comments go through
  `ngx_comment` (no line break). Values that quoting cannot save are refused with E331: hosts
  that are not literal server names (`~.*`), hash keys that are no variable name, regexes with
  named groups (nginx makes them variables), header names that are not HTTP tokens, header
  values with control characters, rewrite and redirect paths that do not begin with `/`.
- Strict mTLS: nginx verifies the client certificate after the handshake; a request without
  one, with a foreign one, or in plaintext gets no answer (the connection is closed, 444).
- Permissive mTLS is E301: nginx cannot serve TLS and plaintext on one port (no stream module).
- Authorization: one ordered regex `map` per inbound port over `peer, method, headers, path`;
  denies first (deny beats allow), then allows, then the mesh default. Headers are read through
  `$http_<name>`, so a header sent with an empty value counts as absent.
- Paths: nginx decodes percent-escapes, resolves `.`/`..` and (with `merge_slashes on`) merges
  slashes before `$uri` is matched; because it also decodes `%2F` into `/`, every request whose
  raw path contains `%2F` or `%5C` is answered 400 first (`path_normalization strict`), and so
  is one with a raw `\\`, a `.`/`..` segment with a `;` parameter (`/..;/`) or a `#` fragment,
  which nginx would otherwise forward as sent (`path_guard`). nginx answers 400 to `%00` and to
  a `..` above the root, where meshc would stop at the root.
- Routing: nginx picks `location` blocks by kind (exact, then longest prefix, then regex), not by
  order, and cannot combine path with header conditions; so the ordered route table is one regex
  `map` (first match wins) whose value names a named location (`try_files` dispatch), one per
  rule. A table without `otherwise` answers 404.
- Splits: `split_clients` over `$request_id`, percentages with two decimals (exact).
- Retries: `proxy_next_upstream` moves to the next server of the upstream, so the callee's
  sidecar is listed once per allowed attempt and `proxy_next_upstream_tries` is retries + 1.
  `5xx` = http_500/502/503/504; `gateway-error` = http_502/503/504; `connect-failure` and
  `reset` = `error timeout` (nginx cannot tell a refused connection from a reset one).
- Timeouts: nginx has no whole-request timeout. `timeout` bounds every connect, send and read,
  and (`proxy_next_upstream_timeout`) the retrying; `per_try` bounds each attempt's connect, send
  and read. "No timeout" is written explicitly as 365 days (never nginx's 60 s default).
- Circuit breaker: `max_connections` and `max_requests` (one HTTP/1.1 request per upstream
  connection) become `max_conns`, spread exactly over the repeated servers; nginx has no queue
  (`max_pending` other than 0) and no concurrent-retry limit (E330). A request nginx cannot
  connect anywhere gets 503, as on Envoy (nginx's own 502 is rewritten; upstream 502s pass).
- Rate limits: `limit_req` per sidecar (one zone per service), status 429, `burst` = bucket - 1
  (nginx admits one request beyond the burst), `nodelay`.
- Request bodies: unlimited (`client_max_body_size 0` in the http block, never nginx's 1m
  default); `max_request_body` is `client_max_body_size` in the service's inbound servers (413).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, ClassVar

import jinja2
from meshc.backends.base import Backend, Bundle, Option, file_path, host_address, integer

from meshc.certs import identities as cert_identities
from meshc.certs import subject_cn, subject_dn
from meshc.diagnostics import Diagnostic
from meshc.model import (
    FULL,
    HTTP_PROTOCOLS,
    AuthzRule,
    Destination,
    Identity,
    Match,
    Mesh,
    PathMatch,
    Port,
    Retry,
    RouteRule,
    Service,
    Source,
    Span,
    StringMatch,
    Timeout,
)

E330 = "E330"
E331 = "E331"  # a value nginx cannot carry with its meaning (see _Ctx.value checks)
E332 = "E332"  # two identities, one certificate subject
UNRECOGNIZED = "meshc/unrecognized-subject"  # path of the peer of a verified, unknown subject
VERSION_HEADER = "x-meshc-version"
NO_TIMEOUT = "365d"
NO_ROUTE = "meshc_404"
SEP = "\n"  # field separator of composite map keys: no header value, method or port contains it

RETRY_ON: dict[str, tuple[str, ...]] = {
    "5xx": ("http_500", "http_502", "http_503", "http_504"),
    "gateway-error": ("http_502", "http_503", "http_504"),
    "connect-failure": ("error", "timeout"),
    "reset": ("error", "timeout"),
}
RETRY_STATUS = {500: "http_500", 502: "http_502", 503: "http_503", 504: "http_504", 403: "http_403",
                404: "http_404", 429: "http_429"}
LB = {"least_request": "least_conn", "random": "random"}
HASH_KEY = {"header": "http_{}", "cookie": "cookie_{}", "query": "arg_{}", "source_ip": "remote_addr"}
RATE_UNIT = {"s": "r/s", "m": "r/m"}
_VAR_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_HEADER_NAME = re.compile(r"^[a-z0-9-]+$")


# --------------------------------------------------------------------------- config tree


class Arg(str):
    """A directive argument; the subclass says how `ngx_arg` writes it. Every string that comes
    from a `.mesh` file (or an option) is a `Lit`, `Plain`, `Key` or `Rx`, or a literal part of an
    `expr(...)`: never a `Raw`, and never concatenated into config text another way."""


class Raw(Arg):
    """Written as is: keywords, numbers, sizes, meshc's own variable and location names. Checked
    against `_RAW` when written, so that a value from a `.mesh` file cannot slip in unquoted."""


class Lit(Arg):
    """A literal string where nginx expands variables (a complex value: `return`, `set`, `add_header`
    and `proxy_set_header` values, map values, `if` operands, `root`, `proxy_ssl_name`, certificate
    paths): quoted, each `$` written as `${meshc_dollar}`."""


class Plain(Arg):
    """A literal string where nginx expands nothing (location URIs, server names, header names,
    split_clients values, `mirror`, trusted-CA paths): quoted, `$` as is."""


class Key(Arg):
    """A literal `map` key: quoted, and with a leading backslash (which nginx's map strips) when
    nginx would otherwise read it as a regex (`~...`) or a keyword (`_MAP_WORDS`)."""


class Expr(Arg):
    """A quoted complex value mixing variables and literal text; build it with `expr`, which
    escapes the literal parts."""


class Rx(Arg):
    """A regular expression: quoted; nginx expands no variables in one (`$` is an anchor)."""


class Var(str):
    """A variable name (without `$`) inside `expr(...)`."""


@dataclass
class D:
    """One directive `name args;`, or a block `name args { children }`."""

    name: str
    args: tuple[Arg, ...] = ()
    children: list[D] | None = None

    @property
    def is_block(self) -> bool:
        return self.children is not None


def d(name: str, *args: Any) -> D:
    return D(name, tuple(a if isinstance(a, Arg) else Raw(str(a)) for a in args))


def block(name: str, *args: Any, children: Iterable[D] = ()) -> D:
    return D(name, d(name, *args).args, list(children))


_NGX_ESC = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# meshc's own unquoted tokens: no space, quote, `;`, brace, `#` or backslash can end or open one
_RAW = re.compile(r"^[A-Za-z0-9_.:/=@$~^*%()!,+\[\]-]+$")
_NAME_CHAR = re.compile(r"[A-Za-z0-9_]")
DOLLAR = "${meshc_dollar}"
_MAP_WORDS = frozenset({"default", "hostnames", "include", "volatile"})  # ngx_http_map's parameters


def ngx_quote(s: str) -> str:
    """nginx string quoting: inside `"..."` its parser unescapes exactly `\\\\ \\" \\' \\n \\r \\t`, so
    nothing in the value can end the string or the directive."""
    return '"' + "".join(_NGX_ESC.get(c, c) for c in s) + '"'


def literal_text(s: str) -> str:
    """Text for a place where nginx expands variables, meaning exactly `s`: nginx has no escape
    for `$`, so each one is the `$meshc_dollar` variable (a `geo` whose value is `$`)."""
    return s.replace("$", DOLLAR)


def expr(*parts: str) -> Expr:
    """A complex value: `Var` parts are variables, every other part is literal text."""
    out: list[str] = []
    for i, p in enumerate(parts):
        if isinstance(p, Var):
            # a name nginx could not read was refused already (E330/E331: the bundle is not
            # written); keep lowering the rest of the mesh, to report every problem at once
            p = Var(re.sub(r"[^A-Za-z0-9_]", "_", p))
            nxt = next((q for q in parts[i + 1:] if q), "")
            # `${name}` when a name character follows, so the name cannot run on
            brace = not isinstance(nxt, Var) and _NAME_CHAR.match(nxt[:1])
            out.append(f"${{{p}}}" if brace else f"${p}")
        else:
            out.append(literal_text(p))
    return Expr("".join(out))


def ngx_arg(a: str) -> str:
    """Every argument, and every directive name, as nginx must read it back."""
    if isinstance(a, Lit):
        return ngx_quote(literal_text(a))
    if isinstance(a, Key):
        return ngx_quote("\\" + a if a.startswith(("~", "\\")) or a in _MAP_WORDS else a)
    if isinstance(a, Plain | Expr | Rx):
        return ngx_quote(a)
    if not _RAW.match(a):
        raise ValueError(f"meshc bug: unquoted nginx token {a!r}")
    return str(a)


def ngx_comment(s: str) -> str:
    """Text for a `#` comment: nginx ends a comment at a line break, so no control or
    line-separating character is written as is (`\\xNN` instead)."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in s)


def regex_escape(s: str) -> str:
    """A PCRE literal (every non-alphanumeric character escaped)."""
    return "".join(c if c.isalnum() or c == "_" else "\\" + c for c in s)


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("meshc.backends", "templates"),
                             autoescape=False, keep_trailing_newline=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["ngx_arg"] = ngx_arg
    env.filters["ngx_comment"] = ngx_comment
    return env


def render(sidecar: Sidecar) -> str:
    return _env().get_template("nginx.conf.j2").render(sc=sidecar)


# --------------------------------------------------------------------------- regexes


def path_regex(p: PathMatch) -> str:
    """A regex for the whole path (the last field of a key), in meshc's meaning."""
    if p.kind == "exact":
        return regex_escape(p.value) + "$"
    if p.kind == "prefix":
        return regex_escape(p.value) + ".*$"
    if p.kind == "under":
        base = p.value.rstrip("/")
        return regex_escape(base) + "(?:/.*)?$" if base else "/.*$"
    body = p.value[1:] if p.value.startswith("^") else p.value
    body = body[:-1] if body.endswith("$") and not body.endswith("\\$") else body
    return f"(?:{body})$"


def value_regex(m: StringMatch) -> str:
    """A regex for one header/query field (between separators); `present` needs a non-empty value."""
    if m.kind == "exact":
        return regex_escape(m.value)
    if m.kind == "prefix":
        return regex_escape(m.value) + "[^\\n]*"
    if m.kind == "regex":
        body = m.value[1:] if m.value.startswith("^") else m.value
        body = body[:-1] if body.endswith("$") and not body.endswith("\\$") else body
        return f"(?:{body})"
    if m.kind == "present":
        return "[^\\n]+"
    return ""  # absent


ANY_FIELD = "[^\\n]*"
# the raw request target (before `?`, except `#`) of a request `path_guard` refuses
PATH_REFUSED = r"^[^?]*(%(2[fF]|5[cC])|\\|/(\.|%2[eE]){1,2}(;|%3[bB]))|#"
# The path as authorized is the path forwarded: a rewrite of the URI to itself makes nginx
# send `$uri` (decoded, dot segments resolved, slashes merged), escaped again, instead of the
# request target as the client spelled it (measured: `/public/./x` -> `/public/x`, `%C3%A9`
# and `%0A` stay escaped; an encoded `;` after a dot segment is refused by path_guard first,
# since decoding it would hand `..;` to the application).
FORWARD_NORMALIZED = [D("rewrite", (Raw("^"), Raw("$uri"), Raw("break")))]
# nginx answers 502 itself when no upstream connection is possible (refused, or every server at
# max_conns); Envoy and meshc's other targets say 503. Upstream 502 responses pass unchanged
# (proxy_intercept_errors is off).
UNAVAILABLE_503 = [D("error_page", (Raw("502"), Raw("@meshc_unavailable")))]
UNAVAILABLE_LOCATION = D("location", (Raw("@meshc_unavailable"),), [D("return", (Raw("503"),))])
ACCESS_LOG_JSON = (("time", "time_iso8601"), ("method", "request_method"), ("path", "request_uri"),
                   ("status", "status"), ("duration_ms", "request_time"), ("upstream", "upstream_addr"),
                   ("peer", "meshc_peer"), ("request_id", "request_id"))


# --------------------------------------------------------------------------- sidecar model


@dataclass
class Sidecar:
    name: str
    identity: Identity
    http: list[D] = field(default_factory=list)  # maps, zones, upstreams (http level)
    servers: list[D] = field(default_factory=list)
    index: dict[str, Any] = field(default_factory=dict)
    upstream_tries: dict[str, int] = field(default_factory=dict)  # outbound upstream -> servers
    upstream_meta: dict[str, tuple[Service, Port]] = field(default_factory=dict)
    route_tables: dict[str, tuple[str, list[D]]] = field(default_factory=dict)
    externals: dict[str, Service] = field(default_factory=dict)  # "host:port" -> external service


@dataclass
class _Ctx:
    diags: list[Diagnostic] = field(default_factory=list)

    def error(self, message: str, span: Span, help: str = "", code: str = E330) -> None:
        d = Diagnostic(code, message, span, label="not expressible on nginx", help=help)
        if d not in self.diags:  # a callee's setting is seen once per caller
            self.diags.append(d)


class NginxBackend(Backend):
    name: ClassVar[str] = "nginx"
    description: ClassVar[str] = "plain nginx sidecars: one nginx.conf per service"
    CAPABILITIES: ClassVar[frozenset[str]] = frozenset({
        "protocol.http", "mtls.strict", "mtls.disabled", "endpoints.static", "versions",
        "route.match.path.exact", "route.match.path.prefix", "route.match.path.under",
        "route.match.path.regex", "route.match.header", "route.match.header.regex",
        "route.match.header.absent", "route.match.method", "route.match.query",
        "route.split", "route.split.services", "route.rewrite", "route.rewrite.host", "route.redirect",
        "route.respond", "route.headers.request", "route.headers.response", "route.mirror",
        "route.no_default", "timeout", "retry", "retry.per_try", "retry.status_codes",
        "load_balance.round_robin", "load_balance.least_request", "load_balance.random",
        "load_balance.consistent_hash", "circuit_breaker", "rate_limit", "max_request_body", "ingress",
        "external", "external.tls_originate", "protocol.tls",
        "authz.allow", "authz.deny", "authz.identity", "authz.unauthenticated", "authz.methods",
        "authz.paths", "authz.not_paths", "authz.ports", "authz.headers",
        # nginx sidecars export no metrics, so `metrics off` holds as written
        "access_log.text", "access_log.off", "metrics.off",
    })
    OPTIONS: ClassVar[Mapping[str, Option]] = {
        "certs_dir": Option("where the `meshc certs` files are at run time; relative paths are relative to "
                     "the directory of nginx.conf (default: certs)", file_path),
        "inbound_address": Option("address the inbound servers listen on (default 0.0.0.0)", host_address),
        "outbound_base": Option("first outbound loopback port of every sidecar (default 15100)", integer(1, 65535)),
        "peer_host": Option("host where callee sidecars are reached (default 127.0.0.1)", host_address),
        "resolver": Option("DNS server nginx asks for external hosts at request time (default 127.0.0.53)", host_address),
        "system_ca": Option("CA bundle trusted for TLS origination to external services "
                     "(default /etc/ssl/certs/ca-certificates.crt)", file_path),
    }

    def opt(self, key: str, default: str) -> str:
        return self.options.get(key, default)

    def cert_paths(self, ident: Identity) -> tuple[str, str, str]:
        base = self.opt("certs_dir", "certs").rstrip("/")
        stem = f"{ident.namespace}.{ident.name}"  # the layout of meshc certs
        return f"{base}/ca.pem", f"{base}/{stem}.pem", f"{base}/{stem}-key.pem"

    # ------------------------------------------------------------------ entry point

    def lower(self, mesh: Mesh) -> Bundle:
        self.mesh = mesh
        ctx = self.ctx = _Ctx()
        self.check_values(mesh, ctx)
        self.ext_retry_spans: list[Span] = []
        for svc in mesh.services:
            for p in svc.ports:
                if p.protocol == "tls" and not originates(svc):
                    ctx.error("nginx forwards TLS passthrough only with the stream module, which this target "
                              "does not use", p.span, help="originate TLS (`tls originate`) or use envoy")
        bundle = Bundle()
        index: dict[str, Any] = {"topology": "one sidecar per service; see meshc.backends.nginx",
                                 "version_header": VERSION_HEADER, "sidecars": {}}
        for svc in mesh.services:
            if svc.external is not None or not svc.ports:
                continue
            sc = self.lower_sidecar(svc, ctx)
            bundle.add_text(f"{svc.name}/nginx.conf", render(sc))
            index["sidecars"][svc.name] = sc.index
        for span in dict.fromkeys(self.ext_retry_spans):
            ctx.error("nginx retries an external host only across its DNS addresses, not N+1 times", span)
        gw = self.lower_ingress(ctx)
        if gw is not None:
            bundle.add_text(f"{gw.name}/nginx.conf", render(gw))
            index["sidecars"][gw.name] = gw.index
        bundle.add_json("index.json", index)
        bundle.diagnostics.extend(ctx.diags)
        return bundle

    def lower_sidecar(self, svc: Service, ctx: _Ctx) -> Sidecar:
        sc = Sidecar(name=svc.name, identity=svc.identity,
                     index={"service": svc.name, "spiffe": svc.identity.spiffe, "inbound": {}, "outbound": {}})
        sc.http += self.lower_common(svc)
        for port in svc.ports:
            if port.protocol not in HTTP_PROTOCOLS:
                continue
            self.lower_inbound(sc, svc, port, ctx)
        self.lower_outbound(sc, svc, ctx)
        sc.http += self.lower_upstreams(sc, ctx)
        return sc

    def access_log(self) -> list[D]:
        """The mesh's access log on stdout (never nginx's compiled-in /var/log path)."""
        fmt = self.mesh.observability.access_log
        if fmt == "off":
            return [d("access_log", "off")]
        if fmt == "text":
            return [d("access_log", "/dev/stdout", "combined")]
        parts: list[str] = ["{"]
        for i, (k, v) in enumerate(ACCESS_LOG_JSON):
            parts += [("," if i else "") + f'"{k}":"', Var(v), '"']
        return [d("log_format", "meshc_json", "escape=json", expr(*parts, "}")),
                d("access_log", "/dev/stdout", "meshc_json")]

    def lower_common(self, svc: Service | None) -> list[D]:
        out = [
            *self.access_log(),
            # nginx has no escape for `$`: literal dollars are written through this variable
            # (geo values are never expanded: this one is a literal `$`)
            block("geo", "$meshc_dollar", children=[d("default", Plain("$"))]),
            self.peer_map(),
        ]
        return out

    def known_identities(self) -> list[Identity]:
        """Identities whose certificates this mesh can meet: every one `meshc certs` issues for
        it, and every `namespace/account` an authorization rule names."""
        found = {i.spiffe: i for i in cert_identities(self.mesh)}
        for r in self.mesh.rules:
            for src in r.sources:
                if src.kind == "identity" and "/" in src.name:
                    ns, sa = src.name.split("/", 1)
                    i = Identity(name=sa, namespace=ns, trust_domain=self.mesh.trust_domain, span=src.span)
                    found.setdefault(i.spiffe, i)
        return [found[k] for k in sorted(found)]

    def peer_map(self) -> D:
        """The verified client certificate's subject -> its SPIFFE ID (see the module docstring).
        A subject `<sa>.<ns>` is read by the regex; a shortened one (`meshc.certs.subject_cn`) is
        listed for every identity the mesh knows; any other verified subject is an authenticated
        caller of no known identity; no certificate (plaintext) is the empty peer."""
        td = self.mesh.trust_domain
        entries = [d("default", Lit(f"spiffe://{td}/{UNRECOGNIZED}")), d(Key(""), Lit(""))]
        seen: dict[str, Identity] = {}
        for ident in self.known_identities():
            dn = subject_dn(ident)
            other = seen.setdefault(dn, ident)
            if other.spiffe != ident.spiffe:
                self.ctx.error(f"'{ident.spiffe}' and '{other.spiffe}' would have one certificate subject "
                               f"({dn}), and nginx tells callers apart by the subject", ident.span or other.span,
                               code=E332, help="rename one service account or namespace, or use the envoy target")
            elif subject_cn(ident) != f"{ident.name}.{ident.namespace}":
                entries.append(d(Key(dn), Lit(ident.spiffe)))
        entries.append(d(Rx(r"~^CN=(?<meshc_sa>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\.(?<meshc_ns>[a-z0-9]([-a-z0-9]*"
                            r"[a-z0-9])?),O=meshc$"),
                         expr(f"spiffe://{td}/ns/", Var("meshc_ns"), "/sa/", Var("meshc_sa"))))
        return block("map", "$ssl_client_s_dn", "$meshc_peer", children=entries)

    def path_guard(self) -> list[D]:
        """`path_normalization strict` on every server, before routing and authorization: 400 for
        what nginx would otherwise decode or pass on differently from Envoy's safe handling -
        encoded slashes and backslashes (`%2F`, `%5C`: nginx decodes them into `$uri`), a raw
        backslash, a `.`/`..` segment with a `;` parameter (`/..;/`, which Java servers resolve),
        and a `#` fragment (never part of a request target; nginx would forward it). `%00` and
        `..` above the root are 400 from nginx's own parser."""
        if self.mesh.path_normalization != "strict":
            return []
        return [block("if", Raw("($request_uri"), Raw("~"), Rx(PATH_REFUSED), Raw(")"), children=[d("return", 400)])]

    def forward_normalized(self) -> list[D]:
        """Under `path_normalization strict`, the path authorized is the path forwarded."""
        return [*FORWARD_NORMALIZED] if self.mesh.path_normalization == "strict" else []  # a list callers may extend

    def check_values(self, mesh: Mesh, ctx: _Ctx) -> None:
        """E331 for values nginx cannot carry with their meaning. The quoting (ngx_arg) keeps any
        value from changing the config's structure; these are values that, quoted, would still
        mean something else to nginx (or to the peer it talks to)."""
        def bad(what: str, value: str, span: Span, why: str, help: str = _NGX_VALUE_HELP) -> None:
            ctx.error(f"nginx cannot carry {what} {value!r}: {why}", span, help=help, code=E331)

        def regex(value: str, span: Span) -> None:
            if named_group(value):
                bad("the regular expression", value, span, "its named groups would become nginx variables",
                    help="use unnamed groups `(...)` or `(?:...)`")

        def path(p: PathMatch | None) -> None:
            if p is not None and p.kind == "regex":
                regex(p.value, p.span)

        def strings(ms: Iterable[StringMatch]) -> None:
            for m in ms:
                if m.kind == "regex":
                    regex(m.value, m.span)

        for r in mesh.rules:
            for p in (*r.paths, *r.not_paths):
                path(p)
            strings(r.headers)
        for svc in mesh.services:
            if svc.external is not None:
                for what, host in (("the external host", svc.external.host), ("the SNI name", svc.external.sni)):
                    if host is not None and not _ADDRESS.match(host):
                        bad(what, host, svc.external.span, "it is not a DNS name or an IP address")
            for ep in svc.all_endpoints():
                if not _ADDRESS.match(ep.host):
                    bad("the endpoint host", ep.host, ep.span, "it is not a DNS name or an IP address")
            lb = svc.resilience.load_balance
            if lb is not None and lb.policy == "consistent_hash" and lb.hash_on != "source_ip":
                ok = (_HEADER_NAME.match(lb.hash_key.lower()) if lb.hash_on in (None, "header")
                      else _VAR_NAME.match(lb.hash_key))
                if not ok:
                    bad(f"the hash key ({lb.hash_on or 'header'})", lb.hash_key, lb.span,
                        "nginx reads it through a variable ($http_, $cookie_, $arg_), whose name holds only "
                        "letters, digits and '_' (and '-' for headers)")
            if svc.expose is not None:
                for host in svc.expose.hosts:
                    if not _SERVER_NAME.match(host):
                        bad("the host", host, svc.expose.span, "nginx would not read it as a literal server name",
                            help="write a host name, `*.` and a host name, or `*`")
                for p in svc.expose.paths:
                    path(p)
            for rule in svc.routes:
                self.check_route_values(rule, bad, path, strings)

    @staticmethod
    def check_route_values(rule: RouteRule, bad: Callable[..., None], path: Callable[[PathMatch | None], None],
                           strings: Callable[[Iterable[StringMatch]], None]) -> None:
        """check_values for one route rule: its matches, header operations, rewrite and redirect."""
        for m in rule.matches:
            path(m.path)
            strings((*m.headers, *m.query))
        for ops in (rule.request_headers, rule.response_headers):
            if ops is None:
                continue
            for name in (*[n for n, _ in (*ops.set, *ops.add)], *ops.remove):
                if not _TOKEN.match(name):
                    bad("the header name", name, ops.span, "it is not an HTTP token")
            for _, value in (*ops.set, *ops.add):
                if _HEADER_VALUE_BAD.search(value):
                    bad("the header value", value, ops.span, "nginx would send its control characters "
                        "(a line break starts another header)")
        rw, rd = rule.rewrite, rule.redirect
        for what, value, span in (("the rewrite path", rw and rw.path, rw and rw.span),
                                  ("the rewrite prefix", rw and rw.prefix, rw and rw.span),
                                  ("the redirect path", rd and rd.path, rd and rd.span)):
            if value is not None and span is not None and not value.startswith("/"):
                bad(what, value, span, "nginx reads a rewrite to anything but a path as a redirect",
                    help="write a path that begins with '/'")
        if rd is not None and rd.host is not None and not _ADDRESS.match(rd.host):
            bad("the redirect host", rd.host, rd.span, "it is not a DNS name or an IP address")

    # ------------------------------------------------------------------ inbound

    def lower_inbound(self, sc: Sidecar, svc: Service, port: Port, ctx: _Ctx) -> None:
        ca, cert, key = self.cert_paths(svc.identity)
        addr = self.opt("inbound_address", "0.0.0.0")
        app_var = f"$meshc_app_{port.number}"
        authz_var = f"$meshc_authz_{port.number}"
        sc.http += self.app_upstreams(svc, port, ctx)
        # the version the caller's sidecar picked -> the endpoints of that version
        sc.http.append(block("map", Raw("$http_x_meshc_version"), Raw(app_var),
                             children=[d("default", Lit(f"app_{port.number}"))]
                             + [d(Key(v.name), Lit(f"app_{port.number}_{v.name}")) for v in svc.versions]))
        sc.http.append(self.authz_map(svc, port, authz_var, ctx))
        server: list[D] = []
        if port.mtls == "strict":
            server += [d("listen", Plain(f"{addr}:{port.number}"), "ssl"),
                       d("ssl_certificate", Lit(cert)), d("ssl_certificate_key", Lit(key)),
                       d("ssl_client_certificate", Plain(ca)), d("ssl_verify_client", "on"),
                       d("ssl_verify_depth", 1), d("ssl_protocols", "TLSv1.2", "TLSv1.3"),
                       # nginx checks the client certificate after the handshake: a missing or
                       # foreign one (495/496), or plaintext (497), closes the connection unanswered
                       d("error_page", 495, 496, 497, "@meshc_refuse")]
        else:
            server.append(d("listen", Plain(f"{addr}:{port.number}")))
        server.append(d("server_name", Plain(svc.name)))
        body_limit = svc.resilience.max_request_body
        if body_limit is not None:
            # 413 for a larger body (nginx's own answer); the http block lifts nginx's 1m default
            server.append(d("client_max_body_size", body_limit.bytes))
        server += self.path_guard()
        server.append(block("if", Raw(f"({authz_var}"), Raw("="), Lit("deny"), Raw(")"),
                            children=[d("return", 403)]))
        rl = svc.resilience.rate_limit
        loc: list[D] = []
        if rl is not None:
            zone = f"meshc_rl_{svc.name.replace('-', '_')}"
            rate = self.rate(rl, ctx)
            if not any(x.name == "limit_req_zone" for x in sc.http):
                sc.http.append(d("limit_req_zone", "$server_name", f"zone={zone}:1m", f"rate={rate}"))
            bucket = rl.burst if rl.burst is not None else rl.requests
            loc += [d("limit_req", f"zone={zone}", f"burst={max(bucket - 1, 0)}", "nodelay"),
                    d("limit_req_status", 429)]
        loc += [*self.forward_normalized(), d("proxy_pass", expr("http://", Var(app_var[1:]))),
                d("proxy_http_version", "1.1"),
                d("proxy_set_header", "Host", "$host"),
                d("proxy_set_header", "Connection", Lit("")),
                # the caller bounds the request; the local hop must not cut it at nginx's 60 s
                d("proxy_read_timeout", NO_TIMEOUT), d("proxy_send_timeout", NO_TIMEOUT),
                d("proxy_next_upstream", "off")]
        server.append(block("location", "/", children=loc))
        if port.mtls == "strict":
            server.append(block("location", "@meshc_refuse", children=[d("return", 444)]))
        sc.servers.append(block("server", children=server))
        sc.index["inbound"][port.name] = {"address": addr, "port": port.number, "mtls": port.mtls,
                                          "protocol": port.protocol}

    def app_port(self, svc: Service, port: Port, ep_port: int) -> int:
        return ep_port + (port.number - svc.ports[0].number)

    def app_upstreams(self, svc: Service, port: Port, ctx: _Ctx) -> list[D]:
        groups = [(f"app_{port.number}", svc.all_endpoints())]
        groups += [(f"app_{port.number}_{v.name}", svc.endpoints_of(v.name)) for v in svc.versions]
        out = []
        lb = svc.resilience.load_balance
        for name, eps in groups:
            body: list[D] = []
            if lb is not None and lb.policy in LB:
                body.append(d(LB[lb.policy]))
            elif lb is not None and lb.policy == "consistent_hash":
                key = hash_key(lb)
                if lb.cookie_ttl_ms is not None:
                    # Envoy sets the affinity cookie when it is missing; nginx only reads it
                    ctx.error("nginx hashes on an existing cookie; it cannot issue one (ttl)", lb.span,
                              help="drop `ttl` if the application sets the cookie itself")
                body.append(d("hash", expr(Var(key)), "consistent"))
            uniq = sorted({(e.host, self.app_port(svc, port, e.port)) for e in eps})
            if not uniq:
                # no endpoint for this group: nginx needs a server; one that refuses (502)
                body.append(d("server", "127.0.0.1:1", "down"))
            for host, p in uniq:
                body.append(d("server", Plain(host_port(host, p)), "max_fails=0"))
            body.append(d("keepalive", 16))
            out.append(block("upstream", name, children=body))
        return out

    @staticmethod
    def rate(rl: Any, ctx: _Ctx) -> str:
        if rl.unit in RATE_UNIT:
            return f"{rl.requests}{RATE_UNIT[rl.unit]}"
        if rl.requests % 60 == 0:
            return f"{rl.requests // 60}r/m"
        ctx.error(f"nginx rates are per second or per minute; {rl.requests}/h is not a whole number per minute",
                  rl.span)
        return f"{max(rl.requests // 60, 1)}r/m"

    # ------------------------------------------------------------------ authorization

    def authz_map(self, svc: Service, port: Port, var: str, ctx: _Ctx, peer: str | None = None) -> D:
        """The authorization map of one port; `peer`: a fixed caller identity (egress)."""
        rules = [r for r in self.mesh.rules
                 if (svc.name in r.destinations or "*" in r.destinations)
                 and (not r.ports or port.number in r.ports)]
        headers = sorted({h.name for r in rules for h in r.headers})
        for h in headers:
            check_header(h, next(x.span for r in rules for x in r.headers if x.name == h), ctx)
        key = composite(peer if peer is not None else Var("meshc_peer"), Var("request_method"),
                        *[Var(f"http_{var_name(h)}") for h in headers], Var("uri"))
        default = "deny" if self.mesh.authz == "deny_by_default" else "allow"
        lines = [d("default", Lit(default))]
        for action in ("deny", "allow"):
            for r in rules:
                if r.action == action:
                    for rx in self.rule_regexes(r, headers, port, proven=peer is not None):
                        lines.append(d(Rx("~" + rx), Lit(action)))
        return block("map", key, Raw(var), children=lines)

    def rule_regexes(self, r: AuthzRule, headers: list[str], port: Port, proven: bool = False) -> list[str]:
        peers = "|".join(self.source_regex(s) for s in r.sources)
        if port.mtls != "strict" and not proven:
            # plaintext callers: only `*` and `unauthenticated` can match ($meshc_peer is empty)
            peers = "|".join(self.source_regex(s) for s in r.sources if s.kind in ("any", "unauthenticated"))
            if not any(s.kind in ("any", "unauthenticated") for s in r.sources):
                return []
        methods = "|".join(regex_escape(m) for m in r.methods) if r.methods else ANY_FIELD
        by_name = {h.name: value_regex(h) for h in r.headers}
        fields = [f"(?:{peers})", f"(?:{methods})", *[by_name.get(h, ANY_FIELD) for h in headers]]
        neg = "".join(f"(?!{path_regex(p)})" for p in r.not_paths)
        paths = [path_regex(p) for p in r.paths] or [".*$"]
        return ["(?s)^" + SEP.join(fields).replace("\n", "\\n") + "\\n" + neg + f"(?:{'|'.join(paths)})"]

    def source_regex(self, s: Source) -> str:
        td = regex_escape(self.mesh.trust_domain)
        if s.kind == "any":
            return ANY_FIELD
        if s.kind == "unauthenticated":
            return ""
        if s.kind == "authenticated":
            return f"spiffe://{td}/[^\\n]+"
        if s.kind == "ingress":
            return regex_escape(self.mesh.ingress_identity.spiffe)
        if s.kind == "service":
            svc = self.mesh.service(s.name)
            return regex_escape(svc.identity.spiffe) if svc else "(?!)"
        if "/" in s.name:
            ns, sa = s.name.split("/", 1)
            return f"spiffe://{td}/ns/{regex_escape(ns)}/sa/{regex_escape(sa)}"
        return f"spiffe://{td}/ns/[^/\\n]+/sa/{regex_escape(s.name)}"

    # ------------------------------------------------------------------ outbound

    def dependencies(self, svc: Service) -> list[str]:
        """Declared calls and allow-rule edges from this service (as the Envoy backend)."""
        names = set(svc.calls)
        for rule in self.mesh.rules:
            if rule.action == "allow" and any(s.kind == "service" and s.name == svc.name for s in rule.sources):
                names.update(x for x in rule.destinations if x != "*")
        names.discard(svc.name)
        return sorted(n for n in names if self.mesh.service(n) is not None)

    def lower_outbound(self, sc: Sidecar, svc: Service, ctx: _Ctx) -> None:
        base = int(self.opt("outbound_base", "15100"))
        slots = [(dep, p) for dep in self.dependencies(svc) for p in self.mesh.service(dep).ports]  # type: ignore[union-attr]
        for i, (dep, port) in enumerate(slots):
            callee = self.mesh.service(dep)
            assert callee is not None
            if port.protocol not in HTTP_PROTOCOLS and not originates(callee):
                continue
            self.lower_outbound_server(sc, svc, callee, port, base + i, ctx)

    def lower_outbound_server(self, sc: Sidecar, caller: Service, callee: Service, port: Port, listen: int,
                              ctx: _Ctx) -> None:
        route_var, named = self.route_table(sc, caller, callee, port, ctx)
        guard: list[D] = []
        if callee.external is not None:
            # egress authorization runs in the caller's sidecar, which knows its own identity
            var = f"$meshc_egress_{var_name(callee.name)}_{port.number}"
            sc.http.append(self.authz_map(callee, port, var, ctx, peer=caller.identity.spiffe))
            guard = [block("if", Raw(f"({var}"), Raw("="), Lit("deny"), Raw(")"), children=[d("return", 403)])]
        sc.servers.append(block("server", children=[
            d("listen", f"127.0.0.1:{listen}"), d("server_name", Plain(f"{callee.name}.outbound")),
            d("root", Lit("/nonexistent/meshc")), *UNAVAILABLE_503, *self.path_guard(), *guard,
            block("location", "/", children=[dispatch(route_var)]), *named, UNAVAILABLE_LOCATION]))
        sc.index["outbound"].setdefault(callee.name, {})[port.name] = listen

    def route_table(self, sc: Sidecar, caller: Service, callee: Service, port: Port,
                    ctx: _Ctx) -> tuple[str, list[D]]:
        """The callee's ordered route table as one regex map (http level, written once per
        sidecar) and its named locations (one per rule), which every server routing to the
        callee includes."""
        tag = f"{var_name(callee.name)}_{port.number}"
        if tag in sc.route_tables:
            return sc.route_tables[tag]
        rules = list(callee.routes) or [RouteRule(span=callee.span, destinations=(Destination(service=callee.name),))]
        headers = sorted({h.name for r in rules for m in r.matches for h in m.headers})
        query = sorted({q.name for r in rules for m in r.matches for q in m.query})
        for r in rules:
            for m in r.matches:
                for h in m.headers:
                    check_header(h.name, h.span, ctx)
                for q in m.query:
                    if not _VAR_NAME.match(q.name):
                        ctx.error(f"nginx reads query parameters through variables; '{q.name}' is not a "
                                  "valid variable name", q.span)
        key = composite(Var("request_method"), *[Var(f"http_{var_name(h)}") for h in headers],
                        *[Var(f"arg_{q}") for q in query], Var("uri"))
        route_var = f"$meshc_route_{tag}"
        lines = [d("default", Lit(NO_ROUTE))]
        locations: list[D] = []
        for i, rule in enumerate(rules):
            loc_name = f"{tag}_r{i}"
            for m in rule.matches or (Match(),):
                lines.append(d(Rx("~" + route_regex(m, headers, query)), Lit(loc_name)))
            locations.append(block("location", f"@{loc_name}",
                                   children=self.rule_location(sc, caller, callee, port, rule, loc_name, ctx)))
            if rule.mirror is not None:
                locations.append(self.mirror_location(sc, caller, callee, port, rule, loc_name, ctx))
            if rule.is_default:
                break  # nothing after `otherwise` can match
        locations.append(block("location", f"@{NO_ROUTE}", children=[d("return", 404)]))
        sc.http.append(block("map", key, Raw(route_var), children=lines))
        sc.route_tables[tag] = (route_var, locations)
        return sc.route_tables[tag]

    # ------------------------------------------------------------------ ingress

    def lower_ingress(self, ctx: _Ctx) -> Sidecar | None:
        """`<ingress identity>/nginx.conf`: plaintext HTTP from outside on each exposed port;
        exposed paths enter the service's route table (as from a caller), others get 404."""
        exposed = [s for s in self.mesh.services if s.expose is not None and s.external is None
                   and any(p.protocol in HTTP_PROTOCOLS for p in s.ports)]
        if not exposed:
            return None
        gw = self.mesh.ingress_identity
        sc = Sidecar(name=gw.name, identity=gw, index={"service": gw.name, "spiffe": gw.spiffe, "inbound": {},
                                                      "outbound": {}, "ingress": {}})
        sc.http += self.lower_common(None)
        addr = self.opt("inbound_address", "0.0.0.0")
        # (port, host) -> [(service, port, paths)]
        groups: dict[tuple[int, str], list[tuple[Service, Port]]] = {}
        for svc in exposed:
            assert svc.expose is not None
            port = next(p for p in svc.ports if p.protocol in HTTP_PROTOCOLS)
            for host in svc.expose.hosts:
                groups.setdefault((svc.expose.port, host), []).append((svc, port))
            sc.index["ingress"][svc.name] = svc.expose.port
        for listen in sorted({p for p, _ in groups}):
            hosts = sorted(h for p, h in groups if p == listen)
            for host in hosts:
                body: list[D] = [d("listen", Plain(f"{addr}:{listen}"), *(["default_server"] if host == "*" else [])),
                                 d("server_name", Plain("_" if host == "*" else host)),
                                 d("root", Lit("/nonexistent/meshc")), *UNAVAILABLE_503, UNAVAILABLE_LOCATION]
                body += self.path_guard()
                named: list[D] = []
                whole = False
                taken: dict[tuple[Arg, ...], str] = {}
                for svc, port in groups[(listen, host)]:
                    route_var, locs = self.route_table(sc, svc, svc, port, ctx)
                    named += locs
                    assert svc.expose is not None
                    for mods in ingress_locations(svc.expose.paths):
                        if mods in taken:
                            ctx.error(f"'{svc.name}' and '{taken[mods]}' expose the same path on port {listen} "
                                      f"(host {host})", svc.expose.span,
                                      help="give them different paths, hosts or ports")
                            continue
                        taken[mods] = svc.name
                        whole = whole or mods == ("/",)
                        body.append(block("location", *mods, children=[dispatch(route_var)]))
                if not whole:
                    body.append(block("location", "/", children=[d("return", 404)]))
                body += dedupe_named(named)
                sc.servers.append(block("server", children=body))
            if "*" not in hosts:
                sc.servers.append(block("server", children=[
                    d("listen", Plain(f"{addr}:{listen}"), "default_server"), d("server_name", Plain("_")),
                    block("location", "/", children=[d("return", 404)])]))
        sc.http += self.lower_upstreams(sc, ctx)
        return sc

    def upstream_for(self, sc: Sidecar, dest: Destination, like: Port, tries: int) -> str:
        svc = self.mesh.service(dest.service)
        assert svc is not None
        port = (next((p for p in svc.ports if p.number == like.number), None)
                or next((p for p in svc.ports if p.protocol == like.protocol), None) or svc.ports[0])
        if svc.external is not None:
            # resolved at request time (`resolver`): nginx resolves upstream blocks only at start
            name = f"{svc.external.host}:{port.number}"
            sc.externals[name] = svc
            if tries > 1:
                self.ext_retry_spans.append(svc.span)
            return name
        name = f"out_{var_name(svc.name)}_{port.number}"
        sc.upstream_tries[name] = max(sc.upstream_tries.get(name, 1), tries)
        sc.upstream_meta[name] = (svc, port)
        return name

    def rule_location(self, sc: Sidecar, caller: Service, callee: Service, port: Port, rule: RouteRule,
                      loc_name: str, ctx: _Ctx) -> list[D]:
        if rule.respond is not None:
            return [d("return", rule.respond.status, Lit(rule.respond.body))]
        if rule.redirect is not None:
            return [d("return", rule.redirect.code, redirect_target(rule.redirect))]
        retry = rule.retry or callee.resilience.retry
        tries = retry.attempts + 1 if retry is not None else 1
        out: list[D] = []
        dests = rule.destinations
        if len(dests) > 1 or any(x.weight != FULL for x in dests):
            var = f"$meshc_split_{loc_name}"
            entries = []
            for j, x in enumerate(dests):
                pick = f"{self.upstream_for(sc, x, port, tries)}/{x.version or ''}"
                pct = "*" if j == len(dests) - 1 else f"{x.weight // 100}.{x.weight % 100:02d}%"
                entries.append(d(pct, Plain(pick)))  # split_clients values are not expanded
            sc.http.append(block("split_clients", expr(Var("request_id")), Raw(var), children=entries))
            out.append(d("set", "$meshc_pick", Raw(var)))
        else:
            x = dests[0] if dests else Destination(service=callee.name)
            out.append(d("set", "$meshc_pick", Lit(f"{self.upstream_for(sc, x, port, tries)}/{x.version or ''}")))
        out += self.rewrite(rule, ctx)
        out += self.proxy(sc, callee, rule, retry, ctx)
        if rule.mirror is not None:
            out += [d("mirror", Plain(f"/.meshc-mirror/{loc_name}")), d("mirror_request_body", "on")]
        return out

    def rewrite(self, rule: RouteRule, ctx: _Ctx) -> list[D]:
        rw = rule.rewrite
        if rw is None or (rw.prefix is None and rw.path is None):
            return self.forward_normalized()
        if rw.path is not None:
            return [d("rewrite", Rx("^"), Lit(rw.path), "break")]
        assert rw.prefix is not None
        paths = {m.path.kind: m.path for m in rule.matches if m.path is not None}
        if len({(p.kind, p.value) for m in rule.matches if (p := m.path)}) != 1 or "regex" in paths:
            ctx.error("nginx rewrites a prefix only after one prefix, under or exact path match", rw.span)
            return []
        (p,) = paths.values()
        new = rw.prefix
        if p.kind == "under":
            base = p.value.rstrip("/")
            return [d("rewrite", Rx("^" + regex_escape(base) + "$"), Lit(new), "break"),
                    d("rewrite", Rx("^" + regex_escape(base) + "/(.*)$"), expr(new.rstrip("/") + "/", Var("1")),
                      "break")]
        if p.kind == "exact":
            return [d("rewrite", Rx("^"), Lit(new), "break")]
        return [d("rewrite", Rx("^" + regex_escape(p.value) + "(.*)$"), expr(new, Var("1")), "break")]

    def proxy(self, sc: Sidecar, callee: Service, rule: RouteRule, retry: Retry | None, ctx: _Ctx) -> list[D]:
        ca, cert, key = self.cert_paths(sc.identity)
        host = rule.rewrite.host if rule.rewrite is not None and rule.rewrite.host else None
        out = [d("proxy_pass", expr(Var("meshc_scheme"), "://", Var("meshc_up"))),
               d("proxy_http_version", "1.1"),
               d("proxy_set_header", "Host", Lit(host) if host else Raw("$host")),
               d("proxy_set_header", "Connection", Lit("")),
               d("proxy_set_header", VERSION_HEADER, Raw("$meshc_version"))]
        req = rule.request_headers
        if req is not None:
            for name, value in req.set:
                out.append(d("proxy_set_header", Plain(name), Lit(value)))
            for name in req.remove:
                out.append(d("proxy_set_header", Plain(name), Lit("")))
            if req.add:
                ctx.error("nginx replaces request headers; it cannot add a second value", req.span,
                          help="use `request_headers set`")
        resp = rule.response_headers
        if resp is not None:
            for name, value in resp.set:
                out += [d("proxy_hide_header", Plain(name)), d("add_header", Plain(name), Lit(value), "always")]
            for name, value in resp.add:
                out.append(d("add_header", Plain(name), Lit(value), "always"))
            for name in resp.remove:
                out.append(d("proxy_hide_header", Plain(name)))
        if callee.external is not None:
            if not host:  # the external API expects its own name, not the mesh service's
                out[2] = d("proxy_set_header", "Host", Lit(callee.external.host))
            out += [d("proxy_ssl_server_name", "on"), d("proxy_ssl_name", Raw("$meshc_peer_name")),
                    d("proxy_ssl_trusted_certificate", Plain(self.opt("system_ca", "/etc/ssl/certs/ca-certificates.crt"))),
                    d("proxy_ssl_verify", "on"), d("proxy_ssl_verify_depth", 5)]
        else:
            out += [d("proxy_ssl_certificate", Lit(cert)), d("proxy_ssl_certificate_key", Lit(key)),
                    d("proxy_ssl_trusted_certificate", Plain(ca)), d("proxy_ssl_verify", "on"),
                    d("proxy_ssl_verify_depth", 1), d("proxy_ssl_name", Raw("$meshc_peer_name")),
                    d("proxy_ssl_session_reuse", "on")]
        out += self.timeouts(rule.timeout or callee.resilience.timeout or self.mesh.timeout, retry)
        out += self.retries(retry, ctx)
        return out

    @staticmethod
    def timeouts(timeout: Timeout | None, retry: Retry | None) -> list[D]:
        whole = f"{timeout.ms}ms" if timeout is not None and timeout.ms is not None else NO_TIMEOUT
        each = f"{retry.per_try_ms}ms" if retry is not None and retry.per_try_ms is not None else whole
        return [d("proxy_connect_timeout", each), d("proxy_send_timeout", each), d("proxy_read_timeout", each),
                d("proxy_next_upstream_timeout", whole if whole != NO_TIMEOUT else 0)]

    @staticmethod
    def retries(retry: Retry | None, ctx: _Ctx) -> list[D]:
        if retry is None or retry.attempts == 0:
            return [d("proxy_next_upstream", "off")]
        conds: list[str] = []
        for c in retry.on:
            if c not in RETRY_ON:
                ctx.error(f"nginx cannot retry on '{c}'", retry.span,
                          help="nginx retries on error, timeout and HTTP 500/502/503/504/403/404/429")
                continue
            conds += RETRY_ON[c]
        for code in retry.status_codes:
            if code not in RETRY_STATUS:
                ctx.error(f"nginx cannot retry on status {code}", retry.span,
                          help="nginx retries on HTTP 500, 502, 503, 504, 403, 404 and 429 only")
                continue
            conds.append(RETRY_STATUS[code])
        ordered = sorted(set(conds), key=lambda c: (not c.isalpha() or c.startswith("http"), c))
        # meshc retries any method, like Envoy; nginx needs `non_idempotent` for POST and friends
        return [d("proxy_next_upstream", *ordered, "non_idempotent"),
                d("proxy_next_upstream_tries", retry.attempts + 1)]

    def mirror_location(self, sc: Sidecar, caller: Service, callee: Service, port: Port, rule: RouteRule,
                        loc_name: str, ctx: _Ctx) -> D:
        assert rule.mirror is not None
        m = rule.mirror
        body: list[D] = [d("internal")]
        if m.percent < FULL:
            var = f"$meshc_mirror_{loc_name}"
            sc.http.append(block("split_clients", expr(Var("request_id")), Raw(var), children=[
                d(f"{m.percent // 100}.{m.percent % 100:02d}%", Plain("1")), d("*", Plain(""))]))
            body.append(block("if", Raw(f"({var}"), Raw("="), Lit(""), Raw(")"), children=[d("return", 204)]))
        # A mirror subrequest shares the main request's variables, so it names everything
        # statically instead of going through $meshc_pick and its maps.
        up = self.upstream_for(sc, m.destination, port, 1)
        target, target_port = sc.upstream_meta[up]
        scheme = "https" if target_port.mtls != "disabled" else "http"
        ca, cert, key = self.cert_paths(sc.identity)
        body += [d("proxy_pass", expr(f"{scheme}://{up}", Var("request_uri"))),
                 d("proxy_http_version", "1.1"),
                 d("proxy_set_header", "Host", "$host"), d("proxy_set_header", "Connection", Lit("")),
                 d("proxy_set_header", VERSION_HEADER, Lit(m.destination.version or "")),
                 d("proxy_ssl_certificate", Lit(cert)), d("proxy_ssl_certificate_key", Lit(key)),
                 d("proxy_ssl_trusted_certificate", Plain(ca)), d("proxy_ssl_verify", "on"),
                 d("proxy_ssl_verify_depth", 1),
                 # the callee's certificate names it in its CN (no DNS SAN): the one meshc certs wrote
                 d("proxy_ssl_name", Lit(subject_cn(target.identity))),
                 d("proxy_next_upstream", "off")]
        return block("location", "=", Plain(f"/.meshc-mirror/{loc_name}"), children=body)

    @staticmethod
    def connection_limit(cb: Any, ctx: _Ctx) -> int | None:
        """The callee's concurrent-connection cap. nginx speaks HTTP/1.1 upstream, one request per
        connection, so a request limit is a connection limit; it has no queue (a pending limit
        other than 0) and no limit on concurrent retries."""
        if cb is None:
            return None
        if cb.max_pending or cb.max_retries is not None:
            ctx.error("nginx cannot queue requests for a connection (max_pending) or limit concurrent "
                      "retries (max_retries)", cb.span, help="use max_pending 0, or the envoy target")
        limits = [x for x in (cb.max_connections, cb.max_requests) if x is not None]
        return min(limits) if limits else None

    def lower_upstreams(self, sc: Sidecar, ctx: _Ctx) -> list[D]:
        peer = self.opt("peer_host", "127.0.0.1")
        out: list[D] = []
        scheme = [d("default", Lit("http"))]
        names = [d("default", Lit(""))]
        for name in sorted(sc.upstream_tries):
            svc, port = sc.upstream_meta[name]
            tries = sc.upstream_tries[name]
            cb = svc.resilience.circuit_breaker
            limit = self.connection_limit(cb, ctx)
            limits = [0] * tries
            if limit is not None:
                assert cb is not None
                if limit < tries:
                    ctx.error(f"nginx needs a limit >= {tries} (one connection per allowed attempt)", cb.span)
                q, rem = divmod(limit, tries)
                limits = [q + (1 if i < rem else 0) for i in range(tries)]
            body: list[D] = [d("zone", name, "64k")]
            # one server per allowed attempt: nginx retries on the *next* server only
            for lim in limits:
                extra = [f"max_conns={max(lim, 1)}"] if limit is not None else []
                body.append(d("server", Plain(host_port(peer, port.number)), "max_fails=0", *extra))
            body.append(d("keepalive", 16))
            out.append(block("upstream", name, children=body))
            scheme.append(d(Key(name), Lit("https" if port.mtls != "disabled" else "http")))
            # verified against the callee certificate's CN: the name meshc certs gave it, which a
            # long identity no longer shares with its first 64 characters (that was a 503)
            names.append(d(Key(name), Lit(subject_cn(svc.identity))))
        for name in sorted(sc.externals):
            ext = sc.externals[name].external
            assert ext is not None
            scheme.append(d(Key(name), Lit("https" if ext.tls_originate else "http")))
            names.append(d(Key(name), Lit(ext.sni or ext.host)))
        if sc.externals:
            out += [d("resolver", Plain(self.opt("resolver", "127.0.0.53")), "valid=30s"),
                    d("resolver_timeout", "5s")]
        if not out:
            return []  # no outbound server: the maps below would name an unset variable
        return [
            # "<upstream>/<version>" picked by a route rule -> upstream, version header, peer
            block("map", "$meshc_pick", "$meshc_up", children=[
                d("default", Lit(NO_ROUTE)), d(Rx("~^(?<meshc_u>[^/]+)/"), Raw("$meshc_u"))]),
            block("map", "$meshc_pick", "$meshc_version", children=[
                d("default", Lit("")), d(Rx("~/(?<meshc_v>.+)$"), Raw("$meshc_v"))]),
            block("map", "$meshc_up", "$meshc_scheme", children=scheme),
            block("map", "$meshc_up", "$meshc_peer_name", children=names),
            *out]


def dispatch(route_var: str) -> D:
    """Jump to the named location the route map chose, keeping the URI (try_files with no file)."""
    return d("try_files", Lit("/.meshc-no-such-file"), expr("@", Var(route_var.removeprefix("$"))))


def ingress_locations(paths: tuple[PathMatch, ...]) -> list[tuple[Arg, ...]]:
    """nginx location modifiers for exposed paths (`^~` is a byte prefix that stops regex search)."""
    out: list[tuple[Arg, ...]] = []
    for p in paths or (PathMatch(kind="prefix", value="/"),):
        # location URIs are matched as written: `$` is literal there (Plain, not Lit)
        if p.kind == "exact":
            out.append((Raw("="), Plain(p.value)))
        elif p.kind == "prefix":
            out.append((Raw("/"),) if p.value == "/" else (Raw("^~"), Plain(p.value)))
        elif p.kind == "under":
            base = p.value.rstrip("/")
            out += [(Raw("/"),)] if not base else [(Raw("="), Plain(base)), (Raw("^~"), Plain(base + "/"))]
        else:
            body = p.value.removeprefix("^").removesuffix("$")
            out.append((Raw("~"), Rx(f"^(?:{body})$")))
    seen: list[tuple[Arg, ...]] = []
    for mods in out:
        if mods not in seen:
            seen.append(mods)
    return seen


def dedupe_named(locs: list[D]) -> list[D]:
    out, names = [], set()
    for loc in locs:
        key = tuple(loc.args)
        if key not in names:
            names.add(key)
            out.append(loc)
    return out


def originates(svc: Service) -> bool:
    """An external service whose callers speak plain HTTP while the sidecar speaks TLS."""
    return svc.external is not None and svc.external.tls_originate


def var_name(name: str) -> str:
    return name.lower().replace("-", "_")


def check_header(name: str, span: Span, ctx: _Ctx) -> None:
    if not _HEADER_NAME.match(name):
        ctx.error(f"nginx reads headers through $http_ variables; '{name}' has characters they cannot name",
                  span)


def route_regex(m: Match, headers: list[str], query: list[str]) -> str:
    methods = "|".join(regex_escape(x) for x in m.methods) if m.methods else ANY_FIELD
    hs = {h.name: value_regex(h) for h in m.headers}
    qs = {q.name: value_regex(q) for q in m.query}
    fields = [f"(?:{methods})", *[hs.get(h, ANY_FIELD) for h in headers], *[qs.get(q, ANY_FIELD) for q in query]]
    path = path_regex(m.path) if m.path is not None else ".*$"
    return "(?s)^" + "\\n".join(fields) + "\\n" + path


def redirect_target(r: Any) -> Expr:
    """`return 30x URL`: unset parts keep the request's."""
    parts: list[str] = [r.scheme or Var("scheme"), "://", r.host or Var("host"), f":{r.port}" if r.port else ""]
    # a new path keeps the query string (as Envoy's path_redirect does); no path keeps the URI
    parts += [r.path, Var("is_args"), Var("args")] if r.path is not None else [Var("request_uri")]
    return expr(*parts)


def composite(*fields: str) -> Expr:
    """A composite map source: fields (variables, or a literal such as a fixed peer) separated
    by SEP, which none of them contains."""
    parts: list[str] = []
    for i, f in enumerate(fields):
        parts += [SEP, f] if i else [f]
    return expr(*parts)


def hash_key(lb: Any) -> str:
    """The variable a consistent hash reads (checked by `check_values`)."""
    key = lb.hash_key.lower().replace("-", "_") if lb.hash_on == "header" or lb.hash_on is None else lb.hash_key
    return HASH_KEY[lb.hash_on or "header"].format(key)


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------- values nginx can carry

# what nginx reads as a literal server name: `*` (meshc's any host), a name with an optional `*.`
# (nginx's wildcard, as meshc's), or an IPv4 address; anything else could be a regex (`~...`)
_SERVER_NAME = re.compile(r"^(\*|(\*\.)?[a-z0-9]([-a-z0-9_]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9_]*[a-z0-9])?)*)$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token: header names
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # CR, LF, NUL...: header injection
_ADDRESS = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.:]*[A-Za-z0-9])?$")  # a DNS name or an IP address
_NAMED_GROUP = re.compile(r"\(\?(P?<[A-Za-z_]|'[A-Za-z_])")
_NGX_VALUE_HELP = "write it without that text, or use the envoy target"


def named_group(rx: str) -> bool:
    """Does a regex define a named group? In nginx each becomes a variable, which could overwrite
    the ones meshc's maps use (`(?<meshc_peer>...)`) or make `nginx -t` fail."""
    return bool(_NAMED_GROUP.search(rx))
