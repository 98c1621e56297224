"""What every backend shares: the `Bundle` it returns, the `Backend` base class, and the
feature catalogue that turns a backend's CAPABILITIES (data) into E301 diagnostics.

A backend declares the features it can express; `features_used(mesh)` lists what a mesh uses,
each with the span of the `.mesh` text that uses it. Anything used but not declared becomes
`error[E301]: <feature> is not supported when targeting <backend>` at that line, before the
backend's `lower` runs, so no backend ever drops a construct silently.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from meshc.diagnostics import Diagnostic, did_you_mean
from meshc.model import FULL, Mesh, Observability, Resilience, RouteRule, Span

# Every feature a mesh can use, with the words used in diagnostics and docs/capabilities.md.
FEATURES: dict[str, str] = {
    "protocol.http": "HTTP/1.1 ports",
    "protocol.http2": "HTTP/2 ports",
    "protocol.grpc": "gRPC ports",
    "protocol.tcp": "TCP ports",
    "protocol.tls": "TLS passthrough ports",
    "mtls.strict": "strict mTLS",
    "mtls.permissive": "permissive mTLS",
    "mtls.disabled": "disabled mTLS",
    "endpoints.static": "static endpoints",
    "versions": "versions (subsets)",
    "route.match.path.exact": "exact path matches",
    "route.match.path.prefix": "byte-prefix path matches",
    "route.match.path.under": "segment-prefix path matches (`under`)",
    "route.match.path.regex": "regex path matches",
    "route.match.header": "header matches",
    "route.match.header.regex": "regex header matches",
    "route.match.header.absent": "header-absent matches",
    "route.match.method": "method matches",
    "route.match.query": "query-parameter matches",
    "route.split": "weighted splits",
    "route.split.services": "splits across services",
    "route.rewrite": "path rewrites",
    "route.rewrite.host": "host rewrites",
    "route.redirect": "redirects",
    "route.respond": "direct responses",
    "route.headers.request": "request header manipulation",
    "route.headers.response": "response header manipulation",
    "route.mirror": "mirroring",
    "route.no_default": "route tables without `otherwise` (404)",
    "timeout": "request timeouts",
    "retry": "retries",
    "retry.per_try": "per-try timeouts",
    "retry.backoff": "retry backoff",
    "retry.budget": "retry budgets",
    "retry.status_codes": "retries on specific status codes",
    "load_balance.round_robin": "round-robin load balancing",
    "load_balance.least_request": "least-request load balancing",
    "load_balance.random": "random load balancing",
    "load_balance.consistent_hash": "consistent-hash load balancing",
    "circuit_breaker": "circuit breakers",
    "outlier": "outlier detection",
    "health_check": "active health checks",
    "rate_limit": "local rate limits",
    "max_request_body": "request body size limits",
    "fault.delay": "fault injection (delay)",
    "fault.abort": "fault injection (abort)",
    "authz.allow": "allow rules",
    "authz.deny": "deny rules",
    "authz.identity": "identity-based authorization",
    "authz.unauthenticated": "rules for unauthenticated sources",
    "authz.methods": "authorization by method",
    "authz.paths": "authorization by path",
    "authz.not_paths": "authorization path exclusions",
    "authz.ports": "authorization by port",
    "authz.headers": "authorization by header",
    "ingress": "ingress exposure",
    "external": "external services (egress)",
    "external.tls_originate": "TLS origination to external services",
    "slo": "service level objectives",
    # mesh-wide settings, used when they differ from the defaults
    "path_normalization.off": "`path_normalization off` (raw paths for routing and authorization)",
    "access_log.text": "plain-text access logs",
    "access_log.off": "turning access logs off",
    "metrics.off": "turning metrics off",
    "trace_sampling": "a trace sampling rate",
}

# Mesh-wide observability settings: configuration of a mesh installation (Telemetry, Helm
# values) rather than of the resources the Kubernetes targets write. (Path normalization is
# install-time there too; those targets normalize at least as much as asked and say how to
# pin it, W321.)
MESH_SETTING_FEATURES: frozenset[str] = frozenset(
    {"access_log.text", "access_log.off", "metrics.off", "trace_sampling"})


# Features that describe the mesh rather than configure traffic: a traffic target has nothing
# to lower for them and loses nothing by leaving them out (objectives feed the prometheus target).
NEUTRAL_FEATURES: frozenset[str] = frozenset({"slo"})


def _resilience_features(r: Resilience | RouteRule, span: Span) -> Iterator[tuple[str, Span]]:
    if r.timeout is not None:
        yield "timeout", r.timeout.span
    if r.retry is not None:
        rt = r.retry
        yield "retry", rt.span
        if rt.per_try_ms is not None:
            yield "retry.per_try", rt.span
        if rt.backoff_base_ms is not None:
            yield "retry.backoff", rt.span
        if rt.budget is not None:
            yield "retry.budget", rt.span
        if rt.status_codes:
            yield "retry.status_codes", rt.span
    if isinstance(r, Resilience):
        if r.load_balance is not None:
            yield f"load_balance.{r.load_balance.policy}", r.load_balance.span
        for key in ("circuit_breaker", "outlier", "health_check", "rate_limit", "max_request_body"):
            val = getattr(r, key)
            if val is not None:
                yield key, val.span


def features_used(mesh: Mesh) -> Iterator[tuple[str, Span]]:
    """Every (feature, span) the mesh uses, in a stable order."""
    obs = mesh.observability
    if mesh.path_normalization == "off":
        yield "path_normalization.off", mesh.span
    if obs.access_log != "json":
        yield f"access_log.{obs.access_log}", mesh.span
    if not obs.metrics:
        yield "metrics.off", mesh.span
    if obs.trace_sampling != Observability().trace_sampling:
        yield "trace_sampling", mesh.span
    for svc in mesh.services:
        for p in svc.ports:
            yield f"protocol.{p.protocol}", p.span
            yield f"mtls.{p.mtls}", p.span
        if svc.endpoints or any(v.endpoints for v in svc.versions):
            yield "endpoints.static", svc.span
        if svc.versions:
            yield "versions", svc.versions[0].span
        yield from _resilience_features(svc.resilience, svc.span)
        for f in svc.faults:
            yield from _fault_features(f)
        if svc.expose is not None:
            yield "ingress", svc.expose.span
        if svc.external is not None:
            yield "external", svc.external.span
            if svc.external.tls_originate:
                yield "external.tls_originate", svc.external.span
        for slo in svc.objectives:
            yield "slo", slo.span
        if svc.routes and not any(r.is_default for r in svc.routes):
            yield "route.no_default", svc.routes[-1].span
        for rule in svc.routes:
            yield from _rule_features(rule, svc.name)
    for ar in mesh.rules:
        yield f"authz.{ar.action}", ar.span
        if any(s.kind in ("service", "identity", "authenticated") for s in ar.sources):
            yield "authz.identity", ar.span
        if any(s.kind == "unauthenticated" for s in ar.sources):
            yield "authz.unauthenticated", ar.span
        for key in ("methods", "paths", "not_paths", "ports", "headers"):
            if getattr(ar, key):
                yield f"authz.{key}", ar.span


def _fault_features(f: Any) -> Iterator[tuple[str, Span]]:
    if f.delay_ms is not None:
        yield "fault.delay", f.span
    if f.abort_status is not None:
        yield "fault.abort", f.span
    for m in f.matches:
        yield from _match_features(m)


def _match_features(m: Any) -> Iterator[tuple[str, Span]]:
    if m.path is not None:
        yield f"route.match.path.{m.path.kind}", m.path.span
    for h in m.headers:
        yield "route.match.header", h.span
        if h.kind == "regex":
            yield "route.match.header.regex", h.span
        if h.kind == "absent":
            yield "route.match.header.absent", h.span
    if m.methods:
        yield "route.match.method", m.span
    for q in m.query:
        yield "route.match.query", q.span


def _rule_features(rule: RouteRule, service: str) -> Iterator[tuple[str, Span]]:
    for m in rule.matches:
        yield from _match_features(m)
    if len(rule.destinations) > 1 or any(d.weight != FULL for d in rule.destinations):
        yield "route.split", rule.span
    if any(d.service != service for d in rule.destinations):
        yield "route.split.services", rule.span
    if rule.rewrite is not None:
        if rule.rewrite.prefix is not None or rule.rewrite.path is not None:
            yield "route.rewrite", rule.rewrite.span
        if rule.rewrite.host is not None:
            yield "route.rewrite.host", rule.rewrite.span
    if rule.redirect is not None:
        yield "route.redirect", rule.redirect.span
    if rule.respond is not None:
        yield "route.respond", rule.respond.span
    if rule.request_headers is not None:
        yield "route.headers.request", rule.request_headers.span
    if rule.response_headers is not None:
        yield "route.headers.response", rule.response_headers.span
    if rule.mirror is not None:
        yield "route.mirror", rule.mirror.span
    yield from _resilience_features(rule, rule.span)
    for f in rule.faults:
        yield from _fault_features(f)


@dataclass
class Bundle:
    """What a backend produces: relative path -> file bytes, plus its diagnostics."""

    files: dict[str, bytes] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def add_text(self, path: str, text: str) -> None:
        self.files[path] = text.encode()

    def add_yaml(self, path: str, docs: list[Any] | Any) -> None:
        """One YAML document, or a stream of them, with deterministic key order."""
        if isinstance(docs, list):
            text = "".join("---\n" + dump_yaml(d) for d in docs)
        else:
            text = dump_yaml(docs)
        self.add_text(path, text)

    def add_json(self, path: str, data: Any) -> None:
        self.add_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def write(self, out: Path, prefix: str = "") -> list[Path]:
        written = []
        for rel in sorted(self.files):
            dest = out / prefix / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            # Write aside, then rename: a running consumer (Envoy's file-based xDS, the native
            # proxy's watcher) sees the old file or the new one, never half of one.
            tmp = dest.with_name(f".{dest.name}.tmp")
            tmp.write_bytes(self.files[rel])
            tmp.replace(dest)
            written.append(dest)
        return written


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)
_Dumper.add_representer(tuple, lambda d, data: d.represent_list(list(data)))


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=True, default_flow_style=False, allow_unicode=True,
                     width=120)


class OptionError(ValueError):
    """An unknown backend option, or a value its option cannot take (a usage error: exit 2)."""


def text(value: str) -> str:
    """any text without control characters"""
    if any(not c.isprintable() for c in value):
        raise ValueError("expected text without control characters")
    return value


def boolean(value: str) -> bool:
    """true or false"""
    # `-X NAME` alone gives "" (true); 1/yes/on and 0/no/off are accepted too
    v = value.strip().lower()
    if v in ("", "1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def integer(lo: int, hi: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        v = value.strip()
        if not v.isdigit() or len(v) > 10 or not lo <= int(v) <= hi:
            raise ValueError(f"expected a whole number from {lo} to {hi}")
        return int(v)

    parse.__doc__ = f"a whole number from {lo} to {hi}"
    return parse


def choice(*values: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in values:
            raise ValueError("expected one of " + ", ".join(values))
        return value

    parse.__doc__ = "one of " + ", ".join(values)
    return parse


_DNS_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*")


def dns_name(value: str) -> str:
    """a lower-case DNS name"""
    if not _DNS_NAME.fullmatch(value):
        raise ValueError("expected a lower-case DNS name")
    return value


def host_address(value: str) -> str:
    """an IP address or a lower-case DNS name"""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _DNS_NAME.fullmatch(value):
            raise ValueError("expected an IP address or a lower-case DNS name") from None
    return value


def file_path(value: str) -> str:
    """a path"""
    # it is written into configs as is: visible characters only, none that any format quotes
    if not value or len(value) > 1024 or any(not c.isprintable() or c in " \"'\\$;{}#" for c in value):
        raise ValueError("expected a path of visible characters without spaces, quotes, backslashes, $, ;, {, } or #")
    return value


def label(value: str) -> str:
    """a Kubernetes label `key=value`"""
    key, sep, val = value.partition("=")
    ok = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
    if not sep or not ok.fullmatch(key.rsplit("/", 1)[-1]) or (val and not ok.fullmatch(val)):
        raise ValueError("expected a label key=value")
    return value


def prometheus_duration(value: str) -> str:
    """a Prometheus duration such as 15s, 2m or 1h"""
    if not re.fullmatch(r"[1-9][0-9]{0,5}(ms|s|m|h|d|w|y)", value):
        raise ValueError("expected a Prometheus duration such as 15s, 2m or 1h")
    return value


@dataclass(frozen=True)
class Option:
    """A backend option, given as `-X NAME[=VALUE]`: its help, and how its value is read (a
    function that returns the typed value or raises ValueError saying what it expected).
    A plain string in a backend's OPTIONS is an Option of that help taking any text."""

    help: str
    parse: Callable[[str], Any] = text


