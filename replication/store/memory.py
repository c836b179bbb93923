"""The in-memory :class:`~replication.store.StreamStore`: fast, and forgotten at exit.

Used by tests and by ``store: {type: memory}``. Each stream is a list holding each token's
rows with a moving start (trimmed tokens are cut off in bulk once they are half the list);
since tokens are contiguous, the rows of token ``t`` sit at index ``start + t - oldest``.
Rows are kept as plain tuples of strings, which Python's garbage collector stops tracking
after its first pass over them: a master holding millions of rows pays nothing for them in
later collections. :class:`~replication.store.Entry` objects are built only when read.

Each :class:`MemoryStore` has a new random origin id: a master on the memory store is a new
origin at every start (nothing of its history survives to be confused with the next run's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from replication.cluster.identity import new_origin_id
from replication.store import (
    LOCAL_ORIGIN,
    BatchKeys,
    Entry,
    PublishKey,
    RetentionPolicy,
    UnknownStream,
    check_ingest,
    check_origin,
    check_other_origin,
)


@dataclass
class _Stream:
    created: float | None = None
    head: int = 0
    rows: int = 0
    start: int = 0
    entries: list[tuple[str, ...]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    @property
    def oldest(self) -> int:
        return self.head + 1 - (len(self.entries) - self.start)

    def drop_first(self) -> tuple[str, ...]:
        rows = self.entries[self.start]
        self.start += 1
        if self.start > 1024 and self.start * 2 > len(self.entries):
            del self.entries[: self.start]
            del self.times[: self.start]
            self.start = 0
        return rows


class MemoryStore:
    """Streams held in memory; nothing blocks, nothing survives the process."""

    blocking = False
    #: Keys are not kept: nothing survives the process (the master's own window has them).
    keeps_keys = False

    def __init__(self) -> None:
        #: A new origin for every store object.
        self.origin_id = new_origin_id()
        #: The local origin's streams, by name (the publish path's lookup).
        self._streams: dict[str, _Stream] = {}
        #: Other origins' streams, by ``(stream, origin)``.
        self._others: dict[tuple[str, str], _Stream] = {}

    def _get(self, stream: str, origin: str = LOCAL_ORIGIN) -> _Stream:
        found = (
            self._streams.get(stream)
            if origin == LOCAL_ORIGIN
            else self._others.get((stream, origin))
        )
        if found is None:
            raise UnknownStream(stream)
        return found

    def stream_names(self) -> list[str]:
        return sorted(self._streams)

    def keys(self) -> list[tuple[str, str]]:
        return sorted([(name, LOCAL_ORIGIN) for name in self._streams] + list(self._others))

    def create_stream(self, stream: str, now: float | None = None) -> None:
        if stream not in self._streams:
            self._streams[stream] = _Stream(now)

    def delete_stream(self, stream: str) -> int:
        found = self._streams.pop(stream, None)
        if found is None:
            raise UnknownStream(stream)
        return found.rows

    def created(self, stream: str, origin: str = LOCAL_ORIGIN) -> float | None:
        return self._get(stream, origin).created

    def head(self, stream: str, origin: str = LOCAL_ORIGIN) -> int:
        return self._get(stream, origin).head

    def oldest(self, stream: str, origin: str = LOCAL_ORIGIN) -> int:
        return self._get(stream, origin).oldest

    def retained_rows(self, stream: str, origin: str = LOCAL_ORIGIN) -> int:
        return self._get(stream, origin).rows

    def ingest(self, stream: str, origin: str, entries: Sequence[Entry], now: float) -> int:
        s = self._others.get((stream, origin))
        new = check_ingest(stream, origin, entries, s.head if s is not None else 0, self.origin_id)
        if s is None:
            s = self._others[(stream, origin)] = _Stream(now)
        for entry in new:
            s.head = entry.token
            s.entries.append(tuple(entry.rows))
            s.times.append(now)
            s.rows += len(entry.rows)
        return s.head

    def skip(self, stream: str, origin: str, last: int, now: float) -> int:
        check_other_origin("skip", stream, origin, self.origin_id)
        s = self._others.get((stream, origin))
        if s is None:
            s = self._others[(stream, origin)] = _Stream(now)
        if last <= s.head:
            return 0
        dropped = s.rows
        s.head, s.rows, s.start = last, 0, 0
        s.entries, s.times = [], []
        return dropped

    def publish_keys(self, since: float, limit: int) -> list[PublishKey]:
        return []

    def forget_keys(self, before: float) -> int:
        return 0

    def append(
        self, batch: Sequence[tuple[str, Sequence[str]]], now: float, origin: str = LOCAL_ORIGIN,
        keys: BatchKeys = (),
    ) -> list[int]:
        check_origin(origin)
        for _, rows in batch:
            if not rows:
                raise ValueError("a token carries at least one row")
        tokens = []
        current = None
        s: _Stream  # set by the first entry
        for name, rows in batch:
            if name != current:  # batches are mostly runs of one stream
                found = self._streams.get(name)
                if found is None:
                    found = self._streams[name] = _Stream(now)
                s = found
                current = name
                add_rows, add_time = s.entries.append, s.times.append
            s.head += 1
            add_rows(tuple(rows))
            add_time(now)
            s.rows += len(rows)
            tokens.append(s.head)
        return tokens

    def read(
        self, stream: str, after: int, upto: int, max_rows: int, origin: str = LOCAL_ORIGIN
    ) -> list[Entry]:
        s = self._get(stream, origin)
        first = s.oldest
        index = s.start + max(after + 1 - first, 0)
        end = s.start + min(upto, s.head) - first + 1
        out: list[Entry] = []
        gathered = 0
        entries = s.entries
        token = first + index - s.start
        while index < end and gathered < max_rows:
            rows = entries[index]
            out.append(Entry(token, rows))
            gathered += len(rows)
            index += 1
            token += 1
        return out

    def trim(
        self, stream: str, retention: RetentionPolicy, now: float, origin: str = LOCAL_ORIGIN
    ) -> int:
        s = self._get(stream, origin)
        dropped = 0
        max_rows, max_age = retention.max_rows, retention.max_age
        while len(s.entries) - s.start > 1:
            too_many = max_rows is not None and s.rows > max_rows
            too_old = max_age is not None and s.times[s.start] < now - max_age
            if not (too_many or too_old):
                break
            rows = len(s.drop_first())
            s.rows -= rows
            dropped += rows
        return dropped

    def close(self) -> None:
        self._streams.clear()
        self._others.clear()
