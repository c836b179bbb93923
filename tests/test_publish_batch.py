"""PUBLISH_BATCH and PUBLISHED_RUN (docs/protocol.rst, "Batches"): many one-token publishes
in one line, each on its own. The codec, the master's pipeline over in-memory transports
(runs, refusals in the middle, whole-batch refusals, keys and retries, the in-flight and
line bounds, a blocking store), and a check that a batch is answered and stored as its
publishes sent as PUBLISH lines would be."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from test_publisher_protocol import blocking_master, limits, publisher, take
from twisted.internet.testing import StringTransport

from replication.master import MasterConnection
from replication.testing import Harness
from replication.wire.commands import (
    MAX_BATCH,
    CommandParseError,
    PublishBatchCommand,
    PublishingCommand,
    default_registry,
)

# -- the codec ------------------------------------------------------------------------------


def test_batch_commands_round_trip() -> None:
    registry = default_registry()
    for line, sender in [
        (b"PUBLISH_BATCH 7 3 events [[1],[2],[3]]", "worker"),
        (b'PUBLISH_BATCH 1 2 ev keys=ab12-40 [[{"a":"b c"}],[2,3]]', "worker"),
        (b"PUBLISH_BATCH 1 1 ev keys=a-b-c-0 [[1]]", "worker"),
        (b"PUBLISHED_RUN 7 3 46", "master"),
        (b"PUBLISHING 1024 65536 batch", "master"),
        (b"PUBLISHING 1024 65536 keys=kept batch", "master"),
    ]:
        assert registry.parse(line, sender).to_line() == line


def test_batch_fields() -> None:
    command = default_registry().parse(b"PUBLISH_BATCH 7 3 ev keys=a-b-40 [[1],[2],[3]]",
                                       "worker")
    assert command == PublishBatchCommand(7, 3, "ev", "[[1],[2],[3]]", "a-b", 40)
    assert isinstance(command, PublishBatchCommand)
    assert command.ids == range(7, 10)
    assert [command.key(i) for i in range(3)] == ["a-b-40", "a-b-41", "a-b-42"]
    plain = PublishBatchCommand(1, 2, "ev", "[[1],[2]]")
    assert plain.key(0) is None
    publishing = default_registry().parse(b"PUBLISHING 5 2048 later=1 batch", "master")
    assert isinstance(publishing, PublishingCommand) and publishing.batch
    assert not publishing.keys_kept
    assert not PublishingCommand(5, 2048).batch


@pytest.mark.parametrize("line,message", [
    (b"PUBLISH_BATCH 1 2 events", "PUBLISH_BATCH takes 4 or 5 arguments"),
    (b"PUBLISH_BATCH x 2 events [[1],[2]]", "first id must be a non-negative integer"),
    (b"PUBLISH_BATCH 1 0 events []", "count must be 1 to"),
    (b"PUBLISH_BATCH 1 %d events [[1]]" % (MAX_BATCH + 1), "count must be 1 to"),
    (b"PUBLISH_BATCH 1 two events [[1]]", "count must be a non-negative integer"),
    (b"PUBLISH_BATCH 1 1 events keys=abc [[1]]", "keys must be <prefix>-<start>"),
    (b"PUBLISH_BATCH 1 1 events keys=-5 [[1]]", "keys must be <prefix>-<start>"),
    (b"PUBLISH_BATCH 1 1 events keys=a-x [[1]]", "key start must be a non-negative"),
    (b"PUBLISH_BATCH 1 1 events keys=a-1", "rows missing after the keys"),
    (b"PUBLISH_BATCH 1 2 events keys=" + b"k" * 126 + b"-9 [[1],[2]]", "invalid publish key"),
    (b"PUBLISHED_RUN 1 0 5", "count must be 1 to"),
    (b"PUBLISHED_RUN 1 2 0", "first token must be at least 1"),
    (b"PUBLISHED_RUN 1 2", "PUBLISHED_RUN takes 3 arguments"),
])
def test_malformed_batch_commands(line: bytes, message: str) -> None:
    sender = "master" if line.startswith(b"PUBLISHED") else "worker"
    with pytest.raises(CommandParseError, match=message):
        default_registry().parse(line, sender)


def test_only_publishers_send_batches_and_only_masters_runs() -> None:
    registry = default_registry()
    with pytest.raises(CommandParseError, match="may not be sent by the master"):
        registry.parse(b"PUBLISH_BATCH 1 1 events [[1]]", "master")
    with pytest.raises(CommandParseError, match="may not be sent by the worker"):
        registry.parse(b"PUBLISHED_RUN 1 1 1", "worker")


# -- the master ------------------------------------------------------------------------------


def _spelt(lines: list[str]) -> list[str]:
    """``lines`` with each ``PUBLISHED_RUN`` spelt out as its ``PUBLISHED`` lines."""
    answers = []
    for line in lines:
        if line.startswith("PUBLISHED_RUN "):
            _, first, count, token = line.split(" ")
            answers.extend(f"PUBLISHED {int(first) + i} {int(token) + i}"
                           for i in range(int(count)))
        else:
            answers.append(line)
    return answers


def _rows(harness: Harness, stream: str = "events") -> list[list[Any]]:
    entries = harness.store.read(stream, 0, 1000, 10_000)
    return [[json.loads(row) for row in e.rows] for e in entries]


def test_a_batch_is_committed_as_a_run_and_answered_in_one_line(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    connection, transport = publisher(harness.master)
    assert take(transport)[3] == "PUBLISHING 1024 65536 batch"
    connection.dataReceived(b'PUBLISH 1 events [0]\n'
                            b'PUBLISH_BATCH 2 3 events [[{"a":1}],[2],[3,{"b":[4]}]]\n'
                            b'PUBLISH 5 events [5]\n')
    assert take(transport) == ["PUBLISHED 1 1", "PUBLISHED_RUN 2 3 2", "PUBLISHED 5 5"]
    assert _rows(harness) == [[0], [{"a": 1}], [2], [3, {"b": [4]}], [5]]
    assert harness.master.publishes["replication"] == 5
    assert connection.received_counts["PUBLISH_BATCH"] == 1
    assert not connection._closing


@pytest.mark.parametrize("body,stored", [
    # Not in orjson's compact form: each row is encoded again.
    (b'[ [ {"a": 1} ] , [2] ]', [[{"a": 1}], [2]]),
    # A row holding the text "],[" (in a string, and as nested arrays): not cut there.
    (b'[["],["],[[[1],[2]]]]', [["],["], [[[1], [2]]]]),
    # Integers beyond 64 bits keep every digit.
    (b"[[123456789012345678901234567890],[1]]", [[123456789012345678901234567890], [1]]),
    # Unicode, escapes.
    ('[["é\\n\\u00e9"],[{"\\"":"]"}]]'.encode(), [["é\né"], [{'"': "]"}]]),
])
def test_unusual_rows_are_stored_as_they_mean(tmp_path: Path, body: bytes,
                                              stored: list[Any]) -> None:
    harness = Harness(tmp_path, streams=("events",))
    connection, transport = publisher(harness.master)
    take(transport)
    connection.dataReceived(b"PUBLISH_BATCH 1 2 events " + body + b"\n")
    assert _spelt(take(transport)) == ["PUBLISHED 1 1", "PUBLISHED 2 2"]
    assert _rows(harness) == stored


def test_a_refusal_in_the_middle_refuses_that_publish_alone(tmp_path: Path) -> None:
    """An empty token, a row too long and more rows than allowed, in the middle of a batch:
    each is refused alone, in its place; the others are committed."""
    harness = Harness(
        tmp_path, streams=("events",),
        limits=limits(max_line_bytes=2048, max_body_bytes=2048, max_rows_per_publish=2),
    )
    connection, transport = publisher(harness.master)
    take(transport)
    long_row = '"' + "x" * 1960 + '"'
    connection.dataReceived(
        f"PUBLISH_BATCH 1 5 events keys=k-1 [[1],[],[2],[{long_row}],[3,4,5]]\n".encode()
    )
    sent = take(transport)
    assert sent[0] == "PUBLISHED 1 1"
    assert sent[1] == "REFUSED 2 400 rows must hold at least one row"
    assert sent[2] == "PUBLISHED 3 2"
    assert sent[3].startswith("REFUSED 4 413 ") and "would pass the line limit" in sent[3]
    assert sent[4].startswith("REFUSED 5 413 ") and "at most 2 rows" in sent[4]
    assert _rows(harness) == [[1], [2]]
    keys = harness.master.publish_keys
    assert keys.find("k-1", 0) is not None and keys.find("k-3", 0) is not None
    assert keys.find("k-2", 0) is None and keys.find("k-4", 0) is None  # refused: forgotten
    connection.dataReceived(b"PUBLISH_BATCH 6 1 events [[6]]\n")
    assert take(transport) == ["PUBLISHED_RUN 6 1 3"]


@pytest.mark.parametrize("body,message", [
    (b"[[1],[2]", "PUBLISH_BATCH rows is not valid JSON"),
    (b"[[1],[2],[3]]", "PUBLISH_BATCH says 2 publishes and its rows hold 3 elements"),
    (b"[[1]]", "PUBLISH_BATCH says 2 publishes and its rows hold 1 element:"),
    (b'{"a":1}', "PUBLISH_BATCH says 2 publishes and its rows hold no JSON array"),
    (b"[[NaN],[1]]", "PUBLISH_BATCH rows is not valid JSON"),
])
def test_a_batch_that_cannot_be_told_apart_is_refused_whole(
    tmp_path: Path, body: bytes, message: str
) -> None:
    harness = Harness(tmp_path)
    connection, transport = publisher(harness.master)
    take(transport)
    connection.dataReceived(b"PUBLISH_BATCH 1 2 events " + body + b"\nPUBLISH 3 events [3]\n")
    sent = take(transport)
    assert [line.split(" ")[:3] for line in sent[:2]] == [
        ["REFUSED", "1", "400"], ["REFUSED", "2", "400"]
    ]
    assert message in sent[0] and sent[0][len("REFUSED 1"):] == sent[1][len("REFUSED 2"):]
    assert sent[2] == "PUBLISHED 3 1"
    assert not connection._closing


def test_an_unknown_stream_or_a_forbidden_one_refuses_each_publish(tmp_path: Path) -> None:
    harness = Harness(tmp_path, streams=("events",), strict_streams=True)
    connection, transport = publisher(harness.master)
    take(transport)
    connection.dataReceived(b"PUBLISH_BATCH 1 2 nope [[1],[2]]\nPUBLISH_BATCH 3 1 bad!name [[1]]\n")
    sent = take(transport)
    assert [line.split(" ")[:3] for line in sent] == [
        ["REFUSED", "1", "404"], ["REFUSED", "2", "404"], ["REFUSED", "3", "400"]
    ]
    assert harness.master.head("nope") == 0


def test_a_retried_batch_is_answered_from_the_key_window(tmp_path: Path) -> None:
    """A batch sent again with the same keys (a client after a drop) is answered with the
    first tokens, nothing stored twice; a batch overlapping known keys has those answered
    from the window and the others stored; a key used for another stream is refused."""
    harness = Harness(tmp_path, streams=("events",))
    connection, transport = publisher(harness.master)
    take(transport)
    connection.dataReceived(b"PUBLISH_BATCH 1 3 events keys=p-10 [[1],[2],[3]]\n")
    assert take(transport) == ["PUBLISHED_RUN 1 3 1"]
    connection.dataReceived(b"PUBLISH_BATCH 4 3 events keys=p-10 [[1],[2],[3]]\n")
    assert take(transport) == ["PUBLISHED 4 1", "PUBLISHED 5 2", "PUBLISHED 6 3"]
    connection.dataReceived(b"PUBLISH_BATCH 7 3 events keys=p-12 [[3],[4],[5]]\n")
    assert take(transport) == ["PUBLISHED 7 3", "PUBLISHED 8 4", "PUBLISHED 9 5"]
    connection.dataReceived(b"PUBLISH_BATCH 10 2 other keys=p-14 [[5],[6]]\n")
    sent = take(transport)
    assert sent[0].startswith("REFUSED 10 409 key 'p-14' was used for stream 'events'")
    assert sent[1] == "PUBLISHED 11 1"
    assert _rows(harness) == [[1], [2], [3], [4], [5]]
    assert harness.master.publish_keys.hits == 5


def test_a_batch_with_one_key_twice_stores_it_once(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    connection, transport = publisher(harness.master)
    take(transport)
    connection.dataReceived(b"PUBLISH 1 events key=q-2 [1]\n"
                            b"PUBLISH_BATCH 2 2 events keys=q-1 [[0],[1]]\n")
    assert take(transport) == ["PUBLISHED 1 1", "PUBLISHED 2 2", "PUBLISHED 3 1"]
    assert harness.master.head("events") == 2


def test_on_a_blocking_store_a_batch_waits_for_its_commit() -> None:
    """Answered only after the commit; a retry of its keys on another connection while the
    commit runs waits for its outcome; a failed commit refuses every publish with 503 and
    forgets the keys."""
    master, runner = blocking_master()
    first, transport = publisher(master)
    take(transport)
    first.dataReceived(b"PUBLISH_BATCH 1 3 events keys=b-1 [[1],[2],[3]]\n")
    assert take(transport) == []
    first.connectionLost()
    second, transport2 = publisher(master)
    take(transport2)
    second.dataReceived(b"PUBLISH_BATCH 1 2 events keys=b-2 [[2],[3]]\n")
    assert take(transport2) == []
    runner.run_all()
    assert take(transport2) == ["PUBLISHED 1 2", "PUBLISHED 2 3"]
    assert master.head("events") == 3

    second.dataReceived(b"PUBLISH_BATCH 3 2 events keys=c-1 [[4],[5]]\n")

    def broken(*args: Any) -> Any:
        raise OSError("disk on fire")

    f, args, d = runner.queue.pop(0)
    runner.queue.insert(0, (broken, args, d))
    runner.run_all()
    assert [line.split(" ")[:3] for line in take(transport2)] == [
        ["REFUSED", "3", "503"], ["REFUSED", "4", "503"]
    ]
    assert master.publish_keys.find("c-1", 0) is None
    second.dataReceived(b"PUBLISH_BATCH 5 2 events keys=c-1 [[4],[5]]\n")
    runner.run_all()
    assert take(transport2) == ["PUBLISHED_RUN 5 2 4"]


def test_a_batch_counts_its_publishes_in_flight() -> None:
    """A batch is read whole and counts all its publishes against
    limits.max_publishes_in_flight: past it the input is held; a batch of more than that is
    an ERROR and a close."""
    master, runner = blocking_master(limits=limits(max_publishes_in_flight=4))
    connection, transport = publisher(master)
    take(transport)
    connection.dataReceived(b"PUBLISH 0 events [0]\n")  # creates the stream
    runner.run_all()
    take(transport)
    connection.dataReceived(b"PUBLISH_BATCH 1 3 events [[1],[2],[3]]\n"
                            b"PUBLISH_BATCH 4 3 events [[4],[5],[6]]\n"
                            b"PUBLISH 7 events [7]\n")
    pipeline = connection.publishing
    assert pipeline is not None
    assert pipeline.in_flight == 6 and pipeline.received == 7
    runner.run_all()
    assert pipeline.received == 8
    runner.run_all()
    assert take(transport) == ["PUBLISHED_RUN 1 3 2", "PUBLISHED_RUN 4 3 5", "PUBLISHED 7 8"]
    connection.dataReceived(b"PUBLISH_BATCH 8 5 events [[1],[2],[3],[4],[5]]\n")
    sent = take(transport)
    assert sent[-1] == ("ERROR PUBLISH_BATCH of 5 publishes: this master reads at most 4 "
                        "ahead of their answers (limits.max_publishes_in_flight, in PUBLISHING)")
    assert connection._closing


def test_a_batch_past_the_line_limit_is_refused_per_publish(tmp_path: Path) -> None:
    """A PUBLISH_BATCH longer than limits.max_line_bytes is refused with 413 for each of its
    publishes, in its turn; the connection goes on. One whose head cannot be read, or that
    says more publishes than may be in flight, is a framing error."""
    harness = Harness(tmp_path, limits=limits(max_line_bytes=1024, max_body_bytes=1024,
                                              max_publishes_in_flight=10))
    connection, transport = publisher(harness.master)
    take(transport)
    big = b"[" + b",".join([b'["' + b"x" * 400 + b'"]'] * 3) + b"]"
    connection.dataReceived(b"PUBLISH 1 events [1]\nPUBLISH_BATCH 2 3 events " + big
                            + b"\nPUBLISH 5 events [5]\n")
    sent = take(transport)
    assert sent[0] == "PUBLISHED 1 1"
    assert [line.split(" ")[:3] for line in sent[1:4]] == [
        ["REFUSED", "2", "413"], ["REFUSED", "3", "413"], ["REFUSED", "4", "413"]
    ]
    assert "over the line limit of 1024 bytes (limits.max_line_bytes)" in sent[1]
    assert sent[4] == "PUBLISHED 5 2"
    assert not connection._closing
    connection.dataReceived(b"PUBLISH_BATCH 6 11 events " + big + b"\n")
    assert take(transport)[-1].startswith("ERROR line too long: ")
    assert connection._closing


def test_workers_may_not_send_batches(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    connection = MasterConnection(harness.master)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(b"NAME w\nVERSION 2\nPUBLISH_BATCH 1 1 events [[1]]\n")
    assert take(transport)[-1] == (
        "ERROR PUBLISH_BATCH needs PUBLISHER first: workers may not publish (send PUBLISHER "
        "as the first command after the handshake)"
    )
    assert harness.master.head("events") == 0


# -- a batch is its publishes ------------------------------------------------------------------

_ROWS = [1, "x", None, True, 2.5, {"a": [1, 2]}, [], "],[", '"', "é", 10**20, -3,
         "y" * 900]
_TOKENS = [[], {}, 7, "s"]


def _outcome(tmp_path: Path, lines: list[bytes], sub: str) -> tuple[list[str], list[Any]]:
    """The answers (PUBLISHED_RUN spelt out as PUBLISHED per publish) and the stored rows
    after ``lines``."""
    harness = Harness(tmp_path / sub, streams=("events", "other"), strict_streams=True,
                      limits=limits(max_line_bytes=4096, max_body_bytes=4096,
                                    max_rows_per_publish=3))
    connection, transport = publisher(harness.master)
    take(transport)
    connection.dataReceived(b"".join(lines))
    answers = _spelt(take(transport))
    assert not connection._closing
    return answers, [_rows(harness, stream) for stream in ("events", "other")]


def test_a_batch_is_answered_and_stored_as_its_publish_lines(tmp_path: Path) -> None:
    """Random batches (one-row tokens, several rows, refused tokens, keys known and new,
    streams unknown) against the same publishes as PUBLISH lines: the same answers and the
    same rows."""
    rng = random.Random(5)
    for n in range(150):
        batch_lines, publish_lines = [], []
        next_id = 1
        for _ in range(rng.randint(1, 4)):
            count = rng.randint(1, 6)
            stream = rng.choice(["events", "events", "other", "unknown"])
            keyed = rng.random() < 0.5
            start = rng.randint(0, 8)
            tokens: list[Any] = []
            for _ in range(count):
                if rng.random() < 0.1:
                    tokens.append(rng.choice(_TOKENS))
                else:
                    tokens.append([rng.choice(_ROWS) for _ in range(rng.choice([1, 1, 1, 2, 4]))])
            keys = f" keys=k-{start}" if keyed else ""
            body = json.dumps(tokens, separators=(",", ":"), ensure_ascii=False)
            batch_lines.append(f"PUBLISH_BATCH {next_id} {count} {stream}{keys} {body}\n"
                               .encode())
            for i, token in enumerate(tokens):
                key = f" key=k-{start + i}" if keyed else ""
                text = json.dumps(token, separators=(",", ":"), ensure_ascii=False)
                publish_lines.append(f"PUBLISH {next_id + i} {stream}{key} {text}\n".encode())
            next_id += count
        assert (_outcome(tmp_path, batch_lines, f"b{n}")
                == _outcome(tmp_path, publish_lines, f"p{n}")), batch_lines


def test_the_keys_of_a_batch_share_one_entry_in_the_window() -> None:
    """PublishKeys.add_batch: each key of the batch is found with its own token (and only
    as the batch wrote it); the count bound pushes the oldest keys out one by one, the age
    bound the whole batch; knows_batch and knows_any see them."""
    from replication.master.publishing import FinishedKey, PublishKeys

    keys = PublishKeys(max_keys=5, max_age=10.0)
    keys.add_batch("p", 7, 3, "events", 1.0, 40)
    assert len(keys) == 3
    assert keys.find("p-8", 1.0) == FinishedKey("events", 1.0, range(41, 42))
    assert keys.find("p-9", 1.0) == FinishedKey("events", 1.0, range(42, 43))
    for other in ("p-10", "p-6", "p-08", "p-", "q-8", "p-8x", "p-\u0668"):
        assert keys.find(other, 1.0) is None, other
    assert keys.knows_any(["x", "p-7"], 1.0) and not keys.knows_any(["p-10", "p-07"], 1.0)
    assert keys.knows_batch("p", 9, 5, 1.0) and keys.knows_batch("p", 0, 8, 1.0)
    assert not keys.knows_batch("p", 10, 5, 1.0) and not keys.knows_batch("p", 0, 7, 1.0)
    assert not keys.knows_batch("q", 7, 3, 1.0)
    keys.add_batch("q", 1, 3, "other", 2.0, 5)
    assert len(keys) == 5
    assert keys.find("p-7", 2.0) is None  # the oldest key went
    assert not keys.knows_batch("p", 7, 1, 2.0)
    assert keys.find("p-8", 2.0) == FinishedKey("events", 1.0, range(41, 42))
    assert keys.find("q-3", 2.0) == FinishedKey("other", 2.0, range(7, 8))
    entry = keys.begin("single", "events", 2.5)  # one more key: p-8 goes too
    assert entry is not None and len(keys) == 5
    assert keys.find("p-8", 2.5) is None and keys.find("p-9", 2.5) is not None
    assert keys.knows_batch("s", 0, 1, 2.5) is False
    keys.finish("single", entry, [9])
    assert keys.knows_any(["single"], 2.5)
    assert keys.find("p-9", 11.5) is None  # past max_age: the whole batch
    assert keys.find("q-1", 11.5) == FinishedKey("other", 2.0, range(5, 6))
    assert len(keys) == 4
    keys.add_batch("q", 10, 2, "other", 11.6, 20)  # one key too many: q-1 goes
    assert len(keys) == 5 and keys.find("q-11", 11.6) == FinishedKey("other", 11.6,
                                                                      range(21, 22))
    assert keys.find("q-1", 11.6) is None and keys.find("q-2", 11.6) is not None
    # The window forgets ranges entirely.
    assert keys.find("q-2", 40.0) is None and len(keys) == 0 and not keys._ranges


def test_a_batch_next_to_single_keys_of_its_prefix(tmp_path: Path) -> None:
    """Keys of single publishes with the batch's prefix: a batch holding one of them is
    taken one by one (that one answered from the window); one that holds none is a run."""
    harness = Harness(tmp_path, streams=("events",))
    connection, transport = publisher(harness.master)
    take(transport)
    connection.dataReceived(b"PUBLISH 1 events key=r-3 [1]\n"
                            b"PUBLISH_BATCH 2 3 events keys=r-1 [[0],[2],[1]]\n"
                            b"PUBLISH_BATCH 5 2 events keys=r-4 [[3],[4]]\n"
                            b"PUBLISH 7 events key=r-5 [4]\n")
    assert take(transport) == ["PUBLISHED 1 1", "PUBLISHED 2 2", "PUBLISHED 3 3",
                               "PUBLISHED 4 1", "PUBLISHED_RUN 5 2 4", "PUBLISHED 7 5"]
    assert _rows(harness) == [[1], [0], [2], [3], [4]]


# -- fuzz: whatever the rows, one answer per publish -------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fuzz_campaign import load_profile, scaled  # noqa: E402

load_profile()
_FUZZ_DIRECTORY = Path(__import__("tempfile").mkdtemp(prefix="fuzz-batch-"))

_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
    | st.sampled_from(["],[", "[[", "]]", "\\", '"'])
    | st.integers(900, 1100).map(lambda n: "x" * n),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text("abc\u00e9", max_size=5),
                                                                  inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=scaled(300), deadline=None)
@given(
    st.integers(1, 5),
    st.lists(st.lists(_values, max_size=4) | _values, max_size=6),
    st.sampled_from(["", " ", "\t"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=8),
    st.booleans(),
)
def test_any_batch_gets_one_answer_per_publish(
    count: int, tokens: list[Any], blank: str, junk: str, keyed: bool
) -> None:
    """Any rows after a well-formed PUBLISH_BATCH head (JSON of any shape and size, blanks,
    junk text; a line that is not UTF-8 is a framing error, as for any line) get exactly one
    answer per publish, in order, and the connection stays; what is stored is what the
    PUBLISHED answers say."""
    harness = Harness(_FUZZ_DIRECTORY, streams=("events",),
                      limits=limits(max_line_bytes=2048, max_body_bytes=2048,
                                    max_rows_per_publish=3))
    connection, transport = publisher(harness.master)
    take(transport)
    text = json.dumps(tokens, separators=(",", blank + ":"), ensure_ascii=False)
    body = (text[: len(text) // 2] + junk + text[len(text) // 2:]).encode()
    keys = b" keys=f-1" if keyed else b""
    line = b"PUBLISH_BATCH 1 %d events%s %s" % (count, keys, body)
    connection.dataReceived(line.replace(b"\n", b" ").replace(b"\r", b" ") + b"\n")
    answers = _spelt(take(transport))
    assert not connection._closing, answers
    assert [answer.split(" ")[1] for answer in answers] == [str(i) for i in range(1, count + 1)]
    published = [int(a.split(" ")[2]) for a in answers if a.startswith("PUBLISHED ")]
    assert harness.master.head("events") == (max(published) if published else 0)


class _ModelWindow:
    """What PublishKeys must answer, one entry per key: the newest ``max_keys`` keys of the
    last ``max_age`` seconds, oldest first (a batch's keys in the order of their numbers)."""

    def __init__(self, max_keys: int, max_age: float) -> None:
        self.max_keys, self.max_age = max_keys, max_age
        self.keys: dict[str, tuple[str, float, int | None]] = {}
        #: The batch that added each key last.
        self.owner: dict[str, object] = {}

    def add(self, key: str, stream: str, at: float, token: int | None) -> None:
        self.keys[key] = (stream, at, token)
        while len(self.keys) > self.max_keys:
            del self.keys[next(iter(self.keys))]

    def find(self, key: str, now: float) -> tuple[str, float, int | None] | None:
        for old in [k for k, (_, at, _) in self.keys.items() if at <= now - self.max_age]:
            del self.keys[old]
        return self.keys.get(key)


@settings(max_examples=scaled(200), deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["batch", "single", "refused", "look", "running",
                                           "commit", "fail"]),
                          st.sampled_from(["p", "q", "p-1"]), st.integers(0, 30),
                          st.integers(1, 6), st.floats(0, 3)), max_size=40),
       st.integers(1, 12))