def declared_options(backend: type[Backend]) -> dict[str, Option]:
    return {name: o if isinstance(o, Option) else Option(o) for name, o in backend.OPTIONS.items()}


class Backend:
    """Base class: subclasses set `name`, `CAPABILITIES` and implement `lower`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    CAPABILITIES: ClassVar[frozenset[str]] = frozenset()
    # Kubernetes targets: the folders of meshc/schemas that hold their objects' CRD schemas
    # (`meshc validate`, `compile --validate`); empty for targets that write no Kubernetes objects.
    SCHEMAS: ClassVar[tuple[str, ...]] = ()
    # Backend options accepted as `-X NAME[=VALUE]`: an Option, or its help text (any text).
    OPTIONS: ClassVar[Mapping[str, Option | str]] = {}

    def __init__(self, options: Mapping[str, str] | None = None):
        """Every option is checked here, once: an unknown name or a value its Option cannot
        read raises OptionError (with a did-you-mean), never a silent default."""
        declared = declared_options(type(self))
        self.options = dict(options or {})
        self.values: dict[str, Any] = {}
        for name, value in self.options.items():
            option = declared.get(name)
            if option is None:
                known = ", ".join(sorted(declared)) or "none"
                hint = did_you_mean(name, declared)
                raise OptionError(f"unknown option '{name}' for target {self.name}"
                                  + (f" ({hint})" if hint.startswith("did") else "") + f"; its options: {known}")
            try:
                self.values[name] = option.parse(value)
            except ValueError as e:
                raise OptionError(f"option {name}={value!r} for target {self.name}: {e}") from None

    def flag(self, name: str) -> bool:
        return self.options.get(name, "false").lower() in ("1", "true", "yes", "on", "")

    def unsupported(self, mesh: Mesh) -> list[Diagnostic]:
        """E301 for every used feature this backend does not declare."""
        seen: set[tuple[str, Span]] = set()
        out = []
        for feature, span in features_used(mesh):
            if feature in self.CAPABILITIES or feature in NEUTRAL_FEATURES or (feature, span) in seen:
                continue
            seen.add((feature, span))
            desc = FEATURES.get(feature, feature)
            verb = "are" if desc.rstrip(")").split(" (")[0].endswith("s") else "is"
            out.append(Diagnostic(
                "E301", f"{desc} {verb} not supported when targeting {self.name}", span,
                label="not expressible on this target",
                help=f"remove it or choose another target (feature '{feature}'; see docs/capabilities.md)"))
        return out

    def lower(self, mesh: Mesh) -> Bundle:
        raise NotImplementedError
