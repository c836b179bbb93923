"""Stream creation and deletion on the master: each new stream is logged once and keeps its
creation time; deleting a stream drops its rows, its followers are sent RESET and follow it
anew from token 1, a configured stream is created anew, empty; HTTP ``DELETE
/streams/<stream>``."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from helpers import ManualRunner, request
from replication.config import MasterConfig
from replication.master import Master
from replication.master.log import DeleteError, StreamState
from replication.store.sqlite import SqliteStore
from replication.testing import Harness, MemoryPipe, Recording
from replication.worker import Worker


def deleted(master: Master, stream: str) -> StreamState | None:
    """Delete ``stream`` on a master whose store answers at once; its new state."""
    results: list[Any] = []
    master.delete_stream(stream).addBoth(results.append)
    (result,) = results
    if isinstance(result, Failure):
        result.raiseException()
    return result  # type: ignore[no-any-return]


def following(
    directory: Path, tokens: int, **master_changes: Any
) -> tuple[Harness, Recording, Worker, MemoryPipe]:
    """A master with ``tokens`` tokens of "events" and a worker live on it, having handled
    them all."""
    h = Harness(directory, **master_changes)
    for i in range(tokens):
        h.publish("events", [i])
    handler = Recording()
    worker = h.worker(handler)
    pipe = h.connect(worker)
    h.run(pipe)
    return h, handler, worker, pipe


def test_a_new_stream_is_logged_once_with_its_creation_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first publish to a new name logs "created stream" once; the stream's creation
    time is the commit's time, in the log's state and the snapshot."""
    h = Harness(tmp_path)
    h.clock.advance(1000)
    with caplog.at_level(logging.INFO, logger="replication.master.log"):
        h.publish("evnets", [1])
        h.clock.advance(5)
        h.publish("evnets", [2])
    created = [r for r in caplog.records if "created stream" in r.getMessage()]
    assert [r.getMessage() for r in created] == ["created stream 'evnets' (its first publish)"]
    state = h.master.log.state("evnets")
    assert state is not None and state.created == 1000.0
    (view,) = h.master.snapshot().streams
    assert (view.name, view.created) == ("evnets", 1000.0)


def test_a_configured_stream_is_created_when_the_master_opens(tmp_path: Path) -> None:
    """A configured stream exists from the start, created when the store was opened."""
    h = Harness(tmp_path, streams=("events",))
    state = h.master.log.state("events")
    assert state is not None and (state.head, state.created) == (0, 0.0)


def test_a_live_worker_gets_reset_and_then_the_new_streams_tokens(tmp_path: Path) -> None:
    """A worker live on a stream at token 3 is sent RESET when the stream is deleted: its
    handler's reset hook runs (old 3, head 0), it records 0, and the recreated stream's
    token 1 reaches its handler."""
    h, handler, worker, pipe = following(tmp_path, tokens=3)
    assert handler.token_numbers() == [1, 2, 3]
    assert deleted(h.master, "events") is None
    assert h.master.stream_names() == []
    h.run(pipe)
    assert handler.events[-1] == ("reset", "events", 3, 0)
    assert worker.positions.get("events") == 0
    assert h.publish("events", ["new"]) == 1
    h.run(pipe)
    assert handler.tokens[-1] == ("events", 1, ["new"])
    assert worker.positions.get("events") == 1


def test_a_worker_away_during_the_deletion_gets_reset_when_it_returns(tmp_path: Path) -> None:
    """A worker that was at token 3 when the stream was deleted and recreated with one
    token asks for tokens after 3: it is ahead of the head, gets RESET and replays the new
    stream from token 1."""
    h, handler, worker, pipe = following(tmp_path, tokens=3)
    pipe.disconnect()
    h.clock.advance(60)
    deleted(h.master, "events")
    h.publish("events", ["again"])
    h.run(h.connect(worker))
    assert ("reset", "events", 3, 1) in handler.events
    assert handler.tokens[-1] == ("events", 1, ["again"])


