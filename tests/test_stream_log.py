"""The master's stream log and fan-out, without sockets: one commit path for inline and
threaded stores, listeners told in token order, rows committed by another writer (pokes and
gaps) delivered once and in order, and catch-up over asynchronous reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from helpers import ManualRunner
from replication.commands import Command, ReplicateCommand
from replication.master.fanout import FanOut
from replication.master.log import DeleteError, PublishError, StreamLog, StreamState
from replication.store import Retention, StoreError, StreamStats
from replication.store.asynchronous import InlineStore, OpenedStore, ThreadedStore, adapt
from replication.store.memory import MemoryStore

KEEP_ALL = Retention()


class Listener:
    """Records what the log tells: ``("tokens", stream, [tokens], rows)`` and skips."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def committed(
        self, state: StreamState, first: int, tokens_rows: Sequence[Sequence[str]], rows: int
    ) -> None:
        assert state.head == first + len(tokens_rows) - 1
        tokens = list(range(first, first + len(tokens_rows)))
        self.events.append(("tokens", state.stream, tokens, [list(r) for r in tokens_rows], rows))

    def skipped(self, state: StreamState, first: int, last: int) -> None:
        self.events.append(("skipped", state.stream, first, last))

    def deleted(self, old: StreamState, new: StreamState | None) -> None:
        self.events.append(("deleted", old, new))

    def tokens(self, stream: str = "s") -> list[int]:
        return [t for e in self.events if e[0] == "tokens" and e[1] == stream for t in e[2]]


def inline_log(store: MemoryStore | None = None, retention: Retention = KEEP_ALL) -> StreamLog:
    log = StreamLog(InlineStore(store or MemoryStore()), Clock(), lambda _: retention)
    log.open(())
    return log


class FakeFollower:
    """A Follower that records lines; ``can_write`` is set by the test."""

    dialect = "replication/1"

    def __init__(self) -> None:
        self.data = b""
        self.can_write = True
        self.errors: list[str] = []

    def write(self, data: bytes) -> None:
        self.data += data

    def send(self, command: Command) -> None:
        self.data += command.to_line() + b"\n"

    def send_error(self, message: str) -> None:
        self.errors.append(message)

    def describe(self) -> str:
        return "fake follower"

    def lines(self) -> list[str]:
        lines = self.data.decode().splitlines()
        self.data = b""
        return lines


# -- the log -------------------------------------------------------------------------------


def test_inline_publishes_reach_listeners_before_the_publisher() -> None:
    """With a store that never blocks, a publish is committed at once: the listener hears
    of it before the publish's Deferred fires, and the state counts its rows."""
    log = inline_log()
    listener = Listener()
    log.add_listener(listener)
    seen_at_answer: list[int] = []
    d = log.publish("s", [['1'], ['2', '3']])
    d.addCallback(lambda tokens: seen_at_answer.extend(listener.tokens()) or tokens)
    assert d.result == [1, 2]
    assert seen_at_answer == [1, 2]
    state = log.state("s")
    assert state is not None
    assert (state.head, state.oldest, state.retained_rows, state.rows_published) == (2, 1, 3, 3)
    assert listener.events == [("tokens", "s", [1, 2], [["1"], ["2", "3"]], 3)]


def test_the_log_learns_the_stores_origin_id_when_it_opens() -> None:
    """The store's origin id reaches the log through the asynchronous open: unknown
    (``None``) until the open ran on the writer thread, then the store's own; pokes do not
    change it."""
    runner = ManualRunner()
    store = MemoryStore()
    log = StreamLog(ThreadedStore(store, runner), Clock(), lambda _: KEEP_ALL)
    log.open(("s",))
    assert log.origin_id is None and not log.opened
    runner.run_all()
    assert log.opened and log.origin_id == store.origin_id
    log.poke()
    runner.run_all()
    assert log.origin_id == store.origin_id
    assert inline_log(store).origin_id == store.origin_id


