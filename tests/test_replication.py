"""A master and workers joined in memory (MemoryPipe + Clock): catch-up, live rows, batches,
duplicates, gaps, resets, subscriptions, congestion, handler failures and publishing."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

from replication.commands import MASTER, RdataCommand, default_registry
from replication.config import LimitsConfig, RetentionConfig
from replication.master import MasterConnection, PublishError
from replication.protocol import FAILED_TO_KEEP_UP
from replication.testing import Harness, MemoryPipe, Recording
from replication.worker import Worker, WorkerConnection


class DeferredHandler:
    """A handler whose calls stay pending until the test fires their Deferreds."""

    def __init__(self) -> None:
        self.pending: list[Deferred[None]] = []
        self.seen: list[int] = []

    def __call__(self, stream: str, token: int, rows: list[Any]) -> Deferred[None]:
        self.seen.append(token)
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        return d


def two_tokens_first_pending(harness: Harness) -> tuple[DeferredHandler, Worker, MemoryPipe]:
    """Tokens 1 and 2 published, a worker connected whose handler call for 1 is pending."""
    harness.publish("events", [1])
    harness.publish("events", [2])
    handler = DeferredHandler()
    worker = harness.worker(handler)
    pipe = harness.connect(worker)
    harness.run(pipe)
    assert handler.seen == [1]
    return handler, worker, pipe


@pytest.fixture
def harness(tmp_path: Any) -> Harness:
    return Harness(tmp_path)


def test_a_new_worker_receives_history_then_position_then_live_rows(harness: Harness) -> None:
    """A worker starting from the beginning gets tokens 1..3 with all their rows, one handler
    call per token, then live tokens as they are published."""
    harness.publish("events", [{"id": "$a"}])
    harness.publish("events", [{"id": "$b"}, {"id": "$c"}, {"id": "$d"}])
    harness.publish("events", [{"id": "$e"}])
    handler = Recording()
    worker = harness.worker(handler)
    pipe = harness.connect(worker)
    harness.run(pipe)
    assert handler.tokens == [
        ("events", 1, [{"id": "$a"}]),
        ("events", 2, [{"id": "$b"}, {"id": "$c"}, {"id": "$d"}]),
        ("events", 3, [{"id": "$e"}]),
    ]
    assert worker.positions.get("events") == 3
    harness.publish("events", [1, 2])
    pipe.pump()
    assert handler.tokens[-1] == ("events", 4, [1, 2])
    assert worker.positions.get("events") == 4
    assert worker.lag("events") == 0


def test_the_wire_shows_batches_and_position(harness: Harness) -> None:
    """Rows of one token go out as RDATA batch lines except the last, then POSITION."""
    harness.publish("events", [{"a": 1}, {"b": 2}])
    connection = MasterConnection(harness.master)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(b"NAME raw\nREPLICATE events 0\n")
    assert transport.value().decode().splitlines() == [
        "SERVER master",
        'RDATA events batch {"a":1}',
        'RDATA events 1 {"b":2}',
        "POSITION events 1",
    ]


def test_catch_up_while_publishing_loses_and_repeats_nothing(tmp_path: Any) -> None:
    """A worker 3,000 tokens behind, served in pages of 50 rows through a small window,
    while 1,002 more tokens are published in between deliveries, handles every token
    1..4002 exactly once, in order."""
    h = Harness(tmp_path, limits=LimitsConfig(catchup_page_rows=50))
    for i in range(3000):
        h.publish("events", [i, i])
    handler = Recording()
    pipe = h.connect(h.worker(handler), high_water=2048)
    published = 3000
    while published < 4000:
        for _ in range(3):
            h.publish("events", [published, published])
            published += 1
        pipe.pump(limit=700, rounds=1)
        h.clock.advance(0)
    h.run(pipe)
    assert handler.token_numbers() == list(range(1, published + 1))
    assert all(rows == [t - 1, t - 1] for _, t, rows in handler.tokens)


def test_a_reconnecting_worker_gets_exactly_what_it_missed(harness: Harness) -> None:
    """A worker that handled 1..5, was disconnected, and comes back while 6..8 were
    published, receives 6..8 only; once it is gone no timer is left."""
    handler = Recording()
    worker = harness.worker(handler)
    for i in range(5):
        harness.publish("events", [i])
    pipe = harness.connect(worker)
    harness.run(pipe)
    pipe.disconnect()
    for i in range(5, 8):
        harness.publish("events", [i])
    harness.run(harness.connect(worker))
    assert handler.token_numbers() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert harness.disconnect_all() == []


def test_tokens_at_or_below_the_position_are_dropped(harness: Harness) -> None:
    """A token the worker already recorded is not handed to the handler again (here the
    position moved on after the worker's REPLICATE, as when a handler call of an earlier
    connection ends late)."""
    handler = Recording()
    worker = harness.worker(handler)
    worker.positions.set("events", 3)
    connection = WorkerConnection(worker)
    connection.makeConnection(StringTransport())
    connection.dataReceived(b"SERVER m\nVERSION 1\n")
    worker.positions.set("events", 5)
    for token in (4, 5, 6):
        connection.dataReceived(RdataCommand("events", token, token).to_line() + b"\n")
    assert handler.token_numbers() == [6]
    assert worker.positions.get("events") == 6


def test_retention_gap_is_announced_and_handled(tmp_path: Any) -> None:
    """With retention of 10 rows, a worker starting at 0 after 100 tokens is sent
    GAP events 1 90, its handler's gap hook runs, then it gets 91..100."""
    h = Harness(tmp_path, retention=RetentionConfig(max_rows=10))
    for i in range(100):
        h.publish("events", [i])
    assert h.store.oldest("events") == 91
    handler = Recording()
    worker = h.worker(handler)
    h.run(h.connect(worker))
    assert handler.events[0] == ("gap", "events", 1, 90)
    assert handler.token_numbers() == list(range(91, 101))
    assert worker.positions.get("events") == 100


