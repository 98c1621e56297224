"""The native target's configuration schema: what `backends/native.py` writes and the proxy reads.

Two documents, both JSON, both validated by these pydantic models (unknown fields rejected):

- `mesh.json` (`MeshIndex`): every sidecar of the mesh, its config file and its listener ports;
- `<service>.json` (`SidecarConfig`): one sidecar. Inbound listeners (one per service port and
  application instance) terminate mTLS, normalize the path, authorize, rate-limit, inject
  faults and forward to the local application. Outbound listeners (one loopback port per
  callee port) apply the callee's route table and send to clusters with load balancing,
  retries, timeouts, circuit breaking, outlier detection and health checks.

The runtime reads ONLY these documents (never `.mesh` source nor `meshc.model`). Everything is
already flattened into an evaluable form: authorization rules are ordered deny-before-allow,
principals are SPIFFE ids, durations are milliseconds, percentages are floats 0..100 (weights
stay integer hundredths of a percent so splits add up exactly). Paths to certificates are
relative to the directory of the config file that names them.

`schema()` returns the JSON Schema checked into docs/native-config.schema.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import models_json_schema

SCHEMA_VERSION: Final = 1

Millis = int


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- wire-safe strings
# Every string the proxy writes into a request or response head is checked here, when the
# config loads, so that the request path never writes a byte it did not validate: a config
# written by hand or by another tool cannot split a header or a request line (CR/LF), end a
# C string (NUL) or smuggle a header through a name that is no token. The compiler refuses
# such values at the model boundary too; this is the proxy's own line of defence.

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 5.6.2 tchar
# RFC 9110 5.5 field-value: no CTL except HTAB (obs-text, bytes >= 0x80, stays allowed).
_FIELD_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]*")  # request-target, Host, Location pieces


def _header_name(v: str) -> str:
    if _TOKEN.fullmatch(v) is None:
        raise ValueError(f"header name {v!r} is not an RFC 9110 token (letters, digits and !#$%&'*+-.^_`|~)")
    return v


def _header_value(v: str) -> str:
    bad = _FIELD_BAD.search(v)
    if bad is not None:
        raise ValueError(f"header value {v!r} contains the control character {bad.group()!r} at {bad.start()} "
                         "(CR, LF, NUL and other control characters would split or end the header line)")
    return v


def _wire_ascii(v: str) -> str:
    """A path, host or identity written into a request line, Host or Location: visible ASCII
    only (non-ASCII must be percent-encoded or punycode; a space would end the request target)."""
    if _VISIBLE_ASCII.fullmatch(v) is None:
        bad = next(c for c in v if not 0x21 <= ord(c) <= 0x7E)
        raise ValueError(f"{v!r} contains {bad!r} at {v.index(bad)}: only visible ASCII characters can be "
                         "written into a request line or header (percent-encode paths, punycode hosts)")
    return v


HeaderName = Annotated[str, AfterValidator(_header_name)]
HeaderValue = Annotated[str, AfterValidator(_header_value)]
WireText = Annotated[str, AfterValidator(_wire_ascii)]


# --------------------------------------------------------------------------- matching


class PathMatchCfg(_Cfg):
    """`prefix` matches bytes (`/api` matches `/apix`); `under` matches whole segments."""

    kind: Literal["exact", "prefix", "under", "regex"]
    value: str


class StringMatchCfg(_Cfg):
    """A header (name lower-cased) or query-parameter condition; values are case-sensitive."""

    name: str
    kind: Literal["exact", "prefix", "regex", "present", "absent"]
    value: str = ""


class MatchCfg(_Cfg):
    """Every condition must hold (AND). A route's matches are OR-ed."""

    path: PathMatchCfg | None = None
    headers: tuple[StringMatchCfg, ...] = ()
    query: tuple[StringMatchCfg, ...] = ()
    methods: tuple[str, ...] = ()


# --------------------------------------------------------------------------- routes


class HeaderKV(_Cfg):
    name: HeaderName
    value: HeaderValue


class HeaderOpsCfg(_Cfg):
    set: tuple[HeaderKV, ...] = ()
    add: tuple[HeaderKV, ...] = ()
    remove: tuple[HeaderName, ...] = ()


class RetryCfg(_Cfg):
    """`num_retries` counts retries (N retries = N+1 attempts). Conditions as in Envoy's
    `retry_on`: `5xx` (any 5xx, reset, connect failure, per-try timeout), `gateway-error`
    (502/503/504, reset, connect failure, per-try timeout), `connect-failure`, `reset`
    (reset or per-try timeout), `retriable-4xx` (409), `refused-stream`, and `status_codes`."""

    num_retries: int = Field(ge=0)
    on: tuple[str, ...] = ("5xx", "connect-failure", "reset")
    status_codes: tuple[int, ...] = ()
    per_try_timeout_ms: Millis | None = None
    backoff_base_ms: Millis = 25
    backoff_max_ms: Millis = 250
    budget_percent: float | None = None  # max share of active requests that may be retries
    min_retry_concurrency: int = 3


