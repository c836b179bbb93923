"""``replication.embed`` builds a master's and a worker's service trees from a configuration
object and/or keyword arguments, checked with the configuration file's messages, on the
reactor given (the global one only when asked for, at call time), with the store threads,
positions, endpoints and metrics registry created for the caller."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.testing import MemoryReactorClock

from replication.config import (
    ConfigError,
    MasterConfig,
    StoreConfig,
    WorkerConfig,
    WorkerStream,
    master_config_from_text,
    worker_config_from_text,
)
from replication.embed import config_from, master_service_from, worker_service_from
from replication.master.app import HistoryMarker, MasterRunner, StoreThreads
from replication.services import ListeningService
from replication.store.memory import MemoryStore
from replication.worker.positions import MemoryPositions, PositionFile

ROOT = Path(__file__).resolve().parent.parent
LISTEN = "tcp:19092:interface=127.0.0.1"


def handler(stream: str, token: int, rows: list[object]) -> None:
    """A handler that does nothing (the trees here never connect)."""


def test_keyword_arguments_build_a_master_that_listens_on_the_given_reactor() -> None:
    """Keywords named like MasterConfig's fields (a section as a mapping, a list as a
    tuple) give the same configuration as the dataclasses; starting the tree listens on the
    reactor given, and stopping it leaves no timer behind."""
    reactor = MemoryReactorClock()
    service = master_service_from(
        reactor=reactor, listen=LISTEN, http_listen=None, store={"type": "memory"},
        streams=["events"],
    )
    assert service.master.config == MasterConfig(
        listen=LISTEN, http_listen=None, store=StoreConfig(type="memory"), streams=("events",),
    )
    assert [type(c) for c in service] == [MasterRunner, ListeningService]
    service.startService()
    listening: list[object] = []
    service.when_listening().addCallback(listening.append)
    assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [
        (19092, "127.0.0.1"),
    ]
    assert listening == [None]
    stopped: list[object] = []
    service.stopService().addCallback(stopped.append)
    assert stopped == [None]
    assert reactor.getDelayedCalls() == []


def test_keywords_replace_the_fields_of_a_given_configuration() -> None:
    """A configuration object and keywords together: the keywords win, the other fields stay
    the object's."""
    base = MasterConfig(server_name="m1", listen=LISTEN, streams=("a",))
    service = master_service_from(
        base, reactor=MemoryReactorClock(), stream_store=MemoryStore(), http_listen=None,
        streams=("b",),
    )
    assert service.master.config.server_name == "m1"
    assert service.master.config.listen == LISTEN
    assert service.master.config.streams == ("b",)
    assert service.master.config.http_listen is None


def test_an_unknown_keyword_gets_the_configuration_files_message() -> None:
    """A misspelt key is refused before anything is built, with the message a file gets
    (the closest key suggested), at the key's path; inside a section too."""
    with pytest.raises(ConfigError) as from_keyword:
        master_service_from(reactor=MemoryReactorClock(), server_nam="m")
    with pytest.raises(ConfigError) as from_file:
        master_config_from_text("server_nam: m\n")
    assert from_keyword.value.message == from_file.value.message
    assert str(from_keyword.value) == "server_nam: unknown key 'server_nam'; did you mean " \
        "'server_name'?"
    with pytest.raises(ConfigError) as in_section:
        master_service_from(reactor=MemoryReactorClock(), store={"tpye": "memory"})
    assert (in_section.value.path, in_section.value.message) == (
        "store.tpye", "unknown key 'tpye'; did you mean 'type'?",
    )


def test_a_bad_value_gets_the_configuration_files_message() -> None:
    """A value out of bounds (max_line_bytes one below its minimum of 1024) is the same
    ConfigError, path and message, as in a worker's file; 1024 itself is accepted."""
    with pytest.raises(ConfigError) as from_keyword:
        worker_service_from(
            reactor=MemoryReactorClock(), handler=handler, positions=MemoryPositions(),
            streams=["events"], max_line_bytes=1023,
        )
    with pytest.raises(ConfigError) as from_file:
        worker_config_from_text("streams: [events]\nlimits: {max_line_bytes: 1023}\n")
    assert (from_keyword.value.path, from_keyword.value.message) == (
        from_file.value.path, from_file.value.message,
    )
    service = worker_service_from(
        reactor=MemoryReactorClock(), handler=handler, positions=MemoryPositions(),
        streams=["events"], max_line_bytes=1024, max_token_bytes=1024,
    )
    assert service.worker.config.max_line_bytes == 1024


