# twisted.internet.testing and twisted.python.failure have no annotations:
# mypy: disable-error-code="no-untyped-call"
"""A worker with several masters (``master`` a list): it dials one at random, moves to
another at once when a master cannot be reached or a healthy connection drops (each master
once per round, in a random order), and waits as its backoff says between rounds. Driven by
a MemoryReactorClock with a fixed shuffle and no jitter; ``master`` as a list in the
configuration and on the command line."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from replication.cli import build_parser
from replication.config import (
    WORKER,
    ConfigError,
    ReconnectConfig,
    WorkerConfig,
    WorkerStream,
    validate_worker,
    worker_config_from_text,
)
from replication.config.flags import apply_flags
from replication.worker import Worker, worker_service
from replication.worker.positions import MemoryPositions
from replication.worker.service import MasterRotation, ReconnectBackoff, WorkerService

INITIAL = 0.5
MAXIMUM = 30.0
HEALTHY = 10.0
MASTERS = ("tcp:host=a:port=1", "tcp:host=b:port=1", "tcp:host=c:port=1")
A = "AAAAAAAAAAAAAAAAAAAAAA"


def rotate(order: list[str]) -> None:
    """A 'shuffle' that the tests can follow: each round moves the first master last."""
    order.append(order.pop(0))


def build(
    masters: tuple[str, ...] = MASTERS,
) -> tuple[WorkerService, Worker, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    config = WorkerConfig(
        name="w", master=masters, streams=(WorkerStream("events"),),
        reconnect=ReconnectConfig(INITIAL, MAXIMUM, HEALTHY),
    )
    worker = Worker(config, lambda s, t, r: None, MemoryPositions(), reactor)
    worker.backoff = ReconnectBackoff(INITIAL, MAXIMUM, HEALTHY, jitter=lambda: 0.0)
    endpoints = {
        m: TCP4ClientEndpoint(reactor, m.split("host=")[1].split(":")[0], 1) for m in masters
    }
    service = worker_service(worker, endpoints, reactor, shuffle=rotate)
    return service, worker, reactor


def dialled(reactor: MemoryReactorClock) -> list[str]:
    return [host for host, *_ in reactor.tcpClients]


def refuse_dial(reactor: MemoryReactorClock) -> float:
    """The last dial fails (connection refused); the delay until the next one."""
    before = set(reactor.getDelayedCalls())
    reactor.tcpClients[-1][2].clientConnectionFailed(
        reactor.connectors[-1], Failure(ConnectionRefusedError("Connection refused"))
    )
    (call,) = set(reactor.getDelayedCalls()) - before
    delay: float = call.getTime() - reactor.seconds()
    reactor.advance(delay)
    return delay


def connect(reactor: MemoryReactorClock, origin: str | None = None) -> tuple[Any, StringTransport]:
    """Complete the last dial and the handshake (version 2 with ``origin``, else 1)."""
    protocol = reactor.tcpClients[-1][2].buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    if origin is None:
        protocol.dataReceived(b"SERVER m\nVERSION 1\n")
    else:
        protocol.dataReceived(f"SERVER m\nVERSION 2\nORIGIN {origin} fpfpfpfpfpfpfpfp\n".encode())
    return protocol, transport


def drop(protocol: Any, reactor: MemoryReactorClock, after: float) -> float:
    """``after`` seconds on the connection is lost; the delay until the next dial."""
    reactor.advance(after)
    before = set(reactor.getDelayedCalls())
    protocol.connectionLost(Failure(ConnectionDone()))
    (call,) = set(reactor.getDelayedCalls()) - before
    delay: float = call.getTime() - reactor.seconds()
    reactor.advance(delay)
    return delay


def test_unreachable_masters_are_each_tried_once_per_round_then_the_backoff() -> None:
    """a, b, c refuse: each is dialled once, at once after the other; then the backoff's
    wait (1 s, then 2 s) before each new round."""
    service, _, reactor = build()
    service.startService()
    delays = [refuse_dial(reactor) for _ in range(6)]
    assert dialled(reactor) == ["b", "c", "a", "b", "c", "a", "b"]
    assert delays == pytest.approx([0.0, 0.0, 1.0, 0.0, 0.0, 2.0])
    service.stopService()


def test_a_dropped_healthy_connection_moves_to_another_master_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Connected to b for an hour, b goes away: the worker dials another master at once,
    and logs which master it dials and reaches."""
    service, worker, reactor = build()
    with caplog.at_level(logging.INFO):
        service.startService()
        protocol, _ = connect(reactor, A)
        assert worker.endpoint_description == "tcp:host=b:port=1"
        assert worker.health()["endpoint"] == "tcp:host=b:port=1"
        assert worker.health()["origin"] == A
        assert drop(protocol, reactor, 3600) == pytest.approx(0.0)
    assert dialled(reactor) == ["b", "c"]
    assert "dialling master tcp:host=b:port=1" in caplog.text
    assert "connected to master m at tcp:host=b:port=1" in caplog.text
    assert f"master m is origin {A}" in caplog.text
    service.stopService()


