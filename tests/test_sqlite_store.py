"""What only the SQLite store does: survive restarts and crashes, refuse files that are not
its own without touching them, and serve reads while the writer thread appends."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from replication.cluster.identity import check_origin_id
from replication.store import Entry, Retention, StoreError
from replication.store.sqlite import APPLICATION_ID, SCHEMA_VERSION, SqliteStore


def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    """Heads, oldest, rows and created streams are all there after close and reopen, and a
    stream trimmed down to its head continues from head + 1."""
    path = str(tmp_path / "s.db")
    s = SqliteStore(path)
    s.append([("a", ["1", "2"]), ("b", ['"ü"']), ("a", ["3"])], 10.0)
    s.append([("a", ["4"])], 11.0)
    s.trim("a", Retention(max_rows=0), 11.0)
    s.create_stream("empty")
    s.close()

    s = SqliteStore(path)
    assert s.stream_names() == ["a", "b", "empty"]
    assert (s.head("a"), s.oldest("a"), s.retained_rows("a")) == (3, 3, 1)
    assert (s.head("b"), s.oldest("b"), s.retained_rows("b")) == (1, 1, 1)
    assert (s.head("empty"), s.oldest("empty")) == (0, 1)
    assert s.read("a", 0, 10, 10) == [Entry(3, ("4",))]
    assert s.read("b", 0, 10, 10) == [Entry(1, ('"ü"',))]
    assert s.append([("a", ["5"])], 12.0) == [4]
    s.close()


def test_max_age_uses_the_stored_times(tmp_path: Path) -> None:
    """Append times are kept across a restart, so age-based trimming still works."""
    path = str(tmp_path / "s.db")
    s = SqliteStore(path)
    for t in range(5):
        s.append([("a", ["r"])], 100.0 + t)
    s.close()
    s = SqliteStore(path)
    assert s.trim("a", Retention(max_age=1.5), 104.0) == 3
    assert s.oldest("a") == 4
    s.close()


def test_parent_directories_are_created(tmp_path: Path) -> None:
    """A path in directories that do not exist yet is created."""
    path = tmp_path / "x" / "y" / "s.db"
    SqliteStore(str(path)).close()
    assert path.is_file()


def test_options(tmp_path: Path) -> None:
    """synchronous accepts FULL and NORMAL only; the store is blocking and uses WAL."""
    with pytest.raises(ValueError):
        SqliteStore(str(tmp_path / "a.db"), synchronous="OFF")
    s = SqliteStore(str(tmp_path / "b.db"), synchronous="normal")
    assert s.blocking is True
    s.close()
    conn = sqlite3.connect(str(tmp_path / "b.db"))
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_rows_with_a_raw_newline_are_refused(tmp_path: Path) -> None:
    """Rows are stored newline-joined, so a row containing a raw newline is a ValueError,
    and nothing of its batch is stored."""
    s = SqliteStore(str(tmp_path / "s.db"))
    with pytest.raises(ValueError, match="newline"):
        s.append([("a", ["1"]), ("a", ["x\ny"])], 0)
    assert s.stream_names() == []
    s.close()


def test_rows_that_are_not_utf8_are_refused(tmp_path: Path) -> None:
    """A row with a lone surrogate cannot be stored as UTF-8: ValueError, and nothing of
    its batch is stored; the store stays usable."""
    s = SqliteStore(str(tmp_path / "s.db"))
    s.append([("a", ["1"])], 0)
    with pytest.raises(ValueError):
        s.append([("a", ["2"]), ("b", ['"\ud800"'])], 0)
    assert s.stream_names() == ["a"]
    assert s.append([("a", ["3"])], 0) == [2]
    s.close()


def test_closed_store_raises_store_error(tmp_path: Path) -> None:
    """Using a closed store raises StoreError; closing twice is fine."""
    s = SqliteStore(str(tmp_path / "s.db"))
    s.close()
    s.close()
    with pytest.raises(StoreError, match="after close"):
        s.head("a")


# -- files that are not ours -----------------------------------------------------------------


def _refused(path: Path, *fragments: str) -> None:
    """Opening ``path`` raises StoreError naming the path and ``fragments``, and leaves the
    file's bytes exactly as they were."""
    before = path.read_bytes()
    with pytest.raises(StoreError) as info:
        SqliteStore(str(path))
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    assert path.read_bytes() == before


def test_random_bytes_are_refused(tmp_path: Path) -> None:
    """A file of random bytes is not a SQLite database."""
    path = tmp_path / "random.db"
    path.write_bytes(random.Random(1).randbytes(64 * 1024))
    _refused(path, "not a SQLite database")


