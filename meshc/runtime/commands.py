"""CLI hooks of the native runtime: `meshc proxy --config FILE` and `meshc up FILE.mesh`.

`meshc proxy` runs one sidecar from its JSON config (hot reload when the file changes or on
SIGHUP; graceful drain on SIGTERM/SIGINT). `meshc up` compiles a mesh with the native backend
into a directory (a temporary one unless `--out`), issues certificates when mTLS is used,
runs every sidecar in this process, starts built-in demo upstreams for instances that have no
running application, prints the listeners and the metrics addresses, and stops on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from meshc.runtime import config as C

log = logging.getLogger("meshc.proxy")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("proxy", help="run one native sidecar from its JSON config")
    p.add_argument("--config", required=True, type=Path,
                   help="a sidecar config written by --target native (or its mesh.json: every sidecar)")
    p.add_argument("--admin-port", type=int, default=None, help="override the admin (metrics) port")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=cmd_proxy)

    u = subparsers.add_parser("up", help="compile a mesh and run every sidecar on loopback")
    u.add_argument("files", nargs="+", type=Path, help=".mesh files (the first is the root)")
    u.add_argument("--base-port", type=int, default=None, help="first port of the allocation (default 15000)")
    u.add_argument("--out", type=Path, default=None, help="keep the compiled configs here (default: a temp dir)")
    u.add_argument("--no-demo", action="store_true", help="do not start demo upstreams")
    u.add_argument("--access-log", default=None, help="access-log file for every sidecar (default: stdout)")
    u.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    u.set_defaults(func=cmd_up)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")


def _new_loop() -> tuple[asyncio.AbstractEventLoop, str]:
    try:
        import uvloop
    except ImportError:  # a platform uvloop does not support (it is a dependency elsewhere)
        return asyncio.new_event_loop(), "asyncio (uvloop is not installed)"
    return uvloop.new_event_loop(), "uvloop"


def run(main: Any) -> int:
    """Run a coroutine on uvloop when installed (asyncio otherwise), saying which request
    path (compiled or pure Python) and which event loop run: a user who reports a problem or
    a figure needs to know."""
    from meshc.runtime import PATH_NOTE

    loop, loop_note = _new_loop()
    print(f"meshc: request path {PATH_NOTE}; event loop {loop_note}", file=sys.stderr)
    asyncio.set_event_loop(loop)
    try:
        return int(loop.run_until_complete(main) or 0)
    finally:
        loop.close()


async def _wait_for_stop(sidecars: list[Any]) -> None:
    """SIGHUP reloads every sidecar; SIGTERM/SIGINT drains them and returns."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def hup() -> None:
        for sc in sidecars:
            loop.create_task(sc.reload())

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hup)
    await stop.wait()
    print("meshc: draining...", file=sys.stderr)
    await asyncio.gather(*(sc.drain() for sc in sidecars))


# --------------------------------------------------------------------------- meshc proxy


def _is_index(path: Path) -> bool:
    try:
        import json

        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "sidecars" in data


def cmd_proxy(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level)
    try:
        if _is_index(args.config):
            index = C.load_index(args.config)
            paths = [args.config.parent / e.config for e in index.sidecars]
        else:
            paths = [args.config]
        cfgs = [(p, C.load_sidecar(p)) for p in paths]
    except C.ConfigError as e:
        print(f"meshc proxy: {e}", file=sys.stderr)
        return 1
    if args.admin_port is not None and len(cfgs) > 1:
        print("meshc proxy: --admin-port needs a single sidecar config", file=sys.stderr)
        return 2
    return run(_proxy(cfgs, args))


async def _proxy(cfgs: list[tuple[Path, C.SidecarConfig]], args: argparse.Namespace) -> int:
    from meshc.runtime.server import Sidecar

    sidecars: list[Any] = []
    for path, cfg in cfgs:
        sc = Sidecar(cfg, path=path, admin_port=args.admin_port)
        try:
            await sc.start()
        except (C.ConfigError, OSError) as e:
            print(f"meshc proxy: {e}", file=sys.stderr)
            await sc.close()
            for other in sidecars:
                await other.close()
            return 1
        sidecars.append(sc)
        adm = sc.admin_address or ("?", 0)
        print(f"meshc proxy: {cfg.service} ready; listeners {sc.ports()}; "
              f"metrics http://{adm[0]}:{adm[1]}/metrics", file=sys.stderr)
    await _wait_for_stop(sidecars)
    return 0


# --------------------------------------------------------------------------- meshc up


