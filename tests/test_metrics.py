"""Prometheus metrics of a master and a worker joined in memory: scraped over HTTP from the
real resources, parsed with prometheus_client's own text parser, and checked as rows flow
and as workers connect, lag, are cut off and reconnect."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

# tests/ is not a package, so pytest puts tests/ itself on sys.path.
from helpers import ManualRunner, raw_request
from replication.admin import admin_resource, metrics_resource
from replication.config import LimitsConfig
from replication.master import MasterConnection
from replication.metrics import MASTER_METRICS, WORKER_METRICS, MasterMetrics, WorkerMetrics
from replication.protocol import CLOSED_BY_PEER, CLOSED_LOCALLY
from replication.store.memory import MemoryStore
from replication.testing import Harness, MemoryPipe, Recording
from replication.worker import Worker, WorkerConnection
from replication.worker.connection import HANDLED_INTERVAL

DOCS = Path(__file__).resolve().parent.parent / "docs" / "operations.rst"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Samples by (sample name, labels) and the type of each family."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, types


def scrape_master(h: Harness) -> Samples:
    status, headers, body = raw_request(admin_resource(h.master), "GET", "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    return parse(body.decode())[0]


def scrape_worker(worker: Worker) -> Samples:
    status, _, body = raw_request(metrics_resource(worker.metrics.registry), "GET", "/metrics")
    assert status == 200
    return parse(body.decode())[0]


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def streamed(samples: Samples, name: str, stream: str, h: Harness) -> float | None:
    """A stream family's sample of ``stream`` of the master's own origin."""
    return value(samples, name, stream=stream, origin=h.store.origin_id)


def test_rows_flowing_move_the_stream_and_command_counters(tmp_path: Path) -> None:
    """History goes out as catch-up rows, later publishes as live rows (rows x receivers,
    counted once per publish); ROWS counts per peer agree on both ends; heads, retention,
    positions and the handler counters follow."""
    h = Harness(tmp_path)
    h.publish("events", [{"a": 1}, {"b": 2}])
    h.publish("events", [{"c": 3}])
    w1, w2 = h.worker(Recording(), name="w1"), h.worker(Recording(), name="w2")
    p1, p2 = h.connect(w1), h.connect(w2)
    h.run(p1)
    h.run(p2)
    m = scrape_master(h)
    assert streamed(m, "replication_stream_rows_published_total", "events", h) == 3
    assert streamed(m, "replication_stream_rows_sent_catchup_total", "events", h) == 6
    assert streamed(m, "replication_stream_rows_sent_live_total", "events", h) == 0
    assert streamed(m, "replication_stream_head_token", "events", h) == 2
    assert streamed(m, "replication_stream_oldest_token", "events", h) == 1
    assert streamed(m, "replication_stream_retained_rows", "events", h) == 3
    assert streamed(m, "replication_stream_live_subscribers", "events", h) == 2
    assert value(m, "replication_connections_open") == 1 + 1

    for _ in range(10):
        h.publish("events", [1, 2, 3])
    p1.pump()
    p2.pump()
    m = scrape_master(h)
    assert streamed(m, "replication_stream_rows_published_total", "events", h) == 33
    assert streamed(m, "replication_stream_rows_sent_live_total", "events", h) == 60
    assert streamed(m, "replication_stream_head_token", "events", h) == 12
    for name in ("w1", "w2"):
        # Version 3: the catch-up's two tokens in one ROWS line, then one per publish.
        assert value(m, "replication_commands_sent_total", command="ROWS", peer=name) == 11
        assert value(m, "replication_commands_sent_total", command="RDATA", peer=name) is None
        assert value(m, "replication_commands_sent_total", command="POSITION", peer=name) == 1
        assert value(m, "replication_commands_received_total", command="NAME", peer=name) == 1
        assert value(m, "replication_commands_received_total", command="REPLICATE", peer=name) == 1
        assert value(m, "replication_connection_lag_tokens", peer=name, stream="events") == 0

    w = scrape_worker(w1)
    assert value(w, "replication_commands_received_total", command="ROWS", peer="master") == 11
    assert value(w, "replication_commands_sent_total", command="REPLICATE", peer="master") == 1
    assert value(w, "replication_worker_tokens_handled_total", stream="events") == 12
    assert value(w, "replication_worker_position_token", stream="events") == 12
    assert value(w, "replication_worker_head_token", stream="events") == 12
    assert value(w, "replication_worker_lag_tokens", stream="events") == 0
    assert value(w, "replication_worker_handler_duration_seconds_count", stream="events") == 12
    assert value(w, "replication_worker_connected") == 1
    assert value(w, "replication_worker_reconnects_total") == 0


def test_a_lagging_worker_shows_lag_and_buffered_bytes(tmp_path: Path) -> None:
    """A worker that stops reading while it catches up: the master reports how far behind
    what it has sent is, and the bytes it holds; the worker's own lag is head - position."""
    h = Harness(tmp_path, limits=LimitsConfig(catchup_page_rows=10, max_buffer_bytes=1024 * 1024))
    for i in range(200):
        h.publish("events", [{"i": i, "pad": "x" * 100}])
    worker = h.worker(Recording())
    pipe = MemoryPipe(MasterConnection(h.master), WorkerConnection(worker), high_water=2048)
    pipe.pump(rounds=3)  # the handshake, REPLICATE, and a page or two delivered
    pipe.client_reads = False
    for _ in range(3):
        h.clock.advance(0)
    m = scrape_master(h)
    lag = value(m, "replication_connection_lag_tokens", peer="w1", stream="events")
    assert lag is not None and 0 < lag < 200
    # Live rows go to a worker that is still catching up only through the catch-up pump.
    assert streamed(m, "replication_stream_live_subscribers", "events", h) == 0

    # Live rows queue in the master once the transport is full.
    live = h.worker(Recording(), name="w2")
    live_pipe = h.connect(live, high_water=1024)
    h.run(live_pipe)
    live_pipe.client_reads = False
    for i in range(50):
        h.publish("events", [{"i": i, "pad": "y" * 100}])
    m = scrape_master(h)
    buffered = value(m, "replication_connection_buffered_bytes", peer="w2")
    assert buffered is not None and buffered > 1000
    assert buffered == live_pipe.server.queued_bytes  # type: ignore[attr-defined]
    assert value(m, "replication_connection_buffer_limit_bytes") == 1024 * 1024
    # The worker knows the head from RDATA: its lag is what it has not handled.
    w = scrape_worker(worker)
    handled = value(w, "replication_worker_position_token", stream="events")
    assert handled is not None
    assert value(w, "replication_worker_lag_tokens", stream="events") == (
        value(w, "replication_worker_head_token", stream="events") or 0
    ) - handled


