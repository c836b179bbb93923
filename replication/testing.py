"""Test doubles that run the real protocol code over in-memory transports, shipped with the
package so that applications can test their handlers against a real master.

- :class:`MemoryPipe` joins two protocols (a master connection and a worker connection, or
  any pair) with transports that behave like TCP where it matters: bytes arrive only when
  the pipe is pumped, a writer whose bytes are not being read is paused through its
  registered producer once more than ``high_water`` bytes wait, and is resumed when they
  drain; a reader can stop reading.
- :class:`MemoryNetwork` is named hosts joined by such pipes: servers listen on a host and
  port, and client endpoints (``IStreamClientEndpoint``, so Twisted's ``ClientService`` can
  dial them) connect to them, are refused when nothing listens, and time out while the two
  hosts are partitioned. :meth:`MemoryNetwork.partition` and :meth:`MemoryNetwork.heal`
  break and mend the links between two hosts.
- :class:`Harness` is a real master with a memory store, workers with position files in a
  directory, and both joined directly (:meth:`Harness.connect`) or over the harness's
  network (:meth:`Harness.worker_service`, which reconnects like a deployed worker).
- :class:`Recording` is a handler that records what it was given.

Drive time with a :class:`twisted.internet.task.Clock`: nothing here reads the wall clock.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import (
    CannotListenError,
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.error import (
    TimeoutError as ConnectTimeoutError,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
    ITransport,
)
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from replication.config import MasterConfig, WorkerConfig, WorkerStream
from replication.master import Master, MasterConnection, MasterFactory
from replication.positions import PositionFile
from replication.store.memory import MemoryStore
from replication.worker import Worker, WorkerConnection, WorkerService, worker_service


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

    def writeSequence(self, data: Iterable[bytes]) -> None:
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
    :param server_address: what the server's transport reports as its host (and the
        client's as its peer); default ``127.0.0.1:9092``.
    :param client_address: the same for the client; default ``127.0.0.1:40000``.
    Call :meth:`pump` to move bytes; ``client_reads``/``server_reads`` set to False make
    that side stop reading, like a worker that stops draining its socket.
    """

    def __init__(
        self,
        server: IProtocol,
        client: IProtocol,
        *,
        high_water: int = 65536,
        low_water: int = 0,
        server_address: IPv4Address | None = None,
        client_address: IPv4Address | None = None,
    ) -> None:
        self.high_water = high_water
        self.low_water = low_water
        self.server = server
        self.client = client
        if server_address is None:
            server_address = IPv4Address("TCP", "127.0.0.1", 9092)
        if client_address is None:
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
        self, source: PipeTransport, receiver: IProtocol, reads: bool, limit: int | None
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
            protocol.connectionLost(Failure(reason))  # type: ignore[no-untyped-call]

    def disconnect(self) -> None:
        """Break the connection at once, as a network failure would."""
        self._lost(ConnectionDone())


def clock_and_pump(clock: Any, pipe: MemoryPipe, seconds: float = 0.0, steps: int = 1) -> None:
    """Advance ``clock`` by ``seconds`` in ``steps`` and pump after each step."""
    for _ in range(steps):
        clock.advance(seconds / steps)
        pipe.pump()


# -- an in-memory network ------------------------------------------------------------------


class NetworkLink(MemoryPipe):
    """A :class:`MemoryPipe` of a :class:`MemoryNetwork`: one connection from host
    ``source`` to host ``target``, pumped by the network."""

    def __init__(
        self,
        network: MemoryNetwork,
        source: str,
        target: str,
        server: IProtocol,
        client: IProtocol,
        client_factory: IProtocolFactory,
        server_address: IPv4Address,
        client_address: IPv4Address,
    ) -> None:
        self.network = network
        self.source = source
        self.target = target
        self._client_factory = client_factory
        super().__init__(
            server, client, high_water=network.high_water, low_water=network.low_water,
            server_address=server_address, client_address=client_address,
        )

    def _lost(self, reason: Exception) -> None:
        if not self.connected:
            return
        super()._lost(reason)
        self.network._link_lost(self)
        self._client_factory.doStop()


class _Connect:
    """A connection attempt waiting for :meth:`MemoryNetwork.run_until_idle`."""

    def __init__(self, source: str, target: str, port: int, factory: IProtocolFactory) -> None:
        self.source = source
        self.target = target
        self.port = port
        self.factory = factory
        self.deferred: Deferred[IProtocol] = Deferred(self._cancel)
        self.timeout: IDelayedCall | None = None
        self.network: MemoryNetwork | None = None

    def _cancel(self, deferred: Deferred[IProtocol]) -> None:
        if self.network is not None:
            self.network._forget(self)


