"""`meshc compile FILES --target T[,T|all] [-o DIR] [--unsupported error|warn] [-X option] [--validate]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from meshc import backends
from meshc.backends.base import Bundle
from meshc.commands import UsageError
from meshc.commands.common import add_format, load, project_config, report
from meshc.diagnostics import Diagnostic, MeshcError, did_you_mean


def register(subparsers: Any) -> None:
    c = subparsers.add_parser("compile", help="compile to one or more targets")
    c.add_argument("files", nargs="*", metavar="FILE")
    c.add_argument("--target", "-t", help="target name, a comma-separated list, 'model' or 'all'")
    c.add_argument("-o", "--output", help="output directory (default: print to stdout)")
    c.add_argument("--unsupported", choices=("error", "warn"), default=None,
                   help="what to do with features the target cannot express (default: error, or the "
                        "project configuration's)")
    c.add_argument("--option", "-X", action="append", default=[], metavar="NAME[=VALUE]",
                   help="a backend option, e.g. -X dynamic (see docs/capabilities.md)")
    c.add_argument("--list-targets", action="store_true", help="list the targets and exit")
    c.add_argument("--validate", action="store_true",
                   help="check Kubernetes output offline against the CRD schemas (see `meshc validate`)")
    c.add_argument("--schemas", default=None, help="CRD schema folder for --validate (default: $MESHC_SCHEMAS, else the schemas meshc ships)")
    add_format(c)
    c.set_defaults(func=run)


def parse_options(given: list[str]) -> dict[str, str]:
    """`-X NAME[=VALUE]` as a dict (`-X NAME` alone is `NAME=true`); a name given twice is a usage error."""
    out: dict[str, str] = {}
    for item in given:
        name, sep, value = item.partition("=")
        if name in out:
            raise UsageError(f"option '{name}' is given twice")
        out[name.strip()] = value if sep else "true"
    return out


def run(args: argparse.Namespace) -> int:
    if args.list_targets:
        for name in backends.available():
            cls = backends.get(name)
            print(f"{name:12} {cls.description}")
        return 0
    if not args.files:
        raise UsageError("compile needs .mesh files")
    config = project_config()
    target_arg = args.target or ",".join(config.targets)
    if not target_arg:
        raise UsageError("compile needs --target (one of: " + ", ".join(["model", *backends.available()])
                         + ", all), or `targets` in the project configuration")
    unsupported = args.unsupported or config.unsupported or "error"
    # The command line is checked before any work: targets, then options (names and values).
    targets = backends.available() if target_arg == "all" else [t.strip() for t in target_arg.split(",") if t]
    for t in targets:
        if t != "model" and t not in backends.available():
            where = "" if args.target else f" in {config.path}"
            raise UsageError(f"unknown target '{t}'{where} ({did_you_mean(t, ['model', *backends.available()])})")
    for t in config.options:
        if t not in backends.available():
            raise UsageError(f"unknown target '{t}' in {config.path} [options] ({did_you_mean(t, backends.available())})")
    options = parse_options(args.option)
    try:
        for t, opts in config.options.items():  # every target's, compiled now or not
            backends.get(t)(opts)
        per_target = backends.options_for([t for t in targets if t != "model"], options)
        for t, opts in per_target.items():
            per_target[t] = {**config.options.get(t, {}), **opts}  # the command line wins
            backends.get(t)(per_target[t])  # checks the values
    except backends.OptionError as e:
        raise UsageError(f"{e}" + (f" (options may come from {config.path})" if config.options else "")) from None
    loaded = load(args, config)
    report(loaded.warnings, args, loaded.sources)
    bundles = {}
    errors: list[Diagnostic] = []
    for t in targets:
        if t == "model":
            b = Bundle()
            b.add_yaml("model.yaml", loaded.mesh.dump())
            bundles[t] = b
            continue
        try:
            bundles[t] = backends.compile_mesh(loaded.mesh, t, unsupported=unsupported, options=per_target[t])
        except MeshcError as e:
            errors += e.diagnostics
    for b in bundles.values():
        report(b.diagnostics, args, loaded.sources)
    # With several targets, the ones that compiled are still written (to a directory); the
    # run fails all the same, naming what the others cannot express.
    if errors and (args.output is None or not bundles):
        raise MeshcError(errors)
    if args.validate and _validate(bundles, per_target, args.schemas):
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
        n += len(b.write(out, t if len(bundles) > 1 or target_arg == "all" else ""))
    print(f"wrote {n} files to {out} ({', '.join(bundles)})", file=sys.stderr)
    if errors:
        failed = [t for t in targets if t not in bundles]
        report(errors, args, loaded.sources)
        print(f"meshc: {', '.join(failed)}: not written (errors above)", file=sys.stderr)
        return 1
    return 0


def _validate(bundles: dict, options: dict[str, dict[str, str]], schemas: str | None) -> bool:
    """`compile --validate`: check Kubernetes output against the CRD schemas; True if any fails."""
    from meshc.validate import schema_dirs, validate_compiled

    failed = False
    for t, b in bundles.items():
        # only the Kubernetes targets have schemas; Envoy bootstraps and Prometheus configs are
        # YAML too, but not Kubernetes objects
        if not schema_dirs(t):
            continue
        try:
            problems = validate_compiled(b, t, options.get(t, {}), schemas)
        except FileNotFoundError as e:
            raise UsageError(str(e)) from None
        for p in problems:
            print(f"{t}: {p}", file=sys.stderr)
        failed |= bool(problems)
    return failed