def cmd_up(args: argparse.Namespace) -> int:
    from meshc.backends import compile_mesh
    from meshc.compiler import load

    _setup_logging(args.log_level)
    mesh = load(list(args.files))  # MeshcError is reported by the CLI
    options = {} if args.base_port is None else {"base_port": str(args.base_port)}
    # Running a mesh locally should not fail on what only matters elsewhere (SLOs): such
    # features become warnings here.
    bundle = compile_mesh(mesh, "native", options=options, unsupported="warn")
    if bundle.diagnostics:
        from meshc.diagnostics import render

        sources = {}
        for f in mesh.files:
            with contextlib.suppress(OSError):
                sources[f] = Path(f).read_text()
        print(render(bundle.diagnostics, "text", sources), file=sys.stderr, end="")
    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="meshc-up-")
        out = Path(tmp.name)
    else:
        out = args.out
    bundle.write(out)
    index = C.load_index(out / "mesh.json")
    if index.certs_dir is not None:
        from meshc.certs import write_certs

        write_certs(mesh, out / index.certs_dir)
    try:
        return run(_up(out, index, args))
    finally:
        if tmp is not None:
            tmp.cleanup()


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _bindable(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


async def _up(out: Path, index: C.MeshIndex, args: argparse.Namespace) -> int:
    from meshc.runtime.demo import serve_demo
    from meshc.runtime.server import Sidecar

    demos: list[asyncio.AbstractServer] = []
    rows: list[tuple[str, ...]] = []
    sidecars: list[Sidecar] = []
    started_demo: set[tuple[str, int]] = set()
    try:
        for entry in index.sidecars:
            path = out / entry.config
            cfg = C.load_sidecar(path)
            if args.access_log:
                obs = cfg.observability.model_copy(update={"access_log_path": str(Path(args.access_log).resolve())})
                cfg = cfg.model_copy(update={"observability": obs})
            overrides: dict[str, tuple[str, int]] = {}
            for lst in entry.inbound:
                version = ",".join(lst.versions) or "-"
                if args.no_demo:
                    continue
                if lst.app is None:
                    srv = await serve_demo("127.0.0.1", 0, entry.service, version)
                    demos.append(srv)
                    overrides[lst.name] = ("127.0.0.1", srv.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
                    rows.append(("demo", entry.service, version, f"127.0.0.1:{overrides[lst.name][1]}", "app"))
                elif ((lst.app.host, lst.app.port) not in started_demo and _bindable(lst.app.host)
                      and not _listening(lst.app.host, lst.app.port)):
                    try:
                        srv = await serve_demo(lst.app.host, lst.app.port, entry.service, version)
                    except OSError as e:
                        log.warning("cannot start a demo upstream on %s:%d: %s", lst.app.host, lst.app.port, e)
                        continue
                    demos.append(srv)
                    started_demo.add((lst.app.host, lst.app.port))
                    rows.append(("demo", entry.service, version, f"{lst.app.host}:{lst.app.port}", "app"))
            sc = Sidecar(cfg, path=path, app_overrides=overrides)
            await sc.start()
            sidecars.append(sc)
            for lst in entry.inbound:
                rows.append(("inbound", entry.service, lst.name, f"127.0.0.1:{lst.port}",
                             f"-> {lst.app.host}:{lst.app.port}" if lst.app else "-> demo"))
            for lst in entry.outbound:
                rows.append(("outbound", entry.service, lst.name, f"127.0.0.1:{lst.port}", f"-> {lst.callee}"))
            adm = sc.admin_address
            assert adm is not None
            rows.append(("metrics", entry.service, "admin", f"{adm[0]}:{adm[1]}", f"http://{adm[0]}:{adm[1]}/metrics"))
    except (C.ConfigError, OSError) as e:
        print(f"meshc up: {e}", file=sys.stderr)
        for sc in sidecars:
            await sc.close()
        for srv in demos:
            srv.close()
        return 1
    print(_table(("kind", "sidecar", "listener", "address", "target"), rows))
    print(f"meshc up: mesh {index.mesh!r} running from {out}; Ctrl-C to stop", file=sys.stderr)
    sys.stdout.flush()
    try:
        await _wait_for_stop(sidecars)
    finally:
        for srv in demos:
            srv.close()
        with contextlib.suppress(Exception):
            await asyncio.gather(*(srv.wait_closed() for srv in demos))
    return 0


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m meshc.runtime.commands proxy ...`: the runtime without the compiler's CLI."""
    parser = argparse.ArgumentParser(prog="meshc")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
