"""Publishing over the replication port: one publisher connection's pipeline, and the
master's window of idempotency keys.

A connection becomes a publisher with ``PUBLISHER`` (protocol version 2; see
docs/protocol.rst, "Publishing"). :class:`PublishPipeline` then takes its ``PUBLISH`` and
``PUBLISH_TOKENS`` commands: each is checked and encoded by the master
(:meth:`Master.encode_tokens <replication.master.service.Master.encode_tokens>`) and
committed through the stream log (:meth:`Master.submit_many
<replication.master.service.Master.submit_many>`, group commit on a blocking store), and
answered with ``PUBLISHED`` or ``REFUSED`` in the order the publishes arrived, each only
once it is committed or refused. The common ``PUBLISH`` lines of one read are taken as
runs (:meth:`PublishPipeline.take_run`): each stretch to one stream is checked, encoded,
committed and answered together, with the same outcome as one by one.
At most ``limits.max_publishes_in_flight`` publishes wait
for their answers; past that the pipeline holds the connection's input (the transport stops
reading), which is back-pressure, not an error.

:class:`PublishKeys` is the master's bounded memory of idempotency keys (count and age,
``limits.publish_keys`` and ``limits.publish_key_seconds``), shared by every publisher
connection, so that a publish retried on a new connection after a drop is answered with its
original tokens instead of being stored twice. It is plain data with time passed in.
"""

from __future__ import annotations

import re
from bisect import bisect_right, insort
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple, Protocol, overload

from twisted.python.failure import Failure

from replication.master.log import PublishError
from replication.store import BatchKeys, PublishKey
from replication.wire.auth import Permissions
from replication.wire.commands import (
    CommandParseError,
    PublishBatchCommand,
    PublishCommand,
    PublishTokensCommand,
    RefusedCommand,
    decode_json_bytes,
    encode_json,
    has_long_integer,
    rdata_line_length,
)

_orjson: ModuleType | None
try:  # optional: the fast path's codec (the same one encode_tokens uses when installed)
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised by the tests with orjson hidden
    _orjson = None

#: What JSON allows around a value.
_JSON_BLANKS = b" \t\r\n"

if TYPE_CHECKING:
    from replication.master.service import Master

#: The ``transport`` label of publishes over the replication port (HTTP's is ``http``).
TRANSPORT: str = "replication"

#: What a key's publish ended as: its tokens, or a refusal ``(status, message)``.
Outcome = list[int] | range | tuple[int, str]


@dataclass(eq=False, slots=True)
class KeyEntry:
    """One remembered idempotency key: the stream it published to, when it arrived, and its
    outcome once known (``None`` while its commit runs; ``waiters`` then get it)."""

    stream: str
    at: float
    outcome: Outcome | None = None
    #: Who waits for the outcome (``None``: nobody).
    waiters: list[Callable[[Outcome], None]] | None = None


class FinishedKey(NamedTuple):
    """A remembered key whose publish was committed, as :meth:`PublishKeys.find` returns
    it: its stream, when it arrived, its tokens."""

    stream: str
    at: float
    outcome: range
    #: Nobody waits for a finished key (as :class:`KeyEntry` after its outcome).
    waiters: None = None


#: A finished key as the window keeps it: ``(stream, at, tokens)``, an exact tuple of
#: atoms (a ``range`` is one), which the garbage collector stops tracking after its first
#: collection; a tuple subclass such as :class:`FinishedKey` stays tracked, and a full
#: window (``limits.publish_keys`` keys) would make every full collection longer (it was
#: half the master's time per pipelined publish).
_Finished = tuple[str, float, range]


def _finished(entry: KeyEntry, tokens: list[int] | range) -> _Finished:
    return (entry.stream, entry.at, range(tokens[0], tokens[-1] + 1))


class _KeyRange:
    """The keys of a ``PUBLISH_BATCH`` committed at once, as one entry of the window: keys
    ``<prefix>-<n>`` for ``low <= n < high``, committed as the tokens ``first_token + n -
    key_start`` (a batch's keys are counted and its tokens consecutive). The oldest keys
    of a range leave the window by raising ``low``."""

    __slots__ = ("at", "first_token", "high", "key_start", "low", "name", "prefix", "stream",
                 "waiting")

    def __init__(self, name: str, prefix: str, key_start: int, count: int, stream: str,
                 at: float, first_token: int | None) -> None:
        #: Its name in the window: unique, and with a space, which no key has.
        self.name = name
        self.prefix = prefix
        self.key_start = self.low = key_start
        self.high = key_start + count
        self.stream = stream
        self.at = at
        #: ``None`` while the batch's commit runs.
        self.first_token = first_token
        #: While it runs: an entry per key that someone asked for (``find``), with the key's
        #: number, whose waiters get the key's outcome.
        self.waiting: list[tuple[int, KeyEntry]] = []

    def found(self, n: int) -> KeyEntry | FinishedKey:
        """What :meth:`PublishKeys.find` answers for key number ``n`` of the range."""
        first = self.first_token
        if first is None:
            entry = KeyEntry(self.stream, self.at)
            self.waiting.append((n, entry))
            return entry
        token = first + n - self.key_start
        return FinishedKey(self.stream, self.at, range(token, token + 1))


def _arrived(entry: KeyEntry | _Finished | _KeyRange) -> float:
    return entry[1] if type(entry) is tuple else entry.at  # type: ignore[union-attr]


