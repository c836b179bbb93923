"""Damage on disk in the SQLite store: a changed byte inside a stored row is found by the
row checksum and reported as :class:`DamagedEntry` (naming stream, origin and token) while
the other tokens and streams stay readable; a read-only database is reported as read-only,
not as corrupt."""

from __future__ import annotations

import logging
import os
import pathlib
import sqlite3
import zlib
from pathlib import Path

import pytest
from test_stream_log import FakeFollower
from twisted.internet.task import Clock

from helpers import ManualRunner
from replication.cluster.identity import new_origin_id
from replication.commands import ReplicateCommand
from replication.master.fanout import FanOut
from replication.master.log import StreamLog
from replication.store import DamagedEntry, Entry, ReadOnlyStore, Retention, StoreError
from replication.store.asynchronous import ThreadedStore
from replication.store.sqlite import SqliteStore


def flip_byte(path: Path, needle: bytes, replacement: bytes) -> None:
    """Replace the one occurrence of ``needle`` in the file at ``path`` (a closed store,
    its WAL checkpointed) by ``replacement`` of the same length."""
    assert len(needle) == len(replacement)
    data = path.read_bytes()
    assert data.count(needle) == 1, f"{needle!r} found {data.count(needle)} times"
    path.write_bytes(data.replace(needle, replacement))


def damaged_store(path: Path) -> None:
    """A store with streams ``a`` (tokens 1..3, token 2 to be damaged) and ``b``."""
    store = SqliteStore(str(path))
    store.append([("a", ['{"v":"first"}']), ("a", ['{"v":"second"}', '{"w":1}'])], 1.0)
    store.append([("a", ['{"v":"third"}']), ("b", ['{"v":"other"}'])], 2.0)
    store.close()
    flip_byte(path, b'"second"', b'"secoNd"')


def test_a_changed_byte_inside_a_row_is_reported_as_damage_of_that_token(tmp_path: Path) -> None:
    """The file still passes quick_check and opens; a read of stream a from token 1 stops
    before damaged token 2, one from token 2 raises DamagedEntry naming a, the local origin
    and token 2; token 3 alone and stream b read as written."""
    path = tmp_path / "s.db"
    damaged_store(path)
    store = SqliteStore(str(path))
    try:
        assert store.read("a", 0, 3, 100) == [Entry(1, ('{"v":"first"}',))]
        with pytest.raises(DamagedEntry) as caught:
            store.read("a", 1, 3, 100)
        assert (caught.value.stream, caught.value.origin, caught.value.token) == ("a", "", 2)
        assert isinstance(caught.value, StoreError)
        message = str(caught.value)
        assert "token 2 of stream 'a' (origin local) is damaged" in message
        assert "CRC32" in message and str(path) in message
        assert store.read("a", 2, 3, 100) == [Entry(3, ('{"v":"third"}',))]
        assert store.read("b", 0, 1, 100) == [Entry(1, ('{"v":"other"}',))]
        assert store.head("a") == 3
    finally:
        store.close()


def one_token(path: Path, rows: list[str], origin: str = "") -> None:
    """A closed store at ``path`` holding ``rows`` as token 1 of stream a (from ``origin``:
    appended if local, else ingested)."""
    store = SqliteStore(str(path))
    if origin:
        store.ingest("a", origin, [Entry(1, tuple(rows))], 1.0)
    else:
        store.append([("a", rows)], 1.0)
    store.close()


