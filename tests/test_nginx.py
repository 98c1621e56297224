"""nginx sidecars: every generated nginx.conf through the real `nginx -t`, the lowering decisions
(retries = N+1 tries over repeated servers, exact split percentages, max_conns, E301/E330), the
authorization map against meshc's own evaluator, and real traffic through two sidecars."""

from __future__ import annotations

import http.client
import http.server
import itertools
import json
import re
import shutil
import socket
import ssl  # noqa: F401  (nginx needs OpenSSL; Python's presence is irrelevant)
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshc.backends.base import Bundle
from meshc.backends.nginx import NginxBackend
from model_fixtures import bookinfo, example, example_ids, ident, replace, update_service, with_fault

from meshc import authz
from meshc.model import (
    AuthzRule,
    CircuitBreaker,
    Destination,
    Endpoint,
    Ingress,
    Match,
    Mesh,
    PathMatch,
    Port,
    Resilience,
    Retry,
    Rewrite,
    RouteRule,
    Service,
    Source,
    StringMatch,
    Version,
)

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install -y nginx)")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and one leaf per identity, in the `meshc certs` layout (CN=<sa>.<ns>, URI SAN)."""
    from meshc.certs import write_certs

    out = tmp_path_factory.mktemp("certs")
    meshes = [bookinfo(), e2e_mesh(1, 2, 3, 4, 5)] + [example(n) for n in example_ids()
                                                       if n != "bookinfo-py" and _compiles(n)]
    for m in meshes:
        write_certs(m, out)
    return out


def _compiles(name: str) -> bool:
    try:
        example(name)
        return True
    except pytest.skip.Exception:
        return False


def lower(mesh: Mesh, **options: str) -> Bundle:
    return NginxBackend(options).lower(mesh)