class WeightedCluster(_Cfg):
    cluster: str
    weight: int = Field(ge=0, le=10_000)  # hundredths of a percent


class RewriteCfg(_Cfg):
    prefix: WireText | None = None  # replaces the matched path prefix
    path: WireText | None = None  # replaces the whole path
    host: WireText | None = None


class RedirectCfg(_Cfg):
    path: WireText | None = None
    host: WireText | None = None
    scheme: Literal["http", "https"] | None = None
    port: int | None = None
    code: int = 301


class DirectResponseCfg(_Cfg):
    status: int
    body: str = ""


class MirrorCfg(_Cfg):
    cluster: str
    percent: float = 100.0


class FaultCfg(_Cfg):
    """Delay and abort draw independently; empty `matches` applies to every request."""

    matches: tuple[MatchCfg, ...] = ()
    delay_ms: Millis | None = None
    delay_percent: float = 100.0
    abort_status: int | None = None
    abort_percent: float = 100.0


class RouteCfg(_Cfg):
    """One ordered rule: the first route whose matches hold wins; no matches = catch-all.
    Exactly one action: `clusters` (weighted), `redirect` or `respond`."""

    name: str
    matches: tuple[MatchCfg, ...] = ()
    clusters: tuple[WeightedCluster, ...] = ()
    redirect: RedirectCfg | None = None
    respond: DirectResponseCfg | None = None
    rewrite: RewriteCfg | None = None
    request_headers: HeaderOpsCfg | None = None
    response_headers: HeaderOpsCfg | None = None
    mirror: MirrorCfg | None = None
    # The whole request incl. retries. Required: `null` says "no timeout" explicitly, so no
    # config inherits a hidden default.
    timeout_ms: Millis | None
    retry: RetryCfg | None = None
    faults: tuple[FaultCfg, ...] = ()

    @model_validator(mode="after")
    def _one_action(self) -> RouteCfg:
        actions = [bool(self.clusters), self.redirect is not None, self.respond is not None]
        if sum(actions) != 1:
            raise ValueError(f"route {self.name!r} needs exactly one of clusters, redirect, respond")
        if self.clusters and sum(c.weight for c in self.clusters) != 10_000:
            raise ValueError(f"route {self.name!r}: cluster weights must add up to 10000")
        return self


# --------------------------------------------------------------------------- clusters


class EndpointCfg(_Cfg):
    host: WireText  # IP address or DNS name (re-resolved every `dns_refresh_ms`)
    port: int = Field(ge=1, le=65535)


class LbCfg(_Cfg):
    policy: Literal["round_robin", "least_request", "random", "consistent_hash"] = "round_robin"
    hash_on: Literal["header", "cookie", "source_ip", "query"] | None = None
    hash_key: str = ""


class CircuitBreakerCfg(_Cfg):
    """Envoy's thresholds; `null` is unlimited. A limit the mesh does not set is unlimited (as
    the Envoy target writes it), never Envoy's hidden defaults (1024 requests, 3 retries)."""

    max_connections: int | None = None
    max_pending: int | None = None
    max_requests: int | None = None
    max_retries: int | None = None


class OutlierCfg(_Cfg):
    consecutive_5xx: int = 5
    interval_ms: Millis = 10_000
    base_ejection_ms: Millis = 30_000
    max_ejection_percent: float = 10.0


class HealthCheckCfg(_Cfg):
    protocol: Literal["http", "tcp"] = "http"
    path: WireText = "/"
    interval_ms: Millis = 10_000
    timeout_ms: Millis = 1_000
    unhealthy_threshold: int = 3
    healthy_threshold: int = 2


class UpstreamTlsCfg(_Cfg):
    """`mtls`: present our certificate, verify the peer against the mesh CA and its SPIFFE id.
    `tls`: TLS origination to an external service, verified with the system trust store."""

    mode: Literal["mtls", "tls"]
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    expected_spiffe: tuple[str, ...] = ()
    sni: str | None = None


class ClusterCfg(_Cfg):
    name: str
    protocol: Literal["http", "tcp"] = "http"
    endpoints: tuple[EndpointCfg, ...] = ()
    # A JSON list of "host:port" strings; when the file exists it replaces `endpoints` and is
    # watched, so instances can be added or removed without recompiling.
    endpoints_file: str | None = None
    dns_refresh_ms: Millis = 5_000
    connect_timeout_ms: Millis = 5_000
    lb: LbCfg = LbCfg()
    circuit_breaker: CircuitBreakerCfg = CircuitBreakerCfg()
    outlier: OutlierCfg | None = None
    health_check: HealthCheckCfg | None = None
    tls: UpstreamTlsCfg | None = None
    host_header: WireText | None = None  # Host sent upstream (external services)


