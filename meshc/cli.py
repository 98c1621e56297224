"""The `meshc` command line.

Payload on stdout, messages on stderr. Exit codes: 0 ok, 1 diagnostics (or changes) found,
2 usage error. No input, however broken, produces a Python traceback: every failure of the
user's making is a diagnostic; an internal error says so in one line and exits 3.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from meshc import __version__
from meshc.commands import COMMANDS, UsageError
from meshc.commands.common import report
from meshc.diagnostics import MeshcError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"meshc: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with `command`, only that command's module is imported."""
    p = _Parser(prog="meshc", description="Mesh-as-code: compile .mesh files to service-mesh configuration.")
    p.add_argument("--version", action="version", version=f"meshc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    modules = [COMMANDS[command]] if command in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for mod in modules:
        # No fallback: a command module that cannot be imported is a broken install, said at once
        # (main() reports it), never a command that silently disappears from the parser.
        importlib.import_module(mod).register(sub)
    return p


def _command(argv: Sequence[str]) -> str | None:
    """The command word of a `meshc` command line (its first argument that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command(argv)
    try:
        parser = build_parser(command)
    except Exception as e:  # noqa: BLE001 - a command module failed to import: a broken install
        if os.environ.get("MESHC_DEBUG"):
            raise
        print(f"meshc: internal error: a command module cannot be loaded: {type(e).__name__}: {e} "
              "(set MESHC_DEBUG=1 for a traceback; reinstall meshc or report it)", file=sys.stderr)
        return 3
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except MeshcError as e:
        report(e.diagnostics, args)
        return 1
    except UsageError as e:
        print(f"meshc: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # noqa: BLE001 - last line of defence: never a traceback
        if os.environ.get("MESHC_DEBUG"):
            raise
        print(f"meshc: internal error: {type(e).__name__}: {e} (set MESHC_DEBUG=1 for a traceback; "
              "please report it)", file=sys.stderr)
        return 3


# Commands that end when their output is written: nothing is left to clean up but the heap.
_BATCH_COMMANDS = frozenset({"check", "compile", "diff", "why", "graph", "fmt"})


def run() -> None:
    """The `meshc` command. A batch command exits without tearing down the heap: a
    10,000-service mesh is about a million objects, and freeing them one by one at exit
    takes ~0.5 s that serves nothing (mypy exits the same way)."""
    code = main()
    if _command(sys.argv[1:]) not in _BATCH_COMMANDS:
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader went away (`meshc check | head`): as main() treats it
        pass
    os._exit(code)


if __name__ == "__main__":
    run()
