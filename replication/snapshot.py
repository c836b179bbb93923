"""One read-only view of a master, for metrics and status.

:meth:`Master.snapshot <replication.master.Master.snapshot>` builds a
:class:`MasterSnapshot` from the stream log, the fan-out and the connections; the
Prometheus collector (:mod:`replication.metrics`) and ``GET /status``
(:mod:`replication.http`) both read it and nothing else of the master. A snapshot is plain
frozen data: building one costs a pass over the streams and connections, and reading it
touches no store. On a master of a cluster it carries a :class:`ClusterView`: each peer
link as a :class:`PeerLinkView` (read through the small :class:`LinkSource` interface, the
master's ``peer_links``), repairs, acknowledgements and the rows served to peers.

Also here, because both the master and the views need them: :class:`PeerLabels` (peer names
as bounded label values) and :class:`ConnectionHistory` (what a master remembers about each
peer label across its connections: connects, disconnects by reason, and the commands of
connections that ended). Pure: no reactor, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

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
    """One stream of a master, of one origin: ``origin`` is ``""`` for this master's own
    rows, else the origin id of the master that accepted them (see
    :meth:`MasterSnapshot.origin_name`)."""

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

    @property
    def local(self) -> bool:
        """The rows are this master's own (published to it)."""
        return not self.origin


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
    #: (another master of the cluster, which sent ``ORIGIN``).
    role: str = "worker"
    #: A peer's origin id (``None``: not a peer).
    peer_origin: str | None = None
    #: Rows written to this connection since it opened (in RDATA or ROWS lines).
    rows_sent: int = 0


@dataclass(frozen=True, slots=True)
class PeerView:
    """What the master remembers of one peer label."""

    label: str
    connects: int
    disconnects: Mapping[str, int]
    last_disconnect_reason: str | None
    last_disconnect_at: float | None


#: Every state a peer link can be in (the values of
#: :class:`~replication.cluster.link.LinkState`), in the order metrics list them.
LINK_STATES: tuple[str, ...] = (
    "stopped", "connecting", "connected", "backing off", "self", "conflict", "diverged",
)


@dataclass(frozen=True, slots=True)
class PeerLinkView:
    """One entry of ``cluster.peers`` as this master dials it (the dialling side; see
    :class:`~replication.cluster.link.PeerLink`, whose attributes these are). ``state`` is a
    :class:`~replication.cluster.link.LinkState` value (``"connected"``, ``"self"``...) and
    ``since`` when the link took it; ``peer_name``, ``origin_id`` and ``fingerprint`` are
    what the peer last announced (``None`` until it did); counts are since start;
    ``repairs`` the other origins this link also asks its peer for, now."""

    endpoint: str
    state: str
    since: float
    peer_name: str | None = None
    origin_id: str | None = None
    fingerprint: str | None = None
    problem: str | None = None
    retry_at: float | None = None
    links: int = 0
    rows_received: int = 0
    bytes_received: int = 0
    tokens_received: int = 0
    ingests: int = 0
    ingested_tokens: int = 0
    gaps: int = 0
    skipped_tokens: int = 0
    resets: int = 0
    conflicts: int = 0
    ingest_failures: int = 0
    pending_bytes: int = 0
    repairs: tuple[str, ...] = ()
    repair_rows: int = 0

    @property
    def is_self(self) -> bool:
        """The entry is this master (never dialled again)."""
        return self.state == "self"


@dataclass(frozen=True, slots=True)
class ClusterView:
    """A master of a cluster: its links to every configured peer (``links``, in the order
    of ``cluster.peers``), the origins being repaired through other peers, the
    ``cluster.ack_peers`` confirmations, and the serving side's rows sent to peers
    (``rows_sent``: RDATA lines by the peer's label, connections that closed included).
    ``originated_rows`` are the rows this master accepted itself since start."""

    links: tuple[PeerLinkView, ...] = ()
    repairing: tuple[str, ...] = ()
    ack_peers: int = 0
    ack_timeout: float = 0.0
    acks_confirmed: int = 0
    acks_timed_out: int = 0
    acks_pending: int = 0
    rows_sent: Mapping[str, int] = field(default_factory=dict)
    originated_rows: int = 0

    @property
    def relayed_rows(self) -> int:
        """RDATA lines this master sent to its peers since start."""
        return sum(self.rows_sent.values())

    @property
    def relays_per_row(self) -> float | None:
        """Rows relayed to peers per row originated here (N-1 in a steady full mesh of N
        masters); ``None`` until this master originated a row."""
        if not self.originated_rows:
            return None
        return self.relayed_rows / self.originated_rows


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
    #: The cluster this master is one of (``None``: it is not clustered).
    cluster: ClusterView | None = None

    def origin_name(self, origin: str) -> str:
        """The origin id of a :class:`StreamView`'s ``origin`` (this master's own id for
        its own rows, whose ``origin`` is ``""``; ``""`` while the store is not open)."""
        return origin or (self.origin_id or "")
    #: Publish requests received since start, by transport (``http``, ``replication``).
    publishes: Mapping[str, int] = field(default_factory=dict)
    #: Failed authentications since start, by transport (``http``, ``replication``).
    auth_failures: Mapping[str, int] = field(default_factory=dict)

    def head(self, stream: str) -> int:
        for view in self.streams:
            if view.name == stream:
                return view.head
        return 0


class LinkSource(Protocol):
    """What a master's snapshot reads of its links to the cluster's peers
    (:class:`~replication.cluster.peers.PeerLinks`)."""

    def views(self) -> tuple[PeerLinkView, ...]:
        """Every configured peer's link, in the order of ``cluster.peers``."""

    def repairing(self) -> set[str]:
        """The origins some link asks its peer for besides the peer's own."""


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
    "LINK_STATES",
    "OTHER",
    "UNNAMED",
    "ClusterView",
    "CommandTotals",
    "ConnectionHistory",
    "ConnectionView",
    "FollowView",
    "LinkSource",
    "MasterSnapshot",
    "PeerLabels",
    "PeerLinkView",
    "PeerRecord",
    "PeerView",
    "StreamView",
    "add_counts",
    "peer_views",
]
