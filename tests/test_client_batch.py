"""``Publisher.publish_all`` over PUBLISH_BATCH (docs/protocol.rst, "Batches"): the lines
the client core builds (split at the master's line and in-flight limits, ids and keys
counted), the answers it takes (PUBLISHED_RUN, mixed with single answers), what it resends
after a drop (the unanswered publishes of a batch, one PUBLISH line each, with their keys),
against a fake master and a real one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_client import FakeMaster

from processes import HOST, child_env, free_ports, start_master, stream_head
from replication.client import AsyncPublisher, Publisher, PublishRefused
from replication.client.core import ProtocolViolation, Published, PublisherCore
from replication.wire.commands import PublishBatchCommand, PublishCommand, default_registry

ORIGIN = "O" * 22


def ready_core(options: str = " batch", in_flight: int = 100,
               line_bytes: int = 65536) -> PublisherCore[Any]:
    core: PublisherCore[Any] = PublisherCore("p", "pre")
    assert core.feed(
        f"SERVER m\nVERSION 2\nORIGIN {ORIGIN} fp\nPUBLISHING {in_flight} {line_bytes}"
        f"{options}\n".encode()
    ) == []
    assert core.ready
    return core


def test_batches_are_split_at_the_line_and_in_flight_limits() -> None:
    core = ready_core(in_flight=100, line_bytes=1000)
    rows = [[{"n": i, "text": "x" * (i % 7)}] for i in range(350)]
    built = core.publish_lines("events", rows)
    assert built is not None
    lines = built.out.splitlines(keepends=True)
    assert len(lines) > 3
    registry = default_registry()
    decoded: list[Any] = []
    next_id, next_key = 1, 1
    for line in lines:
        assert len(line) - 1 <= 1000
        command = registry.parse(line.rstrip(b"\n"), "worker")
        assert isinstance(command, PublishBatchCommand)
        assert command.count <= 100 and command.stream == "events"
        assert command.first_id == next_id
        assert command.key(0) == f"pre-{next_key}"
        tokens = json.loads(command.rows)
        assert len(tokens) == command.count
        decoded.extend(tokens)
        next_id += command.count
        next_key += command.count
    assert decoded == rows
    assert built.keys == [f"pre-{k}" for k in range(1, 351)]
    assert [built.lines[i] is built.lines[i + 1] for i in (0, 1)] == [True, True]
    assert built.indexes[:3] == [0, 1, 2]
    # The next publish goes on counting ids and keys after the batch.
    line = core.publish_line("events", [1], core.new_key(), False)
    assert line == b'PUBLISH 351 events key=pre-351 [1]\n'


def test_without_batch_in_publishing_publish_all_sends_publish_lines() -> None:
    core = ready_core(options=" keys=kept")
    built = core.publish_lines("events", [[1], [2]])
    assert built is not None
    assert built.out == b"PUBLISH 1 events key=pre-1 [1]\nPUBLISH 2 events key=pre-2 [2]\n"
    assert built.indexes == [-1, -1]
    # Not ready (no PUBLISHING yet): the same.
    fresh: PublisherCore[Any] = PublisherCore("p")
    built = fresh.publish_lines("events", [[1]])
    assert built is not None and built.out == b"PUBLISH 1 events [1]\n"


def test_a_publish_too_big_for_any_line_leaves_it_to_publish_line() -> None:
    core = ready_core(line_bytes=1000)
    assert core.publish_lines("events", [[1], ["x" * 2000]]) is None
    assert core.publish_lines("events", [[1], [float("nan")]]) is None


def test_published_run_answers_the_oldest_publishes_in_order() -> None:
    core = ready_core()
    built = core.publish_lines("events", [[i] for i in range(5)])
    assert built is not None
    waiters = [object() for _ in range(5)]
    core.sent_many("events", built, waiters)
    done = core.feed(b"PUBLISHED_RUN 1 2 40\nREFUSED 3 503 store failed\nPUBLISHED 4 43\n"
                     b"PUBLISHED_RUN 5 1 44\n")
    assert [waiter for waiter, _ in done] == waiters
    results = [outcome for _, outcome in done]
    assert results[0] == Published("events", (40,), ORIGIN)
    assert results[1] == Published("events", (41,), ORIGIN)
    assert isinstance(results[2], PublishRefused) and results[2].status == 503
    assert results[3] == Published("events", (43,), ORIGIN)
    assert results[4] == Published("events", (44,), ORIGIN)
    assert not core.in_flight


@pytest.mark.parametrize("line,message", [
    (b"PUBLISHED_RUN 1 3 40\n", "the master answered 3 publishes, 2 in flight"),
    (b"PUBLISHED_RUN 1 0 40\n", "the master answered 0 publishes"),
    (b"PUBLISHED_RUN 1 x 40\n", "malformed answer"),
    (b"PUBLISHED_RUN 1 2\n", "malformed answer"),
])
def test_a_bad_published_run_is_a_protocol_violation(line: bytes, message: str) -> None:
    core = ready_core()
    built = core.publish_lines("events", [[1], [2]])
    assert built is not None
    core.sent_many("events", built, [object(), object()])
    with pytest.raises(ProtocolViolation, match=message):
        core.feed(line)


def test_the_unanswered_publishes_of_a_batch_are_resent_alone_with_their_keys() -> None:
    core = ready_core()
    rows: list[list[Any]] = [[{"a": 1}], ["],["], [True, 2]]
    built = core.publish_lines("events", rows)
    assert built is not None
    waiters = ["w0", "w1", "w2"]
    core.sent_many("events", built, waiters)
    assert len(core.feed(b"PUBLISHED_RUN 1 1 7\n")) == 1
    lost = core.reset()
    assert [entry.waiter for entry in lost] == ["w1", "w2"]
    core.feed(f"SERVER m\nVERSION 2\nORIGIN {ORIGIN} fp\nPUBLISHING 100 65536 batch\n".encode())
    resend, restarted = core.resendable(lost)
    assert not restarted
    lines = [core.resend(entry) for entry in resend]
    registry = default_registry()
    commands = [registry.parse(line.rstrip(b"\n"), "worker") for line in lines]
    assert all(isinstance(command, PublishCommand) for command in commands)
    assert [(c.key, json.loads(c.rows)) for c in commands] == [  # type: ignore[attr-defined]
        ("pre-2", ["],["]), ("pre-3", [True, 2])
    ]
    assert [entry.waiter for entry in core.in_flight] == ["w1", "w2"]
    assert [entry.index for entry in core.in_flight] == [-1, -1]
    done = core.feed(b"PUBLISHED 4 8\nPUBLISHED 5 9\n")
    assert [(w, r.token) for w, r in done] == [("w1", 8), ("w2", 9)]  # type: ignore[union-attr]


# -- against masters -----------------------------------------------------------------------


def test_a_drop_in_the_middle_of_a_batch_resends_the_rest_with_their_keys() -> None:
    fake = FakeMaster(batch=True)
    try:
        with Publisher(f"{HOST}:{fake.port}", timeout=10, name="b") as publisher:
            publisher.publish("events", [0])  # connected: the master said batch
            results = publisher.publish_all("events", [[1], [2], [3]])
        assert [r.token for r in results] == [2, 3, 4]
        batch = [ln for ln in fake.connections[0] if ln.startswith(b"PUBLISH_BATCH ")]
        assert len(batch) == 1 and b" 3 events keys=" in batch[0]
        prefix = batch[0].split(b" ")[4][len(b"keys="):].rsplit(b"-", 1)[0]
        start = int(batch[0].split(b" ")[4].rsplit(b"-", 1)[1])
        again = [ln for ln in fake.connections[1] if ln.startswith(b"PUBLISH ")]
        assert [(ln.split(b" ")[3], ln.split(b" ", 4)[4]) for ln in again] == [
            (b"key=" + prefix + b"-%d" % (start + 1), b"[2]"),
            (b"key=" + prefix + b"-%d" % (start + 2), b"[3]"),
        ]
    finally:
        fake.close()


@contextlib.contextmanager
def small_master(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A memory-store master with strict streams (``events``), a 4 KiB line limit and at
    most 3 rows per publish: its replication and HTTP ports."""
    config = tmp_path / "master.yaml"
    config.write_text("streams: [events]\nstrict_streams: true\n"
                      "limits: {max_line_bytes: 4096, max_body_bytes: 4096, "
                      "max_buffer_bytes: 1048576, max_rows_per_publish: 3}\n")
    port, http_port = free_ports(2)
    with start_master(tmp_path, "master", port, http_port, "--config", str(config)):
        yield port, http_port