def nginx_t(conf: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    assert NGINX is not None
    prefix.mkdir(parents=True, exist_ok=True)
    return subprocess.run([NGINX, "-t", "-q", "-c", str(conf), "-p", str(prefix), "-e", "stderr"],
                          capture_output=True, text=True, timeout=30)


def check_all(bundle: Bundle, tmp: Path) -> int:
    n = 0
    for rel, data in sorted(bundle.files.items()):
        if not rel.endswith("nginx.conf"):
            continue
        conf = tmp / rel
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_bytes(data)
        res = nginx_t(conf, tmp / "prefix" / rel.replace("/", "_"))
        assert res.returncode == 0, f"{rel}: {res.stderr}\n{data.decode()}"
        n += 1
    return n


# --------------------------------------------------------------------------- nginx -t


@needs_nginx
@pytest.mark.parametrize("name", example_ids())
def test_every_nginx_conf_passes_nginx_t(name: str, certs: Path, tmp_path: Path) -> None:
    bundle = lower(example(name), certs_dir=str(certs))
    assert check_all(bundle, tmp_path) >= 1


@needs_nginx
def test_hostile_strings_survive_quoting(certs: Path, tmp_path: Path) -> None:
    """Values with quotes, backslashes, `$` and braces stay literal (nginx -t, and the text)."""
    mesh = bookinfo()
    rv = mesh.service("reviews")
    assert rv is not None
    hostile = 'a"b\\c $host ${x} {;}'
    from meshc.model import DirectResponse, HeaderOps
    rules = (RouteRule(matches=(Match(headers=(StringMatch(name="x-q", kind="exact", value=hostile),)),),
                       respond=DirectResponse(status=418, body=hostile)),
             RouteRule(matches=(Match(path=PathMatch(kind="regex", value="^/r[0-9]{2}$")),),
                       destinations=(Destination(service="reviews", version="v1"),),
                       response_headers=HeaderOps(set=(("x-h", hostile),))),
             *rv.routes)
    bundle = lower(update_service(mesh, "reviews", routes=rules), certs_dir=str(certs))
    assert check_all(bundle, tmp_path) == 4
    text = bundle.files["productpage/nginx.conf"].decode()  # (bookinfo() exposes nothing)
    assert 'return 418 "a\\"b\\\\c ${meshc_dollar}host ${meshc_dollar}{x} {;}";' in text


def test_output_is_deterministic() -> None:
    assert lower(bookinfo()).files == lower(bookinfo()).files


# --------------------------------------------------------------------------- lowering decisions


def conf(bundle: Bundle, svc: str) -> str:
    return bundle.files[f"{svc}/nginx.conf"].decode()


def location(text: str, name: str) -> str:
    m = re.search(r"location " + re.escape(name) + r" \{\n(.*?)\n        \}", text, re.S)
    assert m, name
    return m[1]


def test_retry_n_is_n_plus_one_tries_over_repeated_servers() -> None:
    text = conf(lower(bookinfo()), "productpage")
    default = location(text, "@reviews_9080_r3")  # otherwise -> v1, service retry 3
    assert "proxy_next_upstream_tries 4;" in default
    assert "proxy_next_upstream error timeout http_500 http_502 http_503 http_504 non_idempotent;" in default
    api = location(text, "@reviews_9080_r2")  # the rule's own `retry 2 on gateway-error`
    assert "proxy_next_upstream_tries 3;" in api
    assert "proxy_next_upstream http_502 http_503 http_504 non_idempotent;" in api
    upstream = re.search(r"upstream out_reviews_9080 \{(.*?)\}", text, re.S)
    assert upstream and upstream[1].count('server "127.0.0.1:9080"') == 4  # one server per attempt


def test_max_connections_is_spread_exactly_over_the_repeated_servers() -> None:
    mesh = bookinfo()
    rv = mesh.service("reviews")
    assert rv is not None
    bundle = lower(update_service(mesh, "reviews", resilience=rv.resilience.model_copy(update={
        "circuit_breaker": CircuitBreaker(max_connections=102), "outlier": None})))
    assert not bundle.diagnostics
    caps = [int(x) for x in re.findall(r"max_conns=(\d+)", conf(bundle, "productpage"))]
    assert caps == [26, 26, 25, 25] and sum(caps) == 102


def test_split_percentages_are_exact() -> None:
    text = conf(lower(bookinfo()), "productpage")
    assert '33.33% "out_reviews_9080/v2";' in text and '* "out_reviews_9080/v3";' in text


def test_no_timeout_is_explicit_and_timeouts_bound_each_hop() -> None:
    text = conf(lower(bookinfo()), "productpage")
    details = location(text, "@details_9080_r0")
    assert "proxy_read_timeout 365d;" in details and "proxy_next_upstream off;" in details
    assert "proxy_read_timeout 2000ms;" in location(text, "@reviews_9080_r3")


def test_unsupported_features_are_e301_and_partial_ones_e330() -> None:
    mesh = bookinfo()
    gaps = NginxBackend().unsupported(with_fault(mesh))
    assert {d.message.split(" are ")[0].split(" is ")[0] for d in gaps} == {
        "outlier detection", "fault injection (delay)"}
    perm = update_service(mesh, "details", ports=(Port(protocol="http", number=9080, mtls="permissive"),))
    assert any("permissive" in d.message for d in NginxBackend().unsupported(perm))
    # bookinfo's breaker has max_pending/max_requests: nginx has max_conns only
    assert [d.code for d in lower(mesh).diagnostics] == ["E330"]


# --------------------------------------------------------------------------- authorization map


def authz_map(text: str, port: int) -> tuple[str, list[tuple[str, str]], list[str]]:
    """(default, [(regex, action)], header names of the key) of one inbound port's map."""
    m = re.search(r'map "([^"]*)" \$meshc_authz_' + str(port) + r' \{\n(.*?)\n    \}', text, re.S)
    assert m
    lines = re.findall(r'^\s+"~((?:[^"\\]|\\.)*)" "(allow|deny)";$', m[2], re.M)
    default = re.search(r'default "(allow|deny)";', m[2])
    assert default
    unq = [(re.sub(r"\\(.)", r"\1", rx), action) for rx, action in lines]
    names = [f[len("$http_"):].replace("_", "-") for f in m[1].split("\\n") if f.startswith("$http_")]
    return default[1], unq, names


def nginx_decides(default: str, lines: list[tuple[str, str]], peer: str, method: str, path: str,
                  headers: dict[str, str], header_names: list[str]) -> bool:
    key = "\n".join([peer, method, *[headers.get(h, "") for h in header_names], path])
    for rx, action in lines:  # nginx tries map regexes in order; the first match wins
        if re.search(rx, key):
            return action == "allow"
    return default == "allow"


@pytest.mark.parametrize("posture", ["deny_by_default", "allow_by_default"])
def test_authz_map_matches_the_meshc_evaluator(posture: str) -> None:
    mesh = bookinfo(authz=posture)
    rules = mesh.rules + (
        AuthzRule(action="allow", sources=(Source(kind="authenticated"),), destinations=("details",),
                  paths=(PathMatch(kind="under", value="/public"),),
                  not_paths=(PathMatch(kind="prefix", value="/public/secret"),)),
        AuthzRule(action="deny", sources=(Source(kind="identity", name="bookinfo-productpage"),),
                  destinations=("*",), headers=(StringMatch(name="x-debug", kind="present"),)),
    )
    mesh = replace(mesh, rules=rules)
    bundle = lower(mesh)
    callers = [s.name for s in mesh.services] + ["ingress"]
    requests = [("GET", "/"), ("GET", "/ratings/1"), ("POST", "/ratings/1"), ("GET", "/admin/x"),
                ("GET", "/public"), ("GET", "/public/a"), ("GET", "/public/secret/1"), ("GET", "/publicity")]
    checked = 0
    for dst in [s.name for s in mesh.services]:
        default, lines, names = authz_map(conf(bundle, dst), 9080)
        for src, (method, path), hdrs in itertools.product(callers, requests, [{}, {"x-debug": "1"}]):
            if src == dst:
                continue
            want = authz.decide(mesh, src, dst, method=method, path=path, headers=hdrs).allowed
            ident_ = mesh.ingress_identity if src == "ingress" else mesh.service(src).identity  # type: ignore[union-attr]
            got = nginx_decides(default, lines, ident_.spiffe, method, path, hdrs, names)
            assert got == want, (src, dst, method, path, hdrs)
            checked += 1
    assert checked > 200


# --------------------------------------------------------------------------- real traffic


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def e2e_mesh(front: int, back: int, v1: int, v2: int, out_base: int, ingress: int = 8080) -> Mesh:
    """front -> back: header route to v2, else v1; retries 2 on 5xx; GET only; back exposed on
    `ingress` for paths under /x."""
    del out_base
    back_svc = Service(
        expose=Ingress(paths=(PathMatch(kind="under", value="/x"),), port=ingress),
        name="back", namespace="default", identity=ident("back"),
        ports=(Port(protocol="http", number=back, mtls="strict"),),
        versions=(Version(name="v1", labels=(("version", "v1"),), endpoints=(Endpoint(host="127.0.0.1", port=v1),)),
                  Version(name="v2", labels=(("version", "v2"),), endpoints=(Endpoint(host="127.0.0.1", port=v2),))),
        routes=(RouteRule(matches=(Match(headers=(StringMatch(name="x-canary", kind="exact", value="yes"),)),),
                          destinations=(Destination(service="back", version="v2"),)),
                RouteRule(matches=(Match(path=PathMatch(kind="under", value="/old")),),
                          destinations=(Destination(service="back", version="v1"),),
                          rewrite=Rewrite(prefix="/new")),
                RouteRule(destinations=(Destination(service="back", version="v1"),))),
        resilience=Resilience(retry=Retry(attempts=2, on=("5xx",))))
    front_svc = Service(name="front", namespace="default", identity=ident("front"),
                        ports=(Port(protocol="http", number=front, mtls="strict"),),
                        endpoints=(Endpoint(host="127.0.0.1", port=1),), calls=("back",))
    rules = (AuthzRule(action="allow", sources=(Source(kind="service", name="front"),), destinations=("back",),
                       methods=("GET",)),
             AuthzRule(action="allow", sources=(Source(kind="ingress"),), destinations=("back",)),
             AuthzRule(action="deny", sources=(Source(kind="any"),), destinations=("back",),
                       paths=(PathMatch(kind="prefix", value="/admin"),)))
    return Mesh(name="e2e", services=(back_svc, front_svc), rules=rules)


class _App(http.server.BaseHTTPRequestHandler):
    hits: dict[str, int]

    def do_GET(self) -> None:  # noqa: N802
        key = f"{self.server.server_port}{self.path}"  # type: ignore[attr-defined]
        self.hits[key] = self.hits.get(key, 0) + 1
        status = 503 if self.path.startswith("/flaky") else 200
        body = json.dumps({"port": self.server.server_port, "path": self.path,  # type: ignore[attr-defined]
                           "version": self.headers.get("x-meshc-version")}).encode()
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def apps() -> Iterator[tuple[list[int], dict[str, int]]]:
    hits: dict[str, int] = {}
    handler = type("App", (_App,), {"hits": hits})
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield [s.server_address[1] for s in servers], hits
    for s in servers:
        s.shutdown()
        s.server_close()


def get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, {}


@needs_nginx
@pytest.mark.e2e
def test_traffic_through_two_nginx_sidecars(apps: tuple[list[int], dict[str, int]], certs: Path,
                                           tmp_path: Path) -> None:
    (v1, v2), hits = apps
    front, back, out_base, ingress = free_ports(4)
    mesh = e2e_mesh(front, back, v1, v2, out_base, ingress)
    bundle = lower(mesh, certs_dir=str(certs), inbound_address="127.0.0.1", outbound_base=str(out_base))
    assert not bundle.diagnostics
    procs = []
    try:
        for svc in ("back", "front", "ingress-gateway"):
            conf_ = tmp_path / svc / "nginx.conf"
            conf_.parent.mkdir(parents=True)
            conf_.write_bytes(bundle.files[f"{svc}/nginx.conf"])
            prefix = tmp_path / f"prefix-{svc}"
            prefix.mkdir()
            procs.append(subprocess.Popen([NGINX, "-c", str(conf_), "-p", str(prefix), "-e", "stderr"],  # type: ignore[list-item]
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        deadline = time.monotonic() + 10
        url = f"http://127.0.0.1:{out_base}"
        while True:
            try:
                socket.create_connection(("127.0.0.1", out_base), timeout=0.2).close()
                socket.create_connection(("127.0.0.1", back), timeout=0.2).close()
                socket.create_connection(("127.0.0.1", ingress), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, [p.stderr.read() if p.poll() is not None and p.stderr
                                                     else "" for p in procs]
                time.sleep(0.05)
        status, body = get(url + "/x")
        assert (status, body["port"], body["version"]) == (200, v1, "v1")
        status, body = get(url + "/x", {"x-canary": "yes"})
        assert (status, body["port"], body["version"]) == (200, v2, "v2")
        # the app cannot choose the version: the caller's sidecar overwrites the header
        status, body = get(url + "/x", {"x-meshc-version": "v2"})
        assert body["port"] == v1
        # rewrite of `under "/old"` to "/new"
        assert get(url + "/old/a?q=1")[1]["path"] == "/new/a?q=1"
        # authorization on the callee (deny beats allow; methods)
        assert get(url + "/admin/x")[0] == 403
        assert get(url + "/x", method="POST")[0] == 403
        # encoded slashes are refused before routing and authorization
        assert get(url + "/a%2Fb")[0] == 400
        # retry 2 = 3 attempts
        assert get(url + "/flaky")[0] == 503
        assert hits[f"{v1}/flaky"] == 3
        # through the ingress gateway: exposed paths only, with the ingress identity
        gw = f"http://127.0.0.1:{ingress}"
        status, body = get(gw + "/x/1")
        assert (status, body["port"]) == (200, v1)
        assert get(gw + "/x", {"x-canary": "yes"})[1]["port"] == v2
        assert get(gw + "/xy")[0] == 404 and get(gw + "/admin")[0] == 404
        # straight to the callee without a client certificate: refused
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.RemoteDisconnected)):
            urllib.request.urlopen(f"https://127.0.0.1:{back}/x", context=ctx, timeout=5)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


RICH = r'''
mesh rich {
  mtls strict
  authz deny_by_default
}
service web {
  port http 9001
  identity web
  endpoints 127.0.0.1:19001
  calls api
}
service api {
  port http 9002
  identity api
  version v1 { labels version=v1  endpoints 127.0.0.1:19011 }
  version v2 { labels version=v2  endpoints 127.0.0.1:19012 }
  route {
    when path regex "^/item/[0-9]{1,3}$" and header x-user regex "a.*\"b" -> v2
    when query debug == "1" -> respond 418 "no \"debug\" ${here}"
    when path exact "/old" -> redirect path "/new" code 302
    when header x-gone absent and method POST, PUT -> v1 {
      rewrite host "internal.example"
      response_headers set cache-control "no-store"
      response_headers remove server
      mirror v2 12.5%
    }
    when path under "/api" -> v2 {
      rewrite prefix "/v2"
      timeout 1500ms
      retry 2 on 503, connect-failure per_try 500ms
    }
    otherwise -> split { v1 87.5%, v2 12.5% }
  }
  load_balance consistent_hash cookie "sid"
  rate_limit 600/m burst 10
  circuit_breaker max_connections 7
}
allow web -> api methods GET, POST, PUT headers x-tenant == "a b"
allow * -> api paths under "/public" except paths prefix "/public/secret"
deny identity web -> api paths regex "^/admin.*"
'''


def route_map(text: str, var: str) -> tuple[list[str], list[tuple[str, str]]]:
    m = re.search(r'map "([^"]*)" \$' + var + r' \{\n(.*?)\n    \}', text, re.S)
    assert m
    lines = re.findall(r'^\s+"~((?:[^"\\]|\\.)*)" "([a-z0-9_]+)";$', m[2], re.M)
    return m[1].split("\\n"), [(re.sub(r"\\(.)", r"\1", rx), v) for rx, v in lines]


@needs_nginx
def test_rich_route_table_passes_nginx_t_and_keeps_rule_order(certs: Path, tmp_path: Path) -> None:
    from meshc.certs import write_certs
    from meshc.compiler import load_text

    mesh = load_text(RICH, "rich.mesh")
    write_certs(mesh, tmp_path / "certs")
    backend = NginxBackend({"certs_dir": str(tmp_path / "certs")})
    assert not backend.unsupported(mesh)
    bundle = backend.lower(mesh)
    assert not bundle.diagnostics
    assert check_all(bundle, tmp_path) == 2
    text = conf(bundle, "web")
    fields, lines = route_map(text, "meshc_route_api_9002")
    assert fields == ["$request_method", "$http_x_gone", "$http_x_user", "$arg_debug", "$uri"]

    def pick(method: str, path: str, headers: dict[str, str] | None = None, debug: str = "") -> str:
        h = headers or {}
        key = "\n".join([method, h.get("x-gone", ""), h.get("x-user", ""), debug, path])
        return next((v for rx, v in lines if re.search(rx, key)), "meshc_404").rsplit("_", 1)[-1]

    assert pick("GET", "/item/12", {"x-user": 'a--"b'}) == "r0"
    assert pick("GET", "/item/1234", {"x-user": 'a--"b'}) == "r5"
    assert pick("GET", "/x", debug="1") == "r1"
    assert pick("GET", "/old") == "r2"
    assert pick("POST", "/z") == "r3" and pick("POST", "/z", {"x-gone": "1"}) == "r5"
    assert pick("GET", "/api") == "r4" and pick("GET", "/api/x") == "r4" and pick("GET", "/apix") == "r5"
    assert 'return 418 "no \\"debug\\" ${meshc_dollar}{here}";' in text
    assert 'return 302 "$scheme://$host/new$is_args$args";' in text
    assert '12.50% "1";' in text and '87.50% "out_api_9002/v1";' in text
    r4 = location(text, "@api_9002_r4")
    assert "proxy_next_upstream_tries 3;" in r4 and "proxy_read_timeout 500ms;" in r4
    assert "proxy_next_upstream_timeout 1500ms;" in r4
    assert 'rewrite "^\\\\/api/(.*)$" "/v2/$1" break;' in r4
    api = conf(bundle, "api")
    assert 'hash "$cookie_sid" consistent;' in api
    assert "limit_req_zone $server_name zone=meshc_rl_api:1m rate=600r/m;" in api
    assert "limit_req zone=meshc_rl_api burst=9 nodelay;" in api
    assert [int(x) for x in re.findall(r"max_conns=(\d+)", text)] == [3, 2, 2]  # 7 over retry 2 = 3 tries


@needs_nginx
def test_external_service_egress_with_tls_origination(tmp_path: Path) -> None:
    """Callers speak HTTP to their loopback port; nginx resolves the host at request time, originates
    TLS (SNI, system CAs) and authorizes the egress call in the caller's own sidecar."""
    from meshc.certs import write_certs
    from meshc.compiler import load_text

    mesh = load_text(r'''
mesh egress { authz deny_by_default }
service app {
  port http 9001
  endpoints 127.0.0.1:19001
  calls stripe, blocked
}
external stripe {
  host "api.stripe.com"
  port tls 443
  tls originate sni "api.stripe.com"
  timeout 3s
}
external blocked {
  host "example.org"
  port http 80
}
allow app -> stripe methods POST
''', "egress.mesh")
    write_certs(mesh, tmp_path / "certs")
    backend = NginxBackend({"certs_dir": str(tmp_path / "certs"), "resolver": "10.0.0.10"})
    assert not backend.unsupported(mesh)
    bundle = backend.lower(mesh)
    assert not bundle.diagnostics
    assert check_all(bundle, tmp_path) == 1
    text = conf(bundle, "app")
    assert 'resolver "10.0.0.10" valid=30s;' in text
    assert 'set $meshc_pick "api.stripe.com:443/";' in text and 'set $meshc_pick "example.org:80/";' in text
    assert '"api.stripe.com:443" "https";' in text and '"example.org:80" "http";' in text
    assert 'proxy_set_header Host "api.stripe.com";' in text
    assert 'proxy_ssl_trusted_certificate "/etc/ssl/certs/ca-certificates.crt";' in text
    default, lines, names = authz_map(text.replace("$meshc_egress_stripe_443", "$meshc_authz_1"), 1)
    peer = mesh.service("app").identity.spiffe  # type: ignore[union-attr]
    assert nginx_decides(default, lines, peer, "POST", "/v1/charges", {}, names)
    assert not nginx_decides(default, lines, peer, "GET", "/v1/charges", {}, names)
    assert 'map "spiffe://cluster.local/ns/default/sa/app\\n$request_method\\n$uri" $meshc_egress_blocked_80' in text
    # TLS passthrough (no origination) needs the stream module: E330
    plain = load_text(r'''
mesh p { authz allow_by_default }
service app {
  port http 9001
  endpoints 127.0.0.1:19001
  calls db
}
external db {
  host "db.example.org"
  port tls 5432
}
''', "p.mesh")
    assert [d.code for d in NginxBackend().lower(plain).diagnostics] == ["E330"]
