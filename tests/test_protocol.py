"""The shared protocol layer over a StringTransport (or a MemoryPipe) and a Clock: framing,
handshake, keepalive and the handshake deadline as the session decides them, errors, line
limits and bounded outbound buffering."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

import replication.protocol as old_protocol
import replication.wire.protocol as wire_protocol
from replication.config import KeepaliveConfig
from replication.testing import MemoryPipe
from replication.wire.commands import (
    MASTER,
    WORKER,
    Command,
    NameCommand,
    PingCommand,
    RdataCommand,
    ReplicateCommand,
    ServerCommand,
    default_registry,
)
from replication.wire.protocol import (
    CLOSED_BY_PEER,
    FAILED_TO_KEEP_UP,
    HANDSHAKE_TIMEOUT,
    LINE_TOO_LONG,
    PING_TIMEOUT,
    PROTOCOL_ERROR,
    ReplicationProtocol,
)
from replication.wire.session import State


class Recorder(ReplicationProtocol):
    """A protocol end that records every command it receives from the one that completes
    the handshake on (a legacy worker's first command after NAME, or VERSION)."""

    def __init__(self, clock: Clock, side: str = MASTER, **kwargs: object) -> None:
        super().__init__(clock, default_registry(), side, "me", **kwargs)  # type: ignore[arg-type]
        self.received: list[Command] = []
        self.reasons: list[str] = []

    def command_received(self, command: Command) -> None:
        super().command_received(command)
        if self.peer_name is not None:
            self.received.append(command)

    def on_REPLICATE(self, command: Command) -> None:
        pass

    def on_RDATA(self, command: Command) -> None:
        pass

    def closed(self, reason: str) -> None:
        self.reasons.append(reason)


KEEPALIVE_KEYS = ("ping_interval", "ping_timeout", "close_timeout")


def connect(side: str = MASTER, **kwargs: Any) -> tuple[Recorder, StringTransport, Clock]:
    """A protocol end on a StringTransport; keepalive settings may be given one by one."""
    clock = Clock()
    timers = {k: float(kwargs.pop(k)) for k in KEEPALIVE_KEYS if k in kwargs}
    protocol = Recorder(clock, side, keepalive=KeepaliveConfig(**timers), **kwargs)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, clock


def sent_lines(transport: StringTransport) -> list[bytes]:
    return transport.value().splitlines()


WORKER_BYTES = (
    "NAME worker-1\nREPLICATE events 41\nPING 1763700000000\nREPLICATE ALL NOW\n"
    "REPLICATE metiers 0\nERROR something odd \u00e9\n"
).encode()


#: The same worker, announcing version 1.
ANNOUNCING_BYTES = WORKER_BYTES.replace(b"worker-1\n", b"worker-1\nVERSION 1\n", 1)


@pytest.mark.parametrize("data, dialect, first", [
    (WORKER_BYTES, "synapse-2017", []),
    (ANNOUNCING_BYTES, "replication/1", ["VERSION"]),
], ids=["legacy", "version-1"])
@pytest.mark.parametrize("chunk", range(1, len(ANNOUNCING_BYTES) + 1))
def test_framing_is_the_same_in_every_chunk_size(
    chunk: int, data: bytes, dialect: str, first: list[str]
) -> None:
    """The same bytes fed in chunks of any size, from 1 byte up, give the same commands and
    the same dialect, whether the worker announces a version or not."""
    protocol, transport, _ = connect()
    for i in range(0, len(data), chunk):
        protocol.dataReceived(data[i : i + chunk])
    assert (protocol.peer_name, protocol.dialect) == ("worker-1", dialect)
    assert [c.NAME for c in protocol.received] == [
        *first, "REPLICATE", "PING", "REPLICATE", "REPLICATE", "ERROR",
    ]
    assert protocol.received[len(first)] == ReplicateCommand("events", 41)
    assert not transport.disconnecting


def test_master_and_worker_speak_first() -> None:
    """On connect the master sends SERVER <name>, the worker NAME <name> and the versions it
    speaks, VERSION 1."""
    _, master_transport, _ = connect(MASTER)
    _, worker_transport, _ = connect(WORKER)
    assert sent_lines(master_transport) == [ServerCommand("me").to_line()]
    assert sent_lines(worker_transport) == [NameCommand("me").to_line(), b"VERSION 3 2 1"]


def test_a_command_before_the_handshake_is_an_error() -> None:
    """A worker whose first line is not NAME gets ERROR and is disconnected."""
    protocol, transport, _ = connect()
    protocol.dataReceived(b"REPLICATE events 1\n")
    assert sent_lines(transport)[-1] == b"ERROR expected NAME first, got REPLICATE"
    assert transport.disconnecting


def test_a_second_name_is_an_error() -> None:
    """NAME may be sent once only."""
    protocol, transport, _ = connect()
    protocol.dataReceived(b"NAME a\nNAME b\n")
    assert sent_lines(transport)[-1] == b"ERROR NAME may only be sent once, as the first line"
    assert transport.disconnecting


@pytest.mark.parametrize(
    "line, error",
    [
        (b"HELLO", b"ERROR unknown command 'HELLO'"),
        (b"RDATA events 1 {}", b"ERROR RDATA may not be sent by the worker"),
        (b"REPLICATE events x", b"ERROR token must be a non-negative integer, got 'x'"),
        (b"REPLICATE \xff 1", b"ERROR line is not valid UTF-8 (byte 10)"),
    ],
)
def test_bad_lines_are_answered_with_error_and_close(line: bytes, error: bytes) -> None:
    """An unparsable line, or one the worker may not send, gets ERROR <reason>, then close;
    nothing after it on the same read is handled."""
    protocol, transport, _ = connect()
    protocol.dataReceived(b"NAME w\n" + line + b"\nREPLICATE events 1\n")
    assert sent_lines(transport)[-1] == error
    assert transport.disconnecting
    assert protocol.received == []
    protocol.connectionLost()
    assert protocol.reasons == [PROTOCOL_ERROR]


def test_a_line_at_the_limit_passes_and_one_byte_more_is_refused() -> None:
    """With max_line_bytes=100 a line of exactly 100 bytes is accepted; 101 is refused
    with ERROR line too long, whether it ends in the read or not."""
    prefix = b"ERROR "
    protocol, transport, _ = connect(max_line_bytes=100)
    protocol.dataReceived(b"NAME w\n" + prefix + b"x" * (100 - len(prefix)) + b"\n")
    assert not transport.disconnecting
    assert len(protocol.received) == 1
    protocol.dataReceived(prefix + b"x" * (101 - len(prefix)) + b"\n")
    assert sent_lines(transport)[-1].startswith(b"ERROR line too long: 101 bytes")
    assert transport.disconnecting
    protocol.connectionLost()
    assert protocol.reasons == [LINE_TOO_LONG]

    protocol, transport, _ = connect(max_line_bytes=100)
    protocol.dataReceived(b"NAME w\n" + b"x" * 100)
    assert not transport.disconnecting
    protocol.dataReceived(b"x")
    assert sent_lines(transport)[-1].startswith(b"ERROR line too long: 101 bytes")


def test_sending_a_line_over_the_limit_raises() -> None:
    """A line this end would send over the limit is refused before it reaches the wire."""
    protocol, transport, _ = connect(side=MASTER, max_line_bytes=50)
    before = transport.value()
    with pytest.raises(ValueError, match="over the limit of 50 bytes"):
        protocol.send(RdataCommand("events", 1, "x" * 60))
    assert transport.value() == before


def test_pings_go_out_after_a_silence() -> None:
    """After ping_interval seconds without sending, a PING with the time in ms goes out;
    sending something else pushes the next PING back."""
    protocol, transport, clock = connect(ping_interval=5, ping_timeout=25)
    transport.clear()
    clock.advance(4.9)
    assert transport.value() == b""
    clock.advance(0.1)
    assert sent_lines(transport) == [b"PING 5000"]
    transport.clear()
    clock.advance(3)
    protocol.send(PingCommand(1))  # anything sent counts
    transport.clear()
    clock.advance(2)
    assert transport.value() == b""
    clock.advance(3)
    assert sent_lines(transport) == [b"PING 13000"]


def test_a_peer_that_pinged_and_went_silent_is_cut_off() -> None:
    """A peer that sent PING and is then silent for ping_timeout seconds gets
    ERROR ping timeout and is closed; no delayed call is left after the close."""
    protocol, transport, clock = connect(ping_interval=5, ping_timeout=25, close_timeout=5)
    protocol.dataReceived(b"NAME w\nPING 1\n")
    clock.advance(24.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert sent_lines(transport)[-1] == b"ERROR ping timeout"
    assert transport.disconnecting
    protocol.connectionLost()
    assert protocol.reasons == [PING_TIMEOUT]
    assert clock.getDelayedCalls() == []


def test_a_silent_peer_that_never_pinged_is_not_cut_off() -> None:
    """The timeout applies only to peers that have shown they ping."""
    protocol, transport, clock = connect(ping_interval=5, ping_timeout=25)
    protocol.dataReceived(b"NAME w\n")
    clock.pump([5] * 20)
    assert not transport.disconnecting


def test_a_peer_that_keeps_pinging_stays_connected() -> None:
    """Traffic from the peer resets its silence."""
    protocol, transport, clock = connect(ping_interval=5, ping_timeout=25)
    protocol.dataReceived(b"NAME w\n")
    for _ in range(20):
        clock.advance(5)
        protocol.dataReceived(b"PING 1\n")
    assert not transport.disconnecting


def test_a_stalled_close_is_aborted() -> None:
    """A graceful close that has not completed after close_timeout is aborted."""
    protocol, transport, clock = connect(close_timeout=5)
    protocol.close()
    assert transport.disconnecting and not transport.disconnected
    clock.advance(5)
    assert transport.disconnected  # abortConnection was called
    protocol.connectionLost()
    assert clock.getDelayedCalls() == []


def test_writes_queue_while_paused_and_flush_in_order() -> None:
    """While the transport has paused us, writes are queued here and counted; on resume
    they go out in order."""
    protocol, transport, _ = connect(max_buffer_bytes=1000)
    transport.clear()
    protocol.pauseProducing()
    protocol.write(b"a\n")
    protocol.write(b"b\n")
    assert transport.value() == b""
    assert protocol.queued_bytes == 4
    protocol.resumeProducing()
    assert transport.value() == b"a\nb\n"
    assert protocol.queued_bytes == 0


def test_each_connection_queues_in_its_own_queue() -> None:
    """Connections share one empty write queue until they first queue a line (it saves
    600 bytes per idle connection); a paused connection's lines go to a queue of its own,
    never to the shared one, nor to another connection's."""
    from replication.wire.protocol import _NO_QUEUE

    paused, paused_transport, _ = connect(max_buffer_bytes=1000)
    other, other_transport, _ = connect(max_buffer_bytes=1000)
    paused_transport.clear()
    other_transport.clear()
    paused.pauseProducing()
    paused.write(b"a\n")
    other.write(b"b\n")
    assert len(_NO_QUEUE) == 0
    assert other_transport.value() == b"b\n" and paused_transport.value() == b""
    paused.resumeProducing()
    assert paused_transport.value() == b"a\n"
    assert len(_NO_QUEUE) == 0


def test_a_peer_that_does_not_read_is_cut_off_at_the_buffer_bound() -> None:
    """Queued bytes may reach max_buffer_bytes; one byte more sends
    ERROR Failed to keep up, drops the queue and closes."""
    protocol, transport, _ = connect(max_buffer_bytes=1000)
    transport.clear()
    protocol.pauseProducing()
    protocol.write(b"x" * 999 + b"\n")
    assert protocol.queued_bytes == 1000
    assert not transport.disconnecting
    protocol.write(b"\n")
    assert transport.value() == b"ERROR Failed to keep up\n"
    assert protocol.queued_bytes == 0
    assert transport.disconnecting
    protocol.write(b"more\n")
    assert transport.value() == b"ERROR Failed to keep up\n"
    protocol.connectionLost()
    assert protocol.reasons == [FAILED_TO_KEEP_UP]


def test_connection_lost_without_a_local_reason_is_closed_by_peer() -> None:
    protocol, _, clock = connect()
    protocol.connectionLost()
    assert protocol.reasons == [CLOSED_BY_PEER]
    assert clock.getDelayedCalls() == []


def test_held_input_waits_in_order_and_pauses_reading() -> None:
    """Lines that arrive while input is held are handed over in order on release; past
    1000 held lines the transport stops reading until the release."""
    protocol, transport, _ = connect()
    protocol.dataReceived(b"NAME w\n")
    protocol.hold_input()
    protocol.dataReceived(b"".join(b"PING %d\n" % i for i in range(1001)))
    assert protocol.received == []
    assert transport.producerState == "paused"
    protocol.release_input()
    assert [c.timestamp_ms for c in protocol.received] == list(range(1001))  # type: ignore[attr-defined]
    assert transport.producerState == "producing"


@dataclass(frozen=True)
class Ack(Command):
    NAME: ClassVar[str] = "ACK"
    token: int

    @classmethod
    def from_args(cls, args: str) -> Ack:
        return cls(int(args))

    def to_args(self) -> str:
        return str(self.token)


def test_application_commands_reach_unhandled_hook() -> None:
    """A registered application command without an on_<NAME> method goes to unhandled()."""
    registry = default_registry().copy()
    registry.register(Ack, {WORKER})
    seen: list[Command] = []

    class Master(ReplicationProtocol):
        def unhandled(self, command: Command) -> None:
            seen.append(command)

    protocol = Master(Clock(), registry, MASTER, "m")
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(b"NAME w\nACK 7\n")
    assert seen == [Ack(7)]


def test_error_texts_that_quote_the_peer_are_cut_short() -> None:
    """An ERROR that quotes a long bad input is cut to 512 characters plus '...'."""
    protocol, transport, _ = connect()
    protocol.dataReceived(b"NAME w\nREPLICATE " + b"x" * 5000 + b" 1\n")
    line = sent_lines(transport)[-1]
    assert line.startswith(b"ERROR invalid stream name 'xxx")
    assert line.endswith(b"...") and len(line) == len(b"ERROR ") + 512 + 3


# -- the handshake deadline and the one timer ---------------------------------------------


def test_a_silent_peer_is_cut_off_at_the_handshake_deadline() -> None:
    """A worker that connects and never sends NAME gets ERROR handshake timeout
    ping_timeout seconds after connecting (PINGs go out meanwhile); the close reason is
    handshake timeout and no delayed call is left."""
    protocol, transport, clock = connect(ping_interval=5, ping_timeout=25, close_timeout=5)
    clock.pump([5] * 4 + [4.9])
    assert not transport.disconnecting
    pings = [b"PING %d" % t for t in (5000, 10000, 15000, 20000)]
    assert sent_lines(transport) == [b"SERVER me", *pings]
    clock.advance(0.1)
    assert sent_lines(transport)[-1] == b"ERROR handshake timeout: expected NAME within 25s"
    assert transport.disconnecting
    protocol.connectionLost()
    assert protocol.reasons == [HANDSHAKE_TIMEOUT]
    assert clock.getDelayedCalls() == []


def test_a_partial_first_line_does_not_meet_the_handshake_deadline() -> None:
    """Bytes without a line break are not a first line: the peer is still cut off."""
    protocol, transport, clock = connect(ping_timeout=25)
    protocol.dataReceived(b"NAME w")
    clock.advance(25)
    assert sent_lines(transport)[-1].startswith(b"ERROR handshake timeout")
    assert protocol.peer_name is None


def test_a_first_line_just_in_time_completes_the_handshake() -> None:
    """NAME arriving a moment before the deadline is in time; the connection stays up
    with PINGs going out."""
    protocol, transport, clock = connect(ping_interval=5, ping_timeout=25)
    clock.advance(24.9)
    protocol.dataReceived(b"NAME w\n")
    clock.pump([5] * 20)
    assert protocol.peer_name == "w"
    assert not transport.disconnecting
    assert protocol.session.state is State.READY


def test_a_worker_cuts_off_a_master_that_never_says_server() -> None:
    """The worker end applies the same deadline to the master's SERVER line."""
    protocol, transport, clock = connect(WORKER, ping_timeout=10)
    clock.advance(10)
    assert sent_lines(transport)[-1] == b"ERROR handshake timeout: expected SERVER within 10s"
    protocol.connectionLost()
    assert protocol.reasons == [HANDSHAKE_TIMEOUT]
    assert clock.getDelayedCalls() == []


class Silent(Protocol):
    """A peer that connects and says nothing."""

    lost = False

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True


@pytest.mark.parametrize("peer_reads", [True, False])
def test_a_silent_peer_over_a_pipe_is_gone_after_the_deadline(peer_reads: bool) -> None:
    """Over an in-memory pipe, a peer that never sends its first line is disconnected at
    the handshake deadline (at once if it reads; after close_timeout, by an abort, if it
    does not read either), and the master end leaves no delayed call behind."""
    clock = Clock()
    keepalive = KeepaliveConfig(ping_interval=5, ping_timeout=25, close_timeout=5)
    master = Recorder(clock, keepalive=keepalive)
    peer = Silent()
    pipe = MemoryPipe(master, peer)
    pipe.client_reads = peer_reads
    for _ in range(5):
        clock.advance(5)
        pipe.pump()
    assert master.session.state is not State.AWAITING_PEER_NAME
    if not peer_reads:
        assert pipe.connected  # the ERROR waits unread; the close is stalled
        clock.advance(5)
        pipe.pump()
    assert not pipe.connected and peer.lost
    assert master.reasons == [HANDSHAKE_TIMEOUT]
    assert master.session.state is State.CLOSED
    assert clock.getDelayedCalls() == []


def test_one_timer_at_a_time() -> None:
    """Handshake, keepalive and close share one delayed call, set to the session's next
    deadline."""
    protocol, _, clock = connect(ping_interval=5, ping_timeout=25, close_timeout=3)
    assert [c.getTime() for c in clock.getDelayedCalls()] == [5]  # the first PING
    protocol.dataReceived(b"NAME w\nPING 1\n")
    clock.pump([5, 5])
    assert [c.getTime() for c in clock.getDelayedCalls()] == [15]  # the next PING
    protocol.close()
    assert [c.getTime() for c in clock.getDelayedCalls()] == [13]  # the abort
    protocol.connectionLost()
    assert clock.getDelayedCalls() == []


def test_a_peer_is_not_timed_out_while_this_end_does_not_read() -> None:
    """While held input has paused reading, a peer that pinged is not silent, however
    long; once reading resumes, its silence counts from then."""
    protocol, transport, clock = connect(ping_interval=5, ping_timeout=25)
    protocol.dataReceived(b"NAME w\nPING 1\n")
    protocol.hold_input()
    protocol.dataReceived(b"".join(b"PING %d\n" % i for i in range(1001)))
    assert transport.producerState == "paused"
    clock.pump([5] * 20)
    assert not transport.disconnecting
    protocol.release_input()
    assert transport.producerState == "producing"
    clock.advance(24.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert sent_lines(transport)[-1] == b"ERROR ping timeout"


def test_the_old_import_path_is_the_moved_module() -> None:
    """``replication.protocol`` is the very module ``replication.wire.protocol``."""
    assert old_protocol is wire_protocol
    assert old_protocol.PING_TIMEOUT == PING_TIMEOUT
