"""The master's ``/status`` and ``/health``, and ``replication status``: in memory (MemoryPipe
+ Clock, raw HTTP through the real Site), through the command line against a small HTTP
server, and once end to end against real processes."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

# tests/ is not a package, so pytest puts tests/ itself on sys.path.
from helpers import ManualRunner, raw_request, request
from processes import (
    HOST,
    Process,
    free_ports,
    http_request,
    publish,
    read_positions,
    replication_command,
    start_master,
    start_sqlite_master,
    wait_until,
    worker_command,
)
from replication.admin import admin_resource, master_status
from replication.cli import format_status, main
from replication.cluster.identity import check_fingerprint
from replication.config import LimitsConfig, MasterConfig
from replication.master import Master, MasterConnection
from replication.store.sqlite import SqliteStore
from replication.testing import Harness, MemoryPipe, Recording
from replication.worker import WorkerConnection


def lagging(tmp_path: Path) -> tuple[Harness, MemoryPipe]:
    """A master with 200 tokens and worker w1 that stopped reading part way through its
    catch-up."""
    h = Harness(tmp_path, limits=LimitsConfig(catchup_page_rows=10))
    for i in range(200):
        h.publish("events", [{"i": i, "pad": "x" * 100}])
    worker = h.worker(Recording())
    pipe = MemoryPipe(MasterConnection(h.master), WorkerConnection(worker), high_water=2048)
    pipe.pump(rounds=2)
    pipe.client_reads = False
    h.clock.advance(0)
    return h, pipe


def cut_off_and_back(tmp_path: Path) -> Harness:
    """A master whose worker w1 was cut off as failed to keep up and reconnected."""
    h = Harness(tmp_path, limits=LimitsConfig(max_buffer_bytes=64 * 1024))
    worker = h.worker(Recording())
    pipe = h.connect(worker, high_water=16 * 1024)
    h.run(pipe)
    pipe.client_reads = False
    connection = pipe.server
    assert isinstance(connection, MasterConnection)
    while connection.close_reason is None:
        h.publish("events", [{"payload": "x" * 200}])
    h.clock.advance(h.config.keepalive.close_timeout)
    h.clock.advance(30)
    h.run(h.connect(worker))
    return h


def test_status_shows_a_lagging_workers_position_and_lag(tmp_path: Path) -> None:
    """/status lists the stream (head, oldest, retained) and the connection with the last
    token sent, the lag behind the head and that it is still catching up."""
    h, pipe = lagging(tmp_path)
    h.clock.advance(90)
    status, body = request(h.master, "GET", "/status")
    assert status == 200
    assert body["server_name"] == "master"
    assert body["uptime_seconds"] == 90
    assert body["streams"] == [
        {"name": "events", "origin": h.store.origin_id, "local": True, "head": 200, "oldest": 1,
         "retained_rows": 200, "rows_published": 200, "created": 0.0}
    ]
    assert body["cluster"] is None
    (connection,) = body["connections"]
    assert connection["worker"] == "w1"
    assert (connection["role"], connection["origin"]) == ("worker", None)
    assert connection["address"] == "127.0.0.1:40000"
    assert connection["connected_seconds"] == 90
    (stream,) = connection["streams"]
    assert stream["name"] == "events" and stream["live"] is False
    assert 0 < stream["position"] < 200
    assert stream["lag"] == 200 - stream["position"]
    assert connection["buffered_bytes"] == pipe.server.queued_bytes  # type: ignore[attr-defined]
    assert body["workers"] == [{
        "name": "w1", "connected": 1, "connects": 1, "disconnects": {},
        "last_disconnect_reason": None, "last_disconnect_at": None,
    }]
    text = format_status(body)
    assert f"events@{stream['position']} lag {stream['lag']} (catching up)" in text
    assert "w1      127.0.0.1:40000  1m 30s" in text


def test_status_shows_a_cut_off_workers_reconnect(tmp_path: Path) -> None:
    """After a cut-off and a reconnect, /status shows two connects for w1, the reason it
    was last disconnected and when; the new connection is live with no lag. Once it is
    gone too, no timer is left."""
    h = cut_off_and_back(tmp_path)
    body = master_status(h.master)
    (worker,) = body["workers"]
    assert worker["name"] == "w1"
    assert worker["connects"] == 2 and worker["connected"] == 1
    assert worker["disconnects"] == {"failed to keep up": 1}
    assert worker["last_disconnect_reason"] == "failed to keep up"
    assert body["now"] - worker["last_disconnect_at"] == 30
    (connection,) = body["connections"]
    assert connection["streams"] == [
        {
            "name": "events", "position": h.master.head("events"), "lag": 0, "live": True,
            "handled": None, "handled_lag": None,
        }
    ]
    text = format_status(body)
    assert "WORKER  OPEN  CONNECTS  LAST DISCONNECT" in text
    assert "w1      1     2         failed to keep up, 30s ago" in text
    assert h.disconnect_all() == []
    (worker,) = master_status(h.master)["workers"]
    assert (worker["connected"], worker["disconnects"]) == (
        0,
        {"failed to keep up": 1, "closed by peer": 1},
    )


def test_status_names_the_origin_and_the_process(tmp_path: Path) -> None:
    """/status gives the master's origin id (its store's) and this process's fingerprint,
    and `replication status` prints both under the title line."""
    h = Harness(tmp_path)
    status, body = request(h.master, "GET", "/status")
    assert status == 200
    assert body["origin_id"] == h.store.origin_id
    assert body["fingerprint"] == h.master.fingerprint == check_fingerprint(body["fingerprint"])
    lines = format_status(body).splitlines()
    assert lines[0].startswith("master master (replication ")
    assert lines[1] == f"origin {h.store.origin_id}, process {h.master.fingerprint}"


def test_a_restart_on_the_same_store_keeps_the_origin_with_a_new_fingerprint(
    tmp_path: Path,
) -> None:
    """Two master processes, one after the other, on one SQLite file: the same origin id,
    two fingerprints. Until the store is open (on the writer thread) the origin id is null."""
    path = str(tmp_path / "streams.sqlite3")
    seen = []
    for _ in range(2):
        runner = ManualRunner()
        master = Master(MasterConfig(), SqliteStore(path), Clock(), run_blocking=runner)
        assert master_status(master)["origin_id"] is None
        runner.run_all()
        seen.append((master_status(master)["origin_id"], master_status(master)["fingerprint"]))
        master.close()
        runner.run_all()
    (origin1, fingerprint1), (origin2, fingerprint2) = seen
    assert origin1 is not None and origin1 == origin2
    assert fingerprint1 != fingerprint2


def test_the_status_command_reads_a_status_without_identity() -> None:
    """`replication status` against a master older than origin ids prints '?' for them."""
    body = {
        "server_name": "old", "version": "0.0.9", "now": 0.0, "uptime_seconds": 5.0,
        "streams": [], "connections": [],
    }
    assert format_status(body).splitlines()[:2] == [
        "master old (replication 0.0.9), up 5s", "origin ?, process ?",
    ]


def test_health_answers_200_and_metrics_is_text(tmp_path: Path) -> None:
    """/health answers 200 while the master serves; /metrics is Prometheus text."""
    h = Harness(tmp_path)
    assert request(h.master, "GET", "/health")[0] == 200
    status, headers, body = raw_request(
        admin_resource(h.master), "GET", "/metrics"
    )
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=")
    assert b"replication_connections_open 0.0" in body


@pytest.fixture
def status_server(tmp_path: Path) -> Iterator[tuple[str, Harness]]:
    """An HTTP server on 127.0.0.1 answering /status from a lagging in-memory master."""
    h, _ = lagging(tmp_path)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(master_status(h.master)).encode()
            self.send_response(200 if self.path == "/status" else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer((HOST, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}", h
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_status_command_prints_tables_and_json(
    status_server: tuple[str, Harness], capsys: pytest.CaptureFixture[str]
) -> None:
    """replication status --url prints the stream and the lagging worker as tables;
    --json prints the document itself."""
    url, h = status_server
    assert main(["status", "--url", url]) == 0
    out = capsys.readouterr().out
    assert out.startswith("master master (replication ")
    assert "STREAM  HEAD  OLDEST  RETAINED\nevents  200   1       200" in out
    position = master_status(h.master)["connections"][0]["streams"][0]["position"]
    assert f"events@{position} lag {200 - position} (catching up)" in out
    assert main(["status", "--url", url + "/", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["connections"][0]["streams"][0]["lag"] == 200 - position


def test_status_command_reports_an_unreachable_master(capsys: pytest.CaptureFixture[str]) -> None:
    (port,) = free_ports(1)
    assert main(["status", "--url", f"http://{HOST}:{port}", "--timeout", "2"]) == 2
    assert "cannot reach the master" in capsys.readouterr().err


def test_status_and_metrics_of_real_processes(tmp_path: Path) -> None:
    """End to end: a master and a worker with --metrics-listen; `replication status` shows
    the worker following events at the head; both /metrics parse and agree on the rows; the
    worker's HANDLED report reaches the master's handled-lag metric."""
    from prometheus_client.parser import text_string_to_metric_families

    port, http_port, metrics_port = free_ports(3)
    positions = tmp_path / "w1.positions"
    with (
        start_master(tmp_path, "master", port, http_port) as master,
        Process(
            "w1",
            worker_command(
                port, "w1", positions, "--metrics-listen", f"tcp:{metrics_port}:interface={HOST}"
            ),
            stdout=tmp_path / "w1.out",
            stderr=tmp_path / "w1.err",
            cwd=tmp_path,
        ) as worker,
    ):
        token = publish(http_port, "events", [{"a": 1}, {"b": 2}])
        wait_until(
            lambda: (read_positions(positions) or {}).get("events") == token, 20,
            "w1 to handle the token", alive=[master, worker],
        )
        result = subprocess.run(
            replication_command("status", "--url", f"http://{HOST}:{http_port}"),
            capture_output=True, text=True, timeout=60, check=True,
        )
        assert f"events@{token} lag 0" in result.stdout
        assert "w1" in result.stdout

        def samples(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
            status, text = http_request(port, "GET", "/metrics")
            assert status == 200
            return {
                (s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }

        m = samples(http_port)
        w = samples(metrics_port)
        # One token of two rows: one ROWS line (protocol version 3) on both ends.
        key = ("replication_commands_sent_total", frozenset({("command", "ROWS"), ("peer", "w1")}))
        assert m[key] == 1
        key = (
            "replication_commands_received_total",
            frozenset({("command", "ROWS"), ("peer", "master")}),
        )
        assert w[key] == 1
        assert w[("replication_worker_connected", frozenset())] == 1
        handled = (
            "replication_connection_handled_lag_tokens",
            frozenset({("peer", "w1"), ("stream", "events")}),
        )
        wait_until(
            lambda: samples(http_port).get(handled) == 0, 20,
            "the master to show w1's HANDLED report", alive=[master, worker],
        )


def test_a_real_master_keeps_its_origin_across_a_restart_and_a_wiped_store_is_a_new_one(
    tmp_path: Path,
) -> None:
    """End to end on SQLite: /status and the replication_info metric name the same origin
    id; a restart on the same data directory keeps it with a new fingerprint; a restart on
    a wiped data directory is a new origin."""
    from prometheus_client.parser import text_string_to_metric_families

    port, http_port = free_ports(2)
    data = tmp_path / "data"

    def identity() -> tuple[str, str]:
        status, body = http_request(http_port, "GET", "/status")
        assert status == 200
        status, text = http_request(http_port, "GET", "/metrics")
        (info,) = [
            sample for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == "replication_info"
        ]
        assert info.labels["origin"] == body["origin_id"]
        return body["origin_id"], body["fingerprint"]

    runs = []
    for wipe in (False, False, True):
        if wipe:
            for leftover in data.iterdir():
                leftover.unlink()
        with start_sqlite_master(tmp_path, "master", port, http_port, data):
            runs.append(identity())
    (first, f1), (second, f2), (third, f3) = runs
    assert first == second != third
    assert len({f1, f2, f3}) == 3
