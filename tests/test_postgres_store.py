"""The PostgreSQL store beyond the shared contract (tests/test_stores.py runs that): opening
and refusing schemas, clear errors, tokens under concurrent writers, notifications, and
reconnecting after the server dropped the store's connections.

Each test works in a schema of its own (the ``pg_schema`` fixture), dropped afterwards."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from postgres import DSN, admin, dsn_for
from replication.store import DamagedEntry, Entry, StoreError

psycopg = pytest.importorskip("psycopg")

from replication.store.postgres import (  # noqa: E402
    SCHEMA_VERSION,
    PostgresStore,
    check_schema_name,
    describe_dsn,
)


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A PostgreSQL schema of the test's own (see tests/postgres.py)."""
    from postgres import temporary_schema

    yield from temporary_schema()


@pytest.fixture
def store(pg_schema: str) -> Iterator[PostgresStore]:
    s = PostgresStore(dsn_for(pg_schema), pg_schema)
    yield s
    s.close()


def terminate(store: PostgresStore) -> int:
    """``pg_terminate_backend`` every connection of ``store``; return how many."""
    pids = store.backend_pids()
    with admin() as conn:
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    return len(pids)


# -- opening -----------------------------------------------------------------------------


def test_a_new_schema_is_created_with_its_tables_and_meta(pg_schema: str) -> None:
    """Opening a store on a schema that does not exist creates it, its four tables and the
    meta rows (application, schema version, origin id)."""
    store = PostgresStore(dsn_for(pg_schema), pg_schema)
    store.close()
    with admin() as conn:
        tables = {
            r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s", (pg_schema,)
            )
        }
        meta = dict(conn.execute(f'SELECT key, value FROM "{pg_schema}".meta').fetchall())
    assert tables == {"meta", "streams", "entries", "publish_keys"}
    assert meta == {
        "application": "replication stream store",
        "schema_version": str(SCHEMA_VERSION),
        "origin_id": store.origin_id,
    }


def test_a_schema_written_before_keys_were_kept_gets_their_table(pg_schema: str) -> None:
    """A schema without ``publish_keys`` (written by an earlier version) gets the table when
    a master opens it; its streams and origin are untouched, and keys are kept from then
    on."""
    store = PostgresStore(dsn_for(pg_schema), pg_schema)
    store.append([("events", ["1"])], 1.0)
    origin_id = store.origin_id
    store.close()
    with admin() as conn:
        conn.execute(f'DROP TABLE "{pg_schema}".publish_keys')
    store = PostgresStore(dsn_for(pg_schema), pg_schema)
    try:
        assert store.origin_id == origin_id and store.head("events") == 1
        store.append([("events", ["2"])], 2.0, keys=[("k", 0, 1)])
        assert [(k.key, k.first) for k in store.publish_keys(0.0, 10)] == [("k", 2)]
    finally:
        store.close()


def test_every_store_on_one_schema_is_one_origin(pg_schema: str) -> None:
    """Masters sharing a schema share its origin id and its tokens."""
    a = PostgresStore(dsn_for(pg_schema), pg_schema)
    b = PostgresStore(dsn_for(pg_schema), pg_schema)
    try:
        assert a.origin_id == b.origin_id
        assert a.append([("s", ["1"])], 0) == [1]
        assert b.append([("s", ["2"])], 0) == [2]
        assert a.read("s", 0, 9, 9) == b.read("s", 0, 9, 9) == [Entry(1, ("1",)), Entry(2, ("2",))]
    finally:
        a.close()
        b.close()


def test_stores_opened_together_create_the_schema_once(pg_schema: str) -> None:
    """Eight stores opening a new schema at the same moment all succeed, with one origin id."""
    ids: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def open_one() -> None:
        barrier.wait()
        try:
            s = PostgresStore(dsn_for(pg_schema), pg_schema)
            ids.append(s.origin_id)
            s.close()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and len(ids) == 8 and len(set(ids)) == 1


def test_a_newer_schema_version_is_refused_and_left_alone(store: PostgresStore) -> None:
    schema = store.schema
    store.close()
    with admin() as conn:
        conn.execute(f"UPDATE \"{schema}\".meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99 is newer than the version 1"):
        PostgresStore(dsn_for(schema), schema)
    with admin() as conn:
        version = conn.execute(
            f"SELECT value FROM \"{schema}\".meta WHERE key = 'schema_version'"
        ).fetchone()
    assert version == ("99",)


def test_a_schema_of_another_application_is_refused(pg_schema: str) -> None:
    """A schema with tables but no meta table, or whose meta names another application, is
    not ours: refused, with its tables listed, and left unchanged."""
    with admin() as conn:
        conn.execute(f'CREATE SCHEMA "{pg_schema}"')
        conn.execute(f'CREATE TABLE "{pg_schema}".users (id INT)')
    with pytest.raises(StoreError, match=r"holds tables \(users\) but is not a replication"):
        PostgresStore(dsn_for(pg_schema), pg_schema)
    with admin() as conn:
        conn.execute(f'CREATE TABLE "{pg_schema}".meta (key TEXT, value TEXT)')
        conn.execute(f"INSERT INTO \"{pg_schema}\".meta VALUES ('application', 'billing')")
    with pytest.raises(StoreError, match="belongs to another application"):
        PostgresStore(dsn_for(pg_schema), pg_schema)
    with admin() as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = %s", (pg_schema,)
        ).fetchone()
    assert tables == (2,)


