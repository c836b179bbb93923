# twisted.internet.testing has no annotations:
# mypy: disable-error-code="no-untyped-call"
"""Operations: the JSON log format (one object per line), the worker's ``/health``, the
standard ``process_*`` metrics on master and worker registries, the startup lines saying
where the master's and worker's files are, and a real worker process that cannot reach its
master logging it in JSON, serving /health and process metrics, and a line on SIGTERM."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

import prometheus_client
import pytest
from twisted.internet.testing import MemoryReactorClock

from helpers import raw_request
from processes import (
    HOST,
    Process,
    free_ports,
    http_request,
    replication_command,
    wait_until,
)
from replication import __version__
from replication.admin import metrics_resource
from replication.cli import _log_master_paths
from replication.config import MasterConfig, StoreConfig, WorkerConfig, WorkerStream
from replication.logformat import JsonFormatter, formatter
from replication.master.app import master_service
from replication.metrics import PROCESS_METRICS, WorkerMetrics, process_registry
from replication.worker import Worker
from replication.worker.positions import MemoryPositions

DOCS = Path(__file__).resolve().parent.parent / "docs" / "operations.rst"


def record(message: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord(
        "replication.worker.reporting", logging.WARNING, __file__, 1, message, args,
        exc_info,  # type: ignore[arg-type]
    )


# -- the JSON log format ---------------------------------------------------------------------


def test_json_lines_carry_time_level_logger_and_message() -> None:
    """A record is one line of JSON with ``time`` (ISO 8601 UTC, milliseconds), ``level``,
    ``logger`` and the formatted ``message``, and no ``exception`` when there is none."""
    entry = record("cannot connect to master %s: %s", "tcp:host=m:port=1", "refused")
    entry.created, entry.msecs = 1764189065.25, 250.0
    line = JsonFormatter().format(entry)
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2025-11-26T20:31:05.250Z",
        "level": "WARNING",
        "logger": "replication.worker.reporting",
        "message": "cannot connect to master tcp:host=m:port=1: refused",
    }


def test_json_lines_carry_the_exception_text_on_the_same_line() -> None:
    """A record with an exception has its traceback in ``exception``; the line stays one
    line (JSON escapes the newlines)."""
    try:
        raise ValueError("bad row\nsecond line")
    except ValueError:
        entry = record("handler failed", exc_info=sys.exc_info())
    line = JsonFormatter().format(entry)
    assert len(line.splitlines()) == 1
    document = json.loads(line)
    assert document["message"] == "handler failed"
    assert document["exception"].startswith("Traceback (most recent call last):")
    assert document["exception"].endswith("ValueError: bad row\nsecond line")


def test_formatter_names_the_formats() -> None:
    """``text`` is the classic line, ``json`` the JSON formatter; anything else is refused."""
    entry = record("hello %d", 1)
    assert (
        formatter("text").format(entry).endswith(" WARNING replication.worker.reporting: hello 1")
    )
    assert json.loads(formatter("json").format(entry))["message"] == "hello 1"
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        formatter("xml")


def test_log_format_is_a_config_key_and_a_flag() -> None:
    """``log.format`` reads ``text`` or ``json`` on master and worker; other values are
    refused naming the key."""
    from replication.config import (
        ConfigError,
        master_config_from_text,
        worker_config_from_text,
    )

    assert master_config_from_text("log: {format: json}\n").log_format == "json"
    assert worker_config_from_text("log:\n  format: text\n").log_format == "text"
    assert MasterConfig().log_format == WorkerConfig().log_format == "text"
    with pytest.raises(ConfigError, match=r"log\.format.*must be text or json, got 'xml'"):
        worker_config_from_text("log: {format: xml}\n")


# -- the worker's /health and process metrics --------------------------------------------------


def test_the_worker_health_answers_ok_and_whether_it_is_connected() -> None:
    """``GET /health`` on the worker's listener answers 200 with its name and version,
    ``connected: false`` before a connection and the master's name once connected;
    unknown paths still answer JSON 404."""
    from twisted.internet.testing import StringTransport

    clock = MemoryReactorClock()
    worker = Worker(
        WorkerConfig(name="w-1", streams=(WorkerStream("events"),)), lambda s, t, r: None,
        MemoryPositions(), clock,
    )
    resource = metrics_resource(worker.metrics.registry, health=worker.health)
    status, headers, body = raw_request(resource, "GET", "/health")
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert json.loads(body) == {
        "status": "ok", "version": __version__, "name": "w-1", "connected": False, "master": None,
        "endpoint": None, "origin": None,
    }
    connection = worker.factory().buildProtocol(None)
    connection.makeConnection(StringTransport())
    connection.dataReceived(b"SERVER master-a\nVERSION 1\n")
    assert json.loads(raw_request(resource, "GET", "/health")[2])["master"] == "master-a"
    assert json.loads(raw_request(resource, "GET", "/health")[2])["connected"] is True
    status, _, body = raw_request(resource, "GET", "/nothing")
    assert status == 404 and "error" in json.loads(body)
    status, _, body = raw_request(resource, "POST", "/health")
    assert status == 405 and "error" in json.loads(body)


def test_a_metrics_resource_without_health_has_no_health_route() -> None:
    """``metrics_resource(registry)`` alone still serves only ``/metrics``."""
    status, _, _ = raw_request(
        metrics_resource(prometheus_client.CollectorRegistry()), "GET", "/health"
    )
    assert status == 404


def metric_names(registry: prometheus_client.CollectorRegistry) -> set[str]:
    text = prometheus_client.generate_latest(registry).decode()
    return set(re.findall(r"^# TYPE (\S+)", text, re.MULTILINE))


def test_process_metrics_are_on_the_process_registry_not_the_global_one() -> None:
    """``process_registry()`` exposes every standard ``process_*`` metric; the global
    registry is not where they come from (it is left as it was)."""
    before = set(prometheus_client.REGISTRY._collector_to_names)
    registry = process_registry()
    assert set(PROCESS_METRICS) <= metric_names(registry)
    assert set(prometheus_client.REGISTRY._collector_to_names) == before
    worker = Worker(
        WorkerConfig(streams=(WorkerStream("events"),)), lambda s, t, r: None, MemoryPositions(),
        MemoryReactorClock(), metrics=WorkerMetrics(registry),
    )
    names = metric_names(worker.metrics.registry)
    assert set(PROCESS_METRICS) <= names and "replication_worker_connected" in names


def test_a_master_service_exports_process_metrics_by_default() -> None:
    """A master built by ``master_service`` without a registry has the ``process_*``
    metrics beside its own."""
    service = master_service(MasterConfig(store=StoreConfig(type="memory")), MemoryReactorClock())
    names = metric_names(service.master.metrics.registry)
    assert set(PROCESS_METRICS) <= names and "replication_stream_head_token" in names


def test_process_metrics_are_documented() -> None:
    """docs/operations.rst names every ``process_*`` metric."""
    documented = set(re.findall(r"``(process_[a-z_]+)``", DOCS.read_text(encoding="utf-8")))
    assert set(PROCESS_METRICS) <= documented


# -- startup lines ---------------------------------------------------------------------------


def test_the_master_says_where_its_default_database_is(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the defaults, the master logs the absolute path of ``streams.sqlite3`` in
    ``./replication-data``, saying it is relative to the current directory."""
    caplog.set_level(logging.INFO, logger="replication")
    monkeypatch.chdir(tmp_path)
    _log_master_paths(MasterConfig())
    database = tmp_path / "replication-data" / "streams.sqlite3"
    assert caplog.messages == [
        (
            f"store: sqlite database {database} (./replication-data/streams.sqlite3 in the "
            f"current directory; data_dir {tmp_path / 'replication-data'})"
        ),
    ]


