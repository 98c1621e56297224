"""Prometheus target: scrape config, golden-signal recording rules, SLO burn-rate alerts and a
Grafana dashboard, all generated from the mesh model (Prometheus 2.x config and rule-file
format, checked with `promtool` 2.42; Grafana dashboard JSON schemaVersion 39).

This target does not configure traffic: the mesh itself is compiled by another target (`native`
or `envoy`), whose sidecars export the metrics this target scrapes and aggregates. It reads only
the services, their `objective`s and `Mesh.observability`, so it can consume every mesh and
every feature in FEATURES is declared supported: nothing the mesh says is lost here.

Output:
- `prometheus.yml`: one scrape job per mesh. `sidecars=native` (default): each sidecar's admin
  `/metrics` on `host` (127.0.0.1) at the admin port the native backend allocates from
  `base_port` (read from the native backend's own `mesh.json`, so the ports always agree).
  `sidecars=envoy`: each Envoy sidecar's `/stats/prometheus` on its admin port (`admin_port`,
  default 15000 as on the envoy target) at `envoy_host`, a template where `{service}` is the
  sidecar's name (default `{service}`: Envoy sidecars share one admin port, so each runs on its
  own host). Every target carries the labels `mesh` and `service` (the sidecar's name).
- `rules/<mesh>-recording.yml`: golden signals per service (server side: the service's inbound
  listeners) and per edge (client side: the caller's outbound listeners, labels
  `src_service`/`dst_service`), at 5m: `meshc:service:request_rate5m`,
  `meshc:service:error_rate5m`, `meshc:service:success_ratio5m`,
  `meshc:service:request_duration_seconds:p50_5m` (p90, p99), and the same under `meshc:edge:`;
  then per objective the error ratio over every burn-rate window
  (`meshc:slo:error_ratio:rate5m` ... `rate3d`), the ratio over the objective's window, the
  objective itself and the remaining error budget (the average of the 5m ratio over the
  objective's window, as Sloth does, so no rule reads 30 days of raw counters). Objective
  series carry `mesh`, `service` and `slo` (e.g. `availability-99.9-30d`,
  `latency-p99-300ms-30d`).
- `rules/<mesh>-alerts.yml`: multi-window, multi-burn-rate alerts per objective (Google SRE
  workbook, ch. 5): page on 1h/5m at 14.4x and 6h/30m at 6x, ticket on 1d/2h at 3x and 3d/6h at
  1x (for a 30-day objective; other windows keep the same share of budget spent per long
  window, e.g. 2% in 1h).
- `grafana/<mesh>.json`: a row per service (rate, success, latency, outbound edges) and a
  panel per objective (error budget remaining, burn rate). Queries use only recording rules.

Sources (the names the sidecars really emit; see meshc/runtime/observability.py and Envoy's
/stats/prometheus): native `meshc_requests_total{sidecar,listener,route,upstream,status}` and
`meshc_request_duration_seconds` (seconds); Envoy `envoy_http_downstream_rq_xx` and
`envoy_http_downstream_rq_time` (milliseconds) on the inbound connection managers
(`inbound_<port>`), and `envoy_cluster_upstream_rq_xx` / `envoy_cluster_upstream_rq_time` on
the callers' `outbound|<port>|<version>|<service>` clusters for edges.

Latency objectives count the requests under the threshold from the histogram; when the
threshold falls between two buckets the count is interpolated linearly between them (what
`histogram_quantile` assumes too); above the largest finite bucket nothing is measurable (W342).
Objectives are per service: the language has no per-route objectives yet.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from meshc.backends.base import (
    FEATURES,
    Backend,
    Bundle,
    Option,
    choice,
    host_address,
    integer,
    prometheus_duration,
    text,
)
from prometheus_client.utils import floatToGoString

from meshc.diagnostics import Diagnostic
from meshc.model import FULL, Mesh, Service, Slo
from meshc.runtime.observability import LATENCY_BUCKETS as NATIVE_BUCKETS

# Envoy's default histogram buckets (milliseconds for request times), as /stats/prometheus
# prints them in its `le` label.
ENVOY_BUCKETS: tuple[float, ...] = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
                                     60000, 300000, 600000, 1800000, 3600000)

QUANTILES: tuple[tuple[str, float], ...] = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))

# (long window, short window, share of the 30-day budget spent in the long window, severity).
# For a 30-day objective the burn rates are the workbook's 14.4x, 6x, 3x and 1x.
BURN_WINDOWS: tuple[tuple[str, str, float, str], ...] = (
    ("1h", "5m", 0.02, "page"),
    ("6h", "30m", 0.05, "page"),
    ("1d", "2h", 0.10, "ticket"),
    ("3d", "6h", 0.10, "ticket"),
)
WINDOW_SECONDS: dict[str, int] = {"5m": 300, "30m": 1800, "1h": 3600, "2h": 7200, "6h": 21600,
                                  "1d": 86400, "3d": 259200}
ALERT_NAMES: dict[tuple[str, str], str] = {
    ("1h", "5m"): "MeshcSLOBurnRatePage1h",
    ("6h", "30m"): "MeshcSLOBurnRatePage6h",
    ("1d", "2h"): "MeshcSLOBurnRateTicket1d",
    ("3d", "6h"): "MeshcSLOBurnRateTicket3d",
}


@dataclass(frozen=True)
class Source:
    """Where one kind of sidecar keeps the golden signals (metric names as emitted)."""

    path: str  # the admin path Prometheus scrapes
    counter: str  # requests by status (or status class)
    error: str  # matcher selecting 5xx answers of `counter`
    bucket: str  # latency histogram buckets
    scale: float  # histogram unit -> seconds
    buckets: tuple[float, ...]
    le: Any  # bucket bound -> `le` label text
    inbound: str  # matcher: the service's inbound side
    edge_counter: str
    edge_error: str
    edge_bucket: str
    edge: str  # matcher: the callers' outbound side
    edge_dst: tuple[tuple[str, str], ...]  # label_replace steps (source label, regex) -> dst_service

    def edge_to(self, dst: str) -> str:
        """Matcher for the calls into `dst` on the callers' side (external services)."""
        if self.path == "/metrics":
            return f'listener=~"outbound[|][0-9]+[|][|]{dst}"'
        return f'envoy_cluster_name=~"outbound[|][0-9]+[|][^|]*[|]{dst}"'


