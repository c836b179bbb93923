# twisted.internet.testing and twisted.python.failure have no annotations:
# mypy: disable-error-code="no-untyped-call"
"""Peer links, the dialling side, against a scripted peer over StringTransports and a Clock:
self-detection, conflicts, RELAY from the stream log's heads, ingest of whole tokens in
order and in batches, GAP, RESET, refused origins, backpressure, reconnects and the
service's start and stop. The stream log is real (memory store, inline or behind a manual
writer thread)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from helpers import ManualRunner
from replication.cluster.identity import Identity
from replication.cluster.link import LinkSettings, LinkState, PeerConnection, PeerLink
from replication.cluster.peers import PeerLinks, peer_links
from replication.config import (
    ClusterConfig,
    KeepaliveConfig,
    MasterConfig,
    ReconnectConfig,
)
from replication.master.log import StreamLog, StreamState
from replication.store import Entry, Retention, StoreError
from replication.store.asynchronous import InlineStore, ThreadedStore
from replication.store.memory import MemoryStore

PEER = "PeerOriginPeerOrigin01"
PEER_FP = "peerFingerprint1"
OTHER = "OtherOriginOtherOrig02"
OUR_FP = "ourFingerprint01"
ENTRY = "tcp:host=peer.example:port=9092"
KEEP_ALL = Retention()


class Listener:
    """Records what the log tells: committed runs and skips."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def committed(
        self, state: StreamState, first: int, tokens_rows: Sequence[Sequence[str]], rows: int
    ) -> None:
        tokens = list(range(first, first + len(tokens_rows)))
        self.events.append(("tokens", state.stream, state.origin, tokens))

    def skipped(self, state: StreamState, first: int, last: int) -> None:
        self.events.append(("skipped", state.stream, state.origin, first, last))

    def deleted(self, old: StreamState, new: StreamState | None) -> None:
        self.events.append(("deleted", old.stream))


class Endpoint:
    """A client endpoint that connects at once over a StringTransport (or fails with the
    next of ``failures``); ``connections`` holds ``(proxy, transport)`` of each."""

    def __init__(self) -> None:
        self.connections: list[tuple[Any, StringTransport]] = []
        self.failures: list[Exception] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        if self.failures:
            return fail(self.failures.pop(0))
        proxy = factory.buildProtocol(None)
        transport = StringTransport()
        proxy.makeConnection(transport)
        self.connections.append((proxy, transport))
        return succeed(proxy)


class Peer:
    """One connection as the scripted peer sees it: ``say`` lines, read what came back."""

    def __init__(self, proxy: Any, transport: StringTransport) -> None:
        self.proxy = proxy
        self.transport = transport
        self.protocol: PeerConnection = proxy._protocol

    def say(self, *lines: str) -> None:
        self.proxy.dataReceived("".join(f"{line}\n" for line in lines).encode())

    def heard(self) -> list[str]:
        """The lines the link sent since the last call."""
        data = self.transport.value().decode()
        self.transport.clear()
        return [line for line in data.split("\n") if line]

    def handshake(self, origin: str = PEER, fingerprint: str = PEER_FP) -> list[str]:
        """SERVER, VERSION 2 and ORIGIN from the peer: the lines the link sent after them."""
        self.heard()
        self.say("SERVER b", "VERSION 2", f"ORIGIN {origin} {fingerprint}")
        return self.heard()

    def drop(self) -> None:
        """The connection is lost (the peer went away, or the close finished)."""
        self.proxy.connectionLost(Failure(ConnectionDone()))

    @property
    def closing(self) -> bool:
        return bool(self.transport.disconnecting)


