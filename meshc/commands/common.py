"""What the commands share: diagnostics output (text on stderr, machine formats on stdout for
`check`), colour, and the .mesh files a command line names."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from meshc.commands import UsageError
from meshc.compiler import Loaded, expand_paths, load_all, read_bounded, source_text
from meshc.diagnostics import Diagnostic, render
from meshc.parse import MAX_FILE_BYTES
from meshc.project import ProjectConfig, ProjectConfigError
from meshc.project import find as find_project_config


def add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("text", "json", "github", "sarif"), default="text",
                   help="how to print diagnostics (github: workflow annotations; sarif: code scanning)")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto")


def want_color(args: argparse.Namespace) -> bool:
    if getattr(args, "color", "auto") == "always":
        return True
    if getattr(args, "color", "auto") == "never" or os.environ.get("NO_COLOR"):
        return False
    return sys.stderr.isatty()


def report(diags: Sequence[Diagnostic], args: argparse.Namespace, sources: dict[str, str] | None = None) -> None:
    """Print diagnostics on stderr (text) or stdout (machine formats are the payload of `check`)."""
    fmt = getattr(args, "format", "text")
    if fmt not in ("text", "json", "github", "sarif"):
        fmt = "text"
    out = render(diags, fmt, sources or sources_of(diags), color=want_color(args) and fmt == "text")
    if not out:
        return
    stream = sys.stdout if fmt != "text" and args.command == "check" else sys.stderr
    stream.write(out)


# `-` as the only file: the mesh is read from standard input (imports relative to the
# working directory), and its diagnostics are named `-:LINE:COL`, as ruff and mypy do.
STDIN = "-"
_stdin: dict[str, bytes] = {}  # what was read from standard input, once


def read_stdin() -> bytes:
    """Standard input, read once, at most as much as a .mesh file may hold."""
    if STDIN not in _stdin:
        data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise UsageError(f"standard input is larger than the {MAX_FILE_BYTES // 2**20} MiB limit of a .mesh file")
        _stdin[STDIN] = data
    return _stdin[STDIN]


def _read(path: Path) -> bytes:
    return read_stdin() if str(path) == STDIN else read_bounded(path)


def sources_of(diags: Sequence[Diagnostic]) -> dict[str, str]:
    out = {}
    for f in {d.span.file for d in diags if d.span.file}:
        text = _stdin[STDIN].decode("utf-8", errors="replace") if f == STDIN and STDIN in _stdin else source_text(f)
        if text is not None:
            out[f] = text
    return out


def mesh_files(paths: Sequence[str]) -> list[Path]:
    try:
        return expand_paths([Path(p) for p in paths])
    except ValueError as e:
        raise UsageError(str(e)) from None


def project_config() -> ProjectConfig:
    """The project configuration that applies here (meshc.project); a bad one is a usage error."""
    try:
        return find_project_config()
    except ProjectConfigError as e:
        raise UsageError(str(e)) from None


def load(args: argparse.Namespace, config: ProjectConfig | None = None) -> Loaded:
    config = config or project_config()
    settle = functools.partial(load_all, amplification_limit=config.amplification_limit, ignore=config.ignore)
    if STDIN in args.files:
        if len(args.files) != 1:
            raise UsageError("'-' (standard input) must be the only file")
        return settle([Path(STDIN)], read=_read)
    return settle(mesh_files(args.files))
