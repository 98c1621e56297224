"""Sizes (`10MiB`) and `max_request_body`: the literal, resolution and overlays, fmt, unparse,
diff, every target's output (validated by the real Envoy and nginx), and over loopback the
real proxies answering 413 above the limit and 200 at and below it."""

from __future__ import annotations

import http.client
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from meshc import backends  # noqa: E402
from meshc.ast import size_text  # noqa: E402
from meshc.compiler import load_text  # noqa: E402
from meshc.diagnostics import MeshcError  # noqa: E402
from meshc.parse import parse_text  # noqa: E402

LIMIT = 1024  # the body_limit scenario's `max_request_body 1KiB`


# --------------------------------------------------------------------------- literals


def size_of(text: str) -> int:
    parsed = parse_text(f"service a {{ port http 80 max_request_body {text} }}", "s.mesh")
    (setting,) = [s for s in parsed.ast.decls[0].stmts if getattr(s, "key", "") == "max_request_body"]
    return setting.literal.value


@pytest.mark.parametrize("text,n", [
    ("1B", 1), ("512B", 512), ("1KB", 1000), ("1KiB", 1024), ("1.5KB", 1500), ("1.5KiB", 1536),
    ("10MB", 10_000_000), ("10MiB", 10 * 2**20), ("1.1MB", 1_100_000), ("0.5MiB", 2**19),
    ("1GB", 10**9), ("1GiB", 2**30), ("0.001KB", 1),
])
def test_size_literal_is_whole_bytes(text: str, n: int) -> None:
    assert size_of(text) == n


@pytest.mark.parametrize("text,message,col", [
    ("0.5B", "size 0.5B is not a whole number of bytes", 43),
    ("1.0001KB", "size 1.0001KB is not a whole number of bytes", 43),
    ("0B", "size 0B is zero", 43),
    ("2GiB", "size 2GiB is above 1GiB", 43),
    ("1.5GiB", "size 1.5GiB is above 1GiB", 43),
])
def test_bad_sizes_are_e006_at_the_literal(text: str, message: str, col: int) -> None:
    with pytest.raises(MeshcError) as e:
        parse_text(f"service a {{ port http 80 max_request_body {text} }}", "s.mesh")
    (d,) = e.value.diagnostics
    assert (d.code, d.message, d.span.line, d.span.column) == ("E006", message, 1, col)
    assert d.help


def test_size_with_a_trailing_letter_is_a_syntax_error() -> None:
    with pytest.raises(MeshcError) as e:
        parse_text("service a { port http 80 max_request_body 10MiBs }", "s.mesh")
    assert e.value.diagnostics[0].code.startswith("E0")


@pytest.mark.parametrize("n,text", [(1, "1B"), (1000, "1KB"), (1024, "1KiB"), (1500, "1500B"), (1536, "1536B"),
                                    (10 * 2**20, "10MiB"), (5_000_000, "5MB"), (2**30, "1GiB"),
                                    (1_024_000, "1000KiB")])
def test_size_text_round_trips(n: int, text: str) -> None:
    assert size_text(n) == text and size_of(text) == n


# --------------------------------------------------------------------------- resolution

BASE = """
mesh m { authz allow_by_default }
policy small { max_request_body 1KiB }
service a { port http 80 endpoints 127.0.0.1:9001 max_request_body 10MiB }
service b { port http 80 endpoints 127.0.0.1:9002 use small }
service c { port http 80 endpoints 127.0.0.1:9003 use small max_request_body 2KB }
service d { port http 80 endpoints 127.0.0.1:9004 use small }
overlay service d { max_request_body none }
service e { port http 80 endpoints 127.0.0.1:9005 }
overlay service e { max_request_body 5MB }
"""


def limits(text: str) -> dict[str, int | None]:
    m = load_text(text, "m.mesh")
    return {s.name: (s.resilience.max_request_body.bytes if s.resilience.max_request_body else None)
            for s in m.services}


def test_policies_services_and_overlays() -> None:
    assert limits(BASE) == {"a": 10 * 2**20, "b": 1024, "c": 2000, "d": None, "e": 5_000_000}
    m = load_text(BASE, "m.mesh")
    span = m.service("a").resilience.max_request_body.span  # type: ignore[union-attr]
    assert (span.line, span.column) == (4, 51)


def errors(text: str) -> list[tuple[str, int]]:
    with pytest.raises(MeshcError) as e:
        load_text(text, "m.mesh")
    return [(d.code, d.span.line) for d in e.value.diagnostics if d.severity == "error"]


def test_twice_in_a_block_is_e103() -> None:
    assert errors("mesh m { } service a { port http 80\n max_request_body 1KB\n max_request_body 2KB }") == [("E103", 3)]


def test_tcp_and_external_services_cannot_limit_bodies() -> None:
    assert errors("mesh m { } service t { port tcp 80\n max_request_body 1KB }") == [("E112", 2)]
    assert errors('mesh m { } external x { host "x.example.com" port http 80\n max_request_body 1KB }') == [("E112", 2)]


