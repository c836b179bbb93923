"""The worker's position file: the last token it handled, per stream, kept on disk.

The file is a small journal of text lines::

    # replication positions v1
    events 41
    receipts 7
    events 42

The first line names the format; each later line records ``<stream> <token>``, and the last
line for a stream is its position. Recording a position is one ``write`` appended to the
file, so it is safe against the worker process dying at any moment: the write has reached
the operating system before the next token is handled. :meth:`PositionFile.sync` fsyncs
what was appended (the worker's service calls it every second, off the per-token path,
since one fsync can take milliseconds), so after a power cut the positions are at most
that old, and never torn: a last line cut short is ignored. When the journal grows past ``compact_after`` lines it is rewritten with one
line per stream by writing a temporary file, fsyncing it, renaming it over the journal and
fsyncing the directory, so the file on disk is always complete.

A file that exists but is not a position file stops the worker with a clear message; it is
never overwritten or deleted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

HEADER = b"# replication positions v1\n"


class PositionFileError(Exception):
    """The position file cannot be read or written; the message names the path."""


class PositionFile:
    """Positions of one worker, loaded at start and appended to on every change.

    :param path: the file; its directory is created if missing.
    :param fsync: make :meth:`sync` flush to the disk (survives power loss). Off, positions
        are still safe when the process dies, but a power cut may lose recent ones.
    :param compact_after: journal lines after which the file is rewritten compactly.
    """

    def __init__(self, path: str, fsync: bool = True, compact_after: int = 100_000) -> None:
        self.path = os.path.abspath(path)
        self.fsync = fsync
        self.compact_after = compact_after
        self._positions: dict[str, int] = {}
        self._lines = 0
        self._unsynced = False
        self._fd: int | None = None
        self._load()

    def _fail(self, what: str) -> PositionFileError:
        return PositionFileError(
            f"position file {self.path} {what}; move it aside to start over, or restore it"
        )

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            self._rewrite()
            return
        except OSError as e:
            raise PositionFileError(f"cannot read position file {self.path}: {e.strerror}") from None
        if not raw.startswith(HEADER):
            raise self._fail("is not a position file (its first line is not "
                             f"{HEADER.decode().strip()!r})")
        lines = raw[len(HEADER):].split(b"\n")
        torn = lines.pop()  # the text after the last newline: empty, or a line cut short
        for number, line in enumerate(lines, start=2):
            parts = line.split(b" ")
            if len(parts) != 2 or not parts[1].isdigit():
                raise self._fail(f"has a damaged line {number}: {line[:80]!r}")
            self._positions[parts[0].decode("utf-8", "replace")] = int(parts[1])
        self._lines = len(lines)
        if torn:
            # A crash or power cut in the middle of an append: drop the partial line.
            self._rewrite()
        else:
            self._open()

    def _open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            raise PositionFileError(f"cannot open position file {self.path}: {e.strerror}") from None

    def get(self, stream: str) -> int | None:
        """The last token handled on ``stream``, or ``None`` if the worker never saw it."""
        return self._positions.get(stream)

    def all(self) -> Mapping[str, int]:
        return dict(self._positions)

    def set(self, stream: str, token: int) -> None:
        """Record ``token`` as handled on ``stream``: one append to the file."""
        self._positions[stream] = token
        if self._lines >= self.compact_after:
            self._rewrite()
            return
        assert self._fd is not None
        try:
            os.write(self._fd, b"%s %d\n" % (stream.encode(), token))
        except OSError as e:
            raise PositionFileError(f"cannot write position file {self.path}: {e.strerror}") from None
        self._lines += 1
        self._unsynced = True

    def sync(self) -> None:
        """Flush appended positions to the disk (when ``fsync`` is on)."""
        if self._unsynced and self.fsync and self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as e:
                raise PositionFileError(f"cannot sync position file {self.path}: {e.strerror}") from None
        self._unsynced = False

    def _rewrite(self) -> None:
        """Write every position to a temporary file, fsync, rename it over the journal,
        fsync the directory."""
        directory = os.path.dirname(self.path)
        temporary = f"{self.path}.tmp"
        body = b"".join(b"%s %d\n" % (s.encode(), t) for s, t in sorted(self._positions.items()))
        self.close()
        try:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, HEADER + body)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.path)
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise PositionFileError(f"cannot write position file {self.path}: {e.strerror}") from None
        self._lines = len(self._positions)
        self._unsynced = False
        self._open()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
