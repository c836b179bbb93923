# twisted.application.service has no annotations:
# mypy: disable-error-code="no-untyped-call"
"""The worker's lasting state and its service.

:class:`Worker` holds what outlives a connection: the configuration, the metrics and the
:class:`~replication.worker.runner.TokenRunner` (handler, positions, retries).
:func:`worker_service` keeps it connected to its master (Twisted's ``ClientService``, waiting
between attempts as :class:`ReconnectBackoff` says, its connects and reconnects logged by
:class:`~replication.worker.reporting.ConnectionReporter`) and syncs its positions to disk every
second; it logs the positions it stopped at. With several masters (``master`` a list: the
masters of one cluster), :class:`MasterRotation` picks which one each attempt dials
(:class:`FailoverEndpoint`): one at random, another at once when the connection drops or
a master cannot be reached, each once per round, and :class:`ReconnectBackoff`'s wait
between rounds.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from typing import Any, Final

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from replication import __version__
from replication.config import ReconnectConfig, WorkerConfig
from replication.credentials import client_credential
from replication.metrics import WorkerMetrics
from replication.ratelimit import LogRateLimiter
from replication.services import ListeningService, OrderedMultiService
from replication.wire.auth import ClientCredential
from replication.wire.commands import (
    ALL_STREAMS,
    MAX_VECTOR_ORIGINS,
    ORIGIN_SEPARATOR,
    CommandRegistry,
    ReplicateCommand,
    default_registry,
)
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
        #: Seconds of noise: also the whole wait before trying the next master of a round.
        self.jitter = jitter
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


class MasterRotation:
    """Which master each attempt dials, when a worker has several (pure; the shuffle is
    passed in).

    A *round* is a random order of the masters, each once; :meth:`next` takes the next one,
    starting a new round when the last is over (the master dialled last is put at the end
    of the new round, so that the worker moves on). After a connection that was healthy
    (see :class:`ReconnectBackoff`) is lost, a new round of the *other* masters begins: the
    worker moves to another master at once. :meth:`delay` is the ``ClientService`` retry
    policy: only the backoff's jitter while the round has masters left, and the backoff's
    wait (counting failed rounds) once a round is over. With one master every round is
    one attempt, which is exactly the backoff of a worker without a rotation.

    :param masters: the endpoint descriptions, in configuration order.
    :param backoff: the worker's :class:`ReconnectBackoff`.
    :param shuffle: shuffles a list in place (``random.shuffle``).
    """

    def __init__(
        self,
        masters: tuple[str, ...],
        backoff: ReconnectBackoff,
        shuffle: Callable[[list[str]], None] = random.shuffle,
    ) -> None:
        if not masters:
            raise ValueError("a worker needs at least one master")
        self.masters = masters
        self.backoff = backoff
        self._shuffle = shuffle
        self._left: list[str] = []
        #: The master dialled last (``None`` before the first attempt).
        self.current: str | None = None
        #: Rounds over in a row without a connection (what the backoff counts).
        self.failed_rounds = 0
        self._connected = False

    @property
    def left(self) -> tuple[str, ...]:
        """The masters of this round not dialled yet, in order."""
        return tuple(self._left)

    def next(self) -> str:
        """The master to dial now."""
        if not self._left:
            self._left = self._round(self.masters)
        self.current = self._left.pop(0)
        return self.current

    def _round(self, masters: tuple[str, ...]) -> list[str]:
        order = list(masters)
        self._shuffle(order)
        if len(order) > 1 and order[0] == self.current:
            order.append(order.pop(0))
        return order

    def connected(self) -> None:
        """The master dialled last was reached."""
        self._connected = True
        self.failed_rounds = 0

    def delay(self, attempt: int) -> float:
        """Seconds before the next attempt (``ClientService``'s retry policy, called after
        a failed connect or a lost connection; ``attempt`` is ignored)."""
        lost, self._connected = self._connected, False
        if lost and self.backoff.short_connections == 0:
            # A healthy connection ended: a new round of the others, the first one at once.
            self._left = self._round(tuple(m for m in self.masters if m != self.current))
        if self._left:
            return self.backoff.jitter()
        self.failed_rounds += 1
        return self.backoff(self.failed_rounds)


@implementer(IStreamClientEndpoint)
class FailoverEndpoint:
    """An endpoint that dials the master :class:`MasterRotation` picks, of ``endpoints`` (by
    description), and tells ``worker`` which one it is (``worker.endpoint_description``)."""

    def __init__(
        self,
        endpoints: Mapping[str, IStreamClientEndpoint],
        rotation: MasterRotation,
        worker: Worker | None = None,
        on_dial: Callable[[str], None] | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.rotation = rotation
        self.worker = worker
        self.on_dial = on_dial

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        rotation = self.rotation
        description = rotation.next()
        if self.worker is not None:
            self.worker.endpoint_description = description
        if self.on_dial is not None:
            self.on_dial(description)
        if len(rotation.masters) > 1:
            log.info("dialling master %s (%d more to try this round)", description,
                     len(rotation.left))
        d: Deferred[Any] = self.endpoints[description].connect(protocolFactory)

        def connected(protocol: Any) -> Any:
            rotation.connected()
            return protocol

        return d.addCallback(connected)


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
        credential: ClientCredential | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        #: What the worker authenticates with: ``credential``, else ``auth`` of ``config``
        #: (its secret read now: :class:`~replication.credentials.SecretError` if it cannot
        #: be), else nothing.
        self.credential = (
            credential if credential is not None else client_credential(config.auth)
        )
        #: The endpoint descriptions of the masters this worker may follow.
        self.masters = config.masters
        #: The endpoint description of the master dialled last (or followed now).
        self.endpoint_description: str | None = self.masters[0] if self.masters else None
        #: The origin id local positions are bound to, when ``positions`` cannot record it.
        self._local_origin: str | None = None
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
        self.catchup = CatchupReporter(clock, self._position_of, self.runner.heads.get)
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

    def _position_of(self, key: str) -> int | None:
        """The recorded position of ``<stream>`` or ``<stream>@<origin>``."""
        stream, _, origin = key.partition(ORIGIN_SEPARATOR)
        return self.positions.get(stream, origin or None)

    def replicate_vectors(self) -> list[ReplicateCommand]:
        """The ``REPLICATE`` lines a new connection of protocol version 2 sends, one per
        configured stream: the position vector recorded (``-`` when empty), or ``NOW`` for
        a ``from: latest`` stream never seen. Raises ``ValueError`` for a stream with
        positions of more origins than a vector holds."""
        commands = []
        positions = self.positions
        for stream in self.config.streams:
            if stream.name == ALL_STREAMS:  # REPLICATE ALL NOW: every stream, live
                commands.append(ReplicateCommand(ALL_STREAMS, None))
                continue
            vector = sorted(
                (origin, token) for origin, token in positions.vector(stream.name).items()
                if origin is not None
            )
            if not vector and stream.start == "latest" and positions.get(stream.name) is None:
                commands.append(ReplicateCommand(stream.name, None))
                continue
            if len(vector) > MAX_VECTOR_ORIGINS:
                raise ValueError(
                    f"{stream.name} has positions of {len(vector)} origins, more than a "
                    f"position vector holds ({MAX_VECTOR_ORIGINS})"
                )
            commands.append(ReplicateCommand(stream.name, None, tuple(vector)))
        return commands

    @property
    def local_origin(self) -> str | None:
        """The origin id the positions recorded without an origin (under protocol versions
        1 and legacy) belong to, once bound; ``None`` before."""
        bound = getattr(self.positions, "local_origin", None)
        return bound if isinstance(bound, str) else self._local_origin

    def adopt_local_positions(self, origin: str, master: str) -> bool:
        """A master of protocol version 2, ``master``, named itself origin ``origin``:
        apply the rule for positions recorded without an origin (see
        :mod:`replication.worker.connection`). Returns ``False`` when the connection must
        not go on (unbound local positions and several masters: nothing is guessed).

        A worker that follows one master alone binds its local positions to that master's
        origin the first time (recorded in the position file): from then on they are that
        origin's, and a worker of one master keeps one position per stream, as before
        origins. A worker given several masters binds nothing; its local positions, if it
        has any, must have been bound while it followed their master alone."""
        positions = self.positions
        bound = self.local_origin
        if bound is not None:
            return True
        local = {
            s.name: token for s in self.config.streams
            if (token := positions.get(s.name)) is not None
        }
        if len(self.masters) > 1:
            if not local:
                return True
            log.error(
                "the position file holds positions recorded before protocol version 2 "
                "(%s) of a master whose origin id it does not know, and this worker "
                "follows %d masters: it will not guess which one recorded them (applied "
                "to the wrong origin, they would skip its rows). Follow that master "
                "alone (one master endpoint) until it has connected once, or move the "
                "position file aside to start over; closing the connection to %s and "
                "retrying with backoff.",
                _positions_text(local), len(self.masters), master,
            )
            return False
        bind = getattr(positions, "bind_local_origin", None)
        if bind is None:
            self._local_origin = origin
            log.warning(
                "these positions cannot record which origin their local positions belong "
                "to (no bind_local_origin): bound to %s for this process only", origin,
            )
            for stream, token in local.items():  # recorded under the origin from now on
                if positions.get(stream, origin) is None:
                    positions.set(stream, token, origin)
        else:
            bind(origin)
        if local:
            log.warning(
                "positions recorded before protocol version 2 (%s) are those of master %s, "
                "the one master this worker follows: bound to its origin %s",
                _positions_text(local), master, origin,
            )
        else:
            log.info("positions of master %s (origin %s) are kept as this worker's own",
                     master, origin)
        return True

    def lag(self, stream: str) -> int | None:
        """Tokens between this worker's position and the master's last known head."""
        return self.runner.lag(stream)

    def health(self) -> dict[str, Any]:
        """The worker's ``GET /health`` document: ``status`` (``ok`` while the process
        serves, connected or not), ``version``, its ``name``, whether it is ``connected``
        the ``master``'s server name (``null`` while not connected), its ``endpoint`` (the
        endpoint description dialled) and its ``origin`` id (protocol version 2; else
        ``null``)."""
        connection = self.connection
        return {
            "status": "ok",
            "version": __version__,
            "name": self.config.name,
            "connected": connection is not None,
            "master": connection.peer_name if connection is not None else None,
            "endpoint": self.endpoint_description if connection is not None else None,
            "origin": connection.origin if connection is not None else None,
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
            at = ", ".join(
                _recorded(s.name, worker.positions.vector(s.name), worker.local_origin)
                for s in worker.config.streams
            )
            log.info("worker %s stopped; positions recorded: %s", worker.config.name, at)

        return super().stopService().addCallback(stopped)


def _recorded(stream: str, vector: Mapping[str | None, int], bound: str | None = None) -> str:
    """``events at 41`` (the local position: of the master the worker follows alone, whose
    origin is ``bound``), ``events at <origin>:7, <origin>:3`` (per origin, version 2; the
    local one last, if any), ``events at no position``."""
    vector = dict(vector)
    if bound is not None and list(vector) == [bound]:  # one master's: as before origins
        vector = {None: vector[bound]}
    local = vector.get(None)
    parts = [f"{origin}:{token}" for origin, token in sorted(
        (o, t) for o, t in vector.items() if o is not None
    )]
    if not parts:
        return f"{stream} at {'no position' if local is None else local}"
    if local is not None:
        parts.append(f"{local} without an origin")
    return f"{stream} at {', '.join(parts)}"


def _positions_text(positions: Mapping[str, int]) -> str:
    return ", ".join(f"{stream} at {token}" for stream, token in positions.items())


def _close(connection: object) -> None:
    if isinstance(connection, ReplicationProtocol):
        connection.close()


def worker_service(
    worker: Worker,
    endpoint: IStreamClientEndpoint | Mapping[str, IStreamClientEndpoint],
    clock: IReactorTime,
    *,
    metrics_endpoint: IStreamServerEndpoint | None = None,
    shuffle: Callable[[list[str]], None] = random.shuffle,
) -> WorkerService:
    """The worker's service tree (see :class:`WorkerService`): ``worker`` connected to its
    master at ``endpoint``, reconnecting with exponential backoff and jitter between
    ``reconnect.initial_delay`` and ``reconnect.max_delay`` (``worker.backoff``, where a
    connection shorter than ``reconnect.healthy_after`` counts as failed); its position file
    synced to disk every second; and, with ``metrics_endpoint``, its metrics served there.

    ``endpoint`` may also map endpoint descriptions to endpoints (the worker's
    ``master`` list): the worker then moves between them as :class:`MasterRotation` says
    (``shuffle`` orders each round)."""
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
    if isinstance(endpoint, Mapping):
        rotation = MasterRotation(tuple(endpoint), worker.backoff, shuffle)
        reporter = ConnectionReporter(rotation.masters[0], clock)

        def dialling(description: str) -> None:
            reporter.master = description

        endpoint = FailoverEndpoint(endpoint, rotation, worker, on_dial=dialling)
        policy: Callable[[int], float] = rotation.delay
    else:
        reporter = ConnectionReporter(worker.endpoint_description or "?", clock)
        policy = worker.backoff
    connection = ClientService(
        reporter.endpoint(endpoint), worker.factory(),
        retryPolicy=reporter.retry_policy(policy), clock=clock,
    )
    connection.setName("connection")
    connection.setServiceParent(service)
    return service
