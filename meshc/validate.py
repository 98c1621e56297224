"""Offline validation of emitted Kubernetes objects (`meshc validate`, `meshc compile --validate`).

Custom resources are checked against the CRD schemas the meshes publish, read from a directory
holding either CRD manifests (apiextensions.k8s.io/v1 CustomResourceDefinition YAML, as shipped
by Istio, Linkerd and the Gateway API: `spec.versions[].schema.openAPIV3Schema`) or extracted
openAPIV3Schema JSON files named `<group>_<version>_<Kind>.json`. meshc ships the published
schemas of every Kubernetes target in that layout as package data (`meshc/schemas/`, with
SOURCES.md and LICENSES.md; `scripts/extract_schemas.py` re-extracts them from the upstream CRD
manifests for a version bump); `--schemas DIR` or `MESHC_SCHEMAS` use another folder. Core kinds (Service, ServiceAccount, Namespace, ...)
are checked by a round trip through the `kubernetes` client's models, the way kubeconform
checks them against the built-in OpenAPI document.

What the check enforces, on top of plain JSON Schema (jsonschema, Draft 4 = the OpenAPI 3.0
dialect of CRDs):
- unknown fields are rejected: every object schema with `properties`, no `additionalProperties`
  and no `x-kubernetes-preserve-unknown-fields` gets `additionalProperties: false` (like
  `kubectl apply --validate=strict`); at the root only apiVersion/kind/metadata are added;
- Kubernetes formats: int-or-string, int32/int64 ranges, durations (Go / Kubernetes style such
  as `1m30s`, `250ms`; Gateway API durations are also pinned by the schemas' own patterns),
  date-time, byte, ipv4/ipv6; `nullable: true`;
- `x-kubernetes-validations` (CEL): a few common rules are evaluated (Istio's
  `duration(self) >= duration('1ms')`, port ranges, wildcard bans, the Gateway API
  Service-backendRef-needs-a-port rule); every other rule is SKIPPED and reported as such in
  `SchemaStore.skipped_rules`, so a pass is necessary but not sufficient for API-server acceptance;
- metadata: name (DNS-1123 subdomain) and namespace (DNS-1123 label) syntax, label and
  annotation values are strings.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft4Validator, FormatChecker, validators
from jsonschema.exceptions import ValidationError


def schema_dirs(target: str | None) -> tuple[str, ...]:
    """The folders of a schema directory (laid out like meshc/schemas) that hold a target's
    CRD schemas: what its backend declares (Backend.SCHEMAS); none for an unknown target."""
    from meshc import backends  # each target lives in its module, schemas included

    if target is None or target not in backends.available():
        return ()
    return backends.get(target).SCHEMAS


# YAML files the targets write that are not Kubernetes objects: NGINX Service Mesh's Helm values
# (the mesh-wide mTLS and access-control settings, given at install)
NOT_MANIFESTS = frozenset({"helm-values.yaml"})

# The published CRD schemas meshc ships (package data; see SOURCES.md there).
BUNDLED_SCHEMAS = Path(__file__).resolve().parent / "schemas"

SCHEMAS_HELP = ("meshc ships the published CRD schemas of every target (meshc/schemas, see its "
                "SOURCES.md); to use others, pass a folder of CRD manifests (e.g. Istio's "
                "manifests/charts/base/files/crd-all.gen.yaml, Linkerd's charts/linkerd-crds, the "
                "Gateway API release's standard-install.yaml) or of extracted openAPIV3Schema JSON "
                "files with --schemas DIR or MESHC_SCHEMAS")


@dataclass(frozen=True)
class Problem:
    """One finding: which document, which object, where in it, and what is wrong."""

    source: str  # file name (bundle-relative) or "<objects>"
    index: int  # document index in the stream
    kind: str
    name: str
    path: str  # dotted path inside the object, e.g. spec.http[0].timeout
    message: str

    def __str__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return f"{self.source}[{self.index}] {self.kind}/{self.name}{where}: {self.message}"


# --------------------------------------------------------------------------- formats

_GO_DURATION = re.compile(r"^[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "μs": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def parse_go_duration(text: str) -> float | None:
    """Milliseconds of a Go/Kubernetes duration (`1m30s`, `250ms`, `0`), or None if invalid."""
    if text == "0":
        return 0.0
    if not isinstance(text, str) or not _GO_DURATION.match(text):
        return None
    sign = -1.0 if text.startswith("-") else 1.0
    return sign * sum(float(n) * _UNIT_MS[u] for n, u in _DURATION_PART.findall(text))


def _int_range(lo: int, hi: int) -> Callable[[object], bool]:
    def check(v: object) -> bool:
        return not isinstance(v, int) or isinstance(v, bool) or lo <= v <= hi
    return check


def _ip(version: int) -> Callable[[object], bool]:
    def check(v: object) -> bool:
        if not isinstance(v, str):
            return True
        try:
            return ipaddress.ip_address(v).version == version
        except ValueError:
            return False
    return check


_FORMATS: dict[str, Callable[[object], bool]] = {
    "int32": _int_range(-(2**31), 2**31 - 1),
    "int64": _int_range(-(2**63), 2**63 - 1),
    "double": lambda v: True,
    "float": lambda v: True,
    "byte": lambda v: not isinstance(v, str) or (len(v) % 4 == 0 and bool(_BASE64.match(v))),
    "date-time": lambda v: not isinstance(v, str) or bool(_RFC3339.match(v)),
    "duration": lambda v: not isinstance(v, str) or parse_go_duration(v) is not None,
    "int-or-string": lambda v: isinstance(v, int | str) and not isinstance(v, bool),
    "ipv4": _ip(4),
    "ipv6": _ip(6),
}


def _format_checker() -> FormatChecker:
    fc = FormatChecker(formats=())
    for name, fn in _FORMATS.items():
        fc.checks(name)(fn)
    return fc


# --------------------------------------------------------------------------- CEL (subset)

def _duration_ge_1ms(v: Any) -> bool:
    ms = parse_go_duration(v) if isinstance(v, str) else None
    return ms is not None and ms >= 1.0


def _backend_ref_port(v: Any) -> bool:
    if not isinstance(v, dict):
        return True
    is_service = v.get("group", "") == "" and v.get("kind", "Service") == "Service"
    return not is_service or "port" in v


def _ports_keys(v: Any) -> bool:
    try:
        return all(0 < int(k) <= 65535 for k in v)
    except (TypeError, ValueError):
        return False


# rule text (as in the CRDs) -> predicate on `self`. Anything else is skipped and counted.
KNOWN_CEL: dict[str, Callable[[Any], bool]] = {
    "duration(self) >= duration('1ms')": _duration_ge_1ms,
    "0 < self && self <= 65535": lambda v: isinstance(v, int) and 0 < v <= 65535,
    '!self.contains("*")': lambda v: "*" not in v,
    'self.all(key, !key.contains("*"))': lambda v: all("*" not in k for k in v),
    "self.all(key, key.size() != 0)": lambda v: all(len(k) != 0 for k in v),
    "self.all(key, 0 < int(key) && int(key) <= 65535)": _ports_keys,
    'self != "*"': lambda v: v != "*",
    "(size(self.group) == 0 && self.kind == 'Service') ? has(self.port) : true": _backend_ref_port,
}


_FAMILIES: list[tuple[re.Pattern[str], Callable[..., Callable[[Any], bool]]]] = [
    # Gateway API filter unions: the field named by `type` is set, and no other
    (re.compile(r"^!\(has\(self\.(\w+)\) && self\.type != '(\w+)'\)$"),
     lambda f, t: lambda v: not (f in v and v.get("type") != t)),
    (re.compile(r"^!\(!has\(self\.(\w+)\) && self\.type == '(\w+)'\)$"),
     lambda f, t: lambda v: not (f not in v and v.get("type") == t)),
    (re.compile(r"^self\.filter\(f, f\.type == '(\w+)'\)\.size\(\) <= 1$"),
     lambda t: lambda v: sum(1 for x in v if x.get("type") == t) <= 1),
    (re.compile(r"^self\.type == '(\w+)' \? has\(self\.(\w+)\) : true$"),
     lambda t, f: lambda v: v.get("type") != t or f in v),
    (re.compile(r"^has\(self\.(\w+)\) \? self\.type == '(\w+)' : true$"),
     lambda f, t: lambda v: f not in v or v.get("type") == t),
    # Gateway API path values for Exact/PathPrefix
    (re.compile(r"^\(self\.type in \['Exact','PathPrefix'\]\) \? self\.value\.startsWith\('(.*)'\) : true$"),
     lambda x: lambda v: v.get("type") not in ("Exact", "PathPrefix") or str(v.get("value", "/")).startswith(x)),
    (re.compile(r"^\(self\.type in \['Exact','PathPrefix'\]\) \? !self\.value\.contains\('(.*)'\) : true$"),
     lambda x: lambda v: v.get("type") not in ("Exact", "PathPrefix") or x not in str(v.get("value", "/"))),
    (re.compile(r"^\(self\.type in \['Exact','PathPrefix'\]\) \? !self\.value\.endsWith\('(.*)'\) : true$"),
     lambda x: lambda v: v.get("type") not in ("Exact", "PathPrefix") or not str(v.get("value", "/")).endswith(x)),
]


@functools.lru_cache(maxsize=512)
def cel_predicate(rule: str) -> Callable[[Any], bool] | None:
    """A Python predicate for the CEL rules we evaluate; None for the rules we skip."""
    if rule in KNOWN_CEL:
        return KNOWN_CEL[rule]
    for pattern, make in _FAMILIES:
        m = pattern.match(rule)
        if m:
            return make(*m.groups())
    return None


# --------------------------------------------------------------------------- schema store


@dataclass
class LoadedSchema:
    api_version: str
    kind: str
    origin: str
    validator: Any


@dataclass
class SchemaStore:
    """CRD schemas by (apiVersion, kind), prepared for strict validation."""

    root: Path
    schemas: dict[tuple[str, str], LoadedSchema] = field(default_factory=dict)
    skipped_rules: Counter[str] = field(default_factory=Counter)  # CEL rules not evaluated

    def get(self, api_version: str, kind: str) -> LoadedSchema | None:
        return self.schemas.get((api_version, kind))

    def skipped_note(self) -> str:
        n = sum(self.skipped_rules.values())
        if not n:
            return ""
        return (f"note: {n} x-kubernetes-validations (CEL) rule evaluation(s) skipped "
                f"({len(self.skipped_rules)} distinct rules); the API server may still reject "
                "cross-field errors")


def _adapt(node: Any, root: bool = False) -> Any:
    """Kubernetes structural-schema conventions -> plain JSON Schema (in a copy)."""
    if isinstance(node, list):
        return [_adapt(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: v for k, v in node.items()}
    for key in ("properties", "patternProperties"):
        if isinstance(out.get(key), dict):
            out[key] = {k: _adapt(v) for k, v in out[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = _adapt(out[key])
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(out.get(key), list):
            out[key] = [_adapt(n) for n in out[key]]
    if out.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    preserve = out.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    if root:
        props = dict(out.get("properties", {}))
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
        out["properties"] = props
        if not preserve:
            out["additionalProperties"] = False
        out["required"] = sorted(set(out.get("required", [])) | {"apiVersion", "kind"})
    return out


def _make_validator_class(store: SchemaStore) -> Any:
    def cel(validator: Any, rules: Any, instance: Any, schema: Any) -> Iterable[ValidationError]:
        for rule in rules or ():
            text = rule.get("rule", "") if isinstance(rule, dict) else ""
            fn = cel_predicate(text)
            if fn is None:
                store.skipped_rules[text] += 1
                continue
            try:
                ok = fn(instance)
            except Exception:  # a rule over an unexpected type: the type check reports it
                ok = True
            if not ok:
                yield ValidationError(rule.get("message") or f"failed rule: {text}")

    return validators.extend(Draft4Validator, {"x-kubernetes-validations": cel})


def _add(store: SchemaStore, cls: Any, api_version: str, kind: str, schema: dict[str, Any],
         origin: str) -> None:
    if (api_version, kind) in store.schemas:  # first (preferred) wins
        return
    prepared = _adapt(schema, root=True)
    store.schemas[(api_version, kind)] = LoadedSchema(
        api_version, kind, origin, cls(prepared, format_checker=_format_checker()))


def _from_crd(store: SchemaStore, cls: Any, doc: Mapping[str, Any], origin: str) -> None:
    spec = doc.get("spec") or {}
    group, kind = spec.get("group", ""), (spec.get("names") or {}).get("kind", "")
    for ver in spec.get("versions") or ():
        schema = ((ver.get("schema") or {}).get("openAPIV3Schema"))
        if group and kind and isinstance(schema, dict):
            _add(store, cls, f"{group}/{ver.get('name')}", kind, schema, origin)


_HELM_LINE = re.compile(r"^\s*\{\{-?.*-?\}\}\s*$")
_HELM_INLINE = re.compile(r"\{\{-?.*?-?\}\}")


def _read_manifests(path: Path) -> list[Any]:
    """YAML documents of a manifest file. Helm chart templates (Linkerd publishes its CRDs as
    charts/linkerd-crds) are read by dropping whole-line directives and blanking inline ones,
    which only occur outside the schemas."""
    try:
        text = path.read_text()
    except OSError:
        return []
    try:
        return list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        if "{{" not in text:
            return []
    lines = [_HELM_INLINE.sub("helm-value", ln) for ln in text.splitlines() if not _HELM_LINE.match(ln)]
    try:
        return list(yaml.safe_load_all("\n".join(lines)))
    except yaml.YAMLError:
        return []


def _is_crd(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition"


def _schema_files(root: Path, target: str | None, experimental: bool) -> list[Path]:
    bases = [root]
    dirs = schema_dirs(target)
    if dirs and any((root / d).is_dir() for d in dirs):
        bases = [root / d for d in dirs if (root / d).is_dir()]
    files = [p for b in bases for p in b.rglob("*") if p.suffix in (".json", ".yaml", ".yml") and p.is_file()]

    def pref(p: Path) -> tuple[int, int, str]:
        rel = p.relative_to(root)
        exp = "experimental" in rel.parts
        # standard channel first unless asked otherwise; shallower files before deeper ones
        return (0 if exp == experimental else 1, len(rel.parts), str(rel))

    return sorted(files, key=pref)


def load_schemas(schema_dir: Path | str, target: str | None = None, experimental: bool = False) -> SchemaStore:
    """Every CRD schema under `schema_dir` (restricted to the target's sub-folder when the
    directory is laid out like meshc/schemas), cached. Raises FileNotFoundError if absent."""
    return _load_schemas(Path(schema_dir).resolve(), target, bool(experimental))


@functools.lru_cache(maxsize=32)
def _load_schemas(root: Path, target: str | None, experimental: bool) -> SchemaStore:
    if not root.is_dir():
        raise FileNotFoundError(f"schema directory {root} does not exist; {SCHEMAS_HELP}")
    store = SchemaStore(root)
    cls = _make_validator_class(store)
    for path in _schema_files(root, target, experimental):
        origin = str(path.relative_to(root))
        if path.suffix == ".json":
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if _is_crd(data):
                _from_crd(store, cls, data, origin)
                continue
            parts = path.stem.rsplit("_", 2)
            if len(parts) == 3 and isinstance(data, dict):
                group, version, kind = parts
                _add(store, cls, f"{group}/{version}" if group else version, kind, data, origin)
        else:
            docs = _read_manifests(path)
            for doc in docs:
                if _is_crd(doc):
                    _from_crd(store, cls, doc, origin)
    return store


def default_schema_dir() -> Path:
    """$MESHC_SCHEMAS when set, else the schemas meshc ships."""
    env = os.environ.get("MESHC_SCHEMAS")
    return Path(env) if env else BUNDLED_SCHEMAS


# --------------------------------------------------------------------------- core kinds

_CORE_GROUPS = {"v1": "V1", "apps/v1": "V1", "policy/v1": "V1", "networking.k8s.io/v1": "V1",
                "rbac.authorization.k8s.io/v1": "V1", "batch/v1": "V1", "autoscaling/v2": "V2"}


class _Response:
    """What ApiClient.deserialize reads: an HTTP response with a JSON body in `.data`."""

    def __init__(self, obj: Any):
        self.data = json.dumps(obj)


@functools.lru_cache(maxsize=1)
def _api_client() -> Any:
    from kubernetes.client import ApiClient

    return ApiClient()


def _deserialize(client: Any, obj: Any, model: str) -> Any:
    """ApiClient.deserialize across client versions: (text, type, content_type) since v33,
    (response, type) before."""
    import inspect

    params = inspect.signature(client.deserialize).parameters
    if "content_type" in params:
        return client.deserialize(json.dumps(obj), model, "application/json")
    return client.deserialize(_Response(obj), model)


def core_model_name(api_version: str, kind: str) -> str | None:
    """`V1Service` for v1/Service etc., if the kubernetes client has that model."""
    prefix = _CORE_GROUPS.get(api_version)
    if prefix is None:
        return None
    import kubernetes.client.models as models

    name = f"{prefix}{kind}"
    return name if hasattr(models, name) else None


def _diff(orig: Any, back: Any, path: str) -> Iterable[tuple[str, str]]:
    if isinstance(orig, dict):
        if not isinstance(back, dict):
            yield path, f"expected an object, got {type(back).__name__}"
            return
        for k in sorted(orig):
            sub = f"{path}.{k}" if path else k
            if k not in back:
                if orig[k] is not None:
                    yield sub, "unknown field (dropped by the kubernetes client model)"
            else:
                yield from _diff(orig[k], back[k], sub)
    elif isinstance(orig, list):
        if not isinstance(back, list) or len(back) != len(orig):
            yield path, "list changed in a round trip through the kubernetes client model"
            return
        for i, (a, b) in enumerate(zip(orig, back, strict=True)):
            yield from _diff(a, b, f"{path}[{i}]")
    elif orig != back or type(orig) is not type(back):
        yield path, f"invalid value {orig!r} (the kubernetes client model reads it as {back!r})"


def check_core(obj: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(path, message) problems of a core object, by round trip through its client model."""
    model = core_model_name(str(obj.get("apiVersion")), str(obj.get("kind")))
    if model is None:
        return [("", f"no kubernetes client model for {obj.get('apiVersion')} {obj.get('kind')}")]
    client = _api_client()
    try:
        parsed = _deserialize(client, obj, model)
    except (ValueError, TypeError) as e:
        return [("", f"rejected by the kubernetes client model {model}: {e}")]
    back = client.sanitize_for_serialization(parsed)
    return list(_diff(dict(obj), back, ""))


