"""cluster.ack_peers: a publish answered only once k peers have stored it (their HANDLED
reports of this master's origin), or with 504 after the timeout; pure PeerAcks with a Clock,
then through the master's connections and its HTTP publish."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyChannel

from replication.http import JsonRequest, admin_site
from replication.master import Master, MasterConnection
from replication.master.acks import AckTimeout, PeerAcks
from replication.master.log import PublishError
from replication.testing import Harness

PEER_B = "B" * 22
PEER_C = "C" * 22


def outcome(d: Any) -> list[Any]:
    results: list[Any] = []
    d.addBoth(results.append)
    return results


def test_a_publish_waits_for_k_distinct_peers() -> None:
    clock = Clock()
    acks = PeerAcks(2, 5.0, clock)
    done = outcome(acks.wait("events", 3))
    acks.stored("events", PEER_B, 3)
    acks.stored("events", PEER_B, 4)  # the same peer twice is one confirmation
    assert done == []
    acks.stored("other", PEER_C, 9)  # another stream does not count
    assert done == []
    acks.stored("events", PEER_C, 2)  # not far enough
    assert done == []
    acks.stored("events", PEER_C, 3)
    assert done == [None]
    assert acks.pending == 0 and acks.confirmed == 1
    assert not clock.getDelayedCalls()


def test_what_peers_stored_before_is_counted_at_once() -> None:
    acks = PeerAcks(1, 5.0, Clock())
    acks.stored("events", PEER_B, 10)
    assert outcome(acks.wait("events", 7)) == [None]
    assert outcome(PeerAcks(0, 5.0, Clock()).wait("events", 1)) == [None]


def test_a_publish_not_confirmed_in_time_fails_with_what_was_confirmed() -> None:
    clock = Clock()
    acks = PeerAcks(2, 5.0, clock)
    acks.stored("events", PEER_B, 1)
    done = outcome(acks.wait("events", 1))
    clock.advance(4.9)
    assert done == []
    clock.advance(0.1)
    (failure,) = done
    assert isinstance(failure, Failure) and isinstance(failure.value, AckTimeout)
    assert str(failure.value) == (
        "stored on this master (events token 1) but confirmed by 1 of the 2 peers "
        "cluster.ack_peers asks for within 5s; it will still reach them"
    )
    assert acks.pending == 0 and acks.timed_out == 1
    acks.stored("events", PEER_C, 1)  # late: nothing left to fire


def test_a_deleted_stream_forgets_what_peers_stored() -> None:
    acks = PeerAcks(1, 5.0, Clock())
    acks.stored("events", PEER_B, 5)
    acks.forget("events")
    assert acks.confirmations("events", 1) == 0


def peer(harness: Harness, origin: str) -> tuple[MasterConnection, StringTransport]:
    connection = MasterConnection(harness.master)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(f"NAME {origin[:4]}\nVERSION 2\nORIGIN {origin} {'f' * 16}\n".encode())
    own = harness.master.log.origin_id
    connection.dataReceived(f"RELAY * {own}\n".encode())
    return connection, transport


def ack_harness(tmp_path: Path, wanted: int) -> Harness:
    harness = Harness(tmp_path)
    old = harness.master
    harness.master = Master(
        old.config, harness.store, harness.clock, clustered=True, ack_peers=wanted,
        ack_timeout=2.0,
    )
    return harness


def test_peers_handled_reports_confirm_a_publish(tmp_path: Path) -> None:
    harness = ack_harness(tmp_path, 1)
    own = harness.master.log.origin_id
    connection, transport = peer(harness, PEER_B)
    done = outcome(harness.master.publish("events", [1]))
    assert done == []
    for _ in range(5):
        harness.clock.advance(0)
    assert f"RDATA events@{own} 1 1" in transport.value().decode().splitlines()
    connection.dataReceived(f"HANDLED events@{own} 1\n".encode())
    assert done == [1]


def test_a_worker_handled_report_is_not_a_confirmation(tmp_path: Path) -> None:
    harness = ack_harness(tmp_path, 1)
    own = harness.master.log.origin_id
    worker = MasterConnection(harness.master)
    transport = StringTransport()
    worker.makeConnection(transport)
    worker.dataReceived(b"NAME w\nVERSION 2\nREPLICATE events -\n")
    done = outcome(harness.master.publish("events", [1]))
    worker.dataReceived(f"HANDLED events@{own} 1\n".encode())
    assert done == []
    harness.clock.advance(2.0)
    (failure,) = done
    assert isinstance(failure.value, PublishError) and failure.value.status == 504


@pytest.mark.parametrize("wanted", [0, 1])
def test_http_publish_answers_504_when_peers_do_not_confirm(tmp_path: Path, wanted: int) -> None:
    harness = ack_harness(tmp_path, wanted)
    channel = DummyChannel()
    channel.site = admin_site(harness.master)
    post = JsonRequest(channel)
    body = b'{"rows": [1]}'
    post.gotLength(len(body))
    post.handleContentChunk(body)
    post.requestReceived(b"POST", b"/streams/events", b"HTTP/1.1")
    if not wanted:
        assert post.finished and post.code == 200
        return
    assert not post.finished
    harness.clock.advance(2.0)
    assert post.finished and post.code == 504
    written = channel.transport.written.getvalue()
    assert b'"error":"stored on this master (events token 1) but confirmed by 0 of the 1' in (
        written
    )