def test_a_cut_off_worker_is_counted_and_its_reconnect_seen_on_both_ends(tmp_path: Path) -> None:
    """A worker that stops reading live rows is cut off as failed to keep up: the master
    counts the disconnect by reason and peer, keeps the RDATA it sent in the counter, and
    counts the second connect; the worker counts a reconnect and catches up."""
    h = Harness(tmp_path, limits=LimitsConfig(max_buffer_bytes=64 * 1024))
    handler = Recording()
    worker = h.worker(handler)
    pipe = h.connect(worker, high_water=16 * 1024)
    h.run(pipe)
    connection = pipe.server
    assert isinstance(connection, MasterConnection)
    pipe.client_reads = False
    while connection.close_reason is None:
        h.publish("events", [{"payload": "x" * 200}])
    sent_before = value(
        scrape_master(h), "replication_commands_sent_total", command="RDATA", peer="w1"
    )
    h.clock.advance(h.config.keepalive.close_timeout)  # the stalled close is aborted
    assert not pipe.connected
    m = scrape_master(h)
    assert value(m, "replication_disconnects_total", reason="failed_to_keep_up", peer="w1") == 1
    assert value(m, "replication_connections_open") == 0
    assert value(m, "replication_commands_sent_total", command="RDATA", peer="w1") == sent_before
    assert value(m, "replication_commands_sent_total", command="ERROR", peer="w1") == 1
    w = scrape_worker(worker)
    assert value(w, "replication_worker_connected") == 0
    assert value(w, "replication_disconnects_total", reason="closed_by_peer", peer="master") == 1

    h.run(h.connect(worker))
    m = scrape_master(h)
    assert value(m, "replication_peer_connects_total", peer="w1") == 2
    assert value(m, "replication_connections_open") == 1
    assert value(m, "replication_connection_lag_tokens", peer="w1", stream="events") == 0
    w = scrape_worker(worker)
    assert value(w, "replication_worker_reconnects_total") == 1
    assert value(w, "replication_worker_connected") == 1
    assert value(w, "replication_worker_lag_tokens", stream="events") == 0
    assert handler.token_numbers() == list(range(1, h.master.head("events") + 1))