def _metric(http_port: int, name: str, command: str) -> float:
    with urllib.request.urlopen(f"http://{HOST}:{http_port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and f'command="{command}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_publish_all_against_a_real_master_uses_batches(tmp_path: Path) -> None:
    """2,500 publishes with a 4 KiB line limit: sent as PUBLISH_BATCH lines, committed as
    consecutive tokens in order, answered in order; a refused publish among them is refused
    alone, raised once every answer is in, and the rest are stored."""
    with small_master(tmp_path) as (port, http_port):
        with Publisher(f"{HOST}:{port}", timeout=30) as publisher:
            publisher.publish("events", [0])
            results = publisher.publish_all("events", [[{"n": i}] for i in range(2500)])
            assert [r.token for r in results] == list(range(2, 2502))
            with pytest.raises(PublishRefused, match="at most 3 rows"):
                publisher.publish_all("events", [[1], [1, 2, 3, 4], [3]])
        assert stream_head(http_port, "events") == 2503
        batches = _metric(http_port, "replication_commands_received_total", "PUBLISH_BATCH")
        assert 2500 * 12 // 4096 <= batches <= 100


TWISTED_BATCHES = """
import json, sys
from twisted.internet.task import react
from twisted.internet.defer import ensureDeferred
from replication.client import TwistedPublisher, PublishRefused

async def main(reactor):
    publisher = TwistedPublisher(reactor, sys.argv[1])
    first = await publisher.publish_all("events", [[i] for i in range(5)])  # connecting
    second = await publisher.publish_all("events", [[{"n": i}] for i in range(1500)])
    try:
        await publisher.publish_all("events", [[1], [1, 2, 3, 4], [3]])
    except PublishRefused as e:
        status = e.status
    empty = await publisher.publish_all("events", [])
    await publisher.close()
    print(json.dumps({"first": [r.token for r in first], "second": [r.token for r in second],
                      "status": status, "empty": empty}))

react(lambda reactor: ensureDeferred(main(reactor)))
"""


def test_the_asyncio_and_twisted_clients_publish_all_in_batches(tmp_path: Path) -> None:
    """AsyncPublisher.publish_all and TwistedPublisher.publish_all: answered in order with
    consecutive tokens, sent as PUBLISH_BATCH lines once connected (one publish at a time
    before), a refused publish raised once every answer is in, the others stored."""
    with small_master(tmp_path) as (port, http_port):

        async def main() -> tuple[list[int], list[int], int]:
            async with AsyncPublisher(f"{HOST}:{port}") as publisher:
                first = await publisher.publish_all("events", [[i] for i in range(5)])
                second = await publisher.publish_all("events",
                                                     [[{"n": i}] for i in range(1500)])
                with pytest.raises(PublishRefused, match="at most 3 rows") as refused:
                    await publisher.publish_all("events", [[1], [1, 2, 3, 4], [3]])
                assert await publisher.publish_all("events", []) == []
                return ([r.token for r in first], [r.token for r in second],
                        refused.value.status)

        first, second, status = asyncio.run(main())
        assert first == list(range(1, 6)) and second == list(range(6, 1506))
        assert status == 413
        assert stream_head(http_port, "events") == 1507
        batches = _metric(http_port, "replication_commands_received_total", "PUBLISH_BATCH")
        assert batches >= 1500 * 12 // 4096

        script = tmp_path / "twisted_batches.py"
        script.write_text(TWISTED_BATCHES)
        done = subprocess.run([sys.executable, str(script), f"{HOST}:{port}"],
                              env=child_env(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["first"] == list(range(1508, 1513))
        assert answer["second"] == list(range(1513, 3013))
        assert answer["status"] == 413 and answer["empty"] == []
        assert stream_head(http_port, "events") == 3014
        assert _metric(http_port, "replication_commands_received_total",
                       "PUBLISH_BATCH") > batches
