"""Master processes on one PostgreSQL database: publishes on every master at once, each
master's subscribers get every acknowledged token once and in order, a master SIGKILLed and
restarted catches up, backends terminated under load lose nothing acknowledged, and a master
whose database is away answers 503 and recovers by itself."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from postgres import DSN, admin, dsn_for
from processes import (
    HOST,
    Process,
    free_ports,
    http_request,
    read_json_lines,
    start_master,
    stream_head,
    wait_until,
    worker_command,
    write_worker_config,
)
from proxy import TcpProxy

pytest.importorskip("psycopg")


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A PostgreSQL schema of the test's own (see tests/postgres.py)."""
    from postgres import temporary_schema

    yield from temporary_schema()


def config(tmp: Path, name: str, dsn: str, schema: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(
        f"server_name: {name}\n"
        f"store: {{type: postgres, dsn: '{dsn}', schema: {schema}, poll_interval: 500ms}}\n"
        "streams: [events]\n"
    )
    return path


def start(tmp: Path, name: str, dsn: str, schema: str, ports: tuple[int, int]) -> Process:
    """A master process on the schema (``--store postgres`` overrides start_master's
    ``--store memory``)."""
    path = config(tmp, name, dsn, schema)
    return start_master(tmp, name, ports[0], ports[1], "--config", str(path), "--store", "postgres")


def try_publish(http_port: int, row: object) -> int | None:
    """The token of a publish, or ``None`` when it was refused (503) or the connection
    failed: not acknowledged."""
    try:
        status, answer = http_request(http_port, "POST", "/streams/events", {"rows": [row]})
    except (OSError, http.client.HTTPException):  # down, or killed in the middle of its answer
        return None
    if status != 200:
        assert status == 503, (status, answer)
        return None
    return int(answer["token"])


def follow(port: int, upto: int, timeout: float = 20.0) -> list[tuple[int, str]]:
    """Subscribe from token 0 over the line protocol and read ``(token, row)`` until token
    ``upto`` has arrived."""
    out: list[tuple[int, str]] = []
    deadline = time.monotonic() + timeout
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(b"NAME checker\nREPLICATE events 0\n")
        buffer = b""
        pending: list[str] = []
        while not out or out[-1][0] < upto:
            assert time.monotonic() < deadline, f"only {out[-1:]} of {upto} within {timeout}s"
            data = s.recv(65536)
            assert data, "the master closed the connection"
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw.decode()
                if line.startswith("RDATA events "):
                    _, _, token, row = line.split(" ", 3)
                    if token == "batch":
                        pending.append(row)
                    else:
                        out += [(int(token), r) for r in [*pending, row]]
                        pending = []
    return out


def check_delivery(port: int, acknowledged: dict[int, str], head: int) -> None:
    got = follow(port, head)
    assert [t for t, _ in got] == list(range(1, head + 1))  # once each, in order
    rows = dict(got)
    for token, row in acknowledged.items():
        assert rows[token] == row


def publish_on_all(ports: list[int], n: int, tag: str, acknowledged: dict[int, str]) -> None:
    """``n`` publishes on each HTTP port, all ports at once (one thread each)."""
    lock = threading.Lock()

    def run(http_port: int) -> None:
        for i in range(n):
            row = {"m": http_port, "i": i, "tag": tag}
            token = try_publish(http_port, row)
            if token is not None:
                with lock:
                    assert token not in acknowledged, f"token {token} acknowledged twice"
                    acknowledged[token] = f'{{"m":{http_port},"i":{i},"tag":"{tag}"}}'

    threads = [threading.Thread(target=run, args=(p,)) for p in ports]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


def test_three_masters_on_one_database(tmp_path: Path, pg_schema: str) -> None:
    """Three masters publish at once; every master delivers every token once in order and
    reports the same head; one is SIGKILLed, the others go on, it restarts and catches up."""
    dsn = dsn_for(pg_schema)
    ports = free_ports(6)
    pairs = [(ports[i], ports[i + 1]) for i in (0, 2, 4)]
    acknowledged: dict[int, str] = {}
    masters = [start(tmp_path, f"m{i}", dsn, pg_schema, pair) for i, pair in enumerate(pairs)]
    try:
        publish_on_all([p[1] for p in pairs], 40, "a", acknowledged)
        assert len(acknowledged) == 120
        head = max(acknowledged)
        assert head == 120
        for port, http_port in pairs:
            check_delivery(port, acknowledged, head)
            wait_until(lambda h=http_port: stream_head(h, "events") == head or None, 5,
                       "same head")
        masters[0].kill()
        publish_on_all([p[1] for p in pairs[1:]], 20, "b", acknowledged)
        masters[0] = start(tmp_path, "m0", dsn, pg_schema, pairs[0])
        publish_on_all([p[1] for p in pairs], 10, "c", acknowledged)
        head = max(acknowledged)
        assert head == len(acknowledged) == 190
        for port, _ in pairs:
            check_delivery(port, acknowledged, head)
    finally:
        for m in masters:
            m.kill()


def test_backends_terminated_under_load_lose_nothing_acknowledged(
    tmp_path: Path, pg_schema: str
) -> None:
    """Two masters publish while every backend of theirs is terminated, several times:
    some publishes may be refused (503), none acknowledged is lost, and both masters go on
    working without a restart."""
    dsn = dsn_for(pg_schema)
    ports = free_ports(4)
    pairs = [(ports[0], ports[1]), (ports[2], ports[3])]
    acknowledged: dict[int, str] = {}
    masters = [start(tmp_path, f"m{i}", dsn, pg_schema, pair) for i, pair in enumerate(pairs)]
    stop = threading.Event()

    def killer() -> None:
        with admin() as conn:
            while not stop.wait(0.15):
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s",
                    (f"replication-test-{pg_schema}",),
                )

    k = threading.Thread(target=killer)
    k.start()
    try:
        publish_on_all([p[1] for p in pairs], 60, "load", acknowledged)
    finally:
        stop.set()
        k.join(10)
    try:
        assert len(acknowledged) > 0
        publish_on_all([p[1] for p in pairs], 5, "after", acknowledged)  # recovered
        head = max(acknowledged)
        for port, _ in pairs:
            check_delivery(port, acknowledged, head)
    finally:
        for m in masters:
            m.kill()


