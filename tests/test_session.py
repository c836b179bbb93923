"""The sans-IO session (:mod:`replication.wire.session`) driven with plain numbers: every row
of its transition table, every pair missing from it, and every deadline at its edge. No
socket, no reactor, no clock."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from replication.wire.auth import ClientCredential, Credential, Keyring, Permissions, proof
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
    ReplicateCommand,
    ServerCommand,
    VersionCommand,
)
from replication.wire.dialects import LEGACY, VERSION_1, VERSION_2, VERSIONS, Dialect
from replication.wire.session import (
    AUTH_FAILED,
    AUTH_REQUIRED,
    CLOCK_EVENTS,
    HANDSHAKE_TIMEOUT,
    PEER_CONNECTED,
    PEER_EVENTS,
    PING_TIMEOUT,
    PROTOCOL_ERROR,
    TRANSITIONS,
    Abort,
    Action,
    CloseWithError,
    Deliver,
    Effect,
    Event,
    HandshakeDone,
    LocalProtocolError,
    Send,
    Session,
    State,
    Transition,
    WakeAt,
)

#: Timers used throughout, chosen so that sums stay exact in binary floating point.
INTERVAL, TIMEOUT, CLOSE = 5.0, 25.0, 3.0
START = 100.0
#: Just before a deadline.
EARLY = 1 / 1024


def new_session(side: str = MASTER, *, auth: bool = False, **timers: float) -> Session:
    """A session speaking version 1 only: the table's rows do not depend on the versions;
    with ``auth``, version 2 only, with :data:`KEYRING` (a master) or :data:`CREDENTIAL` (a
    worker), and nonces :data:`MASTER_NONCE`/:data:`WORKER_NONCE`."""
    settings = {"ping_interval": INTERVAL, "ping_timeout": TIMEOUT, "close_timeout": CLOSE}
    settings.update(timers)
    if auth:
        nonce = MASTER_NONCE if side == MASTER else WORKER_NONCE
        return Session(
            side, "me", versions={2: VERSION_2}, keyring=KEYRING if side == MASTER else None,
            credential=CREDENTIAL if side == WORKER else None, nonces=lambda: nonce,
            **settings,
        )
    return Session(side, "me", versions={1: VERSION_1}, **settings)


SECRET = b"s3cret"
KEYRING = Keyring([Credential("w1", SECRET, Permissions(read=frozenset({"events"})))])
CREDENTIAL = ClientCredential("w1", SECRET)
MASTER_NONCE, WORKER_NONCE = "1" * 32, "2" * 32


def good_auth(master_name: str = "me", worker_name: str = "peer-1") -> AuthCommand:
    """The AUTH a worker holding :data:`SECRET` sends to a master's :data:`MASTER_NONCE`."""
    return AuthCommand("w1", WORKER_NONCE, proof(
        SECRET, "client", credential="w1", master_name=master_name, client_name=worker_name,
        master_nonce=MASTER_NONCE, client_nonce=WORKER_NONCE,
    ))


def hello_from_peer(session: Session) -> Command:
    return NameCommand("peer-1") if session.side == MASTER else ServerCommand("peer-1")


def effects(actions: tuple[Action, ...]) -> list[Action]:
    """The actions without the wake-ups."""
    return [a for a in actions if not isinstance(a, WakeAt)]


def in_state(
    state: State, side: str = MASTER, *, pinged: bool = False, auth: bool = False
) -> Session:
    """A session brought to ``state`` through its public inputs (READY through version 1);
    ``pinged``: the peer has sent a PING (only for READY). With ``auth``, see
    :func:`new_session`; AUTHENTICATING is reached by agreeing on version 2 (and a worker
    then waits for CHALLENGE)."""
    session = new_session(side, auth=auth or state is State.AUTHENTICATING)
    if state is State.IDLE:
        return session
    session.connected(START)
    if state is State.AWAITING_PEER_NAME:
        return session
    if state is State.CLOSED:
        session.connection_lost(START)
        return session
    session.receive(hello_from_peer(session), START)
    if state is State.NEGOTIATING:
        return session
    if state is State.AUTHENTICATING:
        session.receive(VersionCommand((2,)), START)
        assert session.state is State.AUTHENTICATING
        return session
    session.receive(VersionCommand((1,)), START)
    if pinged:
        session.receive(PingCommand(1), START)
    if state is State.READY:
        return session
    session.close(START)
    if state is State.CLOSING:
        return session
    assert state is State.ABORTING
    assert effects(session.poll(START + CLOSE)) == [Abort()]
    return session


