"""The `meshc` CLI as users run it: exit codes, output streams, formats, and no traceback for
any input, however broken."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from examples_index import ROOT

BOOKINFO = "examples/bookinfo/bookinfo.mesh"


def meshc(*args: str, cwd=ROOT, input: bytes | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("MESHC_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "meshc.cli", *args], cwd=cwd, capture_output=True,
                          input=input, timeout=timeout, env=env)


def test_check_ok_exit_zero() -> None:
    r = meshc("check", BOOKINFO)
    assert r.returncode == 0, r.stderr.decode()
    assert b"ok (4 services" in r.stderr
    assert r.stdout == b""


@pytest.fixture
def warned(tmp_path):
    p = tmp_path / "w.mesh"
    p.write_text("mesh m {}\nservice a {\n  port http 80\n  route {\n    when path prefix \"/x\" -> a\n  }\n}\n"
                 "allow ingress -> a\n")
    return p


def test_check_json_github_sarif(warned) -> None:
    r = meshc("check", str(warned), "--format", "json")
    data = json.loads(r.stdout)
    assert data and data[0]["code"] == "W202" and data[0]["line"] in (4, 5)
    r = meshc("check", str(warned), "--format", "github")
    assert r.stdout.startswith(b"::warning file=")
    r = meshc("check", str(warned), "--format", "sarif")
    sarif = json.loads(r.stdout)
    assert sarif["version"] == "2.1.0"
    result = sarif["runs"][0]["results"][0]
    assert result["level"] == "warning"
    assert result["locations"][0]["physicalLocation"]["region"]["startLine"] >= 4
    r = meshc("check", str(warned), "--strict")
    assert r.returncode == 1


def test_errors_exit_one_and_machine_formats_on_stdout(tmp_path) -> None:
    p = tmp_path / "bad.mesh"
    p.write_text("mesh m {}\nservice a { port http 80 route { otherwise -> v9 } }\n")
    r = meshc("check", str(p), "--format", "json")
    assert r.returncode == 1
    assert json.loads(r.stdout)[0]["code"] == "E101"


def test_unknown_target_did_you_mean() -> None:
    r = meshc("compile", BOOKINFO, "--target", "envoi")
    assert r.returncode == 2  # a usage error, found before the mesh is loaded
    assert b"unknown target 'envoi'" in r.stderr and b"did you mean 'envoy'" in r.stderr


def test_compile_to_directory_and_stdout(tmp_path) -> None:
    r = meshc("compile", BOOKINFO, "--target", "native", "-o", str(tmp_path))
    assert r.returncode == 0, r.stderr.decode()
    assert any(tmp_path.iterdir())
    r = meshc("compile", BOOKINFO, "--target", "model")
    assert r.returncode == 0 and b"name: bookinfo" in r.stdout


def test_usage_errors_exit_two(tmp_path) -> None:
    assert meshc().returncode == 2
    assert meshc("compile", BOOKINFO).returncode == 2  # no --target
    assert meshc("check", str(tmp_path)).returncode == 2  # a folder with no .mesh files


def test_fmt_check(tmp_path) -> None:
    p = tmp_path / "x.mesh"
    p.write_text("mesh   m {}\n")
    r = meshc("fmt", "--check", str(p))
    assert r.returncode == 1 and b"would reformat" in r.stderr
    assert meshc("fmt", str(p)).returncode == 0
    assert p.read_text() == "mesh m {}\n"
    assert meshc("fmt", "--check", str(p)).returncode == 0


# --------------------------------------------------------------------------- hostile input

HOSTILE = {
    "empty": b"",
    "binary": bytes(range(256)) * 4,
    "invalid-utf8": b"mesh m {}\nservice \xff\xfe { port http 80 }\n",
    "unterminated-string": b'mesh m {}\nservice a { expose ingress paths prefix "/x }\n',
    "unterminated-block": b"mesh m {}\nservice a {\n  port http 80\n",
    "deep-nesting": b"mesh m {}\n" + b"service a " + b"{" * 10_000 + b"}" * 10_000,
    "deep-conditions": b"mesh m {}\nservice a { port http 80 route { when " +
                       b" and ".join([b"header h present"] * 10_000) + b" -> a otherwise -> a } }\n",
    "unknown-keywords": b"mesh m {}\nservice a { port http 80 frobnicate 3 }\nwidget b {}\n",
    "lone-brace": b"}",
    "only-comment": b"# nothing here\n",
    "crlf": b"mesh m {}\r\nservice a {\r\n  port http 80\r\n}\r\nallow ingress -> a\r\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_no_traceback_on_hostile_input(tmp_path, name: str) -> None:
    p = tmp_path / f"{name}.mesh"
    p.write_bytes(HOSTILE[name])
    r = meshc("check", str(p))
    err = r.stderr.decode()
    assert "Traceback" not in err and "internal error" not in err, err
    if name in ("crlf", "deep-conditions"):
        assert r.returncode == 0, err
    else:
        assert r.returncode == 1, err
        assert f"{name}.mesh:" in err and "error[E" in err


def test_fifty_megabyte_file(tmp_path) -> None:
    p = tmp_path / "huge.mesh"
    line = b"service s { port http 80 }  # padding padding padding padding padding\n"
    p.write_bytes(b"mesh m {}\n" + line * (50 * 2**20 // len(line)))
    r = meshc("check", str(p))
    assert r.returncode == 1
    assert b"error[E121]" in r.stderr and b"16 MiB" in r.stderr and b"Traceback" not in r.stderr


def test_every_error_in_a_file_reported_in_one_run(tmp_path) -> None:
    p = tmp_path / "many.mesh"
    p.write_text("mesh m {}\nservice a {\n  port htp 80\n}\nservice b {\n  port http 80\n  use nope\n}\n"
                 "allow c -> a\n")
    r = meshc("check", str(p))
    err = r.stderr.decode()
    assert err.count("error[") == 3, err


def test_graph_formats(tmp_path) -> None:
    r = meshc("graph", "examples/bookinfo", "--format", "mermaid")
    assert r.returncode == 0 and r.stdout.startswith(b"flowchart")
    import shutil

    if shutil.which("dot") is None:
        pytest.skip("graphviz (`dot`) is not installed: apt-get install graphviz")
    out = tmp_path / "g.svg"
    r = meshc("graph", "examples/bookinfo", "--format", "svg", "-o", str(out))
    assert r.returncode == 0, r.stderr.decode()
    assert b"<svg" in out.read_bytes() and b"productpage" in out.read_bytes()


def test_compile_all_writes_what_compiles_and_fails_for_the_rest(tmp_path) -> None:
    r = meshc("compile", BOOKINFO, "--target", "all", "--unsupported=warn", "-o", str(tmp_path))
    err = r.stderr.decode()
    assert r.returncode == 1  # nginx and nginx-mesh refuse constructs (E330)
    assert "nginx-mesh, nginx: not written" in err and "error[E330]" in err
    written = {p.name for p in tmp_path.iterdir()}
    assert {"envoy", "istio", "native", "linkerd"} <= written and "nginx" not in written


@pytest.mark.parametrize("argv", [["why", "a", "b"], ["--help"]])
def test_a_command_module_that_cannot_import_fails_loudly(tmp_path, argv) -> None:
    # A broken meshc/why.py used to make `meshc why` an "invalid choice" (the module was skipped).
    broken = tmp_path / "meshc_broken_command.py"
    broken.write_text("raise ImportError('simulated broken module')\n")
    code = ("import sys; from meshc import cli, commands; commands.COMMANDS['why'] = 'meshc_broken_command'; "
            "sys.exit(cli.main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("MESHC_DEBUG", None)
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 3, r.stderr
    assert "a command module cannot be loaded: ImportError: simulated broken module" in r.stderr
    assert "invalid choice" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(("argv", "said"), [
    (["-t", "envoy", "-X", "dynamc"], "unknown option 'dynamc' for envoy (did you mean 'dynamic'?)"),
    (["-t", "envoy", "-X", "outbound_base=abc"], "option outbound_base='abc' for target envoy: expected a whole number"),
    (["-t", "nginx", "-X", "outbound_base=abc"], "option outbound_base='abc' for target nginx: expected a whole number"),
    (["-t", "native", "-X", "base_port=80"], "expected a whole number from 1024 to 65000"),
    (["-t", "envoy", "-X", "format=xml"], "expected one of yaml, json"),
    (["-t", "envoy", "-X", "peer_host=a b"], "expected an IP address or a lower-case DNS name"),
    (["-t", "istoi"], "unknown target 'istoi' (did you mean 'istio'?)"),
])
def test_usage_errors_exit_two_before_any_work(argv, said, tmp_path) -> None:
    # The .mesh file does not exist: a usage error must be found before anything is loaded.
    r = meshc("compile", str(tmp_path / "not-there.mesh"), *argv)
    assert r.returncode == 2, r.stderr
    assert said.encode() in r.stderr and b"E106" not in r.stderr and b"Traceback" not in r.stderr


def test_an_option_goes_to_the_targets_that_declare_it(tmp_path) -> None:
    out = tmp_path / "out"
    r = meshc("compile", str(ROOT / "examples" / "bookinfo"), "-t", "envoy,istio", "-X", "dynamic", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert any(out.glob("envoy/*/lds.yaml")) and any(out.glob("istio/*.yaml"))


def test_standard_input_is_a_file_named_dash() -> None:
    mesh = (ROOT / "examples" / "bookinfo" / "bookinfo.mesh").read_bytes()
    r = meshc("check", "-", input=mesh)
    assert r.returncode == 0 and b"-: ok (4 services" in r.stderr, r.stderr
    r = meshc("check", "-", "--format", "json", input=b"mesh m {}\nservice a { port htp 80 }\n")
    assert r.returncode == 1
    (d,) = json.loads(r.stdout)
    assert (d["code"], d["file"], d["line"], d["column"]) == ("E109", "-", 2, 18)
    r = meshc("check", "-", input=b"mesh m {}\nservice a { port htp 80 }\n")
    assert b"2 | service a { port htp 80 }" in r.stderr  # the source line is quoted from stdin
    assert meshc("check", "-", str(ROOT / "examples" / "bookinfo"), input=mesh).returncode == 2


def test_fmt_reads_standard_input_and_writes_standard_output() -> None:
    r = meshc("fmt", "-", input=b"mesh   m   {}\nservice a {   port http 80 }\n")
    assert r.returncode == 0 and r.stdout == b"mesh m {}\n\nservice a {\n  port http 80\n}\n"
    assert meshc("fmt", "--check", "-", input=r.stdout).returncode == 0
    assert meshc("fmt", "--check", "-", input=b"mesh   m {}\n").returncode == 1


def test_sarif_rules_link_to_an_absolute_uri(tmp_path) -> None:
    f = tmp_path / "m.mesh"
    f.write_text("mesh m {}\nservice a { port htp 80 }\n")
    r = meshc("check", str(f), "--format", "sarif")
    (rule,) = json.loads(r.stdout)["runs"][0]["tool"]["driver"]["rules"]
    assert rule["helpUri"].startswith("https://") and rule["helpUri"].endswith("/docs/errors.md#e109")
    env_r = subprocess.run([sys.executable, "-m", "meshc.cli", "check", str(f), "--format", "sarif"],
                           capture_output=True, env={**os.environ, "MESHC_DOCS_URL": "https://example.test/errors"})
    assert json.loads(env_r.stdout)["runs"][0]["tool"]["driver"]["rules"][0]["helpUri"] == "https://example.test/errors#e109"


def test_why_suggests_the_service_meant() -> None:
    r = meshc("why", "productpage", "reviewz", "-m", str(ROOT / "examples" / "bookinfo"))
    assert r.returncode == 2 and b"unknown destination service 'reviewz' (did you mean 'reviews'?)" in r.stderr


def test_diff_errors_respect_no_color(tmp_path) -> None:
    bad = tmp_path / "bad.mesh"
    bad.write_text("service {\n")
    r = meshc("diff", str(bad), str(bad), "--color", "always")
    assert b"\x1b[" in r.stderr
    r = meshc("diff", str(bad), str(bad), "--color", "never")
    assert r.returncode == 1 and b"\x1b[" not in r.stderr and b"error[E0" in r.stderr


def test_check_of_a_directory_checks_every_mesh_in_it(tmp_path) -> None:
    # base.mesh declares a mesh of its own and prod.mesh imports and patches it: a broken base
    # (a split of 90%) used to pass, because only prod.mesh, which overrides the route, was checked.
    import shutil

    d = tmp_path / "multifile"
    shutil.copytree(ROOT / "examples" / "multifile", d)
    r = meshc("check", str(d))
    assert r.returncode == 0
    assert b"multifile/base.mesh, " in r.stderr and b"multifile/prod.mesh, " in r.stderr
    base = (d / "base.mesh").read_text()
    prod = (d / "prod.mesh").read_text()
    assert "overlay service posts" in prod and "route {" in prod  # prod replaces posts' route table
    assert "otherwise -> split { v1 50%, v2 50% }" in base
    (d / "base.mesh").write_text(base.replace("split { v1 50%, v2 50% }", "split { v1 80%, v2 10% }"))
    assert meshc("check", str(d / "prod.mesh")).returncode == 0  # prod alone: the overlay hides it
    r = meshc("check", str(d))
    assert r.returncode == 1 and b"base.mesh:29:" in r.stderr and b"split weights" in r.stderr, r.stderr
