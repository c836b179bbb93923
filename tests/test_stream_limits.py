"""Streams a peer can make the master hold are bounded: following a stream never creates it,
and publishing to new streams stops at ``limits.max_streams`` with a clear refusal."""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from helpers import ManualRunner, raw_request
from replication.config import LimitsConfig, MasterConfig
from replication.http import admin_resource
from replication.master import Master, MasterConnection, PublishError
from replication.store.memory import MemoryStore


def limited_master(max_streams: int, **changes: Any) -> Master:
    config = dataclasses.replace(
        MasterConfig(), limits=LimitsConfig(max_streams=max_streams), **changes
    )
    return Master(config, MemoryStore(), Clock())


def connect(master: Master, lines: bytes) -> StringTransport:
    connection = MasterConnection(master)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(b"NAME w\n" + lines)
    return transport


def test_subscribing_to_invented_names_creates_no_stream() -> None:
    """2,000 REPLICATEs of names nobody published to leave the log, the store, the
    snapshot and the fan-out's records empty once the connection is gone; each was answered
    as an empty stream."""
    master = limited_master(10)
    lines = b"".join(
        b"REPLICATE s%d NOW\n" % i if i % 2 else b"REPLICATE s%d 0\n" % i for i in range(2000)
    )
    transport = connect(master, lines)
    answers = transport.value().decode().splitlines()
    assert answers.count("POSITION s1 0") == 1 and answers.count("POSITION s2 0") == 1
    assert master.log.states() == [] and master.store.keys() == []
    assert master.snapshot().streams == ()
    connection = next(iter(master.connections))
    connection.connectionLost(Failure(ConnectionDone()))
    assert master.connections == set() and master.fanout._streams == {}


def test_a_followed_stream_is_created_by_its_first_publish_and_delivered_live() -> None:
    """A worker following a stream before anyone published to it gets the first publish
    live, and only then does the stream exist."""
    master = limited_master(10)
    transport = connect(master, b"REPLICATE later NOW\n")
    transport.clear()
    assert master.log.state("later") is None
    master.publish("later", [1])
    assert transport.value() == b"RDATA later 1 1\n"
    assert [s.name for s in master.snapshot().streams] == ["later"]


def test_publishing_past_max_streams_is_refused_and_existing_streams_go_on() -> None:
    """With limits.max_streams 3 (one configured), two new streams are created, the third
    is refused with 403 naming the limit, and the existing ones still take publishes."""
    master = limited_master(3, streams=("events",))
    assert master.publish("a", [1]).result == 1
    assert master.publish("b", [1]).result == 1
    errors: list[PublishError] = []
    master.publish("c", [1]).addErrback(lambda f: errors.append(f.value))
    assert [(e.status, e.message) for e in errors] == [
        (403, "cannot create stream 'c': this master holds 3 streams already (limits.max_streams)")
    ]
    assert master.log.state("c") is None and "c" not in master.store.stream_names()
    assert master.publish("events", [1]).result == 1
    assert master.publish("a", [2]).result == 2


def test_the_limit_counts_new_streams_waiting_for_a_commit() -> None:
    """With a blocking store, new streams whose publishes wait for the next commit count
    against the limit; a failed commit gives their places back."""
    runner = ManualRunner()

    class Blocking(MemoryStore):
        blocking = True
        fail = False

        def append(self, batch: Any, now: float, origin: str = "") -> list[int]:
            if self.fail:
                from replication.store import StoreError

                raise StoreError("disk full")
            return super().append(batch, now, origin)

    store = Blocking()
    config = dataclasses.replace(MasterConfig(), limits=LimitsConfig(max_streams=2))
    master = Master(config, store, Clock(), run_blocking=runner)
    runner.run_all()
    results: list[Any] = []
    for stream in ("a", "b", "c"):
        master.publish(stream, [1]).addBoth(results.append)
    assert [r.value.status for r in results if not isinstance(r, int)] == [403]
    store.fail = True
    runner.run_all()
    assert len(results) == 3 and master.log.stream_names() == []
    store.fail = False
    master.publish("c", [1]).addBoth(results.append)
    master.publish("d", [1]).addBoth(results.append)
    runner.run_all()
    assert results[-2:] == [1, 1] and master.log.stream_names() == ["c", "d"]


def test_http_answers_the_stream_limit_with_403() -> None:
    master = limited_master(1, streams=("events",))
    status, _, body = raw_request(
        admin_resource(master), "POST", "/streams/other", b'{"rows": [1]}'
    )
    assert status == 403
    assert b"limits.max_streams" in body
