"""`meshc check FILES [--each] [--strict] [--format ...]`: parse, resolve and run the graph checks."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from meshc.commands import UsageError
from meshc.commands.common import add_format, load, project_config, report, sources_of
from meshc.compiler import Loaded, expand_paths, load_all
from meshc.diagnostics import Diagnostic, MeshcError, render


def register(subparsers: Any) -> None:
    c = subparsers.add_parser("check", help="parse, resolve and run the graph checks")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    c.add_argument("--show-suppressed", action="store_true",
                   help="also print the warnings `# meshc: ignore[CODE]` comments silence")
    c.add_argument("--each", action="store_true",
                   help="check every entry point on its own: the root .mesh files of each folder holding a "
                        "given file (or under a given directory); for pre-commit hooks")
    add_format(c)
    c.set_defaults(func=run)


def entry_points(paths: Sequence[str]) -> list[Path]:
    """The meshes to check one by one: in every folder that holds a given file, or under a given
    directory (hidden folders skipped), the root .mesh files (those no file beside them
    imports) and the files that declare a `mesh` block."""
    folders: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            folders |= {f.parent for f in p.rglob("*.mesh")
                        if not any(part.startswith(".") and part not in (".", "..") for part in f.parts)}
        else:
            folders.add(p.parent)
    roots: list[Path] = []
    for folder in sorted(folders):
        try:
            roots += expand_paths([folder], entry_points=True)
        except ValueError as e:  # every file there is imported by another: a cycle
            raise UsageError(str(e)) from None
    if not roots:
        raise UsageError("no .mesh files in " + ", ".join(paths))
    return roots


def run(args: argparse.Namespace) -> int:
    """The files given as one mesh; or, for a directory or with --each, every mesh found on its
    own (every root file and every file that declares a `mesh` block: a dev base.mesh that
    prod.mesh imports is checked as well). Text: findings and an ok line per mesh on stderr;
    json, github, sarif: every finding in one document on stdout."""
    config = project_config()
    if args.each or any(Path(f).is_dir() for f in args.files):
        loads: list[Callable[[], Loaded]] = [
            functools.partial(load_all, [root], amplification_limit=config.amplification_limit, ignore=config.ignore)
            for root in entry_points(args.files)]
    else:
        loads = [functools.partial(load, args, config)]
    found: list[Diagnostic] = []
    failed = warned = False
    for load_one in loads:
        try:
            loaded = load_one()
        except MeshcError as e:
            found += e.diagnostics
            failed = True
            continue
        warned |= bool(loaded.warnings)
        shown = loaded.warnings + (suppressed_notes(loaded.suppressed) if args.show_suppressed else [])
        found += shown
        if args.format == "text":
            report(shown, args, loaded.sources)
            s = loaded.mesh
            silenced = f", {len(loaded.suppressed)} suppressed" if loaded.suppressed else ""
            print(f"{', '.join(s.files)}: ok ({len(s.services)} services, {len(s.rules)} rules, "
                  f"{len(loaded.warnings)} warnings{silenced})", file=sys.stderr)
    if args.format == "text":
        report([d for d in found if d.severity == "error"], args)
    else:
        sys.stdout.write(render(found, args.format, sources_of(found)))
    return 1 if failed or (args.strict and warned) else 0


def suppressed_notes(diags: list[Diagnostic]) -> list[Diagnostic]:
    """--show-suppressed: the silenced warnings, each saying so."""
    return [replace(d, notes=(*d.notes, "suppressed by a `# meshc: ignore[...]` comment")) for d in diags]
