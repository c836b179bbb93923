"""Worker handlers: what a worker does with each token, and how one is named in the config.

A handler is a callable ``handler(stream, token, rows)`` called once per token, in order,
with the token's rows decoded from JSON. It may return ``None`` or an awaitable (a Deferred
or a coroutine); the worker waits for it before the next token and records the position only
after it succeeded. A handler may also define ``gap(stream, first, last)``, called when
tokens ``first..last`` were dropped by the master's retention before this worker got them,
and ``reset(stream, old_position, head)``, called when the master's history no longer reaches
this worker's position and the stream is replayed from its start.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from typing import IO, Any

from replication.config.kinds import is_handler_name

Handler = Callable[[str, int, list[Any]], Any]


class HandlerLoadError(Exception):
    """A handler named in the configuration cannot be loaded."""


class PrintJson:
    """The default handler: one JSON object per token on standard output, flushed.

    ``{"stream": "events", "token": 43, "rows": [...]}``; a gap prints
    ``{"stream": ..., "gap": [first, last]}`` and a reset
    ``{"stream": ..., "reset": {"position": old, "head": head}}``.
    """

    def __init__(self, out: IO[str] | None = None) -> None:
        self._out = out

    def _print(self, document: dict[str, Any]) -> None:
        out = self._out if self._out is not None else sys.stdout
        out.write(json.dumps(document, separators=(",", ":"), ensure_ascii=False) + "\n")
        out.flush()

    def __call__(self, stream: str, token: int, rows: list[Any]) -> None:
        self._print({"stream": stream, "token": token, "rows": rows})

    def gap(self, stream: str, first: int, last: int) -> None:
        self._print({"stream": stream, "gap": [first, last]})

    def reset(self, stream: str, old_position: int, head: int) -> None:
        self._print({"stream": stream, "reset": {"position": old_position, "head": head}})


print_json = PrintJson()


def load_handler(name: str) -> Handler:
    """Load ``package.module:attribute``; a class is instantiated without arguments."""
    if not is_handler_name(name):
        raise HandlerLoadError(f"handler {name!r} must look like package.module:callable")
    module_name, _, attribute = name.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise HandlerLoadError(f"handler {name!r}: cannot import {module_name}: {e}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerLoadError(f"handler {name!r}: {module_name} has no {attribute}") from None
    if isinstance(target, type):
        target = target()
    if not callable(target):
        raise HandlerLoadError(f"handler {name!r} is not callable")
    return target  # type: ignore[no-any-return]
