"""Graph checks (meshc/graph.py): each check fires on a minimal mesh and not on its fix;
amplification, the call graph, dot/mermaid output and the `meshc graph` command."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from meshc import graph
from meshc.compiler import load_text
from meshc.model import FULL, Match, Mesh, PathMatch, RouteRule

ROOT = Path(__file__).resolve().parents[1]
HEAD = "mesh shop {}\n"


def _mesh(body: str, head: str = HEAD) -> Mesh:
    return load_text(head + body, checks=False)


def _codes(body: str, head: str = HEAD, **kw: int) -> list[str]:
    return [d.code for d in graph.check(_mesh(body, head), **kw)]


WEB = """
service web {
  port http 8080
  expose ingress
  %s
}
allow ingress -> web
"""

# (id, code, firing mesh, corrected mesh)
PAIRS = [
    ("no-otherwise", "W202",
     WEB % 'version v1 { labels version=v1 }\n route { when header x-beta == "1" -> v1 }',
     WEB % 'version v1 { labels version=v1 }\n route { when header x-beta == "1" -> v1\n otherwise -> v1 }'),
    ("shadowed-prefix", "W203",
     WEB % 'version v1 { labels version=v1 }\n route { when path prefix "/a" -> v1\n'
           ' when path prefix "/a/b" -> v1\n otherwise -> v1 }',
     WEB % 'version v1 { labels version=v1 }\n route { when path prefix "/a/b" -> v1\n'
           ' when path prefix "/a" -> v1\n otherwise -> v1 }'),
    ("shadowed-method", "W203",
     WEB % 'version v1 { labels version=v1 }\n route { when method GET, POST -> v1\n'
           ' when path exact "/x" and method GET -> v1\n otherwise -> v1 }',
     WEB % 'version v1 { labels version=v1 }\n route { when method POST -> v1\n'
           ' when path exact "/x" and method GET -> v1\n otherwise -> v1 }'),
    ("shadowed-header", "W203",
     WEB % 'version v1 { labels version=v1 }\n route { when header x-user present -> v1\n'
           ' when header x-user == "jason" -> v1\n otherwise -> v1 }',
     WEB % 'version v1 { labels version=v1 }\n route { when header x-user == "jason" -> v1\n'
           ' when header x-user present -> v1\n otherwise -> v1 }'),
    ("dead-call", "W204",
     WEB % "calls db" + "service db { port http 5432 }\nallow ingress -> db\n",
     WEB % "calls db" + "service db { port http 5432 }\nallow web -> db methods GET\n"),
    ("dead-exposure", "W204",
     "service web {\n port http 80\n expose ingress\n}\nallow * -> web\ndeny ingress -> web\n",
     "service web {\n port http 80\n expose ingress\n}\nallow * -> web\ndeny ingress -> web paths prefix \"/x\"\n"),
    ("dead-disabled", "W204",
     WEB % "calls db" + "service db {\n port http 5432\n mtls disabled\n}\nallow web -> db\n",
     WEB % "calls db" + "service db {\n port http 5432\n}\nallow web -> db\n"),
    ("amplification", "W205",
     WEB % "calls api\n retry 3" + "service api {\n port http 81\n retry 2\n}\nallow web -> api\n",
     WEB % "calls api\n retry 1" + "service api {\n port http 81\n retry 2\n}\nallow web -> api\n"),
    ("timeout-budget", "W206",
     WEB % "calls api\n timeout 1s" + "service api {\n port http 81\n timeout 3s\n}\nallow web -> api\n",
     WEB % "calls api\n timeout 4s" + "service api {\n port http 81\n timeout 3s\n}\nallow web -> api\n"),
    ("timeout-retries", "W206",
     WEB % "calls api\n timeout 1s" + "service api {\n port http 81\n retry 3 per_try 300ms\n}\nallow web -> api\n",
     WEB % "calls api\n timeout 1s" + "service api {\n port http 81\n retry 1 per_try 300ms\n}\nallow web -> api\n"),
    ("per-try", "E212", WEB % "timeout 1s\n retry 2 per_try 1s", WEB % "timeout 1s\n retry 2 per_try 300ms"),
    ("permissive-identity", "W207",
     WEB % "mtls permissive" + "service api {\n port http 81\n}\nallow api -> web\nallow api -> api\n",
     WEB % "" + "service api {\n port http 81\n}\nallow api -> web\nallow api -> api\n"),
    ("unreachable", "W209", WEB % "" + "service audit { port http 81 }\n",
     WEB % "" + "service audit { port http 81 }\nallow web -> audit\n"),
    ("cycle", "W210",
     WEB % "calls api" + "service api {\n port http 81\n calls web\n}\nallow web -> api\nallow api -> web\n",
     WEB % "calls api" + "service api {\n port http 81\n}\nallow web -> api\nallow api -> web\n"),
    ("port-collision", "E211",
     "service a {\n port http 80\n expose ingress\n endpoints 127.0.0.1:9000\n}\n"
     "service b {\n port http 80\n expose ingress\n endpoints localhost:9000\n}\nallow ingress -> a, b\n",
     "service a {\n port http 80\n expose ingress\n endpoints 127.0.0.1:9000\n}\n"
     "service b {\n port http 80\n expose ingress\n endpoints localhost:9001\n}\nallow ingress -> a, b\n"),
    ("version-collision", "E211",
     WEB % "version v1 { labels version=v1 endpoints 127.0.0.1:9000 }\n"
           " version v2 { labels version=v2 endpoints 127.0.0.1:9000 }",
     WEB % "endpoints 127.0.0.1:9000\n version v1 { labels version=v1 endpoints 127.0.0.1:9000 }\n"
           " version v2 { labels version=v2 endpoints 127.0.0.1:9001 }"),
]


@pytest.mark.parametrize(("code", "bad", "good"), [p[1:] for p in PAIRS], ids=[p[0] for p in PAIRS])
def test_check_fires_and_fix_silences(code: str, bad: str, good: str) -> None:
    assert code in _codes(bad)
    assert _codes(good) == []


def test_path_normalization_pairs() -> None:
    deny = WEB % "" + 'deny * -> web paths prefix "/admin"\n'
    assert _codes(deny, "mesh shop { path_normalization off }\n") == ["W208"]
    assert _codes(deny, "mesh shop { path_normalization strict }\n") == []
    except_ = ('service web {\n port http 80\n expose ingress\n}\n'
               'allow ingress -> web except paths prefix "/internal"\n')
    assert _codes(except_, "mesh shop { path_normalization off }\n") == ["W208"]
    assert _codes(except_) == []


@pytest.mark.parametrize(("rule", "fires", "says"), [
    ('deny * -> web paths prefix "/admin"', True, "'//admin' or '/x/../admin' is not denied"),
    ('deny * -> web except paths prefix "/public"', True, "'/public/../admin' is excepted"),
    ('allow ingress -> web except paths under "/internal"', True, "'//internal'"),
    ('allow ingress -> web paths prefix "/public/"', True, "'/public/../admin' is allowed"),
    ('allow ingress -> web paths exact "/health"', False, ""),  # a raw path can only fail to match
    ("deny * -> web methods DELETE", False, ""),
])
def test_path_normalization_patterns(rule: str, fires: bool, says: str) -> None:
    src = "service web {\n port http 80\n expose ingress\n}\nallow * -> web\n" + rule + "\n"
    found = graph.check(_mesh(src, "mesh shop { path_normalization off }\n"))
    assert [d.code for d in found] == (["W208"] if fires else [])
    assert all(says in d.message for d in found)
    assert graph.check(_mesh(src)) == []


def test_split_weights_from_code() -> None:
    """The resolver rejects a bad split first (E111); a model built in code reaches E201."""
    src = WEB % ("version v1 { labels version=v1 }\n version v2 { labels version=v2 }\n"
                 " route { otherwise -> split { v1 50%, v2 50% } }")
    mesh = _mesh(src)
    assert graph.check(mesh) == []
    web = mesh.service("web")
    assert web is not None
    rule = web.routes[0]
    bad_rule = rule.model_copy(update={"destinations": (rule.destinations[0],
                                                        rule.destinations[1].model_copy(update={"weight": 4000}))})
    bad = mesh.model_copy(update={"services": (web.model_copy(update={"routes": (bad_rule,)}),)})
    found = [d for d in graph.check(bad) if d.code == "E201"]
    assert len(found) == 1 and "90%" in found[0].message and found[0].span == rule.span


def test_diagnostic_points_at_line_with_label_and_help() -> None:
    src = WEB % "timeout 1s\n retry 2 per_try 2s"
    (d,) = graph.check(_mesh(src))
    assert d.code == "E212" and d.severity == "error"
    assert (HEAD + src).splitlines()[d.span.line - 1].strip() == "retry 2 per_try 2s"
    assert d.label and d.help


def test_per_try_against_mesh_default_timeout() -> None:
    assert _codes(WEB % "retry 1 per_try 5s", "mesh shop { timeout 2s }\n") == ["E212"]
    assert _codes(WEB % "retry 1 per_try 5s\n timeout none", "mesh shop { timeout 2s }\n") == []


def test_timeout_unbounded_callee_is_not_compared() -> None:
    # the callee has retries but neither timeout nor per_try: its time is unbounded, not compared
    src = WEB % "calls api\n timeout 1s" + "service api {\n port http 81\n retry 3\n}\nallow web -> api\n"
    assert "W206" not in _codes(src)


def test_amplification_path_and_limit() -> None:
    src = (WEB % "calls api\n retry 3" + "service api {\n port http 81\n calls db\n retry 3\n}\n"
           "service db {\n port http 82\n retry 2\n}\nallow web -> api\nallow api -> db\n")
    mesh = _mesh(src)
    amp = graph.amplification(mesh)
    assert amp["db"] == (48, ("web", "api", "db"))
    assert amp["web"] == (4, ("web",))
    w = [d for d in graph.check(mesh) if d.code == "W205"]
    assert [d.message.split(": ", 1)[1] for d in w if "'db'" in d.message] == [
        "one request may become 48 attempts at 'db': web -> api -> db (4x4x3 = 48 attempts)"]
    assert "W205" not in [d.code for d in graph.check(mesh, amplification_limit=48)]
    assert [d.code for d in graph.check(mesh, amplification_limit=47)] == ["W205"]


def test_amplification_route_hop_does_not_multiply() -> None:
    src = (WEB % "calls reviews" + "service reviews {\n port http 81\n retry 2\n"
           " route { otherwise -> split { reviews 50%, next 50% } }\n}\n"
           "service next {\n port http 81\n retry 9\n}\n"
           "allow web -> reviews, next\nallow reviews -> next\n")
    amp = graph.amplification(_mesh(src))
    assert amp["next"] == (10, ("next",))  # its own retry 9, not 3 x 10
    assert amp["reviews"] == (3, ("reviews",))


def test_amplification_in_cycles_terminates_on_simple_paths() -> None:
    src = (WEB % "calls b\n retry 1" + "service b {\n port http 81\n calls c\n retry 2\n}\n"
           "service c {\n port http 82\n calls web, b\n retry 3\n}\n"
           "allow web -> b\nallow b -> c\nallow c -> web, b\n")
    amp = graph.amplification(_mesh(src))
    for _value, path in amp.values():
        assert len(path) == len(set(path))  # a simple path
    # every simple path through the 3-cycle multiplies 2 x 3 x 4 = 24
    assert {name: v for name, (v, _) in amp.items()} == {"web": 24, "b": 24, "c": 24}


def test_amplification_greedy_for_large_cycles() -> None:
    n = graph.EXACT_CYCLE_SIZE + 3
    names = [f"s{i}" for i in range(n)]
    body = "".join(f"service {s} {{\n port http 80\n calls {names[(i + 1) % n]}\n retry 1\n}}\n"
                   f"allow {s} -> {names[(i + 1) % n]}\n" for i, s in enumerate(names))
    amp = graph.amplification(_mesh(body))
    for value, path in amp.values():
        assert len(path) == len(set(path)) and value == 2 ** len(path)
    assert max(v for v, _ in amp.values()) == 2 ** n


def test_path_covers_table() -> None:
    P = lambda k, v: PathMatch(kind=k, value=v)  # noqa: E731
    covers = graph.path_covers
    assert covers(P("prefix", "/api"), P("prefix", "/apix"))
    assert covers(P("prefix", "/api"), P("under", "/api/v2"))
    assert not covers(P("under", "/api"), P("prefix", "/apix"))
    assert not covers(P("under", "/api"), P("prefix", "/api"))
    assert covers(P("under", "/api"), P("prefix", "/api/"))
    assert covers(P("under", "/api"), P("exact", "/api"))
    assert covers(P("under", "/"), P("regex", ".*"))
    assert not covers(P("exact", "/a"), P("prefix", "/a"))
    assert covers(P("regex", "/v[0-9]+"), P("exact", "/v2"))
    assert not covers(P("regex", "/v[0-9]+"), P("prefix", "/v2"))


def test_dead_route_names_the_caller() -> None:
    src = ("service front {\n port http 80\n expose ingress\n calls reviews\n}\n"
           "service reviews {\n port http 80\n route { otherwise -> split { reviews 90%, next 10% } }\n}\n"
           "service next { port http 80 }\n"
           "allow ingress -> front\nallow front -> reviews\nallow reviews -> next\n")
    (d,) = graph.check(_mesh(src))
    assert d.code == "W204" and "'front'" in d.message and "'next'" in d.message
    assert graph.check(_mesh(src + "allow front -> next\n")) == []


def test_permissive_port_only() -> None:
    src = ("service web {\n port http 80\n port grpc 81\n mtls disabled on port 81\n expose ingress\n}\n"
           "service api { port http 80 }\nallow ingress -> web%s\nallow api -> web, api%s\n")
    assert graph.check(_mesh(src.replace(" mtls disabled on port 81\n", "") % ("", ""))) == []
    found = graph.check(_mesh(src % ("", "")))
    assert [d.code for d in found] == ["W207", "W207"]
    assert all("grpc-81 (disabled)" in d.message and "http-80" not in d.message for d in found)
    assert [d.message.split(" relies")[0] for d in found] == ["allow rule for ingress", "allow rule for api"]
    # rules narrowed to the strict port are fine
    assert graph.check(_mesh(src % (" ports 80", " ports 80"))) == []


def test_call_graph_edges_and_kinds() -> None:
    src = ("service front {\n port http 80\n expose ingress\n calls reviews\n}\n"
           "service reviews {\n port http 80\n route { otherwise -> split { reviews 90%, next 10% }"
           " { mirror shadow 5% } }\n}\n"
           "service next { port http 80 }\nservice shadow { port http 80 }\n"
           "allow ingress -> front\nallow front -> reviews, next\nallow reviews -> shadow\n")
    g = graph.call_graph(_mesh(src))
    assert g.edges["ingress", "front"]["kinds"] == ("allow", "expose")
    assert g.edges["front", "reviews"]["kinds"] == ("allow", "calls")
    assert g.edges["reviews", "next"]["kinds"] == ("split",)
    assert g.edges["reviews", "next"]["weight"] == 1000
    assert g.edges["reviews", "shadow"]["kinds"] == ("allow", "mirror")
    assert g.edges["front", "next"]["kinds"] == ("allow",)
    assert g.nodes["ingress"]["kind"] == "ingress"


def test_dot_and_mermaid_styles() -> None:
    src = (WEB % "calls api, db" + "service api { port http 81 }\nservice db { port http 82 }\n"
           "allow web -> api methods GET\nallow ingress -> db\n")
    mesh = _mesh(src)
    dot = graph.to_dot(mesh)
    assert dot.startswith('digraph "shop" {') and dot.endswith("}\n")
    assert '"web" -> "db" [color="red", style="dashed", fontcolor="red", label="denied"];' in dot
    assert '"web" -> "api" [color="darkgreen", label="methods GET"];' in dot
    assert '"ingress" -> "web" [color="black"];' in dot
    mer = graph.to_mermaid(mesh)
    assert mer.startswith("flowchart LR\n")
    ids = dict(re.findall(r'^\s+(n\d+)[\[(/]+"([\w-]+)"', mer, re.M))
    inv = {v: k for k, v in ids.items()}
    assert f"{inv['web']} -.->|denied| {inv['db']}" in mer
    assert graph.to_dot(mesh) == dot and graph.to_mermaid(mesh) == mer  # deterministic


def test_register_graph_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from meshc.commands import graph as graph_command

    parser = argparse.ArgumentParser(prog="meshc")
    graph_command.register(parser.add_subparsers(dest="command"))
    f = tmp_path / "m.mesh"
    f.write_text(HEAD + WEB % "")
    args = parser.parse_args(["graph", str(f), "--format", "mermaid"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.startswith("flowchart LR")
    bad = tmp_path / "bad.mesh"
    bad.write_text("service {")
    from meshc.cli import main

    assert main(["graph", str(bad)]) == 1  # diagnostics are the CLI's to print
    assert "error[" in capsys.readouterr().err


def test_bookinfo_is_clean() -> None:
    from meshc.compiler import load

    mesh = load([ROOT / "examples" / "bookinfo" / "bookinfo.mesh"], checks=False)
    assert graph.check(mesh) == []
    assert graph.amplification(mesh)["ratings"] == (2, ("reviews", "ratings"))


CASES = sorted((ROOT / "tests" / "diagnostics").glob("graph_*.mesh"))


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_diagnostic_inputs_fire_their_one_check(case: Path) -> None:
    text = case.read_text()
    expect = re.match(r"# expect: ([EW]\d{3})", text)
    assert expect, "each graph_*.mesh starts with `# expect: CODE`"
    found = {d.code for d in graph.check(load_text(text, case.name, checks=False))}
    assert found == {expect.group(1)}


def test_documented_codes() -> None:
    doc = (ROOT / "docs" / "errors.md").read_text()
    block = doc.split("<!-- graph:begin -->", 1)[1].split("<!-- graph:end -->", 1)[0]
    emitted = set(re.findall(r'"([EW]2\d\d)"', (ROOT / "meshc" / "graph.py").read_text()))
    assert emitted and emitted <= set(re.findall(r"^## ([EW]2\d\d)$", block, re.M))
    assert FULL == 10_000


def test_timeout_inherited_default_and_tcp_are_not_compared() -> None:
    head = "mesh shop { timeout 10s }\n"
    http = WEB % "calls api\n timeout 1s" + "service api { port http 81 }\nallow web -> api\n"
    assert _codes(http, head) == []  # api only inherits the mesh default and does not retry
    assert _codes(http.replace("port http 81", "port http 81\n retry 2"), head) == ["W206"]
    tcp = WEB % "calls db\n timeout 1s" + "service db {\n port tcp 5432\n timeout 5s\n}\nallow web -> db\n"
    assert _codes(tcp, head) == []
    assert _codes(tcp.replace("port tcp", "port http"), head) == ["W206"]


def test_mirror_to_own_version_is_not_a_cycle() -> None:
    src = WEB % ("version v1 { labels version=v1 }\n version v2 { labels version=v2 }\n"
                 " route { otherwise -> v2 { mirror v1 100% } }")
    mesh = _mesh(src)
    assert graph.check(mesh) == []
    assert not graph.call_graph(mesh).has_edge("web", "web")


def test_dot_route_edges_judge_the_callers() -> None:
    src = ("service front {\n port http 80\n expose ingress\n calls reviews\n}\n"
           "service reviews {\n port http 80\n route { otherwise -> split { reviews 90%, next 10% } }\n}\n"
           "service next { port http 80 }\n"
           "allow ingress -> front\nallow front -> reviews\nallow reviews -> next\n")
    dot = graph.to_dot(_mesh(src))
    assert '"reviews" -> "next" [color="red", style="dashed", fontcolor="red", label="route 10%, denied for front"];' in dot
    dot = graph.to_dot(_mesh(src + "allow front -> next\n"))
    assert '"reviews" -> "next" [color="blue", fontcolor="blue", label="route 10%"];' in dot


def test_port_collision_ignores_shared_dns_names() -> None:
    src = ("service a {\n port tcp 5432\n endpoints db.internal:5432\n}\n"
           "service b {\n port tcp 5432\n endpoints db.internal:5432\n}\n"
           "service web {\n port http 80\n expose ingress\n calls a, b\n}\n"
           "allow ingress -> web\nallow web -> a, b\n")
    assert _codes(src) == []
    assert _codes(src.replace("db.internal", "10.0.0.7")) == ["E211"]


def test_identity_and_authenticated_sources_make_a_service_reachable() -> None:
    base = WEB % "" + "service batch-api { port http 81 }\n"
    assert _codes(base) == ["W209"]
    assert _codes(base + "allow identity legacy-batch -> batch-api\n") == []
    assert _codes(base + "allow authenticated -> batch-api\n") == []
    # a plaintext port cannot prove the outsider's identity either
    assert _codes(base.replace("port http 81", "port http 81\n mtls disabled")
                  + "allow identity legacy-batch -> batch-api\n") == ["W209", "W207"]


def test_universal_path_counts_as_otherwise() -> None:
    src = WEB % ('version v1 { labels version=v1 }\n route { when path prefix "/" -> v1\n'
                 ' when header x-a present -> v1 }')
    assert _codes(src) == ["W203"]  # no W202: prefix "/" catches everything


def _hub_mesh(n: int) -> Mesh:
    """n callers, each calling one hub through its own allow rule, plus a deep call chain."""
    from meshc.model import AuthzRule, Identity, Ingress, Port, Resilience, Retry, Service, Source

    def svc(name: str, calls: tuple[str, ...] = (), exposed: bool = False, retries: int = 0) -> Service:
        return Service(name=name, namespace="d", identity=Identity(name=name, namespace="d", trust_domain="t"),
                       ports=(Port(protocol="http", number=80, mtls="strict"),), calls=calls,
                       expose=Ingress() if exposed else None,
                       resilience=Resilience(retry=Retry(attempts=retries)))

    callers = [svc(f"c{i:05d}", ("hub", f"c{i + 1:05d}") if i + 1 < n else ("hub",), exposed=True)
               for i in range(n)]
    rules = [AuthzRule(action="allow", sources=(Source(kind="service", name=c.name),), destinations=("hub",),
                       methods=("GET",)) for c in callers]
    rules += [AuthzRule(action="allow", sources=(Source(kind="service", name=a.name),), destinations=(b.name,))
              for a, b in zip(callers, callers[1:], strict=False)]
    rules += [AuthzRule(action="allow", sources=(Source(kind="ingress"),), destinations=("*",)),
              AuthzRule(action="deny", sources=(Source(kind="unauthenticated"),), destinations=("*",))]
    return Mesh(name="hub", trust_domain="t", services=(*callers, svc("hub", retries=2)), rules=tuple(rules))


def test_checks_grow_linearly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted, not timed: authorization source matches and amplification relaxations per check
    must grow like the mesh (a hub with n callers and n rules, and an n-long call chain)."""
    from meshc import authz

    counts: dict[str, int] = {"admit": 0, "relax": 0}
    admit, relax = authz._RuleSources.admit, graph._relax

    def counting_admit(self: authz._RuleSources, *a: object) -> bool:
        counts["admit"] += 1
        return admit(self, *a)  # type: ignore[arg-type]

    def counting_relax(*a: object) -> bool:
        counts["relax"] += 1
        return relax(*a)  # type: ignore[arg-type]

    monkeypatch.setattr(authz._RuleSources, "admit", counting_admit)
    monkeypatch.setattr(graph, "_relax", counting_relax)
    seen = []
    for n in (100, 800):
        counts.update(admit=0, relax=0)
        found = graph.check(_hub_mesh(n))
        assert found == []  # clean: no cycle, nothing refused, limit out of reach
        seen.append(dict(counts))
    assert seen[0]["admit"] > 0 and seen[0]["relax"] > 0
    for key in counts:
        assert seen[1][key] <= 10 * seen[0][key], (key, seen)  # 8x the mesh: linear is 8x, n^2 is 64x


