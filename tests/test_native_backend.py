"""The native backend: what it writes for a mesh (pinned semantics, port allocation, determinism)
and that every file it writes is a valid config for the runtime (pydantic models and the JSON
Schema checked into docs/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from meshc.backends import compile_mesh
from meshc.backends.base import FEATURES
from meshc.backends.native import NativeBackend

from meshc.compiler import load, load_text
from meshc.diagnostics import MeshcError
from meshc.runtime import config as C

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / "docs" / "native-config.schema.json"

MESH = """
mesh demo { mtls strict  authz deny_by_default }
service web {
  port http 8080
  endpoints 127.0.0.1:18080
  calls api
}
service api {
  port http 9080
  version v1 { labels version=v1  endpoints 127.0.0.1:19101 }
  version v2 { labels version=v2  endpoints 127.0.0.1:19102, 127.0.0.1:19103 }
  route {
    when path prefix "/beta"  -> split { v1 12.5%, v2 87.5% }
    when path under "/api"    -> v2 { retry none  timeout none }
    otherwise                 -> v1
  }
  timeout 2s
  retry 3 on 5xx, connect-failure per_try 500ms
  load_balance least_request
  circuit_breaker max_connections 100 max_pending 10 max_requests 200
}
allow web -> api methods GET
deny  *   -> api paths prefix "/admin"
"""


def compiled(text: str = MESH, **options: str) -> dict[str, Any]:
    bundle = compile_mesh(load_text(text), "native", options=options)
    return {k: json.loads(v) for k, v in bundle.files.items()}


def listener(cfg: dict[str, Any], callee: str) -> dict[str, Any]:
    return next(x for x in cfg["outbound"] if x["callee"] == callee)


def test_files_and_models() -> None:
    out = compiled()
    assert sorted(out) == ["api.json", "mesh.json", "web.json"]
    index = C.MeshIndex.model_validate(out["mesh.json"])
    assert [s.service for s in index.sidecars] == ["api", "web"]
    for entry in index.sidecars:
        cfg = C.SidecarConfig.model_validate(out[entry.config])
        assert cfg.identity == entry.identity
        assert [x.port for x in cfg.inbound] == [x.port for x in entry.inbound]


def test_every_example_validates_against_the_checked_in_schema() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for mesh_dir in sorted((ROOT / "examples").iterdir()):
        if not any(mesh_dir.glob("*.mesh")):
            continue
        mesh = load([mesh_dir])  # a folder stands for its root files
        bundle = compile_mesh(mesh, "native", unsupported="warn")
        for name, data in bundle.files.items():
            errors = list(validator.iter_errors(json.loads(data)))
            assert not errors, (mesh_dir.name, name, errors[0].message)


def test_schema_in_docs_is_in_sync() -> None:
    assert SCHEMA_FILE.read_text() == C.schema_text(), (
        "regenerate with: python -m meshc.runtime.config > docs/native-config.schema.json")


def test_pinned_semantics() -> None:
    web = compiled()["web.json"]
    routes = listener(web, "api")["routes"]
    beta, under, default = routes
    assert beta["matches"][0]["path"] == {"kind": "prefix", "value": "/beta"}
    assert under["matches"][0]["path"] == {"kind": "under", "value": "/api"}
    # weights in hundredths of a percent, exact
    assert [(w["cluster"], w["weight"]) for w in beta["clusters"]] == [
        ("outbound|9080|v1|api", 1250), ("outbound|9080|v2|api", 8750)]
    # retry N = N retries; the route timeout covers them; `none` is explicit
    assert default["retry"]["num_retries"] == 3 and default["retry"]["per_try_timeout_ms"] == 500
    assert default["retry"]["on"] == ["5xx", "connect-failure"]
    assert default["timeout_ms"] == 2000
    assert under["retry"] is None and "timeout_ms" in under and under["timeout_ms"] is None


def test_clusters_point_at_the_callee_sidecars_with_mtls() -> None:
    out = compiled()
    api_in = {x["name"]: x for x in out["api.json"]["inbound"]}
    web = out["web.json"]
    clusters = {c["name"]: c for c in web["clusters"]}
    v2 = clusters["outbound|9080|v2|api"]
    v2_ports = sorted(x["port"] for x in api_in.values() if "v2" in x["versions"])
    assert sorted(e["port"] for e in v2["endpoints"]) == v2_ports and len(v2_ports) == 2
    assert v2["tls"]["mode"] == "mtls"
    assert v2["tls"]["expected_spiffe"] == ["spiffe://cluster.local/ns/default/sa/api"]
    assert v2["tls"]["cert"].endswith("default.web.pem")  # meshc certs layout: <ns>.<sa>.pem
    assert v2["lb"]["policy"] == "least_request"
    assert v2["circuit_breaker"] == {"max_connections": 100, "max_pending": 10, "max_requests": 200,
                                     "max_retries": None}  # unset: unlimited, as on the Envoy target
    # inbound listeners forward to the real instances
    assert sorted(x["app"]["port"] for x in api_in.values()) == [19101, 19102, 19103]


def test_authorization_is_flattened_deny_first() -> None:
    api = compiled()["api.json"]
    rules = api["inbound"][0]["authz"]["rules"]
    assert [r["action"] for r in rules] == ["deny", "allow"]
    assert rules[0]["principals"] == [{"kind": "any", "value": ""}]
    assert rules[1]["principals"] == [{"kind": "spiffe", "value": "spiffe://cluster.local/ns/default/sa/web"}]
    assert rules[1]["methods"] == ["GET"]
    assert api["inbound"][0]["authz"]["default"] == "deny"
    assert api["inbound"][0]["tls"]["mode"] == "strict"
    assert api["inbound"][0]["path_normalization"] == "strict"


def test_port_allocation_is_sequential_and_follows_base_port() -> None:
    a = compiled()
    b = compiled(base_port="20000")
    ports_a = _all_ports(a)
    ports_b = _all_ports(b)
    assert ports_a == list(range(15000, 15000 + len(ports_a)))
    assert ports_b == [p - 15000 + 20000 for p in ports_a]
    # documented order: per sidecar by name, admin, inbound, outbound
    api, web = a["api.json"], a["web.json"]
    assert api["admin"]["port"] == 15000 and [x["port"] for x in api["inbound"]] == [15001, 15002, 15003]
    assert web["admin"]["port"] == 15004 and web["inbound"][0]["port"] == 15005
    assert listener(web, "api")["port"] == 15006


def _all_ports(out: dict[str, Any]) -> list[int]:
    ports = []
    for e in out["mesh.json"]["sidecars"]:
        ports.append(e["admin_port"])
        ports += [x["port"] for x in e["inbound"]] + [x["port"] for x in e["outbound"]]
    return ports


@pytest.mark.parametrize("value", ["abc", "80", "65500"])
def test_bad_base_port_is_refused_as_an_option(value: str) -> None:
    from meshc.backends import OptionError

    with pytest.raises(OptionError, match="a whole number from 1024 to 65000"):
        compile_mesh(load_text(MESH), "native", options={"base_port": value})


def _digest(files: dict[str, bytes]) -> str:
    import hashlib

    return hashlib.sha256(b"".join(k.encode() + v for k, v in sorted(files.items()))).hexdigest()


def test_output_is_byte_identical_across_hash_seeds() -> None:
    code = ("import hashlib; from meshc.compiler import load; from meshc.backends import compile_mesh;"
            "from pathlib import Path; b = compile_mesh(load([Path('examples/bookinfo/bookinfo.mesh')]), 'native');"
            "print(hashlib.sha256(b''.join(k.encode() + v for k, v in sorted(b.files.items()))).hexdigest())")
    here = _digest(compile_mesh(load([ROOT / "examples/bookinfo/bookinfo.mesh"]), "native").files)
    for seed in ("0", "12345"):
        other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                               env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
        assert other == here


def test_capabilities_are_known_features() -> None:
    assert NativeBackend.CAPABILITIES <= set(FEATURES)
    assert "slo" not in NativeBackend.CAPABILITIES


def test_grpc_ports_are_l4_with_a_warning() -> None:
    text = """
