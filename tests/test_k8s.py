"""Shared Kubernetes helpers: durations, core objects via the kubernetes models, stream layout,
and the match algebra the route lowerings rely on."""

from __future__ import annotations

import pytest
import yaml
from meshc.backends.base import Bundle
from meshc.backends.k8s import (
    UNKNOWN,
    add_streams,
    and_match,
    and_matches,
    and_path,
    core_objects,
    go_duration,
    host_for,
)

from meshc.compiler import load_text
from meshc.model import Match, PathMatch, StringMatch
from meshc.validate import check_core, parse_go_duration


@pytest.mark.parametrize("ms, text", [(0, "0s"), (1, "1ms"), (250, "250ms"), (1500, "1s500ms"), (60_000, "1m"),
                                      (90_000, "1m30s"), (3_600_000, "1h"), (86_400_000, "24h"),
                                      (100_000_000, "27h46m40s")])
def test_go_duration(ms: int, text: str) -> None:
    assert go_duration(ms) == text
    assert parse_go_duration(text) == ms


MESH = """mesh m { }
service a { namespace shop port http 80 port grpc 9090 identity shared
  version v1 { labels version=v1 track=stable } }
service b { namespace shop port tcp 5432 identity shared }
service c { port http 8080 }
external pay { host "api.pay.example" port tls 443 }
"""


def test_core_objects_round_trip_through_client_models() -> None:
    objs = core_objects(load_text(MESH), versions=True)
    assert [(o["kind"], o["metadata"]["name"]) for o in objs] == [
        ("Namespace", "default"), ("Namespace", "shop"), ("ServiceAccount", "shared"), ("Service", "a"),
        ("Service", "a-v1"), ("Service", "b"), ("ServiceAccount", "c"), ("Service", "c"), ("Service", "pay")]
    for o in objs:
        assert check_core(o) == [], o
    a = objs[3]["spec"]
    assert a["ports"] == [
        {"name": "http-80", "port": 80, "targetPort": 80, "protocol": "TCP", "appProtocol": "http"},
        {"name": "grpc-9090", "port": 9090, "targetPort": 9090, "protocol": "TCP", "appProtocol": "grpc"}]
    assert objs[4]["spec"]["selector"] == {"app": "a", "track": "stable", "version": "v1"}
    assert objs[8]["spec"] == {"type": "ExternalName", "externalName": "api.pay.example",
                               "ports": [{"name": "tls-443", "port": 443, "targetPort": 443, "protocol": "TCP",
                                          "appProtocol": "tls"}]}