def test_the_master_says_where_a_configured_database_is_or_that_none_is(
    caplog: pytest.LogCaptureFixture, tmp_path: Path,
) -> None:
    """An absolute ``store.path`` is logged as it is; the memory store says nothing is
    written to disk."""
    caplog.set_level(logging.INFO, logger="replication")
    path = str(tmp_path / "x.sqlite3")
    _log_master_paths(MasterConfig(store=StoreConfig(path=path)))
    _log_master_paths(MasterConfig(store=StoreConfig(type="memory")))
    assert caplog.messages == [
        f"store: sqlite database {path} (store.path)",
        "store: memory (nothing is written to disk)",
    ]


# -- a real worker process ---------------------------------------------------------------------


def test_a_worker_process_that_cannot_reach_its_master_logs_it_in_json(tmp_path: Path) -> None:
    """``replication worker --log-format json`` with no master listening: every stderr line
    is a JSON object; it says where its default position file is (absolute), warns that it
    cannot connect naming the master, serves ``/health`` (connected: false) and the
    ``process_*`` metrics, and logs its stop on SIGTERM."""
    master_port, metrics_port = free_ports(2)
    master = f"tcp:host={HOST}:port={master_port}"
    worker = Process(
        "worker",
        replication_command(
            "worker", "--master", master, "--stream", "events", "--name", "w-json",
            "--log-format", "json", "--metrics-listen", f"tcp:{metrics_port}:interface={HOST}",
        ),
        stdout=tmp_path / "worker.out", stderr=tmp_path / "worker.err", cwd=tmp_path,
    )
    with worker:
        def lines() -> list[dict[str, str]]:
            return [json.loads(line) for line in worker.stderr_text().splitlines()]

        wait_until(
            lambda: any("cannot connect" in e["message"] for e in lines()), 20,
            "a failed connect line", alive=[worker],
        )
        status, health = http_request(metrics_port, "GET", "/health")
        assert status == 200 and health["connected"] is False and health["name"] == "w-json"
        status, text = http_request(metrics_port, "GET", "/metrics")
        assert status == 200 and "process_resident_memory_bytes" in text
        assert worker.terminate() == 0
        entries = lines()
    assert all(set(e) >= {"time", "level", "logger", "message"} for e in entries)
    position_file = os.path.join(str(tmp_path), "w-json.positions")
    started = [e["message"] for e in entries if e["message"].startswith("worker w-json following")]
    assert (
        started
        and f"positions in {position_file} (w-json.positions in the current directory" in started[0]
    )
    failed = [e for e in entries if "cannot connect" in e["message"]]
    assert failed[0]["level"] == "WARNING"
    assert failed[0]["message"].startswith(f"cannot connect to master {master}: ")
    assert (
        entries[-1]["message"] == "worker w-json stopped; positions recorded: events at no position"
    )


