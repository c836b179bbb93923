"""The durable :class:`~replication.store.StreamStore`: one SQLite file in WAL mode.

Used by ``store: {type: sqlite}``. The schema (version :data:`SCHEMA_VERSION`, kept in
``PRAGMA user_version``; ``PRAGMA application_id`` marks the file as ours)::

    streams(name TEXT, origin TEXT, head INTEGER, oldest INTEGER, rows INTEGER,
            created REAL, PRIMARY KEY (name, origin)) WITHOUT ROWID
    entries(stream TEXT, origin TEXT, token INTEGER, time REAL, nrows INTEGER, rows TEXT,
            crc INTEGER, PRIMARY KEY (stream, origin, token)) WITHOUT ROWID
    meta(key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID    -- one row: origin_id

Everything is keyed by ``(stream, origin)``; the local origin is ``''``. ``meta`` holds the
store's origin id (``origin_id``), created in the same transaction as the schema: the name
other masters give this store's own origin, which inside the file stays ``''`` (rows are never
rewritten). A file whose ``meta`` table or ``origin_id`` row is missing or malformed is refused
with a :class:`~replication.store.StoreError` naming the path: making up a new id would make
the master a new origin without anyone deciding it. A version 1 file (which had no origin
columns, every row local, and no ``meta``) is migrated in place when it is opened, in one
transaction that also creates its origin id. Version 2 was not released before ``meta``
joined it, so ``meta`` is part of version 2 rather than a version 3; a version 2 file made
by a development build before that has no ``meta`` and is refused. The same holds for the
``created`` column of ``streams`` (when the stream was created, seconds since the epoch;
``NULL`` when not known): it joined version 2 before its release; a development version 2
file without it gets it (``ALTER TABLE ... ADD COLUMN``, ``NULL`` for its streams) when
opened. Migrating a version 1 file takes a stream's oldest retained row's time as its
creation time (the best that is known), ``NULL`` when it retains none.

Checksums. ``entries.crc`` is the CRC32 of a token's stored rows (their UTF-8 bytes, as
joined), written in the transaction that stores them. ``read`` checks every token it returns:
a token whose rows do not match their checksum, are not UTF-8, or do not split into ``nrows``
rows ends the read before it, and a read that starts with it raises
:class:`~replication.store.DamagedEntry` naming the stream, origin and token; so a follower
gets every token before the damaged one, and other tokens and streams read as usual
(``PRAGMA quick_check`` checks the file's structure, not the bytes of a row). The column too joined
version 2 before its release: a development version 2 file without it gets it when opened, with the
checksums of the rows it holds computed then (in one transaction), as are the rows of a migrated
version 1 file; damage that happened before that cannot be told apart from data. A ``NULL`` checksum
means "not recorded" and is read unchecked.

Read-only. A file, directory or file system this process cannot write is refused when the
store is opened with :class:`~replication.store.ReadOnlyStore` saying which (SQLite must write
the file and create its ``-wal``/``-shm`` files beside it), and a SQLite "readonly" error
later (say, a file system remounted read-only) is raised as ``ReadOnlyStore`` too: it is never
reported as a corrupt database.

``delete_stream`` drops a stream's entries and its ``streams`` row in one transaction; the
stream's name may then be created anew, at token 1.

``streams`` keeps each stream's head, oldest retained token and retained row count, so
``head``, ``oldest`` and ``retained_rows`` are one primary-key lookup, and a stream whose old
entries were trimmed keeps its head: tokens are never reused, across restarts too. The rows of
one token are stored as one TEXT, joined with ``"\\n"`` (rows are compact JSON texts, which
never contain a raw newline; ``append`` refuses a row that does). Reads and trims are range
queries on the primary key; trims delete a token range in one statement.

Threads. The master calls ``append`` and ``trim`` from one writer thread, and everything else
from the reactor thread, possibly while an append runs. So the store holds two connections:

- the *writer* connection, used only by ``append``, ``ingest``, ``trim``, ``delete_stream``
  (and ``close``), under
  ``_write_lock``. Each call is one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction; the commit
  (an fsync with ``synchronous=FULL``) happens on the writer thread.
- the *reader* connection (``query_only``), used by ``stream_names``, ``head``, ``oldest``,
  ``retained_rows``, ``created``, ``read`` and ``create_stream`` under ``_read_lock``. In WAL mode a
  reader never waits for the writer, and each statement (run in autocommit mode, cursors closed
  promptly) sees the data committed when it started, never a half-written batch.

``create_stream`` runs on the reactor thread, but writing there would mean waiting for the
writer's transaction and then doing an fsync of its own. Instead a new empty stream is
recorded in memory (``_pending``, under a lock that is only ever held for a set operation)
and written by the next ``append`` or ``trim`` transaction, or by ``close``. Until then every
reader method reports it as an empty stream (head 0). A crash before then forgets only that
the empty stream was created, which loses no data and cannot cause a token to be reused. To
stay consistent while the writer moves a stream from ``_pending`` to the database, readers
look at ``_pending`` before the database, and the writer removes a name from ``_pending`` only
after its transaction committed.

Opening. A path that does not exist is created (with its parent directories). An existing file
is first inspected through a read-only connection; a file that is not a SQLite database, fails
``PRAGMA quick_check``, belongs to another application or has a newer schema version raises
:class:`~replication.store.StoreError` naming the path and the problem, and the file is left
byte-for-byte unchanged (a read-only look at a WAL database may create its ``-wal``/``-shm``
side files, never change the main file).
"""