def test_threaded_commits_group_publishes_and_tell_listeners_per_stream_run() -> None:
    """With a blocking store, publishes that arrive while a commit runs share the next one;
    the listener gets one run per stream, in token order, before any publisher's answer."""
    runner = ManualRunner()
    log = StreamLog(ThreadedStore(MemoryStore(), runner), Clock(), lambda _: KEEP_ALL)
    log.open(("s",))
    runner.run_all()
    listener = Listener()
    log.add_listener(listener)
    answers: list[list[int]] = []
    for rows in (["1"], ["2"], ["3"]):
        log.publish("s", [rows]).addCallback(answers.append)
    log.publish("t", [["x"]]).addCallback(answers.append)
    runner.run_one()  # the first publish alone
    assert answers == [[1]]
    runner.run_one()  # the other three together
    assert answers == [[1], [2], [3], [1]]
    assert [e[1:3] for e in listener.events] == [("s", [1]), ("s", [2, 3]), ("t", [1])]


def test_a_failed_commit_refuses_its_publishes_and_changes_no_head() -> None:
    """A store failure fails every publish of the commit with 503; heads and listeners
    are untouched."""

    class Failing(MemoryStore):
        def append(self, batch: Any, now: float, origin: str = "") -> list[int]:
            raise StoreError("disk full")

    log = inline_log(Failing())
    listener = Listener()
    log.add_listener(listener)
    errors: list[PublishError] = []
    log.publish("s", [["1"]]).addErrback(lambda f: errors.append(f.value))
    assert [(e.status, e.message) for e in errors] == [(503, "store failed: disk full")]
    assert log.head("s") == 0 and listener.events == []


def test_a_poke_delivers_rows_another_writer_committed_once_in_order() -> None:
    """Two logs on one store: what A commits reaches B's listener on B's poke, in token
    order; a second poke delivers nothing again."""
    store = MemoryStore()
    a, b = inline_log(store), inline_log(store)
    listener = Listener()
    b.add_listener(listener)
    a.publish("s", [["1"], ["2"]])
    a.publish("s", [["3"]])
    assert listener.events == []
    b.poke()
    assert listener.tokens() == [1, 2, 3]
    assert b.head("s") == 3
    b.poke()
    assert listener.tokens() == [1, 2, 3]


def test_a_commit_after_another_writers_commit_waits_for_the_missing_tokens() -> None:
    """B commits token 3 while tokens 1 and 2 (A's) are unknown to it: its listener gets
    1, 2 and then 3, each once, and B's publisher gets token 3."""
    store = MemoryStore()
    a, b = inline_log(store), inline_log(store)
    listener = Listener()
    b.add_listener(listener)
    a.publish("s", [["a1"], ["a2"]])
    assert b.publish("s", [["b3"]]).result == [3]
    assert listener.tokens() == [1, 2, 3]
    assert [e[3] for e in listener.events] == [[["a1"], ["a2"]], [["b3"]]]
    b.poke()
    assert listener.tokens() == [1, 2, 3]


def test_tokens_of_another_writer_that_were_trimmed_are_reported_as_skipped() -> None:
    """If retention dropped tokens another writer committed before this log read them, the
    listener is told they were skipped, then gets what is still there."""
    store = MemoryStore()
    a, b = inline_log(store, Retention(max_rows=1)), inline_log(store)
    listener = Listener()
    b.add_listener(listener)
    for i in range(4):
        a.publish("s", [[str(i)]])
    b.poke()
    assert listener.events[0] == ("skipped", "s", 1, 3)
    assert listener.tokens() == [4]


def test_publishes_before_open_are_refused() -> None:
    """Until the store is open, a publish fails with 503 and nothing is stored."""
    runner = ManualRunner()
    store = MemoryStore()
    log = StreamLog(ThreadedStore(store, runner), Clock(), lambda _: KEEP_ALL)
    log.open(())
    errors: list[PublishError] = []
    log.publish("s", [["1"]]).addErrback(lambda f: errors.append(f.value))
    assert [e.status for e in errors] == [503]
    assert store.stream_names() == []


