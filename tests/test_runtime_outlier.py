"""Outlier ejection in the native proxy's clusters follows Envoy: the ejection time grows with
the number of ejections, is capped, and the count decays while the endpoint stays in service."""

from __future__ import annotations

import asyncio
from pathlib import Path

from meshc.runtime import config as C
from meshc.runtime.cluster import MAX_EJECTION_MS, Cluster
from meshc.runtime.observability import Metrics


def test_ejection_grows_is_capped_and_decays() -> None:
    async def run() -> None:
        od = C.OutlierCfg(consecutive_5xx=1, interval_ms=10_000, base_ejection_ms=30_000, max_ejection_percent=100)
        cfg = C.ClusterCfg(name="api", endpoints=(C.EndpointCfg(host="127.0.0.1", port=9),
                                                  C.EndpointCfg(host="127.0.0.2", port=9)), outlier=od)
        cluster = Cluster(cfg, Path("."), Metrics(), "web")
        ep = cluster.endpoints[0]
        loop = asyncio.get_running_loop()

        def eject_now() -> float:
            start = loop.time()
            cluster.record(ep, failed=True)
            return ep.ejected_until - start

        assert round(eject_now()) == 30  # first ejection: the base time
        ep.ejected_until = loop.time() - 1  # back in service for a second
        assert round(eject_now()) == 60  # second: twice the base
        for _ in range(20):
            ep.ejected_until = loop.time() - 1
            last = eject_now()
        assert round(last) == MAX_EJECTION_MS // 1000  # capped
        # in service for 25 intervals: the multiplier has decayed back to zero, so base time again
        ep.ejected_until = loop.time() - 250
        assert round(eject_now()) == 30

    asyncio.run(run())