def test_a_local_transport_close_is_closed_locally(tmp_path: Path) -> None:
    """When the worker's transport is closed from its own side (as ClientService does when
    it stops), the worker counts closed_locally and the master closed_by_peer."""
    h = Harness(tmp_path)
    worker = h.worker(Recording())
    pipe = h.connect(worker)
    h.run(pipe)
    pipe.client_transport.loseConnection()
    pipe.pump()
    assert not pipe.connected
    assert pipe.client.close_reason == CLOSED_LOCALLY  # type: ignore[attr-defined]
    assert pipe.server.close_reason == CLOSED_BY_PEER  # type: ignore[attr-defined]
    w = scrape_worker(worker)
    assert value(w, "replication_disconnects_total", reason="closed_locally", peer="master") == 1
    m = scrape_master(h)
    assert value(m, "replication_disconnects_total", reason="closed_by_peer", peer="w1") == 1


def test_ping_timeout_and_too_many_connections_are_reasons(tmp_path: Path) -> None:
    """A worker that pings and then goes silent is cut off for ping timeout; a connection
    over limits.max_connections is refused and counted, unnamed."""
    h = Harness(tmp_path, limits=LimitsConfig(max_connections=1))
    pipe = h.connect(h.worker(Recording()))
    h.run(pipe)
    refused = MemoryPipe(
        MasterConnection(h.master), WorkerConnection(h.worker(Recording(), name="w2"))
    )
    refused.pump()
    h.clock.advance(HANDLED_INTERVAL)  # the worker reports its positions (HANDLED)
    pipe.pump()
    h.clock.advance(h.config.keepalive.ping_interval)  # both sides ping
    pipe.pump()
    pipe.client_reads = pipe.server_reads = False
    h.clock.advance(h.config.keepalive.ping_timeout)
    m = scrape_master(h)
    assert (
        value(m, "replication_disconnects_total", reason="too_many_connections", peer="unnamed")
        == 1
    )
    assert pipe.server.close_reason == "ping timeout"  # type: ignore[attr-defined]
    h.clock.advance(h.config.keepalive.close_timeout)
    m = scrape_master(h)
    assert value(m, "replication_disconnects_total", reason="ping_timeout", peer="w1") == 1
    assert h.clock.getDelayedCalls() == []


def test_peer_labels_are_capped(tmp_path: Path) -> None:
    """With metrics.max_peer_labels 2, the third worker name is reported as other."""
    h = Harness(tmp_path, metrics_max_peer_labels=2)
    for name in ("a", "b", "c", "d"):
        h.run(h.connect(h.worker(Recording(), name=name)))
    m = scrape_master(h)
    assert value(m, "replication_peer_connects_total", peer="a") == 1
    assert value(m, "replication_peer_connects_total", peer="b") == 1
    assert value(m, "replication_peer_connects_total", peer="other") == 2
    assert value(m, "replication_peer_connects_total", peer="c") is None
    assert value(m, "replication_commands_received_total", command="NAME", peer="other") == 2
    assert set(h.master.history.peers) == {"a", "b", "other"}


