"""Worker positions: the contract every :class:`Positions` keeps (run against the in-memory
positions and the position file), local and other origins, then the position file's own:
records, reloads, torn and damaged files, formats v1 to v3, compaction, a process killed
mid-run."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from replication.positions import HEADER, HEADER_V3, PositionFile, PositionFileError
from replication.worker.positions import (
    MemoryPositions,
    OriginError,
    Positions,
    PositionsError,
)

HEADER_V1 = b"# replication positions v1\n"
ROOT = Path(__file__).resolve().parent.parent

#: Well-formed origin ids (16 to 64 characters of A-Z a-z 0-9 - _).
ORIGIN_B = "B" * 15 + "b"
ORIGIN_C = "origin-C_0123456789"


def journal(path: Path, header: bytes = HEADER) -> tuple[bytes, bytes]:
    """The header and the journal lines of a v2 (or ``header``) file, checking it is
    well-formed: the header, the lines, then only NUL bytes to the end."""
    raw = path.read_bytes()
    assert raw.startswith(header)
    body, _, padding = raw[len(header):].partition(b"\0")
    assert padding.strip(b"\0") == b""
    return raw[:len(header)], body


def record_renames(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make ``os.replace`` note the path of each file it renames over in the list
    returned (a compaction of the position file is one rename)."""
    renamed: list[str] = []
    real_replace = os.replace

    def replace(source: str, destination: str) -> None:
        renamed.append(str(destination))
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", replace)
    return renamed


@pytest.fixture(params=["memory", "file"])
def positions(request: pytest.FixtureRequest, tmp_path: Path) -> Positions:
    """Each implementation of :class:`Positions`, empty."""
    if request.param == "memory":
        return MemoryPositions()
    opened = PositionFile(str(tmp_path / "w.positions"), fsync=False, capacity=64)
    request.addfinalizer(opened.close)
    return opened


def test_a_stream_never_recorded_has_no_position(positions: Positions) -> None:
    """``get`` of a stream never recorded is ``None``, not 0 (0 means "before token 1")."""
    assert positions.get("events") is None
    positions.set("receipts", 0)
    assert positions.get("receipts") == 0
    assert positions.get("events") is None


def test_the_last_position_recorded_wins(positions: Positions) -> None:
    """Each stream's position is the last token set for it, even a lower one (a reset moves
    a position back to 0); streams do not affect each other."""
    for token in (1, 2, 3, 10):
        positions.set("events", token)
    positions.set("receipts", 7)
    positions.set("events", 0)
    assert positions.get("events") == 0
    assert positions.get("receipts") == 7


def test_the_local_origin_is_the_default(positions: Positions) -> None:
    """``origin=None`` names the local origin, the same positions as no origin at all."""
    positions.set("events", 4, origin=None)
    assert positions.get("events") == 4
    positions.set("events", 5)
    assert positions.get("events", None) == 5


def test_sync_keeps_every_position(positions: Positions) -> None:
    """A sync, with or without changes since the last one, changes no position."""
    positions.sync()
    positions.set("events", 1)
    positions.sync()
    positions.sync()
    assert positions.get("events") == 1


def test_recording_after_close_fails(positions: Positions) -> None:
    """After ``close``, recording a position of any origin raises PositionsError; closing
    again does nothing."""
    positions.set("events", 1)
    positions.close()
    with pytest.raises(PositionsError):
        positions.set("events", 2)
    with pytest.raises(PositionsError):
        positions.set("events", 2, origin=ORIGIN_B)
    positions.close()


def test_recording_another_origin_after_close_fails(positions: Positions) -> None:
    """A position of another origin recorded after ``close`` raises PositionsError too,
    when the positions already hold other origins."""
    positions.set("events", 1, origin=ORIGIN_B)
    positions.close()
    with pytest.raises(PositionsError):
        positions.set("events", 2, origin=ORIGIN_C)


def test_big_tokens_are_kept_exactly(positions: Positions) -> None:
    """Tokens up to the protocol's largest (19 digits) are kept exactly."""
    positions.set("events", 9_999_999_999_999_999_999)
    assert positions.get("events") == 9_999_999_999_999_999_999


def test_a_file_with_the_largest_token_is_read(tmp_path: Path) -> None:
    """A token of 19 digits (the protocol's largest) in the file is read exactly."""
    path = tmp_path / "w.positions"
    path.write_bytes(HEADER + b"events 9999999999999999999\n" + bytes(64))
    assert PositionFile(str(path)).get("events") == 9_999_999_999_999_999_999


