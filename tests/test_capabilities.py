"""Capabilities as data: mesh-wide settings count as features only when they differ from the
defaults, and a target that cannot honour one reports it at the mesh block (E301)."""

from __future__ import annotations

import pytest
from meshc.backends import compile_mesh
from meshc.backends.base import features_used

from meshc.compiler import load_text
from meshc.diagnostics import MeshcError

DEFAULTS = "mesh m {\n  access_log json\n  trace_sampling 1%\n}\nservice a {\n  port http 80\n}\nallow * -> a\n"
CHANGED = "mesh m {\n  access_log off\n  metrics off\n  trace_sampling 20%\n}\nservice a {\n  port http 80\n}\n" \
          "allow * -> a\n"


def test_defaults_are_not_features() -> None:
    used = {f for f, _ in features_used(load_text(DEFAULTS, checks=False))}
    assert not used & {"access_log.off", "access_log.text", "metrics.off", "trace_sampling"}


def test_changed_settings_are_honoured_or_reported() -> None:
    mesh = load_text(CHANGED, checks=False)
    assert {"access_log.off", "metrics.off", "trace_sampling"} <= {f for f, _ in features_used(mesh)}
    assert compile_mesh(mesh, "envoy").files  # envoy writes all three
    with pytest.raises(MeshcError) as e:
        compile_mesh(mesh, "istio")  # Telemetry is installation configuration
    assert {(d.code, d.span.line) for d in e.value.diagnostics} == {("E301", 1)}
    assert len(e.value.diagnostics) == 3
