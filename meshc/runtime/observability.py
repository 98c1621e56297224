"""Observability of the native proxy: Prometheus metrics (prometheus-client, one registry per
process, a `sidecar` label per sidecar), JSON access logs, and W3C trace context.

Label children are cached: `Counter.labels()` costs a lock and a dict lookup per call, and the
proxy would otherwise pay it several times per request.
"""

from __future__ import annotations

import json
import random
import sys
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


# The two collectors below do not subclass prometheus_client's `Collector`: it is a
# typing.Protocol (a Python class with a managed __dict__), and a mypyc native class deriving
# from it inherited a negative __dictoffset__ for a dict mypyc never allocates, so attribute
# lookups on a compiled instance read past the object (SystemError or a segfault, depending on
# the build). The registry calls collect() (and describe() where a collector has one): duck
# typing is all it needs.
# tests/test_runtime_compiled.py checks every compiled class for this.
class _RequestStats:
    """Requests and latency per (listener, route, upstream): plain counters on the hot path,
    turned into Prometheus families only when /metrics is scraped (prometheus-client's own
    Counter/Histogram take a lock and several calls per observation)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str, str, int], int] = {}
        self.hist: dict[tuple[str, str, str, str], list[float]] = {}  # buckets..., +Inf count, sum

    def observe(self, sidecar: str, listener: str, route: str, upstream: str, status: int, seconds: float) -> None:
        key = (sidecar, listener, route, upstream, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        hkey = key[:4]
        h = self.hist.get(hkey)
        if h is None:
            h = self.hist[hkey] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        h[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        h[-1] += seconds

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        c = CounterMetricFamily("meshc_requests", "Requests completed, by listener, route, upstream and status",
                                labels=["sidecar", "listener", "route", "upstream", "status"])
        for (sc, lst, route, up, status), n in sorted(self.counts.items()):
            c.add_metric([sc, lst, route, up, str(status)], n)
        yield c
        h = HistogramMetricFamily("meshc_request_duration_seconds", "Request latency (first byte in to last out)",
                                  labels=["sidecar", "listener", "route", "upstream"])
        for key, vals in sorted(self.hist.items()):
            acc: float = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, cnt in zip((*map(str, LATENCY_BUCKETS), "+Inf"), vals[:-1], strict=True):
                acc += cnt
                buckets.append((bound, acc))
            h.add_metric(list(key), buckets, vals[-1])
        yield h


class _BreakerState:
    """`meshc_circuit_breaker_open`: 1 while a cluster is at a circuit-breaker threshold, and the
    counts the thresholds apply to, read from the live clusters at scrape time."""

    def __init__(self) -> None:
        self.source: Any = None  # () -> iterable of (sidecar, Cluster)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        is_open = GaugeMetricFamily("meshc_circuit_breaker_open", "1 while a circuit-breaker threshold is reached",
                                    labels=["sidecar", "cluster", "threshold"])
        active = GaugeMetricFamily("meshc_upstream_active", "Active requests, retries and pending requests",
                                   labels=["sidecar", "cluster", "kind"])
        for sidecar, c in (self.source() if self.source else ()):
            cb = c.cfg.circuit_breaker
            for threshold, count, limit in (("connections", c.connections, cb.max_connections),
                                            ("pending", c.pending, cb.max_pending),
                                            ("requests", c.active_requests, cb.max_requests),
                                            ("retries", c.active_retries, cb.max_retries)):
                is_open.add_metric([sidecar, c.name, threshold], 1 if limit is not None and count >= limit else 0)
                active.add_metric([sidecar, c.name, threshold], count)
        yield is_open
        yield active


class Metrics:
    """Every metric the proxy exports (see docs/native.md for their meaning)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.stats = _RequestStats()
        r.register(self.stats)
        self.retries = Counter("meshc_upstream_retries", "Retries sent upstream", ["sidecar", "cluster"], registry=r)
        # Circuit-breaker state is read from the clusters when scraped (see _BreakerState).
        self.breakers = _BreakerState()
        r.register(self.breakers)
        self.overflow = Counter("meshc_circuit_breaker_overflow", "Requests refused by a circuit breaker",
                                ["sidecar", "cluster", "threshold"], registry=r)
        self.ejections = Counter("meshc_outlier_ejections", "Endpoints ejected by outlier detection",
                                 ["sidecar", "cluster"], registry=r)
        self.ejected = Gauge("meshc_outlier_ejected_endpoints", "Endpoints currently ejected",
                             ["sidecar", "cluster"], registry=r)
        self.healthy = Gauge("meshc_endpoint_healthy", "1 if the endpoint passes active health checks",
                             ["sidecar", "cluster", "endpoint"], registry=r)
        self.connections = Gauge("meshc_upstream_connections", "Open upstream connections",
                                 ["sidecar", "cluster"], registry=r)
        self.downstream = Gauge("meshc_downstream_connections", "Open downstream connections",
                                ["sidecar", "listener"], registry=r)
        self.reloads = Counter("meshc_config_reloads", "Config reloads by result", ["sidecar", "result"], registry=r)
        self.ratelimited = Counter("meshc_rate_limited", "Requests refused by the local rate limit (429)",
                                   ["sidecar", "listener"], registry=r)
        self.authz_denied = Counter("meshc_authz_denied", "Requests refused by authorization (403)",
                                    ["sidecar", "listener", "rule"], registry=r)
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def observe_request(self, sidecar: str, listener: str, route: str, upstream: str, status: int,
                        seconds: float) -> None:
        self.stats.observe(sidecar, listener, route, upstream, status, seconds)


