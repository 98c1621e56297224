"""`meshc stat` / `meshc top`: golden signals from real sidecar metrics.

The end-to-end test runs `meshc up` (native sidecars, demo upstreams, loopback), sends a known
amount of traffic including injected 503s, and checks `meshc stat --once --format json`
reports exactly those counts per service and per edge."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from meshc.cli import main
from meshc.observe import (
    Frame,
    Scrape,
    Signals,
    Target,
    parse_admin,
    parse_frame,
    quantile,
    render_table,
    report,
)
from meshc.runtime import config as C
from meshc.runtime.observability import Metrics
from meshc.runtime.testing import free_port, free_port_block

MESH = """
mesh obs { mtls disabled  authz allow_by_default }
service web { port http 8080  calls api  expose ingress on port 80 }
service api {
  port http 9080
  version v1 { labels version=v1 }
  version v2 { labels version=v2 }
  route { when header x-canary present -> v2  otherwise -> v1 }
  fault when header x-fail present abort 503 100%
}
"""


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    r.read()
    c.close()
    return r.status


# --------------------------------------------------------------------------- units


def test_quantile_matches_histogram_quantile() -> None:
    inf = float("inf")
    b = {0.1: 50.0, 0.25: 90.0, 0.5: 100.0, inf: 100.0}
    assert quantile(0.5, b) == pytest.approx(0.1)
    assert quantile(0.7, b) == pytest.approx(0.1 + 0.15 * 20 / 40)
    assert quantile(0.99, b) == pytest.approx(0.25 + 0.25 * 9 / 10)
    assert quantile(0.5, {0.1: 0.0, inf: 0.0}) is None
    assert quantile(0.99, {0.1: 1.0, inf: 10.0}) == 0.1  # in the +Inf bucket: highest finite bound


def test_signals_from_real_native_exposition() -> None:
    m = Metrics()
    for status, n in ((200, 6), (503, 2)):
        for _ in range(n):
            m.observe_request("api", "inbound|9080|v1|0", "authz:default", "inbound|9080|v1|0|app", status, 0.003)
    for _ in range(4):
        m.observe_request("web", "outbound|9080||api", "api|1", "outbound|9080|v1|api", 200, 0.02)
    m.observe_request("_ingress", "ingress|80", "ingress|web", "outbound|8080||web", 500, 0.2)
    text = generate_latest(m.registry).decode()
    frame = parse_frame([Scrape(Target("x", "127.0.0.1", 1), text)])
    api = frame.services[("api",)]
    assert (api.requests, api.errors) == (8, 2)
    assert (frame.edges[("web", "api")].requests, frame.edges[("_ingress", "web")].errors) == (4, 1)
    assert frame.routes[("web", "api", "api|1")].requests == 4
    doc = report(frame, None, [Target("x", "127.0.0.1", 1)], "m")
    row = doc["services"][0]
    assert row["service"] == "api" and row["success_rate"] == 0.75 and row["rps"] is None
    assert 2.5 <= row["latency_ms"]["p50"] <= 5.0  # inside the (2.5 ms, 5 ms] bucket


def test_envoy_exposition() -> None:
    text = "\n".join([
        "# TYPE envoy_http_downstream_rq_xx counter",
        'envoy_http_downstream_rq_xx{envoy_response_code_class="2",envoy_http_conn_manager_prefix="inbound_9080"} 9',
        'envoy_http_downstream_rq_xx{envoy_response_code_class="5",envoy_http_conn_manager_prefix="inbound_9080"} 1',
        'envoy_http_downstream_rq_xx{envoy_response_code_class="4",envoy_http_conn_manager_prefix="admin"} 7',
        "# TYPE envoy_cluster_upstream_rq_xx counter",
        'envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="outbound|9080|v1|reviews"} 3',
        'envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="inbound|9080|"} 10',
        "# TYPE envoy_cluster_upstream_rq_time histogram",
        'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="outbound|9080|v1|reviews",le="10"} 2',
        'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="outbound|9080|v1|reviews",le="25"} 3',
        'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="outbound|9080|v1|reviews",le="+Inf"} 3',
        'envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="outbound|9080|v1|reviews"} 30',
        'envoy_cluster_upstream_rq_time_count{envoy_cluster_name="outbound|9080|v1|reviews"} 3', ""])
    frame = parse_frame([Scrape(Target("productpage", "h", 1), text)])
    svc = frame.services[("productpage",)]
    assert (svc.requests, svc.errors) == (10, 1)
    edge = frame.edges[("productpage", "reviews")]
    assert edge.requests == 3
    assert quantile(0.5, edge.buckets) == pytest.approx(0.0075)  # ms buckets read as seconds


def test_rate_over_the_interval() -> None:
    before = Frame(services={("a",): Signals(10, 1)}, at=100.0)
    after = Frame(services={("a",): Signals(30, 1)}, at=102.0)
    row = report(after, before, [], None)["services"][0]
    assert (row["rps"], row["window_success_rate"], row["success_rate"]) == (10.0, 1.0, round(29 / 30, 6))
    assert "a " in render_table(report(after, before, [], None), "stat")


def test_parse_admin() -> None:
    assert parse_admin("web=127.0.0.1:15000") == Target("web", "127.0.0.1", 15000)
    assert parse_admin("127.0.0.1:15000") == Target("127.0.0.1:15000", "127.0.0.1", 15000)
    with pytest.raises(ValueError):
        parse_admin("nope")


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stat", "--once"]) == 2
    assert "give .mesh files" in capsys.readouterr().err
    assert main(["stat", "--once", "--admin", "bad"]) == 2
    port = free_port()  # nothing listens there
    assert main(["stat", "--once", "--interval", "0.05", "--admin", f"127.0.0.1:{port}"]) == 1
    assert "no sidecar reachable" in capsys.readouterr().err


# --------------------------------------------------------------------------- a running mesh


@pytest.mark.e2e
def test_stat_counts_match_traffic_on_a_running_mesh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mesh_file = tmp_path / "obs.mesh"
    mesh_file.write_text(MESH)
    base = free_port_block(12)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from meshc.cli import main; sys.exit(main(sys.argv[1:]))", "up",
         str(mesh_file), "--out", str(out), "--base-port", str(base), "--access-log", str(tmp_path / "access.log")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                index = C.load_index(out / "mesh.json")
                to_api = next(x.port for e in index.sidecars if e.service == "web" for x in e.outbound)
                ingress = next(e for e in index.sidecars if e.service == "_ingress").outbound[0].port
                if _get(ingress, "/warmup") == 200:
                    break
            except (OSError, C.ConfigError, StopIteration):
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "meshc up did not come up in 30 s"
            time.sleep(0.2)
        statuses = [_get(ingress, "/x") for _ in range(11)]
        statuses += [_get(to_api, "/y") for _ in range(7)]
        statuses += [_get(to_api, "/y", {"x-fail": "1"}) for _ in range(4)]
        assert statuses == [200] * 18 + [503] * 4
        capsys.readouterr()
        assert main(["stat", "--once", "--format", "json", "--interval", "0.2", "--index", str(out)]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["mesh"] == "obs" and all(s["up"] for s in doc["sidecars"])
        services = {r["service"]: r for r in doc["services"]}
        edges = {(r["src"], r["dst"]): r for r in doc["edges"]}
        # web's inbound sees the warm-up request and the 11 through the ingress.
        assert (services["web"]["requests"], services["web"]["errors"]) == (12, 0)
        assert (services["api"]["requests"], services["api"]["errors"]) == (11, 4)  # faults abort on api's side
        assert (edges[("_ingress", "web")]["requests"], edges[("_ingress", "web")]["success_rate"]) == (12, 1.0)
        assert (edges[("web", "api")]["requests"], edges[("web", "api")]["errors"]) == (11, 4)
        assert services["api"]["success_rate"] == round(7 / 11, 6)
        assert services["api"]["latency_ms"]["p99"] is not None
        # The same mesh, found from its source and base port; `top` lists its routes.
        assert main(["top", str(mesh_file), "--base-port", str(base), "--once", "--interval", "0.1",
                     "--format", "json"]) == 0
        routes = {(r["src"], r["dst"], r["route"]): r["requests"] for r in json.loads(capsys.readouterr().out)["routes"]}
        assert routes == {("_ingress", "web", "ingress|web"): 12, ("web", "api", "api|1"): 11}
        assert main(["stat", "--once", "--interval", "0.1", "--index", str(out / "mesh.json")]) == 0
        table = capsys.readouterr().out
        assert "63.64%" in table and "FROM" in table
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_refreshing_frames_report_rates(capsys: pytest.CaptureFixture[str]) -> None:
    """Two frames from a live prometheus_client exporter: the second sees the new requests."""
    import threading

    from prometheus_client import start_http_server

    m = Metrics()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=m.registry)
    stop = threading.Event()

    def traffic() -> None:
        for _ in range(400):  # bounded: at most ~4 s
            if stop.wait(0.01):
                return
            m.observe_request("web", "outbound|9080||api", "api|0", "outbound|9080||api", 200, 0.004)

    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        assert main(["top", "--admin", f"web=127.0.0.1:{port}", "--count", "2", "--interval", "0.3",
                     "--format", "json"]) == 0
        text = capsys.readouterr().out
    finally:
        stop.set()
        t.join(timeout=5)
        server.shutdown()
    docs, pos, dec = [], 0, json.JSONDecoder()
    while text[pos:].strip():
        doc, pos = dec.raw_decode(text, pos + len(text[pos:]) - len(text[pos:].lstrip()))
        docs.append(doc)
    assert len(docs) == 2
    first, second = (d["routes"][0] for d in docs)
    assert first["rps"] > 0 and second["requests"] > first["requests"]
    assert second["latency_ms"]["p50"] == pytest.approx(3.75, abs=1.3)  # in the (2.5, 5] ms bucket
