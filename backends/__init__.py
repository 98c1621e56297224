"""Backend registry: target name -> backend class.

Each target lives in its own module (`meshc.backends.<module>`); the registry imports a
module only when its target is asked for, so a broken or slow backend never costs the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import replace

from meshc.backends.base import Backend, Bundle, OptionError, declared_options

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
    """Every target, in registry order (a module that fails to import is an error, not a
    target that silently disappears)."""
    return list(_REGISTRY)


def get(name: str) -> type[Backend]:
    if name not in _REGISTRY:
        raise MeshcError([Diagnostic("E300", f"unknown target '{name}'",
                                     help=did_you_mean(name, available()))])
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(f"meshc.backends.{module}"), cls)  # type: ignore[no-any-return]


def options_for(targets: list[str], options: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Each target's share of the `-X` options given for several targets at once: an option
    goes to every target that declares it; one that none of them declares is an OptionError
    (with a did-you-mean over their options). Values are checked by each backend."""
    declared = {t: declared_options(get(t)) for t in targets}
    for name in options:
        if not any(name in d for d in declared.values()):
            every = sorted({n for d in declared.values() for n in d})
            hint = did_you_mean(name, every)
            raise OptionError(f"unknown option '{name}' for {', '.join(targets)}"
                              + (f" ({hint})" if hint.startswith("did") else "")
                              + f"; their options: {', '.join(every) or 'none'}")
    return {t: {k: v for k, v in options.items() if k in declared[t]} for t in targets}


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


__all__ = ["Backend", "Bundle", "OptionError", "available", "compile_mesh", "get", "options_for"]