class Cluster:
    """A master's stream log and its PeerLinks to one scripted peer."""

    def __init__(
        self,
        *,
        store: MemoryStore | None = None,
        runner: ManualRunner | None = None,
        entries: Sequence[str] = (ENTRY,),
        retention: Retention = KEEP_ALL,
        **settings: Any,
    ) -> None:
        self.clock = Clock()
        self.store = store or MemoryStore()
        adapted = InlineStore(self.store) if runner is None else ThreadedStore(self.store, runner)
        self.log = StreamLog(adapted, self.clock, lambda _: retention)
        self.log.open(())
        if runner is not None:
            runner.run_all()
        self.listener = Listener()
        self.log.add_listener(self.listener)
        self.endpoint = Endpoint()
        base: dict[str, Any] = {
            "name": "a", "keepalive": KeepaliveConfig(5.0, 25.0, 5.0),
            "reconnect": ReconnectConfig(1.0, 30.0, 10.0),
        }
        base.update(settings)
        self.links = PeerLinks(
            entries, self.log, OUR_FP, self.clock, LinkSettings(**base),
            lambda _: self.endpoint, jitter=lambda: 0.0,
        )
        self.links.startService()

    @property
    def ours(self) -> Identity:
        assert self.log.origin_id is not None
        return Identity(self.log.origin_id, OUR_FP)

    @property
    def link(self) -> PeerLink:
        return self.links.links[0]

    def peer(self, index: int = -1) -> Peer:
        return Peer(*self.endpoint.connections[index])

    def linked(self) -> Peer:
        """The newest connection, through the handshake as the peer ``PEER``."""
        peer = self.peer()
        peer.handshake()
        return peer

    def retry(self) -> None:
        """Let the clock run to the link's next attempt."""
        retry_at = self.link.retry_at
        assert retry_at is not None
        self.clock.advance(retry_at - self.clock.seconds())

    def stop(self) -> None:
        """Stop the service; finish the close the way a transport would."""
        d = self.links.stopService()
        for proxy, transport in self.endpoint.connections:
            if transport.disconnecting and proxy._protocol.session.state.value != "closed":
                proxy.connectionLost(Failure(ConnectionDone()))
        self.clock.advance(10)
        assert d.called
        assert self.clock.getDelayedCalls() == []


def rows(store: MemoryStore, stream: str, origin: str = PEER) -> list[Entry]:
    return store.read(stream, 0, 10**9, 10**9, origin)


# -- the handshake ----------------------------------------------------------------------------


def test_a_link_announces_version_2_and_relays_every_stream_of_a_new_peer() -> None:
    """The link names itself, announces VERSION 2 only, and after the peer's ORIGIN sends
    its own ORIGIN, then RELAY * for the peer's origin (it holds none of its rows yet)."""
    cluster = Cluster()
    peer = cluster.peer()
    assert peer.heard() == ["NAME a", "VERSION 2"]
    assert cluster.link.state is LinkState.CONNECTING
    assert peer.handshake() == [f"ORIGIN {cluster.ours.origin_id} {OUR_FP}", f"RELAY * {PEER}"]
    link = cluster.link
    assert link.state is LinkState.CONNECTED
    assert (link.origin_id, link.fingerprint, link.peer_name, link.links) == (
        PEER, PEER_FP, "b", 1
    )
    cluster.stop()


def test_relay_resumes_each_stream_held_of_the_peers_origin_from_the_logs_head() -> None:
    """Streams this master holds rows of the peer's origin of are asked for after their
    heads, by name, before RELAY *; other origins' streams are not asked for."""
    store = MemoryStore()
    store.ingest("events", PEER, [Entry(t, ("{}",)) for t in (1, 2, 3)], 0)
    store.ingest("typing", PEER, [Entry(1, ("{}",))], 0)
    store.ingest("events", OTHER, [Entry(1, ("{}",))], 0)
    store.append([("events", ["{}"])], 0)
    cluster = Cluster(store=store)
    peer = cluster.peer()
    peer.heard()
    assert peer.handshake() == [
        f"ORIGIN {cluster.ours.origin_id} {OUR_FP}", f"RELAY events {PEER} 3",
        f"RELAY typing {PEER} 1", f"RELAY * {PEER}",
    ]
    assert cluster.link.state is LinkState.CONNECTED
    cluster.stop()


