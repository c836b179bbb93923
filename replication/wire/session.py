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

* ``AUTHENTICATING`` (protocol version 2, when the master has credentials): between the
  version agreement and ``READY``, the challenge-response of :mod:`replication.wire.auth`
  (``CHALLENGE``, ``AUTH``, ``AUTH_OK``), for the handshake timeout again, counted from the
  agreement. A master with credentials refuses a worker that speaks version 1 or the legacy
  dialect (``ERROR authentication required: ...``); a worker with a credential refuses a
  master that does not ask for it (``VERSION`` is not followed by ``CHALLENGE``: the master
  is not the one it was configured for), and a worker without one refuses a ``CHALLENGE``
  with an ``ERROR`` saying that a credential must be configured. A wrong proof on either side
  closes with ``ERROR authentication failed`` (:data:`AUTH_FAILED`).

``HandshakeDone`` is emitted on reaching ``READY``, with the credential the peer proved.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, NamedTuple, TypeAlias

from replication.wire.auth import (
    ClientCredential,
    Keyring,
    NonceSource,
    new_nonce,
    proof,
    same,
)
from replication.wire.commands import (
    MASTER,
    WORKER,
    AuthCommand,
    AuthOkCommand,
    ChallengeCommand,
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
#: A proof was wrong (either side), or the credential is unknown.
AUTH_FAILED: Final = "authentication failed"
#: One end requires authentication and the other cannot or will not do it.
AUTH_REQUIRED: Final = "authentication required"
PROTOCOL_ERROR: Final = "protocol error"


class State(enum.Enum):
    """Where a connection is in its life."""

    #: Not connected yet.
    IDLE = "idle"
    #: Connected, this end's first line sent; waiting for the peer's (``SERVER``/``NAME``).
    AWAITING_PEER_NAME = "awaiting peer name"
    #: The peer has named itself; the protocol version is being agreed (``VERSION``).
    NEGOTIATING = "negotiating"
    #: The version is agreed; the challenge-response runs (``CHALLENGE``, ``AUTH``,
    #: ``AUTH_OK``).
    AUTHENTICATING = "authenticating"
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
    #: The peer, while negotiating: a ``VERSION`` that is agreed, on an end that
    #: authenticates (a master with credentials, a worker with a credential).
    VERSION_AUTH = "version, authenticate"
    #: The peer: ``CHALLENGE`` (seen by a worker that authenticates, before it sent ``AUTH``).
    CHALLENGE = "challenge"
    #: The peer: a good ``AUTH`` (seen by a master) or ``AUTH_OK`` (seen by a worker).
    AUTH_GOOD = "good proof"
    #: The peer: a wrong ``AUTH`` or ``AUTH_OK``, an unknown credential.
    AUTH_BAD = "wrong proof"
    #: The peer cannot authenticate as this end requires: version 1 or legacy on a master
    #: with credentials; ``CHALLENGE`` to a worker without a credential, or anything but
    #: ``CHALLENGE`` to a worker with one.
    AUTH_MISSING = "authentication missing"
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
    Event.HELLO, Event.VERSION, Event.BAD_VERSION, Event.UNANNOUNCED, Event.VERSION_AUTH,
    Event.CHALLENGE, Event.AUTH_GOOD, Event.AUTH_BAD, Event.AUTH_MISSING, Event.PING,
    Event.ERROR, Event.COMMAND,
})
#: Clock events: they come only from :meth:`Session.poll`.
CLOCK_EVENTS: Final = frozenset({
    Event.PING_DUE, Event.HANDSHAKE_TIMEOUT, Event.ANNOUNCEMENT_TIMEOUT, Event.PING_TIMEOUT,
    Event.CLOSE_TIMEOUT,
})
#: States in which the peer is connected, so that a command it may not send is its fault.
PEER_CONNECTED: Final = frozenset({
    State.AWAITING_PEER_NAME, State.NEGOTIATING, State.AUTHENTICATING, State.READY,
    State.CLOSING, State.ABORTING,
})


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
    #: A version is agreed and this end authenticates: a master sends ``VERSION <chosen>``
    #: and ``CHALLENGE <nonce>``; a worker notes the version. The deadline starts.
    CHALLENGE = "challenge"
    #: A worker answers ``CHALLENGE``: ``AUTH <credential> <nonce> <proof>``.
    PROVE = "prove"
    #: The proof is good: a master sends ``AUTH_OK <proof>``; tell the application
    #: (``HandshakeDone`` with the dialect and the credential).
    ACCEPT = "accept"
    #: The proof is wrong: send ``ERROR authentication failed`` and close.
    FAIL_AUTH = "fail authentication"
    #: The peer cannot authenticate as required: send ``ERROR`` saying why, and close.
    REQUIRE_AUTH = "require authentication"
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
    (_S.NEGOTIATING, _E.VERSION): _T(_S.READY, _F.AGREE),
    (_S.NEGOTIATING, _E.VERSION_AUTH): _T(_S.AUTHENTICATING, _F.CHALLENGE),
    (_S.NEGOTIATING, _E.BAD_VERSION): _T(_S.CLOSING, _F.REFUSE_VERSION),
    (_S.NEGOTIATING, _E.AUTH_MISSING): _T(_S.CLOSING, _F.REQUIRE_AUTH),
    (_S.NEGOTIATING, _E.UNANNOUNCED): _T(_S.READY, _F.LEGACY),
    (_S.NEGOTIATING, _E.ANNOUNCEMENT_TIMEOUT): _T(_S.READY, _F.LEGACY),
    (_S.NEGOTIATING, _E.PING): _T(_S.NEGOTIATING, _F.NOTE_PING),
    (_S.NEGOTIATING, _E.ERROR): _T(_S.NEGOTIATING, _F.DELIVER),
    (_S.NEGOTIATING, _E.PING_DUE): _T(_S.NEGOTIATING, _F.SEND_PING),
    (_S.NEGOTIATING, _E.HANDSHAKE_TIMEOUT): _T(_S.CLOSING, _F.TIME_OUT),
    (_S.NEGOTIATING, _E.CLOSE): _T(_S.CLOSING, _F.START_CLOSE),
    (_S.NEGOTIATING, _E.CONNECTION_LOST): _T(_S.CLOSED, _F.NOTHING),
    (_S.AUTHENTICATING, _E.CHALLENGE): _T(_S.AUTHENTICATING, _F.PROVE),
    (_S.AUTHENTICATING, _E.AUTH_GOOD): _T(_S.READY, _F.ACCEPT),
    (_S.AUTHENTICATING, _E.AUTH_BAD): _T(_S.CLOSING, _F.FAIL_AUTH),
    (_S.AUTHENTICATING, _E.AUTH_MISSING): _T(_S.CLOSING, _F.REQUIRE_AUTH),
    (_S.AUTHENTICATING, _E.PING): _T(_S.AUTHENTICATING, _F.NOTE_PING),
    (_S.AUTHENTICATING, _E.ERROR): _T(_S.AUTHENTICATING, _F.DELIVER),
    (_S.AUTHENTICATING, _E.PING_DUE): _T(_S.AUTHENTICATING, _F.SEND_PING),
    (_S.AUTHENTICATING, _E.HANDSHAKE_TIMEOUT): _T(_S.CLOSING, _F.TIME_OUT),
    (_S.AUTHENTICATING, _E.CLOSE): _T(_S.CLOSING, _F.START_CLOSE),
    (_S.AUTHENTICATING, _E.CONNECTION_LOST): _T(_S.CLOSED, _F.NOTHING),
    (_S.READY, _E.PING): _T(_S.READY, _F.NOTE_PING),
    (_S.READY, _E.ERROR): _T(_S.READY, _F.DELIVER),
    (_S.READY, _E.COMMAND): _T(_S.READY, _F.DELIVER),
    (_S.READY, _E.AUTH_MISSING): _T(_S.CLOSING, _F.REQUIRE_AUTH),
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


