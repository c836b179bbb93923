"""Protocol versions through the Twisted layer: what a master sends a legacy (Synapse
2017-2020) worker, which announces nothing, and what it sends our own worker, which
negotiates version 1; the fan-out's GAP and RESET branch per dialect; the worker against an
older master; the metrics by dialect."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from replication.config import RetentionConfig
from replication.master import MasterConnection
from replication.master.fanout import FanOut
from replication.master.log import StreamLog
from replication.store import Retention
from replication.store.asynchronous import InlineStore
from replication.store.memory import MemoryStore
from replication.testing import Harness, Recording
from replication.wire.commands import Command, ReplicateCommand
from replication.wire.dialects import LEGACY, VERSION_1, VERSION_3
from replication.worker import WorkerConnection

#: What the legacy dialect has; a Synapse worker answers anything else with ERROR.
LEGACY_COMMANDS = {"SERVER", "RDATA", "POSITION", "PING", "ERROR"}


def raw_connection(harness: Harness) -> tuple[MasterConnection, StringTransport]:
    connection = MasterConnection(harness.master)
    transport = StringTransport()
    connection.makeConnection(transport)
    return connection, transport


def settle(harness: Harness) -> None:
    """Let the catch-up pump's zero-delay calls run."""
    for _ in range(20):
        harness.clock.advance(0)


def lines(transport: StringTransport) -> list[str]:
    return transport.value().decode().splitlines()


def substitutions(harness: Harness, command: str) -> float | None:
    return harness.master.metrics.registry.get_sample_value(
        "replication_legacy_substitutions_total", {"command": command}
    )


def assert_only_legacy_commands(sent: list[str]) -> None:
    assert {line.split(" ", 1)[0] for line in sent} <= LEGACY_COMMANDS, sent


# -- a legacy worker -----------------------------------------------------------------------


def test_a_legacy_worker_ahead_of_the_head_gets_position_at_the_head(tmp_path: Path) -> None:
    """A worker that announces nothing and asks for events after 50 while the head is 3 is
    sent POSITION events 3 (no RESET, no VERSION), is live from there, and the substitution
    is counted."""
    harness = Harness(tmp_path)
    for i in range(3):
        harness.publish("events", [i])
    connection, transport = raw_connection(harness)
    connection.dataReceived(b"NAME synapse-like\nREPLICATE events 50\n")
    settle(harness)
    harness.publish("events", [{"n": 4}])
    sent = lines(transport)
    assert sent == ["SERVER master", "POSITION events 3", 'RDATA events 4 {"n":4}']
    assert_only_legacy_commands(sent)
    assert connection.dialect == LEGACY.name
    assert not transport.disconnecting
    assert substitutions(harness, "RESET") == 1
    assert substitutions(harness, "GAP") == 0


def test_a_legacy_worker_behind_retention_gets_position_at_the_last_dropped_token(
    tmp_path: Path,
) -> None:
    """With retention of 10 rows and 100 tokens, a legacy worker at 0 is sent POSITION
    events 90 in place of GAP events 1 90, then 91..100 and POSITION events 100."""
    harness = Harness(tmp_path, retention=RetentionConfig(max_rows=10))
    for i in range(1, 101):
        harness.publish("events", [i])
    connection, transport = raw_connection(harness)
    connection.dataReceived(b"NAME synapse-like\nREPLICATE events 0\n")
    settle(harness)
    sent = lines(transport)
    assert sent == [
        "SERVER master",
        "POSITION events 90",
        *(f"RDATA events {t} {t}" for t in range(91, 101)),
        "POSITION events 100",
    ]
    assert_only_legacy_commands(sent)
    assert substitutions(harness, "GAP") == 1


def test_a_worker_that_announces_nothing_and_idles_is_legacy_after_the_deadline(
    tmp_path: Path,
) -> None:
    """NAME and then silence: after keepalive.ping_timeout the master completes the
    handshake in the legacy dialect; it sent only SERVER and PINGs, and did not close."""
    harness = Harness(tmp_path)
    connection, transport = raw_connection(harness)
    connection.dataReceived(b"NAME quiet\n")
    timeout = harness.config.keepalive.ping_timeout
    harness.clock.advance(timeout - 0.01)
    assert connection.peer_name is None
    harness.clock.advance(0.01)
    assert (connection.peer_name, connection.dialect) == ("quiet", LEGACY.name)
    assert {line.split(" ")[0] for line in lines(transport)} == {"SERVER", "PING"}
    assert not transport.disconnecting
    connection.connectionLost()
    assert harness.clock.getDelayedCalls() == []


# -- our worker ----------------------------------------------------------------------------


def test_a_worker_announcing_version_1_gets_reset_on_the_wire(tmp_path: Path) -> None:
    """A worker that announces VERSION 1 is answered VERSION 1 and, ahead of the head, gets
    RESET and the replay as before protocol versions."""
    harness = Harness(tmp_path)
    for i in range(1, 3):
        harness.publish("events", [i])
    connection, transport = raw_connection(harness)
    connection.dataReceived(b"NAME w\nVERSION 1\nREPLICATE events 50\n")
    settle(harness)
    assert lines(transport) == [
        "SERVER master", "VERSION 1", "RESET events 2",
        "RDATA events 1 1", "RDATA events 2 2", "POSITION events 2",
    ]
    assert connection.dialect == VERSION_1.name
    assert substitutions(harness, "RESET") == 0


