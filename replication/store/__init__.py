"""Where streams live: the :class:`StreamStore` interface and the errors it raises.

A store keeps, per stream, the rows of each token in token order. Tokens are assigned by the
store: the first token of a stream is 1 and each append takes the next integer, so the tokens
of a stream are contiguous and the retained ones are exactly ``oldest(stream)..head(stream)``.
Stores are pure: no reactor, no threads of their own; time is passed in. Implementations:
:mod:`replication.store.memory` (and, with the durable-streams work, SQLite).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class StoreError(Exception):
    """The store cannot do what was asked: its message says why, for an operator."""


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
class Retention:
    """How much of a stream a store keeps: at most ``max_rows`` rows and nothing older than
    ``max_age`` seconds (``None``: no such bound). Whole tokens are dropped, oldest first; the
    newest token is always kept, so ``head`` survives trimming."""

    max_rows: int | None = None
    max_age: float | None = None


class StreamStore(Protocol):
    """The storage of streams. Every method may raise :class:`StoreError`.

    ``blocking`` tells the master whether ``append`` does disk work that must run off the
    reactor thread; a blocking store is called from one writer thread for ``append`` and
    ``trim`` and from the reactor thread for everything else, so it must allow that.
    """

    blocking: bool

    def stream_names(self) -> list[str]:
        """Every stream the store holds, sorted."""

    def create_stream(self, stream: str) -> None:
        """Create an empty stream (head 0); does nothing if it exists."""

    def head(self, stream: str) -> int:
        """The newest token of ``stream``, 0 if nothing was ever appended."""

    def oldest(self, stream: str) -> int:
        """The oldest retained token, or ``head + 1`` when nothing is retained."""

    def retained_rows(self, stream: str) -> int:
        """How many rows of ``stream`` are retained."""

    def append(self, batch: Sequence[tuple[str, Sequence[str]]], now: float) -> list[int]:
        """Append each ``(stream, rows)`` of ``batch`` as one token, in order, as one unit:
        either every entry is stored or none is. Streams are created as needed. Returns the
        tokens, in the order of ``batch``. ``now`` (seconds since the epoch) is recorded
        for age-based retention."""

    def read(self, stream: str, after: int, upto: int, max_rows: int) -> list[Entry]:
        """Entries with ``after < token <= upto``, oldest first: whole tokens, stopping once
        ``max_rows`` rows are gathered (always at least one entry when one is there)."""

    def trim(self, stream: str, retention: Retention, now: float) -> int:
        """Drop the oldest tokens of ``stream`` beyond ``retention``; return how many rows
        were dropped."""

    def close(self) -> None:
        """Release what the store holds open. The store is not used afterwards."""