def test_positions_are_kept_per_stream_and_origin(positions: Positions) -> None:
    """Positions of other origins are kept per (stream, origin), apart from the local ones
    and from each other."""
    positions.set("events", 3)
    assert positions.get("events", ORIGIN_B) is None
    positions.set("events", 9, origin=ORIGIN_B)
    positions.set("events", 4, origin=ORIGIN_C)
    positions.set("receipts", 1, origin=ORIGIN_B)
    positions.set("events", 10, origin=ORIGIN_B)
    assert positions.get("events") == 3
    assert positions.get("events", ORIGIN_B) == 10
    assert positions.get("events", origin=ORIGIN_C) == 4
    assert positions.get("receipts", ORIGIN_B) == 1
    assert positions.get("receipts") is None
    assert positions.get("receipts", ORIGIN_C) is None
    positions.set("events", 0, origin=ORIGIN_B)  # a reset moves it back
    assert positions.get("events", ORIGIN_B) == 0


def test_the_vector_of_a_stream_has_each_origin_position(positions: Positions) -> None:
    """``vector(stream)`` maps each origin recorded on the stream to its position, the local
    origin under ``None``; a stream never recorded has an empty vector; the vector is a
    copy."""
    assert positions.vector("events") == {}
    positions.set("events", 5, origin=ORIGIN_B)
    assert positions.vector("events") == {ORIGIN_B: 5}
    positions.set("events", 7)
    positions.set("events", 2, origin=ORIGIN_C)
    positions.set("receipts", 1)
    vector = positions.vector("events")
    assert vector == {None: 7, ORIGIN_B: 5, ORIGIN_C: 2}
    vector[ORIGIN_B] = 99
    assert positions.get("events", ORIGIN_B) == 5
    assert positions.vector("receipts") == {None: 1}


@pytest.mark.parametrize(
    "origin",
    [
        "",
        "master-b",
        "A" * 15,  # one too short
        "A" * 65,  # one too long
        "A" * 15 + " ",
        "A" * 15 + ".",
        "A" * 15 + "\n",
        "A" * 15 + "\u00e9",
    ],
)
def test_a_malformed_origin_id_is_refused(positions: Positions, origin: str) -> None:
    """Recording or reading a position of a malformed origin id raises OriginError (a
    PositionsError and a ValueError) naming it, and records nothing."""
    positions.set("events", 1)
    with pytest.raises(OriginError, match="malformed"):
        positions.set("events", 2, origin=origin)
    with pytest.raises(OriginError):
        positions.get("events", origin)
    assert positions.vector("events") == {None: 1}
    assert issubclass(OriginError, PositionsError) and issubclass(OriginError, ValueError)


@pytest.mark.parametrize("origin", ["A" * 16, "z" * 64, "-_09azAZ-_09azAZ"])
def test_origin_ids_at_the_edges_are_kept(positions: Positions, origin: str) -> None:
    """Origin ids of 16 and of 64 characters, of every allowed kind, are kept."""
    positions.set("events", 8, origin=origin)
    assert positions.get("events", origin) == 8
    assert positions.vector("events") == {origin: 8}


def test_memory_positions_start_from_local_positions() -> None:
    """MemoryPositions' initial positions are local; ``all`` lists the local ones only."""
    positions = MemoryPositions({"events": 3})
    positions.set("events", 9, origin=ORIGIN_B)
    assert positions.get("events") == 3
    assert positions.all() == {"events": 3}
    assert positions.vector("events") == {None: 3, ORIGIN_B: 9}


def test_positions_survive_reopening(tmp_path: Path) -> None:
    """Positions recorded, then read back by a new PositionFile, are the last ones set."""
    path = tmp_path / "sub" / "w.positions"
    positions = PositionFile(str(path))
    assert positions.get("events") is None
    for token in range(1, 6):
        positions.set("events", token)
    positions.set("receipts", 3)
    positions.set("events", 0)  # a reset may move a position back
    positions.sync()
    positions.close()
    again = PositionFile(str(path))
    assert again.all() == {"events": 0, "receipts": 3}
    assert path.stat().st_size == 4 * 1024 * 1024
    assert journal(path)[1] == b"events 0\nreceipts 3\n"