def test_the_entry_that_is_this_master_is_closed_and_never_dialled_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ORIGIN with our own origin id and fingerprint: the link closes without sending
    anything more, shows ``self``, logs it once at info, and stops dialling for good."""
    caplog.set_level(logging.INFO, "replication.cluster.link")
    cluster = Cluster()
    peer = cluster.peer()
    peer.heard()
    assert peer.handshake(cluster.ours.origin_id, OUR_FP) == []
    assert peer.closing
    assert cluster.link.state is LinkState.SELF
    peer.drop()
    cluster.clock.advance(3600)
    assert len(cluster.endpoint.connections) == 1
    assert cluster.link.service is not None and not cluster.link.service.running
    assert [r.getMessage() for r in caplog.records if "is this master" in r.getMessage()] == [
        f"cluster peer {ENTRY} is this master (origin {cluster.ours.origin_id}): not dialling it"
    ]
    cluster.stop()
    assert cluster.link.state is LinkState.SELF


@pytest.mark.parametrize("which", ["origin", "fingerprint"])
def test_a_conflicting_identity_is_refused_loudly_and_retried_with_backoff(
    caplog: pytest.LogCaptureFixture, which: str
) -> None:
    """A peer announcing our origin id with another fingerprint (or our fingerprint with
    another origin id) is logged as an error, closed without RELAY, and dialled again after
    the backoff; the link shows ``conflict`` until a handshake says otherwise."""
    cluster = Cluster()
    peer = cluster.peer()
    peer.heard()
    if which == "origin":
        announced = (cluster.ours.origin_id, PEER_FP)
    else:
        announced = (PEER, OUR_FP)
    assert peer.handshake(*announced) == []
    assert peer.closing
    link = cluster.link
    assert link.state is LinkState.CONFLICT and link.conflicts == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "refusing the link" in errors[0].getMessage()
    assert link.problem is not None and "refusing the link" in link.problem
    peer.drop()
    assert link.state is LinkState.CONFLICT  # not merely backing off
    # A short connection counts as a failed attempt: 1s doubled twice.
    assert link.retry_at == 4.0
    cluster.clock.advance(3.9)
    assert len(cluster.endpoint.connections) == 1
    cluster.clock.advance(0.1)
    assert len(cluster.endpoint.connections) == 2
    again = cluster.peer()
    again.heard()
    assert again.handshake()[-1] == f"RELAY * {PEER}"
    assert link.state is LinkState.CONNECTED and link.problem is None
    cluster.stop()


def test_a_peer_that_sends_no_origin_is_cut_off() -> None:
    cluster = Cluster()
    peer = cluster.peer()
    peer.say("SERVER b", "VERSION 2")
    peer.heard()
    cluster.clock.advance(25)
    assert peer.heard()[-1] == "ERROR handshake timeout: expected ORIGIN within 25s"
    assert peer.closing
    peer.drop()
    cluster.stop()


def test_a_peer_that_chooses_another_version_is_refused() -> None:
    """The link speaks version 2 only: a master that answers VERSION 1 is refused."""
    cluster = Cluster()
    peer = cluster.peer()
    peer.heard()
    peer.say("SERVER b", "VERSION 1")
    assert peer.heard()[0].startswith("ERROR the master chose protocol version 1")
    peer.drop()
    cluster.stop()


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        (["RDATA events@{PEER} 1 {{}}"], "ERROR expected ORIGIN after VERSION, got RDATA"),
        (
            ["ORIGIN {PEER} {PEER_FP}", "ORIGIN {PEER} {PEER_FP}"],
            "ERROR ORIGIN may only be sent once, right after VERSION",
        ),
    ],
)
def test_origin_comes_first_and_once(lines: list[str], error: str) -> None:
    cluster = Cluster()
    peer = cluster.peer()
    peer.say("SERVER b", "VERSION 2", *[line.format(PEER=PEER, PEER_FP=PEER_FP) for line in lines])
    assert peer.heard()[-1] == error
    assert peer.closing
    peer.drop()
    cluster.stop()


# -- ingest -----------------------------------------------------------------------------------


def test_multi_row_tokens_are_stored_whole_in_order_with_their_rows_as_sent() -> None:
    """RDATA rows gathered per token (batch, then the token) are stored with the peer's
    tokens, each row's text exactly as it came; the listeners hear them in order."""
    cluster = Cluster()
    peer = cluster.linked()
    peer.say(
        f'RDATA events@{PEER} batch {{"n":1}}',
        f'RDATA events@{PEER} 1 {{"n": 2, "s":"é"}}',
    )
    peer.say(f'RDATA events@{PEER} 2 {{"n":3}}', f"POSITION events@{PEER} 2")
    assert rows(cluster.store, "events") == [
        Entry(1, ('{"n":1}', '{"n": 2, "s":"é"}')), Entry(2, ('{"n":3}',)),
    ]
    assert cluster.listener.events == [
        ("tokens", "events", PEER, [1]), ("tokens", "events", PEER, [2]),
    ]
    link = cluster.link
    assert (link.rows_received, link.tokens_received, link.ingests, link.ingested_tokens) == (
        3, 2, 2, 2
    )
    assert link.bytes_received == len('{"n":1}{"n": 2, "s":"é"}{"n":3}'.encode())
    assert link.heads == {"events": 2} and link.pending_bytes == 0
    assert cluster.log.head("events", PEER) == 2 and cluster.log.head("events") == 0
    cluster.stop()


def test_tokens_of_one_read_are_stored_in_one_call_per_stream() -> None:
    """Consecutive tokens of a (stream, origin) that arrive in one read are one ingest (one
    transaction): one committed run per stream, however the streams interleave."""
    cluster = Cluster()
    peer = cluster.linked()
    peer.say(*[
        line for t in range(1, 6)
        for line in (f"RDATA events@{PEER} {t} {t}", f"RDATA typing@{PEER} {t} {t}")
    ])
    assert cluster.listener.events == [
        ("tokens", "events", PEER, [1, 2, 3, 4, 5]), ("tokens", "typing", PEER, [1, 2, 3, 4, 5]),
    ]
    assert cluster.link.ingests == 2
    cluster.stop()