def test_the_key_window_with_ranges_answers_as_one_entry_per_key(
    steps: list[tuple[str, str, int, int, float]], max_keys: int
) -> None:
    """Random batches (ranges; committed at once, or running then committed or failed),
    single keys, refused keys and lookups at increasing times: find, knows_any, knows_batch
    and len agree with a window of one entry per key."""
    from replication.master.publishing import FinishedKey, KeyEntry, PublishKeys

    window = PublishKeys(max_keys=max_keys, max_age=5.0)
    model = _ModelWindow(max_keys, 5.0)
    now = 0.0
    token = 1
    running: list[tuple[Any, list[str]]] = []
    for action, prefix, start, count, step in steps:
        now += step
        names = [f"{prefix}-{n}" for n in range(start, start + count)]
        known = any(model.find(name, now) is not None for name in names)
        assert window.knows_batch(prefix, start, count, now) == known
        assert window.knows_any(names, now) == known
        if action in ("commit", "fail") and running:
            entry, keys = running.pop(0)
            # Only the keys the batch still holds: one pushed out may be another's since.
            held = [(i, name) for i, name in enumerate(keys)
                    if model.owner.get(name) is entry and name in model.keys]
            if action == "commit":
                window.finish_batch(entry, list(range(token, token + len(keys))))
                for i, name in held:
                    model.keys[name] = (model.keys[name][0], model.keys[name][1], token + i)
                token += len(keys)
            else:
                window.finish_batch(entry, (503, "no"))
                for _, name in held:
                    del model.keys[name]
        elif action in ("batch", "running") and not known:
            first = token if action == "batch" else None
            entry = window.add_batch(prefix, start, count, "s", now, first)
            for i, name in enumerate(names):
                model.add(name, "s", now, None if first is None else first + i)
                model.owner[name] = entry
            if first is None:
                running.append((entry, names))
            else:
                token += count
        elif action in ("single", "refused") and model.find(names[0], now) is None:
            entry = window.begin(names[0], "s", now)
            assert entry is not None
            if action == "refused":
                window.finish(names[0], entry, (503, "no"))
                # A refused key is forgotten, but begin() may have pushed an old key out.
                while len(model.keys) >= max_keys:
                    del model.keys[next(iter(model.keys))]
            else:
                window.finish(names[0], entry, [token])
                model.add(names[0], "s", now, token)
                model.owner[names[0]] = entry
                token += 1
        for name in names + [f"{prefix}-0{start}", "p-1-2"]:
            expected = model.find(name, now)
            found = window.find(name, now)
            if expected is not None and expected[2] is None:  # its batch's commit runs
                assert type(found) is KeyEntry and found.outcome is None, (name, now)
                continue
            assert found == (None if expected is None else FinishedKey(
                expected[0], expected[1], range(expected[2], expected[2] + 1))), (name, now)
        assert len(window) == len(model.keys)