def _counted(key: str) -> tuple[str, int] | None:
    """``(prefix, n)`` of a key ``<prefix>-<n>`` (``n`` written as ``str(n)`` writes it),
    the form of the keys of a ``PUBLISH_BATCH``; ``None`` for any other key."""
    prefix, dash, number = key.rpartition("-")
    if not dash or not number.isdigit() or not number.isascii():
        return None
    n = int(number)
    return (prefix, n) if str(n) == number else None


def _low(entry: _KeyRange) -> int:
    return entry.low


class PublishKeys:
    """The newest ``max_keys`` idempotency keys, each for ``max_age`` seconds after its
    publish arrived. A key whose publish was refused is forgotten at once (a retry may try
    again). ``max_keys`` 0 remembers nothing.

    Keys are kept in arrival order, one entry per key, except those of a ``PUBLISH_BATCH``
    taken as one run: one :class:`_KeyRange` for all of them (under a name of its own with a
    space, which no key has), found through ``_ranges``, their ranges per prefix by
    ``low``."""

    def __init__(self, max_keys: int, max_age: float) -> None:
        self.max_keys = max_keys
        self.max_age = max_age
        self._entries: OrderedDict[str, KeyEntry | _Finished | _KeyRange] = OrderedDict()
        #: Per key prefix, the ranges of batch keys in the window, by ``low``; they never
        #: overlap (a batch becomes a range only when none of its keys is known).
        self._ranges: dict[str, list[_KeyRange]] = {}
        #: How many entries of ``_entries`` are ranges, and how many keys they hold.
        self._range_entries = 0
        self._range_keys = 0
        #: The number in the name of the last range.
        self._serial = 0
        #: When the oldest entry expires (no need to look before).
        self._next_expiry = float("inf")
        #: Publishes answered from the window instead of being stored again, since start.
        self.hits = 0

    def __len__(self) -> int:
        """The keys remembered."""
        return len(self._entries) - self._range_entries + self._range_keys

    def _expire(self, now: float) -> None:
        entries = self._entries
        cutoff = now - self.max_age
        while entries:
            key, entry = next(iter(entries.items()))
            at = _arrived(entry)
            if at > cutoff:
                self._next_expiry = at + self.max_age
                return
            if type(entry) is _KeyRange:
                self._drop_range(key, entry)
            else:
                del entries[key]
        self._next_expiry = float("inf")

    def _drop_range(self, name: str, entry: _KeyRange) -> None:
        del self._entries[name]
        runs = self._ranges[entry.prefix]
        if runs[0] is entry:
            del runs[0]
        else:
            runs.remove(entry)
        if not runs:
            del self._ranges[entry.prefix]
        self._range_entries -= 1
        self._range_keys -= entry.high - entry.low

    def _trim(self) -> None:
        """Forget the oldest keys past ``max_keys``."""
        excess = len(self) - self.max_keys
        if excess <= 0:
            return
        entries = self._entries
        if not self._range_entries:
            popitem = entries.popitem
            for _ in range(excess):
                popitem(last=False)
            return
        while excess > 0:
            name, entry = next(iter(entries.items()))
            if type(entry) is not _KeyRange:
                entries.popitem(last=False)
                excess -= 1
                continue
            held = entry.high - entry.low
            if held > excess:
                entry.low += excess
                self._range_keys -= excess
                return
            self._drop_range(name, entry)
            excess -= held

    def _range_of(self, key: str) -> tuple[_KeyRange, int] | None:
        """The range holding ``key``, and the key's number, if one does."""
        counted = _counted(key)
        if counted is None:
            return None
        runs = self._ranges.get(counted[0])
        if not runs:
            return None
        n = counted[1]
        i = bisect_right(runs, n, key=_low) - 1
        if i >= 0 and n < runs[i].high:
            return runs[i], n
        return None

    def find(self, key: str, now: float) -> KeyEntry | FinishedKey | None:
        """The entry of ``key`` if it is remembered."""
        if now >= self._next_expiry:
            self._expire(now)
        entry = self._entries.get(key)
        if type(entry) is tuple:
            return FinishedKey(*entry)
        if entry is None and self._ranges:
            held = self._range_of(key)
            return None if held is None else held[0].found(held[1])
        return entry  # type: ignore[return-value]

    def knows_any(self, keys: list[str], now: float) -> bool:
        """Whether :meth:`find` would find any of ``keys`` (one look for a whole run)."""
        if now >= self._next_expiry:
            self._expire(now)
        if not self._entries.keys().isdisjoint(keys):
            return True
        if self._ranges:
            ranges = self._ranges
            return any(
                key.rpartition("-")[0] in ranges and self._range_of(key) is not None
                for key in keys
            )
        return False

    def knows_batch(self, prefix: str, start: int, count: int, now: float) -> bool:
        """Whether :meth:`find` would find any of the keys ``<prefix>-<n>``, ``start <= n <
        start + count`` (a ``PUBLISH_BATCH``'s), without writing them out unless keys of
        single publishes are in the window."""
        if now >= self._next_expiry:
            self._expire(now)
        runs = self._ranges.get(prefix)
        if runs:
            i = bisect_right(runs, start + count - 1, key=_low) - 1
            if i >= 0 and runs[i].high > start:
                return True
        if len(self._entries) == self._range_entries:
            return False  # nothing but ranges
        return not self._entries.keys().isdisjoint(
            [f"{prefix}-{n}" for n in range(start, start + count)]
        )

    def begin(self, key: str, stream: str, now: float) -> KeyEntry | None:
        """Remember ``key`` for a publish to ``stream`` that starts now (``None`` when keys
        are off); the oldest key goes when the window is full."""
        if self.max_keys == 0:
            return None
        entry = KeyEntry(stream, now)
        entries = self._entries
        entries[key] = entry
        entries.move_to_end(key)
        if self._next_expiry == float("inf"):
            self._next_expiry = now + self.max_age
        self._trim()
        return entry

    def load(self, records: Sequence[PublishKey], now: float) -> None:
        """Remember keys a store kept, oldest first, as finished publishes (at most
        ``max_keys``; those older than ``max_age`` are left out). Called once, before any
        publish, so that the window stays in arrival order."""
        if self.max_keys == 0:
            return
        entries = self._entries
        cutoff = now - self.max_age
        for record in records[-self.max_keys:]:
            if record.at > cutoff:
                entries[record.key] = (
                    record.stream, record.at, range(record.first, record.last + 1)
                )
        self._trim()
        if entries:
            first = next(iter(entries.values()))
            self._next_expiry = min(self._next_expiry, _arrived(first) + self.max_age)

    def begin_run(self, keys: list[str], stream: str, now: float) -> list[KeyEntry]:
        """:meth:`begin` for keys that :meth:`find` does not know, all distinct, at once
        (keys must be on)."""
        made = [KeyEntry(stream, now) for _ in keys]
        self._entries.update(zip(keys, made, strict=True))
        if self._next_expiry == float("inf"):
            self._next_expiry = now + self.max_age
        self._trim()
        return made

    def add_finished(
        self, keys: Sequence[tuple[str, int, int]], stream: str, now: float, tokens: list[int]
    ) -> None:
        """Remember keys, unknown to :meth:`find` and all distinct, of publishes to
        ``stream`` committed at once (``(key, index, count)``: the publish's tokens are
        ``tokens[index:index + count]``), as :meth:`begin_run` then :meth:`finish_run`
        would (keys must be on)."""
        self._entries.update([
            (key, (stream, now, range(tokens[i], tokens[i + n - 1] + 1))) for key, i, n in keys
        ])
        if self._next_expiry == float("inf"):
            self._next_expiry = now + self.max_age
        self._trim()

    def add_batch(
        self, prefix: str, start: int, count: int, stream: str, now: float,
        first_token: int | None,
    ) -> _KeyRange:
        """Remember the keys of a ``PUBLISH_BATCH`` (``<prefix>-<n>`` for ``start <= n <
        start + count``, none of them known), committed as consecutive tokens from
        ``first_token`` (``None``: its commit runs; :meth:`finish_batch` tells the
        outcome): one range entry for all of them (keys must be on)."""
        self._serial += 1
        entry = _KeyRange(f" {self._serial}", prefix, start, count, stream, now, first_token)
        self._entries[entry.name] = entry
        runs = self._ranges.setdefault(prefix, [])
        if not runs or runs[-1].low < start:
            runs.append(entry)
        else:
            insort(runs, entry, key=_low)
        self._range_entries += 1
        self._range_keys += count
        if self._next_expiry == float("inf"):
            self._next_expiry = now + self.max_age
        self._trim()
        return entry

    def finish_batch(self, entry: _KeyRange, outcome: list[int] | tuple[int, str]) -> None:
        """The commit of a batch :meth:`add_batch` remembered as running ended: its tokens
        (consecutive), or a refusal, which forgets its keys; whoever asked for one of its
        keys meanwhile gets that key's outcome."""
        if type(outcome) is tuple:
            if self._entries.get(entry.name) is entry:
                self._drop_range(entry.name, entry)
        else:
            entry.first_token = outcome[0]
        waiting, entry.waiting = entry.waiting, []
        for n, key_entry in waiting:
            _notify(key_entry, outcome if type(outcome) is tuple
                    else [outcome[0] + n - entry.key_start])

    def finish_run(self, keyed: list[tuple[str, KeyEntry]], outcomes: list[Outcome]) -> None:
        """:meth:`finish` for the keys of a run (``outcomes`` in the order of ``keyed``),
        with the common case (tokens, nobody waiting) done inline."""
        entries = self._entries
        for (key, entry), outcome in zip(keyed, outcomes, strict=True):
            if entry.waiters is None and type(outcome) is list and entries.get(key) is entry:
                entry.outcome = outcome
                entries[key] = _finished(entry, outcome)
            else:
                self.finish(key, entry, outcome)

    def finish(self, key: str, entry: KeyEntry, outcome: Outcome) -> None:
        """The publish of ``key`` ended: tell whoever waits; a refusal forgets the key."""
        if self._entries.get(key) is entry:
            if isinstance(outcome, tuple):
                del self._entries[key]
            else:
                self._entries[key] = _finished(entry, outcome)
        _notify(entry, outcome)


