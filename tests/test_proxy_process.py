"""The native proxy as an operator runs it: `meshc proxy --config FILE` in its own process.

- a 200 MB upload and a 200 MB download stream through in bounded memory (the proxy's peak
  RSS, read from /proc, grows by far less than the body);
- hot reload: rewriting the config file (or SIGHUP) under load changes routing with no failed
  request, and a broken config is reported while the old one keeps serving;
- SIGTERM drains: a request in flight completes, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshc.runtime.testing import LoopThread, Request, TestUpstream, cluster, free_port, route, sidecar

pytestmark = pytest.mark.e2e

BODY = 200 * 1024 * 1024
CHUNK = 1024 * 1024


@pytest.fixture(scope="module")
def lt() -> Iterator[LoopThread]:
    t = LoopThread()
    yield t
    t.stop()


class Proxy:
    def __init__(self, cfg: Any, tmp: Path):
        self.path = tmp / "sidecar.json"
        self.write(cfg)
        self.admin = free_port()
        self.port = cfg.outbound[0].port
        self.err = open(tmp / "proxy.err", "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "meshc.runtime.commands", "proxy", "--config",
                                      str(self.path), "--admin-port", str(self.admin)],
                                     stdout=subprocess.DEVNULL, stderr=self.err)
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                assert self.proc.poll() is None, self.stderr()
                assert time.monotonic() < deadline, self.stderr()
                time.sleep(0.05)

    def write(self, cfg: Any) -> None:
        data = cfg if isinstance(cfg, bytes) else cfg.model_dump_json(indent=2).encode()
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.path)

    def stderr(self) -> str:
        self.err.flush()
        return self.err.name and Path(self.err.name).read_text(errors="replace")

    def peak_rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.err.close()


@pytest.fixture
def proxies() -> Iterator[list[Proxy]]:
    out: list[Proxy] = []
    yield out
    for p in out:
        p.stop()


# =========================================================================== streaming


async def _source_server() -> tuple[asyncio.AbstractServer, int]:
    """Answers any request with a BODY-byte response, written as fast as the reader drains."""
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % BODY)
        block = b"x" * CHUNK
        for _ in range(BODY // CHUNK):
            w.write(block)
            await w.drain()
        await w.drain()
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, int(srv.sockets[0].getsockname()[1])


def test_large_bodies_stream_in_bounded_memory(lt: LoopThread, tmp_path: Path, proxies: list[Proxy]) -> None:
    sink = TestUpstream("sink", lambda r: (200, [], str(r.body_bytes).encode()))
    lt.run(sink.start())
    src, src_port = lt.run(_source_server())
    try:
        cfg = sidecar([route("down", "SRC", matches=[{"path": {"kind": "exact", "value": "/download"}}]),
                       route("up", "SINK", timeout_ms=60_000)],
                      [cluster("SINK", sink.port), cluster("SRC", src_port)])
        proxy = Proxy(cfg, tmp_path)
        proxies.append(proxy)
        base = proxy.peak_rss_kb()
        # Upload: the request body streams to the upstream.
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as s:
            s.sendall(b"POST /upload HTTP/1.1\r\nhost: api\r\ncontent-length: %d\r\n\r\n" % BODY)
            block = b"y" * CHUNK
            for _ in range(BODY // CHUNK):
                s.sendall(block)
            resp = s.recv(4096)
        assert resp.startswith(b"HTTP/1.1 200") and resp.endswith(str(BODY).encode()), resp
        # Download: the response body streams back (read slowly at first: backpressure).
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as s:
            s.sendall(b"GET /download HTTP/1.1\r\nhost: api\r\n\r\n")
            time.sleep(0.5)
            got = 0
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(65536)
            got = len(head.split(b"\r\n\r\n", 1)[1])
            while got < BODY:
                chunk = s.recv(1 << 20)
                assert chunk
                got += len(chunk)
        assert got == BODY
        growth_mb = (proxy.peak_rss_kb() - base) / 1024
        print(f"peak RSS {base >> 10} MB -> {proxy.peak_rss_kb() >> 10} MB")
        assert growth_mb < 40, f"proxy peak RSS grew by {growth_mb:.0f} MB for 2 x {BODY >> 20} MB bodies"
    finally:
        lt.call(sink.close)
        lt.call(src.close)


# =========================================================================== hot reload


def _load(port: int, stop: threading.Event, results: list[tuple[int, str]]) -> None:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    while not stop.is_set():
        try:
            c.request("GET", "/")
            r = c.getresponse()
            r.read()
            results.append((r.status, r.getheader("x-upstream") or ""))
        except (OSError, http.client.HTTPException) as e:
            results.append((0, repr(e)))
            c.close()
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.close()


def _wait_for(results: list[tuple[int, str]], upstream: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if results and results[-1][1] == upstream:
            return
        time.sleep(0.05)
    raise AssertionError(f"never routed to {upstream}: {results[-3:]}")


def test_hot_reload_without_failed_requests(lt: LoopThread, tmp_path: Path, proxies: list[Proxy]) -> None:
    a, b = TestUpstream("a"), TestUpstream("b")
    lt.run(a.start())
    lt.run(b.start())
    try:
        clusters = [cluster("A", a.port), cluster("B", b.port)]
        cfg_a = sidecar([route("r", "A")], clusters)
        proxy = Proxy(cfg_a, tmp_path)
        proxies.append(proxy)
        out = cfg_a.outbound[0]
        cfg_b = cfg_a.model_copy(update={"outbound": (out.model_copy(update={"routes": (
            type(out.routes[0]).model_validate(route("r", "B")),)}),)})
        stop, results = threading.Event(), []
        t = threading.Thread(target=_load, args=(proxy.port, stop, results), daemon=True)
        t.start()
        try:
            _wait_for(results, "a")
            proxy.write(cfg_b)  # file watcher
            _wait_for(results, "b")
            proxy.write(b'{"mesh": "broken"')  # a bad config: reported, old one keeps serving
            time.sleep(1.2)
            assert results[-1] == (200, "b")
            proxy.path.write_bytes(cfg_a.model_dump_json().encode())
            time.sleep(0.1)
            os.kill(proxy.proc.pid, signal.SIGHUP)  # and by signal
            _wait_for(results, "a")
        finally:
            stop.set()
            t.join(10)
        assert len(results) > 50
        failed = [r for r in results if r[0] != 200]
        assert not failed, failed[:5]
        assert "keeping the previous config" in proxy.stderr()
    finally:
        lt.call(a.close)
        lt.call(b.close)


# =========================================================================== drain


def test_sigterm_drains_in_flight_requests(lt: LoopThread, tmp_path: Path, proxies: list[Proxy]) -> None:
    async def slow(req: Request) -> Any:
        await asyncio.sleep(0.8)
        return 200, [], b"finished"
    up = TestUpstream("slow", slow)
    lt.run(up.start())
    try:
        proxy = Proxy(sidecar([route("r", "A")], [cluster("A", up.port)]), tmp_path)
        proxies.append(proxy)
        result: dict[str, Any] = {}

        def call() -> None:
            c = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
            c.request("GET", "/")
            r = c.getresponse()
            result["status"], result["body"], result["conn"] = r.status, r.read(), r.getheader("connection")
        t = threading.Thread(target=call)
        t.start()
        time.sleep(0.3)
        proxy.proc.send_signal(signal.SIGTERM)
        t.join(10)
        assert result == {"status": 200, "body": b"finished", "conn": "close"}
        assert proxy.proc.wait(10) == 0
    finally:
        lt.call(up.close)


def test_bad_config_at_start_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"mesh": "m", "service": "s", "identity": "x", "outbound": [
        {"name": "o", "port": 1, "callee": "c", "callee_port": 80,
         "routes": [{"name": "r", "clusters": [{"cluster": "missing", "weight": 10000}], "timeout_ms": None}]}]}))
    proc = subprocess.run([sys.executable, "-m", "meshc.runtime.commands", "proxy", "--config", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "unknown cluster 'missing'" in proc.stderr and "Traceback" not in proc.stderr
