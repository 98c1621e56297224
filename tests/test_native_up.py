"""`meshc up` end to end: compile bookinfo, run every sidecar with demo upstreams, reach it through
the ingress gateway and a caller's sidecar (mTLS inside), and stop cleanly on Ctrl-C. Also the
upstream mTLS check: a callee presenting another SPIFFE id than the expected one is refused."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshc.certs import write_certs
from meshc.compiler import load_text
from meshc.runtime import config as C
from meshc.runtime.server import Sidecar
from meshc.runtime.testing import LoopThread, TestUpstream, free_port, free_port_block

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    out = r.status, r.read()
    c.close()
    return out


def test_meshc_up_bookinfo(tmp_path: Path) -> None:
    base = free_port_block(40)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from meshc.cli import main; sys.exit(main(sys.argv[1:]))", "up",
         str(ROOT / "examples/bookinfo/bookinfo.mesh"), "--out", str(out), "--base-port", str(base),
         "--no-demo", "--access-log", str(tmp_path / "access.log")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The table is printed once every sidecar serves.
        assert proc.stdout is not None
        table = ""
        while "metrics   reviews" not in table:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            table += line
        index = C.load_index(out / "mesh.json")
        ingress = next(e for e in index.sidecars if e.service == "_ingress").outbound[0].port
        pp = next(e for e in index.sidecars if e.service == "productpage")
        reviews_port = next(x.port for x in pp.outbound if x.callee == "reviews")
        status, _ = _get(ingress, "/productpage")
        assert status == 503  # no application runs on productpage's endpoint (--no-demo)
        assert _get(ingress, "/nope")[0] == 404
        assert _get(reviews_port, "/", {"end-user": "jason"})[0] == 503
    finally:
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    stdout = table + stdout
    assert "outbound  productpage  outbound|9080||reviews" in stdout
    assert "/metrics" in stdout
    assert "draining" in stderr


def test_meshc_up_starts_demo_upstreams(tmp_path: Path) -> None:
    text = """
mesh demo { mtls strict  authz deny_by_default }
service web { port http 8080  calls api }
service api {
  port http 9080
  version v1 { labels version=v1 }
  version v2 { labels version=v2 }
  route { when header x-canary present -> v2  otherwise -> v1 }
}
allow web -> api
"""
    mesh_file = tmp_path / "demo.mesh"
    mesh_file.write_text(text)
    base = free_port_block(10)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from meshc.cli import main; sys.exit(main(sys.argv[1:]))", "up",
         str(mesh_file), "--out", str(out), "--base-port", str(base)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                index = C.load_index(out / "mesh.json")
                port = next(x.port for e in index.sidecars if e.service == "web" for x in e.outbound)
                status, body = _get(port, "/hello", {"x-canary": "1"})
                break
            except (OSError, C.ConfigError, StopIteration):
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert status == 200
        seen = json.loads(body)
        assert (seen["service"], seen["version"], seen["path"]) == ("api", "v2", "/hello")
        assert seen["headers"]["x-forwarded-client-cert"].endswith("URI=spiffe://cluster.local/ns/default/sa/web")
        assert json.loads(_get(port, "/")[1])["version"] == "v1"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_upstream_spiffe_mismatch_is_refused(tmp_path: Path) -> None:
    mesh = load_text("""
