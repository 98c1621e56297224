"""`meshc validate FILES --target T [--schemas DIR]`: emitted Kubernetes objects (or .mesh files
compiled for T) checked offline against the CRD schemas (meshc.validate)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from meshc.backends import compile_mesh
from meshc.compiler import load_all
from meshc.diagnostics import MeshcError, render
from meshc.validate import SCHEMAS_HELP, default_schema_dir, load_schemas, validate_files


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "validate", help="check emitted Kubernetes objects offline against CRD schemas",
        description="Validate Kubernetes YAML (files or folders) or the output of .mesh files compiled "
                    "for --target, against CRD schemas (unknown fields rejected). " + SCHEMAS_HELP + ".")
    p.add_argument("files", nargs="+", type=Path, help="YAML files, folders of them, or .mesh files")
    p.add_argument("--target", "-t", help="the target whose schemas apply (and which .mesh files compile to)")
    p.add_argument("--schemas", type=Path, default=None,
                   help="CRD schema folder (default: $MESHC_SCHEMAS, else the schemas meshc ships)")
    p.add_argument("--experimental", action="store_true",
                   help="prefer experimental-channel schemas (Gateway API) where both exist")
    p.add_argument("--option", "-X", action="append", default=[], metavar="NAME[=VALUE]",
                   help="backend option used when compiling .mesh files")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=run)


def _read_inputs(paths: list[Path], target: str | None, options: dict[str, str]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    meshes = [p for p in paths if p.suffix == ".mesh"]
    for p in paths:
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.suffix in (".yaml", ".yml") and f.is_file():
                    files[str(f)] = f.read_bytes()
        elif p.suffix != ".mesh":
            files[str(p)] = p.read_bytes()
    if meshes:
        if not target:
            raise ValueError("--target is required to validate .mesh files")
        loaded = load_all(meshes)
        bundle = compile_mesh(loaded.mesh, target, unsupported="warn", options=options)
        if bundle.diagnostics:  # what the target could not say was dropped: say so
            print(render(bundle.diagnostics, "text", loaded.sources), end="", file=sys.stderr)
        files.update({f"<{target}>/{k}": v for k, v in bundle.files.items()})
    return files


def run(args: argparse.Namespace) -> int:
    schema_dir = args.schemas or default_schema_dir()
    if not Path(schema_dir).is_dir():
        print(f"meshc validate: schema directory {schema_dir} does not exist; {SCHEMAS_HELP}", file=sys.stderr)
        return 2
    options = dict(o.split("=", 1) if "=" in o else (o, "true") for o in args.option)
    try:
        files = _read_inputs(args.files, args.target, options)
    except (OSError, ValueError) as e:
        print(f"meshc validate: {e}", file=sys.stderr)
        return 2
    except MeshcError as e:
        print(str(e), file=sys.stderr)
        return 1
    # output compiled with the experimental option uses experimental-channel fields
    experimental = args.experimental or options.get("experimental", "false").lower() in ("1", "true", "yes", "on")
    problems = validate_files(files, schema_dir, target=args.target, experimental=experimental)
    store = load_schemas(schema_dir, args.target, experimental)
    if args.format == "json":
        print(json.dumps([p.__dict__ for p in problems], indent=2))
    else:
        for prob in problems:
            print(str(prob), file=sys.stderr)
    n_docs = sum(len([d for d in yaml.safe_load_all(b) if d is not None])
                 for k, b in files.items() if k.endswith((".yaml", ".yml")))
    note = store.skipped_note()
    if note:
        print(note, file=sys.stderr)
    print(f"{n_docs} object(s) in {len(files)} file(s): {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0
