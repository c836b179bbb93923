"""``HANDLED``: a worker reports its recorded positions at most once a second, only those
that changed, and never after its connection closed; the master records them per connection
and stream (shown in the snapshot and ``/status``), and refuses a report for a stream the
connection does not follow or above what it could have."""

from __future__ import annotations

from pathlib import Path

from test_metrics import scrape_master, value

from replication.cli import format_status
from replication.http.status import master_status
from replication.snapshot import FollowView
from replication.testing import Harness, MemoryPipe, Recording
from replication.wire.commands import HandledCommand
from replication.worker.connection import HANDLED_INTERVAL, WorkerConnection


def live_worker(directory: Path, tokens: int) -> tuple[Harness, MemoryPipe]:
    """A master with ``tokens`` tokens of "events" and a worker live on it."""
    h = Harness(directory)
    for i in range(tokens):
        h.publish("events", [i])
    pipe = h.connect(h.worker(Recording()))
    h.run(pipe)
    return h, pipe


def follow(h: Harness) -> FollowView:
    """The one stream the one connection follows, from the master's snapshot."""
    (connection,) = h.master.snapshot().connections
    (view,) = connection.streams
    return view


def handled_sent(pipe: MemoryPipe) -> int:
    """``HANDLED`` lines the worker's end has sent."""
    assert isinstance(pipe.client, WorkerConnection)
    return pipe.client.command_counts()[1].get("HANDLED", 0)


def tick(h: Harness, pipe: MemoryPipe, seconds: float) -> None:
    h.clock.advance(seconds)
    h.run(pipe)


def test_the_master_knows_nothing_handled_until_the_first_report(tmp_path: Path) -> None:
    """Before a second has passed the worker has reported nothing: ``handled`` and
    ``handled_lag`` are None; at one second the recorded position arrives."""
    h, pipe = live_worker(tmp_path, 3)
    assert follow(h).handled is None and follow(h).handled_lag is None
    tick(h, pipe, HANDLED_INTERVAL - 0.001)
    assert follow(h).handled is None
    tick(h, pipe, 0.001)
    assert (follow(h).handled, follow(h).handled_lag) == (3, 0)
    assert handled_sent(pipe) == 1


def test_reports_come_once_a_second_and_only_on_change(tmp_path: Path) -> None:
    """New tokens handled between two ticks are reported at the next tick, in one line; a
    tick with nothing new sends nothing. Meanwhile the lag shows what is not reported."""
    h, pipe = live_worker(tmp_path, 3)
    tick(h, pipe, HANDLED_INTERVAL)
    h.publish("events", ["a"])
    h.publish("events", ["b"])
    h.run(pipe)
    assert (follow(h).handled, follow(h).handled_lag, follow(h).position) == (3, 2, 5)
    tick(h, pipe, HANDLED_INTERVAL)
    assert (follow(h).handled, follow(h).handled_lag) == (5, 0)
    assert handled_sent(pipe) == 2
    tick(h, pipe, HANDLED_INTERVAL)
    tick(h, pipe, HANDLED_INTERVAL)
    assert handled_sent(pipe) == 2


def test_no_timer_is_left_after_the_connection_closes(tmp_path: Path) -> None:
    """Closing the connection stops the reports: no delayed call remains."""
    h, pipe = live_worker(tmp_path, 1)
    tick(h, pipe, HANDLED_INTERVAL)
    assert h.disconnect_all() == []


def test_status_shows_handled_and_its_lag(tmp_path: Path) -> None:
    """``/status`` lists ``handled`` and ``handled_lag`` per stream, null until reported."""
    h, pipe = live_worker(tmp_path, 2)
    (stream,) = master_status(h.master)["connections"][0]["streams"]
    assert (stream["handled"], stream["handled_lag"]) == (None, None)
    tick(h, pipe, HANDLED_INTERVAL)
    h.publish("events", ["c"])
    (stream,) = master_status(h.master)["connections"][0]["streams"]
    assert (stream["handled"], stream["handled_lag"], stream["lag"]) == (2, 1, 0)


def refused(h: Harness, pipe: MemoryPipe, command: HandledCommand) -> str | None:
    """Send ``command`` from the worker's end (named with the master's origin, as protocol
    version 2 names it); the reason the master closed, if it did."""
    if command.origin is None:
        command = HandledCommand(command.stream, command.token, h.master.log.origin_id)
    pipe.client.send(command)  # type: ignore[attr-defined]
    h.run(pipe)
    if h.master.snapshot().connections:
        return None
    (peer,) = h.master.snapshot().peers
    return peer.last_disconnect_reason


def test_handled_above_what_was_sent_is_a_protocol_error(tmp_path: Path) -> None:
    """A report one above the last token sent closes the connection with ERROR; one at it
    is recorded."""
    h, pipe = live_worker(tmp_path, 4)
    assert refused(h, pipe, HandledCommand("events", 4)) is None
    assert follow(h).handled == 4
    assert refused(h, pipe, HandledCommand("events", 5)) is not None


def test_handled_for_a_stream_not_followed_is_a_protocol_error(tmp_path: Path) -> None:
    """A report of a stream the connection does not follow closes it with ERROR."""
    h, pipe = live_worker(tmp_path, 1)
    h.publish("other", [1])
    assert refused(h, pipe, HandledCommand("other", 1)) is not None


def test_a_report_crossing_a_deletion_is_not_an_error(tmp_path: Path) -> None:
    """A report of the position before a deletion, sent before the worker saw the RESET,
    is accepted; the old report is forgotten with the stream."""
    h, pipe = live_worker(tmp_path, 3)
    tick(h, pipe, HANDLED_INTERVAL)
    h.master.delete_stream("events")
    assert follow(h).handled is None
    assert refused(h, pipe, HandledCommand("events", 3)) is None


def test_metric_shows_the_handled_lag_once_reported(tmp_path: Path) -> None:
    """``replication_connection_handled_lag_tokens{peer,stream}`` has no sample until the
    worker reported, then the head minus the reported position."""
    h, pipe = live_worker(tmp_path, 2)
    metric = "replication_connection_handled_lag_tokens"
    assert value(scrape_master(h), metric, peer="w1", stream="events") is None
    tick(h, pipe, HANDLED_INTERVAL)
    h.publish("events", ["c"])
    h.publish("events", ["d"])
    assert value(scrape_master(h), metric, peer="w1", stream="events") == 2


def connection_row(h: Harness) -> str:
    """The row of the one connection in ``replication status``'s output."""
    text = format_status(master_status(h.master))
    (row,) = [line for line in text.splitlines() if "127.0.0.1:40000" in line]
    return row.rstrip()


def test_status_command_shows_a_handled_column(tmp_path: Path) -> None:
    """``replication status`` has a HANDLED column: ``-`` until reported, then
    ``<stream>@<position> lag <n>``."""
    h, pipe = live_worker(tmp_path, 2)
    assert connection_row(h).endswith("events@2 lag 0  -")
    tick(h, pipe, HANDLED_INTERVAL)
    h.publish("events", ["c"])
    assert "  STREAMS         HANDLED" in format_status(master_status(h.master))
    assert connection_row(h).endswith("events@3 lag 0  events@2 lag 1")