def fire(session: Session, event: Event) -> tuple[tuple[Action, ...], float]:
    """Make ``event`` happen to ``session`` through its public inputs; return the actions
    and the time it happened at."""
    now = START + 1
    if event is Event.CONNECTED:
        return session.connected(now), now
    if event is Event.CLOSE:
        return session.close(now), now
    if event is Event.CONNECTION_LOST:
        return session.connection_lost(now), now
    if event is Event.HELLO:
        return session.receive(hello_from_peer(session), now), now
    if event is Event.VERSION:
        return session.receive(VersionCommand((1,)), now), now
    if event is Event.VERSION_AUTH:
        return session.receive(VersionCommand((2,)), now), now
    if event is Event.CHALLENGE:
        return session.receive(ChallengeCommand(MASTER_NONCE), now), now
    if event is Event.AUTH_GOOD:
        return session.receive(good_auth(), now), now
    if event is Event.AUTH_BAD:
        return session.receive(AuthCommand("w1", WORKER_NONCE, "0" * 64), now), now
    if event is Event.AUTH_MISSING:
        if session.side == WORKER:  # a worker without a credential, challenged
            return session.receive(ChallengeCommand(MASTER_NONCE), now), now
        return session.receive(ReplicateCommand("events", 41), now), now
    if event is Event.BAD_VERSION:
        return session.receive(VersionCommand((7,)), now), now
    if event is Event.PING:
        return session.receive(PingCommand(7), now), now
    if event is Event.ERROR:
        return session.receive(ErrorCommand("oops"), now), now
    if event in (Event.COMMAND, Event.UNANNOUNCED):
        return session.receive(ReplicateCommand("events", 41), now), now
    # The clock: poll when this event, and no other, is due.
    since = {
        State.NEGOTIATING: session.named_at, State.AUTHENTICATING: session.agreed_at,
    }.get(session.state, session.connected_at)
    deadline = {
        Event.PING_DUE: session.last_sent + INTERVAL,
        Event.HANDSHAKE_TIMEOUT: since + TIMEOUT,
        Event.ANNOUNCEMENT_TIMEOUT: session.named_at + TIMEOUT,
        Event.PING_TIMEOUT: session.last_received + TIMEOUT,
        Event.CLOSE_TIMEOUT: session.closing_at + CLOSE,
    }[event]
    if event is Event.PING_TIMEOUT:
        session.last_sent = deadline  # so that no PING is due at the same time
    return session.poll(deadline), deadline


#: Rows of the negotiation that only a worker's session takes (a master takes the peer's
#: PING, ERROR and other commands there for the legacy dialect, and its deadline for the
#: announcement has an event of its own); the master-only rows are the legacy ones.
WORKER_ONLY = {
    (State.NEGOTIATING, Event.PING),
    (State.NEGOTIATING, Event.ERROR),
    (State.NEGOTIATING, Event.HANDSHAKE_TIMEOUT),
    (State.AUTHENTICATING, Event.CHALLENGE),
    (State.READY, Event.AUTH_MISSING),
}
#: Events of rows that need a session that authenticates.
AUTH_ROWS = {Event.VERSION_AUTH, Event.AUTH_MISSING}


def side_of(state: State, event: Event) -> str:
    return WORKER if (state, event) in WORKER_ONLY else MASTER