# --------------------------------------------------------------------------- authorization


class PrincipalCfg(_Cfg):
    """`any`: anyone; `authenticated`: any mTLS peer of the trust domain `value`;
    `unauthenticated`: plaintext peers only; `spiffe`: exactly the SPIFFE id `value`;
    `service_account`: a peer whose SPIFFE id names service account `value` (`name` in any
    namespace, or `namespace/name`).

    A peer identity counts only where mTLS proves it: on a TLS connection to a `strict` or
    `permissive` inbound listener, or for egress rules in the caller's own sidecar. Plaintext
    connections (permissive or `disabled` listeners) carry no identity: only `any` and
    `unauthenticated` can match them."""

    kind: Literal["any", "authenticated", "unauthenticated", "spiffe", "service_account"]
    value: str = ""


class AuthzRuleCfg(_Cfg):
    """Conditions are AND-ed; each list is OR-ed within itself, empty = no condition.
    On tcp listeners HTTP conditions (methods, paths, headers) cannot be evaluated: an allow
    rule carrying them never matches and a deny rule carrying them always does (fail closed)."""

    name: str  # where the rule was written (file:line:col), for logs
    action: Literal["allow", "deny"]
    principals: tuple[PrincipalCfg, ...]
    methods: tuple[str, ...] = ()
    paths: tuple[PathMatchCfg, ...] = ()
    not_paths: tuple[PathMatchCfg, ...] = ()
    ports: tuple[int, ...] = ()
    headers: tuple[StringMatchCfg, ...] = ()


class AuthzCfg(_Cfg):
    """Rules are evaluated in order and are sorted deny before allow: the first deny that
    matches refuses (403); otherwise an allow that matches admits; otherwise `default`."""

    default: Literal["allow", "deny"] = "deny"
    rules: tuple[AuthzRuleCfg, ...] = ()

    @model_validator(mode="after")
    def _deny_first(self) -> AuthzCfg:
        seen_allow = False
        for r in self.rules:
            if r.action == "allow":
                seen_allow = True
            elif seen_allow:
                raise ValueError("authorization rules must list every deny before any allow")
        return self


class RateLimitCfg(_Cfg):
    tokens_per_second: float = Field(gt=0)
    burst: int = Field(ge=1)


# --------------------------------------------------------------------------- listeners


class InboundTlsCfg(_Cfg):
    """`strict`: mTLS only; `permissive`: mTLS or plaintext on the same port; `disabled`."""

    mode: Literal["strict", "permissive", "disabled"]
    ca: str | None = None
    cert: str | None = None
    key: str | None = None


class InboundListenerCfg(_Cfg):
    name: str
    protocol: Literal["http", "tcp"] = "http"
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    service_port: int  # the port as declared in the mesh (what `ports` authz rules name)
    versions: tuple[str, ...] = ()
    app: EndpointCfg | None = None  # None: no real endpoint (`meshc up` starts a demo one)
    tls: InboundTlsCfg = InboundTlsCfg(mode="disabled")
    authz: AuthzCfg = AuthzCfg()
    path_normalization: Literal["strict", "off"] = "strict"
    rate_limit: RateLimitCfg | None = None
    faults: tuple[FaultCfg, ...] = ()
    timeout_ms: Millis | None = None  # to the local app; None: no timeout
    # The callers' active health-check path: a GET of exactly this path marked by the probing
    # sidecar (`x-meshc-health-check`) from a proven mesh peer skips authorization, rate limit
    # and faults, as health checks on the Envoy target never pass the callee's RBAC.
    health_check_path: str | None = None
    # Requests whose body is larger get 413 (`max_request_body`); None: the sidecar's
    # limits.max_request_body_bytes. Per listener, so the sidecar's own calls are not capped.
    max_request_body_bytes: int | None = Field(default=None, ge=0)


class OutboundListenerCfg(_Cfg):
    name: str
    protocol: Literal["http", "tcp"] = "http"
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    callee: WireText  # also the Host of a request that has none
    callee_port: int
    path_normalization: Literal["strict", "off"] = "strict"
    routes: tuple[RouteCfg, ...] = ()  # http: no route matches -> 404
    cluster: str | None = None  # tcp: where bytes go
    # Egress authorization (external callees): evaluated in the caller's sidecar with the
    # caller's own identity as the (proven) principal.
    authz: AuthzCfg | None = None


