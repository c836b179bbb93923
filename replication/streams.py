"""Pure stream logic: where a catch-up starts, which history is missing, and how a worker
puts the ``RDATA`` lines of one token back together.

Tokens of a stream are contiguous (1, 2, 3, ...), so a worker at position ``p`` needs
``p + 1 .. head``, and a read of the store that starts above ``p + 1`` shows exactly what
retention dropped. No I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class CatchUpStart:
    """Where the master starts serving a worker that sent ``REPLICATE <stream> <token>``.

    ``reset`` is true when the worker's token is ahead of the master's head: the master's
    history was lost or replaced, so it sends ``RESET`` and replays the stream from its start
    (``position`` 0). Otherwise ``position`` is the worker's token.
    """

    reset: bool
    position: int


def plan_catch_up(requested: int, head: int) -> CatchUpStart:
    """Plan a ``REPLICATE <stream> <requested>`` against a stream whose newest token is
    ``head``."""
    if requested > head:
        return CatchUpStart(reset=True, position=0)
    return CatchUpStart(reset=False, position=requested)


def missing_before(position: int, first_read: int | None, head: int) -> tuple[int, int] | None:
    """The tokens retention dropped between a worker at ``position`` and the first token a
    read of the store returned (``None`` when the read returned nothing although the worker
    is behind ``head``), as ``(first, last)``; ``None`` when nothing is missing."""
    if position >= head:
        return None
    if first_read is None:
        return position + 1, head
    if first_read > position + 1:
        return position + 1, first_read - 1
    return None


class AssemblyError(ValueError):
    """What the master sent does not follow from what it sent before: a token that is not
    the next one, a ``POSITION`` or ``GAP`` that skips tokens never sent, or a token beyond
    the bounds of one token's rows or bytes. The worker answers ``ERROR`` and reconnects."""


#: The default bound of one token's rows on a worker (``limits.max_token_rows``): the most
#: rows a publish of the master's default ``limits.max_body_bytes`` (16 MiB) can hold.
DEFAULT_MAX_TOKEN_ROWS = 8 * 1024 * 1024
#: The default bound of one token's JSON bytes on a worker (``limits.max_token_bytes``):
#: twice the master's default ``limits.max_body_bytes`` (a row re-encoded by the master is
#: rarely longer than in the publish body).
DEFAULT_MAX_TOKEN_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PositionCheck:
    """What a ``POSITION`` means to a worker: ``reset`` is true when it is below the last
    token the worker had (the master lost history: treat it as ``RESET``)."""

    reset: bool
    below: int | None = None