def test_a_worker_needs_a_stream() -> None:
    """Without ``streams`` there is nothing to follow: a ConfigError at ``streams``."""
    with pytest.raises(ConfigError) as error:
        worker_service_from(reactor=MemoryReactorClock(), handler=handler)
    assert str(error.value) == "streams: no streams to follow"


def test_a_worker_dials_its_master_with_positions_in_its_file(tmp_path: Path) -> None:
    """Stream names become WorkerStreams; the handler given is the worker's; positions are a
    PositionFile at ``position_file``; starting dials the master's host and port on the
    reactor given, and serves metrics when ``metrics_listen`` is set."""
    reactor = MemoryReactorClock()
    registry = CollectorRegistry()
    service = worker_service_from(
        reactor=reactor, handler=handler, registry=registry, name="w1",
        master="tcp:host=127.0.0.1:port=19092", streams=["a", WorkerStream("b", "latest")],
        position_file=str(tmp_path / "w1.positions"),
        metrics_listen="tcp:19094:interface=127.0.0.1",
    )
    worker = service.worker
    assert worker.config.streams == (WorkerStream("a"), WorkerStream("b", "latest"))
    assert worker.handler is handler
    assert isinstance(worker.positions, PositionFile)
    assert worker.metrics.registry is registry
    service.startService()
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("127.0.0.1", 19092)]
    assert [port for port, *_ in reactor.tcpServers] == [19094]
    assert (tmp_path / "w1.positions").exists()
    service.stopService()
    worker.positions.close()


def test_a_worker_without_a_handler_imports_the_configured_one() -> None:
    """``handler=None`` loads the configuration's ``handler`` (here the default,
    ``replication.handlers:print_json``); MemoryPositions keep the worker off the disk."""
    from replication.handlers import print_json

    service = worker_service_from(
        WorkerConfig(streams=(WorkerStream("events"),)), reactor=MemoryReactorClock(),
        positions=MemoryPositions(),
    )
    assert service.worker.handler is print_json


def test_a_sqlite_master_gets_its_store_threads(tmp_path: Path) -> None:
    """A SQLite store runs in thread pools the tree creates and starts first, with its
    history marker; the database is created at ``store.path``."""
    database = tmp_path / "data" / "streams.sqlite3"
    service = master_service_from(
        reactor=MemoryReactorClock(), listen=LISTEN, http_listen=None,
        store={"type": "sqlite", "path": str(database)},
    )
    try:
        assert [type(c) for c in service] == [
            StoreThreads, HistoryMarker, MasterRunner, ListeningService,
        ]
        assert database.exists()
    finally:
        service.master.store.close()


def test_config_from_leaves_checking_to_the_validators() -> None:
    """``config_from`` only replaces fields: a value out of bounds passes through it."""
    config = config_from(WorkerConfig(), {"max_line_bytes": 1})
    assert config == WorkerConfig(max_line_bytes=1)


def test_importing_the_module_installs_no_reactor() -> None:
    """``replication.embed`` looks the global reactor up only when a tree is built without
    one, so a program can install asyncio's reactor after importing it."""
    code = (
        "import sys, replication.embed; "
        "assert 'twisted.internet.reactor' not in sys.modules, 'reactor imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_the_package_exports_the_builders_without_importing_twisted_first() -> None:
    """``from replication import master_service_from, worker_service_from`` gives
    ``replication.embed``'s functions; a bare ``import replication`` imports no Twisted."""
    code = (
        "import sys, replication; "
        "assert not [m for m in sys.modules if m.startswith('twisted')], 'twisted imported'; "
        "from replication import master_service_from, worker_service_from; "
        "from replication import embed; "
        "assert master_service_from is embed.master_service_from; "
        "assert worker_service_from is embed.worker_service_from"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