def test_short_connections_do_not_loop_between_masters() -> None:
    """Masters that refuse the worker right after the handshake: each is tried once in the
    round, then the wait grows with every short connection (never a tight loop)."""
    service, _, reactor = build()
    service.startService()
    delays = []
    for _ in range(6):
        protocol, _ = connect(reactor)
        delays.append(drop(protocol, reactor, 0.1))
    assert dialled(reactor) == ["b", "c", "a", "b", "c", "a", "b"]
    assert delays[:2] == pytest.approx([0.0, 0.0])
    assert delays[2] == pytest.approx(INITIAL * 2 ** (1 + 3))  # one failed round, 3 short
    assert delays[5] > delays[2]
    service.stopService()


def test_one_master_waits_as_before() -> None:
    """With one master in a list the rotation changes nothing: every retry waits the
    backoff (1, 2, 4 s for refused dials)."""
    service, _, reactor = build(MASTERS[:1])
    service.startService()
    assert [refuse_dial(reactor) for _ in range(3)] == pytest.approx([1.0, 2.0, 4.0])
    assert dialled(reactor) == ["a"] * 4
    service.stopService()


def test_the_rotation_alone() -> None:
    """:class:`MasterRotation`: a round, its delays, a new round after a healthy drop."""
    backoff = ReconnectBackoff(INITIAL, MAXIMUM, HEALTHY, jitter=lambda: 0.25)
    rotation = MasterRotation(("a", "b", "c"), backoff, shuffle=lambda order: None)
    assert rotation.next() == "a" and rotation.left == ("b", "c")
    assert rotation.delay(1) == 0.25  # masters left: only the jitter
    assert rotation.next() == "b"
    rotation.connected()
    backoff.connection_ended(HEALTHY)
    assert rotation.delay(1) == 0.25
    assert rotation.left == ("a", "c")  # a new round of the others
    assert rotation.next() == "a" and rotation.next() == "c"
    assert rotation.delay(2) == backoff(1)  # the round is over
    assert rotation.failed_rounds == 1
    with pytest.raises(ValueError):
        MasterRotation((), backoff)


def test_a_new_round_does_not_start_with_the_master_tried_last() -> None:
    shuffles = iter([lambda order: None, lambda order: order.reverse()])
    backoff = ReconnectBackoff(INITIAL, MAXIMUM, HEALTHY, jitter=lambda: 0.0)
    rotation = MasterRotation(("a", "b"), backoff, shuffle=lambda order: next(shuffles)(order))
    assert [rotation.next(), rotation.next()] == ["a", "b"]
    assert [rotation.next(), rotation.next()] == ["a", "b"]  # shuffled b, a: b moved last


# -- configuration ---------------------------------------------------------------------------


def test_master_as_a_list_in_the_configuration() -> None:
    config = worker_config_from_text(
        "master:\n  - tcp:host=a:port=1\n  - tcp:host=b:port=1\nstreams: [events]\n"
    )
    assert config.master == ("tcp:host=a:port=1", "tcp:host=b:port=1")
    assert config.masters == config.master
    single = worker_config_from_text("master: tcp:host=a:port=1\n")
    assert single.master == "tcp:host=a:port=1" and single.masters == ("tcp:host=a:port=1",)


@pytest.mark.parametrize(("text", "message"), [
    ("master: []\n", "<string>:1: master: must name at least one master"),
    ("master:\n  - tcp:host=a:port=1\n  - tcp:host=a:port=1\n",
     "<string>:3: master[1]: duplicate master 'tcp:host=a:port=1' (also master[0])"),
    ("master:\n  - tcp:host=a:port=1\n  - 5\n", "<string>:3: master[1]: must be a string, got 5"),
    ("master:\n  - tcp:host=a:port=1\n  - ''\n", "<string>:3: master[1]: must not be empty"),
    ("master:\n  - bogus:x\n",
     "<string>:2: master[0]: invalid Twisted client endpoint 'bogus:x': Unknown endpoint "
     "type: 'bogus'"),
    ("master: {a: 1}\n",
     "<string>:1: master: must be a client endpoint or a list of them, got a mapping"),
])
def test_bad_master_lists_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        worker_config_from_text(text)
    assert str(caught.value) == message


def test_master_as_a_tuple_in_code_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"master\[1\]: duplicate master"):
        validate_worker(WorkerConfig(master=("tcp:host=a:port=1", "tcp:host=a:port=1")))
    with pytest.raises(ConfigError, match="master: must name at least one master"):
        validate_worker(WorkerConfig(master=()))


def test_master_is_repeatable_on_the_command_line() -> None:
    """``--master`` twice replaces the configured master with both; once, with one."""
    parser = build_parser()
    args = parser.parse_args(["worker", "--master", "tcp:host=a:port=1",
                              "--master", "tcp:host=b:port=1"])
    config = validate_worker(apply_flags(WORKER, WorkerConfig(), args))
    assert config.master == ("tcp:host=a:port=1", "tcp:host=b:port=1")
    args = parser.parse_args(["worker", "--master", "tcp:host=a:port=1"])
    assert apply_flags(WORKER, WorkerConfig(), args).master == "tcp:host=a:port=1"
