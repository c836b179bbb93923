"""Publishing over the replication port (docs/protocol.rst, "Publishing"), through the
master's Twisted layer with in-memory transports: the PUBLISHER role, pipelined PUBLISH and
PUBLISH_TOKENS answered in order and only after commit, refusals in the middle of a
pipeline, a drop with publishes in flight, idempotent retries, the in-flight bound, and
what publishers and workers may not do."""

from __future__ import annotations

import dataclasses
import gc
import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from helpers import ManualRunner
from replication.config import LimitsConfig, MasterConfig
from replication.master import Master, MasterConnection
from replication.master.publishing import FinishedKey, PublishKeys
from replication.store import PublishKey
from replication.store.memory import MemoryStore
from replication.testing import Harness
from replication.wire.commands import (
    CommandParseError,
    PublishCommand,
    PublishedCommand,
    PublishingCommand,
    PublishTokensCommand,
    RefusedCommand,
    default_registry,
)


class BlockingMemoryStore(MemoryStore):
    """The memory store declared blocking: commits wait for the test's runner."""

    blocking = True


def blocking_master(**changes: Any) -> tuple[Master, ManualRunner]:
    runner = ManualRunner()
    config = dataclasses.replace(MasterConfig(), **changes)
    master = Master(config, BlockingMemoryStore(), Clock(), run_blocking=runner)
    runner.run_all()
    return master, runner


def publisher(master: Master, versions: bytes = b"2 1") -> tuple[MasterConnection, StringTransport]:
    connection = MasterConnection(master)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(b"NAME p\nVERSION " + versions + b"\nPUBLISHER\n")
    return connection, transport


def take(transport: StringTransport) -> list[str]:
    sent = transport.value().decode().splitlines()
    transport.clear()
    return sent


def limits(**changes: Any) -> LimitsConfig:
    return dataclasses.replace(LimitsConfig(), **changes)


# -- the codec ------------------------------------------------------------------------------


def test_publish_commands_round_trip() -> None:
    registry = default_registry()
    for line, sender in [
        (b'PUBLISH 1 events [{"a":"b c"}]', "worker"),
        (b"PUBLISH x-9 events key=k:1/2 [1,2]", "worker"),
        (b"PUBLISH_TOKENS 3 events [[1],[2,3]]", "worker"),
        (b"PUBLISHED 1 42", "master"),
        (b"PUBLISHED 1 42 44", "master"),
        (b"REFUSED 7 413 row 0 is too long", "master"),
        (b"PUBLISHER", "worker"),
        (b"PUBLISHING 1024 65536", "master"),
    ]:
        command = registry.parse(line, sender)
        assert command.to_line() == line


def test_publish_fields() -> None:
    command = default_registry().parse(b'PUBLISH 5 ev key=abc ["key=x y"]', "worker")
    assert command == PublishCommand("5", "ev", '["key=x y"]', "abc")
    many = default_registry().parse(b"PUBLISH_TOKENS 5 ev [[1]]", "worker")
    assert isinstance(many, PublishTokensCommand) and many.key is None
    assert PublishedCommand("1", 4, 6).tokens == [4, 5, 6]


@pytest.mark.parametrize("line,message", [
    (b"PUBLISH 1 events", "PUBLISH takes 3 or 4 arguments"),
    (b"PUBLISH 1 events key=k", "rows missing after the key"),
    (b"PUBLISH " + b"i" * 65 + b" events [1]", "invalid publish id"),
    (b"PUBLISH 1 events key=" + b"k" * 129 + b" [1]", "invalid publish key"),
    (b"PUBLISHED 1 0", "PUBLISHED needs 0 < first <= last"),
    (b"PUBLISHED 1 5 4", "PUBLISHED needs 0 < first <= last"),
    (b"REFUSED 1 99 x", "REFUSED status must be 100 to 599"),
    (b"PUBLISHER now", "PUBLISHER takes no arguments"),
])
def test_malformed_publish_commands(line: bytes, message: str) -> None:
    sender = "master" if line.startswith((b"PUBLISHED", b"REFUSED")) else "worker"
    with pytest.raises(CommandParseError, match=message):
        default_registry().parse(line, sender)


def test_publishing_carries_options() -> None:
    """``keys=kept`` says the master keeps idempotency keys across restarts; options a
    publisher does not know are ignored."""
    registry = default_registry()
    command = registry.parse(b"PUBLISHING 10 2048 keys=kept", "master")
    assert isinstance(command, PublishingCommand) and command.keys_kept
    assert command.to_line() == b"PUBLISHING 10 2048 keys=kept"
    command = registry.parse(b"PUBLISHING 10 2048 later=1", "master")
    assert isinstance(command, PublishingCommand) and not command.keys_kept
    assert command.to_line() == b"PUBLISHING 10 2048"
    with pytest.raises(CommandParseError):
        registry.parse(b"PUBLISHING 10", "master")