def test_a_recorded_position_is_in_the_file_at_once(tmp_path: Path) -> None:
    """What set() stores is in the file as any other process reads it, before any sync or
    close: it is in the operating system, not in the worker's memory."""
    path = tmp_path / "w.positions"
    positions = PositionFile(str(path), capacity=4096)
    positions.set("events", 41)
    positions.set("events", 42)
    assert journal(path)[1] == b"events 41\nevents 42\n"
    positions.close()
    positions.close()  # closing twice is harmless
    with pytest.raises(PositionFileError, match="is closed"):
        positions.set("events", 43)
    positions.sync()  # nothing to do once closed


@pytest.mark.parametrize(
    "content, expected",
    [
        # v2: the last line cut short, then the NUL padding
        (HEADER + b"events 41\nevents 4" + bytes(100), {"events": 41}),
        # v2: a line being copied when the process was killed: a byte before its newline
        # never written
        (HEADER + b"events 41\nevents 4\x002\n" + bytes(100), {"events": 41}),
        # v2 after a power cut: a page not written back, then a later one that was
        (HEADER + b"events 41\nrec" + bytes(100) + b"events 50\n" + bytes(100), {"events": 41}),
        # v1: no padding, the last line cut short
        (HEADER_V1 + b"events 41\nreceipts 2\nevents 4", {"events": 41, "receipts": 2}),
    ],
)
def test_a_torn_last_line_is_ignored_and_removed(
    tmp_path: Path, content: bytes, expected: dict[str, int]
) -> None:
    """A line cut short by a process killed or a power cut in the middle of recording it is
    dropped, with anything after a run of NUL bytes; the positions before it stand, and the
    file is rewritten whole."""
    path = tmp_path / "w.positions"
    path.write_bytes(content)
    positions = PositionFile(str(path), capacity=1024)
    assert positions.all() == expected
    assert journal(path)[1] == b"".join(
        b"%s %d\n" % (s.encode(), t) for s, t in sorted(expected.items())
    )
    assert path.stat().st_size == 1024


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"positions": {"events": 3}}', "is not a position file"),
        (b"", "is not a position file"),
        (bytes(4096), "is not a position file"),
        (b"# replication positions v0\nevents 1\n", "is not a position file"),
        (b"# replication positions v2 \nevents 1\n", "is not a position file"),
        (b"# replication positions v03\nevents 1\n", "is not a position file"),
        (HEADER + b"events x\n", "damaged line 2"),
        (HEADER + b"events 1 2\n" + bytes(64), "damaged line 2"),
        (HEADER + b"events 1\nevents\n" + bytes(64), "damaged line 3"),
        (HEADER_V1 + b"events 1\nevents -2\n", "damaged line 3"),
        # an origin in a format without origins
        (HEADER + b"events 1 %s\n" % ORIGIN_B.encode() + bytes(64), "damaged line 2"),
        (HEADER_V1 + b"events 1\nevents 1 %s\n" % ORIGIN_B.encode(), "damaged line 3"),
        # v3: malformed origin ids, a missing token, one field too many
        (HEADER_V3 + b"events 1 %s\n" % (b"A" * 15) + bytes(64), "damaged line 2"),
        (HEADER_V3 + b"events 1 %s\n" % (b"A" * 65) + bytes(64), "damaged line 2"),
        (HEADER_V3 + b"events 1 master.b.example.org\n" + bytes(64), "damaged line 2"),
        (HEADER_V3 + b"events 1 %s\n" % (b"\xc3\xa9" * 8) + bytes(64), "damaged line 2"),
        (HEADER_V3 + b"events 1\nevents %s\n" % ORIGIN_B.encode(), "damaged line 3"),
        (HEADER_V3 + b"events 1 %s 2\n" % ORIGIN_B.encode(), "damaged line 2"),
        (HEADER_V3 + b"events 1 %s \n" % ORIGIN_B.encode(), "damaged line 2"),
        # tokens beyond the protocol's 19 digits, which no REPLICATE can carry
        (HEADER + b"events 1\nevents 12345678901234567890\n" + bytes(64),
         "token of 20 digits on line 3"),
        (HEADER_V3 + b"events %s %s\n" % (b"9" * 20, ORIGIN_B.encode()) + bytes(64),
         "token of 20 digits on line 2"),
    ],
)
def test_a_foreign_or_damaged_file_is_refused_and_left_alone(
    tmp_path: Path, content: bytes, message: str
) -> None:
    """A file that is not a position file stops the worker with a message naming it; the
    file is not modified."""
    path = tmp_path / "w.positions"
    path.write_bytes(content)
    with pytest.raises(PositionFileError, match=message) as info:
        PositionFile(str(path))
    assert str(path) in str(info.value)
    assert path.read_bytes() == content
    assert not os.path.exists(f"{path}.tmp")


