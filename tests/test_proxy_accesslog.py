"""The native proxy's JSON access-log line: fields, order and escaping of the cached pieces."""

from __future__ import annotations

import json
from pathlib import Path

from meshc.runtime.http import _PLAIN_CONNECTION, connection_tokens
from meshc.runtime.observability import AccessLog


def test_json_line_fields_in_order_and_escaped(tmp_path: Path) -> None:
    log = AccessLog("json", str(tmp_path / "a.log"))
    prefix = log.json_prefix("api", 'inbound "x"')
    for _ in range(2):  # the second line comes from the remembered pieces
        log.log_json_line(prefix, "GET", '/p?"q"', "HTTP/1.1", 200, "1.5", 3, 4,
                          log.json_tail("authz:r\\1", "api|app", "127.0.0.1:8080", "-", "10.0.0.\u00e91"),
                          "ab" * 16, '"id-1"')
    log.log_json_line(prefix, "POST", "/", "HTTP/1.0", 503, "0.0", 0, 0,
                      log.json_tail("r", "c", "u", "spiffe://x/y", "::1"), "", '"-"')
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "a.log").read_text().splitlines()]
    assert len(lines) == 3 and lines[0] == lines[1] | {"start": lines[0]["start"]}
    assert list(lines[0]) == ["start", "sidecar", "listener", "method", "path", "protocol", "status", "duration_ms",
                              "bytes_received", "bytes_sent", "route", "cluster", "upstream", "peer", "client",
                              "trace_id", "request_id"]
    assert lines[0]["listener"] == 'inbound "x"' and lines[0]["path"] == '/p?"q"'
    assert lines[0]["route"] == "authz:r\\1" and lines[0]["client"] == "10.0.0.\u00e91"
    assert lines[0]["duration_ms"] == 1.5 and lines[0]["request_id"] == "id-1"
    assert (lines[2]["method"], lines[2]["status"], lines[2]["peer"], lines[2]["client"]) == \
        ("POST", 503, "spiffe://x/y", "::1")


def test_tail_cache_is_bounded(tmp_path: Path) -> None:
    log = AccessLog("json", str(tmp_path / "a.log"))
    for i in range(5000):
        log.json_tail("r", "c", "u", "-", f"10.0.{i // 256}.{i % 256}")
    assert len(log._tails) <= 4096
    log.close()


def test_plain_connection_values_name_no_header() -> None:
    # forward_response skips connection_tokens for these: they must name nothing.
    assert all(connection_tokens(v) == frozenset() for v in _PLAIN_CONNECTION)


def test_busy_log_writes_batches_before_the_timer(tmp_path: Path) -> None:
    import asyncio

    from meshc.runtime.observability import FLUSH_LINES

    path = tmp_path / "a.log"

    async def run() -> tuple[int, int]:
        log = AccessLog("json", str(path))
        prefix = log.json_prefix("api", "in")
        tail = log.json_tail("r", "c", "u", "-", "127.0.0.1")
        for i in range(FLUSH_LINES + 10):
            log.log_json_line(prefix, "GET", f"/{i}", "HTTP/1.1", 200, "0.1", 0, 0, tail, "", '"-"')
        early = len(path.read_text().splitlines())  # before the 200 ms timer
        await asyncio.sleep(0.3)
        late = len(path.read_text().splitlines())
        log.close()
        return early, late

    early, late = asyncio.run(run())
    assert early == FLUSH_LINES and late == FLUSH_LINES + 10
    paths = [json.loads(x)["path"] for x in path.read_text().splitlines()]
    assert paths == [f"/{i}" for i in range(FLUSH_LINES + 10)]  # in order, none lost or repeated
