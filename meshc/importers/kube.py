"""Kubernetes core objects shared by the Kubernetes-based importers (Istio, Linkerd, NGINX
Service Mesh, App Mesh controller): Services give names, namespaces and ports; workloads
(Deployment, StatefulSet, DaemonSet, ReplicaSet, Pod) give versions and service accounts.

Protocol of a Service port: `appProtocol`, else the Istio naming convention (`http-*`,
`grpc-*`, ...), else TCP (noted: the mesh would have sniffed it).
"""

from __future__ import annotations

from typing import Any

from meshc.importers.common import Draft, Report, dns_name, kind_of, meta, resource, version_name

WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Pod")
PROTOCOL_WORDS = {"http": "http", "http2": "http2", "h2c": "http2", "grpc": "grpc", "grpc-web": "http2",
                  "tcp": "tcp", "tls": "tls", "https": "tls", "mongo": "tcp", "mysql": "tcp", "redis": "tcp",
                  "kubernetes.io/h2c": "http2", "kubernetes.io/ws": "http", "kubernetes.io/wss": "tls"}


def port_protocol(port: dict[str, Any]) -> str | None:
    for key in ("appProtocol", "name"):
        word = str(port.get(key) or "").lower()
        if word in PROTOCOL_WORDS:
            return PROTOCOL_WORDS[word]
        head = word.split("-", 1)[0]
        if key == "name" and head in PROTOCOL_WORDS:
            return PROTOCOL_WORDS[head]
    return None


def read_services(docs: list[tuple[str, Any]], report: Report, drafts: dict[str, Draft],
                  default_protocol: str = "tcp") -> None:
    """Drafts from core Services (ExternalName Services are left to the mesh's own egress
    resources), then versions and identities from workloads."""
    for _, d in docs:
        if kind_of(d) != "Service" or (d.get("spec") or {}).get("type") == "ExternalName":
            continue
        name, ns = meta(d)
        key = dns_name(name)
        spec = d.get("spec") or {}
        draft = drafts.setdefault(key, Draft(key, ns))
        draft.selector = {str(k): str(v) for k, v in (spec.get("selector") or {}).items()}
        for p in spec.get("ports") or []:
            number = p.get("port")
            if not isinstance(number, int):
                continue
            proto = port_protocol(p)
            if proto is None:
                proto = default_protocol
                report.add(resource(d), f"spec.ports[{p.get('name', number)}]",
                           f"no protocol in appProtocol or the port name: assumed {proto}", f"service:{key}")
            draft.ports[number] = proto
    accounts = {meta(d) for _, d in docs if kind_of(d) == "ServiceAccount"}
    identities: dict[str, set[str]] = {}
    for _, d in docs:
        if kind_of(d) not in WORKLOADS:
            continue
        _, ns = meta(d)
        labels, pod = workload_labels(d)
        for draft in drafts.values():
            if draft.selector and draft.namespace == ns and draft.selector.items() <= labels.items():
                sa = pod.get("serviceAccountName") or pod.get("serviceAccount")
                if sa:
                    identities.setdefault(draft.name, set()).add(str(sa))
                version = labels.get("version")
                if version and "version" not in draft.selector:
                    draft.versions.setdefault(version_name(version), {"version": version})
    for name, sas in identities.items():
        if len(sas) > 1:
            report.add(f"service {name}", "serviceAccountName",
                       f"workloads run as several service accounts ({', '.join(sorted(sas))}); "
                       f"the first is its identity", f"service:{name}")
        drafts[name].identity = sorted(sas)[0]
    # No workloads: a service account named after the service, `<prefix>-<service>` or
    # `<service>-<suffix>` (when only one fits), is its identity.
    for draft in drafts.values():
        if draft.identity is None:
            same_ns = sorted(n for n, ns in accounts if ns == draft.namespace)
            if draft.name in same_ns:
                draft.identity = draft.name
            else:
                ends = [n for n in same_ns if n.endswith("-" + draft.name) or n.startswith(draft.name + "-")]
                if len(ends) == 1:
                    draft.identity = ends[0]


def workload_labels(d: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """Pod labels and pod spec of a workload or a Pod."""
    if kind_of(d) == "Pod":
        return {str(k): str(v) for k, v in ((d.get("metadata") or {}).get("labels") or {}).items()}, \
            d.get("spec") or {}
    tpl = (d.get("spec") or {}).get("template") or {}
    labels = (tpl.get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()}, tpl.get("spec") or {}


def lookup_host(host: str, from_ns: str, drafts: dict[str, Draft],
                external_hosts: dict[str, str] | None = None) -> str | None:
    """The draft a Kubernetes host name refers to: `reviews`, `reviews.ns`, `reviews.ns.svc`,
    `reviews.ns.svc.cluster.local`, or an external host name."""
    if external_hosts and host in external_hosts:
        return external_hosts[host]
    parts = host.split(".")
    name = dns_name(parts[0])
    ns = parts[1] if len(parts) > 1 else from_ns
    d = drafts.get(name)
    if d is not None and (d.namespace == ns or len(parts) == 1):
        return name
    return None
