# twisted.internet.testing has no annotations:
# mypy: disable-error-code="no-untyped-call"
"""A master of a cluster, observed: its snapshot, ``/status``, ``/metrics`` and ``replication
status`` with real peer links (dialling side, scripted peers over StringTransports) and a
real peer connection (serving side), on a memory store and a Clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_peer_link import Endpoint, Peer
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

# tests/ is not a package, so pytest puts tests/ itself on sys.path.
from helpers import raw_request, request
from replication.admin import admin_resource
from replication.cli import format_status
from replication.cluster.link import LinkSettings, LinkState
from replication.cluster.peers import PeerLinks
from replication.config import ClusterConfig, KeepaliveConfig, ReconnectConfig
from replication.master import MasterConnection
from replication.metrics import CLUSTER_METRICS
from replication.snapshot import LINK_STATES, ClusterView, PeerLinkView
from replication.store import Entry
from replication.testing import Harness

SELF_ENTRY = "tcp:host=127.0.0.1:port=1"
PEER_ENTRY = "tcp:host=127.0.0.1:port=2"
DOWN_ENTRY = "tcp:host=127.0.0.1:port=3"
PEER = "PeerOriginPeerOrigin01"
PEER_FP = "peerFingerprint1"
THIRD = "ThirdOriginThirdOrig03"


class Scene:
    """A master of a three-entry cluster: the entry that is itself, a peer ``b`` (origin
    ``PEER``) that links both ways, and an entry that refuses every connection."""

    def __init__(self, tmp_path: Path, **cluster: Any) -> None:
        self.h = Harness(
            tmp_path,
            cluster=ClusterConfig(peers=(SELF_ENTRY, PEER_ENTRY, DOWN_ENTRY), **cluster),
        )
        self.master = self.h.master
        self.clock = self.h.clock
        self.endpoints = {entry: Endpoint() for entry in (SELF_ENTRY, PEER_ENTRY, DOWN_ENTRY)}
        self.endpoints[DOWN_ENTRY].failures = [ConnectionRefusedError()] * 100
        settings = LinkSettings(
            name="master", keepalive=KeepaliveConfig(5.0, 25.0, 5.0),
            reconnect=ReconnectConfig(1.0, 30.0, 10.0),
        )
        self.links = PeerLinks(
            (SELF_ENTRY, PEER_ENTRY, DOWN_ENTRY), self.master.log, self.master.fingerprint,
            self.clock, settings, self.endpoints.__getitem__, jitter=lambda: 0.0,
            repair_after=5.0,
        )
        self.master.peer_links = self.links
        self.links.startService()
        me = self.own
        # The entry that is this master, and the peer's link from this master.
        Peer(*self.endpoints[SELF_ENTRY].connections[0]).handshake(me, self.master.fingerprint)
        self.dialled = Peer(*self.endpoints[PEER_ENTRY].connections[0])
        self.dialled.handshake(PEER, PEER_FP)
        # The peer's link to this master (serving side).
        self.served, self.served_transport = self.peer_connection("b", PEER, PEER_FP)

    @property
    def own(self) -> str:
        origin = self.master.log.origin_id
        assert origin is not None
        return origin

    def peer_connection(
        self, name: str, origin: str, fingerprint: str
    ) -> tuple[MasterConnection, StringTransport]:
        connection = MasterConnection(self.master)
        transport = StringTransport()
        connection.makeConnection(transport)
        connection.dataReceived(
            f"NAME {name}\nVERSION 2\nORIGIN {origin} {fingerprint}\nRELAY * {self.own}\n"
            .encode()
        )
        self.settle()
        return connection, transport

    def settle(self) -> None:
        for _ in range(30):
            self.clock.advance(0)

    def publish(self, stream: str, rows: list[Any]) -> None:
        self.master.publish(stream, rows)
        self.settle()


def scrape(scene: Scene) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, _, body = raw_request(admin_resource(scene.master), "GET", "/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def test_status_shows_every_peer_link_the_peer_connection_and_streams_per_origin(
    tmp_path: Path,
) -> None:
    """/status of a master of a cluster: each entry of cluster.peers with its state (the
    entry that is this master marked self, with this master's name and origin; the refusing
    one backing off with its problem; the peer connected, with its name, origin and rows
    received); the peer's connection to this master with role peer and its origin; streams
    one per origin, this master's own marked local; and relays per row from the rows sent
    to the peer."""
    scene = Scene(tmp_path)
    scene.clock.advance(2)
    scene.dialled.say(f"RDATA events@{PEER} 1 1", f"RDATA events@{PEER} batch 2",
                      f"RDATA events@{PEER} 2 3")
    scene.publish("events", [{"a": 1}, {"a": 2}])
    scene.publish("events", [{"a": 3}])

    status, body = request(scene.master, "GET", "/status")
    assert status == 200
    streams = {(s["name"], s["origin"]): s for s in body["streams"]}
    assert set(streams) == {("events", scene.own), ("events", PEER)}
    assert streams["events", scene.own]["local"] is True
    assert streams["events", scene.own]["head"] == 2
    assert streams["events", PEER]["local"] is False
    assert streams["events", PEER]["head"] == 2

    (connection,) = body["connections"]
    assert connection["worker"] == "b"
    assert (connection["role"], connection["origin"]) == ("peer", PEER)
    assert connection["rows_sent"] == 3
    # This master's own rows are named by the stream alone; other origins' as stream@origin.
    assert [s["name"] for s in connection["streams"]] == ["events"]

    cluster = body["cluster"]
    by_entry = {p["endpoint"]: p for p in cluster["peers"]}
    assert [p["endpoint"] for p in cluster["peers"]] == [SELF_ENTRY, PEER_ENTRY, DOWN_ENTRY]
    me = by_entry[SELF_ENTRY]
    assert (me["state"], me["self"], me["name"], me["origin"]) == (
        "self", True, "master", scene.own
    )
    assert me["rows_sent"] is None
    peer = by_entry[PEER_ENTRY]
    assert (peer["state"], peer["self"], peer["name"], peer["origin"]) == (
        "connected", False, "b", PEER
    )
    assert peer["fingerprint"] == PEER_FP
    assert peer["since"] == 0.0 and peer["since_seconds"] == 2.0
    assert (peer["rows_received"], peer["tokens_received"], peer["links"]) == (3, 2, 1)
    assert peer["rows_sent"] == 3
    assert (peer["pending_bytes"], peer["repairs"], peer["problem"]) == (0, [], None)
    down = by_entry[DOWN_ENTRY]
    assert down["state"] == "backing off" and not down["self"]
    assert down["name"] is None and down["origin"] is None
    assert "refused" in down["problem"].lower()
    assert down["retry_at"] is not None
    assert cluster["repairing"] == []
    assert cluster["rows_sent"] == {"b": 3}
    assert (cluster["relayed_rows"], cluster["originated_rows"]) == (3, 3)
    assert cluster["relays_per_row"] == 1.0
    assert cluster["ack_peers"] == 0
    assert cluster["acks"] == {"confirmed": 0, "timed_out": 0, "pending": 0}


def test_rows_sent_to_a_peer_are_kept_after_its_connection_closes(tmp_path: Path) -> None:
    """The rows served to a peer over a connection that closed still count, under its name,
    and new connections add to them (a catch-up too: relays per row pass N-1 while a peer
    catches up); a worker's rows do not count as relays."""
    scene = Scene(tmp_path)
    scene.publish("events", [1, 2])
    scene.served.connectionLost(Failure(ConnectionDone()))
    assert scene.master.connections == set()
    view = scene.master.snapshot().cluster
    assert view is not None and view.rows_sent == {"b": 2}
    scene.peer_connection("b", PEER, PEER_FP)
    worker = MasterConnection(scene.master)
    worker.makeConnection(StringTransport())
    worker.dataReceived(b"NAME w1\nVERSION 2\nREPLICATE events -\n")
    scene.settle()
    scene.publish("events", [3])
    view = scene.master.snapshot().cluster
    assert view is not None
    # 2 before the close; then RELAY * from the start (a catch-up of 2) and the live row.
    assert view.rows_sent == {"b": 5}
    assert view.relayed_rows == 5 and view.originated_rows == 3
    roles = {c.peer_name: (c.role, c.peer_origin) for c in scene.master.snapshot().connections}
    assert roles == {"b": ("peer", PEER), "w1": ("worker", None)}