@pytest.mark.parametrize(
    "state, event, row",
    [(state, event, row) for (state, event), row in TRANSITIONS.items()],
    ids=[f"{state.name}-{event.name}" for state, event in TRANSITIONS],
)
def test_every_transition_of_the_table(state: State, event: Event, row: Transition) -> None:
    """Each row of the table, fired through the session's public inputs, leads to the row's
    next state and does the row's effect (seen in the actions returned)."""
    side = side_of(state, event)
    peer = WORKER if side == MASTER else MASTER
    auth = event in AUTH_ROWS and state is not State.READY
    session = in_state(state, side, pinged=event is Event.PING_TIMEOUT, auth=auth)
    actions, now = fire(session, event)
    assert session.state is row.target
    done = effects(actions)
    effect = row.effect
    if effect is Effect.SEND_HELLO:
        assert done == [Send(ServerCommand("me"))]
        assert session.connected_at == session.last_sent == now
    elif effect is Effect.NOTE_NAME:
        assert done == []
        assert session.peer_name == "peer-1"
        assert session.named_at == now
    elif effect is Effect.AGREE:
        assert done == [Send(VersionCommand((1,))), HandshakeDone("peer-1", VERSION_1)]
        assert session.dialect is VERSION_1
    elif effect is Effect.REFUSE_VERSION:
        assert done == [CloseWithError(
            "no common protocol version: the worker speaks 7, this master speaks 1",
            PROTOCOL_ERROR, WORKER,
        )]
    elif effect is Effect.LEGACY:
        assert done[0] == HandshakeDone("peer-1", LEGACY)
        assert done[1:] == ([] if event is Event.ANNOUNCEMENT_TIMEOUT
                            else [Deliver(ReplicateCommand("events", 41))])
        assert session.dialect is LEGACY
    elif effect is Effect.CHALLENGE:
        assert done == [Send(VersionCommand((2,))), Send(ChallengeCommand(MASTER_NONCE))]
        assert session.dialect is VERSION_2 and session.agreed_at == now
    elif effect is Effect.PROVE:
        assert done == [Send(AuthCommand("w1", WORKER_NONCE, proof(
            SECRET, "client", credential="w1", master_name="peer-1", client_name="me",
            master_nonce=MASTER_NONCE, client_nonce=WORKER_NONCE,
        )))]
    elif effect is Effect.ACCEPT:
        assert done == [
            Send(AuthOkCommand(proof(
                SECRET, "master", credential="w1", master_name="me", client_name="peer-1",
                master_nonce=MASTER_NONCE, client_nonce=WORKER_NONCE,
            ))),
            HandshakeDone("peer-1", VERSION_2, "w1"),
        ]
    elif effect is Effect.FAIL_AUTH:
        assert done == [CloseWithError("authentication failed", AUTH_FAILED, peer)]
    elif effect is Effect.REQUIRE_AUTH:
        assert len(done) == 1 and isinstance(done[0], CloseWithError)
        assert done[0].reason == AUTH_REQUIRED and done[0].culprit == peer
        assert done[0].message.startswith("authentication required: ")
    elif effect is Effect.NOTE_PING:
        assert done == [Deliver(PingCommand(7))]
        assert session.peer_pinged
    elif effect is Effect.DELIVER:
        delivered = ErrorCommand("oops") if event is Event.ERROR else ReplicateCommand("events", 41)
        assert done == [Deliver(delivered)]
    elif effect is Effect.SEND_PING:
        assert done == [Send(PingCommand(int(now * 1000)))]
        assert session.last_sent == now
    elif effect is Effect.TIME_OUT:
        expected = {
            Event.HANDSHAKE_TIMEOUT: CloseWithError(
                "handshake timeout: expected "
                + {State.NEGOTIATING: "VERSION", State.AUTHENTICATING: "AUTH"}.get(state, "NAME")
                + " within 25s",
                HANDSHAKE_TIMEOUT, peer,
            ),
            Event.PING_TIMEOUT: CloseWithError("ping timeout", PING_TIMEOUT, peer),
        }[event]
        assert done == [expected]
        assert session.closing_at == now
    elif effect is Effect.START_CLOSE:
        assert done == []
        assert session.closing_at == now
    elif effect is Effect.ABORT:
        assert done == [Abort()]
    else:
        assert effect is Effect.NOTHING
        assert done == []
    # A wake-up, when there is one, comes first and names the session's new deadline.
    wakes = [i for i, a in enumerate(actions) if isinstance(a, WakeAt)]
    assert wakes in ([], [0])
    if wakes:
        assert actions[0] == WakeAt(session.deadline)


MISSING = [
    (state, event)
    for state, event in itertools.product(State, Event)
    if (state, event) not in TRANSITIONS
]
#: Events the session makes of a peer's command only while negotiating.
NEGOTIATION_ONLY = {Event.BAD_VERSION, Event.UNANNOUNCED}
#: Events of authentication: their missing pairs are tested below ("authentication"), on
#: sessions that authenticate.
AUTH_EVENTS = {
    Event.VERSION_AUTH, Event.CHALLENGE, Event.AUTH_GOOD, Event.AUTH_BAD, Event.AUTH_MISSING,
}
MISSING = [
    (s, e) for s, e in MISSING
    # Any other command while authenticating is AUTH_MISSING (tested below).
    if e not in AUTH_EVENTS and (s, e) != (State.AUTHENTICATING, Event.COMMAND)
]
PEER_FAULTS = [
    (s, e)
    for s, e in MISSING
    if e in PEER_EVENTS and s in PEER_CONNECTED
    and (e not in NEGOTIATION_ONLY or s is State.NEGOTIATING)
]
LOCAL_FAULTS = [
    (s, e)
    for s, e in MISSING
    if (s, e) not in PEER_FAULTS
    # Clock events come only from poll, which finds only those of the session's state.
    and e not in CLOCK_EVENTS
    and e not in NEGOTIATION_ONLY
]


