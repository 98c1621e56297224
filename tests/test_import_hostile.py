"""Hostile and malformed inputs: every importer answers with a report or exit code 2, never a
traceback, and never writes a .mesh that does not compile."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from meshc.compiler import load_text
from meshc.importers import run_import

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