def test_retention_passes_update_the_statistics_without_reading_the_store_later() -> None:
    """A background retention pass brings back each stream's oldest token and retained
    rows; the state shows them without asking the store again."""
    runner = ManualRunner()
    store = MemoryStore()
    log = StreamLog(ThreadedStore(store, runner), Clock(), lambda _: Retention(max_rows=2))
    log.open(())
    runner.run_all()
    for i in range(5):
        log.publish("s", [[str(i)]])
        runner.run_all()
    state = log.state("s")
    assert state is not None and (state.oldest, state.retained_rows) == (1, 5)
    log.trim()
    runner.run_all()
    assert (state.head, state.oldest, state.retained_rows) == (5, 4, 2)


# -- the adapters --------------------------------------------------------------------------


def test_the_inline_adapter_answers_at_once_and_fails_with_the_store_error() -> None:
    memory = MemoryStore()
    store = InlineStore(memory)
    assert store.append([("s", ["1"])], 0).result == [1]
    assert store.open(()).result == OpenedStore(
        memory.origin_id, {("s", ""): StreamStats(1, 1, 1, 0.0)}
    )
    errors: list[Any] = []
    store.read("nope", 0, 1, 10).addErrback(errors.append)
    assert errors and errors[0].check(StoreError)


def test_the_threaded_adapter_runs_writes_and_reads_on_their_runners() -> None:
    """Writes go to the writer runner, reads to the reader runner; nothing runs inline."""
    writes, reads = ManualRunner(), ManualRunner()
    store = ThreadedStore(MemoryStore(), writes, reads)
    appended = store.append([("s", ["1"])], 0)
    assert len(writes.queue) == 1 and not reads.queue and not appended.called
    writes.run_all()
    read = store.read("s", 0, 1, 10)
    assert len(reads.queue) == 1 and not writes.queue
    reads.run_all()
    assert [e.token for e in read.result] == [1]


def test_a_blocking_store_needs_a_runner() -> None:
    class Blocking(MemoryStore):
        blocking = True

    with pytest.raises(ValueError, match="run_blocking"):
        adapt(Blocking())
    with pytest.raises(ValueError, match="ThreadedStore"):
        InlineStore(Blocking())


# -- fan-out over asynchronous reads -----------------------------------------------------------


def threaded_fanout(page_rows: int = 2) -> tuple[StreamLog, FanOut, ManualRunner, ManualRunner]:
    writes, reads = ManualRunner(), ManualRunner()
    log = StreamLog(ThreadedStore(MemoryStore(), writes, reads), Clock(), lambda _: KEEP_ALL)
    log.open(())
    writes.run_all()
    fanout = FanOut(log, Clock(), page_rows=page_rows, knows=lambda _: True)
    return log, fanout, writes, reads


def publish(log: StreamLog, writes: ManualRunner, *values: int) -> None:
    for value in values:
        log.publish("s", [[str(value)]])
    writes.run_all()


def test_catch_up_waits_for_each_read_and_goes_live_at_the_current_head() -> None:
    """A follower 0 tokens in is sent each page when its read completes; tokens committed
    while a read is in flight are read next, and POSITION comes only at the head: every
    token once, in order."""
    log, fanout, writes, reads = threaded_fanout(page_rows=2)
    publish(log, writes, 1, 2, 3)
    follower = FakeFollower()
    fanout.replicate(follower, ReplicateCommand("s", 0))
    assert follower.lines() == [] and len(reads.queue) == 1
    publish(log, writes, 4)  # committed while the first page is being read
    assert follower.lines() == []
    reads.run_one()
    assert follower.lines() == ["RDATA s 1 1", "RDATA s 2 2"]
    reads.run_one()
    assert follower.lines() == ["RDATA s 3 3", "RDATA s 4 4", "POSITION s 4"]
    publish(log, writes, 5)
    assert follower.lines() == ["RDATA s 5 5"]
    assert not reads.queue