# --------------------------------------------------------------------------- objects


def _meta_problems(obj: Mapping[str, Any]) -> list[tuple[str, str]]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return [("metadata", "missing metadata")]
    out = []
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        out.append(("metadata.name", "missing name"))
    elif len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        out.append(("metadata.name", f"{name!r} is not a DNS-1123 subdomain"))
    if obj.get("kind") == "Service" and isinstance(name, str) and not _DNS_1035.match(name):
        out.append(("metadata.name", f"Service name {name!r} is not a DNS-1035 label (at most 63 characters, "
                                     "starting with a letter)"))
    ns = meta.get("namespace")
    if ns is not None and (not isinstance(ns, str) or len(ns) > 63 or not _DNS_LABEL.match(ns)):
        out.append(("metadata.namespace", f"{ns!r} is not a DNS-1123 label"))
    for key in ("labels", "annotations"):
        vals = meta.get(key)
        if vals is None:
            continue
        if not isinstance(vals, dict) or not all(isinstance(v, str) for v in vals.values()):
            out.append((f"metadata.{key}", f"{key} must map strings to strings"))
    return out


# Duration fields that their CRD types as a bare string (no format, pattern or CEL rule).
# (apiVersion, kind) -> dotted paths, `[]` stepping into every list item.
DURATION_FIELDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("linkerd.io/v1alpha2", "ServiceProfile"): ("spec.routes[].timeout", "spec.retryBudget.ttl"),
}


