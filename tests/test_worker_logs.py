# twisted.internet.testing, twisted.application and twisted.python.failure have no annotations:
# mypy: disable-error-code="no-untyped-call"
"""What a worker logs about reaching its master and catching up, under a Clock: failed
connects (the first, then at most one line per interval with a count), reconnects, the
first success after failures, where each stream resumes from, catch-up progress and its
summary, and the line on a clean stop."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from replication.config import WorkerConfig, WorkerStream
from replication.wire.commands import ReplicateCommand
from replication.worker import Worker, worker_service
from replication.worker.positions import MemoryPositions
from replication.worker.reporting import (
    CatchupProgress,
    ConnectFailures,
    ConnectionReporter,
    describe_resume,
)

REPORTING = "replication.worker.reporting"


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.DEBUG) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


# -- the rate limit, pure ------------------------------------------------------------------


def test_failed_connects_are_logged_first_then_once_per_interval_at_its_edge() -> None:
    """The first failure is logged (speaking for 1 attempt); failures less than the interval
    after the last logged one are not; the first at exactly the interval is, speaking for
    every attempt since the last line."""
    failures = ConnectFailures(interval=30.0)
    assert failures.failed(100.0) == 1
    assert failures.failed(110.0) is None
    assert failures.failed(129.999) is None
    assert failures.failed(130.0) == 3
    assert failures.failed(159.999) is None
    assert failures.failed(160.0) == 2
    assert failures.attempts == 6
    assert failures.since_first(160.0) == 60.0


def test_a_success_ends_the_run_of_failures() -> None:
    """After a connection was made, the next failure is the first of a new run: logged at
    once, whatever the time since the last line."""
    failures = ConnectFailures(interval=30.0)
    assert failures.failed(0.0) == 1
    failures.succeeded()
    assert failures.attempts == 0 and failures.since_first(5.0) == 0.0
    assert failures.failed(1.0) == 1


# -- the reporter around a real ClientService -----------------------------------------------


class ScriptedEndpoint:
    """Fails each connect while ``refuse`` is set; else connects over a StringTransport."""

    def __init__(self) -> None:
        self.refuse = True
        self.protocols: list[Any] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        if self.refuse:
            return fail(ConnectionRefusedError("Connection refused"))
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        protocol.makeConnection(StringTransport())
        self.protocols.append(protocol)
        return succeed(protocol)


def reporting_service(
    clock: Clock, endpoint: ScriptedEndpoint, delay: float = 10.0
) -> ClientService:
    reporter = ConnectionReporter("tcp:host=master.example:port=9092", clock, interval=30.0)
    return ClientService(
        reporter.endpoint(endpoint),  # type: ignore[arg-type]
        Factory.forProtocol(Protocol),
        retryPolicy=reporter.retry_policy(lambda attempt: delay),
        clock=clock,
    )


def test_failed_connects_are_logged_rate_limited_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With a retry every 10 s and a 30 s interval: the failure at 0 s is a WARNING with its
    reason and the delay, those at 10 s and 20 s are DEBUG lines, the one at 30 s (the edge)
    is a WARNING that counts 3 attempts since the last report and 4 over 30 s; the connect
    that succeeds at 40 s says how many attempts failed over how long."""
    caplog.set_level(logging.DEBUG, logger=REPORTING)
    clock = Clock()
    endpoint = ScriptedEndpoint()
    service = reporting_service(clock, endpoint)
    service.startService()
    assert messages(caplog, logging.WARNING) == [
        (
            "cannot connect to master tcp:host=master.example:port=9092: Connection was refused "
            "by other side: Connection refused.; retrying in 10.0s"
        ),
    ]
    clock.advance(10)
    clock.advance(10)
    assert len(messages(caplog, logging.WARNING)) == 1
    assert messages(caplog)[1:] == [
        (
            "cannot connect to master tcp:host=master.example:port=9092 (attempt 2): Connection "
            "was refused by other side: Connection refused.; retrying in 10.0s"
        ),
        (
            "cannot connect to master tcp:host=master.example:port=9092 (attempt 3): Connection "
            "was refused by other side: Connection refused.; retrying in 10.0s"
        ),
    ]
    clock.advance(10)
    assert messages(caplog, logging.WARNING)[1] == (
        "still cannot connect to master tcp:host=master.example:port=9092: Connection was "
        "refused by other side: Connection refused. (3 failed attempts since the last report, "
        "4 over 30s); retrying in 10.0s"
    )
    endpoint.refuse = False
    clock.advance(10)
    assert messages(caplog, logging.INFO)[-1] == (
        "reached master tcp:host=master.example:port=9092 after 4 failed attempts over 40s"
    )
    service.stopService()
    assert clock.getDelayedCalls() == []


