"""meshc validate: strict CRD-schema checks, Kubernetes formats, CEL subset, core round trips, CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from meshc.cli import main
from meshc.commands.validate import register
from meshc.validate import (
    BUNDLED_SCHEMAS,
    check_core,
    load_schemas,
    parse_go_duration,
    validate_files,
    validate_objects,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = BUNDLED_SCHEMAS
REALWORLD = ROOT / "tests" / "fixtures" / "realworld" / "istio-bookinfo"


def vs(http: list[dict]) -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "r", "namespace": "default"}, "spec": {"hosts": ["r"], "http": http}}


def messages(objs: list[dict], target: str | None = "istio") -> list[str]:
    return [f"{p.path}: {p.message}" for p in validate_objects(objs, SCHEMAS, target=target)]


def test_go_durations() -> None:
    assert parse_go_duration("1m30s") == 90_000
    assert parse_go_duration("250ms") == 250
    assert parse_go_duration("1.5h") == 5_400_000
    assert parse_go_duration("0") == 0
    for bad in ("", "5", "1d", "PT5S", "s", "1 s"):
        assert parse_go_duration(bad) is None, bad


def test_realworld_istio_files_are_valid() -> None:
    for f in sorted(REALWORLD.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d]
        assert messages(docs) == [], f.name


def test_unknown_fields_rejected_at_every_level() -> None:
    obj = vs([{"route": [{"destination": {"host": "r", "subsett": "v1"}}], "retrys": {}}])
    obj["spec"]["hostz"] = []
    obj["extra"] = 1
    msgs = messages([obj])
    assert any(m.startswith("spec.http[0].route[0].destination:") and "subsett" in m for m in msgs)
    assert any(m.startswith("spec.http[0]:") and "retrys" in m for m in msgs)
    assert any(m.startswith("spec:") and "hostz" in m for m in msgs)
    assert any("extra" in m for m in msgs)


def test_preserve_unknown_fields_is_respected() -> None:
    # Linkerd's Server podSelector.matchLabels is x-kubernetes-preserve-unknown-fields
    server = {"apiVersion": "policy.linkerd.io/v1beta3", "kind": "Server",
              "metadata": {"name": "s", "namespace": "default"},
              "spec": {"port": "http", "podSelector": {"matchLabels": {"anything": "goes"}}}}
    assert messages([server], "linkerd") == []


def test_int_or_string_and_int32() -> None:
    base = {"apiVersion": "policy.linkerd.io/v1beta3", "kind": "Server", "metadata": {"name": "s"}}
    ok = [dict(base, spec={"port": 8080, "podSelector": {}}), dict(base, spec={"port": "http", "podSelector": {}})]
    assert messages(ok, "linkerd") == []
    bad = dict(base, spec={"port": [8080], "podSelector": {}})
    assert messages([bad], "linkerd")
    big = vs([{"route": [{"destination": {"host": "r"}, "weight": 2**31}]}])
    assert any("weight" in m for m in messages([big]))


def test_durations_checked_through_the_istio_cel_rule_and_gateway_pattern() -> None:
    assert messages([vs([{"route": [{"destination": {"host": "r"}}], "timeout": "1m30s"}])]) == []
    for bad in ("0s", "10", "abc", "1d"):
        msgs = messages([vs([{"route": [{"destination": {"host": "r"}}], "timeout": bad}])])
        assert any("timeout" in m for m in msgs), bad
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"},
             "spec": {"rules": [{"timeouts": {"request": "1.5s"}}]}}
    assert any("timeouts.request" in m for m in messages([route], "gateway-api"))


def test_skipped_cel_rules_are_counted_and_said() -> None:
    store = load_schemas(SCHEMAS.resolve(), "gateway-api")
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"},
             "spec": {"parentRefs": [{"name": "x", "kind": "Service", "group": ""}],
                      "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}]}}
    validate_objects([route], SCHEMAS, target="gateway-api")
    assert sum(store.skipped_rules.values()) > 0
    assert "skipped" in store.skipped_note()


def test_gateway_backend_ref_needs_a_port_cel_rule_is_evaluated() -> None:
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"},
             "spec": {"rules": [{"backendRefs": [{"name": "svc"}]}]}}
    assert any("port" in m for m in messages([route], "gateway-api"))


def test_target_selects_schema_folder_and_experimental_channel() -> None:
    retry_route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"},
                   "spec": {"rules": [{"retry": {"attempts": 2}}]}}
    assert any("retry" in p.message for p in validate_objects([retry_route], SCHEMAS, target="gateway-api"))
    assert validate_objects([retry_route], SCHEMAS, target="gateway-api", experimental=True) == []
    unknown = {"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "x"}}
    assert "no schema" in validate_objects([unknown], SCHEMAS)[0].message


def test_core_round_trip() -> None:
    good = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}], "selector": {"app": "a"}}}
    assert check_core(good) == []
    unknown = json.loads(json.dumps(good))
    unknown["spec"]["ports"][0]["bogus"] = 1
    assert [p for p, _ in check_core(unknown)] == ["spec.ports[0].bogus"]
    wrong_type = json.loads(json.dumps(good))
    wrong_type["spec"]["ports"][0]["port"] = "eighty"
    assert check_core(wrong_type)
    missing = json.loads(json.dumps(good))
    del missing["spec"]["ports"][0]["port"]
    assert check_core(missing)
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bookinfo-reviews"}}
    assert check_core(sa) == []


def test_metadata_names_checked_without_schemas() -> None:
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "Bad_Name", "namespace": "x"}}
    assert any(p.path == "metadata.name" for p in validate_objects([sa], None))


def test_kustomization_resources_must_exist() -> None:
    files = {"kustomization.yaml": b"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
                                  b"resources: [a.yaml, missing.yaml]\n",
             "a.yaml": b"apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\n"}
    probs = validate_files(files, None)
    assert [p.message for p in probs] == ["resource 'missing.yaml' is not in the output"]


def test_crd_manifests_are_read_like_extracted_schemas(tmp_path: Path) -> None:
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "widgets.example.com"},
           "spec": {"group": "example.com", "names": {"kind": "Widget", "plural": "widgets"}, "scope": "Namespaced",
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                        "type": "object", "properties": {"spec": {"type": "object", "properties": {
                            "size": {"type": "integer", "format": "int32"},
                            "wait": {"type": "string", "format": "duration"},
                            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}}}]}}
    (tmp_path / "crds.yaml").write_text(yaml.safe_dump_all([{"apiVersion": "v1", "kind": "Namespace"}, crd]))
    ok = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
          "spec": {"size": 3, "wait": "5s", "free": {"x": 1}}}
    assert validate_objects([ok], tmp_path) == []
    bad = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
           "spec": {"size": 2**40, "wait": "5 seconds", "colour": "red"}}
    paths = sorted(p.path for p in validate_objects([bad], tmp_path))
    assert paths == ["spec", "spec.size", "spec.wait"]


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="meshc")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)  # type: ignore[no-any-return]


def test_cli_on_yaml_and_mesh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["validate", str(REALWORLD / "virtual-service-all-v1.yaml"), "--target", "istio",
                 "--schemas", str(SCHEMAS)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(vs([{"route": [{"destination": {"host": "r"}}], "timeout": "soon"}])))
    assert _run(["validate", str(bad), "--target", "istio", "--schemas", str(SCHEMAS)]) == 1
    assert "timeout" in capsys.readouterr().err
    assert _run(["validate", str(ROOT / "examples" / "bookinfo" / "bookinfo.mesh"), "--target", "istio",
                 "--schemas", str(SCHEMAS)]) == 0
    assert _run(["validate", str(bad), "--schemas", str(tmp_path / "nope")]) == 2
    assert f"schema directory {tmp_path / 'nope'} does not exist" in capsys.readouterr().err


def test_validate_uses_the_schemas_meshc_ships(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    # An installed meshc has no schema folder beside it: `meshc validate out/ --target istio` must work.
    monkeypatch.delenv("MESHC_SCHEMAS", raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert main(["compile", str(ROOT / "examples" / "bookinfo"), "-t", "istio", "-o", str(out)]) == 0
    assert _run(["validate", str(out), "--target", "istio"]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(vs([{"route": [{"destination": {"host": "r"}}], "timeout": "soon"}])))
    assert _run(["validate", str(bad), "--target", "istio"]) == 1
    assert "timeout" in capsys.readouterr().err
    # MESHC_SCHEMAS overrides the bundled folder.
    monkeypatch.setenv("MESHC_SCHEMAS", str(tmp_path / "nope"))
    assert _run(["validate", str(bad), "--target", "istio"]) == 2
    assert f"schema directory {tmp_path / 'nope'} does not exist" in capsys.readouterr().err


def test_the_bundled_schemas_are_package_data_with_their_sources() -> None:
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["meshc.schemas"]
    shipped = {p for pattern in patterns for p in BUNDLED_SCHEMAS.glob(pattern)}
    on_disk = {p for p in BUNDLED_SCHEMAS.rglob("*") if p.is_file() and p.suffix in (".json", ".md")}
    assert shipped == on_disk and len(on_disk) > 40
    assert {"SOURCES.md", "LICENSES.md"} <= {p.name for p in shipped}
    for system in ("istio", "linkerd", "gateway-api", "consul", "smi", "nginx-service-mesh", "appmesh"):
        assert f"`{system}/`" in (BUNDLED_SCHEMAS / "LICENSES.md").read_text()
        assert any((BUNDLED_SCHEMAS / system).glob("*.json"))


def test_extract_schemas_script_reproduces_the_bundled_files(tmp_path: Path) -> None:
    # A CRD manifest wrapping a bundled schema (as a Helm template, with directives) extracts to
    # the same bytes, so a version bump only changes what upstream changed.
    import subprocess
    import sys

    bundled = BUNDLED_SCHEMAS / "istio" / "networking.istio.io_v1_Sidecar.json"
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "sidecars.networking.istio.io"},
           "spec": {"group": "networking.istio.io", "names": {"kind": "Sidecar"},
                    "versions": [{"name": "v1", "schema": {"openAPIV3Schema": json.loads(bundled.read_text())}},
                                 {"name": "v1beta1", "schema": {"openAPIV3Schema": {"type": "object"}}}]}}
    manifest = tmp_path / "crds.yaml"
    manifest.write_text("{{- if .Values.enabled }}\n" + yaml.safe_dump(crd) + "{{- end }}\n")
    out = tmp_path / "istio"
    out.mkdir()
    (out / bundled.name).write_text("{}\n")
    script = ROOT / "scripts" / "extract_schemas.py"
    r = subprocess.run([sys.executable, str(script), str(manifest), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (out / bundled.name).read_text() == bundled.read_text()
    assert not (out / "networking.istio.io_v1beta1_Sidecar.json").exists()  # only the files present
    r = subprocess.run([sys.executable, str(script), str(manifest), "-o", str(out), "--all"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and (out / "networking.istio.io_v1beta1_Sidecar.json").exists()


def test_gateway_filter_union_rules_are_evaluated() -> None:
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"},
             "spec": {"rules": [{"filters": [{"type": "URLRewrite",
                                              "requestHeaderModifier": {"set": [{"name": "a", "value": "b"}]}}],
                                 "matches": [{"path": {"type": "PathPrefix", "value": "/a//b"}}]}]}}
    msgs = messages([route], "gateway-api")
    assert any("filters[0]" in m for m in msgs)
    assert any("matches[0].path" in m for m in msgs)


def test_service_names_are_dns_1035_labels() -> None:
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "9lives"}, "spec": {"ports": [{"port": 80}]}}
    assert any(p.path == "metadata.name" for p in validate_objects([svc], None))
    svc["metadata"]["name"] = "x" * 64
    assert any(p.path == "metadata.name" for p in validate_objects([svc], None))


def test_helm_templated_crd_manifests_are_read(tmp_path: Path) -> None:
    (tmp_path / "crd.yaml").write_text("""{{- if .Values.enableThing }}
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: things.example.com
  labels:
    helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