# Lines buffered before they are written without waiting for the 200 ms timer: at 10k requests/s
# a timer-only flush writes 2000 lines (about 900 KB) at once, a 1-2 ms stall of every connection
# five times a second (it shows in p99); 256-line batches take about 40 µs each.
FLUSH_LINES = 256


class AccessLog:
    """One line per request; writes are buffered and flushed every 200 ms, or once
    `FLUSH_LINES` lines are waiting."""

    def __init__(self, fmt: str, path: str) -> None:
        self.fmt = fmt
        self.out: TextIO | None
        if fmt == "off":
            self.out = None
        elif path == "-":
            self.out = sys.stdout
        else:
            self.out = open(path, "a", buffering=1 << 16, encoding="utf-8")  # noqa: SIM115
        self._pending: list[str] = []
        self._scheduled = False
        self._encoded: dict[str, str] = {}  # value -> its JSON string (see log_json_line)
        self._tails: dict[tuple[str, str, str, str, str], str] = {}  # see json_tail

    def log(self, entry: dict[str, Any]) -> None:
        if self.out is None:
            return
        if self.fmt == "json":
            line = "{" + ",".join(f'"{k}":{_enc(v) if isinstance(v, str) else v}' for k, v in entry.items()) + "}"
        else:
            line = ('{start} "{method} {path} {protocol}" {status} {bytes_received} {bytes_sent} {duration_ms} '
                    '"{upstream}" "{route}" "{peer}" {trace_id}').format_map(entry)
        self.write(line)

    def log_http(self, sidecar: str, listener: str, method: str, path: str, protocol: str, status: int,
                 duration_ms: float, bytes_in: int, bytes_out: int, route: str, cluster: str, upstream: str,
                 peer: str, client: str, trace_id: str, request_id: str) -> None:
        """The per-request line (same fields as `log`)."""
        if self.fmt != "json":
            self.log({"start": now_iso(), "method": method, "path": path, "protocol": protocol, "status": status,
                      "bytes_received": bytes_in, "bytes_sent": bytes_out, "duration_ms": duration_ms,
                      "upstream": upstream, "route": route, "peer": peer, "trace_id": trace_id})
            return
        self.log_json_line(self.json_prefix(sidecar, listener), method, path, protocol, status, repr(duration_ms),
                           bytes_in, bytes_out, self.json_tail(route, cluster, upstream, peer, client),
                           _enc(trace_id)[1:-1], _enc(request_id))

    def json_prefix(self, sidecar: str, listener: str) -> str:
        """The part of a JSON line that is constant per listener (after the start time)."""
        return f'","sidecar":{_enc(sidecar)},"listener":{_enc(listener)},"method":'

    def json_tail(self, route: str, cluster: str, upstream: str, peer: str, client: str) -> str:
        """`"route":…,"cluster":…,"upstream":…,"peer":…,"client":…` of a JSON line, remembered:
        one lookup per request for five fields that take few distinct values together."""
        key = (route, cluster, upstream, peer, client)
        tail = self._tails.get(key)
        if tail is None:
            if len(self._tails) >= 4096:  # client addresses are unbounded: start over rather than grow
                self._tails.clear()
            tail = self._tails[key] = (f'"route":{_enc(route)},"cluster":{_enc(cluster)},"upstream":{_enc(upstream)},'
                                       f'"peer":{_enc(peer)},"client":{_enc(client)}')
        return tail

    def log_json_line(self, prefix: str, method: str, path: str, protocol: str, status: int, duration_ms: str,
                      bytes_in: int, bytes_out: int, tail: str, trace_id: str, request_id_json: str) -> None:
        """The hot path of `log_http` in JSON, one f-string per line: `tail` from `json_tail`,
        the method JSON-encoded once and remembered; `trace_id` is hex (see `traceparent`),
        `duration_ms` formatted (see `millis`) and `request_id_json` encoded."""
        m = self._encoded.get(method) or self._remember(method)
        self._pending.append(
            f'{{"start":"{now_iso()}{prefix}{m},"path":{_enc(path)},"protocol":"{protocol}","status":{status},'
            f'"duration_ms":{duration_ms},"bytes_received":{bytes_in},"bytes_sent":{bytes_out},{tail},'
            f'"trace_id":"{trace_id}","request_id":{request_id_json}}}')
        if not self._scheduled:
            self._schedule()
        elif len(self._pending) >= FLUSH_LINES:
            self._write_pending()

    def _remember(self, value: str) -> str:
        if len(self._encoded) >= 4096:  # client addresses are unbounded: start over rather than grow
            self._encoded.clear()
        enc = self._encoded[value] = _enc(value)
        return enc

    def write(self, line: str) -> None:
        self._pending.append(line)
        if not self._scheduled:
            self._schedule()
        elif len(self._pending) >= FLUSH_LINES:
            self._write_pending()

    def _schedule(self) -> None:
        import asyncio

        self._scheduled = True
        try:
            asyncio.get_running_loop().call_later(0.2, self.flush)
        except RuntimeError:
            self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if self.out is None or not self._pending:
            return
        self._write_pending()

    def _write_pending(self) -> None:
        """Write the waiting lines (the flush timer, if scheduled, stays: it writes the rest)."""
        text = "\n".join(self._pending) + "\n"
        self._pending.clear()
        if self.out is None:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            pass  # a closed or full log never fails a request

    def close(self) -> None:
        self.flush()
        if self.out not in (None, sys.stdout):
            self.out.close()  # type: ignore[union-attr]


