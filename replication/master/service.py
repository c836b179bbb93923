"""The master's service: :class:`Master` joins the stream log, the fan-out and the
connections of one master.

Who owns what:

- :class:`~replication.master.log.StreamLog` owns the stream state (heads per stream and
  origin, retained-token statistics), the commit queue and the order of commits;
- :class:`~replication.master.fanout.FanOut` listens to the log and owns subscriptions,
  catch-up and live writes;
- :class:`Master` checks and encodes publishes, admits connections, runs retention on a
  timer, and builds the :class:`~replication.snapshot.MasterSnapshot` that metrics and
  status read; the store is reached only through the log, asynchronously.

Identity: the master's origin id is its store's (learnt by the log when the store opens);
its fingerprint is made at random when the :class:`Master` is built and never stored (see
:mod:`replication.cluster.identity`). Both are in the snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence, Sized
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from replication.cluster.identity import Identity, new_fingerprint
from replication.config import MasterConfig
from replication.master.acks import AckTimeout, PeerAcks
from replication.master.connection import MasterConnection
from replication.master.fanout import FanOut
from replication.master.log import DeleteError, PublishError, StreamLog, StreamState
from replication.master.publishing import PublishKeys
from replication.metrics import MasterMetrics
from replication.snapshot import (
    ClusterView,
    ConnectionHistory,
    ConnectionView,
    FollowView,
    LinkSource,
    MasterSnapshot,
    StreamView,
    peer_views,
)
from replication.store import BatchKeys, PublishKey, StreamStore
from replication.store.asynchronous import BlockingRunner, adapt
from replication.wire.auth import FailureDelays, Keyring
from replication.wire.commands import (
    CommandParseError,
    CommandRegistry,
    HandledCommand,
    check_stream_name,
    default_registry,
    encode_json,
    encode_parsed_json,
    encode_parsed_rows,
    rdata_line_length,
)

log = logging.getLogger("replication.master")

#: Seconds between two passes that make a durable store forget old idempotency keys.
KEY_FORGET_INTERVAL = 60.0


class Master:
    """The streams of one master and the connections that follow them.

    :param config: the master's configuration.
    :param store: where rows are kept; the master assumes it is the store's only writer.
    :param clock: time for timers and publish timestamps.
    :param run_blocking: runs a blocking store's writes (``append``, ``trim``, opening and
        closing) off the reactor thread, one call at a time, in order; required when
        ``store.blocking`` is true.
    :param run_read: runs a blocking store's reads (catch-up pages); ``None``: through
        ``run_blocking``, behind the writes.
    :param registry: the commands connections understand (the default registry, or one
        an application extended).
    :param max_pending_rows: rows that may wait for a commit; past that, publishes are
        refused with 503 rather than queued without bound.
    :param trim_interval: seconds between background retention passes over every stream
        (started by :meth:`start`); the in-memory store is also trimmed on each publish.
    :param metrics: where this master's metrics are collected (built by the entry point
        around its registry); ``None``: a private registry (``master.metrics.registry``).
    :param clustered: whether this master is one of a cluster: it then serves ``RELAY`` to
        its peers and refuses ``REPLICATE`` from dialects that cannot name origins
        (``None``: ``cluster.peers`` is set).
    :param ack_peers: peers that must have stored a publish before it is answered
        (``None``: ``cluster.ack_peers``); see :mod:`replication.master.acks`.
    :param ack_timeout: seconds a publish waits for them, past which it is answered 504
        (``None``: ``cluster.ack_timeout``).

    The store is opened asynchronously: :attr:`ready` fires once every stream's state is
    loaded (at once for the memory store); publishes before that are refused with 503.
    """

    def __init__(
        self,
        config: MasterConfig,
        store: StreamStore,
        clock: IReactorTime,
        *,
        run_blocking: BlockingRunner | None = None,
        run_read: BlockingRunner | None = None,
        registry: CommandRegistry | None = None,
        max_pending_rows: int = 1_000_000,
        trim_interval: float = 5.0,
        metrics: MasterMetrics | None = None,
        clustered: bool | None = None,
        ack_peers: int | None = None,
        ack_timeout: float | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        self.config = config
        #: The credentials connections must prove (``None``: no authentication).
        self.keyring = keyring
        #: Addresses whose authentications failed lately, and how long they must wait.
        self.auth_delays = FailureDelays()
        #: Failed authentications since start, by transport (``http``, ``replication``).
        self.auth_failures: dict[str, int] = {"http": 0, "replication": 0}
        cluster = config.cluster
        self.clustered = cluster.enabled if clustered is None else clustered
        self.store = store
        self.clock = clock
        self.registry = registry if registry is not None else default_registry()
        self.log = StreamLog(
            adapt(store, run_blocking, run_read),
            clock,
            config.retention_for,
            max_pending_rows=max_pending_rows,
            page_rows=config.limits.catchup_page_rows,
            max_streams=config.limits.max_streams,
        )
        self.fanout = FanOut(
            self.log, clock, page_rows=config.limits.catchup_page_rows, knows=self.knows,
            max_subscriptions=config.limits.max_streams, clustered=self.clustered,
            max_line_bytes=config.limits.max_line_bytes,
        )
        self.acks = PeerAcks(
            cluster.ack_peers if ack_peers is None else ack_peers,
            cluster.ack_timeout if ack_timeout is None else ack_timeout,
            clock,
        )
        self.log.add_listener(self.acks)
        self.fanout.on_handled = self._handled
        #: Idempotency keys of publishes over the replication port (see
        #: :mod:`replication.master.publishing`).
        self.publish_keys = PublishKeys(
            config.limits.publish_keys, config.limits.publish_key_seconds
        )
        #: Publish requests received since start, by transport (``http``, ``replication``).
        self.publishes: dict[str, int] = {"http": 0, "replication": 0}
        self.history = ConnectionHistory(config.metrics_max_peer_labels)
        self.connections: set[MasterConnection] = set()
        self._keys_forgotten_at = float("-inf")
        self._trim_loop = LoopingCall(self.trim)
        self._trim_loop.clock = clock
        self.trim_interval = trim_interval
        self.started_at = clock.seconds()
        #: This process's fingerprint: random, made at every start, never stored.
        self.fingerprint = new_fingerprint()
        #: Fires once the store is open, every stream's state is loaded and the idempotency
        #: keys the store kept are in the window.
        self.ready: Deferred[None] = self.log.open(config.streams).addCallback(self._load_keys)
        if metrics is None:
            metrics = MasterMetrics(None)
        self.metrics = metrics
        metrics.bind(self.snapshot)
        #: The links to the cluster's peers, for the snapshot (set by
        #: :func:`~replication.master.app.master_service`; ``None``: no links).
        self.peer_links: LinkSource | None = None
        #: RDATA lines sent to cluster peers over connections that closed, by peer label.
        self.closed_peer_rows: dict[str, int] = {}

    # -- life --------------------------------------------------------------------------

    def start(self) -> None:
        """Start background retention."""
        self._trim_loop.start(self.trim_interval, now=False)

    def stop(self) -> None:
        if self._trim_loop.running:
            self._trim_loop.stop()

    def trim(self) -> Deferred[None]:
        """Apply each stream's retention now (on the writer thread for a blocking store,
        one pass at a time), and make the store forget idempotency keys older than
        ``limits.publish_key_seconds``. Fires when the retention pass is done."""
        d = self.log.trim()
        if self.log.keeps_keys:
            d.addCallback(self._forget_keys)
        return d

    def _forget_keys(self, _: object) -> Deferred[None] | None:
        """After a retention pass, at most once a minute: the store forgets the keys older
        than the window."""
        now = self.clock.seconds()
        if now - self._keys_forgotten_at < KEY_FORGET_INTERVAL:
            return None
        self._keys_forgotten_at = now

        def failed(failure: Failure) -> None:
            log.warning("forgetting old idempotency keys failed: %s", failure.getErrorMessage())

        before = now - self.config.limits.publish_key_seconds
        return self.log.forget_keys(before).addCallbacks(lambda _: None, failed)

    def _load_keys(self, _: object) -> Deferred[None]:
        """Put the idempotency keys the store kept (a durable store keeps them across
        restarts) into the window, so that a publish retried after a restart is answered
        with its tokens instead of being stored again."""
        keys = self.publish_keys
        if keys.max_keys == 0 or not self.log.keeps_keys:
            return succeed(None)
        now = self.clock.seconds()

        def loaded(records: list[PublishKey]) -> None:
            keys.load(records, self.clock.seconds())
            if records:
                log.info("idempotency keys: %d kept by the store are in the window",
                         len(records))

        return self.log.publish_keys(now - keys.max_age, keys.max_keys).addCallback(loaded)

    def close(self) -> Deferred[None]:
        """Stop retention, close every connection and then the store."""
        self.stop()
        for connection in list(self.connections):
            connection.close()
        return self.log.close()

    # -- streams -----------------------------------------------------------------------

    def stream_names(self) -> list[str]:
        return self.log.stream_names()

    def head(self, stream: str) -> int:
        """The newest token of ``stream`` that workers may see (committed), 0 if none."""
        return self.log.head(stream)

    def identity(self) -> Identity | None:
        """This master as its peers will see it: the store's origin id and this process's
        fingerprint (what :func:`~replication.cluster.identity.recognise` compares);
        ``None`` until the store is open."""
        origin_id = self.log.origin_id
        return None if origin_id is None else Identity(origin_id, self.fingerprint)

    def knows(self, stream: str) -> bool:
        return self.log.state(stream) is not None or not self.config.strict_streams

    def stream_states(self) -> list[StreamState]:
        """Each stream's state in the log, by name. For reading; do not change them."""
        return self.log.states()

    def follows_all(self, connection: MasterConnection) -> bool:
        """True if ``connection`` subscribed with ``REPLICATE ALL NOW``."""
        return self.fanout.follows_all(connection)

    def sent_positions(self, connection: MasterConnection) -> dict[str, int]:
        """The last token sent to ``connection`` per stream it follows (see
        :meth:`FanOut.sent_positions <replication.master.fanout.FanOut.sent_positions>`)."""
        return self.fanout.sent_positions(connection)

    def delete_stream(self, stream: str) -> Deferred[StreamState | None]:
        """Delete ``stream`` and every row of it (see :meth:`StreamLog.delete
        <replication.master.log.StreamLog.delete>`): its followers are sent ``RESET`` and
        follow it anew from token 1 (see :mod:`replication.master.fanout`). A stream the
        configuration names is created anew, empty, at once (fires with its new state);
        another is gone until its next publish (fires with ``None``). Fails with
        :class:`~replication.master.log.DeleteError`; on a master of a cluster always (409):
        its peers hold the stream's rows under this master's origin, and a stream that
        started again from token 1 would contradict them."""
        try:
            check_stream_name(stream)
        except CommandParseError as e:
            return fail(DeleteError(400, str(e)))
        if self.clustered:
            return fail(DeleteError(
                409,
                f"cannot delete stream {stream!r} on a master of a cluster: its peers hold its "
                "rows under this master's origin, and its tokens would start again from 1 "
                "(use retention to drop old rows)",
            ))
        return self.log.delete(stream, recreate=stream in self.config.streams)

    # -- publishing --------------------------------------------------------------------

    def encode_rows(self, stream: str, rows: Sequence[Any], parsed: bool = False) -> list[str]:
        """Check a publish of one token and encode its rows as compact JSON, or raise
        :class:`PublishError` saying what is wrong. ``parsed`` says the rows came out of a
        JSON parser (only JSON types, no NaN), which allows the faster encoder."""
        return self.encode_tokens(stream, [rows], parsed)[0]

    def encode_tokens(
        self, stream: str, tokens_rows: Sequence[Sequence[Any]], parsed: bool = False
    ) -> list[list[str]]:
        """:meth:`encode_rows` for several tokens at once: the stream is checked once and,
        for parsed rows, all rows are encoded in one pass. Errors name the token (when there
        are several) and the row at fault."""
        try:
            check_stream_name(stream)
        except CommandParseError as e:
            raise PublishError(400, str(e)) from None
        if self.config.strict_streams and self.log.state(stream) is None:
            raise PublishError(
                404, f"unknown stream {stream!r}: strict_streams is on and it is not configured"
            )
        if (
            isinstance(tokens_rows, (str, bytes))
            or not isinstance(tokens_rows, Sequence)
            or not tokens_rows
        ):
            raise PublishError(400, "tokens must be a non-empty list of row lists")
        max_rows = self.config.limits.max_rows_per_publish
        if sum(len(rows) if isinstance(rows, Sized) else 0 for rows in tokens_rows) > max_rows:
            raise PublishError(
                413, f"a publish may carry at most {max_rows} rows (limits.max_rows_per_publish); "
                "publish in smaller batches"
            )
        limit = self.config.limits.max_line_bytes
        room = limit - rdata_line_length(stream, "")  # bytes of JSON a row may take
        surely_fits = room // 4  # characters that fit even at 4 UTF-8 bytes each
        if parsed and all(type(rows) is list and rows for rows in tokens_rows):
            # The common HTTP case, in one pass over every row; any trouble takes the
            # row-by-row path below, which names the row at fault.
            texts = encode_parsed_rows([row for rows in tokens_rows for row in rows])
            if texts is not None and max(map(len, texts)) <= surely_fits:
                out = []
                start = 0
                for rows in tokens_rows:
                    end = start + len(rows)
                    out.append(texts[start:end])
                    start = end
                return out
        encode = encode_parsed_json if parsed else encode_json
        several = len(tokens_rows) > 1
        encoded_tokens = []
        for t, rows in enumerate(tokens_rows):
            where = f"token {t}, " if several else ""
            if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
                raise PublishError(400, f"{where}rows must be a list of JSON values")
            if not rows:
                raise PublishError(400, f"{where}rows must hold at least one row")
            encoded = []
            for i, row in enumerate(rows):
                try:
                    text = encode(row)
                except CommandParseError as e:
                    raise PublishError(400, f"{where}row {i}: {e}") from None
                if len(text) > surely_fits and len(text.encode()) > room:
                    raise PublishError(
                        413,
                        f"{where}row {i} is {len(text.encode())} bytes of JSON; with its RDATA "
                        f"prefix it would pass the line limit of {limit} bytes "
                        "(limits.max_line_bytes)",
                    )
                encoded.append(text)
            encoded_tokens.append(encoded)
        return encoded_tokens

    def publish(self, stream: str, rows: Sequence[Any]) -> Deferred[int]:
        """Publish ``rows`` (JSON-serialisable values) to ``stream`` as one new token.

        The Deferred fires with the token once the rows are committed to the store and
        handed to the live subscribers, or fails with :class:`PublishError` (nothing of the
        call was stored). Invalid input fails the Deferred at once.
        """
        try:
            encoded = self.encode_rows(stream, rows)
        except PublishError:
            return fail()
        return self.submit(stream, encoded)

    def submit(self, stream: str, rows: list[str]) -> Deferred[int]:
        """Commit rows that :meth:`encode_rows` checked and encoded, as one token; then hand
        them to the live subscribers. Fires with the token."""
        return self.submit_many(stream, [rows]).addCallback(lambda tokens: tokens[0])

    def submit_many(
        self, stream: str, tokens_rows: list[list[str]], keys: BatchKeys = ()
    ) -> Deferred[list[int]]:
        """Commit several tokens of ``stream`` at once, all or none, in one store
        transaction: their tokens are consecutive. Fires with the tokens (with
        ``ack_peers``, once that many peers have stored them too; else it fails with a 504
        :class:`PublishError`). ``keys``: the idempotency keys of the publishes among them
        (``(key, index, count)`` in ``tokens_rows``), kept by a durable store with them."""
        d = self.log.publish(stream, tokens_rows, keys)
        if not self.acks.wanted:
            return d
        return d.addCallback(self._confirmed, stream)

    def _confirmed(self, tokens: list[int], stream: str) -> Deferred[list[int]]:
        def timed_out(failure: Failure) -> list[int]:
            if isinstance(failure.value, AckTimeout):
                raise PublishError(504, str(failure.value))
            failure.raiseException()
            raise AssertionError("unreachable")  # pragma: no cover

        return self.acks.wait(stream, tokens[-1]).addCallbacks(lambda _: tokens, timed_out)

    def _handled(self, follower: object, command: HandledCommand) -> None:
        """A ``HANDLED`` the fan-out accepted: a cluster peer's report on this master's own
        rows counts as a confirmation (``cluster.ack_peers``)."""
        peer = getattr(follower, "peer_identity", None)
        if peer is not None and command.origin == self.log.origin_id:
            self.acks.stored(command.stream, peer.origin_id, command.token)

    def publish_many(
        self, stream: str, tokens_rows: Sequence[Sequence[Any]]
    ) -> Deferred[list[int]]:
        """Publish several tokens to ``stream`` at once (each a list of JSON-serialisable
        rows), all or none, with consecutive tokens; fires with the tokens."""
        try:
            encoded = self.encode_tokens(stream, tokens_rows)
        except PublishError:
            return fail()
        return self.submit_many(stream, encoded)

    # -- connections -------------------------------------------------------------------

    def connection_made(self, connection: MasterConnection) -> bool:
        """Admit a new connection; False when ``limits.max_connections`` is reached."""
        if len(self.connections) >= self.config.limits.max_connections:
            return False
        self.connections.add(connection)
        return True

    def connection_lost(self, connection: MasterConnection) -> None:
        self.connections.discard(connection)
        if connection.peer_identity is not None:
            sent = self.fanout.rows_sent(connection)
            if sent:
                label = self.history.label(connection.peer_name)
                self.closed_peer_rows[label] = self.closed_peer_rows.get(label, 0) + sent
        self.fanout.remove(connection)

    # -- the read-only view ------------------------------------------------------------

    def snapshot(self) -> MasterSnapshot:
        """This master now, for metrics and status (see :mod:`replication.snapshot`)."""
        now = self.clock.seconds()
        fanout = self.fanout
        streams = []
        for state in self.log.states():
            sent_live, sent_catchup = fanout.counters(state.stream, state.origin)
            streams.append(StreamView(
                state.stream, state.origin, state.head, state.oldest, state.retained_rows,
                state.rows_published, fanout.live_count(state.stream, state.origin),
                sent_live, sent_catchup,
                created=state.created,
            ))
        connections = []
        label = self.history.label
        peer_rows = dict(self.closed_peer_rows)
        for connection in sorted(self.connections, key=lambda c: c.connected_since or 0.0):
            handled = fanout.handled_positions(connection)
            follows = []
            own = f"@{self.log.origin_id}"
            for followed, position, head, live in fanout.follows(connection):
                done = handled.get(followed)
                # This master's own rows are shown by the stream's name alone (as to a
                # worker of version 1); other origins' as <stream>@<origin>.
                name = followed.removesuffix(own)
                follows.append(FollowView(
                    name, position, max(head - position, 0), live,
                    handled=done,
                    handled_lag=None if done is None else max(head - done, 0),
                ))
            received, sent = connection.command_counts()
            peer = connection.peer_identity
            rows_sent = fanout.rows_sent(connection)
            connection_label = label(connection.peer_name)
            if peer is not None:
                peer_rows[connection_label] = peer_rows.get(connection_label, 0) + rows_sent
            connections.append(ConnectionView(
                connection.peer_name, connection_label, _address(connection),
                connection.connected_since, fanout.follows_all(connection), tuple(follows),
                connection.queued_bytes, received, sent, dialect=connection.dialect,
                role=connection.role,
                peer_origin=None if peer is None else peer.origin_id,
                rows_sent=rows_sent,
            ))
        cluster = None
        if self.clustered:
            links = self.peer_links
            acks = self.acks
            cluster = ClusterView(
                links=links.views() if links is not None else (),
                repairing=tuple(sorted(links.repairing())) if links is not None else (),
                ack_peers=acks.wanted,
                ack_timeout=acks.timeout,
                acks_confirmed=acks.confirmed,
                acks_timed_out=acks.timed_out,
                acks_pending=acks.pending,
                rows_sent=dict(sorted(peer_rows.items())),
                originated_rows=sum(s.rows_published for s in streams if s.local),
            )
        return MasterSnapshot(
            server_name=self.config.server_name,
            origin_id=self.log.origin_id,
            fingerprint=self.fingerprint,
            now=now,
            started_at=self.started_at,
            max_buffer_bytes=self.config.limits.max_buffer_bytes,
            streams=tuple(streams),
            connections=tuple(connections),
            peers=peer_views(self.history),
            closed_received=dict(self.history.received),
            closed_sent=dict(self.history.sent),
            legacy_substitutions=dict(fanout.legacy_substitutions),
            damaged_tokens=len(fanout.damaged_tokens),
            followers_ahead=fanout.followers_ahead,
            cluster=cluster,
            publishes=dict(self.publishes),
            auth_failures=dict(self.auth_failures),
        )


def _address(connection: MasterConnection) -> str:
    transport: Any = connection.transport
    peer: Any = transport.getPeer() if transport is not None else None
    if hasattr(peer, "host") and hasattr(peer, "port"):
        return f"{peer.host}:{peer.port}"
    return str(getattr(peer, "name", None) or peer)
