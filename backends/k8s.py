"""Kubernetes helpers shared by the istio, linkerd and gateway-api backends.

Core objects (Namespace, Service, ServiceAccount) are built with the `kubernetes` client's
models (V1Service, V1ServiceAccount, ...) and serialised with
`ApiClient().sanitize_for_serialization`, so they have exactly the shape the API server reads.
Custom resources are plain dicts (checked against the CRD schemas by `meshc validate`).

Output layout of every Kubernetes backend: one YAML stream per namespace (`<namespace>.yaml`,
objects ordered Namespace, ServiceAccount, Service, then custom resources by kind and name)
plus a `kustomization.yaml` listing them, so `kubectl apply -k DIR` applies the lot.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from typing import Any

from meshc.backends.base import Bundle

from meshc.diagnostics import Diagnostic
from meshc.model import Identity, Mesh, Port, Service, Span, Version

MANAGED_BY = {"app.kubernetes.io/managed-by": "meshc"}

# meshc protocol -> Service port appProtocol (Kubernetes well-known values where they exist;
# Istio reads appProtocol for protocol selection, so these also steer the sidecar).
APP_PROTOCOL: dict[str, str] = {
    "http": "http",
    "http2": "kubernetes.io/h2c",
    "grpc": "grpc",
    "tcp": "tcp",
    "tls": "tls",
}

# Stream order: what must exist first comes first (kubectl applies in file order).
KIND_ORDER = {"Namespace": 0, "ServiceAccount": 1, "Service": 2}

K8sObject = dict[str, Any]


@functools.lru_cache(maxsize=1)
def _client() -> Any:
    from kubernetes.client import ApiClient

    return ApiClient()


def sanitize(model: Any) -> K8sObject:
    """A kubernetes client model -> plain data (camelCase keys, None fields dropped)."""
    return _client().sanitize_for_serialization(model)  # type: ignore[no-any-return]


def go_duration(ms: int) -> str:
    """Milliseconds as a duration every target here accepts: Go/Kubernetes style, which is also
    a Gateway API Duration (`^([0-9]{1,5}(h|m|s|ms)){1,4}$`), e.g. 1500 -> "1s500ms"."""
    if ms <= 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        n, ms = divmod(ms, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


def cr(api_version: str, kind: str, name: str, namespace: str | None, spec: Mapping[str, Any],
       *, labels: Mapping[str, str] | None = None, annotations: Mapping[str, str] | None = None) -> K8sObject:
    """A custom resource as plain data."""
    meta: dict[str, Any] = {"name": name, "labels": {**MANAGED_BY, **(labels or {})}}
    if annotations:
        meta["annotations"] = dict(annotations)
    if namespace is not None:
        meta["namespace"] = namespace
    return {"apiVersion": api_version, "kind": kind, "metadata": meta, "spec": dict(spec)}


def namespace_object(name: str, *, labels: Mapping[str, str] | None = None,
                     annotations: Mapping[str, str] | None = None) -> K8sObject:
    from kubernetes.client import V1Namespace, V1ObjectMeta

    meta = V1ObjectMeta(name=name, labels={**MANAGED_BY, **(labels or {})},
                        annotations=dict(annotations) if annotations else None)
    return sanitize(V1Namespace(api_version="v1", kind="Namespace", metadata=meta))


def _service_ports(ports: Iterable[Port]) -> list[Any]:
    from kubernetes.client import V1ServicePort

    return [V1ServicePort(name=p.name, port=p.number, target_port=p.number, protocol="TCP",
                          app_protocol=APP_PROTOCOL[p.protocol]) for p in ports]


def service_object(svc: Service, *, annotations: Mapping[str, str] | None = None) -> K8sObject:
    """The Kubernetes Service of a mesh service: selects pods labelled `app: <name>`.
    An external service becomes an ExternalName Service resolving to its host."""
    from kubernetes.client import V1ObjectMeta, V1Service, V1ServiceSpec

    labels = {**MANAGED_BY, "app": svc.name, "service": svc.name}
    meta = V1ObjectMeta(name=svc.name, namespace=svc.namespace, labels=labels,
                        annotations=dict(annotations) if annotations else None)
    if svc.external is not None:
        spec = V1ServiceSpec(type="ExternalName", external_name=svc.external.host,
                             ports=_service_ports(svc.ports) or None)
    else:
        spec = V1ServiceSpec(ports=_service_ports(svc.ports) or None, selector={"app": svc.name},
                             cluster_ip=None if svc.ports else "None")
    return sanitize(V1Service(api_version="v1", kind="Service", metadata=meta, spec=spec))


# Service names are DNS-1035 labels: at most 63 characters
SERVICE_NAME_MAX = 63


def version_service_name(svc: Service, version: str) -> str:
    return f"{svc.name}-{version}"


def version_service_object(svc: Service, version: Version) -> K8sObject:
    """A per-version Service (`reviews-v2`) selecting the version's pods: how targets without
    subsets (Linkerd, the Gateway API) address a version as a backendRef."""
    from kubernetes.client import V1ObjectMeta, V1Service, V1ServiceSpec

    selector = {"app": svc.name, **dict(version.labels)}
    labels = {**MANAGED_BY, "app": svc.name, "service": svc.name, "meshc.dev/version": version.name}
    meta = V1ObjectMeta(name=version_service_name(svc, version.name), namespace=svc.namespace, labels=labels)
    spec = V1ServiceSpec(ports=_service_ports(svc.ports) or None, selector=selector,
                         cluster_ip=None if svc.ports else "None")
    return sanitize(V1Service(api_version="v1", kind="Service", metadata=meta, spec=spec))


def service_account_object(identity: Identity) -> K8sObject:
    from kubernetes.client import V1ObjectMeta, V1ServiceAccount

    meta = V1ObjectMeta(name=identity.name, namespace=identity.namespace, labels=dict(MANAGED_BY))
    return sanitize(V1ServiceAccount(api_version="v1", kind="ServiceAccount", metadata=meta))


def core_objects(mesh: Mesh, *, versions: bool = False,
                 namespace_labels: Mapping[str, str] | None = None,
                 namespace_annotations: Mapping[str, str] | None = None,
                 service_annotations: Mapping[str, Mapping[str, str]] | None = None,
                 externals: bool = True) -> list[K8sObject]:
    """Namespaces, ServiceAccounts (one per identity) and Services of every mesh service;
    with `versions`, also a Service per version. `externals=False` skips external services
    (targets that model them with their own resources)."""
    out: list[K8sObject] = []
    for ns in sorted({s.namespace for s in mesh.services}):
        out.append(namespace_object(ns, labels=namespace_labels, annotations=namespace_annotations))
    seen: set[tuple[str, str]] = set()
    for svc in mesh.services:
        if svc.external is not None:
            if externals:
                out.append(service_object(svc))
            continue
        key = (svc.identity.namespace, svc.identity.name)
        if key not in seen:
            seen.add(key)
            out.append(service_account_object(svc.identity))
        out.append(service_object(svc, annotations=(service_annotations or {}).get(svc.name)))
        if versions:
            # A `<service>-<version>` name longer than a Service name may be is reported by the
            # backend (E301/E330 at the version); it is never written, as the API server (and
            # the schema check) would refuse the whole stream for it.
            out += [version_service_object(svc, v) for v in svc.versions
                    if len(version_service_name(svc, v.name)) <= SERVICE_NAME_MAX]
    return out


def normalization_warning(mesh: Mesh, target: str, how: str) -> list[Diagnostic]:
    """W321 when path-based authorization relies on path normalization that the target's
    objects cannot switch on (it is install-time configuration there)."""
    if mesh.path_normalization != "strict":
        return []
    rule = next((r for r in mesh.rules if r.paths or r.not_paths), None)
    if rule is None:
        return []
    return [Diagnostic("W321", f"path normalization before authorization is not part of the {target} objects",
                       rule.span, label="path-based rule", help=how)]


def check_tcp_service(svc: Service, gaps: Gaps) -> None:
    """Request-level settings on a service without HTTP ports have nothing to apply to."""
    if svc.is_http:
        return
    for rule in svc.routes:
        if not rule.is_default:
            gaps.add("a conditional route rule on a TCP service", rule.span, "TCP routes can only split")
    res = svc.resilience
    if res.timeout is not None and res.timeout.ms is not None:
        gaps.add("a request timeout on a TCP service", res.timeout.span)
    if res.retry is not None and res.retry.attempts > 0:
        gaps.add("retries on a TCP service", res.retry.span)


def check_unique(objects: Iterable[K8sObject], gaps: Gaps, span: Span) -> None:
    """Two generated objects with one kind, namespace and name would overwrite each other."""
    seen: set[tuple[str, str, str]] = set()
    for o in objects:
        meta = o.get("metadata") or {}
        key = (str(o.get("kind")), str(meta.get("namespace", "")), str(meta.get("name")))
        if key in seen:
            gaps.add(f"two generated {key[0]} objects named '{key[2]}' in namespace '{key[1]}'", span,
                     "rename the service, version or mesh whose name they are derived from")
        seen.add(key)


def namespace_of(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    if obj.get("kind") == "Namespace":
        return str(meta["name"])
    return str(meta.get("namespace") or "cluster")


def _order(obj: Mapping[str, Any]) -> tuple[int, str, str]:
    kind = str(obj.get("kind"))
    return (KIND_ORDER.get(kind, 9), kind, str((obj.get("metadata") or {}).get("name")))


def add_streams(bundle: Bundle, objects: Iterable[K8sObject]) -> None:
    """One YAML stream per namespace plus kustomization.yaml, deterministically ordered."""
    by_ns: dict[str, list[K8sObject]] = {}
    for obj in objects:
        # plain, unshared data: a dict reused in two places would be dumped as a YAML alias
        obj = json.loads(json.dumps(obj))
        by_ns.setdefault(namespace_of(obj), []).append(obj)
    files = []
    for ns in sorted(by_ns):
        name = f"{ns}.yaml"
        bundle.add_yaml(name, sorted(by_ns[ns], key=_order))
        files.append(name)
    bundle.add_yaml("kustomization.yaml", {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": files,
    })


def fqdn(svc: Service, cluster_domain: str = "cluster.local") -> str:
    return f"{svc.name}.{svc.namespace}.svc.{cluster_domain}"


def host_for(svc: Service, from_namespace: str, cluster_domain: str = "cluster.local") -> str:
    """How an object in `from_namespace` names `svc`: the short name in its own namespace
    (as Kubernetes DNS and Istio resolve it), the FQDN elsewhere. External services: their host."""
    if svc.external is not None:
        return svc.external.host
    return svc.name if svc.namespace == from_namespace else fqdn(svc, cluster_domain)


class Gaps:
    """Constructs this backend cannot write exactly, reported as E301 by `unsupported`."""

    def __init__(self, backend: str):
        self.backend = backend
        self.items: list[Diagnostic] = []

    def add(self, what: str, span: Span, hint: str = "") -> None:
        if any(d.span == span and what in d.message for d in self.items):
            return  # one construct lowered in several places: report it once
        self.items.append(Diagnostic(
            "E301", f"{what} cannot be expressed when targeting {self.backend}", span,
            label="not expressible on this target",
            help=hint or "remove it or choose another target"))




def exposed_http_services(mesh: Any, gaps: Gaps) -> list[Any]:
    """Services exposed on the ingress; exposing one without an HTTP port is a gap (the
    generated ingress Gateway routes HTTP)."""
    exposed = []
    for s in mesh.services:
        if s.expose is not None and not s.is_http:
            gaps.add("ingress exposure of a service without HTTP ports", s.expose.span,
                     "the ingress Gateway routes HTTP")
        elif s.expose is not None:
            exposed.append(s)
    return exposed

# --------------------------------------------------------------------------- match algebra
# Conjunction of two meshc matches (both must hold). Used to push a fault's conditions into a
# route rule (Istio: one fault per HTTP route) and to keep first-match order on targets that
# rank routes by specificity (Gateway API, Linkerd). Returns the conjunction, None when no
# request can satisfy both, or UNKNOWN when the conjunction is not a single Match we can write.


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()


def _under_contains(base: str, path: str) -> bool:
    base = base.rstrip("/")
    return base == "" or path == base or path.startswith(base + "/")


def path_contains(p: Any, path: str) -> bool | None:
    """Does PathMatch `p` accept the literal `path`? None: cannot tell (regex)."""
    if p.kind == "exact":
        return path == p.value
    if p.kind == "prefix":
        return path.startswith(p.value)
    if p.kind == "under":
        return _under_contains(p.value, path)
    import re

    try:
        return re.fullmatch(p.value, path) is not None
    except re.error:
        return None


def and_path(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None or a == b or (a.kind, a.value) == (b.kind, b.value):
        return a
    for x, y in ((a, b), (b, a)):
        if x.kind == "exact":
            inside = path_contains(y, x.value)
            return UNKNOWN if inside is None else (x if inside else None)
    if "regex" in (a.kind, b.kind):
        return UNKNOWN
    if a.kind == b.kind == "prefix":
        if a.value.startswith(b.value):
            return a
        return b if b.value.startswith(a.value) else None
    if a.kind == b.kind == "under":
        if _under_contains(b.value, a.value):
            return a
        return b if _under_contains(a.value, b.value) else None
    pre, und = (a, b) if a.kind == "prefix" else (b, a)
    base = und.value.rstrip("/")
    if base.startswith(pre.value):  # every path under `und` starts with the prefix
        return und
    if pre.value.startswith(base + "/"):  # every path with the prefix lies under `und`
        return pre
    return None


def _and_strings(xs: tuple[Any, ...], ys: tuple[Any, ...]) -> Any:
    by_name: dict[str, Any] = {x.name: x for x in xs}
    out = list(xs)
    for y in ys:
        x = by_name.get(y.name)
        if x is None:
            out.append(y)
            by_name[y.name] = y
        elif (x.kind, x.value) == (y.kind, y.value):
            continue
        elif x.kind == y.kind == "exact":
            return None
        elif {x.kind, y.kind} == {"present", "absent"}:
            return None
        else:
            return UNKNOWN
    return tuple(out)


def and_match(a: Any, b: Any) -> Any:
    """The Match that holds when both `a` and `b` hold (None: never; UNKNOWN: not writable)."""
    path = None
    if a.path is not None or b.path is not None:  # and_path's None means "disjoint" here
        path = and_path(a.path, b.path)
        if path is None or path is UNKNOWN:
            return path
    headers = _and_strings(a.headers, b.headers)
    if headers is None or headers is UNKNOWN:
        return headers
    query = _and_strings(a.query, b.query)
    if query is None or query is UNKNOWN:
        return query
    if a.methods and b.methods:
        methods = tuple(m for m in a.methods if m in b.methods)
        if not methods:
            return None
    else:
        methods = a.methods or b.methods
    return a.model_copy(update={"path": path, "headers": headers, "query": query, "methods": methods})


def and_matches(xs: tuple[Any, ...], ys: tuple[Any, ...]) -> Any:
    """OR-lists: (x1 or x2) and (y1 or y2) -> the OR of pairwise conjunctions. An empty list
    means "any request"; None means "no request"."""
    if not xs:
        return ys
    if not ys:
        return xs
    out = []
    for x in xs:
        for y in ys:
            c = and_match(x, y)
            if c is UNKNOWN:
                return UNKNOWN
            if c is not None:
                out.append(c)
    return tuple(out) or None