_enc = json.encoder.encode_basestring  # type: ignore[attr-defined]
json_string = _enc  # a str as a JSON string literal (quotes included)
_HEX = frozenset("0123456789abcdef")


def traceparent(incoming: str | None, sampling_percent: float) -> tuple[str, str]:
    """(traceparent to send upstream, trace id). A valid incoming header passes unchanged (as
    through Envoy without a tracer); otherwise a new trace starts, sampled at the configured
    rate, so every request leaves with a trace context."""
    if incoming is not None and len(incoming) == 55:
        parts = incoming.split("-")
        if (len(parts) == 4 and parts[0] == "00" and len(parts[1]) == 32 and len(parts[2]) == 16
                and set(incoming.replace("-", "")) <= _HEX and parts[1] != "0" * 32 and parts[2] != "0" * 16):
            return incoming, parts[1]
    # Trace and span ids from the process's seeded PRNG rather than os.urandom: two syscalls
    # per request saved; W3C trace context asks for randomness, not secrecy. All-zero is invalid.
    ids = _bits(192).to_bytes(24, "big").hex()  # 48 hex digits; three times faster than format()
    trace_id, span_id = ids[:32], ids[32:]
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return traceparent(None, sampling_percent)
    flags = "-01" if _random() * 100 < sampling_percent else "-00"
    return f"00-{trace_id}-{span_id}{flags}", trace_id


_bits = random.getrandbits
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
_random = random.random


def millis(seconds: float) -> str:
    """`repr(round(seconds * 1000, 3))`, the access log's duration, in a third of the time
    (`round` with digits goes through a decimal conversion of its own)."""
    text = ("%.3f" % (seconds * 1000)).rstrip("0")
    return text + "0" if text[-1] == "." else text


_second: list[Any] = [-1, ""]
_MILLIS = [f"{ms:03d}Z" for ms in range(1000)]


def now_iso() -> str:
    """UTC time with milliseconds; the seconds part is formatted once per second."""
    t = time.time()
    sec = int(t)
    if sec != _second[0]:
        _second[0], _second[1] = sec, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
    return _second[1] + _MILLIS[int((t - sec) * 1000)]
