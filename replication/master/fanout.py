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

from replication.master.log import StreamLog, StreamState
from replication.ratelimit import LogRateLimiter, suppressed_note
from replication.store import LOCAL_ORIGIN, DamagedEntry, Entry
from replication.streams import missing_before, plan_catch_up
from replication.wire.commands import (
    ALL_STREAMS,
    Command,
    ErrorCommand,
    GapCommand,
    HandledCommand,
    PositionCommand,
    ReplicateCommand,
    ResetCommand,
    rdata_block,
)
from replication.wire.dialects import DIALECTS

log = logging.getLogger(__name__)

#: Catch-up pages one follower may be sent in one turn of the reactor before yielding.
PAGES_PER_TURN = 1


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
    """One follower's subscription to one stream: the last token sent, and whether the
    catch-up is done (``live``). ``position`` is not moved by live rows: a live subscription
    has been sent everything up to the stream's head (see :meth:`FanOut.sent_positions`).
    ``live_since_rows`` is the stream's ``rows_published`` when it went live, from which
    the live rows sent to it are computed when metrics are read."""

    stream: str
    position: int
    live: bool = False
    live_since_rows: int = 0


@dataclass(eq=False)
class _Followed:
    """Fan-out's counters and live followers of one stream."""

    live: set[Follower] = field(default_factory=set)
    rows_sent_live: int = 0
    rows_sent_catchup: int = 0


@dataclass(eq=False)
class _FollowerState:
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    catching_up: deque[Subscription] = field(default_factory=deque)
    pump_call: IDelayedCall | None = None
    reading: bool = False
    pumping: bool = False
    #: RDATA lines written: catch-up pages and live rows of ended subscriptions.
    rdata_rows_sent: int = 0
    #: ``log.rows_published`` when this follower subscribed to ALL streams.
    all_since_rows: int | None = None
    #: The positions the follower reported with ``HANDLED``, by stream (only streams it
    #: follows; dropped when it stops following one, or the stream is deleted).
    handled: dict[str, int] = field(default_factory=dict)
    #: The highest token the follower may report per stream, besides what it was sent:
    #: the token of its ``REPLICATE``, or the head of a stream deleted since (a ``HANDLED``
    #: may cross the ``RESET``).
    handled_ceilings: dict[str, int] = field(default_factory=dict)


