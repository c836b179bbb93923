"""The store as the master sees it: every call returns a Deferred.

:class:`AsyncStore` is the interface; two adapters implement it over a
:class:`~replication.store.StreamStore`:

- :class:`InlineStore` for a store that never blocks (the memory store): each call runs at
  once on the caller's thread and returns an already-fired Deferred. Its :attr:`inline`
  attribute hands the store itself to callers that want to skip the Deferred on a hot path
  (the stream log's commit path does, and then takes exactly the same steps).
- :class:`ThreadedStore` for a store that does disk work (SQLite): writes (``append``,
  ``ingest``, ``skip``, ``trim``, opening and closing) run one at a time, in order,
  through ``run_write`` (a single writer thread), and reads through ``run_read`` (a reader
  thread), so that no store I/O runs on the reactor thread. Results come back on the reactor thread.

:func:`adapt` picks the adapter a store needs from its ``blocking`` attribute. Nothing here
imports a reactor: the runners are passed in (see :func:`thread_runner`, which the service
builds around Twisted's thread pools).

Opening a store (:meth:`AsyncStore.open`) is how its origin id reaches the master: the
answer (:class:`OpenedStore`) carries it with the stats of every stream.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, fail, succeed

from replication.store import (
    LOCAL_ORIGIN,
    BatchKeys,
    Entry,
    PublishKey,
    RetentionPolicy,
    StoreError,
    StreamStats,
    StreamStore,
    UnknownStream,
    stream_stats,
)

T = TypeVar("T")

#: Runs a blocking call off the reactor thread: ``runner(f, *args) -> Deferred`` that fires,
#: on the reactor thread, with ``f(*args)`` or its failure.
BlockingRunner = Callable[..., "Deferred[Any]"]


@dataclass(frozen=True, slots=True)
class OpenedStore:
    """What opening a store found: its ``origin_id`` (see :mod:`replication.store`) and the
    ``stats`` of every ``(stream, origin)`` it holds."""

    origin_id: str
    stats: dict[tuple[str, str], StreamStats]


@dataclass(frozen=True, slots=True)
class TrimResult:
    """A retention pass: rows ``dropped`` in all, and the stats of each trimmed
    ``(stream, origin)`` after it."""

    dropped: int
    stats: Mapping[tuple[str, str], StreamStats]


class AsyncStore(Protocol):
    """The master's view of a store. Every method returns a Deferred that fails with
    :class:`~replication.store.StoreError` when the store cannot do what was asked.

    ``inline`` is the underlying store when its methods may be called on the reactor thread
    (they never block), else ``None``. ``blocking`` is the underlying store's.
    """

    inline: StreamStore | None
    blocking: bool
    #: The underlying store's ``keeps_keys`` (``False`` for a store that has no such
    #: attribute: one written before keys were kept).
    keeps_keys: bool

    def open(self, create: Sequence[str], now: float | None = None) -> Deferred[OpenedStore]:
        """Create the local streams named in ``create`` (if missing; created at ``now``) and
        return the store's origin id and the stats of every ``(stream, origin)`` it holds.
        May be called again to read the stats afresh (with nothing to create)."""

    def delete(
        self, stream: str, create: bool = False, now: float | None = None
    ) -> Deferred[StreamStats | None]:
        """Delete the local ``stream`` (:meth:`StreamStore.delete_stream
        <replication.store.StreamStore.delete_stream>`), in the order of the other writes;
        with ``create``, create it anew, empty, at ``now``, and fire with its stats, else
        with ``None``. Fails with :class:`~replication.store.UnknownStream` for a stream the
        store does not hold."""

    def append(
        self, batch: Sequence[tuple[str, Sequence[str]]], now: float, origin: str = LOCAL_ORIGIN,
        keys: BatchKeys = (),
    ) -> Deferred[list[int]]:
        """:meth:`StreamStore.append <replication.store.StreamStore.append>`."""

    def publish_keys(self, since: float, limit: int) -> Deferred[list[PublishKey]]:
        """:meth:`StreamStore.publish_keys <replication.store.StreamStore.publish_keys>`."""

    def forget_keys(self, before: float) -> Deferred[int]:
        """:meth:`StreamStore.forget_keys <replication.store.StreamStore.forget_keys>`, in
        the order of the other writes."""

    def read(
        self, stream: str, after: int, upto: int, max_rows: int, origin: str = LOCAL_ORIGIN
    ) -> Deferred[list[Entry]]:
        """:meth:`StreamStore.read <replication.store.StreamStore.read>`."""

    def ingest(
        self, stream: str, origin: str, entries: Sequence[Entry], now: float
    ) -> Deferred[int]:
        """:meth:`StreamStore.ingest <replication.store.StreamStore.ingest>`."""

    def skip(self, stream: str, origin: str, last: int, now: float) -> Deferred[int]:
        """:meth:`StreamStore.skip <replication.store.StreamStore.skip>`."""

    def trim(self, retention: Mapping[str, RetentionPolicy], now: float) -> Deferred[TrimResult]:
        """Apply ``retention`` to every ``(stream, origin)`` of each stream it names, the
        rows of other origins included (each with its stream's retention); streams it does
        not name, and names the store does not hold, are left alone."""

    def close(self) -> Deferred[None]:
        """Release the store; after writes in flight have finished, for a threaded store."""


# -- the operations, as plain functions of a StreamStore (run inline or in a thread) --------


def _open(store: StreamStore, create: Sequence[str], now: float | None) -> OpenedStore:
    for name in create:
        store.create_stream(name, now)
    # A store that reads every stream's stats at once (PostgreSQL: one query, which a poke
    # of a master on a shared database runs often) says so with ``all_stats``.
    all_stats: Callable[[], dict[tuple[str, str], StreamStats]] | None = getattr(
        store, "all_stats", None
    )
    if all_stats is not None:
        return OpenedStore(store.origin_id, all_stats())
    return OpenedStore(store.origin_id, {key: stream_stats(store, *key) for key in store.keys()})


def _delete(
    store: StreamStore, stream: str, create: bool, now: float | None
) -> StreamStats | None:
    store.delete_stream(stream)
    if not create:
        return None
    store.create_stream(stream, now)
    return stream_stats(store, stream)


def _trim(store: StreamStore, retention: Mapping[str, RetentionPolicy], now: float) -> TrimResult:
    dropped = 0
    stats = {}
    for stream, origin in store.keys():
        keep = retention.get(stream)
        if keep is None:
            continue
        try:
            removed = store.trim(stream, keep, now, origin)
            dropped += removed
            stats[(stream, origin)] = stream_stats(store, stream, origin)
        except UnknownStream:
            pass  # deleted meanwhile
    return TrimResult(dropped, stats)


def _call(f: Callable[..., T], *args: Any) -> Deferred[T]:
    try:
        return succeed(f(*args))
    except Exception:
        return fail()


class InlineStore:
    """:class:`AsyncStore` over a store whose calls never block: run at once, already fired."""

    def __init__(self, store: StreamStore) -> None:
        if store.blocking:
            raise ValueError("a blocking store must run behind ThreadedStore")
        self.inline: StreamStore | None = store
        self.store = store
        self.blocking = False
        self.keeps_keys: bool = getattr(store, "keeps_keys", False)

    def open(self, create: Sequence[str], now: float | None = None) -> Deferred[OpenedStore]:
        return _call(_open, self.store, create, now)

    def delete(
        self, stream: str, create: bool = False, now: float | None = None
    ) -> Deferred[StreamStats | None]:
        return _call(_delete, self.store, stream, create, now)

    def append(
        self, batch: Sequence[tuple[str, Sequence[str]]], now: float, origin: str = LOCAL_ORIGIN,
        keys: BatchKeys = (),
    ) -> Deferred[list[int]]:
        if keys:
            return _call(self.store.append, batch, now, origin, keys)
        return _call(self.store.append, batch, now, origin)

    def publish_keys(self, since: float, limit: int) -> Deferred[list[PublishKey]]:
        return _call(self.store.publish_keys, since, limit)

    def forget_keys(self, before: float) -> Deferred[int]:
        return _call(self.store.forget_keys, before)

    def read(
        self, stream: str, after: int, upto: int, max_rows: int, origin: str = LOCAL_ORIGIN
    ) -> Deferred[list[Entry]]:
        return _call(self.store.read, stream, after, upto, max_rows, origin)

    def ingest(
        self, stream: str, origin: str, entries: Sequence[Entry], now: float
    ) -> Deferred[int]:
        return _call(self.store.ingest, stream, origin, entries, now)

    def skip(self, stream: str, origin: str, last: int, now: float) -> Deferred[int]:
        return _call(self.store.skip, stream, origin, last, now)

    def trim(self, retention: Mapping[str, RetentionPolicy], now: float) -> Deferred[TrimResult]:
        return _call(_trim, self.store, retention, now)

    def close(self) -> Deferred[None]:
        return _call(self.store.close)


class ThreadedStore:
    """:class:`AsyncStore` over a blocking store.

    :param store: the store; its writes must be called from one thread at a time, its reads
        may run beside them (see :mod:`replication.store.sqlite`).
    :param run_write: runs ``append``, ``ingest``, ``skip``, ``trim``, ``delete``, opening
        and closing, one call at a time, in
        the order given (a one-thread pool).
    :param run_read: runs ``read`` and ``stats``; ``None``: ``run_write`` (reads then queue
        behind commits).
    """

    def __init__(
        self,
        store: StreamStore,
        run_write: BlockingRunner,
        run_read: BlockingRunner | None = None,
    ) -> None:
        self.inline: StreamStore | None = None
        self.store = store
        self.blocking = True
        self.keeps_keys: bool = getattr(store, "keeps_keys", False)
        self.run_write = run_write
        self.run_read = run_read if run_read is not None else run_write

    def open(self, create: Sequence[str], now: float | None = None) -> Deferred[OpenedStore]:
        return self.run_write(_open, self.store, create, now)

    def delete(
        self, stream: str, create: bool = False, now: float | None = None
    ) -> Deferred[StreamStats | None]:
        return self.run_write(_delete, self.store, stream, create, now)

    def append(
        self, batch: Sequence[tuple[str, Sequence[str]]], now: float, origin: str = LOCAL_ORIGIN,
        keys: BatchKeys = (),
    ) -> Deferred[list[int]]:
        if keys:
            return self.run_write(self.store.append, batch, now, origin, keys)
        return self.run_write(self.store.append, batch, now, origin)

    def publish_keys(self, since: float, limit: int) -> Deferred[list[PublishKey]]:
        return self.run_read(self.store.publish_keys, since, limit)

    def forget_keys(self, before: float) -> Deferred[int]:
        return self.run_write(self.store.forget_keys, before)

    def read(
        self, stream: str, after: int, upto: int, max_rows: int, origin: str = LOCAL_ORIGIN
    ) -> Deferred[list[Entry]]:
        return self.run_read(self.store.read, stream, after, upto, max_rows, origin)

    def ingest(
        self, stream: str, origin: str, entries: Sequence[Entry], now: float
    ) -> Deferred[int]:
        return self.run_write(self.store.ingest, stream, origin, entries, now)

    def skip(self, stream: str, origin: str, last: int, now: float) -> Deferred[int]:
        return self.run_write(self.store.skip, stream, origin, last, now)

    def trim(self, retention: Mapping[str, RetentionPolicy], now: float) -> Deferred[TrimResult]:
        return self.run_write(_trim, self.store, retention, now)

    def close(self) -> Deferred[None]:
        return self.run_write(self.store.close)


def adapt(
    store: StreamStore,
    run_write: BlockingRunner | None = None,
    run_read: BlockingRunner | None = None,
) -> AsyncStore:
    """The :class:`AsyncStore` for ``store``: :class:`InlineStore` if it never blocks, else
    :class:`ThreadedStore` (which needs ``run_write``)."""
    if not store.blocking:
        return InlineStore(store)
    if run_write is None:
        raise ValueError("a blocking store needs run_blocking to keep disk work off the reactor")
    return ThreadedStore(store, run_write, run_read)


__all__ = [
    "AsyncStore",
    "BlockingRunner",
    "InlineStore",
    "OpenedStore",
    "StoreError",
    "ThreadedStore",
    "TrimResult",
    "adapt",
]