def _notify(entry: KeyEntry, outcome: Outcome) -> None:
    """Record the outcome of ``entry``'s publish and give it to whoever waits for it."""
    entry.outcome = outcome
    waiters, entry.waiters = entry.waiters, None
    for waiter in waiters or ():
        waiter(outcome)


class PublisherConnection(Protocol):
    """What the pipeline uses of its connection."""

    sent_counts: dict[str, int]
    permissions: Permissions
    credential: str | None

    def write(self, data: bytes) -> None: ...
    def hold_input(self) -> None: ...
    def release_input(self) -> None: ...


class _Slot:
    """One publish waiting for its answer, in arrival order, or (``count`` > 1) a run of
    publishes taken together (:meth:`PublishPipeline.take_run`) and answered together."""

    __slots__ = ("answer", "count", "id")

    def __init__(self, id_: str, count: int = 1) -> None:
        self.id = id_
        #: Publishes this slot answers.
        self.count = count
        #: The answer's lines, once known.
        self.answer: bytes | None = None


#: A publish the fast path parsed: id, stream, key and rows (JSON text, as received).
Fields = tuple[str, str, "str | None", bytes]


class CountedKeys(Sequence[tuple[str, int, int]]):
    """The keys of a ``PUBLISH_BATCH``, ``<prefix>-<n>`` for ``start <= n < start + count``,
    as a store's ``keys`` (``(key, index, 1)`` per publish), written out only when read:
    on the store's writer thread rather than the reactor's."""

    __slots__ = ("length", "prefix", "start")

    def __init__(self, prefix: str, start: int, count: int) -> None:
        self.prefix, self.start, self.length = prefix, start, count

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, i: int) -> tuple[str, int, int]: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[tuple[str, int, int]]: ...

    def __getitem__(
        self, i: int | slice
    ) -> tuple[str, int, int] | Sequence[tuple[str, int, int]]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self.length))]
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(i)
        return (f"{self.prefix}-{self.start + i}", i, 1)

    def __iter__(self) -> Iterator[tuple[str, int, int]]:
        prefix, start = self.prefix, self.start
        return ((f"{prefix}-{start + i}", i, 1) for i in range(self.length))


