"""`meshc why`: agrees with the authorization evaluator on every pair of every example, and
cites the .mesh lines that decide (rule, default posture, mTLS, route rule with its split)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from meshc import authz
from meshc.commands.why import register
from meshc.compiler import expand_paths, load, load_text
from meshc.why import explain, render_text

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (ROOT / "examples").iterdir() if p.is_dir() and any(p.glob("*.mesh")))


def run_why(argv: list[str], capsys) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="meshc")
    register(parser.add_subparsers())
    args = parser.parse_args(["why", *argv])
    rc = args.func(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _line(where: str) -> str:
    file, line = where.rsplit(":", 1)
    return Path(file).read_text().splitlines()[int(line) - 1]


def _callers(mesh) -> list[str]:
    return [s.name for s in mesh.services] + [authz.INGRESS, authz.UNAUTHENTICATED]


def _requests(mesh, dest: str) -> list[tuple[str, str]]:
    """A few concrete requests per destination: the paths its rules name, and some others."""
    reqs = {("GET", "/"), ("POST", "/x"), ("DELETE", "/admin/x")}
    for r in mesh.rules:
        if dest in r.destinations or "*" in r.destinations:
            for p in (*r.paths, *r.not_paths):
                if p.kind != "regex":
                    for m in (*r.methods, "GET", "PUT"):
                        reqs.add((m, p.value if p.value.startswith("/") else "/" + p.value))
    return sorted(reqs)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_why_agrees_with_the_matrix_for_every_pair(example, monkeypatch):
    monkeypatch.chdir(ROOT)
    mesh = load([f.relative_to(ROOT) for f in expand_paths([example])])
    matrix = authz.matrix(mesh)
    checked = 0
    for src in _callers(mesh):
        for dst in (s.name for s in mesh.services):
            expected = matrix.get((src, dst), authz.NO_ACCESS)
            ans = explain(mesh, src, dst)
            assert (ans["access"], ans["access_detail"]) == (expected.level, str(expected)), (src, dst)
            for cited in ans["granting_rules"]:
                assert _line(cited["where"]).lstrip().startswith("allow"), cited
            for cited in ans["narrowing_rules"]:
                assert _line(cited["where"]).lstrip().startswith("deny"), cited
            if ans["default"]["where"]:
                assert mesh.authz in _line(ans["default"]["where"])
            if ans["mtls"]["where"]:
                assert ans["mtls"]["mode"] in _line(ans["mtls"]["where"])
            # Concrete requests: the same verdict and the same deciding rule as decide().
            for method, path in _requests(mesh, dst):
                src_arg = None if src == authz.UNAUTHENTICATED else src
                one = explain(mesh, src, dst, method, path)
                port = one["port"]
                d = authz.decide(mesh, src_arg, dst, method=method, path=path, port=port)
                assert (one["allowed"], one["status"]) == (d.allowed, d.status), (src, dst, method, path)
                if d.rule is not None:
                    assert one["rule"]["where"] == f"{d.rule.span.file}:{d.rule.span.line}"
                    assert _line(one["rule"]["where"]).lstrip().startswith(d.rule.action)
                else:
                    assert "rule" not in one
                checked += 1
    assert checked > 0


def test_cli_exit_codes_follow_the_matrix_on_bookinfo(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    ex = Path("examples/bookinfo")
    mesh = load(expand_paths([ex]))
    matrix = authz.matrix(mesh)
    for src in _callers(mesh):
        for dst in (s.name for s in mesh.services):
            rc, out, err = run_why([src, dst, "-m", str(ex), "--format", "json"], capsys)
            level = matrix.get((src, dst), authz.NO_ACCESS).level
            assert rc == (1 if level == "none" else 0), (src, dst, err)
            assert json.loads(out)["access"] == level


def test_text_cites_rule_default_mtls_and_route(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    rc, out, _ = run_why(["productpage", "reviews", "GET", "/beta/x", "-m", "examples/bookinfo"], capsys)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == "productpage -> reviews GET /beta/x: ALLOWED"
    rule = next(x for x in lines if x.strip().startswith("rule:"))
    assert "examples/bookinfo/bookinfo.mesh:" in rule and "allow productpage -> details, reviews methods GET" in rule
    assert any(x.strip().startswith("default: deny_by_default") and "authz deny_by_default" in x for x in lines)
    assert any(x.strip().startswith("mtls:") and "strict" in x and "bookinfo-productpage" in x for x in lines)
    route = next(x for x in lines if x.strip().startswith("route:"))
    assert 'when path prefix "/beta" -> split { v2 50%, v3 50% }' in route
    # The header rule above it would win with the header: say so.
    assert any("end-user" in x and "note:" in x for x in lines)


def test_header_selects_the_route_rule(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    rc, out, _ = run_why(["productpage", "reviews", "GET", "/beta/x", "-m", "examples/bookinfo",
                          "-H", "end-user=jason", "--format", "json"], capsys)
    assert rc == 0
    route = json.loads(out)["route"]
    assert route["rule"] == 'when header end-user == "jason" -> v2' and route["split"] == {"v2": "100%"}


def test_denied_by_deny_rule_exits_1(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    rc, out, _ = run_why(["reviews", "ratings", "GET", "/admin/users", "-m", "examples/bookinfo"], capsys)
    assert rc == 1
    assert out.splitlines()[0] == "reviews -> ratings GET /admin/users: DENIED (403)"
    assert "deny * -> ratings" in out


def test_plaintext_caller_and_permissive_port():
    mesh_text = """