def test_the_missing_pairs_are_those_the_protocol_forbids() -> None:
    """The peer's faults are exactly: anything but its first line before its first line;
    its first line again afterwards; VERSION after the handshake; and, on a worker, any
    answer but VERSION (or PING, ERROR) to its announcement."""
    assert sorted(PEER_FAULTS, key=str) == sorted(
        [
            (State.AWAITING_PEER_NAME, Event.VERSION),
            (State.AWAITING_PEER_NAME, Event.PING),
            (State.AWAITING_PEER_NAME, Event.ERROR),
            (State.AWAITING_PEER_NAME, Event.COMMAND),
            (State.NEGOTIATING, Event.HELLO),
            (State.NEGOTIATING, Event.COMMAND),
            (State.AUTHENTICATING, Event.HELLO),
            (State.AUTHENTICATING, Event.VERSION),
            (State.READY, Event.HELLO),
            (State.READY, Event.VERSION),
        ],
        key=str,
    )


#: The peer's faults, by the side that sees them: a master takes any command after NAME
#: (but NAME again) for the legacy dialect, so only a worker sees NEGOTIATING-COMMAND.
SIDED_FAULTS = [
    (side, s, e)
    for side in (MASTER, WORKER)
    for s, e in PEER_FAULTS
    if not (side == MASTER and (s, e) == (State.NEGOTIATING, Event.COMMAND))
]


@pytest.mark.parametrize(
    "side, state, event", SIDED_FAULTS, ids=[f"{d}-{s.name}-{e.name}" for d, s, e in SIDED_FAULTS]
)
def test_a_missing_pair_from_the_peer_is_its_protocol_error(
    side: str, state: State, event: Event
) -> None:
    """A command the peer may not send in the session's state is answered with ERROR and a
    close, blamed on the peer; the session is then CLOSING, with the close deadline."""
    session = in_state(state, side)
    actions, now = fire(session, event)
    peer = WORKER if side == MASTER else MASTER
    hello = "NAME" if side == MASTER else "SERVER"
    if state is State.AWAITING_PEER_NAME:
        got = {Event.VERSION: "VERSION", Event.PING: "PING", Event.ERROR: "ERROR"}
        message = f"expected {hello} first, got {got.get(event, 'REPLICATE')}"
    elif event is Event.HELLO:
        message = f"{hello} may only be sent once, as the first line"
    elif event is Event.VERSION:
        message = "VERSION may only be sent once, during the handshake"
    else:
        message = "expected VERSION after SERVER, got REPLICATE"
    assert actions == (WakeAt(now + CLOSE), CloseWithError(message, PROTOCOL_ERROR, peer))
    assert session.state is State.CLOSING


def test_an_error_from_the_peer_before_its_first_line_is_refused_too() -> None:
    """ERROR is a command like any other: before the handshake it is a protocol error."""
    session = in_state(State.AWAITING_PEER_NAME, WORKER)
    actions = session.receive(ErrorCommand("hello?"), START)
    assert effects(actions) == [
        CloseWithError("expected SERVER first, got ERROR", PROTOCOL_ERROR, MASTER)
    ]


@pytest.mark.parametrize(
    "state, event", LOCAL_FAULTS, ids=[f"{s.name}-{e.name}" for s, e in LOCAL_FAULTS]
)
def test_a_missing_pair_from_this_end_raises(state: State, event: Event) -> None:
    """A local input the state does not allow (connecting twice, losing a connection twice,
    input before the connection or after its loss) is this end's bug: it raises, naming the
    event and the state, and leaves the state as it was."""
    session = in_state(state)
    with pytest.raises(
        LocalProtocolError, match=f"{event.name} cannot happen in state {state.name}"
    ):
        fire(session, event)
    assert session.state is state


