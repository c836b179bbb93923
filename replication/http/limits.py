"""What bounds a client of the master's HTTP listener: how many connections it may hold, how
long it may stay silent or take over one request, and how large a body it may send.

- :class:`AdminSite` is the master's twisted.web ``Site``: it carries the body limit and the
  request timeout that :class:`replication.http.api.JsonRequest` applies, and sets
  twisted.web's idle timeout (``timeOut``: a connection that sends nothing for
  ``idle_timeout`` seconds is closed).
- :class:`ConnectionLimit` wraps the site and counts its open connections; one past
  ``max_connections`` is answered ``503`` with a JSON error and closed at once, without
  reading its request, so a refusal costs one small write.
- :func:`raw_json_answer` is a complete HTTP/1.1 response written straight to a transport,
  for refusals made before twisted.web has a request to answer (a declared body over the
  limit, a connection over the limit, a request too slow to arrive).
"""

from __future__ import annotations

from http import HTTPStatus

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import Site

from replication.wire.commands import encode_parsed_json


def raw_json_answer(status: int, message: str) -> bytes:
    """The bytes of an HTTP/1.1 response ``status`` with the JSON body
    ``{"error": message}`` that closes its connection (``Connection: close``)."""
    body = encode_parsed_json({"error": message}).encode() + b"\n"
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Content-Type: application/json\r\n"
        "Cache-Control: no-store\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class AdminSite(Site):
    """The master's HTTP site.

    :param resource: the root resource.
    :param reactor: the clock of the idle and request timeouts.
    :param max_body_bytes: the largest request body (``limits.max_body_bytes``).
    :param idle_timeout: seconds a connection may send nothing (``http.idle_timeout``).
    :param request_timeout: seconds from a request's first line to its last body byte
        (``http.request_timeout``).
    """

    def __init__(
        self,
        resource: Resource,
        reactor: IReactorTime,
        *,
        max_body_bytes: int,
        idle_timeout: float,
        request_timeout: float,
    ) -> None:
        super().__init__(resource, timeout=idle_timeout, reactor=reactor)  # type: ignore[no-untyped-call]
        self.max_body_bytes = max_body_bytes
        self.request_timeout = request_timeout
        self.noisy = False


class _Busy(Protocol):
    """Answers a connection over the limit with a 503 and closes it."""

    answer = raw_json_answer(
        503, "too many HTTP connections (http.max_connections); try again later"
    )

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.answer)
        self.transport.loseConnection()


class ConnectionLimit(WrappingFactory):
    """Serves ``site`` on at most ``max_connections`` connections at once; see the module
    documentation for the ones past it. :attr:`refused` counts those."""

    noisy = False

    def __init__(self, site: Site, max_connections: int) -> None:
        super().__init__(site)  # type: ignore[no-untyped-call]
        self.max_connections = max_connections
        self.refused = 0

    @property
    def open_connections(self) -> int:
        """The connections being served now."""
        return len(self.protocols)

    # Returns a plain Protocol (not a ProtocolWrapper) for a refused connection, on purpose:
    # it must not be counted among the open ones.
    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:  # type: ignore[override]
        if len(self.protocols) >= self.max_connections:
            self.refused += 1
            return _Busy()
        wrapper: ProtocolWrapper | None = super().buildProtocol(addr)
        return wrapper
