# twisted.application.service has no annotations:
# mypy: disable-error-code="no-untyped-call"
"""The worker's lasting state and its service.

:class:`Worker` holds what outlives a connection: the configuration, the metrics and the
:class:`~replication.worker.runner.TokenRunner` (handler, positions, retries).
:func:`worker_service` keeps it connected to its master (Twisted's ``ClientService``, waiting
between attempts as :class:`ReconnectBackoff` says, its connects and reconnects logged by
:class:`~replication.worker.reporting.ConnectionReporter`) and syncs its positions to disk every
second; it logs the positions it stopped at.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any, Final

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall

from replication import __version__
from replication.config import ReconnectConfig, WorkerConfig
from replication.metrics import WorkerMetrics
from replication.ratelimit import LogRateLimiter
from replication.services import ListeningService, OrderedMultiService
from replication.wire.commands import CommandRegistry, ReplicateCommand, default_registry
from replication.wire.protocol import ReplicationProtocol
from replication.worker.connection import WorkerConnection, WorkerFactory
from replication.worker.handlers import Handler
from replication.worker.positions import Positions
from replication.worker.reporting import CatchupReporter, ConnectionReporter
from replication.worker.runner import TokenRunner

log = logging.getLogger(__name__)

#: How fast the reconnection delay grows, per failed attempt or short connection.
BACKOFF_FACTOR: Final = 2.0
#: Short connections counted at most (the delay is long capped by then).
_MAX_SHORT_CONNECTIONS: Final = 100


class ReconnectBackoff:
    """The wait before each attempt to reach the master: ``ClientService``'s retry policy.

    ``ClientService`` calls it with the number of attempts that failed in a row since the
    last connection was *made*, so after any connection, however short, the wait falls back
    to its minimum: a master that refuses the worker right after a catch-up (an ``ERROR``
    for a command it does not know, say) would be dialled again after the least wait,
    forever. Here a connection is *healthy* only if it lasted at least ``healthy_after``
    seconds (from connect to close); each shorter one adds one to a run of short
    connections, which counts like failed attempts, so the delay keeps doubling up to
    ``max_delay``. A healthy connection ends the run.

    :param initial_delay: the least wait, in seconds (``reconnect.initial_delay``).
    :param max_delay: the longest wait before jitter (``reconnect.max_delay``).
    :param healthy_after: seconds a connection must last to count as healthy
        (``reconnect.healthy_after``).
    :param jitter: seconds added to each wait (a random fraction of ``initial_delay`` by
        default), so that workers cut off together do not reconnect together.
    """

    def __init__(
        self,
        initial_delay: float,
        max_delay: float,
        healthy_after: float,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        self.healthy_after = healthy_after
        if jitter is None:
            def jitter() -> float:
                return random.uniform(0, initial_delay)
        self._policy = backoffPolicy(
            initialDelay=initial_delay, maxDelay=max_delay, factor=BACKOFF_FACTOR,
            jitter=jitter,
        )
        #: Connections in a row that ended before ``healthy_after`` seconds.
        self.short_connections = 0

    @classmethod
    def from_config(cls, config: ReconnectConfig) -> ReconnectBackoff:
        return cls(config.initial_delay, config.max_delay, config.healthy_after)

    def __call__(self, attempt: int) -> float:
        """Seconds to wait before the next attempt, after ``attempt`` failed in a row."""
        return float(self._policy(attempt + self.short_connections))

    def connection_ended(self, lasted: float) -> None:
        """A connection that was made has ended after ``lasted`` seconds."""
        if lasted >= self.healthy_after:
            self.short_connections = 0
        elif self.short_connections < _MAX_SHORT_CONNECTIONS:
            self.short_connections += 1


class Worker:
    """A worker's lasting state: configuration, metrics, the token runner (with the handler
    and the positions) and the current connection.

    :param config: the worker's configuration.
    :param handler: called as ``handler(stream, token, rows)``; see
        :mod:`replication.worker.handlers`.
    :param positions: where handled positions are recorded.
    :param clock: time for keepalive and handler retries.
    :param registry: the commands connections understand.
    :param metrics: where this worker's metrics are collected (built by the entry point
        around its registry); ``None``: a private registry (``worker.metrics.registry``).
    """

    def __init__(
        self,
        config: WorkerConfig,
        handler: Handler,
        positions: Positions,
        clock: IReactorTime,
        *,
        registry: CommandRegistry | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.registry = registry if registry is not None else default_registry()
        self.streams = {s.name: s for s in config.streams}
        self.connection: WorkerConnection | None = None
        self.metrics = metrics if metrics is not None else WorkerMetrics()
        self.runner = TokenRunner(
            handler, positions, clock, self.metrics,
            max_retry_delay=config.handler_retry_max_delay,
        )
        self.metrics.bind(self)
        #: Logs the progress of streams catching up (driven by the connection).
        self.catchup = CatchupReporter(
            clock, self.runner.positions.get, self.runner.heads.get
        )
        #: The wait between attempts to reach the master (see :class:`ReconnectBackoff`);
        #: told by each connection how long it lasted.
        self.backoff = ReconnectBackoff.from_config(config.reconnect)
        #: Repeated identical warnings (the master's lines for a stream this worker does not
        #: follow) are logged at most once a minute per stream and command.
        self.warnings = LogRateLimiter()

    @property
    def handler(self) -> Handler:
        return self.runner.handler

    @property
    def positions(self) -> Positions:
        return self.runner.positions

    @property
    def heads(self) -> dict[str, int]:
        """The newest head the master has shown, per stream (from RDATA and POSITION)."""
        return self.runner.heads

    @property
    def busy(self) -> bool:
        """True while a handler call that returned an awaitable has not finished, even if
        the connection it came from is gone."""
        return self.runner.busy

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once no handler call is in flight."""
        self.runner.when_idle(callback)

    def factory(self) -> Factory:
        return WorkerFactory(self)

    def replicate_commands(self) -> list[ReplicateCommand]:
        """The ``REPLICATE`` lines a new connection sends, one per configured stream."""
        commands = []
        for stream in self.config.streams:
            position = self.positions.get(stream.name)
            if position is None:
                position = 0 if stream.start == "earliest" else None
            commands.append(ReplicateCommand(stream.name, position))
        return commands

    def lag(self, stream: str) -> int | None:
        """Tokens between this worker's position and the master's last known head."""
        return self.runner.lag(stream)

    def health(self) -> dict[str, Any]:
        """The worker's ``GET /health`` document: ``status`` (``ok`` while the process
        serves, connected or not), ``version``, its ``name``, whether it is ``connected``
        and the ``master``'s server name (``null`` while not connected)."""
        connection = self.connection
        return {
            "status": "ok",
            "version": __version__,
            "name": self.config.name,
            "connected": connection is not None,
            "master": connection.peer_name if connection is not None else None,
        }


