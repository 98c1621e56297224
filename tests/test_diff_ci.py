"""examples/ci and .pre-commit-hooks.yaml: the GitHub workflow and the pre-commit hooks call
meshc commands that exist, with options meshc accepts; the hook manifest and the example config
load with pre-commit's own loaders; the hooks run as pre-commit runs them (entry + args + the
changed files) on a repository whose .mesh files live in sub-folders; the workflow installs
meshc from its repository, not from an index it is not on."""

from __future__ import annotations

import functools
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "examples" / "ci"
HOOKS = ROOT / ".pre-commit-hooks.yaml"  # where pre-commit looks for a repository's hooks

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


def test_workflow_installs_meshc_from_its_repository():
    wf = yaml.safe_load((CI / "github-workflow.yml").read_text())
    install = next(s for s in wf["jobs"]["meshc"]["steps"] if s.get("name") == "Install meshc")
    words = shlex.split(install["run"])
    assert words[:2] == ["pip", "install"] and words[2].startswith("git+")
    assert words[2] == "git+${MESHC_REPO}@${MESHC_VERSION}"
    assert wf["env"]["MESHC_REPO"].startswith("https://") and wf["env"]["MESHC_VERSION"]


def test_hook_manifest_and_example_config_load_with_pre_commit():
    from pre_commit.clientlib import load_config, load_manifest

    hooks = load_manifest(str(HOOKS))
    assert {h["id"] for h in hooks} == {"meshc-fmt", "meshc-fmt-check", "meshc-check", "meshc-diff"}
    config = load_config(str(CI / "pre-commit-config.yaml"))
    assert config["repos"][0]["hooks"]


def _run_hook(hook_id: str, repo: Path, files: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a published hook as pre-commit does: entry, then args, then the files (when passed)."""
    from pre_commit.clientlib import load_manifest

    hook = next(h for h in load_manifest(str(HOOKS)) if h["id"] == hook_id)
    words = shlex.split(hook["entry"])
    assert words[0] == "meshc"
    argv = [sys.executable, "-m", "meshc.cli", *words[1:], *hook["args"],
            *(files if hook["pass_filenames"] else [])]
    return subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=120)


def test_hooks_find_mesh_files_in_sub_folders(tmp_path: Path):
    repo = tmp_path / "repo"
    (repo / "deploy" / "mesh").mkdir(parents=True)
    (repo / "other").mkdir()
    for f in (ROOT / "examples" / "multifile").glob("*.mesh"):
        shutil.copy(f, repo / "deploy" / "mesh" / f.name)
    shutil.copy(ROOT / "examples" / "bookinfo" / "bookinfo.mesh", repo / "other" / "bookinfo.mesh")
    # A change to a file that is only imported checks the mesh that imports it.
    changed = ["deploy/mesh/common.mesh", "other/bookinfo.mesh"]
    done = _run_hook("meshc-check", repo, changed)
    assert done.returncode == 0, done.stderr
    assert "deploy/mesh/prod.mesh" in done.stderr and "other/bookinfo.mesh: ok" in done.stderr
    assert _run_hook("meshc-fmt-check", repo, changed).returncode in (0, 1)
    # A broken imported file fails the hook, located at its line.
    common = repo / "deploy" / "mesh" / "common.mesh"
    common.write_text(common.read_text() + "\nservice broken {\n")
    done = _run_hook("meshc-check", repo, ["deploy/mesh/common.mesh"])
    assert done.returncode == 1
    assert "deploy/mesh/common.mesh:" in done.stderr and "error[E003]" in done.stderr


def test_pre_commit_hooks_are_valid_meshc_commands():
    hooks = yaml.safe_load(HOOKS.read_text())
    assert {h["id"] for h in hooks} >= {"meshc-fmt", "meshc-check", "meshc-diff"}
    for h in hooks:
        assert {"id", "name", "entry", "language"} <= h.keys()
        words = shlex.split(h["entry"])
        assert words[0] == "meshc"
        files = [] if h.get("pass_filenames") is False else ["mesh/a.mesh"]
        _accepts(words[1:] + list(h.get("args", [])) + files)


def test_example_config_uses_published_hooks():
    published = {h["id"] for h in yaml.safe_load(HOOKS.read_text())}
    config = yaml.safe_load((CI / "pre-commit-config.yaml").read_text())
    used = [h for repo in config["repos"] for h in repo["hooks"]]
    assert used and all(h["id"] in published for h in used)
    diff = next(h for h in used if h["id"] == "meshc-diff")
    _accepts(["diff", "--fail-on", "widen", *diff["args"]])