def test_publishes_are_refused_with_503_while_the_database_is_away(
    tmp_path: Path, pg_schema: str
) -> None:
    """A master reaches its database through a proxy the test cuts: publishes are answered
    503 (not hung, not 500) while it is away; once it is back the master takes publishes
    again by itself, and nothing acknowledged is lost."""
    import psycopg

    params = psycopg.conninfo.conninfo_to_dict(DSN)
    port, http_port = free_ports(2)
    acknowledged: dict[int, str] = {}
    with TcpProxy(str(params.get("host", "127.0.0.1")), int(params.get("port", 5432))) as proxy:
        dsn = f"{dsn_for(pg_schema)} host=127.0.0.1 port={proxy.port}"
        master = start(tmp_path, "m", dsn, pg_schema, (port, http_port))
        try:
            publish_on_all([http_port], 5, "before", acknowledged)
            assert len(acknowledged) == 5
            proxy.cut()
            started = time.monotonic()
            status, answer = http_request(http_port, "POST", "/streams/events", {"rows": [1]})
            assert status == 503 and "cannot reach the database" in str(answer), answer
            assert time.monotonic() - started < 10
            proxy.restore()
            token = wait_until(lambda: try_publish(http_port, "back"), 15, "a publish works")
            acknowledged[token] = '"back"'
            check_delivery(port, acknowledged, max(acknowledged))
        finally:
            master.kill()


def test_a_worker_fails_over_between_masters_with_no_gap_and_no_repeat(
    tmp_path: Path, pg_schema: str
) -> None:
    """A worker (a real worker process) follows master A through a proxy while both masters
    take publishes; the proxy then sends it to master B (A's connection cut): the worker
    resumes at its recorded token on B and prints every token once, in order, with the rows
    that were acknowledged for it."""
    dsn = dsn_for(pg_schema)
    ports = free_ports(4)
    pairs = [(ports[0], ports[1]), (ports[2], ports[3])]
    acknowledged: dict[int, str] = {}
    masters = [start(tmp_path, f"m{i}", dsn, pg_schema, pair) for i, pair in enumerate(pairs)]
    with TcpProxy(HOST, pairs[0][0]) as proxy:
        cfg = write_worker_config(tmp_path / "w.yaml", "w", proxy.port)
        w = Process(
            "w", worker_command(proxy.port, "w", tmp_path / "w.positions", "--config", str(cfg)),
            stdout=tmp_path / "w.out", stderr=tmp_path / "w.err", cwd=tmp_path,
        ).start()

        def printed() -> list[int]:
            lines, _ = read_json_lines(tmp_path / "w.out")
            return [line["token"] for line in lines]

        try:
            publish_on_all([p[1] for p in pairs], 30, "on-a", acknowledged)
            head = max(acknowledged)
            wait_until(lambda: head in printed(), 20, "the worker to print the head",
                       alive=[w, *masters])
            proxy.retarget(HOST, pairs[1][0])
            publish_on_all([p[1] for p in pairs], 30, "on-b", acknowledged)
            head = max(acknowledged)
            wait_until(lambda: head in printed(), 20, "the worker to print the new head",
                       alive=[w, *masters])
            lines, torn = read_json_lines(tmp_path / "w.out")
            assert torn == ""
            assert [line["token"] for line in lines] == list(range(1, head + 1))
            for line in lines:
                row = json.dumps(line["rows"][0], separators=(",", ":"))
                assert acknowledged[line["token"]] == row
        finally:
            w.kill()
            for m in masters:
                m.kill()