class ObservabilityCfg(_Cfg):
    access_log: Literal["json", "text", "off"] = "json"
    access_log_path: str = "-"  # "-": stdout
    metrics: bool = True
    trace_sampling_percent: float = 1.0


class LimitsCfg(_Cfg):
    max_request_header_bytes: int = 65_536
    max_request_body_bytes: int = 0  # 0: unlimited (bodies stream in constant memory)
    max_response_header_bytes: int = 65_536
    header_timeout_ms: Millis = 10_000  # first byte of a request (or a new connection) to its last header
    idle_timeout_ms: Millis = 60_000  # keep-alive connection with no request
    drain_timeout_ms: Millis = 15_000
    # Request bodies up to this size are kept for retries and mirroring (Envoy's buffer limit).
    retry_buffer_bytes: int = 1_048_576
    upstream_idle_timeout_ms: Millis = 30_000


class AdminCfg(_Cfg):
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)


class SidecarConfig(_Cfg):
    schema_version: Literal[1] = 1
    mesh: str
    service: WireText  # also the Host of an inbound request that has none
    identity: WireText  # our SPIFFE id (x-forwarded-client-cert names it)
    admin: AdminCfg = AdminCfg()
    inbound: tuple[InboundListenerCfg, ...] = ()
    outbound: tuple[OutboundListenerCfg, ...] = ()
    clusters: tuple[ClusterCfg, ...] = ()
    observability: ObservabilityCfg = ObservabilityCfg()
    limits: LimitsCfg = LimitsCfg()

    @model_validator(mode="after")
    def _references(self) -> SidecarConfig:
        names = [c.name for c in self.clusters]
        if len(set(names)) != len(names):
            raise ValueError("duplicate cluster names")
        known = set(names)
        for lst in self.outbound:
            refs = [w.cluster for r in lst.routes for w in r.clusters]
            refs += [r.mirror.cluster for r in lst.routes if r.mirror]
            if lst.cluster:
                refs.append(lst.cluster)
            for ref in refs:
                if ref not in known:
                    raise ValueError(f"listener {lst.name!r} names unknown cluster {ref!r}")
            if lst.protocol == "tcp" and not lst.cluster:
                raise ValueError(f"tcp listener {lst.name!r} needs a cluster")
        listeners: list[InboundListenerCfg | OutboundListenerCfg] = [*self.inbound, *self.outbound]
        ports = [x.port for x in listeners if x.port]
        if len(set(ports)) != len(ports):
            raise ValueError("two listeners share a port")
        return self

    def cluster(self, name: str) -> ClusterCfg:
        return next(c for c in self.clusters if c.name == name)


# --------------------------------------------------------------------------- the mesh index


class IndexListener(_Cfg):
    name: str
    port: int
    protocol: Literal["http", "tcp"] = "http"
    service_port: int | None = None  # inbound: the declared service port
    callee: str | None = None  # outbound: the service it reaches
    versions: tuple[WireText, ...] = ()  # the demo application writes them into a header
    app: EndpointCfg | None = None


class IndexEntry(_Cfg):
    service: WireText  # the demo application writes it into a header
    config: str  # file name, relative to mesh.json
    identity: str
    admin_port: int
    inbound: tuple[IndexListener, ...] = ()
    outbound: tuple[IndexListener, ...] = ()


class MeshIndex(_Cfg):
    schema_version: Literal[1] = 1
    mesh: str
    base_port: int
    certs_dir: str | None = None  # relative to mesh.json; None when nothing uses TLS
    sidecars: tuple[IndexEntry, ...] = ()


# --------------------------------------------------------------------------- helpers


class ConfigError(Exception):
    """A config file that cannot be read or does not validate (the message says why)."""


def load_sidecar(path: Path) -> SidecarConfig:
    return _load(path, SidecarConfig)


def load_index(path: Path) -> MeshIndex:
    return _load(path, MeshIndex)


def _load(path: Path, model: type[Any]) -> Any:
    from pydantic import ValidationError

    try:
        data = json.loads(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = [f"{path}: invalid {model.__name__}:"]
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "<root>"
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


def schema() -> dict[str, Any]:
    """The JSON Schema of both documents (checked into docs/native-config.schema.json)."""
    _, top = models_json_schema([(MeshIndex, "validation"), (SidecarConfig, "validation")],
                                title="meshc native target configuration")
    top["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    top["oneOf"] = [{"$ref": "#/$defs/MeshIndex"}, {"$ref": "#/$defs/SidecarConfig"}]
    return top


def schema_text() -> str:
    return json.dumps(schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # python -m meshc.runtime.config > docs/native-config.schema.json
    print(schema_text(), end="")
