"""The worker's position file: the last token it handled, per stream, kept on disk.

The file is a small JSON object ``{"positions": {"<stream>": <token>, ...}}``. Every update
writes a temporary file beside it, flushes and fsyncs it, renames it over the old one and
fsyncs the directory, so after a crash or a power cut the file holds either the old positions
or the new ones, never a torn mix. A file that exists but cannot be read as positions stops
the worker with a clear message; it is never overwritten or deleted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping


class PositionFileError(Exception):
    """The position file cannot be read or written; the message names the path."""


class PositionFile:
    """Positions of one worker, loaded at start and saved after every change.

    :param path: the file; its directory is created if missing.
    :param fsync: flush to the disk on every save (survives power loss). Turning it off
        keeps crash safety (rename is atomic) but a power cut may lose recent positions.
    """

    def __init__(self, path: str, fsync: bool = True) -> None:
        self.path = os.path.abspath(path)
        self.fsync = fsync
        self._positions: dict[str, int] = self._load()

    def _load(self) -> dict[str, int]:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise PositionFileError(f"cannot read position file {self.path}: {e.strerror}") from None
        try:
            document = json.loads(raw)
            positions = document["positions"]
            if not isinstance(positions, dict):
                raise TypeError
            for stream, token in positions.items():
                if not isinstance(stream, str) or type(token) is not int or token < 0:
                    raise TypeError
        except (ValueError, KeyError, TypeError):
            raise PositionFileError(
                f"position file {self.path} is not a valid position file "
                '(expected {"positions": {"<stream>": <token>}}); '
                "move it aside to start over, or restore it"
            ) from None
        return dict(positions)

    def get(self, stream: str) -> int | None:
        """The last token handled on ``stream``, or ``None`` if the worker never saw it."""
        return self._positions.get(stream)

    def all(self) -> Mapping[str, int]:
        return dict(self._positions)

    def set(self, stream: str, token: int) -> None:
        """Record ``token`` as handled on ``stream`` and save the file."""
        self._positions[stream] = token
        self._save()

    def _save(self) -> None:
        directory = os.path.dirname(self.path)
        temporary = f"{self.path}.tmp"
        data = json.dumps({"positions": self._positions}, sort_keys=True).encode()
        try:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.path)
            if self.fsync:
                dir_fd = os.open(directory, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as e:
            raise PositionFileError(f"cannot write position file {self.path}: {e.strerror}") from None
