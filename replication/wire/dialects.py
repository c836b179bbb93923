"""Protocol dialects: what each protocol version lets a side send, as a table.

A worker announces the versions it speaks right after its ``NAME`` (``VERSION 1``); the
master answers with the one it chose (the highest both speak). A peer that announces
nothing speaks the :data:`LEGACY` dialect, Synapse's 2017-2020 replication protocol, and is
sent only what that dialect has. The negotiation itself is the session's
(:mod:`replication.wire.session`); this module says what a dialect *has*, so that a new
version is a new :class:`Dialect` and one entry in :data:`VERSIONS`, not a new state machine.
Pure: nothing here imports Twisted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final


@dataclass(frozen=True, slots=True)
class Dialect:
    """One dialect of the protocol.

    :param name: how connections, logs and metrics name it (a small fixed set of values).
    :param version: the number negotiated with ``VERSION``; ``None`` for the legacy dialect,
        which negotiates nothing.
    :param gap_and_reset: whether the master may send ``GAP`` and ``RESET``; a dialect
        without them gets ``POSITION`` in their place (see docs/protocol.rst, "Protocol
        versions").
    :param origins: whether rows are named by origin (``<stream>@<origin>``), positions are
        vectors, and masters name themselves with ``ORIGIN``: what a cluster of masters
        needs (version 2). A dialect without origins can only follow the rows a master
        accepted itself, so a master of a cluster refuses its ``REPLICATE``.
    :param rows_lines: whether the master may send ``ROWS``, consecutive tokens of a stream
        in one line (version 3); without it every row is an ``RDATA`` line.
    """

    name: str
    version: int | None
    gap_and_reset: bool
    origins: bool = False
    rows_lines: bool = False


#: Synapse's 2017-2020 dialect: SERVER, NAME, PING, REPLICATE, RDATA, POSITION, ERROR.
LEGACY: Final = Dialect("synapse-2017", None, gap_and_reset=False)
#: Version 1: the legacy commands plus GAP and RESET, contiguous tokens per stream.
VERSION_1: Final = Dialect("replication/1", 1, gap_and_reset=True)

#: Version 2: rows named by (stream, origin), position vectors, ORIGIN and RELAY: the
#: cluster's dialect.
VERSION_2: Final = Dialect("replication/2", 2, gap_and_reset=True, origins=True)

#: Version 3: version 2 plus ``ROWS``, many tokens of a stream in one line (a worker's
#: dialect; cluster peers and publishers speak version 2).
VERSION_3: Final = Dialect(
    "replication/3", 3, gap_and_reset=True, origins=True, rows_lines=True
)

#: Every version this release speaks, by number. Adding a version is an entry here (and
#: what the new dialect has, read where it is sent); the session negotiates from this table.
VERSIONS: Final[Mapping[int, Dialect]] = MappingProxyType(
    {1: VERSION_1, 2: VERSION_2, 3: VERSION_3}
)

#: Every dialect by name, the legacy one included: what a connection's ``dialect`` can be.
DIALECTS: Final[Mapping[str, Dialect]] = MappingProxyType(
    {d.name: d for d in (LEGACY, *VERSIONS.values())}
)


def choose_version(offered: tuple[int, ...], spoken: Mapping[int, Dialect]) -> Dialect | None:
    """The dialect a master picks from a worker's ``offered`` versions: the highest one it
    also speaks (``spoken``); ``None`` when they have none in common."""
    common = [v for v in offered if v in spoken]
    return spoken[max(common)] if common else None


__all__ = [
    "DIALECTS", "LEGACY", "VERSIONS", "VERSION_1", "VERSION_2", "VERSION_3", "Dialect",
    "choose_version",
]
