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
from pathlib import Path

from meshc import __version__
from meshc.compiler import expand_paths
from meshc.diagnostics import Diagnostic, MeshcError, render

# Sub-commands that live in their own module, added by its `register(subparsers)`. Only the
# module of the command being run is imported (the runtime, kubernetes and jsonschema are slow
# to import); `meshc --help` imports them all to list them.
PLUGIN_COMMANDS = {
    "graph": "meshc.graph", "certs": "meshc.certs", "validate": "meshc.validate", "diff": "meshc.diff",
    "why": "meshc.why", "proxy": "meshc.runtime.commands", "up": "meshc.runtime.commands",
    "stat": "meshc.observe", "top": "meshc.observe", "import": "meshc.importers",
}


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"meshc: error: {message}", file=sys.stderr)
        raise SystemExit(2)


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
    out = render(diags, fmt, sources or _sources_of(diags), color=want_color(args) and fmt == "text")
    if not out:
        return
    stream = sys.stdout if fmt != "text" and args.command == "check" else sys.stderr
    stream.write(out)


def _sources_of(diags: Sequence[Diagnostic]) -> dict[str, str]:
    out = {}
    for d in diags:
        f = d.span.file
        if f and f not in out and os.path.isfile(f):
            try:
                out[f] = Path(f).read_text(errors="replace")
            except OSError:
                pass
    return out


def mesh_files(paths: Sequence[str]) -> list[Path]:
    try:
        return expand_paths([Path(p) for p in paths])
    except ValueError as e:
        raise UsageError(str(e)) from None


def load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from meshc.compiler import load_all

    return load_all(mesh_files(args.files))


# --------------------------------------------------------------------------- commands


def entry_points(paths: Sequence[str]) -> list[Path]:
    """`check --each`: the root .mesh files (those no file beside them imports) of every folder
    that holds a given file, or of every folder under a given directory (hidden ones skipped)."""
    from meshc.compiler import expand_paths

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
            roots += expand_paths([folder])
        except ValueError as e:  # every file there is imported by another: a cycle
            raise UsageError(str(e)) from None
    if not roots:
        raise UsageError("no .mesh files in " + ", ".join(paths))
    return roots


def _check_each(args: argparse.Namespace) -> int:
    """Each entry point on its own (a pre-commit hook passes whichever files changed)."""
    from meshc.compiler import load_all

    found: list[Diagnostic] = []
    failed = False
    for root in entry_points(args.files):
        try:
            loaded = load_all([root])
        except MeshcError as e:
            found += e.diagnostics
            failed = True
            continue
        found += loaded.warnings
        if args.format == "text":
            report(loaded.warnings, args, loaded.sources)
            print(f"{', '.join(loaded.mesh.files)}: ok ({len(loaded.mesh.services)} services, "
                  f"{len(loaded.mesh.rules)} rules, {len(loaded.warnings)} warnings)", file=sys.stderr)
    if args.format == "text":
        report([d for d in found if d.severity == "error"], args)
    else:
        sys.stdout.write(render(found, args.format, _sources_of(found)) or ("[]\n" if args.format == "json" else ""))
    return 1 if failed or (args.strict and found) else 0


def cmd_check(args: argparse.Namespace) -> int:
    if args.each:
        return _check_each(args)
    loaded = load(args)
    report(loaded.warnings, args, loaded.sources)
    if args.format == "sarif" and not loaded.warnings:
        sys.stdout.write(render([], "sarif", {}))
    elif args.format == "json" and not loaded.warnings:
        sys.stdout.write("[]\n")
    if args.format == "text":
        s = loaded.mesh
        print(f"{', '.join(s.files)}: ok ({len(s.services)} services, {len(s.rules)} rules, "
              f"{len(loaded.warnings)} warnings)", file=sys.stderr)
    return 1 if args.strict and loaded.warnings else 0


def cmd_compile(args: argparse.Namespace) -> int:
    from meshc import backends

    if args.list_targets:
        for name in backends.available():
            cls = backends.get(name)
            print(f"{name:12} {cls.description}")
        return 0
    if not args.files:
        raise UsageError("compile needs .mesh files")
    if not args.target:
        raise UsageError("compile needs --target (one of: " + ", ".join(["model", *backends.available()]) + ", all)")
    loaded = load(args)
    report(loaded.warnings, args, loaded.sources)
    targets = backends.available() if args.target == "all" else [t.strip() for t in args.target.split(",") if t]
    options = dict(o.split("=", 1) if "=" in o else (o, "true") for o in args.option)
    bundles = {}
    errors: list[Diagnostic] = []
    for t in targets:
        if t == "model":
            from meshc.backends.base import Bundle

            b = Bundle()
            b.add_yaml("model.yaml", loaded.mesh.dump())
            bundles[t] = b
            continue
        try:
            bundles[t] = backends.compile_mesh(loaded.mesh, t, unsupported=args.unsupported, options=options)
        except MeshcError as e:
            errors += e.diagnostics
    for b in bundles.values():
        report(b.diagnostics, args, loaded.sources)
    # With several targets, the ones that compiled are still written (to a directory); the
    # run fails all the same, naming what the others cannot express.
    if errors and (args.output is None or not bundles):
        raise MeshcError(errors)
    if args.validate and _validate(bundles, options, args.schemas):
        return 1
    if args.output is None:
        for t, b in bundles.items():
            for rel in sorted(b.files):
                name = f"{t}/{rel}" if len(bundles) > 1 else rel
                sys.stdout.write(f"# --- {name}\n")
                sys.stdout.write(b.files[rel].decode(errors="replace"))
                if not b.files[rel].endswith(b"\n"):
                    sys.stdout.write("\n")
        return 0
    out = Path(args.output)
    n = 0
    for t, b in bundles.items():
        n += len(b.write(out, t if len(bundles) > 1 or args.target == "all" else ""))
    print(f"wrote {n} files to {out} ({', '.join(bundles)})", file=sys.stderr)
    if errors:
        failed = [t for t in targets if t not in bundles]
        report(errors, args, loaded.sources)
        print(f"meshc: {', '.join(failed)}: not written (errors above)", file=sys.stderr)
        return 1
    return 0