def test_a_lost_connection_is_logged_as_a_reconnect(caplog: pytest.LogCaptureFixture) -> None:
    """A connection that is lost is followed by ``reconnecting ... in <delay>``, not by a
    failed-connect warning; a first connect that works logs nothing here."""
    caplog.set_level(logging.DEBUG, logger=REPORTING)
    clock = Clock()
    endpoint = ScriptedEndpoint()
    endpoint.refuse = False
    service = reporting_service(clock, endpoint, delay=2.5)
    service.startService()
    assert messages(caplog) == []
    endpoint.protocols[0].connectionLost(Failure(ConnectionDone()))
    assert messages(caplog) == ["reconnecting to master tcp:host=master.example:port=9092 in 2.5s"]
    clock.advance(2.5)
    assert len(endpoint.protocols) == 2
    assert messages(caplog) == ["reconnecting to master tcp:host=master.example:port=9092 in 2.5s"]
    service.stopService()


def test_a_connect_cancelled_by_stopping_is_not_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    """Stopping the worker while it dials cancels the attempt: nothing is logged for it."""
    caplog.set_level(logging.DEBUG, logger=REPORTING)

    class Pending:
        def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
            return Deferred()

    clock = Clock()
    reporter = ConnectionReporter("tcp:host=m:port=1", clock)
    service = ClientService(
        reporter.endpoint(Pending()),  # type: ignore[arg-type]
        Factory.forProtocol(Protocol), retryPolicy=reporter.retry_policy(lambda a: 1.0),
        clock=clock,
    )
    service.startService()
    service.stopService()
    assert messages(caplog) == [] and reporter.failures.attempts == 0


# -- the worker's service --------------------------------------------------------------------


def test_the_worker_service_logs_failed_connects_and_its_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker whose master refuses the connection logs a WARNING naming the configured
    master and the reason; stopping it logs the positions it stopped at."""
    caplog.set_level(logging.INFO)
    reactor = MemoryReactorClock()
    positions = MemoryPositions()
    positions.set("events", 7)
    config = WorkerConfig(name="w", streams=(WorkerStream("events"), WorkerStream("presence")))
    worker = Worker(config, lambda s, t, r: None, positions, reactor)
    from twisted.internet.endpoints import TCP4ClientEndpoint

    service = worker_service(worker, TCP4ClientEndpoint(reactor, "127.0.0.1", 9092), reactor)
    service.startService()
    connector = reactor.connectors[-1]
    reactor.tcpClients[-1][2].clientConnectionFailed(
        connector, Failure(ConnectionRefusedError("Connection refused"))
    )
    warnings = messages(caplog, logging.WARNING)
    assert len(warnings) == 1
    assert warnings[0].startswith(
        "cannot connect to master tcp:host=127.0.0.1:port=9092: Connection was refused"
    )
    service.stopService()
    assert messages(caplog, logging.INFO)[-1] == (
        "worker w stopped; positions recorded: events at 7, presence at no position"
    )
    assert reactor.getDelayedCalls() == []


# -- resuming and catching up ---------------------------------------------------------------


def test_describe_resume_says_where_each_stream_starts() -> None:
    """A recorded position resumes after it; none with ``from: earliest`` starts at the
    oldest retained token; ``from: latest`` starts from now; a recorded 0 (after a RESET)
    resumes after 0."""
    recorded = {"events": 41, "replayed": 0}
    commands = [
        ReplicateCommand("events", 41), ReplicateCommand("presence", 0),
        ReplicateCommand("typing", None), ReplicateCommand("replayed", 0),
    ]
    assert describe_resume(commands, recorded.get) == (
        "events after token 41, presence from its earliest retained token (no position "
        "recorded), typing from now (no position recorded, from: latest), replayed after "
        "token 0"
    )


def connected_worker(clock: Clock, positions: MemoryPositions) -> tuple[Worker, Any]:
    config = WorkerConfig(
        name="w",
        streams=(
            WorkerStream("events"),
            WorkerStream("presence"),
            WorkerStream("typing", "latest"),
        ),
    )
    worker = Worker(config, lambda s, t, r: None, positions, clock)
    connection = worker.factory().buildProtocol(None)
    connection.makeConnection(StringTransport())
    connection.dataReceived(b"SERVER m\nVERSION 1\n")
    return worker, connection


def rdata(connection: Any, stream: str, first: int, last: int) -> None:
    connection.dataReceived(
        b"".join(
            b'RDATA %s %d {"n":%d}\n' % (stream.encode(), t, t) for t in range(first, last + 1)
        )
    )


def test_a_new_connection_logs_where_each_stream_resumes(caplog: pytest.LogCaptureFixture) -> None:
    """After the handshake the worker logs one line with each stream's starting point."""
    caplog.set_level(logging.INFO, logger="replication.worker")
    positions = MemoryPositions()
    positions.set("events", 41)
    clock = Clock()
    worker, connection = connected_worker(clock, positions)
    assert (
        "resuming events after token 41, presence from its earliest retained token (no "
        "position recorded), typing from now (no position recorded, from: latest)"
    ) in messages(caplog)
    connection.connectionLost(Failure(ConnectionDone()))
    assert not worker.catchup.ticking