def test_a_meta_without_origin_id_is_refused(store: PostgresStore) -> None:
    schema = store.schema
    store.close()
    with admin() as conn:
        conn.execute(f"DELETE FROM \"{schema}\".meta WHERE key = 'origin_id'")
    with pytest.raises(StoreError, match="holds no origin_id; refusing to make one up"):
        PostgresStore(dsn_for(schema), schema)


def test_an_empty_existing_schema_is_set_up(pg_schema: str) -> None:
    with admin() as conn:
        conn.execute(f'CREATE SCHEMA "{pg_schema}"')
    store = PostgresStore(dsn_for(pg_schema), pg_schema)
    assert store.append([("s", ["r"])], 0) == [1]
    store.close()


# -- clear errors --------------------------------------------------------------------------


def test_a_malformed_dsn_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match="malformed dsn.*host=... dbname="):
        PostgresStore("host=127.0.0.1 nonsense", "x")


def test_a_bad_schema_name_is_refused() -> None:
    with pytest.raises(ValueError, match="lower-case letters"):
        check_schema_name('a"; DROP TABLE x; --')
    with pytest.raises(ValueError):
        PostgresStore(DSN, "Upper")


def test_an_unreachable_server_is_a_clear_error_without_the_password() -> None:
    """Nothing listens on the port: the error names host, port and database, says what to
    check, and never shows the password."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(StoreError) as info:
            PostgresStore(
                f"host=127.0.0.1 port={port} dbname=app user=u password=sekrit", "replication"
            )
    text = str(info.value)
    assert f"127.0.0.1:{port}/app" in text and "cannot reach the database" in text
    assert "sekrit" not in text


def test_a_missing_database_is_a_clear_error(pg_schema: str) -> None:
    with pytest.raises(StoreError, match="the database does not exist"):
        PostgresStore(f"{DSN} dbname=no_such_db_{pg_schema}", pg_schema)


def test_missing_permissions_are_a_clear_error(pg_schema: str) -> None:
    """A role that may log in but not create a schema is told which privileges it needs."""
    role = f"test_role_{uuid.uuid4().hex[:12]}"
    with admin() as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        with pytest.raises(StoreError, match="permission denied.*needs CREATE on the database"):
            PostgresStore(f"{dsn_for(pg_schema)} user={role}", pg_schema)
    finally:
        with admin() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            conn.execute(f'DROP ROLE "{role}"')


def test_describe_dsn_never_shows_the_password() -> None:
    assert describe_dsn("postgresql://u:pw@db1:6000/app") == "db1:6000/app"
    assert describe_dsn("host=db2 dbname=x password=pw") == "db2:5432/x"


# -- tokens under concurrency --------------------------------------------------------------


def test_concurrent_writers_get_contiguous_tokens_in_commit_order(pg_schema: str) -> None:
    """Eight stores (eight sessions, as eight masters) append to two streams at once, each
    batch touching the streams in a different order: no deadlock, no error, and the tokens
    of each stream are 1..N without a gap or a repeat, each batch's tokens consecutive per
    stream, and every row stored under the token its writer was told."""
    stores = [PostgresStore(dsn_for(pg_schema), pg_schema) for _ in range(8)]
    told: dict[tuple[str, int], str] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def write(i: int, s: PostgresStore) -> None:
        try:
            for n in range(40):
                batch = [
                    ("a", [f'"{i}-{n}-a1"']), ("b", [f'"{i}-{n}-b"']), ("a", [f'"{i}-{n}-a2"'])
                ]
                if (i + n) % 2:
                    batch.reverse()
                tokens = s.append(batch, 0)
                by_stream: dict[str, list[int]] = {}
                for (name, _), token in zip(batch, tokens, strict=True):
                    by_stream.setdefault(name, []).append(token)
                assert by_stream["a"][1] == by_stream["a"][0] + 1
                with lock:
                    for (name, rows), token in zip(batch, tokens, strict=True):
                        told[(name, token)] = rows[0]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        assert stores[0].head("a") == 8 * 40 * 2 and stores[0].head("b") == 8 * 40
        for name in ("a", "b"):
            entries = stores[0].read(name, 0, 10**6, 10**6)
            assert [e.token for e in entries] == list(range(1, stores[0].head(name) + 1))
            assert all(told[(name, e.token)] == e.rows[0] for e in entries)
    finally:
        for s in stores:
            s.close()


# -- damage ----------------------------------------------------------------------------------


def test_a_damaged_token_is_reported_and_what_precedes_it_served(store: PostgresStore) -> None:
    store.append([("s", ["1"]), ("s", ["2"]), ("s", ["3"])], 0)
    with admin() as conn:
        conn.execute(f"UPDATE \"{store.schema}\".entries SET rows = 'X' WHERE token = 2")
    assert store.read("s", 0, 3, 10) == [Entry(1, ("1",))]
    with pytest.raises(DamagedEntry, match="token 2 of stream 's'.*CRC32"):
        store.read("s", 1, 3, 10)


# -- notifications ---------------------------------------------------------------------------


def test_wait_for_change_wakes_for_other_writers_only(pg_schema: str) -> None:
    """The first wait reports a change (the listener was just made: something may have been
    missed); then a store is woken by another store's commit, not by its own, and not by a
    rolled-back append."""
    a = PostgresStore(dsn_for(pg_schema), pg_schema)
    b = PostgresStore(dsn_for(pg_schema), pg_schema)
    try:
        assert a.wait_for_change(0.01) is True
        assert a.wait_for_change(0.05) is False
        a.append([("s", ["mine"])], 0)
        assert a.wait_for_change(0.2) is False
        with pytest.raises(ValueError):
            b.append([("s", ["ok"]), ("s", [])], 0)
        assert a.wait_for_change(0.2) is False
        b.append([("s", ["theirs"])], 0)
        b.append([("s", ["theirs again"])], 0)
        assert a.wait_for_change(5) is True
        # The second notification may come with the first or a moment later; then quiet.
        assert sum(a.wait_for_change(0.2) for _ in range(3)) <= 1
    finally:
        a.close_listener()
        a.close()
        b.close()


def test_a_lost_listener_reports_a_change_and_listens_again(pg_schema: str) -> None:
    a = PostgresStore(dsn_for(pg_schema), pg_schema)
    b = PostgresStore(dsn_for(pg_schema), pg_schema)
    try:
        a.wait_for_change(0.01)
        terminate(a)
        assert a.wait_for_change(1) is True  # lost: something may have been missed
        assert a.wait_for_change(0.01) is True  # listening anew
        b.append([("s", ["x"])], 0)
        assert a.wait_for_change(5) is True
    finally:
        a.close_listener()
        a.close()
        b.close()


# -- connection loss -------------------------------------------------------------------------


def test_the_store_reconnects_after_its_connections_are_terminated(store: PostgresStore) -> None:
    """After pg_terminate_backend on every connection of the store, the next append and
    read work at once (a write that failed before its COMMIT is run again on a new
    connection) and nothing committed before is lost."""
    assert store.append([("s", ["1"])], 0) == [1]
    assert terminate(store) >= 1
    assert store.append([("s", ["2"])], 0) == [2]
    assert terminate(store) >= 1
    assert store.read("s", 0, 10, 10) == [Entry(1, ("1",)), Entry(2, ("2",))]
    assert store.head("s") == 2


def test_a_store_whose_server_is_away_raises_store_errors_then_recovers(
    pg_schema: str,
) -> None:
    """Through a proxy that the test cuts: appends and reads raise StoreError naming the
    server while it is away; once it is back the same store works again."""
    from proxy import TcpProxy

    params = psycopg.conninfo.conninfo_to_dict(DSN)
    with TcpProxy(str(params.get("host", "127.0.0.1")), int(params.get("port", 5432))) as proxy:
        dsn = f"{dsn_for(pg_schema)} host=127.0.0.1 port={proxy.port}"
        store = PostgresStore(dsn, pg_schema)
        try:
            assert store.append([("s", ["1"])], 0) == [1]
            proxy.cut()
            with pytest.raises(StoreError, match=f"127.0.0.1:{proxy.port}/.*cannot reach"):
                store.append([("s", ["lost"])], 0)
            with pytest.raises(StoreError, match="cannot reach"):
                store.head("s")
            proxy.restore()
            assert store.append([("s", ["2"])], 0) == [2]
            assert store.read("s", 0, 9, 9) == [Entry(1, ("1",)), Entry(2, ("2",))]
        finally:
            store.close()


# -- the master opens it from its configuration -----------------------------------------------


def test_open_store_opens_the_configured_postgres_store(pg_schema: str) -> None:
    from replication.config import master_config_from_text
    from replication.master.app import open_store

    config = master_config_from_text(
        f"store: {{type: postgres, dsn: '{dsn_for(pg_schema)}', schema: {pg_schema}}}\n"
    )
    store = open_store(config)
    try:
        assert isinstance(store, PostgresStore) and store.schema == pg_schema
    finally:
        store.close()


def test_open_store_refuses_with_a_service_error(pg_schema: str) -> None:
    import dataclasses

    from replication.config import StoreConfig, master_config_from_text
    from replication.master.app import ServiceError, open_store

    bad_schema = dataclasses.replace(
        master_config_from_text(f"store: {{type: postgres, dsn: '{DSN}'}}"),
        store=StoreConfig("postgres", dsn=DSN, schema="A-b"),
    )  # built past the configuration's own check
    with pytest.raises(ServiceError, match="store.schema: schema 'A-b'"):
        open_store(bad_schema)
    bad_dsn = master_config_from_text("store: {type: postgres, dsn: 'host=x nonsense'}")
    with pytest.raises(ServiceError, match="cannot open the store: PostgreSQL store: malformed"):
        open_store(bad_dsn)
