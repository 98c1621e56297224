"""`meshc import --from linkerd` on inputs modelled on linkerd.io's documentation (emojivoto
authorization, dynamic request routing, retry and timeout annotations)."""

from __future__ import annotations

from pathlib import Path

from meshc.compiler import load_text
from meshc.importers import import_files

INPUTS = Path(__file__).resolve().parent / "import_inputs" / "linkerd"


def test_emojivoto() -> None:
    result = import_files("linkerd", [INPUTS / "emojivoto.yaml"])
    m = result.mesh
    assert m.name == "emojivoto" and m.authz == "deny_by_default"
    # emoji-svc-v2 is not a service: it addresses version v2 of emoji-svc
    assert [s.name for s in m.services] == ["emoji-svc", "voting-svc", "web-svc"]
    emoji = m.service("emoji-svc")
    assert emoji is not None and emoji.version("v2") is not None
    assert [p.protocol for p in emoji.ports] == ["grpc"]
    canary, default = emoji.routes
    assert canary.matches[0].headers[0].name == "x-canary" and canary.destinations[0].version == "v2"
    assert [(d.service, d.version, d.weight) for d in default.destinations] == \
        [("emoji-svc", None, 9000), ("emoji-svc", "v2", 1000)]
    assert default.mirror is not None and default.mirror.destination.version == "v2"
    voting = m.service("voting-svc")
    assert voting is not None and voting.resilience.retry is not None
    assert (voting.resilience.retry.attempts, voting.resilience.retry.on, voting.resilience.retry.per_try_ms) == \
        (2, ("5xx",), 300)
    assert voting.resilience.timeout is not None and voting.resilience.timeout.ms == 2000
    # the MeshTLSAuthentication identity string names web's service account: service web-svc
    assert [(r.action, str(r.sources[0]), r.destinations) for r in m.rules] == \
        [("allow", "web-svc", ("voting-svc",))]
    # a NetworkAuthentication of one CIDR cannot be written: its allow is left out, reported
    assert any(e.resource == "NetworkAuthentication emojivoto/cluster-network" for e in result.report)
    assert "# meshc import: NetworkAuthentication emojivoto/cluster-network spec.networks:" in result.text
    load_text(result.text)


def test_service_profile() -> None:
    result = import_files("linkerd", sorted(INPUTS.glob("*.yaml")))
    voting = result.mesh.service("voting-svc")
    assert voting is not None
    rule = voting.routes[0]
    assert rule.matches[0].methods == ("POST",) and rule.matches[0].path is not None
    assert rule.matches[0].path.kind == "regex"
    assert rule.timeout is not None and rule.timeout.ms == 300
    assert rule.retry is not None and rule.retry.budget == 2000  # retryRatio 0.2
    assert any(e.field == "spec.routes[0].isRetryable" for e in result.report)
