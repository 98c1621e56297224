"""Project configuration (meshc/project.py): meshc.toml or [tool.meshc] in pyproject.toml."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshc.project import ProjectConfigError, find

ROOT = Path(__file__).resolve().parents[1]
MESH = """mesh m { authz deny_by_default }
service web { port http 8080 calls api retry 3 }
service api { port http 9090 calls db retry 3 }
service db { port http 5432 retry 1 }
allow web -> api
allow api -> db
"""


def meshc(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "meshc.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "mesh").mkdir()
    (tmp_path / "mesh" / "m.mesh").write_text(MESH)
    return tmp_path


def test_no_configuration_means_the_defaults(project: Path) -> None:
    r = meshc(project, "check", "mesh/m.mesh")
    assert "W209" in r.stderr and "W205" in r.stderr  # web unreachable; 4x4x2 = 32 > 10


def test_ignore_and_amplification_limit_from_pyproject_found_above(project: Path) -> None:
    (project / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.meshc]\nignore = ["W209"]\n'
                                           "amplification_limit = 40\n")
    r = meshc(project / "mesh", "check", "m.mesh")  # found in the folder above the working directory
    assert r.returncode == 0 and "W209" not in r.stderr and "W205" not in r.stderr, r.stderr
    assert "0 warnings, 1 suppressed" in r.stderr


def test_meshc_toml_comes_first_and_a_pyproject_without_tool_meshc_is_not_meshcs(project: Path) -> None:
    (project / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert find(project).path is None
    (project / "meshc.toml").write_text("amplification_limit = 100\n")
    (project / "pyproject.toml").write_text("[tool.meshc]\namplification_limit = 5\n")
    assert find(project).amplification_limit == 100


def test_compile_takes_targets_and_options_the_command_line_wins(project: Path) -> None:
    (project / "meshc.toml").write_text('[compile]\ntargets = ["envoy", "istio"]\n\n[options.envoy]\ndynamic = true\n')
    r = meshc(project, "compile", "mesh/m.mesh", "-o", "out")
    assert r.returncode == 0, r.stderr
    assert (project / "out" / "envoy" / "api" / "lds.yaml").exists() and any((project / "out" / "istio").iterdir())
    r = meshc(project, "compile", "mesh/m.mesh", "-t", "envoy", "-X", "dynamic=false", "-o", "out2")
    assert r.returncode == 0 and not (project / "out2" / "api" / "lds.yaml").exists(), r.stderr


@pytest.mark.parametrize(("toml", "said"), [
    ("ignor = []\n", "unknown key 'ignor' (did you mean 'ignore'?)"),
    ('ignore = ["E104"]\n', "errors cannot be ignored"),
    ("amplification_limit = 0\n", "amplification_limit must be a whole number"),
    ("[compile]\ntarget = []\n", "unknown key 'target' (did you mean 'targets'?)"),
    ("[options.envoi]\ndynamic = true\n", "unknown target 'envoi'"),
    ("[options.envoy]\ndynamc = true\n", "unknown option 'dynamc' for target envoy (did you mean 'dynamic'?)"),
    ("not toml [\n", "cannot read it"),
])
def test_a_bad_configuration_is_a_usage_error(project: Path, toml: str, said: str) -> None:
    (project / "meshc.toml").write_text(toml)
    r = meshc(project, "compile", "mesh/m.mesh", "-t", "envoy")
    assert r.returncode == 2 and said in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_parse_rejects_a_non_table() -> None:
    from meshc.project import parse

    with pytest.raises(ProjectConfigError):
        parse({"compile": []}, Path("meshc.toml"))