def test_our_worker_negotiates_version_3_and_handles_gap(tmp_path: Path) -> None:
    """Our worker, through a MemoryPipe, agrees on version 3 with the master; behind
    retention it gets GAP and its handler's gap hook runs, then the retained tokens. (Its
    RESET through a MemoryPipe is tests/test_replication.py's
    test_a_worker_ahead_of_the_master_is_reset_and_replayed, which negotiates the same way.)"""
    harness = Harness(tmp_path, retention=RetentionConfig(max_rows=10))
    for i in range(100):
        harness.publish("events", [i])
    handler = Recording()
    worker = harness.worker(handler)
    pipe = harness.connect(worker)
    harness.run(pipe)
    assert pipe.server.dialect == pipe.client.dialect == VERSION_3.name  # type: ignore[attr-defined]
    assert handler.events[0] == ("gap", "events", 1, 90)
    assert handler.token_numbers() == list(range(91, 101))
    assert substitutions(harness, "GAP") == 0


@pytest.mark.parametrize("announcement, error", [
    (b"VERSION x", "ERROR version must be a positive integer, got 'x'"),
    (b"VERSION", "ERROR VERSION takes 1 to 16 versions: VERSION <version>[ <version>...]"),
    (b"VERSION 7",
     "ERROR no common protocol version: the worker speaks 7, this master speaks 3 2 1"),
])
def test_a_garbled_announcement_gets_a_clear_error_and_a_close(
    tmp_path: Path, announcement: bytes, error: str
) -> None:
    """An announcement that does not parse, or names no version this master speaks, is
    answered with an ERROR that says so, and the connection is closed."""
    harness = Harness(tmp_path)
    connection, transport = raw_connection(harness)
    connection.dataReceived(b"NAME w\n" + announcement + b"\nREPLICATE events 0\n")
    assert lines(transport) == ["SERVER master", error]
    assert transport.disconnecting


def test_version_after_the_handshake_is_refused(tmp_path: Path) -> None:
    """VERSION is part of the handshake only: sent again it is a protocol error."""
    harness = Harness(tmp_path)
    connection, transport = raw_connection(harness)
    connection.dataReceived(b"NAME w\nVERSION 1\nVERSION 1\n")
    assert lines(transport)[-1] == "ERROR VERSION may only be sent once, during the handshake"
    assert transport.disconnecting


def test_our_worker_against_an_older_master_logs_what_to_do(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An older master answers the announcement with ERROR unknown command 'VERSION' and
    closes: the worker sends nothing more (no REPLICATE, no ERROR of its own) and logs that
    the masters must be upgraded before their workers."""
    harness = Harness(tmp_path)
    worker = harness.worker(Recording())
    connection = WorkerConnection(worker)
    transport = StringTransport()
    connection.makeConnection(transport)
    with caplog.at_level(logging.ERROR):
        connection.dataReceived(b"SERVER old-master\nERROR unknown command 'VERSION'\n")
    assert lines(transport) == ["NAME w1", "VERSION 3 2 1"]
    assert "Upgrade the masters before their workers" in caplog.text
    assert "old-master" in caplog.text
    assert worker.connection is None


# -- the fan-out's branch, and the metrics --------------------------------------------------


class LegacyFollower:
    """A Follower of the legacy dialect that records lines."""

    dialect = LEGACY.name

    def __init__(self) -> None:
        self.data = b""
        self.can_write = True

    def write(self, data: bytes) -> None:
        self.data += data

    def send(self, command: Command) -> None:
        self.data += command.to_line() + b"\n"

    def send_error(self, message: str) -> None:
        raise AssertionError(message)

    def describe(self) -> str:
        return "legacy follower"

    def lines(self) -> list[str]:
        taken, self.data = self.data.decode().splitlines(), b""
        return taken


def test_skipped_tokens_reach_legacy_followers_as_position() -> None:
    """Tokens another writer committed and retention dropped before this master read them:
    a legacy live follower is caught up again and an ALL follower told at once, each with
    POSITION in place of GAP, never a GAP."""
    store = MemoryStore()
    writer = StreamLog(InlineStore(store), Clock(), lambda _: Retention(max_rows=1))
    writer.open(())
    reader = StreamLog(InlineStore(store), Clock(), lambda _: Retention())
    reader.open(())
    fanout = FanOut(reader, Clock(), page_rows=10, knows=lambda _: True)
    live, everything = LegacyFollower(), LegacyFollower()
    fanout.replicate(live, ReplicateCommand("s", None))
    fanout.replicate(everything, ReplicateCommand("ALL", None))
    assert live.lines() == ["POSITION s 0"]
    assert everything.lines() == []  # ALL names existing streams only; "s" has no publish yet
    for i in range(1, 4):
        writer.publish("s", [[str(i)]])
    reader.poke()
    assert live.lines() == ["POSITION s 2", "RDATA s 3 3"]
    assert everything.lines() == ["POSITION s 2", "RDATA s 3 3"]
    assert fanout.legacy_substitutions == {"GAP": 2, "RESET": 0}


def test_connections_are_counted_by_dialect(tmp_path: Path) -> None:
    """replication_connections_by_dialect counts handshaken connections per dialect, every
    dialect listed; a connection still negotiating is in neither."""
    harness = Harness(tmp_path)
    raw_connection(harness)[0].dataReceived(b"NAME legacy\nREPLICATE events 0\n")
    raw_connection(harness)[0].dataReceived(b"NAME ours\nVERSION 1\n")
    raw_connection(harness)[0].dataReceived(b"NAME undecided\n")
    registry = harness.master.metrics.registry

    def count(dialect: str) -> float | None:
        return registry.get_sample_value("replication_connections_by_dialect", {"dialect": dialect})

    assert (count(LEGACY.name), count(VERSION_1.name)) == (1, 1)
    assert registry.get_sample_value("replication_connections_open") == 3