def test_a_master_process_logs_its_database_path_in_json_and_its_stop(tmp_path: Path) -> None:
    """``replication master --log-format json --store sqlite`` started in a directory logs,
    as JSON lines, the absolute path of its default database under ``./replication-data``,
    serves the ``process_*`` metrics, and logs ``master ... stopped`` on SIGTERM."""
    from processes import start_master

    port, http_port = free_ports(2)
    with start_master(
        tmp_path, "m-json", port, http_port, "--store", "sqlite", "--log-format", "json",
        "--server-name", "m-json",
    ) as master:
        status, text = http_request(http_port, "GET", "/metrics")
        assert status == 200 and "process_open_fds" in text
        assert master.terminate() == 0
        entries = [json.loads(line) for line in master.stderr_text().splitlines()]
    messages = [e["message"] for e in entries]
    database = tmp_path / "replication-data" / "streams.sqlite3"
    assert messages[0] == (
        f"store: sqlite database {database} (./replication-data/streams.sqlite3 in the current "
        f"directory; data_dir {tmp_path / 'replication-data'})"
    )
    assert database.exists()
    assert messages[1] == "reactor: default (auto)"  # no application commands: epoll
    assert "master m-json ready (store: sqlite)" in messages
    assert messages[-1] == "master m-json stopped"
