"""examples/ci: the GitHub workflow and the pre-commit hooks call meshc commands that exist,
with options meshc accepts, and the hooks the example config uses are the ones published."""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path

import pytest
import yaml

CI = Path(__file__).resolve().parents[1] / "examples" / "ci"

# Stand-ins for the workflow's expressions and variables, as a runner would expand them.
EXPAND = [
    (re.compile(r"\$\{\{[^}]*\}\}"), "main"),
    (re.compile(r"\$\(git ls-files [^)]*\)"), "mesh/a.mesh mesh/b.mesh"),
    (re.compile(r'"?\$MESH"?'), "mesh/"),
    (re.compile(r'"?\$TARGETS"?'), "istio"),
]


@functools.cache
def _parser():
    from meshc.cli import build_parser

    return build_parser()


def _accepts(argv: list[str]) -> None:
    """argparse exits on an unknown command or option: turn that into a test failure."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # pragma: no cover - the failure path
        pytest.fail(f"meshc rejects {' '.join(argv)!r} (exit {e.code})")
    assert callable(getattr(args, "func", None)), argv


def _meshc_commands(script: str) -> list[list[str]]:
    script = script.replace("\\\n", " ")
    for rx, value in EXPAND:
        script = rx.sub(value, script)
    out = []
    for line in script.splitlines():
        line = line.strip()
        if line.startswith("meshc "):
            words = shlex.split(line.split(">")[0])
            out.append(words[1:])
    return out


def test_workflow_runs_fmt_check_compile_and_posts_the_diff():
    wf = yaml.safe_load((CI / "github-workflow.yml").read_text())
    steps = wf["jobs"]["meshc"]["steps"]
    commands = [c for s in steps if "run" in s for c in _meshc_commands(s["run"])]
    assert {c[0] for c in commands} >= {"fmt", "check", "compile", "diff"}
    for argv in commands:
        _accepts(argv)
    diff = next(c for c in commands if c[0] == "diff" and "markdown" in c)
    assert diff[diff.index("--base") + 1] == "origin/main"
    assert any(c[:2] == ["fmt", "--check"] for c in commands)
    assert any(c[0] == "check" and "github" in c for c in commands)
    posting = next(s for s in steps if s.get("uses", "").startswith("actions/github-script"))
    assert "meshc-diff.md" in posting["with"]["script"]
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0  # --base needs the history


def test_pre_commit_hooks_are_valid_meshc_commands():
    hooks = yaml.safe_load((CI / "pre-commit-hooks.yaml").read_text())
    assert {h["id"] for h in hooks} >= {"meshc-fmt", "meshc-check", "meshc-diff"}
    for h in hooks:
        assert {"id", "name", "entry", "language"} <= h.keys()
        words = shlex.split(h["entry"])
        assert words[0] == "meshc"
        files = [] if h.get("pass_filenames") is False else ["mesh/a.mesh"]
        _accepts(words[1:] + list(h.get("args", [])) + files)


def test_example_config_uses_published_hooks():
    published = {h["id"] for h in yaml.safe_load((CI / "pre-commit-hooks.yaml").read_text())}
    config = yaml.safe_load((CI / "pre-commit-config.yaml").read_text())
    used = [h for repo in config["repos"] for h in repo["hooks"]]
    assert used and all(h["id"] in published for h in used)
    diff = next(h for h in used if h["id"] == "meshc-diff")
    _accepts(["diff", "--fail-on", "widen", *diff["args"]])
