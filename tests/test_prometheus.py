"""The prometheus target: generated configs pass the real `promtool` (check config, check rules),
the burn-rate alerts fire and stay quiet as the SRE workbook says (`promtool test rules`), and
every dashboard query and every raw metric the rules read exists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from meshc.backends import compile_mesh

from meshc.compiler import load, load_text
from meshc.model import Mesh
from meshc.runtime.observability import Metrics

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*/*.mesh") if p.parent.name != "multifile")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package `prometheus`)")

# Metric families Envoy 1.40 really exposes on /stats/prometheus for an HTTP connection
# manager and a cluster (captured from `envoy` with one listener and one cluster).
ENVOY_FAMILIES = {
    "envoy_http_downstream_rq_xx", "envoy_http_downstream_rq_total", "envoy_http_downstream_rq_time_bucket",
    "envoy_http_downstream_rq_time_count", "envoy_http_downstream_rq_time_sum", "envoy_cluster_upstream_rq_xx",
    "envoy_cluster_upstream_rq_time_bucket", "envoy_cluster_upstream_rq_time_count",
}
ENVOY_LE = {"0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000", "30000",
            "60000", "300000", "600000", "1800000", "3600000", "+Inf"}


def _meshes() -> list[tuple[str, Mesh]]:
    out = [(p.stem, load([p])) for p in EXAMPLES]
    out.append(("multifile", load(sorted((ROOT / "examples/multifile").glob("*.mesh"))[::-1])))
    return out


def _compile(mesh: Mesh, **options: str) -> dict[str, bytes]:
    return compile_mesh(mesh, "prometheus", options=options).files


def _write(files: dict[str, bytes], out: Path) -> Path:
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    return out


def _native_families() -> set[str]:
    m = Metrics()
    m.observe_request("s", "inbound|80||0", "r", "c", 200, 0.01)
    return {s.name for fam in m.registry.collect() for s in fam.samples}


SLO_MESH = """
mesh slo { mtls disabled authz allow_by_default }
service web { port http 8080 calls api
  objective availability 99.9% over 30d
  objective latency p99 300ms }
