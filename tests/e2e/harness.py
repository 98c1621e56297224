"""Target-agnostic end-to-end harness: scenarios as data, run by any `Runner`.

A scenario (tests/scenarios/*.yaml) holds a `.mesh` text with placeholders, the upstream
servers to start, and steps (requests + expected outcomes). The harness picks free loopback
ports, starts the upstreams, renders the mesh, writes the SPIFFE certificates (meshc certs),
asks the runner to compile and start its proxies, sends the requests and checks the outcomes.
A runner (Envoy today; the native proxy and nginx later) only has to say how to start its
proxies and where a caller's outbound / a service's inbound listener is.

Placeholders in mesh text: `{{port.NAME}}` a free port (for a service port: where its sidecar
listens inbound), `{{upstream.NAME}}` the port of the upstream server NAME.

Scenario schema (YAML):

    name: str
    description: str
    requires: [mtls, dynamic, ...]      # runner capabilities the scenario needs
    unsupported: {nginx: ["E301 fault.delay", "E330"]}   # why a target cannot run it (checked)
    mesh: str                           # .mesh text with placeholders
    upstreams: {NAME: {status: 200, delay_ms: 0, fail_first: 0, fail_status: 503, healthy: true}}
                                        # healthy: false -> /healthz answers 503
    steps:
      - name: str
        request:                        # through the caller's sidecar ...
          from: SERVICE
          to: SERVICE
          # ... or straight to a service's inbound listener:
          direct: SERVICE
          tls: plaintext | mesh | foreign  # how to connect for `direct` (default mesh)
          identity: SERVICE              # the client certificate's identity for mesh/foreign
          method: GET
          path: /
          headers: {name: value}
        count: 1                        # requests, sent over `concurrency` connections
        concurrency: 1
        update: str                     # instead of `request`: recompile with this mesh text
        background: {request}           # with `update`: load running during the reload
        expect:
          status: 200                   # every response
          upstream: NAME                # every response came from this upstream
          statuses_include: [200, 503]  # each of these statuses was seen at least once
          share: {NAME: percent}        # share of responses per upstream ...
          tolerance: 5                  # ... within this many percentage points
          elapsed_ms: 1000              # each response took this long ...
          elapsed_tolerance: 20         # ... within this many percent
          max_elapsed_ms: 300           # each response took at most this long
          hits: {NAME: n}               # requests the upstream saw during the step
          refused: true                 # the connection or handshake failed
          tail: {last: n, status: 200, upstream: NAME}   # the last n responses
          no_failures: true             # (update) no background request failed
          upstream_saw: {header: value} # request headers as the upstream received them
                                        # (value null: the header did not arrive)
          upstream_path: /x             # the path the upstream received (after rewrites)
          response_headers: {name: value}   # on every response (value null: absent)
          body_contains: text           # in every response body
          location_path: /new           # the path of the redirect's Location (host: runner's)
        settle_s: 0.5                   # wait before checking (asynchronous effects: mirroring)
        refused_on: [nginx]             # these data planes refuse the request instead (400, no
                                        # upstream reached): the one divergence a scenario may
                                        # allow, never a looser outcome (docs/language.md,
                                        # "Path normalization")
"""

from __future__ import annotations

import abc
import http.client
import json
import re
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
UPSTREAM_HEADER = "x-upstream"
PLACEHOLDER = re.compile(r"\{\{\s*(port|upstream)\.([A-Za-z0-9_-]+)\s*\}\}")
REQUEST_TIMEOUT = 10.0  # seconds; no single request may hang a test


# --------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    name: str
    mesh: str
    description: str = ""
    requires: list[str] = field(default_factory=list)
    upstreams: dict[str, dict[str, Any]] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    # target -> what keeps the scenario off it: "E301 feature.key" or "E3xx" entries, checked
    # against the target's actual diagnostics (a target not named must run the scenario)
    unsupported: dict[str, list[str]] = field(default_factory=dict)
    path: Path | None = None