def test_a_worker_ahead_of_the_master_is_reset_and_replayed(harness: Harness) -> None:
    """A worker at 50 talking to a master whose head is 3 (it lost its history) is sent
    RESET, its reset hook runs, and it receives 1..3 of the master's current stream."""
    for i in range(3):
        harness.publish("events", [i])
    handler = Recording()
    worker = harness.worker(handler)
    worker.positions.set("events", 50)
    harness.run(harness.connect(worker))
    assert handler.events == [
        ("reset", "events", 50, 3),
        ("token", "events", 1), ("token", "events", 2), ("token", "events", 3),
    ]
    assert worker.positions.get("events") == 3


def test_now_subscription_skips_history_and_records_the_head(harness: Harness) -> None:
    """A worker configured to start from the latest row gets no history, records the head
    from POSITION, and then receives live rows."""
    for i in range(3):
        harness.publish("events", [i])
    handler = Recording()
    worker = harness.worker(handler, start="latest")
    pipe = harness.connect(worker)
    harness.run(pipe)
    assert handler.tokens == []
    assert worker.positions.get("events") == 3
    harness.publish("events", ["x"])
    pipe.pump()
    assert handler.token_numbers() == [4]


def test_replicate_all_now_follows_every_stream_including_new_ones(harness: Harness) -> None:
    """REPLICATE ALL NOW is answered with POSITION for each stream, then rows of every
    stream, including streams created afterwards; a later REPLICATE <stream> is refused
    without closing the connection."""
    harness.publish("a", [1])
    harness.publish("b", [2])
    connection = MasterConnection(harness.master)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(b"NAME tail\nREPLICATE ALL NOW\n")
    harness.publish("c", [3])
    harness.publish("a", [4])
    connection.dataReceived(b"REPLICATE a 0\n")
    lines = transport.value().decode().splitlines()
    assert lines == [
        "SERVER master",
        "POSITION a 1",
        "POSITION b 1",
        "RDATA c 1 3",
        "RDATA a 2 4",
        "ERROR REPLICATE a ignored: already subscribed to ALL streams",
    ]
    assert not transport.disconnecting


