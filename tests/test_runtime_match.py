"""The runtime's matchers agree with the mesh's pinned semantics (meshc.authz): path
normalization on arbitrary input, and every authorization decision the native configs of the
examples make, against `meshc.authz.decide` on the model they were compiled from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meshc.backends import compile_mesh

from meshc import authz
from meshc.compiler import load
from meshc.paths import normalize
from meshc.runtime import config as C
from meshc.runtime.match import (
    Authorizer,
    CompiledMatch,
    RequestView,
    path_pred,
    split_target,
)

ROOT = Path(__file__).resolve().parents[1]

path_chars = st.sampled_from(list("/.%aA2fF5cC_-~") + ["%2e", "%2E", "%2F", "%5c", "%41", "%7e", "//", "/../", "/./"])


@settings(max_examples=600, deadline=None)
@given(st.lists(path_chars, max_size=14).map(lambda xs: "/" + "".join(xs)))
def test_normalized_paths_cannot_hide_a_segment(path: str) -> None:
    """The proxy and meshc.authz share meshc.paths; what it returns must leave nothing for a
    rule to be bypassed with: no empty, `.` or `..` segment, no encoded slash, and stable."""
    norm = normalize(path)
    assert authz.normalize_path(path) == norm
    if norm is None:
        return
    assert "//" not in norm and "%2F" not in norm.upper() and "%5C" not in norm.upper()
    assert not any(seg in (".", "..") for seg in norm.split("/"))
    assert normalize(norm) == norm


@pytest.mark.parametrize("raw,want", [
    ("/a//b", "/a/b"), ("/a/./b/../c", "/a/c"), ("/%61%62c", "/abc"), ("/..", "/"), ("/a/..", "/"),
    ("/%2F", None), ("/%5c", None), ("/%zz", None), ("/%4", None), ("/%20x", "/%20x"),
])
def test_normalization_cases(raw: str, want: str | None) -> None:
    assert normalize(raw) == want


def test_split_target() -> None:
    assert split_target("/a?b=1") == ("/a", "b=1")
    assert split_target("http://host:80/x?y") == ("/x", "y")
    assert split_target("HTTPS://host") == ("/", "")
    # refused (400) as Envoy refuses them: asterisk-form, no path, any fragment
    for target in ("*", "x", "", "/a#frag", "/a?b=1#frag", "#", "http://host/a#b"):
        assert split_target(target) is None, target


request_chars = st.sampled_from(list("/.%a;\\=") + ["%2e", "%2E", "%00", "%2F", "%5C", "%3B", "..;", ".;", "//", "/../"])


@settings(max_examples=600, deadline=None)
@given(st.lists(request_chars, max_size=14).map(lambda xs: "/" + "".join(xs)))
def test_request_normalization_leaves_no_dot_segment_behind(path: str) -> None:
    """What the native proxy authorizes under `strict`: no backslash (a slash), no NUL, no
    segment that an application could resolve as `.`/`..` (with or without `;` parameters),
    and stable, so the upstream resolves nothing the authorizer did not see."""
    norm = normalize(path)
    if norm is None:
        assert "%00" in path.replace("\\", "/") or normalize(path.replace("\\", "/")) is None or ";" in path
        return
    assert "\\" not in norm and "%00" not in norm and "//" not in norm
    assert not any(seg.split(";", 1)[0].lower() in (".", "..", "%2e", "%2e%2e", ".%2e", "%2e.")
                   for seg in norm.split("/"))
    assert normalize(norm) == norm


@pytest.mark.parametrize("raw,want", [
    ("/public\\..\\admin", "/admin"), ("/a\\b", "/a/b"), ("/a/\\/b", "/a/b"), ("/a/%5C", None),
    ("/public/..;/admin", "/admin"), ("/..;/admin", "/admin"), ("/a/%2E%2e;x/b", "/b"), ("/a/x/..;", "/a/"),
    ("/a/x/.;p=1/y", "/a/x/y"), ("/a/...;/b", "/a/...;/b"), ("/a;b", "/a;b"), ("/a/..%3B/b", "/a/..%3B/b"),
    ("/admin%00", None), ("/a%00b/..", None), ("/a%0A", "/a%0A"),
])
def test_request_normalization_cases(raw: str, want: str | None) -> None:
    """The rows of tests/scenarios/normalization.yaml that Envoy answered, as unit cases."""
    assert normalize(raw) == want


@pytest.mark.parametrize("kind,value,yes,no", [
    ("prefix", "/api", ["/api", "/apix", "/api/x"], ["/ap", "/"]),
    ("under", "/api", ["/api", "/api/", "/api/x"], ["/apix", "/ap"]),
    ("under", "/api/", ["/api", "/api/x"], ["/apix"]),
    ("exact", "/api", ["/api"], ["/api/", "/apix"]),
    ("regex", "/v[0-9]+", ["/v1", "/v22"], ["/v1/x", "/v"]),
])
def test_path_kinds(kind: str, value: str, yes: list[str], no: list[str]) -> None:
    pred = path_pred(C.PathMatchCfg(kind=kind, value=value))
    assert all(pred(p) for p in yes) and not any(pred(p) for p in no)


def test_header_names_case_insensitive_values_sensitive() -> None:
    m = CompiledMatch(C.MatchCfg(headers=(C.StringMatchCfg(name="End-User", kind="exact", value="Jason"),)))
    assert m(RequestView("GET", "/", "", {"end-user": "Jason"}))
    assert not m(RequestView("GET", "/", "", {"end-user": "jason"}))


PATHS = ["/", "/ratings/1", "/ratings/admin", "/admin", "/admin/x", "//admin", "/x/../admin", "/%61dmin",
         "/productpage", "/static/x", "/api/v1/products", "/ratings/%2e%2e/admin", "/a%2Fb"]
METHODS = ["GET", "POST", "DELETE"]


def _examples() -> list[Path]:
    return [p for p in sorted((ROOT / "examples").glob("*/*.mesh")) if p.parent.name != "multifile"]


@pytest.mark.parametrize("mesh_file", _examples(), ids=lambda p: p.parent.name)
def test_native_authorization_matches_the_model(mesh_file: Path) -> None:
    mesh = load([mesh_file])
    bundle = compile_mesh(mesh, "native", unsupported="warn")
    sources: list[str | None] = [None, "ingress"] + [s.name for s in mesh.services if s.external is None]
    checked = 0
    for svc in mesh.services:
        if svc.external is not None:
            continue
        cfg = C.SidecarConfig.model_validate(json.loads(bundle.files[f"{svc.name}.json"]))
        for lst in cfg.inbound:
            if lst.protocol != "http":
                continue
            az = Authorizer(lst.authz)
            for source in sources:
                ident = authz.identity_of(mesh, source)
                for method in METHODS:
                    for path in PATHS:
                        want = authz.decide(mesh, source, svc.name, method=method, path=path,
                                            port=lst.service_port)
                        if want.status == 0:
                            continue  # plaintext on a strict port: refused by the TLS handshake
                        norm = normalize(path)
                        if norm is None:
                            assert want.status == 400, (svc.name, source, path)
                            continue
                        # a sidecar speaks mTLS to every port that is not disabled
                        peer = ident.spiffe if ident is not None and lst.tls.mode != "disabled" else None
                        got, rule = az.decide(peer, lst.service_port, RequestView(method, norm, "", {}))
                        assert got == want.allowed, (svc.name, source, method, path, rule, want.reason)
                        checked += 1
    assert checked > 0
