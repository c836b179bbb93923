"""The log rate limiter, and the two warnings it bounds (a worker's rows of unfollowed
streams, a master's REPLICATE above the head)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from replication.config import MasterConfig, WorkerConfig, WorkerStream
from replication.master import Master, MasterConnection
from replication.positions import PositionFile
from replication.ratelimit import LogRateLimiter, suppressed_note
from replication.store.memory import MemoryStore
from replication.worker import Worker, WorkerConnection


def test_the_first_message_of_a_key_is_logged_then_one_per_interval() -> None:
    """The first message passes with 0 suppressed; repeats inside the interval are
    suppressed; the first at the interval's end passes with their count."""
    limiter = LogRateLimiter(interval=10.0)
    assert limiter.allow("a", 100.0) == 0
    assert limiter.allow("a", 100.0) is None
    assert limiter.allow("a", 109.999) is None
    assert limiter.allow("a", 110.0) == 2
    assert limiter.allow("a", 110.5) is None
    assert limiter.allow("a", 120.0) == 1
    assert limiter.allow("a", 130.0) == 0


def test_keys_are_limited_separately() -> None:
    """Another key's first message is logged even while the first key is suppressed."""
    limiter = LogRateLimiter(interval=10.0)
    assert limiter.allow(("s", "RDATA"), 0.0) == 0
    assert limiter.allow(("s", "POSITION"), 1.0) == 0
    assert limiter.allow(("s", "RDATA"), 2.0) is None


def test_keys_beyond_max_keys_forget_the_oldest() -> None:
    """Memory is bounded: past ``max_keys`` the least recently logged key is forgotten, and
    its next message is logged as a first one."""
    limiter = LogRateLimiter(interval=10.0, max_keys=2)
    assert limiter.allow("a", 0.0) == 0
    assert limiter.allow("b", 0.0) == 0
    assert limiter.allow("a", 0.5) is None
    assert limiter.allow("c", 1.0) == 0  # forgets "a"
    assert len(limiter._keys) == 2
    assert limiter.allow("a", 1.5) == 0
    assert limiter.allow("c", 1.6) is None


def test_bad_arguments_are_refused() -> None:
    """A negative interval or fewer than one key is a ValueError."""
    with pytest.raises(ValueError, match="interval"):
        LogRateLimiter(interval=-1.0)
    with pytest.raises(ValueError, match="max_keys"):
        LogRateLimiter(max_keys=0)


def test_the_note_counts_suppressed_lines() -> None:
    """No note for none; the count otherwise."""
    assert suppressed_note(0) == ""
    assert suppressed_note(3) == " (3 more like this suppressed)"


def test_a_worker_logs_rows_of_an_unfollowed_stream_once_a_minute(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A master flooding a worker with rows of a stream it does not follow gets one warning,
    then one a minute with the count of the suppressed ones."""
    clock = Clock()
    positions = PositionFile(str(tmp_path / "w.positions"), fsync=False, capacity=4096)
    worker = Worker(WorkerConfig(name="w", streams=(WorkerStream("events"),)),
                    lambda s, t, r: None, positions, clock)
    connection = WorkerConnection(worker)
    connection.makeConnection(StringTransport())
    connection.dataReceived(b"SERVER m\nVERSION 1\n")
    caplog.set_level(logging.WARNING, "replication.worker.connection")
    connection.dataReceived(b"".join(b"RDATA other %d []\n" % t for t in range(1, 1001)))
    clock.advance(59)
    connection.dataReceived(b"RDATA other 1001 []\n")
    clock.advance(1)
    connection.dataReceived(b"RDATA other 1002 []\n")
    messages = [r.getMessage() for r in caplog.records if "does not follow" in r.getMessage()]
    assert messages == [
        "master sent RDATA for other, which this worker does not follow",
        ("master sent RDATA for other, which this worker does not follow "
         "(1000 more like this suppressed)"),
    ]


def test_a_master_logs_replicate_above_the_head_once_a_minute_per_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Workers asking for a stream above its head, again and again, get RESET every time,
    but the warning is logged once, then once a minute with the count."""
    clock = Clock()
    master = Master(MasterConfig(), MemoryStore(), clock)
    caplog.set_level(logging.WARNING, "replication.master.fanout")

    def ask() -> bytes:
        connection = MasterConnection(master)
        transport = StringTransport()
        connection.makeConnection(transport)
        connection.dataReceived(b"NAME w\nVERSION 1\nREPLICATE events 40\n")
        return transport.value()

    answers = [ask() for _ in range(50)]
    clock.advance(60)
    answers.append(ask())
    assert all(b"RESET events 0\n" in answer for answer in answers)
    messages = [r.getMessage() for r in caplog.records if "sending RESET" in r.getMessage()]
    assert len(messages) == 2
    assert messages[0].endswith("but the head is 0: sending RESET")
    assert messages[1].endswith("sending RESET (49 more like this suppressed)")