class FanOut:
    """Subscriptions, catch-up and live writes of one master.

    :param log: the stream log it listens to (it registers itself).
    :param clock: for yielding between catch-up pages.
    :param page_rows: rows per catch-up page (``limits.catchup_page_rows``).
    :param knows: whether a stream may be followed (``strict_streams``).
    """

    def __init__(
        self,
        log: StreamLog,
        clock: IReactorTime,
        *,
        page_rows: int,
        knows: Callable[[str], bool],
        max_subscriptions: int = 10_000,
    ) -> None:
        self.log = log
        self.clock = clock
        self.page_rows = page_rows
        self.knows = knows
        #: Streams one follower may follow at once (``limits.max_streams``): a ``REPLICATE``
        #: of one more is refused with a non-fatal ``ERROR``.
        self.max_subscriptions = max_subscriptions
        self._followers: dict[Follower, _FollowerState] = {}
        self._all: set[Follower] = set()
        self._streams: dict[str, _Followed] = {}
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
        log.add_listener(self)

    # -- reading -------------------------------------------------------------------------

    def followed(self, stream: str) -> _Followed:
        state = self._streams.get(stream)
        if state is None:
            state = self._streams[stream] = _Followed()
        return state

    def live_count(self, stream: str) -> int:
        """Followers receiving ``stream`` live, ALL followers included."""
        state = self._streams.get(stream)
        return (len(state.live) if state is not None else 0) + len(self._all)

    def counters(self, stream: str) -> tuple[int, int]:
        """``(rows sent live, rows sent in catch-up)`` of ``stream`` since start."""
        state = self._streams.get(stream)
        return (state.rows_sent_live, state.rows_sent_catchup) if state is not None else (0, 0)

    def follows_all(self, follower: Follower) -> bool:
        """True if ``follower`` subscribed with ``REPLICATE ALL NOW``."""
        return follower in self._all

    def subscriptions(self, follower: Follower) -> dict[str, Subscription]:
        """``follower``'s subscriptions by stream (a copy)."""
        state = self._followers.get(follower)
        return dict(state.subscriptions) if state is not None else {}

    def catching_up(self, follower: Follower) -> bool:
        state = self._followers.get(follower)
        return bool(state is not None and state.catching_up)

    def sent_positions(self, follower: Follower) -> dict[str, int]:
        """The last token sent to ``follower`` for each stream it follows. A live
        subscription has been sent everything up to the head, so it is read from the head
        here rather than tracked on the fan-out path. "Sent" means written to the
        connection: some of it may still wait in its buffer."""
        log_ = self.log
        if follower in self._all:
            return {name: log_.head(name) for name in log_.stream_names()}
        state = self._followers.get(follower)
        if state is None:
            return {}
        return {
            name: log_.head(name) if sub.live else sub.position
            for name, sub in state.subscriptions.items()
        }

    def handled_positions(self, follower: Follower) -> dict[str, int]:
        """The positions ``follower`` reported with ``HANDLED``, by stream (a copy)."""
        state = self._followers.get(follower)
        return dict(state.handled) if state is not None else {}

    def handled(self, follower: Follower, command: HandledCommand) -> None:
        """Record ``HANDLED``: a stream the follower does not follow, or a token above what
        it could have (what it was sent, its ``REPLICATE`` token, the head of a stream
        deleted since), is a protocol error (``ERROR`` and close)."""
        stream, token = command.stream, command.token
        sent = self.sent_positions(follower).get(stream)
        state = self._followers.get(follower)
        if sent is None or state is None:
            follower.send_error(f"HANDLED {stream}: this connection does not follow {stream}")
            return
        ceiling = max(sent, state.handled_ceilings.get(stream, 0))
        if token > ceiling:
            follower.send_error(
                f"HANDLED {stream} {token}: above the last token sent for it ({ceiling})"
            )
            return
        state.handled[stream] = token

    def rdata_sent(self, follower: Follower) -> int:
        """RDATA lines written to ``follower``. Live rows are not counted per write: they
        are the rows published since each live subscription began, computed here."""
        state = self._followers.get(follower)
        if state is None:
            return 0
        total = state.rdata_rows_sent
        for sub in state.subscriptions.values():
            if sub.live:
                stream = self.log.state(sub.stream)
                if stream is not None:
                    total += stream.rows_published - sub.live_since_rows
        if state.all_since_rows is not None:
            total += self.log.rows_published - state.all_since_rows
        return total

    # -- subscribing ---------------------------------------------------------------------

    def replicate(self, follower: Follower, command: ReplicateCommand) -> None:
        """Serve ``REPLICATE``: subscribe ``follower`` and start its catch-up."""
        stream = command.stream
        state = self._followers.get(follower)
        if state is None:
            state = self._followers[follower] = _FollowerState()
        if stream == ALL_STREAMS:
            self._replicate_all(follower, state)
            return
        if follower in self._all:
            follower.send(
                ErrorCommand(f"REPLICATE {stream} ignored: already subscribed to ALL streams")
            )
            return
        if not self.knows(stream):
            follower.send(
                ErrorCommand(
                    f"unknown stream {stream!r}: this master serves only its configured streams"
                )
            )
            return
        if stream not in state.subscriptions and len(state.subscriptions) >= self.max_subscriptions:
            follower.send(ErrorCommand(
                f"REPLICATE {stream} refused: this connection follows {self.max_subscriptions} "
                "streams already (limits.max_streams)"
            ))
            return
        # Following a stream never creates it (in the log, the store or the metrics): a
        # stream nobody published to is followed at head 0 until its first publish.
        stream_state = self.log.state(stream)
        head = stream_state.head if stream_state is not None else 0
        self._unsubscribe(follower, state, stream)
        if command.token is not None:
            state.handled_ceilings[stream] = command.token
        if command.token is None:
            self._live_now(follower, state, stream, stream_state)
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
                self._live_now(follower, state, stream, stream_state)
                return
            suppressed = self.reset_warnings.allow(stream, self.clock.seconds())
            if suppressed is not None:
                log.warning(
                    "%s asked for %s after token %d but the head is %d: sending RESET%s",
                    follower.describe(), stream, command.token, head,
                    suppressed_note(suppressed),
                )
            follower.send(ResetCommand(stream, head))
        sub = Subscription(stream, plan.position)
        state.subscriptions[stream] = sub
        state.catching_up.append(sub)
        self.pump(follower)

    def _live_now(
        self, follower: Follower, state: _FollowerState, stream: str,
        stream_state: StreamState | None,
    ) -> None:
        """Make ``follower`` live on ``stream`` at its head, with ``POSITION <head>``;
        ``stream_state`` is ``None`` for a stream nobody published to (head 0)."""
        head = stream_state.head if stream_state is not None else 0
        sub = Subscription(
            stream, head, live=True,
            live_since_rows=stream_state.rows_published if stream_state is not None else 0,
        )
        state.subscriptions[stream] = sub
        self.followed(stream).live.add(follower)
        follower.send(PositionCommand(stream, head))

    def _send_gap(self, follower: Follower, stream: str, first: int, last: int, *,
                  closing: bool = False) -> None:
        """Tell ``follower`` that tokens ``first..last`` of ``stream`` are gone: ``GAP``, or
        ``POSITION <last>`` in a dialect without it (left out when ``closing``: the
        catch-up's own ``POSITION`` at the same token follows at once)."""
        if DIALECTS[follower.dialect].gap_and_reset:
            log.warning(
                "%s: tokens %d..%d of %s are no longer retained: sending GAP",
                follower.describe(), first, last, stream,
            )
            follower.send(GapCommand(stream, first, last))
            return
        log.warning(
            "%s (%s): tokens %d..%d of %s are no longer retained and its dialect has no GAP: "
            "sending POSITION %d",
            follower.describe(), follower.dialect, first, last, stream, last,
        )
        self.legacy_substitutions[GapCommand.NAME] += 1
        if not closing:
            follower.send(PositionCommand(stream, last))

    def _replicate_all(self, follower: Follower, state: _FollowerState) -> None:
        for stream in list(state.subscriptions):
            self._unsubscribe(follower, state, stream)
        self._all.add(follower)
        if state.all_since_rows is None:
            state.all_since_rows = self.log.rows_published
        for name in self.log.stream_names():
            follower.send(PositionCommand(name, self.log.head(name)))

    def _unsubscribe(self, follower: Follower, state: _FollowerState, stream: str) -> None:
        state.handled.pop(stream, None)
        state.handled_ceilings.pop(stream, None)
        sub = state.subscriptions.pop(stream, None)
        if sub is None:
            return
        stream_state = self.log.state(stream)
        followed = self._streams.get(stream)
        if followed is not None:
            followed.live.discard(follower)
            if not followed.live and stream_state is None:
                del self._streams[stream]  # nothing to count for a stream that does not exist
        if sub.live:
            if stream_state is not None:
                state.rdata_rows_sent += stream_state.rows_published - sub.live_since_rows
        else:
            state.catching_up.remove(sub)

    def remove(self, follower: Follower) -> None:
        """``follower`` is gone: drop its subscriptions and any pending catch-up turn."""
        state = self._followers.pop(follower, None)
        self._all.discard(follower)
        if state is None:
            return
        for stream in list(state.subscriptions):
            self._unsubscribe(follower, state, stream)
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
                head = self.log.head(sub.stream)
                if sub.position >= head:
                    self._go_live(follower, state, sub)
                    continue
                state.reading = True
                d = self.log.read(sub.stream, sub.position, head, self.page_rows)
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
            and state.subscriptions.get(sub.stream) is sub
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
                closing = not entries and gap[1] >= self.log.head(sub.stream)
                self._send_gap(follower, sub.stream, *gap, closing=closing)
                sub.position = gap[1]
            if entries:
                follower.write(rdata_block(sub.stream, [(e.token, e.rows) for e in entries]))
                sub.position = entries[-1].token
                rows = sum(len(e.rows) for e in entries)
                self.followed(sub.stream).rows_sent_catchup += rows
                state.rdata_rows_sent += rows
            if sub.position >= self.log.head(sub.stream):
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
                    sub.stream, damaged.token, damaged,
                )
            follower.send_error(
                f"master cannot read stream {sub.stream}: token {damaged.token} is damaged "
                "in the store"
            )
            return
        log.error("reading %s for %s failed: %s", sub.stream, follower.describe(),
                  failure.getErrorMessage())
        follower.send_error(f"master cannot read stream {sub.stream}: store failure")

    def _go_live(self, follower: Follower, state: _FollowerState, sub: Subscription) -> None:
        stream_state = self.log.state(sub.stream)
        head = stream_state.head if stream_state is not None else 0
        follower.send(PositionCommand(sub.stream, head))
        sub.live = True
        sub.position = head
        sub.live_since_rows = stream_state.rows_published if stream_state is not None else 0
        self.followed(sub.stream).live.add(follower)
        state.catching_up.remove(sub)

    # -- live (LogListener) --------------------------------------------------------------

    def committed(
        self, state: StreamState, first: int, tokens_rows: Sequence[Sequence[str]], rows: int
    ) -> None:
        if state.origin != LOCAL_ORIGIN:
            # Rows of other origins have tokens of their own: the dialect spoken today has
            # no way to name an origin, so they are not sent (the cluster's dialect will).
            return
        followed = self._streams.get(state.stream)
        if followed is None:
            if not self._all:
                return
            followed = self.followed(state.stream)
        receivers = (followed.live | self._all) if self._all else followed.live
        if not receivers:
            return
        if len(tokens_rows) == 1:
            data = rdata_block(state.stream, ((first, tokens_rows[0]),))
        else:
            data = rdata_block(
                state.stream, zip(range(first, first + len(tokens_rows)), tokens_rows, strict=True)
            )
        followed.rows_sent_live += rows * len(receivers)
        for follower in tuple(receivers):
            follower.write(data)

    def deleted(self, old: StreamState, new: StreamState | None) -> None:
        """The stream ``old`` was deleted (``new``: created anew, empty, if configured):
        every follower of it is told with ``RESET <stream> 0`` and follows it live from
        head 0 (see the module docstring)."""
        if old.origin != LOCAL_ORIGIN:
            return
        stream = old.stream
        for follower in tuple(self._all):
            self._send_reset(follower, stream)
        for fstate in self._followers.values():
            if fstate.handled.pop(stream, None) is not None or stream in fstate.subscriptions:
                ceiling = fstate.handled_ceilings.get(stream, 0)
                fstate.handled_ceilings[stream] = max(ceiling, old.head)
        for follower, fstate in list(self._followers.items()):
            sub = fstate.subscriptions.pop(stream, None)
            if sub is None:
                continue
            if sub.live:
                fstate.rdata_rows_sent += old.rows_published - sub.live_since_rows
            else:
                fstate.catching_up.remove(sub)  # a page read in flight is dropped on return
            followed = self._streams.get(stream)
            if followed is not None:
                followed.live.discard(follower)
            if DIALECTS[follower.dialect].gap_and_reset:
                self._send_reset(follower, stream)
            else:
                self._count_legacy_reset(follower, stream)
            self._live_now(follower, fstate, stream, new)
        followed = self._streams.get(stream)
        if followed is not None and not followed.live and new is None:
            del self._streams[stream]

    def _send_reset(self, follower: Follower, stream: str) -> None:
        """``RESET <stream> 0`` for a deleted stream, or ``POSITION <stream> 0`` to a
        dialect without ``RESET``."""
        if DIALECTS[follower.dialect].gap_and_reset:
            log.warning("%s: stream %s was deleted: sending RESET 0", follower.describe(), stream)
            follower.send(ResetCommand(stream, 0))
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
        if state.origin != LOCAL_ORIGIN:
            return
        for follower in tuple(self._all):
            self._send_gap(follower, state.stream, first, last)
        followed = self._streams.get(state.stream)
        if followed is None:
            return
        for follower in list(followed.live):
            fstate = self._followers.get(follower)
            sub = fstate.subscriptions.get(state.stream) if fstate is not None else None
            if fstate is None or sub is None:
                continue
            followed.live.discard(follower)
            stream_state = self.log.state(state.stream)
            if stream_state is not None:
                fstate.rdata_rows_sent += stream_state.rows_published - sub.live_since_rows
            sub.live = False
            sub.position = first - 1
            fstate.catching_up.append(sub)
            self.pump(follower)


__all__ = ["FanOut", "Follower", "PAGES_PER_TURN", "Subscription"]
