"""The formats of the log lines the ``replication`` processes write: :data:`LOG_FORMATS`.

``text`` is the human format (``<time> <LEVEL> <logger>: <message>``); ``json`` writes one
JSON object per line for log shippers (:class:`JsonFormatter`). The command line chooses one
with ``log.format`` or ``--log-format`` (:func:`formatter`); nothing here touches a handler
or the reactor.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Final

__all__ = ["LOG_FORMATS", "TEXT_FORMAT", "JsonFormatter", "formatter"]

#: The values of ``log.format``.
LOG_FORMATS: Final = ("text", "json")
#: The ``logging`` format string of the ``text`` format.
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line.

    Its keys: ``time`` (ISO 8601 in UTC with milliseconds, ``2026-11-26T20:31:05.123Z``),
    ``level`` (``INFO``), ``logger`` (``replication.worker.service``) and ``message`` (the
    message with its arguments); ``exception`` (the traceback text) when the record carries
    an exception, and ``stack`` when it carries a stack. Newlines inside values are escaped
    by JSON, so a traceback never splits a line.
    """

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        millis = int(record.msecs)
        document: dict[str, str] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{millis:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return json.dumps(document, ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of ``log_format`` (one of :data:`LOG_FORMATS`); raises ``ValueError``
    for any other."""
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    if log_format == "json":
        return JsonFormatter()
    raise ValueError(f"unknown log format {log_format!r}; expected one of {', '.join(LOG_FORMATS)}")