def test_streams_per_namespace_are_ordered_and_deterministic() -> None:
    objs = core_objects(load_text(MESH))
    extra = {"apiVersion": "x/v1", "kind": "Alpha", "metadata": {"name": "z", "namespace": "shop"}, "spec": {}}
    b1, b2 = Bundle(), Bundle()
    add_streams(b1, [extra, *objs])
    add_streams(b2, list(reversed([extra, *objs])))
    assert b1.files == b2.files
    assert sorted(b1.files) == ["default.yaml", "kustomization.yaml", "shop.yaml"]
    shop = [(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(b1.files["shop.yaml"])]
    assert shop == [("Namespace", "shop"), ("ServiceAccount", "shared"), ("Service", "a"), ("Service", "b"),
                    ("Alpha", "z")]
    assert b"&id" not in b1.files["shop.yaml"]


def test_host_names() -> None:
    mesh = load_text(MESH)
    a, pay = mesh.service("a"), mesh.service("pay")
    assert host_for(a, "shop") == "a"
    assert host_for(a, "default") == "a.shop.svc.cluster.local"
    assert host_for(pay, "shop") == "api.pay.example"


def P(kind: str, value: str) -> PathMatch:
    return PathMatch(kind=kind, value=value)


@pytest.mark.parametrize("a, b, want", [
    (P("prefix", "/api"), P("prefix", "/api/v1"), P("prefix", "/api/v1")),
    (P("prefix", "/a"), P("prefix", "/b"), None),
    (P("under", "/api"), P("under", "/api/v1"), P("under", "/api/v1")),
    (P("under", "/api"), P("under", "/apix"), None),
    (P("prefix", "/api"), P("under", "/api"), P("under", "/api")),
    (P("prefix", "/api/"), P("under", "/api"), P("prefix", "/api/")),
    (P("prefix", "/api2"), P("under", "/api"), None),
    (P("exact", "/api/x"), P("under", "/api"), P("exact", "/api/x")),
    (P("exact", "/apix"), P("under", "/api"), None),
    (P("exact", "/a1"), P("regex", "/a[0-9]"), P("exact", "/a1")),
    (P("regex", "/a.*"), P("prefix", "/a"), UNKNOWN),
])
def test_and_path(a: PathMatch, b: PathMatch, want: object) -> None:
    assert and_path(a, b) == want
    assert and_path(b, a) == want


def H(name: str, kind: str, value: str = "") -> StringMatch:
    return StringMatch(name=name, kind=kind, value=value)


def test_and_match_headers_methods() -> None:
    x = Match(headers=(H("x", "exact", "1"),), methods=("GET", "POST"))
    y = Match(path=P("under", "/a"), headers=(H("y", "present"),), methods=("POST", "PUT"))
    c = and_match(x, y)
    assert c.path == P("under", "/a") and c.methods == ("POST",) and [h.name for h in c.headers] == ["x", "y"]
    assert and_match(x, Match(headers=(H("x", "exact", "2"),))) is None
    assert and_match(x, Match(methods=("DELETE",))) is None
    assert and_match(x, Match(headers=(H("x", "prefix", "1"),))) is UNKNOWN
    assert and_match(Match(headers=(H("x", "present"),)), Match(headers=(H("x", "absent"),))) is None
    assert and_matches((), (x,)) == (x,)
    assert and_matches((x,), (Match(methods=("DELETE",)),)) is None


def test_and_match_without_paths_is_not_disjoint() -> None:
    a = Match(headers=(H("a", "exact", "1"),))
    b = Match(headers=(H("b", "exact", "2"),), query=(H("q", "present"),))
    c = and_match(a, b)
    assert c is not None and c is not UNKNOWN and len(c.headers) == 2 and len(c.query) == 1


def test_kubernetes_targets_are_byte_identical_across_hash_seeds() -> None:
    import subprocess
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from examples_index import example_roots

    code = ("import sys,hashlib; from pathlib import Path; from meshc.compiler import load; "
            "from meshc.backends import compile_mesh; h=hashlib.sha256()\n"
            "for t in ('istio','linkerd','gateway-api'):\n"
            "  for p in sys.argv[1:]:\n"
            "    b=compile_mesh(load([Path(p)]),t,unsupported='warn')\n"
            "    h.update(b''.join(k.encode()+v for k,v in sorted(b.files.items())))\n"
            "print(h.hexdigest())")
    roots = [str(p) for p in example_roots().values()]
    digests = {subprocess.run([sys.executable, "-c", code, *roots], capture_output=True, text=True, check=True,
                              env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout for seed in ("0", "4242")}
    assert len(digests) == 1 and len(next(iter(digests)).strip()) == 64


@pytest.mark.parametrize("target", ["istio", "linkerd", "gateway-api"])
def test_request_settings_on_tcp_services_are_e301(target: str) -> None:
    from meshc.backends import compile_mesh

    from meshc.diagnostics import MeshcError

    src = ("mesh m { authz allow_by_default }\nservice db { port tcp 5432 timeout 2s retry 2 on connect-failure\n"
           " version a { labels v=a }\n route {\n when header x == \"1\" -> a\n otherwise -> a } }")
    with pytest.raises(MeshcError) as e:
        compile_mesh(load_text(src), target)
    msgs = " | ".join(d.message for d in e.value.diagnostics)
    assert "request timeout on a TCP service" in msgs and "retries on a TCP service" in msgs
    assert "conditional route rule on a TCP service" in msgs
