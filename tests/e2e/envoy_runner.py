"""The Envoy runner: real Envoy 1.40 sidecars on loopback, compiled by meshc's envoy backend.

Each sidecar is compiled with its own `outbound_base` (a block of free ports) so that several
sidecars share one host; admin listens on a free 127.0.0.1 port (`admin_port=0`, read back from
`--admin-address-path`). With `dynamic` in the scenario's needs, listeners and clusters are
file-based xDS, and `update` replaces them by atomic rename, as a deployment would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from e2e.harness import IndexedProcessRunner, RunContext, free_port_block

ENVOY = shutil.which("envoy")
START_TIMEOUT = 20.0


class EnvoyRunner(IndexedProcessRunner):
    name = "envoy"
    capabilities = frozenset({"mtls", "dynamic", "authz", "faults", "outlier", "circuit_breaker"})

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.index: dict[str, Any] = {}
        self.bases: dict[str, int] = {}
        self.admin: dict[str, str] = {}
        self.logfiles: list[Any] = []
        self.dir = Path()

    # -------------------------------------------------------------- compile

    def options(self, ctx: RunContext, base: int) -> dict[str, str]:
        opts = {"certs_dir": str(ctx.certs_dir), "config_dir": str(self.dir), "admin_port": "0",
                "inbound_address": "127.0.0.1", "outbound_base": str(base)}
        if "dynamic" in ctx.needs:
            opts["dynamic"] = "true"
        return opts

    def compile(self, mesh_text: str, ctx: RunContext) -> dict[str, dict[str, bytes]]:
        """Per sidecar: its files, compiled with its own outbound port block."""
        from meshc.backends import compile_mesh

        from meshc.compiler import load_text

        mesh = load_text(mesh_text, "scenario.mesh")
        first = compile_mesh(mesh, "envoy", options=self.options(ctx, 15100))
        index = json.loads(first.files["index.json"])
        taken: set[int] = set()
        out: dict[str, dict[str, bytes]] = {}
        for name, entry in sorted(index["sidecars"].items()):
            slots = sum(len(v) for v in entry["outbound"].values())
            if name not in self.bases:
                self.bases[name] = free_port_block(max(slots, 1), taken) if slots else 15100
            bundle = compile_mesh(mesh, "envoy", options=self.options(ctx, self.bases[name]))
            out[name] = {k: v for k, v in bundle.files.items() if k.startswith(name + "/")}
            self.index[name] = json.loads(bundle.files["index.json"])["sidecars"][name]
        return out

    @staticmethod
    def write_atomic(path: Path, data: bytes) -> bool:
        """Replace `path` by rename (what Envoy's file watcher reacts to); False if unchanged."""
        if path.exists() and path.read_bytes() == data:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return True

    # -------------------------------------------------------------- lifecycle

    def start(self, mesh_text: str, ctx: RunContext) -> None:
        if ENVOY is None:
            raise RuntimeError("envoy is not on PATH")
        self.dir = ctx.workdir / "envoy"
        self.ctx = ctx
        for name, files in self.compile(mesh_text, ctx).items():
            for rel, data in files.items():
                self.write_atomic(self.dir / rel, data)
            self.launch(name)
        for name in self.procs:
            self.wait_ready(name)

    def launch(self, name: str) -> None:
        addr = self.dir / name / "admin.addr"
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.logfiles.append(log)
        self.procs[name] = subprocess.Popen(
            [ENVOY or "envoy", "-c", str(self.dir / self.index[name]["config"]), "--disable-hot-restart",
             "--concurrency", "1", "--admin-address-path", str(addr), "-l", "warning",
             "--drain-time-s", "2"],
            cwd=self.dir, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, name: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        addr_file = self.dir / name / "admin.addr"
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"envoy {name} exited with {proc.returncode}:\n{self.logs()}")
            if addr_file.exists() and addr_file.read_text().strip():
                self.admin[name] = addr_file.read_text().strip()
                try:
                    with urllib.request.urlopen(f"http://{self.admin[name]}/ready", timeout=1) as r:
                        if r.status == 200:
                            return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"envoy {name} not ready after {START_TIMEOUT}s:\n{self.logs()}")

    def stats(self, name: str, prefix: str) -> dict[str, int]:
        with urllib.request.urlopen(f"http://{self.admin[name]}/stats?filter={prefix}", timeout=2) as r:
            out = {}
            for line in r.read().decode().splitlines():
                key, _, val = line.partition(": ")
                if val.strip().isdigit():
                    out[key] = int(val)
            return out

    def update(self, mesh_text: str) -> None:
        """Write the changed lds/cds files and wait until each Envoy accepted them."""
        if "dynamic" not in self.ctx.needs:
            raise NotImplementedError("update needs a scenario that requires `dynamic`")
        for name, files in self.compile(mesh_text, self.ctx).items():
            before = self.stats(name, r"^listener_manager\.lds\.update_success$|^cluster_manager\.cds\.update_success$")
            changed = [rel for rel in sorted(files) if rel != self.index[name]["config"]
                       and self.write_atomic(self.dir / rel, files[rel])]
            if not changed:
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                now = self.stats(name, r"^listener_manager\.lds\.update_success$|^cluster_manager\.cds\.update_success$")
                if all(now.get(k, 0) > before.get(k, 0) for k in now if
                       ("lds" in k and any("/lds." in c for c in changed))
                       or ("cds" in k and any("/cds." in c for c in changed))):
                    break
                time.sleep(0.05)
            else:
                raise RuntimeError(f"envoy {name} did not accept the update:\n{self.logs()}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for log in self.logfiles:
            log.close()