def test_an_ingest_carries_at_most_ingest_batch_rows_whole_tokens() -> None:
    cluster = Cluster(ingest_batch_rows=3)
    peer = cluster.linked()
    peer.say(
        f"RDATA s@{PEER} 1 1", f"RDATA s@{PEER} batch 2", f"RDATA s@{PEER} 2 2",
        f"RDATA s@{PEER} 3 3",
        *[f"RDATA s@{PEER} batch 4" for _ in range(4)], f"RDATA s@{PEER} 4 4",
        f"RDATA s@{PEER} 5 5",
    )
    assert [e[3] for e in cluster.listener.events] == [[1, 2], [3], [4], [5]]
    cluster.stop()


def test_tokens_arriving_while_an_ingest_runs_are_stored_together_next() -> None:
    """With a store behind a writer thread, one ingest per stream is in flight; tokens that
    arrive meanwhile wait, and are committed in one call when it is done."""
    runner = ManualRunner()
    cluster = Cluster(runner=runner)
    peer = cluster.linked()
    peer.say(f"RDATA s@{PEER} 1 1")
    for t in (2, 3, 4):
        peer.say(f"RDATA s@{PEER} {t} {t}")
    assert len(runner.queue) == 1
    runner.run_one()
    assert len(runner.queue) == 1
    runner.run_all()
    assert [e[3] for e in cluster.listener.events] == [[1], [2, 3, 4]]
    cluster.stop()


def test_duplicates_relayed_by_two_entries_of_one_master_are_stored_once() -> None:
    """Two entries that reach the same master (two names for one host) both relay its rows:
    the store drops the tokens it holds already, and the listeners hear each token once."""
    cluster = Cluster(entries=(ENTRY, "tcp:host=10.1.1.1:port=9092"))
    first, second = cluster.peer(0), cluster.peer(1)
    first.handshake()
    second.handshake()
    first.say(f"RDATA s@{PEER} 1 1", f"RDATA s@{PEER} 2 2")
    second.say(f"RDATA s@{PEER} 1 1", f"RDATA s@{PEER} 2 2", f"RDATA s@{PEER} 3 3")
    first.say(f"RDATA s@{PEER} 3 3")
    assert rows(cluster.store, "s") == [Entry(t, (str(t),)) for t in (1, 2, 3)]
    assert [t for e in cluster.listener.events for t in e[3]] == [1, 2, 3]
    assert not first.closing and not second.closing
    cluster.stop()


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("RDATA events@{OTHER} 1 {{}}",
         "ERROR RDATA events@{OTHER}: this link did not ask for origin {OTHER}"),
        ("POSITION events@{OTHER} 0",
         "ERROR POSITION events@{OTHER}: this link did not ask for origin {OTHER}"),
        ("GAP events@{OTHER} 1 2",
         "ERROR GAP events@{OTHER}: this link did not ask for origin {OTHER}"),
        ("RESET events@{OTHER} 0",
         "ERROR RESET events@{OTHER}: this link did not ask for origin {OTHER}"),
        ("RDATA events@{OURS} 1 {{}}",
         "ERROR RDATA events@{OURS}: rows of this master's own origin are never relayed back "
         "to it"),
        ("RDATA events 1 {{}}",
         "ERROR RDATA events: protocol version 2 names the origin (<stream>@<origin>)"),
        ("RDATA events@{PEER} 2 {{}}",
         "ERROR RDATA events@{PEER} token 2 skips ahead of token 0 sent before it (tokens 1..1 "
         "were neither sent nor announced by GAP)"),
        ("POSITION events@{PEER} 3",
         "ERROR POSITION events@{PEER} 3 is above token 0, the last this worker received: "
         "tokens 1..3 were neither sent nor announced by GAP"),
        ("GAP events@{PEER} 2 3",
         "ERROR GAP events@{PEER} 2 3 does not start after token 0, the last this worker "
         "received"),
        ("RDATA events@{PEER} 1 [1", "ERROR RDATA row is not valid JSON"),
        ("HANDLED events@{PEER} 1", "ERROR HANDLED may not be sent by the master"),
        ("RELAY * {PEER}", "ERROR RELAY may not be sent by the master"),
    ],
)
def test_what_the_link_did_not_ask_for_is_a_protocol_error(line: str, error: str) -> None:
    """Rows, positions, gaps or resets of any origin but the peer's (ours included), lines
    without an origin, and tokens that do not follow are answered with ERROR and a close;
    nothing is stored."""
    cluster = Cluster()
    peer = cluster.linked()
    peer.say(line.format(PEER=PEER, OTHER=OTHER, OURS=cluster.ours.origin_id))
    heard = peer.heard()
    expected = error.format(PEER=PEER, OTHER=OTHER, OURS=cluster.ours.origin_id)
    assert len(heard) == 1 and heard[0].startswith(expected)
    assert peer.closing
    assert cluster.store.keys() == [] and cluster.listener.events == []
    peer.drop()
    cluster.stop()


