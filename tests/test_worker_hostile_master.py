"""Nothing a master sends may corrupt a worker: the rules of what a worker accepts
(docs/protocol.rst, "What a worker accepts"), each at its edge.

A worker refuses, with ``ERROR`` and a close (it reconnects from its recorded position),
a token that is not the next one, a ``POSITION`` above the last token received, a ``GAP``
that skips tokens, a ``POSITION``/``GAP``/``RESET`` between the rows of one token, a token
past ``limits.max_token_rows`` or ``limits.max_token_bytes``, and a row nested too deep;
it never records a position it did not handle. A ``POSITION`` below its position is a reset.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from replication.config import (
    ConfigError,
    WorkerConfig,
    WorkerStream,
    worker_config_from_text,
)
from replication.positions import PositionFile
from replication.streams import (
    DEFAULT_MAX_TOKEN_BYTES,
    DEFAULT_MAX_TOKEN_ROWS,
    AssemblyError,
    PositionCheck,
    TokenAssembler,
)
from replication.worker import Worker, WorkerConnection


class Handler:
    """Records tokens, gaps and resets."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, list[Any]]] = []
        self.gaps: list[tuple[str, int, int]] = []
        self.resets: list[tuple[str, int, int]] = []

    def __call__(self, stream: str, token: int, rows: list[Any]) -> None:
        self.calls.append((stream, token, rows))

    def gap(self, stream: str, first: int, last: int) -> None:
        self.gaps.append((stream, first, last))

    def reset(self, stream: str, old: int, head: int) -> None:
        self.resets.append((stream, old, head))

    def tokens(self) -> list[int]:
        return [token for _, token, _ in self.calls]


def connect(tmp_path: Any, position: int | None = None, start: str = "earliest",
            file: str = "w", **config: Any) -> tuple[Worker, Handler, StringTransport]:
    handler = Handler()
    positions = PositionFile(str(tmp_path / f"{file}.positions"), fsync=False, capacity=4096)
    if position is not None:
        positions.set("events", position)
    worker_config = dataclasses.replace(
        WorkerConfig(name="w", streams=(WorkerStream("events", start),)), **config
    )
    worker = Worker(worker_config, handler, positions, Clock())
    connection = WorkerConnection(worker)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(b"SERVER m\nVERSION 1\n")
    worker.test_connection = connection  # type: ignore[attr-defined]
    return worker, handler, transport


def feed(worker: Worker, data: bytes) -> None:
    worker.test_connection.dataReceived(data)  # type: ignore[attr-defined]


def sent_after_replicate(transport: StringTransport) -> list[bytes]:
    lines = transport.value().split(b"\n")
    return [line for line in lines if line and not line.startswith((b"NAME", b"VERSION",
                                                                    b"REPLICATE"))]


def refused(transport: StringTransport) -> str:
    errors = [line for line in sent_after_replicate(transport) if line.startswith(b"ERROR ")]
    assert len(errors) == 1, errors
    assert transport.disconnecting
    return errors[0].decode()


def test_a_position_above_the_last_token_received_is_refused(tmp_path: Any) -> None:
    """REPLICATE events 5 then POSITION events 8, with no rows: ERROR, a close, and the
    position stays 5 (tokens 6..8 were never handled)."""
    worker, handler, transport = connect(tmp_path, position=5)
    feed(worker, b"POSITION events 8\n")
    assert refused(transport) == (
        "ERROR POSITION events 8 is above token 5, the last this worker received: tokens "
        "6..8 were neither sent nor announced by GAP"
    )
    assert worker.positions.get("events") == 5
    assert handler.calls == []


def test_a_position_one_above_the_last_token_is_refused_and_equal_is_taken(
    tmp_path: Any,
) -> None:
    """At the edge: POSITION 6 after token 5 is refused; POSITION 5 is a catch-up done."""
    worker, _, transport = connect(tmp_path, position=4)
    feed(worker, b"RDATA events 5 [5]\nPOSITION events 5\n")
    assert sent_after_replicate(transport) == []
    assert worker.positions.get("events") == 5
    feed(worker, b"POSITION events 6\n")
    assert "POSITION events 6 is above token 5" in refused(transport)
    assert worker.positions.get("events") == 5


