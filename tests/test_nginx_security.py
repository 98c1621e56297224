"""The nginx target against hostile values (issue 16): the quoting helper through the real
nginx (nginx -t, and requests that must read every value back byte for byte), directive
injection through the trust domain, the E331 refusals, the E332 subject check, and a `$` in an
exposed path over loopback.

The values here bypass the `.mesh` parser (which refuses control characters since issue 16):
the backend must be safe on its own.
"""

from __future__ import annotations

import http.client
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshc.backends.nginx import (
    D,
    Key,
    Lit,
    NginxBackend,
    Plain,
    Rx,
    Sidecar,
    Var,
    block,
    d,
    expr,
    regex_escape,
    render,
)

from meshc.compiler import load_text
from meshc.model import Identity, Mesh

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install -y nginx)")

NASTY = ['"', "\\", "$", "${x}", "$host", ";", "{", "}", "#", "'", "a\nb", "\r\n", "\t", "\\n", '\\"', "~",
         "default", "include", "\\default", "~.*", "é ünïcødé ✓", "\u2028", "$1", "a$", "$$", " lead", "trail ",
         "x;\ninclude /etc/passwd;\n#", "\x00", "\x1b[31m"]
values = st.lists(st.one_of(st.sampled_from(NASTY), st.text(st.characters(blacklist_categories=("Cs",)),
                                                             max_size=30)), min_size=1, max_size=12)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def header_safe(v: str) -> bool:
    """What an HTTP client can send and receive as a header value unchanged."""
    return bool(v) and all("!" <= c <= "~" for c in v)