from __future__ import annotations

import os
import pathlib
import sqlite3
import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from replication.cluster.identity import IdentityError, check_origin_id, new_origin_id
from replication.store import (
    LOCAL_ORIGIN,
    BatchKeys,
    DamagedEntry,
    Entry,
    PublishKey,
    ReadOnlyStore,
    RetentionPolicy,
    StoreError,
    UnknownStream,
    check_ingest,
    check_origin,
    check_other_origin,
)

SCHEMA_VERSION = 2
"""The version of the schema this module writes and reads (``PRAGMA user_version``); files
of version 1 are migrated when opened."""

APPLICATION_ID = 0x52504C53
"""``PRAGMA application_id`` of our files: ``b"RPLS"``."""

_SYNCHRONOUS = ("FULL", "NORMAL")

_SCHEMA = (
    "CREATE TABLE streams ("
    " name TEXT NOT NULL,"
    " origin TEXT NOT NULL,"
    " head INTEGER NOT NULL,"
    " oldest INTEGER NOT NULL,"
    " rows INTEGER NOT NULL,"
    " created REAL,"
    " PRIMARY KEY (name, origin)"
    ") WITHOUT ROWID",
    "CREATE TABLE entries ("
    " stream TEXT NOT NULL,"
    " origin TEXT NOT NULL,"
    " token INTEGER NOT NULL,"
    " time REAL NOT NULL,"
    " nrows INTEGER NOT NULL,"
    " rows TEXT NOT NULL,"
    " crc INTEGER,"
    " PRIMARY KEY (stream, origin, token)"
    ") WITHOUT ROWID",
    "CREATE TABLE meta (key TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
)
#: The idempotency keys of publishes (see ``append``). A file without them gets them when
#: opened: readers of the same schema version that do not know the table ignore it. Rows
#: are only appended (in commit order: rowid order is time order) and forgotten from the
#: oldest end, so the table has no index to keep up: one append per key. A key recorded
#: again has two rows; the newer one wins when the keys are loaded.
_KEYS = (
    "CREATE TABLE IF NOT EXISTS publish_keys ("
    " key TEXT NOT NULL,"
    " stream TEXT NOT NULL,"
    " first INTEGER NOT NULL,"
    " last INTEGER NOT NULL,"
    " at REAL NOT NULL"
    ")",
)
#: The ``meta`` key of the store's origin id.
_ORIGIN_ID_KEY = "origin_id"
#: Version 1 -> 2: the origin columns, every existing row local (``''``).
_MIGRATE_1_TO_2 = (
    "ALTER TABLE streams RENAME TO streams_v1",
    "ALTER TABLE entries RENAME TO entries_v1",
    *_SCHEMA,
    "INSERT INTO streams (name, origin, head, oldest, rows, created)"
    " SELECT name, '', head, oldest, rows,"
    " (SELECT MIN(time) FROM entries_v1 WHERE entries_v1.stream = streams_v1.name)"
    " FROM streams_v1",
    "INSERT INTO entries (stream, origin, token, time, nrows, rows, crc)"
    " SELECT stream, '', token, time, nrows, rows, crc32(CAST(rows AS BLOB)) FROM entries_v1",
    "DROP TABLE streams_v1",
    "DROP TABLE entries_v1",
)
#: The tables of each schema version this module reads.
_TABLES = {1: {"streams", "entries"}, 2: {"streams", "entries", "meta"}}


