"""`meshc stat` and `meshc top`: live golden signals of a running mesh, read from the sidecars'
admin endpoints (like `linkerd viz stat` / `linkerd viz top`).

Where the sidecars are:
- `meshc stat FILE.mesh [--base-port N]`: the admin ports the native backend allocates (what
  `meshc up FILE.mesh --base-port N` runs);
- `--index DIR/mesh.json` (or DIR): the index `meshc up --out DIR` / `--target native` wrote;
- `--admin [NAME=]HOST:PORT`, repeatable: any sidecar's admin address. Native sidecars serve
  `/metrics`; Envoy sidecars `/stats/prometheus` (tried when `/metrics` answers 404). Envoy does
  not name its service in its metrics: give NAME= (default: the address).

What is read (metric names as the sidecars emit them; parsed with prometheus_client.parser):
native `meshc_requests_total{sidecar,listener,route,upstream,status}` and
`meshc_request_duration_seconds`; Envoy `envoy_http_downstream_rq_xx`/`_rq_time` on the
inbound connection managers and `envoy_cluster_upstream_rq_xx`/`_rq_time` on the
`outbound|<port>|<version>|<service>` clusters.

Per service (its inbound side) and per edge (the caller's outbound side: src -> dst):
`requests` and `errors` (5xx) since the sidecar started, `success_rate`, latency quantiles
`latency_ms` (p50/p90/p99, interpolated in the histogram buckets as Prometheus does), and `rps`
over the last interval (two scrapes `--interval` apart). `meshc top` lists routes instead,
busiest first. Both refresh every `--interval` seconds until Ctrl-C (or `--count` frames);
`--once` prints one frame, `--format json` a JSON document for scripts.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))


# --------------------------------------------------------------------------- scraping


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class Scrape:
    target: Target
    text: str | None  # None: unreachable
    error: str = ""


def fetch(target: Target, timeout: float = 2.0) -> Scrape:
    """The sidecar's Prometheus text: /metrics (native), else /stats/prometheus (Envoy)."""
    last = ""
    for path in ("/metrics", "/stats/prometheus"):
        try:
            with urllib.request.urlopen(f"http://{target.address}{path}", timeout=timeout) as r:  # noqa: S310
                return Scrape(target, r.read().decode("utf-8", "replace"))
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code} on {path}"
            if e.code != 404:
                break
        except (OSError, ValueError) as e:
            last = str(getattr(e, "reason", e))
            break
    return Scrape(target, None, last)


def scrape_all(targets: list[Target]) -> list[Scrape]:
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(targets)))) as pool:
        return list(pool.map(fetch, targets))


# --------------------------------------------------------------------------- aggregation


@dataclass
class Signals:
    """Counters of one service, edge or route: requests, 5xx, and cumulative latency buckets."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound (seconds) -> count

    def add(self, requests: float = 0.0, errors: float = 0.0) -> None:
        self.requests += requests
        self.errors += errors

    def add_bucket(self, le: float, count: float) -> None:
        self.buckets[le] = self.buckets.get(le, 0.0) + count

    def minus(self, before: Signals | None) -> Signals:
        if before is None:
            return self
        return Signals(max(0.0, self.requests - before.requests), max(0.0, self.errors - before.errors),
                       {le: max(0.0, c - before.buckets.get(le, 0.0)) for le, c in self.buckets.items()})


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile on cumulative buckets (seconds), linear within a bucket."""
    bounds = sorted(buckets)
    if not bounds or bounds[-1] != float("inf"):
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if c >= rank:
            if b == float("inf"):
                return prev_bound  # in the +Inf bucket: the highest finite bound
            if c == prev_count:
                return b
            return prev_bound + (b - prev_bound) * (rank - prev_count) / (c - prev_count)
        prev_bound, prev_count = b, c
    return prev_bound


Key = tuple[str, ...]


@dataclass
class Frame:
    """Signals of one scrape round: per service, per edge (src, dst), per route."""

    services: dict[Key, Signals] = field(default_factory=dict)
    edges: dict[Key, Signals] = field(default_factory=dict)
    routes: dict[Key, Signals] = field(default_factory=dict)
    down: dict[str, str] = field(default_factory=dict)  # sidecar -> error
    at: float = 0.0