@contextmanager
def nginx(conf: str, workdir: Path, port: int) -> Iterator[None]:
    """nginx -t, then nginx serving `conf` until the block ends."""
    assert NGINX is not None
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "nginx.conf"
    path.write_text(conf, encoding="utf-8")
    t = subprocess.run([NGINX, "-t", "-q", "-c", str(path), "-p", str(workdir), "-e", "stderr"],
                       capture_output=True, text=True, timeout=30)
    assert t.returncode == 0, t.stderr + conf
    proc = subprocess.Popen([NGINX, "-c", str(path), "-p", str(workdir), "-e", str(workdir / "err.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (workdir / "err.log").read_text()
                time.sleep(0.02)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body, resp


def quoting_conf(vals: list[str], port: int) -> str:
    """One nginx.conf through the backend's own template and `ngx_arg`: per value, a `return`
    (Lit), an `add_header` (Lit value), a literal map key (Key), a regex (Rx), and the value in
    the header comment (ngx_comment)."""
    http: list[D] = [block("geo", "$meshc_dollar", children=[d("default", Plain("$"))])]
    locs: list[D] = []
    for i, v in enumerate(vals):
        http += [block("map", "$http_x_k", f"$meshc_k{i}", children=[d("default", Lit("0")), d(Key(v), Lit("1"))]),
                 block("map", "$http_x_k", f"$meshc_r{i}",
                       children=[d("default", Lit("0")), d(Rx("~^" + regex_escape(v) + "$"), Lit("1"))])]
        locs += [block("location", "=", Plain(f"/v{i}"), children=[d("return", 200, Lit(v))]),
                 block("location", "=", Plain(f"/k{i}"),
                       children=[d("return", 200, expr(Var(f"meshc_k{i}"), Var(f"meshc_r{i}")))])]
        if header_safe(v):
            locs.append(block("location", "=", Plain(f"/h{i}"),
                              children=[d("add_header", Plain("x-v"), Lit(v), "always"), d("return", 204)]))
    server = block("server", children=[d("listen", Plain(f"127.0.0.1:{port}")), *locs])
    ident = Identity(name="q", namespace="default", trust_domain="".join(vals))
    return render(Sidecar(name="".join(vals), identity=ident, http=http, servers=[server]))


@needs_nginx
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(vals=values)
def test_quoted_values_read_back_byte_for_byte(vals: list[str], tmp_path_factory: pytest.TempPathFactory) -> None:
    """Whatever the value (quotes, backslashes, `$`, `;`, braces, `#`, line breaks, NUL, unicode),
    nginx -t accepts the config, no directive appears that meshc did not write, and nginx gives
    each value back exactly: as a body, as a header, as a map key and as a regex."""
    port = free_port()
    conf = quoting_conf(vals, port)
    # structure: every line outside quoted strings is one of the template's or ours
    assert not re.search(r"^\s*include\b", conf, re.M)
    with nginx(conf, tmp_path_factory.mktemp("q"), port):
        for i, v in enumerate(vals):
            status, body, _ = get(port, f"/v{i}")
            assert (status, body) == (200, v.encode()), (i, v)
            if header_safe(v):
                status, _, resp = get(port, f"/h{i}")
                assert (status, resp.getheader("x-v")) == (204, v)
                assert get(port, f"/k{i}", {"x-k": v})[1] == b"11", (i, v)
                assert get(port, f"/k{i}", {"x-k": v + "z"})[1] == b"00", (i, v)


# --------------------------------------------------------------------------- injection


BASE = """
mesh m { trust_domain "cluster.local" }
service web { port http 8080 endpoints 127.0.0.1:18080 calls api
              expose ingress hosts "example.com" paths prefix "/app" }
service api { port http 8081 endpoints 127.0.0.1:18081
              load_balance consistent_hash header "x-h"
              route { when path regex "^/r/[0-9]+$" -> api { request_headers set x-a "v" } otherwise -> api } }
allow * -> api
allow * -> web
"""


def with_trust_domain(mesh: Mesh, td: str) -> Mesh:
    return mesh.model_copy(update={"trust_domain": td, "services": tuple(
        s.model_copy(update={"identity": s.identity.model_copy(update={"trust_domain": td})})
        for s in mesh.services)})


def directives(conf: str) -> list[str]:
    """The directive names of an nginx.conf, read as nginx's tokenizer reads them (quotes,
    escapes, comments), so an injected `include` shows up even inside odd text."""
    names, word, start, i, quote = [], "", True, 0, ""
    while i < len(conf):
        c = conf[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "#":
            while i < len(conf) and conf[i] != "\n":
                i += 1
        elif c in ";{}":
            start = True
        elif c.isspace():
            if word and start:
                names.append(word)
                start = False
            word = ""
        else:
            word = word + c if start else ""
        i += 1
    return names


@needs_nginx
def test_trust_domain_cannot_inject_a_directive(tmp_path: Path) -> None:
    """Issue 16's payload: the newline used to end the header comment and `include` ran."""
    td = "cluster.local)\ninclude /etc/passwd;\n# ($host"
    bundle = NginxBackend({}).lower(with_trust_domain(load_text(BASE), td))
    assert not [x for x in bundle.diagnostics if x.severity == "error"]
    for rel, data in bundle.files.items():
        if rel.endswith("nginx.conf"):
            conf = data.decode()
            assert "include" not in directives(conf), rel
            assert "${meshc_dollar}host" in conf  # never the $host variable
            path = tmp_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(conf)
            assert NGINX is not None
            t = subprocess.run([NGINX, "-t", "-q", "-c", str(path), "-p", str(path.parent), "-e", "stderr"],
                               capture_output=True, text=True, timeout=30)
            # nginx -t fails only on the certificate files, which this test does not write
            assert "passwd" not in t.stderr and ("certs/" in t.stderr or t.returncode == 0), t.stderr


def e331(mesh: Mesh) -> list[tuple[int, str]]:
    bundle = NginxBackend({}).lower(mesh)
    return [(x.span.line, x.message) for x in bundle.diagnostics if x.code == "E331"]


def replace_service(mesh: Mesh, name: str, **update: object) -> Mesh:
    return mesh.model_copy(update={"services": tuple(s.model_copy(update=update) if s.name == name else s
                                                     for s in mesh.services)})


def test_regex_server_name_is_refused_at_its_line() -> None:
    mesh = load_text(BASE)
    web = mesh.service("web")
    assert web is not None and web.expose is not None
    bad = replace_service(mesh, "web", expose=web.expose.model_copy(update={"hosts": ("~.*",)}))
    assert e331(bad) == [(web.expose.span.line, "nginx cannot carry the host '~.*': nginx would not read it "
                                                "as a literal server name")]
    assert e331(mesh) == []


@pytest.mark.parametrize("key", ["x$host", "x y", "a;b"])
def test_hash_keys_cannot_name_variables(key: str) -> None:
    mesh = load_text(BASE)
    api = mesh.service("api")
    assert api is not None and api.resilience.load_balance is not None
    lb = api.resilience.load_balance.model_copy(update={"hash_key": key})
    bad = replace_service(mesh, "api", resilience=api.resilience.model_copy(update={"load_balance": lb}))
    assert [line for line, _ in e331(bad)] == [lb.span.line]


def test_named_groups_and_header_injection_are_refused() -> None:
    mesh = load_text(BASE)
    api = mesh.service("api")
    assert api is not None
    rule = api.routes[0]
    m = rule.matches[0]
    assert m.path is not None and rule.request_headers is not None
    named = m.model_copy(update={"path": m.path.model_copy(update={"value": "^/r/(?<meshc_peer>[0-9]+)$"})})
    crlf = rule.request_headers.model_copy(update={"set": (("x-a", "v\r\nx-injected: 1"),)})
    bad = replace_service(mesh, "api", routes=(rule.model_copy(update={"matches": (named,),
                                                                        "request_headers": crlf}),
                                               *api.routes[1:]))
    found = e331(bad)
    assert {line for line, _ in found} == {m.path.span.line, rule.request_headers.span.line}
    assert any("named groups" in msg for _, msg in found) and any("control characters" in msg for _, msg in found)


def test_subject_collision_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """E332 guards what the hash makes unique: with no hash digits, two shortened names collide."""
    import meshc.certs

    sa = "s" * 60
    text = f"""
mesh m {{ authz allow_by_default }}
service a {{ port http 8080 namespace prod1 identity {sa} endpoints 127.0.0.1:1 }}
service b {{ port http 8081 namespace prod2 identity {sa} endpoints 127.0.0.1:2 }}
"""
    assert not NginxBackend({}).lower(load_text(text)).diagnostics
    monkeypatch.setattr(meshc.certs, "CN_HASH_HEX", 0)
    found = [x for x in NginxBackend({}).lower(load_text(text)).diagnostics if x.code == "E332"]
    assert len(found) == 1 and "one certificate subject" in found[0].message


# --------------------------------------------------------------------------- `$` in an exposed path


@needs_nginx
@pytest.mark.e2e
def test_dollar_in_an_exposed_path_matches(tmp_path: Path) -> None:
    """`paths prefix "/a$b"` used to be written as `${meshc_dollar}` in a location, where nginx
    expands nothing: the location never matched (404)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class App(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = self.path.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    app = ThreadingHTTPServer(("127.0.0.1", 0), App)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    svc_port, gw_port = free_port(), free_port()
    from meshc.certs import write_certs

    mesh = load_text(f"""
mesh m {{ authz allow_by_default }}
service web {{ port http {svc_port} endpoints 127.0.0.1:{app.server_address[1]}
              expose ingress on port {gw_port} paths prefix "/a$b" }}
""")
    write_certs(mesh, tmp_path / "certs")
    bundle = NginxBackend({"certs_dir": str(tmp_path / "certs"), "inbound_address": "127.0.0.1",
                           "outbound_base": str(free_port())}).lower(mesh)
    assert not [x for x in bundle.diagnostics if x.severity == "error"]
    conf = bundle.files["ingress-gateway/nginx.conf"].decode()
    assert 'location ^~ "/a$b"' in conf
    svc = bundle.files["web/nginx.conf"].decode()
    try:
        with nginx(svc, tmp_path / "web", svc_port), nginx(conf, tmp_path / "gw", gw_port):
            status, body, _ = get(gw_port, "/a$b/x")
            assert (status, body) == (200, b"/a$b/x")
            assert get(gw_port, "/ab/x")[0] == 404
    finally:
        app.shutdown()
        app.server_close()
