"""Several masters on one PostgreSQL database: every master's fan-out delivers every token
of a stream once, in token order, whoever committed it; the watcher that pokes a master
when another commits (and on a timer, the backstop); publishes answered 503 while the
database is away, and a master that recovers by itself.

The in-process tests run real :class:`~replication.master.Master` objects on a real
PostgreSQL schema, with each master's store threads replaced by a
:class:`~helpers.ManualRunner`, so that random interleavings of commits and pokes are
explicit and repeatable."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from helpers import ManualRunner
from postgres import dsn_for
from replication.config import MasterConfig
from replication.master import Master, MasterConnection
from replication.master.watch import SharedStoreWatcher

pytest.importorskip("psycopg")

from replication.store.postgres import PostgresStore  # noqa: E402


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A PostgreSQL schema of the test's own (see tests/postgres.py)."""
    from postgres import temporary_schema

    yield from temporary_schema()


@dataclasses.dataclass
class Node:
    """One master on the shared schema, its store's runner, a subscriber and a watcher."""

    master: Master
    store: PostgresStore
    runner: ManualRunner
    transport: StringTransport
    watcher: SharedStoreWatcher

    def tokens(self) -> list[tuple[int, str]]:
        """``(token, row)`` of every RDATA the subscriber received, in order."""
        out = []
        pending: list[str] = []
        for line in self.transport.value().decode().splitlines():
            if line.startswith("RDATA events "):
                _, _, token, row = line.split(" ", 3)
                if token == "batch":
                    pending.append(row)
                    continue
                for r in [*pending, row]:
                    out.append((int(token), r))
                pending = []
        return out


def node(dsn: str, schema: str, clock: Clock) -> Node:
    store = PostgresStore(dsn, schema)
    runner = ManualRunner()
    config = dataclasses.replace(MasterConfig(), streams=("events",))
    master = Master(config, store, clock, run_blocking=runner)
    runner.run_all()
    connection = MasterConnection(master)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(b"NAME w\nREPLICATE events 0\n")
    runner.run_all()
    watcher = SharedStoreWatcher(
        master.log, store, clock, succeed(None), poll_interval=1.0, listen=False
    )
    watcher.startService()
    return Node(master, store, runner, transport, watcher)


def finish(nodes: list[Node], clock: Clock) -> None:
    for _ in range(3):
        for n in nodes:
            n.runner.run_all()
        clock.advance(1.0)  # the backstop pokes every master
        for n in nodes:
            n.runner.run_all()


@pytest.mark.parametrize("seed", range(4))
def test_every_master_delivers_every_token_once_in_order(pg_schema: str, seed: int) -> None:
    """Three masters on one schema publish, commit (group commit: several publishes per
    commit) and are poked in a random interleaving; some pokes are never made (lost
    notifications) and only the backstop timer catches up. Every master's subscriber ends
    with tokens 1..N once each, in order, each with the row the store holds for it, and every
    master reports the same head."""
    rng = random.Random(seed)
    clock = Clock()
    dsn = dsn_for(pg_schema)
    nodes = [node(dsn, pg_schema, clock) for _ in range(3)]
    answered: list[int] = []
    try:
        for step in range(150):
            n = rng.choice(nodes)
            op = rng.random()
            if op < 0.45:
                n.master.publish("events", [{"step": step}]).addCallback(answered.append)
            elif op < 0.85 and n.runner.queue:
                n.runner.run_one()
            elif op < 0.93:
                n.watcher.changed()  # a notification
            else:
                clock.advance(rng.choice([0.2, 0.5, 1.0]))
        finish(nodes, clock)
        head = nodes[0].store.head("events")
        assert sorted(answered) == list(range(1, head + 1))
        stored = {
            e.token: e.rows[0] for e in nodes[0].store.read("events", 0, head, 10**6)
        }
        for n in nodes:
            got = n.tokens()
            assert [t for t, _ in got] == list(range(1, head + 1))
            assert all(stored[t] == row for t, row in got)
            assert n.master.head("events") == head
    finally:
        for n in nodes:
            n.watcher.stopService()
            n.store.close()


def test_the_watcher_coalesces_pokes_and_polls_as_a_backstop() -> None:
    """A wake-up while a poke runs makes one more poke after it (however many came); the
    timer pokes every poll_interval from the moment the store is open; stopping stops it."""

    class Log:
        def __init__(self) -> None:
            self.pokes: list[Deferred[None]] = []

        def poke(self) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            self.pokes.append(d)
            return d

    class Source:
        def wait_for_change(self, timeout: float) -> bool:
            return False

        def close_listener(self) -> None:
            pass

    clock = Clock()
    log: Any = Log()
    ready: Deferred[None] = Deferred()
    watcher = SharedStoreWatcher(log, Source(), clock, ready, poll_interval=2.0, listen=False)
    watcher.startService()
    clock.advance(5)
    assert log.pokes == []  # not before the store is open
    ready.callback(None)
    watcher.changed()
    watcher.changed()
    watcher.changed()
    assert len(log.pokes) == 1
    log.pokes[0].callback(None)
    assert len(log.pokes) == 2  # the three wake-ups made one more
    log.pokes[1].errback(RuntimeError("database away"))  # logged, not raised
    clock.advance(2.0)
    assert len(log.pokes) == 3  # the backstop
    log.pokes[2].callback(None)
    watcher.stopService()
    clock.advance(10)
    assert len(log.pokes) == 3
    assert clock.getDelayedCalls() == []


def test_a_master_learns_of_another_masters_commit_by_notification(pg_schema: str) -> None:
    """With the real listening thread: a row committed by another store reaches this
    master's subscriber at once, long before the (one-hour) backstop."""
    # The listening thread hands wake-ups over with callFromThread: collect them here and
    # run them on the test's thread, as the reactor would.
    calls: list[Any] = []

    class Reactor(Clock):
        def callFromThread(self, f: Any, *args: Any) -> None:
            calls.append((f, args))

    clock = Reactor()
    dsn = dsn_for(pg_schema)
    a = node(dsn, pg_schema, clock)
    other = PostgresStore(dsn, pg_schema)
    watcher = SharedStoreWatcher(
        a.master.log, a.store, clock, succeed(None), poll_interval=3600.0, listen=True
    )
    try:
        watcher.startService()
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:  # the first wait: listening
            time.sleep(0.01)
        calls.clear()
        other.append([("events", ['{"from":"other"}'])], 0)
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert calls, "no wake-up within 5 s"
        for f, args in calls:
            f(*args)
        a.runner.run_all()
        a.runner.run_all()
        assert a.tokens() == [(1, '{"from":"other"}')]
    finally:
        watcher._stop.set()
        if watcher._thread is not None:
            watcher._thread.join(5)
        a.watcher.stopService()
        a.store.close()
        other.close()
