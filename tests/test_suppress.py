"""Inline suppressions (`# meshc: ignore[CODE]`, meshc/suppress.py) and `check --show-suppressed`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshc.compiler import load_all
from meshc.diagnostics import MeshcError

MESH = """mesh m { authz deny_by_default }
service web { port http 8080 calls api retry 3 }   # meshc: ignore[W209]
service api {   # meshc: ignore[W205, w209]
  port http 9090
  calls db
  retry 3
}
service db { port http 5432 retry 3 }
allow web -> api
allow api -> db
"""


def _load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    f = tmp_path / "m.mesh"
    f.write_text(text)
    return load_all([f])


def _codes(ds) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    return sorted((d.code, d.span.line) for d in ds)


def test_same_line_and_whole_block(tmp_path: Path) -> None:
    plain = _load(tmp_path, MESH.replace("# meshc: ignore", "# not: ignore"))
    assert _codes(plain.warnings) == [("W205", 6), ("W205", 8), ("W209", 2)]
    loaded = _load(tmp_path, MESH)
    # web's W209 on its line; api's W205 inside the block the comment opens (codes in any case)
    assert _codes(loaded.warnings) == [("W205", 8)]
    assert _codes(loaded.suppressed) == [("W205", 6), ("W209", 2)]


def test_a_comment_covers_only_its_codes_and_its_lines(tmp_path: Path) -> None:
    text = MESH.replace("service db { port http 5432 retry 3 }", "service db { port http 5432 retry 3 }  # meshc: ignore[W209]")
    assert _codes(_load(tmp_path, text).warnings) == [("W205", 8)]  # W205 is not W209
    own_line = MESH.replace("service api {   # meshc: ignore[W205, w209]", "# meshc: ignore[W205]\nservice api {")
    assert ("W205", 7) in _codes(_load(tmp_path, own_line).warnings)  # a comment line covers itself only


def test_a_string_is_not_a_comment() -> None:
    from meshc.suppress import suppressions

    text = 'allow a -> b headers x == "v # meshc: ignore[W209]"\nallow a -> c  # meshc: ignore[W205]\n'
    (only,) = suppressions(text, [])
    assert (only.codes, only.first_line, only.last_line) == (frozenset({"W205"}), 2, 2)


def test_errors_cannot_be_silenced(tmp_path: Path) -> None:
    with pytest.raises(MeshcError) as e:
        _load(tmp_path, MESH.replace("calls db", "calls nope  # meshc: ignore[E104, E105]"))
    assert e.value.diagnostics


def test_check_shows_what_was_suppressed(tmp_path: Path) -> None:
    f = tmp_path / "m.mesh"
    f.write_text(MESH)
    env = {**os.environ, "NO_COLOR": "1"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "meshc.cli", "check", str(f), *args], capture_output=True,
                              text=True, env=env, timeout=60)

    r = run()
    assert r.returncode == 0 and "1 warnings, 2 suppressed" in r.stderr
    assert "W209" not in r.stderr
    r = run("--show-suppressed", "--format", "json")
    shown = {(d["code"], d["line"]): d for d in json.loads(r.stdout)}
    assert set(shown) == {("W205", 6), ("W205", 8), ("W209", 2)}
    assert "suppressed by" in " ".join(shown[("W209", 2)]["notes"])
    assert run("--strict").returncode == 1  # the warning that is left still counts


def test_a_directory_check_counts_and_shows_what_was_suppressed(tmp_path: Path) -> None:
    # A directory is checked mesh by mesh; the suppressions behave as for the files themselves.
    (tmp_path / "m.mesh").write_text(MESH)
    cmd = [sys.executable, "-m", "meshc.cli", "check", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"}, timeout=60)
    assert r.returncode == 0 and "1 warnings, 2 suppressed" in r.stderr, r.stderr
    r = subprocess.run([*cmd, "--show-suppressed", "--format", "json"], capture_output=True, text=True, timeout=60)
    assert {(d["code"], d["line"]) for d in json.loads(r.stdout)} == {("W205", 6), ("W205", 8), ("W209", 2)}
