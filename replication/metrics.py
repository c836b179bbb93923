"""Metric definitions and the collectors that expose them to Prometheus.

Every metric of a master (:class:`MasterMetrics`) and of a worker (:class:`WorkerMetrics`) is
defined here; docs/operations.rst describes each one. The entry point creates one
``CollectorRegistry`` per process, builds the metrics object around it and passes it to
:class:`~replication.master.Master` or :class:`~replication.worker.Worker`, which call
:meth:`bind`. Nothing here uses prometheus_client's global ``REGISTRY``. A master's metrics
read only its :class:`~replication.snapshot.MasterSnapshot` (this module imports nothing from
the master); a worker's read the worker.

Nothing is counted with prometheus_client's ``Counter`` on the hot path (its ``inc()`` takes
a lock: ~0.5 µs, a histogram ``observe()`` ~1 µs). The services keep plain integers, updated
on the reactor thread: per stream rows published and sent (the fan-out adds
``rows × receivers`` once per publish), per connection commands by name, per worker stream
handler calls and a bucketed duration histogram. Everything else is read from the services'
own state when the registry is scraped: open connections, bytes buffered per connection,
heads, oldest and retained rows, positions and lag, connected or not. Scrape from the
reactor thread (the HTTP resources of :mod:`replication.http` do).

Label values stay bounded: command names come from the command registry, stream names from
the streams that exist, origins from the masters of the cluster, reasons from the close
reasons of :mod:`replication.wire.protocol`, and peer names through :class:`PeerLabels`: the
first ``max_peer_labels`` names seen keep their own label, later ones are counted as
``other``; a peer link's label is its entry of ``cluster.peers``.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from replication import __version__
from replication.snapshot import (
    LINK_STATES,
    OTHER,
    UNNAMED,
    MasterSnapshot,
    PeerLabels,
    PeerRecord,
    add_counts,
)
from replication.wire.commands import qualify
from replication.wire.dialects import DIALECTS

__all__ = [
    "CLUSTER_METRICS",
    "HANDLER_BUCKETS",
    "MASTER_METRICS",
    "OTHER",
    "PROCESS_METRICS",
    "UNNAMED",
    "WORKER_METRICS",
    "MasterMetrics",
    "PeerLabels",
    "PeerRecord",
    "WorkerMetrics",
    "process_registry",
    "reason_label",
]

if TYPE_CHECKING:
    from replication.wire.protocol import ReplicationProtocol
    from replication.worker import Worker

#: Upper bounds (seconds) of the worker's handler duration histogram buckets.
HANDLER_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)
_FIRST_BUCKET = HANDLER_BUCKETS[0]
_bisect_left = bisect.bisect_left
#: Master names a worker keeps as label values (a worker talks to one master at a time, or
#: to the few masters of a cluster).
WORKER_PEER_LABELS = 16

# Every metric, by the name Prometheus shows (counters end in _total) and its help text.
# docs/operations.rst lists each of them; tests/test_metrics.py checks that it does.
COMMON_METRICS: dict[str, str] = {
    "replication_info": "Constant 1; labels say the role, the process's name and the version "
    "(and a master's origin id).",
    "replication_commands_received_total": (
        "Protocol commands received, by command and peer name (one per line; on a worker "
        "every RDATA line counts, so a token of n rows adds n, and a ROWS line adds one)."
    ),
    "replication_commands_sent_total": (
        "Protocol commands sent, by command and peer name (one per line; a master's live "
        "RDATA lines are the rows published while the peer's subscription was live)."
    ),
    "replication_disconnects_total": (
        "Connections ended, by close reason and peer name (closed_by_peer, closed_locally, "
        "ping_timeout, handshake_timeout, failed_to_keep_up, protocol_error, line_too_long, "
        "too_many_connections)."
    ),
}
MASTER_METRICS: dict[str, str] = {
    **COMMON_METRICS,
    "replication_start_time_seconds": "When the master started, in seconds since the epoch.",
    "replication_connections_open": "Worker connections open now (admitted).",
    "replication_connections_by_dialect": (
        "Worker connections open now that completed the handshake, by the protocol dialect "
        "agreed: synapse-2017 (the worker announced no version) or replication/1."
    ),
    "replication_connections_by_role": (
        "Open connections that completed the handshake, by role: worker (follows streams), "
        "publisher (sent PUBLISHER) or peer (a cluster peer, sent ORIGIN)."
    ),
    "replication_publishes_total": (
        "Publish requests received since start, by transport: http (POST /streams/<stream>) "
        "or replication (PUBLISH, PUBLISH_TOKENS and each publish of a PUBLISH_BATCH on the "
        "replication port), refused ones included."
    ),
    "replication_auth_failures_total": (
        "Failed authentications since start, by transport: replication (a wrong "
        "or unknown credential: ERROR authentication failed; and attempts refused because "
        "their address failed too often lately) or http."
    ),
    "replication_legacy_substitutions_total": (
        "POSITION lines sent to synapse-2017 (legacy) workers in place of a command their "
        "dialect lacks, by that command: GAP (retention dropped tokens the worker had not "
        "seen) or RESET (the worker was ahead of the stream's head)."
    ),
    "replication_store_damaged_tokens_total": (
        "Stored tokens found damaged (their rows do not match their checksum) when read for "
        "a catch-up, each counted once; followers reaching one are refused with ERROR."
    ),
    "replication_followers_ahead_total": (
        "REPLICATE requests after a token above the stream's head: a worker ahead of this "
        "master's history (answered with RESET, or POSITION to legacy workers)."
    ),
    "replication_connection_buffered_bytes": (
        "Bytes the master holds for a worker's connections beyond what the transport holds, "
        "by peer name (summed over that name's connections); past "
        "replication_connection_buffer_limit_bytes the connection is cut off."
    ),
    "replication_connection_buffer_limit_bytes": (
        "limits.max_buffer_bytes: bytes held for one connection before it is cut off as "
        "failed to keep up."
    ),
    "replication_connection_lag_tokens": (
        "Tokens between a stream's head and the last token sent to the worker, by peer name "
        "and stream (the largest over that name's connections). Sent, not handled: the "
        "worker's own replication_worker_lag_tokens says what it has handled."
    ),
    "replication_connection_handled_lag_tokens": (
        "Tokens between a stream's head and the position the worker last reported handled "
        "(HANDLED, once a second), by peer name and stream (the largest over that name's "
        "connections); absent until a connection has reported."
    ),
    "replication_peer_connects_total": (
        "Connections that completed the handshake, by peer name: more than one means the "
        "worker reconnected."
    ),
    "replication_stream_rows_published_total": "Rows published to a stream since start.",
    "replication_stream_head_token": "The newest committed token of a stream.",
    "replication_stream_oldest_token": (
        "The oldest token a stream retains (head + 1 when it retains none)."
    ),
    "replication_stream_retained_rows": "Rows a stream retains in the store.",
    "replication_stream_live_subscribers": (
        "Connections receiving a stream's rows live (including ALL-streams subscribers)."
    ),
    "replication_stream_rows_sent_live_total": (
        "RDATA rows written to live subscribers: rows x receivers, counted once per publish."
    ),
    "replication_stream_rows_sent_catchup_total": (
        "RDATA rows written to connections catching up from the store."
    ),
}
#: A master's metrics of its cluster: families without samples on a master that is not
#: one of a cluster. ``peer`` is the entry of cluster.peers (an endpoint: bounded by the
#: configuration) on the dialling side, the peer's name (bounded like every peer name) on
#: the serving side.
CLUSTER_METRICS: dict[str, str] = {
    "replication_peer_link_state": (
        "1 for the state each entry of cluster.peers is in, 0 for the others, by peer (the "
        "entry's endpoint, bounded by the configuration) and state (stopped, connecting, "
        "connected, backing_off, self, conflict, diverged)."
    ),
    "replication_peer_link_since_seconds": (
        "When the link of each entry of cluster.peers (by endpoint) took its current state, "
        "in seconds since the epoch."
    ),
    "replication_peer_rows_received_total": (
        "Rows received from each entry of cluster.peers (by endpoint), repairs included."
    ),
    "replication_peer_bytes_received_total": (
        "JSON bytes of the rows received from each entry of cluster.peers (by endpoint)."
    ),
    "replication_peer_repair_rows_total": (
        "Rows of other origins received from each entry of cluster.peers (by endpoint) "
        "while it repaired them (their own link was down)."
    ),
    "replication_peer_gaps_total": (
        "GAP lines from each entry of cluster.peers (by endpoint): tokens its retention "
        "dropped before this master had them."
    ),
    "replication_peer_ingest_failures_total": (
        "Store calls that failed to commit rows received from each entry of cluster.peers "
        "(by endpoint); each closes the link."
    ),
    "replication_peer_pending_bytes": (
        "JSON bytes received from each entry of cluster.peers (by endpoint) and not yet "
        "committed; past cluster.max_pending_bytes the link stops reading."
    ),
    "replication_peer_rows_sent_total": (
        "RDATA rows this master served to cluster peers, by the peer's name (its NAME, "
        "bounded like every peer name), connections that closed included."
    ),
    "replication_relayed_rows_total": "RDATA rows this master served to cluster peers.",
    "replication_relays_per_row": (
        "replication_relayed_rows_total divided by the rows published to this master since "
        "start (0 until one was): N-1 in a steady full mesh of N masters; more while peers "
        "catch up or repair through this master."
    ),
    "replication_cluster_repairing_origins": (
        "Origins this master asks of other peers because no link to their own master has "
        "been connected for cluster.repair_after."
    ),
    "replication_ack_confirmed_total": (
        "Publishes that cluster.ack_peers peers confirmed storing (answered 200)."
    ),
    "replication_ack_timeouts_total": (
        "Publishes not confirmed by cluster.ack_peers peers within cluster.ack_timeout "
        "(answered 504; stored here all the same)."
    ),
    "replication_ack_pending": "Publishes waiting for cluster.ack_peers confirmations now.",
}
MASTER_METRICS.update(CLUSTER_METRICS)
WORKER_METRICS: dict[str, str] = {
    **COMMON_METRICS,
    "replication_worker_connected": "1 while the worker is connected to its master, else 0.",
    "replication_worker_reconnects_total": (
        "Connections to the master after the first one that completed the handshake."
    ),
    "replication_worker_position_token": (
        "The last token of a stream the worker handled and recorded (of the master it "
        "follows; with several masters, of the origin its position file is bound to)."
    ),
    "replication_worker_head_token": (
        "The newest token of a stream the master has shown (in RDATA or POSITION), of the "
        "same origin as replication_worker_position_token."
    ),
    "replication_worker_lag_tokens": (
        "Tokens between the master's head (as last learned from RDATA and POSITION) and the "
        "worker's recorded position, summed over every origin of the stream."
    ),
    "replication_worker_tokens_handled_total": (
        "Handler calls that succeeded, by stream: one per token (a GAP or RESET passed to "
        "the handler counts as one too)."
    ),
    "replication_worker_handler_errors_total": "Handler calls that raised or failed, by stream.",
    "replication_worker_handler_duration_seconds": (
        "Time of each handler call, by stream (until its Deferred or coroutine finished), "
        "failures included."
    ),
}


def reason_label(reason: str) -> str:
    """A close reason (``"failed to keep up"``) as a label value (``failed_to_keep_up``)."""
    return reason.replace(" ", "_")


class _CommandTotals:
    """Commands of connections that ended, by ``(command, peer label)``, plus those of open
    connections read at scrape time: together a counter that only grows."""

    def __init__(self) -> None:
        self.received: dict[tuple[str, str], int] = {}
        self.sent: dict[tuple[str, str], int] = {}

    def fold(self, connection: ReplicationProtocol, label: str) -> None:
        received, sent = connection.command_counts()
        add_counts(self.received, received, label)
        add_counts(self.sent, sent, label)

    def families(
        self, open_connections: Iterable[tuple[ReplicationProtocol, str]]
    ) -> Iterator[Metric]:
        received, sent = dict(self.received), dict(self.sent)
        for connection, label in open_connections:
            live_received, live_sent = connection.command_counts()
            add_counts(received, live_received, label)
            add_counts(sent, live_sent, label)
        yield from command_families(received, sent)


def command_families(
    received: dict[tuple[str, str], int], sent: dict[tuple[str, str], int]
) -> Iterator[Metric]:
    """The two command counters, from totals by ``(command, peer label)``."""
    for name, values in (("received", received), ("sent", sent)):
        full = f"replication_commands_{name}_total"
        family = CounterMetricFamily(full, COMMON_METRICS[full], labels=["command", "peer"])
        for (command, peer), value in sorted(values.items()):
            family.add_metric([command, peer], value)
        yield family


#: The standard process metrics of :func:`process_registry` (prometheus_client's
#: ``ProcessCollector``; read from ``/proc``, so only on Linux).
PROCESS_METRICS: dict[str, str] = {
    "process_cpu_seconds_total": "Total user and system CPU time spent, in seconds.",
    "process_open_fds": "Number of open file descriptors.",
    "process_max_fds": "Maximum number of open file descriptors.",
    "process_virtual_memory_bytes": "Virtual memory size in bytes.",
    "process_resident_memory_bytes": "Resident memory size in bytes.",
    "process_start_time_seconds": "Start time of the process since the epoch, in seconds.",
}


def process_registry() -> CollectorRegistry:
    """A new registry for a process's entry point, with the standard ``process_*`` metrics
    (:data:`PROCESS_METRICS`) of the running process registered on it (never on
    prometheus_client's global registry)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return registry


def _registry(registry: CollectorRegistry | None) -> CollectorRegistry:
    return registry if registry is not None else CollectorRegistry()


def _gauge(name: str, helps: dict[str, str], labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, helps[name], labels=labels)


def _counter(
    name: str, helps: dict[str, str], labels: list[str] | None = None
) -> CounterMetricFamily:
    return CounterMetricFamily(name, helps[name], labels=labels)


class MasterMetrics:
    """A master's metrics, collected from its :class:`~replication.snapshot.MasterSnapshot`
    when scraped.

    :param registry: the process's registry; ``None``: a new private one.

    The master calls :meth:`bind` once with its ``snapshot`` method. Label values are
    bounded where the snapshot is made (peer labels: ``metrics.max_peer_labels``).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = _registry(registry)
        self._snapshot: Callable[[], MasterSnapshot] | None = None

    def bind(self, snapshot: Callable[[], MasterSnapshot]) -> None:
        """Collect from ``snapshot()`` when the registry is scraped."""
        if self._snapshot is not None:
            raise ValueError("these MasterMetrics already observe a master")
        self._snapshot = snapshot
        self.registry.register(self)

    # -- scrape ------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        if self._snapshot is None:
            return
        view = self._snapshot()
        info = _gauge("replication_info", MASTER_METRICS, ["role", "name", "version", "origin"])
        info.add_metric(["master", view.server_name, __version__, view.origin_id or ""], 1)
        yield info
        started = _gauge("replication_start_time_seconds", MASTER_METRICS)
        started.add_metric([], view.started_at)
        yield started
        received, sent = dict(view.closed_received), dict(view.closed_sent)
        for connection in view.connections:
            add_counts(received, connection.commands_received, connection.label)
            add_counts(sent, connection.commands_sent, connection.label)
        yield from command_families(received, sent)

        disconnects = _counter("replication_disconnects_total", MASTER_METRICS, ["reason", "peer"])
        connects = _counter("replication_peer_connects_total", MASTER_METRICS, ["peer"])
        for peer in view.peers:
            connects.add_metric([peer.label], peer.connects)
            for reason, n in sorted(peer.disconnects.items()):
                disconnects.add_metric([reason_label(reason), peer.label], n)
        yield disconnects
        yield connects

        open_ = _gauge("replication_connections_open", MASTER_METRICS)
        open_.add_metric([], len(view.connections))
        yield open_
        yield from _dialect_families(view)
        yield from _history_families(view)
        buffered_by_peer: dict[str, int] = {}
        lag: dict[tuple[str, str], int] = {}
        handled_lag: dict[tuple[str, str], int] = {}
        for connection in view.connections:
            label = connection.label
            buffered_by_peer[label] = buffered_by_peer.get(label, 0) + connection.buffered_bytes
            for follow in connection.streams:
                key = (label, follow.name)
                lag[key] = max(lag.get(key, 0), follow.lag)
                if follow.handled_lag is not None:
                    handled_lag[key] = max(handled_lag.get(key, 0), follow.handled_lag)
        buffered = _gauge("replication_connection_buffered_bytes", MASTER_METRICS, ["peer"])
        for label, n in sorted(buffered_by_peer.items()):
            buffered.add_metric([label], n)
        yield buffered
        limit = _gauge("replication_connection_buffer_limit_bytes", MASTER_METRICS)
        limit.add_metric([], view.max_buffer_bytes)
        yield limit
        lag_family = _gauge("replication_connection_lag_tokens", MASTER_METRICS, ["peer", "stream"])
        for (label, stream), n in sorted(lag.items()):
            lag_family.add_metric([label, stream], n)
        yield lag_family
        handled_family = _gauge(
            "replication_connection_handled_lag_tokens", MASTER_METRICS, ["peer", "stream"]
        )
        for (label, stream), n in sorted(handled_lag.items()):
            handled_family.add_metric([label, stream], n)
        yield handled_family

        yield from _stream_families(view)
        yield from _cluster_families(view)


#: The values of the ``role`` label of ``replication_connections_by_role``.
ROLES = ("worker", "publisher", "peer")
#: The values of the ``transport`` label of ``replication_publishes_total``.
TRANSPORTS = ("http", "replication")


def _dialect_families(view: MasterSnapshot) -> Iterator[Metric]:
    """Connections by dialect (every known dialect, zeros included: a fixed label set) and
    the POSITION lines sent to legacy workers in place of GAP and RESET."""
    by_dialect = dict.fromkeys(DIALECTS, 0)
    for connection in view.connections:
        if connection.peer_name is not None and connection.dialect in by_dialect:
            by_dialect[connection.dialect] += 1
    dialects = _gauge("replication_connections_by_dialect", MASTER_METRICS, ["dialect"])
    for name, n in by_dialect.items():
        dialects.add_metric([name], n)
    yield dialects
    by_role = dict.fromkeys(ROLES, 0)
    for connection in view.connections:
        if connection.peer_name is not None and connection.role in by_role:
            by_role[connection.role] += 1
    roles = _gauge("replication_connections_by_role", MASTER_METRICS, ["role"])
    for name, n in by_role.items():
        roles.add_metric([name], n)
    yield roles
    publishes = _counter("replication_publishes_total", MASTER_METRICS, ["transport"])
    for transport in TRANSPORTS:
        publishes.add_metric([transport], view.publishes.get(transport, 0))
    yield publishes
    failures = _counter("replication_auth_failures_total", MASTER_METRICS, ["transport"])
    for transport in TRANSPORTS:
        failures.add_metric([transport], view.auth_failures.get(transport, 0))
    yield failures
    substitutions = _counter(
        "replication_legacy_substitutions_total", MASTER_METRICS, ["command"]
    )
    for command in ("GAP", "RESET"):
        substitutions.add_metric([command], view.legacy_substitutions.get(command, 0))
    yield substitutions


def _history_families(view: MasterSnapshot) -> Iterator[Metric]:
    """Damaged tokens found in the store and followers that were ahead of the head."""
    damaged = _counter("replication_store_damaged_tokens_total", MASTER_METRICS)
    damaged.add_metric([], view.damaged_tokens)
    yield damaged
    ahead = _counter("replication_followers_ahead_total", MASTER_METRICS)
    ahead.add_metric([], view.followers_ahead)
    yield ahead


def _cluster_families(view: MasterSnapshot) -> Iterator[Metric]:
    """The links to the cluster's peers, the rows served to them, repairs and acks; every
    family is there, without samples on a master that is not clustered."""
    cluster = view.cluster
    state = _gauge("replication_peer_link_state", CLUSTER_METRICS, ["peer", "state"])
    since = _gauge("replication_peer_link_since_seconds", CLUSTER_METRICS, ["peer"])
    per_link = [
        (_counter(name, CLUSTER_METRICS, ["peer"]), attribute)
        for name, attribute in (
            ("replication_peer_rows_received_total", "rows_received"),
            ("replication_peer_bytes_received_total", "bytes_received"),
            ("replication_peer_repair_rows_total", "repair_rows"),
            ("replication_peer_gaps_total", "gaps"),
            ("replication_peer_ingest_failures_total", "ingest_failures"),
        )
    ]
    pending = _gauge("replication_peer_pending_bytes", CLUSTER_METRICS, ["peer"])
    sent = _counter("replication_peer_rows_sent_total", CLUSTER_METRICS, ["peer"])
    relayed = _counter("replication_relayed_rows_total", CLUSTER_METRICS)
    relays = _gauge("replication_relays_per_row", CLUSTER_METRICS)
    repairing = _gauge("replication_cluster_repairing_origins", CLUSTER_METRICS)
    confirmed = _counter("replication_ack_confirmed_total", CLUSTER_METRICS)
    timeouts = _counter("replication_ack_timeouts_total", CLUSTER_METRICS)
    waiting = _gauge("replication_ack_pending", CLUSTER_METRICS)
    if cluster is not None:
        for link in cluster.links:
            for name in LINK_STATES:
                state.add_metric(
                    [link.endpoint, name.replace(" ", "_")], 1 if link.state == name else 0
                )
            since.add_metric([link.endpoint], link.since)
            for family, attribute in per_link:
                family.add_metric([link.endpoint], getattr(link, attribute))
            pending.add_metric([link.endpoint], link.pending_bytes)
        for label, n in cluster.rows_sent.items():
            sent.add_metric([label], n)
        relayed.add_metric([], cluster.relayed_rows)
        relays.add_metric([], cluster.relays_per_row or 0.0)
        repairing.add_metric([], len(cluster.repairing))
        confirmed.add_metric([], cluster.acks_confirmed)
        timeouts.add_metric([], cluster.acks_timed_out)
        waiting.add_metric([], cluster.acks_pending)
    yield state
    yield since
    for family, _ in per_link:
        yield family
    yield from (pending, sent, relayed, relays, repairing, confirmed, timeouts, waiting)


def _stream_families(view: MasterSnapshot) -> Iterator[Metric]:
    names = (
        "replication_stream_rows_published_total",
        "replication_stream_head_token",
        "replication_stream_oldest_token",
        "replication_stream_retained_rows",
        "replication_stream_live_subscribers",
        "replication_stream_rows_sent_live_total",
        "replication_stream_rows_sent_catchup_total",
    )
    families = [
        (_counter if name.endswith("_total") else _gauge)(
            name, MASTER_METRICS, ["stream", "origin"]
        )
        for name in names
    ]
    for stream in view.streams:
        labels = [stream.name, view.origin_name(stream.origin)]
        values = (
            stream.rows_published, stream.head, stream.oldest, stream.retained_rows,
            stream.live_subscribers, stream.rows_sent_live, stream.rows_sent_catchup,
        )
        for family, value in zip(families, values, strict=True):
            family.add_metric(labels, value)
    yield from families


class _StreamStats:
    __slots__ = ("handled", "errors", "buckets", "seconds")

    def __init__(self) -> None:
        self.handled = 0
        self.errors = 0
        self.buckets = [0] * (len(HANDLER_BUCKETS) + 1)
        self.seconds = 0.0


class WorkerMetrics:
    """A worker's metrics, collected from the worker it is bound to when scraped.

    :param registry: the process's registry; ``None``: a new private one.

    The worker calls :meth:`bind` once; its connections call :meth:`connected` after each
    handshake and :meth:`connection_closed` when one ends; its token runner calls
    :meth:`handler_done` or :meth:`handler_failed` after each handler call (a few integer
    operations: this is on the per-token path).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = _registry(registry)
        self.peer_label = PeerLabels(WORKER_PEER_LABELS)
        self.connects = 0
        #: Disconnects by ``(reason, master label)``.
        self.disconnects: dict[tuple[str, str], int] = {}
        self._streams: dict[str, _StreamStats] = {}
        self._commands = _CommandTotals()
        self._worker: Worker | None = None

    def bind(self, worker: Worker) -> None:
        """Collect from ``worker`` when the registry is scraped."""
        if self._worker is not None:
            raise ValueError("these WorkerMetrics already observe a worker")
        self._worker = worker
        self.registry.register(self)

    # -- called by the worker ----------------------------------------------------------

    def connected(self, connection: ReplicationProtocol) -> None:
        self.connects += 1

    def connection_closed(self, connection: ReplicationProtocol, reason: str) -> None:
        label = self.peer_label(connection.peer_name)
        self._commands.fold(connection, label)
        key = (reason, label)
        self.disconnects[key] = self.disconnects.get(key, 0) + 1

    def handler_done(self, stream: str, seconds: float) -> None:
        stats = self._streams.get(stream)
        if stats is None:
            stats = self._new_stream(stream)
        stats.handled += 1
        stats.seconds += seconds
        if seconds <= _FIRST_BUCKET:  # most calls: skip the search
            stats.buckets[0] += 1
        else:
            stats.buckets[_bisect_left(HANDLER_BUCKETS, seconds)] += 1

    def handlers_done(self, stream: str, times: list[float]) -> None:
        """:meth:`handler_done` for several calls that took ``times`` seconds each."""
        stats = self._streams.get(stream)
        if stats is None:
            stats = self._new_stream(stream)
        stats.handled += len(times)
        stats.seconds += sum(times)
        buckets = stats.buckets
        for seconds in times:
            if seconds <= _FIRST_BUCKET:
                buckets[0] += 1
            else:
                buckets[_bisect_left(HANDLER_BUCKETS, seconds)] += 1

    def handler_failed(self, stream: str, seconds: float) -> None:
        stats = self._streams.get(stream)
        if stats is None:
            stats = self._new_stream(stream)
        stats.errors += 1
        stats.seconds += seconds
        stats.buckets[_bisect_left(HANDLER_BUCKETS, seconds)] += 1

    def _new_stream(self, stream: str) -> _StreamStats:
        stats = self._streams[stream] = _StreamStats()
        return stats

    # -- scrape ------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        worker = self._worker
        if worker is None:
            return
        connection = worker.connection
        info = _gauge("replication_info", WORKER_METRICS, ["role", "name", "version"])
        info.add_metric(["worker", worker.config.name, __version__], 1)
        yield info
        live = [(connection, self.peer_label(connection.peer_name))] if connection else []
        yield from self._commands.families(live)
        disconnects = _counter("replication_disconnects_total", WORKER_METRICS, ["reason", "peer"])
        for (reason, label), n in sorted(self.disconnects.items()):
            disconnects.add_metric([reason_label(reason), label], n)
        yield disconnects
        connected = _gauge("replication_worker_connected", WORKER_METRICS)
        connected.add_metric([], 1 if connection is not None else 0)
        yield connected
        reconnects = _counter("replication_worker_reconnects_total", WORKER_METRICS)
        reconnects.add_metric([], max(self.connects - 1, 0))
        yield reconnects

        position = _gauge("replication_worker_position_token", WORKER_METRICS, ["stream"])
        head = _gauge("replication_worker_head_token", WORKER_METRICS, ["stream"])
        lag = _gauge("replication_worker_lag_tokens", WORKER_METRICS, ["stream"])
        runner = worker.runner  # positions and heads outlive connections there
        bound_origin = worker.local_origin  # the origin of the master it followed alone
        for stream in worker.streams:
            recorded = runner.positions.get(stream)
            if recorded is not None:
                position.add_metric([stream], recorded)
            known = runner.heads.get(stream)
            if known is None and bound_origin is not None:
                known = runner.heads.get(qualify(stream, bound_origin))
            if known is not None:
                head.add_metric([stream], known)
            behind = runner.lag(stream)
            if behind is not None:
                lag.add_metric([stream], behind)
        yield position
        yield head
        yield lag

        handled = _counter("replication_worker_tokens_handled_total", WORKER_METRICS, ["stream"])
        errors = _counter("replication_worker_handler_errors_total", WORKER_METRICS, ["stream"])
        duration = HistogramMetricFamily(
            "replication_worker_handler_duration_seconds",
            WORKER_METRICS["replication_worker_handler_duration_seconds"],
            labels=["stream"],
        )
        for stream, stats in sorted(self._streams.items()):
            handled.add_metric([stream], stats.handled)
            errors.add_metric([stream], stats.errors)
            cumulative, buckets = 0, []
            for bound, n in zip((*HANDLER_BUCKETS, float("inf")), stats.buckets, strict=True):
                cumulative += n
                le = floatToGoString(bound)  # type: ignore[no-untyped-call]
                buckets.append((le, cumulative))
            duration.add_metric([stream], buckets, sum_value=stats.seconds)
        yield handled
        yield errors
        yield duration