def run_sql(path: Path, statement: str) -> list[tuple[object, ...]]:
    """Run one statement on the closed store at ``path``, outside the store's code."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return conn.execute(statement).fetchall()
    finally:
        conn.close()


def read_token_1(path: Path, origin: str = "") -> list[Entry]:
    """Open the store at ``path`` and read token 1 of stream a."""
    store = SqliteStore(str(path))
    try:
        return store.read("a", 0, 1, 10, origin)
    finally:
        store.close()


def test_a_row_whose_bytes_are_no_longer_utf8_is_damage_not_a_crash(tmp_path: Path) -> None:
    """A byte changed into an invalid UTF-8 sequence is DamagedEntry (not SQLite's
    decoding error): by its checksum, and without a checksum as rows that are not UTF-8."""
    path = tmp_path / "s.db"
    one_token(path, ['{"v":"abc"}'])
    flip_byte(path, b'"abc"', b'"a\xffc"')
    with pytest.raises(DamagedEntry, match="token 1 of stream 'a'.*CRC32"):
        read_token_1(path)
    run_sql(path, "UPDATE entries SET crc = NULL")
    with pytest.raises(DamagedEntry, match="token 1 of stream 'a'.*not UTF-8"):
        read_token_1(path)


def test_a_changed_row_count_is_damage(tmp_path: Path) -> None:
    """A token whose recorded row count differs from the rows stored is DamagedEntry."""
    path = tmp_path / "s.db"
    one_token(path, ["1", "2"])
    run_sql(path, "UPDATE entries SET nrows = 3")
    with pytest.raises(DamagedEntry, match="2 rows stored, 3 recorded"):
        read_token_1(path)


def test_ingested_rows_of_another_origin_are_checked_and_named_by_origin(tmp_path: Path) -> None:
    """Rows stored with ingest carry checksums too; their damage names their origin."""
    path = tmp_path / "s.db"
    origin = new_origin_id()
    one_token(path, ['{"v":"remote"}'], origin)
    flip_byte(path, b'"remote"', b'"remotE"')
    with pytest.raises(DamagedEntry) as caught:
        read_token_1(path, origin)
    assert caught.value.origin == origin
    assert f"(origin {origin})" in str(caught.value)


def test_a_development_version_2_file_without_checksums_gets_them_when_opened(
    tmp_path: Path,
) -> None:
    """A version 2 file written before ``entries.crc`` existed opens: the column is added
    and the checksums of the rows it holds are computed then, so damage after that point
    is found."""
    path = tmp_path / "dev.db"
    one_token(path, ['{"v":"kept"}'])
    run_sql(path, "ALTER TABLE entries DROP COLUMN crc")
    assert read_token_1(path) == [Entry(1, ('{"v":"kept"}',))]
    assert run_sql(path, "SELECT crc FROM entries") == [(zlib.crc32(b'{"v":"kept"}'),)]
    flip_byte(path, b'"kept"', b'"kepT"')
    with pytest.raises(DamagedEntry):
        read_token_1(path)


def test_a_token_without_a_checksum_is_read_unchecked(tmp_path: Path) -> None:
    """A NULL checksum (none recorded) is not damage: the rows are served as stored."""
    path = tmp_path / "s.db"
    one_token(path, ['{"v":1}'])
    run_sql(path, "UPDATE entries SET crc = NULL")
    assert read_token_1(path) == [Entry(1, ('{"v":1}',))]


def test_a_write_refused_as_readonly_by_sqlite_is_reported_as_read_only(tmp_path: Path) -> None:
    """When SQLite answers "attempt to write a readonly database" (here: the writer is a
    read-only connection), the store raises ReadOnlyStore saying the database is read-only,
    never that it is corrupt."""
    path = tmp_path / "s.db"
    store = SqliteStore(str(path))
    store.append([("a", ["1"])], 1.0)
    writer = store._writer
    store._writer = sqlite3.connect(
        pathlib.Path(path).resolve().as_uri() + "?mode=ro", uri=True,
        isolation_level=None, check_same_thread=False,
    )
    try:
        with pytest.raises(ReadOnlyStore) as caught:
            store.append([("a", ["2"])], 2.0)
        assert "read-only" in str(caught.value)
        assert "corrupt" not in str(caught.value)
    finally:
        store._writer.close()
        store._writer = writer
        store.close()


needs_non_root = pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes read-only files and directories anyway"
)


@needs_non_root
def test_a_read_only_database_file_is_named_on_open(tmp_path: Path) -> None:
    """A store file without write permission is refused with ReadOnlyStore naming the
    file, not reported as corrupt."""
    path = tmp_path / "s.db"
    SqliteStore(str(path)).close()
    path.chmod(0o444)
    try:
        with pytest.raises(ReadOnlyStore, match="the file .* is read-only"):
            SqliteStore(str(path))
    finally:
        path.chmod(0o644)


@needs_non_root
def test_a_read_only_directory_is_named_on_open(tmp_path: Path) -> None:
    """A store whose directory is not writable (no room for the -wal and -shm files) is
    refused with ReadOnlyStore naming the directory."""
    path = tmp_path / "d" / "s.db"
    SqliteStore(str(path)).close()
    path.parent.chmod(0o555)
    try:
        with pytest.raises(ReadOnlyStore, match="directory .* is not writable"):
            SqliteStore(str(path))
    finally:
        path.parent.chmod(0o755)


def sqlite_fanout(path: Path) -> tuple[StreamLog, FanOut, ManualRunner]:
    """A stream log and fan-out over the SQLite store at ``path``; its store calls wait in
    the returned runner until the test runs them."""
    runner = ManualRunner()
    store = ThreadedStore(SqliteStore(str(path)), runner, runner)
    log = StreamLog(store, Clock(), lambda _: Retention())
    log.open(())
    runner.run_all()
    return log, FanOut(log, Clock(), page_rows=100, knows=lambda _: True), runner


def test_the_fan_out_refuses_a_damaged_token_names_it_and_serves_other_streams(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Followers catching up across damaged token 2 of stream a are sent token 1 and then
    answered ``ERROR master cannot read stream a: token 2 is damaged in the store``; the
    damage is counted and logged once however many followers reach it; a follower of
    stream b is served, and a follower of a from token 2 on is served token 3."""
    path = tmp_path / "s.db"
    damaged_store(path)
    log, fanout, runner = sqlite_fanout(path)
    try:
        caplog.set_level(logging.ERROR, "replication")
        first, second, other, later = FakeFollower(), FakeFollower(), FakeFollower(), FakeFollower()
        fanout.replicate(first, ReplicateCommand("a", 0))
        fanout.replicate(second, ReplicateCommand("a", 1))
        fanout.replicate(other, ReplicateCommand("b", 0))
        fanout.replicate(later, ReplicateCommand("a", 2))
        runner.run_all()
        refusal = "master cannot read stream a: token 2 is damaged in the store"
        assert first.errors == [refusal] and second.errors == [refusal]
        assert first.lines() == ['RDATA a 1 {"v":"first"}'] and second.lines() == []
        assert other.errors == [] and other.lines() == ['RDATA b 1 {"v":"other"}', "POSITION b 1"]
        assert later.errors == [] and later.lines() == ['RDATA a 3 {"v":"third"}', "POSITION a 3"]
        assert fanout.damaged_tokens == {("a", "", 2)}
        damage_logs = [r for r in caplog.records if "is damaged in the store" in r.getMessage()]
        assert len(damage_logs) == 1
        assert "token 2" in damage_logs[0].getMessage()
    finally:
        log.close()
        runner.run_all()