def test_a_page_read_for_a_follower_that_left_is_dropped() -> None:
    log, fanout, writes, reads = threaded_fanout()
    publish(log, writes, 1)
    follower = FakeFollower()
    fanout.replicate(follower, ReplicateCommand("s", 0))
    fanout.remove(follower)
    reads.run_all()
    assert follower.lines() == []


def test_a_new_replicate_during_a_read_replaces_the_old_catch_up() -> None:
    """REPLICATE s 2 while the page for REPLICATE s 0 is in flight: the old page is dropped
    and the new subscription is served from token 2."""
    log, fanout, writes, reads = threaded_fanout(page_rows=10)
    publish(log, writes, 1, 2, 3)
    follower = FakeFollower()
    fanout.replicate(follower, ReplicateCommand("s", 0))
    fanout.replicate(follower, ReplicateCommand("s", 2))
    reads.run_all()
    assert follower.lines() == ["RDATA s 3 3", "POSITION s 3"]


def test_a_failed_read_answers_the_follower_with_an_error() -> None:
    log, fanout, writes, reads = threaded_fanout()
    publish(log, writes, 1)
    follower = FakeFollower()
    fanout.replicate(follower, ReplicateCommand("s", 0))
    f, args, d = reads.queue.pop(0)
    d.errback(StoreError("disk gone"))
    assert follower.errors == ["master cannot read stream s: store failure"]


def test_live_followers_of_skipped_tokens_are_sent_gap() -> None:
    """Tokens another writer committed and retention dropped before this master read them:
    a live follower is put back into catch-up and told GAP, then gets the rest."""
    store = MemoryStore()
    a = inline_log(store, Retention(max_rows=1))
    b = inline_log(store)
    fanout = FanOut(b, Clock(), page_rows=10, knows=lambda _: True)
    follower = FakeFollower()
    fanout.replicate(follower, ReplicateCommand("s", None))
    assert follower.lines() == ["POSITION s 0"]
    for i in range(1, 4):
        a.publish("s", [[str(i)]])
    b.poke()
    assert follower.lines() == ["GAP s 1 2", "POSITION s 2", "RDATA s 3 3"]


# -- rows of other origins -----------------------------------------------------------------


def test_ingested_rows_keep_their_origin_and_tokens_and_duplicates_are_dropped() -> None:
    """Rows of origin B are stored under (stream, B) with B's tokens; a relayed batch that
    repeats tokens already stored adds only the new ones; the listener hears each once."""
    from replication.store import Entry

    log = inline_log()
    listener = Listener()
    log.add_listener(listener)
    assert log.ingest("s", "B", [Entry(1, ("a",)), Entry(2, ("b", "c"))]).result == 2
    assert log.ingest("s", "B", [Entry(2, ("b", "c")), Entry(3, ("d",))]).result == 3
    state = log.state("s", "B")
    assert state is not None and (state.head, state.retained_rows) == (3, 4)
    assert log.head("s") == 0  # the local origin's tokens are separate
    assert [(e[2], e[3]) for e in listener.events] == [
        ([1, 2], [["a"], ["b", "c"]]), ([3], [["d"]]),
    ]


def test_an_ingest_with_a_gap_is_refused_whole() -> None:
    """Tokens of an origin are stored without gaps: 1 then 3 is refused, nothing stored."""
    from replication.store import Entry

    log = inline_log()
    errors: list[Any] = []
    log.ingest("s", "B", [Entry(1, ("a",)), Entry(3, ("c",))]).addErrback(errors.append)
    assert errors and "does not follow token 1" in errors[0].getErrorMessage()
    assert log.head("s", "B") == 0


def test_the_local_origin_is_not_ingested() -> None:
    from replication.store import Entry

    errors: list[Any] = []
    inline_log().ingest("s", "", [Entry(1, ("a",))]).addErrback(errors.append)
    assert errors and errors[0].check(StoreError)


