"""Upstream clusters of the native proxy: endpoints (static, DNS re-resolved, or from a watched
endpoints file), load balancing, pooled keep-alive connections, circuit breaking, outlier
detection and active health checks, with Envoy's semantics:

- circuit breaker: `max_connections` open connections, `max_pending` requests waiting for one,
  `max_requests` active requests, `max_retries` active retries (unset: unlimited); overflow is
  a local 503;
- outlier detection: `consecutive_5xx` 5xx responses or local failures eject an endpoint for
  `base_ejection_ms` x (times ejected), at most 300 s; the count drops by one for each
  `interval_ms` the endpoint stays in service; never more than `max_ejection_percent` of the
  endpoints are ejected (but always at least one);
- health checks: endpoints start unhealthy until their first check passes, then need
  `unhealthy_threshold` failures / `healthy_threshold` successes to flip;
- panic: when fewer than half of the endpoints are available, balance over all of them;
- STRICT_DNS: a DNS name becomes one endpoint per resolved address, re-resolved periodically.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import hashlib
import ipaddress
import json
import logging
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshc.runtime import config as C
from meshc.runtime import tls

log = logging.getLogger("meshc.proxy")



# Envoy's default max_ejection_time: an ejection never lasts longer (unless the base is longer).
MAX_EJECTION_MS = 300_000

class ConnectFailure(Exception):
    """The upstream could not be reached (refused, timed out, TLS or SPIFFE id mismatch)."""


class Overflow(Exception):
    """A circuit-breaker threshold refused the request."""

    def __init__(self, threshold: str):
        super().__init__(threshold)
        self.threshold = threshold


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class Endpoint:
    __slots__ = ("host", "addr", "port", "key", "label", "active", "idle", "healthy", "hc_ok", "hc_fail",
                 "hc_seen", "ejected_until", "ejections", "consecutive_5xx")

    def __init__(self, host: str, addr: str, port: int, with_hc: bool):
        self.host = host
        self.addr = addr
        self.port = port
        self.key = (host, addr, port)
        self.label = f"{host}:{port}" if host == addr else f"{host}({addr}):{port}"
        self.active = 0
        self.idle: list[Any] = []
        self.healthy = not with_hc
        self.hc_ok = 0
        self.hc_fail = 0
        self.hc_seen = False
        self.ejected_until = 0.0
        self.ejections = 0
        self.consecutive_5xx = 0


class Cluster:
    """One cluster of one sidecar. `acquire`/`release` manage pooled HTTP connections."""

    def __init__(self, cfg: C.ClusterCfg, base: Path, metrics: Any, sidecar: str,
                 idle_timeout_ms: int = 30_000, max_response_header_bytes: int = 65_536):
        self.cfg = cfg
        self.max_response_header_bytes = max_response_header_bytes
        self.name = cfg.name
        self.base = base
        self.metrics = metrics
        self.sidecar = sidecar
        self.idle_timeout = idle_timeout_ms / 1000
        self.cb = cfg.circuit_breaker
        self.endpoints: list[Endpoint] = []
        self.active_requests = 0
        self.active_retries = 0
        self.connections = 0
        self.pending = 0
        self.waiters: deque[tuple[Endpoint, asyncio.Future[Any], Callable[[], Any]]] = deque()
        self._rr = 0
        self._ring: list[tuple[int, int]] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._file_mtime: float | None = None
        self._closed = False
        self.ssl: ssl.SSLContext | None = None
        self.sni: str | None = None
        self.expected = frozenset(cfg.tls.expected_spiffe) if cfg.tls else frozenset()
        if cfg.tls is not None:
            if cfg.tls.mode == "mtls":
                self.ssl = tls.mesh_client_context(base, cfg.tls.ca, cfg.tls.cert, cfg.tls.key)
            else:
                self.ssl = tls.origination_context()
                self.sni = cfg.tls.sni
        self._set_endpoints([(e.host, e.host, e.port) for e in cfg.endpoints if _is_ip(e.host)])
        self._ejected_gauge = metrics.child(metrics.ejected, sidecar, self.name)
        self._conn_gauge = metrics.child(metrics.connections, sidecar, self.name)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self._refresh_endpoints()
        loop = asyncio.get_running_loop()
        needs_dns = any(not _is_ip(e.host) for e in self.cfg.endpoints)
        if needs_dns or self.cfg.endpoints_file:
            self._tasks.append(loop.create_task(self._discovery_loop(needs_dns)))
        if self.cfg.health_check is not None:
            self._tasks.append(loop.create_task(self._health_loop(self.cfg.health_check)))
        self._tasks.append(loop.create_task(self._sweep_loop()))

    async def _sweep_loop(self) -> None:
        """Close pooled connections idle for longer than the upstream idle timeout."""
        while True:
            await asyncio.sleep(max(self.idle_timeout / 2, 0.05))
            now = time.monotonic()
            for ep in self.endpoints:
                stale = [c for c in ep.idle if now - c.idle_since >= self.idle_timeout]
                for c in stale:
                    ep.idle.remove(c)
                    c.close()

    def close(self) -> None:
        """Stop background work and close idle connections; busy ones close when released."""
        self._closed = True
        for t in self._tasks:
            t.cancel()
        for ep in self.endpoints:
            for conn in ep.idle:
                conn.close()
            ep.idle.clear()

    def reload_tls(self) -> None:
        """Re-read certificate files (new connections use them; pooled ones keep theirs)."""
        t = self.cfg.tls
        if t is not None and t.mode == "mtls":
            self.ssl = tls.mesh_client_context(self.base, t.ca, t.cert, t.key)

    # ------------------------------------------------------------------ discovery

    def _set_endpoints(self, keys: list[tuple[str, str, int]]) -> None:
        old = {e.key: e for e in self.endpoints}
        with_hc = self.cfg.health_check is not None
        new = []
        for k in dict.fromkeys(keys):
            ep = old.pop(k, None)
            new.append(ep if ep is not None else Endpoint(*k, with_hc=with_hc))
        for gone in old.values():
            for conn in gone.idle:
                conn.close()
            gone.idle.clear()
        self.endpoints = new
        ring = []
        for i, ep in enumerate(new):
            for v in range(100):
                h = int.from_bytes(hashlib.blake2b(f"{ep.host}:{ep.port}#{v}".encode(), digest_size=8).digest())
                ring.append((h, i))
        ring.sort()
        self._ring = ring

    def _file_endpoints(self) -> list[tuple[str, int]] | None:
        if not self.cfg.endpoints_file:
            return None
        path = self.base / self.cfg.endpoints_file
        try:
            st = path.stat()
        except OSError:
            self._file_mtime = None
            return None
        self._file_mtime = st.st_mtime_ns
        try:
            items = json.loads(path.read_text())
            out = []
            for it in items:
                if isinstance(it, str):
                    host, _, port = it.rpartition(":")
                    out.append((host.strip("[]"), int(port)))
                else:
                    out.append((str(it["host"]), int(it["port"])))
            return out
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("%s: cluster %s: bad endpoints file %s: %s (keeping the previous endpoints)",
                      self.sidecar, self.name, path, e)
            raise

    async def _refresh_endpoints(self) -> None:
        try:
            listed = self._file_endpoints()
        except (OSError, ValueError, KeyError, TypeError):
            return
        if listed is None:
            listed = [(e.host, e.port) for e in self.cfg.endpoints]
        loop = asyncio.get_running_loop()
        keys: list[tuple[str, str, int]] = []
        for host, port in listed:
            if _is_ip(host):
                keys.append((host, host, port))
                continue
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as e:
                log.warning("%s: cluster %s: cannot resolve %s: %s", self.sidecar, self.name, host, e)
                keys += [k for k in (e.key for e in self.endpoints) if k[0] == host and k[2] == port]
                continue
            keys += sorted({(host, str(info[4][0]), port) for info in infos})
        self._set_endpoints(keys)

    async def _discovery_loop(self, needs_dns: bool) -> None:
        last_dns = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            due = needs_dns and time.monotonic() - last_dns >= self.cfg.dns_refresh_ms / 1000
            changed = False
            if self.cfg.endpoints_file:
                try:
                    mtime: float | None = (self.base / self.cfg.endpoints_file).stat().st_mtime_ns
                except OSError:
                    mtime = None
                changed = mtime != self._file_mtime
            if due or changed:
                last_dns = time.monotonic()
                await self._refresh_endpoints()

    # ------------------------------------------------------------------ balancing

    def available(self) -> list[Endpoint]:
        eps = self.endpoints
        if self.cfg.outlier is None and self.cfg.health_check is None:
            return eps
        now = time.monotonic()
        ok = [e for e in eps if e.healthy and e.ejected_until <= now]
        # Envoy's panic threshold (50%): with too few hosts left, use them all.
        return ok if len(ok) * 2 >= len(eps) and ok else eps

    def choose(self, hash_value: str | None) -> Endpoint | None:
        eps = self.available()
        if not eps:
            return None
        if len(eps) == 1:
            return eps[0]
        policy = self.cfg.lb.policy
        if policy == "round_robin":
            self._rr += 1
            return eps[self._rr % len(eps)]
        if policy == "least_request":
            a, b = random.sample(eps, 2)  # Envoy's power of two choices
            return a if a.active <= b.active else b
        if policy == "consistent_hash" and hash_value is not None and self._ring:
            h = int.from_bytes(hashlib.blake2b(hash_value.encode(), digest_size=8).digest())
            ok = set(map(id, eps))
            i = bisect.bisect_left(self._ring, (h, -1))
            for step in range(len(self._ring)):
                ep = self.endpoints[self._ring[(i + step) % len(self._ring)][1]]
                if id(ep) in ok:
                    return ep
        return random.choice(eps)

    # ------------------------------------------------------------------ outlier detection

    def record(self, ep: Endpoint, failed: bool) -> None:
        od = self.cfg.outlier
        if od is None:
            return
        if not failed:
            ep.consecutive_5xx = 0
            return
        ep.consecutive_5xx += 1
        if ep.consecutive_5xx < od.consecutive_5xx:
            return
        ep.consecutive_5xx = 0
        now = time.monotonic()
        ejected = sum(1 for e in self.endpoints if e.ejected_until > now)
        if ejected and (ejected + 1) * 100 > od.max_ejection_percent * len(self.endpoints):
            return
        if ep.ejections and ep.ejected_until < now:
            # As Envoy: the multiplier drops by one for every interval the host stayed in service.
            back_for_ms = (now - ep.ejected_until) * 1000
            ep.ejections = max(0, ep.ejections - int(back_for_ms // max(od.interval_ms, 1)))
        ep.ejections += 1
        duration = min(od.base_ejection_ms * ep.ejections, max(MAX_EJECTION_MS, od.base_ejection_ms)) / 1000
        ep.ejected_until = now + duration
        self.metrics.child(self.metrics.ejections, self.sidecar, self.name).inc()
        self._ejected_gauge.set(ejected + 1)
        log.warning("%s: cluster %s: ejected %s for %.1fs", self.sidecar, self.name, ep.label, duration)
        asyncio.get_running_loop().call_later(duration + 0.01, self._update_ejected_gauge)

    def _update_ejected_gauge(self) -> None:
        now = time.monotonic()
        self._ejected_gauge.set(sum(1 for e in self.endpoints if e.ejected_until > now))

    # ------------------------------------------------------------------ connections

    def overflow(self, threshold: str) -> Overflow:
        self.metrics.child(self.metrics.overflow, self.sidecar, self.name, threshold).inc()
        return Overflow(threshold)

    def take_idle(self, ep: Endpoint) -> Any:
        """An idle pooled connection to `ep` still fit for reuse, or None (no coroutine: the
        common case of `acquire`)."""
        if not ep.idle:
            return None
        now = time.monotonic()
        while ep.idle:
            conn = ep.idle.pop()
            if conn.reusable(now, self.idle_timeout):
                return conn
            conn.close()
        return None

    async def acquire(self, ep: Endpoint, factory: Callable[[], Any]) -> Any:
        """A connection to `ep`: an idle pooled one, a new one, or (over max_connections) the
        next one released, waiting at most as long as the request may."""
        conn = self.take_idle(ep)
        if conn is not None:
            return conn
        if self.cb.max_connections is None or self.connections < self.cb.max_connections:
            return await self.connect(ep, factory)
        if self.cb.max_pending is not None and self.pending >= self.cb.max_pending:
            raise self.overflow("pending")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        entry = (ep, fut, factory)
        self.waiters.append(entry)
        self.pending += 1
        try:
            return await fut
        finally:
            self.pending -= 1
            if not fut.done():
                fut.cancel()
            try:
                self.waiters.remove(entry)
            except ValueError:
                pass

    async def connect(self, ep: Endpoint, factory: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        self.connections += 1
        self._conn_gauge.set(self.connections)
        try:
            kw: dict[str, Any] = {}
            if self.ssl is not None:
                kw = {"ssl": self.ssl, "server_hostname": self.sni or (ep.host if not _is_ip(ep.host) else ""),
                      "ssl_handshake_timeout": self.cfg.connect_timeout_ms / 1000}
            transport, proto = await asyncio.wait_for(
                loop.create_connection(factory, ep.addr, ep.port, **kw), self.cfg.connect_timeout_ms / 1000)
            if hasattr(proto, "max_header_bytes"):
                proto.max_header_bytes = self.max_response_header_bytes
        except (OSError, TimeoutError, ssl.SSLError, ValueError) as e:
            self.connections -= 1
            self._conn_gauge.set(self.connections)
            raise ConnectFailure(f"{ep.label}: {e or type(e).__name__}") from None
        except BaseException:
            self.connections -= 1
            self._conn_gauge.set(self.connections)
            raise
        proto.cluster = self
        proto.endpoint = ep
        if self.expected:
            try:
                peer = tls.peer_spiffe(transport.get_extra_info("ssl_object"))
            except tls.IdentityRefused as e:
                proto.close()
                raise ConnectFailure(f"{ep.label}: {e}") from None
            if peer not in self.expected:
                proto.close()
                raise ConnectFailure(f"{ep.label}: peer identity {peer!r} is not {sorted(self.expected)}")
        return proto

    def connection_closed(self) -> None:
        self.connections -= 1
        self._conn_gauge.set(self.connections)
        self._serve_waiter(None)

    def release(self, conn: Any, reusable: bool) -> None:
        """Return a connection after a complete exchange (or drop it)."""
        if not reusable or self._closed:
            conn.close()  # connection_closed() hands the slot to a waiter
            return
        if self._serve_waiter(conn):
            return
        conn.idle_since = time.monotonic()
        conn.endpoint.idle.append(conn)

    def _serve_waiter(self, conn: Any) -> bool:
        while self.waiters:
            ep, fut, factory = self.waiters[0]
            if fut.done():
                self.waiters.popleft()
                continue
            if conn is not None and conn.endpoint is ep:
                self.waiters.popleft()
                fut.set_result(conn)
                return True
            if conn is not None:
                conn.close()  # its slot goes to the waiter through connection_closed()
                return True
            if self.cb.max_connections is not None and self.connections >= self.cb.max_connections:
                return False
            self.waiters.popleft()
            task = asyncio.get_running_loop().create_task(self.connect(ep, factory))
            task.add_done_callback(functools.partial(_chain, fut=fut))
            return False
        return False

    # ------------------------------------------------------------------ health checks

    async def _health_loop(self, hc: C.HealthCheckCfg) -> None:
        while True:
            eps = list(self.endpoints)
            results = await asyncio.gather(*(self._probe(ep, hc) for ep in eps), return_exceptions=True)
            for ep, ok in zip(eps, results, strict=True):
                self._hc_result(ep, ok is True, hc)
            await asyncio.sleep(hc.interval_ms / 1000)

    def _hc_result(self, ep: Endpoint, ok: bool, hc: C.HealthCheckCfg) -> None:
        first = not ep.hc_seen
        ep.hc_seen = True
        if ok:
            ep.hc_fail = 0
            ep.hc_ok += 1
            if not ep.healthy and (first or ep.hc_ok >= hc.healthy_threshold):
                ep.healthy = True
        else:
            ep.hc_ok = 0
            ep.hc_fail += 1
            if ep.healthy and ep.hc_fail >= hc.unhealthy_threshold:
                ep.healthy = False
        self.metrics.child(self.metrics.healthy, self.sidecar, self.name, ep.label).set(1 if ep.healthy else 0)

    async def _probe(self, ep: Endpoint, hc: C.HealthCheckCfg) -> bool:
        async def run() -> bool:
            kw: dict[str, Any] = {}
            if self.ssl is not None:
                kw = {"ssl": self.ssl, "server_hostname": self.sni or (ep.host if not _is_ip(ep.host) else "")}
            reader, writer = await asyncio.open_connection(ep.addr, ep.port, **kw)
            try:
                try:
                    if self.expected and tls.peer_spiffe(writer.get_extra_info("ssl_object")) not in self.expected:
                        return False
                except tls.IdentityRefused:
                    return False
                if hc.protocol == "tcp":
                    return True
                host = self.cfg.host_header or ep.host
                writer.write(f"GET {hc.path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: meshc-health-check\r\n"
                             f"x-meshc-health-check: 1\r\nconnection: close\r\n\r\n".encode())
                line = await reader.readline()
                parts = line.split()
                return len(parts) >= 2 and parts[1] == b"200"
            finally:
                writer.close()

        try:
            return await asyncio.wait_for(run(), hc.timeout_ms / 1000)
        except (OSError, TimeoutError, ssl.SSLError, ValueError):
            return False


def _chain(task: asyncio.Task[Any], fut: asyncio.Future[Any]) -> None:
    if fut.done():
        if not task.cancelled() and task.exception() is None:
            task.result().close()
        return
    if task.cancelled():
        fut.cancel()
    elif task.exception() is not None:
        fut.set_exception(task.exception())  # type: ignore[arg-type]
    else:
        fut.set_result(task.result())
