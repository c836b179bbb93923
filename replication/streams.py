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
    """``RDATA`` lines that do not make a token: a token not above the previous one."""


@dataclass
class TokenAssembler:
    """Gathers ``RDATA`` rows per stream until the line that carries the token.

    :meth:`add` returns ``None`` for a ``batch`` row and ``(token, rows)`` when the token
    completes; tokens must increase within one connection. :meth:`discard` drops a stream's
    partial batch (on ``RESET`` or when the connection is lost).

    ``partial`` (rows gathered so far, per stream) and ``last`` (the last completed token,
    per stream) are public so that the worker's hot loop can apply the same rules inline.
    """

    partial: dict[str, list[Any]] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)

    def add(self, stream: str, token: int | None, row: Any) -> tuple[int, list[Any]] | None:
        if token is None:
            self.partial.setdefault(stream, []).append(row)
            return None
        last = self.last.get(stream)
        if last is not None and token <= last:
            raise AssemblyError(
                f"RDATA {stream} token {token} does not follow token {last} sent before it"
            )
        self.last[stream] = token
        rows = self.partial.pop(stream, [])
        rows.append(row)
        return token, rows

    def pending_rows(self, stream: str) -> int:
        return len(self.partial.get(stream, ()))

    def discard(self, stream: str) -> None:
        self.partial.pop(stream, None)
        self.last.pop(stream, None)


__all__ = [
    "AssemblyError",
    "CatchUpStart",
    "TokenAssembler",
    "missing_before",
    "plan_catch_up",
]
