"""TCP proxying for `tcp`/`tls` ports: bytes both ways with backpressure, after (m)TLS and
connection-level authorization on inbound listeners, and load balancing on outbound ones.

Each direction stops reading when the other side's write buffer is above its high-water mark
(`pause_writing` -> `pause_reading`), so a fast sender never grows memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from meshc.runtime import tls
from meshc.runtime.cluster import Cluster, ConnectFailure, Overflow

if TYPE_CHECKING:
    from meshc.runtime.server import TcpListener

log = logging.getLogger("meshc.proxy")
HIGH_WATER = 64 * 1024


class _Peer(asyncio.Protocol):
    """The upstream half of a TCP pipe."""

    def __init__(self, down: TcpDownstream):
        self.down = down
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=HIGH_WATER)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.down.bytes_out += len(data)
        if self.down.transport is not None:
            self.down.transport.write(data)

    def eof_received(self) -> bool:
        t = self.down.transport
        if t is not None and t.can_write_eof():
            t.write_eof()
            return self.transport is not None and self.transport.get_extra_info("sslcontext") is None
        self.down.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        cluster = getattr(self, "cluster", None)
        if cluster is not None:
            cluster.connection_closed()
        self.down.close()

    def pause_writing(self) -> None:
        if self.down.transport is not None:
            self.down.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.down.transport is not None:
            self.down.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class TcpDownstream(asyncio.Protocol):
    def __init__(self, slot: Any, peer_identity: Any = None):
        self.slot = slot
        self.listener: TcpListener = slot.runtime
        self.sidecar = slot.sidecar
        self.peer_identity = peer_identity
        self.transport: asyncio.Transport | None = None
        self.peer: _Peer | None = None
        self.buffer: list[bytes] = []
        self.closed = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.start = time.monotonic()
        self.upstream_label = "-"
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=HIGH_WATER)  # type: ignore[attr-defined]
        self.sidecar.connections.add(self)
        try:
            identity = self.peer_identity(transport) if self.peer_identity else None
        except tls.IdentityRefused as e:
            log.warning("%s: connection refused: %s", self.listener.name, e)
            self.status = 403
            self.close()
            return
        if not self.listener.authorize(identity):
            self.status = 403
            self.close()
            return
        transport.pause_reading()  # type: ignore[attr-defined]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        cluster: Cluster = self.listener.cluster
        ep = cluster.choose(None)
        if ep is None:
            self.status = 503
            self.close()
            return
        self.upstream_label = ep.label
        try:
            # Plain TCP connections are not pooled; the cluster's TLS settings still apply.
            peer = await cluster.connect(ep, lambda: _Peer(self))
        except (ConnectFailure, Overflow) as e:
            log.warning("%s: %s: %s", self.sidecar.name, self.listener.name, e)
            cluster.record(ep, True)
            self.status = 503
            self.close()
            return
        cluster.record(ep, False)
        if self.closed:
            peer.close()
            return
        self.peer = peer
        for chunk in self.buffer:
            peer.transport.write(chunk)  # type: ignore[union-attr]
        self.buffer.clear()
        if self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.buffer.append(data)

    def eof_received(self) -> bool:
        peer = self.peer.transport if self.peer is not None else None
        if peer is not None and peer.can_write_eof():
            peer.write_eof()
            # TLS cannot half-close: asyncio closes an SSL transport after EOF anyway.
            return self.transport is not None and self.transport.get_extra_info("sslcontext") is None
        self.close()
        return False

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            if self.peer is not None:
                self.peer.close()

    def check_timers(self, now: float) -> None:
        pass  # byte streams have no request boundaries to time

    def drain(self) -> None:
        pass  # a TCP connection has no request boundary; the drain timeout closes it

    def abort(self) -> None:
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()
        self.sidecar.connections.discard(self)
        self.listener.record(self)