def test_a_catch_up_with_nothing_to_send_ends_at_the_workers_own_position(
    tmp_path: Any,
) -> None:
    """POSITION equal to the REPLICATE token is taken silently."""
    worker, handler, transport = connect(tmp_path, position=5)
    feed(worker, b"POSITION events 5\nRDATA events 6 [6]\n")
    assert sent_after_replicate(transport) == []
    assert handler.tokens() == [6]
    assert worker.positions.get("events") == 6


def test_a_token_that_skips_ahead_is_refused(tmp_path: Any) -> None:
    """Token 1 then token 5 with no GAP: token 1 is handled, token 5 is refused and not
    recorded."""
    worker, handler, transport = connect(tmp_path)
    feed(worker, b"RDATA events 1 [1]\nRDATA events 5 [5]\nRDATA events 6 [6]\n")
    assert refused(transport) == (
        "ERROR RDATA events token 5 skips ahead of token 1 sent before it (tokens 2..4 were "
        "neither sent nor announced by GAP)"
    )
    assert handler.tokens() == [1]
    assert worker.positions.get("events") == 1


def test_the_first_token_must_follow_the_replicate_token(tmp_path: Any) -> None:
    """After REPLICATE events 5 the first token must be 6: 7 is refused, 5 too."""
    worker, handler, transport = connect(tmp_path, position=5)
    feed(worker, b"RDATA events 7 [7]\n")
    assert "token 7 skips ahead of token 5" in refused(transport)
    worker, handler, transport = connect(tmp_path, file="w2", position=5)
    feed(worker, b"RDATA events 5 [5]\n")
    assert "token 5 does not follow token 5" in refused(transport)
    assert handler.calls == []


def test_after_replicate_now_the_first_position_jumps(tmp_path: Any) -> None:
    """A stream followed from now (REPLICATE NOW) takes the master's POSITION as it is
    (no rows were wanted before it); then tokens must follow it."""
    worker, handler, transport = connect(tmp_path, start="latest")
    assert b"REPLICATE events NOW\n" in transport.value()
    feed(worker, b"POSITION events 40\nRDATA events 41 [41]\n")
    assert worker.positions.get("events") == 41
    feed(worker, b"RDATA events 43 [43]\n")
    assert "token 43 skips ahead of token 41" in refused(transport)
    assert handler.tokens() == [41]


def test_a_gap_moves_the_position_and_must_start_after_the_last_token(tmp_path: Any) -> None:
    """GAP 6 9 after REPLICATE 5 is taken (the handler's gap hook, position 9, then token 10
    follows); a GAP that starts one token later than the next is refused."""
    worker, handler, transport = connect(tmp_path, position=5)
    feed(worker, b"GAP events 6 9\nRDATA events 10 [10]\nPOSITION events 10\n")
    assert sent_after_replicate(transport) == []
    assert handler.gaps == [("events", 6, 9)]
    assert handler.tokens() == [10]
    assert worker.positions.get("events") == 10
    feed(worker, b"GAP events 12 14\n")
    assert refused(transport) == (
        "ERROR GAP events 12 14 does not start after token 10, the last this worker received"
    )
    assert worker.positions.get("events") == 10


def test_a_position_below_the_workers_position_is_a_reset(tmp_path: Any) -> None:
    """A master that lost history answers POSITION 2 to REPLICATE 5: no ERROR; the handler's
    reset hook learns of it (old position 5, head 2), the position becomes 2 and the stream
    goes on from there."""
    worker, handler, transport = connect(tmp_path, position=5)
    feed(worker, b"POSITION events 2\nRDATA events 3 [3]\n")
    assert sent_after_replicate(transport) == []
    assert handler.resets == [("events", 5, 2)]
    assert handler.tokens() == [3]
    assert worker.positions.get("events") == 3


def test_a_position_one_below_is_a_reset(tmp_path: Any) -> None:
    """At the edge: POSITION 4 after REPLICATE 5 is a reset too."""
    worker, handler, _ = connect(tmp_path, position=5)
    feed(worker, b"POSITION events 4\n")
    assert handler.resets == [("events", 5, 4)]
    assert worker.positions.get("events") == 4


def test_reset_replays_from_the_first_token(tmp_path: Any) -> None:
    """RESET (the worker is ahead of the master's head) makes token 1 the next one."""
    worker, handler, transport = connect(tmp_path, position=5)
    feed(worker, b"RESET events 2\nRDATA events 1 [1]\nRDATA events 2 [2]\nPOSITION events 2\n")
    assert sent_after_replicate(transport) == []
    assert handler.resets == [("events", 5, 2)]
    assert handler.tokens() == [1, 2]
    assert worker.positions.get("events") == 2


