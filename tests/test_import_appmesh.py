"""`meshc import --from appmesh`: CloudFormation (modelled on aws-app-mesh-examples' colorapp),
App Mesh API bodies and appmesh-controller CRDs."""

from __future__ import annotations

import json
from pathlib import Path

from meshc.backends import compile_mesh

from meshc.compiler import load, load_text
from meshc.importers import import_files

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ROOT / "tests" / "import_inputs" / "appmesh"


def test_cloudformation_colorapp() -> None:
    result = import_files("appmesh", [INPUTS / "colorapp.yaml"])
    m = result.mesh
    assert m.name == "colorapp" and [s.name for s in m.services] == ["colorgateway", "colorteller"]
    ct = m.service("colorteller")
    assert ct is not None and [v.name for v in ct.versions] == ["black", "white"]
    header, default = ct.routes
    # a suffix header match is a regex (full match) in .mesh; priority 0 comes first
    assert header.matches[0].headers[0].kind == "regex" and header.matches[0].headers[0].value == ".*black"
    assert [(d.version, d.weight) for d in default.destinations] == [("white", 7500), ("black", 2500)]
    assert ct.resilience.retry is not None and ct.resilience.retry.attempts == 3
    assert ct.resilience.retry.per_try_ms == 2000
    # App Mesh's implicit retry policy on the header route is written out and reported
    assert header.retry is not None and header.retry.attempts == 2
    assert any(e.field == "retryPolicy" for e in result.report)
    gw = m.service("colorgateway")
    assert gw is not None and gw.calls == ("colorteller",)
    # DROP_ALL without client-certificate validation does not restrict callers
    assert m.authz == "allow_by_default"
    assert any(e.field == "spec.egressFilter" for e in result.report)
    load_text(result.text)


def test_api_bodies_crds_and_describe_output_agree(tmp_path: Path) -> None:
    mesh = load([ROOT / "tests/import_inputs/roundtrip.mesh"])
    paths = compile_mesh(mesh, "appmesh", unsupported="warn").write(tmp_path)
    api = import_files("appmesh", [p for p in paths if "aws" in p.parts], mesh.name)
    crd = import_files("appmesh", [p for p in paths if "k8s" in p.parts], mesh.name)
    assert api.text == crd.text
    # `aws appmesh describe-*` wraps the same body under the resource's name
    wrapped = []
    for p in paths:
        if "aws" in p.parts:
            body = json.loads(p.read_text())
            key = next(k for k in ("routeName", "gatewayRouteName", "virtualNodeName", "virtualServiceName",
                                   "virtualRouterName", "virtualGatewayName", "meshName") if k in body)
            out = tmp_path / ("described-" + p.name)
            out.write_text(json.dumps({key[:-4]: body}))
            wrapped.append(out)
    assert import_files("appmesh", wrapped, mesh.name).text == api.text
    catalog = api.mesh.service("catalog")
    assert catalog is not None and [r.is_default for r in catalog.routes] == [False, False, True]
    payments = api.mesh.service("payments")
    assert payments is not None and payments.external is not None and payments.external.tls_originate
