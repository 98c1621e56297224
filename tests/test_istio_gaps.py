"""Istio: constructs the generated objects could not enforce are reported at their `.mesh`
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


def errors(text: str, target: str = "istio") -> list:
    with pytest.raises(MeshcError) as e:
        compile_mesh(load_text(text), target)
    return [d for d in e.value.diagnostics if d.severity == "error"]


def test_allow_rule_to_an_external_service_is_e301() -> None:
    [d] = errors(EGRESS)
    assert d.code == "E301" and d.span.line == 6 and "external service" in d.message


def test_warn_mode_keeps_the_in_mesh_rules() -> None:
    bundle = compile_mesh(load_text(EGRESS), "istio", unsupported="warn")
    assert any(d.code == "W301" and d.span.line == 6 for d in bundle.diagnostics)
    text = bundle.files["m.yaml"].decode()
    assert "name: b-allow" in text and "api.example.com" in text


def test_deny_rule_to_an_external_service_is_e301() -> None:
    text = EGRESS.replace("deny_by_default", "allow_by_default").replace("allow a -> api", "deny a -> api")
    [d] = errors(text)
    assert d.span.line == 6


def test_allow_to_external_under_allow_by_default_is_a_no_op() -> None:
    compile_mesh(load_text(EGRESS.replace("deny_by_default", "allow_by_default")), "istio")


MIXED_TLS = """
mesh m { namespace m }
service a { port http 80 calls api }
external api {
  host "api.example.com"
  port http 80
  port tls 443
  timeout 2s
}
"""


def test_timeout_on_external_with_a_passthrough_port_is_e301() -> None:
    [d] = errors(MIXED_TLS)
    assert d.code == "E301" and d.span.line == 8 and "timeouts on an external service" in d.message


@pytest.mark.parametrize("text", [
    MIXED_TLS.replace("  port tls 443\n", ""),                      # HTTP only: the VirtualService has it
    MIXED_TLS.replace("  timeout 2s\n", ""),                         # no timeout to lose
    MIXED_TLS.replace("  port http 80\n", "").replace("timeout 2s", "tls originate\n  timeout 2s"),
])
def test_timeouts_istio_can_hold_compile(text: str) -> None:
    compile_mesh(load_text(text), "istio")


def test_tls_only_external_timeout_stays_e301() -> None:
    [d] = errors(MIXED_TLS.replace("  port http 80\n", ""))
    assert d.span.line == 7 and "TCP service" in d.message


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
    bundle = compile_mesh(load_text(text), "istio", unsupported="warn")
    docs = [d for v in bundle.files.values() for d in yaml.safe_load_all(v) if isinstance(d, dict)]
    return {d["metadata"]["name"]: d["spec"] for d in docs if d.get("kind") == "AuthorizationPolicy"}


def test_identity_rule_matches_per_connection_on_permissive_ports() -> None:
    """meshc and Istio alike: a's sidecar speaks mTLS to the permissive port, so `allow a -> w`
    admits a on both ports; a plaintext caller of 8080 has no principal and is not admitted."""
    mesh = load_text(PERMISSIVE)
    assert authz.decide(mesh, "a", "w", port=8080).allowed
    assert authz.decide(mesh, "a", "w", port=9090).allowed
    assert not authz.decide(mesh, None, "w", port=8080).allowed
    [rule] = policies(PERMISSIVE)["w-allow"]["rules"]
    assert rule == {"from": [{"source": {"principals": ["cluster.local/ns/m/sa/a"]}}]}


def test_identity_rule_on_a_disabled_port_matches_nobody_on_both_sides() -> None:
    """mTLS disabled: meshc proves no identity, and Istio (PeerAuthentication DISABLE, client
    TLS DISABLE) sees no principal, so the same unnarrowed principals rule admits nobody."""
    text = PERMISSIVE.replace("mtls permissive on port 8080", "mtls disabled on port 8080")
    mesh = load_text(text)
    assert not authz.decide(mesh, "a", "w", port=8080).allowed
    assert authz.decide(mesh, "a", "w", port=9090).allowed
    assert "to" not in policies(text)["w-allow"]["rules"][0]


def test_anyone_rule_is_not_narrowed() -> None:
    [rule] = policies(PERMISSIVE.replace("allow a -> w", "allow * -> w"))["w-allow"]["rules"]
    assert "to" not in rule


def test_star_destination_is_one_namespace_policy() -> None:
    pols = policies(PERMISSIVE.replace("allow a -> w", "allow a -> *"))
    assert [n for n in pols if n != "default-deny"] == ["all-services-allow"]
    assert "to" not in pols["all-services-allow"]["rules"][0]


def test_star_destination_covers_external_services() -> None:
    """`allow a -> *` admits a's calls to external services too (meshc.authz): E301 as well."""
    text = EGRESS.replace("allow a -> api\nallow a -> b", "allow a -> *")
    assert authz.decide(load_text(text), "a", "api").allowed
    [d] = errors(text)
    assert d.code == "E301" and d.span.line == 6


def test_unauthenticated_sources_on_permissive_ports_are_written() -> None:
    """`deny unauthenticated` on a permissive port stops the plaintext callers only, in meshc
    and in Istio (notPrincipals: a meshed caller presents its principal over mTLS)."""
    text = ("mesh m { namespace m authz allow_by_default }\nservice a {\n  port http 80\n  mtls permissive\n}\n"
            "service b { port http 80 }\ndeny unauthenticated -> a\n")
    mesh = load_text(text, checks=False)
    assert not authz.decide(mesh, None, "a").allowed
    assert authz.decide(mesh, "b", "a").allowed
    [rule] = policies(text)["a-deny"]["rules"]
    assert rule == {"from": [{"source": {"notPrincipals": ["*"]}}]}