def test_a_follower_ahead_of_the_head_is_counted(tmp_path: Path) -> None:
    """REPLICATE after a token above the head is counted in ``followers_ahead`` (and
    answered with RESET); one at the head is not."""
    path = tmp_path / "s.db"
    damaged_store(path)
    log, fanout, runner = sqlite_fanout(path)
    try:
        at_head, ahead = FakeFollower(), FakeFollower()
        fanout.replicate(at_head, ReplicateCommand("b", 1))
        assert fanout.followers_ahead == 0
        fanout.replicate(ahead, ReplicateCommand("b", 7))
        runner.run_all()
        assert fanout.followers_ahead == 1
        assert ahead.lines()[0] == "RESET b 1"
    finally:
        log.close()
        runner.run_all()


def test_an_unwritable_file_is_named_before_sqlite_is_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the process may not write the database file (os.access says so: the check that
    also holds for a non-root user and chmod 444), opening raises ReadOnlyStore naming the
    file, and the file is left unchanged."""
    path = tmp_path / "s.db"
    SqliteStore(str(path)).close()
    before = path.read_bytes()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(path) else real_access(p, mode)
    )
    with pytest.raises(ReadOnlyStore, match=f"the file {path} is read-only"):
        SqliteStore(str(path))
    assert path.read_bytes() == before


def test_a_read_only_file_system_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the file system holding the store reports ST_RDONLY, opening raises
    ReadOnlyStore saying the file system is mounted read-only (root included)."""
    path = tmp_path / "s.db"
    SqliteStore(str(path)).close()
    real_statvfs = os.statvfs

    class ReadOnly:
        def __init__(self, result: os.statvfs_result) -> None:
            self.f_flag = result.f_flag | os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", lambda p: ReadOnly(real_statvfs(p)))
    with pytest.raises(ReadOnlyStore, match="mounted read-only"):
        SqliteStore(str(path))
