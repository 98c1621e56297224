"""End to end: `meshc up` runs a mesh on loopback, a real Prometheus (Debian package) scrapes it
with the generated scrape config and rules (1 s intervals via backend options), traffic flows,
then faults are injected, and Prometheus' HTTP API shows the recorded success rate dropping and
the fast-burn page alert going pending/firing. Bounded: about 30 s, hard limits below."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from meshc.backends import compile_mesh

from meshc.compiler import load_text
from meshc.runtime import config as C
from meshc.runtime.testing import free_port, free_port_block

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(shutil.which("prometheus") is None,
                                 reason="prometheus not installed (Debian package `prometheus`)")]

MESH = """
mesh slo { mtls disabled  authz allow_by_default }
service web { port http 8080  calls api }
service api {
  port http 9080
  fault when header x-fail present abort 503 100%
  objective availability 99.9% over 30d
}
"""


def _get(port: int, headers: dict[str, str]) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/", headers=headers)
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def _query(port: int, q: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]  # type: ignore[no-any-return]


def _wait(what: str, cond: Callable[[], Any], seconds: float, procs: list[subprocess.Popen[str]]) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        try:
            got = cond()
            if got:
                return got
        except (OSError, ValueError, KeyError, StopIteration, C.ConfigError):
            pass
        for p in procs:
            assert p.poll() is None, f"{p.args[0]} exited: {p.stderr.read() if p.stderr else ''}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def test_prometheus_sees_faults_and_fast_burn_alert(tmp_path: Path) -> None:
    mesh_file = tmp_path / "slo.mesh"
    mesh_file.write_text(MESH)
    base = free_port_block(12)
    bundle = compile_mesh(load_text(MESH, str(mesh_file)), "prometheus", options={
        "base_port": str(base), "scrape_interval": "1s", "evaluation_interval": "1s", "page_for": "1m"})
    bundle.write(tmp_path / "prom")
    prom_port = free_port()
    up = subprocess.Popen(
        [sys.executable, "-c", "import sys; from meshc.cli import main; sys.exit(main(sys.argv[1:]))", "up",
         str(mesh_file), "--out", str(tmp_path / "out"), "--base-port", str(base),
         "--access-log", str(tmp_path / "access.log")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prom/prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
         "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    procs = [up, prom]
    stop = threading.Event()
    failing = threading.Event()
    sent = {"ok": 0, "fail": 0}

    def traffic(port: int) -> None:
        # Bounded: at most 3000 requests, about 100 per second.
        for _ in range(3000):
            if stop.is_set():
                return
            bad = failing.is_set()
            _get(port, {"x-fail": "1"} if bad else {})
            sent["fail" if bad else "ok"] += 1
            time.sleep(0.01)

    thread: threading.Thread | None = None
    try:
        index = _wait("meshc up", lambda: C.load_index(tmp_path / "out/mesh.json"), 30, procs)
        to_api = next(x.port for e in index.sidecars if e.service == "web" for x in e.outbound)
        _wait("the mesh to serve", lambda: _get(to_api, {}) == 200, 30, procs)
        thread = threading.Thread(target=traffic, args=(to_api,), daemon=True)
        thread.start()
        _wait("every target up", lambda: len(_query(prom_port, 'up{job="meshc-slo-native"} == 1')) == len(index.sidecars),
              30, procs)
        ok = _wait("a healthy success rate",
                   lambda: _query(prom_port, 'meshc:service:success_ratio5m{service="api"} == 1'), 20, procs)
        assert ok[0]["metric"]["mesh"] == "slo"
        assert not _query(prom_port, 'ALERTS{alertname="MeshcSLOBurnRatePage1h"}')
        failing.set()  # from now on every request is aborted with 503 by api's sidecar
        dropped = _wait("the success rate to drop",
                        lambda: _query(prom_port, 'meshc:service:success_ratio5m{service="api"} < 0.9'), 20, procs)
        assert float(dropped[0]["value"][1]) < 0.9
        # The caller's view comes from another scrape target (web's sidecar): it may lag a
        # scrape and an evaluation behind the callee's.
        edge = _wait("the caller's view of the edge to drop", lambda: _query(
            prom_port, 'meshc:edge:success_ratio5m{src_service="web",dst_service="api"} < 1'), 20, procs)
        assert float(edge[0]["value"][1]) < 1
        alert = _wait("the fast-burn alert",
                      lambda: _query(prom_port, 'ALERTS{alertname="MeshcSLOBurnRatePage1h",service="api"}'),
                      20, procs)
        labels = alert[0]["metric"]
        assert labels["alertstate"] in ("pending", "firing")
        assert (labels["severity"], labels["slo"], labels["burn_rate"]) == ("page", "availability-99.9-30d", "14.4")
        budget = _query(prom_port, 'meshc:slo:error_budget_remaining_ratio{service="api"}')
        assert budget and float(budget[0]["value"][1]) < 1
        assert sent["fail"] > 0 and sent["ok"] > 0
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=10)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
