# twisted.internet.testing and twisted.python.failure have no annotations:
# mypy: disable-error-code="no-untyped-call"
"""The worker's service tree on a MemoryReactorClock: its children start in order (metrics
listener, position sync, connection) and stop in reverse, each stop finished before the
next begins; a listener that cannot listen stops the start; nothing is left scheduled."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from replication.config import WorkerConfig, WorkerStream
from replication.worker import (
    POSITION_SYNC_INTERVAL,
    Worker,
    WorkerConnection,
    worker_service,
)
from replication.worker.positions import MemoryPositions
from replication.worker.service import WorkerService


class RecordingPositions(MemoryPositions):
    """Memory positions that note each sync in ``events``."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def sync(self) -> None:
        self.events.append("sync")


class Port:
    """A listening port whose stop the test finishes (``stopped``)."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.stopped: Deferred[None] = Deferred()

    def getHost(self) -> Any:
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "127.0.0.1", 9100)

    def stopListening(self) -> Deferred[None]:
        self.events.append("stop listening")
        return self.stopped


class ServerEndpoint:
    """Listens at once with a :class:`Port`, or fails with ``error``."""

    def __init__(self, events: list[str], error: Exception | None = None) -> None:
        self.events = events
        self.error = error
        self.port = Port(events)
        self.factory: IProtocolFactory | None = None

    def listen(self, factory: IProtocolFactory) -> Deferred[Port]:
        self.events.append("listen")
        self.factory = factory
        if self.error is not None:
            return fail(self.error)
        return succeed(self.port)


class ClientEndpoint(TCP4ClientEndpoint):
    """A TCP endpoint on the memory reactor that notes each connect in ``events``."""

    def __init__(self, reactor: MemoryReactorClock, events: list[str]) -> None:
        super().__init__(reactor, "master.example", 9092)
        self.events = events

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        self.events.append("connect")
        return super().connect(factory)


def build(with_metrics: bool = True, listen_error: Exception | None = None) -> tuple[
    WorkerService, MemoryReactorClock, list[str], ServerEndpoint, RecordingPositions
]:
    reactor = MemoryReactorClock()
    events: list[str] = []
    positions = RecordingPositions(events)
    worker = Worker(
        WorkerConfig(name="w", streams=(WorkerStream("events"),)), lambda s, t, r: None,
        positions, reactor,
    )
    server = ServerEndpoint(events, listen_error)
    service = worker_service(
        worker, ClientEndpoint(reactor, events), reactor,
        metrics_endpoint=server if with_metrics else None,  # type: ignore[arg-type]
    )
    return service, reactor, events, server, positions


def connect(service: WorkerService, reactor: MemoryReactorClock) -> tuple[
    Any, StringTransport
]:
    """Complete the connection the service dialled, and the master's first line; the
    protocol the transport talks to (ClientService's wrapper of the WorkerConnection)."""
    factory = reactor.tcpClients[-1][2]
    protocol = factory.buildProtocol(None)
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"SERVER m\nVERSION 1\n")
    assert isinstance(service.worker.connection, WorkerConnection)
    return protocol, transport


def test_children_start_in_order_and_stop_in_reverse_each_awaited() -> None:
    """Start: listen for metrics, then dial the master (positions are synced every
    second meanwhile). Stop: the connection closes first; only once it is closed are the
    positions synced a last time; only then does the metrics port stop; the service's stop
    ends when the port has stopped; no delayed call is left."""
    service, reactor, events, server, _ = build()
    assert [child.name for child in service] == ["metrics", "positions", "connection"]
    service.startService()
    assert events == ["listen", "connect"]
    assert service.when_listening().called
    protocol, transport = connect(service, reactor)
    reactor.advance(POSITION_SYNC_INTERVAL)
    assert events == ["listen", "connect", "sync"]
    del events[:]

    stopped = service.stopService()
    assert transport.disconnecting  # the connection is asked to close
    assert events == [] and not stopped.called  # nothing else until it has
    protocol.connectionLost(Failure(ConnectionDone()))
    assert events == ["sync", "stop listening"]
    assert not stopped.called  # the port's stop is awaited too
    server.port.stopped.callback(None)
    assert stopped.called
    assert reactor.getDelayedCalls() == []
    assert not service.running and not any(child.running for child in service)


def test_without_metrics_there_is_no_listener() -> None:
    """Without a metrics endpoint the tree is the position sync and the connection; it is
    listening at once, and stops with a last sync and no delayed call left."""
    service, reactor, events, _, _ = build(with_metrics=False)
    assert [child.name for child in service] == ["positions", "connection"]
    service.startService()
    assert events == ["connect"]
    assert service.when_listening().called
    stopped = service.stopService()
    assert stopped.called
    assert events == ["connect", "sync"]
    assert reactor.getDelayedCalls() == []


def test_a_listener_that_cannot_listen_stops_the_start() -> None:
    """Metrics that cannot listen make startService raise before the master is dialled;
    the position sync never starts; nothing is left scheduled."""
    error = CannotListenError("127.0.0.1", 9100, OSError("Address already in use"))
    service, reactor, events, _, _ = build(listen_error=error)
    with pytest.raises(CannotListenError):
        service.startService()
    assert events == ["listen"]
    assert not service.running and not any(child.running for child in service)
    assert reactor.tcpClients == []
    assert reactor.getDelayedCalls() == []
    service.stopService()  # as the CLI does on its way out: harmless
    assert events == ["listen"]


def test_the_metrics_listener_serves_the_worker_registry() -> None:
    """The metrics listener's site answers /metrics from the worker's own registry."""
    from twisted.web.test.requesthelper import DummyRequest

    service, _, _, server, _ = build()
    service.startService()
    site = server.factory
    request = DummyRequest([b"metrics"])
    resource = site.getResourceFor(request)  # type: ignore[union-attr]
    body = resource.render(request)
    assert b"replication_worker_connected 0.0" in body
    service.stopService()
    server.port.stopped.callback(None)


def test_a_failing_stop_does_not_stop_the_others() -> None:
    """A child whose stop fails (the last sync raises) is logged; the children before it
    in the start order still stop, and the tree's stop completes."""
    service, _, events, server, positions = build()
    service.startService()

    def broken_sync() -> None:
        events.append("sync")
        raise OSError("disk gone")

    positions.sync = broken_sync  # type: ignore[method-assign]
    stopped = service.stopService()
    assert events[-2:] == ["sync", "stop listening"]
    server.port.stopped.callback(None)
    assert stopped.called and stopped.result is None
