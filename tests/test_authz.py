"""The shared authorization evaluator (meshc/authz.py): decisions, normalization, matrix."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshc import authz
from meshc.model import AuthzRule, Identity, Mesh, PathMatch, Port, Service, Source, StringMatch


def _ident(name: str) -> Identity:
    return Identity(name=name, namespace="default", trust_domain="cluster.local")


def _svc(name: str, mtls: str = "strict", ports: tuple[tuple[int, str | None], ...] = ((9080, None),),
         identity: str | None = None) -> Service:
    return Service(name=name, namespace="default", identity=_ident(identity or name), mtls=mtls,
                   ports=tuple(Port(protocol="http", number=n, mtls=m or mtls) for n, m in ports))


def _src(name: str) -> Source:
    special = {"*": "any", "authenticated": "authenticated", "unauthenticated": "unauthenticated",
               "ingress": "ingress"}
    if name in special:
        return Source(kind=special[name])
    if name.startswith("identity "):
        return Source(kind="identity", name=name.split()[1])
    return Source(kind="service", name=name)


def _rule(action: str, src: str, dests: str, **kw: object) -> AuthzRule:
    return AuthzRule(action=action, sources=tuple(_src(s) for s in src.split(",")),
                     destinations=tuple(dests.split(",")), **kw)


def _prefix(v: str) -> PathMatch:
    return PathMatch(kind="prefix", value=v)


@pytest.fixture
def shop() -> Mesh:
    return Mesh(
        name="shop",
        services=(_svc("admin"), _svc("cart"), _svc("front"), _svc("legacy", mtls="permissive"),
                  _svc("mixed", ports=((80, "strict"), (81, "disabled"))), _svc("twin", identity="front")),
        rules=(
            _rule("allow", "front", "cart", methods=("GET", "POST")),
            _rule("deny", "*", "cart", paths=(_prefix("/admin"),)),
            _rule("allow", "front", "legacy"),
            _rule("allow", "*", "legacy", paths=(PathMatch(kind="exact", value="/health"),)),
            _rule("allow", "ingress", "front"),
            _rule("allow", "front", "admin", paths=(PathMatch(kind="under", value="/api"),),
                  not_paths=(_prefix("/api/internal"),)),
            _rule("allow", "cart", "admin", headers=(StringMatch(name="x-tenant", kind="exact", value="a"),)),
            _rule("allow", "front", "mixed"),
        ),
    )


@pytest.mark.parametrize(("raw", "expected"), [
    ("/a/b", "/a/b"),
    ("//admin", "/admin"),
    ("/a//b///c", "/a/b/c"),
    ("/a/../admin", "/admin"),
    ("/../../admin", "/admin"),
    ("/a/./b/.", "/a/b/"),
    ("/a/b/..", "/a/"),
    ("/%2e%2e/admin", "/admin"),
    ("/%2E%2e/%61dmin", "/admin"),
    ("/a/%2e/b", "/a/b"),
    ("/x%20y", "/x%20y"),
    ("/x%3ay", "/x%3Ay"),
    ("/a?x=/../b", "/a"),
    ("/a%2Fadmin", None),
    ("/a%2fadmin", None),
    ("/a%5Cadmin", None),
    ("/a%zz", None),
    ("/a%2", None),
    ("admin", None),
])
def test_normalize_path(raw: str, expected: str | None) -> None:
    assert authz.normalize_path(raw) == expected


@pytest.mark.parametrize(("source", "dest", "kw", "allowed", "reason"), [
    ("front", "cart", {"method": "GET", "path": "/items"}, True, "allowed by rule"),
    ("front", "cart", {"method": "get", "path": "/items"}, True, "allowed by rule"),
    ("front", "cart", {"method": "DELETE", "path": "/items"}, False, "no allow rule matches"),
    ("front", "cart", {"method": "GET", "path": "/admin/x"}, False, "denied by rule"),
    # normalization bypass attempts all land on the deny rule
    ("front", "cart", {"method": "GET", "path": "//admin"}, False, "denied by rule"),
    ("front", "cart", {"method": "GET", "path": "/a/../admin"}, False, "denied by rule"),
    ("front", "cart", {"method": "GET", "path": "/%2e%2e/admin"}, False, "denied by rule"),
    ("front", "cart", {"method": "GET", "path": "/./admin/"}, False, "denied by rule"),
    ("front", "cart", {"method": "GET", "path": "/x%2F..%2Fadmin"}, False, "rejected by normalization"),
    # a shared service account: mTLS cannot tell twin from front
    ("twin", "cart", {"method": "GET", "path": "/"}, True, "allowed by rule"),
    ("admin", "cart", {"method": "GET"}, False, "no allow rule matches under deny_by_default"),
    (None, "cart", {"method": "GET"}, False, "plaintext caller refused"),
    # permissive mTLS: a meshed caller's identity is proven over mTLS; a plaintext one only gets `*`
    ("front", "legacy", {"path": "/orders"}, True, "allowed by rule"),
    ("front", "legacy", {"path": "/health"}, True, "allowed by rule"),
    ("admin", "legacy", {"path": "/orders"}, False, "no allow rule matches"),
    (None, "legacy", {"path": "/health"}, True, "allowed by rule"),
    (None, "legacy", {"path": "/orders"}, False, "no allow rule matches"),
    # per-port mTLS
    ("front", "mixed", {"port": 80}, True, "allowed by rule"),
    ("front", "mixed", {"port": 81}, False, "port http-81 of mixed mtls is disabled"),
    ("ingress", "front", {}, True, "allowed by rule"),
    ("cart", "front", {}, False, "no allow rule matches"),
    # under = segment prefix; except paths
    ("front", "admin", {"path": "/api"}, True, "allowed by rule"),
    ("front", "admin", {"path": "/api/users"}, True, "allowed by rule"),
    ("front", "admin", {"path": "/apix"}, False, "no allow rule matches"),
    ("front", "admin", {"path": "/api/internal/keys"}, False, "no allow rule matches"),
    ("front", "admin", {"path": "/api//internal/keys"}, False, "no allow rule matches"),
    # header names are case-insensitive, values case-sensitive
    ("cart", "admin", {"headers": {"X-Tenant": "a"}}, True, "allowed by rule"),
    ("cart", "admin", {"headers": {"x-tenant": "A"}}, False, "no allow rule matches"),
    ("cart", "admin", {}, False, "no allow rule matches"),
])
def test_decide(shop: Mesh, source: str | None, dest: str, kw: dict, allowed: bool, reason: str) -> None:
    d = authz.decide(shop, source, dest, **kw)
    assert d.allowed is allowed, d
    assert reason in d.reason


def test_decide_names_deciding_rule(shop: Mesh) -> None:
    d = authz.decide(shop, "front", "cart", method="GET", path="//admin//x")
    assert d.rule is shop.rules[1] and d.status == 403
    assert authz.decide(shop, "front", "cart", path="/a%2fb").status == 400


def test_normalization_off_lets_bypass_through(shop: Mesh) -> None:
    off = shop.model_copy(update={"path_normalization": "off"})
    assert not authz.decide(off, "front", "cart", method="GET", path="/admin").allowed
    assert authz.decide(off, "front", "cart", method="GET", path="//admin").allowed
    assert authz.decide(off, "front", "cart", method="GET", path="/x%2F..%2Fadmin").allowed


def test_plaintext_named_caller_and_allow_by_default(shop: Mesh) -> None:
    assert not authz.decide(shop, "front", "cart", method="GET", authenticated=False).allowed
    open_mesh = shop.model_copy(update={"authz": "allow_by_default"})
    d = authz.decide(open_mesh, "admin", "cart", method="DELETE")
    assert d.allowed and d.reason == "allow_by_default"
    assert not authz.decide(open_mesh, "admin", "cart", path="/admin").allowed


def test_unknown_names_raise(shop: Mesh) -> None:
    with pytest.raises(ValueError, match="unknown destination"):
        authz.decide(shop, "front", "nope")
    with pytest.raises(ValueError, match="unknown source"):
        authz.decide(shop, "nope", "cart")


def test_matrix(shop: Mesh) -> None:
    m = authz.matrix(shop)
    cart = m[("front", "cart")]
    assert cart.level == "partial" and cart.methods == ("GET", "POST")
    assert [str(g) for g in cart.excepts] == ['paths prefix "/admin"']
    assert m[("twin", "cart")] == cart  # same identity, same access
    assert ("admin", "cart") not in m
    assert m[("ingress", "front")].level == "full"
    assert m[("front", "admin")].paths == ('under "/api"',)
    assert m[("front", "admin")].grants[0].not_paths == ('prefix "/api/internal"',)
    # permissive: front's identity is proven over mTLS; a plaintext caller only gets what `*` gets
    assert m[("front", "legacy")].level == "full"
    assert str(m[("unauthenticated", "legacy")]) == 'partial: paths exact "/health"'
    assert m[("admin", "legacy")] == m[("unauthenticated", "legacy")]
    # mixed ports: the identity rule works on the strict port only
    assert m[("front", "mixed")].level == "partial" and m[("front", "mixed")].ports == (80,)
    assert ("unauthenticated", "cart") not in m
    assert list(m) == sorted(m)


def test_matrix_full_and_allow_by_default(shop: Mesh) -> None:
    open_mesh = shop.model_copy(update={"authz": "allow_by_default"})
    m = authz.matrix(open_mesh)
    assert m[("admin", "front")].level == "full"
    cart = m[("admin", "cart")]
    assert cart.level == "partial" and str(cart) == 'partial: everything except paths prefix "/admin"'
    assert ("unauthenticated", "cart") not in m  # strict mTLS refuses plaintext
    assert m[("unauthenticated", "legacy")].level == "full"


# --------------------------------------------------------------------------- properties

_segments = st.sampled_from(["a", "admin", ".", "..", "", "%2e", "%2E%2e", "%61dmin", "x%20y", "%7e", "~", "%41"])


@given(st.lists(_segments, max_size=8), st.booleans())
def test_normalize_path_is_idempotent_and_clean(parts: list[str], trailing: bool) -> None:
    raw = "/" + "/".join(parts) + ("/" if trailing else "")
    norm = authz.normalize_path(raw)
    assert norm is not None
    assert authz.normalize_path(norm) == norm
    assert norm.startswith("/") and "//" not in norm
    assert not any(seg in (".", "..") for seg in norm.split("/"))
    assert "%2e" not in norm.lower() and "%61" not in norm.lower()


@given(st.text(alphabet="/%2fF5cC.a", max_size=12))
def test_normalize_path_never_lets_an_encoded_slash_through(raw: str) -> None:
    norm = authz.normalize_path("/" + raw)
    assert norm is None or ("%2f" not in norm.lower() and "%5c" not in norm.lower())


REQUESTS = [dict(method=m, path=p, port=port, headers=h)
            for m in ("GET", "POST", "DELETE")
            for p in ("/", "/items", "/admin/x", "/api", "/api/internal/k", "/health")
            for port in (80, 81, 9080)
            for h in ({}, {"x-tenant": "a"})]


@pytest.mark.parametrize("posture", ["deny_by_default", "allow_by_default"])
@pytest.mark.parametrize("extra", [(), ("allow", "unauthenticated", "mixed"), ("deny", "unauthenticated", "legacy"),
                                   ("allow", "identity front", "admin"), ("allow", "authenticated", "cart")])
def test_matrix_agrees_with_decide(shop: Mesh, posture: str, extra: tuple[str, ...]) -> None:
    """none: every request refused; full: every request admitted; partial: some get through."""
    rules = shop.rules + ((_rule(*extra),) if extra else ())
    mesh = shop.model_copy(update={"authz": posture, "rules": rules})
    m = authz.matrix(mesh)
    sources = [s.name for s in mesh.services] + ["ingress", "unauthenticated"]
    for src in sources:
        for dest in mesh.services:
            level = m.get((src, dest.name), authz.NO_ACCESS).level
            ports = [p.number for p in dest.ports]
            results = {authz.decide(mesh, None if src == "unauthenticated" else src, dest.name,
                                    **{**r, "port": r["port"] if r["port"] in ports else ports[0]}).allowed
                       for r in REQUESTS}
            if True in results:  # complete: every pair some request gets through is listed
                assert level != "none", (src, dest.name)
            expected = {"none": {False}, "full": {True}}.get(level)
            assert expected is None or results == expected, (src, dest.name, level, results)
            if level == "partial":
                assert True in results, (src, dest.name)


@pytest.mark.parametrize("posture", ["deny_by_default", "allow_by_default"])
@pytest.mark.parametrize("extra", [(), ("deny", "front", "cart"), ("allow", "identity front", "admin"),
                                   ("allow", "unauthenticated", "mixed"), ("deny", "*", "legacy"),
                                   ("allow", "authenticated", "cart"), ("deny", "twin,admin", "front")])
def test_representative_callers_answer_like_everyone(shop: Mesh, posture: str, extra: tuple[str, ...]) -> None:
    rules = shop.rules + ((_rule(*extra),) if extra else ())
    mesh = shop.model_copy(update={"authz": posture, "rules": rules})
    everyone = [s.name for s in mesh.services] + ["ingress", None]
    for dest in mesh.services:
        reps = [None if r == "unauthenticated" else r for r in authz.representative_callers(mesh, dest.name)]
        brute = any(authz.reachable(mesh, s, dest.name) for s in everyone)
        assert any(authz.reachable(mesh, s, dest.name) for s in reps) == brute, dest.name
        assert {s for s in everyone if authz.reachable(mesh, s, dest.name)} & set(reps) or not brute
