"""The shared :class:`~replication.store.StreamStore`: one PostgreSQL schema, any number of
masters on it.

Used by ``store: {type: postgres, dsn: ..., schema: ...}`` and needs psycopg 3
(``pip install 'replication[postgres]'``). The schema (version :data:`SCHEMA_VERSION`), in
the PostgreSQL schema named by ``schema`` (created if missing)::

    meta(key TEXT PRIMARY KEY, value TEXT)   -- application, schema_version, origin_id
    streams(name TEXT, origin TEXT, head BIGINT, oldest BIGINT, rows BIGINT,
            created DOUBLE PRECISION, PRIMARY KEY (name, origin))
    entries(stream TEXT, origin TEXT, token BIGINT, time DOUBLE PRECISION, nrows INTEGER,
            rows TEXT, crc BIGINT, PRIMARY KEY (stream, origin, token))

as in :mod:`replication.store.sqlite`: everything keyed by ``(stream, origin)``, the local
origin ``''``, a token's rows one TEXT joined with ``"\\n"`` with the CRC32 of their UTF-8
bytes beside it (checked by every ``read``: :class:`~replication.store.DamagedEntry`).

Tokens. ``append`` allocates the tokens of each stream in the transaction that stores the
rows, from the stream's ``streams`` row (its head), updated with ``RETURNING``: an
``INSERT ... ON CONFLICT DO UPDATE SET head = head + n`` over the batch's streams, sorted by
name. The update takes the row lock of each head, which serialises the appends of every
master to one stream (and, the locks always being taken in name order, two masters appending
to the same streams cannot deadlock), so tokens stay contiguous per stream and are the same
for every master: no sequence (a sequence leaves gaps when a transaction rolls back). The
same statement inserts the rows with the tokens it took (arrays passed as parameters and
``unnest``-ed) and calls ``pg_notify`` on the store's channel (:attr:`PostgresStore.channel`),
delivered to listeners when, and only if, the transaction commits. An append is three round
trips (``BEGIN``, that statement, ``COMMIT``); the commit's WAL flush is most of its time.

Several masters. Every master on one schema is **one origin**: the origin id is kept in
``meta`` and read by each. A master learns of the rows another master committed through
:meth:`PostgresStore.wait_for_change` (``LISTEN`` on a connection of its own; the payload
names the writer, so a store ignores its own notifications), which the master turns into a
poke of its stream log (:mod:`replication.master.watch`), with polling as the backstop.
This mode and a peer cluster (``cluster.peers``) are not combined.

Opening. The setup runs in one transaction under a transaction-scoped advisory lock, so
masters starting together create the schema once. A missing PostgreSQL schema is created
(the role needs ``CREATE`` on the database), an empty one gets the tables; a schema holding
tables but no ``meta`` of ours (another application's), a ``meta`` of another application,
a newer schema version or missing tables are refused with
:class:`~replication.store.StoreError` naming the database and schema, and nothing is
changed. A database whose encoding is not UTF8 is refused too.

Connections. One per thread that calls the store (the writer thread, the reader thread, the
thread that opens the store), made when the thread first needs one, in autocommit mode;
write operations are explicit ``BEGIN`` ... ``COMMIT`` transactions. A connection found
broken is replaced on the next call, so the store reconnects by itself after the server
restarts or a backend is terminated. A write that fails because the connection was lost
*before* its ``COMMIT`` was sent (nothing of it can be stored) is retried once on a new
connection; a connection lost during the ``COMMIT`` leaves its outcome unknown, and the call
raises :class:`~replication.store.StoreError` (the master answers 503; if the rows were in
fact committed, the master delivers them as rows another writer committed). Sessions run
with ``synchronous_commit`` at least ``on`` (a server default of ``off`` is raised to
``on``): an append returns once the server has flushed its commit, and, with a synchronous
standby configured (``synchronous_standby_names``), once the standby has too.

Errors. Every failure is a :class:`~replication.store.StoreError` that names the server,
database and schema (never the password) and says what to do: a malformed ``dsn``, a
server that cannot be reached, an authentication failure, a missing permission (which
privilege), a schema that is not ours.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

try:
    import psycopg
    import psycopg.conninfo
    import psycopg.errors
except ImportError as _e:  # pragma: no cover - exercised only without the extra installed
    raise ImportError(
        "the PostgreSQL store needs psycopg 3: pip install 'replication[postgres]'"
    ) from _e

from replication.cluster.identity import IdentityError, check_origin_id, new_origin_id
from replication.store import (
    LOCAL_ORIGIN,
    BatchKeys,
    DamagedEntry,
    Entry,
    PublishKey,
    RetentionPolicy,
    StoreError,
    StreamStats,
    UnknownStream,
    check_ingest,
    check_origin,
    check_other_origin,
)

T = TypeVar("T")

SCHEMA_VERSION = 1
"""The version of the tables this module writes and reads (``meta.schema_version``)."""

APPLICATION = "replication stream store"
"""``meta.application``: what marks a PostgreSQL schema as ours."""

DEFAULT_SCHEMA = "replication"
"""The PostgreSQL schema the store uses when none is named."""

#: A schema name we accept: an unquoted PostgreSQL identifier in lower case.
SCHEMA_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")

#: Connection parameters the store sets when the ``dsn`` does not: fail fast when the server
#: is away, and notice a dead peer through TCP keepalives rather than hang.
_CONNECT_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "application_name": "replication",
}

#: Tokens per page when retention walks the oldest tokens of a stream.
_TRIM_PAGE = 1000


def _tables(s: str) -> tuple[str, ...]:
    return (
        f'CREATE TABLE "{s}".meta (key TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL)',
        f'CREATE TABLE "{s}".streams ('
        " name TEXT NOT NULL,"
        " origin TEXT NOT NULL,"
        " head BIGINT NOT NULL,"
        " oldest BIGINT NOT NULL,"
        " rows BIGINT NOT NULL,"
        " created DOUBLE PRECISION,"
        " PRIMARY KEY (name, origin))",
        f'CREATE TABLE "{s}".entries ('
        " stream TEXT NOT NULL,"
        " origin TEXT NOT NULL,"
        " token BIGINT NOT NULL,"
        " time DOUBLE PRECISION NOT NULL,"
        " nrows INTEGER NOT NULL,"
        " rows TEXT NOT NULL,"
        " crc BIGINT,"
        " PRIMARY KEY (stream, origin, token))",
    )


def _keys_table(s: str) -> tuple[str, ...]:
    """The idempotency keys of publishes (see ``append``); created in a schema that lacks
    it when a master opens it (readers of the same schema version ignore it). Rows are only
    appended and forgotten from the oldest end (``id`` order); a key recorded again has two
    rows, and the newer one wins when the keys are loaded."""
    return (
        f'CREATE TABLE IF NOT EXISTS "{s}".publish_keys ('
        " id BIGSERIAL PRIMARY KEY,"
        " key TEXT NOT NULL,"
        " stream TEXT NOT NULL,"
        " first BIGINT NOT NULL,"
        " last BIGINT NOT NULL,"
        " at DOUBLE PRECISION NOT NULL)",
    )


_NEEDED_TABLES = frozenset({"meta", "streams", "entries"})


def check_schema_name(schema: str) -> str:
    """``schema`` if it is a name the store accepts (lower-case letters, digits and ``_``,
    not starting with a digit, at most 63 characters), else :class:`ValueError`."""
    if not SCHEMA_PATTERN.match(schema):
        raise ValueError(
            f"schema {schema!r}: use lower-case letters, digits and '_' (not first), at most "
            "63 characters"
        )
    return schema


def describe_dsn(dsn: str) -> str:
    """``host:port/dbname`` of ``dsn`` for messages (never the password); defaults as libpq
    would take them are shown as such."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(malformed dsn)"
    host = str(params.get("host") or params.get("hostaddr") or "(default host)")
    port = str(params.get("port") or "5432")
    dbname = str(params.get("dbname") or params.get("user") or "(default database)")
    return f"{host}:{port}/{dbname}"