def test_large_route_tables_use_the_index_and_agree() -> None:
    """The indexed search over big tables finds exactly what the pairwise one does."""
    from meshc.model import Destination, StringMatch

    def rule(path: tuple[str, str] | None = None, header: str | None = None, methods: tuple[str, ...] = ()) -> RouteRule:
        m = Match(path=PathMatch(kind=path[0], value=path[1]) if path else None, methods=methods,
                  headers=(StringMatch(name=header, kind="present"),) if header else ())
        return RouteRule(matches=(m,), destinations=(Destination(service="web"),))

    rules = []
    for i in range(60):
        rules.append(rule(("exact", f"/api/v{i}/items")))
        rules.append(rule(("prefix", f"/api/v{i}/"), methods=("GET",)))
        rules.append(rule(("exact", f"/api/v{i}/items/x"), methods=("GET",)))  # shadowed by the prefix
        rules.append(rule(("under", f"/svc{i}")))
        rules.append(rule(("exact", f"/svc{i}/health")))  # shadowed by under
    rules.insert(100, rule(header="x-debug"))
    rules.append(rule(("exact", "/zzz"), header="x-debug"))  # shadowed by the header-only rule
    rules.append(rule(("regex", "/r[0-9]+")))
    rules.append(rule(("regex", "/r[0-9]+")))  # same regex
    rules.append(RouteRule(destinations=(Destination(service="web"),)))  # otherwise
    rules.append(rule(("exact", "/after")))  # after otherwise
    table = tuple(rules)
    assert len(table) > graph.SMALL_TABLE
    indexed = list(graph._shadowers(table))
    pairwise = [(j, next(i for i in range(j) if graph.rule_covers(table[i], table[j])))
                for j in range(1, len(table)) if any(graph.rule_covers(table[i], table[j]) for i in range(j))]
    assert indexed == pairwise
    assert len(indexed) == 60 + 60 + 1 + 1 + 1


def test_a_retry_budget_caps_the_amplification_factor() -> None:
    # W205's help says "add a retry budget": a budget of 20% lets at most 1.2 attempts per request
    # through in a retry storm, whatever the retry count (it did nothing before).
    src = (WEB % "calls api\n retry 3" + "service api {\n port http 81\n calls db\n retry 3 budget 20%\n}\n"
           "service db {\n port http 82\n retry 2\n}\nallow web -> api\nallow api -> db\n")
    mesh = _mesh(src)
    value, path = graph.amplification(mesh)["db"]
    assert path == ("web", "api", "db") and abs(value - 4 * 1.2 * 3) < 1e-9
    w = [d.message for d in graph.check(mesh) if d.code == "W205" and "'db'" in d.message]
    assert w == ["retry amplification: one request may become 14.4 attempts at 'db': "
                 "web -> api -> db (4x1.2x3 = 14.4 attempts)"]
    budgeted = src.replace(" retry 2\n", " retry 2 budget 10%\n").replace("calls api\n retry 3", "calls api\n retry 3 budget 25%")
    assert "W205" not in [d.code for d in graph.check(_mesh(budgeted))]  # 1.25 x 1.2 x 1.1 = 1.65