def test_a_v1_file_is_read_and_converted(tmp_path: Path) -> None:
    path = tmp_path / "w.positions"
    path.write_bytes(HEADER_V1 + b"events 41\nreceipts 7\nevents 42\n")
    positions = PositionFile(str(path), capacity=512)
    assert positions.all() == {"events": 42, "receipts": 7}
    assert journal(path)[1] == b"events 42\nreceipts 7\n"
    assert path.stat().st_size == 512
    positions.set("events", 43)
    positions.close()
    assert PositionFile(str(path)).all() == {"events": 43, "receipts": 7}


def test_the_journal_is_compacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When a line does not fit, the file is rewritten with one line per stream, at the
    same size; the values are right after many compactions and after reopening."""
    path = tmp_path / "w.positions"
    positions = PositionFile(str(path), capacity=256)
    renamed = record_renames(monkeypatch)
    for token in range(1, 401):
        positions.set("a", token)
        positions.set("b", token * 2)
        assert positions.get("a") == token
    assert len(renamed) >= 20 and set(renamed) == {str(path)}  # 256 bytes hold ~30 lines
    assert path.stat().st_size == 256
    assert positions.all() == {"a": 400, "b": 800}
    lines = journal(path)[1].splitlines()
    assert lines[-2:] == [b"a 400", b"b 800"]
    assert len(lines) <= (256 - len(HEADER)) // len(b"a 1\n")
    assert not os.path.exists(f"{path}.tmp")
    positions.close()
    assert PositionFile(str(path), capacity=256).all() == {"a": 400, "b": 800}


def test_the_capacity_grows_when_the_streams_do_not_fit(tmp_path: Path) -> None:
    """Compact positions filling more than half the file double its size."""
    path = tmp_path / "w.positions"
    positions = PositionFile(str(path), capacity=64)
    expected = {f"stream-{n:03}": n * 1000 for n in range(50)}
    for stream, token in expected.items():
        positions.set(stream, token)
    for stream, token in expected.items():
        positions.set(stream, token + 1)
    expected = {stream: token + 1 for stream, token in expected.items()}
    assert positions.all() == expected
    size = path.stat().st_size
    assert size >= 2 * (len(HEADER) + sum(len(f"{s} {t}\n") for s, t in expected.items()))
    assert size & (size - 1) == 0  # 64 doubled
    positions.close()
    assert PositionFile(str(path), capacity=64).all() == expected


def test_an_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(
        PositionFileError, match="cannot (open|read|write) position file .*Not a directory"
    ):
        PositionFile(str(blocker / "w.positions"))


def test_a_full_disk_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Running out of space while preallocating, at start or when compacting, is an error
    naming the file; the file on disk is kept, and recording works again once there is
    space."""
    path = tmp_path / "w.positions"

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(os, "posix_fallocate", no_space)
        with pytest.raises(PositionFileError, match="No space left on device") as info:
            PositionFile(str(path))
        assert str(path) in str(info.value)
        assert not path.exists() and not os.path.exists(f"{path}.tmp")

    positions = PositionFile(str(path), capacity=128)
    positions.set("events", 1)
    with monkeypatch.context() as patch:
        patch.setattr(os, "posix_fallocate", no_space)
        with pytest.raises(PositionFileError, match=f"{path}.*No space left on device"):
            for token in range(2, 100):
                positions.set("events", token)
        assert not os.path.exists(f"{path}.tmp")
        # the full file stays, with every position that fitted in it
        failed = positions.get("events")
        assert failed is not None
        assert journal(path)[1].splitlines()[-1] == b"events %d" % (failed - 1)
    positions.set("events", 100)
    positions.close()
    assert PositionFile(str(path)).all() == {"events": 100}


def test_without_posix_fallocate_the_file_is_filled_with_zeros(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "posix_fallocate")
    path = tmp_path / "w.positions"
    positions = PositionFile(str(path), capacity=3 * 1024 * 1024 + 5)
    positions.set("events", 7)
    assert path.stat().st_size == 3 * 1024 * 1024 + 5
    assert journal(path)[1] == b"events 7\n"


