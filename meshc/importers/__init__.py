"""`meshc import`: existing mesh configuration -> .mesh (one module per source mesh).

    meshc import --from istio|linkerd|consul|appmesh|nginx-mesh FILES... [-o out.mesh]
                 [--report report.txt] [--name MESH]

Each importer reads its inputs into a `meshc.model.Mesh`, prints it with `meshc.unparse` and
reads the text back with the front end. What cannot be carried over is listed in the report
(resource, field, why; tab-separated, on stderr unless `--report` names a file) and written as
a `# meshc import: ...` comment at its place in the `.mesh`. Exit codes: 0 everything carried
over, 1 written but with report entries, 2 unreadable input or usage errors.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshc.importers.common import ImportError_, Result

# source name -> module (each has `import_files(paths, mesh_name) -> Result`)
SOURCES: dict[str, str] = {
    "istio": "istio",
    "consul": "consul",
    "linkerd": "linkerd",
    "appmesh": "appmesh",
    "nginx-mesh": "nginx_mesh",
}


def available() -> list[str]:
    out = []
    for name, module in SOURCES.items():
        if importlib.util.find_spec(f"meshc.importers.{module}") is not None:
            out.append(name)
    return out


def importer(source: str) -> Callable[..., Result]:
    return importlib.import_module(f"meshc.importers.{SOURCES[source]}").import_files  # type: ignore[no-any-return]


def import_files(source: str, paths: list[Path], mesh_name: str | None = None) -> Result:
    """Run the importer for `source` over `paths`."""
    return importer(source)(list(paths), mesh_name)


def run_import(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.files]
    # Only what does not exist is "no such file": a FIFO, a device or a symlink loop reaches the
    # bounded reader, which says what it is (and never blocks on it).
    missing = [p for p in paths if not p.exists() and not p.is_symlink()]
    if missing:
        print(f"meshc import: no such file: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    try:
        result = import_files(args.source, paths, args.name)
    except (ImportError_, OSError, UnicodeDecodeError) as e:
        print(f"meshc import: {_printable(str(e))}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as e:
        # A document of the right kind with the wrong shape (a list where the API has an object,
        # a string for a number): reported as unreadable input, never as a traceback.
        print(f"meshc import: malformed {args.source} input: {type(e).__name__}: {_printable(str(e))}",
              file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(result.text, encoding="utf-8")
    else:
        sys.stdout.write(result.text)
        sys.stdout.flush()
    report = result.report.text()
    if args.report:
        Path(args.report).write_text(report, encoding="utf-8")
    elif len(result.report):
        sys.stderr.write(report)
    if len(result.report):
        print(f"meshc import: {len(result.report)} item(s) not carried over exactly (see the report and the "
              "`# meshc import:` comments)", file=sys.stderr)
        return 1
    return 0


def _printable(message: str) -> str:
    """A message quoting input (a YAML error shows the offending text) with its lines kept and
    every other unprintable character escaped: input cannot drive the reader's terminal."""
    from meshc.unparse import shown

    return "\n".join(shown(line, 0) for line in message.split("\n"))


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("import", help="turn existing mesh configuration into .mesh",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", required=True, choices=list(SOURCES),
                   help="the mesh the files configure")
    p.add_argument("files", nargs="+", metavar="FILE", help="YAML/JSON/HCL files")
    p.add_argument("-o", "--output", help="write the .mesh here (default: stdout)")
    p.add_argument("--report", help="write the report here (default: stderr)")
    p.add_argument("--name", help="the mesh name (default: guessed from the input)")
    p.set_defaults(func=run_import)