class SqliteStore:
    """Streams in one SQLite file, durable across restarts and crashes.

    :param path: the database file; created, with its parent directories, if missing.
    :param synchronous: ``"FULL"`` (default: a committed append survives power loss) or
        ``"NORMAL"`` (faster; in WAL mode a power loss may lose the last commits, never
        corrupt the file; a process crash loses nothing).
    :param quick_check: run ``PRAGMA quick_check`` on an existing file before using it
        (default). It reads the whole file, so it takes a while on a large store.
    :raises StoreError: the file cannot be opened or is not a store this version can use.
    """

    blocking = True
    keeps_keys = True

    def __init__(self, path: str, synchronous: str = "FULL", quick_check: bool = True) -> None:
        sync = synchronous.upper()
        if sync not in _SYNCHRONOUS:
            raise ValueError(
                f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, not {synchronous!r}"
            )
        if path in ("", ":memory:") or path.startswith("file:"):
            raise ValueError(f"SqliteStore needs a file path, not {path!r}")
        self.path = path
        #: Streams created but not yet written, with their creation times.
        self._pending: dict[str, float | None] = {}
        self._pending_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._closed = False

        read_only = _read_only_problem(path)
        if read_only is not None:
            raise ReadOnlyStore(f"SQLite store {path}: cannot be opened for writing: {read_only}")
        if os.path.exists(path):
            new = _inspect(path, quick_check)
        else:
            parent = os.path.dirname(os.path.abspath(path))
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as e:
                raise StoreError(
                    f"SQLite store {path}: cannot create directory {parent}: {e}"
                ) from e
            new = True

        try:
            self._writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StoreError(f"SQLite store {path}: cannot open: {e}") from e
        try:
            #: The store's origin id, from its ``meta`` table (see the module docstring).
            self.origin_id = self._setup_writer(sync, new)
            self._reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                self._reader.execute("PRAGMA query_only = ON")
                self._reader.execute(f"PRAGMA synchronous = {sync}")
            except BaseException:
                self._reader.close()
                raise
        except sqlite3.Error as e:
            self._writer.close()
            read_only = _read_only_problem(path, e)
            if read_only is not None:
                raise ReadOnlyStore(f"SQLite store {path}: cannot open: {read_only}") from e
            raise StoreError(f"SQLite store {path}: cannot open: {e}") from e
        except BaseException:
            self._writer.close()
            raise

    def _setup_writer(self, sync: str, new: bool) -> str:
        """Set up the writer connection, create or migrate the schema as needed; return the
        store's origin id."""
        w = self._writer
        mode = w.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(
                f"SQLite store {self.path}: cannot use WAL mode (journal_mode is {mode})"
            )
        w.execute(f"PRAGMA synchronous = {sync}")
        w.create_function("crc32", 1, _crc32_sql, deterministic=True)
        if not new:
            if w.execute("PRAGMA user_version").fetchone()[0] == 1:
                self._migrate_from_1()
            self._add_created_column()
            self._add_crc_column()
            self._add_keys_table()
            return _read_origin_id(self.path, w)
        w.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have created the schema since we looked.
            tables = {
                r[0] for r in w.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if not tables:
                for statement in (*_SCHEMA, *_KEYS):
                    w.execute(statement)
                _create_origin_id(w)
                w.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                w.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            w.execute("COMMIT")
        except BaseException:
            w.execute("ROLLBACK")
            raise
        if tables:
            _check_schema(self.path, w)
            self._add_keys_table()
        return _read_origin_id(self.path, w)

    def _add_keys_table(self) -> None:
        """Give a file written before idempotency keys were kept the table that holds them."""
        w = self._writer
        if w.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'publish_keys'"
        ).fetchall():
            return
        w.execute("BEGIN IMMEDIATE")
        try:
            for statement in _KEYS:
                w.execute(statement)
            w.execute("COMMIT")
        except BaseException:
            if w.in_transaction:
                w.execute("ROLLBACK")
            raise

    def _add_created_column(self) -> None:
        """Give a development version 2 file the ``created`` column it lacks (``NULL``:
        not known)."""
        w = self._writer
        columns = {r[1] for r in w.execute("PRAGMA table_info(streams)")}
        if columns and "created" not in columns:
            w.execute("ALTER TABLE streams ADD COLUMN created REAL")

    def _add_crc_column(self) -> None:
        """Give a development version 2 file the ``crc`` column of ``entries`` it lacks, with
        the checksums of the rows it holds computed now, in one transaction."""
        w = self._writer
        columns = {r[1] for r in w.execute("PRAGMA table_info(entries)")}
        if not columns or "crc" in columns:
            return
        w.execute("BEGIN IMMEDIATE")
        try:
            columns = {r[1] for r in w.execute("PRAGMA table_info(entries)")}
            if "crc" not in columns:  # not done meanwhile
                w.execute("ALTER TABLE entries ADD COLUMN crc INTEGER")
                w.execute("UPDATE entries SET crc = crc32(CAST(rows AS BLOB))")
            w.execute("COMMIT")
        except BaseException:
            if w.in_transaction:
                w.execute("ROLLBACK")
            raise

    def _migrate_from_1(self) -> None:
        """Add the origin columns and the ``meta`` table with a new origin id to a version 1
        file, in one transaction."""
        w = self._writer
        w.execute("BEGIN IMMEDIATE")
        try:
            if w.execute("PRAGMA user_version").fetchone()[0] == 1:  # not done meanwhile
                for statement in _MIGRATE_1_TO_2:
                    w.execute(statement)
                _create_origin_id(w)
                w.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            w.execute("COMMIT")
        except BaseException:
            if w.in_transaction:
                w.execute("ROLLBACK")
            raise
        _check_schema(self.path, w)

    # -- helpers ---------------------------------------------------------------------------

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        if self._closed:
            raise StoreError(f"SQLite store {self.path}: {what} after close")
        try:
            yield
        except sqlite3.Error as e:
            read_only = _read_only_problem(self.path, e)
            if read_only is not None:
                raise ReadOnlyStore(
                    f"SQLite store {self.path}: {what} failed: {read_only}"
                ) from e
            raise StoreError(f"SQLite store {self.path}: {what} failed: {e}") from e

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction on the writer connection (``BEGIN IMMEDIATE`` ... ``COMMIT``,
        rolled back if anything raises), which first writes the streams created since the
        last write; ``what`` names the operation in errors."""
        with self._errors(what), self._write_lock:
            w = self._writer
            w.execute("BEGIN IMMEDIATE")
            try:
                created = self._flush_pending()
                yield w
                w.execute("COMMIT")
            except BaseException:
                if w.in_transaction:
                    w.execute("ROLLBACK")
                raise
            self._flushed(created)

    def _stream_row(
        self, stream: str, origin: str = LOCAL_ORIGIN
    ) -> tuple[int, int, int, float | None]:
        """``(head, oldest, rows, created)`` of ``(stream, origin)``; reader thread,
        ``_read_lock`` held."""
        with self._pending_lock:  # before the database: see the module docstring
            pending = origin == LOCAL_ORIGIN and stream in self._pending
            created = self._pending.get(stream) if pending else None
        row = self._reader.execute(
            "SELECT head, oldest, rows, created FROM streams WHERE name = ? AND origin = ?",
            (stream, origin),
        ).fetchall()
        if row:
            head, oldest, rows, when = row[0]
            return int(head), int(oldest), int(rows), None if when is None else float(when)
        if pending:
            return (0, 1, 0, created)
        raise UnknownStream(stream)

    def _flush_pending(self) -> set[str]:
        """Insert the streams created since the last write; writer, in a transaction."""
        if not self._pending:
            return set()
        with self._pending_lock:
            pending = dict(self._pending)
        self._writer.executemany(
            "INSERT OR IGNORE INTO streams (name, origin, head, oldest, rows, created)"
            " VALUES (?, '', 0, 1, 0, ?)",
            sorted(pending.items()),
        )
        return set(pending)

    def _flushed(self, names: set[str]) -> None:
        if names:
            with self._pending_lock:
                for name in names:
                    self._pending.pop(name, None)

    # -- reactor thread --------------------------------------------------------------------

    def stream_names(self) -> list[str]:
        with self._errors("stream_names"), self._read_lock:
            with self._pending_lock:
                names = set(self._pending)
            names.update(
                r[0] for r in self._reader.execute(
                    "SELECT name FROM streams WHERE origin = ''"
                ).fetchall()
            )
        return sorted(names)

    def keys(self) -> list[tuple[str, str]]:
        with self._errors("keys"), self._read_lock:
            with self._pending_lock:
                keys = {(name, LOCAL_ORIGIN) for name in self._pending}
            keys.update(
                (r[0], r[1])
                for r in self._reader.execute("SELECT name, origin FROM streams").fetchall()
            )
        return sorted(keys)

    def create_stream(self, stream: str, now: float | None = None) -> None:
        with self._errors("create_stream"), self._read_lock:
            with self._pending_lock:
                if stream in self._pending:
                    return
            known = self._reader.execute(
                "SELECT 1 FROM streams WHERE name = ? AND origin = ''", (stream,)
            ).fetchall()
            if not known:
                with self._pending_lock:
                    self._pending[stream] = now

    def head(self, stream: str, origin: str = LOCAL_ORIGIN) -> int:
        with self._errors("head"), self._read_lock:
            return self._stream_row(stream, origin)[0]

    def oldest(self, stream: str, origin: str = LOCAL_ORIGIN) -> int:
        with self._errors("oldest"), self._read_lock:
            return self._stream_row(stream, origin)[1]

    def retained_rows(self, stream: str, origin: str = LOCAL_ORIGIN) -> int:
        with self._errors("retained_rows"), self._read_lock:
            return self._stream_row(stream, origin)[2]

    def created(self, stream: str, origin: str = LOCAL_ORIGIN) -> float | None:
        with self._errors("created"), self._read_lock:
            return self._stream_row(stream, origin)[3]

    def read(
        self, stream: str, after: int, upto: int, max_rows: int, origin: str = LOCAL_ORIGIN
    ) -> list[Entry]:
        out: list[Entry] = []
        with self._errors("read"), self._read_lock:
            if max_rows > 0 and upto > after:
                cursor = self._reader.execute(
                    "SELECT token, nrows, crc, CAST(rows AS BLOB) FROM entries"
                    " WHERE stream = ? AND origin = ? AND token > ? AND token <= ? ORDER BY token",
                    (stream, origin, after, upto),
                )
                try:
                    gathered = 0
                    for token, nrows, crc, data in cursor:
                        try:
                            rows = self._checked(stream, origin, token, nrows, crc, data)
                        except DamagedEntry:
                            if out:
                                break  # serve what precedes it; the next read raises
                            raise
                        out.append(Entry(token, rows))
                        gathered += nrows
                        if gathered >= max_rows:
                            break
                finally:
                    cursor.close()
            if not out:
                self._stream_row(stream, origin)  # raises UnknownStream
        return out

    def _checked(
        self, stream: str, origin: str, token: int, nrows: int, crc: int | None, data: bytes
    ) -> tuple[str, ...]:
        """The rows of one stored token, or :class:`DamagedEntry` if its bytes do not match
        their checksum, are not UTF-8 or do not split into ``nrows`` rows."""
        if crc is not None and zlib.crc32(data) != crc:
            raise DamagedEntry(
                self.path, stream, origin, token,
                f"its rows do not match their CRC32 ({zlib.crc32(data):#010x}, stored {crc:#010x})",
            )
        try:
            rows = tuple(data.decode("utf-8").split("\n"))
        except UnicodeDecodeError as e:
            raise DamagedEntry(
                self.path, stream, origin, token, f"its rows are not UTF-8 ({e})"
            ) from None
        if len(rows) != nrows:
            raise DamagedEntry(
                self.path, stream, origin, token, f"{len(rows)} rows stored, {nrows} recorded"
            )
        return rows

    # -- writer thread ---------------------------------------------------------------------

    def append(
        self, batch: Sequence[tuple[str, Sequence[str]]], now: float, origin: str = LOCAL_ORIGIN,
        keys: BatchKeys = (),
    ) -> list[int]:
        check_origin(origin)
        texts = [_joined(rows) for _, rows in batch]
        tokens: list[int] = []
        with self._transaction("append") as w:
            streams: dict[str, list[int]] = {}  # name -> [head, rows added]
            entries = []
            for (name, rows), text in zip(batch, texts, strict=True):
                s = streams.get(name)
                if s is None:
                    found = w.execute(
                        "SELECT head FROM streams WHERE name = ? AND origin = ''", (name,)
                    ).fetchall()
                    if not found:
                        w.execute(
                            "INSERT INTO streams (name, origin, head, oldest, rows, created)"
                            " VALUES (?, '', 0, 1, 0, ?)",
                            (name, now),
                        )
                    s = streams[name] = [found[0][0] if found else 0, 0]
                s[0] += 1
                s[1] += len(rows)
                entries.append((name, s[0], now, len(rows), text, _crc32(text)))
                tokens.append(s[0])
            w.executemany(
                "INSERT INTO entries (stream, origin, token, time, nrows, rows, crc)"
                " VALUES (?, '', ?, ?, ?, ?, ?)",
                entries,
            )
            w.executemany(
                "UPDATE streams SET head = ?, rows = rows + ? WHERE name = ? AND origin = ''",
                [(h, n, name) for name, (h, n) in streams.items()],
            )
            if keys:
                w.executemany(
                    "INSERT INTO publish_keys (key, stream, first, last, at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(key, batch[i][0], tokens[i], tokens[i + n - 1], now) for key, i, n in keys],
                )
        return tokens

    def publish_keys(self, since: float, limit: int) -> list[PublishKey]:
        with self._errors("publish_keys"), self._read_lock:
            found = self._reader.execute(
                "SELECT key, stream, first, last, at FROM publish_keys WHERE at >= ?"
                " ORDER BY rowid DESC LIMIT ?",
                (since, limit),
            ).fetchall()
        return [
            PublishKey(key, stream, int(first), int(last), float(at))
            for key, stream, first, last, at in reversed(found)
        ]

    def forget_keys(self, before: float) -> int:
        # From the oldest end up to the first key recorded at or after ``before``: the cost
        # is the keys forgotten, not the table (a clock that stepped back only keeps some
        # keys until a later pass).
        with self._transaction("forget_keys") as w:
            kept = w.execute(
                "SELECT rowid FROM publish_keys WHERE at >= ? ORDER BY rowid LIMIT 1", (before,)
            ).fetchone()
            if kept is None:
                return w.execute("DELETE FROM publish_keys").rowcount
            return w.execute("DELETE FROM publish_keys WHERE rowid < ?", (kept[0],)).rowcount

    def ingest(self, stream: str, origin: str, entries: Sequence[Entry], now: float) -> int:
        texts = [_joined(entry.rows) for entry in entries]
        with self._transaction("ingest") as w:
            found = w.execute(
                "SELECT head FROM streams WHERE name = ? AND origin = ?", (stream, origin)
            ).fetchall()
            head = found[0][0] if found else 0
            new = check_ingest(stream, origin, entries, head, self.origin_id)
            if new:
                if not found:
                    w.execute(
                        "INSERT INTO streams (name, origin, head, oldest, rows, created)"
                        " VALUES (?, ?, 0, 1, 0, ?)",
                        (stream, origin, now),
                    )
                by_token = {entry.token: text for entry, text in zip(entries, texts, strict=True)}
                w.executemany(
                    "INSERT INTO entries (stream, origin, token, time, nrows, rows, crc)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (stream, origin, e.token, now, len(e.rows), by_token[e.token],
                         _crc32(by_token[e.token]))
                        for e in new
                    ],
                )
                head = new[-1].token
                w.execute(
                    "UPDATE streams SET head = ?, rows = rows + ? WHERE name = ? AND origin = ?",
                    (head, sum(len(e.rows) for e in new), stream, origin),
                )
        return int(head)

    def skip(self, stream: str, origin: str, last: int, now: float) -> int:
        check_other_origin("skip", stream, origin, self.origin_id)
        with self._transaction("skip") as w:
            found = w.execute(
                "SELECT head, rows FROM streams WHERE name = ? AND origin = ?", (stream, origin)
            ).fetchall()
            if not found:
                w.execute(
                    "INSERT INTO streams (name, origin, head, oldest, rows, created)"
                    " VALUES (?, ?, ?, ?, 0, ?)",
                    (stream, origin, last, last + 1, now),
                )
                return 0
            head, rows = found[0]
            if last <= head:
                return 0
            w.execute("DELETE FROM entries WHERE stream = ? AND origin = ?", (stream, origin))
            w.execute(
                "UPDATE streams SET head = ?, oldest = ?, rows = 0 WHERE name = ? AND origin = ?",
                (last, last + 1, stream, origin),
            )
        return int(rows)

    def trim(
        self, stream: str, retention: RetentionPolicy, now: float, origin: str = LOCAL_ORIGIN
    ) -> int:
        max_rows, max_age = retention.max_rows, retention.max_age
        cutoff = None if max_age is None else now - max_age
        with self._transaction("trim") as w:
            found = w.execute(
                "SELECT head, oldest, rows FROM streams WHERE name = ? AND origin = ?",
                (stream, origin),
            ).fetchall()
            if not found:
                raise UnknownStream(stream)
            head, oldest, rows = found[0]
            dropped = 0
            keep = oldest  # the first token kept
            if head > oldest and (max_rows is not None or cutoff is not None):
                # Walk the oldest tokens (never the head) until one may stay.
                cursor = w.execute(
                    "SELECT token, time, nrows FROM entries WHERE stream = ? AND origin = ?"
                    " AND token >= ? AND token < ? ORDER BY token",
                    (stream, origin, oldest, head),
                )
                try:
                    for token, time, nrows in cursor:
                        too_many = max_rows is not None and rows - dropped > max_rows
                        too_old = cutoff is not None and time < cutoff
                        if not (too_many or too_old):
                            break
                        dropped += nrows
                        keep = token + 1
                finally:
                    cursor.close()
            if keep > oldest:
                w.execute(
                    "DELETE FROM entries WHERE stream = ? AND origin = ? AND token < ?",
                    (stream, origin, keep),
                )
                w.execute(
                    "UPDATE streams SET oldest = ?, rows = rows - ? WHERE name = ? AND origin = ?",
                    (keep, dropped, stream, origin),
                )
        return dropped

    def delete_stream(self, stream: str) -> int:
        with self._transaction("delete_stream") as w:
            found = w.execute(
                "SELECT rows FROM streams WHERE name = ? AND origin = ''", (stream,)
            ).fetchall()
            if not found:
                raise UnknownStream(stream)
            w.execute("DELETE FROM entries WHERE stream = ? AND origin = ''", (stream,))
            w.execute("DELETE FROM streams WHERE name = ? AND origin = ''", (stream,))
        return int(found[0][0])

    def close(self) -> None:
        """Write streams created since the last write, then close both connections."""
        if self._closed:
            return
        try:
            if self._pending:
                with self._transaction("close"):
                    pass  # the transaction writes the pending streams
        finally:
            self._closed = True
            with self._read_lock:
                self._reader.close()
            with self._write_lock:
                self._writer.close()


def _joined(rows: Sequence[str]) -> str:
    """The rows of one token as one TEXT; raises ValueError for no rows or a raw newline."""
    if not rows:
        raise ValueError("a token carries at least one row")
    text = "\n".join(rows)
    if text.count("\n") != len(rows) - 1:
        raise ValueError("a row contains a raw newline")
    return text


def _crc32(text: str) -> int:
    """The checksum stored beside a token's rows: CRC32 of their UTF-8 bytes."""
    return zlib.crc32(text.encode("utf-8"))