mesh m { mtls strict  authz allow_by_default }
service web { port http 8080  endpoints 127.0.0.1:1  calls api }
service api { port http 9080  endpoints 127.0.0.1:2 }
service impostor { port http 9090  endpoints 127.0.0.1:3 }
""")
    certs = tmp_path / "certs"
    write_certs(mesh, certs)
    lt = LoopThread()
    app = TestUpstream("app")
    lt.run(app.start())
    inbound_port, out_port, out2_port = free_port(), free_port(), free_port()
    tls_in = {"mode": "strict", "ca": f"{certs}/ca.pem", "cert": f"{certs}/default.impostor.pem",
              "key": f"{certs}/default.impostor-key.pem"}
    tls_out = {"mode": "mtls", "ca": f"{certs}/ca.pem", "cert": f"{certs}/default.web.pem",
               "key": f"{certs}/default.web-key.pem"}
    cfg = C.SidecarConfig.model_validate({
        "mesh": "m", "service": "web", "identity": "spiffe://cluster.local/ns/default/sa/web",
        "observability": {"access_log": "off"},
        "inbound": [{"name": "in", "port": inbound_port, "service_port": 9090, "tls": tls_in,
                     "app": {"host": "127.0.0.1", "port": app.port}, "authz": {"default": "allow"}}],
        "outbound": [
            {"name": "expects-api", "port": out_port, "callee": "api", "callee_port": 9080,
             "routes": [{"name": "r", "clusters": [{"cluster": "API", "weight": 10000}], "timeout_ms": None}]},
            {"name": "expects-impostor", "port": out2_port, "callee": "impostor", "callee_port": 9090,
             "routes": [{"name": "r", "clusters": [{"cluster": "IMP", "weight": 10000}], "timeout_ms": None}]}],
        "clusters": [
            {"name": "API", "endpoints": [{"host": "127.0.0.1", "port": inbound_port}],
             "tls": {**tls_out, "expected_spiffe": ["spiffe://cluster.local/ns/default/sa/api"]}},
            {"name": "IMP", "endpoints": [{"host": "127.0.0.1", "port": inbound_port}],
             "tls": {**tls_out, "expected_spiffe": ["spiffe://cluster.local/ns/default/sa/impostor"]}}]})
    sc = Sidecar(cfg)
    try:
        lt.run(sc.start())
        assert _get(out_port, "/")[0] == 503  # the peer proved another identity
        assert _get(out2_port, "/")[0] == 200
        assert len(app.requests) == 1  # only the call that reached the expected identity
    finally:
        lt.run(sc.close())
        lt.call(app.close)
        lt.stop()


def test_health_checks_skip_authorization_but_requests_do_not(tmp_path: Path) -> None:
    """Under deny_by_default with a narrow allow rule, the callers' health checks still reach the
    app (as on Envoy, whose health checks never pass the callee's RBAC); requests do not."""
    lt = LoopThread()
    app = TestUpstream("app", lambda r: (200, [], b"ok") if r.path == "/healthz" else (200, [], b"app"))
    lt.run(app.start())
    base = free_port_block(8)
    text = f"""
mesh h {{ mtls strict  authz deny_by_default }}
service web {{ port http 8080  endpoints 127.0.0.1:1  calls api }}
service api {{
  port http 9080
  endpoints 127.0.0.1:{app.port}
  health_check http "/healthz" interval 100ms probe_timeout 1s unhealthy 1 healthy 1
}}
allow web -> api paths prefix "/api"
"""
    from meshc.backends import compile_mesh

    mesh = load_text(text)
    out = tmp_path / "out"
    compile_mesh(mesh, "native", options={"base_port": str(base)}).write(out)
    write_certs(mesh, out / "certs")
    sidecars = [Sidecar(C.load_sidecar(out / f"{n}.json"), path=out / f"{n}.json") for n in ("api", "web")]
    try:
        for sc in sidecars:
            lt.run(sc.start())
        web = sidecars[1]
        port = next(x.port for x in web.cfg.outbound)
        deadline = time.monotonic() + 5
        while not all(e.healthy for e in web.clusters["outbound|9080||api"].endpoints):
            assert time.monotonic() < deadline, "health checks never passed"
            time.sleep(0.05)
        assert any(r.path == "/healthz" for r in app.requests)
        assert _get(port, "/api/x")[0] == 200
        assert _get(port, "/healthz")[0] == 403  # the marker is the sidecar's, never the app's
        assert _get(port, "/healthz", {"x-meshc-health-check": "1"})[0] == 403
    finally:
        for sc in sidecars:
            lt.run(sc.close())
        lt.call(app.close)
        lt.stop()
