"""Fan-out: who follows which stream, their catch-up, and live writes.

:class:`FanOut` listens to the :class:`~replication.master.log.StreamLog`. It keeps its own
record of every follower's subscriptions (:class:`Subscription`) and talks to connections
only through the narrow :class:`Follower` interface, so any kind of connection (a worker
today; a publisher, a cluster peer or an older dialect later) can follow streams without
changing anything here.

- ``REPLICATE <stream> NOW`` makes a subscription live at once, with ``POSITION <head>``.
- ``REPLICATE <stream> <token>`` starts a catch-up: pages of history are read from the
  store (asynchronously: a blocking store is read in a thread) and written while the
  follower's transport takes them (:attr:`Follower.can_write`), one page per turn of the
  reactor, streams of one follower taking turns; tokens retention dropped are announced
  with ``GAP``; once the follower has been sent everything up to the head it gets
  ``POSITION <head>`` and is live. A worker a million rows behind costs one page of memory.
- Live: the rows of each committed run are encoded once into ``RDATA`` lines and the same
  bytes are written to every live follower of the stream (and every ``ALL`` follower).
- ``GAP`` and ``RESET`` go only to followers whose dialect has them
  (:mod:`replication.wire.dialects`). A legacy follower gets ``POSITION`` instead: at the
  last dropped token for a gap, at the head for a reset (which Synapse's own master
  answered a worker ahead of it); each such answer is logged and counted
  (:attr:`FanOut.legacy_substitutions`).

Deleting a stream (:meth:`FanOut.deleted`): the stream behaves as new. Every follower of
it, live or catching up, and every ``ALL`` follower, is sent ``RESET <stream> 0`` (its
handler's ``reset`` hook runs and it records position 0) and stays subscribed, live at head
0, so it receives the new stream's tokens from 1 on. A worker never silently loses a token:
the tokens it had not handled are gone with the stream, and ``RESET`` says so. A worker
that was away reconnects with its old position, which is ahead of the new head, and gets
``RESET`` from the ordinary catch-up. A legacy follower, whose dialect has no ``RESET``, is
sent ``POSITION <stream> 0`` (logged and counted like the other substitutions).

Protocol version 2 (docs/protocol.rst, "Version 2: origins"): subscriptions are kept per
``(stream, origin)`` (:class:`~replication.master.log.StreamKey`), and a follower whose
dialect has origins is sent every stream field as ``<stream>@<origin>`` (the local origin
named by the log's origin id). A worker's ``REPLICATE <stream> <vector>`` subscribes it to
every origin of the stream, each from its position in the vector, and *watches* the stream,
so that an origin whose first row arrives later is subscribed to then; a cluster peer's
``RELAY`` subscribes it to one ``(stream, origin)``, and ``RELAY * <origin>`` watches the
origin, for streams of it that appear later. A position above what this master holds of
another origin is not a reset: the follower saw more of that origin on another master; it
is sent ``POSITION`` at its own position and *waits* (:attr:`FanOut._ahead`) until this
master's head passes it. Only the local origin can be reset. A master of a cluster
(``clustered``) refuses ``REPLICATE`` from dialects without origins, which cannot name the
rows of other masters.

The check that moves a subscription from catch-up to live and the live writes both run on
the reactor thread, after the log has advanced the head, so no token falls between them.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from replication.master.log import StreamKey, StreamLog, StreamState
from replication.ratelimit import LogRateLimiter, suppressed_note
from replication.store import LOCAL_ORIGIN, DamagedEntry, Entry
from replication.streams import missing_before, plan_catch_up
from replication.wire.commands import (
    ALL_STREAMS,
    EVERY_STREAM,
    Command,
    ErrorCommand,
    GapCommand,
    HandledCommand,
    PositionCommand,
    RelayCommand,
    ReplicateCommand,
    ResetCommand,
    qualify,
    rdata_block,
    rows_block,
)
from replication.wire.dialects import DIALECTS

log = logging.getLogger(__name__)

#: Catch-up pages one follower may be sent in one turn of the reactor before yielding.
PAGES_PER_TURN = 1
#: Subscriptions one cluster peer may hold, per stream a follower may follow: a peer
#: follows one ``(stream, origin)`` per ``RELAY``.
PEER_SUBSCRIPTIONS_PER_STREAM = 64


class Follower(Protocol):
    """What fan-out needs of a connection that follows streams."""

    @property
    def can_write(self) -> bool:
        """True while the connection takes data without queueing it."""

    @property
    def dialect(self) -> str:
        """The name of the protocol dialect the connection speaks (a key of
        ``replication.wire.dialects.DIALECTS``)."""

    def write(self, data: bytes) -> None:
        """Send whole encoded lines."""

    def send(self, command: Command) -> None:
        """Encode and send one command."""

    def send_error(self, message: str) -> None:
        """Send ``ERROR <message>`` and close."""

    def describe(self) -> str:
        """A label for logs: who the connection is and where from."""


@dataclass(eq=False)
class Subscription:
    """One follower's subscription to one ``(stream, origin)``: the last token sent, and
    whether the catch-up is done (``live``). ``position`` is not moved by live rows: a live
    subscription has been sent everything up to the head (see :meth:`FanOut.sent_positions`).
    ``live_since_rows`` is the state's ``rows_published`` when it went live, from which the
    live rows sent to it are computed when metrics are read. ``label`` is how the follower's
    dialect names it: the stream, or ``<stream>@<origin>`` in version 2. ``origin`` is the
    log's key of the origin (``""``: this master)."""

    stream: str
    position: int
    live: bool = False
    live_since_rows: int = 0
    origin: str = LOCAL_ORIGIN
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            self.label = self.stream

    @property
    def key(self) -> StreamKey:
        return StreamKey(self.stream, self.origin)