def _envoy_le(b: float) -> str:
    return f"{b:g}" if b < 1e6 else str(int(b))


SOURCES: dict[str, Source] = {
    "native": Source(
        path="/metrics", counter="meshc_requests_total", error='status=~"5.."',
        bucket="meshc_request_duration_seconds_bucket", scale=1.0, buckets=NATIVE_BUCKETS, le=floatToGoString,
        inbound='listener=~"inbound[|].*"',
        edge_counter="meshc_requests_total", edge_error='status=~"5.."',
        edge_bucket="meshc_request_duration_seconds_bucket",
        edge='listener=~"(outbound|ingress)[|].*"',
        # outbound listeners name their callee; the ingress gateway's routes name theirs.
        edge_dst=(("listener", "outbound[|][0-9]+[|][|](.+)"), ("route", "ingress[|](.+)"))),
    "envoy": Source(
        path="/stats/prometheus", counter="envoy_http_downstream_rq_xx", error='envoy_response_code_class="5"',
        bucket="envoy_http_downstream_rq_time_bucket", scale=0.001, buckets=ENVOY_BUCKETS, le=_envoy_le,
        inbound='envoy_http_conn_manager_prefix=~"inbound_[0-9]+"',
        edge_counter="envoy_cluster_upstream_rq_xx", edge_error='envoy_response_code_class="5"',
        edge_bucket="envoy_cluster_upstream_rq_time_bucket",
        edge='envoy_cluster_name=~"outbound[|].*"',
        edge_dst=(("envoy_cluster_name", "outbound[|][0-9]+[|][^|]*[|](.+)"),)),
}

