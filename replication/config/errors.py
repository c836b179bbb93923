"""The one exception of configuration problems: :class:`ConfigError`, which says where."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration that cannot be used, and where it went wrong.

    ``path`` is the dotted key path (``limits.max_buffer_bytes``, ``streams[2]``,
    ``retention.streams.events.max_rows``; ``""`` for the whole document), ``line`` the
    1-based line in the file (``None`` when unknown, e.g. for a configuration built in code),
    ``source`` the file name (``None`` when unknown) and ``message`` what is wrong.
    ``str(err)`` reads ``config.yaml:12: limits.max_buffer_bytes: must be ...``.
    """

    def __init__(
        self,
        message: str,
        path: str = "",
        line: int | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__(message, path, line, source)
        self.message = message
        self.path = path
        self.line = line
        self.source = source

    def __str__(self) -> str:
        if self.source is not None and self.line is not None:
            where = f"{self.source}:{self.line}"
        elif self.source is not None:
            where = self.source
        elif self.line is not None:
            where = f"line {self.line}"
        else:
            where = ""
        parts = [part for part in (where, self.path) if part]
        return ": ".join([*parts, self.message])

