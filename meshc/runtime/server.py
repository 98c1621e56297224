"""A running sidecar: its listeners, clusters, admin port, hot reload and graceful drain.

- `HttpListener`/`TcpListener` hold one config version of a listener, compiled (routes,
  authorization, faults, rate limit). A `Slot` per bound port points at the current one; each
  request takes the version current when its headers arrive, so a reload never changes (or
  fails) a request in flight.
- `Sidecar.reload()` reads the config file again: a config that does not validate, or whose
  certificates cannot be loaded, is reported and the old one keeps serving. Clusters whose
  config did not change are kept with their pools, health and outlier state.
- `Sidecar.drain()` stops accepting, lets requests in flight finish (responses then say
  `connection: close`), and closes what is left after `drain_timeout_ms`.
- The admin port serves `/metrics` (Prometheus text), `/ready`, `/config` and `/clusters`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import ssl
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import httptools
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from meshc.paths import normalize
from meshc.runtime import config as C
from meshc.runtime import tls
from meshc.runtime.cluster import Cluster
from meshc.runtime.http import Downstream, Stream, connection_tokens, mirror, new_request_id, proxy
from meshc.runtime.match import (
    Authorizer,
    CompiledMatch,
    RequestView,
    any_match,
    split_target,
)
from meshc.runtime.observability import AccessLog, Metrics, json_string, millis, now_iso, traceparent
from meshc.runtime.tcp import TcpDownstream

log = logging.getLogger("meshc.proxy")


# =========================================================================== compiled pieces


class HeaderOps:
    def __init__(self, cfg: C.HeaderOpsCfg):
        self.set = [(h.name.lower().encode(), h.value.encode()) for h in cfg.set]
        self.add = [(h.name.lower().encode(), h.value.encode()) for h in cfg.add]
        self.drop = frozenset(n.lower().encode() for n in cfg.remove) | frozenset(n for n, _ in self.set)

    def apply_request(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        out = [(n, v) for n, v in headers if n not in self.drop]
        return out + self.set + self.add

    def apply_response(self, lines: list[bytes]) -> list[bytes]:
        out = [ln for ln in lines if ln.split(b":", 1)[0] not in self.drop]
        return out + [b"%s: %s\r\n" % (n, v) for n, v in self.set + self.add]


class Fault:
    def __init__(self, cfg: C.FaultCfg):
        self.cfg = cfg
        self.match = any_match([CompiledMatch(m) for m in cfg.matches])

    async def apply(self, view: RequestView) -> int:
        """Delay, then maybe abort (independent draws). Returns the abort status or 0."""
        c = self.cfg
        if not self.match(view):
            return 0
        if c.delay_ms is not None and random.random() * 100 < c.delay_percent:
            await asyncio.sleep(c.delay_ms / 1000)
        if c.abort_status is not None and random.random() * 100 < c.abort_percent:
            return c.abort_status
        return 0


class TokenBucket:
    def __init__(self, cfg: C.RateLimitCfg):
        self.rate = cfg.tokens_per_second
        self.burst = float(cfg.burst)
        self.tokens = self.burst
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Route:
    def __init__(self, cfg: C.RouteCfg, clusters: dict[str, Cluster]):
        self.cfg = cfg
        self.name = cfg.name
        self.match = any_match([CompiledMatch(m) for m in cfg.matches])
        self.path_matches = [m.path for m in cfg.matches]
        self.faults = [Fault(f) for f in cfg.faults]
        self.req_ops = HeaderOps(cfg.request_headers) if cfg.request_headers else None
        self.resp_ops = HeaderOps(cfg.response_headers) if cfg.response_headers else None
        self.targets = [(clusters[w.cluster], w.weight) for w in cfg.clusters if w.weight > 0]
        self.mirror = clusters[cfg.mirror.cluster] if cfg.mirror else None

    def pick(self) -> Cluster:
        if len(self.targets) == 1:
            return self.targets[0][0]
        r = random.randrange(10_000)
        for cluster, w in self.targets:
            r -= w
            if r < 0:
                return cluster
        return self.targets[-1][0]


def _rewrite_path(route: Route, view: RequestView) -> str:
    rw = route.cfg.rewrite
    path = view.path
    if rw is None:
        return path
    if rw.path is not None:
        return rw.path
    if rw.prefix is None:
        return path
    for pm in route.path_matches:
        if pm is None:
            continue
        if pm.kind == "exact" and path == pm.value:
            return rw.prefix
        if pm.kind in ("prefix", "under"):
            base = pm.value if pm.kind == "prefix" else pm.value.rstrip("/")
            if path.startswith(base):
                rest = path[len(base):]
                if rw.prefix.endswith("/") and rest.startswith("/"):
                    rest = rest[1:]
                out = rw.prefix + rest
                return out if out.startswith("/") else "/" + out
    return path


def _hash_value(lb: C.LbCfg, stream: Stream, view: RequestView) -> str | None:
    if lb.policy != "consistent_hash":
        return None
    if lb.hash_on == "header":
        return view.headers.get(lb.hash_key.lower())
    if lb.hash_on == "source_ip":
        return stream.conn.client_ip
    if lb.hash_on == "query":
        return view.query.get(lb.hash_key)
    if lb.hash_on == "cookie":
        for part in view.headers.get("cookie", "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == lb.hash_key:
                return v
    return None


# =========================================================================== listeners


class Slot:
    """A bound port; `runtime` is the listener config currently in force on it."""

    def __init__(self, sidecar: Sidecar, runtime: Any, key: tuple[Any, ...]):
        self.sidecar = sidecar
        self.runtime = runtime
        self.key = key
        self.server: Any = None
        self.ctx: ssl.SSLContext | None = None
        self.sock: socket.socket | None = None
        self.accept_task: asyncio.Task[Any] | None = None

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.accept_task is not None:
            self.accept_task.cancel()
        if self.sock is not None:
            self.sock.close()


def _declared_body_too_large(s: Stream) -> bool:
    """Answer 413 to a request whose Content-Length is over the body limit before the
    application sees any of it, where Envoy's buffer filter answers (after authorization,
    rate limit and faults). A chunked body is cut when it passes the limit (Stream.feed_body)."""
    limit = s.listener.limits.max_request_body_bytes
    if not limit or s.content_length <= limit:
        return False
    s.close_after = True
    s.respond(413, b"request body too large")
    return True


class HttpListener:
    def __init__(self, sidecar: Sidecar, cfg: C.InboundListenerCfg | C.OutboundListenerCfg,
                 clusters: dict[str, Cluster], app_override: tuple[str, int] | None):
        self.sidecar = sidecar
        self.cfg = cfg
        self.name = cfg.name
        self.limits = sidecar.cfg.limits
        if isinstance(cfg, C.InboundListenerCfg) and cfg.max_request_body_bytes is not None:
            self.limits = self.limits.model_copy(update={"max_request_body_bytes": cfg.max_request_body_bytes})
        self.inbound = isinstance(cfg, C.InboundListenerCfg)
        self.strict_paths = cfg.path_normalization == "strict"
        m = sidecar.metrics
        self.conn_gauge = m.child(m.downstream, sidecar.name, cfg.name)
        self.record_metrics = sidecar.cfg.observability.metrics
        self.sampling = sidecar.cfg.observability.trace_sampling_percent
        self.app: Cluster | None = None
        self.authz: Authorizer | None = None
        self.routes: list[Route] = []
        self._authz_routes: dict[str, str] = {}  # rule name -> "authz:<rule>" (route label, built once)
        self._xfcc: dict[str, bytes] = {}  # peer identity -> x-forwarded-client-cert value
        self._xfcc_identity = ""  # the sidecar identity those values name
        self._log_prefix = ""  # the constant part of this listener's JSON access-log lines
        self._log_prefix_of: AccessLog | None = None
        if isinstance(cfg, C.InboundListenerCfg):
            self.authz = Authorizer(cfg.authz)
            self.bucket = TokenBucket(cfg.rate_limit) if cfg.rate_limit else None
            self.faults = [Fault(f) for f in cfg.faults]
            app = cfg.app or (C.EndpointCfg(host=app_override[0], port=app_override[1]) if app_override else None)
            self.app = Cluster(C.ClusterCfg(name=f"{cfg.name}|app", endpoints=(app,) if app else ()),
                               sidecar.base, m, sidecar.name, self.limits.upstream_idle_timeout_ms)
        else:
            self.authz = Authorizer(cfg.authz) if cfg.authz is not None else None
            self.routes = [Route(r, clusters) for r in cfg.routes]

    def clusters(self) -> list[Cluster]:
        return [self.app] if self.app is not None else []

    # ------------------------------------------------------------------ requests

    def handle(self, s: Stream) -> Awaitable[None] | None:
        """Answer locally (returns None) or return the coroutine that proxies the request: no
        coroutine frame of its own, and none for the listener's path unless a fault matches
        (the common case pays for one coroutine per request, `proxy`)."""
        parts = split_target(s.url)
        if parts is None:
            s.close_after = True
            s.respond(400, b"invalid request target (not origin-form or absolute-form, or a fragment)")
            return None
        path, query = parts
        if self.strict_paths:
            norm = normalize(path)
            if norm is None:
                s.close_after = True
                s.respond(400, b"invalid path (encoded slash, backslash or NUL, or a malformed escape)")
                return None
            path = norm
        view = RequestView(s.method, path, query, s.hdict)
        if self.inbound:
            return self._inbound(s, view)
        return self._outbound(s, view)

    def _head(self, s: Stream, path: str, query: str, host: bytes | None, ops: HeaderOps | None,
              xfcc: bytes | None) -> bytes:
        """The request head sent upstream: the proxy's own headers first, then the client's
        (without hop-by-hop ones and those the proxy sets), as pieces joined once."""
        hdict = s.hdict
        tp, s.trace_id = traceparent(hdict.get("traceparent"), self.sampling)
        if host is None:
            host = hdict.get("host", self.cfg.callee if isinstance(self.cfg, C.OutboundListenerCfg)
                             else self.sidecar.name).encode("latin-1")
        target = path + "?" + query if query else path
        parts = [s.method.encode(), b" ", target.encode("latin-1"), b" HTTP/1.1\r\nhost: ", host,
                 b"\r\ntraceparent: ", tp.encode(), b"\r\n"]
        if "x-request-id" not in hdict:
            rid = new_request_id()
            s.request_id = rid.decode()
            parts += (b"x-request-id: ", rid, b"\r\n")
        if "x-forwarded-proto" not in hdict:
            parts.append(b"x-forwarded-proto: http\r\n")
        if xfcc:
            parts += (b"x-forwarded-client-cert: ", xfcc, b"\r\n")
        if s.chunked_in:
            parts.append(b"transfer-encoding: chunked\r\n")
        mark = len(parts)
        named: frozenset[bytes] = frozenset()
        if ops is None:
            for n, v in s.headers:
                if n in _DROP_UPSTREAM or n.startswith(b"x-meshc-"):
                    # x-meshc-* headers are the mesh's own: an application cannot set them.
                    if n == b"connection":  # several Connection headers: all of them count
                        named = named | connection_tokens(v)
                    continue
                parts += (n, b": ", v, b"\r\n")
        if ops is not None or named:
            del parts[mark:]
            for n, v in _forwarded_headers(s.headers, ops):
                parts += (n, b": ", v, b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def _inbound(self, s: Stream, view: RequestView) -> Awaitable[None] | None:
        cfg = self.cfg
        assert isinstance(cfg, C.InboundListenerCfg) and self.authz is not None and self.app is not None
        peer = s.conn.peer  # proven per connection: None on plaintext ones (permissive, disabled)
        if (peer is not None and view.path == cfg.health_check_path and s.method == "GET"
                and "x-meshc-health-check" in s.hdict):
            s.route_name = "health-check"
            head = self._head(s, view.path, view.raw_query, None, None, None)
            return proxy(s, self.app, head, None, cfg.timeout_ms, [], None, None)
        allowed, rule = self.authz.decide(peer, cfg.service_port, view)
        route_name = self._authz_routes.get(rule)
        if route_name is None:
            route_name = self._authz_routes[rule] = "authz:" + rule
        s.route_name = route_name
        if not allowed:
            m = self.sidecar.metrics
            m.child(m.authz_denied, self.sidecar.name, self.name, rule).inc()
            s.respond(403, b"RBAC: access denied")
            return None
        if self.bucket is not None and not self.bucket.take():
            m = self.sidecar.metrics
            m.child(m.ratelimited, self.sidecar.name, self.name).inc()
            s.respond(429, b"local_rate_limited", [(b"x-ratelimit-limit", str(int(self.bucket.burst)).encode())])
            return None
        for f in self.faults:
            if f.match(view):  # a fault that may delay or abort: a coroutine of its own
                return self._inbound_faulted(s, view, peer)
        if _declared_body_too_large(s):
            return None
        return self._inbound_forward(s, view, peer)

    async def _inbound_faulted(self, s: Stream, view: RequestView, peer: str | None) -> None:
        for f in self.faults:
            status = await f.apply(view)
            if status:
                s.respond(status, b"fault filter abort")
                return
        if _declared_body_too_large(s):
            return
        await self._inbound_forward(s, view, peer)

    def _inbound_forward(self, s: Stream, view: RequestView, peer: str | None) -> Awaitable[None]:
        assert isinstance(self.cfg, C.InboundListenerCfg) and self.app is not None
        xfcc = None
        if peer:
            identity = self.sidecar.cfg.identity  # read per request, as before: a reload may change it
            if identity != self._xfcc_identity:
                self._xfcc.clear()
                self._xfcc_identity = identity
            xfcc = self._xfcc.get(peer)
            if xfcc is None:
                if len(self._xfcc) >= 1024:
                    self._xfcc.clear()
                xfcc = self._xfcc[peer] = f"By={identity};URI={peer}".encode()
        head = self._head(s, view.path, view.raw_query, None, None, xfcc)
        return proxy(s, self.app, head, None, self.cfg.timeout_ms, [], None, None)

    def _outbound(self, s: Stream, view: RequestView) -> Awaitable[None] | None:
        """Like `_inbound`: answers locally or returns the proxy coroutine; a coroutine of its
        own only when a fault of the route matches (it may have to wait)."""
        cfg = self.cfg
        assert isinstance(cfg, C.OutboundListenerCfg)
        if self.authz is not None:
            allowed, rule = self.authz.decide(self.sidecar.cfg.identity, cfg.callee_port, view)
            if not allowed:
                s.route_name = f"authz:{rule}"
                s.respond(403, b"RBAC: access denied")
                return None
        route = next((r for r in self.routes if r.match(view)), None)
        if route is None:
            s.respond(404, b"route not found")
            return None
        s.route_name = route.name
        for f in route.faults:
            if f.match(view):
                return self._outbound_faulted(s, view, route)
        return self._outbound_forward(s, view, route)

    async def _outbound_faulted(self, s: Stream, view: RequestView, route: Route) -> None:
        for f in route.faults:
            status = await f.apply(view)
            if status:
                s.respond(status, b"fault filter abort")
                return
        pending = self._outbound_forward(s, view, route)
        if pending is not None:
            await pending

    def _outbound_forward(self, s: Stream, view: RequestView, route: Route) -> Awaitable[None] | None:
        rc = route.cfg
        if rc.redirect is not None:
            s.respond(rc.redirect.code, b"", [(b"location", _location(rc.redirect, s, view).encode("latin-1"))],
                      route.resp_ops)
            return None
        if rc.respond is not None:
            s.respond(rc.respond.status, rc.respond.body.encode(), None, route.resp_ops)
            return None
        cluster = route.pick()
        path = _rewrite_path(route, view)
        host = None
        if rc.rewrite is not None and rc.rewrite.host is not None:
            host = rc.rewrite.host.encode()
        elif cluster.cfg.host_header:
            host = cluster.cfg.host_header.encode()
        head = self._head(s, path, view.raw_query, host, route.req_ops, None)
        if route.mirror is not None and random.random() * 100 < rc.mirror.percent:  # type: ignore[union-attr]
            self._mirror(s, route.mirror, head, host)
        return proxy(s, cluster, head, rc.retry, rc.timeout_ms, [], route.resp_ops,
                     _hash_value(cluster.cfg.lb, s, view))

    def _mirror(self, s: Stream, cluster: Cluster, head: bytes, host: bytes | None) -> None:
        """Shadow a copy when its body is already complete and small (Envoy: `-shadow` host)."""
        if s.has_body and (not s.body_done or s.replay is None):
            return
        h = host or s.hdict.get("host", "mirror").encode("latin-1")
        head = head.replace(b"\r\nhost: " + h + b"\r\n", b"\r\nhost: " + h + b"-shadow\r\n", 1)
        body = b"".join(s.replay or ())
        if s.chunked_in:
            body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
        task = s.conn.loop.create_task(mirror(cluster, head, body))
        self.sidecar.background.add(task)
        task.add_done_callback(self.sidecar.background.discard)

    # ------------------------------------------------------------------ records

    def record(self, s: Stream) -> None:
        dur = time.monotonic() - s.start_time
        sc = self.sidecar
        if self.record_metrics:
            sc.metrics.stats.observe(sc.name, self.name, s.route_name, s.cluster_name, s.resp_status, dur)
        log = sc.access_log
        if log.out is None:
            return
        protocol = "HTTP/1.1" if s.http11 else "HTTP/1.0"
        request_id = s.request_id  # ours (hex and dashes), else the client's header
        if log.fmt != "json":
            log.log_http(sc.name, self.name, s.method, s.url, protocol, s.resp_status, round(dur * 1000, 3),
                         s.bytes_in, s.bytes_out, s.route_name, s.cluster_name, s.upstream_label,
                         s.conn.peer or "-", s.conn.client_ip, s.trace_id, request_id or s.hdict.get("x-request-id", "-"))
            return
        if self._log_prefix_of is not log:
            self._log_prefix = log.json_prefix(sc.name, self.name)
            self._log_prefix_of = log
        conn = s.conn
        log.log_json_line(self._log_prefix, s.method, s.url, protocol, s.resp_status, millis(dur),
                          s.bytes_in, s.bytes_out,
                          log.json_tail(s.route_name, s.cluster_name, s.upstream_label, conn.peer or "-",
                                        conn.client_ip),
                          s.trace_id,
                          f'"{request_id}"' if request_id else json_string(s.hdict.get("x-request-id", "-")))


_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                  b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization"})
# Request headers never forwarded as received: hop-by-hop ones, and those the proxy sets itself.
_DROP_UPSTREAM = _HOP | {b"host", b"traceparent", b"x-forwarded-client-cert", b"expect"}




def _forwarded_headers(headers: list[tuple[bytes, bytes]], ops: HeaderOps | None) -> list[tuple[bytes, bytes]]:
    """The client's headers sent upstream, the general case of `HttpListener._head`: without
    hop-by-hop ones, those the proxy sets, those any Connection header names; then the
    route's request header ops."""
    out = []
    named: frozenset[bytes] = frozenset()
    for n, v in headers:
        if n in _DROP_UPSTREAM or n.startswith(b"x-meshc-"):
            if n == b"connection":
                named = named | connection_tokens(v)
            continue
        out.append((n, v))
    if named:
        out = [(n, v) for n, v in out if n not in named]
    return ops.apply_request(out) if ops is not None else out


