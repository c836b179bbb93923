"""Fuzzing a live master with hypothesis: generated input from a worker or a legacy peer.

A real :class:`~replication.master.Master` (a :class:`~replication.testing.Harness`: memory
store, ``Clock``, small limits) serves one connection over a
:class:`~replication.testing.MemoryPipe` whose other end is a raw peer that writes what
hypothesis generates: valid and invalid lines, delivered in random chunk sizes, mixed with
publishes, passing time and a peer that stops reading. After every step:

- nothing raised out of the master's ``dataReceived`` (it would fail the test);
- every line the master sent parses as a command a master may send, and a peer that
  speaks the legacy dialect was sent only what that dialect has (never ``VERSION``,
  ``GAP`` or ``RESET``);
- a line that does not parse (or is too long) is answered with ``ERROR ...`` and a close,
  and nothing is written after that ``ERROR``; so is every other close the master starts
  for a reason of its own (ping or handshake timeout, a peer that fails to keep up);
- the master's memory stays within its limits: queued bytes within ``max_buffer_bytes``,
  streams in the log within ``max_streams``, subscriptions only to streams the peer named.
At the end, once the connection is gone and the master stopped, no delayed call is left.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.internet.protocol import Protocol

from fuzz_campaign import load_profile, scaled
from replication.config import KeepaliveConfig, LimitsConfig, RetentionConfig
from replication.master import MasterConnection
from replication.testing import Harness, MemoryPipe
from replication.wire.commands import (
    MASTER,
    WORKER,
    CommandParseError,
    default_registry,
)
from replication.wire.dialects import LEGACY
from replication.wire.protocol import CLOSED_BY_PEER, CLOSED_LOCALLY

load_profile()

REGISTRY = default_registry()
MAX_LINE = 1024
MAX_BUFFER = 4096
MAX_STREAMS = 3
#: What the legacy dialect has; a Synapse worker answers anything else with ERROR.
LEGACY_COMMANDS = {"SERVER", "RDATA", "POSITION", "PING", "ERROR"}
STREAMS = ["events", "other", "third", "fourth"]
_DIRECTORY = tempfile.mkdtemp(prefix="fuzz-master-")


class RawPeer(Protocol):
    """The worker's end: writes what the test gives it and keeps what it receives."""

    def __init__(self) -> None:
        self.received = bytearray()

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class WatchedConnection(MasterConnection):
    """A master connection that notes each line it takes and whether the line parses, so
    that the test can check how the master answered it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.bad_lines: list[bytes] = []
        #: Every write to the transport (set by the test).
        self.written: list[bytes] = []
        #: How many writes there were when a bad line was answered.
        self.answered_at: int | None = None

    def lineReceived(self, line: bytes) -> None:
        bad = len(line) > self.max_line_bytes
        if not bad:
            try:
                REGISTRY.parse(line, WORKER)
            except CommandParseError:
                bad = True
        super().lineReceived(line)
        if bad:
            self.bad_lines.append(line)
            assert self._closing, f"the master kept reading after {line[:80]!r}"
            assert self.written[-1].startswith(b"ERROR "), self.written[-1:]
            self.answered_at = len(self.written)


# -- what the peer sends ---------------------------------------------------------------------

tokens = st.integers(0, 12) | st.integers(0, 10**19 - 1)
stream_names = st.sampled_from(STREAMS) | st.from_regex(r"[a-z][a-z0-9_.\-]{0,6}", fullmatch=True)
valid_lines = st.one_of(
    st.builds(lambda s, t: b"REPLICATE %s %d" % (s.encode(), t), stream_names, tokens),
    st.builds(lambda s: b"REPLICATE %s NOW" % s.encode(), stream_names),
    st.just(b"REPLICATE ALL NOW"),
    st.builds(lambda t: b"PING %d" % t, tokens),
    st.just(b"ERROR something went wrong"),
)
#: Lines that break the protocol: out of place in the session (a second ``NAME``, a late
#: ``VERSION``), not for a worker to send, malformed, too long, not UTF-8, or noise.
invalid_lines = st.one_of(
    st.sampled_from([
        b"NAME w1", b"VERSION 1", b"VERSION 7",
        b"RDATA events 1 []", b"POSITION events 1", b"GAP events 1 2", b"SERVER m", b"BOGUS",
        b"REPLICATE events", b"REPLICATE ALL 5", b"REPLICATE events -1", b"PING", b"NAME",
        b"NAME two words", b"VERSION", b"VERSION 0", b"\xff\xfe", b"", b"NAME w1\r",
    ]),
    st.integers(MAX_LINE - 8, MAX_LINE + 8).map(lambda n: b"PING " + b"1" * (n - 5)),
    st.binary(max_size=40),
)
lines = st.lists(valid_lines, min_size=1, max_size=6)
#: Now and then, one line that breaks the protocol.
maybe_invalid = st.one_of(st.none(), st.none(), st.none(), st.none(), st.none(), invalid_lines)


@dataclass(frozen=True)
class Send:
    """The peer writes ``lines``; the pipe delivers them ``chunk`` bytes at a time."""

    lines: list[bytes]
    chunk: int
    bad: bytes | None = None  # inserted before the last line
    tail: bytes = b""  # a partial last line (no newline yet)


@dataclass(frozen=True)
class Publish:
    stream: str
    rows: int
    size: int


@dataclass(frozen=True)
class Trim:
    """The master applies retention (``max_rows=5``), so that catch-up meets gaps."""


@dataclass(frozen=True)
class Advance:
    seconds: float


@dataclass(frozen=True)
class Reading:
    """The peer reads (``True``) or stops reading its socket."""

    on: bool


actions = st.lists(
    st.one_of(
        st.builds(
            Send,
            lines,
            st.sampled_from([1, 2, 7, 64, 4096]),
            maybe_invalid,
            st.sampled_from([b"", b"", b"REPL", b"P" * 40, b"P" * (MAX_LINE + 1)]),
        ),
        st.builds(
            Publish, st.sampled_from(STREAMS), st.integers(1, 8), st.sampled_from([1, 200, 900])
        ),
        st.builds(Trim),
        st.builds(Publish, st.sampled_from(STREAMS[:2]), st.integers(1, 4), st.just(1)),
        st.builds(Advance, st.sampled_from([0.0, 1.0, 5.0, 26.0])),
        st.builds(Reading, st.booleans()),
    ),
    max_size=20,
)


@dataclass
class Run:
    """One master, one connection, and what went over it."""

    harness: Harness
    connection: WatchedConnection
    peer: RawPeer
    pipe: MemoryPipe
    named: set[str] = field(default_factory=set)

    def write(self, data: bytes) -> None:
        """The peer writes ``data`` (if its end is still open); the streams it names in
        ``REPLICATE`` lines are noted."""
        for line in data.split(b"\n"):
            if line.startswith(b"REPLICATE "):
                self.named.add(line.split(b" ")[1].decode("utf-8", "replace"))
        if self.pipe.connected and not self.pipe.client_transport.disconnecting:
            self.pipe.client_transport.write(data)

    def check(self) -> None:
        connection = self.connection
        assert connection.queued_bytes <= MAX_BUFFER
        assert len(self.harness.master.stream_names()) <= MAX_STREAMS
        assert set(connection.subscriptions) <= self.named | {"ALL"}
        assert len(connection.subscriptions) <= MAX_STREAMS
        sent = b"".join(connection.written)
        complete = sent.split(b"\n")[:-1] if sent else []
        names = [REGISTRY.parse(line, MASTER).NAME for line in complete]
        if connection.dialect == LEGACY.name:
            assert set(names) <= LEGACY_COMMANDS, names
        reason = connection.close_reason
        if connection.answered_at is not None:
            # Nothing is written after the ERROR that answered a bad line.
            assert len(connection.written) == connection.answered_at, names
        if reason not in (None, CLOSED_BY_PEER, CLOSED_LOCALLY):
            # A close the master started for a reason of its own is explained first.
            assert connection._closing
            assert "ERROR" in names, (reason, names)


def start(legacy: bool) -> Run:
    harness = Harness(
        _DIRECTORY,
        limits=LimitsConfig(
            max_line_bytes=MAX_LINE,
            max_buffer_bytes=MAX_BUFFER,
            max_body_bytes=MAX_BUFFER,
            max_streams=MAX_STREAMS,
            catchup_page_rows=3,
        ),
        retention=RetentionConfig(max_rows=5),
        keepalive=KeepaliveConfig(ping_interval=5.0, ping_timeout=25.0, close_timeout=5.0),
    )
    connection = WatchedConnection(harness.master)
    peer = RawPeer()
    pipe = MemoryPipe(connection, peer, high_water=512)
    run = Run(harness, connection, peer, pipe)
    write = pipe.server_transport.write

    def watched_write(data: bytes) -> None:
        if not pipe.server_transport.aborted:
            connection.written.append(bytes(data))
        write(data)

    pipe.server_transport.write = watched_write  # type: ignore[method-assign]
    return run


def step(run: Run, action: object, legacy: bool) -> None:
    pipe, clock = run.pipe, run.harness.clock
    if isinstance(action, Send):
        sent = list(action.lines)
        if action.bad is not None and not (legacy and action.bad.startswith(b"VERSION")):
            sent.insert(len(sent) - 1, action.bad)
        run.write(b"".join(line + b"\n" for line in sent) + action.tail)
        pipe.pump(limit=action.chunk, rounds=100000)
    elif isinstance(action, Publish):
        row = {"n": "x" * action.size}
        d = run.harness.master.publish(action.stream, [row] * action.rows)
        d.addErrback(lambda f: None)  # past limits.max_streams: refused, and that is fine
    elif isinstance(action, Trim):
        run.harness.master.trim()
    elif isinstance(action, Advance):
        clock.advance(action.seconds)
    else:
        assert isinstance(action, Reading)
        pipe.client_reads = action.on
    for _ in range(50):
        clock.advance(0)
        if not pipe.pump(rounds=100000):
            break


@settings(max_examples=scaled(300))
@given(st.booleans(), st.booleans(), actions)
def test_a_master_survives_whatever_a_peer_sends(
    legacy: bool, stalled: bool, script: list[object]
) -> None:
    """A master fed generated lines (valid and not, in random chunks), publishes, time and
    a peer that stops reading keeps the invariants of this module's docstring, and leaves
    no delayed call once the connection is gone and the master stopped. A ``stalled`` peer
    follows every stream and then stops reading until the script says otherwise."""
    run = start(legacy)
    hello = b"NAME w1\n" if legacy else b"NAME w1\nVERSION 1\n"
    if stalled:
        hello += b"".join(b"REPLICATE %s 0\n" % s.encode() for s in STREAMS[:2])
    run.write(hello)
    run.pipe.pump()
    run.pipe.client_reads = not stalled
    run.check()
    most_queued = 0
    for action in script:
        step(run, action, legacy)
        run.check()
        most_queued = max(most_queued, run.connection.queued_bytes)
    # What the examples reached, for --hypothesis-show-statistics and the campaign.
    event(f"dialect {run.connection.dialect}, close: {run.connection.close_reason}")
    event("output queued" if most_queued else "nothing queued")
    sent = b"".join(run.connection.written)
    for name in (b"RDATA", b"GAP", b"RESET", b"POSITION"):
        if b"\n" + name + b" " in sent:
            event(f"sent {name.decode()}")
    if legacy and run.connection.peer_name is not None:
        assert run.connection.dialect == LEGACY.name
    run.pipe.client_reads = True
    run.pipe.pump(rounds=100000)
    run.pipe.disconnect()
    run.harness.master.stop()
    run.check()
    assert run.harness.clock.getDelayedCalls() == []
    assert run.harness.master.connections == set()


def test_a_legacy_peer_ahead_of_the_head_gets_position_not_reset() -> None:
    """A regular case the fuzzer covers: a legacy worker asking for history past the head
    is answered ``POSITION <head>``, never ``RESET``, and nothing else it cannot parse."""
    run = start(legacy=True)
    run.write(b"NAME w1\nREPLICATE events 9\n")
    step(run, Advance(0.0), legacy=True)
    run.check()
    assert bytes(run.peer.received).splitlines()[-1] == b"POSITION events 0"


def test_subscriptions_are_bounded_by_max_streams() -> None:
    """Found by the fuzzer: a worker that replicates more stream names than
    ``limits.max_streams`` (none of them published) does not make the master hold more than
    ``max_streams`` subscriptions for it; the ones past it are refused with a non-fatal
    ``ERROR`` naming the limit, and the connection stays open."""
    run = start(legacy=False)
    names = [f"s{i}" for i in range(MAX_STREAMS * 4)]
    run.write(
        b"NAME w1\nVERSION 1\n" + b"".join(b"REPLICATE %s NOW\n" % n.encode() for n in names)
    )
    step(run, Advance(0.0), legacy=False)
    assert len(run.connection.subscriptions) == MAX_STREAMS
    refusals = [line for line in bytes(run.peer.received).splitlines() if line.startswith(b"ERROR")]
    assert len(refusals) == len(names) - MAX_STREAMS
    assert refusals[0] == (
        b"ERROR REPLICATE s%d refused: this connection follows %d streams already "
        b"(limits.max_streams)" % (MAX_STREAMS, MAX_STREAMS)
    )

