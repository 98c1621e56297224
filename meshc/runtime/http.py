"""The HTTP/1.1 data plane of the native proxy, shaped like uvicorn's httptools protocol.

`Downstream` is an `asyncio.Protocol` driven by httptools' `HttpRequestParser` callbacks;
`Upstream` is one pooled keep-alive connection driven by `HttpResponseParser`. Bodies are never
collected: each chunk goes straight to the other side, and explicit flow control keeps memory
constant (a side whose peer's write buffer passes its high-water mark stops reading until it
drains: `pause_reading`/`resume_reading` driven by `pause_writing`/`resume_writing`).
Per request, one small task runs the control flow that has to wait (faults, connection
acquisition, retries with backoff); all byte movement happens in the protocol callbacks.

Robustness: llhttp refuses malformed requests and the classic smuggling vectors
(Content-Length with Transfer-Encoding, duplicate Content-Length, obs-fold); any other
Transfer-Encoding than `chunked` is refused (501). A malformed request gets 400 and the
connection closes; upstream garbage gets 502. Header size, body size, header-read (slowloris)
and idle timeouts are enforced.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import time
from binascii import hexlify
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httptools

from meshc.runtime import tls
from meshc.runtime.cluster import Cluster, ConnectFailure, Endpoint, Overflow

if TYPE_CHECKING:
    from meshc.runtime.server import HttpListener, Sidecar

log = logging.getLogger("meshc.proxy")

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization"})
REASONS = {200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently", 302: "Found",
           303: "See Other", 304: "Not Modified", 307: "Temporary Redirect", 308: "Permanent Redirect",
           400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 409: "Conflict", 413: "Payload Too Large",
           429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
HIGH_WATER = 64 * 1024


class _TooLarge(Exception):
    pass


class UpstreamReset(Exception):
    """The upstream closed or reset before a complete response head."""


class UpstreamProtocolError(Exception):
    """The upstream answered something that is not HTTP/1.x."""


class PerTryTimeout(Exception):
    pass


def reason(status: int) -> bytes:
    return REASONS.get(status, "Unknown").encode()


_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    """`HTTP/1.1 <status> <reason>\r\n`, built once per status code."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason(status))
        if 100 <= status <= 999:  # httptools only yields 3-digit codes; bound the cache anyway
            _STATUS_LINES[status] = line
    return line


# =========================================================================== control flow


class Driver:
    """Runs a request's control coroutine like an asyncio Task, minus the Task: the first step
    runs at once (most requests reach their upstream write without suspending), later steps run
    when the awaited future completes. `cancel()` has Task semantics (CancelledError at the
    await). What the coroutine raises goes to the stream (`Stream.control_cancelled`,
    `Stream.control_failed`): no wrapping coroutine per request for that."""

    __slots__ = ("coro", "waiting", "_done", "_must_cancel", "loop", "stream")

    def __init__(self, coro: Any, loop: asyncio.AbstractEventLoop, stream: Any):
        # stream: a Stream (Any: the tests drive a Driver with a stand-in, and mypyc checks types)
        self.coro = coro
        self.loop = loop
        self.stream = stream
        self.waiting: asyncio.Future[Any] | None = None
        self._done = False
        self._must_cancel = False
        self._step(None)

    def _step(self, exc: BaseException | None) -> None:
        try:
            yielded = self.coro.send(None) if exc is None else self.coro.throw(exc)
        except StopIteration:
            self._end()
            return
        except asyncio.CancelledError:
            self._end().control_cancelled()
            return
        except Exception:
            self._end().control_failed()
            return
        except BaseException:  # never let a request kill the loop
            self._end()
            log.exception("request control flow failed")
            return
        if yielded is None:  # a bare yield (sleep(0)): run again soon
            self.loop.call_soon(self._wake, None)
            return
        yielded._asyncio_future_blocking = False
        self.waiting = yielded
        yielded.add_done_callback(self._wake)

    def _end(self) -> Any:
        """The control flow is over: drop the references back to the request. The stream keeps
        its Driver (`Stream.task`); without this the pair is a reference cycle, and every
        finished request (its stream, header lists and tuples, future, coroutine: about 16
        objects) would wait for the cycle collector instead of being freed at once; those
        collections cost about 3 µs per request and the occasional full one pauses every
        connection."""
        self._done = True
        stream = self.stream
        self.stream = None
        self.coro = None
        return stream

    def _wake(self, _fut: Any) -> None:
        self.waiting = None
        if self._must_cancel:
            self._must_cancel = False
            self._step(asyncio.CancelledError())
        else:
            self._step(None)

    def cancel(self) -> bool:
        if self._done:
            return False
        w = self.waiting
        if w is None or not w.cancel():
            self._must_cancel = True
        return True

    def done(self) -> bool:
        return self._done


# =========================================================================== downstream

_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}