def _triples(
    keys: Sequence[str | None] | None, counted: tuple[str, int] | None = None, count: int = 0
) -> list[tuple[str, int, int]]:
    """``(key, index, 1)`` for the publishes of a run that have a key (a store's
    ``keys``), from ``keys`` or from a batch's ``counted`` keys."""
    if keys is None:
        assert counted is not None
        return list(CountedKeys(counted[0], counted[1], count))
    return [(key, k, 1) for k, key in enumerate(keys) if key is not None]


class _Run(NamedTuple):
    """A run of publishes committed together (:meth:`PublishPipeline._commit_run`): their
    ids, their keys (``None``: none is remembered) and their entries in the key window."""

    ids: Sequence[str] | range
    keys: Sequence[str | None] | None
    entries: list[tuple[str, KeyEntry]] | None
    #: The keys of a ``PUBLISH_BATCH`` whose commit runs, as one range of the window.
    batch: _KeyRange | None = None


#: A publish waiting in a batch: stream, encoded tokens, its slot, key and key entry.
_Batched = tuple[str, list[list[str]], _Slot, "str | None", "KeyEntry | None"]


class PublishPipeline:
    """The publishes of one publisher connection, answered in order.

    :param master: checks, encodes and commits the publishes; holds the key window
        (``master.publish_keys``) and counts publishes by transport.
    :param connection: where answers go; its input is held while ``max_in_flight``
        publishes wait for answers.
    :param max_in_flight: ``limits.max_publishes_in_flight``.
    """

    def __init__(self, master: Master, connection: PublisherConnection, max_in_flight: int) -> None:
        self.master = master
        self.connection = connection
        self.max_in_flight = max_in_flight
        self._slots: deque[_Slot] = deque()
        #: Publishes read and not yet answered (the slots' counts).
        self._waiting = 0
        self._holding = False
        self._closed = False
        #: Publishes this connection sent (answered or not).
        self.received = 0
        self._batching = False
        self._batch: list[_Batched] = []
        #: While answers of a committed run are filled in: flush once, after.
        self._quiet = False
        #: Refusals among the answers not yet counted in ``sent_counts``.
        self._refused = 0
        self._max_rows = master.config.limits.max_rows_per_publish
        #: Per stream: the bytes of JSON a row may take (the line limit less RDATA's prefix).
        self._room: dict[str, int] = {}

    @property
    def in_flight(self) -> int:
        """Publishes read and not yet answered."""
        return self._waiting

    @property
    def room(self) -> int:
        """Publishes that may still be taken before the input is held."""
        return self.max_in_flight - self._waiting

    def publish(self, command: PublishCommand) -> None:
        """Take one ``PUBLISH`` or ``PUBLISH_TOKENS``."""
        self.take(command.id, command.stream, command.key,
                  command.rows.encode("utf-8", "surrogatepass"),
                  isinstance(command, PublishTokensCommand))

    def take(self, id_: str, stream: str, key: str | None, rows: bytes, many: bool) -> None:
        """Take one publish whose id and key the codec (or :func:`fast_publish`) checked;
        ``rows`` is its JSON text, as received."""
        slot = self._new_slot(id_)
        master = self.master
        entry = None
        if not self.connection.permissions.may_publish(stream):
            self._answer(slot, (403, f"credential {self.connection.credential!r} may not "
                                     f"publish to stream {stream!r}"))
            return
        if key is not None:
            keys = master.publish_keys
            now = master.clock.seconds()
            known = keys.find(key, now)
            if known is not None:
                keys.hits += 1
                if known.stream != stream:
                    self._answer(slot, (409, f"key {key!r} was used for stream "
                                             f"{known.stream!r}, not {stream!r}"))
                elif known.outcome is not None:
                    self._answer(slot, known.outcome)
                else:
                    if known.waiters is None:
                        known.waiters = []
                    known.waiters.append(lambda outcome: self._answer(slot, outcome))
                return
        try:
            encoded = self._fast_encode(stream, rows, many) or self._encode(stream, rows, many)
        except PublishError as e:
            self._answer(slot, (e.status, e.message))
            return
        if key is not None:
            entry = master.publish_keys.begin(key, stream, master.clock.seconds())
        if self._batching:
            self._batch.append((stream, encoded, slot, key, entry))
            return
        d = master.submit_many(
            stream, encoded, () if entry is None or key is None else ((key, 0, len(encoded)),)
        )
        if entry is None:
            d.addCallbacks(
                self._committed, self._failed, callbackArgs=(slot,), errbackArgs=(slot,)
            )
        else:
            d.addCallbacks(
                self._committed_key, self._failed_key,
                callbackArgs=(slot, key, entry), errbackArgs=(slot, key, entry),
            )

    def _new_slot(self, id_: str, count: int = 1) -> _Slot:
        """The slot of ``count`` publishes that just arrived, after those before them;
        past ``max_in_flight`` waiting publishes, the connection's input is held."""
        slot = _Slot(id_, count)
        self._slots.append(slot)
        self._waiting += count
        self.received += count
        master = self.master
        master.publishes[TRANSPORT] = master.publishes.get(TRANSPORT, 0) + count
        if self._waiting >= self.max_in_flight and not self._holding:
            self._holding = True
            self.connection.hold_input()
        return slot

    def refuse(self, id_: str, status: int, message: str) -> None:
        """Answer a publish that cannot be taken at all (its line was too long) with
        ``REFUSED``, in its place among the others."""
        self._answer(self._new_slot(id_), (status, message))

    def refuse_batch(self, first_id: int, count: int, status: int, message: str) -> None:
        """:meth:`refuse` for the ``count`` publishes of a ``PUBLISH_BATCH`` line."""
        ids = range(first_id, first_id + count)
        self._refuse_all(self._new_slot(str(first_id), count), ids, (status, message))

    # -- runs: fast-parsed publishes of one read, checked, committed and answered together --

    def take_run(self, run: list[Fields]) -> None:
        """Take publishes that :func:`fast_publish` parsed, in order (at most :attr:`room`
        of them). Each stretch to one stream is checked and encoded in one pass, committed
        in one :meth:`Master.submit_many <replication.master.service.Master.submit_many>`
        (or at once, on a store that commits inline) and answered in one write: the same
        tokens, answers and refusals as :meth:`take` one by one, which a stretch falls
        back to when anything in it is unusual (a known key, a new stream, rows the fast
        encoding does not take)."""
        n = len(run)
        i = 0
        while i < n:
            stream = run[i][1]
            j = i + 1
            while j < n and run[j][1] == stream:
                j += 1
            part = run if i == 0 and j == n else run[i:j]
            if self._batch:  # publishes taken one by one before: committed first, in order
                self.end_batch()
                self.begin_batch()
            if not self._take_stream_run(stream, part):
                for id_, _, key, rows in part:
                    self.take(id_, stream, key, rows, False)
            i = j

    def _take_stream_run(self, stream: str, part: list[Fields]) -> bool:
        """Take ``part`` (publishes to ``stream``) as one run; ``False``: nothing was done,
        take them one by one."""
        if not self._may_run(stream):
            return False
        keys = [fields[2] for fields in part]
        run_keys = [key for key in keys if key is not None]
        if run_keys and not self._keys_unknown(run_keys):
            return False
        encoded = self._encode_run(stream, [fields[3] for fields in part])
        if encoded is None:
            return False
        self._commit_run(stream, [fields[0] for fields in part], keys if run_keys else None,
                         encoded)
        return True

    def _may_run(self, stream: str) -> bool:
        """Whether publishes to ``stream`` may be taken as a run: orjson is there to encode
        them, the log holds the stream (so its name is valid and, with ``strict_streams``,
        known), and the connection may publish to it."""
        return (
            _orjson is not None
            and self.master.log.state(stream) is not None
            and self.connection.permissions.may_publish(stream)
        )

    def _keys_unknown(self, run_keys: list[str]) -> bool:
        """Whether the keys of a run are all distinct and none is in the window (else the
        run is taken one by one: a known key is answered from the window, and the second
        use of a key waits for the first's outcome)."""
        return len(set(run_keys)) == len(run_keys) and not self.master.publish_keys.knows_any(
            run_keys, self.master.clock.seconds()
        )

    def _commit_run(
        self, stream: str, ids: Sequence[str] | range, keys: Sequence[str | None] | None,
        encoded: list[list[str]], counted: tuple[str, int] | None = None,
    ) -> None:
        """Commit a run of checked and encoded one-token publishes to ``stream`` (their
        ``ids`` and ``keys`` in order; ``keys`` ``None``: none has one) in one store
        transaction, and answer them together, in one slot: ``PUBLISHED`` per publish, or
        one ``PUBLISHED_RUN`` when ``ids`` is the ``range`` of a ``PUBLISH_BATCH``.
        ``counted``: the ``(prefix, start)`` of a batch's counted keys (``keys`` is then
        ``None``): they are one range of the key window, and a store that keeps keys gets
        them as :class:`CountedKeys`, written out on its own thread."""
        master = self.master
        window = master.publish_keys
        slot = self._new_slot("", len(ids))
        keyed = (keys is not None or counted is not None) and window.max_keys > 0
        stored_keys: BatchKeys = ()
        if keyed and master.log.keeps_keys:
            stored_keys = (
                CountedKeys(counted[0], counted[1], len(ids)) if counted is not None
                else _triples(keys)
            )
        try:
            tokens = (
                None if master.acks.wanted
                else master.log.publish_inline(stream, encoded, stored_keys)
            )
        except PublishError as e:
            # Refused at once: the keys never entered the window (a refusal forgets them).
            self._run_refused(slot, _Run(ids, None, None), (e.status, e.message))
            return
        now = master.clock.seconds()
        if tokens is not None:
            # Committed at once: the keys enter the window finished, no entry to wait on.
            if keyed:
                if counted is not None and tokens[-1] - tokens[0] == len(tokens) - 1:
                    window.add_batch(counted[0], counted[1], len(ids), stream, now, tokens[0])
                else:
                    window.add_finished(stored_keys or _triples(keys, counted, len(ids)),
                                        stream, now, tokens)
            self._run_published(tokens, slot, _Run(ids, None, None))
            return
        run = _Run(ids, None, None)
        if keyed and counted is not None:
            run = _Run(ids, None, None,
                       window.add_batch(counted[0], counted[1], len(ids), stream, now, None))
        elif keyed:
            assert keys is not None
            run_keys = [key for key in keys if key is not None]
            entries = list(zip(run_keys, window.begin_run(run_keys, stream, now), strict=True))
            run = _Run(ids, keys, entries)
        master.submit_many(stream, encoded, stored_keys).addCallbacks(
            self._run_published, self._run_refused_by,
            callbackArgs=(slot, run), errbackArgs=(slot, run),
        )

    def _run_published(self, tokens: list[int], slot: _Slot, run: _Run) -> None:
        ids = run.ids
        if type(ids) is range and tokens[-1] - tokens[0] == len(tokens) - 1:
            slot.answer = b"PUBLISHED_RUN %d %d %d\n" % (ids.start, len(ids), tokens[0])
        else:
            slot.answer = "".join([
                f"PUBLISHED {id_} {token}\n" for id_, token in zip(ids, tokens, strict=True)
            ]).encode()
        if run.entries:
            assert run.keys is not None
            self.master.publish_keys.finish_run(run.entries, [
                [token] for key, token in zip(run.keys, tokens, strict=True)
                if key is not None
            ])
        if run.batch is not None:
            self.master.publish_keys.finish_batch(run.batch, tokens)
        self._flush()

    def _run_refused_by(self, failure: Failure, slot: _Slot, run: _Run) -> None:
        self._run_refused(slot, run, _refusal(failure))

    def _run_refused(self, slot: _Slot, run: _Run, refusal: tuple[int, str]) -> None:
        self._refuse_all(slot, run.ids, refusal)
        if run.entries:
            self.master.publish_keys.finish_run(run.entries, [refusal] * len(run.entries))
        if run.batch is not None:
            self.master.publish_keys.finish_batch(run.batch, refusal)

    def _refuse_all(
        self, slot: _Slot, ids: Sequence[str] | range, refusal: tuple[int, str]
    ) -> None:
        """Answer every publish of ``slot`` (``ids``) with the same refusal."""
        status, message = refusal
        slot.answer = b"".join(
            RefusedCommand(str(id_), status, message).to_line() + b"\n" for id_ in ids
        )
        self._refused += len(ids)
        self._flush()

    # -- PUBLISH_BATCH: many one-token publishes in one line ---------------------------

    def take_batch(self, command: PublishBatchCommand) -> None:
        """Take the publishes of one ``PUBLISH_BATCH``, each on its own: as one run when
        they are all usual (committed together, answered with ``PUBLISHED_RUN``), else one
        by one through :meth:`take`, with the same answers ``count`` ``PUBLISH`` lines would
        get. A batch whose JSON does not parse, or does not hold ``count`` elements, is
        refused as a whole (400): nothing of it can be told apart."""
        count = command.count
        ids = command.ids
        data = command.rows.encode("utf-8", "surrogatepass")
        try:
            tokens = decode_json_bytes(data, "PUBLISH_BATCH rows")
        except CommandParseError as e:
            self._refuse_all(self._new_slot(str(ids.start), count), ids, (400, str(e)))
            return
        if type(tokens) is not list or len(tokens) != count:
            found = (
                f"{len(tokens)} element{'' if len(tokens) == 1 else 's'}"
                if isinstance(tokens, list) else "no JSON array"
            )
            self._refuse_all(self._new_slot(str(ids.start), count), ids, (
                400, f"PUBLISH_BATCH says {count} publishes and its rows hold {found}: it "
                     f"takes a JSON array of {count} arrays of rows",
            ))
            return
        if self._batch:  # publishes taken one by one before: committed first, in order
            self.end_batch()
            self.begin_batch()
        stream = command.stream
        prefix, start = command.key_prefix, command.key_start
        # A batch's keys are distinct (counted): the window only needs to know none.
        if self._may_run(stream) and (
            prefix is None
            or not self.master.publish_keys.knows_batch(prefix, start, count,
                                                        self.master.clock.seconds())
        ):
            encoded = self._encode_batch(stream, tokens, data, command.rows)
            if encoded is not None:
                self._commit_run(stream, ids, None, encoded,
                                 None if prefix is None else (prefix, start))
                return
        keys = None if prefix is None else [f"{prefix}-{n}" for n in range(start, start + count)]
        for i, rows in enumerate(tokens):
            try:
                data = encode_json(rows).encode()
            except (TypeError, ValueError):  # pragma: no cover - what parsed encodes
                data = b"null"
            self.take(str(ids[i]), stream, None if keys is None else keys[i], data, False)

    def _encode_batch(
        self, stream: str, tokens: list[object], data: bytes, text: str
    ) -> list[list[str]] | None:
        """Each element of a ``PUBLISH_BATCH`` (``tokens``, parsed from ``data``, which is
        ``text`` encoded) as one token's compact rows, or ``None`` if any of them needs
        :meth:`take` (which also words the refusals).

        The common batch, one row per token in orjson's compact form (what the client
        library sends), is cut into its rows' texts rather than encoded again: ``data`` is
        then ``[[r0],[r1],...]``, and the ``],[`` between two tokens, ``count - 1`` of
        them, are all the ``],[`` it holds, unless a row holds one too (in a string or as
        ``],[`` of nested arrays), which the count then shows."""
        assert _orjson is not None
        dumps = _orjson.dumps
        room = self._room_of(stream)
        count = len(tokens)
        if (
            list(map(type, tokens)).count(list) == count
            and list(map(len, tokens)).count(1) == count  # type: ignore[arg-type]
            and data.count(b"],[") == count - 1
        ):
            try:
                canonical = dumps(tokens) == data
            except TypeError:  # an integer beyond 64 bits: take() keeps it exact
                return None
            if canonical:
                texts = text[2:-2].split("],[")
                longest = (max(map(len, texts)) if text.isascii()
                           else max(len(row.encode()) for row in texts))
                if longest > room:
                    return None
                return [[row] for row in texts]
        max_rows = self._max_rows
        out: list[list[str]] = []
        try:
            for rows in tokens:
                if type(rows) is not list or not rows or len(rows) > max_rows:
                    return None
                datas = list(map(dumps, rows))
                if max(map(len, datas)) > room:
                    return None
                out.append([data.decode() for data in datas])
        except TypeError:  # an integer beyond 64 bits: take() keeps it exact
            return None
        return out

    def _encode_run(self, stream: str, datas: list[bytes]) -> list[list[str]] | None:
        """Each publish of ``datas`` (the JSON texts of the rows of publishes to ``stream``)
        as one token's encoded rows, or ``None`` if any of them
        needs :meth:`_encode` (which also words the refusals). A publish of one row keeps
        the row's text as the publisher wrote it (the array's brackets and the blanks
        around its one element taken off), so it is not encoded again: that text is
        exactly one JSON value, since it parsed as the array's only element."""
        assert _orjson is not None
        if has_long_integer(b"".join(datas)):
            return None  # long integers: the standard library keeps them exact
        loads = _orjson.loads
        try:
            parsed = [loads(data) for data in datas]
        except _orjson.JSONDecodeError:
            return None
        room = self._room_of(stream)
        max_rows = self._max_rows
        out: list[list[str]] = []
        for data, rows in zip(datas, parsed, strict=True):
            if type(rows) is not list or not rows:
                return None
            if len(rows) == 1:
                text = data.strip(_JSON_BLANKS)[1:-1].strip(_JSON_BLANKS)
                if len(text) > room:
                    return None
                out.append([text.decode()])
                continue
            if len(rows) > max_rows:
                return None
            texts = [row.decode() for row in map(_orjson.dumps, rows)]
            if max(map(len, texts)) * 4 > room:
                return None
            out.append(texts)
        return out

    def _room_of(self, stream: str) -> int:
        """The bytes of JSON a row of ``stream`` may take: the line limit less RDATA's
        prefix."""
        room = self._room.get(stream)
        if room is None:
            room = self._room[stream] = (
                self.master.config.limits.max_line_bytes - rdata_line_length(stream, "")
            )
        return room

    # -- batches: the publishes of one read, committed together --------------------------

    def begin_batch(self) -> None:
        """Publishes taken from now until :meth:`end_batch` are committed together: each
        run of publishes to one stream is one :meth:`Master.submit_many
        <replication.master.service.Master.submit_many>` (one store transaction, one
        fan-out write), each publish still its own tokens and its own answer. That is what
        group commit does on a blocking store, here for the lines of one read on any
        store; a failed commit refuses every publish of its run, as a failed group commit
        does."""
        self._batching = True

    def end_batch(self) -> None:
        """Commit what was taken since :meth:`begin_batch`."""
        self._batching = False
        batch, self._batch = self._batch, []
        i = 0
        while i < len(batch):
            stream = batch[i][0]
            j = i
            tokens_rows: list[list[str]] = []
            while j < len(batch) and batch[j][0] == stream:
                tokens_rows.extend(batch[j][1])
                j += 1
            run = batch[i:j]
            keys: list[tuple[str, int, int]] = []
            offset = 0
            for _, encoded, _, key, entry in run:
                if entry is not None:
                    assert key is not None
                    keys.append((key, offset, len(encoded)))
                offset += len(encoded)
            d = self.master.submit_many(stream, tokens_rows, keys)
            d.addCallbacks(self._run_committed, self._run_failed,
                           callbackArgs=(run,), errbackArgs=(run,))
            i = j

    def _run_committed(self, tokens: list[int], run: list[_Batched]) -> None:
        keys = self.master.publish_keys
        i = 0
        self._quiet = True  # one write for the whole run
        try:
            for _, encoded, slot, key, entry in run:
                n = len(encoded)
                if n == 1:
                    token = tokens[i]
                    slot.answer = f"PUBLISHED {slot.id} {token}\n".encode()
                    mine = [token]
                else:
                    mine = tokens[i:i + n]
                    slot.answer = f"PUBLISHED {slot.id} {mine[0]} {mine[-1]}\n".encode()
                i += n
                if entry is not None:
                    assert key is not None
                    keys.finish(key, entry, mine)
        finally:
            self._quiet = False
        self._flush()

    def _run_failed(self, failure: Failure, run: list[_Batched]) -> None:
        refusal = _refusal(failure)
        keys = self.master.publish_keys
        self._quiet = True
        try:
            for _, _, slot, key, entry in run:
                if entry is not None:
                    assert key is not None
                    keys.finish(key, entry, refusal)
                self._answer(slot, refusal)
        finally:
            self._quiet = False
        self._flush()

    def _fast_encode(self, stream: str, data: bytes, many: bool) -> list[list[str]] | None:
        """The common case, encoded with less checking than :meth:`_encode` needs: one
        token of small rows to a stream the log already holds (so its name is valid and,
        with ``strict_streams``, known), as :meth:`_encode_run` encodes it; ``None`` for
        anything else, which :meth:`_encode` then takes (a test checks the two agree)."""
        if many or _orjson is None or self.master.log.state(stream) is None:
            return None
        return self._encode_run(stream, [data])

    def _encode(self, stream: str, data: bytes, many: bool) -> list[list[str]]:
        """The publish's tokens, checked and encoded; raises :class:`PublishError`."""
        try:
            rows = decode_json_bytes(data, "rows")
        except CommandParseError as e:
            raise PublishError(400, str(e)) from None
        if many:
            if (
                not isinstance(rows, list)
                or not rows
                or not all(isinstance(token, list) for token in rows)
            ):
                raise PublishError(400, "PUBLISH_TOKENS takes a non-empty JSON array of "
                                        "arrays of rows")
            return self.master.encode_tokens(stream, rows, parsed=True)
        if not isinstance(rows, list):
            raise PublishError(400, "PUBLISH takes a JSON array of rows")
        return self.master.encode_tokens(stream, [rows], parsed=True)

    # -- answers ------------------------------------------------------------------------

    def _committed(self, tokens: list[int], slot: _Slot) -> None:
        self._answer(slot, tokens)

    def _failed(self, failure: Failure, slot: _Slot) -> None:
        self._answer(slot, _refusal(failure))

    def _committed_key(self, tokens: list[int], slot: _Slot, key: str, entry: KeyEntry) -> None:
        self.master.publish_keys.finish(key, entry, tokens)
        self._answer(slot, tokens)

    def _failed_key(self, failure: Failure, slot: _Slot, key: str, entry: KeyEntry) -> None:
        refusal = _refusal(failure)
        self.master.publish_keys.finish(key, entry, refusal)
        self._answer(slot, refusal)

    def _answer(self, slot: _Slot, outcome: Outcome) -> None:
        if isinstance(outcome, tuple):
            status, message = outcome
            slot.answer = RefusedCommand(slot.id, status, message).to_line() + b"\n"
            self._refused += 1
        elif len(outcome) == 1:
            # PublishedCommand's line, built without it (ids were checked on the way in).
            slot.answer = f"PUBLISHED {slot.id} {outcome[0]}\n".encode()
        else:
            slot.answer = f"PUBLISHED {slot.id} {outcome[0]} {outcome[-1]}\n".encode()
        self._flush()

    def _flush(self) -> None:
        slots = self._slots
        if self._quiet or self._closed or not slots or slots[0].answer is None:
            return
        out = []
        answered = 0
        while slots and slots[0].answer is not None:
            slot = slots.popleft()
            answer = slot.answer
            assert answer is not None
            out.append(answer)
            answered += slot.count
        self._waiting -= answered
        self.connection.write(b"".join(out))
        counts = self.connection.sent_counts
        refused, self._refused = self._refused, 0
        counts["PUBLISHED"] = counts.get("PUBLISHED", 0) + answered - refused
        if refused:
            counts["REFUSED"] = counts.get("REFUSED", 0) + refused
        if self._holding and self._waiting < self.max_in_flight:
            self._holding = False
            self.connection.release_input()

    def closed(self) -> None:
        """The connection is gone: answers still due are dropped (the publishes themselves
        commit or fail as they would have; a retry with the same key learns which)."""
        self._closed = True
        self._slots.clear()
        self._waiting = 0


