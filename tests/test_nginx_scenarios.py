"""The shared end-to-end scenarios (tests/scenarios/*.yaml) through real nginx sidecars.

An `NginxRunner` for the target-agnostic harness in tests/e2e/harness.py: every sidecar is
compiled by the nginx backend with its own block of outbound ports, started as
`nginx -c <S>/nginx.conf -p <prefix> -e <log>` (master process in the foreground), and updated
with a graceful reload (SIGHUP: old workers finish their requests, new ones take the new config).

A scenario whose mesh nginx cannot express skips with the E3xx diagnostics that say why (the
compile step, not the harness, decides; a crash or another error code fails the test).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from e2e.harness import IndexedProcessRunner, Run, RunContext, Scenario, free_port_block, load_scenarios

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
START_TIMEOUT = 15.0
SCENARIOS = load_scenarios()


class NginxRunner(IndexedProcessRunner):
    name = "nginx"
    capabilities = frozenset({"mtls", "authz", "dynamic"})

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.index: dict[str, Any] = {}
        self.bases: dict[str, int] = {}
        self.dir = Path()

    def options(self, ctx: RunContext, base: int) -> dict[str, str]:
        return {"certs_dir": str(ctx.certs_dir), "inbound_address": "127.0.0.1", "outbound_base": str(base)}

    def compile(self, mesh_text: str, ctx: RunContext) -> dict[str, bytes]:
        from meshc.backends import compile_mesh

        from meshc.compiler import load_text

        mesh = load_text(mesh_text, "scenario.mesh")
        first = compile_mesh(mesh, "nginx", options=self.options(ctx, 15100))
        index = json.loads(first.files["index.json"])
        taken: set[int] = set()
        out: dict[str, bytes] = {}
        for name, entry in sorted(index["sidecars"].items()):
            slots = sum(len(v) for v in entry["outbound"].values())
            if name not in self.bases:
                self.bases[name] = free_port_block(max(slots, 1), taken) if slots else 15100
            bundle = compile_mesh(mesh, "nginx", options=self.options(ctx, self.bases[name]))
            out[name] = bundle.files[f"{name}/nginx.conf"]
            self.index[name] = json.loads(bundle.files["index.json"])["sidecars"][name]
        return out

    def conf(self, name: str) -> Path:
        return self.dir / name / "nginx.conf"

    def start(self, mesh_text: str, ctx: RunContext) -> None:
        assert NGINX is not None
        self.dir = ctx.workdir / "nginx"
        self.ctx = ctx
        for name, data in self.compile(mesh_text, ctx).items():
            self.conf(name).parent.mkdir(parents=True, exist_ok=True)
            self.conf(name).write_bytes(data)
            prefix = self.dir / f"prefix-{name}"
            prefix.mkdir(exist_ok=True)
            log = self.dir / f"{name}.log"
            self.procs[name] = subprocess.Popen([NGINX, "-c", str(self.conf(name)), "-p", str(prefix), "-e", str(log)],
                                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        for name in self.procs:
            self.wait_ready(name)

    def ports(self, name: str) -> list[int]:
        entry = self.index[name]
        return ([int(v["port"]) for v in entry["inbound"].values()]
                + [int(p) for callee in entry["outbound"].values() for p in callee.values()])

    def wait_ready(self, name: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        pending = self.ports(name)
        while pending:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"nginx {name} exited with {self.procs[name].returncode}:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx {name} not listening on {pending}:\n{self.logs()}")
            try:
                socket.create_connection(("127.0.0.1", pending[0]), timeout=0.2).close()
                pending.pop(0)
            except OSError:
                time.sleep(0.05)

    def workers(self, name: str) -> set[int]:
        pid = self.procs[name].pid
        try:
            return {int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
        except OSError:
            return set()

    def update(self, mesh_text: str) -> None:
        """Rewrite changed configs and reload gracefully; return once new workers serve."""
        for name, data in self.compile(mesh_text, self.ctx).items():
            if self.conf(name).read_bytes() == data:
                continue
            self.conf(name).write_bytes(data)
            before = self.workers(name)
            self.procs[name].send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while not (self.workers(name) - before):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nginx {name} did not reload:\n{self.logs()}")
                time.sleep(0.05)

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


def unexpressible(scenario: Scenario) -> list[str]:
    """The E3xx diagnostics that keep this scenario off nginx (empty: it compiles)."""
    from e2e.harness import PortPlan
    from meshc.backends import compile_mesh

    from meshc.compiler import load_text
    from meshc.diagnostics import MeshcError

    plan = PortPlan({n: 20000 + i for i, n in enumerate(scenario.upstreams)})
    texts = [scenario.mesh] + [s["update"] for s in scenario.steps if "update" in s]
    for text in texts:
        try:
            compile_mesh(load_text(plan.render(text), "scenario.mesh"), "nginx")
        except MeshcError as e:
            assert all(d.code.startswith("E3") for d in e.diagnostics if d.severity == "error"), e
            return [f"{d.span}: {d.code} {d.message} [{d.help}]" for d in e.diagnostics if d.severity == "error"]
    return []


def reasons(diagnostics: list[str]) -> list[str]:
    """`E301 feature.key` for capability gaps, the bare code for other E3xx: what a scenario
    file's `unsupported.nginx` lists."""
    out = set()
    for d in diagnostics:
        code = d.split(": ", 1)[1].split(" ", 1)[0]
        feature = re.search(r"\(feature '([^']+)'", d) if code == "E301" else None
        out.add(f"{code} {feature.group(1)}" if feature else code)
    return sorted(out)


