"""The master: owns the streams, serves workers their catch-up and live rows, takes publishes.

:class:`Master` holds the state shared by all connections: each stream's head and its live
subscribers, the publish path (validate, commit to the store, then fan out), and the catch-up
pump that pages history out of the store for connections that are behind. A token is sent to
workers only after the store has committed it, so no worker ever sees a token that a crash
could take back.

Fan-out encodes the rows of a token once into ``RDATA`` lines and writes the same bytes to
every live subscriber. Catch-up is paced by each connection's transport: a page is read only
when the connection can take it, so a worker a million rows behind costs the master one page
of memory, not a million rows.

Publishing goes through a queue: with a store that does disk work (``store.blocking``), every
publish that arrives while a commit runs joins the next commit, which runs in a writer thread
(group commit). With the in-memory store, publishes commit at once on the reactor thread.

:class:`MasterConnection` is the protocol for one worker; :class:`MasterFactory` builds them.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from replication.commands import (
    ALL_STREAMS,
    MASTER,
    CommandParseError,
    CommandRegistry,
    ErrorCommand,
    GapCommand,
    PositionCommand,
    ReplicateCommand,
    ResetCommand,
    check_stream_name,
    default_registry,
    encode_json,
    encode_parsed_json,
    encode_parsed_rows,
    rdata_block,
    rdata_line_length,
)
from replication.config import MasterConfig
from replication.metrics import MasterMetrics
from replication.protocol import ReplicationProtocol
from replication.store import StoreError, StreamStore, UnknownStream
from replication.streams import missing_before, plan_catch_up

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Runs a blocking call off the reactor thread: ``run_blocking(f, *args) -> Deferred``.
BlockingRunner = Callable[..., "Deferred[Any]"]

#: Catch-up pages one connection may send in one turn of the reactor before yielding.
PAGES_PER_TURN = 1
TOO_MANY_CONNECTIONS = "too many connections"


class PublishError(Exception):
    """A publish that was refused; nothing of it was stored. ``status`` is the HTTP status
    that answers it (400 bad request, 404 unknown stream, 413 too large, 503 unavailable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(eq=False)
class _Stream:
    name: str
    head: int
    live: set[MasterConnection] = field(default_factory=set)
    # Rows since this process started, for metrics (plain ints: the publish path stays cheap).
    rows_published: int = 0
    rows_sent_live: int = 0
    rows_sent_catchup: int = 0


@dataclass(eq=False)
class Subscription:
    """One connection's subscription to one stream: the last token sent, and whether the
    catch-up is done (``live``). ``position`` is not moved by live rows: a live subscription
    has been sent everything up to the stream's head (see :meth:`Master.sent_positions`).
    ``live_since_rows`` is the stream's ``rows_published`` when it went live, from which
    the live rows sent to it are computed when metrics are read."""

    stream: str
    position: int
    live: bool = False
    live_since_rows: int = 0


@dataclass(eq=False)
class _Publish:
    stream: str
    rows: list[str]
    waiter: Deferred[int]


class Master:
    """The streams of one master and the connections that follow them.

    :param config: the master's configuration.
    :param store: where rows are kept; the master assumes it is the store's only writer.
    :param clock: time for timers and publish timestamps.
    :param run_blocking: runs ``store.append`` and ``store.trim`` off the reactor thread,
        one call at a time, in order; required when ``store.blocking`` is true.
    :param registry: the commands connections understand (the default registry, or one
        an application extended).
    :param max_pending_rows: rows that may wait for a commit; past that, publishes are
        refused with 503 rather than queued without bound.
    :param trim_interval: seconds between background retention passes over every stream
        (started by :meth:`start`); the in-memory store is also trimmed on each publish.
    :param metrics: where this master's metrics are collected (built by the entry point
        around its registry); ``None``: a private registry (``master.metrics.registry``).
    """

    def __init__(
        self,
        config: MasterConfig,
        store: StreamStore,
        clock: IReactorTime,
        *,
        run_blocking: BlockingRunner | None = None,
        registry: CommandRegistry | None = None,
        max_pending_rows: int = 1_000_000,
        trim_interval: float = 5.0,
        metrics: MasterMetrics | None = None,
    ) -> None:
        if store.blocking and run_blocking is None:
            raise ValueError("a blocking store needs run_blocking to keep disk work off the reactor")
        self.config = config
        self.store = store
        self.clock = clock
        self.registry = registry if registry is not None else default_registry()
        self.run_blocking = run_blocking
        self.max_pending_rows = max_pending_rows
        self.connections: set[MasterConnection] = set()
        self._all_streams: set[MasterConnection] = set()
        self._streams: dict[str, _Stream] = {}
        self._pending: list[_Publish] = []
        self._pending_rows = 0
        self._committing = False
        self._trimming = False
        self._trim_loop = LoopingCall(self.trim)
        self._trim_loop.clock = clock
        self.trim_interval = trim_interval
        for name in config.streams:
            store.create_stream(name)
        for name in store.stream_names():
            self._streams[name] = _Stream(name, store.head(name))
        self.started_at = clock.seconds()
        #: Rows published to any stream since start (for ALL-streams subscribers' metrics).
        self.rows_published = 0
        if metrics is None:
            metrics = MasterMetrics(None, config.metrics_max_peer_labels)
        self.metrics = metrics
        metrics.bind(self)

    # -- life --------------------------------------------------------------------------

    def start(self) -> None:
        """Start background retention."""
        self._trim_loop.start(self.trim_interval, now=False)

    def stop(self) -> None:
        if self._trim_loop.running:
            self._trim_loop.stop()

    def trim(self) -> Deferred[None]:
        """Apply each stream's retention now: on the writer thread for a blocking store
        (one pass at a time), inline otherwise. Fires when the pass is done."""
        retention = {s: self.config.retention_for(s) for s in self.stream_names()}
        if not self.store.blocking:
            self._trim_streams(self.store, retention, self.clock.seconds())
            return succeed(None)
        if self._trimming:
            return succeed(None)
        assert self.run_blocking is not None
        self._trimming = True

        def done(result: object) -> None:
            self._trimming = False
            if isinstance(result, Failure):
                log.error("retention pass failed: %s", result.getErrorMessage())
            elif result:
                log.debug("retention dropped %s rows", result)

        d = self.run_blocking(self._trim_streams, self.store, retention, self.clock.seconds())
        d.addBoth(done)
        return d

    @staticmethod
    def _trim_streams(store: StreamStore, retention: dict[str, Any], now: float) -> int:
        dropped = 0
        for stream, keep in retention.items():
            try:
                dropped += store.trim(stream, keep, now)
            except UnknownStream:
                pass  # followed by a worker, never published to
        return dropped

    # -- streams -----------------------------------------------------------------------

    def stream_names(self) -> list[str]:
        return sorted(self._streams)

    def head(self, stream: str) -> int:
        """The newest token of ``stream`` that workers may see (committed), 0 if none."""
        state = self._streams.get(stream)
        return state.head if state is not None else 0

    def _stream(self, name: str) -> _Stream:
        state = self._streams.get(name)
        if state is None:
            state = self._streams[name] = _Stream(name, 0)
        return state

    def knows(self, stream: str) -> bool:
        return stream in self._streams or not self.config.strict_streams

    def stream_states(self) -> list[_Stream]:
        """Each stream's state, by name: ``name``, ``head``, ``live`` (its live subscribers)
        and the row counters ``rows_published``, ``rows_sent_live``, ``rows_sent_catchup``.
        For metrics and status; do not change them."""
        return [self._streams[name] for name in sorted(self._streams)]

    def follows_all(self, connection: MasterConnection) -> bool:
        """True if ``connection`` subscribed with ``REPLICATE ALL NOW``."""
        return connection in self._all_streams

    def sent_positions(self, connection: MasterConnection) -> dict[str, int]:
        """The last token sent to ``connection`` for each stream it follows. A live
        subscription has been sent everything up to the head, so it is read from the head
        here rather than tracked on the fan-out path. "Sent" means written to the
        connection: some of it may still wait in its buffer."""
        streams = self._streams
        if connection in self._all_streams:
            return {name: streams[name].head for name in sorted(streams)}
        return {
            name: streams[name].head if sub.live else sub.position
            for name, sub in connection.subscriptions.items()
        }

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
        if self.config.strict_streams and stream not in self._streams:
            raise PublishError(
                404, f"unknown stream {stream!r}: strict_streams is on and it is not configured"
            )
        if isinstance(tokens_rows, (str, bytes)) or not isinstance(tokens_rows, Sequence) or not tokens_rows:
            raise PublishError(400, "tokens must be a non-empty list of row lists")
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
        if not self.store.blocking:
            now = self.clock.seconds()
            try:
                tokens = self.store.append([(stream, rows) for rows in tokens_rows], now)
            except StoreError as e:
                return fail(PublishError(503, f"store failed: {e}"))
            self._committed_stream(stream, tokens, tokens_rows)
            self._trim_inline(stream, now)
            return succeed(tokens)
        count = sum(len(rows) for rows in tokens_rows)
        if self._pending_rows + count > self.max_pending_rows:
            return fail(PublishError(503, "too many rows waiting to be committed; retry later"))
        waiters: list[Deferred[int]] = []
        for rows in tokens_rows:
            waiter: Deferred[int] = Deferred()
            self._pending.append(_Publish(stream, rows, waiter))
            waiters.append(waiter)
        self._pending_rows += count
        if not self._committing:
            self._commit_pending()
        # The publishes of one call are in the same pending batch, hence one transaction:
        # they succeed or fail together.
        return gatherResults(waiters, consumeErrors=True).addErrback(
            lambda failure: failure.value.subFailure  # the PublishError, not FirstError
        )

    def publish_many(self, stream: str, tokens_rows: Sequence[Sequence[Any]]) -> Deferred[list[int]]:
        """Publish several tokens to ``stream`` at once (each a list of JSON-serialisable
        rows), all or none, with consecutive tokens; fires with the tokens."""
        try:
            encoded = self.encode_tokens(stream, tokens_rows)
        except PublishError:
            return fail()
        return self.submit_many(stream, encoded)

    def _commit_pending(self) -> None:
        assert self.run_blocking is not None
        batch, self._pending, self._pending_rows = self._pending, [], 0
        self._committing = True
        now = self.clock.seconds()
        d = self.run_blocking(self.store.append, [(p.stream, p.rows) for p in batch], now)

        def committed(tokens: list[int]) -> None:
            self._committed([(p.stream, t, p.rows) for p, t in zip(batch, tokens)])
            for publish, token in zip(batch, tokens):
                publish.waiter.callback(token)

        def failed(failure: Failure) -> None:
            log.error("commit of %d publishes failed: %s", len(batch), failure.getErrorMessage())
            error = PublishError(503, f"store failed: {failure.getErrorMessage()}")
            for publish in batch:
                publish.waiter.errback(error)

        def next_commit(_: object) -> None:
            self._committing = False
            if self._pending:
                self._commit_pending()

        d.addCallbacks(committed, failed).addBoth(next_commit)

    def _committed(self, entries: list[tuple[str, int, list[str]]]) -> None:
        """Committed tokens, in token order: advance the heads and send them live. The
        tokens of one stream are encoded once, joined, and written with one call per
        subscriber."""
        by_stream: dict[str, tuple[list[int], list[list[str]]]] = {}
        for stream, token, rows in entries:
            tokens, tokens_rows = by_stream.setdefault(stream, ([], []))
            tokens.append(token)
            tokens_rows.append(rows)
        for stream, (tokens, tokens_rows) in by_stream.items():
            self._committed_stream(stream, tokens, tokens_rows)

    def _committed_stream(self, stream: str, tokens: list[int], tokens_rows: list[list[str]]) -> None:
        """:meth:`_committed` for consecutive tokens of one stream."""
        data = rdata_block(stream, zip(tokens, tokens_rows))
        self._send_live(stream, tokens[-1], sum(map(len, tokens_rows)), data)

    def _send_live(self, stream: str, head: int, count: int, data: bytes) -> None:
        state = self._stream(stream)
        state.head = head
        state.rows_published += count
        self.rows_published += count
        receivers = state.live | self._all_streams if self._all_streams else state.live
        if receivers:
            state.rows_sent_live += count * len(receivers)
            for connection in tuple(receivers):
                connection.write(data)

    def _trim_inline(self, stream: str, now: float) -> None:
        self.store.trim(stream, self.config.retention_for(stream), now)

    # -- subscriptions and catch-up ----------------------------------------------------

    def replicate(self, connection: MasterConnection, command: ReplicateCommand) -> None:
        """Serve ``REPLICATE``: subscribe ``connection`` and start its catch-up."""
        stream = command.stream
        if stream == ALL_STREAMS:
            self._replicate_all(connection)
            return
        if connection in self._all_streams:
            connection.send(
                ErrorCommand(f"REPLICATE {stream} ignored: already subscribed to ALL streams")
            )
            return
        if not self.knows(stream):
            connection.send(
                ErrorCommand(f"unknown stream {stream!r}: this master serves only its configured streams")
            )
            return
        state = self._stream(stream)
        self._unsubscribe(connection, stream)
        if command.token is None:
            sub = Subscription(stream, state.head, live=True, live_since_rows=state.rows_published)
            connection.subscriptions[stream] = sub
            state.live.add(connection)
            connection.send(PositionCommand(stream, state.head))
            return
        plan = plan_catch_up(command.token, state.head)
        if plan.reset:
            log.warning(
                "%s asked for %s after token %d but the head is %d: sending RESET",
                connection.describe(), stream, command.token, state.head,
            )
            connection.send(ResetCommand(stream, state.head))
        sub = Subscription(stream, plan.position)
        connection.subscriptions[stream] = sub
        connection.catching_up.append(sub)
        self.pump(connection)

    def _replicate_all(self, connection: MasterConnection) -> None:
        for stream in list(connection.subscriptions):
            self._unsubscribe(connection, stream)
        self._all_streams.add(connection)
        if connection.all_since_rows is None:
            connection.all_since_rows = self.rows_published
        for name in self.stream_names():
            connection.send(PositionCommand(name, self._streams[name].head))

    def _unsubscribe(self, connection: MasterConnection, stream: str) -> None:
        sub = connection.subscriptions.pop(stream, None)
        if sub is None:
            return
        state = self._streams[stream]
        state.live.discard(connection)
        if sub.live:
            connection.rdata_rows_sent += state.rows_published - sub.live_since_rows
        if not sub.live:
            connection.catching_up.remove(sub)

    def pump(self, connection: MasterConnection) -> None:
        """Send ``connection`` catch-up pages while it can take them, a few pages per turn
        of the reactor so that other connections and publishes are served meanwhile."""
        if connection.pump_call is not None:
            return
        queue = connection.catching_up
        pages = 0
        while queue and connection.can_write:
            if pages >= PAGES_PER_TURN:
                connection.pump_call = self.clock.callLater(0, self._pump_later, connection)
                return
            sub = queue[0]
            try:
                done = self._catch_up_step(connection, sub)
            except StoreError as e:
                log.error("reading %s for %s failed: %s", sub.stream, connection.describe(), e)
                connection.send_error(f"master cannot read stream {sub.stream}: store failure")
                return
            pages += 1
            if done:
                queue.popleft()
            else:
                queue.rotate(-1)

    def _pump_later(self, connection: MasterConnection) -> None:
        connection.pump_call = None
        self.pump(connection)

    def _catch_up_step(self, connection: MasterConnection, sub: Subscription) -> bool:
        """Send the next page of ``sub``'s catch-up; True once it is live."""
        state = self._streams[sub.stream]
        head = state.head
        if sub.position < head:
            entries = self.store.read(
                sub.stream, sub.position, head, self.config.limits.catchup_page_rows
            )
            gap = missing_before(sub.position, entries[0].token if entries else None, head)
            if gap is not None:
                log.warning(
                    "%s: tokens %d..%d of %s are no longer retained: sending GAP",
                    connection.describe(), gap[0], gap[1], sub.stream,
                )
                connection.send(GapCommand(sub.stream, *gap))
                sub.position = gap[1]
            if entries:
                connection.write(rdata_block(sub.stream, [(e.token, e.rows) for e in entries]))
                sub.position = entries[-1].token
                rows = sum(len(e.rows) for e in entries)
                state.rows_sent_catchup += rows
                connection.rdata_rows_sent += rows
        if sub.position >= head:
            connection.send(PositionCommand(sub.stream, head))
            sub.live = True
            sub.live_since_rows = state.rows_published
            state.live.add(connection)
            return True
        return False

    # -- connections -------------------------------------------------------------------

    def connection_made(self, connection: MasterConnection) -> bool:
        """Admit a new connection; False when ``limits.max_connections`` is reached."""
        if len(self.connections) >= self.config.limits.max_connections:
            return False
        self.connections.add(connection)
        return True

    def connection_lost(self, connection: MasterConnection) -> None:
        self.connections.discard(connection)
        self._all_streams.discard(connection)
        if connection.all_since_rows is not None:
            connection.rdata_rows_sent += self.rows_published - connection.all_since_rows
            connection.all_since_rows = None
        for stream in list(connection.subscriptions):
            self._unsubscribe(connection, stream)
        if connection.pump_call is not None and connection.pump_call.active():
            connection.pump_call.cancel()
        connection.pump_call = None


class MasterConnection(ReplicationProtocol):
    """The master's end of one worker connection."""

    def __init__(self, master: Master) -> None:
        config = master.config
        super().__init__(
            master.clock,
            master.registry,
            MASTER,
            config.server_name,
            keepalive=config.keepalive,
            max_line_bytes=config.limits.max_line_bytes,
            max_buffer_bytes=config.limits.max_buffer_bytes,
        )
        self.master = master
        self.subscriptions: dict[str, Subscription] = {}
        self.catching_up: deque[Subscription] = deque()
        self.pump_call: IDelayedCall | None = None
        self._admitted = False
        #: RDATA lines written: catch-up pages and live rows of ended subscriptions; see
        #: :meth:`rdata_sent` for the total.
        self.rdata_rows_sent = 0
        #: ``master.rows_published`` when this connection subscribed to ALL streams.
        self.all_since_rows: int | None = None

    def rdata_sent(self) -> int:
        """RDATA lines written to this connection. Live rows are not counted per write:
        they are the rows published since each live subscription began, computed here."""
        total = self.rdata_rows_sent
        for sub in self.subscriptions.values():
            if sub.live:
                total += self.master._streams[sub.stream].rows_published - sub.live_since_rows
        if self.all_since_rows is not None:
            total += self.master.rows_published - self.all_since_rows
        return total

    def command_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        received, sent = super().command_counts()
        rdata = self.rdata_sent()
        if rdata:
            sent["RDATA"] = sent.get("RDATA", 0) + rdata
        return received, sent

    def connectionMade(self) -> None:
        super().connectionMade()
        self._admitted = self.master.connection_made(self)
        if not self._admitted:
            limit = self.master.config.limits.max_connections
            self.send_error(
                f"too many connections: this master takes {limit} (limits.max_connections)",
                TOO_MANY_CONNECTIONS,
            )

    def handshake_done(self) -> None:
        log.info("%s connected", self.describe())
        self.master.metrics.peer_connected(self)

    def on_REPLICATE(self, command: ReplicateCommand) -> None:
        self.master.replicate(self, command)

    def writable(self) -> None:
        if self.catching_up:
            self.master.pump(self)

    def closed(self, reason: str) -> None:
        self.master.metrics.connection_closed(self, reason)
        if self._admitted:
            log.info("%s disconnected: %s", self.describe(), reason)
            self.master.connection_lost(self)


class MasterFactory(Factory):
    """Builds a :class:`MasterConnection` for each incoming connection."""

    def __init__(self, master: Master) -> None:
        self.master = master

    def buildProtocol(self, addr: IAddress) -> MasterConnection:
        return MasterConnection(self.master)
