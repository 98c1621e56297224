"""The bookinfo example's Istio output is semantically equivalent to Istio's own bookinfo
samples (tests/fixtures/realworld/istio-bookinfo/): same hosts, subsets, matches, weights, faults and
mTLS settings after normalising both sides.

Files that define the same VirtualService name are alternative scenarios; the main example
takes some of them (reviews' jason rule, ratings' abort test, the gateway, mTLS destination
rules) and the others are written as small overlays on top of the example below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from meshc.backends import compile_mesh

from meshc.compiler import load_text
from meshc.validate import BUNDLED_SCHEMAS, parse_go_duration, validate_bundle

ROOT = Path(__file__).resolve().parents[1]
REALWORLD = ROOT / "tests" / "fixtures" / "realworld" / "istio-bookinfo"
SCHEMAS = BUNDLED_SCHEMAS
BOOKINFO = (ROOT / "examples" / "bookinfo" / "bookinfo.mesh").read_text()


# scenario name -> overlay applied to the bookinfo example (empty: the example as written)
SCENARIOS: dict[str, str] = {
    "example": "",
    "all-v1": """
overlay service productpage { route { otherwise -> v1 } }
overlay service reviews { route { otherwise -> v1 } }
overlay service ratings { route { otherwise -> v1 } }
""",
    "reviews-test-v2": """
overlay service reviews { route {
  when header end-user == "jason" -> v2
  otherwise -> v1
} }
""",
    "reviews-50-v3": "overlay service reviews { route { otherwise -> split { v1 50%, v3 50% } } }",
    "reviews-v2-v3": "overlay service reviews { route { otherwise -> split { v2 50%, v3 50% } } }",
    "ratings-test-delay": """
