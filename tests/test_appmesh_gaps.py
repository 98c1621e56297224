"""App Mesh: what it cannot say is refused at its `.mesh` line (E301/E330), never lowered as
something else: redirects and direct responses are not forwards, an HTTP/1.1 request limit is
not silently folded into a larger connection limit."""

from __future__ import annotations

import json

import pytest
from meshc.backends import compile_mesh

from meshc.compiler import load_text
from meshc.diagnostics import MeshcError

REDIRECTING = """
mesh m { namespace m }
service web {
  port http 80
  version v1 { labels version=v1 }
  route {
    when path exact "/old" -> redirect path "/new" code 301
    when path exact "/gone" -> respond 404 "gone"
    otherwise -> v1
  }
}
"""


def routes(bundle: object) -> list[dict]:
    return [json.loads(v) for p, v in bundle.files.items()  # type: ignore[attr-defined]
            if p.startswith("aws/") and b'"routeName"' in v]


def test_redirect_and_respond_are_e301() -> None:
    with pytest.raises(MeshcError) as e:
        compile_mesh(load_text(REDIRECTING), "appmesh")
    assert {d.code for d in e.value.diagnostics} == {"E301"}
    assert {d.span.line for d in e.value.diagnostics} == {7, 8}


def test_warn_leaves_out_the_redirect_rule_instead_of_forwarding() -> None:
    bundle = compile_mesh(load_text(REDIRECTING), "appmesh", unsupported="warn")
    rs = routes(bundle)
    assert len(rs) == 1  # the `otherwise` rule only
    assert "/old" not in json.dumps(rs) and "/gone" not in json.dumps(rs)


def pool_mesh(limits: str) -> str:
    return f"mesh m {{ namespace m }}\nservice web {{\n  port http 80\n  circuit_breaker {limits}\n}}\n"


def test_a_binding_http1_request_limit_is_e330() -> None:
    """Envoy rejects requests beyond max_requests at once; App Mesh would queue them."""
    with pytest.raises(MeshcError) as e:
        compile_mesh(load_text(pool_mesh("max_connections 100 max_requests 10")), "appmesh", unsupported="warn")
    [d] = [d for d in e.value.diagnostics if d.severity == "error"]
    assert d.code == "E330" and d.span.line == 4 and "max_requests" in d.message


@pytest.mark.parametrize("limits", ["max_connections 50 max_requests 50", "max_connections 50 max_requests 80",
                                    "max_connections 50", "max_requests 50"])
def test_one_http1_limit_is_the_connection_limit(limits: str) -> None:
    bundle = compile_mesh(load_text(pool_mesh(limits)), "appmesh")
    text = "\n".join(v.decode() for p, v in bundle.files.items() if p.startswith("aws/"))
    assert '"maxConnections": 50' in text