def test_unknown_stream_with_strict_streams_is_refused_without_closing(tmp_path: Any) -> None:
    """With strict_streams, REPLICATE of a stream that is not configured gets a non-fatal
    ERROR; publishing to it is refused with 404."""
    h = Harness(tmp_path, streams=("events",), strict_streams=True)
    connection = MasterConnection(h.master)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(b"NAME w\nREPLICATE nope 0\nREPLICATE events 0\n")
    assert transport.value().decode().splitlines()[1:] == [
        "ERROR unknown stream 'nope': this master serves only its configured streams",
        "POSITION events 0",
    ]
    assert not transport.disconnecting
    failure = h.master.publish("nope", [1])
    assert isinstance(failure.result.value, PublishError)
    assert failure.result.value.status == 404
    failure.addErrback(lambda _: None)


def test_unknown_stream_without_strict_streams_is_an_empty_stream(harness: Harness) -> None:
    """Without strict_streams a worker may follow a stream before its first publish."""
    handler = Recording()
    pipe = harness.connect(harness.worker(handler, streams=("later",)))
    harness.run(pipe)
    harness.publish("later", ["first"])
    pipe.pump()
    assert handler.tokens == [("later", 1, ["first"])]


def test_fan_out_writes_the_same_bytes_to_every_subscriber(harness: Harness) -> None:
    """A token is encoded once; each live subscriber is handed the same bytes object."""
    written: list[list[bytes]] = []
    for name in ("w1", "w2", "w3"):
        connection = MasterConnection(harness.master)
        connection.makeConnection(StringTransport())
        connection.dataReceived(b"NAME %s\nREPLICATE events NOW\n" % name.encode())
        seen: list[bytes] = []
        connection.write = seen.append  # type: ignore[method-assign]
        written.append(seen)
    harness.publish("events", [{"a": 1}, {"b": 2}])
    assert [len(w) for w in written] == [1, 1, 1]
    assert written[0][0] is written[1][0] is written[2][0]


def test_a_worker_that_stops_reading_is_cut_off_within_the_bound_and_recovers(
    tmp_path: Any,
) -> None:
    """A worker that stops reading is sent ERROR Failed to keep up once the master holds
    more than max_buffer_bytes for it; the master never holds more than the bound plus the
    transport's window; the worker reconnects and receives every token exactly once; once it
    is gone no timer is left."""
    bound = 64 * 1024
    h = Harness(tmp_path, limits=LimitsConfig(max_buffer_bytes=bound))
    handler = Recording()
    worker = h.worker(handler)
    pipe = h.connect(worker, high_water=16 * 1024)
    h.run(pipe)
    connection = pipe.server
    assert isinstance(connection, MasterConnection)
    pipe.client_reads = False
    row = {"payload": "x" * 200}
    peak = 0
    for _ in range(2000):
        h.publish("events", [row])
        peak = max(peak, connection.queued_bytes)
        if connection.close_reason is not None:
            break
    assert connection.close_reason == FAILED_TO_KEEP_UP
    assert peak <= bound
    assert pipe.server_transport.buffer.endswith(b"ERROR Failed to keep up\n")
    h.clock.advance(h.config.keepalive.close_timeout)  # the close stalls: aborted
    assert not pipe.connected
    assert h.master.connections == set()
    for _ in range(10):
        h.publish("events", [row])
    h.run(h.connect(worker))
    assert handler.token_numbers() == list(range(1, h.master.head("events") + 1))
    assert h.disconnect_all() == []


