"""The user's path, as the README gives it: the package built into a brand-new venv with the
README's own first command, then `meshc up examples/bookinfo/bookinfo.mesh` serving
`GET /productpage` through the ingress with 200 (demo upstreams behind every sidecar, mTLS
inside). The same `meshc up` check runs on the install the suite itself uses (editable in CI),
so both ways of installing are proven on the request path each one builds.

The venv build takes a few minutes (pip resolves the dependencies from the index or its cache
and compiles the two extensions); it is one test, run once per suite.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def readme_main_command() -> str:
    """The README's first command ("sets up and runs the main job on an example")."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Two commands on a fresh machine", 1)[1]
    return re.search(r"```sh\n(.+?)\n```", section, re.S).group(1).strip()  # type: ignore[union-attr]


def _tracked_tree(dest: Path) -> None:
    """The repository's tracked files as they are now (what a clone holds, no build leftovers)."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in names.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


def _get(port: int, path: str) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def meshc_up_serves_productpage(meshc: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Runs `meshc up examples/bookinfo/bookinfo.mesh`, GETs /productpage through the ingress,
    stops it with Ctrl-C; returns its stderr."""
    proc = subprocess.Popen([*meshc, "up", "examples/bookinfo/bookinfo.mesh"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    table = ""
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while "metrics   reviews" not in table:
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, f"meshc up stopped: {table}{proc.stderr.read()}"  # type: ignore[union-attr]
            table += line
        ingress = re.search(r"^outbound\s+_ingress\s+\S+\s+127\.0\.0\.1:(\d+)", table, re.M)
        assert ingress, table
        status, body = _get(int(ingress.group(1)), "/productpage")
        assert status == 200, body
        assert json.loads(body)["service"] == "productpage"  # answered by productpage's demo upstream
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    return stderr


def _path_note(stderr: str) -> str:
    m = re.search(r"^meshc: request path (.+?); event loop (\S+)", stderr, re.M)
    assert m, stderr
    return m.group(1)


def test_readme_install_into_a_new_venv_runs_meshc_up(tmp_path: Path) -> None:
    tree = tmp_path / "meshc"
    _tracked_tree(tree)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MESHC_PURE_PYTHON", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    command = readme_main_command()
    assert command.startswith("python3 -m pip install . && meshc check examples/bookinfo")
    done = subprocess.run(["bash", "-c", command], cwd=tree, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert sorted(p.name for p in (tree / "out").iterdir()) == ["envoy", "istio", "native"]
    # The venv's meshc, not the suite's: from a folder where no checkout shadows the package.
    installed = subprocess.run([str(venv / "bin" / "python"), "-c", "import meshc; print(meshc.__file__)"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
    assert str(venv) in installed
    stderr = meshc_up_serves_productpage([str(venv / "bin" / "meshc")], tree, env)
    if os.environ.get("MESHC_REQUIRE_COMPILED"):
        assert _path_note(stderr) == "compiled (mypyc)"
    # `meshc validate` needs no schema folder beside an installed meshc.
    check = subprocess.run([str(venv / "bin" / "meshc"), "validate", "out/istio", "--target", "istio"], cwd=tree,
                           env=env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr


def test_meshc_up_on_the_suites_own_install_serves_productpage(tmp_path: Path) -> None:
    meshc = shutil.which("meshc", path=str(Path(sys.executable).parent)) or shutil.which("meshc")
    assert meshc, "the meshc console script is not installed"
    work = tmp_path / "work"
    shutil.copytree(ROOT / "examples", work / "examples")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    stderr = meshc_up_serves_productpage([meshc], work, env)
    if os.environ.get("MESHC_REQUIRE_COMPILED") and not os.environ.get("MESHC_PURE_PYTHON"):
        assert _path_note(stderr) == "compiled (mypyc)"
    elif os.environ.get("MESHC_PURE_PYTHON"):
        assert _path_note(stderr) == "pure Python (MESHC_PURE_PYTHON is set)"
