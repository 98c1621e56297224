"""The native runner: meshc's own sidecar proxy (`meshc proxy --config mesh.json`, every sidecar
of the mesh in one process) on loopback, compiled by the native backend.

The mesh is compiled with `base_port` at the start of a block of free ports large enough for
every listener (the native backend allocates ports sequentially from there), and `certs_dir`
pointing at the certificates the harness wrote. `update` rewrites the sidecar configs by atomic
rename; the running proxy notices the change and reloads without dropping requests, and the
runner waits until every changed sidecar's admin `/config` shows the new config.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from e2e.harness import RunContext, Runner, free_port_block

START_TIMEOUT = 20.0


class NativeRunner(Runner):
    name = "native"
    capabilities = frozenset({"mtls", "dynamic", "authz", "faults", "outlier", "circuit_breaker"})

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.index: dict[str, Any] = {}
        self.base = 0
        self.dir = Path()

    def compile(self, mesh_text: str, ctx: RunContext) -> dict[str, bytes]:
        from meshc.backends import compile_mesh

        from meshc.compiler import load_text

        mesh = load_text(mesh_text, "scenario.mesh")
        opts = {"certs_dir": str(ctx.certs_dir)}
        if not self.base:
            probe = compile_mesh(mesh, "native", options=opts)
            idx = json.loads(probe.files["mesh.json"])
            n = sum(1 + len(s["inbound"]) + len(s["outbound"]) for s in idx["sidecars"])
            self.base = free_port_block(n + 4, set())
        bundle = compile_mesh(mesh, "native", options={**opts, "base_port": str(self.base)})
        self.index = json.loads(bundle.files["mesh.json"])
        return bundle.files

    @staticmethod
    def write_atomic(path: Path, data: bytes) -> bool:
        if path.exists() and path.read_bytes() == data:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return True

    def start(self, mesh_text: str, ctx: RunContext) -> None:
        self.dir = ctx.workdir / "native"
        self.ctx = ctx
        for rel, data in self.compile(mesh_text, ctx).items():
            self.write_atomic(self.dir / rel, data)
        self.log = open(self.dir / "proxy.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshc.runtime.commands",
             "proxy", "--config", str(self.dir / "mesh.json"), "--log-level", "warning"],
            cwd=self.dir, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + START_TIMEOUT
        for entry in self.index["sidecars"]:
            while not self._ready(entry["admin_port"]):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"native proxy exited with {self.proc.returncode}:\n{self.logs()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"native proxy not ready after {START_TIMEOUT}s:\n{self.logs()}")
                time.sleep(0.05)

    @staticmethod
    def _get(port: int, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                return r.read() if r.status == 200 else None
        except OSError:
            return None

    def _ready(self, admin_port: int) -> bool:
        return self._get(admin_port, "/ready") is not None

    def update(self, mesh_text: str) -> None:
        files = self.compile(mesh_text, self.ctx)
        changed = [rel for rel in sorted(files) if rel != "mesh.json" and self.write_atomic(self.dir / rel, files[rel])]
        self.write_atomic(self.dir / "mesh.json", files["mesh.json"])
        admin = {e["config"]: e["admin_port"] for e in self.index["sidecars"]}
        deadline = time.monotonic() + 10
        for rel in changed:
            want = json.loads(files[rel])
            while True:
                got = self._get(admin[rel], "/config")
                if got is not None and json.loads(got) == want:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"native sidecar {rel} did not load the update:\n{self.logs()}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc is not None:
            self.log.close()

    def logs(self) -> str:
        p = self.dir / "proxy.log"
        return p.read_text(errors="replace")[-6000:] if p.exists() else ""

    def _entry(self, service: str) -> dict[str, Any]:
        return next(e for e in self.index["sidecars"] if e["service"] == service)

    def outbound(self, caller: str, callee: str) -> tuple[str, int]:
        ports = [x["port"] for x in self._entry(caller)["outbound"] if x["callee"] == callee]
        if not ports:
            raise KeyError(f"{caller} has no outbound listener for {callee}")
        return "127.0.0.1", int(ports[0])

    def inbound(self, service: str) -> tuple[str, int]:
        return "127.0.0.1", int(self._entry(service)["inbound"][0]["port"])
