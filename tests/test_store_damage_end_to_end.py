"""Damage on disk, with real processes (``python -m replication ...``) on 127.0.0.1:

- a byte changed inside a stored row (the file still opens): the master serves the tokens
  before it and refuses the damaged one by name, logs it once, counts it, keeps serving
  other streams, and the refused worker backs off instead of reconnecting in a tight loop;
- a store replaced by an empty file, or restored from an older copy, between two runs:
  the master refuses to start, saying what it found and naming
  ``--accept-store-history-loss``, and starts with that flag.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from test_store_damage import flip_byte

from processes import (
    HOST,
    Process,
    free_ports,
    publish,
    read_positions,
    replication_command,
    start_sqlite_master,
    wait_until,
    write_worker_config,
)
from processes import (
    metric_value as metric,
)


def worker(tmp: Path, port: int, name: str, stream: str, initial: float, most: float) -> Process:
    config = write_worker_config(
        tmp / f"{name}.yaml", name, port, initial_delay=initial, max_delay=most
    )
    return Process(
        name,
        replication_command(
            "worker", "--config", str(config), "--stream", stream,
            "--position-file", str(tmp / f"{name}.pos"),
        ),
        stdout=tmp / f"{name}.out", stderr=tmp / f"{name}.err", cwd=tmp,
    )


@pytest.mark.timeout(90)
def test_a_damaged_row_is_refused_by_name_and_other_streams_are_served(tmp_path: Path) -> None:
    """Token 2 of events has a changed byte on disk. A worker of events handles token 1,
    is answered ``ERROR master cannot read stream events: token 2 is damaged in the store``
    and reconnects with a growing wait (at most 8 connections in 5 s with waits from 0.3 s
    to 1.5 s); a worker of other gets its token; the master logs the damage once and
    counts it in replication_store_damaged_tokens_total."""
    port, http_port = free_ports(2)
    data = tmp_path / "data"
    with start_sqlite_master(tmp_path, "first", port, http_port, data) as master:
        for value in ("first", "second", "third"):
            publish(http_port, "events", [{"v": value}])
        publish(http_port, "other", [{"v": "fine"}])
        assert master.terminate() == 0
    flip_byte(data / "streams.sqlite3", b'"second"', b'"secoNd"')

    with ExitStack() as stack:
        master = stack.enter_context(start_sqlite_master(tmp_path, "second", port, http_port, data))
        damaged = stack.enter_context(worker(tmp_path, port, "damaged", "events", 0.3, 1.5))
        healthy = stack.enter_context(worker(tmp_path, port, "healthy", "other", 0.3, 1.5))
        procs = [master, damaged, healthy]
        wait_until(lambda: (read_positions(tmp_path / "healthy.pos") or {}).get("other") == 1,
                   15, "the worker of other to handle token 1", alive=procs)
        wait_until(lambda: (read_positions(tmp_path / "damaged.pos") or {}).get("events") == 1,
                   15, "the worker of events to handle token 1", alive=procs)
        refusal = "master cannot read stream events: token 2 is damaged in the store"
        wait_until(lambda: refusal in damaged.stderr_text(), 15, "the refusal", alive=procs)
        time.sleep(5)
        connects = metric(http_port, 'replication_peer_connects_total{peer="damaged"}')
        assert connects is not None and 2 <= connects <= 8, connects
        assert metric(http_port, "replication_store_damaged_tokens_total") == 1
        assert master.stderr_text().count("is damaged in the store and cannot be served") == 1
        assert (read_positions(tmp_path / "damaged.pos") or {}).get("events") == 1
        assert "Traceback" not in master.stderr_text()
        assert master.poll() is None


def run_master(tmp: Path, data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run a master that is expected to refuse to start; return its completed process."""
    port, http_port = free_ports(2)
    return subprocess.run(
        replication_command(
            "master", "--store", "sqlite", "--data-dir", str(data),
            "--listen", f"tcp:{port}:interface={HOST}",
            "--http-listen", f"tcp:{http_port}:interface={HOST}", *extra,
        ),
        capture_output=True, text=True, timeout=30, cwd=tmp,
    )


def replace_store(data: Path, source: Path | None) -> None:
    """Replace the stopped master's database with ``source`` (``None``: an empty file)."""
    database = data / "streams.sqlite3"
    for side in ("-wal", "-shm"):
        Path(str(database) + side).unlink(missing_ok=True)
    if source is None:
        database.write_bytes(b"")
    else:
        shutil.copyfile(source, database)


@pytest.mark.timeout(120)
def test_a_store_that_lost_history_between_runs_is_refused_unless_accepted(
    tmp_path: Path,
) -> None:
    """A master stopped at head 3 of events, whose store is then restored from a copy taken
    at head 1, refuses to start (naming events, head 1, recorded 3, and the flag); one
    whose store was replaced by an empty file refuses naming the recorded origin id; with
    --accept-store-history-loss it starts, logs the loss and gives out token 1 again; the
    next start without the flag is accepted."""
    port, http_port = free_ports(2)
    data = tmp_path / "data"
    backup = tmp_path / "backup.sqlite3"
    with start_sqlite_master(tmp_path, "run1", port, http_port, data) as master:
        publish(http_port, "events", [1])
        assert master.terminate() == 0
    shutil.copyfile(data / "streams.sqlite3", backup)
    with start_sqlite_master(tmp_path, "run2", port, http_port, data) as master:
        publish(http_port, "events", [2])
        publish(http_port, "events", [3])
        assert master.terminate() == 0

    replace_store(data, backup)
    refused = run_master(tmp_path, data)
    assert refused.returncode != 0, refused.stderr
    assert "refusing to start" in refused.stderr
    assert "events: head 1, recorded 3" in refused.stderr
    assert "--accept-store-history-loss" in refused.stderr
    assert "Traceback" not in refused.stderr

    replace_store(data, None)
    refused = run_master(tmp_path, data)
    assert refused.returncode != 0, refused.stderr
    assert "refusing to start" in refused.stderr and "recorded origin id" in refused.stderr

    with start_sqlite_master(
        tmp_path, "run3", port, http_port, data, "--accept-store-history-loss"
    ) as master:
        assert "accepting the store's history loss" in master.stderr_text()
        assert publish(http_port, "events", [1]) == 1
        assert master.terminate() == 0
    with start_sqlite_master(tmp_path, "run4", port, http_port, data) as master:
        assert publish(http_port, "events", [2]) == 2
        assert master.terminate() == 0
