"""The Twisted side of the wire protocol, shared by master and worker connections.

:class:`ReplicationProtocol` owns the I/O that both ends do the same way: line framing with a
maximum line length in both directions, turning every protocol violation into
``ERROR <reason>`` and a close, and bounded outbound buffering: the protocol is a push
producer on its transport, and what it holds for a peer that does not read is counted in
bytes and capped (see :meth:`ReplicationProtocol.write`).

What the connection *does* about the handshake (the master's first line is ``SERVER``, the
worker's ``NAME``), keepalive (``PING`` after a silence; a peer that has pinged and then stays
silent is cut off; a peer that never sends its first line is cut off too) and a close that
stalls is decided by its :class:`replication.wire.session.Session`, a sans-IO state machine;
this class feeds it commands and the time, carries out the actions it returns, and keeps one
timer (an ``IDelayedCall``) set to the session's next deadline.

Subclasses (:class:`replication.master.MasterConnection`,
:class:`replication.worker.WorkerConnection`) handle commands in ``on_<NAME>`` methods; a
command without one goes to the handler an application attached to it
(:mod:`replication.wire.application`, found on the registry), else to :meth:`unhandled
<ReplicationProtocol.unhandled>`. The clock is passed in; nothing here touches the global
reactor.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from inspect import iscoroutine
from typing import Any, cast
from typing import Protocol as TypingProtocol

from twisted.internet import tcp
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from replication.config import KeepaliveConfig
from replication.wire.application import CommandHandler
from replication.wire.auth import ClientCredential, Keyring
from replication.wire.commands import (
    MASTER,
    WORKER,
    Command,
    CommandParseError,
    CommandRegistry,
    ErrorCommand,
    PingCommand,
)
from replication.wire.dialects import LEGACY, VERSIONS, Dialect
from replication.wire.session import (
    HANDSHAKE_TIMEOUT,
    PING_TIMEOUT,
    PROTOCOL_ERROR,
    Abort,
    Action,
    CloseWithError,
    Deliver,
    HandshakeDone,
    Send,
    Session,
    WakeAt,
)

__all__ = [
    "CLOSED_BY_PEER",
    "CLOSED_LOCALLY",
    "FAILED_TO_KEEP_UP",
    "HANDSHAKE_TIMEOUT",
    "LINE_TOO_LONG",
    "MAX_ERROR_CHARS",
    "PING_TIMEOUT",
    "PROTOCOL_ERROR",
    "ReplicationProtocol",
    "TOO_LONG_HEAD",
    "TooLongLine",
    "too_long_line",
    "write_through",
]

log = logging.getLogger(__name__)

#: Why a connection ended, as counted by metrics and shown in logs. ``CLOSED_LOCALLY`` is
#: also what a close started by this side's transport reports (e.g. ``ClientService``
#: stopping calls ``transport.loseConnection()`` itself), told from a peer's close by the
#: transport's ``disconnecting`` flag. The session's reasons (``PING_TIMEOUT``,
#: ``HANDSHAKE_TIMEOUT``, ``PROTOCOL_ERROR``) are defined in :mod:`replication.wire.session`
#: and are importable from here too.
CLOSED_BY_PEER = "closed by peer"
CLOSED_LOCALLY = "closed locally"
FAILED_TO_KEEP_UP = "failed to keep up"
LINE_TOO_LONG = "line too long"

_HELD_LINES_BEFORE_PAUSE = 1000
#: Longest ERROR text sent; longer ones are cut (they may quote the peer's input).
MAX_ERROR_CHARS = 512
#: The least delay of the session's timer: a deadline already due is polled this much later.
_MIN_TIMER_DELAY = 0.001
_DEFAULT_KEEPALIVE = KeepaliveConfig()


#: The write queue of every connection that has not queued anything yet; never appended to.
_NO_QUEUE: deque[bytes] = deque()


def _unconnected_write(data: bytes) -> None:
    raise RuntimeError("write before the connection was made")


def write_through(link: Any) -> Callable[[bytes], None]:
    """A ``write`` for ``link`` that sends at once when it can.

    Twisted's TCP transport buffers every write and sends it on the reactor's next turn,
    after asking the poller to watch the socket for writability and before asking it to
    stop: three more system calls and a reactor turn for each answer. When the transport
    holds nothing (so nothing written earlier can be overtaken), the returned function
    sends straight to the socket and hands Twisted only what the kernel did not take; a
    failed send is left to Twisted, which finds the lost connection as it always does.
    Transports other than plain TCP (TLS, the test doubles) get their own ``write``.
    """
    if not isinstance(link, tcp.Connection) or getattr(link, "TLS", False):

        def write_to_transport(data: bytes) -> None:
            link.write(data)  # looked up at each call: a test may wrap it

        return write_to_transport
    buffered_write = cast(Callable[[bytes], None], link.write)
    send = cast(Callable[[bytes], object], link.writeSomeData)

    def write(data: bytes) -> None:
        if (
            link.dataBuffer or link._tempDataBuffer or not link.connected
            or link.disconnecting or link._writeDisconnected or link.TLS
        ):
            buffered_write(data)
            return
        sent = send(data)
        if type(sent) is not int:
            buffered_write(data)  # the connection is lost: Twisted notices and reports it
        elif sent < len(data):
            buffered_write(data[sent:])

    return write


class TooLongLine(bytes):
    """Stands in, where it arrived, for a line longer than the limit whose bytes were
    dropped as they came: its first :data:`TOO_LONG_HEAD` bytes; ``length`` is how many bytes
    of it had arrived when it was taken for too long (see
    :meth:`ReplicationProtocol.answers_too_long`)."""

    length: int


#: Bytes of a too-long line that its stand-in keeps (enough for a command and its first
#: arguments, such as a publish's id).
TOO_LONG_HEAD = 256


def too_long_line(line: bytes, length: int) -> TooLongLine:
    stand_in = TooLongLine(line[:TOO_LONG_HEAD])
    stand_in.length = length
    return stand_in


class _Transport(TypingProtocol):
    """What this protocol uses of its transport: a TCP-like transport that is also a push
    producer (reading) and a consumer (our output)."""

    disconnecting: bool

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def getPeer(self) -> IAddress: ...
    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...


@implementer(IPushProducer)
class ReplicationProtocol(Protocol):
    """One end of a replication connection.

    :param clock: the reactor's time: ``seconds()`` and ``callLater()``.
    :param registry: the commands this connection understands.
    :param side: ``"master"`` or ``"worker"``: which end this is.
    :param name: what this end calls itself in its first line (``SERVER``/``NAME``).
    :param keepalive: ``ping_interval``, seconds without sending after which a ``PING`` is
        sent; ``ping_timeout``, seconds of silence, after the peer has sent a ``PING``,
        after which the peer is cut off with ``ERROR ping timeout``, and also the seconds the
        peer's first line may take before it is cut off with ``ERROR handshake timeout``;
        ``close_timeout``, seconds a graceful close may take before the connection is
        aborted.
    :param max_line_bytes: the longest line accepted or sent, without its ``\\n``.
    :param max_buffer_bytes: bytes this end may hold for a peer that does not read, beyond
        what the transport holds, before it sends ``ERROR Failed to keep up`` and closes;
        ``None`` for no bound (only for the worker end, whose output is small).

    Hooks for subclasses: ``on_<NAME>(command)`` for each command the peer may send after the
    handshake, :meth:`handshake_done`, :meth:`writable` (the transport drained and nothing is
    queued), :meth:`closed`. ``peer_name`` is the name the peer gave in its first line;
    ``dialect`` the name of the dialect the handshake agreed on (both set when
    :meth:`handshake_done` is called); ``session`` is the connection's
    :class:`~replication.wire.session.Session`.
    """

    delimiter = b"\n"

    def __init__(
        self,
        clock: IReactorTime,
        registry: CommandRegistry,
        side: str,
        name: str,
        *,
        keepalive: KeepaliveConfig = _DEFAULT_KEEPALIVE,
        max_line_bytes: int = 65536,
        max_buffer_bytes: int | None = 8 * 1024 * 1024,
        versions: Mapping[int, Dialect] = VERSIONS,
        keyring: Keyring | None = None,
        credential: ClientCredential | None = None,
    ) -> None:
        if side not in (MASTER, WORKER):
            raise ValueError(f"side must be {MASTER!r} or {WORKER!r}")
        self.clock = clock
        self.registry = registry
        self.side = side
        self.peer_side = WORKER if side == MASTER else MASTER
        self.name = name
        self.ping_interval = keepalive.ping_interval
        self.ping_timeout = keepalive.ping_timeout
        self.close_timeout = keepalive.close_timeout
        self.max_line_bytes = max_line_bytes
        self.max_buffer_bytes = max_buffer_bytes
        self.session = Session(
            side,
            name,
            ping_interval=keepalive.ping_interval,
            ping_timeout=keepalive.ping_timeout,
            close_timeout=keepalive.close_timeout,
            versions=versions,
            keyring=keyring,
            credential=credential,
        )
        #: The credential the peer proved (a master) or the master accepted (a worker), once
        #: the handshake is done; ``None``: no authentication.
        self.credential: str | None = None

        self.peer_name: str | None = None
        #: The dialect the handshake agreed on (see :mod:`replication.wire.dialects`): the
        #: legacy one until then, so that nothing is sent that a legacy peer cannot parse.
        self.dialect: str = LEGACY.name
        self.connected_since: float | None = None
        self.close_reason: str | None = None
        #: Commands sent and received on this connection, by name: plain ints on the
        #: reactor thread, read by :mod:`replication.metrics` at scrape time (see
        #: :meth:`command_counts`).
        self.sent_counts: dict[str, int] = {}
        self.received_counts: dict[str, int] = {}

        self._buffer = b""
        #: Dropping the rest of a too-long line (see :meth:`answers_too_long`).
        self._dropping = False
        #: Lines held while input is held (a list: an empty deque costs 600 bytes more per
        #: connection, and held lines are only appended and taken all at once).
        self._held: list[bytes] = []
        self._holding = False
        self._reading_paused = False
        self._paused = False
        #: Lines written while the transport is paused; the shared empty queue until the
        #: first such write (an empty deque costs 600 bytes per connection).
        self._queue: deque[bytes] = _NO_QUEUE
        self.queued_bytes = 0
        #: The one timer, set to the session's next deadline.
        self._timer: IDelayedCall | None = None
        #: True once a close has begun (read by subclasses' hot paths: a plain attribute).
        self._closing = False
        #: ``self.transport``, typed for what this class uses of it; set on connection, and
        #: used only from then on.
        self._link = cast(_Transport, None)
        #: How data reaches the transport: ``_link.write``, or straight to the socket when
        #: the transport holds nothing (see :func:`write_through`).
        self._write: Callable[[bytes], None] = _unconnected_write

    # -- connection life ---------------------------------------------------------------

    def connectionMade(self) -> None:
        now = self.clock.seconds()
        self.connected_since = now
        self._link = link = cast(_Transport, self.transport)
        self._write = write_through(link)
        link.registerProducer(self, True)
        set_no_delay = getattr(link, "setTcpNoDelay", None)
        if set_no_delay is not None:
            # Lines are already gathered into large writes; Nagle's algorithm would only hold
            # the tail of each write back until the peer's delayed ACK (up to 40 ms).
            set_no_delay(True)
        self.carry_out(self.session.connected(now))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if type(reason.value).__module__.startswith(("OpenSSL.", "service_identity.")):
            # A refused certificate or name, or a peer that speaks no TLS: say why, since the
            # close reason below only says which side closed.
            log.warning("%s: TLS failed: %s", self.describe(), reason.getErrorMessage())
        self.carry_out(self.session.connection_lost(self.clock.seconds()))
        application = self.registry.application
        if application is not None:
            application.disconnected(self)
        self._queue.clear()
        self.queued_bytes = 0
        self._held.clear()
        if self.close_reason is None:
            local = self.transport is not None and getattr(self.transport, "disconnecting", False)
            self.close_reason = CLOSED_LOCALLY if local else CLOSED_BY_PEER
        self.closed(self.close_reason)

    def close(self, reason: str = CLOSED_LOCALLY) -> None:
        """Close gracefully (what is buffered is still sent), aborting after
        ``close_timeout`` seconds if the peer does not read it."""
        if self._closing:
            return
        self._closing = True
        if self.close_reason is None:
            self.close_reason = reason
        if not self._queue:
            self._lose_connection()
        # else resumeProducing does it once the queue is sent
        self.carry_out(self.session.close(self.clock.seconds()))

    def _lose_connection(self) -> None:
        """Tell the transport that this end writes nothing more, then close it. A TLS
        transport sends its close alert only once its producer is gone, so a closing end
        that stayed registered would never close; and it drops what is written after its
        close began, so lines held here are written before (see :meth:`resumeProducing`)."""
        self._link.unregisterProducer()
        self._link.loseConnection()

    def send_error(self, message: str, reason: str = PROTOCOL_ERROR) -> None:
        """Send ``ERROR <message>`` ahead of anything queued, then close."""
        if self._closing:
            return
        if len(message) > MAX_ERROR_CHARS:
            # Error texts may quote what the peer sent; keep them well inside a line.
            message = message[:MAX_ERROR_CHARS] + "..."
        log.warning("%s: sending ERROR %s", self.describe(), message)
        self._queue.clear()
        self.queued_bytes = 0
        self._link.write(ErrorCommand(message).to_line() + b"\n")
        self.sent_counts["ERROR"] = self.sent_counts.get("ERROR", 0) + 1
        self.close(reason)

    def describe(self) -> str:
        peer = self.transport.getPeer() if self.transport is not None else None
        host, port = getattr(peer, "host", None), getattr(peer, "port", None)
        address = str(peer) if port is None else f"{host}:{port}"
        name = self.peer_name or self.session.peer_name or "?"
        return f"{self.peer_side} {name} at {address}"

    def command_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """``(received, sent)``: commands of this connection by name, so far. Subclasses
        whose hot paths bypass :meth:`send` or :meth:`command_received` add what those
        counted."""
        return dict(self.received_counts), dict(self.sent_counts)

    # -- the session's actions ---------------------------------------------------------

    def carry_out(self, actions: tuple[Action, ...]) -> None:
        """Do what the session decided, in order."""
        for action in actions:
            if isinstance(action, Deliver):
                self._deliver(action.command)
            elif isinstance(action, WakeAt):
                self._wake_at(action.deadline)
            elif isinstance(action, Send):
                self.send(action.command)
            elif isinstance(action, HandshakeDone):
                self.peer_name = action.peer_name
                self.dialect = action.dialect.name
                self.credential = action.credential
                self.handshake_done()
                application = self.registry.application
                if application is not None and not self._closing:
                    application.connected(self)
            elif isinstance(action, CloseWithError):
                self.send_error(action.message, action.reason)
            else:
                assert isinstance(action, Abort)
                log.warning(
                    "%s: close stalled for %ss; aborting", self.describe(), self.close_timeout
                )
                self._link.abortConnection()

    def _wake_at(self, deadline: float | None) -> None:
        """Set the one timer to ``deadline`` (``None``: no timer)."""
        call = self._timer
        if deadline is None:
            if call is not None:
                self._timer = None
                if call.active():
                    call.cancel()
            return
        delay = max(deadline - self.clock.seconds(), _MIN_TIMER_DELAY)
        if call is not None and call.active():
            call.reset(delay)
        else:
            self._timer = self.clock.callLater(delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self.carry_out(self.session.poll(self.clock.seconds()))

    def _deliver(self, command: Command) -> None:
        method: Callable[[Any], None] | None = getattr(self, "on_" + command.NAME, None)
        if method is not None:
            method(command)
            return
        application = self.registry.application
        handler = None if application is None else application.handler(self.side, command.NAME)
        if handler is None:
            self.unhandled(command)
        else:
            self._run_application_handler(handler, command)

    def _run_application_handler(self, handler: CommandHandler, command: Command) -> None:
        """Call an application's handler of ``command`` with this connection. Its failure
        (raised, or of the awaitable it returned) is the application's bug, not the peer's:
        it is logged with its traceback and the connection stays open. A coroutine or
        Deferred it returns runs on; the next command does not wait for it."""
        try:
            result = handler(self, command)
        except Exception:
            log.exception("%s: the handler of %s failed", self.describe(), command.NAME)
            return
        if iscoroutine(result):
            waited: Deferred[object] = ensureDeferred(cast(Coroutine[Any, Any, object], result))
        elif isinstance(result, Deferred):
            waited = result
        else:
            return

        def failed(failure: Failure) -> None:
            log.error(
                "%s: the handler of %s failed: %s", self.describe(), command.NAME,
                failure.getTraceback(),
            )

        waited.addErrback(failed)

    # -- subclass hooks ----------------------------------------------------------------

    def handshake_done(self) -> None:
        """The handshake is done: the peer's first line (``SERVER`` or ``NAME``) arrived and
        the protocol version is agreed; ``peer_name`` and ``dialect`` are set."""

    def writable(self) -> None:
        """The transport drained what it held and nothing is queued: room to send more."""

    def closed(self, reason: str) -> None:
        """The connection is gone; ``reason`` is one of this module's close reasons."""

    def on_PING(self, command: PingCommand) -> None:
        """The peer pinged (the session has noted that its silence counts from now on)."""

    def on_ERROR(self, command: ErrorCommand) -> None:
        log.warning("%s sent ERROR %s", self.describe(), command.message)

    def unhandled(self, command: Command) -> None:
        """A registered command arrived that this end has no ``on_<NAME>`` method for."""
        log.warning("%s: ignoring %s: no handler for it here", self.describe(), command.NAME)

    # -- outbound ----------------------------------------------------------------------

    def send(self, command: Command) -> None:
        """Encode and send one command."""
        line = command.to_line()
        if len(line) > self.max_line_bytes:
            raise ValueError(
                f"{command.NAME} line of {len(line)} bytes is over the limit of "
                f"{self.max_line_bytes} bytes"
            )
        counts = self.sent_counts
        counts[command.NAME] = counts.get(command.NAME, 0) + 1
        self.write(line + b"\n")

    def write(self, data: bytes) -> None:
        """Send whole lines. While the transport has asked us to pause (its own buffer is
        full), lines are queued here; if the queue passes ``max_buffer_bytes`` the peer is
        too slow: it gets ``ERROR Failed to keep up`` and the connection is closed."""
        if self._closing:
            return
        self.session.last_sent = self.clock.seconds()
        if self._paused or self._queue:
            queue = self._queue
            if queue is _NO_QUEUE:
                queue = self._queue = deque()
            queue.append(data)
            self.queued_bytes += len(data)
            limit = self.max_buffer_bytes
            if limit is not None and self.queued_bytes > limit:
                self.send_error("Failed to keep up", FAILED_TO_KEEP_UP)
            return
        self._write(data)

    @property
    def can_write(self) -> bool:
        """True while the transport takes data without queueing here."""
        return not (self._paused or self._queue or self._closing)

    # IPushProducer, called by the transport about *our* output.
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        queue = self._queue
        write = self._link.write
        while queue and not self._paused:
            data = queue.popleft()
            self.queued_bytes -= len(data)
            write(data)
        if self._closing and not queue:
            self._lose_connection()
        if not self._paused and not self._closing:
            self.writable()

    def stopProducing(self) -> None:
        self._queue.clear()
        self.queued_bytes = 0

    # -- inbound -----------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.session.last_received = self.clock.seconds()
        if self._dropping:  # the rest of a too-long line that has a stand-in
            end = data.find(b"\n")
            if end < 0:
                return
            self._dropping = False
            data = data[end + 1:]
        if self._buffer:
            data = self._buffer + data
        lines = data.split(b"\n")
        self._buffer = lines.pop()
        if (
            len(self._buffer) > self.max_line_bytes and not self._closing
            and self.answers_too_long(self._buffer)
        ):
            lines.append(too_long_line(self._buffer, len(self._buffer)))
            self._buffer = b""
            self._dropping = True
        if self._holding:
            self._held.extend(lines)
            self._maybe_pause_reading()
        elif lines:
            self.linesReceived(lines, data)
        if len(self._buffer) > self.max_line_bytes and not self._closing:
            self._line_too_long(len(self._buffer))

    def linesReceived(self, lines: list[bytes], data: bytes | None) -> None:
        """Handle the complete lines of one read (``data``: the bytes they were split from,
        which may end with a partial line; ``None`` for lines released after a hold). Each goes to
        :meth:`lineReceived` until the connection closes or input is held; the rest are then held,
        in order. Subclasses may take common lines faster, as long as they keep that contract (see
        :meth:`hold_remaining`)."""
        for i, line in enumerate(lines):
            if self._closing:
                return
            self.lineReceived(line)
            if self._holding:
                self.hold_remaining(lines, i + 1)
                return

    def hold_remaining(self, lines: list[bytes], start: int) -> None:
        """Input is held: keep ``lines[start:]`` for :meth:`release_input`."""
        self._held.extend(lines[start:])
        self._maybe_pause_reading()

    def answers_too_long(self, head: bytes) -> bool:
        """Whether a line that starts with ``head`` and is longer than the limit is answered
        in its place by this side (a :class:`TooLongLine` then reaches :meth:`linesReceived`
        where the line would have, and its bytes are dropped as they arrive). By default it
        is not: the peer gets ``ERROR line too long`` and the connection closes."""
        return False

    def lineReceived(self, line: bytes) -> None:
        if type(line) is TooLongLine:
            self._line_too_long(line.length)
            return
        if len(line) > self.max_line_bytes:
            self._line_too_long(len(line))
            return
        try:
            command = self.registry.parse(line, self.peer_side)
        except CommandParseError as e:
            self.send_error(str(e))
            return
        self.command_received(command)

    def command_received(self, command: Command) -> None:
        """A parsed command from the peer: counted, then handed to the session, whose
        actions deliver it to ``on_<NAME>`` (or :meth:`unhandled`) once the handshake is
        done."""
        counts = self.received_counts
        counts[command.NAME] = counts.get(command.NAME, 0) + 1
        self.carry_out(self.session.receive(command, self.clock.seconds()))

    def _line_too_long(self, length: int) -> None:
        self._buffer = b""
        self.send_error(
            f"line too long: {length} bytes without a line break, limit {self.max_line_bytes}",
            LINE_TOO_LONG,
        )

    def hold_input(self) -> None:
        """Stop handing received lines to ``lineReceived``; they wait, in order, until
        :meth:`release_input`. When many wait, the transport stops reading."""
        self._holding = True

    def release_input(self) -> None:
        """Hand the lines held since :meth:`hold_input` over, in order, and read again."""
        self._holding = False
        if self._held and not self._closing:
            lines = list(self._held)
            self._held.clear()
            self.linesReceived(lines, None)
        if not self._holding and self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self._link.resumeProducing()
            self.carry_out(self.session.resume_reading(self.clock.seconds()))

    def _maybe_pause_reading(self) -> None:
        if len(self._held) > _HELD_LINES_BEFORE_PAUSE and not self._reading_paused:
            self._reading_paused = True
            self.session.pause_reading()
            self._link.pauseProducing()
