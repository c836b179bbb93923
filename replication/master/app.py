"""A master process as a Twisted service tree: :func:`master_service`.

The tree, in start order (it stops in reverse, one child at a time, each child's stop
Deferred awaited before the next: see :class:`~replication.services.OrderedMultiService`)::

    MasterService
      StoreThreads    the writer and reader thread pools a blocking store runs in
      MasterRunner    the Master: opens the store, runs retention; on stop closes every
                      connection and then the store (after the writes in flight)
      Listener        the replication port   } start listening once the store is open;
      Listener        the HTTP port (if any) } on stop, stop accepting first

Everything is built from a :class:`~replication.config.MasterConfig` and a reactor, which is
passed in (never the global one), so a test builds the whole tree on a
``MemoryReactorClock``. :attr:`MasterService.started` fires when every listener listens, or
fails with the first error (the command line exits with it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from replication.config import MasterConfig
from replication.master.connection import MasterFactory
from replication.master.service import Master
from replication.services import OrderedMultiService
from replication.metrics import MasterMetrics
from replication.store import StoreError, StreamStore

log = logging.getLogger("replication.master")


class ServiceError(Exception):
    """A master cannot be built or started: the message says why, for an operator."""


def open_store(config: MasterConfig) -> StreamStore:
    """Open the configured store (``store.type``); raises :class:`ServiceError`."""
    from replication.store.memory import MemoryStore

    if config.store.type == "memory":
        return MemoryStore()
    if config.store.type == "sqlite":
        from replication.store.sqlite import SqliteStore

        path = config.store.path or os.path.join(config.data_dir, "streams.sqlite3")
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


def _address(address: Any) -> str:
    if hasattr(address, "port"):
        return f"{address.host}:{address.port}"
    return str(getattr(address, "name", address))


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
        super().startService()  # type: ignore[no-untyped-call]
        self.writer.start()
        self.reader.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        self.reader.stop()
        self.writer.stop()
        return succeed(None)


class MasterRunner(Service):
    """Runs a :class:`Master`: retention while running; on stop, every connection is
    closed and then the store (its Deferred fires when the store is closed)."""

    def __init__(self, master: Master) -> None:
        self.master = master

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.master.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        d = self.master.close()

        def failed(failure: Failure) -> None:
            log.error("closing the store failed: %s", failure.getErrorMessage())

        return d.addErrback(failed)


class Listener(Service):
    """Listens on an endpoint string once ``ready`` has fired; stops listening on stop.
    :attr:`listening` fires with the port, or fails with the reason."""

    def __init__(
        self,
        reactor: Any,
        description: str,
        factory: IProtocolFactory,
        what: str,
        ready: Deferred[None],
    ) -> None:
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.what = what
        self.ready = ready
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] = Deferred()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.ready.addCallbacks(lambda _: self._listen(), self.listening.errback)

    def _listen(self) -> None:
        if not self.running:
            return
        try:
            endpoint = serverFromString(self.reactor, self.description)  # type: ignore[no-untyped-call]
        except Exception:
            self.listening.errback(Failure())  # type: ignore[no-untyped-call]
            return
        d: Deferred[IListeningPort] = endpoint.listen(self.factory)

        def listened(port: IListeningPort) -> None:
            self.port = port
            log.info("listening for %s on %s", self.what, _address(port.getHost()))
            self.listening.callback(port)

        d.addCallbacks(listened, self.listening.errback)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


def _fork(d: Deferred[None]) -> Deferred[None]:
    """A new Deferred that fires with ``d``'s result, leaving ``d``'s own result as it is."""
    out: Deferred[None] = Deferred()

    def pass_on(result: object) -> object:
        if isinstance(result, Failure):
            out.errback(result)
        else:
            out.callback(None)
        return result

    d.addBoth(pass_on)
    return out


class MasterService(OrderedMultiService):
    """The service tree of one master process (see the module docstring)."""

    def __init__(self, master: Master, listeners: list[Listener]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.master = master
        self.listeners = listeners
        #: Fires once every listener listens; fails with the first that could not.
        self.started: Deferred[None] = DeferredList(
            [listener.listening for listener in listeners],
            fireOnOneErrback=True, consumeErrors=True,
        ).addCallbacks(self._all_listening, lambda f: f.value.subFailure)

    def _all_listening(self, _: object) -> None:
        config = self.master.config
        log.info("master %s ready (store: %s)", config.server_name, config.store.type)


def master_service(
    config: MasterConfig,
    reactor: IReactorTime,
    *,
    store: StreamStore | None = None,
    registry: CollectorRegistry | None = None,
) -> MasterService:
    """The service tree of a master from its configuration (see the module docstring).

    :param reactor: the reactor (passed in: tests give a ``MemoryReactorClock``).
    :param store: the store to use; ``None``: open the configured one (:func:`open_store`).
    :param registry: the process's metrics registry; ``None``: a private one.
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
    metrics = MasterMetrics(registry if registry is not None else CollectorRegistry())
    master = Master(
        config, store, reactor, run_blocking=run_write, run_read=run_read, metrics=metrics
    )
    children.append(MasterRunner(master))
    listeners = [
        Listener(reactor, config.listen, MasterFactory(master), "workers", _fork(master.ready))
    ]
    if config.http_listen is not None:
        site = admin_site(master)
        listeners.append(Listener(reactor, config.http_listen, site, "HTTP", _fork(master.ready)))

    def not_opened(failure: Failure) -> None:
        log.error("cannot open the store: %s", failure.getErrorMessage())

    master.ready.addErrback(not_opened)
    root = MasterService(master, listeners)
    for child in children + listeners:
        child.setServiceParent(root)  # type: ignore[no-untyped-call]
    return root


__all__ = [
    "Listener",
    "MasterRunner",
    "MasterService",
    "ServiceError",
    "StoreThreads",
    "master_service",
    "open_store",
]

