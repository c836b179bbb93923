"""Running a master or a worker inside one's own Twisted (or asyncio) program.

:func:`master_service_from` and :func:`worker_service_from` build the same service trees as
``replication master`` and ``replication worker`` (see docs/embedding.rst), from a
configuration object, from keyword arguments named like its fields, or from both (the
keywords then override the object's fields). The result is checked like a configuration
file (the same :class:`~replication.config.ConfigError` messages). The reactor is the global
one, looked up at call time, unless one is passed; the thread pools a SQLite store runs in,
the position file, the endpoints and the metrics registry are created here.

Start a tree with ``startService()`` (or give it a parent in a ``twisted.application``
``Application``) and stop it with ``stopService()``, which returns a Deferred. The
:class:`~replication.master.service.Master` is ``service.master`` (to publish), the
:class:`~replication.worker.Worker` is ``service.worker``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from twisted.internet.interfaces import IReactorTime

from replication.config import (
    ConfigError,
    MasterConfig,
    WorkerConfig,
    WorkerStream,
    validate_master,
    validate_worker,
)
from replication.config.schema import unknown_key
from replication.master.app import MasterService
from replication.store import StreamStore
from replication.wire.commands import CommandRegistry
from replication.worker.handlers import Handler
from replication.worker.positions import Positions
from replication.worker.service import WorkerService

_Config = TypeVar("_Config", MasterConfig, WorkerConfig)


def _value(default: object, value: object, path: str) -> object:
    """``value`` for a field whose default is ``default``: a mapping given for a section (a
    dataclass such as ``store`` or ``keepalive``) builds that section; a list a tuple."""
    if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
        fields = {f.name for f in dataclasses.fields(default)}
        for key in value:
            if key not in fields:
                raise ConfigError(unknown_key(str(key), fields), f"{path}.{key}")
        return dataclasses.replace(default, **value)  # type: ignore[type-var]
    if isinstance(value, list):
        return tuple(value)
    return value


def config_from(config: _Config, keys: Mapping[str, Any]) -> _Config:
    """``config`` with ``keys`` (field names of its dataclass) replacing its fields; an
    unknown key is a :class:`ConfigError` naming it and the closest valid one (the message
    a file gets). Nothing else is checked here (see
    :func:`~replication.config.validate_master`)."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    for key, value in keys.items():
        if key not in fields:
            raise ConfigError(unknown_key(key, fields), key)
        changes[key] = _value(getattr(config, key), value, key)
    return dataclasses.replace(config, **changes)


def _reactor(reactor: IReactorTime | None) -> IReactorTime:
    """``reactor``, or the global one (installed by then, e.g. asyncio's, or the default)."""
    if reactor is not None:
        return reactor
    from twisted.internet import reactor as installed

    return installed


def _commands(
    commands: CommandRegistry | None, name: str | None, path: tuple[str, ...],
) -> CommandRegistry | None:
    """``commands``, or those the configuration's ``commands`` key registers, if any."""
    if commands is not None or name is None:
        return commands
    from replication.cli import load_command_registry

    return load_command_registry(name, path)


def master_service_from(
    config: MasterConfig | None = None,
    *,
    reactor: IReactorTime | None = None,
    stream_store: StreamStore | None = None,
    registry: CollectorRegistry | None = None,
    commands: CommandRegistry | None = None,
    accept_history_loss: bool = False,
    **keys: Any,
) -> MasterService:
    """A master's service tree (:func:`~replication.master.app.master_service`), not started.

    :param config: the configuration; ``None``: the defaults. ``keys`` (fields of
        :class:`~replication.config.MasterConfig`, e.g. ``listen="tcp:0"``,
        ``http_listen=None``, ``store={"type": "memory"}``) replace its fields.
    :param reactor: ``None``: the global reactor, looked up now.
    :param stream_store: an open store to serve; ``None``: open the configured one.
    :param registry: where metrics are registered; ``None``: a new one with ``process_*``.
    :param commands: the commands connections understand; ``None``: the built-in ones and
        those the configuration's ``commands`` key registers.
    :param accept_history_loss: as ``--accept-store-history-loss``.
    :raises ConfigError: a key is unknown or a value invalid.
    :raises ~replication.master.app.ServiceError: the store cannot be opened.
    :raises ~replication.cli.CommandLineError: the ``commands`` module cannot be loaded.
    """
    from replication.master.app import master_service
    from replication.metrics import process_registry

    checked = validate_master(config_from(config or MasterConfig(), keys))
    return master_service(
        checked, _reactor(reactor), store=stream_store,
        registry=registry if registry is not None else process_registry(),
        commands=_commands(commands, checked.commands, checked.commands_path),
        accept_history_loss=accept_history_loss,
    )