# --------------------------------------------------------------------------- fmt, unparse, diff


def test_fmt_keeps_sizes_as_written() -> None:
    from meshc.fmt import format_text

    out = format_text("policy p {\n    max_request_body    1.5KB }\nservice a { port http 80 max_request_body none }\n")
    assert "  max_request_body 1.5KB\n" in out and "  max_request_body none\n" in out
    assert format_text(out) == out


def test_unparse_writes_the_largest_exact_unit() -> None:
    from meshc.unparse import to_mesh_text

    text = to_mesh_text(load_text(BASE, "m.mesh"))
    assert "max_request_body 10MiB" in text and "max_request_body 1KiB" in text
    assert "max_request_body 2KB" in text and "max_request_body 5MB" in text
    assert limits(text) == limits(BASE)


def test_diff_raise_or_remove_widens_lower_or_add_narrows() -> None:
    from meshc.diff import semantic_diff

    old = load_text(BASE, "m.mesh")
    new = load_text(BASE.replace("10MiB", "20MiB").replace("max_request_body 2KB", "max_request_body 1KB")
                    .replace("overlay service e { max_request_body 5MB }", "")
                    .replace("service d { port http 80 endpoints 127.0.0.1:9004 use small }",
                             "service d { port http 80 endpoints 127.0.0.1:9004 }"), "m.mesh")
    got = {(c.subject, c.effect, c.op) for c in semantic_diff(old, new).changes if "max request body" in c.text}
    assert got == {("a", "widening", "changed"), ("c", "narrowing", "changed"), ("e", "widening", "removed")}
    back = {(c.subject, c.effect, c.op) for c in semantic_diff(new, old).changes if "max request body" in c.text}
    assert back == {("a", "narrowing", "changed"), ("c", "widening", "changed"), ("e", "narrowing", "added")}
    texts = [c.text for c in semantic_diff(old, new).changes if c.subject == "a"]
    assert "a: max request body 10MiB -> 20MiB" in texts


# --------------------------------------------------------------------------- targets

SIMPLE = """
mesh m { authz allow_by_default }
service client { port http 8000 endpoints 127.0.0.1:9000 calls api }
service api { port http 8080 endpoints 127.0.0.1:9080
  max_request_body 1KiB }
"""


def compile_for(target: str, text: str = SIMPLE, **options: str) -> Any:
    return backends.compile_mesh(load_text(text, "m.mesh"), target, options=options or None)


def test_native_sets_the_limit_on_the_callees_inbound_listeners_only() -> None:
    import json

    files = compile_for("native").files
    (inbound,) = json.loads(files["api.json"])["inbound"]
    assert inbound["max_request_body_bytes"] == LIMIT
    assert json.loads(files["api.json"])["limits"]["max_request_body_bytes"] == 0  # the sidecar's own calls
    client = json.loads(files["client.json"])
    assert [x.get("max_request_body_bytes") for x in client["inbound"]] == [None]


def test_native_limit_leaves_the_services_own_calls_alone() -> None:
    """A service with a limit that also calls an HTTP service: only its inbound listeners
    get the limit (the runtime applies it per listener)."""
    import json

    text = SIMPLE.replace("service client { port http 8000 endpoints 127.0.0.1:9000 calls api }",
                          "service client { port http 8000 endpoints 127.0.0.1:9000 calls api\n"
                          "  max_request_body 1MiB }")
    client = json.loads(compile_for("native", text).files["client.json"])
    assert [x["max_request_body_bytes"] for x in client["inbound"]] == [1024**2]
    assert client["limits"]["max_request_body_bytes"] == 0 and client["outbound"]


