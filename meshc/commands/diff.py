"""`meshc diff OLD NEW` and `meshc diff --base REF [PATHS]`: the semantic diff (meshc.diff) of two
versions of a mesh, the old one from a file or a git revision (meshc.gitrev)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meshc import diff_sides, parallel
from meshc.commands.common import sources_of
from meshc.compiler import expand_paths, load
from meshc.diagnostics import MeshcError, render
from meshc.diff import RENDERERS, render_text, semantic_diff
from meshc.gc_pause import paused_gc
from meshc.gitrev import GIT_ROOT, GitError, load_at_ref
from meshc.model import Mesh


def load_paths(paths: Sequence[Path]) -> Mesh:
    """One side of a diff: files, or directories standing for their root files. Graph checks
    are `meshc check`'s business: the diff compares meaning, even of a mesh with findings
    (parse and resolution errors still stop it)."""
    return load(list(paths), checks=False)


def report_load_error(err: Exception, relabel: tuple[str, str] = ("", ""), command: str = "diff",
                      color: str = "auto") -> int:
    """Print load errors on stderr (exit 1); anything else is a usage problem (exit 2)."""
    if isinstance(err, MeshcError):
        tint = color == "always" or (color == "auto" and sys.stderr.isatty() and "NO_COLOR" not in os.environ)
        text = render(err.diagnostics, "text", sources_of(err.diagnostics), color=tint)
        sys.stderr.write(text.replace(*relabel) if relabel[0] else text)
        return 1
    sys.stderr.write(f"meshc {command}: {err}\n")
    return 2


def _targets(arg: str | None) -> list[str]:
    if arg == "all":
        from meshc.backends import available  # imports every backend: only when asked for

        return available()
    return [t.strip() for t in arg.split(",") if t.strip()] if arg else []


# Above this much .mesh text, with a core idle, the two sides load at once (meshc.diff_sides).
PARALLEL_BYTES = 1_000_000


def _both_at_once(new_paths: Sequence[Path], targets: list[str]) -> bool:
    """Whether to load the sides on two cores: a large mesh, a core idle, and no generated
    files to compare (they depend on every span, which the rebuilt old side does not keep).
    Asked in this order: idle_core() samples the machine for 50 ms."""
    if targets or not parallel.enabled:
        return False
    try:
        size = sum(f.stat().st_size for f in expand_paths(new_paths))
    except (OSError, ValueError):
        return False
    return size >= PARALLEL_BYTES and parallel.idle_core()


def run(args: argparse.Namespace) -> int:
    with paused_gc():
        return _run_diff(args)


def _run_diff(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths]
    targets = _targets(args.target)
    if not args.base and len(paths) != 2:
        sys.stderr.write("meshc diff: give OLD and NEW, or --base REF [PATHS]\n")
        return 2
    new_paths = (paths or [Path(".")]) if args.base else paths[1:]
    relabel = (str(GIT_ROOT) + "/", f"{args.base}:") if args.base else ("", "")

    def load_old() -> Mesh | None:
        return load_at_ref(args.base, new_paths) if args.base else load_paths(paths[:1])

    try:
        if _both_at_once(new_paths, targets):
            try:
                old, new = diff_sides.load_both(load_old, lambda: load_paths(new_paths))
            except diff_sides.OldSideError as e:
                if isinstance(e.error, MeshcError):
                    return report_load_error(e.error, relabel, color=args.color)  # the old side's files, named as the user knows them
                raise e.error from None
        else:
            new = load_paths(new_paths)
            try:
                old = load_old()
            except MeshcError as e:
                return report_load_error(e, relabel, color=args.color)
        result = semantic_diff(old if old is not None else Mesh(name=new.name), new, targets=targets)
        if args.base:
            result = result.relabel(*relabel)
    except GitError as e:
        sys.stderr.write(f"meshc diff: {e}\n")
        return 2
    except (MeshcError, OSError) as e:
        return report_load_error(e, color=args.color)
    if args.format == "text":
        color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty()
                                           and "NO_COLOR" not in os.environ)
        sys.stdout.write(render_text(result, color=color))
    else:
        sys.stdout.write(RENDERERS[args.format](result))
    if args.fail_on == "widen" and result.widens:
        return 1
    if args.fail_on == "any" and not result.empty:
        return 1
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "diff", help="semantic diff of two versions of a mesh (access, routing, resilience, posture)",
        description="Compare two versions of a mesh by meaning: OLD NEW (files or directories of "
                    ".mesh files; a directory means its files no other file imports), or --base REF "
                    "[PATHS] to compare the working tree with git revision REF.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="OLD NEW, or with --base the new side (default .)")
    p.add_argument("--base", metavar="REF", help="read the old side from git at REF (imports resolved at REF)")
    p.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    p.add_argument("--fail-on", choices=("widen", "any", "never"), default="never",
                   help="exit 1 when a change widens access or weakens protection (widen), or on any change")
    p.add_argument("--target", metavar="T[,T]", help="also list generated files that change for these targets ('all': every target)")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    p.set_defaults(func=run)