mesh m { mtls strict  authz deny_by_default }
service a { port http 80 }
service b { port http 80  mtls permissive }
allow a -> b
allow unauthenticated -> a methods GET
"""
    mesh = load_text(mesh_text)
    ans = explain(mesh, "unauthenticated", "a", "GET", "/")
    assert not ans["allowed"] and ans["status"] == 0 and "strict" in ans["reason"]
    # On a permissive port a's sidecar speaks mTLS: its identity is proven and its rule applies;
    # a plaintext caller is let in by the port but matches no rule.
    ans = explain(mesh, "a", "b", "GET", "/")
    assert ans["allowed"] and ans["mtls"]["mode"] == "permissive"
    ans = explain(mesh, "unauthenticated", "b", "GET", "/")
    assert not ans["allowed"] and ans["status"] == 403
    # On a disabled port nobody's identity is proven: a's allow rule does not apply.
    disabled = load_text(mesh_text.replace("mtls permissive", "mtls disabled"))
    ans = explain(disabled, "a", "b", "GET", "/")
    assert not ans["allowed"] and "cannot be proven" in ans["reason"]
    assert ans["mtls"]["mode"] == "disabled"
    assert "DENIED (403)" in render_text(ans)


def test_unknown_service_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    rc, _, err = run_why(["productpage", "nope", "-m", "examples/bookinfo"], capsys)
    assert rc == 2 and "unknown destination service 'nope'" in err
    rc, _, err = run_why(["productpage", "reviews", "GET", "-m", "examples/bookinfo"], capsys)
    assert rc == 2


NORMALIZATION_MESH = """
mesh n { mtls strict authz deny_by_default }
service client { port http 8080 calls api }
service api { port http 9090 }
allow client -> api
deny * -> api paths prefix "/admin"
"""


@pytest.mark.parametrize(("path", "allowed"), [
    ("/public", True), ("/admin", False), ("/public/..;/admin", False), ("/public\\..\\admin", False),
    ("/public/%2e%2e/admin", False), ("//admin", False), ("/public/.;x/../admin", False),
    ("/public/..%3B/admin", True),  # an encoded ';' is no parameter: an ordinary segment (as on Envoy)
])
def test_why_normalizes_as_the_data_planes_do(path: str, allowed: bool) -> None:
    # tests/scenarios/normalization.yaml holds the same vectors against native, Envoy and nginx.
    from meshc.compiler import load_text

    answer = explain(load_text(NORMALIZATION_MESH, "n.mesh"), "client", "api", "GET", path, None, {})
    assert answer["allowed"] is allowed, answer
