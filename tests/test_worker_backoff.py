# twisted.internet.testing and twisted.python.failure have no annotations:
# mypy: disable-error-code="no-untyped-call"
"""The worker's reconnection backoff: a connection that the master refuses soon after it was
made (even after a successful catch-up) counts as a failed attempt, so the wait keeps growing;
only a connection that lasted ``reconnect.healthy_after`` seconds brings it back to its
minimum. Driven by a MemoryReactorClock, with no jitter."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from replication.config import (
    ReconnectConfig,
    WorkerConfig,
    WorkerStream,
    load_worker_config,
)
from replication.worker import Worker, worker_service
from replication.worker.positions import MemoryPositions
from replication.worker.service import ReconnectBackoff, WorkerService

INITIAL = 0.5
MAXIMUM = 30.0
HEALTHY = 10.0


def build() -> tuple[WorkerService, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    config = WorkerConfig(
        name="w", streams=(WorkerStream("events"),),
        reconnect=ReconnectConfig(INITIAL, MAXIMUM, HEALTHY),
    )
    worker = Worker(config, lambda s, t, r: None, MemoryPositions(), reactor)
    worker.backoff = ReconnectBackoff(INITIAL, MAXIMUM, HEALTHY, jitter=lambda: 0.0)
    endpoint = TCP4ClientEndpoint(reactor, "master.example", 9092)
    service = worker_service(worker, endpoint, reactor)
    return service, reactor


def connect_and_catch_up(reactor: MemoryReactorClock) -> tuple[Any, StringTransport]:
    """Complete the last dial: handshake, the worker's REPLICATE, the master's catch-up."""
    protocol = reactor.tcpClients[-1][2].buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"SERVER m\nVERSION 1\nRDATA events 1 {}\nPOSITION events 1\n")
    assert b"REPLICATE events" in transport.value()
    return protocol, transport


def refuse(protocol: Any, reactor: MemoryReactorClock, after: float) -> float:
    """``after`` seconds on, the master answers ERROR and closes; the delay until the next
    dial."""
    reactor.advance(after)
    protocol.dataReceived(b"ERROR unknown command 'USER_SYNC'\n")
    before = set(reactor.getDelayedCalls())
    protocol.connectionLost(Failure(ConnectionDone()))
    (call,) = set(reactor.getDelayedCalls()) - before  # ClientService's wait
    delay: float = call.getTime() - reactor.seconds()
    return delay


def redial(reactor: MemoryReactorClock, delay: float) -> None:
    dials = len(reactor.tcpClients)
    reactor.advance(delay)
    assert len(reactor.tcpClients) == dials + 1


def test_refusals_after_catch_up_double_the_wait_up_to_the_maximum() -> None:
    """A master that refuses the worker 0.1 s after each catch-up: the waits are 2, 4, 8, ...
    seconds (each short connection counts as one more failed attempt than the 1 s wait
    after a healthy one), capped at ``max_delay``; never the minimum again."""
    service, reactor = build()
    service.startService()
    waits = []
    for _ in range(8):
        protocol, _ = connect_and_catch_up(reactor)
        waits.append(refuse(protocol, reactor, 0.1))
        redial(reactor, waits[-1])
    assert waits == pytest.approx([2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0])
    service.stopService()


def test_a_healthy_connection_brings_the_wait_back_to_its_minimum() -> None:
    """A connection that lasted exactly ``healthy_after`` seconds is healthy: the next wait
    is the one after any lost connection (1 s); one that lasted a millisecond less is not
    (the wait goes on doubling)."""
    service, reactor = build()
    service.startService()
    protocol, _ = connect_and_catch_up(reactor)
    first = refuse(protocol, reactor, 0.1)
    redial(reactor, first)
    protocol, _ = connect_and_catch_up(reactor)
    second = refuse(protocol, reactor, HEALTHY - 0.001)
    assert (first, second) == pytest.approx((2.0, 4.0))
    redial(reactor, second)
    protocol, _ = connect_and_catch_up(reactor)
    assert refuse(protocol, reactor, HEALTHY) == pytest.approx(1.0)
    service.stopService()
    assert reactor.getDelayedCalls() == []


def test_failed_dials_and_short_connections_add_up() -> None:
    """After two short connections, a dial that fails outright waits one doubling more."""
    backoff = ReconnectBackoff(INITIAL, MAXIMUM, HEALTHY, jitter=lambda: 0.0)
    assert backoff(1) == 1.0
    backoff.connection_ended(0.0)
    backoff.connection_ended(HEALTHY / 2)
    assert backoff.short_connections == 2
    assert backoff(1) == 4.0 and backoff(2) == 8.0
    backoff.connection_ended(HEALTHY)
    assert backoff(1) == 1.0


def test_healthy_after_is_configured_with_a_ten_second_default(tmp_path: Any) -> None:
    """``reconnect.healthy_after`` reads a duration; left out, it is 10 seconds, and the
    worker's backoff takes it from the config."""
    path = tmp_path / "w.yaml"
    path.write_text("name: w\nreconnect: {healthy_after: 90s}\n")
    config = load_worker_config(str(path))
    assert config.reconnect.healthy_after == 90.0
    assert WorkerConfig().reconnect.healthy_after == 10.0
    worker = Worker(config, lambda s, t, r: None, MemoryPositions(), MemoryReactorClock())
    assert worker.backoff.healthy_after == 90.0