def test_sync_flushes_only_when_positions_were_recorded(tmp_path: Path) -> None:
    path = tmp_path / "w.positions"
    for fsync in (True, False):
        positions = PositionFile(str(path), fsync=fsync)
        positions.sync()
        positions.set("events", 1)
        positions.sync()
        positions.sync()
        positions.close()
        assert PositionFile(str(path)).get("events") == 1


def test_a_file_of_local_positions_stays_v2(tmp_path: Path) -> None:
    """A worker that records local positions only keeps a v2 file, byte for byte the format
    the previous release wrote and reads, across reopening and compaction."""
    path = tmp_path / "w.positions"
    positions = PositionFile(str(path), capacity=128)
    for token in range(1, 50):
        positions.set("events", token)
    positions.close()
    assert PositionFile(str(path), capacity=128).all() == {"events": 49}
    assert journal(path, HEADER)[1] == b"events 49\n"


def test_the_first_position_of_another_origin_makes_the_file_v3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording the first position of another origin rewrites the file once (temporary
    file, fsync, rename) with the v3 header and every position; later positions of other
    origins are appended as ``<stream> <token> <origin>`` lines without rewriting."""
    path = tmp_path / "w.positions"
    path.write_bytes(HEADER + b"events 41\nreceipts 7\nevents 42\n" + bytes(200))
    positions = PositionFile(str(path), capacity=4096)
    assert positions.all() == {"events": 42, "receipts": 7}
    assert journal(path, HEADER)[1] == b"events 42\nreceipts 7\n"
    renamed = record_renames(monkeypatch)
    positions.set("events", 5, origin=ORIGIN_B)
    assert renamed == [str(path)]
    assert (
        journal(path, HEADER_V3)[1] == b"events 42\nevents 5 %s\nreceipts 7\n" % ORIGIN_B.encode()
    )
    positions.set("events", 6, origin=ORIGIN_B)
    positions.set("receipts", 1, origin=ORIGIN_C)
    positions.set("events", 43)
    assert renamed == [str(path)]
    assert journal(path, HEADER_V3)[1].endswith(
        b"events 6 %s\nreceipts 1 %s\nevents 43\n" % (ORIGIN_B.encode(), ORIGIN_C.encode())
    )
    positions.close()
    again = PositionFile(str(path))
    assert again.vector("events") == {None: 43, ORIGIN_B: 6}
    assert again.vector("receipts") == {None: 7, ORIGIN_C: 1}
    assert again.header == HEADER_V3
    again.close()
    assert journal(path, HEADER_V3)[1] == b"events 43\nevents 6 %s\nreceipts 7\nreceipts 1 %s\n" % (
        ORIGIN_B.encode(), ORIGIN_C.encode())


def test_a_file_is_written_in_the_oldest_format_that_holds_it(tmp_path: Path) -> None:
    """Opening rewrites a file in the oldest format that holds its positions: a v3 file
    with local lines only becomes v2, a v1 file becomes v2."""
    path = tmp_path / "w.positions"
    for content in (HEADER_V3 + b"events 3\n" + bytes(10), HEADER_V1 + b"events 3\n"):
        path.write_bytes(content)
        positions = PositionFile(str(path), capacity=256)
        assert positions.header == HEADER
        positions.close()
        assert journal(path, HEADER)[1] == b"events 3\n"


def test_a_failed_upgrade_to_v3_leaves_the_v2_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the rewrite into v3 fails (a full disk), the error names the file, the v2 file
    stays as it was with its local positions, and the next position of another origin
    recorded once there is space makes the file v3 with both."""
    path = tmp_path / "w.positions"
    positions = PositionFile(str(path), capacity=256)
    positions.set("events", 1)

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(os, "posix_fallocate", no_space)
        with pytest.raises(PositionFileError, match=f"{path}.*No space left on device"):
            positions.set("events", 5, origin=ORIGIN_B)
    assert journal(path, HEADER)[1] == b"events 1\n"
    positions.set("events", 2)
    positions.set("events", 6, origin=ORIGIN_B)
    positions.close()
    assert journal(path, HEADER_V3)[1] == b"events 2\nevents 6 %s\n" % ORIGIN_B.encode()