def test_all_streams_subscribers_count_rows_of_every_stream(tmp_path: Path) -> None:
    """A REPLICATE ALL NOW connection is sent the live rows of every stream; its RDATA count
    includes them, before and after it closes."""
    h = Harness(tmp_path)
    h.publish("a", [1])
    h.publish("b", [1])
    connection = MasterConnection(h.master)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(b"NAME raw\nREPLICATE ALL NOW\n")
    h.publish("a", [1, 2])
    h.publish("b", [3])
    m = scrape_master(h)
    assert value(m, "replication_commands_sent_total", command="RDATA", peer="raw") == 3
    assert streamed(m, "replication_stream_live_subscribers", "a", h) == 1
    assert value(m, "replication_connection_lag_tokens", peer="raw", stream="b") == 0
    assert transport.value().count(b"\nRDATA ") == 3
    connection.connectionLost()
    m = scrape_master(h)
    assert value(m, "replication_commands_sent_total", command="RDATA", peer="raw") == 3


def test_handler_errors_and_durations(tmp_path: Path) -> None:
    """A handler that fails once and then takes 0.3 s (a Deferred fired later) is counted
    as one error, one success, and the 0.3 s lands in the 0.5 s bucket."""
    h = Harness(tmp_path)
    pending: list[Deferred[None]] = []
    failed: list[int] = []

    def handler(stream: str, token: int, rows: list[Any]) -> Deferred[None] | None:
        if not failed:
            failed.append(token)
            raise RuntimeError("first call fails")
        d: Deferred[None] = Deferred()
        pending.append(d)
        return d

    h.publish("events", [1])
    worker = h.worker(handler)
    pipe = h.connect(worker)
    h.run(pipe)
    h.clock.advance(1.0)  # the retry
    assert len(pending) == 1
    h.clock.advance(0.3)
    pending[0].callback(None)
    w = scrape_worker(worker)
    assert value(w, "replication_worker_handler_errors_total", stream="events") == 1
    assert value(w, "replication_worker_tokens_handled_total", stream="events") == 1
    bucket = "replication_worker_handler_duration_seconds_bucket"
    assert value(w, bucket, stream="events", le="0.25") == 1  # the failure took no time
    assert value(w, bucket, stream="events", le="0.5") == 2
    assert value(w, "replication_worker_handler_duration_seconds_sum", stream="events") == (
        pytest.approx(0.3)
    )
    assert value(w, "replication_worker_handler_duration_seconds_count", stream="events") == 2


def test_the_masters_info_names_its_origin(tmp_path: Path) -> None:
    """replication_info of a master has one series, whose origin label is the store's origin
    id (empty until the store is open); a worker's has no origin label."""
    from replication import __version__
    from replication.master import Master

    h = Harness(tmp_path)
    m = scrape_master(h)
    infos = [labels for (name, labels) in m if name == "replication_info"]
    assert infos == [frozenset({
        ("role", "master"), ("name", "master"), ("version", __version__),
        ("origin", h.store.origin_id),
    })]
    registry = CollectorRegistry()
    runner = ManualRunner()

    class Blocking(MemoryStore):
        blocking = True

    store = Blocking()
    Master(h.config, store, h.clock, run_blocking=runner, metrics=MasterMetrics(registry))
    labels = dict(role="master", name="master", version=__version__)
    assert registry.get_sample_value("replication_info", {**labels, "origin": ""}) == 1
    runner.run_all()
    assert registry.get_sample_value("replication_info", {**labels, "origin": ""}) is None
    assert registry.get_sample_value("replication_info", {**labels, "origin": store.origin_id}) == 1
    w = scrape_worker(h.worker(Recording()))
    assert [dict(labels) for (name, labels) in w if name == "replication_info"] == [
        {"role": "worker", "name": "w1", "version": __version__}
    ]


