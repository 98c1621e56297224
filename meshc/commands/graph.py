"""`meshc graph FILES --format dot|mermaid|svg|png [--live]`: the call/route/authorization graph."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from meshc.compiler import load
from meshc.graph import FORMATS, to_dot


def register(subparsers: Any) -> None:
    """Add `meshc graph FILES --format dot|mermaid|svg|png`."""
    p = subparsers.add_parser("graph", help="print the call/route/authorization graph (dot, mermaid, svg, png)")
    p.add_argument("files", nargs="+", type=Path, metavar="FILES")
    p.add_argument("--format", choices=sorted([*FORMATS, "svg", "png"]), default="dot",
                   help="svg and png are drawn by Graphviz's `dot` (Debian package graphviz)")
    p.add_argument("-o", "--output", type=Path, default=None, help="write the drawing here (default: stdout)")
    p.add_argument("--live", action="store_true",
                   help="colour edges by live success rate, read from the mesh `meshc up` runs")
    p.add_argument("--base-port", type=int, default=None, help="with --live: the base port given to `meshc up`")
    p.add_argument("--admin", action="append", metavar="[NAME=]HOST:PORT",
                   help="with live colours: a sidecar admin address to read metrics from (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    mesh = load(list(args.files))  # diagnostics propagate to the CLI, which prints them
    text = to_dot(mesh) if args.format in ("dot", "svg", "png") else FORMATS[args.format](mesh)
    if args.format != "mermaid" and (args.live or args.admin):
        from meshc.commands.observe import targets_from_mesh
        from meshc.graph_image import with_live_success
        from meshc.observe import live_edge_success, parse_admin

        targets = targets_from_mesh(list(args.files), args.base_port, "127.0.0.1")[1] \
            if args.live else []
        targets += [parse_admin(a) for a in args.admin or ()]
        text = with_live_success(text, live_edge_success(targets))
    if args.format not in ("svg", "png"):
        if args.output:
            args.output.write_text(text)
        else:
            sys.stdout.write(text)
        return 0
    if args.format == "png" and not args.output and sys.stdout.isatty():  # binary garbles a terminal
        sys.stderr.write(f"meshc graph: {args.format} is binary: give -o FILE or redirect the output\n")
        return 2
    from meshc.graph_image import GraphvizMissing, render_image

    try:
        data = render_image(text, args.format)
    except GraphvizMissing as e:
        sys.stderr.write(f"meshc graph: {e}\n")
        return 2
    except RuntimeError as e:
        sys.stderr.write(f"meshc graph: {e}\n")
        return 1
    if args.output:
        args.output.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
    return 0