class Downstream(asyncio.Protocol):
    """One client connection to a listener. Pipelined requests are answered in order."""

    def __init__(self, slot: Any, peer_identity: Callable[[Any], str | None] | None = None):
        # `slot.runtime` is the listener's current config; each request takes the one current
        # when its headers arrive, so a reload never changes a request in flight.
        self.slot = slot
        self.listener: HttpListener = slot.runtime
        self.sidecar: Sidecar = slot.sidecar
        self.peer_identity = peer_identity
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.loop = asyncio.get_event_loop()
        self.peer: str | None = None
        self.client_ip = ""
        self.queue: deque[Stream] = deque()
        self.current: Stream | None = None
        self.parsing: Stream | None = None
        self.closing = False
        self.write_paused = False
        self._blocks: set[str] = set()
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._hsize = 0
        # Header-read and idle deadlines (monotonic seconds, 0: none), checked by the sidecar's
        # timer sweep: cheaper than a timer handle per request.
        self.header_deadline = 0.0
        self.idle_deadline = 0.0
        self._error_status = 0
        self._starting = False
        self._bytes_seen = False

    # ------------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=HIGH_WATER)  # type: ignore[attr-defined]
        peername = transport.get_extra_info("peername")
        self.client_ip = peername[0] if peername else ""
        refused = ""
        if self.peer_identity is not None:
            try:
                self.peer = self.peer_identity(transport)
            except tls.IdentityRefused as e:  # no identity to authorize with: refuse the connection
                refused = str(e) or type(e).__name__
        self.sidecar.connections.add(self)
        self.gauge = self.listener.conn_gauge
        self.gauge.inc()
        if refused:
            log.warning("%s: connection from %s refused: %s", self.listener.name, self.client_ip, refused)
            self.abort()
            return
        self._arm_idle()
        # A new connection must bring its first request head within the header timeout: one
        # that sends nothing is closed then, not held for the idle timeout (a flood of silent
        # connections holds a socket and a TLS buffer each).
        self.header_deadline = time.monotonic() + self.listener.limits.header_timeout_ms / 1000

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.sidecar.connections.discard(self)
        self.gauge.dec()
        self._cancel_timers()
        if self.current is not None:
            self.current.downstream_lost()
        for s in self.queue:
            s.downstream_lost()
        self.queue.clear()

    def _cancel_timers(self) -> None:
        self.header_deadline = self.idle_deadline = 0.0

    def _arm_idle(self) -> None:
        self.idle_deadline = time.monotonic() + self.listener.limits.idle_timeout_ms / 1000

    def check_timers(self, now: float) -> None:
        if self.header_deadline and now >= self.header_deadline:
            self._header_expired()
        if self.idle_deadline and now >= self.idle_deadline:
            self._idle_expired()

    def _idle_expired(self) -> None:
        self.idle_deadline = 0.0
        if self.current is None and self.parsing is None and not self.queue:
            self.close()

    def _header_expired(self) -> None:
        self.header_deadline = 0.0
        if not self._bytes_seen:
            self.close()  # not a byte arrived on this connection: nobody to answer
        elif self.current is None and not self.queue:
            self.local_error(408, b"request header read timeout")
        else:
            self._error_status = 408
            self.block_read("error")

    def close(self) -> None:
        if not self.closing and self.transport is not None:
            self.closing = True
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def drain(self) -> None:
        """Graceful shutdown: close now if idle, else after the request in flight."""
        if self.current is None and self.parsing is None and not self.queue:
            self.close()

    # ------------------------------------------------------------------ flow control

    def block_read(self, why: str) -> None:
        if not self._blocks and self.transport is not None and not self.closing:
            self.transport.pause_reading()
        self._blocks.add(why)

    def unblock_read(self, why: str) -> None:
        if why in self._blocks:
            self._blocks.discard(why)
            if not self._blocks and self.transport is not None and not self.closing:
                self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True
        s = self.current
        if s is not None and s.upstream is not None:
            s.upstream.block_read()

    def resume_writing(self) -> None:
        self.write_paused = False
        s = self.current
        if s is not None and s.upstream is not None:
            s.upstream.unblock_read()

    # ------------------------------------------------------------------ parsing

    def data_received(self, data: bytes) -> None:
        if self.closing or self._error_status:
            return
        self._bytes_seen = True
        self.idle_deadline = 0.0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(501)
        except httptools.HttpParserCallbackError as e:
            self._fail(431 if isinstance(e.__context__, _TooLarge) else 400)
        except httptools.HttpParserError:
            self._fail(400)

    def _fail(self, status: int) -> None:
        """A request we cannot parse: answer once the requests before it are answered, then close."""
        if self.parsing is not None and self.parsing is not self.current:
            # Its headers were accepted but the body is broken: it will never be answered.
            try:
                self.queue.remove(self.parsing)
            except ValueError:
                pass
        broken = self.parsing
        if broken is not None:
            broken.body_broken()
            self.parsing = None
        if broken is not None and broken is self.current:
            # Its body is broken mid-way: whatever the upstream got is incomplete.
            broken.cancel_with(status)
            return
        if self.current is None:
            self.local_error(status, b"malformed request")
        else:
            self._error_status = status
            self.block_read("error")

    def local_error(self, status: int, body: bytes) -> None:
        if self.transport is None or self.closing:
            return
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, reason(status), len(body), body))
        self.close()

    def on_message_begin(self) -> None:
        self.listener = self.slot.runtime
        self._url = b""
        self._headers = []
        self._hsize = 0
        if not self.header_deadline:
            self.header_deadline = time.monotonic() + self.listener.limits.header_timeout_ms / 1000

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._hsize += len(url)
        if self._hsize > self.listener.limits.max_request_header_bytes:
            raise _TooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self._hsize += len(name) + len(value) + 4
        if self._hsize > self.listener.limits.max_request_header_bytes:
            raise _TooLarge
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.header_deadline = 0.0
        p = self.parser
        method = p.get_method()
        stream = Stream(self, _METHODS.get(method) or method.decode("latin-1"), self._url, self._headers,
                        p.get_http_version() == "1.1", p.should_keep_alive())
        if p.should_upgrade():
            stream.reject = 501
        self.parsing = stream
        if self.current is None and not self.queue and not self._starting and not self.closing:
            # Nothing in flight or queued (no pipelining): what _start_next would do, minus the queue.
            self.current = stream
            self._starting = True
            try:
                stream.start()
            finally:
                self._starting = False
            return
        self.queue.append(stream)
        if self.current is None:
            self._start_next()
        else:
            self.block_read("pipeline")

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing.feed_body(body)

    def on_message_complete(self) -> None:
        s = self.parsing
        self.parsing = None
        if s is not None:
            s.end_body()

    # ------------------------------------------------------------------ requests

    def _start_next(self) -> None:
        if not self.queue or self.current is not None or self.closing:
            return
        if self._starting:
            # A request answered synchronously while starting: start the next one from the loop,
            # so a long pipeline of local answers does not recurse.
            self.loop.call_soon(self._start_next)
            return
        self.current = self.queue.popleft()
        self._starting = True
        try:
            self.current.start()
        finally:
            self._starting = False

    def stream_done(self, stream: Stream) -> None:
        if self.current is not stream:
            return
        self.current = None
        if self.closing:
            return
        if not stream.keep_alive or self.sidecar.draining or stream.close_after:
            self.close()
            return
        if self.queue:
            self._start_next()
            return
        if self._error_status:
            self.local_error(self._error_status, b"malformed request")
            return
        self.unblock_read("pipeline")
        if self.parsing is None:
            self._arm_idle()


