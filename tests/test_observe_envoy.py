"""`meshc stat` and the prometheus target against real Envoy sidecars compiled by the envoy
backend: the counts match the traffic sent, and every Envoy metric (and `le` bound) the
generated rules read is one Envoy really exposes on /stats/prometheus."""

from __future__ import annotations

import http.client
import http.server
import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from meshc.backends import compile_mesh
from prometheus_client.parser import text_string_to_metric_families

from meshc.cli import main
from meshc.compiler import load_text
from meshc.runtime.testing import free_port, free_port_block

ENVOY = shutil.which("envoy")
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(ENVOY is None, reason="envoy not installed")]


class _App(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = b"ok"
        self.send_response(500 if self.path.startswith("/fail") else 200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def _get(port: int, path: str) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def test_stat_and_rules_on_real_envoy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    apps = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _App) for _ in range(2)]
    for a in apps:
        threading.Thread(target=a.serve_forever, daemon=True).start()
    web_port, api_port = free_port(), free_port()
    text = f"""
mesh ev {{ mtls disabled  authz allow_by_default }}
service web {{ port http {web_port}  endpoints 127.0.0.1:{apps[0].server_address[1]}  calls api }}
service api {{ port http {api_port}  endpoints 127.0.0.1:{apps[1].server_address[1]}
  objective availability 99.9%  objective latency p99 300ms }}
"""
    mesh = load_text(text)
    out_base = free_port_block(2)
    # The envoy target reports objectives as E301 (they are the prometheus target's): warn.
    bundle = compile_mesh(mesh, "envoy", unsupported="warn", options={"admin_port": "0", "inbound_address": "127.0.0.1",
                                                  "outbound_base": str(out_base)})
    bundle.write(tmp_path)
    index = json.loads(bundle.files["index.json"])
    procs: dict[str, subprocess.Popen[bytes]] = {}
    admin: dict[str, str] = {}
    try:
        for name in ("web", "api"):
            procs[name] = subprocess.Popen(
                [ENVOY or "envoy", "-c", str(tmp_path / index["sidecars"][name]["config"]), "--disable-hot-restart",
                 "--concurrency", "1", "--admin-address-path", str(tmp_path / f"{name}.admin"), "-l", "error"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while len(admin) < 2:
            for name, p in procs.items():
                assert p.poll() is None, p.stderr.read().decode() if p.stderr else ""
                f = tmp_path / f"{name}.admin"
                if f.exists() and f.read_text().strip():
                    admin[name] = f.read_text().strip()
            assert time.monotonic() < deadline, "envoy did not start"
            time.sleep(0.1)
        to_api = out_base  # web's only outbound listener
        deadline = time.monotonic() + 20
        while True:
            try:
                if _get(web_port, "/warmup") == 200 and _get(to_api, "/warmup") == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "sidecars did not serve"
            time.sleep(0.2)
        statuses = [_get(web_port, "/a") for _ in range(5)]
        statuses += [_get(to_api, "/b") for _ in range(6)] + [_get(to_api, "/fail") for _ in range(3)]
        assert statuses == [200] * 11 + [500] * 3
        time.sleep(0.5)  # Envoy flushes histograms every 5 s; counters are immediate

        capsys.readouterr()
        args = ["stat", "--once", "--format", "json", "--interval", "0.2"]
        for name, addr in sorted(admin.items()):
            args += ["--admin", f"{name}={addr}"]
        assert main(args) == 0
        doc = json.loads(capsys.readouterr().out)
        services = {r["service"]: (r["requests"], r["errors"]) for r in doc["services"]}
        assert services == {"web": (6, 0), "api": (10, 3)}  # warm-ups included
        edges = {(r["src"], r["dst"]): (r["requests"], r["errors"]) for r in doc["edges"]}
        assert edges == {("web", "api"): (10, 3)}

        # Every raw Envoy series the generated rules read is really exposed.
        time.sleep(5.5)
        exposed: set[str] = set()
        les: set[str] = set()
        for addr in admin.values():
            with __import__("urllib.request").request.urlopen(f"http://{addr}/stats/prometheus", timeout=5) as r:
                for fam in text_string_to_metric_families(r.read().decode()):
                    for s in fam.samples:
                        exposed.add(s.name.removesuffix("_total"))
                        if "le" in s.labels:
                            les.add(s.labels["le"])
        prom = compile_mesh(mesh, "prometheus", options={"sidecars": "envoy"}).files
        used: set[str] = set()
        used_le: set[str] = set()
        for rel in ("rules/ev-recording.yml", "rules/ev-alerts.yml"):
            for g in yaml.safe_load(prom[rel])["groups"]:
                for rule in g["rules"]:
                    used.update(re.findall(r"\b(envoy_[a-z_]+)\{", rule["expr"]))
                    used_le.update(re.findall(r'le="([^"]+)"', rule["expr"]))
        assert used, "the envoy rules read no envoy metric"
        assert {u.removesuffix("_total") for u in used} <= exposed
        assert used_le <= les
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
        for a in apps:
            a.shutdown()
            a.server_close()
