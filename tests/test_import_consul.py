"""`meshc import --from consul`: config entries as HCL, JSON and consul-k8s CRDs, plus agent
service definitions, modelled on the examples of Consul's config-entry documentation."""

from __future__ import annotations

from pathlib import Path

import pytest
from meshc.backends import compile_mesh

from meshc.compiler import load, load_text
from meshc.importers import import_files
from meshc.importers.consul import parse_filter

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ROOT / "tests" / "import_inputs" / "consul"


@pytest.fixture(scope="module")
def result():  # type: ignore[no-untyped-def]
    return import_files("consul", sorted(INPUTS.iterdir()))


def test_services_ports_and_versions(result) -> None:  # type: ignore[no-untyped-def]
    m = result.mesh
    assert [(s.name, [(p.protocol, p.number) for p in s.ports]) for s in m.services] == \
        [("admin", [("http", 9091)]), ("api", [("http", 9090)]), ("web", [("http", 8080)])]
    api = m.service("api")
    assert api is not None
    assert [(v.name, v.labels) for v in api.versions] == [("v1", (("version", "v1"),)), ("v2", (("version", "v2"),))]
    assert api.resilience.timeout is not None and api.resilience.timeout.ms == 3000
    lb = api.resilience.load_balance
    assert lb is not None and (lb.policy, lb.hash_on, lb.hash_key) == ("consistent_hash", "header", "x-user-id")
    # limits Consul sets on the caller's upstream are the callee's circuit breaker
    assert api.resilience.circuit_breaker is not None and api.resilience.circuit_breaker.max_connections == 512
    assert m.mtls == "strict" and m.authz == "deny_by_default"


def test_routes(result) -> None:  # type: ignore[no-untyped-def]
    api = result.mesh.service("api")
    assert api is not None
    first, second, third, last = api.routes
    assert first.destinations[0].service == "admin" and first.rewrite is not None and first.rewrite.prefix == "/"
    assert first.retry is not None and first.retry.attempts == 3 and first.retry.status_codes == (503,)
    assert first.timeout is not None and first.timeout.ms == 10_000
    assert len(second.matches) == 2  # two Consul routes to the same place: one rule, OR-ed
    # a destination without subset goes to the resolver's DefaultSubset
    assert third.destinations[0].version == "v1" and last.is_default and last.destinations[0].version == "v1"
    admin = result.mesh.service("admin")
    assert admin is not None and [(d.version, d.weight) for d in admin.routes[0].destinations] == \
        [("v1", 9000), ("v2", 1000)]


def test_intentions_fail_closed(result) -> None:  # type: ignore[no-untyped-def]
    rules = [(r.action, tuple(str(s) for s in r.sources), r.destinations) for r in result.mesh.rules]
    assert ("deny", ("web",), ("api",)) in rules
    assert sum(1 for r in rules if r[0] == "allow" and r[1] == ("web",)) == 2
    # a peer-qualified source and a JWT permission cannot be written: their allows are left out
    assert not any(src in ("legacy-batch", "billing") for _, srcs, _ in rules for src in srcs)
    fields = {e.field for e in result.report}
    assert {"Sources.legacy-batch.Peer", "Sources.billing.Permissions[0].JWT"} <= fields
    assert "# meshc import: service-intentions api Sources.billing.Permissions[0].JWT:" in result.text


def test_ingress(result) -> None:  # type: ignore[no-untyped-def]
    web = result.mesh.service("web")
    assert web is not None and web.expose is not None
    assert (web.expose.port, web.expose.hosts) == (8443, ("web.example.com",))
    assert result.mesh.ingress_identity.name == "ingress-service"
    load_text(result.text)


def test_filters() -> None:
    assert parse_filter('Service.Meta.version == "v1" and Service.Meta["app.kubernetes.io/x"] == "y"') == \
        {"version": "v1", "app.kubernetes.io/x": "y"}
    assert parse_filter("Service.Meta.version == v2") == {"version": "v2"}
    assert parse_filter("Service.Tags contains canary") is None


def test_crds_and_hcl_agree(tmp_path: Path) -> None:
    """The same configuration read from the HCL and from the CRD spelling is the same mesh."""
    mesh = load([ROOT / "examples/bookinfo/bookinfo.mesh"])
    bundle = compile_mesh(mesh, "consul", unsupported="warn")
    paths = bundle.write(tmp_path)
    hcl = import_files("consul", [p for p in paths if p.suffix == ".hcl"], "bookinfo")
    crd = import_files("consul", [p for p in paths if p.suffix == ".yaml"], "bookinfo")
    assert hcl.text == crd.text


def test_bad_hcl(tmp_path: Path) -> None:
    from meshc.importers.common import ImportError_

    bad = tmp_path / "x.hcl"
    bad.write_text('Kind = "service-router"\nRoutes = [ {\n')
    with pytest.raises(ImportError_):
        import_files("consul", [bad])