# =========================================================================== upstream


class Upstream(asyncio.Protocol):
    """One pooled HTTP/1.1 connection to an upstream endpoint; serves one exchange at a time."""

    cluster: Cluster
    endpoint: Endpoint

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.sink: Any = None  # the Stream (or mirror sink) of the current exchange
        self.closed = False
        self.idle_since = 0.0
        self.keep_alive = True
        self.head_only = False
        self._headers: list[tuple[bytes, bytes]] = []
        self.max_header_bytes = 65_536  # set by the cluster from the sidecar's limits
        self._hsize = 0
        self._read_blocked = False
        self.write_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=HIGH_WATER)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        was_closed = self.closed
        self.closed = True
        if hasattr(self, "cluster"):
            try:
                self.endpoint.idle.remove(self)
            except ValueError:
                pass
            self.cluster.connection_closed()
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.upstream_lost(self, was_closed)

    def reusable(self, now: float, idle_timeout: float) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing() \
            and now - self.idle_since < idle_timeout

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def block_read(self) -> None:
        if not self._read_blocked and self.transport is not None and not self.closed:
            self._read_blocked = True
            self.transport.pause_reading()

    def unblock_read(self) -> None:
        if self._read_blocked and self.transport is not None and not self.closed:
            self._read_blocked = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.sink is not None:
            self.sink.upstream_write_paused(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.sink is not None:
            self.sink.upstream_write_paused(False)

    def begin(self, sink: Any, head: bytes, head_only: bool) -> None:
        self.sink = sink
        self.head_only = head_only
        self._headers = []
        self._hsize = 0
        self.unblock_read()
        assert self.transport is not None
        self.transport.write(head)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.sink is None:
            self.abort()  # bytes on an idle connection: it cannot be trusted for reuse
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            sink, self.sink = self.sink, None
            self.abort()
            if sink is not None:
                sink.upstream_garbage(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._hsize += len(name) + len(value)
        if self._hsize > self.max_header_bytes:
            raise _TooLarge
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        headers, self._headers = self._headers, []
        if 100 <= status < 200:
            return  # interim responses are not forwarded
        self.keep_alive = self.parser.should_keep_alive()
        if self.sink is not None:
            self.sink.response_head(self, status, headers)
        if self.head_only and self.sink is not None:
            # llhttp would wait for a body a HEAD response never has; finish by hand and
            # do not reuse the connection (the parser's state is off by one message).
            self.keep_alive = False
            sink, self.sink = self.sink, None
            sink.response_complete(self, False)

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink.response_body(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:
            return
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.response_complete(self, self.keep_alive)


# =========================================================================== one request


class Stream:
    """One request: its body (streamed, kept for replay up to the retry buffer), its control
    task, and the response streaming back."""

    # Per-request state that starts at a constant: class-level defaults, so creating a Stream
    # stores only what differs (about 30 attribute stores fewer per request).
    reject = 0
    close_after = False
    body_failed = False
    bytes_in = 0
    pending_bytes = 0
    replay_bytes = 0
    sent_any = False
    upstream: Upstream | None = None
    body_sink: Upstream | None = None
    up_chunked = False
    task: Driver | None = None
    head_fut: asyncio.Future[Any] | None = None
    body_done_fut: asyncio.Future[Any] | None = None
    done_fut: asyncio.Future[Any] | None = None
    forwarding = False
    resp_status = 0
    resp_head: tuple[int, list[tuple[bytes, bytes]]] | None = None
    resp_done: bool | None = None  # set when the upstream message completed early
    resp_chunked_out = False
    resp_no_body = False
    bytes_out = 0
    finished = False
    timed_out = False
    response_started = False
    route_name = "-"
    upstream_label = "-"
    cluster_name = "-"
    trace_id = ""
    response_ops: Any = None
    request_id = ""
    failure = ""
    _expect_continue = False

    def __init__(self, conn: Downstream, method: str, url: bytes, headers: list[tuple[bytes, bytes]],
                 http11: bool, keep_alive: bool):
        self.conn = conn
        self.listener = conn.listener
        self.method = method
        self.url = url.decode("latin-1")
        self.headers = headers
        self.http11 = http11
        self.keep_alive = keep_alive
        self.start_time = time.monotonic()
        hdict: dict[str, str] = {}
        repeated_host = False
        for n, v in headers:
            k = n.decode("latin-1")
            if k in hdict:
                hdict[k] = hdict[k] + "," + v.decode("latin-1")
                if k == "host":
                    repeated_host = True
            else:
                hdict[k] = v.decode("latin-1")
        self.hdict = hdict
        te = hdict.get("transfer-encoding")
        self.chunked_in = te is not None
        if te is not None and te.strip().lower() != "chunked":
            self.reject = 501
        if repeated_host:
            self.reject = 400  # RFC 9112 3.2: more than one Host is a bad request
        cl = hdict.get("content-length")
        self.content_length = int(cl) if cl and cl.strip().isdigit() else 0
        self.has_body = self.chunked_in or self.content_length > 0
        self.body_done = not self.has_body
        self.pending: list[bytes] = []
        limit = self.listener.limits.retry_buffer_bytes
        self.replay: list[bytes] | None = [] if limit > 0 else None
        self.resp_pending: list[bytes] = []
        if "expect" in hdict:
            self._expect_continue = hdict["expect"].lower() == "100-continue"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.reject:
            self.close_after = True
            self.respond(self.reject, b"bad request" if self.reject == 400 else b"not supported")
            return
        try:
            pending = self.listener.handle(self)
        except Exception:
            self.control_failed()
            return
        if pending is not None:
            self.task = Driver(pending, self.conn.loop, self)

    def control_cancelled(self) -> None:
        """The request's control flow was cancelled (route timeout, client gone, body error)."""
        if self.timed_out and not self.response_started:
            self.respond(504, b"upstream request timeout")
        elif not self.finished:
            self._abort_all()

    def control_failed(self) -> None:
        """The request's control flow raised: a bug must cost one request, never the proxy."""
        log.exception("%s: request failed", self.conn.sidecar.name)
        if not self.response_started:
            self.respond(500, b"internal proxy error")
        else:
            self._abort_all()

    def _abort_all(self) -> None:
        if self.upstream is not None:
            self.upstream.sink = None
            self.upstream.abort()
            self.upstream = None
        self.conn.abort()
        self.finish()

    def downstream_lost(self) -> None:
        if self.finished:
            return
        if self.upstream is not None:
            self.upstream.sink = None
            self.upstream.abort()
            self.upstream = None
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.finish()

    # ------------------------------------------------------------------ request body

    def feed_body(self, chunk: bytes) -> None:
        self.bytes_in += len(chunk)
        limit = self.listener.limits.max_request_body_bytes
        if limit and self.bytes_in > limit:
            self.body_failed = True
            self.close_after = True
            if self.body_done_fut is not None and not self.body_done_fut.done():
                self.body_done_fut.set_result(None)
            if not self.response_started and self.conn.current is self:
                if self.task is not None:
                    self.task.cancel()
                self._drop_upstream()
                self.respond(413, b"request body too large")
            else:
                self.conn.abort()
            return
        if self.replay is not None:
            if self.replay_bytes + len(chunk) <= self.listener.limits.retry_buffer_bytes:
                self.replay.append(chunk)
                self.replay_bytes += len(chunk)
            else:
                self.replay = None
        sink = self.body_sink
        if sink is not None:
            sink.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if self.up_chunked else chunk)
            self.sent_any = True
        else:
            self.pending.append(chunk)
            self.pending_bytes += len(chunk)
            if self.pending_bytes > HIGH_WATER:
                self.conn.block_read("body")

    def end_body(self) -> None:
        self.body_done = True
        if self.body_sink is not None and self.up_chunked:
            self.body_sink.write(b"0\r\n\r\n")
        if self.body_done_fut is not None and not self.body_done_fut.done():
            self.body_done_fut.set_result(None)

    def body_broken(self) -> None:
        self.body_failed = True
        self.close_after = True
        if self.body_done_fut is not None and not self.body_done_fut.done():
            self.body_done_fut.set_result(None)

    def cancel_with(self, status: int) -> None:
        """Stop this request: a local error if nothing was answered yet, else a reset."""
        self.close_after = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self._drop_upstream()
        if self.response_started:
            self._abort_all()
        else:
            self.respond(status, b"malformed request")

    def replayable(self) -> bool:
        return not self.has_body or self.replay is not None or not self.sent_any

    async def wait_body(self) -> None:
        """Wait for the whole request body (used before starting the route timeout)."""
        if not self.body_done and not self.body_failed:
            self.body_done_fut = self.conn.loop.create_future()
            await self.body_done_fut

    def upstream_write_paused(self, paused: bool) -> None:
        if paused:
            self.conn.block_read("upstream")
        else:
            self.conn.unblock_read("upstream")

    # ------------------------------------------------------------------ one attempt

    def send(self, up: Upstream, head: bytes, chunked: bool) -> None:
        """Start an exchange on `up`: the head, the body so far, then the rest as it comes."""
        self.upstream = up
        self.resp_head = None
        self.resp_pending = []
        self.resp_done = None
        self.up_chunked = chunked
        self.head_fut = self.conn.loop.create_future()
        if not self.has_body:
            up.begin(self, head, self.method == "HEAD")
        else:
            # The head and the body received so far leave in one write.
            chunks = self.replay if self.sent_any and self.replay is not None else self.pending
            parts = [head]
            for c in chunks:
                parts.append(b"%x\r\n%s\r\n" % (len(c), c) if chunked else c)
            if chunks:
                self.sent_any = True
            if self.body_done and chunked:
                parts.append(b"0\r\n\r\n")
            up.begin(self, b"".join(parts), self.method == "HEAD")
            self.pending = []
            self.pending_bytes = 0
            self.conn.unblock_read("body")
            if not self.body_done:
                self.body_sink = up
        if self._expect_continue and not self.body_done:
            self._expect_continue = False
            assert self.conn.transport is not None
            self.conn.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _drop_upstream(self) -> None:
        up = self.upstream
        self.upstream = None
        self.body_sink = None
        if up is not None:
            up.sink = None
            up.abort()

    # callbacks from Upstream --------------------------------------------------

    def response_head(self, up: Upstream, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.resp_head = (status, headers)
        if self.head_fut is not None and not self.head_fut.done():
            self.head_fut.set_result(None)

    def response_body(self, chunk: bytes) -> None:
        if self.forwarding:
            self._write_body(chunk)
        else:
            pending = self.resp_pending
            pending.append(chunk)
            size = len(chunk) if len(pending) == 1 else sum(map(len, pending))
            if size > HIGH_WATER and self.upstream is not None:
                self.upstream.block_read()

    def response_complete(self, up: Upstream, reusable: bool) -> None:
        self.body_sink = None
        if not self.body_done:
            reusable = False  # the upstream answered before reading our whole body
        if self.forwarding:
            self._end_response()
            self.upstream = None
            up.cluster.release(up, reusable and not up.closed)
            if self.done_fut is not None and not self.done_fut.done():
                self.done_fut.set_result(None)
        else:
            self.resp_done = reusable

    def upstream_lost(self, up: Upstream, by_us: bool) -> None:
        self.body_sink = None
        if self.forwarding:
            # Close-delimited bodies end here; anything else is a truncated response.
            status_cl = self._resp_framing_known
            if not status_cl:
                self._end_response()
                if self.done_fut is not None and not self.done_fut.done():
                    self.done_fut.set_result(None)
            else:
                if self.done_fut is not None and not self.done_fut.done():
                    self.done_fut.set_exception(UpstreamReset("upstream reset mid-response"))
            self.upstream = None
            return
        if self.head_fut is not None and not self.head_fut.done():
            self.head_fut.set_exception(UpstreamReset("upstream reset before response headers"))
        elif self.resp_head is not None and self.resp_done is None:
            self.resp_done = False

    def upstream_garbage(self, up: Upstream) -> None:
        self.body_sink = None
        if self.head_fut is not None and not self.head_fut.done():
            self.head_fut.set_exception(UpstreamProtocolError("upstream sent an invalid HTTP response"))
        elif self.forwarding and self.done_fut is not None and not self.done_fut.done():
            self.done_fut.set_exception(UpstreamProtocolError("upstream sent an invalid body"))

    # ------------------------------------------------------------------ the response

    _resp_framing_known = True

    def forward_response(self, extra: list[tuple[bytes, bytes]], ops: Any) -> asyncio.Future[Any] | None:
        """Send the upstream's response head and stream its body; returns a future done when the
        body has been forwarded (None when it already was)."""
        assert self.resp_head is not None
        status, headers = self.resp_head
        self.resp_status = status
        no_body = self.method == "HEAD" or status in (204, 304)
        has_cl = has_te = False
        connection: bytes | None = None  # the Connection header's values, comma-joined
        out = [status_line(status)]
        for n, v in headers:
            if n in HOP_BY_HOP:
                if n == b"transfer-encoding":
                    has_te = True
                elif n == b"connection":
                    connection = v if connection is None else connection + b"," + v
                continue
            if n == b"content-length":
                has_cl = True
            out += (n, b": ", v, b"\r\n")  # pieces, joined once with the rest of the head
        self._resp_framing_known = has_cl or has_te or no_body
        if ops is not None or (connection is not None and connection not in _PLAIN_CONNECTION
                               and connection_tokens(connection)):
            # Headers a Connection header names, or response header ops: whole lines again.
            out = [out[0], *_response_lines(headers, connection, ops)]
        for n, v in extra:
            out.append(b"%s: %s\r\n" % (n, v))
        if not no_body and not has_cl:
            if self.http11:
                self.resp_chunked_out = True
                out.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False
        if not self.keep_alive or self.close_after or self.conn.sidecar.draining:
            out.append(b"connection: close\r\n")
            self.keep_alive = False
        elif not self.http11:
            out.append(b"connection: keep-alive\r\n")
        out.append(b"\r\n")
        self.resp_no_body = no_body
        self.response_started = True
        # The head and whatever body already arrived leave in one write (one syscall).
        if not no_body:
            for c in self.resp_pending:
                if c:
                    self.bytes_out += len(c)
                    out.append(b"%x\r\n%s\r\n" % (len(c), c) if self.resp_chunked_out else c)
        if self.resp_done is not None and self.resp_chunked_out:
            out.append(b"0\r\n\r\n")
            self.resp_chunked_out = False
        assert self.conn.transport is not None
        if not self.conn.closing:
            self.conn.transport.write(b"".join(out))
        self.forwarding = True
        self.resp_pending = []
        up = self.upstream
        if up is not None:
            if self.conn.write_paused:
                up.block_read()
            elif up._read_blocked:
                up.unblock_read()
        if self.resp_done is not None:
            self._end_response()
            reusable = self.resp_done
            self.upstream = None
            if up is not None:
                up.cluster.release(up, reusable and not up.closed)
            return None
        if up is None or up.closed:
            if not self._resp_framing_known:
                self._end_response()
                return None
            self.done_fut = self.conn.loop.create_future()
            self.done_fut.set_exception(UpstreamReset("upstream reset mid-response"))
            return self.done_fut
        self.done_fut = self.conn.loop.create_future()
        return self.done_fut

    def _write_body(self, chunk: bytes) -> None:
        if self.resp_no_body or self.conn.closing or not chunk:
            return
        self.bytes_out += len(chunk)
        t = self.conn.transport
        assert t is not None
        if self.resp_chunked_out:
            t.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            t.write(chunk)

    def _end_response(self) -> None:
        if self.resp_chunked_out and not self.conn.closing and self.conn.transport is not None:
            self.conn.transport.write(b"0\r\n\r\n")
            self.resp_chunked_out = False

    def respond(self, status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None,
                ops: Any = None) -> None:
        """A local response (errors, redirects, direct responses, faults)."""
        if self.response_started or self.conn.closing:
            self.finish()
            return
        self.resp_status = status
        self.response_started = True
        if not self.body_done:
            self.close_after = True  # the rest of the body would be read as a new request
        keep = self.keep_alive and not self.close_after and not self.conn.sidecar.draining
        self.keep_alive = keep
        lines = [status_line(status)]
        hdrs = [b"content-type: text/plain\r\n"] if body else []
        for n, v in headers or ():
            hdrs.append(b"%s: %s\r\n" % (n, v))
        if ops is not None:
            hdrs = ops.apply_response(hdrs)
        lines += hdrs
        lines.append(b"content-length: %d\r\n" % len(body))
        if not keep:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        if self.method != "HEAD":
            lines.append(body)
            self.bytes_out += len(body)
        assert self.conn.transport is not None
        self.conn.transport.write(b"".join(lines))
        self.finish()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.listener.record(self)
        if not self.body_done and not self.conn.closing:
            self.close_after = True
            self.keep_alive = False
        self.conn.stream_done(self)


def _response_lines(headers: list[tuple[bytes, bytes]], connection: bytes | None, ops: Any) -> list[bytes]:
    """The forwarded response header lines: without hop-by-hop headers and those `connection`
    names, then the route's response header ops."""
    tokens = connection_tokens(connection) if connection is not None else frozenset()
    lines = [b"%s: %s\r\n" % (n, v) for n, v in headers if n not in HOP_BY_HOP and n not in tokens]
    return ops.apply_response(lines) if ops is not None else lines


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """Header names a `Connection` header (its values comma-joined) marks hop-by-hop, beyond the
    standard ones. Almost always `keep-alive` or `close`: memoized."""
    found = _TOKENS_BY_VALUE.get(value)
    if found is None:
        found = frozenset({t.strip().lower() for t in value.split(b",")} - HOP_BY_HOP - {b"close"})
        if len(_TOKENS_BY_VALUE) < 256:
            _TOKENS_BY_VALUE[value] = found
    return found


_TOKENS_BY_VALUE: dict[bytes, frozenset[bytes]] = {}
# Connection values that name no header beyond the standard hop-by-hop ones (what upstreams
# send almost always): no call to `connection_tokens` for them.
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})


# =========================================================================== proxying


def retry_on(cfg: Any, kind: str, status: int = 0) -> bool:
    """Would the retry policy retry this outcome? (Envoy's retry_on semantics.)"""
    on = cfg.on
    if kind == "connect":
        return any(x in on for x in ("5xx", "gateway-error", "connect-failure", "reset"))
    if kind in ("reset", "timeout"):
        return any(x in on for x in ("5xx", "gateway-error", "reset"))
    if status >= 500 and "5xx" in on:
        return True
    if status in (502, 503, 504) and "gateway-error" in on:
        return True
    if status == 409 and "retriable-4xx" in on:
        return True
    return status in cfg.status_codes


def backoff(cfg: Any, retry_no: int) -> float:
    """Envoy's fully jittered exponential backoff, in seconds."""
    upper = min((2 ** retry_no - 1) * cfg.backoff_base_ms, cfg.backoff_max_ms)
    return random.uniform(0, upper) / 1000


_RID_PREFIX = os.urandom(10).hex()
# The random prefix fills the UUID's first four groups exactly: dashed once, here.
_RID_HEAD = f"{_RID_PREFIX[:8]}-{_RID_PREFIX[8:12]}-{_RID_PREFIX[12:16]}-{_RID_PREFIX[16:20]}-".encode()
_rid_counter = itertools.count(int.from_bytes(os.urandom(4)))


def new_request_id() -> bytes:
    """A UUID-shaped id, unique per process run (random prefix + counter): no syscall per request."""
    return _RID_HEAD + hexlify((next(_rid_counter) & 0xFFFFFFFFFFFF).to_bytes(6, "big"))


async def proxy(stream: Stream, cluster: Cluster, head: bytes, retry: Any,
                timeout_ms: int | None, extra_response: list[tuple[bytes, bytes]], ops: Any,
                hash_value: str | None) -> None:
    """Send the request to `cluster` with retries, per-try and overall timeouts, circuit
    breaking and outlier detection; stream the response back."""
    loop = stream.conn.loop
    stream.cluster_name = cluster.name
    cb = cluster.cfg.circuit_breaker
    if cb.max_requests is not None and cluster.active_requests >= cb.max_requests:
        cluster.metrics.child(cluster.metrics.overflow, cluster.sidecar, cluster.name, "requests").inc()
        stream.respond(503, b"upstream overflow (circuit breaker: max_requests)",
                       [(b"x-envoy-overloaded", b"true")])
        return
    # The route timeout starts once the whole request is in (Envoy's semantics).
    timer: asyncio.TimerHandle | None = None
    body_waiter = None
    if timeout_ms is not None:
        if stream.body_done:
            timer = loop.call_later(timeout_ms / 1000, _expire_stream, stream)
        else:
            # Only requests still receiving a body pay for these closures and the task.
            async def arm_after_body() -> None:
                nonlocal timer
                await stream.wait_body()
                if not stream.finished:
                    timer = loop.call_later(timeout_ms / 1000, _expire_stream, stream)

            body_waiter = loop.create_task(arm_after_body())
    cluster.active_requests += 1
    attempt = 0
    retrying = False
    ep: Endpoint | None = None
    try:
        while True:
            if retrying:
                cluster.active_retries -= 1
                retrying = False
            ep = cluster.choose(hash_value)
            if ep is None:
                stream.respond(503, b"no healthy upstream")
                return
            stream.upstream_label = ep.label
            outcome, status = "", 0
            per_try: asyncio.TimerHandle | None = None
            ep.active += 1
            try:
                up: Upstream = cluster.take_idle(ep) or await cluster.acquire(ep, Upstream)
                stream.send(up, head, stream.chunked_in)
                if retry is not None and retry.per_try_timeout_ms:
                    per_try = loop.call_later(retry.per_try_timeout_ms / 1000, _expire_try, stream.head_fut)
                assert stream.head_fut is not None
                await stream.head_fut
                assert stream.resp_head is not None
                status = stream.resp_head[0]
                outcome = "response"
            except Overflow as overflow:  # one name per exception type: mypyc types `e` by its first use
                stream.respond(503, f"upstream overflow (circuit breaker: max_{overflow.threshold})".encode(),
                               [(b"x-envoy-overloaded", b"true")])
                return
            except ConnectFailure as e:
                outcome = "connect"
                stream.failure = str(e)
            except UpstreamProtocolError:
                outcome = "protocol"
            except UpstreamReset:
                outcome = "reset"
            except PerTryTimeout:
                outcome = "timeout"
                stream._drop_upstream()
            finally:
                ep.active -= 1
                if per_try is not None:
                    per_try.cancel()
            failed = outcome != "response" or status >= 500
            cluster.record(ep, failed)
            kind = "reset" if outcome == "protocol" else outcome
            if (retry is not None and attempt < retry.num_retries and stream.replayable()
                    and (retry_on(retry, kind, status) if outcome != "response" else retry_on(retry, "", status))
                    and _retry_allowed(cluster, retry)):
                attempt += 1
                cluster.active_retries += 1
                retrying = True
                cluster.metrics.child(cluster.metrics.retries, cluster.sidecar, cluster.name).inc()
                if outcome == "response":
                    stream._drop_upstream()  # discard this answer; the connection cannot be reused
                await asyncio.sleep(backoff(retry, attempt))
                continue
            if outcome == "response":
                done = stream.forward_response(extra_response, ops)
                if done is not None:
                    try:
                        await done
                    except (UpstreamReset, UpstreamProtocolError):
                        stream._abort_all()
                        return
                stream.finish()
                return
            stream._drop_upstream()
            if outcome == "timeout":
                stream.respond(504, b"upstream request timeout")
            elif outcome == "protocol":
                stream.respond(502, b"upstream sent an invalid response")
            elif outcome == "connect":
                stream.respond(503, b"upstream connect error")
            else:
                stream.respond(503, b"upstream reset before response headers")
            return
    except asyncio.CancelledError:
        stream._drop_upstream()
        raise
    finally:
        cluster.active_requests -= 1
        if retrying:
            cluster.active_retries -= 1
        if timer is not None:
            timer.cancel()
        if body_waiter is not None:
            body_waiter.cancel()


def _expire_stream(stream: Stream) -> None:
    """The route timeout fired: cancel the request's control flow (run() answers 504)."""
    stream.timed_out = True
    if stream.task is not None:
        stream.task.cancel()


def _retry_allowed(cluster: Cluster, retry: Any) -> bool:
    if retry.budget_percent is not None:
        limit = max(retry.min_retry_concurrency, retry.budget_percent / 100 * cluster.active_requests)
        ok = cluster.active_retries < limit
    else:
        limit_r = cluster.cfg.circuit_breaker.max_retries
        ok = limit_r is None or cluster.active_retries < limit_r
    if not ok:
        cluster.metrics.child(cluster.metrics.overflow, cluster.sidecar, cluster.name, "retries").inc()
    return ok


def _expire_try(fut: asyncio.Future[Any] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_exception(PerTryTimeout())


class MirrorSink:
    """Receives a mirrored request's response and drops it."""

    def __init__(self, done: asyncio.Future[Any]):
        self.done = done

    def response_head(self, up: Upstream, status: int, headers: Any) -> None:
        pass

    def response_body(self, chunk: bytes) -> None:
        pass

    def response_complete(self, up: Upstream, reusable: bool) -> None:
        up.cluster.release(up, reusable)
        if not self.done.done():
            self.done.set_result(None)

    def upstream_lost(self, up: Upstream, by_us: bool) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def upstream_garbage(self, up: Upstream) -> None:
        self.upstream_lost(up, False)

    def upstream_write_paused(self, paused: bool) -> None:
        pass


async def mirror(cluster: Cluster, head: bytes, body: bytes, timeout: float = 10.0) -> None:
    """Fire-and-forget shadow request (Envoy's request_mirror_policies)."""
    ep = cluster.choose(None)
    if ep is None:
        return
    try:
        up: Upstream = await asyncio.wait_for(cluster.acquire(ep, Upstream), timeout)
    except (ConnectFailure, Overflow, TimeoutError):
        return
    done = asyncio.get_running_loop().create_future()
    up.begin(MirrorSink(done), head + body, False)
    try:
        await asyncio.wait_for(done, timeout)
    except TimeoutError:
        up.sink = None
        up.abort()
