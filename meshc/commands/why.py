"""`meshc why SOURCE DEST [METHOD PATH]`: is a call allowed, and where does it go (meshc.why)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from meshc.commands.diff import load_paths, report_load_error
from meshc.diagnostics import MeshcError
from meshc.gc_pause import paused_gc
from meshc.why import explain, render_text


def _headers(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep:
            k, sep, v = item.partition(":")
        out[k.strip().lower()] = v.strip()
    return out


def run(args: argparse.Namespace) -> int:
    rest = args.request or []
    if len(rest) not in (0, 2):
        sys.stderr.write("meshc why: give SOURCE DEST, or SOURCE DEST METHOD PATH\n")
        return 2
    method, path = (rest[0].upper(), rest[1]) if rest else (None, None)
    try:
        with paused_gc():
            mesh = load_paths([Path(p) for p in (args.mesh or ["."])])
    except (MeshcError, OSError) as e:
        return report_load_error(e, command="why")
    try:
        answer = explain(mesh, args.source, args.dest, method, path, args.port, _headers(args.header or []))
    except ValueError as e:
        sys.stderr.write(f"meshc why: {e}\n")
        return 2
    if args.format == "json":
        sys.stdout.write(json.dumps(answer, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render_text(answer))
    allowed = answer["allowed"] if answer["concrete"] else answer["access"] != "none"
    return 0 if allowed else 1


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "why", help="is a call allowed, and where does it go? (cites the deciding .mesh lines)",
        description="Explain a call: the deciding allow/deny rule, the default posture, mTLS, and the "
                    "route rule that carries it. SOURCE is a service, 'ingress' or 'unauthenticated'. "
                    "Exit 0 when allowed, 1 when refused.")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("dest", metavar="DEST")
    p.add_argument("request", nargs="*", metavar="METHOD PATH", help="a concrete request, e.g. GET /ratings/1")
    p.add_argument("-m", "--mesh", action="append", metavar="PATH",
                   help=".mesh file or directory (repeatable; default: the current directory)")
    p.add_argument("--port", type=int, help="destination port (default: the service's only port)")
    p.add_argument("-H", "--header", action="append", metavar="NAME=VALUE", help="request header (repeatable)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=run)