def test_the_rows_of_unfinished_tokens_are_bounded_across_streams() -> None:
    cluster = Cluster(max_token_bytes=10)
    peer = cluster.linked()
    peer.say(f"RDATA a@{PEER} batch 12345", f"RDATA b@{PEER} batch 123456")
    assert peer.heard() == [f"ERROR RDATA b@{PEER}: unfinished tokens hold 11 bytes (at most 10)"]
    peer.drop()
    cluster.stop()


def test_streams_of_the_peers_origin_are_bounded_by_max_streams() -> None:
    cluster = Cluster(max_streams=2)
    peer = cluster.linked()
    peer.say(f"RDATA a@{PEER} 1 1", f"RDATA b@{PEER} 1 1")
    assert peer.heard() == [f"HANDLED a@{PEER} 1", f"HANDLED b@{PEER} 1"]
    peer.say(f"RDATA c@{PEER} 1 1")
    assert peer.heard() == [
        f"ERROR RDATA c@{PEER}: this master holds 2 streams of origin {PEER} already "
        "(limits.max_streams)"
    ]
    assert cluster.store.keys() == [("a", PEER), ("b", PEER)]
    peer.drop()
    cluster.stop()


# -- GAP and RESET ------------------------------------------------------------------------------


def test_a_gap_moves_the_head_past_it_tells_the_listeners_and_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """GAP: tokens the peer's retention dropped before this master got them. The tokens
    before it are stored first, then the head moves to its end (skipped() told), and the
    rows after it are stored."""
    cluster = Cluster()
    peer = cluster.linked()
    peer.say(
        f"RDATA s@{PEER} 1 1", f"GAP s@{PEER} 2 5", f"RDATA s@{PEER} 6 6",
        f"POSITION s@{PEER} 6",
    )
    assert cluster.listener.events == [
        ("tokens", "s", PEER, [1]), ("skipped", "s", PEER, 2, 5), ("tokens", "s", PEER, [6]),
    ]
    assert rows(cluster.store, "s") == [Entry(6, ("6",))]
    assert (cluster.store.head("s", PEER), cluster.store.oldest("s", PEER)) == (6, 6)
    link = cluster.link
    assert (link.gaps, link.skipped_tokens, link.ingests) == (1, 4, 2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"tokens 2..5 of s@{PEER} are no longer retained" in w for w in warnings)
    assert not peer.closing
    cluster.stop()