def _get(table: dict[Key, Signals], key: Key) -> Signals:
    s = table.get(key)
    if s is None:
        s = table[key] = Signals()
    return s


def _native_dst(labels: dict[str, str]) -> str | None:
    """The callee of a native outbound/ingress series (see backends/native.py for the names)."""
    listener = labels.get("listener", "")
    if listener.startswith("outbound|"):
        return listener.split("|", 3)[3] if listener.count("|") >= 3 else None
    if listener.startswith("ingress|"):
        route = labels.get("route", "")
        return route.split("|", 1)[1] if route.startswith("ingress|") else "-"
    return None


def _envoy_dst(cluster: str) -> str | None:
    parts = cluster.split("|")
    return parts[3] if len(parts) == 4 and parts[0] == "outbound" else None


def parse_frame(scrapes: Iterable[Scrape]) -> Frame:
    frame = Frame(at=time.monotonic())
    for sc in scrapes:
        if sc.text is None:
            frame.down[sc.target.name] = sc.error
            continue
        for fam in text_string_to_metric_families(sc.text):
            for s in fam.samples:
                _sample(frame, sc.target, s.name, s.labels, s.value)
    return frame


def _sample(frame: Frame, target: Target, name: str, labels: dict[str, str], value: float) -> None:
    # The parser names counter samples `<family>_total` whether or not the exposition did
    # (Envoy writes `envoy_http_downstream_rq_xx` without the suffix).
    name = name.removesuffix("_total")
    if name == "meshc_requests":
        src = labels.get("sidecar", target.name)
        err = value if labels.get("status", "").startswith("5") else 0.0
        listener = labels.get("listener", "")
        if listener.startswith("inbound|"):
            _get(frame.services, (src,)).add(value, err)
            return
        dst = _native_dst(labels)
        if dst is not None:
            _get(frame.edges, (src, dst)).add(value, err)
            _get(frame.routes, (src, dst, labels.get("route", ""))).add(value, err)
    elif name == "meshc_request_duration_seconds_bucket":
        src = labels.get("sidecar", target.name)
        le = float(labels["le"])
        if labels.get("listener", "").startswith("inbound|"):
            _get(frame.services, (src,)).add_bucket(le, value)
            return
        dst = _native_dst(labels)
        if dst is not None:
            _get(frame.edges, (src, dst)).add_bucket(le, value)
            _get(frame.routes, (src, dst, labels.get("route", ""))).add_bucket(le, value)
    elif name == "envoy_http_downstream_rq_xx" and labels.get("envoy_http_conn_manager_prefix", "").startswith(
            "inbound_"):
        err = value if labels.get("envoy_response_code_class") == "5" else 0.0
        _get(frame.services, (target.name,)).add(value, err)
    elif name == "envoy_http_downstream_rq_time_bucket" and labels.get(
            "envoy_http_conn_manager_prefix", "").startswith("inbound_"):
        _get(frame.services, (target.name,)).add_bucket(float(labels["le"]) / 1000, value)
    elif name == "envoy_cluster_upstream_rq_xx":
        dst = _envoy_dst(labels.get("envoy_cluster_name", ""))
        if dst is not None:
            err = value if labels.get("envoy_response_code_class") == "5" else 0.0
            _get(frame.edges, (target.name, dst)).add(value, err)
            _get(frame.routes, (target.name, dst, labels["envoy_cluster_name"])).add(value, err)
    elif name == "envoy_cluster_upstream_rq_time_bucket":
        dst = _envoy_dst(labels.get("envoy_cluster_name", ""))
        if dst is not None:
            le = float(labels["le"]) / 1000
            _get(frame.edges, (target.name, dst)).add_bucket(le, value)
            _get(frame.routes, (target.name, dst, labels["envoy_cluster_name"])).add_bucket(le, value)