def load_scenarios(directory: Path = SCENARIOS) -> list[Scenario]:
    out = []
    for p in sorted(directory.glob("*.yaml")):
        data = yaml.safe_load(p.read_text())
        out.append(Scenario(path=p, **data))
    return out


# --------------------------------------------------------------------------- ports


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(n: int, taken: set[int]) -> int:
    """The first port of `n` consecutive free ports (not in `taken`)."""
    for _ in range(200):
        base = free_port()
        block = range(base, base + n)
        if base + n < 65000 and not taken.intersection(block) and all(port_is_free(p) for p in block):
            taken.update(block)
            return base
    raise RuntimeError(f"no block of {n} free ports")


class PortPlan:
    """Free ports for placeholders, fixed for a whole scenario run (updates reuse them)."""

    def __init__(self, upstreams: Mapping[str, int]):
        self.upstreams = dict(upstreams)
        self.ports: dict[str, int] = {}
        self.taken: set[int] = set(upstreams.values())

    def port(self, name: str) -> int:
        if name not in self.ports:
            p = free_port()
            while p in self.taken:
                p = free_port()
            self.ports[name] = p
            self.taken.add(p)
        return self.ports[name]

    def render(self, text: str) -> str:
        def sub(m: re.Match[str]) -> str:
            kind, name = m.group(1), m.group(2)
            if kind == "upstream":
                if name not in self.upstreams:
                    raise KeyError(f"mesh names upstream '{name}' that the scenario does not declare")
                return str(self.upstreams[name])
            return str(self.port(name))
        return PLACEHOLDER.sub(sub, text)


# --------------------------------------------------------------------------- upstreams


class Upstream:
    """A small HTTP/1.1 server that says who it is and can be slow or fail on purpose."""

    def __init__(self, name: str, status: int = 200, delay_ms: int = 0, fail_first: int = 0,
                 fail_status: int = 503, healthy: bool = True):
        self.name, self.status, self.delay_ms, self.healthy = name, status, delay_ms, healthy
        self.fail_first, self.fail_status = fail_first, fail_status
        self.hits = 0
        self.started = 0  # requests whose head arrived, whether or not their body then did
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def reset(self) -> None:
        with self.lock:
            self.hits = 0
            self.started = 0

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        up = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in two writes: without this, Nagle + delayed ACK add 40 ms
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                with up.lock:
                    up.started += 1
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                if self.path.startswith("/healthz"):
                    return self._reply(200 if up.healthy else 503, {"upstream": up.name, "health": up.healthy})
                with up.lock:
                    up.hits += 1
                    n = up.hits
                if up.delay_ms:
                    time.sleep(up.delay_ms / 1000)
                status = up.fail_status if n <= up.fail_first else up.status
                self._reply(status, {"upstream": up.name, "path": self.path, "method": self.command,
                                     "headers": {k.lower(): v for k, v in self.headers.items()}})

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header(UPSTREAM_HEADER, up.name)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _serve  # noqa: N815

        return Handler

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- client


@dataclass
class Response:
    status: int | None  # None: connection/handshake failed
    upstream: str | None
    elapsed_ms: float
    error: str = ""
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names