def test_a_far_behind_worker_is_paged_not_cut_off(tmp_path: Any) -> None:
    """A worker 4,000 tokens of 5 rows (about 5 MB) behind, with a buffer bound of 64 KiB,
    is served page by page and never cut off: catch-up waits for the transport to drain."""
    h = Harness(tmp_path, limits=LimitsConfig(max_buffer_bytes=64 * 1024))
    for i in range(4000):
        h.publish("events", [{"i": i, "pad": "y" * 200}] * 5)
    handler = Recording()
    pipe = h.connect(h.worker(handler), high_water=16 * 1024)
    connection = pipe.server
    assert isinstance(connection, MasterConnection)
    peak = 0
    for _ in range(100000):
        moved = pipe.pump(limit=4096, rounds=1)
        peak = max(peak, connection.queued_bytes + pipe.buffered("server"))
        h.clock.advance(0)
        if not moved and len(handler.tokens) == 4000:
            break
    assert handler.token_numbers() == list(range(1, 4001))
    assert connection.close_reason is None
    assert peak < 64 * 1024 + 16 * 1024 + 300 * 1000  # bound + window + one page


def test_a_failing_handler_is_retried_with_backoff_and_order_is_kept(harness: Harness) -> None:
    """A handler that fails twice on token 2 is called again after 1 s and 2 s; token 3
    waits behind it; the position is recorded only after success."""
    calls: list[int] = []
    failures = {"left": 2}

    def handler(stream: str, token: int, rows: list[Any]) -> None:
        calls.append(token)
        if token == 2 and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("database away")

    for i in range(3):
        harness.publish("events", [i])
    worker = harness.worker(handler)
    pipe = harness.connect(worker)
    harness.run(pipe)
    assert calls == [1, 2]
    assert worker.positions.get("events") == 1
    harness.clock.advance(1)
    pipe.pump()
    assert calls == [1, 2, 2]
    harness.clock.advance(1.9)
    assert calls == [1, 2, 2]
    harness.clock.advance(0.1)
    pipe.pump()
    assert calls == [1, 2, 2, 2, 3]
    assert worker.positions.get("events") == 3


def test_an_asynchronous_handler_holds_the_next_token(harness: Harness) -> None:
    """While a handler's Deferred is pending the next token waits; the position moves
    when it fires."""
    handler, worker, pipe = two_tokens_first_pending(harness)
    pending, seen = handler.pending, handler.seen
    assert worker.positions.get("events") is None
    pending[0].callback(None)
    assert seen == [1, 2]
    assert worker.positions.get("events") == 1
    pending[1].callback(None)
    assert worker.positions.get("events") == 2


def test_connections_past_the_limit_are_refused(tmp_path: Any) -> None:
    """With max_connections 1, a second connection gets ERROR too many connections; once
    both are gone no timer is left."""
    h = Harness(tmp_path, limits=LimitsConfig(max_connections=1))
    first = MasterConnection(h.master)
    first.makeConnection(StringTransport())
    second = MasterConnection(h.master)
    transport = StringTransport()
    second.makeConnection(transport)
    assert transport.value().decode().splitlines()[-1] == (
        "ERROR too many connections: this master takes 1 (limits.max_connections)"
    )
    assert transport.disconnecting
    second.connectionLost()
    assert h.master.connections == {first}
    first.connectionLost()
    assert h.master.connections == set()
    assert h.clock.getDelayedCalls() == []


@pytest.mark.parametrize(
    "stream, rows, status, message",
    [
        ("events", [], 400, "at least one row"),
        ("events", "abc", 400, "must be a list"),
        ("bad name", [1], 400, "invalid stream name"),
        ("ALL", [1], 400, "reserved"),
        ("events", [float("nan")], 400, "row 0"),
        ("events", [1, "x" * 70000], 413, "row 1 is 70002 bytes"),
    ],
)
def test_bad_publishes_are_refused_and_store_nothing(
    harness: Harness, stream: str, rows: Any, status: int, message: str
) -> None:
    """Invalid publishes fail with PublishError and the status that answers them over
    HTTP; nothing of the call is stored."""
    d = harness.master.publish(stream, rows)
    errors: list[PublishError] = []
    d.addErrback(lambda f: errors.append(f.value))
    assert errors and errors[0].status == status
    assert message in errors[0].message
    assert harness.store.stream_names() == []