def test_deleting_a_configured_stream_empties_it(tmp_path: Path) -> None:
    """A configured stream is created anew, empty (head 0, a new creation time), and stays
    listed; its live followers get RESET and follow it on."""
    h, handler, _, pipe = following(tmp_path, tokens=1, streams=("events",))
    h.clock.advance(30)
    new = deleted(h.master, "events")
    assert new is not None and (new.head, new.retained_rows, new.created) == (0, 0, 30.0)
    assert h.master.stream_names() == ["events"]
    assert h.store.read("events", 0, 10, 10) == []
    h.run(pipe)
    assert handler.events[-1] == ("reset", "events", 1, 0)
    h.publish("events", [2])
    h.run(pipe)
    assert handler.tokens[-1] == ("events", 1, [2])


def test_deleting_an_unknown_stream_is_refused(tmp_path: Path) -> None:
    """Deleting a stream the master does not hold fails with DeleteError 404; a malformed
    name with 400."""
    h = Harness(tmp_path)
    with pytest.raises(DeleteError) as info:
        deleted(h.master, "nope")
    assert info.value.status == 404
    with pytest.raises(DeleteError) as info:
        deleted(h.master, "bad name")
    assert info.value.status == 400


def test_an_all_follower_gets_reset_for_a_deleted_stream(tmp_path: Path) -> None:
    """A follower of ALL streams is sent RESET <stream> 0 when a stream is deleted."""
    h = Harness(tmp_path)
    h.publish("events", [1])
    handler = Recording()
    worker = h.worker(handler, streams=("ALL",), start="now")
    pipe = h.connect(worker)
    h.run(pipe)
    sent: list[bytes] = []
    server = pipe.server
    original = server.transport.write  # type: ignore[union-attr]

    def record(data: bytes) -> None:
        sent.append(data)
        original(data)

    server.transport.write = record  # type: ignore[union-attr]
    deleted(h.master, "events")
    own = h.master.log.origin_id
    assert f"RESET events@{own} 0\n".encode() in b"".join(sent)


def test_http_delete(tmp_path: Path) -> None:
    """DELETE /streams/<stream> answers what happened; the stream is gone from GET /streams;
    an unknown stream is a 404."""
    h = Harness(tmp_path, streams=("configured",))
    h.publish("events", [1])
    assert request(h.master, "DELETE", "/streams/events") == (
        200, {"stream": "events", "deleted": True, "recreated": False}
    )
    assert request(h.master, "GET", "/streams")[1]["streams"] == {"configured": 0}
    assert request(h.master, "DELETE", "/streams/configured") == (
        200, {"stream": "configured", "deleted": True, "recreated": True}
    )
    status, body = request(h.master, "DELETE", "/streams/events")
    assert (status, body) == (404, {"error": "unknown stream 'events'"})


def test_a_deletion_takes_its_place_among_the_writes(tmp_path: Path) -> None:
    """On a blocking store, a publish queued before the deletion commits first and is
    deleted with the stream; one queued after it creates the stream anew at token 1."""
    runner = ManualRunner()
    store = SqliteStore(str(tmp_path / "s.db"), synchronous="NORMAL")
    master = Master(
        dataclasses.replace(MasterConfig()), store, Clock(), run_blocking=runner
    )
    runner.run_all()
    tokens: list[Any] = []
    master.publish("events", [1]).addCallback(tokens.append)
    runner.run_all()
    master.publish("events", [2]).addCallback(tokens.append)  # commits before the delete
    done: list[Any] = []
    master.delete_stream("events").addBoth(done.append)
    master.publish("events", [3]).addCallback(tokens.append)  # queued behind the delete
    runner.run_all()
    assert tokens == [1, 2, 1]
    assert done == [None]
    assert master.head("events") == 1
    assert [e.rows for e in store.read("events", 0, 10, 10)] == [("3",)]
    master.close()
    runner.run_all()
