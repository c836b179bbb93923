"""The session: one connection's handshake, keepalive and close, as a sans-IO state machine.

:class:`Session` owns what a connection *is* at any moment (its :class:`State`) and every
deadline it waits on, and decides what to do about each command from the peer and each
passing of time. It never touches a socket, a reactor or a clock: the caller passes ``now``
in, feeds it commands with :meth:`Session.receive`, lets time pass with :meth:`Session.poll`,
and carries out the :data:`Action` values they return (send a command, close with ``ERROR``,
the handshake is done, deliver a command to the application, abort, wake me at). The Twisted
side, :class:`replication.wire.protocol.ReplicationProtocol`, does that for real connections;
tests drive a session with plain numbers.

The rules are data: :data:`TRANSITIONS` maps each ``(state, event)`` pair to the next state
and the :class:`Effect` of the transition, and ``docs/protocol.rst`` shows the same table
(a test keeps the two equal). A pair that is not in the table is a protocol error, blamed on
whoever caused the event: a command from the peer that its state does not allow is the
peer's (the session answers it with ``ERROR`` and a close, naming the peer in
:attr:`CloseWithError.culprit`); a local call that the state does not allow (closing a
session that never connected, losing a connection twice) raises :class:`LocalProtocolError`.

Every state that waits on the peer has a deadline (:attr:`Session.deadline`):

* ``AWAITING_PEER_NAME``: the peer's first line must come within the *handshake timeout*,
  which is ``keepalive.ping_timeout`` (no key of its own): a peer that connects and says
  nothing is cut off with ``ERROR handshake timeout: ...``. Pings go out meanwhile.
* ``NEGOTIATING``: the protocol version (see :mod:`replication.wire.dialects`). A worker
  announced its versions with its first line (``VERSION 1``) and waits, for the handshake
  timeout again, for the master's choice; a master waits as long for the worker's
  announcement, and takes a worker whose first command after ``NAME`` is anything else, or
  that says nothing that long, for the legacy dialect (never an error: a Synapse worker sends
  ``REPLICATE`` right after ``NAME``). Which events each side raises here is decided in
  :meth:`Session.receive` and :meth:`Session._due`: the table itself is shared.
* ``READY``: a ``PING`` after ``ping_interval`` seconds without sending anything; and a peer
  that has pinged at least once, then sends nothing for ``ping_timeout`` seconds, is cut off
  with ``ERROR ping timeout``. While this end has stopped reading on purpose
  (:meth:`Session.pause_reading`), the peer's silence does not count.
* ``CLOSING``: a graceful close that has not finished after ``close_timeout`` is aborted.

Authentication will be another state between ``NEGOTIATING`` and ``READY``, waiting on the
peer with a deadline of its own in :attr:`Session.deadline` and :meth:`Session.poll`;
``HandshakeDone`` is emitted on reaching ``READY``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, NamedTuple, TypeAlias

from replication.wire.commands import (
    MASTER,
    WORKER,
    Command,
    ErrorCommand,
    NameCommand,
    PingCommand,
    ServerCommand,
    VersionCommand,
)
from replication.wire.dialects import LEGACY, VERSIONS, Dialect, choose_version

#: Close reasons the session gives (the others, such as ``failed to keep up``, belong to the
#: I/O layer; see :mod:`replication.wire.protocol`).
PING_TIMEOUT: Final = "ping timeout"
HANDSHAKE_TIMEOUT: Final = "handshake timeout"
PROTOCOL_ERROR: Final = "protocol error"


class State(enum.Enum):
    """Where a connection is in its life."""

    #: Not connected yet.
    IDLE = "idle"
    #: Connected, this end's first line sent; waiting for the peer's (``SERVER``/``NAME``).
    AWAITING_PEER_NAME = "awaiting peer name"
    #: The peer has named itself; the protocol version is being agreed (``VERSION``).
    NEGOTIATING = "negotiating"
    #: The handshake is done: commands flow both ways, keepalive runs.
    READY = "ready"
    #: A close has begun: what is buffered is still sent; the peer's input is discarded.
    CLOSING = "closing"
    #: The close stalled and the transport was aborted; the connection's loss follows.
    ABORTING = "aborting"
    #: The connection is gone.
    CLOSED = "closed"


class Event(enum.Enum):
    """What can happen to a session: from this end, from the peer, or from the clock."""

    #: This end: the transport is connected.
    CONNECTED = "connected"
    #: The peer: its first line (``SERVER`` from a master, ``NAME`` from a worker).
    HELLO = "hello"
    #: The peer: ``VERSION`` with a version in common (while negotiating; any ``VERSION``
    #: in the other states).
    VERSION = "version"
    #: The peer: ``VERSION`` with no version in common (a master's choice that the worker did
    #: not offer included).
    BAD_VERSION = "bad version"
    #: The worker (seen by a master while negotiating): a first command after ``NAME`` that
    #: is not ``VERSION``: the legacy dialect.
    UNANNOUNCED = "unannounced"
    #: The peer: ``PING``.
    PING = "ping"
    #: The peer: ``ERROR``.
    ERROR = "error"
    #: The peer: any other command.
    COMMAND = "command"
    #: The clock: nothing sent for ``ping_interval``.
    PING_DUE = "ping due"
    #: The clock: no first line from the peer within the handshake timeout (on a worker:
    #: also no ``VERSION`` from the master within it after ``SERVER``).
    HANDSHAKE_TIMEOUT = "handshake timeout"
    #: The clock, on a master: no announcement from the worker within the handshake timeout
    #: after its ``NAME``: the legacy dialect.
    ANNOUNCEMENT_TIMEOUT = "announcement timeout"
    #: The clock: a peer that has pinged sent nothing for ``ping_timeout``.
    PING_TIMEOUT = "ping timeout"
    #: The clock: a graceful close took ``close_timeout``.
    CLOSE_TIMEOUT = "close timeout"
    #: This end: close (gracefully).
    CLOSE = "close"
    #: This end: the transport reports the connection lost.
    CONNECTION_LOST = "connection lost"


#: Events that come from the peer; the rest come from this end or from the clock.
PEER_EVENTS: Final = frozenset({
    Event.HELLO, Event.VERSION, Event.BAD_VERSION, Event.UNANNOUNCED, Event.PING,
    Event.ERROR, Event.COMMAND,
})
#: Clock events: they come only from :meth:`Session.poll`.
CLOCK_EVENTS: Final = frozenset({
    Event.PING_DUE, Event.HANDSHAKE_TIMEOUT, Event.ANNOUNCEMENT_TIMEOUT, Event.PING_TIMEOUT,
    Event.CLOSE_TIMEOUT,
})
#: States in which the peer is connected, so that a command it may not send is its fault.
PEER_CONNECTED: Final = frozenset(
    {State.AWAITING_PEER_NAME, State.NEGOTIATING, State.READY, State.CLOSING, State.ABORTING}
)


class Effect(enum.Enum):
    """What a transition does, besides changing the state."""

    #: Send this end's first line (``SERVER``, or ``NAME`` and the worker's ``VERSION``
    #: announcement); the handshake deadline starts.
    SEND_HELLO = "send hello"
    #: Record the peer's name; the negotiation deadline starts.
    NOTE_NAME = "note name"
    #: A version is agreed: a master sends ``VERSION <chosen>``; tell the application
    #: (``HandshakeDone`` with the dialect).
    AGREE = "agree"
    #: No version in common: send ``ERROR`` saying so, and close.
    REFUSE_VERSION = "refuse version"
    #: The worker announced nothing: the handshake is done in the legacy dialect
    #: (``HandshakeDone``), then the command that showed it is handled as in ``READY``.
    LEGACY = "legacy"
    #: The peer pings from now on (its silence counts); deliver the ``PING``.
    NOTE_PING = "note ping"
    #: Deliver the command to the application.
    DELIVER = "deliver"
    #: Send ``PING <now in ms>``.
    SEND_PING = "send ping"
    #: Send ``ERROR <which timeout>`` and close.
    TIME_OUT = "time out"
    #: The close deadline starts.
    START_CLOSE = "start close"
    #: Abort the transport.
    ABORT = "abort"
    #: Nothing (input after a close is discarded; a second close is the first one).
    NOTHING = "nothing"


class Transition(NamedTuple):
    """One row of :data:`TRANSITIONS`: the next state, and what the transition does."""

    target: State
    effect: Effect


_S, _E, _F, _T = State, Event, Effect, Transition

#: The session's rules: ``(state, event) -> (next state, effect)``. A pair missing here is a
#: protocol error (see the module docstring). ``docs/protocol.rst`` shows the same table, in
#: the same order.
TRANSITIONS: Final[Mapping[tuple[State, Event], Transition]] = MappingProxyType({
    (_S.IDLE, _E.CONNECTED): _T(_S.AWAITING_PEER_NAME, _F.SEND_HELLO),
    (_S.AWAITING_PEER_NAME, _E.HELLO): _T(_S.NEGOTIATING, _F.NOTE_NAME),
    (_S.AWAITING_PEER_NAME, _E.PING_DUE): _T(_S.AWAITING_PEER_NAME, _F.SEND_PING),
    (_S.AWAITING_PEER_NAME, _E.HANDSHAKE_TIMEOUT): _T(_S.CLOSING, _F.TIME_OUT),
    (_S.AWAITING_PEER_NAME, _E.CLOSE): _T(_S.CLOSING, _F.START_CLOSE),
    (_S.AWAITING_PEER_NAME, _E.CONNECTION_LOST): _T(_S.CLOSED, _F.NOTHING),
    # The seam: authentication will be a state between NEGOTIATING and READY.
    (_S.NEGOTIATING, _E.VERSION): _T(_S.READY, _F.AGREE),
    (_S.NEGOTIATING, _E.BAD_VERSION): _T(_S.CLOSING, _F.REFUSE_VERSION),
    (_S.NEGOTIATING, _E.UNANNOUNCED): _T(_S.READY, _F.LEGACY),
    (_S.NEGOTIATING, _E.ANNOUNCEMENT_TIMEOUT): _T(_S.READY, _F.LEGACY),
    (_S.NEGOTIATING, _E.PING): _T(_S.NEGOTIATING, _F.NOTE_PING),
    (_S.NEGOTIATING, _E.ERROR): _T(_S.NEGOTIATING, _F.DELIVER),
    (_S.NEGOTIATING, _E.PING_DUE): _T(_S.NEGOTIATING, _F.SEND_PING),
    (_S.NEGOTIATING, _E.HANDSHAKE_TIMEOUT): _T(_S.CLOSING, _F.TIME_OUT),
    (_S.NEGOTIATING, _E.CLOSE): _T(_S.CLOSING, _F.START_CLOSE),
    (_S.NEGOTIATING, _E.CONNECTION_LOST): _T(_S.CLOSED, _F.NOTHING),
    (_S.READY, _E.PING): _T(_S.READY, _F.NOTE_PING),
    (_S.READY, _E.ERROR): _T(_S.READY, _F.DELIVER),
    (_S.READY, _E.COMMAND): _T(_S.READY, _F.DELIVER),
    (_S.READY, _E.PING_DUE): _T(_S.READY, _F.SEND_PING),
    (_S.READY, _E.PING_TIMEOUT): _T(_S.CLOSING, _F.TIME_OUT),
    (_S.READY, _E.CLOSE): _T(_S.CLOSING, _F.START_CLOSE),
    (_S.READY, _E.CONNECTION_LOST): _T(_S.CLOSED, _F.NOTHING),
    (_S.CLOSING, _E.HELLO): _T(_S.CLOSING, _F.NOTHING),
    (_S.CLOSING, _E.VERSION): _T(_S.CLOSING, _F.NOTHING),
    (_S.CLOSING, _E.PING): _T(_S.CLOSING, _F.NOTHING),
    (_S.CLOSING, _E.ERROR): _T(_S.CLOSING, _F.NOTHING),
    (_S.CLOSING, _E.COMMAND): _T(_S.CLOSING, _F.NOTHING),
    (_S.CLOSING, _E.CLOSE): _T(_S.CLOSING, _F.NOTHING),
    (_S.CLOSING, _E.CLOSE_TIMEOUT): _T(_S.ABORTING, _F.ABORT),
    (_S.CLOSING, _E.CONNECTION_LOST): _T(_S.CLOSED, _F.NOTHING),
    (_S.ABORTING, _E.HELLO): _T(_S.ABORTING, _F.NOTHING),
    (_S.ABORTING, _E.VERSION): _T(_S.ABORTING, _F.NOTHING),
    (_S.ABORTING, _E.PING): _T(_S.ABORTING, _F.NOTHING),
    (_S.ABORTING, _E.ERROR): _T(_S.ABORTING, _F.NOTHING),
    (_S.ABORTING, _E.COMMAND): _T(_S.ABORTING, _F.NOTHING),
    (_S.ABORTING, _E.CLOSE): _T(_S.ABORTING, _F.NOTHING),
    (_S.ABORTING, _E.CONNECTION_LOST): _T(_S.CLOSED, _F.NOTHING),
    (_S.CLOSED, _E.CLOSE): _T(_S.CLOSED, _F.NOTHING),
})


def _versions_text(versions: Iterable[int]) -> str:
    """Versions as ``VERSION`` lists them: highest first."""
    return " ".join(map(str, sorted(versions, reverse=True)))


class LocalProtocolError(Exception):
    """This end asked its session for something the session's state does not allow: a bug
    in the caller, not in the peer."""


# -- actions: what the caller carries out, in order ------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``command`` to the peer."""

    command: Command


