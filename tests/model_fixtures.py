"""Model fixtures shared by the Consul, nginx, NGINX Service Mesh and App Mesh tests (a helper
module, not a test module: its own checks are in tests/test_model_fixtures.py).

`bookinfo()` builds, with the model classes directly, roughly what examples/bookinfo says (so the
backend tests do not depend on the parser); `compiled_examples()` yields every example through
the real front end. Also the CRD schema check (validate_crds) those tests share.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from meshc.model import (
    AuthzRule,
    CircuitBreaker,
    Destination,
    Endpoint,
    Fault,
    HeaderOps,
    Identity,
    LoadBalance,
    Match,
    Mesh,
    Outlier,
    PathMatch,
    Port,
    RateLimit,
    Resilience,
    Retry,
    RouteRule,
    Service,
    Source,
    StringMatch,
    Timeout,
    Version,
)
from meshc.validate import BUNDLED_SCHEMAS

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = BUNDLED_SCHEMAS


def ident(name: str) -> Identity:
    return Identity(name=name, namespace="default", trust_domain="cluster.local")


def http_service(name: str, *, versions: tuple[str, ...] = ("v1",), base_port: int = 19000,
                 **kw: Any) -> Service:
    vs = tuple(Version(name=v, labels=(("version", v),), endpoints=(Endpoint(host="127.0.0.1",
                                                                            port=base_port + i),))
               for i, v in enumerate(versions))
    return Service(name=name, namespace="default", identity=ident(f"bookinfo-{name}"),
                   ports=(Port(protocol="http", number=9080, mtls="strict"),), versions=vs, **kw)


def bookinfo(**mesh_kw: Any) -> Mesh:
    reviews = http_service(
        "reviews", versions=("v1", "v2", "v3"), base_port=19101, calls=("ratings",),
        routes=(
            RouteRule(matches=(Match(headers=(StringMatch(name="end-user", kind="exact", value="jason"),)),),
                      destinations=(Destination(service="reviews", version="v2"),)),
            RouteRule(matches=(Match(path=PathMatch(kind="prefix", value="/beta")),),
                      destinations=(Destination(service="reviews", version="v2", weight=3333),
                                    Destination(service="reviews", version="v3", weight=6667))),
            RouteRule(matches=(Match(path=PathMatch(kind="under", value="/api"), methods=("GET", "HEAD")),),
                      destinations=(Destination(service="reviews", version="v3"),),
                      request_headers=HeaderOps(set=(("x-api", "1"),), remove=("x-debug",)),
                      timeout=Timeout(ms=1000), retry=Retry(attempts=2, on=("gateway-error",))),
            RouteRule(destinations=(Destination(service="reviews", version="v1"),)),
        ),
        resilience=Resilience(
            timeout=Timeout(ms=2000), retry=Retry(attempts=3, on=("5xx", "connect-failure")),
            load_balance=LoadBalance(policy="least_request"),
            circuit_breaker=CircuitBreaker(max_connections=100, max_pending=10, max_requests=200),
            outlier=Outlier(consecutive_5xx=5, interval_ms=10_000, eject_ms=30_000, max_percent=5000)))
    services = (
        http_service("details", versions=("v1", "v2"), base_port=19091),
        http_service("productpage", base_port=19080, calls=("details", "reviews")),
        http_service("ratings", versions=("v1", "v2"), base_port=19111,
                     resilience=Resilience(rate_limit=RateLimit(requests=100, unit="s", burst=20))),
        reviews,
    )
    rules = (
        AuthzRule(action="allow", sources=(Source(kind="ingress"),), destinations=("productpage",)),
        AuthzRule(action="allow", sources=(Source(kind="service", name="productpage"),),
                  destinations=("details", "reviews"), methods=("GET",)),
        AuthzRule(action="allow", sources=(Source(kind="service", name="reviews"),), destinations=("ratings",),
                  methods=("GET",), paths=(PathMatch(kind="prefix", value="/ratings/"),)),
        AuthzRule(action="deny", sources=(Source(kind="any"),), destinations=("ratings",),
                  paths=(PathMatch(kind="prefix", value="/admin"),)),
    )
    return Mesh(name="bookinfo", services=services, rules=rules, **mesh_kw)


def replace(mesh: Mesh, **changes: Any) -> Mesh:
    """A changed mesh (model_copy would keep the stale service index behind `mesh.service()`)."""
    return Mesh(**{k: getattr(mesh, k) for k in Mesh.model_fields} | changes)


def update_service(mesh: Mesh, name: str, **changes: Any) -> Mesh:
    return replace(mesh, services=tuple(s.model_copy(update=changes) if s.name == name else s
                                        for s in mesh.services))


def with_fault(mesh: Mesh) -> Mesh:
    return update_service(mesh, "ratings", faults=(Fault(delay_ms=100, delay_percent=500),))


def example_dirs() -> list[Path]:
    return sorted(p for p in (ROOT / "examples").iterdir() if p.is_dir() and any(p.glob("*.mesh")))


def example_ids() -> list[str]:
    """Example names once the front end exists, else the Python-built bookinfo only."""
    try:
        from meshc.compiler import load  # noqa: F401
    except ImportError:
        return ["bookinfo-py"]
    return [d.name for d in example_dirs()]


def example(name: str) -> Mesh:
    """An example through the real front end (graph checks off: they are not the backend's
    business); skips when the example itself does not compile (reported by its own tests)."""
    if name == "bookinfo-py":
        return bookinfo()
    from meshc.compiler import load
    from meshc.diagnostics import MeshcError

    try:
        return load(sorted((ROOT / "examples" / name).glob("*.mesh")), checks=False)
    except MeshcError as e:
        pytest.skip(f"example {name} does not compile: {e}")


def compiled_examples() -> Iterator[tuple[str, Mesh]]:
    for name in example_ids():
        yield name, example(name)


# --------------------------------------------------------------------------- schema checks


@cache
def _schema(group_dir: str, api_version: str, kind: str) -> dict[str, Any]:
    group, version = api_version.split("/")
    path = SCHEMAS / group_dir / f"{group}_{version}_{kind}.json"
    return close_schema(json.loads(path.read_text()))


def close_schema(s: Any) -> Any:
    """Reject unknown fields: every object schema with properties and no additionalProperties
    (and not x-kubernetes-preserve-unknown-fields) gets additionalProperties: false."""
    if isinstance(s, dict):
        out = {k: close_schema(v) for k, v in s.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(s, list):
        return [close_schema(v) for v in s]
    return s


TARGET_DIRS = {"consul": "consul", "nginx-mesh": "nginx-service-mesh", "appmesh": "appmesh"}


def validate_crds(target: str, objs: list[dict[str, Any]]) -> None:
    """Validate objects against the published schemas (unknown fields rejected) with
    meshc.validate, or with plain jsonschema where that module is not available."""
    assert objs
    try:
        from meshc.validate import validate_objects
    except ImportError:
        import jsonschema

        for obj in objs:
            schema = _schema(TARGET_DIRS[target], obj["apiVersion"], obj["kind"])
            jsonschema.Draft4Validator(schema).validate(obj)
        return
    problems = validate_objects(objs, SCHEMAS, target=target)
    assert not problems, "\n".join(map(str, problems))
