"""Soak (bounded): concurrent traffic through `meshc proxy` to an upstream that randomly answers,
fails with 5xx, resets, stalls, sends garbage or breaks off its body. The proxy stays up, every
response has an expected status, and its open file descriptors and memory return to their
baseline afterwards."""

from __future__ import annotations

import asyncio
import http.client
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshc.runtime.testing import LoopThread, Request, TestUpstream, cluster, route, sidecar

pytestmark = pytest.mark.e2e

SOAK_SECONDS = float(os.environ.get("MESHC_SOAK_SECONDS", "6"))
CLIENTS = 12


@pytest.fixture(scope="module")
def lt() -> Iterator[LoopThread]:
    t = LoopThread()
    yield t
    t.stop()


def chaos(rng: random.Random) -> Any:
    async def behaviour(req: Request) -> Any:
        x = rng.random()
        if x < 0.45:
            return 200, [], b"ok"
        if x < 0.60:
            return 503, [], b"unavailable"
        if x < 0.72:
            return None  # reset before answering
        if x < 0.80:
            await asyncio.sleep(2)  # stall past the route timeout
            return 200, [], b"late"
        if x < 0.90:
            return b"\x00\x01garbage\r\n\r\n"
        return ("close", b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\ncut")
    return behaviour


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_soak_with_a_chaotic_upstream(lt: LoopThread, tmp_path: Path) -> None:
    from test_proxy_process import Proxy  # the subprocess helper

    up = TestUpstream("chaos", chaos(random.Random(7)))
    lt.run(up.start())
    cfg = sidecar([route("r", "A", timeout_ms=500,
                         retry={"num_retries": 1, "on": ["5xx"], "per_try_timeout_ms": 300, "backoff_base_ms": 5})],
                  [cluster("A", up.port, outlier={"consecutive_5xx": 1000})],
                  limits={"upstream_idle_timeout_ms": 500, "idle_timeout_ms": 1000})
    proxy = Proxy(cfg, tmp_path)
    try:
        time.sleep(0.3)
        base_fds, base_rss = fds(proxy.proc.pid), rss_kb(proxy.proc.pid)
        seen: Counter[Any] = Counter()
        lock = threading.Lock()
        deadline = time.monotonic() + SOAK_SECONDS

        def client() -> None:
            c = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
            while time.monotonic() < deadline:
                try:
                    c.request("POST" if random.random() < 0.3 else "GET", "/", body=b"x" * 100)
                    r = c.getresponse()
                    r.read()
                    outcome: Any = r.status
                    if r.getheader("connection", "").lower() == "close":
                        c.close()
                except (OSError, http.client.HTTPException):
                    outcome = "reset"  # an upstream that broke off its body resets the client
                    c.close()
                with lock:
                    seen[outcome] += 1
            c.close()
        threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(SOAK_SECONDS + 15)
        print("soak outcomes:", dict(seen))
        assert proxy.proc.poll() is None, proxy.stderr()
        assert set(seen) <= {200, 502, 503, 504, "reset"}, seen
        assert seen[200] > 50 and sum(seen.values()) > 200, seen
        assert "Traceback" not in proxy.stderr()
        # Baseline again once idle connections have timed out.
        deadline = time.monotonic() + 10
        while fds(proxy.proc.pid) > base_fds and time.monotonic() < deadline:
            time.sleep(0.2)
        assert fds(proxy.proc.pid) <= base_fds, (fds(proxy.proc.pid), base_fds)
        assert rss_kb(proxy.proc.pid) - base_rss < 30_000
    finally:
        proxy.stop()
        lt.call(up.close)