def test_a_long_catch_up_logs_progress_every_interval_and_a_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stream still catching up 5 s after its REPLICATE gets a progress line (position,
    newest token received, tokens handled and rate), not before (4.999 s: none); another
    5 s later, one more; its POSITION logs a summary and, once no stream catches up, the
    timer stops."""
    caplog.set_level(logging.INFO, logger=REPORTING)
    positions = MemoryPositions()
    positions.set("events", 10)
    clock = Clock()
    worker, connection = connected_worker(clock, positions)
    connection.dataReceived(b"POSITION presence 0\nPOSITION typing 9\n")
    assert worker.catchup.ticking
    rdata(connection, "events", 11, 30)
    clock.advance(4.999)
    assert messages(caplog) == []
    clock.advance(0.001)
    assert messages(caplog) == [
        "events: catching up, at token 30, newest received 30: 20 tokens in 5.0s (4 tokens/s)"
    ]
    rdata(connection, "events", 31, 80)
    clock.advance(5)
    assert messages(caplog)[-1] == (
        "events: catching up, at token 80, newest received 80: 50 tokens in 5.0s (10 tokens/s)"
    )
    connection.dataReceived(b"POSITION events 80\n")
    assert messages(caplog)[-1] == "events: caught up at token 80 (70 tokens in 10.0s)"
    assert not worker.catchup.ticking
    connection.connectionLost(Failure(ConnectionDone()))


def test_a_short_catch_up_logs_nothing_and_stops_its_timer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Streams that all catch up within the interval log no progress and no summary, and
    leave no timer behind."""
    caplog.set_level(logging.INFO, logger=REPORTING)
    clock = Clock()
    worker, connection = connected_worker(clock, MemoryPositions())
    rdata(connection, "events", 1, 5)
    clock.advance(4)
    connection.dataReceived(b"POSITION events 5\nPOSITION presence 0\nPOSITION typing 2\n")
    assert messages(caplog) == []
    assert not worker.catchup.ticking
    connection.connectionLost(Failure(ConnectionDone()))


def test_catch_up_progress_edges() -> None:
    """A catch-up of exactly the interval is long (it gets a summary); one a hair shorter is
    not; a stream that was not catching up has none."""
    progress = CatchupProgress(interval=5.0)
    progress.started("a", 10, 0.0)
    progress.started("b", None, 0.0)
    assert progress.finished("a", 15, 4.999) is None
    assert progress.finished("b", 7, 5.0) == (7, 5.0)
    assert progress.finished("c", 1, 9.0) is None
    assert not progress.active