service api { port http 9080 objective availability 99% over 7d }
external pay { host "pay.example" port http 80 }
"""


# --------------------------------------------------------------------------- promtool checks


@needs_promtool
@pytest.mark.parametrize("sidecars", ["native", "envoy"])
def test_promtool_accepts_every_example(tmp_path: Path, sidecars: str) -> None:
    for name, mesh in _meshes():
        out = _write(_compile(mesh, sidecars=sidecars), tmp_path / sidecars / name)
        r = subprocess.run([PROMTOOL, "check", "config", str(out / "prometheus.yml")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"{name}: {r.stdout}{r.stderr}"
        rules = sorted(str(p) for p in (out / "rules").glob("*.yml"))
        r = subprocess.run([PROMTOOL, "check", "rules", *rules], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"{name}: {r.stdout}{r.stderr}"


def test_scrape_targets_are_the_native_admin_ports() -> None:
    mesh = load([ROOT / "examples/bookinfo/bookinfo.mesh"])
    native = json.loads(compile_mesh(mesh, "native", options={"base_port": "21000"}).files["mesh.json"])
    cfg = yaml.safe_load(_compile(mesh, base_port="21000")["prometheus.yml"])
    job = cfg["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    got = {sc["labels"]["service"]: sc["targets"][0] for sc in job["static_configs"]}
    assert got == {e["service"]: f"127.0.0.1:{e['admin_port']}" for e in native["sidecars"]}
    assert {sc["labels"]["mesh"] for sc in job["static_configs"]} == {mesh.name}


def test_envoy_scrape_targets() -> None:
    mesh = load([ROOT / "examples/bookinfo/bookinfo.mesh"])
    cfg = yaml.safe_load(_compile(mesh, sidecars="envoy", admin_port="19000")["prometheus.yml"])
    job = cfg["scrape_configs"][0]
    assert job["metrics_path"] == "/stats/prometheus"
    got = {sc["labels"]["service"]: sc["targets"][0] for sc in job["static_configs"]}
    envoy_index = json.loads(compile_mesh(mesh, "envoy").files["index.json"])
    assert set(got) == set(envoy_index["sidecars"])
    assert got["reviews"] == "reviews:19000"
    cfg = yaml.safe_load(_compile(mesh, sidecars="envoy", envoy_host="10.0.0.{service}")["prometheus.yml"])
    assert cfg["scrape_configs"][0]["static_configs"][0]["targets"][0].startswith("10.0.0.")


def test_bad_options_are_refused_with_what_was_expected() -> None:
    from meshc.backends import OptionError

    mesh = load_text(SLO_MESH)
    for opts, needle in (({"sidecars": "linkerd"}, "expected one of native, envoy"),
                         ({"evaluation_interval": "fast"}, "expected a Prometheus duration"),
                         ({"base_port": "x"}, "expected a whole number from 1024 to 65000")):
        with pytest.raises(OptionError, match=needle):
            compile_mesh(mesh, "prometheus", options=opts)


def test_metrics_off_warns() -> None:
    mesh = load_text("mesh m { metrics off }\nservice a { port http 80 objective availability 99% }")
    bundle = compile_mesh(mesh, "prometheus")
    assert [d.code for d in bundle.diagnostics] == ["W341"]


def test_unmeasurable_latency_threshold_warns() -> None:
    mesh = load_text("mesh m { }\nservice a { port http 80 objective latency p99 45s }")
    native = compile_mesh(mesh, "prometheus").diagnostics
    assert [d.code for d in native] == ["W342"] and "(30s)" in native[0].message
    assert native[0].span.line == 2
    assert compile_mesh(mesh, "prometheus", options={"sidecars": "envoy"}).diagnostics == []  # 3600 s buckets


@needs_promtool
def test_objectives_differing_only_by_window_get_their_own_series(tmp_path: Path) -> None:
    mesh = load_text("mesh m { }\nservice a { port http 80\n  objective availability 99.9% over 30d\n"
                     "  objective availability 99.9% over 7d\n  objective availability 99.9% over 7d }")
    files = _compile(mesh)
    rules = _alert_rules(files, "m")
    assert sorted({k[2] for k in rules}) == ["availability-99.9-30d", "availability-99.9-7d"]
    # 7 days: the same share of budget per long window, so lower burn rates than for 30 days.
    assert rules[("MeshcSLOBurnRatePage1h", "a", "availability-99.9-7d")]["labels"]["burn_rate"] == "3.36"
    out = _write(files, tmp_path)
    r = subprocess.run([PROMTOOL, "check", "rules", *sorted(str(p) for p in (out / "rules").glob("*.yml"))],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_deterministic() -> None:
    for _, mesh in _meshes():
        assert _compile(mesh) == _compile(mesh)


# --------------------------------------------------------------------------- names that exist


def _recorded(files: dict[str, bytes]) -> set[str]:
    names = set()
    for rel, data in files.items():
        if rel.startswith("rules/"):
            for g in yaml.safe_load(data)["groups"]:
                names.update(r["record"] for r in g["rules"] if "record" in r)
    return names


_FUNCS = {"sum", "rate", "by", "histogram_quantile", "label_replace", "vector", "avg_over_time", "and", "or",
          "le", "on", "ignoring"}


def _metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values are not names
    expr = re.sub(r"\{[^}]*\}", "{}", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range durations
    expr = re.sub(r"\([^()]*\)(?=\s*\()", "", expr)  # `by (labels)` groupings
    names = {m for m in re.findall(r"[a-zA-Z_:][\w:]*", expr) if m not in _FUNCS}
    return {n for n in names if not re.fullmatch(r"\d.*", n)} - {"mesh", "service", "src_service", "dst_service"}


def test_dashboard_queries_use_recorded_series_only() -> None:
    checked = 0
    for name, mesh in _meshes():
        files = _compile(mesh)
        recorded = _recorded(files)
        dash = json.loads(files[f"grafana/{mesh.name}.json"])
        rows = [p for p in dash["panels"] if p["type"] == "row"]
        assert [r["title"] for r in rows] == [s.name for s in mesh.services if s.external is None and s.ports], name
        for panel in dash["panels"]:
            for t in panel.get("targets", []):
                used = _metric_names(t["expr"])
                assert used, t["expr"]
                assert used <= recorded, (name, panel["title"], used - recorded)
                checked += 1
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), name
        boxes = [(p["gridPos"]["x"], p["gridPos"]["y"], p["gridPos"]["w"], p["gridPos"]["h"]) for p in dash["panels"]]
        for i, (x, y, w, h) in enumerate(boxes):  # Grafana's 24-column grid: no panel overlaps another
            assert x + w <= 24
            for x2, y2, w2, h2 in boxes[i + 1:]:
                assert x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y, (name, boxes[i])
        slos = sum(len(s.objectives) for s in mesh.services if s.external is None)
        assert sum("error budget" in p["title"] for p in dash["panels"]) == slos
    assert checked > 50


@pytest.mark.parametrize("sidecars", ["native", "envoy"])
def test_rules_read_only_metrics_the_sidecars_emit(sidecars: str) -> None:
    emitted = _native_families() if sidecars == "native" else ENVOY_FAMILIES
    les = {json.dumps(x) for x in ENVOY_LE}
    if sidecars == "native":
        m = Metrics()
        m.observe_request("s", "l", "r", "c", 200, 0.01)
        les = {json.dumps(s.labels["le"]) for fam in m.registry.collect() for s in fam.samples if "le" in s.labels}
    files = _compile(load_text(SLO_MESH), sidecars=sidecars)
    recorded = _recorded(files)
    for rel, data in files.items():
        if not rel.startswith("rules/"):
            continue
        for g in yaml.safe_load(data)["groups"]:
            for r in g["rules"]:
                raw = _metric_names(r["expr"]) - recorded
                assert raw <= emitted, (r.get("record") or r.get("alert"), raw - emitted)
                for le in re.findall(r'le=("[^"]*")', r["expr"]):
                    assert le in les, (r["expr"], le)


# --------------------------------------------------------------------------- promtool test rules


def _alert_rules(files: dict[str, bytes], mesh: str) -> dict[tuple[str, str, str], dict[str, Any]]:
    out = {}
    for g in yaml.safe_load(files[f"rules/{mesh}-alerts.yml"])["groups"]:
        for r in g["rules"]:
            out[(r["alert"], r["labels"]["service"], r["labels"]["slo"])] = r
    return out


BURN = """
mesh burn { mtls disabled authz allow_by_default }
service r2 { port http 80 objective availability 99.9% }
service r1 { port http 80 objective availability 99.9% }
service r04 { port http 80 objective availability 99.9% }
service r02 { port http 80 objective availability 99.9% }
service r005 { port http 80 objective availability 99.9% }
service recovered { port http 80 objective availability 99.9% }
service slow20 { port http 80 objective latency p99 300ms }
service slow8 { port http 80 objective latency p99 300ms }
"""
ALL = ("MeshcSLOBurnRatePage1h", "MeshcSLOBurnRatePage6h", "MeshcSLOBurnRateTicket1d", "MeshcSLOBurnRateTicket3d")
# service -> (errors per 1000 requests per minute, or a latency split; the alerts that must fire)
EXPECT: dict[str, tuple[str, set[str]]] = {
    "r2": ("err:20", set(ALL)),  # 2% > 14.4 x 0.1%: every pair
    "r1": ("err:10", set(ALL[1:])),  # 1%: not the 1h/5m pair
    "r04": ("err:4", set(ALL[2:])),  # 0.4%: tickets only
    "r02": ("err:2", {ALL[3]}),  # 0.2%: only the 3d/6h pair (1x)
    "r005": ("err:0.5", set()),  # 0.05%: within budget
    "recovered": ("recovered", set(ALL[1:])),  # 2% until 10m ago: the 5m window resets the page
    "slow20": ("lat:800:800", set(ALL)),  # 20% above 300 ms (budget 1%)
    "slow8": ("lat:900:1000", set(ALL[1:])),  # 900 under 250 ms, 1000 under 500 ms: 8% (interpolated)
}
MINUTES = 70


def _series(svc: str, spec: str) -> list[dict[str, str]]:
    base = f'mesh="burn",service="{svc}",listener="inbound|80||0"'
    kind, *args = spec.split(":")
    if kind == "err":
        bad = float(args[0])
        return [{"series": f'meshc_requests_total{{{base},status="200"}}', "values": f"0+{1000 - bad:g}x{MINUTES}"},
                {"series": f'meshc_requests_total{{{base},status="503"}}', "values": f"0+{bad:g}x{MINUTES}"}]
    if kind == "recovered":
        return [{"series": f'meshc_requests_total{{{base},status="200"}}', "values": f"0+980x{MINUTES}"},
                {"series": f'meshc_requests_total{{{base},status="503"}}',
                 "values": f"0+20x{MINUTES - 10} {20 * (MINUTES - 10)}+0x10"}]
    lo, hi = args
    return [{"series": f'meshc_request_duration_seconds_bucket{{{base},le="{le}"}}', "values": f"0+{n}x{MINUTES}"}
            for le, n in (("0.25", lo), ("0.5", hi), ("+Inf", "1000"))]


@needs_promtool
def test_burn_rate_alerts_fire_and_stay_quiet(tmp_path: Path) -> None:
    files = _compile(load_text(BURN), evaluation_interval="1m", page_for="2m", ticket_for="15m")
    out = _write(files, tmp_path)
    rules = _alert_rules(files, "burn")
    assert {k[0] for k in rules} == set(ALL)
    series = [s for svc, (spec, _) in EXPECT.items() for s in _series(svc, spec)]
    tests = []
    for alert in ALL:
        exp = []
        for svc, (_, fires) in sorted(EXPECT.items()):
            if alert in fires:
                r = next(v for k, v in rules.items() if k[0] == alert and k[1] == svc)
                exp.append({"exp_labels": {"alertname": alert, **r["labels"]}, "exp_annotations": r["annotations"]})
        tests.append({"eval_time": f"{MINUTES}m", "alertname": alert, "exp_alerts": exp})
    # Before the `for` durations have passed nothing fires, whatever the burn.
    early = [{"eval_time": "1m", "alertname": a, "exp_alerts": []} for a in ALL]
    spec = {"rule_files": [str(out / "rules/burn-recording.yml"), str(out / "rules/burn-alerts.yml")],
            "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": tests + early}]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(spec, sort_keys=True))
    r = subprocess.run([PROMTOOL, "test", "rules", str(tmp_path / "test.yml")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def _sel(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


@needs_promtool
def test_recording_rules_values(tmp_path: Path) -> None:
    """Golden signals computed from known counters: rate, success ratio, quantile, edges."""
    mesh = load_text("mesh g { mtls disabled authz allow_by_default }\n"
                     "service web { port http 80 calls api }\nservice api { port http 90 }")
    out = _write(_compile(mesh), tmp_path)
    inbound = 'mesh="g",service="api",listener="inbound|90||0"'
    edge = 'mesh="g",service="web",sidecar="web",listener="outbound|90||api",route="api|default"'
    series = [
        {"series": f'meshc_requests_total{{{inbound},status="200"}}', "values": "0+540x20"},
        {"series": f'meshc_requests_total{{{inbound},status="500"}}', "values": "0+60x20"},
        {"series": 'meshc_requests_total{mesh="g",service="web",listener="inbound|80||0",status="200"}',
         "values": "0+60x20"},
        {"series": f'meshc_requests_total{{{edge},status="200"}}', "values": "0+300x20"},
        {"series": f'meshc_requests_total{{{edge},status="503"}}', "values": "0+300x20"},
        {"series": f'meshc_request_duration_seconds_bucket{{{inbound},le="0.1"}}', "values": "0+300x20"},
        {"series": f'meshc_request_duration_seconds_bucket{{{inbound},le="0.25"}}', "values": "0+600x20"},
        {"series": f'meshc_request_duration_seconds_bucket{{{inbound},le="+Inf"}}', "values": "0+600x20"},
    ]
    exprs = [
        ("meshc:service:request_rate5m", {"mesh": "g", "service": "api"}, 10),
        ("meshc:service:success_ratio5m", {"mesh": "g", "service": "api"}, 0.9),
        ("meshc:service:request_duration_seconds:p50_5m", {"mesh": "g", "service": "api"}, 0.1),
        # No 5xx series at all: the error rate is 0, not absent.
        ("meshc:service:error_rate5m", {"mesh": "g", "service": "web"}, 0),
        ("meshc:service:success_ratio5m", {"mesh": "g", "service": "web"}, 1),
        ("meshc:edge:request_rate5m", {"mesh": "g", "src_service": "web", "dst_service": "api"}, 10),
        ("meshc:edge:success_ratio5m", {"mesh": "g", "src_service": "web", "dst_service": "api"}, 0.5),
    ]
    spec = {"rule_files": [str(out / "rules/g-recording.yml")], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": [
                {"expr": _sel(name, labels), "eval_time": "10m", "exp_samples": [{"labels": _sel(name, labels),
                                                                    "value": value}]}
                for name, labels, value in exprs]}]}
    (tmp_path / "t.yml").write_text(yaml.safe_dump(spec))
    r = subprocess.run([PROMTOOL, "test", "rules", str(tmp_path / "t.yml")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_envoy_recording_rules_values(tmp_path: Path) -> None:
    """Envoy-shaped series: status classes, millisecond buckets, edges from cluster names."""
    mesh = load_text("mesh e { mtls disabled authz allow_by_default }\n"
                     "service web { port http 80 calls api }\n"
                     "service api { port http 90 objective latency p99 300ms }")
    out = _write(_compile(mesh, sidecars="envoy"), tmp_path)
    inbound = 'mesh="e",service="api",envoy_http_conn_manager_prefix="inbound_90"'
    cluster = 'mesh="e",service="web",envoy_cluster_name="outbound|90|v1|api"'
    series = [
        {"series": f'envoy_http_downstream_rq_xx{{{inbound},envoy_response_code_class="2"}}', "values": "0+450x20"},
        {"series": f'envoy_http_downstream_rq_xx{{{inbound},envoy_response_code_class="5"}}', "values": "0+150x20"},
        {"series": f'envoy_http_downstream_rq_time_bucket{{{inbound},le="250"}}', "values": "0+300x20"},
        {"series": f'envoy_http_downstream_rq_time_bucket{{{inbound},le="500"}}', "values": "0+600x20"},
        {"series": f'envoy_http_downstream_rq_time_bucket{{{inbound},le="+Inf"}}', "values": "0+600x20"},
        {"series": f'envoy_cluster_upstream_rq_xx{{{cluster},envoy_response_code_class="2"}}', "values": "0+60x20"},
        {"series": f'envoy_cluster_upstream_rq_time_bucket{{{cluster},le="10"}}', "values": "0+60x20"},
        {"series": f'envoy_cluster_upstream_rq_time_bucket{{{cluster},le="+Inf"}}', "values": "0+60x20"},
    ]
    api = {"mesh": "e", "service": "api"}
    edge = {"mesh": "e", "src_service": "web", "dst_service": "api"}
    slo = {**api, "slo": "latency-p99-300ms-30d"}
    exprs = [
        ("meshc:service:request_rate5m", api, 10),
        ("meshc:service:success_ratio5m", api, 0.75),
        ("meshc:service:request_duration_seconds:p50_5m", api, 0.25),  # milliseconds -> seconds
        ("meshc:edge:request_rate5m", edge, 1),
        ("meshc:edge:success_ratio5m", edge, 1),
        ("meshc:edge:request_duration_seconds:p99_5m", edge, 0.0099),
        # under 300 ms: 300 x 0.8 + 600 x 0.2 = 360 of 600 -> 40% slow
        ("meshc:slo:error_ratio:rate5m", slo, 0.4),
    ]
    spec = {"rule_files": [str(out / "rules/e-recording.yml")], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": [
                {"expr": _sel(name, labels), "eval_time": "10m", "exp_samples": [{"labels": _sel(name, labels),
                                                                                 "value": value}]}
                for name, labels, value in exprs]}]}
    (tmp_path / "t.yml").write_text(yaml.safe_dump(spec))
    r = subprocess.run([PROMTOOL, "test", "rules", str(tmp_path / "t.yml")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
