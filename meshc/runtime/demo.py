"""Built-in demo upstreams for `meshc up` (and tests): a small HTTP/1.1 server, parsed by
httptools, that answers every request with JSON naming the service and version it plays and
echoing what it received (method, path, headers, body size). Responses are keep-alive.

`/status/<code>` answers with that status; `/delay/<ms>` waits first; `/health` is always 200.
"""

from __future__ import annotations

import asyncio
import json

import httptools


class DemoProtocol(asyncio.Protocol):
    def __init__(self, service: str, version: str):
        self.service = service
        self.version = version
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body_size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body_size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)

    def on_message_complete(self) -> None:
        path = self.url.decode("latin-1")
        method = self.parser.get_method().decode()
        keep = self.parser.should_keep_alive()
        status, delay = 200, 0.0
        parts = path.split("?", 1)[0].split("/")
        if len(parts) >= 3 and parts[1] == "status" and parts[2].isdigit():
            status = int(parts[2])
        if len(parts) >= 3 and parts[1] == "delay" and parts[2].isdigit():
            delay = int(parts[2]) / 1000
        body = json.dumps({"service": self.service, "version": self.version, "method": method, "path": path,
                           "headers": self.headers, "body_bytes": self.body_size}, sort_keys=True).encode()
        head = (b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"x-demo-service: %s\r\nx-demo-version: %s\r\n%s\r\n") % (
            status, len(body), self.service.encode(), self.version.encode(),
            b"" if keep else b"connection: close\r\n")
        if delay:
            asyncio.get_running_loop().call_later(delay, self._send, head + body, keep)
        else:
            self._send(head + body, keep)

    def _send(self, data: bytes, keep: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(data)
        if not keep:
            self.transport.close()


async def serve_demo(host: str, port: int, service: str, version: str = "") -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: DemoProtocol(service, version), host, port, reuse_address=True)
