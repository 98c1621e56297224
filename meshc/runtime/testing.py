"""Helpers for testing the native proxy over real loopback sockets (used by tests/test_proxy*.py
and the benchmark): an event loop in a thread, scriptable upstream servers, and small builders
for hand-written sidecar configs (validated by the schema like any other config).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import httptools

from meshc.runtime import config as C

# --------------------------------------------------------------------------- loop thread


class LoopThread:
    """An asyncio loop running in a daemon thread; `run(coro)` waits for its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        fut: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def call(self, fn: Callable[[], Any]) -> Any:
        async def wrap() -> Any:
            return fn()
        return self.run(wrap())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# --------------------------------------------------------------------------- upstreams


Reply = tuple[int, list[tuple[str, str]], bytes]
Behaviour = Callable[["Request"], Any]


class Request:
    def __init__(self, method: str, path: str, headers: dict[str, str], body_bytes: int, body: bytes):
        self.method = method
        self.path = path
        self.headers = headers
        self.body_bytes = body_bytes
        self.body = body


class _UpstreamProtocol(asyncio.Protocol):
    def __init__(self, server: TestUpstream):
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.nbody = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections += 1

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body, self.nbody = b"", {}, [], 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.nbody += len(body)
        if sum(map(len, self.body)) < 1 << 20:
            self.body.append(body)

    def on_message_complete(self) -> None:
        req = Request(self.parser.get_method().decode(), self.url.decode("latin-1"), self.headers, self.nbody,
                      b"".join(self.body))
        self.server.requests.append(req)
        asyncio.get_running_loop().create_task(self._answer(req))

    async def _answer(self, req: Request) -> None:
        t = self.transport
        assert t is not None
        out = self.server.behaviour(req)
        if asyncio.iscoroutine(out):
            out = await out
        if t.is_closing():
            return
        if isinstance(out, bytes):  # raw bytes (garbage, hand-made responses)
            t.write(out)
            return
        if out is not None and out[0] == "close":  # raw bytes, then hang up
            t.write(out[1])
            t.close()
            return
        if out is None:  # hang up without answering
            t.close()
            return
        status, headers, body = out
        lines = [f"HTTP/1.1 {status} X\r\n".encode()]
        names = {k.lower() for k, _ in headers}
        for k, v in headers:
            lines.append(f"{k}: {v}\r\n".encode())
        if "content-length" not in names and "transfer-encoding" not in names:
            lines.append(b"content-length: %d\r\n" % len(body))
        lines.append(f"x-upstream: {self.server.name}\r\n\r\n".encode())
        t.write(b"".join(lines) + body)


def default_behaviour(name: str) -> Behaviour:
    def reply(req: Request) -> Reply:
        return 200, [], f"{name} {req.method} {req.path}".encode()
    return reply


class TestUpstream:
    """An HTTP/1.1 server on 127.0.0.1 whose answers a test scripts with `behaviour`."""

    __test__ = False  # not a pytest class

    def __init__(self, name: str, behaviour: Behaviour | None = None):
        self.name = name
        self.behaviour = behaviour or default_behaviour(name)
        self.requests: list[Request] = []
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self, port: int = 0) -> TestUpstream:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _UpstreamProtocol(self), "127.0.0.1", port,
                                               reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


# --------------------------------------------------------------------------- configs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster(name: str, *ports: int, **kw: Any) -> dict[str, Any]:
    return {"name": name, "endpoints": [{"host": "127.0.0.1", "port": p} for p in ports], **kw}


def route(name: str, *targets: tuple[str, int] | str, matches: list[dict[str, Any]] | None = None,
          **kw: Any) -> dict[str, Any]:
    clusters = [{"cluster": t, "weight": 10_000} if isinstance(t, str) else {"cluster": t[0], "weight": t[1]}
                for t in targets]
    out: dict[str, Any] = {"name": name, "matches": matches or [], "timeout_ms": None, **kw}
    if clusters:
        out["clusters"] = clusters
    return out


def sidecar(outbound_routes: list[dict[str, Any]] | None = None, clusters: list[dict[str, Any]] | None = None,
            inbound: list[dict[str, Any]] | None = None, **kw: Any) -> C.SidecarConfig:
    """A sidecar with (optionally) one outbound HTTP listener named `out` on a free port."""
    data: dict[str, Any] = {
        "mesh": "test", "service": "client", "identity": "spiffe://cluster.local/ns/default/sa/client",
        "observability": {"access_log": "off"}, "clusters": clusters or [], "inbound": inbound or [],
        "outbound": [], **kw}
    if outbound_routes is not None:
        data["outbound"] = [{"name": "out", "port": free_port(), "callee": "api", "callee_port": 80,
                             "routes": outbound_routes}]
    return C.SidecarConfig.model_validate(data)


def free_port_block(n: int) -> int:
    """The first of `n` consecutive ports that are free right now (for `base_port`)."""
    for _ in range(200):
        base = free_port()
        if base + n >= 65000:
            continue
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError(f"no block of {n} free ports")