@pytest.mark.parametrize(
    "content, expected",
    [
        # the last line cut short in its origin, then the NUL padding
        (HEADER_V3 + b"events 41 %s\nevents 42 BBBB" % ORIGIN_B.encode() + bytes(100), 41),
        # cut after the token: the space before the origin written, not the origin
        (HEADER_V3 + b"events 41 %s\nevents 42 " % ORIGIN_B.encode() + bytes(100), 41),
        # a byte of the origin never written, though its newline was
        (HEADER_V3 + b"events 41 %s\nevents 42 BBB\x00BBBBBBBBBBBb\n" % ORIGIN_B.encode(), 41),
        # after a power cut: a page not written back, then a later one that was
        (HEADER_V3 + b"events 41 %s\nev" % ORIGIN_B.encode() + bytes(100)
         + b"events 50 %s\n" % ORIGIN_B.encode() + bytes(100), 41),
    ],
)
def test_a_torn_line_with_an_origin_is_ignored_and_removed(
    tmp_path: Path, content: bytes, expected: int
) -> None:
    """A line with an origin cut short by a process killed or a power cut is dropped like
    any other torn line; the positions before it stand, and the file is rewritten whole."""
    path = tmp_path / "w.positions"
    path.write_bytes(content)
    positions = PositionFile(str(path), capacity=1024)
    assert positions.vector("events") == {ORIGIN_B: expected}
    assert journal(path, HEADER_V3)[1] == b"events %d %s\n" % (expected, ORIGIN_B.encode())
    assert path.stat().st_size == 1024


@pytest.mark.parametrize("version", [b"4", b"10", b"0004", b"99999999999999999999"])
def test_a_file_of_a_newer_format_is_refused_and_left_alone(tmp_path: Path, version: bytes) -> None:
    """A position file of a format newer than v3 (written by a later release) stops the
    worker with a message naming both versions; the file is not modified or rewritten."""
    path = tmp_path / "w.positions"
    content = b"# replication positions v" + version + b"\nevents 1 anything new\n" + bytes(64)
    path.write_bytes(content)
    with pytest.raises(
        PositionFileError, match=rf"{path} is of format v{int(version)}, newer than .* \(v1 to v3\)"
    ):
        PositionFile(str(path))
    assert path.read_bytes() == content
    assert not os.path.exists(f"{path}.tmp")
    PositionFile(str(tmp_path / "other.positions")).close()  # the refusal released nothing it holds


def test_compaction_keeps_every_stream_and_origin(tmp_path: Path) -> None:
    """Across many compactions and a doubled capacity, every (stream, origin) keeps its
    last position, in the file and after reopening."""
    path = tmp_path / "w.positions"
    positions = PositionFile(str(path), capacity=256)
    origins = [None, ORIGIN_B, ORIGIN_C, "D" * 64]
    expected: dict[str, dict[str | None, int]] = {}
    for token in range(1, 201):
        for n, origin in enumerate(origins):
            stream = f"s{(token + n) % 7}"
            positions.set(stream, token, origin)
            expected.setdefault(stream, {})[origin] = token
    assert positions.capacity > 256
    for stream, vector in expected.items():
        assert positions.vector(stream) == vector
    positions.close()
    again = PositionFile(str(path), capacity=256)
    for stream, vector in expected.items():
        assert again.vector(stream) == vector
    lines = journal(path, HEADER_V3)[1].splitlines()
    assert len(lines) == sum(len(vector) for vector in expected.values())


def test_the_file_agrees_with_memory_positions_over_random_histories(tmp_path: Path) -> None:
    """Hundreds of random positions of random streams and origins, recorded into a small
    position file reopened at random points (and into MemoryPositions beside it), give the
    same position vectors for every stream."""
    import random

    rng = random.Random(1303)
    streams = ["events", "receipts", "typing", "presence"]
    origins = [None, ORIGIN_B, ORIGIN_C, "E" * 16]
    path = tmp_path / "w.positions"
    model = MemoryPositions()
    positions = PositionFile(str(path), fsync=False, capacity=128)
    for step in range(600):
        stream, origin = rng.choice(streams), rng.choice(origins)
        token = rng.choice([0, step, rng.randrange(10**19)])
        model.set(stream, token, origin)
        positions.set(stream, token, origin)
        if rng.random() < 0.02:
            positions.close()
            positions = PositionFile(str(path), fsync=False, capacity=128)
        for name in streams:
            assert positions.vector(name) == model.vector(name)
    positions.close()


CHILD = """
import os, sys
from replication.positions import PositionFile
positions = PositionFile(sys.argv[1], capacity=int(sys.argv[2]))
origins = sys.argv[3:]
token = 0
while True:
    token += 1
    positions.set("events", token)
    for origin in origins:
        positions.set("events", token, origin)
    if token % 1000 == 0:
        os.write(1, b"%d\\n" % token)
"""