@pytest.mark.parametrize("line", [b"POSITION events 1", b"GAP events 2 3", b"RESET events 0"])
def test_nothing_comes_between_the_rows_of_one_token(tmp_path: Any, line: bytes) -> None:
    """POSITION, GAP or RESET after a batch row and before its token is refused."""
    worker, handler, transport = connect(tmp_path)
    feed(worker, b"RDATA events batch [1]\n" + line + b"\nRDATA events 1 [2]\n")
    assert refused(transport).endswith("arrived between the rows of one token (1 rows sent "
                                       "with batch)")
    assert handler.calls == []
    assert worker.positions.get("events") is None


def test_a_token_of_max_token_rows_is_taken_and_one_more_row_refused(tmp_path: Any) -> None:
    """With limits.max_token_rows 3: a token of 3 rows is handled; a batch of 3 rows and its
    closing row (4) is refused at the closing row; 4 batch rows at the fourth."""
    worker, handler, transport = connect(tmp_path, max_token_rows=3)
    feed(worker, b"RDATA events batch [1]\nRDATA events batch [2]\nRDATA events 1 [3]\n")
    assert handler.calls == [("events", 1, [[1], [2], [3]])]
    feed(worker, b"RDATA events batch [1]\n" * 3 + b"RDATA events 2 [4]\n")
    assert refused(transport) == (
        "ERROR RDATA events: a token of at least 4 rows (at most 3): see the worker's "
        "limits.max_token_rows and limits.max_token_bytes"
    )
    assert worker.positions.get("events") == 1
    worker, _, transport = connect(tmp_path, file="w2", max_token_rows=3)
    feed(worker, b"RDATA events batch [1]\n" * 4)
    assert "at least 4 rows (at most 3)" in refused(transport)


def test_a_token_of_max_token_bytes_is_taken_and_one_byte_more_refused(tmp_path: Any) -> None:
    """A token's bytes are those of its rows' JSON as received: exactly
    limits.max_token_bytes is handled, one more is refused at the row that passes it."""
    filler = b"RDATA events batch " + b'"' + b"x" * 998 + b'"'  # a row of 1,000 bytes
    batch = b"RDATA events batch [12]\n" * 5  # 20 bytes
    worker, handler, transport = connect(tmp_path, max_line_bytes=1024, max_token_bytes=1024)
    feed(worker, filler + b"\n" + batch + b"RDATA events 1 [12]\n")  # 1,024 bytes
    assert sent_after_replicate(transport) == []
    assert handler.tokens() == [1]
    worker, handler, transport = connect(tmp_path, file="w2", max_line_bytes=1024,
                                         max_token_bytes=1024)
    feed(worker, filler + b"\n" + batch + b"RDATA events 1 [123]\n")  # 1,025 bytes
    assert refused(transport) == (
        "ERROR RDATA events: a token of at least 1025 bytes (at most 1024): see the "
        "worker's limits.max_token_rows and limits.max_token_bytes"
    )
    assert handler.calls == []
    worker, handler, transport = connect(tmp_path, file="w3", max_line_bytes=1024,
                                         max_token_bytes=1024)
    feed(worker, filler + b"\n" + batch + b"RDATA events batch [123]\n")
    assert "at least 1025 bytes (at most 1024)" in refused(transport)


def test_a_row_nested_too_deep_is_refused_clearly(tmp_path: Any) -> None:
    """A row nested 5,000 deep is refused with a clear ERROR (no RecursionError, no crash);
    a row nested 500 deep is handled."""
    deep = b"[" * 500 + b"]" * 500
    worker, handler, transport = connect(tmp_path, max_line_bytes=65536)
    feed(worker, b"RDATA events 1 " + deep + b"\n")
    assert handler.tokens() == [1]
    feed(worker, b"RDATA events 2 " + b"[" * 5000 + b"]" * 5000 + b"\n")
    assert refused(transport) == (
        "ERROR RDATA row is nested too deep to decode (JSON arrays and objects nest at most "
        "about 1,000 levels)"
    )
    assert worker.positions.get("events") == 1