def test_metrics_of_the_links_relays_and_repairs(tmp_path: Path) -> None:
    """Each entry has one replication_peer_link_state series per state (1 for its state),
    its since time, rows and bytes received, gaps, failures and pending bytes, labelled with
    the entry; rows sent to the peer by its name; relays per row; an origin whose link is
    down for repair_after is repaired through the connected peer and counted."""
    scene = Scene(tmp_path)
    scene.clock.advance(1)
    scene.dialled.say(f"RDATA events@{PEER} 1 1", f"GAP events@{PEER} 2 4")
    scene.publish("events", [1])
    m = scrape(scene)
    for entry, current in ((SELF_ENTRY, "self"), (PEER_ENTRY, "connected"),
                           (DOWN_ENTRY, "backing off")):
        states = {
            state: m[("replication_peer_link_state",
                      frozenset({("peer", entry), ("state", state.replace(" ", "_"))}))]
            for state in LINK_STATES
        }
        assert states == {state: float(state == current) for state in LINK_STATES}, entry
    peer = frozenset({("peer", PEER_ENTRY)})
    assert m[("replication_peer_link_since_seconds", peer)] == 0.0
    assert m[("replication_peer_rows_received_total", peer)] == 1
    assert m[("replication_peer_bytes_received_total", peer)] == 1
    assert m[("replication_peer_gaps_total", peer)] == 1
    assert m[("replication_peer_ingest_failures_total", peer)] == 0
    assert m[("replication_peer_repair_rows_total", peer)] == 0
    assert m[("replication_peer_pending_bytes", peer)] == 0
    assert m[("replication_peer_rows_sent_total", frozenset({("peer", "b")}))] == 1
    assert m[("replication_relayed_rows_total", frozenset())] == 1
    assert m[("replication_relays_per_row", frozenset())] == 1.0
    assert m[("replication_cluster_repairing_origins", frozenset())] == 0
    own = frozenset({("stream", "events"), ("origin", scene.own)})
    theirs = frozenset({("stream", "events"), ("origin", PEER)})
    assert m[("replication_stream_head_token", own)] == 1
    assert m[("replication_stream_head_token", theirs)] == 4  # past the gap

    # THIRD's master is known (its rows are here) and has no connected link: after
    # repair_after its rows are asked of the connected peer.
    scene.master.log.ingest("events", THIRD, [Entry(1, ("1",))])
    scene.dialled.heard()
    for _ in range(7):
        scene.clock.advance(1)
    assert f"RELAY * {THIRD}" in scene.dialled.heard()
    scene.dialled.say(f"RDATA events@{THIRD} 2 2")
    m = scrape(scene)
    assert m[("replication_cluster_repairing_origins", frozenset())] == 1
    assert m[("replication_peer_repair_rows_total", peer)] == 1
    _, body = request(scene.master, "GET", "/status")
    assert body["cluster"]["repairing"] == [THIRD]
    (linked,) = [p for p in body["cluster"]["peers"] if p["endpoint"] == PEER_ENTRY]
    assert (linked["repairs"], linked["repair_rows"]) == ([THIRD], 1)