@pytest.mark.parametrize("origins", [(), (ORIGIN_B, ORIGIN_C)], ids=["local", "origins"])
@pytest.mark.parametrize("capacity", [4 * 1024 * 1024, 64 * 1024])
def test_a_killed_process_loses_no_recorded_position(
    tmp_path: Path, capacity: int, origins: tuple[str, ...]
) -> None:
    """A worker process killed (SIGKILL) while recording positions as fast as it can, with
    no sync and no close, left every position it recorded in the file: reopened, the
    position of each (stream, origin) is at least the last one it reported, and the file is
    well-formed (v3 with its origins' lines when it recorded other origins). With the small
    capacity it is killed among compactions."""
    path = tmp_path / "w.positions"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(capacity), *origins],
        stdout=subprocess.PIPE, cwd=ROOT,
    )
    try:
        assert child.stdout is not None
        reported = 0
        while reported < 100_000:
            line = child.stdout.readline()
            assert line, "the child process stopped"
            reported = int(line)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    positions = PositionFile(str(path), capacity=capacity)
    position = positions.get("events")
    assert position is not None and position >= reported
    vector = positions.vector("events")
    # recorded in order: local, then each origin; the one being recorded may be missing
    assert [vector[origin] for origin in origins] in (
        [position] * len(origins), [position - 1] * len(origins),
        *([position] * n + [position - 1] * (len(origins) - n) for n in range(len(origins))),
    )
    expected = b"events %d\n" % position + b"".join(
        b"events %d %s\n" % (vector[origin], origin.encode()) for origin in sorted(origins)
    )
    assert journal(path, HEADER_V3 if origins else HEADER)[1] == expected
    positions.close()


def test_the_worker_service_syncs_positions_every_second(tmp_path: Path) -> None:
    """The worker's service fsyncs the position file once a second and when it stops,
    never on the per-token path."""
    from twisted.internet.defer import Deferred
    from twisted.internet.task import Clock

    from replication.config import WorkerConfig, WorkerStream
    from replication.worker import POSITION_SYNC_INTERVAL, Worker, worker_service

    class NeverConnects:
        def connect(self, factory: object) -> Deferred[None]:
            return Deferred()

    clock = Clock()
    positions = PositionFile(str(tmp_path / "w.positions"))
    synced: list[float] = []
    real_sync = positions.sync

    def sync() -> None:
        synced.append(clock.seconds())
        real_sync()

    positions.sync = sync  # type: ignore[method-assign]
    worker = Worker(WorkerConfig(streams=(WorkerStream("events"),)), print, positions, clock)
    service = worker_service(worker, NeverConnects(), clock)  # type: ignore[arg-type]
    service.startService()
    positions.set("events", 1)
    assert synced == []
    clock.advance(POSITION_SYNC_INTERVAL)
    clock.advance(POSITION_SYNC_INTERVAL)
    assert synced == [1.0, 2.0]
    service.stopService()
    assert synced == [1.0, 2.0, 2.0]


def test_a_position_file_in_use_is_refused(tmp_path: Path) -> None:
    """Two workers given the same position file: the second stops with a message naming
    the first one's process; once the first closes (or dies), the file can be opened."""
    path = tmp_path / "w.positions"
    first = PositionFile(str(path))
    first.set("events", 5)
    with pytest.raises(
        PositionFileError, match=rf"is in use by another process \(pid {os.getpid()}\)"
    ):
        PositionFile(str(path))
    assert first.get("events") == 5
    first.set("events", 6)  # the refused open changed nothing
    first.close()
    second = PositionFile(str(path))
    assert second.get("events") == 6
    second.close()


def test_the_lock_of_a_killed_worker_is_released(tmp_path: Path) -> None:
    """The kernel drops the lock of a process that dies, so a restarted worker opens the
    file at once."""
    path = tmp_path / "w.positions"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(64 * 1024)], stdout=subprocess.PIPE
    )
    assert child.stdout is not None
    child.stdout.readline()  # it has recorded 1,000 tokens
    with pytest.raises(PositionFileError, match="in use by another process"):
        PositionFile(str(path))
    child.kill()
    child.wait()
    child.stdout.close()
    positions = PositionFile(str(path))
    assert (positions.get("events") or 0) >= 1000
    positions.close()