def test_the_token_limits_are_configured_and_checked() -> None:
    """limits.max_token_rows and limits.max_token_bytes load, default to bounds that cover
    the master's own limits, and max_token_bytes may not be below max_line_bytes."""
    assert WorkerConfig().max_token_rows == DEFAULT_MAX_TOKEN_ROWS == 8 * 1024 * 1024
    assert WorkerConfig().max_token_bytes == DEFAULT_MAX_TOKEN_BYTES == 32 * 1024 * 1024
    config = worker_config_from_text(
        "limits: {max_line_bytes: 2KiB, max_token_rows: 10, max_token_bytes: 2KiB}\n"
    )
    assert (config.max_token_rows, config.max_token_bytes) == (10, 2048)
    with pytest.raises(ConfigError, match="max_token_bytes"):
        worker_config_from_text("limits: {max_line_bytes: 2KiB, max_token_bytes: 2047}\n")
    with pytest.raises(ConfigError, match="max_token_rows"):
        worker_config_from_text("limits: {max_token_rows: 0}\n")


def test_the_assembler_rules_by_themselves() -> None:
    """TokenAssembler alone: start, next tokens, POSITION equal/below/above, GAP, RESET."""
    assembler = TokenAssembler(max_rows=10, max_bytes=100)
    assembler.start("s", 3)
    assert assembler.add("s", 4, "a", 5) == (4, ["a"])
    assert assembler.position("s", 4) == PositionCheck(reset=False)
    assert assembler.position("s", 2) == PositionCheck(reset=True, below=4)
    with pytest.raises(AssemblyError):
        assembler.position("s", 3)
    assembler.gap("s", 3, 7)
    assert assembler.add("s", 8, "b", 5) == (8, ["b"])
    assembler.reset("s")
    assert assembler.add("s", 1, "c", 5) == (1, ["c"])
    assembler.start("t", None)
    assert assembler.add("t", 99, "d", 5) == (99, ["d"])
    assert assembler.position("t", 99) == PositionCheck(reset=False)


def test_a_flood_of_batch_rows_is_cut_off_at_the_bound(tmp_path: Any) -> None:
    """100,000 batch rows with no closing token, in reads of many lines: the worker gathers
    no more than limits.max_token_rows of them, refuses the next, and gathers nothing
    after."""
    worker, handler, transport = connect(tmp_path, max_token_rows=1000)
    connection = worker.test_connection  # type: ignore[attr-defined]
    lines = b"RDATA events batch {}\n" * 1000
    for _ in range(100):
        feed(worker, lines)
        assert connection.assembler.pending_rows("events") <= 1000
    assert connection.assembler.pending_rows("events") == 1000
    assert "a token of at least 1001 rows (at most 1000)" in refused(transport)
    assert handler.calls == []


def test_a_legacy_master_repeating_token_numbers_is_never_followed(tmp_path: Any) -> None:
    """A master of the 2017-2020 dialect (no VERSION answer) that repeats a multi-row
    token's number during catch-up: the worker handles none of it and records nothing (it
    needs the master's VERSION first), so no row of the token can be lost."""
    handler = Handler()
    positions = PositionFile(str(tmp_path / "w.positions"), fsync=False, capacity=4096)
    positions.set("events", 4)
    worker = Worker(WorkerConfig(name="w", streams=(WorkerStream("events"),)), handler,
                    positions, Clock())
    connection = WorkerConnection(worker)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(b"SERVER synapse\nRDATA events 5 [1]\nRDATA events 5 [2]\n"
                            b"POSITION events 5\n")
    assert transport.value().split(b"\n")[2] == (
        b"ERROR expected VERSION after SERVER, got RDATA"
    )
    assert transport.disconnecting
    assert handler.calls == []
    assert worker.positions.get("events") == 4


def test_a_version_1_master_repeating_a_token_number_is_refused(tmp_path: Any) -> None:
    """Our masters never repeat a token number; a version-1 master that does is refused
    at the second row (its first row was handled as the token), and the position stays at
    the token handled."""
    worker, handler, transport = connect(tmp_path, position=4)
    feed(worker, b"RDATA events 5 [1]\nRDATA events 5 [2]\nPOSITION events 5\n")
    assert refused(transport) == (
        "ERROR RDATA events token 5 does not follow token 5 sent before it"
    )
    assert handler.calls == [("events", 5, [[1]])]
    assert worker.positions.get("events") == 5