@dataclass
class TokenAssembler:
    """Gathers ``RDATA`` rows per stream until the line that carries the token, and checks
    that what the master sends follows from what it sent before.

    ``last`` holds, per stream, the last token accounted for on this connection: the token
    of the worker's ``REPLICATE`` (:meth:`start`), then each completed token, the last
    token of a ``GAP``, 0 after ``RESET``, the token of a ``POSITION``. A stream subscribed
    ``NOW`` has none until its first ``POSITION`` (any token is taken then). The rules
    (docs/protocol.rst, "What a worker accepts"):

    * a token must be ``last + 1``;
    * ``GAP first last`` must start at ``last + 1``;
    * ``POSITION p``: ``p == last`` is a catch-up done; ``p < last`` is a master that lost
      history (:class:`PositionCheck` with ``reset``); ``p > last`` would record tokens
      never received, and is refused;
    * ``POSITION``, ``GAP`` and ``RESET`` never come between the rows of one token;
    * a token holds at most ``max_rows`` rows and ``max_bytes`` bytes of JSON.

    :meth:`add` returns ``None`` for a ``batch`` row and ``(token, rows)`` when the token
    completes; a broken rule raises :class:`AssemblyError`. ``partial`` (rows gathered so
    far), ``partial_bytes`` (their bytes) and ``last`` are public so that the worker's hot
    loop can apply the same rules inline.
    """

    max_rows: int = DEFAULT_MAX_TOKEN_ROWS
    max_bytes: int = DEFAULT_MAX_TOKEN_BYTES
    partial: dict[str, list[Any]] = field(default_factory=dict)
    partial_bytes: dict[str, int] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)

    def start(self, stream: str, token: int | None) -> None:
        """The worker sent ``REPLICATE <stream> <token>`` (``None``: ``NOW``)."""
        self.partial.pop(stream, None)
        self.partial_bytes.pop(stream, None)
        if token is None:
            self.last.pop(stream, None)
        else:
            self.last[stream] = token

    def add(
        self, stream: str, token: int | None, row: Any, size: int = 0
    ) -> tuple[int, list[Any]] | None:
        """One ``RDATA`` row of ``size`` bytes of JSON (as received)."""
        gathered = self.partial.get(stream)
        count = 1 if gathered is None else len(gathered) + 1
        total = self.partial_bytes.get(stream, 0) + size
        if count > self.max_rows or total > self.max_bytes:
            what = (f"{count} rows (at most {self.max_rows})" if count > self.max_rows
                    else f"{total} bytes (at most {self.max_bytes})")
            raise AssemblyError(
                f"RDATA {stream}: a token of at least {what}: see the worker's "
                "limits.max_token_rows and limits.max_token_bytes"
            )
        if token is None:
            if gathered is None:
                self.partial[stream] = [row]
            else:
                gathered.append(row)
            self.partial_bytes[stream] = total
            return None
        self._check_next(stream, token, "RDATA")
        self.last[stream] = token
        rows = self.partial.pop(stream, None)
        self.partial_bytes.pop(stream, None)
        if rows is None:
            return token, [row]
        rows.append(row)
        return token, rows

    def tokens(self, stream: str, first: int, tokens: list[list[Any]]) -> None:
        """``ROWS <stream> <first> [...]``: the complete tokens ``first..`` at once, each
        within ``max_rows``; ``first`` must be ``last + 1`` and no token's rows may be
        pending. A ``ROWS`` line is at most the line limit, which is at most
        ``max_bytes`` (the worker's configuration requires it), so bytes need no check."""
        self._between_tokens(stream, "ROWS")
        self._check_next(stream, first, "ROWS")
        for i, rows in enumerate(tokens):
            if len(rows) > self.max_rows:
                raise AssemblyError(
                    f"ROWS {stream}: token {first + i} has {len(rows)} rows (at most "
                    f"{self.max_rows}): see the worker's limits.max_token_rows"
                )
        self.last[stream] = first + len(tokens) - 1

    def _check_next(self, stream: str, token: int, what: str) -> None:
        """Refuse a token (of an ``RDATA`` or ``ROWS`` line, ``what``) that is not the next."""
        last = self.last.get(stream)
        if last is not None and token != last + 1:
            if token <= last:
                raise AssemblyError(
                    f"{what} {stream} token {token} does not follow token {last} sent before it"
                )
            raise AssemblyError(
                f"{what} {stream} token {token} skips ahead of token {last} sent before it "
                f"(tokens {last + 1}..{token - 1} were neither sent nor announced by GAP)"
            )

    def position(self, stream: str, token: int) -> PositionCheck:
        """``POSITION <stream> <token>``: check it, and take ``token`` as the last."""
        self._between_tokens(stream, "POSITION")
        last = self.last.get(stream)
        if last is not None and token > last:
            raise AssemblyError(
                f"POSITION {stream} {token} is above token {last}, the last this worker "
                f"received: tokens {last + 1}..{token} were neither sent nor announced by GAP"
            )
        self.last[stream] = token
        if last is not None and token < last:
            return PositionCheck(reset=True, below=last)
        return PositionCheck(reset=False)

    def gap(self, stream: str, first: int, last_dropped: int) -> None:
        """``GAP <stream> <first> <last_dropped>``: check it, and take ``last_dropped``."""
        self._between_tokens(stream, "GAP")
        last = self.last.get(stream)
        if last is not None and first != last + 1:
            raise AssemblyError(
                f"GAP {stream} {first} {last_dropped} does not start after token {last}, the "
                "last this worker received"
            )
        self.last[stream] = last_dropped

    def reset(self, stream: str) -> None:
        """``RESET``: the master replays the stream from its start."""
        self._between_tokens(stream, "RESET")
        self.last[stream] = 0

    def _between_tokens(self, stream: str, what: str) -> None:
        if stream in self.partial:
            raise AssemblyError(
                f"{what} {stream} arrived between the rows of one token "
                f"({len(self.partial[stream])} rows sent with batch)"
            )

    def pending_rows(self, stream: str) -> int:
        return len(self.partial.get(stream, ()))

    def discard(self, stream: str) -> None:
        self.partial.pop(stream, None)
        self.partial_bytes.pop(stream, None)
        self.last.pop(stream, None)


__all__ = [
    "DEFAULT_MAX_TOKEN_BYTES",
    "DEFAULT_MAX_TOKEN_ROWS",
    "AssemblyError",
    "CatchUpStart",
    "PositionCheck",
    "TokenAssembler",
    "missing_before",
    "plan_catch_up",
]