def test_registries_are_private_and_passed_in(tmp_path: Path) -> None:
    """The master and worker register on the registry they are given (or a private one),
    never on prometheus_client's global REGISTRY; one metrics object observes one service."""
    before = {name for name in prometheus_client.REGISTRY._names_to_collectors}
    registry = CollectorRegistry()
    metrics = MasterMetrics(registry)
    h = Harness(tmp_path)
    from replication.master import Master

    master = Master(h.config, h.store, h.clock, metrics=metrics)
    assert master.metrics is metrics
    h.publish("events", [1])
    assert registry.get_sample_value("replication_connections_open") == 0
    assert h.master.metrics.registry is not registry
    worker_registry = CollectorRegistry()
    first = h.worker(Recording())
    worker = Worker(first.config, Recording(), first.positions, h.clock,
                    metrics=WorkerMetrics(worker_registry))
    assert worker.metrics.registry is worker_registry
    assert worker_registry.get_sample_value("replication_worker_connected") == 0
    assert {name for name in prometheus_client.REGISTRY._names_to_collectors} == before
    try:
        metrics.bind(master)
    except ValueError:
        pass
    else:  # pragma: no cover
        raise AssertionError("binding twice must fail")


def test_every_metric_is_defined_and_documented(tmp_path: Path) -> None:
    """Every family a master or worker exposes is in metrics.py's tables, each has the
    declared type, and docs/operations.rst describes each by name."""
    h = Harness(tmp_path)
    h.publish("events", [1])
    worker = h.worker(Recording())
    pipe = h.connect(worker)
    h.run(pipe)
    pipe.disconnect()
    master_text = raw_request(admin_resource(h.master), "GET", "/metrics")[2].decode()
    worker_text = generate(worker)
    for text, table in ((master_text, MASTER_METRICS), (worker_text, WORKER_METRICS)):
        _, types = parse(text)
        exposed = {name + "_total" if kind == "counter" else name for name, kind in types.items()}
        assert exposed == set(table)
    docs = DOCS.read_text(encoding="utf-8")
    documented = set(re.findall(r"``(replication_[a-z_]+)``", docs))
    assert set(MASTER_METRICS) | set(WORKER_METRICS) <= documented


def generate(worker: Worker) -> str:
    return prometheus_client.generate_latest(worker.metrics.registry).decode()


def test_grafana_dashboard_plots_defined_metrics() -> None:
    """docs/grafana-dashboard.json is valid JSON whose queries name only defined metrics, and
    it plots rows per second, lag per worker and buffered bytes."""
    import json

    dashboard = json.loads((DOCS.parent / "grafana-dashboard.json").read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(replication_[a-z_]+)", e)}
    defined = set(MASTER_METRICS) | set(WORKER_METRICS)
    histogram = "replication_worker_handler_duration_seconds"
    assert {m.removesuffix("_bucket") for m in used} <= defined | {histogram}
    for wanted in (
        "rate(replication_stream_rows_published_total",
        "replication_connection_lag_tokens",
        "replication_worker_lag_tokens",
        "replication_connection_buffered_bytes",
    ):
        assert any(wanted in e for e in exprs), wanted
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_handler_times_counted_together_match_one_by_one() -> None:
    """``handlers_done`` (the hot loop's, once per line) counts exactly what a
    ``handler_done`` per call would: calls, total seconds and histogram buckets."""
    times = [0.0, 0.0004, 0.003, 0.02, 0.7, 12.0, 400.0]
    together, one_by_one = WorkerMetrics(CollectorRegistry()), WorkerMetrics(CollectorRegistry())
    together.handlers_done("events", times)
    for seconds in times:
        one_by_one.handler_done("events", seconds)
    a, b = together._streams["events"], one_by_one._streams["events"]
    assert (a.handled, a.buckets) == (b.handled, b.buckets) == (len(times), b.buckets)
    assert a.seconds == pytest.approx(b.seconds)
    assert sum(a.buckets) == len(times)