def _validate(bundles: dict, options: dict[str, str], schemas: str | None) -> bool:
    """`compile --validate`: check Kubernetes output against the CRD schemas; True if any fails."""
    from meshc.validate import TARGET_DIRS, validate_compiled

    failed = False
    for t, b in bundles.items():
        # only the Kubernetes targets have schemas; Envoy bootstraps and Prometheus configs are
        # YAML too, but not Kubernetes objects
        if t not in TARGET_DIRS:
            continue
        try:
            problems = validate_compiled(b, t, options, schemas)
        except FileNotFoundError as e:
            raise UsageError(str(e)) from None
        for p in problems:
            print(f"{t}: {p}", file=sys.stderr)
        failed |= bool(problems)
    return failed


def cmd_fmt(args: argparse.Namespace) -> int:
    from meshc.fmt import format_text
    from meshc.parse import decode

    changed = 0
    errors: list[Diagnostic] = []
    files = [Path(f) for f in args.files]
    for f in files:
        name = str(f)
        try:
            text = decode(name, f.read_bytes())
            new = format_text(text, name)
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
            sys.stdout.write(f.read_text())
    if errors:
        raise MeshcError(errors)
    return 1 if args.check and changed else 0


# --------------------------------------------------------------------------- parser


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with `command`, only that command's plugin module is imported."""
    p = _Parser(prog="meshc", description="Mesh-as-code: compile .mesh files to service-mesh configuration.")
    p.add_argument("--version", action="version", version=f"meshc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    c = sub.add_parser("check", help="parse, resolve and run the graph checks")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    c.add_argument("--each", action="store_true",
                   help="check every entry point on its own: the root .mesh files of each folder holding a "
                        "given file (or under a given directory); for pre-commit hooks")
    add_format(c)
    c.set_defaults(func=cmd_check)

    c = sub.add_parser("compile", help="compile to one or more targets")
    c.add_argument("files", nargs="*", metavar="FILE")
    c.add_argument("--target", "-t", help="target name, a comma-separated list, 'model' or 'all'")
    c.add_argument("-o", "--output", help="output directory (default: print to stdout)")
    c.add_argument("--unsupported", choices=("error", "warn"), default="error",
                   help="what to do with features the target cannot express")
    c.add_argument("--option", "-X", action="append", default=[], metavar="NAME[=VALUE]",
                   help="a backend option, e.g. -X dynamic (see docs/capabilities.md)")
    c.add_argument("--list-targets", action="store_true", help="list the targets and exit")
    c.add_argument("--validate", action="store_true",
                   help="check Kubernetes output offline against the CRD schemas (see `meshc validate`)")
    c.add_argument("--schemas", default=None, help="CRD schema folder for --validate (default: $MESHC_SCHEMAS, else the schemas meshc ships)")
    add_format(c)
    c.set_defaults(func=cmd_compile)

    c = sub.add_parser("fmt", help="print .mesh files in canonical form")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.add_argument("--check", action="store_true", help="exit 1 if any file would change; change nothing")
    c.add_argument("--diff", action="store_true", help="with --check, show the changes")
    c.add_argument("--stdout", action="store_true", help="print the result instead of rewriting files")
    add_format(c)
    c.set_defaults(func=cmd_fmt)

    registered: set[object] = set()
    if command in ("check", "compile", "fmt"):
        modules: list[str] = []
    elif command in PLUGIN_COMMANDS:
        modules = [PLUGIN_COMMANDS[command]]
    else:
        modules = list(dict.fromkeys(PLUGIN_COMMANDS.values()))
    for mod in modules:
        # No fallback: a command module that cannot be imported is a broken install, said at once
        # (main() reports it), never a command that silently disappears from the parser.
        m = importlib.import_module(mod)
        reg = getattr(m, "register", None)
        if reg is None or reg in registered:
            continue
        registered.add(reg)
        try:
            reg(sub)
        except argparse.ArgumentError:
            pass  # a command another module already registered
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
