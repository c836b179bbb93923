"""The master's side of protocol version 2 (docs/protocol.rst, "Version 2: origins"), through
the Twisted layer with in-memory transports: ORIGIN first, qualified names, position vectors
per origin (catch-up, failover positions ahead of this master, RESET of the own origin only),
origins that appear later, REPLICATE ALL NOW, HANDLED, cluster peers (ORIGIN, RELAY,
RELAY *), and the refusal of older dialects on a master of a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.testing import StringTransport

from replication.master import MasterConnection
from replication.store import Entry
from replication.testing import Harness

OTHER = "O" * 22
THIRD = "T" * 22
PEER_FP = "p" * 16


def connect(harness: Harness, announce: bytes = b"VERSION 2 1") -> tuple[
    MasterConnection, StringTransport
]:
    connection = MasterConnection(harness.master)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(b"NAME w\n" + announce + b"\n")
    return connection, transport


def settle(harness: Harness) -> None:
    for _ in range(30):
        harness.clock.advance(0)


def lines(transport: StringTransport) -> list[str]:
    return transport.value().decode().splitlines()


def take(transport: StringTransport) -> list[str]:
    sent = lines(transport)
    transport.clear()
    return sent


def ingest(harness: Harness, stream: str, origin: str, first: int, values: list[int]) -> None:
    entries = [Entry(first + i, (str(v),)) for i, v in enumerate(values)]
    harness.master.log.ingest(stream, origin, entries)


def me(harness: Harness) -> str:
    origin = harness.master.log.origin_id
    assert origin is not None
    return origin


def test_version_2_names_the_master_first_and_qualifies_everything(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.publish("events", [1])
    connection, transport = connect(harness)
    own = me(harness)
    assert take(transport) == [
        "SERVER master", "VERSION 2", f"ORIGIN {own} {harness.master.fingerprint}"
    ]
    assert connection.dialect == "replication/2"
    connection.dataReceived(b"REPLICATE events -\n")
    settle(harness)
    assert take(transport) == [f"RDATA events@{own} 1 1", f"POSITION events@{own} 1"]
    harness.publish("events", [2, 3])
    assert take(transport) == [f"RDATA events@{own} batch 2", f"RDATA events@{own} 2 3"]


def test_a_vector_is_served_origin_by_origin(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    own = me(harness)
    for v in (1, 2, 3):
        harness.publish("events", [v])
    ingest(harness, "events", OTHER, 1, [10, 11, 12, 13])
    connection, transport = connect(harness)
    take(transport)
    connection.dataReceived(f"REPLICATE events {OTHER}:2,{own}:3\n".encode())
    settle(harness)
    assert take(transport) == [
        f"POSITION events@{own} 3",
        f"RDATA events@{OTHER} 3 12", f"RDATA events@{OTHER} 4 13", f"POSITION events@{OTHER} 4",
    ]
    # Live from both origins afterwards, each named.
    ingest(harness, "events", OTHER, 5, [14])
    harness.publish("events", [4])
    assert take(transport) == [f"RDATA events@{OTHER} 5 14", f"RDATA events@{own} 4 4"]


def test_a_position_ahead_on_another_origin_waits_instead_of_resetting(tmp_path: Path) -> None:
    """The failover case: the worker saw OTHER's tokens up to 5 elsewhere; this master has
    2. It is told POSITION 5 at once, never sent 3..5, and gets 6 on as they arrive."""
    harness = Harness(tmp_path)
    ingest(harness, "events", OTHER, 1, [1, 2])
    connection, transport = connect(harness)
    take(transport)
    connection.dataReceived(f"REPLICATE events {OTHER}:5\n".encode())
    settle(harness)
    # This master's own origin always answers (at 0 before its first publish).
    assert take(transport) == [f"POSITION events@{me(harness)} 0", f"POSITION events@{OTHER} 5"]
    ingest(harness, "events", OTHER, 3, [3, 4])
    assert take(transport) == []
    ingest(harness, "events", OTHER, 5, [5, 6, 7])
    assert take(transport) == [f"RDATA events@{OTHER} 6 6", f"RDATA events@{OTHER} 7 7"]
    ingest(harness, "events", OTHER, 8, [8])
    assert take(transport) == [f"RDATA events@{OTHER} 8 8"]
    assert harness.master.fanout.followers_ahead == 0


def test_the_own_origin_ahead_is_a_reset(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    own = me(harness)
    harness.publish("events", [1])
    connection, transport = connect(harness)
    take(transport)
    connection.dataReceived(f"REPLICATE events {own}:9\n".encode())
    settle(harness)
    assert take(transport) == [
        f"RESET events@{own} 1", f"RDATA events@{own} 1 1", f"POSITION events@{own} 1"
    ]
    assert harness.master.fanout.followers_ahead == 1


def test_an_origin_that_appears_later_is_sent_from_its_start(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    own = me(harness)
    harness.publish("events", [1])
    connection, transport = connect(harness)
    take(transport)
    connection.dataReceived(f"REPLICATE events {own}:1,{THIRD}:1\n".encode())
    settle(harness)
    assert take(transport) == [f"POSITION events@{own} 1", f"POSITION events@{THIRD} 1"]
    ingest(harness, "events", OTHER, 1, [5, 6])
    settle(harness)
    assert take(transport) == [
        f"RDATA events@{OTHER} 1 5", f"RDATA events@{OTHER} 2 6", f"POSITION events@{OTHER} 2"
    ]
    ingest(harness, "events", THIRD, 1, [7, 8])
    settle(harness)
    assert take(transport) == [f"RDATA events@{THIRD} 2 8"]
    ingest(harness, "events", OTHER, 3, [9])
    assert take(transport) == [f"RDATA events@{OTHER} 3 9"]


def test_replicate_now_and_all_now(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    own = me(harness)
    harness.publish("events", [1])
    ingest(harness, "events", OTHER, 1, [2])
    connection, transport = connect(harness)
    take(transport)
    connection.dataReceived(b"REPLICATE events NOW\n")
    assert take(transport) == [f"POSITION events@{own} 1", f"POSITION events@{OTHER} 1"]
    other, other_transport = connect(harness)
    take(other_transport)
    other.dataReceived(b"REPLICATE ALL NOW\n")
    assert sorted(take(other_transport)) == sorted(
        [f"POSITION events@{own} 1", f"POSITION events@{OTHER} 1"]
    )
    harness.publish("users", [3])
    ingest(harness, "events", OTHER, 2, [4])
    assert take(other_transport) == [f"RDATA users@{own} 1 3", f"RDATA events@{OTHER} 2 4"]
    assert take(transport) == [f"RDATA events@{OTHER} 2 4"]


def test_version_2_refuses_a_plain_token_and_an_unqualified_handled(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    connection, transport = connect(harness)
    take(transport)
    connection.dataReceived(b"REPLICATE events 4\n")
    assert take(transport) == [
        "ERROR REPLICATE events 4: protocol version 2 takes a position vector "
        "(<origin>:<token>[,...], or - for none)"
    ]
    assert transport.disconnecting
    connection, transport = connect(harness)
    take(transport)
    connection.dataReceived(b"REPLICATE events -\n")
    settle(harness)
    take(transport)
    connection.dataReceived(b"HANDLED events 0\n")
    assert take(transport) == [
        "ERROR HANDLED events: protocol version 2 names <stream>@<origin>"
    ]


def test_handled_is_kept_per_origin(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    own = me(harness)
    harness.publish("events", [1])
    harness.publish("events", [2])
    connection, transport = connect(harness)
    connection.dataReceived(b"REPLICATE events -\n")
    settle(harness)
    connection.dataReceived(f"HANDLED events@{own} 1\n".encode())
    assert harness.master.fanout.handled_positions(connection) == {f"events@{own}": 1}
    view = harness.master.snapshot().connections[0]
    (follow,) = view.streams
    # This master's own rows are shown by the stream's name alone.
    assert (follow.name, follow.position, follow.handled, follow.handled_lag) == (
        "events", 2, 1, 1
    )
    connection.dataReceived(f"HANDLED events@{own} 3\n".encode())
    assert lines(transport)[-1] == (
        f"ERROR HANDLED events@{own} 3: above the last token sent for it (2)"
    )


def test_a_version_1_worker_on_a_single_master_is_served_as_before(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.publish("events", [1])
    ingest(harness, "events", OTHER, 1, [2])
    connection, transport = connect(harness, b"VERSION 1")
    connection.dataReceived(b"REPLICATE events 0\n")
    settle(harness)
    assert take(transport) == [
        "SERVER master", "VERSION 1", "RDATA events 1 1", "POSITION events 1"
    ]


@pytest.mark.parametrize("announce", [b"VERSION 1", b"PING 1"])
def test_a_master_of_a_cluster_refuses_dialects_without_origins(
    tmp_path: Path, announce: bytes
) -> None:
    harness = Harness(tmp_path)
    harness.master.fanout.clustered = True
    connection, transport = connect(harness, announce)
    take(transport)
    connection.dataReceived(b"REPLICATE events 0\n")
    sent = take(transport)
    assert sent[-1].startswith("ERROR REPLICATE events refused: this master is one of a cluster")
    assert "protocol version 2" in sent[-1]
    assert transport.disconnecting


# -- cluster peers ------------------------------------------------------------------------


def peer(harness: Harness, origin: str = OTHER) -> tuple[MasterConnection, StringTransport]:
    connection, transport = connect(harness)
    take(transport)
    connection.dataReceived(f"ORIGIN {origin} {PEER_FP}\n".encode())
    return connection, transport


def test_relay_sends_one_origin_only(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.master.clustered = harness.master.fanout.clustered = True
    own = me(harness)
    for v in (1, 2):
        harness.publish("events", [v])
    ingest(harness, "events", THIRD, 1, [9])
    connection, transport = peer(harness)
    assert connection.peer_identity is not None
    connection.dataReceived(f"RELAY events {own} 1\n".encode())
    settle(harness)
    assert take(transport) == [f"RDATA events@{own} 2 2", f"POSITION events@{own} 2"]
    ingest(harness, "events", THIRD, 2, [10])
    harness.publish("events", [3])
    assert take(transport) == [f"RDATA events@{own} 3 3"]


def test_relay_every_stream_of_an_origin_and_new_ones(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.master.clustered = harness.master.fanout.clustered = True
    own = me(harness)
    harness.publish("events", [1])
    harness.publish("users", [2])
    connection, transport = peer(harness)
    connection.dataReceived(f"RELAY events {own} 1\nRELAY * {own}\n".encode())
    settle(harness)
    assert sorted(take(transport)) == sorted([
        f"POSITION events@{own} 1", f"RDATA users@{own} 1 2", f"POSITION users@{own} 1"
    ])
    harness.publish("orders", [3])
    settle(harness)
    assert take(transport) == [f"RDATA orders@{own} 1 3", f"POSITION orders@{own} 1"]
    harness.publish("orders", [4])
    assert take(transport) == [f"RDATA orders@{own} 2 4"]


def test_relay_needs_origin_and_a_cluster(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    own = me(harness)
    connection, transport = connect(harness)
    take(transport)
    connection.dataReceived(f"RELAY * {own}\n".encode())
    assert take(transport) == ["ERROR RELAY is for cluster peers: a peer sends ORIGIN first"]
    connection, transport = peer(harness)
    assert take(transport) == [
        "ERROR this master is not one of a cluster (it has no cluster.peers): "
        "it takes no peer links"
    ]


def test_a_peer_claiming_our_origin_is_a_conflict(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.master.clustered = harness.master.fanout.clustered = True
    connection, transport = peer(harness, me(harness))
    sent = take(transport)
    assert sent[0].startswith(f"ERROR a peer announced our origin id {me(harness)}")
    assert transport.disconnecting


def test_a_peer_may_not_relay_its_own_origin(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.master.clustered = harness.master.fanout.clustered = True
    connection, transport = peer(harness)
    connection.dataReceived(f"RELAY * {OTHER}\n".encode())
    assert take(transport) == [f"ERROR RELAY of origin {OTHER}: that is the peer's own origin"]


def test_a_master_of_a_cluster_refuses_to_delete_a_stream(tmp_path: Path) -> None:
    from replication.master.log import DeleteError

    harness = Harness(tmp_path)
    harness.master.clustered = True
    harness.publish("events", [1])
    failures: list[object] = []
    harness.master.delete_stream("events").addErrback(failures.append)
    (failure,) = failures
    error = failure.value  # type: ignore[attr-defined]
    assert isinstance(error, DeleteError) and error.status == 409
    assert "on a master of a cluster" in error.message
    assert harness.master.log.head("events") == 1