def test_ack_counters(tmp_path: Path) -> None:
    """With cluster.ack_peers 1: a publish waits (pending), the peer's HANDLED confirms it;
    the next one times out after cluster.ack_timeout; the counters and /status say so."""
    scene = Scene(tmp_path, ack_peers=1, ack_timeout=5.0)
    answers: list[Any] = []
    scene.master.publish("events", [1]).addBoth(answers.append)
    scene.settle()
    m = scrape(scene)
    assert m[("replication_ack_pending", frozenset())] == 1
    scene.served.dataReceived(f"HANDLED events@{scene.own} 1\n".encode())
    assert answers == [1]
    scene.master.publish("events", [2]).addBoth(answers.append)
    scene.settle()
    scene.clock.advance(5)
    assert len(answers) == 2 and getattr(answers[1], "value", None) is not None
    m = scrape(scene)
    assert m[("replication_ack_confirmed_total", frozenset())] == 1
    assert m[("replication_ack_timeouts_total", frozenset())] == 1
    assert m[("replication_ack_pending", frozenset())] == 0
    _, body = request(scene.master, "GET", "/status")
    cluster = body["cluster"]
    assert (cluster["ack_peers"], cluster["ack_timeout"]) == (1, 5.0)
    assert cluster["acks"] == {"confirmed": 1, "timed_out": 1, "pending": 0}