def test_a_reset_of_the_peers_own_origin_closes_the_link_and_overwrites_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RESET: the peer lost history this master holds. The link is closed (an error
    logged, the entry ``diverged``), nothing is replaced, and it is dialled again later."""
    store = MemoryStore()
    store.ingest("s", PEER, [Entry(t, (str(t),)) for t in (1, 2, 3)], 0)
    cluster = Cluster(store=store)
    peer = cluster.linked()
    peer.say(f"RESET s@{PEER} 1", f"RDATA s@{PEER} 1 x")
    assert peer.closing and peer.heard() == []
    link = cluster.link
    assert link.state is LinkState.DIVERGED and link.resets == 1
    assert rows(store, "s") == [Entry(t, (str(t),)) for t in (1, 2, 3)]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("went back to token 1 of s@" in e and "below the 3" in e for e in errors)
    peer.drop()
    cluster.retry()
    assert len(cluster.endpoint.connections) == 2
    assert cluster.peer().handshake()[1] == f"RELAY s {PEER} 3"
    cluster.stop()


def test_a_position_below_the_tokens_received_is_a_reset_too() -> None:
    cluster = Cluster()
    peer = cluster.linked()
    peer.say(f"RDATA s@{PEER} 1 1", f"RDATA s@{PEER} 2 2")
    peer.say(f"POSITION s@{PEER} 1")
    assert peer.closing and cluster.link.state is LinkState.DIVERGED
    assert cluster.log.head("s", PEER) == 2
    peer.drop()
    cluster.stop()


# -- failures, backpressure, reconnects -------------------------------------------------------


class FailingStore(MemoryStore):
    """Refuses ingests while ``failing``."""

    failing = False

    def ingest(self, stream: str, origin: str, entries: Sequence[Entry], now: float) -> int:
        if self.failing:
            raise StoreError("disk on fire")
        return super().ingest(stream, origin, entries, now)


def test_a_failed_ingest_closes_the_link_and_the_next_one_resumes_from_the_heads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FailingStore()
    cluster = Cluster(store=store)
    peer = cluster.linked()
    peer.say(f"RDATA s@{PEER} 1 1", f"RDATA s@{PEER} 2 2")
    store.failing = True
    peer.say(f"RDATA s@{PEER} 3 3")
    assert peer.closing
    link = cluster.link
    assert link.ingest_failures == 1 and link.problem is not None
    assert "storing tokens 3..3 of s@" in link.problem and "disk on fire" in link.problem
    assert any("closing the link" in r.getMessage() for r in caplog.records)
    peer.drop()
    assert link.state is LinkState.BACKING_OFF and link.retry_at == 4.0
    store.failing = False
    cluster.retry()
    again = cluster.peer()
    assert again.handshake()[1:] == [f"RELAY s {PEER} 2", f"RELAY * {PEER}"]
    again.say(f"RDATA s@{PEER} 3 3")
    assert rows(store, "s") == [Entry(t, (str(t),)) for t in (1, 2, 3)]
    cluster.stop()


def test_reading_pauses_while_too_many_bytes_wait_for_the_store() -> None:
    """Past max_pending_bytes of rows received and not committed, the link stops reading
    from the peer; it reads again once half of them are committed."""
    runner = ManualRunner()
    cluster = Cluster(runner=runner, max_pending_bytes=20)
    peer = cluster.linked()
    peer.say(f"RDATA s@{PEER} 1 {'1' * 10}")
    peer.say(f"RDATA s@{PEER} 2 {'2' * 10}")
    assert peer.transport.producerState == "producing"
    peer.say(f"RDATA s@{PEER} 3 {'3' * 10}")
    assert peer.transport.producerState == "paused"
    assert cluster.link.pending_bytes == 30 and peer.protocol.session.reading_paused
    runner.run_one()  # token 1 committed: 20 still waiting, above half the bound
    assert peer.transport.producerState == "paused"
    runner.run_one()  # tokens 2 and 3 committed
    assert peer.transport.producerState == "producing"
    assert cluster.link.pending_bytes == 0 and not peer.protocol.session.reading_paused
    assert cluster.log.head("s", PEER) == 3
    cluster.stop()


def test_a_reconnect_waits_for_the_last_connections_ingests_then_resumes_from_the_heads() -> None:
    runner = ManualRunner()
    cluster = Cluster(runner=runner)
    peer = cluster.linked()
    peer.say(f"RDATA s@{PEER} 1 1")
    peer.say(f"RDATA s@{PEER} 2 2")
    peer.drop()  # token 1 is being stored, token 2 waits: dropped with the connection
    assert cluster.link.pending_bytes == 1
    cluster.retry()
    again = cluster.peer()
    assert again.handshake() == [f"ORIGIN {cluster.ours.origin_id} {OUR_FP}"]
    runner.run_all()
    assert again.heard() == [f"RELAY s {PEER} 1", f"RELAY * {PEER}"]
    assert cluster.link.state is LinkState.CONNECTED and cluster.link.pending_bytes == 0
    cluster.stop()


def test_failed_connects_back_off_and_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "replication.cluster.link")
    cluster = Cluster()
    cluster.peer().drop()
    cluster.endpoint.failures = [ConnectionRefusedError("nobody home")]
    cluster.retry()
    link = cluster.link
    assert len(cluster.endpoint.connections) == 1
    assert link.state is LinkState.BACKING_OFF
    assert link.problem is not None and "cannot connect: Connection was refused" in link.problem
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"cannot connect to peer at {ENTRY}: ") for m in messages)
    cluster.retry()
    assert len(cluster.endpoint.connections) == 2
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"reached peer at {ENTRY} after 1 failed attempts") for m in messages)
    cluster.stop()


# -- the service ------------------------------------------------------------------------------


def test_links_start_dialling_once_the_store_is_open_and_stop_in_order() -> None:
    """Nothing is dialled before ``ready`` fires; stopping closes every connection through
    its protocol, stops dialling and leaves no timer behind."""
    clock = Clock()
    log = StreamLog(InlineStore(MemoryStore()), clock, lambda _: KEEP_ALL)
    ready: Deferred[None] = Deferred()
    endpoint = Endpoint()
    config = MasterConfig(cluster=ClusterConfig(peers=(ENTRY, "tcp:host=c:port=1")))
    links = peer_links(config, log, OUR_FP, clock, lambda _: endpoint, ready=ready)
    links.startService()
    assert endpoint.connections == []
    assert links.states() == {ENTRY: LinkState.STOPPED, "tcp:host=c:port=1": LinkState.STOPPED}
    log.open(())
    ready.callback(None)
    assert len(endpoint.connections) == 2
    assert links.identity == Identity(log.origin_id or "", OUR_FP)
    first = Peer(*endpoint.connections[0])
    first.handshake()
    assert links.link(ENTRY).state is LinkState.CONNECTED
    d = links.stopService()
    assert all(transport.disconnecting for _, transport in endpoint.connections)
    assert not d.called
    for proxy, _ in endpoint.connections:
        proxy.connectionLost(Failure(ConnectionDone()))
    assert d.called
    assert set(links.states().values()) == {LinkState.STOPPED}
    assert clock.getDelayedCalls() == []


def test_a_failed_store_open_starts_no_link(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = StreamLog(InlineStore(MemoryStore()), clock, lambda _: KEEP_ALL)
    ready: Deferred[None] = Deferred()
    endpoint = Endpoint()
    links = PeerLinks([ENTRY], log, OUR_FP, clock, LinkSettings(), lambda _: endpoint, ready=ready)
    links.startService()
    ready.errback(StoreError("no disk"))
    assert endpoint.connections == []
    assert any("not dialling the cluster's peers: no disk" in r.getMessage()
               for r in caplog.records)
    assert links.stopService().called


def test_settings_come_from_the_masters_configuration() -> None:
    config = MasterConfig(
        server_name="m1",
        cluster=ClusterConfig(peers=(ENTRY,), max_pending_bytes=1000, ingest_batch_rows=7),
    )
    settings = LinkSettings.from_config(config)
    assert (settings.name, settings.max_pending_bytes, settings.ingest_batch_rows) == (
        "m1", 1000, 7
    )
    assert settings.max_token_bytes == 2 * config.limits.max_body_bytes
    assert settings.max_token_rows == config.limits.max_rows_per_publish
    assert settings.reconnect == config.cluster.reconnect
    with pytest.raises(ValueError, match="no cluster.peers"):
        log = StreamLog(InlineStore(MemoryStore()), Clock(), lambda _: KEEP_ALL)
        peer_links(MasterConfig(), log, OUR_FP, Clock(), lambda _: Endpoint())


def test_stopping_waits_for_the_ingests_in_flight() -> None:
    """The service's stop fires only once the store calls of its links have finished, so
    that the master closes its store after them."""
    runner = ManualRunner()
    cluster = Cluster(runner=runner)
    peer = cluster.linked()
    peer.say(f"RDATA s@{PEER} 1 1")
    d = cluster.links.stopService()
    peer.drop()
    assert not d.called
    runner.run_all()
    assert d.called and cluster.log.head("s", PEER) == 1
    assert cluster.link.state is LinkState.STOPPED
    assert cluster.clock.getDelayedCalls() == []


def test_a_token_past_the_row_bound_is_refused() -> None:
    cluster = Cluster(max_token_rows=2)
    peer = cluster.linked()
    peer.say(f"RDATA s@{PEER} batch 1", f"RDATA s@{PEER} batch 2", f"RDATA s@{PEER} 1 3")
    assert peer.heard()[0].startswith(f"ERROR RDATA s@{PEER}: a token of at least 3 rows")
    assert cluster.store.keys() == []
    peer.drop()
    cluster.stop()


# -- confirmations and repair -------------------------------------------------------------------


def tick(cluster: Cluster, seconds: int) -> None:
    """Let ``seconds`` pass one at a time, as the reactor would run the repair check."""
    for _ in range(seconds):
        cluster.clock.advance(1)


def test_each_ingest_is_confirmed_to_the_peer_with_handled() -> None:
    """After each store call of the peer's rows the link reports the new head with HANDLED
    (what the peer counts for cluster.ack_peers)."""
    cluster = Cluster()
    peer = cluster.linked()
    peer.say(f"RDATA events@{PEER} 1 1", f"RDATA events@{PEER} batch 2", f"RDATA events@{PEER} 2 3")
    assert peer.heard() == [f"HANDLED events@{PEER} 2"]
    peer.say(f"GAP events@{PEER} 3 4")  # a skip stores no rows: nothing to confirm
    assert peer.heard() == []
    peer.drop()
    cluster.stop()


def test_a_repair_asks_the_peer_for_another_origin_and_takes_its_rows() -> None:
    cluster = Cluster()
    cluster.log.ingest("events", OTHER, [Entry(1, ("1",)), Entry(2, ("2",))])
    peer = cluster.linked()
    link = cluster.link
    assert peer.heard() == []
    # OTHER has no connected link: seen so at the first check (each second), then after
    # repair_after (5 s) this link asks for it too.
    tick(cluster, 5)
    assert not [line for line in peer.heard() if not line.startswith("PING")]
    tick(cluster, 1)
    assert [line for line in peer.heard() if not line.startswith("PING")] == [
        f"RELAY events {OTHER} 2", f"RELAY * {OTHER}"
    ]
    assert link.repairs == {OTHER} and cluster.links.repairing() == {OTHER}
    peer.say(f"RDATA events@{OTHER} 3 3", f"RDATA users@{OTHER} 1 4")
    assert [e.token for e in rows(cluster.store, "events", OTHER)] == [1, 2, 3]
    assert [e.token for e in rows(cluster.store, "users", OTHER)] == [1]
    assert link.repair_rows == 2
    assert peer.heard() == []  # rows of other origins are not confirmed to this peer
    # A new connection asks for the repaired origin again, from the heads.
    peer.drop()
    cluster.retry()
    again = cluster.peer()
    assert again.handshake()[-4:] == [
        f"RELAY * {PEER}", f"RELAY events {OTHER} 3", f"RELAY users {OTHER} 1", f"RELAY * {OTHER}"
    ]
    # The origin's own link is back: the repairing link is closed, to come back without it.
    link.drop_repair(OTHER)
    assert again.closing and link.repairs == set()
    again.drop()
    cluster.stop()


def test_repairs_follow_the_state_of_the_origins_own_link() -> None:
    """Two entries: while both links are connected nothing is repaired; once the link to
    OTHER has been down for repair_after, the link to PEER repairs it; once it is back,
    the repair stops."""
    other_entry = "tcp:host=other.example:port=9092"
    cluster = Cluster(entries=(ENTRY, other_entry))
    first = cluster.peer(0)
    second = cluster.peer(1)
    first.handshake()
    second.handshake(OTHER, "otherFingerprint")
    tick(cluster, 10)
    assert cluster.links.repairing() == set()
    second.drop()
    tick(cluster, 5)
    assert cluster.links.repairing() == set()
    tick(cluster, 1)
    assert cluster.links.repairing() == {OTHER}
    assert first.heard()[-1] == f"RELAY * {OTHER}"
    # The link to OTHER reconnected (after its backoff) and is linked again.
    back = cluster.peer(-1)
    assert back.protocol.link.endpoint == other_entry
    back.handshake(OTHER, "otherFingerprint")
    tick(cluster, 1)
    assert cluster.links.repairing() == set()
    assert first.closing
    first.drop()
    back.drop()
    cluster.stop()


# -- the hot path -------------------------------------------------------------------------------


def test_the_hot_path_stores_what_the_general_path_would() -> None:
    """Lines of a (stream, origin) accepted once take the hot path: multi-row tokens split
    across reads are gathered whole, rows kept as sent, counts kept; a bad line on the hot
    path is still answered by the general path (here: invalid JSON, then a token out of
    order)."""
    cluster = Cluster()
    peer = cluster.linked()
    lines = [f"RDATA events@{PEER} 1 {{\"n\": 1}}"]  # accepted by the general path
    for token in range(2, 40):
        extra = token % 3
        lines += [f"RDATA events@{PEER} batch [{token},{r}]" for r in range(extra)]
        lines.append(f"RDATA events@{PEER} {token} [{token}]")
    data = "".join(f"{line}\n" for line in lines).encode()
    for start in range(0, len(data), 97):  # reads cut anywhere
        peer.proxy.dataReceived(data[start:start + 97])
    stored = rows(cluster.store, "events")
    assert [e.token for e in stored] == list(range(1, 40))
    assert stored[0].rows == ('{"n": 1}',)  # as sent, not re-encoded
    assert stored[4].rows == ("[5,0]", "[5,1]", "[5]")
    assert cluster.link.rows_received == len(lines)
    assert cluster.link.tokens_received == 39
    peer.heard()
    peer.say(f"RDATA events@{PEER} 40 {{bad json")
    assert peer.heard()[0].startswith("ERROR RDATA row is not valid JSON")
    cluster2 = Cluster()
    peer2 = cluster2.linked()
    peer2.say(f"RDATA events@{PEER} 1 1", f"RDATA events@{PEER} 3 3")
    assert peer2.heard()[-1] == (
        f"ERROR RDATA events@{PEER} token 3 skips ahead of token 1 sent before it "
        "(tokens 2..2 were neither sent nor announced by GAP)"
    )