def test_a_master_on_a_store_that_keeps_keys_says_so(tmp_path: Path) -> None:
    from replication.store.sqlite import SqliteStore

    runner = ManualRunner()
    master = Master(MasterConfig(), SqliteStore(str(tmp_path / "s.sqlite3")), Clock(),
                    run_blocking=runner)
    runner.run_all()
    _, transport = publisher(master)
    assert take(transport)[3] == "PUBLISHING 1024 65536 keys=kept batch"
    off = dataclasses.replace(MasterConfig(), limits=limits(publish_keys=0))
    master = Master(off, SqliteStore(str(tmp_path / "t.sqlite3")), Clock(), run_blocking=runner)
    runner.run_all()
    _, transport = publisher(master)
    assert take(transport)[3] == "PUBLISHING 1024 65536 batch"


def test_refused_flattens_line_breaks() -> None:
    assert RefusedCommand("1", 400, "a\nb").message == "a b"


# -- the role -------------------------------------------------------------------------------


def test_publisher_is_answered_with_its_limits(tmp_path: Path) -> None:
    """PUBLISHER is answered with PUBLISHING <max_in_flight> <max_line_bytes>, after ORIGIN."""
    harness = Harness(tmp_path, limits=limits(max_publishes_in_flight=7))
    connection, transport = publisher(harness.master)
    sent = take(transport)
    assert sent[:2] == ["SERVER master", "VERSION 2"]
    assert sent[2].startswith("ORIGIN ")
    assert sent[3] == "PUBLISHING 7 65536 batch"
    assert connection.role == "publisher"