@dataclass(eq=False)
class _Followed:
    """Fan-out's counters and live followers of one ``(stream, origin)``: ``live`` are sent
    plain stream names, ``named`` (version 2) ``<stream>@<origin>``."""

    live: set[Follower] = field(default_factory=set)
    named: set[Follower] = field(default_factory=set)
    rows_sent_live: int = 0
    rows_sent_catchup: int = 0


@dataclass(eq=False)
class _FollowerState:
    #: Subscriptions by label (the stream, or ``<stream>@<origin>`` in version 2).
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    catching_up: deque[Subscription] = field(default_factory=deque)
    pump_call: IDelayedCall | None = None
    reading: bool = False
    pumping: bool = False
    #: Rows written (as RDATA or ROWS lines): catch-up pages and live rows of ended
    #: subscriptions.
    rdata_rows_sent: int = 0
    #: ``log.rows_published`` when this follower subscribed to ALL streams.
    all_since_rows: int | None = None
    #: The positions the follower reported with ``HANDLED``, by label (only what it
    #: follows; dropped when it stops following one, or the stream is deleted).
    handled: dict[str, int] = field(default_factory=dict)
    #: The highest token the follower may report per label, besides what it was sent:
    #: the token of its ``REPLICATE``, or the head of a stream deleted since (a ``HANDLED``
    #: may cross the ``RESET``).
    handled_ceilings: dict[str, int] = field(default_factory=dict)
    #: Version 2: whether the follower names origins, and the streams it watches for new
    #: origins (with the vector it asked with) and the origins it watches for new streams.
    named: bool = False
    #: Version 3: whether the follower takes ``ROWS`` (many tokens to a line), and the
    #: ``ROWS`` and ``RDATA`` lines written to it, counted as they are written.
    rows_lines: bool = False
    #: The longest line the follower takes (its ``LINE_LIMIT``; 0: none sent, the
    #: master's own limit).
    line_limit: int = 0
    rows_lines_sent: int = 0
    rdata_lines_sent: int = 0
    watch_streams: dict[str, dict[str, int]] = field(default_factory=dict)
    watch_origins: set[str] = field(default_factory=set)
    #: Version 2: the labels of each stream's subscriptions.
    labels: dict[str, set[str]] = field(default_factory=dict)


def _line_counts(data: bytes) -> tuple[int, int]:
    """The ``ROWS`` and ``RDATA`` lines of ``data`` (what :func:`rows_block` made: no JSON
    holds a raw line break, so every ``\\nROWS `` starts a line)."""
    rows = data.count(b"\nROWS ") + data.startswith(b"ROWS ")
    return rows, data.count(b"\n") - rows


def _consecutive(entries: Sequence[Entry]) -> bool:
    """Whether the tokens of ``entries`` (increasing, as a store reads them) have no hole:
    what one run of ``ROWS`` lines can carry."""
    return entries[-1].token - entries[0].token == len(entries) - 1


