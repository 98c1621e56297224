"""NGINX Service Mesh backend: every object against NSM's CRD schemas (unknown fields rejected),
exact split weights, access as allow-only TrafficTargets, rate limits, breakers, E301/E330."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from meshc.backends.base import Bundle
from meshc.backends.nginx_mesh import NginxMeshBackend, anchored
from model_fixtures import bookinfo, example, example_ids, replace, update_service

from meshc.model import AuthzRule, Outlier, PathMatch, Source


def lower(mesh: Any) -> Bundle:
    return NginxMeshBackend().lower(mesh)


def objects(bundle: Bundle) -> dict[str, dict[str, Any]]:
    return {p: yaml.safe_load(v) for p, v in bundle.files.items() if p not in ("helm-values.yaml", "core.yaml")}


def allow_only(mesh: Any) -> Any:
    return replace(mesh, rules=tuple(r for r in mesh.rules if r.action == "allow"))


@pytest.mark.parametrize("name", example_ids())
def test_every_object_validates_against_the_nsm_schemas(name: str) -> None:
    from model_fixtures import validate_crds

    objs = list(objects(lower(example(name))).values())
    if objs:
        validate_crds("nginx-mesh", objs)


def test_bookinfo_objects_validate() -> None:
    from model_fixtures import validate_crds

    bundle = lower(allow_only(bookinfo()))
    kinds = {o["kind"] for o in objects(bundle).values()}
    assert kinds == {"TrafficSplit", "HTTPRouteGroup", "TrafficTarget", "RateLimit", "CircuitBreaker"}
    validate_crds("nginx-mesh", list(objects(bundle).values()))


def test_split_weights_are_the_hundredths_themselves() -> None:
    docs = objects(lower(allow_only(bookinfo())))
    split = docs["TrafficSplit-reviews-r1.yaml"]["spec"]
    assert split["backends"] == [{"service": "reviews-v2", "weight": 3333}, {"service": "reviews-v3", "weight": 6667}]
    assert split["matches"] == [{"kind": "HTTPRouteGroup", "name": "reviews-r1", "apiGroup": "specs.smi-spec.io"}]
    assert "matches" not in docs["TrafficSplit-reviews-default.yaml"]["spec"]


def test_more_than_one_conditional_rule_is_e330() -> None:
    codes = [d for d in lower(allow_only(bookinfo())).diagnostics if "no order" in d.message]
    assert codes and codes[0].code == "E330"


@pytest.mark.parametrize("kind, value, yes, no", [
    ("exact", "/a.b", ["/a.b"], ["/aXb", "/a.b/c", "/x/a.b"]),
    ("prefix", "/api", ["/api", "/apix", "/api/1"], ["/ap", "/x/api"]),
    ("under", "/api", ["/api", "/api/", "/api/1"], ["/apix"]),
    ("regex", "^/r[0-9]+$", ["/r12"], ["/r", "/r1x"]),
])
def test_path_regexes_keep_the_meshc_meaning(kind: str, value: str, yes: list[str], no: list[str]) -> None:
    rx = anchored(PathMatch(kind=kind, value=value))  # type: ignore[arg-type]
    assert all(re.search(rx, p) for p in yes) and not any(re.search(rx, p) for p in no)


def test_access_is_allow_only_between_service_accounts() -> None:
    mesh = allow_only(bookinfo())
    mesh = replace(mesh, rules=mesh.rules + (
        AuthzRule(action="allow", sources=(Source(kind="any"),), destinations=("details",), ports=(9080,)),))
    docs = objects(lower(mesh))
    tt = docs["TrafficTarget-ratings-allow-0.yaml"]["spec"]
    assert tt["destination"] == {"kind": "ServiceAccount", "name": "bookinfo-ratings", "namespace": "default"}
    assert tt["sources"] == [{"kind": "ServiceAccount", "name": "bookinfo-reviews", "namespace": "default"}]
    group = docs["HTTPRouteGroup-ratings-allow-0.yaml"]["spec"]["matches"]
    assert group == [{"name": "m0", "pathRegex": "^/ratings/.*$", "methods": ["GET"]}]
    everyone = docs["TrafficTarget-details-allow-1-9080.yaml"]["spec"]
    assert everyone["destination"]["port"] == 9080 and len(everyone["sources"]) == 5  # 4 services + ingress


def test_rate_limit_and_breaker() -> None:
    mesh = update_service(bookinfo(), "reviews", resilience=bookinfo().service("reviews").resilience.model_copy(  # type: ignore[union-attr]
        update={"outlier": Outlier(consecutive_5xx=3, interval_ms=30_000, eject_ms=30_000)}))
    bundle = lower(allow_only(mesh))
    docs = objects(bundle)
    rl = docs["RateLimit-ratings-rate-limit.yaml"]["spec"]
    assert (rl["rate"], rl["burst"], rl["delay"]) == ("100r/s", 19, "nodelay")
    cb = docs["CircuitBreaker-reviews-circuit-breaker.yaml"]["spec"]
    assert (cb["errors"], cb["timeoutSeconds"]) == (3, 30)
    assert not [d for d in bundle.diagnostics if "eject" in d.message]
    # bookinfo's outlier (10s window, 30s ejection) cannot be said
    assert any("interval must equal eject" in d.message for d in lower(allow_only(bookinfo())).diagnostics)


def test_deny_rules_and_retries_are_e301() -> None:
    gaps = {d.message for d in NginxMeshBackend().unsupported(bookinfo())}
    assert any("deny rules" in m for m in gaps)
    assert any("retries" in m for m in gaps)
    assert any("request timeouts" in m for m in gaps)


def test_helm_values_carry_mesh_wide_settings() -> None:
    values = yaml.safe_load(lower(bookinfo()).files["helm-values.yaml"])
    assert values == {"mtls": {"mode": "strict"}, "accessControlMode": "deny"}


def test_allow_rules_under_allow_by_default_write_no_traffic_target() -> None:
    # In NSM's `allow` mode a TrafficTarget admits only its own sources to its destination: the
    # rule `allow a -> dest methods GET` made every other caller of dest get 403, while meshc
    # (and `meshc why`) say everything is allowed under allow_by_default.
    from meshc.backends import compile_mesh

    from meshc.compiler import load_text
    from meshc.why import explain

    mesh = load_text("mesh m { mtls strict authz allow_by_default }\n"
                     "service a { port http 80 calls dest }\nservice b { port http 81 calls dest }\n"
                     "service dest { port http 82 }\nallow a -> dest methods GET\n", "m.mesh")
    bundle = compile_mesh(mesh, "nginx-mesh")
    docs = [d for rel, data in bundle.files.items() if rel.endswith(".yaml")
            for d in yaml.safe_load_all(data) if isinstance(d, dict)]
    assert not [d for d in docs if d.get("kind") == "TrafficTarget"]
    values = yaml.safe_load(bundle.files["helm-values.yaml"])
    assert values["accessControlMode"] == "allow"
    assert explain(mesh, "b", "dest", "POST", "/", None, {})["allowed"] is True