def _crc32_sql(data: bytes | None) -> int | None:
    """``crc32(CAST(rows AS BLOB))`` in SQL: the checksum of rows already stored."""
    return None if data is None else zlib.crc32(data)


def _read_only_problem(path: str, error: BaseException | None = None) -> str | None:
    """What makes ``path`` unwritable, in words, or ``None``: a read-only file system, a
    file or directory this process may not write, or SQLite's own "readonly" errors
    (``error``). SQLite needs to write the file and to create its ``-wal`` and ``-shm``
    files beside it."""
    target = path if os.path.exists(path) else os.path.dirname(os.path.abspath(path))
    try:
        if os.statvfs(target).f_flag & os.ST_RDONLY:
            return f"the file system holding {target} is mounted read-only"
    except OSError:
        pass
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return f"the file {path} is read-only (not writable by this process)"
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(parent) and not os.access(parent, os.W_OK | os.X_OK):
        return (
            f"the directory {parent} is not writable by this process (SQLite creates the "
            "-wal and -shm files beside the database)"
        )
    if error is not None and "readonly" in str(error).lower().replace("read-only", "readonly"):
        return (
            f"the database is read-only ({error}): check the file system, file and directory "
            "permissions"
        )
    return None


def _inspect(path: str, quick_check: bool) -> bool:
    """Look at an existing file read-only; return whether it is an empty database that needs
    the schema, or raise :class:`StoreError` if it cannot be used."""
    if os.path.isdir(path):
        raise StoreError(f"SQLite store {path}: is a directory, not a database file")
    try:
        with open(path, "rb") as f:
            magic = f.read(16)
    except OSError as e:
        raise StoreError(f"SQLite store {path}: cannot read: {e}") from e
    if not magic:
        return True
    if magic != b"SQLite format 3\x00":
        raise StoreError(f"SQLite store {path}: not a SQLite database (wrong header)")
    uri = pathlib.Path(path).resolve().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as e:
        raise StoreError(f"SQLite store {path}: cannot open read-only to check it: {e}") from e
    try:
        try:
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if quick_check:
                problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
                if problems != ["ok"]:
                    raise StoreError(
                        f"SQLite store {path}: the database is corrupt (quick_check: "
                        + "; ".join(map(str, problems)) + ")"
                    )
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as e:
            read_only = _read_only_problem(path, e)
            if read_only is not None:
                raise ReadOnlyStore(f"SQLite store {path}: cannot check it: {read_only}") from e
            raise StoreError(f"SQLite store {path}: the database is corrupt ({e})") from e
        if not tables and app_id == 0 and version == 0:
            return True  # an empty database: ours to set up
        if app_id != APPLICATION_ID:
            listed = ", ".join(sorted(tables)) or "none"
            raise StoreError(
                f"SQLite store {path}: a SQLite database of another application"
                f" (application_id {app_id}, tables: {listed}), not a replication stream store"
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"SQLite store {path}: schema version {version} is newer than the version"
                f" {SCHEMA_VERSION} this replication supports; upgrade replication"
            )
        _check_schema(path, conn, (1, SCHEMA_VERSION))  # version 1 is migrated on open
        if version == SCHEMA_VERSION:
            _read_origin_id(path, conn)
        return False
    finally:
        conn.close()