def worker_service_from(
    config: WorkerConfig | None = None,
    *,
    handler: Handler | None = None,
    positions: Positions | None = None,
    reactor: IReactorTime | None = None,
    registry: CollectorRegistry | None = None,
    commands: CommandRegistry | None = None,
    **keys: Any,
) -> WorkerService:
    """A worker's service tree (:func:`~replication.worker.worker_service`), not started.

    :param config: the configuration; ``None``: the defaults. ``keys`` (fields of
        :class:`~replication.config.WorkerConfig`, e.g. ``master="tcp:host=...:port=9092"``,
        ``streams=["events"]``, where a name stands for a stream followed from its
        earliest token) replace its fields. At least one stream is needed.
    :param handler: called as ``handler(stream, token, rows)`` (a plain function, one
        returning a Deferred, or a coroutine function); ``None``: the configured
        ``handler`` is imported.
    :param positions: where positions are kept (e.g. a
        :class:`~replication.worker.positions.MemoryPositions`); ``None``: a
        :class:`~replication.worker.positions.PositionFile` at ``position_file``
        (``<name>.positions``).
    :param reactor: ``None``: the global reactor, looked up now.
    :param registry: where metrics are registered; ``None``: a new one with ``process_*``.
    :param commands: as for :func:`master_service_from`.
    :raises ConfigError: a key is unknown or a value invalid, or no stream is given.
    :raises ~replication.worker.handlers.HandlerLoadError: the configured handler cannot be
        imported.
    :raises ~replication.worker.positions.PositionFileError: the position file cannot be
        opened (or another worker holds it).
    :raises ~replication.cli.CommandLineError: the ``commands`` module cannot be loaded.
    """
    from twisted.internet.endpoints import serverFromString

    from replication.metrics import WorkerMetrics, process_registry
    from replication.tls import client_endpoint
    from replication.worker import Worker, worker_service
    from replication.worker.handlers import handler_from_config
    from replication.worker.positions import PositionFile

    if "streams" in keys:
        keys = {**keys, "streams": tuple(
            WorkerStream(s) if isinstance(s, str) else s for s in keys["streams"]
        )}
    checked = validate_worker(config_from(config or WorkerConfig(), keys))
    if not checked.streams:
        raise ConfigError("no streams to follow", "streams")
    clock = _reactor(reactor)
    if handler is None:
        handler = handler_from_config(checked)
    if positions is None:
        positions = PositionFile(checked.resolved_position_file())
    worker = Worker(
        checked, handler, positions, clock,
        registry=_commands(commands, checked.commands, checked.commands_path),
        metrics=WorkerMetrics(registry if registry is not None else process_registry()),
    )
    metrics_endpoint = None
    if checked.metrics_listen is not None:
        metrics_endpoint = serverFromString(  # type: ignore[no-untyped-call]
            clock, checked.metrics_listen,
        )
    masters = checked.masters
    return worker_service(
        worker,
        client_endpoint(clock, masters[0]) if len(masters) == 1
        else {master: client_endpoint(clock, master) for master in masters},
        clock,
        metrics_endpoint=metrics_endpoint,
    )


__all__ = ["config_from", "master_service_from", "worker_service_from"]
