"""Mesh model -> canonical `.mesh` source: the inverse of the front end.

`to_mesh_text(mesh)` prints a resolved model so that `meshc.compiler.load_text` of the text
resolves to an equal model (spans and file names aside). Policies and overlays are already
flattened in a model, so the text has one `mesh` block, one block per service, and the
authorization rules in order. The result is passed through `meshc.fmt.format_text`.

Defaults are left out when the resolver would fill in the same value (a service's identity
named after it, its namespace and mTLS mode when they equal the mesh's, a timeout inherited from
the mesh). A value the language cannot spell (a label key with a '/', a header name with a '.',
an identity in another namespace than its service) is never dropped silently: it becomes a
`# meshc import: <where> <field>: <why>` comment at its place, and `unparse()` also returns it.

`notes` lets a caller (the importers) put its own comments at a place: keys are `""` (top of
the file), `"mesh"`, `"service:<name>"`, `"route:<name>"` (above the service's route table) and
`"authz"` (above the allow/deny rules); values are comment texts without the leading `#`.

The text is built from the model's values, which an importer copied from its input, so every
value is written in a form that cannot change the structure around it:
- strings are quoted (`meshc.ast.quote`);
- a word written bare (a name, a keyword value) must be a NAME token, else it is not spliced:
  a service, version, namespace or identity name that is not one refuses the whole text
  (`Unspeakable`: what it names could not be kept apart from other principals), and a name in
  a rule (a header, a method, a rule's source) loses the item, never making the mesh looser:
  an allow rule loses the source or the method (or is left out), a deny rule is widened (a
  source it cannot write becomes `*`, a method or header condition it cannot write is dropped);
- comments are one line each, with every character that is not printable escaped (`shown`),
  so no comment text can end its comment or hide a line from a reviewer's terminal.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import get_args

from meshc.ast import quote, size_text
from meshc.fmt import format_text
from meshc.model import (
    FULL,
    AuthzRule,
    Destination,
    Fault,
    HeaderOps,
    HealthCheck,
    Match,
    Mesh,
    Outlier,
    PathMatch,
    Resilience,
    Retry,
    RetryOn,
    RouteRule,
    Service,
    Slo,
    StringMatch,
    Timeout,
)
from meshc.units import dur, pct

NAME_RE = re.compile(r"^[A-Za-z_]([A-Za-z0-9_-]*[A-Za-z0-9_])?$")
# The host part of an ENDPOINT token (grammar/mesh.lark): a name or IPv4 address, or IPv6.
ENDPOINT_HOST_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9.-]*|[0-9A-Fa-f:.]+)$")
SHOWN_MAX = 200  # characters of a value quoted in a comment or the report
DEFAULT_RETRY_ON = Retry.model_fields["on"].default
RETRY_CONDITIONS = frozenset(get_args(RetryOn))
DEFAULT_WINDOW = Slo.model_fields["window_ms"].default
@dataclass(frozen=True)
class Lost:
    """Something the model holds that the text cannot say."""

    where: str  # e.g. "service reviews"
    field: str  # e.g. "version v1 labels"
    why: str

    def comment(self) -> str:
        return f"meshc import: {self.where} {self.field}: {self.why}"


class Unspeakable(ValueError):
    """A name the model holds that the .mesh language cannot write, where leaving it out would
    change who is who (a service, namespace, version or identity name)."""


# --------------------------------------------------------------------------- lexical forms


def is_name(text: str) -> bool:
    return isinstance(text, str) and NAME_RE.fullmatch(text) is not None


def shown(text: object, limit: int = SHOWN_MAX) -> str:
    """`text` on one line, safe in a comment, a report or a terminal: every character that is not
    printable (newlines, CR, tabs, ESC, bidi controls, line separators) as its escape, and at
    most `limit` characters of it."""
    s = str(text)
    cut = len(s) - limit if limit and len(s) > limit else 0
    if cut:
        s = s[:limit]
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)
    return f"{out}...({cut} more characters)" if cut else out


def endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------- printer


class Unparser:
    def __init__(self, mesh: Mesh, notes: Mapping[str, Sequence[str]] | None = None):
        self.mesh = mesh
        self.notes = {k: list(v) for k, v in (notes or {}).items()}
        self.lost: list[Lost] = []
        self.lines: list[str] = []

    # ----------------------------------------------------------------- helpers
    def out(self, line: str) -> None:
        self.lines.append(line)

    def comments(self, key: str) -> None:
        for text in self.notes.get(key, ()):
            self.out(f"# {shown(text, 0)}".rstrip())

    def lose(self, where: str, field: str, why: str) -> None:
        lost = Lost(shown(where), shown(field), shown(why, 0))
        self.lost.append(lost)
        self.out(f"# {shown(lost.comment(), 0)}")

    def name(self, text: str, where: str, field: str) -> str | None:
        if is_name(text):
            return text
        self.lose(where, field, f"'{shown(text)}' is not a name the .mesh language accepts")
        return None

    def word(self, text: object, what: str, allowed: frozenset[str] = frozenset()) -> str:
        """A word written bare where nothing can be left out instead: a NAME (or one of
        `allowed`, the words of a fixed set that are other tokens), or Unspeakable."""
        if isinstance(text, str) and (is_name(text) or text in allowed):
            return text
        raise Unspeakable(f"{what} '{shown(text)}' is not a name the .mesh language accepts "
                          "(letters, digits, '-' and '_', starting with a letter or '_')")

    # ----------------------------------------------------------------- mesh
    def run(self) -> str:
        self.comments("")
        self.mesh_block()
        for svc in self.mesh.services:
            self.service(svc)
        if self.mesh.rules or self.notes.get("authz"):
            self.out("")
            self.comments("authz")
            for rule in self.mesh.rules:
                self.authz(rule)
        for key in sorted(k for k in self.notes if k.startswith("service:") or k.startswith("route:")):
            svc_name = key.split(":", 1)[1]
            if self.mesh.service(svc_name) is None:  # notes about a resource that became nothing
                self.out("")
                self.comments(key)
        return "\n".join(self.lines) + "\n"

    def mesh_block(self) -> None:
        m = self.mesh
        self.comments("mesh")
        w = self.word
        self.out(f"mesh {w(m.name, 'mesh name')} {{")
        self.out(f"trust_domain {quote(m.trust_domain)}")
        self.out(f"namespace {w(m.namespace, 'namespace')}")
        self.out(f"mtls {w(m.mtls, 'mTLS mode')}")
        self.out(f"authz {w(m.authz, 'authz default')}")
        if m.path_normalization != "strict":
            self.out(f"path_normalization {w(m.path_normalization, 'path normalization')}")
        if m.timeout is not None:
            self.out(f"timeout {self.timeout_value(m.timeout)}")
        obs = m.observability
        self.out(f"access_log {w(obs.access_log, 'access log format')}")
        if not obs.metrics:
            self.out("metrics off")
        self.out(f"trace_sampling {pct(obs.trace_sampling)}")
        ing = m.ingress_identity
        if (ing.name, ing.namespace) != ("ingress-gateway", m.namespace):
            self.out(f"ingress_identity {w(ing.name, 'identity')} in {w(ing.namespace, 'namespace')}")
        if ing.trust_domain != m.trust_domain:
            self.lose("mesh", "ingress_identity", f"trust domain {ing.trust_domain!r} differs from the mesh's")
        self.out("}")

    # ----------------------------------------------------------------- services
    def service(self, svc: Service) -> None:
        m = self.mesh
        w = self.word
        where = f"{'external' if svc.external else 'service'} {w(svc.name, 'service name')}"
        self.out("")
        self.out(f"{where} {{")
        self.comments(f"service:{svc.name}")
        if svc.external is not None:
            ext = svc.external
            self.out(f"host {quote(ext.host)}")
            if ext.tls_originate:
                self.out("tls originate" + (f" sni {quote(ext.sni)}" if ext.sni else ""))
            elif ext.sni:
                self.lose(where, "sni", "an SNI is only written with `tls originate`")
            for attr, val, default in (("namespace", svc.namespace, m.namespace), ("mtls", svc.mtls, m.mtls),
                                       ("identity", svc.identity.name, svc.name)):
                if val != default:
                    self.lose(where, attr, f"external services take the mesh's ({default}), not {val}")
        else:
            if svc.namespace != m.namespace:
                self.out(f"namespace {w(svc.namespace, 'namespace')}")
            if svc.mtls != m.mtls:
                self.out(f"mtls {w(svc.mtls, 'mTLS mode')}")
            if svc.identity.name != svc.name:
                self.out(f"identity {w(svc.identity.name, 'identity')}")
        ident = svc.identity
        if ident.namespace != svc.namespace or ident.trust_domain != m.trust_domain:
            self.lose(where, "identity", f"{ident.spiffe} is outside the service's namespace or trust domain")
        for p in svc.ports:
            self.out(f"port {w(p.protocol, 'protocol')} {int(p.number)}")
        for p in svc.ports:
            if p.mtls != svc.mtls:
                if svc.external is not None:
                    self.lose(where, f"port {p.number} mtls", "external services take the mesh's mTLS mode")
                else:
                    self.out(f"mtls {w(p.mtls, 'mTLS mode')} on port {int(p.number)}")
        if svc.endpoints:
            if svc.external is not None:
                self.lose(where, "endpoints", "external services are reached by host name")
            else:
                eps = self.endpoints(svc.endpoints, where, "endpoints")
                if eps:
                    self.out("endpoints " + eps)
        for v in svc.versions:
            self.version(svc, v, where)
        if svc.calls:
            self.out("calls " + ", ".join(w(c, "service name") for c in svc.calls))
        if svc.expose is not None:
            self.expose(svc, where)
        for slo in svc.objectives:
            self.objective(slo, where)
        if svc.routes or self.notes.get(f"route:{svc.name}"):
            self.comments(f"route:{svc.name}")
        if svc.routes:
            self.out("route {")
            for r in svc.routes:
                self.rule(svc, r, where)
            self.out("}")
        self.resilience(svc, svc.resilience, where)
        for f in svc.faults:
            self.fault(f, where)
        self.out("}")

    def version(self, svc: Service, v, where: str) -> None:  # type: ignore[no-untyped-def]
        if svc.external is not None:
            self.lose(where, f"version {v.name}", "external services have no versions")
            return
        vname = self.word(v.name, "version name")
        labels = []
        for k, val in v.labels:
            if not is_name(k):
                self.lose(where, f"version {vname} label {k}", "label keys must be plain names in .mesh")
                continue
            labels.append(f"{k}={val if is_name(val) else quote(str(val))}")
        if not labels and v.labels:
            labels = [f"version={v.name}"]  # keeps the block valid; the lost labels are noted above
        body = []
        if labels:
            body.append("labels " + " ".join(labels))
        eps = self.endpoints(v.endpoints, where, f"version {vname} endpoints") if v.endpoints else ""
        if eps:
            body.append("endpoints " + eps)
        self.out(f"version {vname} {{ {' '.join(body)} }}" if body else f"version {vname} {{}}")

    def endpoints(self, eps, where: str, field: str) -> str:  # type: ignore[no-untyped-def]
        """The endpoints an ENDPOINT token can spell; the others are lost (an endpoint is where
        the native proxy connects, never who may call)."""
        out = []
        for e in eps:
            if ENDPOINT_HOST_RE.fullmatch(str(e.host)) and isinstance(e.port, int):
                out.append(endpoint(e.host, e.port))
            else:
                self.lose(where, field, f"endpoint host '{shown(e.host)}' cannot be written as an endpoint")
        return ", ".join(out)

    def expose(self, svc: Service, where: str) -> None:
        ing = svc.expose
        assert ing is not None
        parts = ["expose ingress", f"on port {ing.port}"]
        if tuple(ing.hosts) != ("*",):
            parts.append("hosts " + ", ".join(quote(h) for h in ing.hosts))
        if ing.paths:
            parts.append("paths " + ", ".join(self.path(p) for p in ing.paths))
        self.out(" ".join(parts))

    def objective(self, slo: Slo, where: str) -> None:
        window = f" over {dur(slo.window_ms)}" if slo.window_ms != DEFAULT_WINDOW else ""
        if slo.kind == "availability":
            self.out(f"objective availability {pct(slo.objective)}{window}")
        elif slo.threshold_ms is not None and slo.quantile is not None and slo.quantile % 100 == 0:
            self.out(f"objective latency p{slo.quantile // 100} {dur(slo.threshold_ms)}{window}")
        else:
            self.lose(where, "objective latency", "a latency objective needs a whole-percent quantile and a threshold")

    # ----------------------------------------------------------------- resilience
    def timeout_value(self, t: Timeout) -> str:
        return "none" if t.ms is None else dur(t.ms)

    def resilience(self, svc: Service, r: Resilience, where: str) -> None:
        mesh_t = self.mesh.timeout
        inherited = mesh_t if svc.is_http else None
        if r.timeout is not None:
            if inherited is None or inherited.ms != r.timeout.ms:
                self.out(f"timeout {self.timeout_value(r.timeout)}")
        elif inherited is not None:
            self.lose(where, "timeout", "no timeout at all under a mesh-wide timeout cannot be written; "
                                        "`timeout none` is the closest")
        if r.retry is not None:
            self.retry(r.retry, where)
        if r.load_balance is not None:
            lb = r.load_balance
            line = f"load_balance {self.word(lb.policy, 'load-balancing policy')}"
            if lb.policy == "consistent_hash":
                line += {"header": f" header {quote(lb.hash_key)}", "cookie": f" cookie {quote(lb.hash_key)}",
                         "query": f" query {quote(lb.hash_key)}", "source_ip": " source_ip",
                         None: ""}[lb.hash_on]
                if lb.hash_on == "cookie" and lb.cookie_ttl_ms is not None:
                    line += f" ttl {dur(lb.cookie_ttl_ms)}"
            self.out(line)
        if r.circuit_breaker is not None:
            cb = r.circuit_breaker
            items = [f"{k} {getattr(cb, k)}" for k in ("max_connections", "max_pending", "max_requests",
                                                       "max_retries") if getattr(cb, k) is not None]
            if items:
                self.out("circuit_breaker " + " ".join(items))
            else:
                self.lose(where, "circuit_breaker", "a circuit breaker without any limit")
        if r.outlier is not None:
            self.outlier(r.outlier)
        if r.health_check is not None:
            self.health_check(r.health_check, where)
        if r.rate_limit is not None:
            rl = r.rate_limit
            self.out(f"rate_limit {int(rl.requests)}/{self.word(rl.unit, 'rate unit')}" +
                     (f" burst {int(rl.burst)}" if rl.burst is not None else ""))
        if r.max_request_body is not None:
            self.out(f"max_request_body {size_text(r.max_request_body.bytes)}")

    def outlier(self, o: Outlier) -> None:
        self.out(f"outlier consecutive_5xx {o.consecutive_5xx} interval {dur(o.interval_ms)} "
                 f"eject {dur(o.eject_ms)} max_percent {pct(o.max_percent)}")

    def health_check(self, hc: HealthCheck, where: str) -> None:
        line = f"health_check {self.word(hc.protocol, 'health check protocol')}"
        if hc.protocol != "tcp":
            line += f" {quote(hc.path)}"
        elif hc.path != "/":
            self.lose(where, "health_check path", "a tcp health check has no path")
        self.out(f"{line} interval {dur(hc.interval_ms)} probe_timeout {dur(hc.timeout_ms)} "
                 f"unhealthy {hc.unhealthy} healthy {hc.healthy}")

    def retry(self, rt: Retry, where: str, in_rule: bool = False) -> None:
        if in_rule and rt.attempts == 0 and not rt.on and not rt.status_codes:
            self.out("retry none")
            return
        line = f"retry {rt.attempts}"
        if tuple(rt.on) != tuple(DEFAULT_RETRY_ON) or rt.status_codes:
            conds = [*(self.word(c, "retry condition", RETRY_CONDITIONS) for c in rt.on),
                     *(str(int(c)) for c in rt.status_codes)]
            if conds:
                line += " on " + ", ".join(conds)
            else:
                self.lose(where, "retry on", "a retry without any condition")
        if rt.per_try_ms is not None:
            line += f" per_try {dur(rt.per_try_ms)}"
        if rt.backoff_base_ms is not None:
            line += f" backoff {dur(rt.backoff_base_ms)}"
            if rt.backoff_max_ms is not None:
                line += f" max {dur(rt.backoff_max_ms)}"
        elif rt.backoff_max_ms is not None:
            self.lose(where, "retry backoff max", "a backoff maximum needs a base")
        if rt.budget is not None:
            line += f" budget {pct(rt.budget)}"
        self.out(line)

    def fault(self, f: Fault, where: str) -> None:
        if f.delay_ms is None and f.abort_status is None:
            self.lose(where, "fault", "a fault with neither delay nor abort")
            return
        line = "fault"
        if f.matches:
            cond = self.condition(f.matches, where)
            if cond is None:
                return
            line += f" when {cond}"
        if f.delay_ms is not None:
            line += f" delay {dur(f.delay_ms)} {pct(f.delay_percent)}"
        if f.abort_status is not None:
            line += f" abort {f.abort_status} {pct(f.abort_percent)}"
        self.out(line)

    # ----------------------------------------------------------------- matching
    def path(self, p: PathMatch) -> str:
        return f"{self.word(p.kind, 'path match kind')} {quote(p.value)}"

    def string_match(self, word: str, m: StringMatch, where: str) -> str | None:
        if not is_name(m.name):
            self.lose(where, f"{word} {shown(m.name)}",
                      f"'{shown(m.name)}' is not a {word} name the .mesh language accepts")
            return None
        op = {"exact": "==", "prefix": "prefix", "regex": "regex"}.get(m.kind)
        return f"{word} {m.name} {op} {quote(m.value)}" if op else \
            f"{word} {m.name} {self.word(m.kind, 'match kind')}"

    def match(self, m: Match, where: str) -> str | None:
        parts = []
        if m.path is not None:
            parts.append("path " + self.path(m.path))
        for h in m.headers:
            s = self.string_match("header", h, where)
            if s is None:
                return None
            parts.append(s)
        for q in m.query:
            s = self.string_match("query", q, where)
            if s is None:
                return None
            parts.append(s)
        if m.methods:
            methods = [x for x in m.methods if self.name(x, where, "method")]
            if len(methods) != len(m.methods):
                return None
            parts.append("method " + ", ".join(methods))
        if not parts:
            self.lose(where, "match", "an empty condition (it matches everything: use `otherwise`)")
            return None
        return " and ".join(parts)

    def condition(self, matches: Sequence[Match], where: str) -> str | None:
        groups = [self.match(m, where) for m in matches]
        if any(g is None for g in groups):
            return None
        return " or ".join(g for g in groups if g)

    # ----------------------------------------------------------------- routing
    def dest(self, svc: Service, d: Destination, where: str) -> str | None:
        self.word(d.service, "service name")
        if d.version is not None:
            self.word(d.version, "version name")
        if d.service == svc.name:
            if d.version is None:
                if svc.version(svc.name) is not None:
                    self.lose(where, "route", f"'{svc.name}' is both the service and one of its versions")
                    return None
                return svc.name
            return d.version
        if d.version is not None:
            return f"{d.service}.{d.version}"
        if svc.version(d.service) is not None:
            self.lose(where, "route", f"'{d.service}' names both a service and a version of {svc.name}")
            return None
        return d.service

    def rule(self, svc: Service, r: RouteRule, where: str) -> None:
        w = f"{where} route"
        head = "otherwise"
        if r.matches:
            cond = self.condition(r.matches, w)
            if cond is None:
                self.lose(w, "rule", "the whole rule is left out because its condition cannot be written")
                return
            head = f"when {cond}"
        if r.redirect is not None:
            rd = r.redirect
            opts = [f"path {quote(rd.path)}" if rd.path is not None else "",
                    f"host {quote(rd.host)}" if rd.host is not None else "",
                    f"scheme {self.word(rd.scheme, 'scheme')}" if rd.scheme is not None else "",
                    f"port {int(rd.port)}" if rd.port is not None else "", f"code {int(rd.code)}"]
            action = "redirect " + " ".join(o for o in opts if o)
        elif r.respond is not None:
            action = f"respond {int(r.respond.status)}" + (f" {quote(r.respond.body)}" if r.respond.body else "")
        else:
            dests = [self.dest(svc, d, w) for d in r.destinations]
            if not dests or any(d is None for d in dests):
                if not dests:
                    self.lose(w, "rule", "a rule without destination, redirect or response")
                return
            if len(dests) == 1 and r.destinations[0].weight == FULL:
                action = str(dests[0])
            else:
                action = "split { " + ", ".join(f"{d} {pct(x.weight)}" for d, x in zip(dests, r.destinations,
                                                                                      strict=True)) + " }"
        body = self.rule_body(svc, r, w)
        if body:
            self.out(f"{head} -> {action} {{")
            self.lines += body
            self.out("}")
        else:
            self.out(f"{head} -> {action}")

    def rule_body(self, svc: Service, r: RouteRule, where: str) -> list[str]:
        saved, self.lines = self.lines, []
        try:
            if r.rewrite is not None:
                for k in ("prefix", "path", "host"):  # the keywords, not values
                    v = getattr(r.rewrite, k)
                    if v is not None:
                        self.out(f"rewrite {k} {quote(v)}")
            for direction, ops in (("request_headers", r.request_headers),
                                   ("response_headers", r.response_headers)):
                if ops is not None:
                    self.header_ops(direction, ops, where)
            if r.mirror is not None:
                d = self.dest(svc, r.mirror.destination, where)
                if d is not None:
                    self.out(f"mirror {d} {pct(r.mirror.percent)}")
            if r.timeout is not None:
                self.out(f"timeout {self.timeout_value(r.timeout)}")
            if r.retry is not None:
                self.retry(r.retry, where, in_rule=True)
            for f in r.faults:
                self.fault(f, where)
            return self.lines
        finally:
            self.lines = saved

    def header_ops(self, direction: str, ops: HeaderOps, where: str) -> None:
        for verb, items in (("set", ops.set), ("add", ops.add)):
            for k, v in items:
                if self.name(k, where, f"{direction} {verb}"):
                    self.out(f"{direction} {verb} {k} {quote(v)}")
        for k in ops.remove:
            if self.name(k, where, f"{direction} remove"):
                self.out(f"{direction} remove {k}")

    # ----------------------------------------------------------------- authorization
    def authz(self, rule: AuthzRule) -> None:
        """One allow/deny line. What cannot be written never widens what is allowed: an allow
        rule keeps only the sources, methods and headers it can write (and is left out when a
        whole part is gone, or a header is), a deny rule is widened instead (an unwritable source
        makes it apply to `*`, an unwritable method or header condition is dropped)."""
        deny = rule.action == "deny"
        where = f"{self.word(rule.action, 'rule action')} rule"
        sources = []
        widen_sources = False
        for s in rule.sources:
            if s.kind in ("service", "identity"):
                if not is_name(s.name):
                    widen_sources |= deny
                    self.lose(where, "source", f"'{shown(s.name)}' is not a name the .mesh language accepts; " +
                              ("the rule applies to every caller (`*`) instead" if deny else
                               "this source is left out"))
                    continue
                if s.kind == "service" and self.mesh.service(s.name) is not None:
                    sources.append(s.name)
                else:  # same principal: the service account name
                    sources.append(f"identity {s.name}")
            else:
                sources.append(str(s))
        if widen_sources:
            sources = ["*"]
        dests = [self.word(d, "service name") if d != "*" else d for d in rule.destinations]
        if not sources or not dests:
            self.lose(where, "sources" if not sources else "destinations", "a rule needs both sides")
            return
        line = f"{rule.action} {', '.join(sources)} -> {', '.join(dests)}"
        if rule.methods:
            methods = [m for m in rule.methods if is_name(m)]
            if len(methods) != len(rule.methods):
                bad = ", ".join(f"'{shown(m)}'" for m in rule.methods if not is_name(m))
                if deny:
                    methods = []
                    self.lose(where, "methods", f"{bad} cannot be written; the rule denies every method instead")
                elif not methods:
                    self.lose(where, "methods", f"{bad} cannot be written; the whole rule is left out")
                    return
                else:
                    self.lose(where, "methods", f"{bad} cannot be written and is left out")
            if methods:
                line += " methods " + ", ".join(methods)
        if rule.paths:
            line += " paths " + ", ".join(self.path(p) for p in rule.paths)
        if rule.not_paths:
            line += " except paths " + ", ".join(self.path(p) for p in rule.not_paths)
        if rule.ports:
            line += " ports " + ", ".join(str(int(p)) for p in rule.ports)
        if rule.headers:
            hs = [self.string_match("header", h, where) for h in rule.headers]
            if any(h is None for h in hs):
                if not deny:
                    self.lose(where, "headers", "the whole rule is left out because a header cannot be written")
                    return
                self.lose(where, "headers", "a header condition that cannot be written is dropped: the rule "
                                            "denies more")
            written = [h for h in hs if h is not None]
            if written:
                line += " headers " + ", ".join(h.removeprefix("header ") for h in written)
        self.out(line)


def unparse(mesh: Mesh, notes: Mapping[str, Sequence[str]] | None = None) -> tuple[str, list[Lost]]:
    """The canonical text of `mesh`, and what it could not say (also written as comments)."""
    p = Unparser(mesh, notes)
    text = p.run()
    return format_text(text, "<unparse>"), p.lost


def to_mesh_text(mesh: Mesh, notes: Mapping[str, Sequence[str]] | None = None) -> str:
    return unparse(mesh, notes)[0]


__all__ = ["Lost", "Unspeakable", "dur", "pct", "shown", "to_mesh_text", "unparse"]