#: A ``PUBLISH`` line the fast path takes: a valid id, a valid stream name, an optional
#: valid key, rows that start like a JSON array (anything else goes through the codec).
_FAST_PUBLISH = re.compile(
    rb"PUBLISH ([\x21-\x7e]{1,64}) ([A-Za-z0-9_][A-Za-z0-9_.\-]{0,127})"
    rb"(?: key=([\x21-\x7e]{1,128}))? (\[.*)",
    re.DOTALL,
)


#: The command and id at the start of a publish line (for a line too long to be read).
_PUBLISH_HEAD = re.compile(rb"(PUBLISH|PUBLISH_TOKENS) ([\x21-\x7e]{1,64}) ")


#: The first id and the count at the start of a ``PUBLISH_BATCH`` line.
_BATCH_HEAD = re.compile(rb"PUBLISH_BATCH ([0-9]{1,19}) ([0-9]{1,7}) ")


def publish_batch_head(head: bytes) -> tuple[int, int] | None:
    """``(first id, count)`` of the ``PUBLISH_BATCH`` whose line starts with ``head``
    (``None``: they cannot be read)."""
    match = _BATCH_HEAD.match(head)
    if match is None:
        return None
    first, count = int(match.group(1)), int(match.group(2))
    return (first, count) if first < 10**19 and count > 0 else None


def publish_id(head: bytes) -> str | None:
    """The id of the publish whose line starts with ``head`` (``None``: none can be read)."""
    match = _PUBLISH_HEAD.match(head)
    return None if match is None else match.group(2).decode()


def fast_publish(line: bytes) -> tuple[str, str, str | None, bytes] | None:
    """``(id, stream, key, rows)`` of a ``PUBLISH`` line that the codec would parse to the
    same fields, without the codec (``None``: use it). A line holding ``\r`` or bytes
    that are not UTF-8 is left to the codec, which refuses it with ``ERROR``."""
    match = _FAST_PUBLISH.fullmatch(line)
    if match is None or b"\r" in line:
        return None
    id_, stream, key, rows = match.groups()
    if not rows.isascii():
        try:
            rows.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return id_.decode(), stream.decode(), None if key is None else key.decode(), rows


def _refusal(failure: Failure) -> tuple[int, str]:
    error = failure.value
    if isinstance(error, PublishError):
        return error.status, error.message
    return 500, "internal error while publishing"
