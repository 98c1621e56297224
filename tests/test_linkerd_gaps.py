"""Linkerd: constructs the generated objects could not enforce are reported at their `.mesh`
line (E301, W301 with --unsupported=warn), never dropped silently."""

from __future__ import annotations

import pytest
import yaml
from meshc.backends import compile_mesh

from meshc import authz
from meshc.compiler import load_text
from meshc.diagnostics import MeshcError

EGRESS = """
mesh m { namespace m authz deny_by_default }
service a { port http 80 calls api }
service b { port http 80 }
external api { host "api.example.com" port http 80 }
allow a -> api
allow a -> b
"""


def test_allow_rule_to_an_external_service_is_e301() -> None:
    with pytest.raises(MeshcError) as e:
        compile_mesh(load_text(EGRESS), "linkerd")
    [d] = [d for d in e.value.diagnostics if d.severity == "error"]
    assert d.code == "E301" and d.span.line == 6 and "external service" in d.message


def test_warn_mode_keeps_the_in_mesh_rules() -> None:
    bundle = compile_mesh(load_text(EGRESS), "linkerd", unsupported="warn")
    assert any(d.code == "W301" and d.span.line == 6 for d in bundle.diagnostics)
    text = "".join(v.decode() for v in bundle.files.values())
    assert "b-allow-1" in text


PERMISSIVE = """
mesh m { namespace m authz deny_by_default }
service a { port http 80 calls w }
service w {
  port http 8080
  port http 9090
  mtls permissive on port 8080
}
allow a -> w
"""


def policies(text: str) -> dict[str, dict]:
    bundle = compile_mesh(load_text(text), "linkerd", unsupported="warn")
    docs = [d for v in bundle.files.values() for d in yaml.safe_load_all(v) if isinstance(d, dict)]
    return {d["metadata"]["name"]: d for d in docs if d.get("kind") == "AuthorizationPolicy"}


def test_identity_rule_admits_the_mtls_caller_on_a_permissive_port() -> None:
    """meshc and Linkerd alike: a's proxy speaks mTLS to the permissive port, so `allow a -> w`
    admits a on both ports (a MeshTLSAuthentication), and a plaintext caller on neither."""
    mesh = load_text(PERMISSIVE)
    assert authz.decide(mesh, "a", "w", port=8080).allowed
    assert authz.decide(mesh, "a", "w", port=9090).allowed
    assert not authz.decide(mesh, None, "w", port=8080).allowed
    pols = policies(PERMISSIVE).values()
    assert {p["spec"]["targetRef"]["name"] for p in pols} == {"w-8080", "w-9090"}
    assert {p["spec"]["requiredAuthenticationRefs"][0]["kind"] for p in pols} == {"MeshTLSAuthentication"}


def test_anyone_rule_admits_plaintext_on_a_permissive_port() -> None:
    pols = policies(PERMISSIVE.replace("allow a -> w", "allow * -> w"))
    kinds = {p["spec"]["targetRef"]["name"]: p["spec"]["requiredAuthenticationRefs"][0]["kind"] for p in pols.values()}
    assert kinds == {"w-8080": "NetworkAuthentication", "w-9090": "MeshTLSAuthentication"}


def test_star_destination_covers_external_services() -> None:
    """`allow a -> *` admits a's calls to external services too (meshc.authz): E301 as well."""
    text = EGRESS.replace("allow a -> api\nallow a -> b", "allow a -> *")
    assert authz.decide(load_text(text), "a", "api").allowed
    with pytest.raises(MeshcError) as e:
        compile_mesh(load_text(text), "linkerd")
    [d] = [d for d in e.value.diagnostics if d.severity == "error"]
    assert d.code == "E301" and d.span.line == 6
