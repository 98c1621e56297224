"""Istio: constructs the generated objects could not enforce are reported at their `.mesh`
line (E301, W301 with --unsupported=warn), never dropped silently."""

from __future__ import annotations

import pytest
from meshc.backends import compile_mesh

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