def test_fan_out_does_not_send_other_origins_rows_in_todays_dialect() -> None:
    """A follower of the stream gets the local origin's tokens only: the protocol it speaks
    cannot name an origin, and another origin's token 1 is not the local token 1."""
    from replication.store import Entry

    log = inline_log()
    fanout = FanOut(log, Clock(), page_rows=10, knows=lambda _: True)
    follower = FakeFollower()
    fanout.replicate(follower, ReplicateCommand("s", None))
    follower.lines()
    log.ingest("s", "B", [Entry(1, ("9",))])
    log.publish("s", [["1"]])
    assert follower.lines() == ["RDATA s 1 1"]


def test_a_reopened_log_loads_every_origins_head() -> None:
    from replication.store import Entry

    store = MemoryStore()
    first = inline_log(store)
    first.publish("s", [["1"]])
    first.ingest("s", "B", [Entry(1, ("a",)), Entry(2, ("b",))])
    again = inline_log(store)
    assert (again.head("s"), again.head("s", "B")) == (1, 2)


def test_a_skip_moves_another_origins_head_and_tells_the_listeners() -> None:
    """``skip`` (a peer's GAP) moves the head of (stream, B) to the gap's end through the
    store, drops what was retained below it, and tells the listeners which tokens will
    never come; the next ingest continues after the gap."""
    from replication.store import Entry

    store = MemoryStore()
    log = inline_log(store)
    listener = Listener()
    log.add_listener(listener)
    log.ingest("s", "B", [Entry(1, ("a",)), Entry(2, ("b",))])
    assert log.skip("s", "B", 6).result == 6
    state = log.state("s", "B")
    assert state is not None
    assert (state.head, state.oldest, state.retained_rows) == (6, 7, 0)
    assert listener.events[-1] == ("skipped", "s", 3, 6)
    assert store.head("s", "B") == 6
    assert log.skip("s", "B", 4).result == 6  # already past: nothing, nobody told
    assert listener.events[-1] == ("skipped", "s", 3, 6)
    assert log.ingest("s", "B", [Entry(7, ("g",))]).result == 7
    assert listener.tokens() == [1, 2, 7]


def test_a_skip_of_a_stream_never_seen_creates_it_at_the_gaps_end() -> None:
    log = inline_log()
    listener = Listener()
    log.add_listener(listener)
    assert log.skip("t", "B", 3).result == 3
    assert log.head("t", "B") == 3 and listener.events == [("skipped", "t", 1, 3)]


def test_a_skip_of_the_local_origin_or_before_open_is_refused() -> None:
    errors: list[Any] = []
    inline_log().skip("s", "", 3).addErrback(errors.append)
    closed = StreamLog(InlineStore(MemoryStore()), Clock(), lambda _: KEEP_ALL)
    closed.skip("s", "B", 3).addErrback(errors.append)
    assert [e.check(StoreError) for e in errors] == [StoreError, StoreError]


def test_a_failed_skip_changes_nothing() -> None:
    """A store that refuses the skip (here: the store's own origin id) leaves the head."""
    store = MemoryStore()
    log = inline_log(store)
    errors: list[Any] = []
    log.skip("s", store.origin_id, 3).addErrback(errors.append)
    assert errors and "own origin id" in errors[0].getErrorMessage()
    assert log.head("s", store.origin_id) == 0


def test_retention_passes_trim_other_origins_with_their_streams_retention() -> None:
    """A retention pass trims the rows ingested from other origins too, each with the
    retention of its stream, and keeps their states' statistics current; a stream that has
    rows of another origin only is trimmed as well."""
    from replication.store import Entry

    runner = ManualRunner()
    store = MemoryStore()
    policies = {"s": Retention(max_rows=2), "t": Retention(max_rows=1)}
    log = StreamLog(ThreadedStore(store, runner), Clock(), lambda name: policies[name])
    log.open(())
    runner.run_all()
    log.publish("s", [["1"], ["2"], ["3"]])
    log.ingest("s", "B", [Entry(t, (str(t),)) for t in range(1, 6)])
    log.ingest("t", "C", [Entry(1, ("x",)), Entry(2, ("y",))])
    runner.run_all()
    log.trim()
    runner.run_all()
    local, other, only = log.state("s"), log.state("s", "B"), log.state("t", "C")
    assert local is not None and other is not None and only is not None
    assert (local.oldest, local.retained_rows) == (2, 2)
    assert (other.head, other.oldest, other.retained_rows) == (5, 4, 2)
    assert (only.oldest, only.retained_rows) == (2, 1)
    assert store.oldest("s", "B") == 4 and store.oldest("t", "C") == 2