class FanOut:
    """Subscriptions, catch-up and live writes of one master.

    :param log: the stream log it listens to (it registers itself).
    :param clock: for yielding between catch-up pages.
    :param page_rows: rows per catch-up page (``limits.catchup_page_rows``).
    :param knows: whether a stream may be followed (``strict_streams``).
    :param clustered: whether this master is one of a cluster (``cluster.peers``): then
        dialects without origins are refused, and ``RELAY`` is served.
    :param max_line_bytes: the longest ``ROWS`` line written to followers of version 3.
    """

    def __init__(
        self,
        log: StreamLog,
        clock: IReactorTime,
        *,
        page_rows: int,
        knows: Callable[[str], bool],
        max_subscriptions: int = 10_000,
        clustered: bool = False,
        max_line_bytes: int = 65536,
    ) -> None:
        self.log = log
        #: The longest ``ROWS`` line written (``limits.max_line_bytes``, the bound every
        #: ``RDATA`` line already keeps).
        self.max_line_bytes = max_line_bytes
        self.clock = clock
        self.page_rows = page_rows
        self.knows = knows
        self.clustered = clustered
        #: Streams one follower may follow at once (``limits.max_streams``): a ``REPLICATE``
        #: of one more is refused with a non-fatal ``ERROR``.
        self.max_subscriptions = max_subscriptions
        self._followers: dict[Follower, _FollowerState] = {}
        self._all: set[Follower] = set()
        #: ``REPLICATE ALL NOW`` followers of version 2: every origin, named.
        self._all_named: set[Follower] = set()
        self._streams: dict[StreamKey, _Followed] = {}
        #: Version 2 followers watching a stream for new origins, and an origin for new
        #: streams (``RELAY *``).
        self._stream_watchers: dict[str, set[Follower]] = {}
        self._origin_watchers: dict[str, set[Follower]] = {}
        #: Subscriptions waiting for this master's head to pass a position the follower
        #: already has (it saw more of that origin on another master).
        self._ahead: dict[StreamKey, dict[Follower, Subscription]] = {}
        #: ``POSITION`` lines sent to legacy followers in place of ``GAP`` and ``RESET``, by
        #: the command they replaced.
        self.legacy_substitutions: dict[str, int] = {GapCommand.NAME: 0, ResetCommand.NAME: 0}
        #: The warning of a ``REPLICATE`` above the head (``RESET`` or its legacy
        #: substitute) is logged at most once a minute per stream.
        self.reset_warnings = LogRateLimiter()
        #: Tokens the store found damaged, as ``(stream, origin, token)``: each is logged once.
        self.damaged_tokens: set[tuple[str, str, int]] = set()
        #: ``REPLICATE`` requests after a token above the stream's head (a follower ahead of
        #: this master's history), answered with ``RESET`` or, to legacy followers, ``POSITION``.
        self.followers_ahead = 0
        #: Told of every ``HANDLED`` accepted, as ``(follower, command)``: the master counts
        #: cluster peers' reports as confirmations (``cluster.ack_peers``).
        self.on_handled: Callable[[Follower, HandledCommand], None] | None = None
        log.add_listener(self)

    # -- names -----------------------------------------------------------------------------

    def origin_name(self, origin: str) -> str:
        """How the wire names the log's origin ``origin``: this master's origin id for the
        local origin ``""``."""
        if origin == LOCAL_ORIGIN:
            origin_id = self.log.origin_id
            assert origin_id is not None, "the log is open before anyone follows"
            return origin_id
        return origin

    def origin_key(self, name: str) -> str:
        """The log's key of the origin the wire calls ``name``."""
        return LOCAL_ORIGIN if name == self.log.origin_id else name

    def _label(self, named: bool, stream: str, origin: str) -> str:
        return qualify(stream, self.origin_name(origin)) if named else stream

    # -- reading -------------------------------------------------------------------------

    def followed(self, stream: str, origin: str = LOCAL_ORIGIN) -> _Followed:
        key = StreamKey(stream, origin)
        state = self._streams.get(key)
        if state is None:
            state = self._streams[key] = _Followed()
        return state

    def live_count(self, stream: str, origin: str = LOCAL_ORIGIN) -> int:
        """Followers receiving ``(stream, origin)`` live, ALL followers included."""
        state = self._streams.get(StreamKey(stream, origin))
        alls = len(self._all_named) + (len(self._all) if origin == LOCAL_ORIGIN else 0)
        return (len(state.live) + len(state.named) if state is not None else 0) + alls

    def counters(self, stream: str, origin: str = LOCAL_ORIGIN) -> tuple[int, int]:
        """``(rows sent live, rows sent in catch-up)`` of ``(stream, origin)`` since start."""
        state = self._streams.get(StreamKey(stream, origin))
        return (state.rows_sent_live, state.rows_sent_catchup) if state is not None else (0, 0)

    def follows_all(self, follower: Follower) -> bool:
        """True if ``follower`` subscribed with ``REPLICATE ALL NOW``."""
        return follower in self._all or follower in self._all_named

    def subscriptions(self, follower: Follower) -> dict[str, Subscription]:
        """``follower``'s subscriptions by label (a copy)."""
        state = self._followers.get(follower)
        return dict(state.subscriptions) if state is not None else {}

    def catching_up(self, follower: Follower) -> bool:
        state = self._followers.get(follower)
        return bool(state is not None and state.catching_up)

    def sent_positions(self, follower: Follower) -> dict[str, int]:
        """The last token sent to ``follower`` for each label it follows. A live
        subscription has been sent everything up to the head, so it is read from the head
        here rather than tracked on the fan-out path. "Sent" means written to the
        connection: some of it may still wait in its buffer."""
        return {label: sent for label, sent, _head, _live in self.follows(follower)}

    def follows(self, follower: Follower) -> list[tuple[str, int, int, bool]]:
        """What ``follower`` follows, as ``(label, last token sent, head, live)``."""
        log_ = self.log
        if follower in self._all:
            return [(n, h, h, True) for n in log_.stream_names() for h in (log_.head(n),)]
        if follower in self._all_named:
            return [
                (qualify(s.stream, self.origin_name(s.origin)), s.head, s.head, True)
                for s in log_.states()
            ]
        state = self._followers.get(follower)
        if state is None:
            return []
        result = []
        for label, sub in state.subscriptions.items():
            head = log_.head(sub.stream, sub.origin)
            result.append((label, head if sub.live else sub.position, head, sub.live))
        return result

    def handled_positions(self, follower: Follower) -> dict[str, int]:
        """The positions ``follower`` reported with ``HANDLED``, by label (a copy)."""
        state = self._followers.get(follower)
        return dict(state.handled) if state is not None else {}

    def handled(self, follower: Follower, command: HandledCommand) -> None:
        """Record ``HANDLED``: a stream the follower does not follow, or a token above what
        it could have (what it was sent, its ``REPLICATE`` token, the head of a stream
        deleted since), is a protocol error (``ERROR`` and close); so is a stream field
        not named the way the follower's dialect names them."""
        named = DIALECTS[follower.dialect].origins
        if named != (command.origin is not None):
            follower.send_error(
                f"HANDLED {qualify(command.stream, command.origin)}: "
                + ("protocol version 2 names <stream>@<origin>" if named
                   else "this connection's protocol version has no origins")
            )
            return
        label, token = qualify(command.stream, command.origin), command.token
        sent = self.sent_positions(follower).get(label)
        state = self._followers.get(follower)
        if sent is None or state is None:
            follower.send_error(f"HANDLED {label}: this connection does not follow {label}")
            return
        ceiling = max(sent, state.handled_ceilings.get(label, 0))
        if token > ceiling:
            follower.send_error(
                f"HANDLED {label} {token}: above the last token sent for it ({ceiling})"
            )
            return
        state.handled[label] = token
        if self.on_handled is not None:
            self.on_handled(follower, command)

    def line_limit(self, follower: Follower, limit: int) -> None:
        """``LINE_LIMIT`` from a follower of version 3: its ``ROWS`` lines are kept within
        ``limit`` bytes (and within the master's own limit)."""
        self._state_of(follower).line_limit = min(limit, self.max_line_bytes)

    def _line_bound(self, state: _FollowerState) -> int:
        return state.line_limit or self.max_line_bytes

    def rows_lines_sent(self, follower: Follower) -> int:
        """``ROWS`` lines written to ``follower`` (version 3)."""
        state = self._followers.get(follower)
        return 0 if state is None else state.rows_lines_sent

    def rdata_sent(self, follower: Follower) -> int:
        """``RDATA`` lines written to ``follower``: its rows (:meth:`rows_sent`), except to
        a follower of version 3, which gets most rows in ``ROWS`` lines and has its lines
        counted as they are written."""
        state = self._followers.get(follower)
        if state is None:
            return 0
        if state.rows_lines:
            return state.rdata_lines_sent
        return self.rows_sent(follower)

    def rows_sent(self, follower: Follower) -> int:
        """Rows written to ``follower``, whatever lines carried them. Live rows are not
        counted per write: they are the rows published since each live subscription
        began, computed here."""
        state = self._followers.get(follower)
        if state is None:
            return 0
        total = state.rdata_rows_sent
        for sub in state.subscriptions.values():
            if sub.live:
                stream = self.log.state(sub.stream, sub.origin)
                if stream is not None:
                    total += stream.rows_published - sub.live_since_rows
        if state.all_since_rows is not None:
            total += self.log.rows_published - state.all_since_rows
        return total

    # -- subscribing ---------------------------------------------------------------------

    def _state_of(self, follower: Follower) -> _FollowerState:
        state = self._followers.get(follower)
        if state is None:
            state = self._followers[follower] = _FollowerState(
                named=DIALECTS[follower.dialect].origins,
                rows_lines=DIALECTS[follower.dialect].rows_lines,
            )
        return state

    def replicate(self, follower: Follower, command: ReplicateCommand) -> None:
        """Serve ``REPLICATE``: subscribe ``follower`` and start its catch-up."""
        stream = command.stream
        state = self._state_of(follower)
        if state.named:
            self._replicate_named(follower, state, command)
            return
        if self.clustered:
            follower.send_error(
                f"REPLICATE {stream} refused: this master is one of a cluster and its streams "
                f"hold rows of several masters, which protocol {follower.dialect} cannot name; "
                "use a worker that speaks protocol version 2"
            )
            return
        if command.vector is not None:
            follower.send_error(
                f"REPLICATE {stream}: position vectors need protocol version 2; "
                f"this connection speaks {follower.dialect}"
            )
            return
        if stream == ALL_STREAMS:
            self._replicate_all(follower, state)
            return
        if follower in self._all:
            follower.send(
                ErrorCommand(f"REPLICATE {stream} ignored: already subscribed to ALL streams")
            )
            return
        if not self._may_follow(follower, state, stream, stream not in state.subscriptions):
            return
        # Following a stream never creates it (in the log, the store or the metrics): a
        # stream nobody published to is followed at head 0 until its first publish.
        stream_state = self.log.state(stream)
        head = stream_state.head if stream_state is not None else 0
        self._unsubscribe(follower, state, stream)
        if command.token is not None:
            state.handled_ceilings[stream] = command.token
        if command.token is None:
            self._live_now(follower, state, Subscription(stream, head), stream_state)
            return
        plan = plan_catch_up(command.token, head)
        if plan.reset:
            self.followers_ahead += 1
            if not DIALECTS[follower.dialect].gap_and_reset:
                # What Synapse's own master answered a worker ahead of it: the head, live.
                suppressed = self.reset_warnings.allow(stream, self.clock.seconds())
                if suppressed is not None:
                    log.warning(
                        "%s (%s) asked for %s after token %d but the head is %d: its dialect "
                        "has no RESET; sending POSITION %d%s",
                        follower.describe(), follower.dialect, stream, command.token, head,
                        head, suppressed_note(suppressed),
                    )
                self.legacy_substitutions[ResetCommand.NAME] += 1
                self._live_now(follower, state, Subscription(stream, head), stream_state)
                return
            self._warn_reset(follower, stream, command.token, head)
            follower.send(ResetCommand(stream, head))
        self._catch_up(follower, state, Subscription(stream, plan.position))

    def _may_follow(
        self, follower: Follower, state: _FollowerState, stream: str, new: bool
    ) -> bool:
        """Whether ``follower`` may follow ``stream`` (``new``: one more stream than now);
        if not, it has been told why with a non-fatal ``ERROR``."""
        if not self.knows(stream):
            follower.send(
                ErrorCommand(
                    f"unknown stream {stream!r}: this master serves only its configured streams"
                )
            )
            return False
        followed = len(state.labels) if state.named else len(state.subscriptions)
        if new and followed >= self.max_subscriptions:
            follower.send(ErrorCommand(
                f"REPLICATE {stream} refused: this connection follows {self.max_subscriptions} "
                "streams already (limits.max_streams)"
            ))
            return False
        return True

    def _warn_reset(self, follower: Follower, label: str, token: int, head: int) -> None:
        suppressed = self.reset_warnings.allow(label, self.clock.seconds())
        if suppressed is not None:
            log.warning(
                "%s asked for %s after token %d but the head is %d: sending RESET%s",
                follower.describe(), label, token, head, suppressed_note(suppressed),
            )

    def _replicate_named(
        self, follower: Follower, state: _FollowerState, command: ReplicateCommand
    ) -> None:
        """``REPLICATE`` of a version 2 follower: every origin of the stream, each from its
        position in the vector (``NOW``: from the head)."""
        stream = command.stream
        if stream == ALL_STREAMS:
            for label in list(state.subscriptions):
                self._unsubscribe(follower, state, label)
            for name in list(state.watch_streams):
                self._unwatch_stream(follower, state, name)
            self._all_named.add(follower)
            if state.all_since_rows is None:
                state.all_since_rows = self.log.rows_published
            for s in self.log.states():
                follower.send(PositionCommand(s.stream, s.head, self.origin_name(s.origin)))
            return
        if follower in self._all_named:
            follower.send(
                ErrorCommand(f"REPLICATE {stream} ignored: already subscribed to ALL streams")
            )
            return
        if command.token is not None:
            follower.send_error(
                f"REPLICATE {stream} {command.token}: protocol version 2 takes a position "
                "vector (<origin>:<token>[,...], or - for none)"
            )
            return
        if not self._may_follow(follower, state, stream, stream not in state.labels):
            return
        for label in list(state.labels.get(stream, ())):
            self._unsubscribe(follower, state, label)
        vector = {self.origin_key(name): token for name, token in command.vector or ()}
        now = command.vector is None
        for origin, token in vector.items():
            state.handled_ceilings[self._label(True, stream, origin)] = token
        origins = self.log.origins(stream)
        # This master's own origin always answers, even before the stream's first publish
        # (POSITION <stream>@<own> 0), as version 1 answers POSITION <stream> 0.
        for origin in sorted(set(origins) | set(vector) | {LOCAL_ORIGIN}):
            stream_state = origins.get(origin)
            head = stream_state.head if stream_state is not None else 0
            self._subscribe_named(
                follower, state, stream, origin, head if now else vector.get(origin, 0)
            )
        # Origins that appear on the stream later: from their start (or the vector's token).
        state.watch_streams[stream] = {} if now else vector
        self._stream_watchers.setdefault(stream, set()).add(follower)

    def relay(self, follower: Follower, command: RelayCommand) -> None:
        """Serve a cluster peer's ``RELAY`` (the caller checked that it is a peer): the rows
        of one origin on one stream, or, with ``*``, on every stream of that origin."""
        state = self._state_of(follower)
        origin = self.origin_key(command.origin)
        if command.stream == EVERY_STREAM:
            state.watch_origins.add(origin)
            self._origin_watchers.setdefault(origin, set()).add(follower)
            for s in self.log.states():
                if s.origin == origin and self._label(True, s.stream, origin) not in (
                    state.subscriptions
                ):
                    self._subscribe_named(follower, state, s.stream, origin, 0)
            return
        assert command.token is not None
        label = self._label(True, command.stream, origin)
        bound = self.max_subscriptions * PEER_SUBSCRIPTIONS_PER_STREAM
        if label not in state.subscriptions and len(state.subscriptions) >= bound:
            follower.send_error(
                f"RELAY {command.stream} {command.origin} refused: this connection follows "
                f"{bound} (stream, origin) pairs already (limits.max_streams x "
                f"{PEER_SUBSCRIPTIONS_PER_STREAM})"
            )
            return
        self._unsubscribe(follower, state, label)
        self._subscribe_named(follower, state, command.stream, origin, command.token)

    def _subscribe_named(
        self, follower: Follower, state: _FollowerState, stream: str, origin: str, token: int
    ) -> None:
        """Subscribe a version 2 follower to ``(stream, origin)`` after ``token``."""
        label = self._label(True, stream, origin)
        state.labels.setdefault(stream, set()).add(label)
        stream_state = self.log.state(stream, origin)
        head = stream_state.head if stream_state is not None else 0
        sub = Subscription(stream, token, origin=origin, label=label)
        if token == head:
            self._live_now(follower, state, sub, stream_state)
            return
        if token > head:
            if origin == LOCAL_ORIGIN:  # this master's own history was replaced
                self.followers_ahead += 1
                self._warn_reset(follower, label, token, head)
                follower.send(ResetCommand(stream, head, self.origin_name(origin)))
                sub.position = 0
            else:  # seen on another master: wait here until this master has more
                state.subscriptions[label] = sub
                follower.send(PositionCommand(stream, token, self.origin_name(origin)))
                self._ahead.setdefault(sub.key, {})[follower] = sub
                return
        self._catch_up(follower, state, sub)

    def _catch_up(self, follower: Follower, state: _FollowerState, sub: Subscription) -> None:
        state.subscriptions[sub.label] = sub
        state.catching_up.append(sub)
        self.pump(follower)

    def _live_now(
        self, follower: Follower, state: _FollowerState, sub: Subscription,
        stream_state: StreamState | None,
    ) -> None:
        """Make ``sub`` of ``follower`` live at its state's head, with ``POSITION <head>``;
        ``stream_state`` is ``None`` for a stream nobody published to (head 0)."""
        head = stream_state.head if stream_state is not None else 0
        sub.position = head
        sub.live = True
        sub.live_since_rows = stream_state.rows_published if stream_state is not None else 0
        state.subscriptions[sub.label] = sub
        followed = self.followed(sub.stream, sub.origin)
        (followed.named if state.named else followed.live).add(follower)
        follower.send(PositionCommand(
            sub.stream, head, self.origin_name(sub.origin) if state.named else None
        ))

    def _send_gap(self, follower: Follower, sub: Subscription, first: int, last: int, *,
                  closing: bool = False) -> None:
        """Tell ``follower`` that tokens ``first..last`` of ``sub`` are gone: ``GAP``, or
        ``POSITION <last>`` in a dialect without it (left out when ``closing``: the
        catch-up's own ``POSITION`` at the same token follows at once)."""
        dialect = DIALECTS[follower.dialect]
        if dialect.gap_and_reset:
            log.warning(
                "%s: tokens %d..%d of %s are no longer retained: sending GAP",
                follower.describe(), first, last, sub.label,
            )
            origin = self.origin_name(sub.origin) if dialect.origins else None
            follower.send(GapCommand(sub.stream, first, last, origin))
            return
        log.warning(
            "%s (%s): tokens %d..%d of %s are no longer retained and its dialect has no GAP: "
            "sending POSITION %d",
            follower.describe(), follower.dialect, first, last, sub.stream, last,
        )
        self.legacy_substitutions[GapCommand.NAME] += 1
        if not closing:
            follower.send(PositionCommand(sub.stream, last))

    def _replicate_all(self, follower: Follower, state: _FollowerState) -> None:
        for stream in list(state.subscriptions):
            self._unsubscribe(follower, state, stream)
        self._all.add(follower)
        if state.all_since_rows is None:
            state.all_since_rows = self.log.rows_published
        for name in self.log.stream_names():
            follower.send(PositionCommand(name, self.log.head(name)))

    def _unsubscribe(self, follower: Follower, state: _FollowerState, label: str) -> None:
        state.handled.pop(label, None)
        state.handled_ceilings.pop(label, None)
        sub = state.subscriptions.pop(label, None)
        if sub is None:
            return
        if state.named:
            labels = state.labels.get(sub.stream)
            if labels is not None:
                labels.discard(label)
                if not labels:
                    del state.labels[sub.stream]
        key = sub.key
        stream_state = self.log.state(sub.stream, sub.origin)
        followed = self._streams.get(key)
        if followed is not None:
            followed.live.discard(follower)
            followed.named.discard(follower)
            if not followed.live and not followed.named and stream_state is None:
                del self._streams[key]  # nothing to count for a stream that does not exist
        waiting = self._ahead.get(key)
        if waiting is not None and waiting.get(follower) is sub:
            del waiting[follower]
            if not waiting:
                del self._ahead[key]
            return
        if sub.live:
            if stream_state is not None:
                state.rdata_rows_sent += stream_state.rows_published - sub.live_since_rows
        else:
            state.catching_up.remove(sub)

    def _unwatch_stream(self, follower: Follower, state: _FollowerState, stream: str) -> None:
        state.watch_streams.pop(stream, None)
        watchers = self._stream_watchers.get(stream)
        if watchers is not None:
            watchers.discard(follower)
            if not watchers:
                del self._stream_watchers[stream]

    def remove(self, follower: Follower) -> None:
        """``follower`` is gone: drop its subscriptions and any pending catch-up turn."""
        state = self._followers.pop(follower, None)
        self._all.discard(follower)
        self._all_named.discard(follower)
        if state is None:
            return
        for label in list(state.subscriptions):
            self._unsubscribe(follower, state, label)
        for stream in list(state.watch_streams):
            self._unwatch_stream(follower, state, stream)
        for origin in state.watch_origins:
            watchers = self._origin_watchers.get(origin)
            if watchers is not None:
                watchers.discard(follower)
                if not watchers:
                    del self._origin_watchers[origin]
        if state.pump_call is not None and state.pump_call.active():
            state.pump_call.cancel()
        state.pump_call = None

    # -- catch-up ------------------------------------------------------------------------

    def pump(self, follower: Follower) -> None:
        """Send ``follower`` catch-up pages while it can take them, a page per turn of the
        reactor so that other connections and publishes are served meanwhile. Call it when
        the follower's transport has drained."""
        state = self._followers.get(follower)
        if state is None or state.pump_call is not None or state.reading or state.pumping:
            return
        queue = state.catching_up
        pages = 0
        state.pumping = True
        try:
            while queue and follower.can_write and not state.reading:
                if pages >= PAGES_PER_TURN:
                    state.pump_call = self.clock.callLater(0, self._pump_later, follower)
                    return
                pages += 1
                sub = queue[0]
                head = self.log.head(sub.stream, sub.origin)
                if sub.position >= head:
                    self._go_live(follower, state, sub)
                    continue
                state.reading = True
                d = self.log.read(sub.stream, sub.position, head, self.page_rows, sub.origin)
                d.addCallbacks(
                    self._page_read, self._read_failed,
                    callbackArgs=(follower, state, sub, head), errbackArgs=(follower, state, sub),
                )
        finally:
            state.pumping = False

    def _pump_later(self, follower: Follower) -> None:
        state = self._followers.get(follower)
        if state is not None:
            state.pump_call = None
            self.pump(follower)

    def _current(self, follower: Follower, state: _FollowerState, sub: Subscription) -> bool:
        """Whether ``sub`` is still a catch-up of a follower that is still here."""
        return (
            self._followers.get(follower) is state
            and state.subscriptions.get(sub.label) is sub
            and not sub.live
        )

    def _page_read(
        self, entries: list[Entry], follower: Follower, state: _FollowerState,
        sub: Subscription, head: int,
    ) -> None:
        state.reading = False
        if self._current(follower, state, sub):
            gap = missing_before(sub.position, entries[0].token if entries else None, head)
            if gap is not None:
                closing = not entries and gap[1] >= self.log.head(sub.stream, sub.origin)
                self._send_gap(follower, sub, *gap, closing=closing)
                sub.position = gap[1]
            if entries:
                if state.rows_lines and _consecutive(entries):
                    data = rows_block(sub.label, entries[0].token, [e.rows for e in entries],
                                      self._line_bound(state))
                    self._count_lines(state, data)
                    follower.write(data)
                else:
                    data = rdata_block(sub.label, [(e.token, e.rows) for e in entries])
                    if state.rows_lines:
                        self._count_lines(state, data)
                    follower.write(data)
                sub.position = entries[-1].token
                rows = sum(len(e.rows) for e in entries)
                self.followed(sub.stream, sub.origin).rows_sent_catchup += rows
                state.rdata_rows_sent += rows
            if sub.position >= self.log.head(sub.stream, sub.origin):
                self._go_live(follower, state, sub)
            elif state.catching_up and state.catching_up[0] is sub:
                state.catching_up.rotate(-1)
        if not state.pumping:  # the read finished later than it started: go on from here
            self.pump(follower)

    def _read_failed(
        self, failure: Failure, follower: Follower, state: _FollowerState, sub: Subscription
    ) -> None:
        state.reading = False
        if not self._current(follower, state, sub):
            if not state.pumping:
                self.pump(follower)
            return
        # This master's own rows by the stream's name, other origins' as <stream>@<origin>.
        name = sub.stream if sub.origin == LOCAL_ORIGIN else sub.label
        damaged = failure.value
        if isinstance(damaged, DamagedEntry):
            # Logged once per damaged token; every follower reaching it is refused, and its
            # worker's backoff counts the short connection as a failed attempt.
            key = (damaged.stream, damaged.origin, damaged.token)
            if key not in self.damaged_tokens:
                self.damaged_tokens.add(key)
                log.error(
                    "stream %s: token %d is damaged in the store and cannot be served; "
                    "followers reaching it are refused, other streams are served (%s)",
                    name, damaged.token, damaged,
                )
            follower.send_error(
                f"master cannot read stream {name}: token {damaged.token} is damaged "
                "in the store"
            )
            return
        log.error("reading %s for %s failed: %s", name, follower.describe(),
                  failure.getErrorMessage())
        follower.send_error(f"master cannot read stream {name}: store failure")

    @staticmethod
    def _count_lines(state: _FollowerState, data: bytes) -> None:
        rows, rdata = _line_counts(data)
        state.rows_lines_sent += rows
        state.rdata_lines_sent += rdata

    def _go_live(self, follower: Follower, state: _FollowerState, sub: Subscription) -> None:
        state.catching_up.remove(sub)
        self._live_now(follower, state, sub, self.log.state(sub.stream, sub.origin))

    # -- live (LogListener) --------------------------------------------------------------

    def committed(
        self, state: StreamState, first: int, tokens_rows: Sequence[Sequence[str]], rows: int
    ) -> None:
        followed = self._streams.get(state.key)
        local = state.origin == LOCAL_ORIGIN
        if followed is None:
            if not (self._all and local) and not self._all_named:
                if self._ahead or self._stream_watchers or self._origin_watchers:
                    self._named_arrivals(state, first, tokens_rows)
                return
            followed = self.followed(state.stream, state.origin)
        receivers = (followed.live | self._all) if self._all and local else followed.live
        if receivers:
            if len(tokens_rows) == 1:
                data = rdata_block(state.stream, ((first, tokens_rows[0]),))
            else:
                data = rdata_block(
                    state.stream,
                    zip(range(first, first + len(tokens_rows)), tokens_rows, strict=True),
                )
            followed.rows_sent_live += rows * len(receivers)
            for follower in tuple(receivers):
                follower.write(data)
        if followed.named or self._all_named:
            named = (followed.named | self._all_named) if self._all_named else followed.named
            label = qualify(state.stream, self.origin_name(state.origin))
            rdata: bytes | None = None
            # The ROWS lines, by line bound (nearly always one: the master's own).
            blocks: dict[int, tuple[bytes, tuple[int, int]]] = {}
            followers = self._followers
            for follower in tuple(named):
                fstate = followers[follower]
                if fstate.rows_lines:
                    bound = self._line_bound(fstate)
                    block = blocks.get(bound)
                    if block is None:
                        lines = rows_block(label, first, tokens_rows, bound)
                        block = blocks[bound] = (lines, _line_counts(lines))
                    fstate.rows_lines_sent += block[1][0]
                    fstate.rdata_lines_sent += block[1][1]
                    follower.write(block[0])
                else:
                    if rdata is None:
                        rdata = rdata_block(label, zip(
                            range(first, first + len(tokens_rows)), tokens_rows, strict=True
                        ))
                    follower.write(rdata)
            followed.rows_sent_live += rows * len(named)
        if self._ahead or self._stream_watchers or self._origin_watchers:
            self._named_arrivals(state, first, tokens_rows)

    def _named_arrivals(
        self, state: StreamState, first: int, tokens_rows: Sequence[Sequence[str]]
    ) -> None:
        """Version 2 followers that this commit concerns without a live subscription: those
        waiting for the head to pass their position, and those watching the stream (or
        the origin) who have not subscribed to this ``(stream, origin)`` yet."""
        key = state.key
        waiting = self._ahead.get(key)
        if waiting is not None:
            last = first + len(tokens_rows) - 1
            for follower, sub in list(waiting.items()):
                if last <= sub.position:
                    continue
                skip = max(sub.position - first + 1, 0)
                fstate = self._followers[follower]
                if fstate.rows_lines:
                    data = rows_block(sub.label, first + skip, tokens_rows[skip:],
                                      self._line_bound(fstate))
                    self._count_lines(fstate, data)
                    follower.write(data)
                else:
                    follower.write(rdata_block(sub.label, zip(
                        range(first + skip, last + 1), tokens_rows[skip:], strict=True
                    )))
                sent = sum(len(rows) for rows in tokens_rows[skip:])
                self.followed(state.stream, state.origin).rows_sent_live += sent
                fstate.rdata_rows_sent += sent
                del waiting[follower]
                sub.live = True
                sub.position = last
                sub.live_since_rows = state.rows_published
                self.followed(state.stream, state.origin).named.add(follower)
            if not waiting:
                del self._ahead[key]
        watchers = self._stream_watchers.get(state.stream, ())
        origin_watchers = self._origin_watchers.get(state.origin, ())
        if not watchers and not origin_watchers:
            return
        origin_name = self.origin_name(state.origin)
        label = qualify(state.stream, origin_name)
        for follower in (*watchers, *origin_watchers):
            watcher = self._followers.get(follower)
            if watcher is None or label in watcher.subscriptions:
                continue
            vector = watcher.watch_streams.get(state.stream)
            token = vector.get(state.origin, 0) if vector is not None else 0
            # Subscribed after this commit: a catch-up reads it from the store.
            self._subscribe_named(follower, watcher, state.stream, state.origin, token)

    def deleted(self, old: StreamState, new: StreamState | None) -> None:
        """The stream ``old`` was deleted (``new``: created anew, empty, if configured):
        every follower of it is told with ``RESET <stream> 0`` and follows it live from
        head 0 (see the module docstring)."""
        if old.origin != LOCAL_ORIGIN:
            return
        stream = old.stream
        for follower in (*self._all, *self._all_named):
            self._send_reset(follower, stream)
        named_label = self._label(True, stream, LOCAL_ORIGIN)
        for fstate in self._followers.values():
            label = named_label if fstate.named else stream
            if fstate.handled.pop(label, None) is not None or label in fstate.subscriptions:
                ceiling = fstate.handled_ceilings.get(label, 0)
                fstate.handled_ceilings[label] = max(ceiling, old.head)
        key = old.key
        waiting = self._ahead.pop(key, {})
        for follower, fstate in list(self._followers.items()):
            label = named_label if fstate.named else stream
            sub = fstate.subscriptions.pop(label, None)
            if sub is None:
                continue
            if waiting.get(follower) is sub:
                pass
            elif sub.live:
                fstate.rdata_rows_sent += old.rows_published - sub.live_since_rows
            else:
                fstate.catching_up.remove(sub)  # a page read in flight is dropped on return
            followed = self._streams.get(key)
            if followed is not None:
                followed.live.discard(follower)
                followed.named.discard(follower)
            if DIALECTS[follower.dialect].gap_and_reset:
                self._send_reset(follower, stream)
            else:
                self._count_legacy_reset(follower, stream)
            renewed = Subscription(stream, 0, origin=LOCAL_ORIGIN, label=label)
            self._live_now(follower, fstate, renewed, new)
        followed = self._streams.get(key)
        if followed is not None and not followed.live and not followed.named and new is None:
            del self._streams[key]

    def _send_reset(self, follower: Follower, stream: str) -> None:
        """``RESET <stream> 0`` for a deleted stream, or ``POSITION <stream> 0`` to a
        dialect without ``RESET``."""
        dialect = DIALECTS[follower.dialect]
        if dialect.gap_and_reset:
            log.warning("%s: stream %s was deleted: sending RESET 0", follower.describe(), stream)
            origin = self.origin_name(LOCAL_ORIGIN) if dialect.origins else None
            follower.send(ResetCommand(stream, 0, origin))
            return
        self._count_legacy_reset(follower, stream)
        follower.send(PositionCommand(stream, 0))

    def _count_legacy_reset(self, follower: Follower, stream: str) -> None:
        log.warning(
            "%s (%s): stream %s was deleted and its dialect has no RESET: sending POSITION 0",
            follower.describe(), follower.dialect, stream,
        )
        self.legacy_substitutions[ResetCommand.NAME] += 1

    def skipped(self, state: StreamState, first: int, last: int) -> None:
        """Tokens that live followers will never get live: put each of them back into
        catch-up at its position, which answers the missing tokens with ``GAP``; ``ALL``
        followers, which never catch up, are sent the ``GAP`` at once."""
        local = state.origin == LOCAL_ORIGIN
        alls = (*self._all, *self._all_named) if local else tuple(self._all_named)
        for follower in alls:
            named = follower in self._all_named
            gone = Subscription(
                state.stream, first - 1, origin=state.origin,
                label=self._label(named, state.stream, state.origin),
            )
            self._send_gap(follower, gone, first, last)
        followed = self._streams.get(state.key)
        if followed is None:
            return
        for follower in (*followed.live, *followed.named):
            fstate = self._followers.get(follower)
            label = (
                self._label(fstate.named, state.stream, state.origin)
                if fstate is not None else state.stream
            )
            sub = fstate.subscriptions.get(label) if fstate is not None else None
            if fstate is None or sub is None:
                continue
            followed.live.discard(follower)
            followed.named.discard(follower)
            stream_state = self.log.state(state.stream, state.origin)
            if stream_state is not None:
                fstate.rdata_rows_sent += stream_state.rows_published - sub.live_since_rows
            sub.live = False
            sub.position = first - 1
            fstate.catching_up.append(sub)
            self.pump(follower)


__all__ = ["FanOut", "Follower", "PAGES_PER_TURN", "Subscription"]