@pytest.mark.parametrize("side", [MASTER, WORKER])
@pytest.mark.parametrize("state", list(State))
def test_poll_never_finds_a_clock_event_its_state_has_no_row_for(state: State, side: str) -> None:
    """Polling any state at any time (before, at and long after every deadline) takes only
    rows of the table."""
    for offset in (0.0, INTERVAL - EARLY, INTERVAL, TIMEOUT, CLOSE, 1000.0):
        session = in_state(state, side, pinged=state is State.READY)
        actions = session.poll(START + offset)
        assert isinstance(actions[0], WakeAt)


# -- deadlines, each at its edge ---------------------------------------------------------


def test_a_silent_peer_is_cut_off_at_the_handshake_deadline() -> None:
    """A peer that connects and never sends its first line gets
    ERROR handshake timeout after ping_timeout seconds, not a moment before; PINGs go out
    meanwhile."""
    session = new_session()
    assert session.connected(START) == (WakeAt(START + INTERVAL), Send(ServerCommand("me")))
    sent: list[Action] = []
    now = START
    while True:
        deadline = session.deadline
        assert deadline is not None and deadline > now
        assert session.poll(deadline - EARLY) == (WakeAt(deadline),)
        now = deadline
        actions = session.poll(now)
        if session.state is not State.AWAITING_PEER_NAME:
            break
        sent += effects(actions)
    assert now == START + TIMEOUT
    assert sent == [Send(PingCommand(int(t * 1000))) for t in (105, 110, 115, 120)]
    assert actions == (
        WakeAt(now + CLOSE),
        CloseWithError("handshake timeout: expected NAME within 25s", HANDSHAKE_TIMEOUT, WORKER),
    )
    assert session.state is State.CLOSING


def test_the_handshake_deadline_can_be_set_apart_from_the_ping_timeout() -> None:
    """handshake_timeout, when given, replaces ping_timeout for the first line only."""
    session = new_session(WORKER, handshake_timeout=2.0)
    session.connected(START)
    assert session.deadline == START + 2
    assert effects(session.poll(START + 2)) == [
        CloseWithError("handshake timeout: expected SERVER within 2s", HANDSHAKE_TIMEOUT, MASTER)
    ]


def test_a_first_line_just_before_the_handshake_deadline_is_in_time() -> None:
    """The peer's first line a moment before the deadline is in time: the negotiation
    starts, and from then on the PING cadence and the negotiation's own deadline are
    awaited."""
    session = new_session()
    session.connected(START)
    session.last_sent = START + TIMEOUT - 1  # this end kept sending
    actions = session.receive(NameCommand("w"), START + TIMEOUT - EARLY)
    assert actions == (WakeAt(START + TIMEOUT - 1 + INTERVAL),)
    assert session.state is State.NEGOTIATING
    assert effects(session.poll(START + TIMEOUT)) == []


def test_a_ping_goes_out_after_ping_interval_of_sending_nothing() -> None:
    """In READY, PING <ms> goes out when this end has sent nothing for ping_interval; any
    write (the I/O layer moves last_sent) pushes it back."""
    session = in_state(State.READY)
    assert session.deadline == START + INTERVAL
    assert session.poll(START + INTERVAL - EARLY) == (WakeAt(START + INTERVAL),)
    assert session.poll(START + INTERVAL) == (
        WakeAt(START + 2 * INTERVAL),
        Send(PingCommand(int((START + INTERVAL) * 1000))),
    )
    session.last_sent = START + INTERVAL + 3  # something else was written
    assert session.poll(START + 2 * INTERVAL) == (WakeAt(START + 2 * INTERVAL + 3),)


def test_a_peer_that_pinged_is_cut_off_after_ping_timeout_of_silence() -> None:
    """Once the peer has pinged, ping_timeout seconds without a byte from it cut it off;
    a moment earlier they do not."""
    session = in_state(State.READY)
    actions = session.receive(PingCommand(1), START + 1)
    assert actions == (Deliver(PingCommand(1)),)  # the deadline (next PING) did not move
    session.last_received = START + 1  # the I/O layer marks the read
    silent_until = START + 1 + TIMEOUT
    session.last_sent = silent_until  # no PING due at the same time
    assert effects(session.poll(silent_until - EARLY)) == []
    assert session.poll(silent_until) == (
        WakeAt(silent_until + CLOSE),
        CloseWithError("ping timeout", PING_TIMEOUT, WORKER),
    )


