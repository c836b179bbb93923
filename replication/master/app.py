# twisted.application.service has no annotations:
# mypy: disable-error-code="no-untyped-call"
"""A master process as a Twisted service tree: :func:`master_service`.

The tree, in start order (it stops in reverse, one child at a time, each child's stop
Deferred awaited before the next: see :class:`~replication.services.OrderedMultiService`)::

    MasterService
      StoreThreads    the writer and reader thread pools a blocking store runs in
      MasterRunner    the Master: opens the store, runs retention; on stop closes every
                      connection and then the store (after the writes in flight)
      ListeningService  the replication port   } start listening once the store is open;
      ListeningService  the HTTP port (if any) } on stop, stop accepting first

Everything is built from a :class:`~replication.config.MasterConfig` and a reactor, which is
passed in (never the global one), so a test builds the whole tree on a
``MemoryReactorClock``. :meth:`MasterService.when_listening` fires when every listener
listens, or fails with the first error (the command line exits with it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from replication.config import MasterConfig
from replication.master.connection import MasterFactory
from replication.master.service import Master
from replication.services import ListeningService, OrderedMultiService, fork
from replication.metrics import MasterMetrics, process_registry
from replication.store import StoreError, StreamStore
from replication.wire.commands import CommandRegistry
from replication.tls import server_endpoint

log = logging.getLogger("replication.master")


class ServiceError(Exception):
    """A master cannot be built or started: the message says why, for an operator."""


#: The SQLite database's file name in ``data_dir`` when ``store.path`` is not set.
DEFAULT_DATABASE_NAME = "streams.sqlite3"


def database_path(config: MasterConfig) -> str:
    """The SQLite database file of ``config``: ``store.path``, or
    ``<data_dir>/streams.sqlite3``."""
    return config.store.path or os.path.join(config.data_dir, DEFAULT_DATABASE_NAME)


def open_store(config: MasterConfig) -> StreamStore:
    """Open the configured store (``store.type``); raises :class:`ServiceError`."""
    from replication.store.memory import MemoryStore

    if config.store.type == "memory":
        return MemoryStore()
    if config.store.type == "sqlite":
        from replication.store.sqlite import SqliteStore

        path = database_path(config)
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            return SqliteStore(path)
        except OSError as e:
            raise ServiceError(
                f"cannot create the data directory for {path}: {e.strerror}"
            ) from None
        except StoreError as e:
            raise ServiceError(f"cannot open the store: {e}") from None
    raise ServiceError(f"unknown store type {config.store.type!r}")


class StoreThreads(Service):
    """The threads a blocking store runs in: one writer (writes in order, one at a time)
    and one reader (catch-up pages), started with the tree and stopped last."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.writer = ThreadPool(1, 1, "replication-writer")
        self.reader = ThreadPool(1, 1, "replication-reader")

    def run_write(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self.reactor, self.writer, f, *args)

    def run_read(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self.reactor, self.reader, f, *args)

    def startService(self) -> None:
        super().startService()
        self.writer.start()
        self.reader.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.reader.stop()
        self.writer.stop()
        return succeed(None)


class MasterRunner(Service):
    """Runs a :class:`Master`: retention while running; on stop, every connection is
    closed and then the store (its Deferred fires when the store is closed)."""

    def __init__(self, master: Master) -> None:
        self.master = master

    def startService(self) -> None:
        super().startService()
        self.master.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        d = self.master.close()

        def failed(failure: Failure) -> None:
            log.error("closing the store failed: %s", failure.getErrorMessage())

        return d.addErrback(failed)


class MasterService(OrderedMultiService):
    """The service tree of one master process (see the module docstring)."""

    def __init__(self, master: Master) -> None:
        super().__init__()
        self.master = master

    def when_listening(self) -> Deferred[None]:
        """Fires once every listener listens; fails with the first that cannot. Ask after
        :meth:`startService`."""
        listeners = [child for child in self if isinstance(child, ListeningService)]
        d: Deferred[Any] = DeferredList(
            [listener.when_listening() for listener in listeners],
            fireOnOneErrback=True, consumeErrors=True,
        )

        def ready(_: object) -> None:
            config = self.master.config
            log.info("master %s ready (store: %s)", config.server_name, config.store.type)

        return d.addCallbacks(ready, lambda f: f.value.subFailure)

    def stopService(self) -> Deferred[None]:
        """Stop every child (see the module docstring), then log that the master stopped."""
        name = self.master.config.server_name

        def stopped(_: None) -> None:
            log.info("master %s stopped", name)

        return super().stopService().addCallback(stopped)


def _endpoint(reactor: IReactorTime, description: str, key: str) -> IStreamServerEndpoint:
    try:
        endpoint: IStreamServerEndpoint = server_endpoint(reactor, description)
    except (ValueError, KeyError, TypeError) as e:
        raise ServiceError(f"{key}: cannot listen on {description!r}: {e}") from None
    return endpoint


def master_service(
    config: MasterConfig,
    reactor: IReactorTime,
    *,
    store: StreamStore | None = None,
    registry: CollectorRegistry | None = None,
    commands: CommandRegistry | None = None,
) -> MasterService:
    """The service tree of a master from its configuration (see the module docstring).

    :param reactor: the reactor (passed in: tests give a ``MemoryReactorClock``).
    :param store: the store to use; ``None``: open the configured one (:func:`open_store`).
    :param registry: the process's metrics registry; ``None``: a new one with the
        ``process_*`` metrics (:func:`~replication.metrics.process_registry`).
    :param commands: the commands connections understand; ``None``: the built-in ones.
    :raises ServiceError: the store cannot be opened.
    """
    from replication.http import admin_site

    if store is None:
        store = open_store(config)
    children: list[Service] = []
    run_write = run_read = None
    if store.blocking:
        threads = StoreThreads(reactor)
        children.append(threads)
        run_write, run_read = threads.run_write, threads.run_read
    metrics = MasterMetrics(registry if registry is not None else process_registry())
    master = Master(
        config, store, reactor, run_blocking=run_write, run_read=run_read, metrics=metrics,
        registry=commands,
    )
    children.append(MasterRunner(master))
    children.append(ListeningService(
        _endpoint(reactor, config.listen, "listen"), MasterFactory(master), "workers",
        fork(master.ready),
    ))
    if config.http_listen is not None:
        children.append(ListeningService(
            _endpoint(reactor, config.http_listen, "http_listen"), admin_site(master), "HTTP",
            fork(master.ready),
        ))

    def not_opened(failure: Failure) -> None:
        log.error("cannot open the store: %s", failure.getErrorMessage())

    master.ready.addErrback(not_opened)
    root = MasterService(master)
    for child in children:
        child.setServiceParent(root)
    return root


__all__ = [
    "MasterRunner",
    "MasterService",
    "DEFAULT_DATABASE_NAME",
    "ServiceError",
    "StoreThreads",
    "database_path",
    "master_service",
    "open_store",
]

