"""The model crosses process boundaries (`meshc diff --jobs 2` loads the old side in a child):
pickling must give back an equal, fully working model."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from meshc.compiler import load

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("example", ["bookinfo", "shop", "multifile"])
def test_pickle_round_trip(example: str) -> None:
    files = sorted((EXAMPLES / example).rglob("*.mesh"))
    assert files, example
    mesh = load(files, checks=False)
    back = pickle.loads(pickle.dumps(mesh, protocol=pickle.HIGHEST_PROTOCOL))
    assert back == mesh
    assert back.model_dump_json() == mesh.model_dump_json()
    for svc in mesh.services:  # the private name index is rebuilt
        assert back.service(svc.name) == svc
        assert back.services[mesh.services.index(svc)].model_fields_set == svc.model_fields_set


def test_nodes_keep_spans_and_which_fields_were_set() -> None:
    """A node pickles as its values in field order, and its set fields only when some field
    kept its default; spans come back as Spans."""
    from meshc.model import PathMatch, Span

    span = Span("a.mesh", 3, 4, 3, 9)
    full = PathMatch(kind="exact", value="/x", span=span)
    partial = PathMatch(kind="prefix", value="/y")  # span left at its default
    for node in (full, partial):
        back = pickle.loads(pickle.dumps(node, protocol=pickle.HIGHEST_PROTOCOL))
        assert back == node and back.model_fields_set == node.model_fields_set
        assert type(back.span) is Span and back.span == node.span
    assert pickle.loads(pickle.dumps(span)) == span and type(pickle.loads(pickle.dumps(span))) is Span
