"""Envoy-only end-to-end checks (the shared scenarios are in tests/scenarios/; these cover what
only the envoy target writes: the ingress gateway sidecar)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e.envoy_runner import EnvoyRunner  # noqa: E402
from e2e.harness import Run, Scenario  # noqa: E402

INGRESS = Scenario(
    name="ingress-gateway",
    mesh="""
mesh gw { mtls strict  authz deny_by_default }
service web {
  port http {{port.web}}
  endpoints 127.0.0.1:{{upstream.web}}
  expose ingress on port {{port.gateway}} paths prefix "/public", exact "/login"
}
allow ingress -> web paths prefix "/public/ok", exact "/login"
""",
    upstreams={"web": {}},
    steps=[
        {"name": "exposed and allowed", "request": {"direct": "ingress-gateway", "tls": "plaintext",
                                                    "path": "/public/ok/page"},
         "expect": {"status": 200, "upstream": "web"}},
        {"name": "exact path", "request": {"direct": "ingress-gateway", "tls": "plaintext", "path": "/login"},
         "expect": {"status": 200, "upstream": "web"}},
        {"name": "not exposed: no route at the gateway",
         "request": {"direct": "ingress-gateway", "tls": "plaintext", "path": "/private"},
         "expect": {"status": 404, "hits": {"web": 0}}},
        {"name": "exposed but not allowed for the ingress identity (the service's RBAC)",
         "request": {"direct": "ingress-gateway", "tls": "plaintext", "path": "/public/other"},
         "expect": {"status": 403, "hits": {"web": 0}}},
        {"name": "the service itself still requires mTLS",
         "request": {"direct": "web", "tls": "plaintext", "path": "/login"},
         "expect": {"refused": True, "hits": {"web": 0}}},
    ],
)


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("envoy") is None, reason="envoy binary not on PATH")
def test_ingress_gateway(tmp_path: Path) -> None:
    with Run(INGRESS, EnvoyRunner(), tmp_path) as run:
        run.run()