def test_the_line_limit_counts_the_bytes_of_rows_not_their_characters(tmp_path: Path) -> None:
    """A batch in compact form with rows of non-ASCII text: a row whose characters would
    fit in an RDATA line but whose UTF-8 bytes do not is refused (413), alone."""
    harness = Harness(tmp_path, streams=("events",),
                      limits=limits(max_line_bytes=2048, max_body_bytes=4096))
    connection, transport = publisher(harness.master)
    take(transport)
    # A row may take 2048 - 98 (RDATA's prefix) = 1,950 bytes: 980 "é" take 1,962.
    fits, too_long = "é" * 400, "é" * 980
    for first, tokens in ((1, [[fits], ["a"]]), (3, [[too_long]])):
        body = json.dumps(tokens, ensure_ascii=False, separators=(",", ":"))
        connection.dataReceived(f"PUBLISH_BATCH {first} {len(tokens)} events {body}\n".encode())
    sent = take(transport)
    assert sent[0] == "PUBLISHED_RUN 1 2 1"
    assert sent[1].startswith("REFUSED 3 413 ")
    assert _rows(harness) == [[fits], ["a"]]


def test_the_keys_of_a_batch_outlive_a_restart_of_a_sqlite_master(tmp_path: Path) -> None:
    """A batch committed with its keys on a SQLite master (each key stored with its token,
    written out on the writer thread); after a restart, the same batch retried is answered
    with the first tokens, one by one from the loaded keys, and nothing is stored twice."""
    import dataclasses as _dataclasses

    from twisted.internet.task import Clock

    from helpers import ManualRunner
    from replication.config import MasterConfig
    from replication.master import Master
    from replication.master.publishing import CountedKeys
    from replication.store.sqlite import SqliteStore

    path = str(tmp_path / "s.sqlite3")
    clock = Clock()
    clock.advance(1000.0)

    def start() -> tuple[Master, ManualRunner]:
        runner = ManualRunner()
        master = Master(_dataclasses.replace(MasterConfig(), streams=("events",)),
                        SqliteStore(path), clock, run_blocking=runner)
        runner.run_all()
        return master, runner

    first, runner = start()
    connection, transport = publisher(first)
    take(transport)
    connection.dataReceived(b"PUBLISH_BATCH 1 3 events keys=z-5 [[1],[2],[3]]\n")
    runner.run_all()
    assert take(transport) == ["PUBLISHED_RUN 1 3 1"]
    first.close()
    runner.run_all()

    second, runner = start()
    assert second.publish_keys.find("z-6", clock.seconds()) is not None
    connection, transport = publisher(second)
    take(transport)
    connection.dataReceived(b"PUBLISH_BATCH 1 4 events keys=z-5 [[1],[2],[3],[4]]\n")
    runner.run_all()
    assert take(transport) == ["PUBLISHED 1 1", "PUBLISHED 2 2", "PUBLISHED 3 3",
                               "PUBLISHED 4 4"]
    assert second.head("events") == 4
    second.close()
    runner.run_all()
    keys = CountedKeys("p", 7, 3)
    assert list(keys) == [("p-7", 0, 1), ("p-8", 1, 1), ("p-9", 2, 1)]
    assert len(keys) == 3 and keys[-1] == ("p-9", 2, 1) and keys[1:] == list(keys)[1:]
    with pytest.raises(IndexError):
        keys[3]


