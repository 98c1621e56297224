"""The command layer: one module per `meshc` command (argument parsing, output, exit codes)
over library modules that know nothing of argparse. Each module has `register(subparsers)` and
sets `func` on its parser; meshc.cli imports only the module of the command being run (the
runtime, kubernetes and jsonschema are slow to import), `meshc --help` imports them all."""

from __future__ import annotations


class UsageError(Exception):
    """A command line meshc cannot act on: `meshc: error: ...`, exit 2."""


# command word -> the module that registers it, in the order `meshc --help` lists them
COMMANDS: dict[str, str] = {
    "check": "meshc.commands.check", "compile": "meshc.commands.compile", "fmt": "meshc.commands.fmt",
    "graph": "meshc.commands.graph", "diff": "meshc.commands.diff", "why": "meshc.commands.why",
    "validate": "meshc.commands.validate", "certs": "meshc.certs", "import": "meshc.importers",
    "proxy": "meshc.runtime.commands", "up": "meshc.runtime.commands",
    "stat": "meshc.commands.observe", "top": "meshc.commands.observe",
}
