"""The master's publish path with a blocking store: group commit, acknowledgement only after
commit, fan-out only after commit, failures, the pending bound, and background retention.

The writer thread is replaced by a runner that queues calls until the test lets them run,
so every interleaving is explicit."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from helpers import ManualRunner
from replication.config import MasterConfig, RetentionConfig
from replication.master import Master, MasterConnection, PublishError
from replication.store import StoreError
from replication.store.memory import MemoryStore
from replication.store.sqlite import SqliteStore


class BlockingMemoryStore(MemoryStore):
    """The memory store, declared blocking, counting appends and able to fail them."""

    blocking = True

    def __init__(self) -> None:
        super().__init__()
        self.appends: list[int] = []
        self.fail_next = False

    def append(
        self, batch: Sequence[tuple[str, Sequence[str]]], now: float, origin: str = ""
    ) -> list[int]:
        if self.fail_next:
            self.fail_next = False
            raise StoreError("disk full")
        self.appends.append(len(batch))
        return super().append(batch, now, origin)


def make(store: Any = None, **changes: Any) -> tuple[Master, Any, ManualRunner, Clock]:
    clock = Clock()
    runner = ManualRunner()
    store = store if store is not None else BlockingMemoryStore()
    config = dataclasses.replace(MasterConfig(), **changes)
    master = Master(config, store, clock, run_blocking=runner)
    runner.run_all()  # the store is opened on the writer thread
    return master, store, runner, clock


def subscriber(master: Master) -> StringTransport:
    connection = MasterConnection(master)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(b"NAME w\nREPLICATE events NOW\n")
    transport.clear()
    return transport


def test_publishes_during_a_commit_share_the_next_commit() -> None:
    """The first publish starts a commit; the three that arrive while it runs are committed
    together in one append; tokens are in arrival order."""
    master, store, runner, _ = make()
    results: list[int] = []
    for i in range(4):
        master.publish("events", [i]).addCallback(results.append)
    assert len(runner.queue) == 1
    runner.run_one()
    assert results == [1]
    assert len(runner.queue) == 1
    runner.run_one()
    assert results == [1, 2, 3, 4]
    assert store.appends == [1, 3]


def test_nothing_is_acknowledged_or_sent_before_the_commit() -> None:
    """Until the store has committed a token, its publisher has no answer and no worker
    has seen it; then both happen."""
    master, _, runner, _ = make()
    transport = subscriber(master)
    results: list[int] = []
    master.publish("events", [{"a": 1}]).addCallback(results.append)
    assert results == [] and transport.value() == b""
    assert master.head("events") == 0
    runner.run_one()
    assert results == [1]
    assert transport.value() == b'RDATA events 1 {"a":1}\n'


def test_a_failed_commit_fails_its_publishes_and_the_next_commit_proceeds() -> None:
    """Every publish of a failed commit gets a 503 PublishError and nothing is sent; the
    publishes queued behind it are committed normally afterwards."""
    master, store, runner, _ = make()
    transport = subscriber(master)
    errors: list[PublishError] = []
    results: list[int] = []
    store.fail_next = True
    master.publish("events", [1]).addErrback(lambda f: errors.append(f.value))
    master.publish("events", [2]).addCallback(results.append)
    runner.run_one()
    assert [e.status for e in errors] == [503]
    assert "disk full" in errors[0].message
    runner.run_one()
    assert results == [1]
    assert transport.value() == b"RDATA events 1 2\n"


def test_too_many_waiting_rows_are_refused() -> None:
    """Rows waiting for a commit are bounded: past max_pending_rows a publish fails with
    503 at once and nothing of it is queued."""
    clock = Clock()
    runner = ManualRunner()
    master = Master(MasterConfig(), BlockingMemoryStore(), clock, run_blocking=runner,
                    max_pending_rows=5)
    runner.run_all()  # the store is opened on the writer thread
    master.publish("events", [0])  # being committed, not pending
    master.publish("events", [1, 2, 3])
    master.publish("events", [4, 5])
    errors: list[PublishError] = []
    master.publish("events", [6]).addErrback(lambda f: errors.append(f.value))
    assert [e.status for e in errors] == [503]
    runner.run_all()
    assert master.head("events") == 3


def test_publishes_before_the_store_is_open_are_refused() -> None:
    """Until the store is open (on the writer thread) a publish fails with 503 and nothing
    of it is stored; once it is open, publishes are taken."""
    clock = Clock()
    runner = ManualRunner()
    store = BlockingMemoryStore()
    master = Master(MasterConfig(streams=("events",)), store, clock, run_blocking=runner)
    errors: list[PublishError] = []
    master.publish("events", [1]).addErrback(lambda f: errors.append(f.value))
    assert [(e.status, e.message) for e in errors] == [
        (503, "the master is still opening its store; retry shortly")
    ]
    assert store.appends == []
    opened: list[None] = []
    master.ready.addCallback(opened.append)
    runner.run_all()
    assert opened == [None]
    tokens: list[int] = []
    master.publish("events", [1]).addCallback(tokens.append)
    runner.run_all()
    assert tokens == [1] and store.appends == [1]


def test_a_blocking_store_requires_a_runner() -> None:
    with pytest.raises(ValueError, match="run_blocking"):
        Master(MasterConfig(), BlockingMemoryStore(), Clock())


def test_background_retention_runs_on_the_writer(tmp_path: Path) -> None:
    """With a blocking store, start() trims every trim_interval seconds through the writer,
    one pass at a time; a stream only subscribed to (never stored) is skipped."""
    store = SqliteStore(str(tmp_path / "s.sqlite3"))
    master, _, runner, clock = make(store, retention=RetentionConfig(max_rows=10))
    try:
        for i in range(30):
            master.publish("events", [i])
            runner.run_all()
        subscriber(master)  # no effect on retention
        master.start()
        clock.advance(master.trim_interval)
        clock.advance(master.trim_interval)  # the first pass is still queued: no second one
        assert len(runner.queue) == 1
        runner.run_all()
        assert store.oldest("events") == 21
        assert store.head("events") == 30
    finally:
        master.stop()
        store.close()


def test_in_memory_retention_by_age_trims_idle_streams() -> None:
    """With the memory store, the periodic pass also drops rows that aged out on a stream
    nobody publishes to any more."""
    clock = Clock()
    master = Master(dataclasses.replace(MasterConfig(), retention=RetentionConfig(max_age=60)),
                    MemoryStore(), clock)
    for i in range(3):
        master.publish("events", [i])
    master.publish("events", ["last"])
    master.start()
    clock.advance(120)
    assert master.store.oldest("events") == 4
    master.stop()


def test_several_tokens_of_one_call_commit_together_or_not_at_all() -> None:
    """publish_many puts its tokens in one commit: all consecutive, all acknowledged
    together; if that commit fails, every one of them fails with the same 503."""
    master, store, runner, _ = make()
    results: list[list[int]] = []
    master.publish("events", ["first"])  # starts a commit of its own
    master.publish_many("events", [[1], [2, 3], [4]]).addCallback(results.append)
    runner.run_all()
    assert results == [[2, 3, 4]]
    assert store.appends == [1, 3]
    errors: list[PublishError] = []
    store.fail_next = True
    master.publish_many("events", [[5], [6]]).addErrback(lambda f: errors.append(f.value))
    runner.run_all()
    assert [e.status for e in errors] == [503]
    assert master.head("events") == 4
