"""Worker handlers: what a worker does with each token, and how one is named in the config.

A handler is a callable ``handler(stream, token, rows)`` called once per token, in order,
with the token's rows decoded from JSON. It may return ``None`` or an awaitable (a Deferred
or a coroutine); the worker waits for it before the next token and records the position only
after it succeeded. A handler may also define ``gap(stream, first, last)``, called when
tokens ``first..last`` were dropped by the master's retention before this worker got them,
and ``reset(stream, old_position, head)``, called when the master's history no longer reaches
this worker's position and the stream is replayed from its start.

A handler (or hook) that takes a keyword argument named ``origin`` (an explicit parameter,
not just ``**kwargs``) is also told where each token comes from: ``origin=<origin id>`` of
the master that accepted it when the worker speaks protocol version 2, ``None`` under
versions 1 and legacy. :func:`accepts_origin` decides that once, when the worker is built.

:func:`load_handler` turns a configured name into the handler: it puts the configured
directories (``handler_path``) first on the import path, imports the module, and either uses
the attribute as it is (a class is instantiated without arguments) or, with
``handler_options``, calls it as a factory with the options as keyword arguments.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from replication.config.kinds import is_handler_name
from replication.config.model import WorkerConfig

Handler = Callable[[str, int, list[Any]], Any]


def accepts_origin(function: object) -> bool:
    """Whether ``function`` takes a keyword argument named ``origin``: a parameter of that
    name that can be passed by keyword (``**kwargs`` alone does not count, so that a
    wrapper forwarding everything to a three-argument handler keeps working). A callable
    without a signature does not."""
    if not callable(function):
        return False
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return False
    parameter = signature.parameters.get("origin")
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
    )


class HandlerLoadError(Exception):
    """A handler named in the configuration cannot be loaded."""


class PrintJson:
    """The default handler: one JSON object per token on standard output, flushed.

    ``{"stream": "events", "token": 43, "rows": [...]}``; a gap prints
    ``{"stream": ..., "gap": [first, last]}`` and a reset
    ``{"stream": ..., "reset": {"position": old, "head": head}}``. When the token came with
    an origin (protocol version 2), each object also has ``"origin": "<origin id>"``.
    """

    def __init__(self, out: IO[str] | None = None) -> None:
        self._out = out

    def _print(self, document: dict[str, Any]) -> None:
        out = self._out if self._out is not None else sys.stdout
        out.write(json.dumps(document, separators=(",", ":"), ensure_ascii=False) + "\n")
        out.flush()

    def __call__(
        self, stream: str, token: int, rows: list[Any], *, origin: str | None = None
    ) -> None:
        document: dict[str, Any] = {"stream": stream, "token": token, "rows": rows}
        if origin is not None:
            document["origin"] = origin
        self._print(document)

    def gap(self, stream: str, first: int, last: int, *, origin: str | None = None) -> None:
        document: dict[str, Any] = {"stream": stream, "gap": [first, last]}
        if origin is not None:
            document["origin"] = origin
        self._print(document)

    def reset(
        self, stream: str, old_position: int, head: int, *, origin: str | None = None
    ) -> None:
        document: dict[str, Any] = {
            "stream": stream, "reset": {"position": old_position, "head": head}
        }
        if origin is not None:
            document["origin"] = origin
        self._print(document)


print_json = PrintJson()


def add_import_path(directories: Sequence[str], key: str = "handler_path") -> list[str]:
    """Put ``directories`` at the front of ``sys.path``, in order, and return them absolute.

    A relative directory is taken from the current directory. Each must be an existing
    directory, else :class:`HandlerLoadError` names it as item ``i`` of ``key``
    (``handler_path[1]: directory 'lib' (/srv/app/lib) does not exist``). A directory
    already on ``sys.path`` moves to the front; the import system's caches are invalidated so
    that modules created after the process started are found.
    """
    resolved: list[str] = []
    for index, directory in enumerate(directories):
        where = f"{key}[{index}]: directory {directory!r}"
        try:
            absolute = os.path.abspath(directory)
        except OSError as error:  # a relative directory, and the current one was removed
            raise HandlerLoadError(f"{where}: cannot resolve it: {error}") from None
        if absolute != directory:
            where += f" ({absolute})"
        if not os.path.exists(absolute):
            raise HandlerLoadError(f"{where} does not exist")
        if not os.path.isdir(absolute):
            raise HandlerLoadError(f"{where} is not a directory")
        if absolute not in resolved:
            resolved.append(absolute)
    if resolved:
        sys.path[:] = [*resolved, *(entry for entry in sys.path if entry not in resolved)]
        importlib.invalidate_caches()
    return resolved


def _options_text(options: Mapping[str, Any]) -> str:
    """``options`` as messages quote them: ``{path: '/tmp/x', table: 'events'}``."""
    return "{" + ", ".join(f"{name}: {value!r}" for name, value in options.items()) + "}"


def _from_factory(name: str, factory: Any, options: Mapping[str, Any]) -> Any:
    """What ``factory(**options)`` returns; :class:`HandlerLoadError` naming the options if
    the factory does not accept them or raises."""
    given = f"handler_options {_options_text(options)}"
    if not callable(factory):
        raise HandlerLoadError(f"handler {name!r} is not callable, so it cannot take {given}")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have no signature: just call them
        signature = None
    if signature is not None:
        try:
            signature.bind(**options)
        except TypeError as error:
            raise HandlerLoadError(f"handler {name!r} does not accept {given}: {error}") from None
    try:
        return factory(**options)
    except Exception as error:
        raise HandlerLoadError(
            f"handler {name!r} failed with {given}: {type(error).__name__}: {error}"
        ) from error


def load_handler(
    name: str, path: Sequence[str] = (), options: Mapping[str, Any] | None = None
) -> Handler:
    """Load the handler named ``package.module:attribute``.

    ``path``: directories put first on ``sys.path`` before the import (see
    :func:`add_import_path`). Without ``options`` a class is instantiated without arguments
    and any other callable is the handler; with ``options`` (even empty) the attribute is a
    factory called with them as keyword arguments, and returns the handler. Every failure
    is a :class:`HandlerLoadError` saying which.
    """
    if not is_handler_name(name):
        raise HandlerLoadError(f"handler {name!r} must look like package.module:callable")
    add_import_path(path)
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
    if options is not None:
        target = _from_factory(name, target, options)
        if not callable(target):
            raise HandlerLoadError(
                f"handler {name!r} returned {type(target).__name__} {target!r} for "
                f"handler_options {_options_text(options)}, which is not callable"
            )
        return target  # type: ignore[no-any-return]
    if isinstance(target, type):
        target = target()
    if not callable(target):
        raise HandlerLoadError(f"handler {name!r} is not callable")
    return target  # type: ignore[no-any-return]


def handler_from_config(config: WorkerConfig) -> Handler:
    """The handler a worker configuration names: ``handler`` loaded with its
    ``handler_path`` and ``handler_options``."""
    return load_handler(config.handler, config.handler_path, config.handler_options)