def _location(r: C.RedirectCfg, s: Stream, view: RequestView) -> str:
    host = r.host or s.hdict.get("host", "").split(":")[0]
    scheme = r.scheme or "http"
    port = f":{r.port}" if r.port else (
        ":" + s.hdict["host"].split(":")[1] if not r.host and not r.scheme and ":" in s.hdict.get("host", "") else "")
    path = r.path if r.path is not None else view.path
    query = "?" + view.raw_query if view.raw_query and r.path is None else ""
    return f"{scheme}://{host}{port}{path}{query}"


class TcpListener:
    def __init__(self, sidecar: Sidecar, cfg: C.InboundListenerCfg | C.OutboundListenerCfg,
                 clusters: dict[str, Cluster], app_override: tuple[str, int] | None):
        self.sidecar = sidecar
        self.cfg = cfg
        self.name = cfg.name
        self.app: Cluster | None = None
        self.authz: Authorizer | None = None
        self.port = 0
        if isinstance(cfg, C.InboundListenerCfg):
            self.authz = Authorizer(cfg.authz)
            self.port = cfg.service_port
            app = cfg.app or (C.EndpointCfg(host=app_override[0], port=app_override[1]) if app_override else None)
            self.app = Cluster(C.ClusterCfg(name=f"{cfg.name}|app", protocol="tcp", endpoints=(app,) if app else ()),
                               sidecar.base, sidecar.metrics, sidecar.name)
            self.cluster = self.app
        else:
            if cfg.authz is not None:
                self.authz = Authorizer(cfg.authz)
                self.port = cfg.callee_port
            assert cfg.cluster is not None
            self.cluster = clusters[cfg.cluster]

    def clusters(self) -> list[Cluster]:
        return [self.app] if self.app is not None else []

    def authorize(self, peer: str | None) -> bool:
        if self.authz is None:
            return True
        if isinstance(self.cfg, C.OutboundListenerCfg):
            peer = self.sidecar.cfg.identity
        ok, rule = self.authz.decide(peer, self.port, None)
        if not ok:
            m = self.sidecar.metrics
            m.child(m.authz_denied, self.sidecar.name, self.name, rule).inc()
        return ok

    def record(self, c: TcpDownstream) -> None:
        sc = self.sidecar
        status = c.status or 200
        if sc.cfg.observability.metrics:
            sc.metrics.observe_request(sc.name, self.name, "tcp", self.cluster.name, status,
                                       time.monotonic() - c.start)
        if sc.access_log.out is not None:
            sc.access_log.log({
                "start": now_iso(), "sidecar": sc.name, "listener": self.name, "method": "TCP", "path": "-",
                "protocol": "TCP", "status": status, "duration_ms": round((time.monotonic() - c.start) * 1000, 3),
                "bytes_received": c.bytes_in, "bytes_sent": c.bytes_out, "route": "tcp",
                "cluster": self.cluster.name, "upstream": c.upstream_label, "peer": "-", "client": "-",
                "trace_id": "", "request_id": "-"})