def test_a_peer_that_never_pinged_is_never_timed_out() -> None:
    """Without a PING from the peer, its silence never counts; only PINGs go out."""
    session = in_state(State.READY)
    for _ in range(100):
        deadline = session.deadline
        assert deadline is not None
        assert [type(a) for a in effects(session.poll(deadline))] == [Send]
    assert session.state is State.READY


def test_a_first_ping_that_brings_the_deadline_forward_wakes_earlier() -> None:
    """When ping_timeout is shorter than ping_interval, the peer's first PING makes the
    silence deadline the next one, and the session says so."""
    session = new_session(ping_interval=30.0, ping_timeout=10.0)
    session.connected(START)
    session.receive(NameCommand("w"), START)
    session.receive(VersionCommand((1,)), START)
    session.last_received = START + 2
    assert session.receive(PingCommand(1), START + 2) == (
        WakeAt(START + 12),
        Deliver(PingCommand(1)),
    )
    assert session.receive(PingCommand(2), START + 3) == (Deliver(PingCommand(2)),)


def test_while_reading_is_paused_the_peers_silence_does_not_count() -> None:
    """This end not reading on purpose is not the peer's silence; after reading resumes,
    its silence counts from the resumption."""
    session = in_state(State.READY, pinged=True)
    session.pause_reading()
    assert session.deadline == START + INTERVAL  # the silence deadline is gone
    now = START
    while now < START + 10 * TIMEOUT:
        deadline = session.deadline
        assert deadline is not None
        now = deadline
        assert [type(a) for a in effects(session.poll(now))] == [Send]
    resumed = now + 1
    assert session.resume_reading(resumed) == ()  # the next PING is still earlier
    assert session.last_received == resumed
    session.last_sent = resumed + TIMEOUT
    assert effects(session.poll(resumed + TIMEOUT - EARLY)) == []
    assert effects(session.poll(resumed + TIMEOUT)) == [
        CloseWithError("ping timeout", PING_TIMEOUT, WORKER)
    ]


def test_resuming_reading_wakes_earlier_when_the_silence_deadline_comes_first() -> None:
    """When the silence deadline after resuming comes before the next PING, the session
    returns a wake-up for it."""
    session = new_session(ping_interval=30.0, ping_timeout=10.0)
    session.connected(START)
    session.receive(NameCommand("w"), START)
    session.receive(VersionCommand((1,)), START)
    session.receive(PingCommand(1), START)
    session.pause_reading()
    assert session.deadline == START + 30  # only the next PING while not reading
    session.poll(START + 5)
    assert session.resume_reading(START + 6) == (WakeAt(START + 16),)


def test_a_stalled_close_is_aborted_after_close_timeout() -> None:
    """A close not finished close_timeout seconds after it began is aborted, not a moment
    before; after the abort nothing is awaited."""
    session = in_state(State.READY)
    assert session.close(START + 1) == (WakeAt(START + 1 + CLOSE),)
    assert session.close(START + 2) == ()  # a second close is the first one
    assert session.poll(START + 1 + CLOSE - EARLY) == (WakeAt(START + 1 + CLOSE),)
    assert session.poll(START + 1 + CLOSE) == (WakeAt(None), Abort())
    assert (session.state, session.deadline) == (State.ABORTING, None)
    assert session.connection_lost(START + 6) == ()
    assert session.state is State.CLOSED


def test_nothing_is_awaited_once_the_connection_is_lost() -> None:
    """Losing the connection in any connected state ends every deadline."""
    for state in (State.AWAITING_PEER_NAME, State.READY, State.CLOSING):
        session = in_state(state)
        assert session.connection_lost(START + 1) == (WakeAt(None),)
        assert session.deadline is None
        assert session.poll(START + 1000) == (WakeAt(None),)
        assert session.close(START + 1001) == ()


def test_input_after_a_close_began_is_discarded() -> None:
    """Once closing, the peer's commands (even ones that would be errors) do nothing."""
    session = in_state(State.CLOSING)
    for command in (NameCommand("again"), PingCommand(1), ReplicateCommand("events", 1)):
        assert session.receive(command, START + 1) == ()
    assert session.state is State.CLOSING
    assert not session.peer_pinged