def test_envoy_buffer_filter_on_the_inbound_hcm() -> None:
    import yaml

    boot = yaml.safe_load(compile_for("envoy").files["api/envoy.yaml"])
    (inbound,) = [x for x in boot["static_resources"]["listeners"] if x["name"] == "inbound_8080"]
    hcm = inbound["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in hcm["http_filters"]]
    assert names[-2:] == ["envoy.filters.http.buffer", "envoy.filters.http.router"]
    assert hcm["http_filters"][-2]["typed_config"]["max_request_bytes"] == LIMIT
    client = yaml.safe_load(compile_for("envoy").files["client/envoy.yaml"])
    assert "envoy.filters.http.buffer" not in str(client)


def test_envoy_refuses_grpc_ports() -> None:
    with pytest.raises(MeshcError) as e:
        compile_for("envoy", SIMPLE.replace("port http 8080", "port grpc 8080"))
    assert [(d.code, d.span.line) for d in e.value.diagnostics if d.severity == "error"] == [("E330", 5)]


def test_nginx_client_max_body_size() -> None:
    files = compile_for("nginx").files
    api, client = files["api/nginx.conf"].decode(), files["client/nginx.conf"].decode()
    assert f"client_max_body_size {LIMIT};" in api
    # nginx's own 1m default never applies: unlimited unless the .mesh says otherwise
    assert "client_max_body_size 0;" in api and "client_max_body_size 0;" in client
    assert f"client_max_body_size {LIMIT}" not in client


@pytest.mark.parametrize("target", ["istio", "linkerd", "gateway-api", "consul", "nginx-mesh", "appmesh"])
def test_targets_without_a_field_say_e301_at_the_line(target: str) -> None:
    with pytest.raises(MeshcError) as e:
        compile_for(target)
    got = [(d.code, d.span.line) for d in e.value.diagnostics
           if d.severity == "error" and "request body" in d.message]
    assert got == [("E301", 5)], e.value.diagnostics


@pytest.mark.skipif(shutil.which("envoy") is None, reason="envoy binary not on PATH")
def test_envoy_validates_the_output(tmp_path: Path) -> None:
    from test_envoy import compile_for_validation, envoy_validate

    envoy_validate(compile_for_validation(load_text(SIMPLE, "m.mesh"), tmp_path), tmp_path)


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@pytest.mark.skipif(NGINX is None, reason="nginx not installed")
def test_nginx_t_accepts_the_output(tmp_path: Path) -> None:
    from test_nginx import check_all, lower

    from meshc.certs import write_certs

    mesh = load_text(SIMPLE, "m.mesh")
    write_certs(mesh, tmp_path / "certs")
    assert check_all(lower(mesh, certs_dir=str(tmp_path / "certs")), tmp_path) == 2


# --------------------------------------------------------------------------- over loopback


def post(host: str, port: int, size: int) -> tuple[int, dict[str, Any] | None]:
    """One POST with a Content-Length body on a fresh connection: (status, upstream echo)."""
    import json

    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("POST", "/upload", body=b"x" * size, headers={"content-type": "application/octet-stream"})
        resp = conn.getresponse()
        body = resp.read()
        echo = json.loads(body) if resp.getheader("content-type") == "application/json" else None
        return resp.status, echo
    finally:
        conn.close()


def check_body_limit(run: Any, streams: bool = False) -> None:
    """On a running body_limit scenario: 200 (the whole body delivered) up to the limit, 413
    above it, and the service keeps serving afterwards. (Bodies stay below 16KiB: under the
    test runner, nginx workers run as nobody and cannot write bodies past their 16k memory
    buffer to client_body_temp in the 0700 pytest directory, a 500 with or without a limit.)
    A body declared (Content-Length) over the limit is refused before the application sees any
    of it, on every proxy. `streams`: the proxy forwards a chunked body as it arrives (native)
    and cuts it when it passes the limit, so the application may see the start of it."""
    host, port = run.runner.outbound("client", "api")
    api = run.upstreams["api"]
    for size, want in [(0, 200), (1000, 200), (LIMIT, 200), (LIMIT + 1, 413), (8 * LIMIT, 413), (10, 200)]:
        api.reset()
        status, echo = post(host, port, size)
        assert status == want, f"{size} bytes: {status}, want {want}\n{run.runner.logs()[-3000:]}"
        if want == 200:
            assert echo is not None and echo["upstream"] == "api" and api.hits == 1
            assert int(echo["headers"].get("content-length", "0")) == size
        else:
            assert api.started == 0, f"{size} bytes: the application saw a refused request"
    if streams:  # a chunked body over the limit: 413 too, however far it got
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("POST", "/upload", body=iter([b"x" * LIMIT, b"x" * LIMIT]),
                         headers={"content-type": "application/octet-stream"}, encode_chunked=True)
            assert conn.getresponse().status == 413
        finally:
            conn.close()
        api.reset()
        assert post(host, port, 10)[0] == 200


def body_limit_scenario() -> Any:
    from e2e.harness import load_scenarios

    (scenario,) = [s for s in load_scenarios() if s.name == "body-limit"]
    return scenario


@pytest.mark.e2e
def test_body_limit_over_loopback_on_native(tmp_path: Path) -> None:
    from e2e.harness import Run
    from e2e.native_runner import NativeRunner

    with Run(body_limit_scenario(), NativeRunner(), tmp_path) as run:
        run.run()
        check_body_limit(run, streams=True)


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("envoy") is None, reason="envoy binary not on PATH")
def test_body_limit_over_loopback_on_envoy(tmp_path: Path) -> None:
    from e2e.envoy_runner import EnvoyRunner
    from e2e.harness import Run

    with Run(body_limit_scenario(), EnvoyRunner(), tmp_path) as run:
        run.run()
        check_body_limit(run)



@pytest.mark.e2e
@pytest.mark.skipif(NGINX is None, reason="nginx not installed")
def test_body_limit_over_loopback_on_nginx(tmp_path: Path) -> None:
    from e2e.harness import Run
    from test_nginx_scenarios import NginxRunner

    with Run(body_limit_scenario(), NginxRunner(), tmp_path) as run:
        run.run()
        check_body_limit(run)