def test_inline_ingests_are_trimmed_as_they_are_stored() -> None:
    """On a store that never blocks, an ingest is trimmed at once, as a local publish is."""
    from replication.store import Entry

    store = MemoryStore()
    log = inline_log(store, Retention(max_rows=2))
    log.ingest("s", "B", [Entry(t, (str(t),)) for t in range(1, 6)])
    state = log.state("s", "B")
    assert state is not None and (state.oldest, state.retained_rows) == (4, 2)
    assert store.retained_rows("s", "B") == 2


# -- deleting a stream -----------------------------------------------------------------------


def test_a_follower_catching_up_is_reset_and_its_page_in_flight_dropped() -> None:
    """A follower whose catch-up page is being read when the stream is deleted gets RESET s
    0 and POSITION s 0, never the old page; the new stream's token 1 reaches it live."""
    log, fanout, writes, reads = threaded_fanout(page_rows=2)
    publish(log, writes, 1, 2, 3)
    follower = FakeFollower()
    fanout.replicate(follower, ReplicateCommand("s", 0))
    assert len(reads.queue) == 1
    done: list[object] = []
    log.delete("s").addBoth(done.append)
    writes.run_all()
    assert done == [None] and log.state("s") is None
    assert follower.lines() == ["RESET s 0", "POSITION s 0"]
    reads.run_all()
    assert follower.lines() == []
    publish(log, writes, 7)
    assert follower.lines() == ["RDATA s 1 7"]
    assert fanout.sent_positions(follower) == {"s": 1}


def test_a_legacy_follower_of_a_deleted_stream_gets_position_zero() -> None:
    """A follower of the legacy dialect (no RESET) is sent POSITION s 0 alone, counted as a
    substitution for RESET."""
    log, fanout, writes, _ = threaded_fanout()
    publish(log, writes, 1)
    follower = FakeFollower()
    follower.dialect = "synapse-2017"
    fanout.replicate(follower, ReplicateCommand("s", None))
    assert follower.lines() == ["POSITION s 1"]
    log.delete("s")
    writes.run_all()
    assert follower.lines() == ["POSITION s 0"]
    assert fanout.legacy_substitutions["RESET"] == 1


def test_deleting_with_recreate_keeps_the_stream_empty_and_tells_the_listeners() -> None:
    """delete(recreate=True) empties the stream in the store and the log (head 0, a new
    creation time); the listeners hear of the old and the new state."""
    log = inline_log()
    listener = Listener()
    log.add_listener(listener)
    log.publish("s", [["1"], ["2"]])
    old = log.state("s")
    log.clock.advance(50)  # type: ignore[attr-defined]
    new = log.delete("s", recreate=True).result
    assert new is log.state("s") and new is not old
    assert (new.head, new.retained_rows, new.created) == (0, 0, 50.0)
    assert listener.events[-1] == ("deleted", old, new)
    assert log.read("s", 0, 10, 10).result == []


def test_a_failed_deletion_changes_nothing() -> None:
    """A store failure fails the deletion with DeleteError 503 and leaves the log's state."""
    log, fanout, writes, _ = threaded_fanout()
    publish(log, writes, 1)
    errors: list[Failure] = []
    log.delete("s").addErrback(errors.append)
    _, _, d = writes.queue.pop(0)
    d.errback(StoreError("disk gone"))
    assert errors and isinstance(errors[0].value, DeleteError) and errors[0].value.status == 503
    state = log.state("s")
    assert state is not None and state.head == 1
