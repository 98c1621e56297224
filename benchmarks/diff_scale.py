"""Semantic-diff scaling: two versions of an N-service mesh that differ in one allow rule.

Run:  python benchmarks/diff_scale.py [--sizes 1000,10000] [--git]
Prints, per size, the seconds to load each side (parse, resolve), to diff, and the end-to-end
`meshc diff OLD NEW` time in a fresh process (what a user waits for); with --git also
`meshc diff --base HEAD` in a temporary repository (old side read from git), in-process.
Goal: 10,000 services end to end under 15 s.
Uses the lead's generator (benchmarks/meshgen.py, `tweak=i` changes one rule of service i).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from meshgen import generate  # noqa: E402

from meshc.commands.diff import load_paths, register  # noqa: E402
from meshc.diff import render_text, semantic_diff  # noqa: E402
from meshc.gc_pause import paused_gc as no_gc  # noqa: E402


def _cli(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="meshc")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = args.func(args)
    return rc, out.getvalue()


def run(n: int, git: bool) -> dict[str, float | int | str]:
    with tempfile.TemporaryDirectory() as d:
        old_p, new_p = Path(d) / "old.mesh", Path(d) / "new.mesh"
        old_p.write_text(generate(n))
        new_p.write_text(generate(n, tweak=n // 2))
        # As `meshc diff` does: no graph checks, cyclic GC paused while building.
        with no_gc():
            t0 = time.perf_counter()
            old = load_paths([old_p])
            t1 = time.perf_counter()
            new = load_paths([new_p])
            t2 = time.perf_counter()
            diff = semantic_diff(old, new)
            t3 = time.perf_counter()
            text = render_text(diff)
            t4 = time.perf_counter()
            del old, new
        cli = subprocess.run([sys.executable, "-c", "import sys; from meshc.cli import main; sys.exit(main())",
                              "diff", "--color", "never", str(old_p), str(new_p)],
                             capture_output=True, text=True, check=False)
        t5 = time.perf_counter()
        cli_out = cli.stdout
        assert cli.returncode == 0 and cli_out == text, "the CLI must print what the engine found"
        row: dict[str, float | int | str] = {
            "services": n, "load_old": t1 - t0, "load_new": t2 - t1, "diff": t3 - t2, "render": t4 - t3,
            "cli": t5 - t4, "changes": len(diff.changes), "first": diff.changes[0].line() if diff.changes else "-"}
        if git:
            repo = Path(d) / "repo"
            repo.mkdir()
            env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.com",
                   "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.com"}
            (repo / "bench.mesh").write_text(old_p.read_text())
            for cmd in (["init", "-q"], ["add", "bench.mesh"], ["commit", "-q", "-m", "base"]):
                subprocess.run(["git", *cmd], cwd=repo, check=True, env=env)
            (repo / "bench.mesh").write_text(new_p.read_text())
            cwd = Path.cwd()
            os.chdir(repo)
            try:
                t6 = time.perf_counter()
                rc, git_out = _cli(["diff", "--base", "HEAD", "bench.mesh"])
                row["cli_git"] = time.perf_counter() - t6
            finally:
                os.chdir(cwd)
            assert rc == 0 and row["changes"] and git_out.count("\n") == cli_out.count("\n")
        return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--git", action="store_true", help="also time `meshc diff --base HEAD` in a git repo")
    args = ap.parse_args()
    print(f"{'services':>8} {'load old s':>10} {'load new s':>10} {'diff s':>7} {'render s':>8} "
          f"{'cli s':>7} {'cli --base s':>12} {'changes':>7}  first change")
    for n in (int(s) for s in args.sizes.split(",")):
        r = run(n, args.git)
        git_s = f"{r['cli_git']:12.2f}" if "cli_git" in r else f"{'-':>12}"
        print(f"{r['services']:>8} {r['load_old']:10.2f} {r['load_new']:10.2f} {r['diff']:7.2f} "
              f"{r['render']:8.3f} {r['cli']:7.2f} {git_s} {r['changes']:>7}  {r['first']}", flush=True)


if __name__ == "__main__":
    main()