def _check_schema(
    path: str, conn: sqlite3.Connection, versions: tuple[int, ...] = (SCHEMA_VERSION,)
) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    needed = _TABLES.get(version, _TABLES[SCHEMA_VERSION])
    if version not in versions or not needed <= tables:
        missing = ", ".join(sorted(needed - tables)) or "none"
        hint = "; the meta table holds the store's origin id" if "meta" in needed - tables else ""
        raise StoreError(
            f"SQLite store {path}: not a usable replication store (schema version {version},"
            f" expected {SCHEMA_VERSION}; missing tables: {missing}{hint})"
        )


def _create_origin_id(w: sqlite3.Connection) -> None:
    """Record a new origin id in ``meta``; in the transaction that creates the schema."""
    w.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (_ORIGIN_ID_KEY, new_origin_id()))


def _read_origin_id(path: str, conn: sqlite3.Connection) -> str:
    """The origin id in ``meta``; raise :class:`StoreError` naming ``path`` if the table or
    its row is missing, or the id malformed."""
    try:
        found = conn.execute(
            "SELECT value FROM meta WHERE key = ?", (_ORIGIN_ID_KEY,)
        ).fetchall()
    except sqlite3.Error as e:
        raise StoreError(
            f"SQLite store {path}: cannot read the store's origin id from its meta table ({e})"
        ) from e
    if not found:
        raise StoreError(
            f"SQLite store {path}: its meta table holds no {_ORIGIN_ID_KEY}, so the store has "
            "no origin id; refusing to make one up (a new id would make this master a new "
            "origin)"
        )
    try:
        return check_origin_id(found[0][0])
    except IdentityError as e:
        raise StoreError(f"SQLite store {path}: {_ORIGIN_ID_KEY} in its meta table: {e}") from None
