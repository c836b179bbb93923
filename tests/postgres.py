"""The PostgreSQL server the tests use, and a fresh schema per test.

The server is ``REPLICATION_TEST_POSTGRES`` (a libpq connection string; default
``host=127.0.0.1 port=5432 dbname=test user=postgres``, what CI and the development machines
run). Without it, or without psycopg, the PostgreSQL tests are skipped, unless
``REPLICATION_REQUIRE_POSTGRES=1`` (CI sets it) makes them fail instead.

:func:`temporary_schema` makes the ``pg_schema`` fixture of the test modules: a schema name
nobody else uses, dropped with everything in it
(``DROP SCHEMA ... CASCADE``) after the test, and the backends the test left connected to it
are terminated first so that the drop never waits.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

DSN = os.environ.get(
    "REPLICATION_TEST_POSTGRES", "host=127.0.0.1 port=5432 dbname=test user=postgres"
)
_REQUIRED = os.environ.get("REPLICATION_REQUIRE_POSTGRES") == "1"


def _unavailable(reason: str) -> None:
    if _REQUIRED:
        pytest.fail(f"PostgreSQL is required (REPLICATION_REQUIRE_POSTGRES=1): {reason}")
    pytest.skip(f"PostgreSQL not available: {reason}")


def admin() -> Any:
    """An autocommit connection to the test database (skips or fails the test without one)."""
    try:
        import psycopg
    except ImportError:
        _unavailable("psycopg is not installed (pip install '.[postgres]')")
    try:
        return psycopg.connect(DSN, autocommit=True, connect_timeout=5)
    except psycopg.Error as e:
        _unavailable(f"{DSN}: {e}")
    raise AssertionError("unreachable")


def drop_schema(schema: str) -> None:
    """Terminate the sessions that listen on or use ``schema``'s store and drop it."""
    with admin() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND pid <> pg_backend_pid()",
            (f"replication-test-{schema}",),
        )
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def dsn_for(schema: str) -> str:
    """The test DSN, naming the test's schema as the application of every connection (how
    :func:`drop_schema` finds them)."""
    return f"{DSN} application_name=replication-test-{schema}"


def temporary_schema() -> Iterator[str]:
    """A new, unused schema name; dropped, with everything in it, when the generator ends.
    Test modules make it a fixture: ``yield from temporary_schema()``."""
    admin().close()  # skip (or fail) at once if there is no server
    schema = f"test_{uuid.uuid4().hex[:16]}"
    try:
        yield schema
    finally:
        drop_schema(schema)