def test_a_retry_of_a_running_batch_waits_for_its_commit() -> None:
    """While a batch's commit runs (one range of the window), a single publish retrying one
    of its keys and a batch retrying some of them wait for it and get its tokens; a batch
    whose commit fails forgets its keys, and whoever waited on one gets the refusal."""
    master, runner = blocking_master()
    connection, transport = publisher(master)
    take(transport)
    connection.dataReceived(b"PUBLISH 0 events [0]\n")  # creates the stream
    runner.run_all()
    take(transport)
    connection.dataReceived(b"PUBLISH_BATCH 1 3 events keys=w-1 [[1],[2],[3]]\n")
    other, transport2 = publisher(master)
    take(transport2)
    other.dataReceived(b"PUBLISH 1 events key=w-3 [3]\n"
                       b"PUBLISH_BATCH 2 2 events keys=w-2 [[2],[3]]\n")
    assert take(transport2) == []
    assert master.publish_keys.knows_batch("w", 1, 1, 0)
    runner.run_all()
    assert take(transport) == ["PUBLISHED_RUN 1 3 2"]
    assert take(transport2) == ["PUBLISHED 1 4", "PUBLISHED 2 3", "PUBLISHED 3 4"]
    assert master.head("events") == 4

    connection.dataReceived(b"PUBLISH_BATCH 4 2 events keys=v-1 [[5],[6]]\n")
    other.dataReceived(b"PUBLISH 4 events key=v-2 [6]\n")

    def broken(*args: Any) -> Any:
        raise OSError("disk on fire")

    f, args, d = runner.queue.pop(0)
    runner.queue.insert(0, (broken, args, d))
    runner.run_one()
    assert [line.split(" ")[:3] for line in take(transport)] == [
        ["REFUSED", "4", "503"], ["REFUSED", "5", "503"]
    ]
    assert [line.split(" ")[:3] for line in take(transport2)] == [["REFUSED", "4", "503"]]
    assert not master.publish_keys.knows_batch("v", 1, 2, 0)
    runner.run_all()
    assert master.head("events") == 4


