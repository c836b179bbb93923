"""Test doubles that run the real protocol code over in-memory transports.

:class:`MemoryPipe` joins two protocols (a master connection and a worker connection, or
any pair) with transports that behave like TCP where it matters: bytes arrive only when the
pipe is pumped, a writer whose bytes are not being read is paused through its registered
producer once more than ``high_water`` bytes wait, and is resumed when they drain; a reader
can stop reading. Drive time with a :class:`twisted.internet.task.Clock`. Shipped with the
package so that applications can test their handlers against a real master.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer


@implementer(ITransport)
class PipeTransport:
    """One direction's transport of a :class:`MemoryPipe`: what its protocol writes waits
    in ``buffer`` until the pipe delivers it to the peer."""

    def __init__(self, pipe: MemoryPipe, host: IPv4Address, peer: IPv4Address) -> None:
        self.pipe = pipe
        self.buffer = bytearray()
        self.producer: IPushProducer | None = None
        self.producer_paused = False
        self.reading = True
        self.disconnecting = False
        self.aborted = False
        self.host = host
        self.peer = peer

    # ITransport
    def write(self, data: bytes) -> None:
        if self.aborted or not data:
            return
        self.buffer += data
        if (
            self.producer is not None
            and not self.producer_paused
            and len(self.buffer) > self.pipe.high_water
        ):
            self.producer_paused = True
            self.producer.pauseProducing()

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.disconnecting = True

    def abortConnection(self) -> None:
        self.disconnecting = True
        self.aborted = True
        self.buffer.clear()
        self.pipe._lost(ConnectionAborted())

    def getPeer(self) -> IPv4Address:
        return self.peer

    def getHost(self) -> IPv4Address:
        return self.host

    # IProducer/IConsumer as far as protocols use them
    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        """The protocol stops reading: nothing is delivered to it until it resumes."""
        self.reading = False

    def resumeProducing(self) -> None:
        self.reading = True

    def stopProducing(self) -> None:
        self.loseConnection()

    def take(self, limit: int | None) -> bytes:
        """Remove up to ``limit`` bytes from the buffer (all when ``None``), resuming the
        producer when the buffer has drained."""
        if limit is None or limit >= len(self.buffer):
            data = bytes(self.buffer)
            self.buffer.clear()
        else:
            data = bytes(self.buffer[:limit])
            del self.buffer[:limit]
        if self.producer_paused and len(self.buffer) <= self.pipe.low_water:
            self.producer_paused = False
            if self.producer is not None:
                self.producer.resumeProducing()
        return data


class MemoryPipe:
    """Two protocols joined in memory: ``server`` (e.g. a master connection) and ``client``.

    :param high_water: bytes waiting in one direction before the writer is paused.
    :param low_water: the writer is resumed once this few bytes wait.
    Call :meth:`pump` to move bytes; ``client_reads``/``server_reads`` set to False make
    that side stop reading, like a worker that stops draining its socket.
    """

    def __init__(
        self, server: Protocol, client: Protocol, *, high_water: int = 65536, low_water: int = 0
    ) -> None:
        self.high_water = high_water
        self.low_water = low_water
        self.server = server
        self.client = client
        server_address = IPv4Address("TCP", "127.0.0.1", 9092)
        client_address = IPv4Address("TCP", "127.0.0.1", 40000)
        self.server_transport = PipeTransport(self, server_address, client_address)
        self.client_transport = PipeTransport(self, client_address, server_address)
        self.client_reads = True
        self.server_reads = True
        self.connected = True
        server.makeConnection(self.server_transport)
        client.makeConnection(self.client_transport)

    def pump(self, limit: int | None = None, rounds: int = 1000) -> int:
        """Deliver waiting bytes both ways until nothing moves (or ``rounds`` passes);
        at most ``limit`` bytes per direction per round. Returns the bytes moved."""
        moved = 0
        for _ in range(rounds):
            step = self._deliver(
                self.server_transport, self.client, self.client_reads, limit
            ) + self._deliver(self.client_transport, self.server, self.server_reads, limit)
            moved += step
            if self.connected:
                for transport in (self.server_transport, self.client_transport):
                    if transport.disconnecting and not transport.buffer:
                        self._lost(ConnectionDone())
                        break
            if not step or not self.connected:
                break
        return moved

    def _deliver(
        self, source: PipeTransport, receiver: Protocol, reads: bool, limit: int | None
    ) -> int:
        if not self.connected or not reads or not source.buffer:
            return 0
        target = self.client_transport if source is self.server_transport else self.server_transport
        if not target.reading:
            return 0
        data = source.take(limit)
        receiver.dataReceived(data)
        return len(data)

    def buffered(self, side: str = "server") -> int:
        """Bytes written by ``side`` and not yet delivered."""
        transport = self.server_transport if side == "server" else self.client_transport
        return len(transport.buffer)

    def _lost(self, reason: Exception) -> None:
        if not self.connected:
            return
        self.connected = False
        for protocol in (self.server, self.client):
            protocol.connectionLost(Failure(reason))

    def disconnect(self) -> None:
        """Break the connection at once, as a network failure would."""
        self._lost(ConnectionDone())


def clock_and_pump(clock: Any, pipe: MemoryPipe, seconds: float = 0.0, steps: int = 1) -> None:
    """Advance ``clock`` by ``seconds`` in ``steps`` and pump after each step."""
    for _ in range(steps):
        clock.advance(seconds / steps)
        pipe.pump()
