"""Compile-time scaling: parse, check and compile(native) for 100, 1,000 and 10,000 services.

Run:  python benchmarks/compile_scale.py [--sizes 100,1000,10000] [--target native]
      python benchmarks/compile_scale.py --sizes 10000 --baseline DIR --rounds 3   # A/B the check
Prints one row per size (seconds per stage, peak memory, and `meshc check FILE` end to end
in a fresh process) and the 1k -> 10k growth ratio.
Goal on a 2-core machine: 10,000 services checked in under 10 s; ratio at most 12 (linear).

With --baseline, the check (parse, resolve, graph) of each size runs in a fresh process for
this tree and for DIR (a tree holding another version's meshc/, e.g. `git archive REV meshc |
tar -x -C DIR`), alternating, and the medians are compared: on a shared machine whose speed
drifts, only interleaved runs compare versions fairly.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from meshgen import generate  # noqa: E402

from meshc import backends  # noqa: E402
from meshc.compiler import parse_all  # noqa: E402
from meshc.resolve import resolve  # noqa: E402


def run(n: int, target: str) -> dict[str, float]:
    text = generate(n)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.mesh"
        path.write_text(text)
        gc.disable()  # as meshc.compiler.load_all does
        t0 = time.perf_counter()
        parsed = parse_all([path])
        t1 = time.perf_counter()
        mesh = resolve([p.ast for p in parsed])
        t2 = time.perf_counter()
        try:
            from meshc import graph

            warnings = graph.check(mesh)
        except ImportError:
            warnings = []
        t3 = time.perf_counter()
        # 10,000 native sidecars need ~60,000 loopback ports: start the range low (nothing binds here)
        options = {"base_port": "1024"} if target == "native" else {}
        bundle = backends.compile_mesh(mesh, target, unsupported="warn", options=options)
        files = len(bundle.files)
        t4 = time.perf_counter()
        gc.enable()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        del parsed, mesh, bundle
        # What a user waits for: `meshc check FILE` end to end (start-up, reading, checking,
        # rendering every warning), in a fresh process.
        t5 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import sys; from meshc.cli import main; sys.exit(main())",
                        "check", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        cli = time.perf_counter() - t5
    return {"services": n, "bytes": len(text), "parse": t1 - t0, "resolve": t2 - t1, "graph": t3 - t2,
            "check": t3 - t0, "compile": t4 - t3, "total": t4 - t0, "peak_mb": peak / 2**20,
            "files": files, "warnings": len(warnings), "cli": cli}


CHECK_IN_CHILD = """
import gc, json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import meshc
assert meshc.__file__.startswith(sys.argv[1]), meshc.__file__
from meshc.compiler import parse_all
from meshc.resolve import resolve
from meshc import graph
gc.disable()
t0 = time.perf_counter()
parsed = parse_all([Path(sys.argv[2])])
t1 = time.perf_counter()
mesh = resolve([p.ast for p in parsed])
t2 = time.perf_counter()
graph.check(mesh)
t3 = time.perf_counter()
print(json.dumps({"parse": t1 - t0, "resolve": t2 - t1, "graph": t3 - t2, "check": t3 - t0}))
"""


def ab(sizes: list[int], baseline: str, rounds: int) -> None:
    trees = {"this": str(Path(__file__).resolve().parents[1]), "base": str(Path(baseline).resolve())}
    print(f"{'services':>8} {'tree':>5} {'parse s':>8} {'resolve s':>9} {'graph s':>8} {'check s':>8}  (medians of {rounds})")
    for n in sizes:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "bench.mesh"
            path.write_text(generate(n))
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
            for _ in range(rounds):
                for name, tree in trees.items():
                    out = subprocess.run([sys.executable, "-c", CHECK_IN_CHILD, tree, str(path)],
                                         capture_output=True, text=True, check=True)
                    runs[name].append(json.loads(out.stdout))
        med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
        for name, m in med.items():
            print(f"{n:>8} {name:>5} {m['parse']:>8.2f} {m['resolve']:>9.2f} {m['graph']:>8.2f} {m['check']:>8.2f}")
        print(f"{n:>8} ratio this/base: check {med['this']['check'] / med['base']['check']:.2f}x, "
              f"parse {med['this']['parse'] / med['base']['parse']:.2f}x", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--target", default="native")
    ap.add_argument("--baseline", metavar="DIR", help="A/B the check against the meshc/ in DIR (see above)")
    ap.add_argument("--rounds", type=int, default=3, help="with --baseline: runs per tree (medians)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.baseline:
        ab(sizes, args.baseline, args.rounds)
        return
    print(f"{'services':>8} {'MB':>6} {'parse s':>8} {'resolve s':>9} {'graph s':>8} {'check s':>8} "
          f"{args.target + ' s':>9} {'peak MB':>8} {'files':>6} {'cli check s':>11}")
    rows = {}
    for n in sizes:
        r = run(n, args.target)
        rows[n] = r
        print(f"{n:>8} {r['bytes'] / 2**20:>6.1f} {r['parse']:>8.2f} {r['resolve']:>9.2f} {r['graph']:>8.2f} "
              f"{r['check']:>8.2f} {r['compile']:>9.2f} {r['peak_mb']:>8.0f} {r['files']:>6} {r['cli']:>11.2f}",
              flush=True)
    if 1000 in rows and 10000 in rows:
        ratio = rows[10000]["total"] / rows[1000]["total"]
        check_10k, cli_10k = rows[10000]["check"], rows[10000]["cli"]
        print(f"growth 1k -> 10k: {ratio:.1f}x (goal <= 12); 10k checked in {check_10k:.1f} s in-process, "
              f"{cli_10k:.1f} s by `meshc check` (goal < 10 s)")
    print("note: seconds are wall-clock; peak MB is the process's maximum resident set size so far")


if __name__ == "__main__":
    main()
