"""Property test: for random authorization rule sets, Consul's intention semantics (most specific
source wins, L7 permissions first-match) over the generated intentions decide every request the
way meshc's own evaluator does, and so do the nginx sidecars' authorization maps."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshc.backends.consul import ConsulBackend
from meshc.backends.nginx import NginxBackend
from model_fixtures import bookinfo, replace
from test_consul import consul_decide, intentions
from test_nginx import authz_map, nginx_decides

from meshc import authz
from meshc.model import AuthzRule, PathMatch, Source

SERVICES = ["details", "productpage", "ratings", "reviews"]
SOURCES = st.one_of(
    st.sampled_from(SERVICES).map(lambda n: Source(kind="service", name=n)),
    st.sampled_from(["any", "authenticated", "ingress"]).map(lambda k: Source(kind=k)),  # type: ignore[arg-type]
)
PATHS = st.builds(PathMatch, kind=st.sampled_from(["exact", "prefix", "under"]),
                  value=st.sampled_from(["/a", "/a/", "/b", "/admin"]))
RULES = st.builds(
    AuthzRule,
    action=st.sampled_from(["allow", "deny"]),
    sources=st.lists(SOURCES, min_size=1, max_size=2).map(tuple),
    destinations=st.lists(st.sampled_from([*SERVICES, "*"]), min_size=1, max_size=2, unique=True).map(tuple),
    methods=st.sampled_from([(), ("GET",), ("POST", "PUT")]),
    paths=st.lists(PATHS, max_size=2).map(tuple),
)
REQUESTS = [("GET", "/"), ("GET", "/a"), ("GET", "/a/x"), ("GET", "/ab"), ("POST", "/b"), ("PUT", "/admin/1"),
            ("GET", "/admin")]


def requests(mesh: Any) -> Any:
    callers = [*SERVICES, "ingress"]
    return ((src, dst, m, p) for src, dst, (m, p) in itertools.product(callers, SERVICES, REQUESTS) if src != dst)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=st.lists(RULES, min_size=1, max_size=5),
       posture=st.sampled_from(["deny_by_default", "allow_by_default"]))
def test_consul_and_nginx_agree_with_meshc(rules: list[AuthzRule], posture: str) -> None:
    mesh = replace(bookinfo(authz=posture), rules=tuple(rules))
    consul = ConsulBackend().lower(mesh)
    assert not consul.diagnostics
    ints = intentions(consul)
    nginx = NginxBackend().lower(mesh)
    maps = {dst: authz_map(nginx.files[f"{dst}/nginx.conf"].decode(), 9080) for dst in SERVICES}
    for src, dst, method, path in requests(mesh):
        want = authz.decide(mesh, src, dst, method=method, path=path).allowed
        name = mesh.ingress_identity.name if src == "ingress" else src
        assert consul_decide(ints, name, dst, method, path, {}) == want, ("consul", src, dst, method, path)
        ident = mesh.ingress_identity if src == "ingress" else mesh.service(src).identity  # type: ignore[union-attr]
        default, lines, names = maps[dst]
        assert nginx_decides(default, lines, ident.spiffe, method, path, {}, names) == want, (
            "nginx", src, dst, method, path)
