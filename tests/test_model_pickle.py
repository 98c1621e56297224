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