@pytest.mark.e2e
@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install -y nginx)")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario_through_nginx(scenario: Scenario, tmp_path: Path) -> None:
    why = unexpressible(scenario)
    # The scenario file says which scenarios nginx cannot run, and why; keep it truthful.
    assert reasons(why) == sorted(scenario.unsupported.get("nginx", [])), \
        f"{scenario.path}: set `unsupported: {{nginx: {reasons(why)}}}`"
    if why:
        pytest.skip("not expressible on nginx: " + "; ".join(why))
    runner = NginxRunner()
    missing = set(scenario.requires) - runner.capabilities
    if missing:
        pytest.skip(f"nginx runner lacks {sorted(missing)}")
    with Run(scenario, runner, tmp_path) as run:
        run.run()


@pytest.mark.e2e
@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install -y nginx)")
def test_circuit_breaker_without_a_queue(tmp_path: Path) -> None:
    """The shared circuit-breaker scenario with `max_pending 0` (nginx has no queue): requests
    beyond the limit get 503 at once, one at a time is fine."""
    import copy

    scenario = copy.deepcopy(next(s for s in SCENARIOS if s.name == "circuit-breaker"))
    assert "max_pending 1" in scenario.mesh
    scenario.mesh = scenario.mesh.replace("max_pending 1", "max_pending 0")
    assert not unexpressible(scenario)
    with Run(scenario, NginxRunner(), tmp_path) as run:
        run.run()


# --------------------------------------------------------------------------- security (issue 16)

LONG_SA = "payments-ledger-reconciliation-batch-worker-service-acct-x1"  # `<sa>.prod` is 64 characters
SECURITY = [
    Scenario(
        name="identity-subjects",
        description="one service account in prod and prod2 (the 64-character CN used to be cut to one "
                    "subject, and nginx took prod2 for prod); a callee whose CN has to be shortened "
                    "(its sidecar was unreachable: 503)",
        requires=["mtls", "authz"],
        mesh=f"""
mesh ids {{ mtls strict  authz deny_by_default }}
service good {{ port http {{{{port.good}}}} namespace prod identity {LONG_SA}
               endpoints 127.0.0.1:{{{{upstream.good}}}} calls api }}
service bad {{ port http {{{{port.bad}}}} namespace prod2 identity {LONG_SA}
              endpoints 127.0.0.1:{{{{upstream.bad}}}} calls api }}
service api {{ port http {{{{port.api}}}} namespace reconciliation-prod identity {LONG_SA}-api
              endpoints 127.0.0.1:{{{{upstream.api}}}} }}
allow good -> api
""",
        upstreams={"good": {}, "bad": {}, "api": {}},
        steps=[
            {"name": "the allowed caller, through its sidecar, to a long-named callee",
             "request": {"from": "good", "to": "api", "path": "/x"}, "expect": {"status": 200, "upstream": "api"}},
            {"name": "the same account in another namespace is not the allowed caller",
             "request": {"from": "bad", "to": "api", "path": "/x"}, "expect": {"status": 403, "hits": {"api": 0}}},
            {"name": "straight to the callee with prod2's certificate",
             "request": {"direct": "api", "identity": "bad", "path": "/x"},
             "expect": {"status": 403, "hits": {"api": 0}}},
            {"name": "straight to the callee with prod's certificate",
             "request": {"direct": "api", "identity": "good", "path": "/x"}, "expect": {"status": 200}},
        ]),
    Scenario(
        name="path-normalization",
        description="what nginx would otherwise forward as sent (a raw backslash, `/..;/`, a fragment) "
                    "is refused with 400, as %00 is; encoded dots and doubled slashes are normalized "
                    "before authorization",
        requires=["mtls", "authz"],
        mesh="""
mesh norm { mtls strict  authz deny_by_default }
service web { port http {{port.web}} endpoints 127.0.0.1:{{upstream.web}} calls api }
service api { port http {{port.api}} endpoints 127.0.0.1:{{upstream.api}} }
allow web -> api paths prefix "/public"
""",
        upstreams={"web": {}, "api": {}},
        steps=[
            {"name": "allowed path", "request": {"from": "web", "to": "api", "path": "/public/x"},
             "expect": {"status": 200, "upstream_path": "/public/x"}},
            *[{"name": f"{path} through the caller", "request": {"from": "web", "to": "api", "path": path},
               "expect": {"status": status, "hits": {"api": 0}}}
              for path, status in (("/admin\\x", 400), ("/public\\..\\admin", 400), ("/public/..;/admin", 400),
                                   ("/public/.;/x", 400), ("/admin%00", 400), ("/public/x%00", 400),
                                   ("/public/x#frag", 400), ("/admin#x", 400), ("/public/%2e%2e/admin", 403),
                                   ("//admin", 403), ("/public/%2F..%2Fadmin", 400))],
            *[{"name": f"{path} straight to the callee", "request": {"direct": "api", "identity": "web", "path": path},
               "expect": {"status": status, "hits": {"api": 0}}}
              for path, status in (("/public\\..\\admin", 400), ("/public/..;/admin", 400), ("/public/x#f", 400),
                                   ("/public/%2e%2e/admin", 403))],
        ]),
]


@pytest.mark.e2e
@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install -y nginx)")
@pytest.mark.parametrize("scenario", SECURITY, ids=[s.name for s in SECURITY])
def test_security_scenario_through_nginx(scenario: Scenario, tmp_path: Path) -> None:
    assert not unexpressible(scenario)
    with Run(scenario, NginxRunner(), tmp_path) as run:
        run.run()