def summarize(now: Signals, before: Signals | None, seconds: float | None) -> dict[str, Any]:
    """One row: cumulative counts and latency; rate and windowed success over the interval."""
    row: dict[str, Any] = {
        "requests": int(now.requests),
        "errors": int(now.errors),
        "success_rate": None if now.requests == 0 else round(1 - now.errors / now.requests, 6),
        "latency_ms": {name: _ms(quantile(q, now.buckets)) for name, q in QUANTILES},
        "rps": None,
        "window_success_rate": None,
    }
    if seconds:
        delta = now.minus(before)
        row["rps"] = round(delta.requests / seconds, 3)
        if delta.requests:
            row["window_success_rate"] = round(1 - delta.errors / delta.requests, 6)
    return row


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def report(frame: Frame, before: Frame | None, targets: list[Target], mesh: str | None) -> dict[str, Any]:
    seconds = (frame.at - before.at) if before is not None else None

    def rows(table: str, keys: tuple[str, ...]) -> list[dict[str, Any]]:
        now_t: dict[Key, Signals] = getattr(frame, table)
        old_t: dict[Key, Signals] = getattr(before, table) if before is not None else {}
        return [{**dict(zip(keys, k, strict=True)), **summarize(now_t[k], old_t.get(k), seconds)}
                for k in sorted(now_t)]

    return {
        "mesh": mesh,
        "interval_s": None if seconds is None else round(seconds, 3),
        "sidecars": [{"name": t.name, "address": t.address, "up": t.name not in frame.down,
                      **({"error": frame.down[t.name]} if t.name in frame.down else {})} for t in targets],
        "services": rows("services", ("service",)),
        "edges": rows("edges", ("src", "dst")),
        "routes": rows("routes", ("src", "dst", "route")),
    }


def live_edge_success(targets: list[Target]) -> dict[tuple[str, str], float]:
    """(src, dst) -> success rate since start: for colouring `meshc graph` by live traffic."""
    frame = parse_frame(scrape_all(targets))
    return {(k[0], k[1]): 1 - s.errors / s.requests for k, s in frame.edges.items() if s.requests}


# --------------------------------------------------------------------------- rendering


def _fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.2f}%"


def _fmt_num(x: float | None, unit: str = "") -> str:
    return "-" if x is None else f"{x:g}{unit}"


def render_table(doc: dict[str, Any], what: str) -> str:
    def table(header: tuple[str, ...], body: list[tuple[str, ...]]) -> str:
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                         for r in [header, *body])

    def signal_cols(r: dict[str, Any]) -> tuple[str, ...]:
        success = r["window_success_rate"] if r["window_success_rate"] is not None else r["success_rate"]
        lat = r["latency_ms"]
        return (_fmt_num(r["rps"]), _fmt_pct(success), _fmt_num(lat["p50"], "ms"), _fmt_num(lat["p99"], "ms"),
                str(r["requests"]))

    cols = ("RPS", "SUCCESS", "P50", "P99", "REQUESTS")
    out = []
    if what == "stat":
        out.append(table(("SERVICE", *cols), [(r["service"], *signal_cols(r)) for r in doc["services"]]))
        out.append("")
        out.append(table(("FROM", "TO", *cols), [(r["src"], r["dst"], *signal_cols(r)) for r in doc["edges"]]))
    else:
        routes = sorted(doc["routes"], key=lambda r: (-(r["rps"] or 0), -r["requests"], r["src"], r["dst"], r["route"]))
        out.append(table(("FROM", "TO", "ROUTE", *cols), [(r["src"], r["dst"], r["route"], *signal_cols(r))
                                                         for r in routes]))
    down = [s for s in doc["sidecars"] if not s["up"]]
    if down:
        out.append("")
        out += [f"unreachable: {s['name']} at {s['address']} ({s.get('error', '')})" for s in down]
    return "\n".join(out)


# --------------------------------------------------------------------------- targets


def parse_admin(spec: str) -> Target:
    name, _, addr = spec.rpartition("=")
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"--admin expects [NAME=]HOST:PORT, got {spec!r}")
    return Target(name or addr, host.strip("[]"), int(port))


def targets_from_index(path: Path, host: str) -> tuple[str, list[Target]]:
    from meshc.runtime import config as C

    if path.is_dir():
        path = path / "mesh.json"
    index = C.load_index(path)
    return index.mesh, [Target(e.service, host, e.admin_port) for e in index.sidecars]