def test_one_publish_is_answered_with_its_token(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    connection, transport = publisher(harness.master)
    take(transport)
    connection.dataReceived(
        b'PUBLISH 1 events [{"a":1},{"b":2}]\nPUBLISH_TOKENS 2 events [[3],[4,5]]\n'
    )
    assert take(transport) == ["PUBLISHED 1 1", "PUBLISHED 2 2 3"]
    rows = harness.store.read("events", 0, 10, 100)
    assert [(e.token, list(e.rows)) for e in rows] == [
        (1, ['{"a":1}', '{"b":2}']), (2, ["3"]), (3, ["4", "5"])
    ]
    assert harness.master.publishes == {"http": 0, "replication": 2}


def test_answers_wait_for_the_commit_and_keep_their_order() -> None:
    """Pipelined publishes are answered in order, each only after its commit; a refusal
    in the middle of the pipeline waits its turn and does not stop the others."""
    master, runner = blocking_master()
    connection, transport = publisher(master)
    take(transport)
    connection.dataReceived(
        b"PUBLISH a events [1]\n"
        b"PUBLISH b events [nope]\n"
        b"PUBLISH c events [3]\n"
        b"PUBLISH d bad!name [4]\n"
        b"PUBLISH e events [5]\n"
    )
    # a and c (one read, one stream) commit together; b is refused but waits for a; d
    # (refused) waits for c; e waits for the next commit.
    assert take(transport) == []
    runner.run_one()
    assert take(transport) == [
        "PUBLISHED a 1",
        "REFUSED b 400 rows is not valid JSON: Expecting value: line 1 column 2 (char 1)",
        "PUBLISHED c 2",
        "REFUSED d 400 invalid stream name 'bad!name': use 1 to 128 characters of "
        "A-Z a-z 0-9 _ . - (not starting with . or -)",
    ]
    runner.run_all()
    assert take(transport) == ["PUBLISHED e 3"]
    assert not connection._closing


@pytest.mark.parametrize("line,status,message", [
    (b"PUBLISH 1 events {}", 400, "PUBLISH takes a JSON array of rows"),
    (b"PUBLISH 1 events []", 400, "rows must hold at least one row"),
    (b"PUBLISH 1 events [NaN]", 400, "not valid JSON"),
    (b"PUBLISH_TOKENS 1 events [1]", 400, "PUBLISH_TOKENS takes a non-empty JSON array"),
    (b"PUBLISH_TOKENS 1 events []", 400, "PUBLISH_TOKENS takes a non-empty JSON array"),
    (b"PUBLISH 1 unknown [1]", 404, "unknown stream 'unknown'"),
    (b'PUBLISH 1 events ["' + b"x" * 2000 + b'"]', 413, "would pass the line limit"),
    (b"PUBLISH 1 events [1,2,3]", 413, "at most 2 rows"),
])
def test_bad_input_is_refused_per_publish(
    tmp_path: Path, line: bytes, status: int, message: str
) -> None:
    """Bad input is answered with REFUSED for that publish alone: nothing of it is
    stored, the connection stays, and the next publish goes through."""
    harness = Harness(
        tmp_path, streams=("events",), strict_streams=True,
        limits=limits(max_line_bytes=2048, max_body_bytes=2048, max_buffer_bytes=1 << 20,
                      max_rows_per_publish=2),
    )
    connection, transport = publisher(harness.master)
    take(transport)
    connection.dataReceived(line + b"\nPUBLISH 2 events [1]\n")
    refused, published = take(transport)
    assert refused.startswith(f"REFUSED 1 {status} ") and message in refused
    assert published == "PUBLISHED 2 1"
    assert harness.master.head("events") == 1


def test_too_many_streams_is_refused_per_publish(tmp_path: Path) -> None:
    harness = Harness(tmp_path, limits=limits(max_streams=1))
    connection, transport = publisher(harness.master)
    take(transport)
    connection.dataReceived(b"PUBLISH 1 a [1]\nPUBLISH 2 b [1]\nPUBLISH 3 a [2]\n")
    sent = take(transport)
    assert sent[0] == "PUBLISHED 1 1"
    assert sent[1].startswith("REFUSED 2 403 cannot create stream 'b'")
    assert sent[2] == "PUBLISHED 3 2"


def test_a_drop_with_publishes_in_flight() -> None:
    """Publishes the master read before the drop are committed as if the connection had
    stayed (their answers are lost); lines it had not read are not published."""
    master, runner = blocking_master()
    connection, transport = publisher(master)
    take(transport)
    connection.dataReceived(b"PUBLISH 1 events [1]\nPUBLISH 2 events [2]\nPUBLISH 3 eve")
    connection.connectionLost()
    runner.run_all()
    assert master.head("events") == 2
    assert take(transport) == []


def test_an_idempotent_retry_gets_the_original_tokens() -> None:
    """A publish retried with its key on a new connection, after a drop with it in
    flight, is answered with the tokens of the first attempt and not stored again; a key
    used for another stream is refused with 409."""
    master, runner = blocking_master()
    first, transport = publisher(master)
    take(transport)
    first.dataReceived(b"PUBLISH 1 events key=k1 [1]\nPUBLISH 2 events key=k2 [2]\n")
    first.connectionLost()
    second, transport2 = publisher(master)
    take(transport2)
    # k1 is committing (in flight on the dead connection): the retry waits for it.
    second.dataReceived(b"PUBLISH 1 events key=k1 [1]\n")
    assert take(transport2) == []
    runner.run_all()
    assert take(transport2) == ["PUBLISHED 1 1"]
    second.dataReceived(
        b"PUBLISH 2 events key=k2 [2]\nPUBLISH 3 other key=k2 [2]\nPUBLISH 4 events key=k3 [3]\n"
    )
    runner.run_all()
    sent = take(transport2)
    assert sent[0] == "PUBLISHED 2 2"
    assert sent[1].startswith("REFUSED 3 409 key 'k2' was used for stream 'events'")
    assert sent[2] == "PUBLISHED 4 3"
    assert master.head("events") == 3
    assert master.publish_keys.hits == 3


def test_a_refused_key_may_be_tried_again(tmp_path: Path) -> None:
    harness = Harness(tmp_path, limits=limits(max_streams=1))
    connection, transport = publisher(harness.master)
    take(transport)
    connection.dataReceived(b"PUBLISH 1 a [1]\nPUBLISH 2 b key=k [1]\n")
    assert take(transport)[1].startswith("REFUSED 2 403")
    assert harness.master.publish_keys.find("k", 0) is None


def test_the_key_window_is_bounded_by_count_and_age() -> None:
    keys = PublishKeys(max_keys=2, max_age=10.0)
    for i, key in enumerate(("a", "b", "c")):
        entry = keys.begin(key, "s", float(i))
        assert entry is not None
        keys.finish(key, entry, [i + 1])
    assert keys.find("a", 2.0) is None  # pushed out by count
    found = keys.find("b", 10.9)
    assert found is not None and found.outcome is not None and list(found.outcome) == [2]
    assert keys.find("b", 11.0) is None  # 10 seconds after it arrived
    assert keys.find("c", 11.0) is not None
    assert PublishKeys(0, 10.0).begin("a", "s", 0.0) is None


def test_knows_any_is_find_for_a_whole_run() -> None:
    """``knows_any`` answers as ``find`` on each key would: running and finished keys are
    known, refused and expired ones are not."""
    keys = PublishKeys(max_keys=10, max_age=10.0)
    running = keys.begin("running", "s", 0.0)
    done = keys.begin("done", "s", 1.0)
    refused = keys.begin("refused", "s", 1.0)
    assert running is not None and done is not None and refused is not None
    keys.finish("done", done, [1])
    keys.finish("refused", refused, (409, "no"))
    for run, known in ((["x", "running"], True), (["done", "y"], True), (["refused"], False),
                       (["x", "y"], False), ([], False)):
        assert keys.knows_any(run, 5.0) is known, run
        assert any(keys.find(key, 5.0) is not None for key in run) is known
    assert not keys.knows_any(["running", "done"], 11.5)  # both arrived 10 s before


def test_finished_keys_are_not_tracked_by_the_garbage_collector() -> None:
    """A full window must not lengthen every full collection: a finished key is kept as
    plain data, which the collector stops tracking after one collection (a loaded one
    too); find still answers with a FinishedKey."""
    keys = PublishKeys(max_keys=100, max_age=60.0)
    keys.load([PublishKey("c", "s", 4, 5, 0.5)], 1.0)
    entries = keys.begin_run(["a", "b"], "s", 1.0)
    keys.finish_run(list(zip(["a", "b"], entries, strict=True)), [[1], [2, 3]])
    gc.collect()
    for key in ("a", "b", "c"):
        assert not gc.is_tracked(keys._entries[key]), key
    found = keys.find("b", 2.0)
    assert found == FinishedKey("s", 1.0, range(2, 4))


def test_past_the_in_flight_bound_the_master_stops_reading() -> None:
    """With max_publishes_in_flight 2, the third publish waits unread (not an error) until
    answers go out; then it is read and answered."""
    master, runner = blocking_master(limits=limits(max_publishes_in_flight=2))
    connection, transport = publisher(master)
    take(transport)
    connection.dataReceived(b"PUBLISH 1 events [1]\nPUBLISH 2 events [2]\nPUBLISH 3 events [3]\n")
    assert connection.publishing is not None and connection.publishing.in_flight == 2
    assert connection._holding
    runner.run_one()  # publishes 1 and 2, read together, commit together
    assert take(transport) == ["PUBLISHED 1 1", "PUBLISHED 2 2"]
    assert connection.publishing.in_flight == 1  # 3 was read once answers went out
    runner.run_all()
    assert take(transport) == ["PUBLISHED 3 3"]
    assert not connection._holding and not connection._closing


def test_every_chunking_gives_the_same_answers(tmp_path: Path) -> None:
    data = b'PUBLISH 1 events ["a b"]\nPUBLISH 2 events key=z [2]\nPUBLISH_TOKENS 3 ev [[1],[2]]\n'
    for size in (1, 2, 3, 7, len(data)):
        harness = Harness(tmp_path)
        connection, transport = publisher(harness.master)
        take(transport)
        for i in range(0, len(data), size):
            connection.dataReceived(data[i:i + size])
        assert take(transport) == ["PUBLISHED 1 1", "PUBLISHED 2 2", "PUBLISHED 3 1 2"]


# -- what each role may not do ----------------------------------------------------------------


def test_workers_may_not_publish(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    connection = MasterConnection(harness.master)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(b"NAME w\nVERSION 2\nPUBLISH 1 events [1]\n")
    assert take(transport)[-1] == (
        "ERROR PUBLISH needs PUBLISHER first: workers may not publish (send PUBLISHER as the "
        "first command after the handshake)"
    )
    assert harness.master.head("events") == 0


@pytest.mark.parametrize("line", [b"REPLICATE events NOW", b"HANDLED events@" + b"A" * 22 + b" 1"])
def test_publishers_may_not_follow(tmp_path: Path, line: bytes) -> None:
    harness = Harness(tmp_path)
    connection, transport = publisher(harness.master)
    take(transport)
    connection.dataReceived(line + b"\n")
    name = line.split()[0].decode()
    assert take(transport) == [
        f"ERROR {name} is not for publishers: this connection sent PUBLISHER; follow streams "
        "on a connection of its own"
    ]
    assert connection._closing


def test_publisher_needs_version_2(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    connection, transport = publisher(harness.master, versions=b"1")
    assert take(transport)[-1] == (
        "ERROR PUBLISHER needs protocol version 2; this connection speaks replication/1"
    )


def test_publisher_after_replicate_or_twice(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    connection = MasterConnection(harness.master)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(b"NAME w\nVERSION 2\nREPLICATE events NOW\nPUBLISHER\n")
    assert take(transport)[-1].startswith(
        "ERROR PUBLISHER must be the first command after the handshake"
    )
    connection, transport = publisher(harness.master)
    connection.dataReceived(b"PUBLISHER\n")
    assert take(transport)[-1] == "ERROR PUBLISHER may only be sent once"


def test_metrics_count_roles_and_transports(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    connection, transport = publisher(harness.master)
    connection.dataReceived(b"PUBLISH 1 events [1]\n")
    worker = MasterConnection(harness.master)
    worker.makeConnection(StringTransport())
    worker.dataReceived(b"NAME w\nVERSION 2\n")
    text = _scrape(harness.master)
    assert 'replication_connections_by_role{role="publisher"} 1.0' in text
    assert 'replication_connections_by_role{role="worker"} 1.0' in text
    assert 'replication_publishes_total{transport="replication"} 1.0' in text
    assert 'replication_publishes_total{transport="http"} 0.0' in text


def _scrape(master: Master) -> str:
    from prometheus_client import generate_latest

    return generate_latest(master.metrics.registry).decode()


# -- the spec's transcripts -------------------------------------------------------------------

PROTOCOL_DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.rst"


def _transcript(first_line: str, second_line: str) -> list[str]:
    """The docs/protocol.rst literal block that starts with these two lines."""
    lines = PROTOCOL_DOC.read_text().splitlines()
    start = next(
        i for i, line in enumerate(lines)
        if line.strip() == first_line and lines[i + 1].strip() == second_line
    )
    block = []
    for line in lines[start:]:
        if not line.strip():
            break
        block.append(line.strip())
    return block


def test_the_pipelined_transcript_is_what_the_master_sends(tmp_path: Path) -> None:
    """docs/protocol.rst's pipelined transcript, with a refusal in the middle, played against
    a real master whose stream holds 40 tokens."""
    harness = Harness(tmp_path)
    for i in range(40):
        harness.publish("events", [i])
    block = _transcript("< SERVER master", "> NAME billing-7")
    connection = MasterConnection(harness.master)
    transport = StringTransport()
    connection.makeConnection(transport)
    expected: list[str] = []
    for line in block:
        if line.startswith(">"):
            connection.dataReceived(line[2:].encode() + b"\n")
        else:
            expected.append(line[2:])
    sent = take(transport)
    origin = harness.master.log.origin_id
    expected = [
        f"ORIGIN {origin} {harness.master.fingerprint}" if line.startswith("ORIGIN") else line
        for line in expected
    ]
    assert sent == expected


# -- the fast path is the general path ------------------------------------------------------

_PIECES = [
    b"PUBLISH ", b"PUBLISH_TOKENS ", b"1", b"x" * 65, b" ", b"  ", b"events", b"other",
    b"bad!", b"key=", b"k", b"key=k", b"[1]", b"[", b"]", b'["a b"]', b"[NaN]", b"{}",
    b"[]", b"[[1]]", b"\r", b"\xff", "é".encode(), b"[12345678901234567890]", b"[1,2,3]",
    b'["' + b"y" * 1500 + b'"]', b"[1] ", b" [1]", b"null", b"[-0.0,1e400]", b"[true]",
]


#: Rows that publish: one row, several, a long integer (the general path), nested, blanks.
_VALID = [b"[1]", b'["a b"]', b"[12345678901234567890]", b"[1,2]", b"[[1]]", b"[ true ]",
          b'[{"k": [1, 2]}]']


def _answers(lines: list[bytes], fast: bool, tmp_path: Path) -> tuple[list[str], list[Any]]:
    import replication.master.connection as connection_module

    harness = Harness(
        tmp_path, streams=("events", "other"), strict_streams=True,
        limits=limits(max_line_bytes=1500, max_body_bytes=1500, max_buffer_bytes=1 << 20,
                      max_rows_per_publish=2),
    )
    original = connection_module.fast_publish
    if not fast:
        connection_module.fast_publish = lambda line: None
    try:
        connection, transport = publisher(harness.master)
        # All in one read, as a pipelining publisher's lines come: runs and what they fall
        # back on meet in one call.
        connection.dataReceived(b"".join(line + b"\n" for line in lines))
    finally:
        connection_module.fast_publish = original
    # Rows compared as values: a one-row publish on the fast path keeps its text as sent,
    # blanks included, where the codec's path stores it compact.
    stored = [
        (stream, e.token, [json.loads(row) for row in e.rows])
        for stream in ("events", "other")
        for e in harness.store.read(stream, 0, 100, 1000)
    ]
    return take(transport)[4:], stored


def test_the_fast_path_answers_every_line_as_the_codec_does(tmp_path: Path) -> None:
    """Lines built from edge pieces (bad ids, keys, stream names, JSON, \\r, bytes that are
    not UTF-8, long integers, long rows...) get the same answers and store the same rows
    with the publisher's fast path as through the codec."""
    import random

    rng = random.Random(9)
    for n in range(600):
        lines = []
        for k in range(rng.randint(1, 8)):
            head = rng.choice([b"PUBLISH 1 events ", b"PUBLISH 2 events key=k ",
                               b"PUBLISH 3 other ", b"PUBLISH 4 unknown ", b"PUBLISH "])
            if n % 2:  # publishes that mostly go through: runs, and what they fall back on
                head = rng.choice([b"PUBLISH 1 events ", b"PUBLISH 3 other ",
                                   b"PUBLISH 5 events key=k%d " % k])
                lines.append(head + rng.choice(_VALID))
            else:
                lines.append(
                    head + b"".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 3)))
                )
        assert _answers(lines, True, tmp_path) == _answers(lines, False, tmp_path), lines


# -- runs: the publishes of one read, taken together ------------------------------------------


def _lines(count: int, start: int = 1, key: str | None = "k", stream: str = "events") -> bytes:
    field = "" if key is None else " key={key}-{i}"
    return b"".join(
        f"PUBLISH {i} {stream}{field.format(key=key, i=i)} [{i}]\n".encode()
        for i in range(start, start + count)
    )


def test_a_run_is_answered_in_order_and_remembers_its_keys(tmp_path: Path) -> None:
    """A read of 500 publishes to one stream is answered with consecutive tokens in the
    order sent; retried with the same keys (as a client does after a drop), every one is
    answered with its first tokens and nothing is stored twice."""
    harness = Harness(tmp_path, streams=("events",))
    connection, transport = publisher(harness.master)
    take(transport)
    connection.dataReceived(_lines(500))
    assert take(transport) == [f"PUBLISHED {i} {i}" for i in range(1, 501)]
    connection.dataReceived(_lines(500))
    assert take(transport) == [f"PUBLISHED {i} {i}" for i in range(1, 501)]
    assert harness.master.head("events") == 500
    assert harness.master.publish_keys.hits == 500
    assert [e.rows for e in harness.store.read("events", 0, 3, 10)] == [("1",), ("2",), ("3",)]


def test_one_key_twice_in_a_read_is_stored_once(tmp_path: Path) -> None:
    harness = Harness(tmp_path, streams=("events",))
    connection, transport = publisher(harness.master)
    take(transport)
    connection.dataReceived(
        b"PUBLISH 1 events key=a [1]\nPUBLISH 2 events key=b [2]\nPUBLISH 3 events key=a [1]\n"
    )
    assert take(transport) == ["PUBLISHED 1 1", "PUBLISHED 2 2", "PUBLISHED 3 1"]
    assert harness.master.head("events") == 2


def test_a_one_row_publish_keeps_the_text_the_publisher_wrote(tmp_path: Path) -> None:
    """The row of a one-row publish is stored as sent, the brackets and the blanks around
    the one element taken off (it is not encoded again); rows of a several-row publish
    are encoded compactly."""
    harness = Harness(tmp_path, streams=("events",))
    connection, transport = publisher(harness.master)
    take(transport)
    connection.dataReceived(
        b'PUBLISH 1 events [ {"a": 1, "b": "x y"}\t] \n'
        b'PUBLISH 2 events [{"a": 1}, [2, 3]]\n'
    )
    assert take(transport) == ["PUBLISHED 1 1", "PUBLISHED 2 2"]
    rows = [e.rows for e in harness.store.read("events", 0, 2, 10)]
    assert rows == [('{"a": 1, "b": "x y"}',), ('{"a":1}', "[2,3]")]


def test_a_read_past_the_in_flight_bound_is_taken_up_to_it() -> None:
    """With max_publishes_in_flight 100, a read of 250 publishes has exactly 100 taken; the
    rest wait, unread by the pipeline, until answers make room, and then go in order."""
    master, runner = blocking_master(limits=limits(max_publishes_in_flight=100))
    connection, transport = publisher(master)
    take(transport)
    connection.dataReceived(b"PUBLISH 0 events [0]\n")  # creates the stream
    runner.run_all()
    take(transport)
    connection.dataReceived(_lines(250))
    assert connection.publishing is not None
    assert connection.publishing.in_flight == 100
    assert connection.publishing.received == 101
    runner.run_all()
    assert connection.publishing.received == 251
    assert take(transport) == [f"PUBLISHED {i} {i + 1}" for i in range(1, 251)]
    assert master.head("events") == 251


def test_a_failed_commit_refuses_every_publish_of_its_run() -> None:
    """A store failure refuses each publish of the run with 503, in order, and forgets
    their keys so that a retry may try again."""
    master, runner = blocking_master()
    connection, transport = publisher(master)
    take(transport)
    connection.dataReceived(b"PUBLISH 0 events [0]\n")
    runner.run_all()
    take(transport)
    connection.dataReceived(_lines(3))

    def broken(*args: Any) -> Any:
        raise OSError("disk on fire")

    f, args, d = runner.queue.pop(0)
    runner.queue.insert(0, (broken, args, d))
    runner.run_all()
    sent = take(transport)
    assert [line.split(" ")[:3] for line in sent] == [
        ["REFUSED", "1", "503"], ["REFUSED", "2", "503"], ["REFUSED", "3", "503"]
    ]
    assert all(master.publish_keys.find(f"k-{i}", 0) is None for i in (1, 2, 3))
    connection.dataReceived(_lines(3))
    runner.run_all()
    assert take(transport) == ["PUBLISHED 1 2", "PUBLISHED 2 3", "PUBLISHED 3 4"]


def test_runs_and_single_publishes_keep_arrival_order(tmp_path: Path) -> None:
    """PUBLISH lines, a PUBLISH_TOKENS between them and a second stream: tokens follow
    the order the publishes arrived in."""
    harness = Harness(tmp_path, streams=("events", "other"))
    connection, transport = publisher(harness.master)
    take(transport)
    connection.dataReceived(
        _lines(2) + b"PUBLISH_TOKENS 9 events [[7],[8]]\n" + _lines(2, 3, stream="other")
        + _lines(1, 5)
    )
    assert take(transport) == [
        "PUBLISHED 1 1", "PUBLISHED 2 2", "PUBLISHED 9 3 4", "PUBLISHED 3 1", "PUBLISHED 4 2",
        "PUBLISHED 5 5",
    ]
    assert [e.rows for e in harness.store.read("events", 0, 5, 10)] == [
        ("1",), ("2",), ("7",), ("8",), ("5",)
    ]


# -- publish lines past the line limit --------------------------------------------------------


def _small_limit_harness(tmp_path: Path, **changes: Any) -> Harness:
    return Harness(
        tmp_path, streams=("events",),
        limits=limits(max_line_bytes=1024, max_body_bytes=1024, max_buffer_bytes=1 << 20,
                      **changes),
    )


_LONG = b'PUBLISH big events ["' + b"x" * 5000 + b'"]\n'


@pytest.mark.parametrize("chunk", [1, 7, 100, 1023, 1024, 1025, 4096, len(_LONG) + 100])
def test_a_publish_past_the_line_limit_is_refused_alone(tmp_path: Path, chunk: int) -> None:
    """A PUBLISH line longer than limits.max_line_bytes, in whatever pieces it arrives, is
    answered REFUSED <id> 413 in its turn; its bytes are dropped, nothing of it is stored,
    and the publishes around it go on over the same connection."""
    harness = _small_limit_harness(tmp_path)
    connection, transport = publisher(harness.master)
    take(transport)
    data = b"PUBLISH a events [1]\n" + _LONG + b"PUBLISH c events [3]\n"
    for i in range(0, len(data), chunk):
        connection.dataReceived(data[i:i + chunk])
    sent = take(transport)
    assert sent[0] == "PUBLISHED a 1"
    assert sent[1].startswith("REFUSED big 413 the publish line is ")
    assert "over the line limit of 1024 bytes (limits.max_line_bytes)" in sent[1]
    assert sent[2] == "PUBLISHED c 2"
    assert not connection._closing
    assert [e.rows for e in harness.store.read("events", 0, 5, 10)] == [("1",), ("3",)]
    assert connection.received_counts["PUBLISH"] == 3


def test_a_too_long_publish_waits_its_turn() -> None:
    """On a blocking store the refusal of a too-long publish waits for the answer of the
    publish before it, and a too-long PUBLISH_TOKENS is refused the same way."""
    master, runner = blocking_master(limits=limits(max_line_bytes=1024, max_body_bytes=1024))
    connection, transport = publisher(master)
    take(transport)
    connection.dataReceived(b"PUBLISH a events [1]\n")
    connection.dataReceived(b"PUBLISH_TOKENS b events [[\"" + b"y" * 3000)
    assert take(transport) == []
    connection.dataReceived(b"\"]]\nPUBLISH c events [3]\n")
    runner.run_all()
    sent = take(transport)
    assert sent[0] == "PUBLISHED a 1"
    assert sent[1].startswith("REFUSED b 413 the publish line is more than ")
    assert sent[2] == "PUBLISHED c 2"


def test_a_too_long_publish_behind_held_input_keeps_its_place() -> None:
    """With the in-flight bound reached (input held), a too-long publish that arrives is
    answered after the publishes held before it, not ahead of them."""
    master, runner = blocking_master(
        limits=limits(max_line_bytes=1024, max_body_bytes=1024, max_publishes_in_flight=2)
    )
    connection, transport = publisher(master)
    take(transport)
    connection.dataReceived(
        b"PUBLISH a events [1]\nPUBLISH b events [2]\nPUBLISH c events [3]\n" + _LONG[:2000]
    )
    connection.dataReceived(_LONG[2000:] + b"PUBLISH d events [4]\n")
    runner.run_all()
    sent = take(transport)
    assert [line.split(" ")[:3] for line in sent] == [
        ["PUBLISHED", "a", "1"], ["PUBLISHED", "b", "2"], ["PUBLISHED", "c", "3"],
        ["REFUSED", "big", "413"], ["PUBLISHED", "d", "4"],
    ]


@pytest.mark.parametrize("line", [
    b"PUBLISH " + b"i" * 70 + b" events [\"" + b"x" * 2000 + b"\"]\n",  # no id to answer
    b"PING " + b"1" * 2000 + b"\n",  # not a publish
])
def test_other_too_long_lines_still_close_the_connection(tmp_path: Path, line: bytes) -> None:
    harness = _small_limit_harness(tmp_path)
    connection, transport = publisher(harness.master)
    take(transport)
    connection.dataReceived(line)
    sent = take(transport)
    assert sent[-1].startswith("ERROR line too long: ")
    assert connection._closing


def test_a_stream_keeps_arrival_order_across_runs_and_single_publishes(tmp_path: Path) -> None:
    """A publish that needs the general path (a long integer), then one to another stream,
    then one to the first stream again, all in one read: the first stream's tokens follow
    the order its publishes arrived in."""
    harness = Harness(tmp_path, streams=("events", "other"))
    connection, transport = publisher(harness.master)
    take(transport)
    connection.dataReceived(
        b"PUBLISH 1 events [12345678901234567890]\n"
        b"PUBLISH 2 other [1]\n"
        b"PUBLISH 3 events [2]\n"
    )
    assert take(transport) == ["PUBLISHED 1 1", "PUBLISHED 2 1", "PUBLISHED 3 2"]
    assert [e.rows for e in harness.store.read("events", 0, 5, 10)] == [
        ("12345678901234567890",), ("2",)
    ]


# -- keys kept by a durable store ---------------------------------------------------------------


def test_a_key_outlives_a_restart_of_a_sqlite_master(tmp_path: Path) -> None:
    """A publish committed with its key before the master stopped (its answer lost) and
    retried with that key on the restarted master is answered with its first token and not
    stored again; keys older than the window are not loaded; a new key is stored."""
    from replication.store.sqlite import SqliteStore

    path = str(tmp_path / "s.sqlite3")

    def start(clock: Clock) -> tuple[Master, ManualRunner]:
        runner = ManualRunner()
        master = Master(MasterConfig(), SqliteStore(path), clock, run_blocking=runner)
        runner.run_all()
        return master, runner

    clock = Clock()
    clock.advance(1000.0)
    first, runner = start(clock)
    connection, transport = publisher(first)
    take(transport)
    connection.dataReceived(b"PUBLISH 1 events key=old [0]\n")
    runner.run_all()
    clock.advance(first.config.limits.publish_key_seconds + 1)
    connection.dataReceived(
        b"PUBLISH 2 events key=a [1]\nPUBLISH 3 events key=b [2]\nPUBLISH 4 events [3]\n"
    )
    connection.dataReceived(b"PUBLISH_TOKENS 5 events key=c [[4],[5]]\n")
    runner.run_all()
    assert [line for line in take(transport) if not line.startswith("PING")] == [
        "PUBLISHED 1 1", "PUBLISHED 2 2", "PUBLISHED 3 3", "PUBLISHED 4 4", "PUBLISHED 5 5 6",
    ]
    first.close()
    runner.run_all()

    second, runner = start(clock)
    assert second.publish_keys.find("old", clock.seconds()) is None  # past the window
    connection, transport = publisher(second)
    take(transport)
    connection.dataReceived(
        b"PUBLISH 9 events key=b [2]\nPUBLISH_TOKENS 8 events key=c [[4],[5]]\n"
        b"PUBLISH 7 events key=d [6]\n"
    )
    runner.run_all()
    assert take(transport) == ["PUBLISHED 9 3", "PUBLISHED 8 5 6", "PUBLISHED 7 7"]
    assert second.head("events") == 7
    second.close()
    runner.run_all()


def test_keys_are_forgotten_by_the_store_after_the_window(tmp_path: Path) -> None:
    """The retention pass makes a durable store forget keys older than
    limits.publish_key_seconds (at most once a minute)."""
    from replication.store.sqlite import SqliteStore

    store = SqliteStore(str(tmp_path / "s.sqlite3"))
    runner = ManualRunner()
    clock = Clock()
    clock.advance(1000.0)
    master = Master(MasterConfig(), store, clock, run_blocking=runner)
    runner.run_all()
    connection, transport = publisher(master)
    connection.dataReceived(b"PUBLISH 1 events key=a [1]\n")
    runner.run_all()
    assert [k.key for k in store.publish_keys(0.0, 10)] == ["a"]
    master.start()
    clock.advance(master.config.limits.publish_key_seconds + master.trim_interval)
    runner.run_all()
    assert store.publish_keys(0.0, 10) == []
    master.close()
    runner.run_all()
