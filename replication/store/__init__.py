"""Where streams live: the :class:`StreamStore` interface and the errors it raises.

A store keeps, per stream, the rows of each token in token order. Tokens are assigned by the
store: the first token of a stream is 1 and each append takes the next integer, so the tokens
of a stream are contiguous and the retained ones are exactly ``oldest(stream)..head(stream)``.
Stores are pure: no reactor, no threads of their own; time is passed in. Implementations:
:mod:`replication.store.memory` and :mod:`replication.store.sqlite`.

Rows are keyed by ``(stream, origin)``: the origin is the master that accepted a publish.
:data:`LOCAL_ORIGIN` names the master that owns the store; other origins' rows (a peer
cluster's) are stored beside its own with ``ingest``. The master never calls a store
directly: it goes through the asynchronous interface of
:mod:`replication.store.asynchronous`, which runs a blocking store in threads.

Identity. Every store has an **origin id** (:attr:`StreamStore.origin_id`), created with the
store and kept in it, so it survives restarts: it is the name other masters and workers give
the rows this master accepted. A new or wiped store is a new origin. Inside the store the own
origin stays ``""`` (:data:`LOCAL_ORIGIN`) in every ``(stream, origin)`` key, so no row is
rewritten when the id is created: ``""`` is the store-relative name of ``origin_id``, and
other origins are keyed by their ids. The memory store makes a new id for each store object,
so a master on the memory store is a new origin at every start. The format is
:data:`replication.cluster.identity.ID_PATTERN`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class StoreError(Exception):
    """The store cannot do what was asked: its message says why, for an operator."""


#: The origin of rows accepted by the master that owns the store.
LOCAL_ORIGIN = ""


class DamagedEntry(StoreError):
    """A stored token failed its check (its checksum, its row count or its text encoding do
    not match what was written): the store holds damaged data for ``token`` of ``stream``
    from ``origin`` (``""``: the local origin), and will not hand it out."""

    def __init__(self, path: str, stream: str, origin: str, token: int, problem: str) -> None:
        super().__init__(path, stream, origin, token, problem)
        self.path = path
        self.stream = stream
        self.origin = origin
        self.token = token
        self.problem = problem

    def __str__(self) -> str:
        origin = "local" if self.origin == LOCAL_ORIGIN else self.origin
        return (
            f"store {self.path}: token {self.token} of stream {self.stream!r} (origin {origin})"
            f" is damaged: {self.problem}"
        )


class ReadOnlyStore(StoreError):
    """The store cannot be written because its file, its directory or the file system is
    read-only (or not writable by this process): not a damaged database."""


class UnknownStream(StoreError, KeyError):
    """The named stream does not exist in the store."""

    def __str__(self) -> str:
        return f"unknown stream {self.args[0]!r}"


@dataclass(frozen=True, slots=True)
class Entry:
    """The rows of one token: compact JSON texts, in publish order, at least one."""

    token: int
    rows: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PublishKey:
    """An idempotency key as a store keeps it: the publish to ``stream`` that carried it was
    committed as tokens ``first..last`` of the local origin at ``at`` (seconds since the
    epoch)."""

    key: str
    stream: str
    first: int
    last: int
    at: float


#: The keys of an ``append``: ``(key, index, count)``, the publish's first entry in the batch
#: and how many entries (tokens) it has.
BatchKeys = Sequence[tuple[str, int, int]]


@dataclass(frozen=True, slots=True)
class StreamStats:
    """What a store holds of one stream: its ``head`` (newest token, 0 if none), its
    ``oldest`` retained token (``head + 1`` when it retains none), its ``retained_rows``
    and when it was ``created`` (seconds since the epoch; ``None``: not known, a stream
    of a store written before creation times were kept)."""

    head: int
    oldest: int
    retained_rows: int
    created: float | None = None


def check_origin(origin: str) -> None:
    """Raise :class:`StoreError` unless ``origin`` is one whose tokens this store allocates
    (``append``): the local origin. Rows of other origins come with their tokens
    (``ingest``)."""
    if origin != LOCAL_ORIGIN:
        raise StoreError(
            f"origin {origin!r}: this store allocates tokens only for its own master (the "
            "local origin); store the rows of other origins with ingest"
        )


def check_other_origin(what: str, stream: str, origin: str, origin_id: str) -> None:
    """Raise :class:`StoreError` unless ``origin`` is another origin than the store's own:
    ``what`` (``ingest``, ``skip``) takes other origins only, and the local origin is never
    named by the store's own ``origin_id`` (its rows are keyed ``""`` only, never under two
    names)."""
    if origin == LOCAL_ORIGIN:
        raise StoreError(
            f"{what} takes rows of other origins; the local origin's take append"
        )
    if origin == origin_id:
        raise StoreError(
            f"{what} of {stream} from origin {origin!r}: that is this store's own origin id; "
            "its rows are the local origin's and are never stored as another origin's"
        )


def check_ingest(
    stream: str, origin: str, entries: Sequence[Entry], head: int, origin_id: str
) -> list[Entry]:
    """The entries of an ``ingest`` of ``(stream, origin)`` that are new given its ``head``:
    those above it (the rest are duplicates, dropped). Raises :class:`StoreError` for the
    local origin, whether named ``""`` or by the store's own ``origin_id`` (its rows are
    keyed ``""`` only, never under two names), and for tokens that do not continue the head
    one by one (a gap would hide lost rows); :class:`ValueError` for an entry without rows."""
    check_other_origin("ingest", stream, origin, origin_id)
    new = [entry for entry in entries if entry.token > head]
    expected = head + 1
    for entry in new:
        if not entry.rows:
            raise ValueError("a token carries at least one row")
        if entry.token != expected:
            raise StoreError(
                f"ingest of {stream} from origin {origin!r}: token {entry.token} does not "
                f"follow token {expected - 1}; tokens of an origin are stored without gaps"
            )
        expected += 1
    return new


def stream_stats(store: StreamStore, stream: str, origin: str = LOCAL_ORIGIN) -> StreamStats:
    """:class:`StreamStats` of ``(stream, origin)``, read with four calls of the store."""
    return StreamStats(
        store.head(stream, origin), store.oldest(stream, origin),
        store.retained_rows(stream, origin), store.created(stream, origin),
    )


@dataclass(frozen=True, slots=True)
class Retention:
    """How much of a stream a store keeps: at most ``max_rows`` rows and nothing older than
    ``max_age`` seconds (``None``: no such bound). Whole tokens are dropped, oldest first; the
    newest token is always kept, so ``head`` survives trimming."""

    max_rows: int | None = None
    max_age: float | None = None


class RetentionPolicy(Protocol):
    """Anything that says how much to keep, like :class:`Retention` (the configuration's
    ``RetentionConfig`` is one)."""

    @property
    def max_rows(self) -> int | None: ...

    @property
    def max_age(self) -> float | None: ...


class StreamStore(Protocol):
    """The storage of streams. Every method may raise :class:`StoreError`.

    ``origin_id`` names the store's own origin for other masters (``""`` inside the store).
    ``blocking`` tells the master whether ``append`` does disk work that must run off the
    reactor thread; a blocking store is called from one writer thread for ``append``,
    ``ingest``, ``skip``, ``trim`` and ``delete_stream`` and from the reactor thread for
    everything else, so it must allow that.
    """

    blocking: bool

    #: Whether ``append`` keeps idempotency keys (``publish_keys`` then returns them, after
    #: a restart too); a store that does not (the memory store: nothing survives its
    #: process) ignores them.
    keeps_keys: bool

    #: This store's origin id (see the module docstring): fixed for the life of the store,
    #: a well-formed id (:func:`~replication.cluster.identity.check_origin_id`).
    origin_id: str

    def stream_names(self) -> list[str]:
        """Every stream of the local origin the store holds, sorted."""

    def keys(self) -> list[tuple[str, str]]:
        """Every ``(stream, origin)`` the store holds, sorted."""

    def create_stream(self, stream: str, now: float | None = None) -> None:
        """Create an empty stream of the local origin (head 0), created at ``now`` (``None``:
        not known); does nothing if it exists."""

    def delete_stream(self, stream: str) -> int:
        """Delete the local origin's ``stream`` and every row of it, as one unit; return how
        many rows were dropped. Raises :class:`UnknownStream` if the store does not hold
        it. Afterwards the stream is unknown; a later ``append`` or ``create_stream``
        creates it anew, at token 1 (tokens of a deleted stream are given out again: the
        master tells the workers that followed it with ``RESET``). Other origins' rows of a
        stream of the same name are kept: they belong to their own masters."""

    def head(self, stream: str, origin: str = LOCAL_ORIGIN) -> int:
        """The newest token of ``(stream, origin)``, 0 if nothing was ever stored."""

    def oldest(self, stream: str, origin: str = LOCAL_ORIGIN) -> int:
        """The oldest retained token, or ``head + 1`` when nothing is retained."""

    def retained_rows(self, stream: str, origin: str = LOCAL_ORIGIN) -> int:
        """How many rows of ``(stream, origin)`` are retained."""

    def created(self, stream: str, origin: str = LOCAL_ORIGIN) -> float | None:
        """When ``(stream, origin)`` was created in this store (seconds since the epoch: the
        ``now`` of the ``append``, ``ingest`` or ``create_stream`` that created it), or
        ``None`` when that is not known."""

    def append(
        self, batch: Sequence[tuple[str, Sequence[str]]], now: float, origin: str = LOCAL_ORIGIN,
        keys: BatchKeys = (),
    ) -> list[int]:
        """Append each ``(stream, rows)`` of ``batch`` as one token of ``origin``, in order,
        as one unit: either every entry is stored or none is. Streams are created as needed
        (created at ``now``).
        Returns the tokens, in the order of ``batch``. ``now`` (seconds since the epoch) is
        recorded for age-based retention. ``keys`` (see :data:`BatchKeys`) are the
        idempotency keys of the publishes in the batch: a store that ``keeps_keys`` records
        them in the same unit, with their tokens (a key recorded before is replaced)."""

    def publish_keys(self, since: float, limit: int) -> list[PublishKey]:
        """The newest ``limit`` keys recorded at or after ``since``, oldest first (nothing
        from a store that does not keep keys)."""

    def forget_keys(self, before: float) -> int:
        """Forget the keys recorded before ``before``; return how many."""

    def read(
        self, stream: str, after: int, upto: int, max_rows: int, origin: str = LOCAL_ORIGIN
    ) -> list[Entry]:
        """Entries of ``origin`` with ``after < token <= upto``, oldest first: whole tokens,
        stopping once ``max_rows`` rows are gathered (always at least one entry when one is
        there)."""

    def ingest(self, stream: str, origin: str, entries: Sequence[Entry], now: float) -> int:
        """Store entries of another ``origin`` with the tokens that origin gave them, as one
        unit. Tokens at or below the head of ``(stream, origin)`` are duplicates and are
        dropped; the others must continue the head one by one (see :func:`check_ingest`).
        Returns the new head: the origin's position on this store, committed with its rows."""

    def skip(self, stream: str, origin: str, last: int, now: float) -> int:
        """Tokens of another ``origin`` up to ``last`` will never arrive (that origin's
        retention dropped them before this store got them): move the head of ``(stream,
        origin)`` to ``last``, as one unit. The tokens still retained at or below ``last``
        (every retained one: they are at or below the old head) are dropped with it, so the
        retained tokens stay exactly ``oldest..head`` (``oldest`` becomes ``last + 1``).
        Creates ``(stream, origin)`` (created at ``now``) if the store does not hold it; a
        ``last`` at or below the head changes nothing. Returns how many rows were dropped.
        Raises :class:`StoreError` for the local origin (see
        :func:`check_other_origin`)."""

    def trim(
        self, stream: str, retention: RetentionPolicy, now: float, origin: str = LOCAL_ORIGIN
    ) -> int:
        """Drop the oldest tokens of ``(stream, origin)`` beyond ``retention``; return how
        many rows were dropped."""

    def close(self) -> None:
        """Release what the store holds open. The store is not used afterwards."""


__all__ = [
    "LOCAL_ORIGIN",
    "BatchKeys",
    "PublishKey",
    "DamagedEntry",
    "Entry",
    "ReadOnlyStore",
    "Retention",
    "RetentionPolicy",
    "StoreError",
    "StreamStats",
    "StreamStore",
    "UnknownStream",
    "check_ingest",
    "check_origin",
    "check_other_origin",
    "stream_stats",
]