@implementer(IListeningPort)
class MemoryPort:
    """A listening port of a :class:`MemoryNetwork`; links already made outlive it."""

    def __init__(
        self, network: MemoryNetwork, host: str, port: int, factory: IProtocolFactory
    ) -> None:
        self.network = network
        self.address = IPv4Address("TCP", host, port)
        self.factory = factory
        self.listening = False

    def startListening(self) -> None:
        key = (self.address.host, self.address.port)
        if key in self.network._ports:
            raise CannotListenError(  # type: ignore[no-untyped-call]
                self.address.host, self.address.port, OSError("address in use")
            )
        self.network._ports[key] = self
        self.listening = True
        self.factory.doStart()

    def stopListening(self) -> Deferred[None]:
        if self.listening:
            self.listening = False
            del self.network._ports[(self.address.host, self.address.port)]
            self.factory.doStop()
        return succeed(None)

    def getHost(self) -> IPv4Address:
        return self.address


@implementer(IStreamServerEndpoint)
class MemoryServerEndpoint:
    """Listens on ``host:port`` of a :class:`MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, host: str, port: int) -> None:
        self.network = network
        self.host = host
        self.port = port

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        port = MemoryPort(self.network, self.host, self.port, protocolFactory)
        try:
            port.startListening()
        except CannotListenError as e:
            return fail(e)
        return succeed(port)


@implementer(IStreamClientEndpoint)
class MemoryClientEndpoint:
    """Connects from host ``source`` to ``target:port`` of a :class:`MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, source: str, target: str, port: int) -> None:
        self.network = network
        self.source = source
        self.target = target
        self.port = port

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return self.network._connect(_Connect(self.source, self.target, self.port, protocolFactory))

    def __repr__(self) -> str:
        return f"<MemoryClientEndpoint {self.source} -> {self.target}:{self.port}>"


class NetworkNotIdle(RuntimeError):
    """:meth:`MemoryNetwork.run_until_idle` still had work after its turns."""


class MemoryNetwork:
    """Hosts, named by strings, joined by in-memory TCP-like links, on a ``Clock``.

    A server listens with :meth:`listen` (or :meth:`server_endpoint`); a client connects
    through :meth:`client_endpoint`, an ``IStreamClientEndpoint`` that
    ``twisted.application.internet.ClientService`` can dial. Nothing moves by itself:

    - :meth:`run_until_idle` settles connection attempts, pumps every link both ways and
      runs the clock's calls that are due *now* (``clock.advance(0)``), until nothing
      moves. It never advances time.
    - :meth:`advance` moves the clock forward in steps and runs until idle after each, so
      keepalives, timeouts and reconnect delays fire in order.

    A connection attempt settles in the next :meth:`run_until_idle`: it is refused
    (``ConnectionRefusedError``) when nothing listens on the target, and it succeeds
    otherwise; while its two hosts are partitioned it waits, and fails with
    ``TimeoutError`` once ``connect_timeout`` seconds have passed without a heal.

    :param clock: the time of every protocol and service on this network.
    :param high_water: bytes waiting in one direction of a link before its writer is
        paused (as :class:`MemoryPipe`).
    :param low_water: the writer is resumed once this few bytes wait.
    :param connect_timeout: seconds a connection attempt waits across a partition.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        high_water: int = 65536,
        low_water: int = 0,
        connect_timeout: float = 30.0,
    ) -> None:
        self.clock = clock
        self.high_water = high_water
        self.low_water = low_water
        self.connect_timeout = connect_timeout
        #: The open links, oldest first.
        self.links: list[NetworkLink] = []
        self._ports: dict[tuple[str, int], MemoryPort] = {}
        self._attempts: list[_Connect] = []
        self._partitions: set[frozenset[str]] = set()
        self._client_ports = itertools.count(40000)

    # -- addresses --------------------------------------------------------------------

    def listen(self, host: str, factory: IProtocolFactory, port: int = 9092) -> MemoryPort:
        """Listen on ``host:port``; ``CannotListenError`` if something already does."""
        listening = MemoryPort(self, host, port, factory)
        listening.startListening()
        return listening

    def server_endpoint(self, host: str, port: int = 9092) -> MemoryServerEndpoint:
        return MemoryServerEndpoint(self, host, port)

    def client_endpoint(self, source: str, target: str, port: int = 9092) -> MemoryClientEndpoint:
        """An endpoint that connects from host ``source`` to ``target:port``."""
        return MemoryClientEndpoint(self, source, target, port)

    # -- failures ---------------------------------------------------------------------

    def partition(self, a: str, b: str, *, drop: bool = True) -> None:
        """Cut hosts ``a`` and ``b`` apart until :meth:`heal`.

        New connection attempts between them wait and time out. With ``drop`` (the
        default), their open links are lost at once on both ends with ``ConnectionLost``,
        as after a reset or a failed retransmission. Without it the links stay open but
        deliver nothing (writes pile up and pause their writers at ``high_water``) until
        healed, or until one end gives up: an end that aborts (a keepalive timeout) ends
        the link on both ends at once.
        """
        self._partitions.add(frozenset((a, b)))
        if drop:
            for link in self.links_between(a, b):
                link._lost(ConnectionLost())

    def heal(self, a: str, b: str) -> None:
        """Undo :meth:`partition` of ``a`` and ``b``: stalled links deliver again, waiting
        attempts connect at the next :meth:`run_until_idle`."""
        self._partitions.discard(frozenset((a, b)))

    def partitioned(self, a: str, b: str) -> bool:
        return frozenset((a, b)) in self._partitions

    def links_between(self, a: str, b: str) -> list[NetworkLink]:
        """The open links between hosts ``a`` and ``b``, either way."""
        return [link for link in self.links if {link.source, link.target} == {a, b}]

    # -- running ----------------------------------------------------------------------

    def run_until_idle(self, max_turns: int = 100000) -> int:
        """Settle connection attempts, pump every link and run the calls due now, until
        nothing is left to do; returns the bytes moved. Time does not advance. Raises
        :class:`NetworkNotIdle` if work remains after ``max_turns`` turns (two sides
        that keep answering each other)."""
        moved = 0
        for _ in range(max_turns):
            settled = self._settle_attempts()
            step = 0
            for link in list(self.links):
                if link.connected and not self.partitioned(link.source, link.target):
                    step += link.pump()
            moved += step
            now = self.clock.seconds()
            due = any(call.getTime() <= now for call in self.clock.getDelayedCalls())
            if not (settled or step or due):
                return moved
            self.clock.advance(0)
        raise NetworkNotIdle(f"the network still had work after {max_turns} turns")

    def advance(self, seconds: float, steps: int = 1) -> None:
        """Run until idle, then advance the clock by ``seconds`` in ``steps`` equal steps,
        running until idle after each."""
        self.run_until_idle()
        for _ in range(steps):
            self.clock.advance(seconds / steps)
            self.run_until_idle()

    # -- internals --------------------------------------------------------------------

    def _connect(self, attempt: _Connect) -> Deferred[IProtocol]:
        attempt.network = self
        attempt.factory.doStart()
        self._attempts.append(attempt)
        return attempt.deferred

    def _forget(self, attempt: _Connect) -> None:
        """A waiting attempt was cancelled (``Deferred.cancel``) or failed."""
        if attempt in self._attempts:
            self._attempts.remove(attempt)
        if attempt.timeout is not None and attempt.timeout.active():
            attempt.timeout.cancel()
        attempt.timeout = None
        attempt.network = None
        attempt.factory.doStop()

    def _fail(self, attempt: _Connect, reason: Exception) -> None:
        self._forget(attempt)
        attempt.deferred.errback(reason)

    def _settle_attempts(self) -> bool:
        """Connect, refuse or keep waiting each attempt; True if any settled."""
        settled = False
        for attempt in list(self._attempts):
            if self.partitioned(attempt.source, attempt.target):
                if attempt.timeout is None:
                    attempt.timeout = self.clock.callLater(
                        self.connect_timeout, self._fail, attempt,
                        ConnectTimeoutError(string="partitioned"),  # type: ignore[no-untyped-call]
                    )
                continue
            settled = True
            port = self._ports.get((attempt.target, attempt.port))
            if port is None:
                refused = ConnectionRefusedError(string=f"{attempt.target}:{attempt.port}")  # type: ignore[no-untyped-call]
                self._fail(attempt, refused)
                continue
            self._attempts.remove(attempt)
            if attempt.timeout is not None and attempt.timeout.active():
                attempt.timeout.cancel()
            attempt.network = None
            self._open(attempt, port)
        return settled

    def _open(self, attempt: _Connect, port: MemoryPort) -> None:
        client_address = IPv4Address("TCP", attempt.source, next(self._client_ports))
        server = port.factory.buildProtocol(client_address)
        client = attempt.factory.buildProtocol(port.address)
        if server is None or client is None:
            # A factory that builds nothing refuses the connection.
            attempt.factory.doStop()
            attempt.deferred.errback(ConnectionRefusedError(string="no protocol built"))  # type: ignore[no-untyped-call]
            return
        link = NetworkLink(
            self,
            attempt.source,
            attempt.target,
            server,
            client,
            attempt.factory,
            port.address,
            client_address,
        )
        self.links.append(link)
        attempt.deferred.callback(client)

    def _link_lost(self, link: NetworkLink) -> None:
        self.links.remove(link)


# -- a master and workers, for tests -----------------------------------------------------


class Recording:
    """A handler that records tokens, gaps and resets.

    ``tokens`` holds ``(stream, token, rows)`` per call; ``events`` the calls in order as
    ``("token", stream, token)``, ``("gap", stream, first, last)`` and
    ``("reset", stream, old, head)``.
    """

    def __init__(self) -> None:
        self.tokens: list[tuple[str, int, list[Any]]] = []
        self.events: list[tuple[Any, ...]] = []

    def __call__(self, stream: str, token: int, rows: list[Any]) -> None:
        self.tokens.append((stream, token, rows))
        self.events.append(("token", stream, token))

    def gap(self, stream: str, first: int, last: int) -> None:
        self.events.append(("gap", stream, first, last))

    def reset(self, stream: str, old: int, head: int) -> None:
        self.events.append(("reset", stream, old, head))

    def token_numbers(self, stream: str = "events") -> list[int]:
        return [t for s, t, _ in self.tokens if s == stream]


class Harness:
    """A real master (memory store, :class:`~twisted.internet.task.Clock`) and workers.

    :param directory: where workers' position files go (a test's temporary directory).
    :param master_changes: fields of :class:`~replication.config.MasterConfig` to change.

    ``clock``, ``store``, ``config`` and ``master`` are the master's parts. Workers join it
    in one of two ways: :meth:`connect` makes one :class:`MemoryPipe` that the test pumps
    (:meth:`run`); :meth:`worker_service` dials the master over ``network``, a
    :class:`MemoryNetwork` on which the master listens as host :attr:`MASTER_HOST`, and
    reconnects on its own like a deployed worker (drive it with ``network.run_until_idle()``
    and ``network.advance()``).
    """

    MASTER_HOST = "master"

    def __init__(self, directory: Path | str, **master_changes: Any) -> None:
        self.directory = Path(directory)
        self.clock = Clock()
        self.store = MemoryStore()
        self.config = dataclasses.replace(MasterConfig(), **master_changes)
        self.master = Master(self.config, self.store, self.clock)
        self.pipes: list[MemoryPipe] = []
        self.network = MemoryNetwork(self.clock)
        factory = MasterFactory(self.master)
        factory.noisy = False
        self.network.listen(self.MASTER_HOST, factory)

    def publish(self, stream: str, rows: list[Any]) -> int:
        """Publish ``rows`` as one token and return it (the memory store commits at once)."""
        results: list[int] = []
        self.master.publish(stream, rows).addCallback(results.append)
        if not results:
            raise RuntimeError(f"publishing to {stream!r} did not complete at once")
        return results[0]

    def worker(
        self, handler: Any, streams: tuple[str, ...] = ("events",), start: str = "earliest",
        name: str = "w1",
    ) -> Worker:
        """A worker named ``name`` following ``streams`` (from ``start`` when it has no
        position), recording positions in ``<directory>/<name>.positions``."""
        config = WorkerConfig(name=name, streams=tuple(WorkerStream(s, start) for s in streams))
        positions = PositionFile(
            str(self.directory / f"{name}.positions"), fsync=False, capacity=16384
        )
        return Worker(config, handler, positions, self.clock)

    def connect(self, worker: Worker, **pipe_options: Any) -> MemoryPipe:
        """Join ``worker`` to the master with a new :class:`MemoryPipe` (pumped once)."""
        pipe = MemoryPipe(MasterConnection(self.master), WorkerConnection(worker), **pipe_options)
        self.pipes.append(pipe)
        pipe.pump()
        return pipe

    def run(self, pipe: MemoryPipe, turns: int = 10000) -> None:
        """Pump and let zero-delay calls (the catch-up pump) run until nothing moves."""
        for _ in range(turns):
            moved = pipe.pump()
            pending = [
                c for c in self.clock.getDelayedCalls() if c.getTime() <= self.clock.seconds()
            ]
            if not moved and not pending:
                return
            self.clock.advance(0)

    def disconnect_all(self) -> list[IDelayedCall]:
        """Break every pipe made by :meth:`connect` and every link of ``network`` at once,
        as a network failure would, and return the clock's delayed calls still pending.
        With no worker service running, that list should be empty: a timer left behind by
        a connection that is gone is a leak."""
        for pipe in self.pipes:
            pipe.disconnect()
        for link in list(self.network.links):
            link.disconnect()
        return list(self.clock.getDelayedCalls())

    def worker_service(self, worker: Worker) -> WorkerService:
        """The service a deployed worker runs (:func:`replication.worker.worker_service`),
        dialing the master over ``network`` from a host named after the worker. Not
        started: call ``startService()``."""
        endpoint = self.network.client_endpoint(worker.config.name, self.MASTER_HOST)
        return worker_service(worker, endpoint, self.clock)


__all__ = [
    "Harness",
    "MemoryClientEndpoint",
    "MemoryNetwork",
    "MemoryPipe",
    "MemoryPort",
    "MemoryServerEndpoint",
    "NetworkLink",
    "NetworkNotIdle",
    "PipeTransport",
    "Recording",
    "clock_and_pump",
]
