"""Goldens: every example compiled for the model dump and for every available backend.

Regenerate after an intended change with:
    pytest tests/test_golden.py --snapshot-update
The files under golden/<target>/<example>/ are never edited by hand. A target that cannot
express part of an example is compiled with --unsupported=warn; its warnings (W301) are
part of the golden as `diagnostics.txt`, so a newly lost feature shows up in review.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from examples_index import ROOT, example_roots
from meshc.backends.base import Bundle, dump_yaml

from meshc import backends
from meshc.compiler import load_all
from meshc.diagnostics import MeshcError, render

EXAMPLES = example_roots()
TARGETS = ["model", *backends.available()]


def _nest(files: dict[str, bytes]) -> dict[str, object]:
    tree: dict[str, object] = {}
    for rel, data in files.items():
        node = tree
        *dirs, leaf = rel.split("/")
        for d in dirs:
            node = node.setdefault(d, {})  # type: ignore[assignment]
        node[leaf] = data.decode()
    return tree


def compile_example(target: str, path: Path) -> dict[str, bytes]:
    loaded = load_all([path.relative_to(ROOT)])
    if target == "model":
        return {"model.yaml": dump_yaml(loaded.mesh.dump()).encode()}
    try:
        bundle = backends.compile_mesh(loaded.mesh, target, unsupported="warn")
    except MeshcError as e:
        bundle = Bundle(diagnostics=e.diagnostics)
    files = dict(bundle.files)
    if bundle.diagnostics:
        files["diagnostics.txt"] = render(bundle.diagnostics, "text", loaded.sources).encode()
    return files


@pytest.mark.parametrize("example", sorted(EXAMPLES))
@pytest.mark.parametrize("target", TARGETS)
def test_golden(target: str, example: str, snapshot, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # spans name files relative to the working directory
    files = compile_example(target, EXAMPLES[example])
    assert files, f"{target} produced nothing for {example}"
    snapshot.snapshot_dir = ROOT / "golden" / target
    snapshot.assert_match_dir(_nest(files), example)
