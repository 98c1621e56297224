#!/usr/bin/env python3
"""Re-extract the bundled CRD schemas (meshc/schemas/) from upstream CRD manifests, for a
version bump of a mesh.

    python scripts/extract_schemas.py -o meshc/schemas/istio crd-all.gen.yaml
    python scripts/extract_schemas.py -o meshc/schemas/linkerd --all charts/linkerd-crds/templates/policy/*.yaml

Each output file is exactly the `spec.versions[].schema.openAPIV3Schema` object of one version
of one CustomResourceDefinition, written as `json.dump(sort_keys=True, indent=1)` plus a newline
to `<group>_<version>_<Kind>.json` (the layout meshc.validate reads; SOURCES.md there says where
each file came from). By default only the files already in the output folder are refreshed, so
a bump keeps the same set; `--all` writes every version of every CRD found. Helm chart templates
are read as SOURCES.md describes: whole-line `{{- ... }}` directives are dropped and inline
`{{ ... }}` expressions replaced by a placeholder before parsing. Update SOURCES.md (refs and
commits) by hand after a bump.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

_WHOLE_LINE_DIRECTIVE = re.compile(r"^\s*\{\{-?.*-?\}\}\s*$")
_INLINE_DIRECTIVE = re.compile(r"\{\{-?.*?-?\}\}")


def detemplate(text: str) -> str:
    """A Helm template made parseable YAML (directives only wrap or name CRDs, never schemas)."""
    lines = [line for line in text.splitlines() if not _WHOLE_LINE_DIRECTIVE.match(line)]
    return "\n".join(_INLINE_DIRECTIVE.sub("helm-placeholder", line) for line in lines) + "\n"


def schemas(text: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(file name, openAPIV3Schema) for every version of every CRD in a manifest stream."""
    for doc in yaml.safe_load_all(detemplate(text)):
        if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc.get("spec") or {}
        group, kind = spec.get("group", ""), (spec.get("names") or {}).get("kind", "")
        for version in spec.get("versions") or ():
            schema = ((version.get("schema") or {}).get("openAPIV3Schema"))
            if isinstance(schema, dict):
                yield f"{group}_{version['name']}_{kind}.json", schema


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True, indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifests", nargs="+", type=Path, help="CRD manifest YAML files (or Helm CRD templates)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="the schema folder of one system")
    parser.add_argument("--all", action="store_true", help="write every CRD version found, not only the files present")
    args = parser.parse_args(argv)

    found: dict[str, dict[str, Any]] = {}
    for manifest in args.manifests:
        for name, schema in schemas(manifest.read_text()):
            found[name] = schema
    wanted = sorted(found) if args.all else sorted(p.name for p in args.out.glob("*.json"))
    args.out.mkdir(parents=True, exist_ok=True)
    missing = []
    for name in wanted:
        if name not in found:
            missing.append(name)
            continue
        path = args.out / name
        new = render(found[name])
        status = "unchanged" if path.exists() and path.read_text() == new else "written"
        path.write_text(new)
        print(f"{status}: {path}")
    for name in missing:
        print(f"not in the manifests (kept as it was): {args.out / name}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
