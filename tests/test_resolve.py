"""Resolution semantics: imports, policies, overlays, defaults, identities, per-port mTLS."""

from __future__ import annotations

import pytest

from meshc.compiler import load
from meshc.diagnostics import MeshcError


def write(tmp_path, **files: str):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_imports_policies_and_overlays(tmp_path) -> None:
    write(tmp_path, **{
        "common.mesh": "policy p {\n  timeout 3s\n  retry 2 on 5xx per_try 1s\n}\n",
        "base.mesh": 'import "common.mesh"\nmesh m {\n  mtls permissive\n  timeout 9s\n}\n'
                     "service a {\n  port http 80\n  use p\n  retry 1 on reset\n  calls b\n"
                     "  version v1 { labels version=v1 }\n  route {\n    otherwise -> v1\n  }\n}\n"
                     "service b {\n  port http 81\n}\nservice db {\n  port tcp 5432\n}\n",
        "prod.mesh": 'import "base.mesh"\noverlay mesh {\n  mtls strict\n}\n'
                     "overlay service a {\n  timeout 5s\n  version v2 { labels version=v2 }\n"
                     "  route {\n    otherwise -> split { v1 10%, v2 90% }\n  }\n  calls db\n}\n",
    })
    base = load([tmp_path / "base.mesh"])
    a = base.service("a")
    assert a.resilience.timeout.ms == 3000  # the policy's, over the mesh default
    assert a.resilience.retry.attempts == 1 and a.resilience.retry.on == ("reset",)  # own line beats policy
    assert base.service("b").resilience.timeout.ms == 9000  # mesh default on an HTTP service
    assert base.service("db").resilience.timeout is None  # not on a TCP one
    assert base.service("b").ports[0].mtls == "permissive"

    prod = load([tmp_path / "prod.mesh"])
    a = prod.service("a")
    assert a.resilience.timeout.ms == 5000
    assert [v.name for v in a.versions] == ["v1", "v2"]
    assert [(d.version, d.weight) for d in a.routes[0].destinations] == [("v1", 1000), ("v2", 9000)]
    assert a.calls == ("b", "db")
    assert prod.mtls == "strict" and prod.service("b").ports[0].mtls == "strict"
    assert [f.rsplit("/", 1)[-1] for f in prod.files] == ["prod.mesh", "base.mesh", "common.mesh"]  # root first


def test_import_cycle_reads_each_file_once(tmp_path) -> None:
    write(tmp_path, **{
        "a.mesh": 'import "b.mesh"\nmesh m {}\nservice a {\n  port http 80\n}\n',
        "b.mesh": 'import "a.mesh"\nservice b {\n  port http 81\n}\n',
    })
    mesh = load([tmp_path / "a.mesh"], checks=False)
    assert [s.name for s in mesh.services] == ["a", "b"]


def test_identity_spiffe_and_per_port_mtls(tmp_path) -> None:
    write(tmp_path, **{"m.mesh": 'mesh m {\n  trust_domain "example.org"\n  namespace shop\n}\n'
                                 "service a {\n  port http 80\n  port grpc 90\n  identity sa-a\n"
                                 "  mtls permissive\n  mtls disabled on port 90\n}\n"})
    a = load([tmp_path / "m.mesh"], checks=False).service("a")
    assert a.identity.spiffe == "spiffe://example.org/ns/shop/sa/sa-a"
    assert {p.number: p.mtls for p in a.ports} == {80: "permissive", 90: "disabled"}


def test_overlay_cannot_invent_a_service(tmp_path) -> None:
    write(tmp_path, **{"m.mesh": "mesh m {}\nservice a {\n  port http 80\n}\noverlay service b {\n  timeout 1s\n}\n"})
    with pytest.raises(MeshcError) as e:
        load([tmp_path / "m.mesh"])
    assert [d.code for d in e.value.diagnostics] == ["E105"]


def test_destinations_resolve_versions_services_and_dotted(tmp_path) -> None:
    write(tmp_path, **{"m.mesh": "mesh m {}\nservice a {\n  port http 80\n  version v1 {}\n  route {\n"
                                 "    when header x present -> b.v2\n    when header y present -> b\n"
                                 "    otherwise -> v1\n  }\n}\nservice b {\n  port http 81\n  version v2 {}\n}\n"})
    routes = load([tmp_path / "m.mesh"], checks=False).service("a").routes
    assert [(d.service, d.version) for r in routes for d in r.destinations] == [("b", "v2"), ("b", None), ("a", "v1")]
    # a version with no labels gets version=<name>
    assert load([tmp_path / "m.mesh"], checks=False).service("b").versions[0].labels == (("version", "v2"),)