#: Seconds between fsyncs of the position file. Each handled token is appended to the file
#: at once (safe if the process dies); only a power cut can lose up to this much, which is
#: then handled again. An fsync can take milliseconds, so it is kept off the per-read path.
POSITION_SYNC_INTERVAL = 1.0


class PositionSyncService(Service):
    """Syncs ``positions`` every ``interval`` seconds of ``clock`` (the first one an
    interval after the start), and once more when it stops."""

    def __init__(self, positions: Positions, clock: IReactorTime,
                 interval: float = POSITION_SYNC_INTERVAL) -> None:
        self.positions = positions
        self.interval = interval
        self._loop = LoopingCall(positions.sync)
        self._loop.clock = clock

    def startService(self) -> None:
        Service.startService(self)
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        Service.stopService(self)
        if self._loop.running:
            self._loop.stop()
        self.positions.sync()


class WorkerService(OrderedMultiService):
    """The worker's services, started in this order and stopped in reverse:

    1. ``metrics`` (when configured, :class:`ListeningService`): ``/metrics`` of the
       worker's registry and ``/health`` (:meth:`Worker.health`);
    2. ``positions`` (:class:`PositionSyncService`): syncs the position file every
       :data:`POSITION_SYNC_INTERVAL` seconds, and once more after the connection closed;
    3. ``connection`` (Twisted's ``ClientService``): keeps the worker connected to its
       master, reconnecting with backoff.
    """

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker

    @property
    def connection(self) -> ClientService:
        connection: ClientService = self.getServiceNamed("connection")
        return connection

    def when_listening(self) -> Deferred[None]:
        """Fires once the worker's listener listens (at once when there is none); fails if
        it cannot. Ask after :meth:`startService`."""
        try:
            metrics: ListeningService = self.getServiceNamed("metrics")
        except KeyError:
            return succeed(None)
        return metrics.when_listening().addCallback(lambda _: None)

    def stopService(self) -> Deferred[None]:
        """Close the connection to the master through the protocol (gracefully, aborted
        after ``keepalive.close_timeout``), stop every child (in reverse), then log the
        positions the worker stopped at.

        ``ClientService`` stopping would call the transport's ``loseConnection()`` itself,
        bypassing the protocol: over TLS that close waits for the protocol to stop
        producing, which it never does, and has no abort timer, so the worker hung on
        SIGTERM. The protocol's close does both."""
        worker = self.worker
        if self.running:
            # Fires now with the connection's protocol when connected (the handshake done or
            # not); otherwise fails with CancelledError once the ClientService stops.
            self.connection.whenConnected().addCallbacks(_close, lambda _: None)

        def stopped(_: None) -> None:
            recorded = {s.name: worker.positions.get(s.name) for s in worker.config.streams}
            at = ", ".join(
                f"{name} at {'no position' if token is None else token}"
                for name, token in recorded.items()
            )
            log.info("worker %s stopped; positions recorded: %s", worker.config.name, at)

        return super().stopService().addCallback(stopped)


def _close(connection: object) -> None:
    if isinstance(connection, ReplicationProtocol):
        connection.close()


def worker_service(
    worker: Worker,
    endpoint: IStreamClientEndpoint,
    clock: IReactorTime,
    *,
    metrics_endpoint: IStreamServerEndpoint | None = None,
) -> WorkerService:
    """The worker's service tree (see :class:`WorkerService`): ``worker`` connected to its
    master at ``endpoint``, reconnecting with exponential backoff and jitter between
    ``reconnect.initial_delay`` and ``reconnect.max_delay`` (``worker.backoff``, where a
    connection shorter than ``reconnect.healthy_after`` counts as failed); its position file
    synced to disk every second; and, with ``metrics_endpoint``, its metrics served there."""
    service = WorkerService(worker)
    if metrics_endpoint is not None:
        from twisted.web.server import Site

        from replication.admin import metrics_resource

        site = Site(metrics_resource(worker.metrics.registry, health=worker.health))
        site.noisy = False
        metrics = ListeningService(metrics_endpoint, site, "metrics")
        metrics.setName("metrics")
        metrics.setServiceParent(service)
    positions = PositionSyncService(worker.positions, clock)
    positions.setName("positions")
    positions.setServiceParent(service)
    reporter = ConnectionReporter(worker.config.master, clock)
    connection = ClientService(
        reporter.endpoint(endpoint), worker.factory(),
        retryPolicy=reporter.retry_policy(worker.backoff), clock=clock,
    )
    connection.setName("connection")
    connection.setServiceParent(service)
    return service
