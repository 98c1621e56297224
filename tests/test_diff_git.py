"""`meshc diff --base REF`: real git repositories in temporary directories, diffed across commits.

The old side is read from git at REF through the compiler's `read` hook, so imports resolve
at REF too (a file since renamed or changed is read as it was).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from test_diff import SHOP, edit, run_cli

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True)
    return out.stdout


def commit(repo: Path, files: dict[str, str | None], message: str) -> None:
    for rel, text in files.items():
        p = repo / rel
        if text is None:
            git(repo, "rm", "-q", rel)
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        git(repo, "add", rel)
    git(repo, "commit", "-q", "-m", message)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    git(r, "config", "user.email", "test@example.com")
    git(r, "config", "user.name", "test")
    git(r, "config", "commit.gpgsign", "false")
    monkeypatch.chdir(r)
    return r


def test_diff_across_two_commits(repo, capsys):
    commit(repo, {"mesh/shop.mesh": SHOP}, "initial")
    commit(repo, {"mesh/shop.mesh": SHOP + 'allow frontend -> payments methods POST paths exact "/refund"\n'},
           "let the frontend refund")
    rc, out, err = run_cli(["diff", "--base", "HEAD~1", "mesh", "--fail-on", "widen"], capsys)
    assert rc == 1, err
    assert "+ allow frontend -> payments POST /refund (widens)" in out
    rc, out, _ = run_cli(["diff", "--base", "HEAD", "mesh"], capsys)
    assert rc == 0 and out == "no semantic changes\n"


def test_uncommitted_working_tree_against_head(repo, capsys):
    commit(repo, {"shop.mesh": SHOP}, "initial")
    (repo / "shop.mesh").write_text(edit("split { v1 90%, v2 10% }", "split { v1 50%, v2 50% }"))
    rc, out, err = run_cli(["diff", "--base", "HEAD", "--format", "json"], capsys)
    assert rc == 0, err
    data = json.loads(out)
    assert [c["text"] for c in data["changes"]] == ["reviews: v1 90% -> 50%, v2 10% -> 50%"]


def test_reformat_commit_reports_no_semantic_changes(repo, capsys):
    commit(repo, {"shop.mesh": SHOP}, "initial")
    reformatted = "\n".join("  ".join(line.split(" ")) for line in SHOP.splitlines()) + "\n# trailing comment\n"
    commit(repo, {"shop.mesh": reformatted}, "reformat")
    rc, out, _ = run_cli(["diff", "--base", "HEAD~1", "shop.mesh"], capsys)
    assert rc == 0 and out == "no semantic changes\n"


def test_imports_resolve_at_the_base_revision(repo, capsys):
    services, rules = SHOP.split("\nallow ", 1)
    # At the base, main.mesh imports lib/common.mesh with one retry on payments.
    commit(repo, {"lib/common.mesh": services + "\n", "main.mesh": 'import "lib/common.mesh"\nallow ' + rules},
           "initial")
    # Now the shared file moved and changed: the base must still read lib/common.mesh as it was.
    moved = edit("  retry 1 on 5xx\n  timeout 2s", "  retry 3 on 5xx\n  timeout 2s", services)
    commit(repo, {"lib/common.mesh": None, "shared.mesh": moved + "\n",
                  "main.mesh": 'import "shared.mesh"\nallow ' + rules}, "move and change the shared file")
    rc, out, err = run_cli(["diff", "--base", "HEAD~1", "main.mesh"], capsys)
    assert rc == 0, err
    assert "~ payments: retry 1 (2 attempts) on 5xx -> 3 (4 attempts) on 5xx (widens)" in out
    assert "Services" not in out and "Access" not in out


def test_directory_at_the_base_uses_its_root_files(repo, capsys):
    services, rules = SHOP.split("\nallow ", 1)
    commit(repo, {"m/common.mesh": services + "\n", "m/main.mesh": 'import "common.mesh"\nallow ' + rules},
           "initial")
    (repo / "m" / "main.mesh").write_text('import "common.mesh"\nallow ' + rules + "allow * -> ratings\n")
    rc, out, err = run_cli(["diff", "--base", "HEAD", "m"], capsys)
    assert rc == 0, err
    assert "+ allow ingress -> ratings (widens)" in out


def test_removed_items_are_located_at_the_base(repo, capsys):
    commit(repo, {"shop.mesh": SHOP}, "initial")
    commit(repo, {"shop.mesh": edit("allow reviews  -> ratings methods GET\n", "")}, "drop a rule")
    rc, out, _ = run_cli(["diff", "--base", "HEAD~1", "shop.mesh"], capsys)
    assert rc == 0
    line = next(x for x in out.splitlines() if "- allow reviews -> ratings GET" in x)
    assert "(HEAD~1:shop.mesh:" in line


def test_new_mesh_file_compares_against_nothing(repo, capsys):
    commit(repo, {"README": "x\n"}, "initial")
    (repo / "shop.mesh").write_text(SHOP)
    rc, out, err = run_cli(["diff", "--base", "HEAD", "shop.mesh"], capsys)
    assert rc == 0, err
    assert "+ service payments" in out and "+ allow frontend -> checkout" in out


def test_bad_revision_and_broken_base(repo, capsys):
    commit(repo, {"shop.mesh": "service {\n"}, "broken")
    (repo / "shop.mesh").write_text(SHOP)
    rc, _, err = run_cli(["diff", "--base", "no-such-ref", "shop.mesh"], capsys)
    assert rc == 2 and "unknown git revision" in err
    rc, out, err = run_cli(["diff", "--base", "HEAD", "shop.mesh"], capsys)
    assert rc == 1 and out == ""
    assert "HEAD:shop.mesh" in err and "Traceback" not in err


def test_not_a_repository(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shop.mesh").write_text(SHOP)
    rc, _, err = run_cli(["diff", "--base", "HEAD", "shop.mesh"], capsys)
    assert rc == 2 and "not in a git repository" in err


def two_cores(monkeypatch):
    """Force `meshc diff` to load the sides on two cores (meshc.diff_sides), as it does for a
    large mesh with a core idle; returns a list that records each use."""
    import meshc.commands.diff
    import meshc.diff_sides
    import meshc.parallel

    monkeypatch.setattr(meshc.commands.diff, "PARALLEL_BYTES", 0)
    monkeypatch.setattr(meshc.parallel, "enabled", True)
    monkeypatch.setattr(meshc.parallel, "idle_core", lambda: True)
    used: list[bool] = []
    real = meshc.diff_sides.load_both
    monkeypatch.setattr(meshc.diff_sides, "load_both", lambda *a: used.append(True) or real(*a))
    return used


@pytest.mark.parametrize("forked", [False, True], ids=["one process", "two cores"])
def test_old_side_errors_name_the_revision(repo, capsys, monkeypatch, forked):
    used = two_cores(monkeypatch) if forked else []
    commit(repo, {"shop.mesh": "service {\n"}, "broken")
    commit(repo, {"shop.mesh": SHOP}, "fixed")
    rc, out, err = run_cli(["diff", "--base", "HEAD~1", "shop.mesh"], capsys)
    assert rc == 1 and out == "" and "HEAD~1:shop.mesh" in err and "Traceback" not in err
    rc, _, err = run_cli(["diff", "--base", "no-such-ref", "shop.mesh"], capsys)
    assert rc == 2 and "unknown git revision" in err
    assert bool(used) == forked


def test_two_cores_give_the_same_answer(repo, capsys, monkeypatch):
    """A large diff loads the old side in a forked child that sends back only what differs
    (meshc.diff_sides): forced here on a small mesh, it must print what one process prints."""
    commit(repo, {"shop.mesh": SHOP}, "initial")
    commit(repo, {"shop.mesh": SHOP.replace("methods GET", "methods GET, DELETE", 1) + "allow * -> ratings\n"},
           "open ratings")
    rc, one, err = run_cli(["diff", "--base", "HEAD~1", "shop.mesh"], capsys)
    assert rc == 0 and "+ allow ingress -> ratings (widens)" in one, err
    used = two_cores(monkeypatch)
    rc, two, err = run_cli(["diff", "--base", "HEAD~1", "shop.mesh"], capsys)
    assert rc == 0 and used and two == one, err