INF = 'le="+Inf"'


def _go_duration(ms: int) -> str:
    """Milliseconds as a Prometheus duration (largest exact unit)."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _pct(p: int) -> str:
    """Hundredths of a percent as written: 9990 -> '99.9'."""
    return f"{p / 100:g}"


def slo_name(slo: Slo) -> str:
    """A stable label value naming one objective of a service."""
    window = _go_duration(slo.window_ms)
    if slo.kind == "availability":
        return f"availability-{_pct(slo.objective)}-{window}"
    q = _pct(slo.quantile or slo.objective)
    return f"latency-p{q}-{slo.threshold_ms}ms-{window}"


def objectives(svc: Service) -> list[Slo]:
    """The service's objectives, one per label value (an objective written twice counts once)."""
    seen: dict[str, Slo] = {}
    for slo in svc.objectives:
        seen.setdefault(slo_name(slo), slo)
    return list(seen.values())


def _ratio(p: int) -> float:
    return round(p / FULL, 6)


class PrometheusBackend(Backend):
    name: ClassVar[str] = "prometheus"
    description: ClassVar[str] = ("Prometheus scrape config, golden-signal recording rules, SLO burn-rate alerts "
                                  "and a Grafana dashboard (reads objectives; the mesh is compiled by another target)")
    # It reads only objectives and observability settings: every construct is "supported"
    # because nothing the mesh says is dropped (another target compiles the traffic config).
    CAPABILITIES: ClassVar[frozenset[str]] = frozenset(FEATURES)
    OPTIONS: ClassVar[Mapping[str, Option]] = {
        "sidecars": Option("native (default) or envoy: whose admin endpoints to scrape", choice("native", "envoy")),
        "base_port": Option("native: the base_port the mesh was compiled with (default 15000)", integer(1024, 65000)),
        "host": Option("native: address of the sidecars' admin ports (default 127.0.0.1)", host_address),
        "admin_port": Option("envoy: the sidecars' admin port (default 15000)", integer(1, 65535)),
        "envoy_host": Option("envoy: host of each sidecar, `{service}` is its name (default {service})", text),
        "scrape_interval": Option("Prometheus scrape interval (default 15s)", prometheus_duration),
        "evaluation_interval": Option("rule evaluation interval (default 30s; tests use 1s)", prometheus_duration),
        "page_for": Option("`for` of the page alerts (default 2m)", prometheus_duration),
        "ticket_for": Option("`for` of the ticket alerts (default 15m)", prometheus_duration),
    }

    # ------------------------------------------------------------------ options

    def _options(self) -> None:
        """The option values (their types are checked in Backend.__init__)."""
        self.kind = self.options.get("sidecars", "native")
        self.durations: dict[str, str] = {key: self.options.get(key, default) for key, default in (
            ("scrape_interval", "15s"), ("evaluation_interval", "30s"), ("page_for", "2m"), ("ticket_for", "15m"))}

    # ------------------------------------------------------------------ entry point

    def lower(self, mesh: Mesh) -> Bundle:
        bundle = Bundle()
        self._options()
        self.mesh = mesh
        self.src = SOURCES[self.kind]
        if not mesh.observability.metrics:
            bundle.diagnostics.append(Diagnostic(
                "W341", f"mesh '{mesh.name}' turns metrics off: the generated rules and dashboard will see no data",
                mesh.observability.span, label="metrics off",
                help="remove `metrics off` from the mesh block to let the sidecars export metrics"))
        bundle.diagnostics += self.unmeasurable(mesh)
        targets = self.targets(mesh, bundle)
        if targets is None:
            return bundle
        rec, alerts = f"rules/{mesh.name}-recording.yml", f"rules/{mesh.name}-alerts.yml"
        bundle.add_yaml("prometheus.yml", self.scrape_config(targets, [rec, alerts]))
        bundle.add_yaml(rec, {"groups": self.recording_groups()})
        bundle.add_yaml(alerts, {"groups": self.alert_groups()})
        bundle.add_json(f"grafana/{mesh.name}.json", self.dashboard())
        return bundle

    def unmeasurable(self, mesh: Mesh) -> list[Diagnostic]:
        """W342: a latency threshold above the sidecars' largest finite histogram bucket."""
        top = max(self.src.buckets) * self.src.scale
        out = []
        for svc in mesh.services:
            for slo in svc.objectives:
                if slo.kind == "latency" and (slo.threshold_ms or 0) / 1000 > top:
                    out.append(Diagnostic(
                        "W342", f"latency objective of '{svc.name}' ({slo.threshold_ms}ms) is above the largest "
                        f"latency bucket of {self.kind} sidecars ({top:g}s): every request counts as fast",
                        slo.span, label="not measurable",
                        help=f"lower the threshold to at most {top:g}s, or measure it elsewhere"))
        return out

    # ------------------------------------------------------------------ scrape config

    def sidecar_services(self) -> list[Service]:
        return [s for s in self.mesh.services if s.external is None and s.ports]

    def targets(self, mesh: Mesh, bundle: Bundle) -> list[tuple[str, str]] | None:
        """(sidecar name, host:port) for every sidecar, in a stable order."""
        if self.kind == "envoy":
            port = int(self.options.get("admin_port", "15000"))
            tmpl = self.options.get("envoy_host", "{service}")
            names = [s.name for s in self.sidecar_services()]
            if any(s.expose is not None for s in self.sidecar_services()):
                names.append("ingress-gateway")
            return [(n, f"{tmpl.replace('{service}', n)}:{port}") for n in names]
        from meshc.backends.native import NativeBackend

        class AdminPortsOnly(NativeBackend):
            # Only the native sidecars' admin ports are read here: a data-plane setting the native
            # proxy cannot say (E313, e.g. a cookie `ttl`) is the native target's error, not a
            # reason to refuse the scrape config (the same mesh may run on Envoy sidecars).
            @staticmethod
            def value_gaps(mesh: Mesh) -> list[Diagnostic]:
                return []

        native = AdminPortsOnly({"base_port": self.options.get("base_port", "15000"),
                                 "host": self.options.get("host", "127.0.0.1")}).lower(mesh)
        errors = [d for d in native.diagnostics if d.severity == "error"]
        if errors:
            bundle.diagnostics += errors
            return None
        index = json.loads(native.files["mesh.json"])
        host = self.options.get("host", "127.0.0.1")
        return [(e["service"], f"{host}:{e['admin_port']}") for e in index["sidecars"]]

    def scrape_config(self, targets: list[tuple[str, str]], rule_files: list[str]) -> dict[str, Any]:
        return {
            "global": {"scrape_interval": self.durations["scrape_interval"],
                       "evaluation_interval": self.durations["evaluation_interval"]},
            "rule_files": rule_files,
            "scrape_configs": [{
                "job_name": f"meshc-{self.mesh.name}-{self.kind}",
                "metrics_path": self.src.path,
                "static_configs": [{"targets": [addr], "labels": {"mesh": self.mesh.name, "service": name}}
                                   for name, addr in targets],
            }],
        }

    # ------------------------------------------------------------------ PromQL building blocks

    def sel(self, metric: str, *matchers: str) -> str:
        return f'{metric}{{{",".join((f"mesh={json.dumps(self.mesh.name)}", *matchers))}}}'

    def svc_matchers(self, svc: Service) -> tuple[str, ...]:
        """The series measuring `svc` itself: its inbound side, or, for an external service
        (no sidecar of its own), what its callers see."""
        if svc.external is not None:
            return (self.src.edge_to(svc.name),)
        return (f"service={json.dumps(svc.name)}", self.src.inbound)

    def _metrics(self, svc: Service) -> tuple[str, str, str]:
        if svc.external is not None:
            return self.src.edge_counter, self.src.edge_error, self.src.edge_bucket
        return self.src.counter, self.src.error, self.src.bucket

    def edge_expr(self, inner: str) -> str:
        """Add src_service/dst_service labels to a per-series expression on the edge side."""
        e = f'label_replace({inner}, "src_service", "$1", "service", "(.*)")'
        for label, regex in self.src.edge_dst:
            e = f'label_replace({e}, "dst_service", "$1", "{label}", "{regex}")'
        return e

    def good_latency(self, bucket: str, matchers: tuple[str, ...], window: str, threshold_s: float) -> str:
        """Rate of requests at most `threshold_s` long, interpolated between histogram buckets."""
        t = threshold_s / self.src.scale
        bounds = self.src.buckets

        def b(le: str) -> str:
            return f"sum(rate({self.sel(bucket, *matchers, f'le={json.dumps(le)}')}[{window}]))"

        exact = [x for x in bounds if abs(x - t) < 1e-9]
        if exact:
            return b(self.src.le(exact[0]))
        lower = [x for x in bounds if x < t]
        upper = [x for x in bounds if x > t]
        if not upper:
            return b("+Inf")
        hi = upper[0]
        if not lower:
            return f"({b(self.src.le(hi))} * {t / hi:.6g})"
        lo = lower[-1]
        f = (t - lo) / (hi - lo)
        return f"({b(self.src.le(lo))} * {1 - f:.6g} + {b(self.src.le(hi))} * {f:.6g})"

    def error_ratio(self, svc: Service, slo: Slo, window: str) -> str:
        counter, error, bucket = self._metrics(svc)
        m = self.svc_matchers(svc)
        if slo.kind == "availability":
            return (f"(sum(rate({self.sel(counter, *m, error)}[{window}])) or vector(0))\n/\n"
                    f"sum(rate({self.sel(counter, *m)}[{window}]))")
        total = f"sum(rate({self.sel(bucket, *m, INF)}[{window}]))"
        good = self.good_latency(bucket, m, window, (slo.threshold_ms or 0) / 1000)
        return f"1 - (\n{good}\n/\n{total}\n)"

    # ------------------------------------------------------------------ recording rules

    def recording_groups(self) -> list[dict[str, Any]]:
        src, mesh = self.src, self.mesh
        by_svc = "mesh, service"
        by_edge = "mesh, src_service, dst_service"
        inb, edge = src.inbound, src.edge
        unit = "" if src.scale == 1.0 else f" * {src.scale:g}"
        golden: list[dict[str, Any]] = [
            {"record": "meshc:service:request_rate5m",
             "expr": f"sum by ({by_svc}) (rate({self.sel(src.counter, inb)}[5m]))"},
            # `or ... * 0`: a service without any 5xx yet has no error series; its error rate is 0.
            {"record": "meshc:service:error_rate5m",
             "expr": f"sum by ({by_svc}) (rate({self.sel(src.counter, inb, src.error)}[5m]))\n"
                     f"or\n0 * sum by ({by_svc}) (rate({self.sel(src.counter, inb)}[5m]))"},
            {"record": "meshc:service:success_ratio5m",
             "expr": "1 - meshc:service:error_rate5m / meshc:service:request_rate5m"},
        ]
        for name, q in QUANTILES:
            golden.append({
                "record": f"meshc:service:request_duration_seconds:{name}_5m",
                "expr": f"histogram_quantile({q}, sum by ({by_svc}, le) "
                        f"(rate({self.sel(src.bucket, inb)}[5m]))){unit}"})
        golden += [
            {"record": "meshc:edge:request_rate5m",
             "expr": f"sum by ({by_edge}) ({self.edge_expr(f'rate({self.sel(src.edge_counter, edge)}[5m])')})"},
            {"record": "meshc:edge:error_rate5m",
             "expr": f"sum by ({by_edge}) "
                     f"({self.edge_expr(f'rate({self.sel(src.edge_counter, edge, src.edge_error)}[5m])')})\n"
                     f"or\n0 * meshc:edge:request_rate5m"},
            {"record": "meshc:edge:success_ratio5m",
             "expr": "1 - meshc:edge:error_rate5m / meshc:edge:request_rate5m"},
        ]
        for name, q in QUANTILES:
            golden.append({
                "record": f"meshc:edge:request_duration_seconds:{name}_5m",
                "expr": f"histogram_quantile({q}, sum by ({by_edge}, le) "
                        f"({self.edge_expr(f'rate({self.sel(src.edge_bucket, edge)}[5m])')})){unit}"})
        groups = [{"name": f"meshc-{mesh.name}-golden-signals", "interval": self.durations["evaluation_interval"],
                   "rules": golden}]
        slo_rules: list[dict[str, Any]] = []
        for svc in self.mesh.services:
            for slo in objectives(svc):
                labels = self.slo_labels(svc, slo)
                windows = sorted({w for long, short, _, _ in BURN_WINDOWS for w in (long, short)},
                                 key=WINDOW_SECONDS.__getitem__)
                for w in windows:
                    slo_rules.append({"record": f"meshc:slo:error_ratio:rate{w}",
                                      "expr": self.error_ratio(svc, slo, w), "labels": dict(labels)})
                sel = self.slo_selector(svc, slo)
                period = _go_duration(slo.window_ms)
                slo_rules += [
                    {"record": "meshc:slo:objective_ratio", "expr": f"vector({_ratio(slo.objective)})",
                     "labels": dict(labels)},
                    {"record": "meshc:slo:error_ratio:objective_window",
                     "expr": f"avg_over_time(meshc:slo:error_ratio:rate5m{sel}[{period}])", "labels": dict(labels)},
                    {"record": "meshc:slo:error_budget_remaining_ratio",
                     "expr": f"1 - meshc:slo:error_ratio:objective_window{sel} / {_ratio(FULL - slo.objective):g}",
                     "labels": dict(labels)},
                ]
        if slo_rules:
            groups.append({"name": f"meshc-{mesh.name}-slo", "interval": self.durations["evaluation_interval"],
                           "rules": slo_rules})
        return groups

    def slo_labels(self, svc: Service, slo: Slo) -> dict[str, str]:
        return {"mesh": self.mesh.name, "service": svc.name, "slo": slo_name(slo)}

    def slo_selector(self, svc: Service, slo: Slo) -> str:
        return "{" + ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(self.slo_labels(svc, slo).items())) + "}"

    # ------------------------------------------------------------------ alerting rules

    def alert_groups(self) -> list[dict[str, Any]]:
        rules: list[dict[str, Any]] = []
        for svc in self.mesh.services:
            for slo in objectives(svc):
                sel = self.slo_selector(svc, slo)
                budget = (FULL - slo.objective) / FULL
                for long, short, share, severity in BURN_WINDOWS:
                    factor = round(share * slo.window_ms / 1000 / WINDOW_SECONDS[long], 4)
                    threshold = f"{factor * budget:.6g}"
                    rules.append({
                        "alert": ALERT_NAMES[(long, short)],
                        "expr": (f"meshc:slo:error_ratio:rate{long}{sel} > {threshold}\n"
                                 f"and\nmeshc:slo:error_ratio:rate{short}{sel} > {threshold}"),
                        "for": self.durations[f"{severity}_for"],
                        "labels": {**self.slo_labels(svc, slo), "severity": severity,
                                   "long_window": long, "short_window": short, "burn_rate": f"{factor:g}"},
                        "annotations": {
                            "summary": f"{svc.name}: {self.describe(slo)} is burning its error budget "
                                       f"{factor:g}x too fast ({long}/{short} windows)",
                            "description": f"error ratio over {long} and over {short} above {float(threshold):.4%} "
                                           f"({factor:g}x the budget of {budget:.4%} over "
                                           f"{_go_duration(slo.window_ms)}); objective written at {slo.span}",
                        },
                    })
        if not rules:
            return []
        return [{"name": f"meshc-{self.mesh.name}-slo-alerts", "interval": self.durations["evaluation_interval"],
                 "rules": rules}]

    @staticmethod
    def describe(slo: Slo) -> str:
        if slo.kind == "availability":
            return f"availability {_pct(slo.objective)}%"
        return f"latency p{_pct(slo.quantile or slo.objective)} {slo.threshold_ms}ms"

    # ------------------------------------------------------------------ dashboard

    def dashboard(self) -> dict[str, Any]:
        panels: list[dict[str, Any]] = []
        y = 0
        pid = iter(range(1, 1_000_000))
        ds = {"type": "prometheus", "uid": "${datasource}"}

        def ts(title: str, targets: list[tuple[str, str]], x: int, w: int, unit: str,
               kind: str = "timeseries") -> dict[str, Any]:
            return {"id": next(pid), "type": kind, "title": title, "datasource": ds,
                    "gridPos": {"h": 8, "w": w, "x": x, "y": y},
                    "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                    "targets": [{"refId": chr(65 + i), "expr": e, "legendFormat": lg, "datasource": ds}
                                for i, (e, lg) in enumerate(targets)]}

        m = json.dumps(self.mesh.name)
        for svc in self.mesh.services:
            if svc.external is not None or not svc.ports:
                continue
            s = f"{{mesh={m},service={json.dumps(svc.name)}}}"
            e = f"{{mesh={m},src_service={json.dumps(svc.name)}}}"
            panels.append({"id": next(pid), "type": "row", "title": svc.name, "collapsed": False,
                           "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
            y += 1
            panels += [
                ts("Request rate", [(f"meshc:service:request_rate5m{s}", "requests/s")], 0, 6, "reqps"),
                ts("Success rate", [(f"meshc:service:success_ratio5m{s}", "success")], 6, 6, "percentunit"),
                ts("Latency", [(f"meshc:service:request_duration_seconds:{q}_5m{s}", q) for q, _ in QUANTILES],
                   12, 6, "s"),
                ts("Outbound success by callee", [(f"meshc:edge:success_ratio5m{e}", "{{dst_service}}")],
                   18, 6, "percentunit"),
            ]
            y += 8
            x = 0
            for slo in objectives(svc):
                sel = self.slo_selector(svc, slo)
                panels.append(ts(f"{self.describe(slo)}: error budget remaining",
                                 [(f"meshc:slo:error_budget_remaining_ratio{sel}", "budget left")],
                                 x, 6, "percentunit", "stat"))
                panels.append(ts(f"{self.describe(slo)}: burn rate",
                                 [(f"meshc:slo:error_ratio:rate{w}{sel} / (1 - meshc:slo:objective_ratio{sel})", w)
                                  for w in ("5m", "1h", "6h", "1d")], x + 6, 6, "x"))
                x += 12
                if x >= 24:
                    x, y = 0, y + 8
            if x:
                y += 8
        return {
            "uid": f"meshc-{self.mesh.name}"[:40],
            "title": f"meshc mesh {self.mesh.name}",
            "tags": ["meshc", "generated"],
            "schemaVersion": 39,
            "version": 1,
            "editable": False,
            "time": {"from": "now-6h", "to": "now"},
            "refresh": "30s",
            "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                     "label": "Prometheus"}]},
            "annotations": {"list": []},
            "panels": panels,
        }
