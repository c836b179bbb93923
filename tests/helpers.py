"""Helpers shared by test modules: raw HTTP requests through a real twisted.web Site over a
StringTransport, without a reactor or a socket; a runner that stands in for the store's
threads."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Site

from replication.admin import admin_resource
from replication.master import Master


def raw_request(
    resource: Resource, method: str, path: str, body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Send one HTTP/1.1 request to ``resource`` (the root of a Site) and return the status,
    the response headers (lower-case names) and the body (de-chunked)."""
    site = Site(resource)
    protocol = site.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    )
    protocol.dataReceived(head.encode() + body)
    response = transport.value()
    status_line, _, rest = response.partition(b"\r\n")
    status = int(status_line.split()[1])
    header_block, payload = rest.split(b"\r\n\r\n", 1)
    headers = {}  # the response's, from here
    for line in header_block.split(b"\r\n"):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        payload = _dechunk(payload)
    protocol.connectionLost(None)
    return status, headers, payload


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


def request(master: Master, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
    """Send one HTTP/1.1 request through the master's real Site and parse the JSON answer."""
    status, _, payload = raw_request(admin_resource(master), method, path, body)
    return status, json.loads(payload)


class ManualRunner:
    """Stands in for a thread (the store's writer or reader): calls wait until the test
    runs them, so every interleaving is explicit."""

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.queue.append((f, args, d))
        return d

    def run_one(self) -> None:
        f, args, d = self.queue.pop(0)
        try:
            result = f(*args)
        except Exception as e:
            d.errback(e)
        else:
            d.callback(result)

    def run_all(self) -> None:
        while self.queue:
            self.run_one()


class _AnyOriginId:
    """Equal to any well-formed origin id: what a publish answer's ``"origin"`` is
    compared with where the master's own id is not at hand."""

    def __eq__(self, other: object) -> bool:
        from replication.cluster.identity import ID_PATTERN

        return isinstance(other, str) and ID_PATTERN.fullmatch(other) is not None

    def __hash__(self) -> int:  # pragma: no cover - never hashed
        return 0

    def __repr__(self) -> str:
        return "<any origin id>"


ORIGIN_ID = _AnyOriginId()
