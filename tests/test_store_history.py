"""The history mark beside a master's SQLite store: written when the store opens, while
heads change, on deletion and at stop; a store that holds less than it recorded (another
origin id, a head below the recorded one, a stream or the file gone) is refused at start
with a message saying what was found and how to accept it."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from replication.config import MasterConfig, StoreConfig
from replication.master.app import HistoryMarker, ServiceError, open_store
from replication.master.service import Master
from replication.store.history import (
    HistoryLost,
    HistoryMark,
    HistoryMarkError,
    check_history,
    mark_path,
    read_mark,
    write_mark,
)
from replication.store.memory import MemoryStore
from replication.store.sqlite import SqliteStore

ORIGIN = "a" * 16


def test_a_mark_survives_write_and_read(tmp_path: Path) -> None:
    """What write_mark writes, read_mark reads back; no file reads as no mark."""
    path = str(tmp_path / "s.history")
    assert read_mark(path) is None
    mark = HistoryMark(ORIGIN, {"b": 2, "a": 7}, 12.5)
    write_mark(path, mark)
    assert read_mark(path) == mark
    assert not Path(path + ".tmp").exists()


@pytest.mark.parametrize("text", [
    "", "[]", "{}", '{"origin_id": 1, "heads": {}, "written_at": 0}',
    '{"origin_id": "x", "heads": {"a": -1}, "written_at": 0}',
    '{"origin_id": "x", "heads": {"a": true}, "written_at": 0}',
    '{"origin_id": "x", "heads": [], "written_at": 0}',
])
def test_a_file_that_is_not_a_mark_is_refused(tmp_path: Path, text: str) -> None:
    """A mark file that is not JSON of the right shape raises HistoryMarkError naming it."""
    path = tmp_path / "s.history"
    path.write_text(text)
    with pytest.raises(HistoryMarkError, match="not a history mark"):
        read_mark(str(path))


def test_no_mark_accepts_any_store() -> None:
    """Without a mark (a first start, or a store older than marks) nothing is compared."""
    check_history(None, ORIGIN, {}, "s.db")
    check_history(None, None, {}, "s.db")


def test_heads_at_or_above_the_mark_are_accepted() -> None:
    """A head equal to the recorded one, or above it, and streams the mark does not know,
    are not a loss."""
    mark = HistoryMark(ORIGIN, {"a": 5, "b": 0}, 0.0)
    check_history(mark, ORIGIN, {"a": 5, "c": 1}, "s.db")
    check_history(mark, ORIGIN, {"a": 6, "b": 3}, "s.db")


def test_a_head_one_below_the_mark_is_a_loss() -> None:
    """One token less than recorded is history lost, named with both heads."""
    mark = HistoryMark(ORIGIN, {"a": 5}, 0.0)
    with pytest.raises(HistoryLost, match="a: head 4, recorded 5"):
        check_history(mark, ORIGIN, {"a": 4}, "s.db")


def test_a_missing_stream_is_a_loss_and_long_lists_are_cut() -> None:
    """A recorded stream the store lacks is named as missing; past five streams the
    message says how many more."""
    mark = HistoryMark(ORIGIN, {f"s{i}": 1 for i in range(7)}, 0.0)
    with pytest.raises(HistoryLost) as caught:
        check_history(mark, ORIGIN, {}, "s.db")
    message = str(caught.value)
    assert "7 stream(s) went backwards" in message
    assert "s0: missing, recorded 1" in message and "and 2 more" in message
    assert "s5" not in message


def test_another_origin_id_or_no_file_is_a_loss() -> None:
    """A store with another origin id (new, emptied, replaced) or no file at all is a loss
    naming the recorded id."""
    mark = HistoryMark(ORIGIN, {"a": 1}, 0.0)
    with pytest.raises(HistoryLost, match=f"recorded origin id {ORIGIN}.*replaced, emptied"):
        check_history(mark, "b" * 16, {"a": 1}, "s.db")
    with pytest.raises(HistoryLost, match="does not exist"):
        check_history(mark, None, {}, "s.db")


def sqlite_config(tmp_path: Path) -> MasterConfig:
    return dataclasses.replace(
        MasterConfig(), data_dir=str(tmp_path), store=StoreConfig(type="sqlite")
    )


def test_open_store_refuses_a_store_that_went_backwards_unless_accepted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """open_store compares the store with its mark: a head below the mark is a
    ServiceError naming the stream and the flag; with accept_history_loss it opens and the
    loss is logged as a warning."""
    config = sqlite_config(tmp_path)
    store = open_store(config)
    assert isinstance(store, SqliteStore)
    store.append([("a", ["1"]), ("a", ["2"])], 1.0)
    write_mark(mark_path(store.path), HistoryMark(store.origin_id, {"a": 3}, 1.0))
    store.close()
    with pytest.raises(ServiceError) as caught:
        open_store(config)
    message = str(caught.value)
    assert "refusing to start" in message and "a: head 2, recorded 3" in message
    assert "--accept-store-history-loss" in message
    caplog.set_level(logging.WARNING, "replication")
    store = open_store(config, accept_history_loss=True)
    store.close()
    assert any("accepting the store's history loss" in r.getMessage() for r in caplog.records)


def test_open_store_refuses_a_removed_store_without_creating_one(tmp_path: Path) -> None:
    """With a mark and no database file, open_store refuses and creates no file."""
    config = sqlite_config(tmp_path)
    database = tmp_path / "streams.sqlite3"
    write_mark(mark_path(str(database)), HistoryMark(ORIGIN, {"a": 1}, 1.0))
    with pytest.raises(ServiceError, match="does not exist"):
        open_store(config)
    assert not database.exists()


def test_the_marker_records_at_open_on_change_on_deletion_and_at_stop(tmp_path: Path) -> None:
    """The marker writes the origin id and local heads once the store is open, again after
    its interval only when a head changed, at once when a stream is deleted, and at stop."""
    clock = Clock()
    master = Master(MasterConfig(), MemoryStore(), clock)
    path = str(tmp_path / "m.history")
    marker = HistoryMarker(master, path, clock, interval=30.0)
    marker.startService()
    first = read_mark(path)
    assert first is not None and first.origin_id == master.log.origin_id
    assert dict(first.heads) == {}
    master.log.publish("a", [["1"], ["2"]])
    clock.advance(29)
    assert read_mark(path) == first
    clock.advance(1)
    second = read_mark(path)
    assert second is not None and dict(second.heads) == {"a": 2} and second.written_at == 30
    clock.advance(30)
    assert read_mark(path) == second  # unchanged heads: not rewritten
    master.log.delete("a")
    third = read_mark(path)
    assert third is not None and dict(third.heads) == {}
    master.log.publish("b", [["1"]])
    marker.stopService()
    last = read_mark(path)
    assert last is not None and dict(last.heads) == {"b": 1}
    assert clock.getDelayedCalls() == []


def test_a_mark_that_cannot_be_written_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A mark in a directory that does not exist is logged once as an error, however many
    times the heads change; the master goes on."""
    clock = Clock()
    master = Master(MasterConfig(), MemoryStore(), clock)
    marker = HistoryMarker(master, str(tmp_path / "missing" / "m.history"), clock, interval=1.0)
    caplog.set_level(logging.ERROR, "replication")
    marker.startService()
    for value in range(3):
        master.log.publish("a", [[str(value)]])
        clock.advance(1)
    marker.stopService()
    errors = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(errors) == 1


def test_an_unreadable_mark_is_refused_unless_accepted(tmp_path: Path) -> None:
    """A mark file that is not a mark stops open_store with a message naming it and the
    flag; with accept_history_loss the store opens."""
    config = sqlite_config(tmp_path)
    mark_file = Path(mark_path(str(tmp_path / "streams.sqlite3")))
    mark_file.write_text("not json")
    with pytest.raises(ServiceError, match="not a history mark.*--accept-store-history-loss"):
        open_store(config)
    store = open_store(config, accept_history_loss=True)
    store.close()