def test_publishing_assigns_contiguous_tokens_per_stream(harness: Harness) -> None:
    assert [harness.publish("a", [1]) for _ in range(3)] == [1, 2, 3]
    assert harness.publish("b", [1]) == 1
    assert harness.master.head("a") == 3


def test_no_delayed_calls_are_left_after_disconnect(harness: Harness) -> None:
    """Keepalive and pump timers are cancelled when the connection ends."""
    for i in range(500):
        harness.publish("events", [i] * 20)
    pipe = harness.connect(harness.worker(Recording()), high_water=1024)
    pipe.pump(limit=100, rounds=3)
    pipe.disconnect()
    assert harness.clock.getDelayedCalls() == []
    assert default_registry().names(MASTER) >= {"RDATA", "POSITION"}


def test_a_pending_handler_is_not_overtaken_after_a_reconnect(harness: Harness) -> None:
    """If the connection drops while an asynchronous handler call is pending, the next
    connection handles nothing until that call ends; the replayed token is then dropped as
    a duplicate, so the handler sees each token once, never two at a time; once it is gone
    no timer is left."""
    handler, worker, pipe = two_tokens_first_pending(harness)
    pending, seen = handler.pending, handler.seen
    pipe.disconnect()
    second = harness.connect(worker)
    harness.run(second)
    assert seen == [1]
    pending[0].callback(None)
    harness.run(second)
    assert seen == [1, 2]
    pending[1].callback(None)
    assert worker.positions.get("events") == 2
    assert harness.disconnect_all() == []


def worker_end(harness: Harness, handler: Any) -> tuple[WorkerConnection, StringTransport]:
    connection = WorkerConnection(harness.worker(handler))
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(b"SERVER m\nVERSION 1\n")
    transport.clear()
    return connection, transport


@pytest.mark.parametrize(
    "line, error",
    [
        (b"RDATA events x {}", b"ERROR token must be a non-negative integer, got 'x'"),
        (b"RDATA events 1 {bad", b"ERROR RDATA row is not valid JSON"),
        (b"RDATA events 1 NaN", b"ERROR RDATA row is not valid JSON: NaN is not a JSON value"),
        (b'RDATA events 1 "\xff"', b"ERROR line is not valid UTF-8"),
        (b"RDATA events 1", b"ERROR RDATA takes 3 arguments"),
        (b"RDATA events 12345678901234567890 1", b"ERROR token must be a non-negative integer"),
    ],
)
def test_the_worker_refuses_malformed_rdata(harness: Harness, line: bytes, error: bytes) -> None:
    """The worker's fast RDATA path hands anything malformed to the full parser, which
    answers ERROR and closes; the handler is not called."""
    handler = Recording()
    connection, transport = worker_end(harness, handler)
    connection.dataReceived(line + b"\n")
    assert transport.value().startswith(error)
    assert transport.disconnecting
    assert handler.tokens == []


def test_the_worker_ignores_rows_of_streams_it_does_not_follow(harness: Harness) -> None:
    handler = Recording()
    connection, transport = worker_end(harness, handler)
    connection.dataReceived(b"RDATA other 1 {}\nRDATA events 1 {}\n")
    assert handler.tokens == [("events", 1, [{}])]
    assert not transport.disconnecting


WORKER_INPUT = (
    'RDATA events batch {"a":"\u00e9"}\nRDATA events batch [1]\nRDATA events 1 2\n'
    "POSITION events 1\nPING 5\nRDATA events 2 null\n"
).encode()


@pytest.mark.parametrize("chunk", range(1, len(WORKER_INPUT) + 1))
def test_worker_framing_is_the_same_in_every_chunk_size(harness: Harness, chunk: int) -> None:
    """Batches, positions and pings fed to a worker in chunks of any size give the same
    handler calls."""
    handler = Recording()
    connection, _ = worker_end(harness, handler)
    for i in range(0, len(WORKER_INPUT), chunk):
        connection.dataReceived(WORKER_INPUT[i : i + chunk])
    assert handler.tokens == [("events", 1, [{"a": "\u00e9"}, [1], 2]), ("events", 2, [None])]
