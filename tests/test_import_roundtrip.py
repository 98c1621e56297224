"""Round trip: for every example x and every target T with an importer,
import(compile(x, T)) is semantically equal to x (meshc.diff.semantic_diff reports nothing) on
every feature T can express.

Before comparing, both sides are normalised the same way:
- features T does not support (E301, compiled with unsupported="warn") are removed from x;
- facts no Kubernetes/cloud target writes are removed: static endpoints (pods are found by
  selector), observability settings (install-time configuration);
- equivalent spellings are made equal: the mesh-wide timeout is applied to each HTTP service
  (targets write effective timeouts), a rule timeout or retry equal to its service's is dropped,
  an SNI equal to the external host is left implicit.
Anything else the importer or the backend loses fails the test.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from meshc.backends import available as targets_available
from meshc.backends import compile_mesh, get

from meshc.compiler import load
from meshc.diagnostics import MeshcError
from meshc.diff import semantic_diff
from meshc.importers import available as importers_available
from meshc.importers import import_files
from meshc.model import Mesh, Node, Observability, Outlier, Resilience, RouteRule, Service

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "bookinfo": [ROOT / "examples/bookinfo/bookinfo.mesh"],
    "shop": [ROOT / "examples/shop/shop.mesh"],
    "tcp-database": [ROOT / "examples/tcp-database/tcp-database.mesh"],
    "multifile": [ROOT / "examples/multifile/prod.mesh"],
    "portable": [ROOT / "tests/import_inputs/roundtrip.mesh"],
    "smi": [ROOT / "tests/import_inputs/smi.mesh"],
}
# importer name -> the compile target it reads
TARGETS = {"istio": "istio", "linkerd": "linkerd", "consul": "consul", "appmesh": "appmesh",
           "nginx-mesh": "nginx-mesh"}
INPUT_SUFFIXES = {".yaml", ".yml", ".json", ".hcl"}
# Which of a target's generated files the importer reads (one spelling when there are two).
READS: dict[str, Any] = {"appmesh": lambda p: "aws" in p.parts}  # the API bodies, not the CRDs

_RES_KEYS = {"circuit_breaker", "outlier", "health_check", "rate_limit"}


def unsupported_features(mesh: Mesh, target: str) -> set[str]:
    backend = get(target)()
    out = set()
    for d in backend.unsupported(mesh):
        m = re.search(r"feature '([^']+)'", d.help or "")
        out.add(m.group(1) if m else f"gap:{d.message}")
    return out


def _strip_service(s: Service, feats: set[str], mesh: Mesh) -> Service:
    res: dict[str, Any] = dict(s.resilience)
    res.pop("span", None)
    for k in _RES_KEYS & feats:
        res[k] = None
    if "timeout" in feats:
        res["timeout"] = None
    if res.get("load_balance") is not None and f"load_balance.{res['load_balance'].policy}" in feats:
        res["load_balance"] = None
    res["retry"] = _strip_retry(res.get("retry"), feats)
    upd: dict[str, Any] = {"resilience": Resilience(**res), "endpoints": ()}
    upd["versions"] = tuple(v.model_copy(update={"endpoints": ()}) for v in s.versions)
    if "slo" in feats:
        upd["objectives"] = ()
    if "ingress" in feats:
        upd["expose"] = None
    upd["faults"] = _strip_faults(s.faults, feats)
    if s.external is not None:
        ext = s.external
        if "external.tls_originate" in feats:
            ext = ext.model_copy(update={"tls_originate": False, "sni": None})
        elif ext.sni == ext.host:
            ext = ext.model_copy(update={"sni": None})
        upd["external"] = ext
    upd["routes"] = tuple(r for r in (_strip_rule(r, feats) for r in s.routes) if r is not None)
    return s.model_copy(update=upd)


def _strip_retry(rt: Any, feats: set[str]) -> Any:
    if rt is None or "retry" in feats:
        return None
    if ISTIO_BACKOFF in feats and rt.backoff_base_ms is not None:
        rt = rt.model_copy(update={"backoff_max_ms": 10 * rt.backoff_base_ms})
    for feat, field, empty in (("retry.per_try", "per_try_ms", None), ("retry.budget", "budget", None),
                               ("retry.status_codes", "status_codes", ())):
        if feat in feats:
            rt = rt.model_copy(update={field: empty})
    if "retry.backoff" in feats:
        rt = rt.model_copy(update={"backoff_base_ms": None, "backoff_max_ms": None})
    return rt


def _strip_faults(faults: tuple[Any, ...], feats: set[str]) -> tuple[Any, ...]:
    out = []
    for f in faults:
        if "fault.delay" in feats:
            f = f.model_copy(update={"delay_ms": None})
        if "fault.abort" in feats:
            f = f.model_copy(update={"abort_status": None})
        if f.delay_ms is not None or f.abort_status is not None:
            out.append(f)
    return tuple(out)


def _strip_rule(r: RouteRule, feats: set[str]) -> RouteRule | None:
    upd: dict[str, Any] = {"faults": _strip_faults(r.faults, feats), "retry": _strip_retry(r.retry, feats)}
    if "timeout" in feats:
        upd["timeout"] = None
    for feat, field in (("route.mirror", "mirror"), ("route.headers.request", "request_headers"),
                        ("route.headers.response", "response_headers")):
        if feat in feats:
            upd[field] = None
    if ("route.redirect" in feats and r.redirect) or ("route.respond" in feats and r.respond):
        return None
    return r.model_copy(update=upd)


# Istio fixes the backoff maximum at 10 x the base: compared as such.
ISTIO_BACKOFF = "gap:a retry backoff maximum other than 10 x the base interval cannot be expressed when targeting istio"
HANDLED = ({ISTIO_BACKOFF, "timeout", "retry", "retry.per_try", "retry.budget", "retry.status_codes", "retry.backoff", "slo",
            "ingress", "external.tls_originate", "fault.delay", "fault.abort", "route.mirror",
            "route.headers.request", "route.headers.response", "route.redirect", "route.respond",
            "endpoints.static", "access_log.text", "access_log.off", "metrics.off", "trace_sampling"} | _RES_KEYS | {f"load_balance.{p}" for p in
                                               ("round_robin", "least_request", "random", "consistent_hash")})


def effective(mesh: Mesh) -> Mesh:
    """Equivalent spellings made equal (see the module docstring)."""
    services = []
    for s in mesh.services:
        res = s.resilience
        t = res.timeout if res.timeout is not None else (mesh.timeout if s.is_http else None)
        if not s.is_http:
            t = None  # a request timeout means nothing without HTTP
        if t is not None and t.ms is None:
            t = None
        routes = []
        for r in s.routes:
            upd: dict[str, Any] = {}
            rt = r.timeout if r.timeout is None or r.timeout.ms is not None else None
            if r.timeout is not None and rt is None and t is not None:
                rt = r.timeout  # an explicit `timeout none` under a service timeout
            if rt is not None and t is not None and rt.ms == t.ms:
                rt = None
            if rt is not None and t is None and rt.ms is None:
                rt = None
            upd["timeout"] = rt
            if r.retry is not None and _same_retry(r.retry, res.retry):
                upd["retry"] = None
            if r.retry is not None and res.retry is None and r.retry.attempts == 0:
                upd["retry"] = None
            if r.redirect is not None or r.respond is not None:
                upd["retry"] = upd["timeout"] = None
            routes.append(r.model_copy(update=upd))
        expose = s.expose
        if expose is not None and any(p.kind in ("prefix", "under") and p.value == "/" for p in expose.paths):
            expose = expose.model_copy(update={"paths": ()})  # `/` exposes every path
        services.append(s.model_copy(update={"resilience": res.model_copy(update={"timeout": t}),
                                             "routes": tuple(routes), "expose": expose}))
    return rebuild(mesh, services=tuple(services), timeout=None, observability=Observability())


def rebuild(mesh: Mesh, **update: Any) -> Mesh:
    """A changed copy with its service index rebuilt (model_copy keeps the old index)."""
    return Mesh(**{**{k: getattr(mesh, k) for k in Mesh.model_fields}, **update})


def _same_retry(a: Any, b: Any) -> bool:
    return b is not None and a.model_dump(exclude={"span"}) == b.model_dump(exclude={"span"})


GAP_RETRY = re.compile(r"^gap:retries on ([a-z0-9-]+) cannot be expressed")
GAP_BURST = re.compile(r"^gap:a rate-limit burst cannot be expressed")
GAP_EXT_TIMEOUT = re.compile(r"^gap:timeouts on an external service cannot be expressed")
GAP_AUTHZ_PREFIX = re.compile(r"^gap:a byte-prefix path in an authorization rule cannot be expressed")
GAP_RULE_RETRY = re.compile(r"^gap:a retry policy on a single route rule cannot be expressed")
GAP_EGRESS = re.compile(r"^gap:authorization of calls to an external service")
GAP_OUTLIER = re.compile(r"^gap:an outlier `interval` or `max_percent` cannot be expressed")
GAP_UNAUTH = re.compile(r"^gap:a rule for `unauthenticated` callers of a permissive or disabled port")
GAPS = (GAP_RETRY, GAP_BURST, GAP_EXT_TIMEOUT, GAP_AUTHZ_PREFIX, GAP_RULE_RETRY, GAP_EGRESS, GAP_OUTLIER,
        GAP_UNAUTH)
AUTHZ_CONDITIONS = {"authz.methods": "methods", "authz.paths": "paths", "authz.headers": "headers",
                    "authz.not_paths": "not_paths", "authz.ports": "ports"}


def _gap_normalise(mesh: Mesh, feats: set[str]) -> Mesh:
    """What a target drops with a warning (W301 and target-specific gaps), dropped on both sides."""
    dropped_on = {m.group(1) for f in feats if (m := GAP_RETRY.match(f))}

    def retry(rt: Any) -> Any:
        if rt is None or not dropped_on or (rt.attempts == 0 and not rt.on):
            return rt
        on = tuple(c for c in rt.on if c not in dropped_on)
        return None if not on and not rt.status_codes else rt.model_copy(update={"on": on})

    def path_ok(m: Any) -> bool:
        return not ("route.match.path.prefix" in feats and m.path is not None and m.path.kind == "prefix"
                    and m.path.value != "/")

    services = []
    for s in mesh.services:
        res = s.resilience
        upd: dict[str, Any] = {"retry": retry(res.retry)}
        if res.rate_limit is not None and any(GAP_BURST.match(f) for f in feats):
            upd["rate_limit"] = res.rate_limit.model_copy(update={"burst": None})
        if res.outlier is not None and any(GAP_OUTLIER.match(f) for f in feats):
            default = Outlier()
            upd["outlier"] = res.outlier.model_copy(update={"interval_ms": default.interval_ms,
                                                            "max_percent": default.max_percent})
        if s.external is not None and any(GAP_EXT_TIMEOUT.match(f) for f in feats):
            upd["timeout"] = None
        rule_retry = any(GAP_RULE_RETRY.match(f) for f in feats)
        routes = tuple(r.model_copy(update={"retry": None if rule_retry else retry(r.retry)}) for r in s.routes
                       if all(path_ok(m) for m in r.matches))
        services.append(s.model_copy(update={"resilience": res.model_copy(update=upd), "routes": routes}))
    rules = []
    for r in mesh.rules:
        if "authz.deny" in feats and r.action == "deny":
            continue
        if any(GAP_UNAUTH.match(f) for f in feats) and any(src.kind == "unauthenticated" for src in r.sources):
            continue  # left out by the target (warn mode), so by both sides here
        if any(GAP_AUTHZ_PREFIX.match(f) for f in feats) and any(p.kind == "prefix" for p in r.paths):
            paths = tuple(p for p in r.paths if p.kind != "prefix")
            if not paths:
                continue
            r = r.model_copy(update={"paths": paths})
        if any(getattr(r, field) for feat, field in AUTHZ_CONDITIONS.items() if feat in feats):
            continue  # a rule on request attributes the target cannot check is not written
        if "authz.unauthenticated" in feats:
            srcs = tuple(x for x in r.sources if x.kind != "unauthenticated")
            if not srcs:
                continue
            r = r.model_copy(update={"sources": srcs})
        rules.append(r)
    return rebuild(mesh, services=tuple(services), rules=tuple(rules))


def normalise(mesh: Mesh, feats: set[str], drop_rules_to: set[str] = frozenset()) -> Mesh:  # type: ignore[assignment]
    mesh = _gap_normalise(mesh, feats)
    services = tuple(_strip_service(s, feats, mesh) for s in mesh.services)
    rules = tuple(r for r in mesh.rules if not set(r.destinations) <= drop_rules_to)
    return effective(rebuild(mesh, services=services, rules=rules,
                             timeout=None if "timeout" in feats else mesh.timeout))


def drop_spans(node: Any, spans: set[str]) -> Any:
    """The model without the constructs written at `spans` (what a target refuses with E330):
    an optional setting becomes None, an item of a list is left out."""
    if not isinstance(node, Node):
        return node
    update: dict[str, Any] = {}
    for name in type(node).model_fields:
        value = getattr(node, name)
        if isinstance(value, Node) and name != "span":
            if str(value.span) in spans and not isinstance(value, Service | Mesh):
                update[name] = None
            else:
                new = drop_spans(value, spans)
                if new is not value:
                    update[name] = new
        elif isinstance(value, tuple) and value and isinstance(value[0], Node):
            items = tuple(drop_spans(v, spans) for v in value if str(v.span) not in spans or isinstance(v, Service))
            if items != value:
                update[name] = items
    if not update:
        return node
    if isinstance(node, Mesh):
        return rebuild(node, **update)
    return node.model_copy(update=update)


class NotComparable(Exception):
    """The target refuses too much of this example for a round trip to say anything."""


# Every pair that cannot be compared, and why; a pair that changes either way fails the test.
NOT_COMPARABLE = {
    ("tcp-database", "appmesh"),  # E330: App Mesh cannot check plaintext callers of a permissive service
    ("tcp-database", "consul"),  # the whole mesh refused (per-try timeouts, ...)
    ("tcp-database", "nginx-mesh"),  # the whole mesh refused (ingress exposure, ...)
    ("shop", "nginx-mesh"),  # external services and TLS ports: SMI has neither
    ("portable", "nginx-mesh"),  # likewise
}


def round_trip(example: str, source: str) -> tuple[Mesh, Mesh, set[str], str]:
    x = load(EXAMPLES[example])
    target = TARGETS[source]
    try:
        bundle = compile_mesh(x, target, unsupported="warn")
    except MeshcError as e:
        # Leave out what the target refuses outright (E330 at a construct), then compare the rest.
        spans = {str(d.span) for d in e.diagnostics if d.severity == "error" and d.span is not None}
        owners = {str(s.span) for s in x.services} | {str(x.span)}
        if spans & owners:
            raise NotComparable(f"{example} does not compile for {target}: a whole service or the mesh is refused: {e}") \
                from None
        x = drop_spans(x, spans)
        try:
            bundle = compile_mesh(x, target, unsupported="warn")
        except MeshcError as e2:
            raise NotComparable(f"{example} does not compile for {target} even without the refused constructs: {e2}") \
                from None
    feats = unsupported_features(x, target)
    with tempfile.TemporaryDirectory() as d:
        paths = [p for p in bundle.write(Path(d)) if p.suffix in INPUT_SUFFIXES and p.name != "kustomization.yaml"
                 and READS.get(source, lambda _: True)(p)]
        result = import_files(source, paths, x.name)
    return x, result.mesh, feats, result.text


# Facts a target does not write although it declares the feature (backend findings, reported).
BACKEND_GAPS: dict[str, dict[str, Any]] = {
    # Consul config entries carry no port numbers, no declared dependencies (upstreams are
    # registered with the service, not in config entries) and no trust domain (the CA's); a
    # Consul identity is the service name.
    # External destinations are plain HTTP to Consul; TLS origination is the terminating gateway's.
    "consul": {"port_numbers": True, "calls": True, "identities": True, "external_tls": True},
    # Linkerd: no declared dependencies, the trust domain is install-time configuration, and
    # failure accrual has no interval or ejection share (docs of backends/linkerd.py).
    # Under deny_by_default a permissive port is `accessPolicy: deny` like a strict one (meshc
    # admits plaintext there only by `*` rules, written as NetworkAuthentications): the same
    # objects, so the importer cannot tell the two modes apart.
    # App Mesh: a node's backends are its calls and every service it may call (authorization),
    # and gateway hosts are not written per service.
    # An HTTP/1.1 listener's request limit at or above its connection limit never binds and is
    # not written (one below it is E330).
    # App Mesh retries connection errors as one event class (connect-failure and reset alike).
    "appmesh": {"calls": True, "http1_pool": True, "reset_is_connect_failure": True},
    # NGINX Service Mesh output has no declared dependencies; the trust domain is install-time.
    "nginx-mesh": {"calls": True, "trust_domain": True},
    "linkerd": {"calls": True, "trust_domain": True, "outlier_timing": True, "permissive_under_deny": True},
}


@pytest.mark.parametrize("source", sorted(TARGETS))
@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_round_trip(example: str, source: str) -> None:
    assert source in importers_available() and TARGETS[source] in targets_available()
    try:
        x, y, feats, text = round_trip(example, source)
        unhandled = {f for f in feats - HANDLED if not any(g.match(f) for g in GAPS)} - \
            {"route.match.path.prefix", "authz.deny", "authz.unauthenticated", *AUTHZ_CONDITIONS}
        if unhandled:
            raise NotComparable(f"{source} cannot express {sorted(unhandled)}: no normalisation for them")
    except NotComparable as why:
        assert (example, source) in NOT_COMPARABLE, f"newly not comparable (fix it, or list it): {why}"
        pytest.skip(str(why))
    assert (example, source) not in NOT_COMPARABLE, "comparable now: remove it from NOT_COMPARABLE"
    gaps = BACKEND_GAPS.get(source, {})
    externals = {s.name for s in x.services if s.external} if any(GAP_EGRESS.match(f) for f in feats) else set()
    a, b = normalise(x, feats, externals), normalise(y, feats, externals)
    a, b = forget(a, gaps), forget(b, gaps)
    diff = semantic_diff(a, b)
    assert diff.empty, "\n".join(c.line() for c in diff.changes) + "\n\n" + text


def forget(mesh: Mesh, gaps: dict[str, Any]) -> Mesh:
    """Drop the facts a target does not write (BACKEND_GAPS) from one side of the comparison."""
    services = []
    numbers: dict[int, int] = {}
    for s in mesh.services:
        upd: dict[str, Any] = {}
        if gaps.get("port_numbers"):
            upd["ports"] = tuple(p.model_copy(update={"number": numbers.setdefault(p.number, 1)})
                                 for p in s.ports)
        if gaps.get("calls"):
            upd["calls"] = ()
        if gaps.get("unrouted_versions"):
            routed = {d.version for r in s.routes for d in r.destinations if d.service == s.name}
            upd["versions"] = tuple(v for v in s.versions if v.name in routed)
        cb = s.resilience.circuit_breaker
        if gaps.get("http1_pool") and cb is not None and cb.max_requests is not None and \
                any(p.protocol == "http" for p in s.ports):
            limits = [x for x in (cb.max_connections, cb.max_requests) if x is not None]
            upd["resilience"] = s.resilience.model_copy(update={"circuit_breaker": cb.model_copy(
                update={"max_connections": min(limits), "max_requests": None})})
        if gaps.get("external_tls") and s.external is not None:
            upd["external"] = s.external.model_copy(update={"tls_originate": False, "sni": None})
            upd["ports"] = tuple(p.model_copy(update={"protocol": "http" if p.protocol == "tls" else p.protocol})
                                 for p in upd.get("ports", s.ports))
            upd["resilience"] = s.resilience.model_copy(update={"timeout": None})
        if gaps.get("permissive_under_deny") and mesh.authz == "deny_by_default":
            upd["mtls"] = "strict" if s.mtls == "permissive" else s.mtls
            upd["ports"] = tuple(p.model_copy(update={"mtls": "strict" if p.mtls == "permissive" else p.mtls})
                                 for p in upd.get("ports", s.ports))
        if gaps.get("outlier_timing") and s.resilience.outlier is not None:
            upd["resilience"] = s.resilience.model_copy(update={"outlier": s.resilience.outlier.model_copy(
                update={"interval_ms": 10_000, "max_percent": 1000})})
        if gaps.get("identities") or gaps.get("trust_domain"):
            upd["identity"] = s.identity.model_copy(update={"trust_domain": "cluster.local"})
        if gaps.get("identities"):
            upd["identity"] = s.identity.model_copy(update={"name": s.name, "trust_domain": "cluster.local"})
        services.append(s.model_copy(update=upd))
    if gaps.get("reset_is_connect_failure"):
        services = [_reset_as_connect_failure(s) for s in services]
    rules = mesh.rules
    if gaps.get("port_numbers"):
        rules = tuple(r.model_copy(update={"ports": ()}) for r in rules)
    update: dict[str, Any] = {"services": tuple(services), "rules": rules}
    if gaps.get("identities") or gaps.get("trust_domain"):
        update["trust_domain"] = "cluster.local"
        update["ingress_identity"] = mesh.ingress_identity.model_copy(update={"trust_domain": "cluster.local"})
    return rebuild(mesh, **update)


def _reset_as_connect_failure(s: Service) -> Service:
    def fix(rt: Any) -> Any:
        if rt is None or "reset" not in rt.on:
            return rt
        on = tuple(dict.fromkeys("connect-failure" if c == "reset" else c for c in rt.on))
        return rt.model_copy(update={"on": on})
    return s.model_copy(update={"resilience": s.resilience.model_copy(update={"retry": fix(s.resilience.retry)}),
                                "routes": tuple(r.model_copy(update={"retry": fix(r.retry)}) for r in s.routes)})


def test_normalise_detects_a_loss() -> None:
    """The comparison is not vacuous: dropping one route rule is reported."""
    x = load(EXAMPLES["bookinfo"])
    reviews = x.service("reviews")
    assert reviews is not None
    y = rebuild(x, services=tuple(s.model_copy(update={"routes": s.routes[1:]})
                                  if s.name == "reviews" else s for s in x.services))
    assert not semantic_diff(normalise(x, set()), normalise(y, set())).empty