def test_a_session_knows_only_two_sides() -> None:
    with pytest.raises(ValueError, match="side must be"):
        Session("relay", "x", ping_interval=1, ping_timeout=2, close_timeout=1)


PROTOCOL_DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.rst"
DOC_ROW = re.compile(r"^``(\w+)``\s+``(\w+)``\s+``(\w+)``\s+``(\w+)``$")


def test_the_protocol_doc_shows_the_same_table_in_the_same_order() -> None:
    """docs/protocol.rst's "Session states" table lists exactly the code's transitions,
    row for row."""
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    section = text.split("\nSession states\n", 1)[1].split("\nSubscription states\n", 1)[0]
    rows = [m.groups() for m in map(DOC_ROW.match, section.splitlines()) if m]
    assert rows == [
        (state.name, event.name, row.target.name, row.effect.name)
        for (state, event), row in TRANSITIONS.items()
    ]


# -- version negotiation -------------------------------------------------------------------

#: A second version, to show that one is an entry in the table and nothing more.
ONE_AND_TWO = {1: VERSION_1, 2: VERSION_2}


def test_a_worker_announces_every_version_it_speaks_with_its_name() -> None:
    """The worker's first write is NAME then VERSION with its versions, highest first;
    with the default table that is VERSION 3 2 1."""
    assert effects(new_session(WORKER).connected(START)) == [
        Send(NameCommand("me")), Send(VersionCommand((1,)))
    ]
    worker = Session(WORKER, "me", ping_interval=INTERVAL, ping_timeout=TIMEOUT,
                     close_timeout=CLOSE)
    assert effects(worker.connected(START)) == [
        Send(NameCommand("me")), Send(VersionCommand((3, 2, 1)))
    ]


def _negotiate(master_versions: dict[int, Dialect], worker_versions: dict[int, Dialect]) -> tuple[
    Session, Session, list[Action]
]:
    """Run a master and a worker session against each other, feeding each one's sends to
    the other; return both and the master's actions on the worker's announcement."""
    timers = {"ping_interval": INTERVAL, "ping_timeout": TIMEOUT, "close_timeout": CLOSE}
    master = Session(MASTER, "m", versions=master_versions, **timers)
    worker = Session(WORKER, "w", versions=worker_versions, **timers)
    to_worker = [a.command for a in master.connected(START) if isinstance(a, Send)]
    to_master = [a.command for a in worker.connected(START) if isinstance(a, Send)]
    master_actions: list[Action] = []
    for command in to_master:
        master_actions += effects(master.receive(command, START))
    to_worker += [a.command for a in master_actions if isinstance(a, Send)]
    for command in to_worker:
        worker.receive(command, START)
    return master, worker, master_actions


def test_the_master_answers_the_highest_version_both_speak() -> None:
    """A worker offering 2 and 1 to a master of version 1 only gets VERSION 1; both end
    READY in version 1."""
    master, worker, actions = _negotiate({1: VERSION_1}, ONE_AND_TWO)
    assert actions == [Send(VersionCommand((1,))), HandshakeDone("w", VERSION_1)]
    assert (master.state, worker.state) == (State.READY, State.READY)
    assert master.dialect is worker.dialect is VERSION_1


def test_a_new_version_is_one_entry_in_the_table() -> None:
    """With version 2 added to both tables (and nothing else), master and worker agree on
    2; a worker of version 1 only still gets version 1 from that master."""
    master, worker, actions = _negotiate(ONE_AND_TWO, ONE_AND_TWO)
    assert actions == [Send(VersionCommand((2,))), HandshakeDone("w", VERSION_2)]
    assert master.dialect is worker.dialect is VERSION_2
    master, worker, _ = _negotiate(ONE_AND_TWO, {1: VERSION_1})
    assert master.dialect is worker.dialect is VERSION_1


def test_this_release_and_the_previous_one_agree_on_version_2_either_way() -> None:
    """A worker of this release (versions 3, 2, 1) and a master of the previous one (2 and
    1) agree on 2, and so do a master of this release and a worker of the previous one:
    ROWS and LINE_LIMIT are then never sent."""
    master, worker, _ = _negotiate(ONE_AND_TWO, dict(VERSIONS))
    assert master.dialect is worker.dialect is VERSION_2
    master, worker, _ = _negotiate(dict(VERSIONS), ONE_AND_TWO)
    assert master.dialect is worker.dialect is VERSION_2
    master, worker, _ = _negotiate(dict(VERSIONS), dict(VERSIONS))
    assert master.dialect is worker.dialect is VERSIONS[3]