@pytest.mark.parametrize("line", [
    b"PUBLISH 1 events [-9223372036854775809,18446744073709551616]\n",
    b"PUBLISH_BATCH 1 1 events [[-9223372036854775809,18446744073709551616]]\n",
    b"PUBLISH_BATCH 1 1 events [[-9223372036854775809]]\n",
])
def test_integers_orjson_reads_as_floats_stay_exact(tmp_path: Path, line: bytes) -> None:
    """orjson reads integers outside [-2**63, 2**64) as floats, from 19 digits on (below
    -2**63): a run of 19 digits goes to the standard library, and every digit is kept."""
    from replication.wire.commands import decode_json_bytes

    harness = Harness(tmp_path, streams=("events",))
    connection, transport = publisher(harness.master)
    take(transport)
    connection.dataReceived(line)
    assert _spelt(take(transport)) == ["PUBLISHED 1 1"]
    rows = harness.store.read("events", 0, 1, 10)[0].rows
    assert rows[0] == "-9223372036854775809"
    assert decode_json_bytes(b"[-9223372036854775809]") == [-9223372036854775809]


def test_only_integers_orjson_misreads_take_the_slow_decoder() -> None:
    """has_long_integer: 20 digits, or 19 after a minus sign; not 19 digits alone (a
    nanosecond timestamp), which orjson reads exactly."""
    from replication.wire.commands import decode_json_bytes, has_long_integer

    assert has_long_integer(b"[12345678901234567890]")
    assert has_long_integer(b"[-1234567890123456789]")
    assert not has_long_integer(b"[1763700000000000000, -123456789012345678]")
    assert decode_json_bytes(b"[1763700000000000000]") == [1763700000000000000]
    assert decode_json_bytes(b"[18446744073709551615]") == [18446744073709551615]
    assert decode_json_bytes(b"[-9223372036854775808]") == [-9223372036854775808]