def test_a_master_alone_has_no_cluster(tmp_path: Path) -> None:
    """Not clustered: /status has cluster null, the cluster's metric families are there
    without samples, and replication status prints no cluster section."""
    h = Harness(tmp_path)
    h.publish("events", [1])
    _, body = request(h.master, "GET", "/status")
    assert body["cluster"] is None
    assert body["streams"][0]["origin"] == h.store.origin_id
    status, _, text = raw_request(admin_resource(h.master), "GET", "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    for name in CLUSTER_METRICS:
        family = families[name.removesuffix("_total")]
        assert family.samples == [], name
    out = format_status(body)
    assert "cluster" not in out and "ORIGIN" not in out


def test_link_states_listed_for_metrics_are_the_link_states() -> None:
    """The fixed label set of replication_peer_link_state is every LinkState."""
    assert LINK_STATES == tuple(state.value for state in LinkState)


def test_relays_per_row_is_none_until_a_row_is_published_here() -> None:
    assert ClusterView(rows_sent={"b": 5}).relays_per_row is None
    assert ClusterView(rows_sent={"b": 4, "c": 4}, originated_rows=4).relays_per_row == 2.0
    assert PeerLinkView("x", "self", 0.0).is_self


def test_replication_status_prints_the_cluster(tmp_path: Path) -> None:
    """replication status of a master of a cluster: streams with their origin (this
    master's marked), connections with their role, and a cluster section with each entry's
    state (self marked), name, origin, rows received and sent, and relays per row."""
    scene = Scene(tmp_path)
    scene.clock.advance(65)
    scene.dialled.say(f"RDATA events@{PEER} 1 1")
    scene.publish("events", [1, 2])
    _, body = request(scene.master, "GET", "/status")
    text = format_status(body)
    lines = text.splitlines()
    assert any(line.split() == ["events", scene.own, "(this", "master)", "1", "1", "2"]
               for line in lines), text
    assert any(line.split()[:3] == ["events", PEER, "1"] for line in lines), text
    assert any(line.split()[:2] == ["b", "peer"] for line in lines), text
    assert "events@1 lag 0" in text
    assert "cluster: 3 peers; relays per row 1.00 (2 rows relayed, 2 published here); " \
        "repairing nothing" in text
    rows = {line.split()[0]: line for line in lines if line.startswith("tcp:")}
    assert rows[SELF_ENTRY].split()[1:4] == ["self", "(this", "master)"]
    assert rows[PEER_ENTRY].split()[1:9] == [
        "connected", "1m", "5s", "b", PEER, "1", "2", "0"
    ], rows[PEER_ENTRY]
    assert rows[DOWN_ENTRY].split()[1:3] == ["backing", "off"]
    assert "refused" in rows[DOWN_ENTRY].lower()


@pytest.mark.parametrize("state", ["conflict", "diverged"])
def test_a_link_that_needs_an_operator_shows_its_problem(tmp_path: Path, state: str) -> None:
    """A conflicting identity shows as conflict with the reason, a peer that went back in
    its history as diverged; both in /status and the state metric."""
    scene = Scene(tmp_path)
    if state == "conflict":
        scene.dialled.drop()
        link = scene.links.link(PEER_ENTRY)
        assert link.retry_at is not None
        scene.clock.advance(link.retry_at - scene.clock.seconds())
        again = Peer(*scene.endpoints[PEER_ENTRY].connections[-1])
        again.handshake(scene.own, "otherFingerprint")
    else:
        scene.dialled.say(f"RDATA events@{PEER} 1 1", f"RDATA events@{PEER} 2 2",
                          f"RESET events@{PEER} 1")
    _, body = request(scene.master, "GET", "/status")
    (peer,) = [p for p in body["cluster"]["peers"] if p["endpoint"] == PEER_ENTRY]
    assert peer["state"] == state and peer["problem"], peer
    m = scrape(scene)
    labels = frozenset({("peer", PEER_ENTRY), ("state", state)})
    assert m[("replication_peer_link_state", labels)] == 1