def test_a_worker_whose_first_command_after_name_is_not_version_speaks_legacy() -> None:
    """A Synapse worker sends REPLICATE right after NAME: the master completes the handshake
    in the legacy dialect, sends nothing (no VERSION) and delivers the REPLICATE."""
    session = in_state(State.NEGOTIATING)
    actions = session.receive(ReplicateCommand("events", 41), START + 1)
    assert effects(actions) == [
        HandshakeDone("peer-1", LEGACY), Deliver(ReplicateCommand("events", 41))
    ]
    assert (session.state, session.dialect) == (State.READY, LEGACY)


def test_a_legacy_worker_that_pings_first_is_noted_as_pinging() -> None:
    """A PING as the first command after NAME is the legacy dialect too, and counts as the
    peer's first PING (its silence is watched from then on)."""
    session = in_state(State.NEGOTIATING)
    actions = session.receive(PingCommand(5), START + 1)
    assert effects(actions) == [HandshakeDone("peer-1", LEGACY), Deliver(PingCommand(5))]
    assert session.peer_pinged


def test_a_worker_that_announces_nothing_is_legacy_at_the_deadline_not_before() -> None:
    """A worker that sends NAME and then nothing: PINGs go out; a moment before
    ping_timeout after its NAME the master still waits; at the deadline the handshake
    completes in the legacy dialect, without an ERROR or a VERSION sent."""
    session = new_session()
    session.connected(START)
    named = START + 3
    session.receive(NameCommand("quiet"), named)
    now, sent = named, []
    while now < named + TIMEOUT - EARLY:
        deadline = session.deadline
        assert deadline is not None
        now = min(deadline, named + TIMEOUT - EARLY)
        sent += effects(session.poll(now))
    assert session.state is State.NEGOTIATING
    assert all(isinstance(a, Send) and isinstance(a.command, PingCommand) for a in sent)
    assert effects(session.poll(named + TIMEOUT)) == [HandshakeDone("quiet", LEGACY)]
    assert session.state is State.READY


def test_a_worker_gives_the_master_until_the_deadline_to_choose() -> None:
    """A worker whose master says SERVER and then nothing is cut off ping_timeout after
    SERVER with ERROR handshake timeout: expected VERSION, not a moment before."""
    session = new_session(WORKER)
    session.connected(START)
    session.receive(ServerCommand("m"), START + 2)
    session.last_sent = START + 2 + TIMEOUT  # no PING due at the edge
    assert effects(session.poll(START + 2 + TIMEOUT - EARLY)) == []
    assert session.state is State.NEGOTIATING
    assert effects(session.poll(START + 2 + TIMEOUT)) == [CloseWithError(
        "handshake timeout: expected VERSION within 25s", HANDSHAKE_TIMEOUT, MASTER
    )]


@pytest.mark.parametrize("side, versions, message", [
    (MASTER, (9, 7), "no common protocol version: the worker speaks 9 7, this master speaks 1"),
    (WORKER, (2,), (
        "the master chose protocol version 2, which this worker did not offer (it speaks 1)"
    )),
    (WORKER, (1, 2), "the master must choose one protocol version, got VERSION 2 1"),
])
def test_a_version_without_agreement_is_refused_with_a_clear_error(
    side: str, versions: tuple[int, ...], message: str
) -> None:
    """A VERSION that leaves nothing to agree on is answered with ERROR naming both sides'
    versions, and a close blamed on the peer."""
    session = in_state(State.NEGOTIATING, side)
    actions = session.receive(VersionCommand(versions), START + 1)
    peer = WORKER if side == MASTER else MASTER
    assert effects(actions) == [CloseWithError(message, PROTOCOL_ERROR, peer)]
    assert session.state is State.CLOSING


def test_a_worker_hears_an_error_in_answer_to_its_announcement() -> None:
    """An older master answers VERSION with ERROR unknown command 'VERSION' and closes: the
    worker delivers the ERROR (to be logged) and waits for the close, sending nothing."""
    session = in_state(State.NEGOTIATING, WORKER)
    error = ErrorCommand("unknown command 'VERSION'")
    assert effects(session.receive(error, START + 1)) == [Deliver(error)]
    assert session.state is State.NEGOTIATING
    assert session.connection_lost(START + 2) == (WakeAt(None),)
