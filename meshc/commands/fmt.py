"""`meshc fmt [--check] [--diff] [--stdout] FILES`: .mesh files in canonical form."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from meshc.commands import UsageError
from meshc.commands.common import STDIN, add_format, read_stdin
from meshc.compiler import UnreadableInput, read_bounded
from meshc.diagnostics import Diagnostic, MeshcError
from meshc.fmt import format_text
from meshc.parse import decode


def register(subparsers: Any) -> None:
    c = subparsers.add_parser("fmt", help="print .mesh files in canonical form")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.add_argument("--check", action="store_true", help="exit 1 if any file would change; change nothing")
    c.add_argument("--diff", action="store_true", help="with --check, show the changes")
    c.add_argument("--stdout", action="store_true", help="print the result instead of rewriting files")
    add_format(c)
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if STDIN in args.files:
        return _format_stdin(args)
    changed = 0
    errors: list[Diagnostic] = []
    files = [Path(f) for f in args.files]
    for f in files:
        name = str(f)
        try:
            text = decode(name, read_bounded(f))
            new = format_text(text, name)
        except UnreadableInput as e:
            raise UsageError(f"cannot read {f}: {e.reason}") from None
        except OSError as e:
            raise UsageError(f"cannot read {f}: {e.strerror}") from None
        except MeshcError as e:
            errors += e.diagnostics
            continue
        if new == text:
            continue
        changed += 1
        if args.check:
            print(f"would reformat {f}", file=sys.stderr)
            if args.diff:
                import difflib

                sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                                           f"{f}", f"{f} (formatted)"))
        elif args.stdout:
            sys.stdout.write(new)
        else:
            f.write_text(new)
            print(f"reformatted {f}", file=sys.stderr)
    if args.stdout and not changed and not errors:
        for f in files:
            sys.stdout.write(decode(str(f), read_bounded(f)))
    if errors:
        raise MeshcError(errors)
    return 1 if args.check and changed else 0


def _format_stdin(args: argparse.Namespace) -> int:
    """`meshc fmt -`: standard input in canonical form on standard output (with --check,
    nothing is printed unless --diff; exit 1 if it would change)."""
    if args.files != [STDIN]:
        raise UsageError("'-' (standard input) must be the only file")
    text = decode(STDIN, read_stdin())
    new = format_text(text, STDIN)  # MeshcError: the CLI prints it, named `-:LINE:COL`
    if not args.check:
        sys.stdout.write(new)
        return 0
    if new != text and args.diff:
        import difflib

        sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True), "-", "- (formatted)"))
    return 1 if new != text else 0