@dataclass(frozen=True, slots=True)
class Deliver:
    """Hand ``command``, received from the peer, to the application."""

    command: Command


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    """The handshake is complete; the peer calls itself ``peer_name`` and the connection
    speaks ``dialect``."""

    peer_name: str
    dialect: Dialect


@dataclass(frozen=True, slots=True)
class CloseWithError:
    """Send ``ERROR <message>`` ahead of anything queued, then close with ``reason``.
    ``culprit`` is who caused it: the peer's side (``"master"`` or ``"worker"``)."""

    message: str
    reason: str
    culprit: str


@dataclass(frozen=True, slots=True)
class Abort:
    """Abort the transport: the graceful close stalled."""


@dataclass(frozen=True, slots=True)
class WakeAt:
    """Call :meth:`Session.poll` at ``deadline`` (``None``: nothing to wait for). Replaces
    any earlier wake-up; calling earlier is harmless, calling later is not."""

    deadline: float | None


Action: TypeAlias = Send | Deliver | HandshakeDone | CloseWithError | Abort | WakeAt

_NO_ACTIONS: Final[tuple[Action, ...]] = ()
_HELLO_NAMES: Final = {MASTER: ServerCommand.NAME, WORKER: NameCommand.NAME}


class Session:
    """The state of one end of one connection, driven by the caller with ``now`` in seconds.

    :param side: ``"master"`` or ``"worker"``: which end this is.
    :param name: what this end calls itself in its first line.
    :param ping_interval: send ``PING`` after this many seconds without sending anything.
    :param ping_timeout: cut off a peer that has pinged and is then silent this long.
    :param close_timeout: abort a graceful close that takes longer than this.
    :param handshake_timeout: cut off a peer whose first line has not arrived this long after
        the connection was made; ``None`` (the default) takes ``ping_timeout``. The version
        negotiation after the peer's first line may take as long again.
    :param versions: the protocol versions this end speaks (default: every version of this
        release, :data:`replication.wire.dialects.VERSIONS`); a worker announces them all, a
        master chooses the highest it shares with the worker.

    Inputs: :meth:`connected`, :meth:`receive`, :meth:`poll`, :meth:`close`,
    :meth:`connection_lost`, each returning the actions to carry out, in order. A
    :class:`WakeAt` comes first when the next deadline changed, so that a later action whose
    side effects feed the session again (an application hook that closes) leaves the newest
    deadline in place. Activity marks, written by the I/O layer as plain attributes so that
    its hot paths pay no call: :attr:`last_sent` (bytes written) and :attr:`last_received`
    (bytes read); and :meth:`pause_reading`/:meth:`resume_reading`.
    """

    def __init__(
        self,
        side: str,
        name: str,
        *,
        ping_interval: float,
        ping_timeout: float,
        close_timeout: float,
        handshake_timeout: float | None = None,
        versions: Mapping[int, Dialect] = VERSIONS,
    ) -> None:
        if side not in _HELLO_NAMES:
            raise ValueError(f"side must be {MASTER!r} or {WORKER!r}")
        self.side = side
        self.peer_side = WORKER if side == MASTER else MASTER
        self.name = name
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.handshake_timeout = ping_timeout if handshake_timeout is None else handshake_timeout
        if not versions:
            raise ValueError("a session speaks at least one protocol version")
        self.versions = versions
        #: The agreed dialect, once the handshake is done.
        self.dialect: Dialect | None = None

        self.state = State.IDLE
        self.peer_name: str | None = None
        #: Whether the peer has sent a ``PING``: only then does its silence count.
        self.peer_pinged = False
        self.reading_paused = False
        self.connected_at = 0.0
        #: When the peer's first line arrived (the negotiation deadline counts from it).
        self.named_at = 0.0
        self.closing_at = 0.0
        #: When this end last wrote, and last read, bytes (written by the I/O layer).
        self.last_sent = 0.0
        self.last_received = 0.0
        self._peer_hello = _HELLO_NAMES[self.peer_side]
        self._events = {
            self._peer_hello: Event.HELLO,
            PingCommand.NAME: Event.PING,
            ErrorCommand.NAME: Event.ERROR,
            VersionCommand.NAME: Event.VERSION,
        }
        #: The deadline of the last WakeAt returned: the caller's timer.
        self._announced: float | None = None

    # -- inputs -----------------------------------------------------------------------

    def connected(self, now: float) -> tuple[Action, ...]:
        """The transport is connected: send this end's first line; deadlines start."""
        return self._handle(Event.CONNECTED, now, None)

    def receive(self, command: Command, now: float) -> tuple[Action, ...]:
        """A command from the peer (already parsed and allowed for its side)."""
        event = self._events.get(command.NAME, Event.COMMAND)
        if event is Event.COMMAND and self.state is State.READY:
            # The row (READY, COMMAND) -> (READY, DELIVER), the common case, taken without
            # the table lookup (whose enum hashing costs more than the rest of it).
            return (Deliver(command),)
        if self.state is State.NEGOTIATING:
            event = self._negotiation_event(event, command)
        return self._handle(event, now, command)

    def _negotiation_event(self, event: Event, command: Command) -> Event:
        """What ``command`` means while the version is being agreed, on this side."""
        if event is Event.VERSION:
            assert isinstance(command, VersionCommand)
            if self.side == MASTER:
                agreed = choose_version(command.versions, self.versions) is not None
            else:  # the master's choice: one version, and one this worker offered
                agreed = len(command.versions) == 1 and command.versions[0] in self.versions
            return Event.VERSION if agreed else Event.BAD_VERSION
        if self.side == MASTER and event is not Event.HELLO:
            return Event.UNANNOUNCED
        return event

    def poll(self, now: float) -> tuple[Action, ...]:
        """Time has passed: act on the deadline that has come, if any. Always starts with a
        :class:`WakeAt`: the caller's timer is spent."""
        event = self._due(now)
        actions = _NO_ACTIONS if event is None else self._transition(event, now, None)
        self._announced = deadline = self.deadline
        return (WakeAt(deadline), *actions)

    def close(self, now: float) -> tuple[Action, ...]:
        """This end closes (gracefully); a close already under way is left as it is."""
        return self._handle(Event.CLOSE, now, None)

    def connection_lost(self, now: float) -> tuple[Action, ...]:
        """The transport reports the connection gone: no deadline is left."""
        return self._handle(Event.CONNECTION_LOST, now, None)

    def pause_reading(self) -> None:
        """This end stopped reading on purpose: the peer's silence does not count. (That
        can only move the deadline later, so there is nothing to carry out.)"""
        self.reading_paused = True

    def resume_reading(self, now: float) -> tuple[Action, ...]:
        """This end reads again; the peer's silence counts from ``now``."""
        self.reading_paused = False
        self.last_received = now
        return self._wake()

    # -- deadlines --------------------------------------------------------------------

    @property
    def deadline(self) -> float | None:
        """When :meth:`poll` next has something to do; ``None`` when nothing is awaited."""
        state = self.state
        if state is State.READY:
            due = self.last_sent + self.ping_interval
            if self.peer_pinged and not self.reading_paused:
                due = min(due, self.last_received + self.ping_timeout)
            return due
        if state is State.AWAITING_PEER_NAME:
            return min(
                self.last_sent + self.ping_interval, self.connected_at + self.handshake_timeout
            )
        if state is State.NEGOTIATING:
            return min(
                self.last_sent + self.ping_interval, self.named_at + self.handshake_timeout
            )
        if state is State.CLOSING:
            return self.closing_at + self.close_timeout
        return None

    def _due(self, now: float) -> Event | None:
        """The clock event that has come by ``now``, if any (the first of them)."""
        state = self.state
        if state is State.READY:
            if self.reading_paused:
                # Our own choice not to read: the peer's pings wait unread in the socket.
                self.last_received = now
            if self.peer_pinged and now - self.last_received >= self.ping_timeout:
                return Event.PING_TIMEOUT
            if now - self.last_sent >= self.ping_interval:
                return Event.PING_DUE
        elif state is State.AWAITING_PEER_NAME:
            if now - self.connected_at >= self.handshake_timeout:
                return Event.HANDSHAKE_TIMEOUT
            if now - self.last_sent >= self.ping_interval:
                return Event.PING_DUE
        elif state is State.NEGOTIATING:
            if now - self.named_at >= self.handshake_timeout:
                # A master takes a worker that announced nothing for the legacy dialect; a
                # worker needs the master's answer.
                return (
                    Event.ANNOUNCEMENT_TIMEOUT if self.side == MASTER else Event.HANDSHAKE_TIMEOUT
                )
            if now - self.last_sent >= self.ping_interval:
                return Event.PING_DUE
        elif state is State.CLOSING and now - self.closing_at >= self.close_timeout:
            return Event.CLOSE_TIMEOUT
        return None

    def _wake(self) -> tuple[Action, ...]:
        """A :class:`WakeAt` if the deadline moved since the last one returned."""
        deadline = self.deadline
        if deadline == self._announced:
            return _NO_ACTIONS
        self._announced = deadline
        return (WakeAt(deadline),)

    # -- transitions ------------------------------------------------------------------

    def _handle(self, event: Event, now: float, command: Command | None) -> tuple[Action, ...]:
        actions = self._transition(event, now, command)
        return self._wake() + actions

    def _transition(
        self, event: Event, now: float, command: Command | None
    ) -> tuple[Action, ...]:
        """Take the table's row for ``(state, event)``: change the state, do the effect."""
        transition = TRANSITIONS.get((self.state, event))
        if transition is None:
            return self._missing(event, now, command)
        self.state = transition.target
        effect = transition.effect
        if effect is Effect.NOTHING:
            return _NO_ACTIONS
        if effect is Effect.DELIVER:
            assert command is not None
            return (Deliver(command),)
        if effect is Effect.NOTE_PING:
            assert command is not None
            self.peer_pinged = True
            return (Deliver(command),)
        if effect is Effect.SEND_PING:
            self.last_sent = now
            return (Send(PingCommand(int(now * 1000))),)
        if effect is Effect.NOTE_NAME:
            assert isinstance(command, (ServerCommand, NameCommand))
            self.peer_name = (
                command.server_name if isinstance(command, ServerCommand) else command.name
            )
            self.named_at = now
            return _NO_ACTIONS
        if effect is Effect.AGREE:
            assert isinstance(command, VersionCommand) and self.peer_name is not None
            if self.side == MASTER:
                dialect = choose_version(command.versions, self.versions)
                assert dialect is not None and dialect.version is not None
                self.dialect = dialect
                self.last_sent = now
                return (Send(VersionCommand((dialect.version,))),
                        HandshakeDone(self.peer_name, dialect))
            self.dialect = self.versions[command.versions[0]]
            return (HandshakeDone(self.peer_name, self.dialect),)
        if effect is Effect.LEGACY:
            assert self.peer_name is not None
            self.dialect = LEGACY
            done = HandshakeDone(self.peer_name, LEGACY)
            if command is None:  # the announcement's deadline passed
                return (done,)
            # The command that showed the legacy dialect, handled as in READY.
            return (done, *self._transition(self._events.get(command.NAME, Event.COMMAND),
                                            now, command))
        if effect is Effect.REFUSE_VERSION:
            assert isinstance(command, VersionCommand)
            self.closing_at = now
            return (CloseWithError(self._refusal(command), PROTOCOL_ERROR, self.peer_side),)
        if effect is Effect.SEND_HELLO:
            self.connected_at = self.last_sent = self.last_received = now
            if self.side == MASTER:
                return (Send(ServerCommand(self.name)),)
            announce = VersionCommand(tuple(sorted(self.versions, reverse=True)))
            return (Send(NameCommand(self.name)), Send(announce))
        if effect is Effect.START_CLOSE:
            self.closing_at = now
            return _NO_ACTIONS
        if effect is Effect.TIME_OUT:
            self.closing_at = now
            if event is Event.HANDSHAKE_TIMEOUT:
                expected = self._peer_hello if self.peer_name is None else VersionCommand.NAME
                message = (
                    f"handshake timeout: expected {expected} within {self.handshake_timeout:g}s"
                )
                return (CloseWithError(message, HANDSHAKE_TIMEOUT, self.peer_side),)
            return (CloseWithError("ping timeout", PING_TIMEOUT, self.peer_side),)
        assert effect is Effect.ABORT
        return (Abort(),)

    def _missing(self, event: Event, now: float, command: Command | None) -> tuple[Action, ...]:
        """No row for ``(state, event)``: the peer's protocol error, or this end's."""
        state = self.state
        if command is None or event not in PEER_EVENTS or state not in PEER_CONNECTED:
            raise LocalProtocolError(f"{event.name} cannot happen in state {state.name}")
        if event is Event.HELLO:
            message = f"{command.NAME} may only be sent once, as the first line"
        elif state is State.AWAITING_PEER_NAME:
            message = f"expected {self._peer_hello} first, got {command.NAME}"
        elif state is State.NEGOTIATING:  # a worker waiting for the master's choice
            message = f"expected VERSION after {self._peer_hello}, got {command.NAME}"
        else:
            message = f"{command.NAME} may only be sent once, during the handshake"
        self.state = State.CLOSING
        self.closing_at = now
        return (CloseWithError(message, PROTOCOL_ERROR, self.peer_side),)

    def _refusal(self, command: VersionCommand) -> str:
        """The ``ERROR`` text for a ``VERSION`` with nothing in common."""
        ours = _versions_text(self.versions)
        theirs = _versions_text(command.versions)
        if self.side == MASTER:
            return (
                f"no common protocol version: the worker speaks {theirs}, "
                f"this master speaks {ours}"
            )
        if len(command.versions) != 1:
            return f"the master must choose one protocol version, got VERSION {theirs}"
        return (
            f"the master chose protocol version {theirs}, which this worker did not offer "
            f"(it speaks {ours})"
        )
