"""The worker's position file: appends, reloads, torn and damaged files, compaction."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from replication.positions import HEADER, PositionFile, PositionFileError


def test_positions_survive_reopening(tmp_path: Path) -> None:
    """Positions recorded, then read back by a new PositionFile, are the last ones set."""
    path = tmp_path / "sub" / "w.positions"
    positions = PositionFile(str(path))
    assert positions.get("events") is None
    for token in range(1, 6):
        positions.set("events", token)
    positions.set("receipts", 3)
    positions.set("events", 0)  # a reset may move a position back
    positions.sync()
    positions.close()
    again = PositionFile(str(path))
    assert again.all() == {"events": 0, "receipts": 3}


def test_a_torn_last_line_is_ignored_and_removed(tmp_path: Path) -> None:
    """A line cut short by a crash or power cut in the middle of an append is dropped;
    the positions before it stand, and the file is rewritten whole."""
    path = tmp_path / "w.positions"
    path.write_bytes(HEADER + b"events 41\nevents 4")
    positions = PositionFile(str(path))
    assert positions.get("events") == 41
    assert path.read_bytes() == HEADER + b"events 41\n"


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"positions": {"events": 3}}', "is not a position file"),
        (HEADER + b"events x\n", "damaged line 2"),
        (HEADER + b"events 1 2\n", "damaged line 2"),
    ],
)
def test_a_foreign_or_damaged_file_is_refused_and_left_alone(
    tmp_path: Path, content: bytes, message: str
) -> None:
    """A file that is not a position file stops the worker with a message naming it; the
    file is not modified."""
    path = tmp_path / "w.positions"
    path.write_bytes(content)
    with pytest.raises(PositionFileError, match=message) as info:
        PositionFile(str(path))
    assert str(path) in str(info.value)
    assert path.read_bytes() == content


def test_the_journal_is_compacted(tmp_path: Path) -> None:
    """Past compact_after lines the journal is rewritten with one line per stream."""
    path = tmp_path / "w.positions"
    positions = PositionFile(str(path), compact_after=10)
    for token in range(1, 26):
        positions.set("a", token)
        positions.set("b", token * 2)
    lines = path.read_bytes().splitlines()
    assert len(lines) <= 12
    assert PositionFile(str(path)).all() == {"a": 25, "b": 50}
    assert not os.path.exists(f"{path}.tmp")


def test_an_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PositionFileError, match="cannot (read|write) position file .*Not a directory"):
        PositionFile(str(blocker / "w.positions"))


def test_the_worker_service_syncs_positions_every_second(tmp_path: Path) -> None:
    """The worker's service fsyncs the position file once a second and when it stops,
    never on the per-token path."""
    from twisted.internet.defer import Deferred
    from twisted.internet.task import Clock

    from replication.config import WorkerConfig, WorkerStream
    from replication.worker import POSITION_SYNC_INTERVAL, Worker, worker_service

    class NeverConnects:
        def connect(self, factory: object) -> Deferred[None]:
            return Deferred()

    clock = Clock()
    positions = PositionFile(str(tmp_path / "w.positions"))
    synced: list[float] = []
    real_sync = positions.sync
    positions.sync = lambda: (synced.append(clock.seconds()), real_sync())[1]  # type: ignore[method-assign]
    worker = Worker(WorkerConfig(streams=(WorkerStream("events"),)), print, positions, clock)
    service = worker_service(worker, NeverConnects(), clock)  # type: ignore[arg-type]
    service.startService()
    positions.set("events", 1)
    assert synced == []
    clock.advance(POSITION_SYNC_INTERVAL)
    clock.advance(POSITION_SYNC_INTERVAL)
    assert synced == [1.0, 2.0]
    service.stopService()
    assert synced == [1.0, 2.0, 2.0]