@dataclass
class Target:
    """Where a request goes: address, and the TLS client context (None: plaintext)."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None


def send_many(target: Target, method: str, path: str, headers: Mapping[str, str], count: int,
              concurrency: int = 1, stop: threading.Event | None = None) -> list[Response]:
    """`count` requests over `concurrency` keep-alive connections (reconnecting when needed)."""
    per_worker = [count // concurrency + (1 if i < count % concurrency else 0) for i in range(concurrency)]
    if concurrency == 1:
        return _worker(target, method, path, headers, per_worker[0], stop)
    # Start all workers together so that they really overlap (circuit-breaker scenarios).
    barrier = threading.Barrier(concurrency)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(_worker, target, method, path, headers, n, stop, barrier) for n in per_worker]
        return [r for f in futures for r in f.result()]


def _connect(target: Target) -> http.client.HTTPConnection:
    if target.tls is not None:
        return http.client.HTTPSConnection(target.host, target.port, timeout=REQUEST_TIMEOUT, context=target.tls)
    return http.client.HTTPConnection(target.host, target.port, timeout=REQUEST_TIMEOUT)


IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


def _request(conn: http.client.HTTPConnection, method: str, path: str,
             headers: Mapping[str, str]) -> http.client.HTTPResponse:
    # skip_accept_encoding so the raw path and headers go out exactly as written
    conn.putrequest(method, path, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    return conn.getresponse()


def _worker(target: Target, method: str, path: str, headers: Mapping[str, str], n: int,
            stop: threading.Event | None = None, barrier: threading.Barrier | None = None) -> list[Response]:
    out: list[Response] = []
    conn = _connect(target)
    if barrier is not None:
        barrier.wait(timeout=REQUEST_TIMEOUT)
    i = 0
    reused = False  # has this connection carried a request already?
    while (stop is None and i < n) or (stop is not None and not stop.is_set() and i < n):
        i += 1
        start = time.monotonic()
        try:
            try:
                resp = _request(conn, method, path, headers)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed an idle keep-alive connection as the request went out (a
                # proxy reloading closes them). Like any HTTP/1.1 client (RFC 9112 9.3.1), retry
                # an idempotent request once on a new connection; a fresh connection is not retried.
                if not reused or method not in IDEMPOTENT:
                    raise
                conn.close()
                conn = _connect(target)
                resp = _request(conn, method, path, headers)
            body = resp.read()
            reused = True
            out.append(Response(resp.status, resp.getheader(UPSTREAM_HEADER), (time.monotonic() - start) * 1000,
                                body=body, headers={k.lower(): v for k, v in resp.getheaders()}))
            if resp.getheader("connection", "").lower() == "close":
                conn.close()
                conn = _connect(target)
                reused = False
        except (OSError, http.client.HTTPException) as e:
            out.append(Response(None, None, (time.monotonic() - start) * 1000, error=f"{type(e).__name__}: {e}"))
            conn.close()
            conn = _connect(target)
            reused = False
    conn.close()
    return out


def tls_context(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """A client context: verify the server against `ca` (its SAN is a SPIFFE URI, no hostname)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if ca is not None:
        ctx.load_verify_locations(str(ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


# --------------------------------------------------------------------------- runners


@dataclass
class RunContext:
    """What the harness hands a runner: a work directory and the certificates it wrote."""

    workdir: Path
    certs_dir: Path
    needs: frozenset[str] = frozenset()  # the scenario's `requires`


class Runner(abc.ABC):
    """One data plane under test. Implementations: tests/e2e/envoy_runner.py, ..."""

    name: str = ""
    capabilities: frozenset[str] = frozenset()

    @abc.abstractmethod
    def start(self, mesh_text: str, ctx: RunContext) -> None:
        """Compile `mesh_text` for this target and start every proxy; return when they serve."""

    @abc.abstractmethod
    def outbound(self, caller: str, callee: str) -> tuple[str, int]:
        """Where the application of `caller` sends requests for `callee`."""

    @abc.abstractmethod
    def inbound(self, service: str) -> tuple[str, int]:
        """The listener in front of `service` (what other sidecars connect to)."""

    def update(self, mesh_text: str) -> None:
        """Recompile and make the running proxies use the new config, without a restart."""
        raise NotImplementedError(f"{self.name} cannot reload")

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop every proxy it started."""

    def logs(self) -> str:
        """Proxy logs, for failure messages."""
        return ""


class IndexedProcessRunner(Runner):
    """A runner whose proxies are processes logging to `<dir>/<name>.log` and whose backend
    writes an index (`index.json`: per sidecar, `outbound` ports per callee and `inbound`
    listeners), as the envoy and nginx backends do."""

    dir: Path  # where the proxies' configs and logs are
    procs: dict[str, Any]  # sidecar name -> its process
    index: dict[str, Any]  # sidecar name -> its entry of the backend's index

    def logs(self) -> str:
        out = []
        for name in sorted(self.procs):
            p = self.dir / f"{name}.log"
            if p.exists():
                out.append(f"== {name}\n" + p.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def outbound(self, caller: str, callee: str) -> tuple[str, int]:
        ports = self.index[caller]["outbound"][callee]
        return "127.0.0.1", int(ports[sorted(ports)[0]])

    def inbound(self, service: str) -> tuple[str, int]:
        ports = self.index[service]["inbound"]
        return "127.0.0.1", int(ports[sorted(ports)[0]]["port"])


# --------------------------------------------------------------------------- running


class ScenarioFailure(AssertionError):
    pass


@dataclass
class Run:
    scenario: Scenario
    runner: Runner
    workdir: Path
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    plan: PortPlan | None = None
    failures: list[str] = field(default_factory=list)
    mesh_name: str = "scenario.mesh"

    # -------------------------------------------------------------- lifecycle

    def __enter__(self) -> Run:
        from meshc.certs import write_certs
        from meshc.compiler import load_text

        for name, spec in self.scenario.upstreams.items():
            up = Upstream(name, **(spec or {}))
            up.start()
            self.upstreams[name] = up
        self.plan = PortPlan({n: u.port for n, u in self.upstreams.items()})
        text = self.plan.render(self.scenario.mesh)
        self.mesh = load_text(text, self.mesh_name)
        certs = self.workdir / "certs"
        write_certs(self.mesh, certs)
        self.ctx = RunContext(self.workdir, certs, frozenset(self.scenario.requires))
        (self.workdir / self.mesh_name).write_text(text)
        try:
            self.runner.start(text, self.ctx)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.runner.stop()
        finally:
            for up in self.upstreams.values():
                up.stop()

    # -------------------------------------------------------------- requests

    def target(self, req: Mapping[str, Any]) -> Target:
        if "direct" in req:
            host, port = self.runner.inbound(req["direct"])
            mode = req.get("tls", "mesh")
            if mode == "plaintext":
                return Target(host, port)
            ident_svc = self.mesh.service(req.get("identity", req["direct"]))
            assert ident_svc is not None, f"unknown identity service {req.get('identity')}"
            from meshc.certs import cert_file_names
            cert_name, key_name = cert_file_names(ident_svc.identity)
            certs = self.ctx.certs_dir if mode == "mesh" else self.foreign_certs(ident_svc.identity)
            return Target(host, port, tls_context(self.ctx.certs_dir / "ca.pem", certs / cert_name, certs / key_name))
        host, port = self.runner.outbound(req["from"], req["to"])
        return Target(host, port)

    def foreign_certs(self, ident: Any) -> Path:
        """A certificate with the same SPIFFE ID, issued by another CA."""
        from meshc.certs import _write_cert, _write_key, cert_file_names, issue, new_ca  # noqa: I001 - local helpers

        d = self.workdir / "foreign-certs"
        d.mkdir(exist_ok=True)
        ca, ca_key = new_ca(ident.trust_domain)
        cert, key = issue(ca, ca_key, ident.spiffe, "foreign")
        cert_name, key_name = cert_file_names(ident)
        _write_cert(d / cert_name, cert)
        _write_key(d / key_name, key)
        return d

    def send(self, req: Mapping[str, Any], count: int = 1, concurrency: int = 1,
             stop: threading.Event | None = None) -> list[Response]:
        headers = {str(k): str(v) for k, v in (req.get("headers") or {}).items()}
        return send_many(self.target(req), req.get("method", "GET"), req.get("path", "/"), headers,
                         count, concurrency, stop)

    # -------------------------------------------------------------- steps

    def run(self) -> None:
        for i, step in enumerate(self.scenario.steps):
            label = step.get("name", f"step {i + 1}")
            for up in self.upstreams.values():
                up.reset()
            if "update" in step:
                responses = self.run_update(step)
            else:
                responses = self.send(step["request"], int(step.get("count", 1)), int(step.get("concurrency", 1)))
            if "settle_s" in step and "update" not in step:
                time.sleep(float(step["settle_s"]))
            expect = step.get("expect", {})
            if self.runner.name in step.get("refused_on", ()):
                expect = {"status": 400, "hits": dict.fromkeys(self.upstreams, 0)}
            for problem in check(expect, responses, self.upstreams):
                self.failures.append(f"{label}: {problem}")
        if self.failures:
            raise ScenarioFailure(f"scenario {self.scenario.name} on {self.runner.name}:\n  "
                                  + "\n  ".join(self.failures) + "\n--- proxy logs ---\n" + self.runner.logs()[-6000:])

    def run_update(self, step: Mapping[str, Any]) -> list[Response]:
        """Reload while a background client runs; its responses are the step's outcome."""
        assert self.plan is not None
        text = self.plan.render(step["update"])
        stop = threading.Event()
        results: list[Response] = []
        bg = step.get("background")
        worker = None
        if bg:
            def load() -> None:
                results.extend(self.send(bg, count=100_000, stop=stop))
            worker = threading.Thread(target=load, daemon=True)
            worker.start()
            time.sleep(0.3)
        try:
            self.runner.update(text)
            time.sleep(float(step.get("settle_s", 1.0)))
        finally:
            stop.set()
            if worker is not None:
                worker.join(timeout=REQUEST_TIMEOUT + 5)
        return results


EXPECT_KEYS = frozenset({
    "refused", "status", "statuses_include", "upstream", "share", "tolerance", "elapsed_ms", "elapsed_tolerance",
    "max_elapsed_ms", "hits", "tail", "no_failures", "upstream_saw", "upstream_path", "response_headers",
    "location_path", "body_contains", "min_count"})


def check(expect: Mapping[str, Any], rs: list[Response], upstreams: Mapping[str, Upstream]) -> list[str]:
    """Every way the responses miss the expectation (empty: all good)."""
    unknown = set(expect) - EXPECT_KEYS
    if unknown:  # a misspelt expectation would otherwise check nothing
        return [f"unknown expectation(s) {sorted(unknown)}; known: {sorted(EXPECT_KEYS)}"]
    problems: list[str] = []
    statuses = Counter(r.status for r in rs)
    errors = sorted({r.error for r in rs if r.error})[:3]
    if not rs:
        return ["no responses"]
    if expect.get("refused"):
        ok = [r for r in rs if r.status is not None]
        if ok:
            problems.append(f"expected the connection to be refused, got statuses {dict(statuses)}")
    if "status" in expect and set(statuses) != {expect["status"]}:
        problems.append(f"expected status {expect['status']} for all {len(rs)}, got {dict(statuses)} {errors}")
    for s in expect.get("statuses_include", []):
        if statuses[s] == 0:
            problems.append(f"expected some {s} responses, got {dict(statuses)} {errors}")
    if "upstream" in expect:
        seen = Counter(r.upstream for r in rs)
        if set(seen) != {expect["upstream"]}:
            problems.append(f"expected every response from {expect['upstream']}, got {dict(seen)}")
    if "share" in expect:
        tol = float(expect.get("tolerance", 5))
        seen = Counter(r.upstream for r in rs if r.status == 200)
        total = sum(seen.values())
        if total != len(rs):
            problems.append(f"share: only {total} of {len(rs)} requests succeeded: {dict(statuses)} {errors}")
        for name, want in expect["share"].items():
            got = 100 * seen[name] / total if total else 0
            if abs(got - float(want)) > tol:
                problems.append(f"share of {name}: {got:.1f}% (want {want}% ± {tol})")
    problems += _check_timing_hits_and_tail(expect, rs, upstreams, errors)
    for name, want in (expect.get("upstream_saw") or {}).items():
        for r in rs:
            try:
                got = json.loads(r.body)["headers"].get(name.lower())
            except (ValueError, KeyError, TypeError):
                problems.append(f"upstream_saw: no echo from an upstream in {r.body[:100]!r}")
                break
            if got != want:
                problems.append(f"upstream saw {name}: {got!r}, want {want!r}")
                break
    if "upstream_path" in expect:
        for r in rs:
            try:
                got = json.loads(r.body)["path"]
            except (ValueError, KeyError, TypeError):
                got = None
            if got != expect["upstream_path"]:
                problems.append(f"upstream saw path {got!r}, want {expect['upstream_path']!r}")
                break
    for name, want in (expect.get("response_headers") or {}).items():
        bad = [r.headers.get(name.lower()) for r in rs if r.headers.get(name.lower()) != want]
        if bad:
            problems.append(f"response header {name}: {bad[0]!r}, want {want!r}")
    if "location_path" in expect:
        from urllib.parse import urlsplit
        bad = [r.headers.get("location") for r in rs
               if urlsplit(r.headers.get("location") or "").path != expect["location_path"]]
        if bad:
            problems.append(f"Location {bad[0]!r}, want path {expect['location_path']!r}")
    if "body_contains" in expect:
        if any(expect["body_contains"].encode() not in r.body for r in rs):
            problems.append(f"body does not contain {expect['body_contains']!r}: {rs[0].body[:100]!r}")
    if "min_count" in expect and len(rs) < int(expect["min_count"]):
        problems.append(f"only {len(rs)} requests were sent, want at least {expect['min_count']}")
    return problems


def _check_timing_hits_and_tail(expect: Mapping[str, Any], rs: list[Response], upstreams: Mapping[str, Upstream],
                                errors: list[str]) -> list[str]:
    """check's expectations on elapsed times, upstream hits, the last responses and reloads."""
    problems: list[str] = []
    if "elapsed_ms" in expect:
        want = float(expect["elapsed_ms"])
        tol = want * float(expect.get("elapsed_tolerance", 20)) / 100
        bad = [round(r.elapsed_ms) for r in rs if abs(r.elapsed_ms - want) > tol]
        if bad:
            problems.append(f"elapsed {bad[:5]} ms, want {want:.0f} ± {tol:.0f} ms")
    if "max_elapsed_ms" in expect:
        bad = [round(r.elapsed_ms) for r in rs if r.elapsed_ms > float(expect["max_elapsed_ms"])]
        if bad:
            problems.append(f"elapsed {bad[:5]} ms, want at most {expect['max_elapsed_ms']} ms")
    for name, n in (expect.get("hits") or {}).items():
        if upstreams[name].hits != n:
            problems.append(f"upstream {name} saw {upstreams[name].hits} requests, want {n}")
    if "tail" in expect:
        tail = expect["tail"]
        last = rs[-int(tail["last"]):]
        if "status" in tail and {r.status for r in last} != {tail["status"]}:
            problems.append(f"last {len(last)}: statuses {dict(Counter(r.status for r in last))}, want {tail['status']}")
        if "upstream" in tail and {r.upstream for r in last} != {tail["upstream"]}:
            problems.append(f"last {len(last)}: upstreams {dict(Counter(r.upstream for r in last))}, "
                            f"want {tail['upstream']}")
    if expect.get("no_failures"):
        bad = [r for r in rs if r.status != 200]
        if bad:
            problems.append(f"{len(bad)} of {len(rs)} requests failed during the update: "
                            f"{dict(Counter(r.status for r in bad))} {errors}")
    return problems
