"""NGINX Service Mesh: the core objects SMI refers to are written (Services with their ports,
a Service per version whether a split names it or not, ServiceAccounts), valid against the
Kubernetes schemas."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from meshc.backends import compile_mesh
from model_fixtures import validate_crds

from meshc.compiler import load_text
from meshc.diagnostics import MeshcError

MESH = """
mesh m { namespace shop authz deny_by_default }
service web { port http 8080 calls api }
service api {
  port http 9000
  port grpc 9001
  version v1 { labels version=v1 }
  version v2 { labels version=v2 }
  version v3 { labels version=v3 }
  route { otherwise -> split { v1 90%, v2 10% } }
}
allow web -> api
"""


def core() -> dict[tuple[str, str], dict[str, Any]]:
    bundle = compile_mesh(load_text(MESH), "nginx-mesh")
    docs = list(yaml.safe_load_all(bundle.files["core.yaml"]))
    validate_crds("nginx-mesh", docs)
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_services_carry_ports() -> None:
    objs = core()
    api = objs[("Service", "api")]
    assert api["metadata"]["namespace"] == "shop"
    assert api["spec"]["selector"] == {"app": "api"}
    assert [(p["port"], p["appProtocol"]) for p in api["spec"]["ports"]] == [(9000, "http"), (9001, "grpc")]
    assert [p["port"] for p in objs[("Service", "web")]["spec"]["ports"]] == [8080]


def test_every_version_has_a_service_even_unrouted() -> None:
    objs = core()
    for v in ("v1", "v2", "v3"):  # v3 is named by no split
        svc = objs[("Service", f"api-{v}")]
        assert svc["spec"]["selector"] == {"app": "api", "version": v}


def test_service_accounts_for_traffic_targets() -> None:
    objs = core()
    assert {n for k, n in objs if k == "ServiceAccount"} == {"web", "api"}


def test_a_version_service_name_taken_by_a_service_is_e330() -> None:
    with pytest.raises(MeshcError) as e:
        compile_mesh(load_text(MESH + "service api-v3 { port http 80 }\n"), "nginx-mesh")
    assert any(d.code == "E330" and "'api-v3'" in d.message for d in e.value.diagnostics)
