"""`meshc import --from nginx-mesh` on SMI and NGINX Service Mesh resources modelled on its
tutorials (traffic splitting, access control, rate limiting, circuit breaking)."""

from __future__ import annotations

from pathlib import Path

from meshc.compiler import load_text
from meshc.importers import import_files
from meshc.importers.nginx_mesh import path_of

INPUTS = Path(__file__).resolve().parent / "import_inputs" / "nginx-mesh"


def test_bookstore() -> None:
    result = import_files("nginx-mesh", [INPUTS / "bookstore.yaml"])
    m = result.mesh
    assert m.mtls == "strict" and m.authz == "deny_by_default"  # from the Helm values
    assert [s.name for s in m.services] == ["gateway", "target-svc"]  # target-v1/v2 are versions
    t = m.service("target-svc")
    assert t is not None and t.identity.name == "target-sa"
    assert [(v.name, v.labels) for v in t.versions] == [("v1-0", (("version", "1.0"),)),
                                                      ("v2-0", (("version", "2.0"),))]
    canary, default = t.routes
    match = canary.matches[0]
    assert match.path is not None and (match.path.kind, match.path.value) == ("prefix", "/api")
    assert match.methods == ("GET",) and match.headers[0].kind == "regex"
    assert [(d.version, d.weight) for d in default.destinations] == [("v1-0", 9000), ("v2-0", 1000)]
    rl = t.resilience.rate_limit
    assert rl is not None and (rl.requests, rl.unit, rl.burst) == (10, "m", 5)  # NSM burst excludes the request
    ol = t.resilience.outlier
    assert ol is not None and (ol.consecutive_5xx, ol.eject_ms) == (3, 30_000)
    rules = [(str(r.sources[0]), r.destinations, r.methods, [(p.kind, p.value) for p in r.paths]) for r in m.rules]
    assert rules == [("gateway", ("target-svc",), ("GET", "HEAD"), [("under", "/api")]),
                     ("gateway", ("target-svc",), (), [("exact", "/health")])]
    assert {e.field for e in result.report} == {"spec.sources/rules", "spec.fallback"}
    load_text(result.text)


def test_path_regexes() -> None:
    cases = {"^/a$": ("exact", "/a"), "^/a.*$": ("prefix", "/a"), "^/a(/.*)?$": ("under", "/a"),
             "^/a\\.b$": ("exact", "/a.b"), "^(?:/x[0-9]+)$": ("regex", "/x[0-9]+"), "/v[12]/.*": ("regex", "/v[12]/.*")}
    for rx, want in cases.items():
        p = path_of(rx)
        assert p is not None and (p.kind, p.value) == want, rx
    assert path_of(".*") is None