overlay service ratings { route {
  when header end-user == "jason" -> v1 { fault delay 7s 100% }
  otherwise -> v1
} }
""",
}

# realworld file -> the scenario whose output must contain the same objects
EXPECTED: dict[str, str] = {
    "bookinfo-gateway.yaml": "example",
    "destination-rule-all-mtls.yaml": "example",
    "virtual-service-ratings-test-abort.yaml": "example",
    "virtual-service-reviews-test-v2.yaml": "reviews-test-v2",
    "virtual-service-all-v1.yaml": "all-v1",
    "virtual-service-reviews-50-v3.yaml": "reviews-50-v3",
    "virtual-service-reviews-v2-v3.yaml": "reviews-v2-v3",
    "virtual-service-ratings-test-delay.yaml": "ratings-test-delay",
}


def istio_objects(scenario: str) -> list[dict[str, Any]]:
    mesh = load_text(BOOKINFO + "\n" + SCENARIOS[scenario], filename="bookinfo.mesh")
    bundle = compile_mesh(mesh, "istio")
    assert validate_bundle(bundle, SCHEMAS, target="istio") == []
    return [d for f in sorted(bundle.files) for d in yaml.safe_load_all(bundle.files[f]) if d]


def realworld(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((REALWORLD / name).read_text()) if d]


# --------------------------------------------------------------------------- normalisation


def fqdn(host: str, ns: str = "default") -> str:
    return host if "." in host or host == "*" else f"{host}.{ns}.svc.cluster.local"


def subsets_of(objs: list[dict[str, Any]]) -> dict[str, list[str]]:
    return {fqdn(o["spec"]["host"]): [s["name"] for s in o["spec"].get("subsets", [])]
            for o in objs if o["kind"] == "DestinationRule"}


def norm_match(m: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(sorted(v.items()) if isinstance(v, dict) else v)) for k, v in m.items()))


def norm_fault(f: dict[str, Any] | None) -> tuple:
    if not f:
        return ()
    out = []
    if "delay" in f:
        out.append(("delay", parse_go_duration(f["delay"]["fixedDelay"]), f["delay"]["percentage"]["value"]))
    if "abort" in f:
        out.append(("abort", f["abort"]["httpStatus"], f["abort"]["percentage"]["value"]))
    return tuple(out)


def norm_route(route: list[dict[str, Any]], subsets: dict[str, list[str]]) -> tuple:
    total = sum(d.get("weight", 100) for d in route) if len(route) > 1 else 100
    out = []
    for d in route:
        host = fqdn(d["destination"]["host"])
        subset = d["destination"].get("subset")
        if subset is None and len(subsets.get(host, [])) == 1:
            subset = subsets[host][0]  # every endpoint of a one-version service is that version
        port = d["destination"].get("port", {}).get("number")
        out.append((host, subset, port, round(d.get("weight", 100) * 100 / total, 2)))
    return tuple(sorted(out))


def norm_vs(obj: dict[str, Any], subsets: dict[str, list[str]]) -> tuple:
    spec = obj["spec"]
    http = tuple(
        (tuple(sorted(norm_match(m) for m in r.get("match", []))),
         norm_route(r.get("route", []), subsets),
         norm_fault(r.get("fault")))
        for r in spec.get("http", []))
    return (tuple(sorted(fqdn(h) for h in spec["hosts"])), tuple(sorted(spec.get("gateways", []))), http)


def norm_dr(obj: dict[str, Any]) -> tuple:
    spec = obj["spec"]
    subsets = tuple(sorted((s["name"], tuple(sorted(s.get("labels", {}).items()))) for s in spec.get("subsets", [])))
    tls = spec.get("trafficPolicy", {}).get("tls", {}).get("mode")
    return (fqdn(spec["host"]), subsets, tls)


def norm_gateway(obj: dict[str, Any]) -> tuple:
    spec = obj["spec"]
    servers = tuple(sorted((s["port"]["number"], s["port"]["protocol"], tuple(sorted(s["hosts"])))
                           for s in spec["servers"]))
    return (tuple(sorted(spec["selector"].items())), servers)


def normalise(obj: dict[str, Any], subsets: dict[str, list[str]]) -> tuple:
    kind = obj["kind"]
    if kind == "VirtualService":
        return norm_vs(obj, subsets)
    if kind == "DestinationRule":
        return norm_dr(obj)
    if kind == "Gateway":
        return norm_gateway(obj)
    raise AssertionError(kind)


def by_key(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_equivalent_to_istio_sample(name: str) -> None:
    ours = istio_objects(EXPECTED[name])
    theirs = realworld(name)
    subsets = subsets_of(ours)
    assert subsets == subsets_of(realworld("destination-rule-all-mtls.yaml"))
    for obj in theirs:
        mine = by_key(ours, obj["kind"]).get(obj["metadata"]["name"])
        assert mine is not None, f"no {obj['kind']} {obj['metadata']['name']} in meshc's output"
        assert normalise(mine, subsets) == normalise(obj, subsets), obj["metadata"]["name"]


def test_mtls_is_strict_everywhere() -> None:
    ours = istio_objects("example")
    pa = [o for o in ours if o["kind"] == "PeerAuthentication"]
    assert [(o["metadata"]["namespace"], o["spec"]) for o in pa] == [("istio-system", {"mtls": {"mode": "STRICT"}})]
    assert {o["spec"]["trafficPolicy"]["tls"]["mode"] for o in ours if o["kind"] == "DestinationRule"} == {
        "ISTIO_MUTUAL"}


def test_destination_rule_all_differs_only_in_auto_mtls() -> None:
    # destination-rule-all.yaml is the same rules without tls (Istio's auto mTLS): meshc spells
    # the mode out, so only the tls field may differ
    ours = {norm_dr(o)[:2] for o in istio_objects("example") if o["kind"] == "DestinationRule"}
    theirs = {norm_dr(o)[:2] for o in realworld("destination-rule-all.yaml")}
    assert ours == theirs


def test_services_and_accounts_match_the_platform_manifest() -> None:
    ours = istio_objects("example")
    theirs = realworld("bookinfo.yaml")

    def services(objs: list[dict[str, Any]]) -> set[tuple]:
        return {(o["metadata"]["name"], tuple(sorted(o["spec"]["selector"].items())),
                 tuple(sorted((p["port"], p.get("name", "").split("-")[0]) for p in o["spec"]["ports"])))
                for o in objs if o["kind"] == "Service"}

    assert services(ours) == services(theirs)
    accounts = {o["metadata"]["name"] for o in theirs if o["kind"] == "ServiceAccount"}
    assert accounts <= {o["metadata"]["name"] for o in ours if o["kind"] == "ServiceAccount"}


def test_normalisation_sees_differences() -> None:
    # the comparison is not vacuous: another scenario's reviews differs from the sample
    ours = by_key(istio_objects("reviews-v2-v3"), "VirtualService")["reviews"]
    sample = realworld("virtual-service-reviews-50-v3.yaml")[0]
    subsets = subsets_of(realworld("destination-rule-all.yaml"))
    assert normalise(ours, subsets) != normalise(sample, subsets)