spec:
  group: example.com
  names: {kind: Thing, plural: things}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              port: {x-kubernetes-int-or-string: true}
{{- end }}
""")
    ok = {"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "t"}, "spec": {"port": "http"}}
    assert validate_objects([ok], tmp_path) == []
    bad = {"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "t"}, "spec": {"port": 1.5}}
    assert [p.path for p in validate_objects([bad], tmp_path)] == ["spec.port"]


def test_bare_string_durations_are_checked() -> None:
    sp = {"apiVersion": "linkerd.io/v1alpha2", "kind": "ServiceProfile", "metadata": {"name": "a.default.svc.cluster.local"},
          "spec": {"routes": [{"name": "r", "condition": {"pathRegex": ".*"}, "timeout": "1s"},
                              {"name": "s", "condition": {"pathRegex": ".*"}, "timeout": "soon"}]}}
    assert [(p.path, "duration" in p.message) for p in validate_objects([sp], SCHEMAS, target="linkerd")] == [
        ("spec.routes[1].timeout", True)]


def test_validate_compiled_hook_for_compile_validate() -> None:
    from meshc.backends import compile_mesh

    from meshc.compiler import load_text
    from meshc.validate import validate_compiled

    mesh = load_text("mesh m { authz allow_by_default }\nservice a { port http 80 retry 2 on 503 }")
    bundle = compile_mesh(mesh, "gateway-api", options={"experimental": "true"})
    assert validate_compiled(bundle, "gateway-api", {"experimental": "true"}, SCHEMAS) == []
    # the same objects against the standard channel: `retry` is an unknown field there
    assert any("retry" in p.message for p in validate_compiled(bundle, "gateway-api", {}, SCHEMAS))


def test_each_kubernetes_target_declares_its_schema_folders() -> None:
    # A target lives in its module: the folders its objects are validated against are its
    # backend's SCHEMAS (validate.TARGET_DIRS knew them before), and each exists in meshc/schemas.
    from meshc import backends
    from meshc.validate import schema_dirs

    declared = {t: schema_dirs(t) for t in backends.available()}
    assert {t for t, d in declared.items() if d} == {"istio", "linkerd", "gateway-api", "consul", "nginx-mesh",
                                                     "appmesh"}
    for target, dirs in declared.items():
        for d in dirs:
            assert any((BUNDLED_SCHEMAS / d).glob("*.json")), (target, d)
    assert schema_dirs("model") == () and schema_dirs(None) == ()
