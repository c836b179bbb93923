"""One read-only view of a master, for metrics and status.

:meth:`Master.snapshot <replication.master.Master.snapshot>` builds a
:class:`MasterSnapshot` from the stream log, the fan-out and the connections; the
Prometheus collector (:mod:`replication.metrics`) and ``GET /status``
(:mod:`replication.http`) both read it and nothing else of the master. A snapshot is plain
frozen data: building one costs a pass over the streams and connections, and reading it
touches no store.

Also here, because both the master and the views need them: :class:`PeerLabels` (peer names
as bounded label values) and :class:`ConnectionHistory` (what a master remembers about each
peer label across its connections: connects, disconnects by reason, and the commands of
connections that ended). Pure: no reactor, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: The label value of peer names past the cap.
OTHER = "other"
#: The label value of a connection whose peer has not sent its name (yet).
UNNAMED = "unnamed"


class PeerLabels:
    """Peer names as label values: each of the first ``limit`` distinct names is its own
    label for the life of the process; later names are ``other``; no name is ``unnamed``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._known: set[str] = set()

    def __call__(self, name: str | None) -> str:
        if name is None:
            return UNNAMED
        known = self._known
        if name in known:
            return name
        if len(known) < self.limit:
            known.add(name)
            return name
        return OTHER


@dataclass
class PeerRecord:
    """What a master remembers about one peer label across its connections."""

    label: str
    connects: int = 0
    disconnects: dict[str, int] = field(default_factory=dict)
    last_disconnect_reason: str | None = None
    last_disconnect_at: float | None = None


#: Command counts by ``(command name, peer label)``.
CommandTotals = dict[tuple[str, str], int]


def add_counts(totals: CommandTotals, counts: Mapping[str, int], label: str) -> None:
    """Add one connection's ``counts`` (by command name) to ``totals`` under ``label``."""
    for command, n in counts.items():
        key = (command, label)
        totals[key] = totals.get(key, 0) + n


class ConnectionHistory:
    """Per peer label: connects, disconnects by reason and the last one; and the commands
    of the connections that ended (open connections' commands are read live).

    :param max_peer_labels: distinct peer names kept as their own label; later ones are
        ``other`` (``metrics.max_peer_labels``).
    """

    def __init__(self, max_peer_labels: int = 100) -> None:
        self.label = PeerLabels(max_peer_labels)
        self.peers: dict[str, PeerRecord] = {}
        self.received: CommandTotals = {}
        self.sent: CommandTotals = {}

    def peer(self, label: str) -> PeerRecord:
        record = self.peers.get(label)
        if record is None:
            record = self.peers[label] = PeerRecord(label)
        return record

    def connected(self, peer_name: str | None) -> None:
        """A connection from ``peer_name`` completed its handshake."""
        self.peer(self.label(peer_name)).connects += 1

    def closed(
        self,
        peer_name: str | None,
        reason: str,
        at: float,
        received: Mapping[str, int],
        sent: Mapping[str, int],
    ) -> None:
        """A connection ended at ``at`` for ``reason``, having received and sent these
        commands (by name)."""
        label = self.label(peer_name)
        add_counts(self.received, received, label)
        add_counts(self.sent, sent, label)
        record = self.peer(label)
        record.disconnects[reason] = record.disconnects.get(reason, 0) + 1
        record.last_disconnect_reason = reason
        record.last_disconnect_at = at


@dataclass(frozen=True, slots=True)
class StreamView:
    """One stream of a master (of one origin)."""

    name: str
    origin: str
    head: int
    oldest: int
    retained_rows: int
    rows_published: int
    live_subscribers: int
    rows_sent_live: int
    rows_sent_catchup: int
    #: When the stream was created (seconds since the epoch); ``None``: not known.
    created: float | None = None


@dataclass(frozen=True, slots=True)
class FollowView:
    """One stream a connection follows: the last token sent, its lag behind the head, and
    whether its catch-up is done; ``handled`` is the position the worker last reported with
    ``HANDLED`` and ``handled_lag`` its lag behind the head (both ``None`` until a report)."""

    name: str
    position: int
    lag: int
    live: bool
    handled: int | None = None
    handled_lag: int | None = None


@dataclass(frozen=True, slots=True)
class ConnectionView:
    """One open (admitted) connection."""

    peer_name: str | None
    label: str
    address: str
    connected_since: float | None
    all_streams: bool
    streams: tuple[FollowView, ...]
    buffered_bytes: int
    commands_received: Mapping[str, int]
    commands_sent: Mapping[str, int]
    #: The protocol dialect the handshake agreed on (``replication.wire.dialects``).
    dialect: str = "replication/1"
    #: What the connection is: ``worker``, ``publisher`` (sent ``PUBLISHER``) or ``peer``
    #: (a cluster peer, sent ``ORIGIN``).
    role: str = "worker"


@dataclass(frozen=True, slots=True)
class PeerView:
    """What the master remembers of one peer label."""

    label: str
    connects: int
    disconnects: Mapping[str, int]
    last_disconnect_reason: str | None
    last_disconnect_at: float | None


@dataclass(frozen=True, slots=True)
class MasterSnapshot:
    """A master at one moment. Times are seconds since the epoch. ``origin_id`` is the
    store's origin id (``None`` until the store is open), ``fingerprint`` this process's
    (see :mod:`replication.cluster.identity`)."""

    server_name: str
    origin_id: str | None
    fingerprint: str
    now: float
    started_at: float
    max_buffer_bytes: int
    streams: tuple[StreamView, ...]
    connections: tuple[ConnectionView, ...]
    peers: tuple[PeerView, ...]
    #: Commands of connections that ended, by ``(command, peer label)``.
    closed_received: Mapping[tuple[str, str], int]
    closed_sent: Mapping[tuple[str, str], int]
    #: POSITION lines sent to legacy-dialect workers in place of GAP and RESET, by the
    #: command they replaced.
    legacy_substitutions: Mapping[str, int] = field(default_factory=dict)
    #: Distinct stored tokens found damaged since start.
    damaged_tokens: int = 0
    #: ``REPLICATE`` requests after a token above the stream's head, since start.
    followers_ahead: int = 0
    #: Publish requests received since start, by transport (``http``, ``replication``).
    publishes: Mapping[str, int] = field(default_factory=dict)

    def head(self, stream: str) -> int:
        for view in self.streams:
            if view.name == stream:
                return view.head
        return 0


def peer_views(history: ConnectionHistory) -> tuple[PeerView, ...]:
    """The history's records as views, by label."""
    return tuple(
        PeerView(
            record.label, record.connects, dict(sorted(record.disconnects.items())),
            record.last_disconnect_reason, record.last_disconnect_at,
        )
        for _, record in sorted(history.peers.items())
    )


__all__ = [
    "OTHER",
    "UNNAMED",
    "CommandTotals",
    "ConnectionHistory",
    "ConnectionView",
    "FollowView",
    "MasterSnapshot",
    "PeerLabels",
    "PeerRecord",
    "PeerView",
    "StreamView",
    "add_counts",
    "peer_views",
]
