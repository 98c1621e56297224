"""Where the examples are, for every test module: name -> root .mesh file.

An example is a folder of examples/; each of its root files (a file no other file in the
folder imports) is compiled on its own. A folder with one root is named after the folder;
with several, `<folder>-<file stem>`.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = ROOT / "examples"


def example_roots() -> dict[str, Path]:
    from meshc.commands.common import mesh_files

    out: dict[str, Path] = {}
    for d in sorted(p for p in EXAMPLES_DIR.iterdir() if p.is_dir() and any(p.glob("*.mesh"))):
        roots = mesh_files([str(d)])
        for r in roots:
            out[d.name if len(roots) == 1 else f"{d.name}-{r.stem}"] = r
    return out


def all_mesh_files() -> list[Path]:
    return sorted(EXAMPLES_DIR.rglob("*.mesh"))
