"""What bounds a client of the master's HTTP listener: how many connections it may hold, how
long it may stay silent or take over one request, and how large a body it may send.

- :class:`AdminSite` is the master's twisted.web ``Site``: it carries the body limit and the
  request timeout that :class:`replication.http.api.JsonRequest` applies, and sets
  twisted.web's idle timeout (``timeOut``: a connection that sends nothing for
  ``idle_timeout`` seconds is closed).
- :class:`ConnectionLimit` wraps the site and counts its open connections; one past
  ``max_connections`` is answered ``503`` with a JSON error without its request being
  parsed, then drained for a second at most so the client reads the answer rather than a
  reset (or closed at once when ``max_connections`` refusals are being drained already).
- :func:`raw_json_answer` is a complete HTTP/1.1 response written straight to a transport,
  for refusals made before twisted.web has a request to answer (a declared body over the
  limit, a connection over the limit, a request too slow to arrive).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Final

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocolNegotiationFactory,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from replication.wire.commands import encode_parsed_json
from replication.wire.protocol import write_through

log = logging.getLogger(__name__)


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

    def log(self, request: object) -> None:
        """No access log: twisted.web would format a line for every request (publishes
        included) into Twisted's legacy log, which the master does not show (publishes are
        counted in ``replication_publishes_total`` instead)."""


#: How long a refused connection is drained (read and discarded) after its 503, so that
#: the client reads the answer instead of a reset; it is aborted if still open as long again
#: after it was closed.
REFUSAL_DRAIN_SECONDS: Final = 1.0


#: Seconds between two warnings about refused connections.
REFUSAL_LOG_INTERVAL: Final = 60.0


class _Busy(Protocol):
    """Answers a connection over the limit with a 503, then reads and drops what the
    client sends until it closes, or for :data:`REFUSAL_DRAIN_SECONDS` at most; then closes
    it, and aborts it if it is still open :data:`REFUSAL_DRAIN_SECONDS` later (a TLS
    client that never finishes its handshake). With no room left to drain (``drain``
    false), closes at once."""

    answer = raw_json_answer(
        503, "too many HTTP connections (http.max_connections); try again later"
    )

    def __init__(self, limit: ConnectionLimit, drain: bool) -> None:
        self.limit = limit
        self.drain = drain
        self.timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.answer)
        if not self.drain:
            self.transport.loseConnection()
            return
        # Not a half-close: under TLS that would cut the handshake that carries the answer.
        # The answer says "Connection: close", so a client closes once it has read it.
        self.limit.draining.add(self)
        self.timer = self.limit.clock.callLater(REFUSAL_DRAIN_SECONDS, self._stop_draining)

    def _stop_draining(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()
        self.timer = self.limit.clock.callLater(REFUSAL_DRAIN_SECONDS, self._abort)

    def _abort(self) -> None:
        self.timer = None
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.limit.draining.discard(self)
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


class _SendingWrapper(ProtocolWrapper):
    """The transport an HTTP channel writes to. What the channel writes while it handles
    received bytes (a whole response, when it is answered at once: its headers and body
    are two writes) is gathered and sent as one write when that handling returns, straight
    to the socket when the TCP transport holds nothing
    (:func:`replication.wire.protocol.write_through`), as the replication port's answers
    are, instead of waiting for the reactor's next turn behind two more system calls.
    Writes at other times (an answer after a commit in the store's thread) go through the
    transport as usual."""

    _gathered: list[bytes] | None = None

    def makeConnection(self, transport: ITransport) -> None:
        self._send = write_through(transport)
        super().makeConnection(transport)  # type: ignore[no-untyped-call]

    def dataReceived(self, data: bytes) -> None:
        gathered: list[bytes] = []
        self._gathered = gathered
        try:
            super().dataReceived(data)  # type: ignore[no-untyped-call]
        finally:
            self._gathered = None
            if gathered:
                self._send(b"".join(gathered))

    def _flush(self) -> None:
        gathered = self._gathered
        if gathered:
            self._gathered = []
            self._send(b"".join(gathered))

    def write(self, data: bytes) -> None:
        if self._gathered is not None:
            self._gathered.append(data)
        else:
            super().write(data)  # type: ignore[no-untyped-call]

    def writeSequence(self, data: Iterable[bytes]) -> None:
        if self._gathered is not None:
            self._gathered.extend(data)
        else:
            super().writeSequence(data)  # type: ignore[no-untyped-call]

    def loseConnection(self) -> None:
        self._flush()  # what was written before the close goes first
        super().loseConnection()  # type: ignore[no-untyped-call]

    def abortConnection(self) -> None:
        self._gathered = None  # an abort drops what is not sent, as the transport's does
        abort: Callable[[], None] = getattr(self.transport, "abortConnection")  # noqa: B009
        abort()


@implementer(IProtocolNegotiationFactory)
class ConnectionLimit(WrappingFactory):
    """Serves ``site`` on at most ``max_connections`` connections at once. One past it is
    answered 503 with a JSON error and its request is not read; it is then drained (see
    :class:`_Busy`) while fewer than ``max_connections`` refused connections are being
    drained, and closed at once otherwise, so refused connections hold no more than
    ``max_connections`` further file descriptors, each for two seconds at most.
    :attr:`refused` counts the refused connections; a warning says how many, once per
    :data:`REFUSAL_LOG_INTERVAL` at most."""

    noisy = False
    protocol = _SendingWrapper

    def __init__(self, site: Site, max_connections: int) -> None:
        super().__init__(site)  # type: ignore[no-untyped-call]
        self.max_connections = max_connections
        self.clock: IReactorTime = site.reactor
        self.refused = 0
        self.draining: set[_Busy] = set()
        self._warned_at: float | None = None
        self._warned_count = 0

    def _warn(self) -> None:
        """Log the refusals, once per :data:`REFUSAL_LOG_INTERVAL` at most."""
        now = self.clock.seconds()
        if self._warned_at is not None and now - self._warned_at < REFUSAL_LOG_INTERVAL:
            return
        log.warning(
            "refused %d HTTP connection(s) since %s: http.max_connections (%d) are open",
            self.refused - self._warned_count,
            "the last warning" if self._warned_at is not None else "startup",
            self.max_connections,
        )
        self._warned_at = now
        self._warned_count = self.refused

    def acceptableProtocols(self) -> list[bytes]:
        """The site's protocols for TLS's ALPN (``http/1.1``, and ``h2`` where available):
        without them a TLS listener around this factory answers every handshake that offers
        ALPN (every browser's, curl's) with an internal error."""
        site: Site = self.wrappedFactory
        return list(site.acceptableProtocols())  # type: ignore[no-untyped-call]

    @property
    def open_connections(self) -> int:
        """The connections being served now."""
        return len(self.protocols)

    # Returns a plain Protocol (not a ProtocolWrapper) for a refused connection, on purpose:
    # it must not be counted among the open ones.
    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:  # type: ignore[override]
        if len(self.protocols) >= self.max_connections:
            self.refused += 1
            self._warn()
            return _Busy(self, drain=len(self.draining) < self.max_connections)
        wrapper: ProtocolWrapper | None = super().buildProtocol(addr)
        return wrapper
