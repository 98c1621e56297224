"""`meshc stat` and `meshc top`: live golden signals of a running mesh (meshc.observe reads and
summarises the sidecars' metrics; this module finds the sidecars and prints frames)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from meshc.backends import compile_mesh
from meshc.compiler import load
from meshc.observe import (
    Target,
    parse_admin,
    parse_frame,
    render_table,
    report,
    scrape_all,
    targets_from_index,
)


def targets_from_mesh(files: list[Path], base_port: int | None, host: str) -> tuple[str, list[Target]]:
    mesh = load(files)
    options = {} if base_port is None else {"base_port": str(base_port)}
    index = json.loads(compile_mesh(mesh, "native", options=options).files["mesh.json"])
    return index["mesh"], [Target(e["service"], host, e["admin_port"]) for e in index["sidecars"]]


def resolve_targets(args: argparse.Namespace) -> tuple[str | None, list[Target]]:
    mesh: str | None = None
    targets: list[Target] = []
    if args.files:
        mesh, targets = targets_from_mesh(list(args.files), args.base_port, args.host)
    if args.index is not None:
        mesh, more = targets_from_index(args.index, args.host)
        targets += more
    targets += [parse_admin(a) for a in args.admin or ()]
    return mesh, targets


def register(subparsers: Any) -> None:
    for name, help_text in (("stat", "live golden signals per service and per edge of a running mesh"),
                            ("top", "live routes of a running mesh, busiest first")):
        p = subparsers.add_parser(name, help=help_text)
        p.add_argument("files", nargs="*", type=Path, help=".mesh files run by `meshc up` (admin ports derived)")
        p.add_argument("--base-port", type=int, default=None, help="the --base-port given to `meshc up`")
        p.add_argument("--index", type=Path, default=None, help="mesh.json (or its directory) from `meshc up --out`")
        p.add_argument("--admin", action="append", metavar="[NAME=]HOST:PORT",
                       help="a sidecar admin address (repeatable; native /metrics or Envoy /stats/prometheus)")
        p.add_argument("--host", default="127.0.0.1", help="host of the admin ports from a mesh or index")
        p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
        p.add_argument("--count", type=int, default=0, help="stop after this many frames (default: until Ctrl-C)")
        p.add_argument("--once", action="store_true", help="print one frame and exit")
        p.add_argument("--format", choices=("table", "json"), default="table")
        p.set_defaults(func=cmd_stat if name == "stat" else cmd_top, observe_view=name)


def cmd_stat(args: argparse.Namespace) -> int:
    return _run(args)


def cmd_top(args: argparse.Namespace) -> int:
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from meshc.diagnostics import MeshcError

    try:
        mesh, targets = resolve_targets(args)
    except (ValueError, OSError) as e:
        print(f"meshc {args.observe_view}: {e}", file=sys.stderr)
        return 2
    except MeshcError as e:
        print("\n".join(str(d) for d in e.diagnostics), file=sys.stderr)
        return 1
    if not targets:
        print(f"meshc {args.observe_view}: give .mesh files, --index or --admin HOST:PORT", file=sys.stderr)
        return 2
    if args.interval <= 0:
        print(f"meshc {args.observe_view}: --interval must be positive", file=sys.stderr)
        return 2
    frames = 1 if args.once else args.count
    previous = parse_frame(scrape_all(targets))
    shown = 0
    try:
        while True:
            time.sleep(args.interval)
            frame = parse_frame(scrape_all(targets))
            doc = report(frame, previous, targets, mesh)
            previous = frame
            if args.format == "json":
                print(json.dumps(doc, indent=2, sort_keys=True))
            else:
                if not args.once and sys.stdout.isatty():
                    print("\x1b[H\x1b[2J", end="")
                title = f"mesh {mesh}" if mesh else "sidecars " + ", ".join(t.address for t in targets)
                print(f"{title}  (every {args.interval:g}s)\n")
                print(render_table(doc, args.observe_view))
            sys.stdout.flush()
            shown += 1
            if frames and shown >= frames:
                break
    except KeyboardInterrupt:
        pass
    if len(previous.down) == len(targets):
        print(f"meshc {args.observe_view}: no sidecar reachable "
              f"({', '.join(f'{t.address}: {previous.down[t.name]}' for t in targets)})", file=sys.stderr)
        return 1
    return 0
