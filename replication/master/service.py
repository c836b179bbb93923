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

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from replication.cluster.identity import Identity, new_fingerprint
from replication.config import MasterConfig
from replication.master.connection import MasterConnection
from replication.master.fanout import FanOut
from replication.master.log import DeleteError, PublishError, StreamLog, StreamState
from replication.master.publishing import PublishKeys
from replication.metrics import MasterMetrics
from replication.snapshot import (
    ConnectionHistory,
    ConnectionView,
    FollowView,
    MasterSnapshot,
    StreamView,
    peer_views,
)
from replication.store import StreamStore
from replication.store.asynchronous import BlockingRunner, adapt
from replication.wire.commands import (
    CommandParseError,
    CommandRegistry,
    check_stream_name,
    default_registry,
    encode_json,
    encode_parsed_json,
    encode_parsed_rows,
    rdata_line_length,
)

log = logging.getLogger("replication.master")


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
    :param clustered: whether this master is one of a cluster (``cluster.peers``): it then
        serves ``RELAY`` to its peers and refuses ``REPLICATE`` from dialects that cannot
        name origins.

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
        clustered: bool = False,
    ) -> None:
        self.config = config
        self.clustered = clustered
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
            max_subscriptions=config.limits.max_streams, clustered=clustered,
        )
        #: Idempotency keys of publishes over the replication port (see
        #: :mod:`replication.master.publishing`).
        self.publish_keys = PublishKeys(
            config.limits.publish_keys, config.limits.publish_key_seconds
        )
        #: Publish requests received since start, by transport (``http``, ``replication``).
        self.publishes: dict[str, int] = {"http": 0, "replication": 0}
        self.history = ConnectionHistory(config.metrics_max_peer_labels)
        self.connections: set[MasterConnection] = set()
        self._trim_loop = LoopingCall(self.trim)
        self._trim_loop.clock = clock
        self.trim_interval = trim_interval
        self.started_at = clock.seconds()
        #: This process's fingerprint: random, made at every start, never stored.
        self.fingerprint = new_fingerprint()
        #: Fires once the store is open and every stream's state is loaded.
        self.ready: Deferred[None] = self.log.open(config.streams)
        if metrics is None:
            metrics = MasterMetrics(None)
        self.metrics = metrics
        metrics.bind(self.snapshot)

    # -- life --------------------------------------------------------------------------

    def start(self) -> None:
        """Start background retention."""
        self._trim_loop.start(self.trim_interval, now=False)

    def stop(self) -> None:
        if self._trim_loop.running:
            self._trim_loop.stop()

    def trim(self) -> Deferred[None]:
        """Apply each stream's retention now (on the writer thread for a blocking store,
        one pass at a time). Fires when the pass is done."""
        return self.log.trim()

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
        :class:`~replication.master.log.DeleteError`."""
        try:
            check_stream_name(stream)
        except CommandParseError as e:
            return fail(DeleteError(400, str(e)))
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

    def submit_many(self, stream: str, tokens_rows: list[list[str]]) -> Deferred[list[int]]:
        """Commit several tokens of ``stream`` at once, all or none, in one store
        transaction: their tokens are consecutive. Fires with the tokens."""
        return self.log.publish(stream, tokens_rows)

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
        for connection in sorted(self.connections, key=lambda c: c.connected_since or 0.0):
            handled = fanout.handled_positions(connection)
            follows = []
            for followed, position, head, live in fanout.follows(connection):
                done = handled.get(followed)
                follows.append(FollowView(
                    followed, position, max(head - position, 0), live,
                    handled=done,
                    handled_lag=None if done is None else max(head - done, 0),
                ))
            received, sent = connection.command_counts()
            connections.append(ConnectionView(
                connection.peer_name, label(connection.peer_name), _address(connection),
                connection.connected_since, fanout.follows_all(connection), tuple(follows),
                connection.queued_bytes, received, sent, dialect=connection.dialect,
                role=connection.role,
            ))
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
            publishes=dict(self.publishes),
        )


def _address(connection: MasterConnection) -> str:
    transport: Any = connection.transport
    peer: Any = transport.getPeer() if transport is not None else None
    if hasattr(peer, "host") and hasattr(peer, "port"):
        return f"{peer.host}:{peer.port}"
    return str(getattr(peer, "name", None) or peer)
