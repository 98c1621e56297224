"""Hostile and malformed inputs: every importer answers with a report or exit code 2, never a
traceback, and never writes a .mesh that does not compile."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from meshc.compiler import load_text
from meshc.importers import import_files, run_import

CASES = {
    "istio": ["kind: VirtualService\nspec: [1, 2]\n",
              "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\n"
              "spec: {hosts: [x], http: [{route: [{destination: {host: x}, weight: 'abc'}]}]}\n",
              "kind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {rules: [{from: [{source: {principals: [7]}}]}]}\n",
              "- just\n- a list\n", "{"],
    "linkerd": ["kind: HTTPRoute\nmetadata: {name: r}\nspec: {parentRefs: [{name: nope, kind: Service}]}\n",
                "kind: Server\nspec: {podSelector: 5}\n"],
    "consul": ['{"Kind": "service-router", "Name": "a", "Routes": "oops"}',
               '{"Kind": "service-intentions", "Name": "a", "Sources": [{"Name": "b", "Permissions": [{}]}]}'],
    "appmesh": ['{"meshName": "m", "virtualNodeName": "n", "spec": {"listeners": [{"portMapping": {"port": "x"}}]}}',
                '{"Resources": {"A": {"Type": "AWS::AppMesh::Route", "Properties": {"Spec": 3}}}}'],
    "nginx-mesh": ["kind: TrafficSplit\nmetadata: {name: t}\nspec: {service: a, backends: [{service: b, weight: x}]}\n",
                   "kind: TrafficTarget\nspec: {destination: {}, rules: 5}\n"],
}


@pytest.mark.parametrize(("source", "text"), [(s, t) for s, ts in CASES.items() for t in ts])
def test_no_traceback(tmp_path: Path, source: str, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / ("in.json" if text.startswith(("{", "[")) else "in.yaml")
    f.write_text(text)
    out = tmp_path / "out.mesh"
    args = argparse.Namespace(source=source, files=[str(f)], output=str(out), report=None, name=None)
    code = run_import(args)  # any exception other than the handled ones fails the test
    err = capsys.readouterr().err
    assert code in (0, 1, 2)
    if code == 2:
        assert err.startswith("meshc import: ")
    else:
        load_text(out.read_text(), checks=False)


def test_cli_reports_malformed_input(tmp_path: Path) -> None:
    f = tmp_path / "in.yaml"
    f.write_text(CASES["istio"][0])
    proc = subprocess.run([sys.executable, "-m", "meshc.cli", "import", "--from", "istio", str(f)],
                          capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert proc.returncode in (1, 2)


# --------------------------------------------------------------------------- bounded input (issue #16)

import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

from meshc.compiler import MAX_IMPORT_DEPTH, UnreadableInput, load_all, read_bounded  # noqa: E402
from meshc.diagnostics import MeshcError  # noqa: E402
from meshc.importers.common import MAX_INPUT_BYTES, MAX_NODES  # noqa: E402

MESH = "mesh x { }\nservice a { port http 80 }\n"


def diagnostics(*paths: Path) -> list:  # type: ignore[type-arg]
    with pytest.raises(MeshcError) as e:
        load_all(list(paths))
    return e.value.diagnostics


def import_cli(source: str, *files: Path, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshc.cli", "import", "--from", source, *map(str, files)],
                          capture_output=True, text=True, timeout=timeout)


def test_import_of_dev_zero_is_refused_before_reading(tmp_path: Path) -> None:
    root = tmp_path / "a.mesh"
    root.write_text('import "/dev/zero"\n' + MESH)
    start = time.monotonic()
    [d] = diagnostics(root)
    assert (d.code, d.span.line, d.span.column) == ("E120", 1, 1)
    assert "/dev/zero" in d.message and "character device" in d.message and d.help
    assert time.monotonic() - start < 5
    proc = import_cli("istio", Path("/dev/zero"))
    assert proc.returncode == 2 and "E120" in proc.stderr and "Traceback" not in proc.stderr


def test_fifo_never_blocks(tmp_path: Path) -> None:
    """Nothing ever writes to the FIFO: reading it would block forever (the timeouts fail)."""
    fifo = tmp_path / "p.mesh"
    os.mkfifo(fifo)
    root = tmp_path / "a.mesh"
    root.write_text('import "p.mesh"\n' + MESH)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "meshc.cli", "check", str(root)], capture_output=True, text=True,
                          timeout=5)
    assert proc.returncode == 1 and "E120" in proc.stderr and "FIFO" in proc.stderr and "a.mesh:1:1" in proc.stderr
    proc = import_cli("consul", fifo, timeout=5)
    assert proc.returncode == 2 and "E120" in proc.stderr
    assert time.monotonic() - start < 5 + 5


def test_symlink_loop_is_reported_at_the_import(tmp_path: Path) -> None:
    (tmp_path / "loop.mesh").symlink_to("loop2.mesh")
    (tmp_path / "loop2.mesh").symlink_to("loop.mesh")
    root = tmp_path / "a.mesh"
    root.write_text('import "loop.mesh"\n' + MESH)
    [d] = diagnostics(root)
    assert (d.code, d.span.line) == ("E122", 1) and "symlink loop" in d.message
    [d] = diagnostics(tmp_path / "loop.mesh")  # as the command-line file
    assert d.code == "E122"
    proc = import_cli("istio", tmp_path / "loop.mesh")
    assert proc.returncode == 2 and "E122" in proc.stderr and "Traceback" not in proc.stderr


def test_import_chain_of_3000_files(tmp_path: Path) -> None:
    n = 3000
    for i in range(n):
        (tmp_path / f"c{i}.mesh").write_text(f'import "c{i + 1}.mesh"\n' if i < n - 1 else MESH)
    [d] = diagnostics(tmp_path / "c0.mesh")  # no RecursionError
    assert d.code == "E123" and d.span.file.endswith(f"c{MAX_IMPORT_DEPTH}.mesh") and d.span.line == 1
    assert str(MAX_IMPORT_DEPTH) in d.message and d.help
    # a chain at the limit loads
    for i in range(MAX_IMPORT_DEPTH + 1):
        (tmp_path / f"ok{i}.mesh").write_text(f'import "ok{i + 1}.mesh"\n' if i < MAX_IMPORT_DEPTH else MESH)
    assert len(load_all([tmp_path / "ok0.mesh"]).parsed) == MAX_IMPORT_DEPTH + 1


def test_read_bounded_reads_at_most_the_limit(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 100)
    assert read_bounded(f, 100) == b"x" * 100
    with pytest.raises(UnreadableInput) as e:
        read_bounded(f, 99)
    assert e.value.code == "E121"
    with pytest.raises(IsADirectoryError):
        read_bounded(tmp_path)


@pytest.mark.parametrize(("name", "text"), [
    ("deep.json", "[" * 20000 + "]" * 20000),
    ("deep-map.json", '{"a": ' * 5000 + "1" + "}" * 5000),
    ("deep.yaml", "".join(" " * i + "a:\n" for i in range(1500)) + " " * 1500 + "b: 1\n"),
    ("deep-flow.yaml", "kind: Service\nspec: " + "[" * 8000 + "]" * 8000 + "\n"),
], ids=["json-list", "json-map", "yaml-block", "yaml-flow"])
@pytest.mark.parametrize("source", ["istio", "linkerd", "consul", "appmesh", "nginx-mesh"])
def test_deeply_nested_input_is_refused(tmp_path: Path, name: str, text: str, source: str) -> None:
    f = tmp_path / name
    f.write_text(text)
    proc = import_cli(source, f)
    # meshc refuses past MAX_DEPTH; PyYAML >= 6.0.4's libyaml stops a flow collection at 1000 while
    # scanning ahead, before meshc sees the nodes: the same refusal, E124
    assert proc.returncode == 2 and "E124" in proc.stderr and "nested deeper than" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr


def test_deeply_nested_hcl_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "deep.hcl"
    f.write_text('Kind = "service-router"\nName = "a"\nRoutes = ' + "[" * 3000 + "]" * 3000 + "\n")
    proc = import_cli("consul", f)
    assert proc.returncode == 2 and "E124" in proc.stderr and "deep.hcl:3" in proc.stderr, proc.stderr


BILLION_LAUGHS = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, 10)) + "kind: Service\n"


@pytest.mark.parametrize("source", ["istio", "appmesh", "consul"])
def test_billion_laughs_is_refused_at_once(tmp_path: Path, source: str) -> None:
    f = tmp_path / "lol.yaml"
    f.write_text(BILLION_LAUGHS)
    start = time.monotonic()
    args = argparse.Namespace(source=source, files=[str(f)], output=str(tmp_path / "o.mesh"), report=None, name=None)
    assert run_import(args) == 2
    assert time.monotonic() - start < 1
    assert not (tmp_path / "o.mesh").exists()


def test_aliases_within_the_budget_load(tmp_path: Path) -> None:
    """Aliases are fine (Helm output uses them); only their expansion is counted."""
    f = tmp_path / "svc.yaml"
    f.write_text("kind: List\nitems:\n- {kind: Service, metadata: {name: a}, spec: {ports: &p [{name: http, port: 80}]}}\n"
                 "- {kind: Service, metadata: {name: b}, spec: {ports: *p}}\n")
    result = import_files("istio", [f])
    assert [s.name for s in result.mesh.services] == ["a", "b"]
    assert MAX_NODES >= 100_000


def test_ten_megabyte_yaml_is_refused_quickly(tmp_path: Path) -> None:
    f = tmp_path / "big.yaml"
    doc = json.dumps({"kind": "Service", "metadata": {"name": "svc"}, "spec": {"ports": [{"name": "http", "port": 80}]}})
    with f.open("w") as out:
        while out.tell() < 10_000_000:
            out.write(doc + "\n---\n")
    start = time.monotonic()
    args = argparse.Namespace(source="istio", files=[str(f)], output=None, report=None, name=None)
    assert run_import(args) == 2
    assert time.monotonic() - start < 5
    assert MAX_INPUT_BYTES < 10_000_000


def test_large_hcl_is_refused_quickly(tmp_path: Path) -> None:
    """python-hcl2 takes about 20 s per MB: HCL is limited much lower than JSON."""
    from meshc.importers.consul import MAX_HCL_BYTES

    f = tmp_path / "big.hcl"
    f.write_text('Kind = "service-router"\nName = "a"\n' + "".join(
        f'Routes{i} = {{ Match = {{ HTTP = {{ PathPrefix = "/a{i}" }} }} }}\n' for i in range(20_000)))
    assert f.stat().st_size > MAX_HCL_BYTES
    start = time.monotonic()
    args = argparse.Namespace(source="consul", files=[str(f)], output=None, report=None, name=None)
    assert run_import(args) == 2
    assert time.monotonic() - start < 2


def test_deep_hcl_expression_is_no_traceback(tmp_path: Path) -> None:
    f = tmp_path / "expr.hcl"
    f.write_text('Kind = "service-defaults"\nName = "a"\nX = ' + "+".join(["1"] * 5000) + "\n")
    proc = import_cli("consul", f)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "internal error" not in proc.stderr