#: The first protocol version that carries authentication.
AUTH_VERSION: Final = 2
#: Peer events of authentication that a closing session discards like any command.
_AUTH_EVENTS: Final = frozenset({Event.CHALLENGE, Event.AUTH_GOOD})


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
    """The handshake is complete; the peer calls itself ``peer_name``, the connection
    speaks ``dialect``, and the peer proved ``credential`` (``None``: no authentication;
    on a worker, the credential the master accepted)."""

    peer_name: str
    dialect: Dialect
    credential: str | None = None


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


def _events_for(peer_hello: str) -> dict[str, Event]:
    return {
        peer_hello: Event.HELLO,
        PingCommand.NAME: Event.PING,
        ErrorCommand.NAME: Event.ERROR,
        VersionCommand.NAME: Event.VERSION,
        ChallengeCommand.NAME: Event.CHALLENGE,
        AuthCommand.NAME: Event.AUTH_GOOD,
        AuthOkCommand.NAME: Event.AUTH_GOOD,
    }


#: The session's events by the peer's command name, per peer side: shared by every
#: session, never changed (a dict of its own cost each connection about 1.8 KiB; a plain
#: dict, since a mapping proxy would cost a little on every command received).
_EVENTS: Final[dict[str, dict[str, Event]]] = {
    side: _events_for(hello) for side, hello in _HELLO_NAMES.items()
}


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
    :param keyring: on a master, the credentials a worker must prove one of (protocol
        version 2 only); ``None``: no authentication.
    :param credential: on a worker, the credential it proves, and that the master must prove
        back; ``None``: it does not authenticate (and refuses a master that asks).
    :param nonces: where nonces come from (default: :func:`replication.wire.auth.new_nonce`;
        tests pass fixed ones).

    Inputs: :meth:`connected`, :meth:`receive`, :meth:`poll`, :meth:`close`,
    :meth:`connection_lost`, each returning the actions to carry out, in order. A
    :class:`WakeAt` comes first when the next deadline changed, so that a later action whose
    side effects feed the session again (an application hook that closes) leaves the newest
    deadline in place. Activity marks, written by the I/O layer as plain attributes so that
    its hot paths pay no call: :attr:`last_sent` (bytes written) and :attr:`last_received`
    (bytes read); and :meth:`pause_reading`/:meth:`resume_reading`.
    """

    # Slots: one session per connection, and a dict of these attributes cost 1.6 KiB each.
    __slots__ = (
        "_agreed", "_announced", "_events", "_failure", "_nonces", "_peer_hello", "agreed_at",
        "authenticated", "claimed", "close_timeout", "closing_at", "connected_at",
        "credential", "dialect", "handshake_timeout", "keyring", "last_received", "last_sent",
        "name", "named_at", "nonce", "peer_name", "peer_nonce", "peer_pinged", "peer_side",
        "ping_interval", "ping_timeout", "reading_paused", "side", "state", "versions",
    )

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
        keyring: Keyring | None = None,
        credential: ClientCredential | None = None,
        nonces: NonceSource = new_nonce,
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
        self.keyring = keyring if side == MASTER else None
        self.credential = credential if side == WORKER else None
        self._nonces = nonces
        #: This end's nonce and the peer's, while authenticating.
        self.nonce: str | None = None
        self.peer_nonce: str | None = None
        #: The credential the peer proved (on a master), or the master accepted (a worker).
        self.authenticated: str | None = None
        #: The credential name the peer's ``AUTH`` named (a master; for logs).
        self.claimed: str | None = None
        #: When the version was agreed (the authentication deadline counts from it).
        self.agreed_at = 0.0
        self._agreed: Dialect | None = None
        self._failure = ""

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
        self._events = _EVENTS[self.peer_side]
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
        elif self.state is State.AUTHENTICATING:
            event = self._authentication_event(event, command)
        elif self.state is State.READY and event is Event.CHALLENGE:
            event = Event.AUTH_MISSING  # a worker without a credential
        elif self.state in (State.CLOSING, State.ABORTING) and event in _AUTH_EVENTS:
            event = Event.COMMAND
        return self._handle(event, now, command)

    def _authentication_event(self, event: Event, command: Command) -> Event:
        """What ``command`` means while authenticating, on this side."""
        if event in (Event.PING, Event.ERROR, Event.HELLO, Event.VERSION):
            return event  # HELLO and VERSION again: the peer's protocol error
        if self.side == MASTER:
            if not isinstance(command, AuthCommand):
                self._failure = (
                    f"{AUTH_REQUIRED}: expected AUTH after CHALLENGE, got {command.NAME}"
                )
                return Event.AUTH_MISSING
            assert self.keyring is not None and self.nonce is not None
            assert self.peer_name is not None
            found = self.keyring.verify(
                command.credential, command.proof, master_name=self.name,
                client_name=self.peer_name, master_nonce=self.nonce,
                client_nonce=command.nonce,
            )
            self.peer_nonce = command.nonce
            self.claimed = command.credential
            self.authenticated = None if found is None else found.name
            self._failure = f"credential {command.credential!r}: wrong proof or unknown"
            return Event.AUTH_BAD if found is None else Event.AUTH_GOOD
        credential = self.credential
        assert credential is not None
        if self.nonce is None:  # waiting for CHALLENGE
            if isinstance(command, ChallengeCommand):
                return Event.CHALLENGE
            self._failure = (
                f"{AUTH_REQUIRED}: this worker authenticates as {credential.name!r} and the "
                "master did not ask "
                f"(expected CHALLENGE after VERSION, got {command.NAME}): is it the right master?"
            )
            return Event.AUTH_MISSING
        if not isinstance(command, AuthOkCommand):
            self._failure = f"{AUTH_REQUIRED}: expected AUTH_OK after AUTH, got {command.NAME}"
            return Event.AUTH_MISSING
        assert self.peer_nonce is not None and self.peer_name is not None
        expected = proof(
            credential.secret, "master", credential=credential.name,
            master_name=self.peer_name, client_name=self.name,
            master_nonce=self.peer_nonce, client_nonce=self.nonce,
        )
        if same(expected, command.proof):
            self.authenticated = credential.name
            return Event.AUTH_GOOD
        self._failure = "the master's proof is wrong: it does not hold this credential's secret"
        return Event.AUTH_BAD

    def _negotiation_event(self, event: Event, command: Command) -> Event:
        """What ``command`` means while the version is being agreed, on this side."""
        if event is Event.VERSION:
            assert isinstance(command, VersionCommand)
            if self.side == MASTER:
                chosen = choose_version(command.versions, self.versions)
            else:  # the master's choice: one version, and one this worker offered
                chosen = (
                    self.versions[command.versions[0]]
                    if len(command.versions) == 1 and command.versions[0] in self.versions
                    else None
                )
            if chosen is None:
                return Event.BAD_VERSION
            if self.keyring is None and self.credential is None:
                return Event.VERSION
            if chosen.version is None or chosen.version < AUTH_VERSION:
                self._failure = self._auth_version_refusal(chosen)
                return Event.AUTH_MISSING
            self._agreed = chosen
            return Event.VERSION_AUTH
        if self.side == MASTER and event is not Event.HELLO:
            if self.keyring is not None:
                self._failure = self._auth_version_refusal(LEGACY)
                return Event.AUTH_MISSING
            return Event.UNANNOUNCED
        if self.side == WORKER and event is Event.CHALLENGE and self.credential is None:
            return Event.AUTH_MISSING
        return event

    def _auth_version_refusal(self, dialect: Dialect) -> str:
        spoken = "the legacy dialect" if dialect.version is None else f"version {dialect.version}"
        if self.side == MASTER:
            return (
                f"{AUTH_REQUIRED}: this master requires credentials, which protocol version "
                f"{AUTH_VERSION} carries; the worker speaks {spoken}"
            )
        return (
            f"{AUTH_REQUIRED}: this worker authenticates, which needs protocol version "
            f"{AUTH_VERSION}; the master chose {spoken}"
        )

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
        if state is State.AUTHENTICATING:
            return min(
                self.last_sent + self.ping_interval, self.agreed_at + self.handshake_timeout
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
                # A master takes a worker that announced nothing for the legacy dialect
                # (unless it requires credentials); a worker needs the master's answer.
                if self.side == MASTER and self.keyring is None:
                    return Event.ANNOUNCEMENT_TIMEOUT
                return Event.HANDSHAKE_TIMEOUT
            if now - self.last_sent >= self.ping_interval:
                return Event.PING_DUE
        elif state is State.AUTHENTICATING:
            if now - self.agreed_at >= self.handshake_timeout:
                return Event.HANDSHAKE_TIMEOUT
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
        if effect is Effect.CHALLENGE:
            assert self._agreed is not None and self._agreed.version is not None
            self.dialect = self._agreed
            self.agreed_at = now
            if self.side == WORKER:
                return _NO_ACTIONS
            self.nonce = self._nonces()
            self.last_sent = now
            return (Send(VersionCommand((self._agreed.version,))),
                    Send(ChallengeCommand(self.nonce)))
        if effect is Effect.PROVE:
            assert isinstance(command, ChallengeCommand) and self.credential is not None
            assert self.peer_name is not None
            credential = self.credential
            self.peer_nonce = command.nonce
            self.nonce = self._nonces()
            self.last_sent = now
            client_proof = proof(
                credential.secret, "client", credential=credential.name,
                master_name=self.peer_name, client_name=self.name,
                master_nonce=command.nonce, client_nonce=self.nonce,
            )
            return (Send(AuthCommand(credential.name, self.nonce, client_proof)),)
        if effect is Effect.ACCEPT:
            assert self.dialect is not None and self.peer_name is not None
            done = HandshakeDone(self.peer_name, self.dialect, self.authenticated)
            if self.side == WORKER:
                return (done,)
            assert isinstance(command, AuthCommand) and self.keyring is not None
            found = self.keyring.get(command.credential)
            assert found is not None and self.nonce is not None
            master_proof = proof(
                found.secret, "master", credential=found.name, master_name=self.name,
                client_name=self.peer_name, master_nonce=self.nonce,
                client_nonce=command.nonce,
            )
            self.last_sent = now
            return (Send(AuthOkCommand(master_proof)), done)
        if effect is Effect.FAIL_AUTH:
            self.closing_at = now
            return (CloseWithError(AUTH_FAILED, AUTH_FAILED, self.peer_side),)
        if effect is Effect.REQUIRE_AUTH:
            self.closing_at = now
            message = self._failure
            if not message:  # a worker without a credential, challenged
                message = (
                    f"{AUTH_REQUIRED}: the master asks for a credential and this worker has "
                    "none configured (auth.credential and its secret)"
                )
            return (CloseWithError(message, AUTH_REQUIRED, self.peer_side),)
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
                if self.peer_name is None:
                    expected = self._peer_hello
                elif self.dialect is None:
                    expected = VersionCommand.NAME
                else:  # the version was agreed: authentication timed out
                    expected = self._awaited_auth()
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

    def _awaited_auth(self) -> str:
        """The authentication command this end was waiting for."""
        if self.side == MASTER:
            return AuthCommand.NAME
        return ChallengeCommand.NAME if self.nonce is None else AuthOkCommand.NAME

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
