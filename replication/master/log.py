"""The stream log: the one owner of the master's stream state.

:class:`StreamLog` keeps, per ``(stream, origin)``, the head (the newest committed token),
the oldest retained token, the rows retained and the rows committed since start
(:class:`StreamState`); it owns the commit queue and the order of commits. Everything that
changes a head goes through it, and everything that needs committed rows listens to it:

- **publishes** of the local origin (:meth:`StreamLog.publish`) wait in one queue. With a
  store whose calls never block (memory) the queue is committed at once, on the caller's
  thread; with a blocking store (SQLite), every publish that arrives while a commit runs
  joins the next commit (group commit), which runs in the store's writer thread. Both take
  the same steps: append, then advance the heads and tell the listeners, then answer the
  publishers, in that order, so that no listener and no publisher ever sees a token a crash
  could take back.
- **pokes** (:meth:`StreamLog.poke`): rows that another writer committed to the same store
  (what a shared database needs). The log reads what lies beyond its heads and hands it to
  the listeners in token order, as if it had committed it itself.
- a commit whose tokens do not follow the head (another writer got in between) is held back
  while the missing tokens are read, so listeners always see each stream's tokens once, in
  order, without a gap; a gap that retention already dropped is reported as
  :meth:`LogListener.skipped`.
- **rows of other origins** (:meth:`StreamLog.ingest`, what a cluster peer link relays),
  stored with their origin's tokens; and tokens of another origin that its master's
  retention dropped before they were relayed (:meth:`StreamLog.skip`, a peer's ``GAP``),
  reported as :meth:`LogListener.skipped` too.

Listeners (:class:`LogListener`, the fan-out) receive committed runs of one stream:
consecutive tokens, their rows as compact JSON texts. Retention runs through the log too
(:meth:`StreamLog.trim`, for every origin of a stream, with the stream's retention), which
is how the retained-token statistics stay current without asking the store when metrics are
scraped.

Streams are created by a publish to a new name (or by the configuration, when the log is
opened); each new stream is logged once, when the commit that created it is done, and its
creation time is kept in the store and in :attr:`StreamState.created`.
:meth:`StreamLog.delete` deletes a local stream through the store (in the order of the other
writes) and then tells the listeners (:meth:`LogListener.deleted`); a stream the
configuration names is created anew, empty, in the same store call.

Opening the log (:meth:`StreamLog.open`) also learns the store's origin id
(:attr:`StreamLog.origin_id`): the name other masters give the rows of the local origin,
which the log, like the store, keys as ``""``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from replication.store import (
    LOCAL_ORIGIN,
    BatchKeys,
    Entry,
    PublishKey,
    RetentionPolicy,
    StoreError,
    StreamStats,
    UnknownStream,
)
from replication.store.asynchronous import AsyncStore, OpenedStore, TrimResult

log = logging.getLogger(__name__)


class PublishError(Exception):
    """A publish that was refused; nothing of it was stored. ``status`` is the HTTP status
    that answers it (400 bad request, 404 unknown stream, 413 too large, 503 unavailable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class StreamKey(NamedTuple):
    """What the log keys its state by: the stream and the origin of its rows."""

    stream: str
    origin: str


@dataclass(eq=False, slots=True)
class StreamState:
    """One ``(stream, origin)`` of the log. Read it; only the log changes it.

    ``head`` is the newest token listeners have been given (0: none); ``oldest`` the oldest
    token the store retains (``head + 1`` when none) and ``retained_rows`` its rows, as of
    the last commit or retention pass; ``rows_published`` counts the rows committed since
    this process started; ``created`` is when the stream was created (seconds since the
    epoch; ``None``: not known, a stream of an older store).
    """

    stream: str
    origin: str
    head: int = 0
    oldest: int = 1
    retained_rows: int = 0
    rows_published: int = 0
    created: float | None = None
    #: While missing tokens are being read: the runs that must wait for them, in order.
    held: list[tuple[int, Sequence[Sequence[str]], int]] | None = field(default=None, repr=False)
    #: ``(stream, origin)``, made once: the key listeners look their records up by.
    key: StreamKey = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.key = StreamKey(self.stream, self.origin)


class LogListener(Protocol):
    """What the log tells about committed rows."""

    def committed(
        self, state: StreamState, first: int, tokens_rows: Sequence[Sequence[str]], rows: int
    ) -> None:
        """Tokens ``first .. first + len(tokens_rows) - 1`` of ``state`` were committed
        (``state.head`` is already the last of them); ``rows`` is their number of rows."""

    def skipped(self, state: StreamState, first: int, last: int) -> None:
        """Tokens ``first..last`` were committed by another writer and dropped by retention
        before this log could read them: listeners that deliver live must not pretend they
        delivered them."""

    def deleted(self, old: StreamState, new: StreamState | None) -> None:
        """The local stream ``old`` was deleted with every row; ``new`` is its state if it
        was created anew (empty, head 0), else ``None`` (the log no longer holds it)."""


class DeleteError(Exception):
    """A stream that cannot be deleted now; ``status`` is the HTTP status that answers it
    (404 unknown stream, 409 busy, 503 unavailable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(eq=False, slots=True)
class _Publish:
    stream: str
    tokens_rows: list[list[str]]
    rows: int
    waiter: Deferred[list[int]]
    #: Idempotency keys to store with the tokens: ``(key, index, count)`` in ``tokens_rows``.
    keys: BatchKeys = ()


class StreamLog:
    """Heads per ``(stream, origin)``, the commit queue and the listeners of commits.

    :param store: the store, through its asynchronous interface.
    :param clock: time for commit timestamps and retention.
    :param retention: the retention of a stream, by name.
    :param max_pending_rows: rows that may wait for a commit; past that, publishes are
        refused with 503 rather than queued without bound.
    :param page_rows: rows per read when the log fetches tokens another writer committed.
    :param max_streams: local streams the log holds at most (``limits.max_streams``); a
        publish that would create one more is refused with 403. Streams the store already
        holds when it is opened count, and are kept, even past the limit.

    Call :meth:`open` once (the master does); until it has fired, publishes are refused.
    """

    def __init__(
        self,
        store: AsyncStore,
        clock: IReactorTime,
        retention: Callable[[str], RetentionPolicy],
        *,
        max_pending_rows: int = 1_000_000,
        page_rows: int = 10_000,
        max_streams: int = 10_000,
    ) -> None:
        self.store = store
        self.clock = clock
        self.retention = retention
        self.max_pending_rows = max_pending_rows
        self.page_rows = page_rows
        self.max_streams = max_streams
        #: New local streams that publishes waiting for a commit will create.
        self._creating: set[str] = set()
        self.listeners: list[LogListener] = []
        #: Rows committed to any stream since start.
        self.rows_published = 0
        self.opened = False
        #: The store's origin id (what other masters call the local origin ``""``); ``None``
        #: until :meth:`open` has fired.
        self.origin_id: str | None = None
        self._states: dict[StreamKey, StreamState] = {}
        #: The local origin's states by stream name: the publish path's lookup.
        self._local: dict[str, StreamState] = {}
        #: Every state of a stream, by stream name then origin.
        self._by_stream: dict[str, dict[str, StreamState]] = {}
        self._inline = store.inline
        self._pending: list[_Publish] = []
        self._pending_rows = 0
        self._committing = False
        self._trimming = False

    # -- state ---------------------------------------------------------------------------

    def open(self, create: Sequence[str]) -> Deferred[None]:
        """Create the streams in ``create``, load every stream's state and the store's origin
        id (:attr:`origin_id`) from the store."""

        def loaded(opened: OpenedStore) -> None:
            for (name, origin), s in opened.stats.items():
                state = self.ensure(name, origin)
                state.head, state.oldest, state.retained_rows = s.head, s.oldest, s.retained_rows
                state.created = s.created
            self.origin_id = opened.origin_id
            self.opened = True

        return self.store.open(create, self.clock.seconds()).addCallback(loaded)

    def add_listener(self, listener: LogListener) -> None:
        self.listeners.append(listener)

    def ensure(self, stream: str, origin: str = LOCAL_ORIGIN) -> StreamState:
        """The state of ``(stream, origin)``, created empty (head 0) if the log has none: a
        stream that is followed before its first publish."""
        key = StreamKey(stream, origin)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = StreamState(stream, origin)
            self._by_stream.setdefault(stream, {})[origin] = state
            if origin == LOCAL_ORIGIN:
                self._local[stream] = state
                self._creating.discard(stream)
        return state

    def state(self, stream: str, origin: str = LOCAL_ORIGIN) -> StreamState | None:
        if origin == LOCAL_ORIGIN:
            return self._local.get(stream)
        return self._states.get(StreamKey(stream, origin))

    def head(self, stream: str, origin: str = LOCAL_ORIGIN) -> int:
        """The newest committed token of ``(stream, origin)`` listeners have seen, 0 if none."""
        state = self.state(stream, origin)
        return state.head if state is not None else 0

    def origins(self, stream: str) -> dict[str, StreamState]:
        """The states of ``stream`` by origin (``""``: the local one); a copy."""
        return dict(self._by_stream.get(stream, ()))

    def states(self) -> list[StreamState]:
        """Every state, by stream name then origin."""
        return [self._states[key] for key in sorted(self._states)]

    def stream_names(self) -> list[str]:
        """The streams of the local origin, sorted."""
        return sorted(self._local)

    def read(
        self, stream: str, after: int, upto: int, max_rows: int, origin: str = LOCAL_ORIGIN
    ) -> Deferred[list[Entry]]:
        """Committed entries of ``(stream, origin)`` from the store (see
        :meth:`~replication.store.StreamStore.read`)."""
        return self.store.read(stream, after, upto, max_rows, origin)

    # -- publishing ----------------------------------------------------------------------

    def publish_inline(
        self, stream: str, tokens_rows: list[list[str]], keys: BatchKeys = ()
    ) -> list[int] | None:
        """:meth:`publish` at once, without a Deferred, where it can be: the store commits
        inline (the memory store), no commit is running and ``stream`` exists. The tokens,
        or :class:`PublishError` raised; ``None`` when the call must go through
        :meth:`publish`."""
        inline = self._inline
        if inline is None or self._committing or not self.opened:
            return None
        state = self._local.get(stream)
        if state is None:
            return None
        now = self.clock.seconds()
        batch = [(stream, rows) for rows in tokens_rows]
        try:
            if keys and self.keeps_keys:
                tokens = inline.append(batch, now, LOCAL_ORIGIN, keys)
            else:
                tokens = inline.append(batch, now)
        except StoreError as e:
            raise PublishError(503, f"store failed: {e}") from None
        self._deliver(state, tokens[0], tokens_rows, sum(map(len, tokens_rows)))
        self._trim_inline(state, now)
        return tokens

    def publish(
        self, stream: str, tokens_rows: list[list[str]], keys: BatchKeys = ()
    ) -> Deferred[list[int]]:
        """Commit ``tokens_rows`` (each a token's rows, checked and encoded) to ``stream`` as
        consecutive tokens of the local origin, all or none, in one store transaction. Fires
        with the tokens once they are committed and every listener has been told, or fails
        with :class:`PublishError` (503) and nothing of the call stored. ``keys`` are the
        idempotency keys of the publishes the call carries (``(key, index, count)`` in
        ``tokens_rows``), stored with the tokens when the store keeps keys."""
        if not self.keeps_keys:
            keys = ()
        if not self.opened:
            return fail(PublishError(503, "the master is still opening its store; retry shortly"))
        added = False  # whether this call reserved a new stream
        if stream not in self._local and stream not in self._creating:
            if len(self._local) + len(self._creating) >= self.max_streams:
                return fail(PublishError(
                    403,
                    f"cannot create stream {stream!r}: this master holds {self.max_streams} "
                    "streams already (limits.max_streams)",
                ))
            self._creating.add(stream)
            added = True
        inline = self._inline
        if inline is not None and not self._committing:
            # The same steps as _commit_pending, without a queue or a Deferred per step.
            now = self.clock.seconds()
            batch = [(stream, rows) for rows in tokens_rows]
            try:
                if keys:
                    tokens = inline.append(batch, now, LOCAL_ORIGIN, keys)
                else:
                    tokens = inline.append(batch, now)
            except StoreError as e:
                if added:
                    self._creating.discard(stream)
                return fail(PublishError(503, f"store failed: {e}"))
            state = self._local.get(stream) or self._created(stream, now)
            self._deliver(state, tokens[0], tokens_rows, sum(map(len, tokens_rows)))
            self._trim_inline(state, now)
            return succeed(tokens)
        count = sum(map(len, tokens_rows))
        if self._pending_rows + count > self.max_pending_rows:
            if added:
                self._creating.discard(stream)
            return fail(PublishError(503, "too many rows waiting to be committed; retry later"))
        waiter: Deferred[list[int]] = Deferred()
        self._pending.append(_Publish(stream, tokens_rows, count, waiter, keys))
        self._pending_rows += count
        if not self._committing:
            self._commit_pending()
        return waiter

    def _commit_pending(self) -> None:
        batch, self._pending, self._pending_rows = self._pending, [], 0
        self._committing = True
        now = self.clock.seconds()
        entries = [(p.stream, rows) for p in batch for rows in p.tokens_rows]
        keys: list[tuple[str, int, int]] = []
        offset = 0
        for p in batch:
            if p.keys:
                keys.extend((key, offset + index, count) for key, index, count in p.keys)
            offset += len(p.tokens_rows)
        d = self.store.append(entries, now, LOCAL_ORIGIN, keys) if keys else self.store.append(
            entries, now
        )
        d.addCallbacks(
            self._batch_committed, self._batch_failed,
            callbackArgs=(batch, now), errbackArgs=(batch,),
        )
        d.addBoth(self._next_commit)

    def _batch_committed(self, tokens: list[int], batch: list[_Publish], now: float) -> None:
        # Runs of one stream, in token order (the tokens of one stream in a batch are
        # consecutive: the store appends them in one transaction).
        runs: dict[str, tuple[int, list[list[str]], list[int]]] = {}
        answers = []
        i = 0
        for publish in batch:
            n = len(publish.tokens_rows)
            mine = tokens[i:i + n]
            i += n
            answers.append((publish.waiter, mine))
            run = runs.get(publish.stream)
            if run is None:
                runs[publish.stream] = (mine[0], list(publish.tokens_rows), [publish.rows])
            else:
                run[1].extend(publish.tokens_rows)
                run[2].append(publish.rows)
        for stream, (first, tokens_rows, counts) in runs.items():
            state = self._local.get(stream) or self._created(stream, now)
            self._deliver(state, first, tokens_rows, sum(counts))
            if self._inline is not None:
                self._trim_inline(state, now)
        for waiter, mine in answers:
            waiter.callback(mine)

    def _created(self, stream: str, now: float) -> StreamState:
        """The state of a local stream a commit at ``now`` has just created; logged once,
        here, so that a misspelt stream name shows in the log."""
        state = self.ensure(stream)
        state.created = now
        log.info("created stream %r (its first publish)", stream)
        return state

    def _batch_failed(self, failure: Failure, batch: list[_Publish]) -> None:
        waiting = {p.stream for p in self._pending}
        self._creating -= {p.stream for p in batch} - waiting
        log.error("commit of %d publishes failed: %s", len(batch), failure.getErrorMessage())
        error = PublishError(503, f"store failed: {failure.getErrorMessage()}")
        for publish in batch:
            publish.waiter.errback(error)

    def _next_commit(self, _: object) -> None:
        self._committing = False
        if self._pending:
            self._commit_pending()

    # -- idempotency keys kept by the store ----------------------------------------------

    @property
    def keeps_keys(self) -> bool:
        """Whether the store keeps the idempotency keys given to :meth:`publish`."""
        return self.store.keeps_keys

    def publish_keys(self, since: float, limit: int) -> Deferred[list[PublishKey]]:
        """The newest ``limit`` keys the store recorded at or after ``since``, oldest first."""
        if not self.keeps_keys:
            return succeed([])
        return self.store.publish_keys(since, limit)

    def forget_keys(self, before: float) -> Deferred[int]:
        """Make the store forget the keys recorded before ``before``."""
        if not self.keeps_keys:
            return succeed(0)
        return self.store.forget_keys(before)

    # -- rows of other origins ----------------------------------------------------------

    def ingest(self, stream: str, origin: str, entries: Sequence[Entry]) -> Deferred[int]:
        """Store rows of another ``origin`` (relayed by a peer) with that origin's tokens,
        in one store transaction that also records the origin's new position (its head);
        tokens already stored are dropped as duplicates, the others must continue the head
        without a gap. Fires with the origin's new head once the listeners have been told
        of the new tokens; fails with :class:`~replication.store.StoreError`."""
        if not self.opened:
            return fail(StoreError("the master is still opening its store"))
        if origin == LOCAL_ORIGIN:
            return fail(StoreError("ingest takes rows of other origins; publish the local ones"))
        state = self.state(stream, origin) or self.ensure(stream, origin)
        now = self.clock.seconds()
        d = self.store.ingest(stream, origin, entries, now)

        def stored(head: int) -> int:
            new = [entry for entry in entries if entry.token > state.head]
            if new:
                self._deliver(
                    state, new[0].token, [e.rows for e in new], sum(len(e.rows) for e in new)
                )
                if self._inline is not None:
                    self._trim_inline(state, now)
            return head

        return d.addCallback(stored)

    def skip(self, stream: str, origin: str, last: int) -> Deferred[int]:
        """Tokens of another ``origin`` up to ``last`` will never arrive (its master's
        retention dropped them before they reached this one): move the head of ``(stream,
        origin)`` past them through the store (:meth:`StreamStore.skip
        <replication.store.StreamStore.skip>`, which also drops the tokens still retained
        below them, so the retained ones stay contiguous), then tell the listeners
        (:meth:`LogListener.skipped`). A ``last`` at or below the head changes nothing.
        Fires with the new head; fails with :class:`~replication.store.StoreError`."""
        if not self.opened:
            return fail(StoreError("the master is still opening its store"))
        if origin == LOCAL_ORIGIN:
            return fail(StoreError("skip takes other origins; the local one has no gaps"))
        state = self.state(stream, origin) or self.ensure(stream, origin)
        now = self.clock.seconds()
        d = self.store.skip(stream, origin, last, now)

        def skipped(dropped: int) -> int:
            first = state.head + 1
            if last < first:
                return state.head
            state.head, state.oldest = last, last + 1
            state.retained_rows = max(state.retained_rows - dropped, 0)
            if state.created is None:
                state.created = now
            for listener in self.listeners:
                listener.skipped(state, first, last)
            return last

        return d.addCallback(skipped)

    # -- handing committed tokens to the listeners, in order --------------------------------

    def _deliver(
        self, state: StreamState, first: int, tokens_rows: Sequence[Sequence[str]], rows: int
    ) -> None:
        """Committed tokens ``first ..`` of ``state``: to the listeners, in order, once."""
        if state.held is not None:  # missing tokens are being read: wait behind them
            state.held.append((first, tokens_rows, rows))
            return
        head = state.head
        if first <= head:  # some were already delivered (read after a poke)
            skip = head - first + 1
            if skip >= len(tokens_rows):
                return
            tokens_rows = tokens_rows[skip:]
            rows = sum(map(len, tokens_rows))
            first = head + 1
        elif first > head + 1:  # another writer committed in between: fetch its tokens first
            state.held = [(first, tokens_rows, rows)]
            self._fill(state, first - 1)
            return
        state.head = first + len(tokens_rows) - 1
        state.rows_published += rows
        state.retained_rows += rows
        self.rows_published += rows
        for listener in self.listeners:
            listener.committed(state, first, tokens_rows, rows)

    def _fill(self, state: StreamState, upto: int) -> None:
        """Read ``state.head + 1 .. upto`` from the store and deliver it, then what was held."""
        after = state.head
        d = self.store.read(state.stream, after, upto, self.page_rows, state.origin)

        def read(entries: list[Entry]) -> None:
            if entries and entries[0].token > after + 1:
                self._skip(state, after + 1, entries[0].token - 1)
            elif not entries:
                self._skip(state, after + 1, upto)
            held, state.held = state.held, None
            if entries:  # contiguous tokens: one run
                self._deliver(
                    state, entries[0].token, [e.rows for e in entries],
                    sum(len(e.rows) for e in entries),
                )
            state.held = held
            if state.head < upto:
                self._fill(state, upto)
            else:
                self._release(state)

        def failed(failure: Failure) -> None:
            log.error(
                "cannot read %s tokens %d..%d committed by another writer: %s; retrying in 1s",
                state.stream, after + 1, upto, failure.getErrorMessage(),
            )
            self.clock.callLater(1.0, self._fill, state, upto)

        d.addCallbacks(read, failed)

    def _release(self, state: StreamState) -> None:
        held, state.held = state.held or [], None
        for first, tokens_rows, rows in held:
            self._deliver(state, first, tokens_rows, rows)

    def _skip(self, state: StreamState, first: int, last: int) -> None:
        log.warning(
            "%s tokens %d..%d were committed by another writer and trimmed before this master "
            "read them", state.stream, first, last,
        )
        state.head = last
        state.oldest = max(state.oldest, last + 1)
        for listener in self.listeners:
            listener.skipped(state, first, last)

    def poke(self) -> Deferred[None]:
        """Rows may have been committed to the store by someone else: read every stream's
        head and deliver what lies beyond the log's, in order. Fires once the new heads are
        known (the rows may still be on their way to the listeners)."""

        def found(opened: OpenedStore) -> None:
            for (name, origin), s in opened.stats.items():
                state = self.state(name, origin) or self.ensure(name, origin)
                if s.head > state.head and state.held is None:
                    state.held = []
                    self._fill(state, s.head)

        return self.store.open(()).addCallback(found)

    # -- retention -----------------------------------------------------------------------

    def _trim_inline(self, state: StreamState, now: float) -> None:
        inline = self._inline
        assert inline is not None
        dropped = inline.trim(state.stream, self.retention(state.stream), now, state.origin)
        if dropped:
            state.retained_rows -= dropped
            state.oldest = inline.oldest(state.stream, state.origin)

    def trim(self) -> Deferred[None]:
        """Apply each stream's retention now to every origin of it, the rows ingested from
        other origins included (in the store's writer thread for a blocking store, one pass
        at a time). Fires when the pass is done; a failed pass is logged, not raised."""
        if self._trimming:
            return succeed(None)
        self._trimming = True
        retention = {key.stream: self.retention(key.stream) for key in self._states}
        d = self.store.trim(retention, self.clock.seconds())

        def done(result: TrimResult | Failure) -> None:
            self._trimming = False
            if isinstance(result, Failure):
                log.error("retention pass failed: %s", result.getErrorMessage())
                return
            for (name, origin), stats in result.stats.items():
                state = self._states.get(StreamKey(name, origin))
                if state is not None:
                    state.oldest, state.retained_rows = stats.oldest, stats.retained_rows
            if result.dropped:
                log.debug("retention dropped %s rows", result.dropped)

        return d.addBoth(done)

    # -- deleting ------------------------------------------------------------------------

    def delete(self, stream: str, recreate: bool = False) -> Deferred[StreamState | None]:
        """Delete the local ``stream`` and every row of it from the store, after the writes
        queued before (publishes waiting for the next commit go after it and create the
        stream anew, from token 1). With ``recreate`` (a configured stream) the stream is
        created anew, empty, in the same store call. Then the listeners are told
        (:meth:`LogListener.deleted`) and the Deferred fires with the new state (``None``
        without ``recreate``). Fails with :class:`DeleteError`: 404 for a stream the log does
        not hold, 409 while tokens another writer committed are being read for it, 503 when
        the store is not open or fails."""
        if not self.opened:
            return fail(DeleteError(503, "the master is still opening its store; retry shortly"))
        old = self._local.get(stream)
        if old is None:
            return fail(DeleteError(404, f"unknown stream {stream!r}"))
        if old.held is not None:
            return fail(DeleteError(
                409, f"stream {stream!r} is busy reading tokens another writer committed; retry"
            ))
        now = self.clock.seconds()
        d = self.store.delete(stream, recreate, now)

        def deleted(stats: StreamStats | None) -> StreamState | None:
            current = self._local.pop(stream, None)
            if current is not None:
                del self._states[current.key]
                by_origin = self._by_stream.get(stream)
                if by_origin is not None:
                    by_origin.pop(LOCAL_ORIGIN, None)
                    if not by_origin:
                        del self._by_stream[stream]
            new = None
            if stats is not None:
                new = self.ensure(stream)
                new.oldest, new.created = stats.oldest, stats.created
            log.warning(
                "deleted stream %r at head %d (%d rows retained)%s", stream,
                old.head, old.retained_rows, ", created anew (configured)" if new else "",
            )
            for listener in self.listeners:
                listener.deleted(old, new)
            return new

        def failed(failure: Failure) -> None:
            if isinstance(failure.value, UnknownStream):
                raise DeleteError(404, f"unknown stream {stream!r}")
            log.error("deleting stream %r failed: %s", stream, failure.getErrorMessage())
            raise DeleteError(503, f"store failed: {failure.getErrorMessage()}")

        return d.addCallbacks(deleted, failed)

    def close(self) -> Deferred[None]:
        """Close the store (after the writes in flight)."""
        return self.store.close()


__all__ = [
    "DeleteError",
    "LogListener",
    "PublishError",
    "StreamKey",
    "StreamLog",
    "StreamState",
]