mesh g { mtls strict  authz allow_by_default }
service client { port http 8080  endpoints 127.0.0.1:18080  calls rpc }
service rpc { port grpc 9090  endpoints 127.0.0.1:19090  timeout 1s }
"""
    bundle = compile_mesh(load_text(text), "native")
    assert [d.code for d in bundle.diagnostics] == ["W312"]
    client = json.loads(bundle.files["client.json"])
    assert listener(client, "rpc")["protocol"] == "tcp"


def test_external_service_tls_origination_and_egress_authz() -> None:
    text = """
mesh e { mtls strict  authz deny_by_default }
service shop { port http 8080  endpoints 127.0.0.1:18080  calls payments }
external payments {
  host "api.payments.example"
  port http 443
  tls originate sni "api.payments.example"
}
allow shop -> payments methods POST
"""
    out = compiled(text)
    assert sorted(out) == ["mesh.json", "shop.json"]  # externals have no sidecar
    shop = out["shop.json"]
    lst = listener(shop, "payments")
    assert lst["authz"]["rules"][0]["principals"][0]["value"] == "spiffe://cluster.local/ns/default/sa/shop"
    c = shop["clusters"][0]
    assert c["endpoints"] == [{"host": "api.payments.example", "port": 443}]
    assert c["tls"]["mode"] == "tls" and c["tls"]["sni"] == "api.payments.example"
    assert c["host_header"] == "api.payments.example"


def test_validate_hook_accepts_our_output_and_reports_broken_files() -> None:
    from meshc.backends.native import validate

    files = dict(compile_mesh(load_text(MESH), "native").files)
    assert validate(files) == []
    broken = json.loads(files["web.json"])
    broken["outbound"][0]["routes"][0]["clusters"][0]["cluster"] = "nope"
    files["web.json"] = json.dumps(broken).encode()
    del files["api.json"]
    problems = validate(files)
    assert any("unknown cluster 'nope'" in p for p in problems)
    assert any("missing file 'api.json'" in p for p in problems)


def test_values_the_runtime_cannot_honour_are_errors() -> None:
    """A cookie ttl (the proxy never issues the cookie) and a gRPC health check (gRPC ports are
    carried as TCP) would otherwise be dropped silently."""
    from meshc.compiler import load_text

    mesh = load_text("mesh m {}\nservice a {\n  port http 80\n  endpoints 127.0.0.1:9\n"
                     "  load_balance consistent_hash cookie sid ttl 1h\n  health_check grpc interval 5s\n}\n"
                     "allow ingress -> a\n", checks=False)
    with pytest.raises(MeshcError) as e:
        compile_mesh(mesh, "native")
    assert [(d.code, d.span.line) for d in e.value.diagnostics] == [("E313", 5), ("E313", 6)]
    ok = load_text("mesh m {}\nservice a {\n  port http 80\n  endpoints 127.0.0.1:9\n"
                   "  load_balance consistent_hash cookie sid\n  health_check tcp interval 5s\n}\n"
                   "allow ingress -> a\n", checks=False)
    assert compile_mesh(ok, "native").files