# =========================================================================== the sidecar


def _peer_identity(transport: asyncio.BaseTransport) -> str | None:
    return tls.peer_spiffe(transport.get_extra_info("ssl_object"))


class Sidecar:
    def __init__(self, cfg: C.SidecarConfig, path: Path | None = None, base: Path | None = None,
                 app_overrides: dict[str, tuple[str, int]] | None = None, admin_port: int | None = None):
        self.cfg = cfg
        self.path = path
        self.base = base or (path.parent if path else Path.cwd())
        self.name = cfg.service
        self.app_overrides = app_overrides or {}
        self.admin_port_override = admin_port
        self.metrics = Metrics()
        self.metrics.breakers.source = lambda: [(self.name, c) for _, c in sorted(self.clusters.items())]
        self.access_log = AccessLog(cfg.observability.access_log, self._log_path(cfg))
        self.connections: set[Any] = set()
        self.background: set[asyncio.Task[Any]] = set()
        self.slots: dict[tuple[Any, ...], Slot] = {}
        self.clusters: dict[str, Cluster] = {}
        self.listeners: list[Any] = []
        self.draining = False
        self.admin_server: asyncio.AbstractServer | None = None
        self.admin_address: tuple[str, int] | None = None
        self._mtime: tuple[int, int] | None = None
        self._watch: asyncio.Task[Any] | None = None

    def _log_path(self, cfg: C.SidecarConfig) -> str:
        p = cfg.observability.access_log_path
        return p if p == "-" or Path(p).is_absolute() else str(self.base / p)

    # ------------------------------------------------------------------ start / reload

    async def start(self) -> None:
        await self._apply(self.cfg, first=True)
        await self._start_admin()
        self._timers = asyncio.get_running_loop().create_task(self._timer_loop())
        if self.path is not None:
            self._mtime = self._stat()
            self._watch = asyncio.get_running_loop().create_task(self._watch_loop())

    def ports(self) -> dict[str, int]:
        """Listener name -> bound port (useful when the config asks for port 0)."""
        out = {}
        for slot in self.slots.values():
            server: Any = slot.server  # its .sockets is a list on uvloop (see _start_admin)
            sock = slot.sock or (server.sockets[0] if server and server.sockets else None)
            if sock is not None:
                out[slot.runtime.name] = sock.getsockname()[1]
        return out

    async def _apply(self, cfg: C.SidecarConfig, first: bool = False) -> None:
        """Build everything for `cfg`; on any failure nothing of the old state has changed."""
        old_clusters = self.clusters
        new_clusters: dict[str, Cluster] = {}
        created: list[Cluster] = []
        prev_cfg = self.cfg
        self.cfg = cfg
        try:
            for cc in cfg.clusters:
                old = old_clusters.get(cc.name)
                if old is not None and old.cfg == cc and not first:
                    old.reload_tls()  # certificate rotation without a config change
                    new_clusters[cc.name] = old
                else:
                    c = Cluster(cc, self.base, self.metrics, self.name, cfg.limits.upstream_idle_timeout_ms,
                                cfg.limits.max_response_header_bytes)
                    created.append(c)
                    new_clusters[cc.name] = c
            listeners: list[HttpListener | TcpListener] = []
            all_cfgs: list[C.InboundListenerCfg | C.OutboundListenerCfg] = [*cfg.inbound, *cfg.outbound]
            for lc in all_cfgs:
                kind: type[HttpListener] | type[TcpListener] = HttpListener if lc.protocol == "http" else TcpListener
                lst = kind(self, lc, new_clusters, self.app_overrides.get(lc.name))
                created += lst.clusters()
                listeners.append(lst)
            contexts = {lst.name: self._server_ssl(lst.cfg) for lst in listeners}
            for c in created:
                await c.start()
        except (OSError, ssl.SSLError, ValueError, KeyError) as build_error:
            self.cfg = prev_cfg
            for c in created:
                c.close()
            raise C.ConfigError(f"{self.name}: cannot apply config: {build_error}") from build_error
        # Commit: bind new ports, swap the rest, close what is gone.
        wanted: dict[tuple[Any, ...], Any] = {}
        for lst in listeners:
            lc = lst.cfg
            tls_key = (lc.tls.mode, lc.tls.ca, lc.tls.cert, lc.tls.key) if isinstance(lc, C.InboundListenerCfg) \
                else None
            key = (lc.host, lc.port, lc.protocol, tls_key)
            wanted[key] = lst
        for key, slot in list(self.slots.items()):
            if key not in wanted:
                slot.close()
                del self.slots[key]
        try:
            for key, lst in wanted.items():
                found = self.slots.get(key)
                if found is not None and key[1] != 0:
                    slot = found
                    slot.runtime = lst
                    if slot.ctx is not None and not first:
                        # Same files, maybe new contents (certificate rotation): new handshakes
                        # use them; the bound socket and its connections stay.
                        lc = lst.cfg
                        slot.ctx.load_cert_chain(tls._resolve(self.base, lc.tls.cert), tls._resolve(self.base, lc.tls.key))
                        slot.ctx.load_verify_locations(tls._resolve(self.base, lc.tls.ca))
                    continue
                slot = Slot(self, lst, key)
                slot.ctx = contexts[lst.name]
                await self._bind(slot, contexts[lst.name])
                self.slots[key] = slot
        except OSError as e:
            raise C.ConfigError(f"{self.name}: cannot bind listener: {e}") from e
        finally:
            self.listeners = listeners
            self.clusters = new_clusters
            keep = set(map(id, new_clusters.values())) | {id(c) for lst in listeners for c in lst.clusters()}
            for c in old_clusters.values():
                if id(c) not in keep:
                    c.close()
            for old_lst in getattr(self, "_old_listeners", []):
                for c in old_lst.clusters():
                    if id(c) not in keep:
                        c.close()
            self._old_listeners = listeners

    def _server_ssl(self, lc: Any) -> ssl.SSLContext | None:
        if not isinstance(lc, C.InboundListenerCfg) or lc.tls.mode == "disabled":
            return None
        return tls.server_context(self.base, lc.tls.ca, lc.tls.cert, lc.tls.key,
                                  require_client_cert=lc.tls.mode == "strict")

    async def _bind(self, slot: Slot, ctx: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        lc = slot.runtime.cfg
        proto_cls = Downstream if lc.protocol == "http" else TcpDownstream
        ident = _peer_identity if ctx is not None else None
        timeout = self.cfg.limits.header_timeout_ms / 1000
        if isinstance(lc, C.InboundListenerCfg) and lc.tls.mode == "permissive":
            # TLS or plaintext on one port: peek at the first byte of each connection.
            sock = socket.socket(socket.AF_INET6 if ":" in lc.host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((lc.host, lc.port))
            sock.listen(1024)
            sock.setblocking(False)
            slot.sock = sock
            slot.accept_task = loop.create_task(self._accept_sniffing(slot, sock, ctx, proto_cls, timeout))
            return
        slot.server = await loop.create_server(
            lambda: proto_cls(slot, ident), lc.host, lc.port, ssl=ctx, reuse_address=True, backlog=1024,
            ssl_handshake_timeout=timeout if ctx else None)

    async def _accept_sniffing(self, slot: Slot, sock: socket.socket, ctx: ssl.SSLContext | None,
                               proto_cls: Any, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(sock)
            task = loop.create_task(self._sniff(slot, conn, ctx, proto_cls, timeout))
            self.background.add(task)
            task.add_done_callback(self.background.discard)

    async def _sniff(self, slot: Slot, conn: socket.socket, ctx: ssl.SSLContext | None, proto_cls: Any,
                     timeout: float) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        readable = loop.create_future()
        loop.add_reader(conn.fileno(), _set_once, readable)
        try:
            await asyncio.wait_for(readable, timeout)
            first = conn.recv(1, socket.MSG_PEEK)
        except (TimeoutError, OSError):
            conn.close()
            return
        finally:
            loop.remove_reader(conn.fileno())
        if not first:
            conn.close()
            return
        is_tls = first == b"\x16" and ctx is not None
        try:
            await loop.connect_accepted_socket(
                lambda: proto_cls(slot, _peer_identity if is_tls else None), conn,
                ssl=ctx if is_tls else None, ssl_handshake_timeout=timeout if is_tls else None)
        except (OSError, ssl.SSLError, TimeoutError):
            conn.close()

    async def reload(self) -> bool:
        """Re-read the config file. A bad config is logged and the old one keeps serving."""
        if self.path is None:
            return False
        try:
            cfg = C.load_sidecar(self.path)
            await self._apply(cfg)
        except (C.ConfigError, OSError, ssl.SSLError, ValueError) as e:
            log.error("%s\nmeshc proxy: keeping the previous config of %s", e, self.name)
            self.metrics.child(self.metrics.reloads, self.name, "failure").inc()
            return False
        self.metrics.child(self.metrics.reloads, self.name, "success").inc()
        log.info("%s: config reloaded from %s", self.name, self.path)
        return True

    async def _timer_loop(self) -> None:
        """Header-read and idle timeouts of every connection, checked four times a second."""
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for c in list(self.connections):
                c.check_timers(now)

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()  # type: ignore[union-attr]
            return (st.st_mtime_ns, st.st_size)
        except OSError:
            return None

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            st = self._stat()
            if st is not None and st != self._mtime:
                self._mtime = st
                await self.reload()

    # ------------------------------------------------------------------ stop

    async def drain(self, timeout: float | None = None) -> None:
        """Stop accepting, let requests in flight finish, then close everything."""
        self.draining = True
        if self._watch is not None:
            self._watch.cancel()
        for slot in self.slots.values():
            slot.close()
        for c in list(self.connections):
            c.drain()
        limit = time.monotonic() + (self.cfg.limits.drain_timeout_ms / 1000 if timeout is None else timeout)
        while self.connections and time.monotonic() < limit:
            await asyncio.sleep(0.05)
        for c in list(self.connections):
            c.abort()
        await self.close()

    async def close(self) -> None:
        self.draining = True
        if getattr(self, "_timers", None) is not None:
            self._timers.cancel()
        if self._watch is not None:
            self._watch.cancel()
        for slot in self.slots.values():
            slot.close()
        self.slots.clear()
        for c in list(self.connections):
            c.abort()
        for c in self.clusters.values():
            c.close()
        for lst in self.listeners:
            for c in lst.clusters():
                c.close()
        for t in list(self.background):
            t.cancel()
        if self.admin_server is not None:
            self.admin_server.close()
        self.access_log.close()

    # ------------------------------------------------------------------ admin

    async def _start_admin(self) -> None:
        adm = self.cfg.admin
        port = adm.port if self.admin_port_override is None else self.admin_port_override
        loop = asyncio.get_running_loop()
        # Any: uvloop's Server.sockets is a list where the stubs say a tuple (compiled by mypyc,
        # annotations are checked at run time).
        server: Any = await loop.create_server(lambda: _Admin(self), adm.host, port, reuse_address=True)
        self.admin_server = server
        self.admin_address = tuple(server.sockets[0].getsockname()[:2])

    def admin_response(self, path: str) -> tuple[int, bytes, bytes]:
        path = path.split("?", 1)[0]
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST.encode(), generate_latest(self.metrics.registry)
        if path == "/ready":
            return (503, b"text/plain", b"draining\n") if self.draining else (200, b"text/plain", b"ready\n")
        if path == "/config":
            return 200, b"application/json", self.cfg.model_dump_json(indent=2).encode()
        if path == "/clusters":
            now = time.monotonic()
            data = {name: [{"endpoint": e.label, "healthy": e.healthy, "ejected": e.ejected_until > now,
                            "active": e.active, "idle_connections": len(e.idle)} for e in c.endpoints]
                    for name, c in sorted(self.clusters.items())}
            return 200, b"application/json", json.dumps(data, indent=2).encode()
        return 404, b"text/plain", b"not found\n"


def _set_once(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Admin(asyncio.Protocol):
    def __init__(self, sidecar: Sidecar):
        self.sidecar = sidecar
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        status, ctype, body = self.sidecar.admin_response(self.url.decode("latin-1"))
        self.url = b""
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
            status, b"OK" if status == 200 else b"Error", ctype, len(body), body))
        if not self.parser.should_keep_alive():
            self.transport.close()
