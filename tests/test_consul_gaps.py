"""Consul: constructs it cannot say are refused (E301) and, with --unsupported=warn, left out
whole, never lowered as something else (a redirect or direct response is not a forward)."""

from __future__ import annotations

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


def test_redirect_and_respond_are_e301() -> None:
    with pytest.raises(MeshcError) as e:
        compile_mesh(load_text(REDIRECTING), "consul")
    assert {d.code for d in e.value.diagnostics} == {"E301"}
    assert {d.span.line for d in e.value.diagnostics} == {7, 8}


def test_warn_leaves_out_the_redirect_rule_instead_of_forwarding() -> None:
    bundle = compile_mesh(load_text(REDIRECTING), "consul", unsupported="warn")
    text = "\n".join(v.decode() for v in bundle.files.values())
    # the router holds only the `otherwise` route: no match on /old or /gone forwards to web
    assert "/old" not in text and "/gone" not in text
