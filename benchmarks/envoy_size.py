"""Envoy output at scale: one sidecar's config size must stay flat as the mesh grows.

Run:  python benchmarks/envoy_size.py [--sizes 100,1000,10000] [--format json|yaml]

For each size, generates the benchmark mesh (benchmarks/meshgen.py, the same generator as
compile_scale.py), loads it, lowers it for the envoy target (every sidecar, in the chosen
format) and prints: load and lowering seconds, total output, and the size of one sidecar's
config (svc-00000, in YAML and JSON) plus the median and largest sidecar. The last line gives
the 1k -> 10k growth of the lowering time (linear: about 10) and of svc-00000's size (flat: 1).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from meshc.backends.envoy import EnvoyBackend  # noqa: E402
from meshgen import generate  # noqa: E402

from meshc.compiler import load_text  # noqa: E402
from meshc.model import Mesh  # noqa: E402

PROBE = "svc-00000"


def run(n: int, fmt: str) -> dict[str, float]:
    text = generate(n)
    # CPU seconds of this process: the machine is shared, wall time would measure the neighbours.
    t0 = time.process_time()
    mesh = load_text(text, "bench.mesh")
    t1 = time.process_time()
    bundle = EnvoyBackend({"format": fmt}).lower(mesh)
    t2 = time.process_time()
    configs = {k: len(v) for k, v in bundle.files.items() if k.endswith(f"/envoy.{fmt}")}
    probe = probe_sizes(mesh)
    return {"n": n, "load_s": t1 - t0, "lower_s": t2 - t1, "files": len(bundle.files),
            "total_mb": sum(len(v) for v in bundle.files.values()) / 1e6,
            "probe_yaml": probe["yaml"], "probe_json": probe["json"],
            "median": statistics.median(configs.values()), "max": max(configs.values())}


def probe_sizes(mesh: Mesh) -> dict[str, int]:
    """svc-00000's bootstrap alone, in both formats."""
    return {fmt: len(EnvoyBackend({"format": fmt}).lower_one(mesh, PROBE).files[f"{PROBE}/envoy.{fmt}"])
            for fmt in ("yaml", "json")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--format", choices=["json", "yaml"], default="json",
                    help="format of the full compile (yaml: ~5x slower to write)")
    args = ap.parse_args()
    rows = []
    print("CPU seconds (process time)")
    print(f"{'services':>9} {'load s':>8} {'lower s':>8} {'files':>7} {'total MB':>9} "
          f"{PROBE + ' yaml':>15} {'json':>7} {'median':>7} {'max':>7}")
    for n in [int(x) for x in args.sizes.split(",")]:
        r = run(n, args.format)
        rows.append(r)
        print(f"{n:>9} {r['load_s']:>8.2f} {r['lower_s']:>8.2f} {r['files']:>7} {r['total_mb']:>9.1f} "
              f"{r['probe_yaml']:>15} {r['probe_json']:>7} {r['median']:>7.0f} {r['max']:>7}", flush=True)
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        print(json.dumps({"from": a["n"], "to": b["n"],
                          "lower_time_ratio": round(b["lower_s"] / a["lower_s"], 2),
                          "probe_size_ratio": round(b["probe_yaml"] / a["probe_yaml"], 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
