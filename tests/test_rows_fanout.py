"""The master's side of ``ROWS`` (protocol version 3): which followers get it, how lines are
split at the master's line limit, and that a worker handles every token once, in order,
whatever mix of ``ROWS`` and ``RDATA`` lines it gets (docs/protocol.rst, "ROWS")."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from twisted.internet.testing import StringTransport

from replication.config import LimitsConfig
from replication.master import MasterConnection
from replication.testing import Harness, Recording


def raw_connection(
    harness: Harness, version: int, first: bytes = b""
) -> tuple[MasterConnection, StringTransport]:
    """A follower of ``version`` (2 or 3) that sends ``first`` after its handshake, then
    asks for ``events`` from its start."""
    connection = MasterConnection(harness.master)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(f"NAME w{version}\nVERSION {version}\n".encode() + first)
    connection.dataReceived(b"REPLICATE events -\n")
    for _ in range(20):
        harness.clock.advance(0)
    return connection, transport


def lines_after_position(transport: StringTransport) -> list[str]:
    lines = transport.value().decode().splitlines()
    transport.clear()
    return [line for line in lines if line.split(" ", 1)[0] in ("RDATA", "ROWS")]


def test_version_3_gets_rows_lines_and_version_2_rdata_lines(tmp_path: Path) -> None:
    """The same catch-up and the same live publishes: a version 3 follower gets each
    page and each commit as one ROWS line, a version 2 follower the RDATA lines."""
    harness = Harness(tmp_path)
    origin = harness.store.origin_id
    harness.publish("events", [1])
    harness.publish("events", [2, {"a": "b c"}])
    v3, t3 = raw_connection(harness, 3)
    v2, t2 = raw_connection(harness, 2)
    assert v3.dialect == "replication/3" and v2.dialect == "replication/2"
    assert lines_after_position(t3) == [f'ROWS events@{origin} 1 [[1],[2,{{"a":"b c"}}]]']
    assert lines_after_position(t2) == [
        f"RDATA events@{origin} 1 1",
        f"RDATA events@{origin} batch 2",
        f'RDATA events@{origin} 2 {{"a":"b c"}}',
    ]
    harness.publish("events", [3, 4])
    assert lines_after_position(t3) == [f"ROWS events@{origin} 3 [[3,4]]"]
    assert lines_after_position(t2) == [
        f"RDATA events@{origin} batch 3", f"RDATA events@{origin} 3 4"
    ]
    received, sent = v3.command_counts()
    assert sent["ROWS"] == 2 and "RDATA" not in sent
    assert v2.command_counts()[1]["RDATA"] == 5
    # The status shows rows sent, whatever lines carried them.
    views = {view.peer_name: view for view in harness.master.snapshot().connections}
    assert views["w3"].rows_sent == views["w2"].rows_sent == 5


def test_a_worker_gets_every_token_once_across_split_lines(tmp_path: Path) -> None:
    """With the master's line limit at its minimum (1 KiB), tokens of growing size, some
    too big for a ROWS line of their own (sent as RDATA), some filling lines: a worker of
    version 3 handles every token once, in order, with its rows, in the catch-up and live;
    no line is longer than the limit."""
    limits = dataclasses.replace(LimitsConfig(), max_line_bytes=1024)
    harness = Harness(tmp_path, limits=limits)
    published = []
    for i in range(60):
        rows = [{"i": i, "pad": "x" * (i * 7 % 300)} for _ in range(1 + i % 5)]
        harness.publish("events", rows)
        published.append(rows)
    handler = Recording()
    worker = harness.worker(handler)
    pipe = harness.connect(worker)
    sent = []
    write = pipe.server.transport.write  # type: ignore[attr-defined]

    def spy(data: bytes) -> None:
        sent.append(data)
        write(data)

    pipe.server.transport.write = spy  # type: ignore[attr-defined]
    harness.run(pipe)
    for i in range(60, 90):
        rows = [{"i": i, "pad": "é" * (i * 11 % 200)} for _ in range(1 + i % 4)]
        harness.publish("events", rows)
        published.append(rows)
        harness.run(pipe)
    assert handler.token_numbers() == list(range(1, 91))
    assert [rows for _, _, rows in handler.tokens] == published
    lines = b"".join(sent).split(b"\n")
    assert max(len(line) for line in lines if line.startswith(b"ROWS ")) <= 1024
    assert any(line.startswith(b"RDATA ") for line in lines)  # a token bigger than a line
    assert sum(line.startswith(b"ROWS ") for line in lines) < 90


def test_rows_lines_keep_within_the_line_limit_a_worker_sent(tmp_path: Path) -> None:
    """A version 3 follower that sent ``LINE_LIMIT 1024`` gets ROWS lines of at most 1024
    bytes, catch-up and live, while another with no limit gets one line; a limit above
    the master's own is held to the master's."""
    harness = Harness(tmp_path)
    rows = [{"n": i, "pad": "x" * 90} for i in range(40)]
    for row in rows:
        harness.publish("events", [row])
    small, small_t = raw_connection(harness, 3, b"LINE_LIMIT 1024\n")
    plain, plain_t = raw_connection(harness, 3)
    big, big_t = raw_connection(harness, 3, b"LINE_LIMIT 67108864\n")
    harness.publish("events", rows)  # one token of 40 rows: too big for a 1 KiB line
    harness.publish("events", [1])
    small_lines = lines_after_position(small_t)
    assert max(map(len, small_lines)) <= 1024
    assert sum(line.startswith("ROWS ") for line in small_lines) > 4
    assert sum(line.startswith("RDATA ") for line in small_lines) == 40  # the big token
    assert len(lines_after_position(plain_t)) == 3  # catch-up, then one line per publish
    assert harness.master.fanout._followers[big].line_limit == 65536
    assert not small_t.disconnecting


def test_line_limit_needs_version_3(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    connection, transport = raw_connection(harness, 2, b"LINE_LIMIT 4096\n")
    assert "ERROR LINE_LIMIT needs protocol version 3; this connection speaks replication/2" \
        in transport.value().decode()
    assert transport.disconnecting


def test_a_version_3_worker_sends_its_line_limit(tmp_path: Path) -> None:
    """The worker's ``limits.max_line_bytes`` goes to the master right after the
    handshake of version 3, before anything else."""
    harness = Harness(tmp_path)
    worker = harness.worker(Recording())
    worker.config = dataclasses.replace(worker.config, max_line_bytes=2048)
    pipe = harness.connect(worker)
    harness.run(pipe)
    connection = pipe.server  # type: ignore[attr-defined]
    assert harness.master.fanout._followers[connection].line_limit == 2048
