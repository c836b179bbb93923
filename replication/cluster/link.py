# twisted.application's ClientService has no annotations:
# mypy: disable-error-code="no-untyped-call"
"""Peer links, the dialling side: one outgoing connection per configured peer, relaying that
peer's own rows into this master's store.

A master of a cluster dials every entry of ``cluster.peers`` (this master included: every
master gets the same list) like a worker dials its master, speaking protocol version 2 only
(docs/protocol.rst, "Cluster peers"). After the peer's ``VERSION 2`` and ``ORIGIN <id>
<fingerprint>``, :func:`~replication.cluster.identity.recognise` decides what the entry is:

* **self** (our origin id and our fingerprint): the connection is closed and the entry is
  never dialled again (logged once, at info);
* **conflict** (our origin id with another fingerprint, or the reverse): logged as an error
  with :func:`~replication.cluster.identity.conflict_reason`, closed, and tried again with
  backoff; two histories are never mixed under one origin id;
* **peer**: the link sends its own ``ORIGIN``, then ``RELAY <stream> <peer> <head>`` for
  each stream it already holds rows of the peer's origin of (the heads from the stream
  log, so a link resumes where the store is), then ``RELAY * <peer>`` for every other
  stream, from its start, and every new one.

Only the peer's own origin is asked for, so every row crosses each link once (one hop; a
master never relays rows it did not accept itself). What comes back is gathered per
``<stream>@<origin>`` into whole tokens (:class:`~replication.streams.TokenAssembler`, which
also checks that tokens follow each other) and stored through
:meth:`StreamLog.ingest <replication.master.log.StreamLog.ingest>`, which commits the rows
with the origin's tokens and tells fan-out. Per ``(stream, origin)`` one store call is in
flight at a time; the tokens that arrive meanwhile (or in one read) are committed together
in the next call, at most ``cluster.ingest_batch_rows`` rows (whole tokens). Rows received
and not yet committed are counted in bytes; past ``cluster.max_pending_bytes`` the link
stops reading from the peer until half of them are committed.

* ``GAP <stream>@<peer> <first> <last>``: the peer's retention dropped tokens this master
  never got: :meth:`StreamLog.skip <replication.master.log.StreamLog.skip>` moves the head
  past them (in order with the ingests), logged as a warning and counted.
* ``RESET <stream>@<peer> <head>`` (or a ``POSITION`` below the tokens received): the peer
  lost history of its own origin that this master holds. Its rows would overwrite others
  of the same tokens, so the link is closed (logged as an error, the entry ``diverged``)
  and tried again with backoff; nothing is overwritten.
* rows, positions or gaps of any other origin (this master's own included), unqualified
  ones, or anything before ``ORIGIN``: a protocol error (``ERROR`` and a close).
* an ingest that fails (a store error, or a gap the store refuses) closes the link; the
  next connection resumes from the store's heads.

:class:`PeerLink` is one entry of the list: it outlives its connections, keeps its state
and counts as plain attributes (for status and metrics), and is kept connected by Twisted's
``ClientService`` waiting as the worker's
:class:`~replication.worker.service.ReconnectBackoff` says. :class:`PeerConnection` is one
connection. :class:`PeerLinks` (:mod:`replication.cluster.peers`) is the service that holds
them all.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.application.internet import ClientService
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from replication.cluster.identity import Identity, Recognition, conflict_reason, recognise
from replication.config import KeepaliveConfig, MasterConfig, ReconnectConfig
from replication.master.log import StreamKey, StreamLog, StreamState
from replication.snapshot import PeerLinkView
from replication.store import Entry
from replication.streams import AssemblyError, TokenAssembler
from replication.wire.auth import ClientCredential
from replication.wire.commands import (
    EVERY_STREAM,
    WORKER,
    ErrorCommand,
    GapCommand,
    HandledCommand,
    OriginCommand,
    PositionCommand,
    RdataCommand,
    RelayCommand,
    ResetCommand,
    default_registry,
    json_loader,
    qualify,
)
from replication.wire.dialects import VERSION_2
from replication.wire.protocol import HANDSHAKE_TIMEOUT, ReplicationProtocol
from replication.worker.reporting import ConnectFailures
from replication.worker.service import ReconnectBackoff

log = logging.getLogger(__name__)


class LinkState(enum.Enum):
    """Where one entry of ``cluster.peers`` is."""

    #: Not started yet, or stopped with the master.
    STOPPED = "stopped"
    #: Dialling the peer, or connected and not yet through the handshake and ``ORIGIN``.
    CONNECTING = "connecting"
    #: ``ORIGIN`` exchanged and ``RELAY`` sent: the peer's rows flow in.
    CONNECTED = "connected"
    #: Waiting before the next attempt (the last one failed or its link was lost).
    BACKING_OFF = "backing off"
    #: The entry is this master: never dialled again.
    SELF = "self"
    #: The peer claims this master's origin id (or fingerprint): refused, tried again with
    #: backoff until an operator fixes it.
    CONFLICT = "conflict"
    #: The peer lost history of its own origin that this master holds (``RESET``): refused,
    #: tried again with backoff; nothing is overwritten.
    DIVERGED = "diverged"


#: States that outlast a lost connection until the next handshake says otherwise.
_STICKY = frozenset({LinkState.SELF, LinkState.CONFLICT, LinkState.DIVERGED})


@dataclass(frozen=True)
class LinkSettings:
    """What every peer link of a master is configured with.

    :param name: what the link calls itself in ``NAME`` (the master's ``server_name``).
    :param keepalive: the master's keepalive timers (also the ``ORIGIN`` deadline: the
        peer's ``ORIGIN`` must follow its ``VERSION`` within ``ping_timeout``).
    :param max_line_bytes: the longest line accepted from the peer.
    :param max_token_rows: rows of one token at most (the master's
        ``limits.max_rows_per_publish``: no master of the cluster accepts a larger token).
    :param max_token_bytes: JSON bytes of one token at most, and of the rows of unfinished
        tokens of all streams together (twice ``limits.max_body_bytes``).
    :param max_pending_bytes: JSON bytes received and not yet committed before the link
        stops reading (``cluster.max_pending_bytes``).
    :param ingest_batch_rows: rows one store call carries at most
        (``cluster.ingest_batch_rows``).
    :param max_streams: streams of the peer's origin this master takes at most
        (``limits.max_streams``).
    :param reconnect: the backoff between attempts (``cluster.reconnect``).
    :param credential: what the links authenticate with (``cluster.auth``); ``None``: none.
    """

    name: str = "master"
    keepalive: KeepaliveConfig = KeepaliveConfig()
    max_line_bytes: int = 65536
    max_token_rows: int = 100_000
    max_token_bytes: int = 32 * 1024 * 1024
    max_pending_bytes: int = 16 * 1024 * 1024
    ingest_batch_rows: int = 10_000
    max_streams: int = 10_000
    reconnect: ReconnectConfig = ReconnectConfig(initial_delay=1.0)
    credential: ClientCredential | None = field(default=None, repr=False)

    @classmethod
    def from_config(
        cls, config: MasterConfig, credential: ClientCredential | None = None
    ) -> LinkSettings:
        limits, cluster = config.limits, config.cluster
        return cls(
            name=config.server_name,
            keepalive=config.keepalive,
            max_line_bytes=limits.max_line_bytes,
            max_token_rows=limits.max_rows_per_publish,
            max_token_bytes=2 * limits.max_body_bytes,
            max_pending_bytes=cluster.max_pending_bytes,
            ingest_batch_rows=cluster.ingest_batch_rows,
            max_streams=limits.max_streams,
            reconnect=cluster.reconnect,
            credential=credential,
        )


@dataclass(frozen=True, slots=True)
class _Token:
    """A whole token received, waiting to be stored; ``size``: its rows' JSON bytes."""

    entry: Entry
    size: int


@dataclass(frozen=True, slots=True)
class _Skip:
    """A ``GAP`` received, waiting for the tokens before it to be stored."""

    first: int
    last: int
    size: int = 0


_Item = _Token | _Skip


class PeerLink:
    """One entry of ``cluster.peers``: its state and counts across connections, and the
    ``ClientService`` that keeps it connected (once :meth:`start` ed).

    Read the plain attributes (status and metrics do); only the link changes them:
    ``state`` (a :class:`LinkState`) and ``since`` (when it took that state, clock
    seconds); the peer's ``origin_id``, ``peer_name`` (its ``SERVER``) and ``fingerprint``
    once it announced them; ``problem``: the last error, in words; ``retry_at``: when the
    next attempt is due while backing off; ``heads``: the peer's head per stream, from its
    ``POSITION`` lines; counts since start: ``links`` (handshakes completed as a peer),
    ``rows_received``, ``bytes_received`` (JSON bytes of rows), ``tokens_received``,
    ``ingests`` (store calls that committed rows), ``ingested_tokens``, ``gaps`` (``GAP``
    lines), ``skipped_tokens``, ``resets``, ``conflicts``, ``ingest_failures``;
    ``pending_bytes``: rows received and not yet committed, now.

    :param endpoint: the entry, a client endpoint string.
    :param log: the master's stream log: heads to resume from, ingest and skip.
    :param clock: time for keepalive, backoff and timestamps.
    :param settings: see :class:`LinkSettings`.
    :param jitter: seconds added to each backoff wait (default: a random fraction of the
        initial delay, see :class:`~replication.worker.service.ReconnectBackoff`).
    """

    def __init__(
        self,
        endpoint: str,
        log: StreamLog,
        clock: IReactorTime,
        settings: LinkSettings,
        *,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.log = log
        self.clock = clock
        self.settings = settings
        reconnect = settings.reconnect
        self.backoff = ReconnectBackoff(
            reconnect.initial_delay, reconnect.max_delay, reconnect.healthy_after, jitter
        )
        #: This master's identity; set by :meth:`start`.
        self.identity: Identity | None = None
        self.state = LinkState.STOPPED
        self.since = clock.seconds()
        self.origin_id: str | None = None
        self.peer_name: str | None = None
        self.fingerprint: str | None = None
        self.problem: str | None = None
        self.retry_at: float | None = None
        self.heads: dict[str, int] = {}
        self.links = 0
        self.rows_received = 0
        self.bytes_received = 0
        self.tokens_received = 0
        self.ingests = 0
        self.ingested_tokens = 0
        self.gaps = 0
        self.skipped_tokens = 0
        self.resets = 0
        self.conflicts = 0
        self.ingest_failures = 0
        self.pending_bytes = 0
        #: Origins besides the peer's own that this link also asks for (repair: their own
        #: links are down), and the rows of them received.
        self.repairs: set[str] = set()
        self.repair_rows = 0
        #: The current connection, from connect to close.
        self.connection: PeerConnection | None = None
        self.service: ClientService | None = None
        self._failures = ConnectFailures()
        self._connect_error: str | None = None
        self._closed_reason: str | None = None
        self._in_flight = 0
        self._settled: list[Deferred[None]] = []
        self._self_logged = False

    # -- life --------------------------------------------------------------------------

    def start(self, identity: Identity, endpoint: IStreamClientEndpoint) -> None:
        """Dial ``endpoint`` (this entry's) and keep it connected, as ``identity``."""
        self.identity = identity
        self._set(LinkState.CONNECTING)
        self.service = ClientService(
            _LinkEndpoint(endpoint, self), _LinkFactory(self),
            retryPolicy=self._retry, clock=self.clock,
        )
        self.service.startService()

    def stop(self) -> Deferred[None]:
        """Close the connection (gracefully, through the protocol), stop dialling, and fire
        once the store calls in flight have finished."""
        connection = self.connection
        if connection is not None:
            connection.close()
        service = self.service
        stopped: Deferred[None] = (
            service.stopService() if service is not None and service.running else succeed(None)
        )

        def done(_: object) -> Deferred[None]:
            if self.state is not LinkState.SELF:
                self._set(LinkState.STOPPED)
            return self.when_settled()

        return stopped.addBoth(done)

    def factory(self) -> IProtocolFactory:
        """Builds this link's connections."""
        return _LinkFactory(self)

    def when_settled(self) -> Deferred[None]:
        """Fires once no store call of this link (of any of its connections) is in flight."""
        if not self._in_flight:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._settled.append(waiter)
        return waiter

    def describe(self) -> str:
        name = f"{self.peer_name} " if self.peer_name else ""
        return f"peer {name}at {self.endpoint}"

    def view(self) -> PeerLinkView:
        """This link now, as plain data for the master's snapshot (status and metrics); the
        entry that is this master names this master."""
        peer_name, origin_id, fingerprint = self.peer_name, self.origin_id, self.fingerprint
        if self.state is LinkState.SELF and self.identity is not None:
            peer_name = self.settings.name
            origin_id, fingerprint = self.identity.origin_id, self.identity.fingerprint
        return PeerLinkView(
            self.endpoint, self.state.value, self.since,
            peer_name=peer_name, origin_id=origin_id, fingerprint=fingerprint,
            problem=self.problem, retry_at=self.retry_at, links=self.links,
            rows_received=self.rows_received, bytes_received=self.bytes_received,
            tokens_received=self.tokens_received, ingests=self.ingests,
            ingested_tokens=self.ingested_tokens, gaps=self.gaps,
            skipped_tokens=self.skipped_tokens, resets=self.resets, conflicts=self.conflicts,
            ingest_failures=self.ingest_failures, pending_bytes=self.pending_bytes,
            repairs=tuple(sorted(self.repairs)), repair_rows=self.repair_rows,
        )

    def add_repair(self, origin: str) -> None:
        """Ask this peer for the rows of ``origin`` too (its own link is down), now if
        connected, and on every later connection, until :meth:`drop_repair`."""
        if origin in self.repairs or origin == self.origin_id:
            return
        self.repairs.add(origin)
        log.warning(
            "asking %s for the rows of origin %s, whose own link is down (repair)",
            self.describe(), origin,
        )
        connection = self.connection
        if connection is not None:
            connection.relay_origin(origin)

    def drop_repair(self, origin: str) -> None:
        """Stop asking this peer for ``origin``: the connection is closed and made again
        without it (a subscription cannot be taken back otherwise; the new one resumes
        from this master's heads)."""
        if origin not in self.repairs:
            return
        self.repairs.discard(origin)
        log.info("origin %s is linked again: %s stops relaying it", origin, self.describe())
        connection = self.connection
        if connection is not None and origin in connection.origins:
            connection.close()

    # -- told by the connection and the endpoint ---------------------------------------

    def _set(self, state: LinkState, problem: str | None = None) -> None:
        if state is not self.state:
            self.state = state
            self.since = self.clock.seconds()
        if problem is not None:
            self.problem = problem

    def _dialling(self) -> None:
        if self.state not in _STICKY:
            self._set(LinkState.CONNECTING)
        self.retry_at = None

    def _connected(self, protocol: Any) -> Any:
        if self._failures.attempts:
            log.info(
                "reached %s after %d failed attempts over %.0fs", self.describe(),
                self._failures.attempts, self._failures.since_first(self.clock.seconds()),
            )
        self._failures.succeeded()
        self._connect_error = None
        return protocol

    def _connect_failed(self, failure: Failure) -> Failure:
        if not failure.check(CancelledError):
            self._connect_error = failure.getErrorMessage()
            if self.state not in _STICKY:
                self.problem = f"cannot connect: {self._connect_error}"
        return failure

    def _retry(self, attempt: int) -> float:
        """``ClientService``'s retry policy: the backoff's delay, logged."""
        delay = self.backoff(attempt)
        now = self.clock.seconds()
        self.retry_at = now + delay
        if self.state is LinkState.SELF:
            return delay  # the service is being stopped
        if self.state not in _STICKY:
            self._set(LinkState.BACKING_OFF)
        reason, self._connect_error = self._connect_error, None
        closed, self._closed_reason = self._closed_reason, None
        if reason is None:
            log.info(
                "link to %s closed (%s); reconnecting in %.1fs", self.describe(),
                closed or "lost", delay,
            )
            return delay
        count = self._failures.failed(now)
        if count is None:
            log.debug("cannot connect to %s: %s; retrying in %.1fs", self.describe(), reason, delay)
        elif self._failures.attempts == 1:
            log.warning(
                "cannot connect to %s: %s; retrying in %.1fs", self.describe(), reason, delay
            )
        else:
            log.warning(
                "still cannot connect to %s: %s (%d failed attempts since the last report, %d "
                "over %.0fs); retrying in %.1fs", self.describe(), reason, count,
                self._failures.attempts, self._failures.since_first(now), delay,
            )
        return delay

    def _found_self(self) -> None:
        self._set(LinkState.SELF, None)
        self.problem = None
        if not self._self_logged:
            self._self_logged = True
            assert self.identity is not None
            log.info(
                "cluster peer %s is this master (origin %s): not dialling it",
                self.endpoint, self.identity.origin_id,
            )

    def _linked(self, announced: Identity, peer_name: str | None) -> None:
        if self.origin_id is not None and self.origin_id != announced.origin_id:
            log.warning(
                "%s now announces origin %s (it was %s: a new or replaced store); rows of the "
                "old origin are kept", self.describe(), announced.origin_id, self.origin_id,
            )
        self.origin_id = announced.origin_id
        self.fingerprint = announced.fingerprint
        self.peer_name = peer_name
        self.links += 1

    def _connection_made(self, connection: PeerConnection) -> None:
        self.connection = connection

    def _connection_closed(self, connection: PeerConnection, reason: str, lasted: float) -> None:
        if self.connection is connection:
            self.connection = None
        self.backoff.connection_ended(lasted)
        self._closed_reason = reason
        if self.state is LinkState.SELF:
            # Stop dialling, once ClientService has taken note of the lost connection.
            self.clock.callLater(0, self._stop_dialling)

    def _stop_dialling(self) -> None:
        service = self.service
        if service is not None and service.running:
            service.stopService()

    def _started_store_call(self) -> None:
        self._in_flight += 1

    def _finished_store_call(self) -> None:
        self._in_flight -= 1
        if not self._in_flight:
            waiters, self._settled = self._settled, []
            for waiter in waiters:
                waiter.callback(None)


@implementer(IStreamClientEndpoint)
class _LinkEndpoint:
    """The peer's endpoint, telling its :class:`PeerLink` how each connect went."""

    def __init__(self, endpoint: IStreamClientEndpoint, link: PeerLink) -> None:
        self._endpoint = endpoint
        self._link = link

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        self._link._dialling()
        d: Deferred[Any] = self._endpoint.connect(protocolFactory)
        return d.addCallbacks(self._link._connected, self._link._connect_failed)


class _LinkFactory(Factory):
    noisy = False

    def __init__(self, link: PeerLink) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> PeerConnection:
        return PeerConnection(self.link)


class PeerConnection(ReplicationProtocol):
    """One connection of a :class:`PeerLink` to its peer (see the module docstring)."""

    def __init__(self, link: PeerLink) -> None:
        settings = link.settings
        super().__init__(
            link.clock, default_registry(), WORKER, settings.name,
            keepalive=settings.keepalive, max_line_bytes=settings.max_line_bytes,
            max_buffer_bytes=None, versions={2: VERSION_2}, credential=settings.credential,
        )
        self.link = link
        self.log = link.log
        self.settings = settings
        self.assembler = TokenAssembler(settings.max_token_rows, settings.max_token_bytes)
        #: The peer's origin id once its ``ORIGIN`` made this a peer link.
        self.peer_origin: str | None = None
        #: The origins this connection asked for: the peer's, and any it repairs.
        self.origins: set[str] = set()
        #: Rows received and not yet committed on this connection (queued and in flight).
        self.pending_bytes = 0
        self._origin_seen = False
        self._origin_deadline: IDelayedCall | None = None
        self._line = b""
        self._queues: dict[StreamKey, deque[_Item]] = {}
        self._in_flight: set[StreamKey] = set()
        self._flushing = False
        self._flush_again = False
        self._paused = False
        self._lost = False
        #: Streams of the peer's origin this master holds (bounded by ``max_streams``).
        self._streams: set[str] = set()
        #: The stream fields (``<stream>@<origin>`` as bytes) of ``RDATA`` the hot path of
        #: :meth:`linesReceived` takes, with their keys: those accepted once by the
        #: general path.
        self._fields: dict[bytes, tuple[str, StreamKey]] = {}

    def describe(self) -> str:
        return self.link.describe()

    def connectionMade(self) -> None:
        self.link._connection_made(self)
        super().connectionMade()

    # -- the handshake ---------------------------------------------------------------------

    def handshake_done(self) -> None:
        timeout = self.settings.keepalive.ping_timeout
        self._origin_deadline = self.clock.callLater(timeout, self._no_origin, timeout)

    def _no_origin(self, timeout: float) -> None:
        self._origin_deadline = None
        self.send_error(
            f"handshake timeout: expected ORIGIN within {timeout:g}s", HANDSHAKE_TIMEOUT
        )

    def on_ORIGIN(self, command: OriginCommand) -> None:
        if self._origin_seen:
            self.send_error("ORIGIN may only be sent once, right after VERSION")
            return
        self._origin_seen = True
        self._cancel_origin_deadline()
        link = self.link
        ours = link.identity
        assert ours is not None, "a link dials only once started with this master's identity"
        announced = Identity(command.origin_id, command.fingerprint)
        verdict = recognise(ours, announced)
        if verdict is Recognition.SELF:
            link._found_self()
            self.close()
            return
        if verdict is Recognition.CONFLICT:
            reason = conflict_reason(ours, announced)
            link.conflicts += 1
            link._set(LinkState.CONFLICT, reason)
            log.error("cluster peer %s: %s", link.endpoint, reason)
            self.close()
            return
        link._linked(announced, self.peer_name)
        self.peer_origin = announced.origin_id
        self.send(OriginCommand(ours.origin_id, ours.fingerprint))
        # A previous connection's store calls may still run: the heads are final after them.
        link.when_settled().addCallback(lambda _: self._relay())

    def _relay(self) -> None:
        origin = self.peer_origin
        if self._closing or self._lost or origin is None:
            return
        held = self.relay_origin(origin)
        for repaired in sorted(self.link.repairs - {origin}):
            self.relay_origin(repaired)
        link = self.link
        link._set(LinkState.CONNECTED)
        link.problem = None
        resumed = ", ".join(f"{s.stream} after {s.head}" for s in held[:5]) or "nothing held yet"
        if len(held) > 5:
            resumed += f" and {len(held) - 5} more streams"
        log.info(
            "linked to %s (origin %s): relaying its rows (%s; every other stream from its "
            "start)", link.describe(), origin, resumed,
        )

    def relay_origin(self, origin: str) -> list[StreamState]:
        """Ask the peer for the rows of ``origin``: each stream this master holds of it
        after its head, then every other stream from its start. Returns the streams held."""
        if self._closing or self._lost or self.peer_origin is None or origin in self.origins:
            return []
        self.origins.add(origin)
        held = [state for state in self.log.states() if state.origin == origin]
        for state in held:
            key = qualify(state.stream, origin)
            if key not in self.assembler.last:
                self.assembler.start(key, state.head)
            self.send(RelayCommand(state.stream, origin, state.head))
        self.send(RelayCommand(EVERY_STREAM, origin, None))
        self._streams.update(state.stream for state in held)
        return held

    def _cancel_origin_deadline(self) -> None:
        call, self._origin_deadline = self._origin_deadline, None
        if call is not None and call.active():
            call.cancel()

    # -- what the peer sends -----------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        self._line = line  # RDATA's row is stored as it came, not re-encoded
        super().lineReceived(line)

    def linesReceived(self, lines: list[bytes], data: bytes | None) -> None:
        """The hot path: ``RDATA`` lines of a ``(stream, origin)`` this connection has
        accepted before are split, their JSON checked (not kept: the row is stored as it
        came) and gathered into tokens here, without building command objects; everything
        else, and any line the fast path does not take as it is (a malformed one, a token
        out of order, past a bound), goes through :meth:`lineReceived`, the reference,
        which answers errors. Then the tokens gathered are handed to the store."""
        if self.peer_origin is None or self._closing or self._lost:
            super().linesReceived(lines, data)
            self._flush()
            return
        loads = json_loader(data)
        fields = self._fields
        add = self.assembler.add
        partial_bytes = self.assembler.partial_bytes
        max_line = self.max_line_bytes
        link = self.link
        peer_origin = self.peer_origin
        fast_rows = fast_bytes = repair_rows = 0
        try:
            for line in lines:
                if line[:6] == b"RDATA " and len(line) <= max_line:
                    parts = line.split(b" ", 3)
                    found = fields.get(parts[1]) if len(parts) == 4 else None
                    if found is not None:
                        key, stream_key = found
                        token_text, raw = parts[2], parts[3]
                        if token_text == b"batch":
                            token = None
                        elif token_text.isdigit() and len(token_text) <= 19:
                            token = int(token_text)
                        else:
                            token = -1
                        if token != -1:
                            try:
                                loads(raw)
                                text = raw.decode()
                                before = partial_bytes.get(key, 0)
                                done = add(key, token, text, len(raw))
                            except (ValueError, RecursionError, AssemblyError):
                                pass  # the general path answers it
                            else:
                                fast_rows += 1
                                fast_bytes += len(raw)
                                if stream_key.origin != peer_origin:
                                    repair_rows += 1
                                self._gathered(key, stream_key, done, before + len(raw))
                                if self._closing:
                                    return
                                continue
                self.lineReceived(line)
                if self._closing or self._lost:
                    return
        finally:
            link.rows_received += fast_rows
            link.bytes_received += fast_bytes
            link.repair_rows += repair_rows
        self._flush()

    def _accept(self, name: str, stream: str, origin: str | None) -> str | None:
        """The qualified key of a line naming ``stream@origin``, if this link asked for it;
        else ``ERROR`` and a close, and ``None``."""
        if self.peer_origin is None:
            self.send_error(f"expected ORIGIN after VERSION, got {name}")
            return None
        if origin is None:
            self.send_error(
                f"{name} {stream}: protocol version 2 names the origin (<stream>@<origin>)"
            )
            return None
        if origin not in self.origins:
            assert self.link.identity is not None
            why = (
                "rows of this master's own origin are never relayed back to it"
                if origin == self.link.identity.origin_id
                else f"this link did not ask for origin {origin}"
            )
            self.send_error(f"{name} {stream}@{origin}: {why}")
            return None
        key = qualify(stream, origin)
        if key not in self.assembler.last:
            if stream not in self._streams and len(self._streams) >= self.settings.max_streams:
                self.send_error(
                    f"{name} {key}: this master holds {self.settings.max_streams} streams of "
                    f"origin {origin} already (limits.max_streams)"
                )
                return None
            self._streams.add(stream)
            self.assembler.start(key, 0)  # RELAY *: from its start
        if name == RdataCommand.NAME:
            self._fields[key.encode()] = (key, StreamKey(stream, origin))
        return key

    def on_RDATA(self, command: RdataCommand) -> None:
        key = self._accept(command.NAME, command.stream, command.origin)
        if key is None:
            return
        raw = self._line.split(b" ", 3)[3]
        size = len(raw)
        assembler = self.assembler
        before = assembler.partial_bytes.get(key, 0)
        try:
            done = assembler.add(key, command.token, raw.decode(), size)
        except AssemblyError as e:
            self.send_error(str(e))
            return
        link = self.link
        link.rows_received += 1
        link.bytes_received += size
        if command.origin != self.peer_origin:
            link.repair_rows += 1
        self._gathered(key, StreamKey(command.stream, command.origin or ""), done, before + size)

    def _gathered(
        self, key: str, stream_key: StreamKey, done: tuple[int, list[Any]] | None, size: int
    ) -> None:
        """After one RDATA row (either path): a complete token of ``size`` bytes goes to
        the store's queue; an unfinished one must keep every unfinished token within
        ``max_token_bytes``, else ``ERROR`` and a close."""
        if done is None:
            partial = sum(self.assembler.partial_bytes.values())
            if partial > self.settings.max_token_bytes:
                self.send_error(
                    f"RDATA {key}: unfinished tokens hold {partial} bytes (at most "
                    f"{self.settings.max_token_bytes})"
                )
            return
        self.link.tokens_received += 1
        self._enqueue(stream_key, _Token(Entry(done[0], tuple(done[1])), size))

    def on_POSITION(self, command: PositionCommand) -> None:
        key = self._accept(command.NAME, command.stream, command.origin)
        if key is None:
            return
        try:
            check = self.assembler.position(key, command.token)
        except AssemblyError as e:
            self.send_error(str(e))
            return
        if check.reset:
            self._diverged(command.stream, command.token, check.below)
            return
        self.link.heads[command.stream] = command.token

    def on_GAP(self, command: GapCommand) -> None:
        key = self._accept(command.NAME, command.stream, command.origin)
        if key is None:
            return
        try:
            self.assembler.gap(key, command.first, command.last)
        except AssemblyError as e:
            self.send_error(str(e))
            return
        link = self.link
        link.gaps += 1
        link.skipped_tokens += command.last - command.first + 1
        log.warning(
            "%s: tokens %d..%d of %s are no longer retained there (its retention dropped them "
            "before they reached this master): skipping them", link.describe(), command.first,
            command.last, key,
        )
        self._enqueue(
            StreamKey(command.stream, command.origin or ""), _Skip(command.first, command.last)
        )

    def on_RESET(self, command: ResetCommand) -> None:
        if self._accept(command.NAME, command.stream, command.origin) is None:
            return
        self._diverged(command.stream, command.head, None)

    def _diverged(self, stream: str, head: int, received: int | None) -> None:
        link = self.link
        link.resets += 1
        origin = self.peer_origin
        assert origin is not None
        held = max(self.log.head(stream, origin), received or 0)
        reason = (
            f"it went back to token {head} of {stream}@{origin}, below the {held} this master "
            "holds: it lost history of its own origin (a store restored from a backup?); its "
            "rows would replace rows this master keeps, so the link is refused (never "
            "overwritten) and tried again with backoff"
        )
        link._set(LinkState.DIVERGED, reason)
        log.error("%s: %s", link.describe(), reason)
        self.close()

    def on_ERROR(self, command: ErrorCommand) -> None:
        super().on_ERROR(command)
        self.link.problem = f"the peer sent ERROR {command.message}"

    # -- storing -----------------------------------------------------------------------------

    def _enqueue(self, key: StreamKey, item: _Item) -> None:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(item)
        self._add_pending(item.size)
        if self.pending_bytes > self.settings.max_pending_bytes and not self._paused:
            self._paused = True
            self.session.pause_reading()
            self._link.pauseProducing()  # ReplicationProtocol's _link: the transport

    def _add_pending(self, size: int) -> None:
        self.pending_bytes += size
        self.link.pending_bytes += size

    def _flush(self) -> None:
        """Start a store call for each ``(stream, origin)`` with items waiting and none in
        flight. Re-entered from a call that completes at once: the outer loop goes on."""
        if self._flushing:
            self._flush_again = True
            return
        self._flushing = True
        try:
            again = True
            while again and not self._closing:
                self._flush_again = False
                for key in list(self._queues):
                    queue = self._queues.get(key)
                    if queue is None or key in self._in_flight or self._closing:
                        continue
                    self._start(key, queue)
                    if not queue and self._queues.get(key) is queue:
                        del self._queues[key]
                again = self._flush_again
        finally:
            self._flushing = False

    def _start(self, key: StreamKey, queue: deque[_Item]) -> None:
        first = queue.popleft()
        if isinstance(first, _Skip):
            d = self.log.skip(key.stream, key.origin, first.last)
            size, what = 0, f"skipping tokens {first.first}..{first.last}"
            tokens = 0
        else:
            entries, size, rows = [first.entry], first.size, len(first.entry.rows)
            limit = self.settings.ingest_batch_rows
            while queue:
                item = queue[0]
                if not isinstance(item, _Token) or rows + len(item.entry.rows) > limit:
                    break
                queue.popleft()
                entries.append(item.entry)
                size += item.size
                rows += len(item.entry.rows)
            d = self.log.ingest(key.stream, key.origin, entries)
            tokens = len(entries)
            what = f"storing tokens {entries[0].token}..{entries[-1].token}"
        self._in_flight.add(key)
        self.link._started_store_call()
        d.addCallbacks(
            self._stored, self._store_failed,
            callbackArgs=(key, size, tokens), errbackArgs=(key, size, what),
        )

    def _stored(self, head: int, key: StreamKey, size: int, tokens: int) -> None:
        link = self.link
        self._done(key, size)
        if tokens:
            link.ingests += 1
            link.ingested_tokens += tokens
            if key.origin == self.peer_origin and not (self._closing or self._lost):
                # What this master has stored of the peer's rows: the peer counts it as a
                # confirmation when it waits for cluster.ack_peers.
                self.send(HandledCommand(key.stream, head, key.origin))
        link._finished_store_call()
        if not (self._closing or self._lost):
            self._flush()
            self._maybe_resume()

    def _store_failed(self, failure: Failure, key: StreamKey, size: int, what: str) -> None:
        link = self.link
        self._done(key, size)
        link.ingest_failures += 1
        problem = f"{what} of {key.stream}@{key.origin} failed: {failure.getErrorMessage()}"
        link.problem = problem
        log.error(
            "%s: %s; closing the link (the next one resumes from this master's heads)",
            link.describe(), problem,
        )
        link._finished_store_call()
        if not self._lost:
            self.close()

    def _done(self, key: StreamKey, size: int) -> None:
        self._in_flight.discard(key)
        self._add_pending(-size)

    def _maybe_resume(self) -> None:
        if self._paused and self.pending_bytes <= self.settings.max_pending_bytes // 2:
            self._paused = False
            self._link.resumeProducing()
            self.carry_out(self.session.resume_reading(self.clock.seconds()))

    # -- the end -----------------------------------------------------------------------------

    def closed(self, reason: str) -> None:
        self._lost = True
        self._cancel_origin_deadline()
        dropped = sum(item.size for queue in self._queues.values() for item in queue)
        self._queues.clear()
        self._add_pending(-dropped)
        lasted = self.clock.seconds() - (self.connected_since or self.clock.seconds())
        self.link._connection_closed(self, reason, lasted)


__all__ = ["LinkSettings", "LinkState", "PeerConnection", "PeerLink"]