class PostgresStore:
    """Streams in a PostgreSQL schema, shared by every master that names it.

    :param dsn: a libpq connection string (``host=db1 dbname=app user=replication``) or URI
        (``postgresql://replication@db1/app``); libpq's environment variables and password
        file apply as usual. ``connect_timeout`` (5 s) and TCP keepalives are added unless
        the string sets them.
    :param schema: the PostgreSQL schema holding the store's tables (created if missing).
    :raises StoreError: the database cannot be reached or used, or the schema is not ours.
    :raises ValueError: a malformed ``schema`` name.
    """

    blocking = True
    #: Keys are kept in the shared schema; each master loads the recent ones when it starts.
    keeps_keys = True

    def __init__(self, dsn: str, schema: str = DEFAULT_SCHEMA) -> None:
        self.schema = check_schema_name(schema)
        self.name = f"PostgreSQL store {describe_dsn(dsn)} schema {schema}"
        try:
            params = psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.Error as e:
            problem = " ".join(str(e).split())
            raise StoreError(
                f"PostgreSQL store: malformed dsn ({problem}); write it as 'host=... dbname=... "
                "user=...' or 'postgresql://user@host/dbname'"
            ) from None
        for key, value in _CONNECT_DEFAULTS.items():
            params.setdefault(key, value)
        self._params = params
        #: The ``LISTEN``/``NOTIFY`` channel of this schema.
        self.channel = f"replication_{schema}"
        #: Names this store object in its notifications, so it ignores its own.
        self.writer_id = uuid.uuid4().hex
        self._local = threading.local()
        self._connections: set[psycopg.Connection[Any]] = set()
        self._connections_lock = threading.Lock()
        self._listener: psycopg.Connection[Any] | None = None
        self._closed = False
        s = self.schema
        self._sql_stream_row = (
            f'SELECT head, oldest, rows, created FROM "{s}".streams'
            " WHERE name = %s AND origin = %s"
        )
        # One statement: move the heads (row locks, in name order), insert the rows with
        # the tokens taken (each entry's token: its stream's new head - the stream's tokens
        # in the batch + its index among them), and notify.
        self._sql_append = (
            f'WITH h AS (INSERT INTO "{s}".streams AS st (name, origin, head, oldest, rows,'
            " created)"
            " SELECT u.n, '', u.t, 1, u.r, %(now)s FROM unnest(%(names)s::text[],"
            " %(tokens)s::bigint[], %(rows)s::bigint[]) AS u(n, t, r) ORDER BY u.n"
            " ON CONFLICT (name, origin) DO UPDATE"
            " SET head = st.head + EXCLUDED.head, rows = st.rows + EXCLUDED.rows"
            " RETURNING st.name, st.head),"
            f' e AS (INSERT INTO "{s}".entries (stream, origin, token, time, nrows, rows, crc)'
            " SELECT v.s, '', h.head - v.c + v.i, %(now)s, v.n, v.r, v.k"
            " FROM unnest(%(e_stream)s::text[], %(e_count)s::bigint[], %(e_index)s::bigint[],"
            " %(e_nrows)s::int[], %(e_rows)s::text[], %(e_crc)s::bigint[])"
            " AS v(s, c, i, n, r, k) JOIN h ON h.name = v.s)"
            " SELECT h.name, h.head FROM h, (SELECT pg_notify(%(channel)s, %(writer)s)) AS n"
        )
        self._sql_copy_entries = (
            f'COPY "{s}".entries (stream, origin, token, time, nrows, rows, crc) FROM STDIN'
        )
        #: The store's origin id, from ``meta`` (shared by every master on the schema).
        self.origin_id = self._run("open", self._setup)
        # The opening thread (the master's main thread) uses the store no more: a master
        # holds the writer's, the reader's and the listener's connections only.
        opener = getattr(self._local, "conn", None)
        if opener is not None:
            self._forget(opener)

    # -- connections and errors ------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(psycopg.conninfo.make_conninfo("", **self._params),
                                   autocommit=True)
        except psycopg.Error as e:
            raise self._error("connect", e) from None
        try:
            sync = conn.execute("SHOW synchronous_commit").fetchone()
            if sync is not None and sync[0] == "off":
                conn.execute("SET synchronous_commit = on")
        except psycopg.Error as e:
            conn.close()
            raise self._error("connect", e) from None
        return conn

    def _conn(self) -> psycopg.Connection[Any]:
        """This thread's connection, made anew if it has none or it broke."""
        if self._closed:
            raise StoreError(f"{self.name}: used after close")
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None and not (conn.closed or conn.broken):
            return conn
        if conn is not None:
            self._forget(conn)
        conn = self._connect()
        with self._connections_lock:
            self._connections.add(conn)
        self._local.conn = conn
        return conn

    def _forget(self, conn: psycopg.Connection[Any]) -> None:
        with self._connections_lock:
            self._connections.discard(conn)
        try:
            conn.close()
        except psycopg.Error:
            pass
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None

    def _error(self, what: str, e: BaseException) -> StoreError:
        """The :class:`StoreError` for a psycopg error ``e`` during ``what``."""
        text = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, psycopg.errors.InsufficientPrivilege):
            return StoreError(
                f"{self.name}: {what}: permission denied ({text}). The role needs CREATE on "
                f"the database to create schema {self.schema} (or an administrator creates "
                f"it), USAGE and CREATE on schema {self.schema}, and SELECT, INSERT, UPDATE, "
                "DELETE on its tables"
            )
        errors = psycopg.errors
        if isinstance(e, errors.InvalidAuthorizationSpecification | errors.InvalidPassword):
            return StoreError(
                f"{self.name}: {what}: authentication failed ({text}); check the user and "
                "password (dsn, PGPASSWORD or ~/.pgpass) and pg_hba.conf"
            )
        if isinstance(e, psycopg.errors.InvalidCatalogName):
            return StoreError(
                f"{self.name}: {what}: the database does not exist ({text}); create it or "
                "fix dbname in store.dsn"
            )
        if isinstance(e, psycopg.errors.UndefinedTable | psycopg.errors.InvalidSchemaName):
            return StoreError(
                f"{self.name}: {what}: the store's tables are gone ({text}); was schema "
                f"{self.schema} dropped? Restart the master to create it anew (as a new "
                "origin)"
            )
        if isinstance(e, psycopg.OperationalError) and what == "connect":
            # Refusals at login come without an SQLSTATE: tell them by their text.
            if re.search(r'database ".*" does not exist', text):
                return StoreError(
                    f"{self.name}: {what}: the database does not exist ({text}); create it or "
                    "fix dbname in store.dsn"
                )
            if "authentication failed" in text or "no pg_hba.conf entry" in text:
                return StoreError(
                    f"{self.name}: {what}: authentication failed ({text}); check the user and "
                    "password (dsn, PGPASSWORD or ~/.pgpass) and pg_hba.conf"
                )
            if "permission denied" in text:
                return StoreError(
                    f"{self.name}: {what}: permission denied ({text}); the role needs CONNECT "
                    "on the database"
                )
        if isinstance(e, psycopg.OperationalError):
            return StoreError(
                f"{self.name}: {what}: cannot reach the database ({text}); check that the "
                "server runs and store.dsn (host, port); the store reconnects by itself"
            )
        if isinstance(e, psycopg.DataError):
            return StoreError(f"{self.name}: {what}: the database refused the data ({text})")
        return StoreError(f"{self.name}: {what} failed: {text}")

    def _run(self, what: str, body: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``body(conn)`` in one transaction (``BEGIN`` ... ``COMMIT``) on this thread's
        connection. A connection lost before the ``COMMIT`` was sent is replaced and the
        transaction run once more; every psycopg error becomes a :class:`StoreError`."""
        for attempt in (1, 2):
            conn = self._conn()
            committing = False
            try:
                conn.execute("BEGIN")
                try:
                    result = body(conn)
                except BaseException:
                    if not (conn.closed or conn.broken):
                        conn.execute("ROLLBACK")
                    raise
                committing = True
                conn.execute("COMMIT")
                return result
            except psycopg.Error as e:
                lost = conn.closed or conn.broken
                if lost:
                    self._forget(conn)
                if lost and not committing and attempt == 1:
                    continue  # nothing was stored: run it once more on a new connection
                if lost and committing:
                    raise StoreError(
                        f"{self.name}: {what}: the connection was lost while committing "
                        f"({' '.join(str(e).split())}); the outcome is unknown"
                    ) from None
                raise self._error(what, e) from None
        raise AssertionError("unreachable")

    def _query(self, what: str, body: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``body(conn)`` in autocommit mode (reads): retried once on a new connection when
        the connection was lost; psycopg errors become :class:`StoreError`."""
        for attempt in (1, 2):
            conn = self._conn()
            try:
                return body(conn)
            except psycopg.Error as e:
                if conn.closed or conn.broken:
                    self._forget(conn)
                    if attempt == 1:
                        continue
                raise self._error(what, e) from None
        raise AssertionError("unreachable")

    # -- opening ----------------------------------------------------------------------------

    def _setup(self, conn: psycopg.Connection[Any]) -> str:
        """Create or check the schema (in the open transaction); return the origin id."""
        s = self.schema
        encoding = conn.execute("SHOW server_encoding").fetchone()
        if encoding is None or encoding[0].upper() not in ("UTF8", "UTF-8"):
            raise StoreError(
                f"{self.name}: the database's encoding is {encoding and encoding[0]}, not "
                "UTF8; create the database with ENCODING 'UTF8'"
            )
        # Masters starting together: one creates, the others then find the tables.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(s),))
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (s,)).fetchall()
        if not found:
            conn.execute(f'CREATE SCHEMA "{s}"')
        tables = {
            r[0] for r in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
                (s,),
            )
        }
        if not tables:
            for statement in (*_tables(s), *_keys_table(s)):
                conn.execute(statement)
            origin_id = new_origin_id()
            conn.execute(
                f'INSERT INTO "{s}".meta (key, value) VALUES (%s, %s), (%s, %s), (%s, %s)',
                ("application", APPLICATION, "schema_version", str(SCHEMA_VERSION),
                 "origin_id", origin_id),
            )
            return origin_id
        listed = ", ".join(sorted(tables))
        if "meta" not in tables:
            raise StoreError(
                f"{self.name}: the schema holds tables ({listed}) but is not a replication "
                "stream store (no meta table); name another schema in store.schema"
            )
        try:
            meta = dict(conn.execute(f'SELECT key, value FROM "{s}".meta').fetchall())
        except psycopg.errors.UndefinedColumn:
            meta = {}
        if meta.get("application") != APPLICATION:
            raise StoreError(
                f"{self.name}: the schema belongs to another application (its meta table does "
                f"not name {APPLICATION!r}; tables: {listed}); name another schema in "
                "store.schema"
            )
        try:
            version = int(meta.get("schema_version", ""))
        except ValueError:
            raise StoreError(
                f"{self.name}: meta.schema_version is {meta.get('schema_version')!r}, not a "
                "number"
            ) from None
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.name}: schema version {version} is newer than the version "
                f"{SCHEMA_VERSION} this replication supports; upgrade replication"
            )
        if version < SCHEMA_VERSION or not _NEEDED_TABLES <= tables:
            missing = ", ".join(sorted(_NEEDED_TABLES - tables)) or "none"
            raise StoreError(
                f"{self.name}: not a usable replication store (schema version {version}, "
                f"expected {SCHEMA_VERSION}; missing tables: {missing})"
            )
        if "publish_keys" not in tables:
            for statement in _keys_table(s):
                conn.execute(statement)
        stored: str | None = meta.get("origin_id")
        if stored is None:
            raise StoreError(
                f"{self.name}: its meta table holds no origin_id; refusing to make one up (a "
                "new id would make these masters a new origin)"
            )
        try:
            return check_origin_id(stored)
        except IdentityError as e:
            raise StoreError(f"{self.name}: origin_id in its meta table: {e}") from None

    # -- reads ----------------------------------------------------------------------------

    def _stream_row(
        self, conn: psycopg.Connection[Any], stream: str, origin: str
    ) -> tuple[int, int, int, float | None]:
        row = conn.execute(self._sql_stream_row, (stream, origin)).fetchone()
        if row is None:
            raise UnknownStream(stream)
        head, oldest, rows, created = row
        return int(head), int(oldest), int(rows), None if created is None else float(created)

    def stream_names(self) -> list[str]:
        def body(conn: psycopg.Connection[Any]) -> list[str]:
            return [
                r[0] for r in conn.execute(
                    f'SELECT name FROM "{self.schema}".streams WHERE origin = %s ORDER BY name',
                    (LOCAL_ORIGIN,),
                )
            ]

        return sorted(self._query("stream_names", body))

    def keys(self) -> list[tuple[str, str]]:
        return sorted(self.all_stats())

    def all_stats(self) -> dict[tuple[str, str], StreamStats]:
        """:class:`~replication.store.StreamStats` of every ``(stream, origin)``, in one
        query (what a poke reads: see :mod:`replication.store.asynchronous`)."""

        def body(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], StreamStats]:
            return {
                (name, origin): StreamStats(
                    int(head), int(oldest), int(rows), None if created is None else float(created)
                )
                for name, origin, head, oldest, rows, created in conn.execute(
                    f'SELECT name, origin, head, oldest, rows, created FROM "{self.schema}".streams'
                )
            }

        return self._query("keys", body)

    def create_stream(self, stream: str, now: float | None = None) -> None:
        def body(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                f'INSERT INTO "{self.schema}".streams (name, origin, head, oldest, rows, created)'
                " VALUES (%s, %s, 0, 1, 0, %s) ON CONFLICT (name, origin) DO NOTHING",
                (stream, LOCAL_ORIGIN, now),
            )

        self._run("create_stream", body)

    def head(self, stream: str, origin: str = LOCAL_ORIGIN) -> int:
        return self._query("head", lambda c: self._stream_row(c, stream, origin))[0]

    def oldest(self, stream: str, origin: str = LOCAL_ORIGIN) -> int:
        return self._query("oldest", lambda c: self._stream_row(c, stream, origin))[1]

    def retained_rows(self, stream: str, origin: str = LOCAL_ORIGIN) -> int:
        return self._query("retained_rows", lambda c: self._stream_row(c, stream, origin))[2]

    def created(self, stream: str, origin: str = LOCAL_ORIGIN) -> float | None:
        return self._query("created", lambda c: self._stream_row(c, stream, origin))[3]

    def read(
        self, stream: str, after: int, upto: int, max_rows: int, origin: str = LOCAL_ORIGIN
    ) -> list[Entry]:
        def body(conn: psycopg.Connection[Any]) -> list[Entry]:
            out: list[Entry] = []
            if max_rows > 0 and upto > after:
                # Every token has at least one row: max_rows tokens always suffice.
                found = conn.execute(
                    f'SELECT token, nrows, crc, rows FROM "{self.schema}".entries'
                    " WHERE stream = %s AND origin = %s AND token > %s AND token <= %s"
                    " ORDER BY token LIMIT %s",
                    (stream, origin, after, upto, max_rows),
                ).fetchall()
                gathered = 0
                for token, nrows, crc, text in found:
                    try:
                        rows = self._checked(stream, origin, token, nrows, crc, text)
                    except DamagedEntry:
                        if out:
                            break  # serve what precedes it; the next read raises
                        raise
                    out.append(Entry(int(token), rows))
                    gathered += nrows
                    if gathered >= max_rows:
                        break
            if not out:
                self._stream_row(conn, stream, origin)  # raises UnknownStream
            return out

        return self._query("read", body)

    def _checked(
        self, stream: str, origin: str, token: int, nrows: int, crc: int | None, text: str
    ) -> tuple[str, ...]:
        data = text.encode("utf-8")
        if crc is not None and zlib.crc32(data) != crc:
            raise DamagedEntry(
                self.name, stream, origin, token,
                f"its rows do not match their CRC32 ({zlib.crc32(data):#010x}, stored {crc:#010x})",
            )
        rows = tuple(text.split("\n"))
        if len(rows) != nrows:
            raise DamagedEntry(
                self.name, stream, origin, token, f"{len(rows)} rows stored, {nrows} recorded"
            )
        return rows

    # -- writes -----------------------------------------------------------------------------

    def append(
        self, batch: Sequence[tuple[str, Sequence[str]]], now: float, origin: str = LOCAL_ORIGIN,
        keys: BatchKeys = (),
    ) -> list[int]:
        check_origin(origin)
        if not batch:
            return []
        texts = [_joined(rows) for _, rows in batch]
        # Tokens and rows per stream, in batch order.
        counts: dict[str, list[int]] = {}  # name -> [tokens, rows]
        for name, rows in batch:
            c = counts.setdefault(name, [0, 0])
            c[0] += 1
            c[1] += len(rows)
        names = sorted(counts)  # row locks always taken in name order: no deadlock
        params = {
            "now": now,
            "names": names,
            "tokens": [counts[name][0] for name in names],
            "rows": [counts[name][1] for name in names],
            "e_stream": [name for name, _ in batch],
            "e_count": [counts[name][0] for name, _ in batch],
            "e_index": _indexes(batch),
            "e_nrows": [len(rows) for _, rows in batch],
            "e_rows": texts,
            "e_crc": [_crc32(text) for text in texts],
            "channel": self.channel,
            "writer": self.writer_id,
        }

        def body(conn: psycopg.Connection[Any]) -> list[int]:
            heads = dict(conn.execute(self._sql_append, params).fetchall())
            # The next token of each stream: its new head minus the tokens this batch adds.
            next_token = {name: int(heads[name]) - counts[name][0] + 1 for name in names}
            tokens: list[int] = []
            for name, _ in batch:
                tokens.append(next_token[name])
                next_token[name] += 1
            if keys:
                conn.execute(
                    f'INSERT INTO "{self.schema}".publish_keys (key, stream, first, last, at)'
                    " SELECT key, stream, first, last, at FROM unnest(%s::text[], %s::text[],"
                    " %s::bigint[], %s::bigint[], %s::float8[])"
                    " WITH ORDINALITY AS k(key, stream, first, last, at, n) ORDER BY n",
                    ([key for key, _, _ in keys], [batch[i][0] for _, i, _ in keys],
                     [tokens[i] for _, i, _ in keys], [tokens[i + n - 1] for _, i, n in keys],
                     [now] * len(keys)),
                )
            return tokens

        return self._run("append", body)

    def publish_keys(self, since: float, limit: int) -> list[PublishKey]:
        s = self.schema

        def body(conn: psycopg.Connection[Any]) -> list[PublishKey]:
            found = conn.execute(
                f'SELECT key, stream, first, last, at FROM "{s}".publish_keys WHERE at >= %s'
                " ORDER BY id DESC LIMIT %s",
                (since, limit),
            ).fetchall()
            return [
                PublishKey(key, stream, int(first), int(last), float(at))
                for key, stream, first, last, at in reversed(found)
            ]

        return self._run("publish_keys", body)

    def forget_keys(self, before: float) -> int:
        s = self.schema

        def body(conn: psycopg.Connection[Any]) -> int:
            # From the oldest end up to the first key recorded at or after ``before`` (the
            # masters' clocks may differ a little: a key they disagree on is kept longer).
            kept = conn.execute(
                f'SELECT id FROM "{s}".publish_keys WHERE at >= %s ORDER BY id LIMIT 1',
                (before,),
            ).fetchone()
            if kept is None:
                cursor = conn.execute(f'DELETE FROM "{s}".publish_keys')
            else:
                cursor = conn.execute(
                    f'DELETE FROM "{s}".publish_keys WHERE id < %s', (kept[0],)
                )
            return int(cursor.rowcount)

        return self._run("forget_keys", body)

    def ingest(self, stream: str, origin: str, entries: Sequence[Entry], now: float) -> int:
        texts = [_joined(entry.rows) for entry in entries]
        s = self.schema

        def body(conn: psycopg.Connection[Any]) -> int:
            lock = (
                f'SELECT head FROM "{s}".streams WHERE name = %s AND origin = %s FOR UPDATE'
            )
            found = conn.execute(lock, (stream, origin)).fetchone()
            head = int(found[0]) if found is not None else 0
            new = check_ingest(stream, origin, entries, head, self.origin_id)
            if not new:
                return head
            if found is None:
                conn.execute(
                    f'INSERT INTO "{s}".streams (name, origin, head, oldest, rows, created)'
                    " VALUES (%s, %s, 0, 1, 0, %s) ON CONFLICT (name, origin) DO NOTHING",
                    (stream, origin, now),
                )
                found = conn.execute(lock, (stream, origin)).fetchone()
                assert found is not None
                if int(found[0]) != head:  # another writer got in first: check again
                    head = int(found[0])
                    new = check_ingest(stream, origin, entries, head, self.origin_id)
                    if not new:
                        return head
            by_token = {e.token: text for e, text in zip(entries, texts, strict=True)}
            with conn.cursor().copy(self._sql_copy_entries) as copy:
                for e in new:
                    text = by_token[e.token]
                    copy.write_row((stream, origin, e.token, now, len(e.rows), text, _crc32(text)))
            head = new[-1].token
            conn.execute(
                f'UPDATE "{s}".streams SET head = %s, rows = rows + %s'
                " WHERE name = %s AND origin = %s",
                (head, sum(len(e.rows) for e in new), stream, origin),
            )
            return head

        return self._run("ingest", body)

    def skip(self, stream: str, origin: str, last: int, now: float) -> int:
        check_other_origin("skip", stream, origin, self.origin_id)
        s = self.schema

        def body(conn: psycopg.Connection[Any]) -> int:
            found = conn.execute(
                f'SELECT head, rows FROM "{s}".streams WHERE name = %s AND origin = %s'
                " FOR UPDATE",
                (stream, origin),
            ).fetchone()
            if found is None:
                conn.execute(
                    f'INSERT INTO "{s}".streams (name, origin, head, oldest, rows, created)'
                    " VALUES (%s, %s, %s, %s, 0, %s) ON CONFLICT (name, origin) DO NOTHING",
                    (stream, origin, last, last + 1, now),
                )
                return 0
            head, rows = int(found[0]), int(found[1])
            if last <= head:
                return 0
            conn.execute(
                f'DELETE FROM "{s}".entries WHERE stream = %s AND origin = %s', (stream, origin)
            )
            conn.execute(
                f'UPDATE "{s}".streams SET head = %s, oldest = %s, rows = 0'
                " WHERE name = %s AND origin = %s",
                (last, last + 1, stream, origin),
            )
            return rows

        return self._run("skip", body)

    def trim(
        self, stream: str, retention: RetentionPolicy, now: float, origin: str = LOCAL_ORIGIN
    ) -> int:
        max_rows, max_age = retention.max_rows, retention.max_age
        cutoff = None if max_age is None else now - max_age
        s = self.schema

        def body(conn: psycopg.Connection[Any]) -> int:
            found = conn.execute(
                f'SELECT head, oldest, rows FROM "{s}".streams'
                " WHERE name = %s AND origin = %s FOR UPDATE",
                (stream, origin),
            ).fetchone()
            if found is None:
                raise UnknownStream(stream)
            head, oldest, rows = (int(v) for v in found)
            dropped = 0
            keep = oldest  # the first token kept
            if head > oldest and (max_rows is not None or cutoff is not None):
                done = False
                while not done and keep < head:
                    page = conn.execute(
                        f'SELECT token, time, nrows FROM "{s}".entries'
                        " WHERE stream = %s AND origin = %s AND token >= %s AND token < %s"
                        " ORDER BY token LIMIT %s",
                        (stream, origin, keep, head, _TRIM_PAGE),
                    ).fetchall()
                    if not page:
                        break
                    for token, when, nrows in page:
                        too_many = max_rows is not None and rows - dropped > max_rows
                        too_old = cutoff is not None and when < cutoff
                        if not (too_many or too_old):
                            done = True
                            break
                        dropped += int(nrows)
                        keep = int(token) + 1
            if keep > oldest:
                conn.execute(
                    f'DELETE FROM "{s}".entries WHERE stream = %s AND origin = %s AND token < %s',
                    (stream, origin, keep),
                )
                conn.execute(
                    f'UPDATE "{s}".streams SET oldest = %s, rows = rows - %s'
                    " WHERE name = %s AND origin = %s",
                    (keep, dropped, stream, origin),
                )
            return dropped

        return self._run("trim", body)

    def delete_stream(self, stream: str) -> int:
        s = self.schema

        def body(conn: psycopg.Connection[Any]) -> int:
            found = conn.execute(
                f'DELETE FROM "{s}".streams WHERE name = %s AND origin = %s RETURNING rows',
                (stream, LOCAL_ORIGIN),
            ).fetchone()
            if found is None:
                raise UnknownStream(stream)
            conn.execute(
                f'DELETE FROM "{s}".entries WHERE stream = %s AND origin = %s',
                (stream, LOCAL_ORIGIN),
            )
            return int(found[0])

        return self._run("delete_stream", body)

    # -- notifications --------------------------------------------------------------------

    def wait_for_change(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for another writer's commit to this schema; return
        whether one (or possibly one: the listening connection was just made, after a loss)
        happened. Call it from one thread only (the master's watcher); it keeps its own
        ``LISTEN`` connection. Raises :class:`StoreError` when the server cannot be reached
        (call again later: it reconnects)."""
        conn = self._listener
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                self._close_listener()
            conn = self._connect()
            try:
                conn.execute(f'LISTEN "{self.channel}"')
            except psycopg.Error as e:
                conn.close()
                raise self._error("listen", e) from None
            self._listener = conn
            return True  # notifications may have been missed while there was no listener
        changed = False
        deadline = time.monotonic() + timeout
        try:
            while not changed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                for notify in conn.notifies(timeout=left):
                    if notify.payload != self.writer_id:
                        changed = True
                        break
            if changed:  # drain what else is queued: one poke reads it all
                for _ in conn.notifies(timeout=0.0):
                    pass
        except psycopg.Error:
            self._close_listener()
            return True  # the listener broke: something may have been missed
        return changed

    def close_listener(self) -> None:
        """Close the connection :meth:`wait_for_change` listens on (from its thread)."""
        self._close_listener()

    def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass

    def backend_pids(self) -> list[int]:
        """The server process ids of the store's open connections (for operators and
        tests: ``pg_terminate_backend``)."""
        with self._connections_lock:
            conns = [c for c in self._connections if not (c.closed or c.broken)]
        if self._listener is not None and not self._listener.closed:
            conns.append(self._listener)
        return [c.info.backend_pid for c in conns]

    def close(self) -> None:
        """Close every connection (the listener's too, if :meth:`close_listener` was not
        called); the store is not used afterwards."""
        self._closed = True
        self._close_listener()
        with self._connections_lock:
            conns, self._connections = list(self._connections), set()
        for conn in conns:
            try:
                conn.close()
            except psycopg.Error:
                pass


def _lock_key(schema: str) -> int:
    """The advisory lock that serialises setting up ``schema``."""
    return zlib.crc32(f"replication store {schema}".encode()) - (1 << 31)


def _indexes(batch: Sequence[tuple[str, Sequence[str]]]) -> list[int]:
    """Each entry's place among its stream's entries in ``batch``: 1, 2, ..."""
    seen: dict[str, int] = {}
    out = []
    for name, _ in batch:
        seen[name] = seen.get(name, 0) + 1
        out.append(seen[name])
    return out


def _joined(rows: Sequence[str]) -> str:
    """The rows of one token as one TEXT; raises ValueError for no rows or a raw newline."""
    if not rows:
        raise ValueError("a token carries at least one row")
    text = "\n".join(rows)
    if text.count("\n") != len(rows) - 1:
        raise ValueError("a row contains a raw newline")
    return text


def _crc32(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


__all__ = [
    "APPLICATION",
    "DEFAULT_SCHEMA",
    "SCHEMA_VERSION",
    "PostgresStore",
    "check_schema_name",
    "describe_dsn",
]
