"""``write_through``: answers go straight to the socket when Twisted's TCP transport holds
nothing, and through the transport otherwise, without ever reordering bytes. Run over a real
socket pair wrapped in Twisted's ``tcp.Connection`` (no reactor runs: the test calls
``doWrite`` where the reactor would)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport

from replication.wire.protocol import write_through


class _Connection(tcp.Connection):
    """A TCP connection whose reactor is a MemoryReactor: ``startWriting`` only records."""

    def startWriting(self) -> None:
        self.writing = True

    def stopWriting(self) -> None:
        self.writing = False

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 40000)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 8080)


@pytest.fixture
def pair() -> Iterator[tuple[_Connection, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    connection = _Connection(ours, Protocol(), MemoryReactor())
    connection.writing = False
    connection.connected = 1  # as the reactor sets it once the connection is made
    yield connection, theirs
    ours.close()
    theirs.close()


def _drain(sock: socket.socket) -> bytes:
    out = []
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return b"".join(out)
        if not data:
            return b"".join(out)
        out.append(data)


def test_an_empty_transport_sends_at_once(pair: tuple[_Connection, socket.socket]) -> None:
    """With nothing buffered, the bytes are on the socket when the call returns: the
    transport never asks the reactor to watch for writability."""
    connection, theirs = pair
    write = write_through(connection)
    write(b"PUBLISHED a 1\n")
    assert _drain(theirs) == b"PUBLISHED a 1\n"
    assert not connection.writing
    assert not connection._tempDataBuffer and not connection.dataBuffer


def test_what_the_kernel_refuses_is_buffered_and_nothing_overtakes_it(
    pair: tuple[_Connection, socket.socket],
) -> None:
    """A write larger than the socket takes is split: the rest waits in the transport, and
    every later write queues behind it instead of going straight out, so the peer reads
    the bytes in the order they were written."""
    connection, theirs = pair
    write = write_through(connection)
    big = b"".join(b"%08d\n" % i for i in range(400_000))  # 3.6 MB: more than the socket holds
    write(big)
    assert connection.writing, "the rest was handed to the transport"
    write(b"after\n")
    received = [_drain(theirs)]
    while connection.writing:
        connection.doWrite()
        received.append(_drain(theirs))
    assert b"".join(received) == big + b"after\n"
    # Drained: the next write goes straight out again.
    write(b"again\n")
    assert _drain(theirs) == b"again\n"
    assert not connection.writing


def test_a_lost_connection_is_left_to_twisted(pair: tuple[_Connection, socket.socket]) -> None:
    """A send that fails (the peer is gone) is handed to the transport, which reports the
    loss on its next write attempt as it would have without write-through."""
    connection, theirs = pair
    theirs.close()
    write = write_through(connection)
    write(b"x\n" * 10)  # EPIPE: the send fails at once
    assert connection.writing, "handed to the transport"
    assert isinstance(connection.doWrite(), Exception)  # CONNECTION_LOST, as Twisted says it


def test_other_transports_keep_their_own_write() -> None:
    """TLS and test transports are not plain TCP: they get their own ``write``."""
    transport = StringTransport()
    write = write_through(transport)
    write(b"hello\n")
    assert transport.value() == b"hello\n"


def test_http_responses_go_straight_to_the_socket(
    pair: tuple[_Connection, socket.socket],
) -> None:
    """The HTTP listener's connection wrapper (``ConnectionLimit``) gathers what the HTTP
    channel writes while it handles a request (the response's headers and body) and sends
    it as one write through ``write_through``: on the socket when ``dataReceived``
    returns. A write at another time (an answer after a store's commit) goes through the
    transport's buffer, as Twisted's writes do."""
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from replication.http.limits import ConnectionLimit

    class Answer(Resource):
        isLeaf = True

        def render_GET(self, request: object) -> bytes:
            return b'{"ok":true}'

    connection, theirs = pair
    limit = ConnectionLimit(Site(Answer(), reactor=MemoryReactorClock()), 10)
    wrapper = limit.buildProtocol(None)
    assert wrapper is not None
    sends: list[bytes] = []
    send = connection.writeSomeData

    def counted(data: bytes) -> object:
        sends.append(bytes(data))
        return send(data)

    connection.writeSomeData = counted  # type: ignore[method-assign]
    wrapper.makeConnection(connection)
    wrapper.dataReceived(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
    received = _drain(theirs)
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b'\r\n{"ok":true}')
    assert sends == [received], "headers and body in one send"
    assert not connection.writing
    wrapper.write(b"later")  # type: ignore[attr-defined]
    assert _drain(theirs) == b"" and connection.writing  # buffered by the transport
