"""Backend registry: target name -> backend class.

Each target lives in its own module (`meshc.backends.<module>`); the registry imports a
module only when its target is asked for, so a broken or slow backend never costs the others.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from dataclasses import replace

from meshc.backends.base import Backend, Bundle

from meshc.diagnostics import Diagnostic, MeshcError, did_you_mean
from meshc.model import Mesh

# target name -> "module:Class". A target appears here once its module exists.
_REGISTRY: dict[str, str] = {
    "native": "native:NativeBackend",
    "envoy": "envoy:EnvoyBackend",
    "istio": "istio:IstioBackend",
    "linkerd": "linkerd:LinkerdBackend",
    "gateway-api": "gateway_api:GatewayApiBackend",
    "consul": "consul:ConsulBackend",
    "nginx-mesh": "nginx_mesh:NginxMeshBackend",
    "nginx": "nginx:NginxBackend",
    "appmesh": "appmesh:AppMeshBackend",
    "prometheus": "prometheus:PrometheusBackend",
}


def available() -> list[str]:
    """Targets whose module is present in this installation, in registry order."""
    out = []
    for name, ref in _REGISTRY.items():
        module = ref.split(":")[0]
        if importlib.util.find_spec(f"meshc.backends.{module}") is not None:
            out.append(name)
    return out


def get(name: str) -> type[Backend]:
    if name not in available():
        raise MeshcError([Diagnostic("E300", f"unknown target '{name}'",
                                     help=did_you_mean(name, available()))])
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(f"meshc.backends.{module}"), cls)  # type: ignore[no-any-return]


def compile_mesh(mesh: Mesh, target: str, *, unsupported: str = "error",
                 options: Mapping[str, str] | None = None) -> Bundle:
    """Lower `mesh` for `target`. Unsupported features are errors (or warnings) at their line."""
    backend = get(target)(options)
    gaps = backend.unsupported(mesh)
    if unsupported == "error" and gaps:
        raise MeshcError([replace(d, help=f"{d.help}; or pass --unsupported=warn to leave it out with a warning")
                          for d in gaps])
    bundle = backend.lower(mesh)
    # --unsupported=warn: the construct is left out of the output (the label says so)
    bundle.diagnostics = [replace(d.as_warning(), label="left out of the output (--unsupported=warn)")
                          for d in gaps] + bundle.diagnostics
    errors = [d for d in bundle.diagnostics if d.severity == "error"]
    if errors:
        raise MeshcError(bundle.diagnostics)
    return bundle


__all__ = ["Backend", "Bundle", "available", "compile_mesh", "get"]