def _values_at(obj: Any, path: str, where: str = "") -> Iterable[tuple[str, Any]]:
    head, _, rest = path.partition(".")
    many = head.endswith("[]")
    key = head[:-2] if many else head
    if not isinstance(obj, dict) or key not in obj:
        return
    here = f"{where}.{key}" if where else key
    items = list(enumerate(obj[key])) if many and isinstance(obj[key], list) else [(None, obj[key])]
    for i, val in items:
        loc = here if i is None else f"{here}[{i}]"
        if rest:
            yield from _values_at(val, rest, loc)
        else:
            yield loc, val


def _duration_problems(obj: Mapping[str, Any]) -> list[tuple[str, str]]:
    out = []
    for path in DURATION_FIELDS.get((str(obj.get("apiVersion")), str(obj.get("kind"))), ()):
        for loc, val in _values_at(obj, path):
            if not isinstance(val, str) or parse_go_duration(val) is None:
                out.append((loc, f"{val!r} is not a duration (Go syntax, e.g. 1m30s, 250ms)"))
    return out


def _fmt_path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def validate_object(obj: Any, store: SchemaStore | None) -> list[tuple[str, str]]:
    """(path, message) problems of one object."""
    if not isinstance(obj, dict):
        return [("", "not a Kubernetes object (expected a mapping)")]
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return [("", "missing apiVersion or kind")]
    if api_version.startswith("kustomize.config.k8s.io/"):
        return []  # checked against the bundle's files by validate_bundle
    if core_model_name(api_version, kind) is not None:
        return _meta_problems(obj) + check_core(obj)
    if store is None:
        return [("", f"no schema directory to check {api_version} {kind}")]
    loaded = store.get(api_version, kind)
    if loaded is None:
        return [("", f"no schema for {api_version} {kind} in {store.root}")]
    out = _meta_problems(obj) + _duration_problems(obj)
    errors = sorted(loaded.validator.iter_errors(obj), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    for e in errors:
        out.append((_fmt_path(e.absolute_path), e.message))
    return out


def _store_for(schema_dir: Path | str | None, target: str | None, experimental: bool) -> SchemaStore | None:
    if schema_dir is None:
        return None
    return load_schemas(schema_dir, target, experimental)


def validate_objects(objs: Iterable[Any], schema_dir: Path | str | None, *, target: str | None = None,
                     experimental: bool = False, source: str = "<objects>") -> list[Problem]:
    """Problems of every object (an empty list: all valid)."""
    store = _store_for(schema_dir, target, experimental)
    out = []
    for i, obj in enumerate(objs):
        kind = obj.get("kind", "?") if isinstance(obj, dict) else "?"
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        name = meta.get("name", "?") if isinstance(meta, dict) else "?"
        for path, msg in validate_object(obj, store):
            out.append(Problem(source, i, str(kind), str(name), path, msg))
    return out


def validate_files(files: Mapping[str, bytes], schema_dir: Path | str | None, *, target: str | None = None,
                   experimental: bool = False) -> list[Problem]:
    """Problems of every YAML stream in `files` (path -> bytes), kustomization included."""
    out: list[Problem] = []
    for rel in sorted(files):
        if not rel.endswith((".yaml", ".yml")) or rel.rsplit("/", 1)[-1] in NOT_MANIFESTS:
            continue
        try:
            docs = [d for d in yaml.safe_load_all(files[rel]) if d is not None]
        except yaml.YAMLError as e:
            out.append(Problem(rel, 0, "?", "?", "", f"not valid YAML: {e}"))
            continue
        out += validate_objects(docs, schema_dir, target=target, experimental=experimental, source=rel)
        for i, doc in enumerate(docs):
            if isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith("kustomize.config.k8s.io/"):
                base = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
                for res in doc.get("resources") or ():
                    if f"{base}{res}" not in files:
                        out.append(Problem(rel, i, "Kustomization", "-", "resources",
                                           f"resource {res!r} is not in the output"))
    return out


def validate_bundle(bundle: Any, schema_dir: Path | str | None, *, target: str | None = None,
                    experimental: bool = False) -> list[Problem]:
    """Problems of every YAML file of a backend's Bundle."""
    return validate_files(bundle.files, schema_dir, target=target, experimental=experimental)


def validate_compiled(bundle: Any, target: str, options: Mapping[str, str] | None = None,
                      schema_dir: Path | str | None = None) -> list[Problem]:
    """For `meshc compile --validate`: the bundle's problems against the target's schemas
    (default folder as for `meshc validate`; the experimental channel when the bundle was
    compiled with the `experimental` option). Raises FileNotFoundError if the folder is absent."""
    folder = schema_dir or default_schema_dir()
    experimental = str((options or {}).get("experimental", "false")).lower() in ("1", "true", "yes", "on", "")
    return validate_bundle(bundle, folder, target=target, experimental=experimental)
