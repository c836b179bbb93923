"""Durability end to end: a master with the SQLite store, killed with SIGKILL under load.

Real processes (``python -m replication ...``) on 127.0.0.1 only, every wait bounded, every
process killed when its test ends (also on failure). What is checked:

- no acknowledged publish is lost, and no token is reused, across three SIGKILLs of the
  master under a steady publish load, as seen by two workers that stay up throughout;
- an unusable database file (random bytes, another application's SQLite database, a
  damaged store) stops the master at once with a message naming the file, and is left
  byte-for-byte unchanged;
- a worker that was at token N continues at N+1 after the master was killed and restarted
  (no RESET: the durable store kept the history and the head).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import sqlite3
import subprocess
import threading
import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from processes import (
    HOST,
    Process,
    free_ports,
    publish,
    read_json_lines,
    read_positions,
    replication_command,
    start_sqlite_master,
    stream_head,
    wait_until,
    worker_command,
    write_worker_config,
)

STREAM = "events"


def _position_is(path: Path, token: int) -> bool:
    positions = read_positions(path)
    return positions is not None and positions.get(STREAM) == token


class Publisher(threading.Thread):
    """Publishes small batches to ``STREAM`` in a loop until :meth:`stop`.

    Every row is ``{"seq": n}`` with ``n`` unique over the whole test, so a token's rows say
    which publish it came from. A 200 answer is *acknowledged* (``acked[token] = rows``).
    A publish whose answer never came (the master died) is *in doubt*: its rows may or may
    not have been committed; it is never retried, the next publish carries new rows. Any
    other answer is *refused* and must not appear in any worker's output.
    """

    def __init__(self, http_port: int, rows_per_publish: int = 3, pause: float = 0.004) -> None:
        super().__init__(name="publisher", daemon=True)
        self.http_port = http_port
        self.rows_per_publish = rows_per_publish
        self.pause = pause
        self.acked: dict[int, list[dict[str, int]]] = {}
        self.in_doubt: list[list[dict[str, int]]] = []
        self.refused: list[tuple[int, str, list[dict[str, int]]]] = []
        self.reused: list[tuple[int, list[Any], list[Any]]] = []
        self.errors: list[str] = []
        self._halt = threading.Event()
        self._seq = 0

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=15)
        assert not self.is_alive(), "the publisher thread did not stop"

    def _rows(self) -> list[dict[str, int]]:
        rows = [{"seq": self._seq + i} for i in range(self.rows_per_publish)]
        self._seq += self.rows_per_publish
        return rows

    def run(self) -> None:
        connection: http.client.HTTPConnection | None = None
        while not self._halt.is_set():
            rows = self._rows()
            body = json.dumps({"rows": rows}, separators=(",", ":")).encode()
            try:
                if connection is None:
                    connection = http.client.HTTPConnection(HOST, self.http_port, timeout=5)
                connection.request(
                    "POST", f"/streams/{STREAM}", body=body,
                    headers={"content-type": "application/json"},
                )
                response = connection.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException) as e:
                # The master is down (or died mid-request): the outcome is unknown.
                self.in_doubt.append(rows)
                self.errors.append(type(e).__name__)
                if connection is not None:
                    connection.close()
                    connection = None
                self._halt.wait(0.05)
                continue
            if response.status == 200:
                token = json.loads(raw)["token"]
                if token in self.acked:
                    self.reused.append((token, self.acked[token], rows))
                self.acked[token] = rows
            else:
                self.refused.append((response.status, raw.decode(errors="replace"), rows))
            self._halt.wait(self.pause)
        if connection is not None:
            connection.close()


def _check_output(
    who: str, path: Path, head: int, publisher: Publisher
) -> tuple[int, int]:
    """Check a worker's output against what was acknowledged; returns
    ``(tokens from acknowledged publishes, tokens from in-doubt publishes)``."""
    lines, torn = read_json_lines(path)
    assert torn == "", f"{who}: a partial last line {torn!r}"
    bad = [line for line in lines if "token" not in line or line.get("stream") != STREAM]
    assert not bad, f"{who}: reset, gap or foreign lines in the output: {bad[:5]!r}"
    tokens = [line["token"] for line in lines]
    duplicates = sorted({t for t in tokens if tokens.count(t) > 1})
    assert not duplicates, f"{who}: tokens handled more than once: {duplicates[:20]}"
    assert tokens == list(range(1, head + 1)), (
        f"{who}: tokens are not exactly 1..{head} in order "
        f"(first {tokens[:5]}, last {tokens[-5:]}, count {len(tokens)})"
    )
    doubtful = {rows[0]["seq"]: rows for rows in publisher.in_doubt}
    refused = {rows[0]["seq"] for _, _, rows in publisher.refused}
    from_doubt = 0
    for line in lines:
        token, rows = line["token"], line["rows"]
        if token in publisher.acked:
            assert rows == publisher.acked[token], (
                f"{who}: token {token} carries {rows!r}, but the publish acknowledged as "
                f"token {token} had {publisher.acked[token]!r} (token reused?)"
            )
            continue
        # Committed, but the master died before it could answer: one of the in-doubt
        # publishes, whole and used once.
        first = rows[0]["seq"] if rows and isinstance(rows[0], dict) else None
        assert first not in refused, f"{who}: token {token} holds rows of a refused publish"
        assert doubtful.get(first) == rows, (
            f"{who}: token {token} carries {rows!r}, which no publish sent"
        )
        del doubtful[first]
        from_doubt += 1
    return head - from_doubt, from_doubt


@pytest.mark.timeout(60)
def test_no_acknowledged_publish_is_lost_across_three_master_kills(tmp_path: Path) -> None:
    port, http_port = free_ports(2)
    data = tmp_path / "data"
    started = time.monotonic()
    with ExitStack() as stack:
        master = stack.enter_context(
            start_sqlite_master(tmp_path, "master0", port, http_port, data)
        )
        workers = []
        for name in ("w1", "w2"):
            config = write_worker_config(tmp_path / f"{name}.yaml", name, port)
            workers.append(stack.enter_context(Process(
                name,
                worker_command(port, name, tmp_path / f"{name}.pos", "--config", str(config)),
                stdout=tmp_path / f"{name}.out",
                stderr=tmp_path / f"{name}.err",
                cwd=tmp_path,
            )))
        for w in workers:
            wait_until(partial(_position_is, tmp_path / f"{w.name}.pos", 0), 15,
                       f"{w.name} to subscribe", alive=[master, *workers])

        publisher = Publisher(http_port)
        publisher.start()
        # Stop the thread even when an assertion below fails.
        stack.callback(lambda: publisher.is_alive() and publisher.stop())
        kills = []
        for restart in range(1, 4):
            time.sleep(random.uniform(1.0, 2.0))
            assert publisher.is_alive(), "the publisher thread died"
            acked_before = len(publisher.acked)
            master.kill()
            kills.append(acked_before)
            master = stack.enter_context(
                start_sqlite_master(tmp_path, f"master{restart}", port, http_port, data)
            )
            for w in workers:
                assert w.poll() is None, f"{w.name} exited\n{w.describe_output()}"
        time.sleep(1.0)
        publisher.stop()
        loaded = time.monotonic()

        head = stream_head(http_port, STREAM)
        assert publisher.acked, "nothing was acknowledged"
        assert not publisher.reused, f"a token was acknowledged twice: {publisher.reused[:3]!r}"
        assert max(publisher.acked) <= head, (
            f"token {max(publisher.acked)} was acknowledged but the restarted master's head "
            f"is {head}"
        )
        for w in workers:
            wait_until(partial(_position_is, tmp_path / f"{w.name}.pos", head), 30,
                       f"{w.name} to reach the head {head}", alive=[master, *workers])
        caught_up = time.monotonic()

        counts = [_check_output(w.name, tmp_path / f"{w.name}.out", head, publisher)
                  for w in workers]
        w1_lines, _ = read_json_lines(tmp_path / "w1.out")
        w2_lines, _ = read_json_lines(tmp_path / "w2.out")
        assert w1_lines == w2_lines
        for p in (master, *workers):
            assert p.poll() is None, f"{p.name} exited early\n{p.describe_output()}"
        print(
            f"head {head}: {counts[0][0]} acknowledged tokens, {counts[0][1]} committed but "
            f"unanswered, {len(publisher.in_doubt) - counts[0][1]} unanswered and not "
            f"committed, {len(publisher.refused)} refused; acknowledged before each kill: "
            f"{kills}; load {loaded - started:.1f}s, workers at the head "
            f"{caught_up - loaded:.2f}s after the load stopped"
        )
        assert not publisher.refused, f"publishes were refused: {publisher.refused[:3]!r}"


# -- unusable database files ----------------------------------------------------------------


def _random_bytes(path: Path) -> str:
    path.write_bytes(random.Random(7).randbytes(64 * 1024))
    return "not a SQLite database"


def _foreign_database(path: Path) -> str:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE foo (id INTEGER PRIMARY KEY, name TEXT)")
        db.executemany("INSERT INTO foo (name) VALUES (?)", [(f"n{i}",) for i in range(100)])
    db.close()
    return "another application"


def _damaged_store(path: Path) -> str:
    """A real replication store whose entries pages were overwritten."""
    from replication.store.sqlite import SqliteStore

    store = SqliteStore(str(path))
    for i in range(20):
        store.append([(STREAM, [json.dumps({"i": i, "pad": "x" * 2000})] * 5)], time.time())
    store.close()
    assert not os.path.exists(f"{path}-wal") or os.path.getsize(f"{path}-wal") == 0
    size = path.stat().st_size
    page = 4096
    assert size >= 6 * page, size
    with open(path, "r+b") as f:  # garble every page after the first two
        for offset in range(2 * page, size, page):
            f.seek(offset)
            f.write(random.Random(offset).randbytes(page))
    return "corrupt"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["config", "data_dir"])
@pytest.mark.parametrize("make", [_random_bytes, _foreign_database, _damaged_store],
                         ids=["random-bytes", "foreign-schema", "damaged-store"])
def test_unusable_database_stops_the_master_and_is_left_unchanged(
    tmp_path: Path, make: Any, how: str
) -> None:
    port, http_port = free_ports(2)
    data = tmp_path / "data"
    data.mkdir()
    if how == "config":
        target = tmp_path / "elsewhere" / "store.db"
        target.parent.mkdir()
        config = tmp_path / "master.yaml"
        config.write_text(f"store: {{type: sqlite, path: {json.dumps(str(target))}}}\n")
        extra = ["--config", str(config)]
    else:
        target = data / "streams.sqlite3"
        extra = []
    problem = make(target)
    before = target.read_bytes()
    side_files = {p.name for p in target.parent.iterdir()}

    started = time.monotonic()
    done = subprocess.run(
        replication_command(
            "master", *extra, "--data-dir", str(data),
            "--listen", f"tcp:{port}:interface={HOST}",
            "--http-listen", f"tcp:{http_port}:interface={HOST}",
        ),
        capture_output=True, text=True, timeout=20, cwd=tmp_path,
    )
    took = time.monotonic() - started
    assert done.returncode != 0, f"the master started on {target}:\n{done.stderr}"
    assert took < 10, f"the master took {took:.1f}s to refuse {target}"
    assert str(target) in done.stderr, done.stderr
    assert problem in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert target.read_bytes() == before, f"{target} was changed"
    left = {p.name for p in target.parent.iterdir()} - side_files
    assert left <= {f"{target.name}-wal", f"{target.name}-shm"}, left


# -- a worker across a master restart -------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_too", [False, True], ids=["worker-reconnects", "worker-restarted"])
def test_worker_continues_after_master_kill_with_sqlite(tmp_path: Path, worker_too: bool) -> None:
    port, http_port = free_ports(2)
    data = tmp_path / "data"
    positions = tmp_path / "w.pos"
    out = tmp_path / "w.out"
    config = write_worker_config(tmp_path / "w.yaml", "w", port)
    before = 5

    def worker() -> Process:
        return Process(
            "worker", worker_command(port, "w", positions, "--config", str(config)),
            stdout=out, stderr=tmp_path / "w.err", cwd=tmp_path,
        )

    with ExitStack() as stack:
        master = stack.enter_context(
            start_sqlite_master(tmp_path, "master1", port, http_port, data)
        )
        w = stack.enter_context(worker())
        wait_until(lambda: _position_is(positions, 0), 15, "the worker to subscribe",
                   alive=[master, w])
        for i in range(before):
            assert publish(http_port, STREAM, [{"old": i}]) == i + 1
        wait_until(lambda: _position_is(positions, before), 15, f"the worker at token {before}",
                   alive=[master, w])

        master.kill()
        if worker_too:
            w.kill()
        master = stack.enter_context(
            start_sqlite_master(tmp_path, "master2", port, http_port, data)
        )
        assert stream_head(http_port, STREAM) == before
        if worker_too:
            w = stack.enter_context(worker())
        for i in range(3):
            assert publish(http_port, STREAM, [{"new": i}]) == before + i + 1
        wait_until(lambda: _position_is(positions, before + 3), 15,
                   f"the worker at token {before + 3}", alive=[master, w])

        lines, torn = read_json_lines(out)
        assert torn == ""
        # One origin throughout: the SQLite store keeps the master's origin id across the kill.
        origins = {line.pop("origin") for line in lines}
        assert len(origins) == 1, origins
        assert lines == [
            *({"stream": STREAM, "token": i + 1, "rows": [{"old": i}]} for i in range(before)),
            *({"stream": STREAM, "token": before + i + 1, "rows": [{"new": i}]} for i in range(3)),
        ], lines
        assert w.poll() is None and master.poll() is None