def test_text_file_is_refused(tmp_path: Path) -> None:
    """A text file (say, a config file passed by mistake) is not a SQLite database."""
    path = tmp_path / "config.yaml"
    path.write_text("store:\n  type: sqlite\n")
    _refused(path, "not a SQLite database")


def _filled(path: Path) -> None:
    s = SqliteStore(str(path))
    for i in range(200):
        s.append([(f"s{i % 7}", [f'{{"i":{i},"pad":"{"x" * 500}"}}'] * 3)], float(i))
    s.close()
    assert not Path(str(path) + "-wal").exists()


def test_truncated_database_is_refused(tmp_path: Path) -> None:
    """A database cut short is reported as corrupt."""
    path = tmp_path / "s.db"
    _filled(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _refused(path, "corrupt")


def test_corrupted_database_is_refused(tmp_path: Path) -> None:
    """A database with garbage written over some of its pages is reported as corrupt."""
    path = tmp_path / "s.db"
    _filled(path)
    data = bytearray(path.read_bytes())
    page = 4096
    for start in range(2 * page, len(data) - page, 5 * page):
        data[start : start + page] = random.Random(start).randbytes(page)
    path.write_bytes(bytes(data))
    _refused(path, "corrupt")


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    """A SQLite database of another application is refused, naming its tables."""
    path = tmp_path / "other.db"
    conn = sqlite3.connect(str(path))
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('ann')")
    conn.commit()
    conn.close()
    _refused(path, "another application", "users")


def test_foreign_database_with_our_table_names_is_refused(tmp_path: Path) -> None:
    """Tables that happen to be called streams and entries do not make a file ours."""
    path = tmp_path / "other.db"
    conn = sqlite3.connect(str(path))
    conn.execute("CREATE TABLE streams (x)")
    conn.execute("CREATE TABLE entries (y)")
    conn.commit()
    conn.close()
    _refused(path, "another application")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A store written by a newer version of the schema is refused, saying so."""
    path = tmp_path / "s.db"
    SqliteStore(str(path)).close()
    conn = sqlite3.connect(str(path))
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    _refused(path, f"schema version {SCHEMA_VERSION + 1}", "newer")


def test_our_database_missing_a_table_is_refused(tmp_path: Path) -> None:
    """A store of ours whose entries table is gone is refused, naming what is missing."""
    path = tmp_path / "s.db"
    SqliteStore(str(path)).close()
    conn = sqlite3.connect(str(path))
    conn.execute("DROP TABLE entries")
    conn.close()
    _refused(path, "missing tables: entries")


def test_a_store_without_its_meta_table_is_refused(tmp_path: Path) -> None:
    """A version 2 store whose meta table (its origin id) is gone is refused, saying so,
    and left as it was."""
    path = tmp_path / "s.db"
    SqliteStore(str(path)).close()
    conn = sqlite3.connect(str(path))
    conn.execute("DROP TABLE meta")
    conn.close()
    _refused(path, "missing tables: meta", "origin id")


def test_a_store_without_its_origin_id_is_refused(tmp_path: Path) -> None:
    """A store whose meta table has no origin_id row is refused rather than given a new id
    (which would silently make it a new origin), and left as it was."""
    path = tmp_path / "s.db"
    SqliteStore(str(path)).close()
    conn = sqlite3.connect(str(path))
    conn.execute("DELETE FROM meta")
    conn.commit()
    conn.close()
    _refused(path, "holds no origin_id", "no origin id")


@pytest.mark.parametrize("value", ["short", "x" * 65, "has spaces in it ok", "", b"x" * 20])
def test_a_store_with_a_malformed_origin_id_is_refused(tmp_path: Path, value: object) -> None:
    """An origin_id that does not match the id format (too short, too long, a character
    outside the alphabet, empty, a BLOB) is refused, quoting it."""
    path = tmp_path / "s.db"
    SqliteStore(str(path)).close()
    conn = sqlite3.connect(str(path))
    conn.execute("UPDATE meta SET value = ? WHERE key = 'origin_id'", (value,))
    conn.commit()
    conn.close()
    _refused(path, "origin_id in its meta table", "malformed", repr(value))


def test_the_origin_id_is_created_with_the_schema_and_survives_reopening(tmp_path: Path) -> None:
    """A new file gets a well-formed origin id in its meta table, in the transaction that
    creates the schema; reopening the file gives the same id, a second file another."""
    path = tmp_path / "s.db"
    store = SqliteStore(str(path))
    origin_id = check_origin_id(store.origin_id)
    store.close()
    conn = sqlite3.connect(str(path))
    assert conn.execute("SELECT key, value FROM meta").fetchall() == [("origin_id", origin_id)]
    conn.close()
    again = SqliteStore(str(path))
    assert again.origin_id == origin_id
    again.close()
    other = SqliteStore(str(tmp_path / "other.db"))
    assert other.origin_id != origin_id
    other.close()


def test_a_wiped_store_is_a_new_origin(tmp_path: Path) -> None:
    """Deleting the store's files and starting again makes a new origin id."""
    path = tmp_path / "s.db"
    store = SqliteStore(str(path))
    first = store.origin_id
    store.close()
    for leftover in tmp_path.iterdir():
        leftover.unlink()
    store = SqliteStore(str(path))
    assert store.origin_id != first
    store.close()


def test_empty_file_and_empty_database_become_stores(tmp_path: Path) -> None:
    """An empty file, or a SQLite database with nothing in it, is set up as a new store."""
    empty = tmp_path / "empty.db"
    empty.touch()
    bare = tmp_path / "bare.db"
    sqlite3.connect(str(bare)).close()
    for path in (empty, bare):
        s = SqliteStore(str(path))
        assert s.append([("a", ["r"])], 0) == [1]
        s.close()


# -- threads and crashes -------------------------------------------------------------------


def test_reads_during_appends_see_whole_batches(tmp_path: Path) -> None:
    """A reader thread running while the writer thread appends sees only committed, whole
    batches: each batch appends one token to both streams with equal rows, so a reader
    that reads a's head and then b sees b at least as far, and every token it reads is
    complete."""
    s = SqliteStore(str(tmp_path / "s.db"), synchronous="NORMAL")
    s.create_stream("a")
    s.create_stream("b")
    stop = threading.Event()
    errors: list[BaseException] = []
    checks = 0

    def writer() -> None:
        try:
            i = 0
            while not stop.is_set():
                i += 1
                batch = [
                    ("a", [f'{{"i":{i},"j":{j}}}' for j in range(5)]),
                    ("b", [f'{{"i":{i},"j":{j}}}' for j in range(5)]),
                    ("a", [f'{{"i":{i},"j":{j}}}' for j in range(5)]),
                ]
                s.append(batch, float(i))
                if i % 50 == 0:
                    s.trim("a", Retention(max_rows=500), float(i))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def whole(entries: list[Entry], batch_of: Callable[[int], int]) -> None:
        assert [e.token for e in entries] == list(range(entries[0].token, entries[-1].token + 1))
        for e in entries:
            assert e.rows == tuple(f'{{"i":{batch_of(e.token)},"j":{j}}}' for j in range(5))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            head_a = s.head("a")
            head_b = s.head("b")
            assert head_a % 2 == 0 and head_b >= head_a // 2
            entries = s.read("a", head_a - 20, head_a, 10**6)
            if entries:
                assert entries[-1].token == head_a
                whole(entries, lambda t: (t + 1) // 2)
            else:
                assert head_a == 0 or s.oldest("a") > head_a
            entries = s.read("b", max(0, head_b - 20), head_b + 1000, 10**6)
            if entries:
                assert entries[-1].token >= head_b
                whole(entries, lambda t: t)
            checks += 1
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert checks > 10
    assert s.head("a") == 2 * s.head("b")
    s.close()


CHILD = textwrap.dedent(
    """
    import sys
    from replication.store.sqlite import SqliteStore
    store = SqliteStore(sys.argv[1])
    i = 0
    while True:
        i += 1
        tokens = store.append(
            [("s", ['{"i":%d}' % i, '{"pad":"%s"}' % ("x" * 200)]), ("t", ["1"])], float(i)
        )
        print(tokens[0], flush=True)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
def test_appends_survive_sigkill(tmp_path: Path) -> None:
    """Every token a process saw committed is there after it is killed with SIGKILL."""
    path = str(tmp_path / "crash.db")
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, path], stdout=subprocess.PIPE, env=env, text=True
    )
    assert child.stdout is not None
    first = child.stdout.readline()  # the store is open and committing
    assert first.strip() == "1"
    time.sleep(0.5)
    child.send_signal(signal.SIGKILL)
    printed = [1] + [int(line) for line in child.stdout.read().split()]
    child.wait()
    assert len(printed) > 5

    s = SqliteStore(path)
    last = printed[-1]
    assert s.head("s") >= last
    assert s.head("t") == s.head("s")
    entries = s.read("s", 0, last, 10**9)
    assert [e.token for e in entries] == list(range(1, last + 1))
    for e in entries:
        assert e.rows[0] == f'{{"i":{e.token}}}'
    s.close()


def _version_1_file(path: Path) -> None:
    """A store as schema version 1 wrote it: no origin columns, no meta table; stream
    ``events`` with tokens 2 (two rows) and 3 retained."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(
        "CREATE TABLE streams (name TEXT PRIMARY KEY, head INTEGER NOT NULL,"
        " oldest INTEGER NOT NULL, rows INTEGER NOT NULL) WITHOUT ROWID"
    )
    conn.execute(
        "CREATE TABLE entries (stream TEXT NOT NULL, token INTEGER NOT NULL, time REAL NOT NULL,"
        " nrows INTEGER NOT NULL, rows TEXT NOT NULL, PRIMARY KEY (stream, token)) WITHOUT ROWID"
    )
    conn.execute("INSERT INTO streams VALUES ('events', 3, 2, 3)")
    conn.execute("INSERT INTO entries VALUES ('events', 2, 0, 2, '1\n2')")
    conn.execute("INSERT INTO entries VALUES ('events', 3, 0, 1, '3')")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    conn.close()


def test_a_version_1_file_is_migrated_to_origins_when_opened(tmp_path: Path) -> None:
    """A store written before origins existed (schema version 1) opens: its rows become the
    local origin's, tokens continue, the file is now version 2 for good, and it has an
    origin id that stays the same when it is opened again."""
    path = tmp_path / "v1.db"
    _version_1_file(path)
    store = SqliteStore(str(path))
    origin_id = store.origin_id
    check_origin_id(origin_id)
    assert store.keys() == [("events", "")]
    assert (store.head("events"), store.oldest("events"), store.retained_rows("events")) == (
        3,
        2,
        3,
    )
    assert store.read("events", 0, 10, 100) == [Entry(2, ("1", "2")), Entry(3, ("3",))]
    assert store.append([("events", ["4"])], 0) == [4]
    store.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == 2
    assert {r[0] for r in check.execute("SELECT name FROM sqlite_master WHERE type='table'")} == {
        "streams", "entries", "meta", "publish_keys",
    }
    assert check.execute("SELECT key, value FROM meta").fetchall() == [("origin_id", origin_id)]
    check.close()
    again = SqliteStore(str(path))
    assert again.head("events") == 4
    assert again.origin_id == origin_id
    again.close()


def test_a_version_1_stream_is_created_at_its_oldest_retained_row(tmp_path: Path) -> None:
    """Migrating a version 1 file takes each stream's oldest retained row's time as its
    creation time; a version 1 stream retaining nothing gets none (NULL)."""
    path = tmp_path / "v1.db"
    _version_1_file(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE entries SET time = 50 + token")
    conn.execute("INSERT INTO streams VALUES ('empty', 4, 5, 0)")
    conn.close()
    store = SqliteStore(str(path))
    try:
        assert store.created("events") == 52.0
        assert store.created("empty") is None
    finally:
        store.close()


def test_a_development_version_2_file_without_created_gets_the_column(tmp_path: Path) -> None:
    """A version 2 file written before ``streams.created`` existed opens: the column is
    added, its streams' creation times are unknown (None), and new streams record theirs."""
    path = tmp_path / "dev.db"
    SqliteStore(str(path)).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("ALTER TABLE streams DROP COLUMN created")
    conn.execute("INSERT INTO streams VALUES ('old', '', 0, 1, 0)")
    conn.close()
    store = SqliteStore(str(path))
    try:
        assert store.created("old") is None
        store.append([("new", ["r"])], 7.0)
        assert store.created("new") == 7.0
    finally:
        store.close()


def test_delete_stream_is_one_transaction(tmp_path: Path) -> None:
    """A delete that fails half-way (the streams row cannot be removed) leaves the stream
    and all its rows in place."""
    path = tmp_path / "store.db"
    store = SqliteStore(str(path))
    store.append([("s", ["a"]), ("s", ["b"])], 0)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "CREATE TRIGGER refuse BEFORE DELETE ON streams BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    conn.close()
    try:
        with pytest.raises(StoreError, match="delete_stream failed"):
            store.delete_stream("s")
        assert store.read("s", 0, 10, 10) == [Entry(1, ("a",)), Entry(2, ("b",))]
        assert store.head("s") == 2
    finally:
        store.close()


def test_a_file_written_before_keys_were_kept_gets_their_table(tmp_path: Path) -> None:
    """A version 2 file without ``publish_keys`` gets the table when opened; keys are kept
    from then on, and survive the next opening."""
    path = str(tmp_path / "s.sqlite3")
    store = SqliteStore(path)
    store.append([("events", ["1"])], 1.0)
    store.close()
    check = sqlite3.connect(path)
    check.execute("DROP TABLE publish_keys")
    check.commit()
    check.close()
    store = SqliteStore(path)
    store.append([("events", ["2"])], 2.0, keys=[("k", 0, 1)])
    store.close()
    store = SqliteStore(path)
    try:
        assert [(k.key, k.stream, k.first, k.last) for k in store.publish_keys(0.0, 10)] == [
            ("k", "events", 2, 2)
        ]
    finally:
        store.close()
