# twisted.application.service has no annotations:
# mypy: disable-error-code="no-untyped-call"
"""A master process as a Twisted service tree: :func:`master_service`.

The tree, in start order (it stops in reverse, one child at a time, each child's stop
Deferred awaited before the next: see :class:`~replication.services.OrderedMultiService`)::

    MasterService
      StoreThreads    the writer and reader thread pools a blocking store runs in
      HistoryMarker   (a SQLite store it opened) records the store's history mark
      MasterRunner    the Master: opens the store, runs retention; on stop closes every
                      connection and then the store (after the writes in flight)
      SharedStoreWatcher  (a store other masters share: PostgreSQL) pokes the stream log
                      when another master commits, and every store.poll_interval
      ListeningService  the replication port   } start listening once the store is open;
      ListeningService  the HTTP port (if any) } on stop, stop accepting first
      PeerLinks         (with ``cluster.peers``) dials every peer once the replication
                        port listens; on stop, closes the links first and waits for
                        their ingests in flight, before the store is closed

Everything is built from a :class:`~replication.config.MasterConfig` and a reactor, which is
passed in (never the global one), so a test builds the whole tree on a
``MemoryReactorClock``. :meth:`MasterService.when_listening` fires when every listener
listens, or fails with the first error (the command line exits with it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import (
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from replication.cluster.peers import PeerLinks, peer_links
from replication.config import MasterConfig
from replication.credentials import SecretError, client_credential, master_keyring
from replication.master.connection import MasterFactory
from replication.master.log import StreamState
from replication.master.service import Master
from replication.master.watch import ChangeSource, SharedStoreWatcher
from replication.metrics import MasterMetrics, process_registry
from replication.services import ListeningService, OrderedMultiService, fork
from replication.store import LOCAL_ORIGIN, StoreError, StreamStore
from replication.store.history import (
    HistoryLost,
    HistoryMark,
    HistoryMarkError,
    check_history,
    mark_path,
    read_mark,
    write_mark,
)
from replication.tls import server_endpoint
from replication.wire.auth import ClientCredential
from replication.wire.commands import CommandRegistry

log = logging.getLogger("replication.master")


class ServiceError(Exception):
    """A master cannot be built or started: the message says why, for an operator."""


#: Seconds between two writes of a running master's history mark (when heads changed).
HISTORY_MARK_INTERVAL = 30.0

#: The SQLite database's file name in ``data_dir`` when ``store.path`` is not set.
DEFAULT_DATABASE_NAME = "streams.sqlite3"


def database_path(config: MasterConfig) -> str:
    """The SQLite database file of ``config``: ``store.path``, or
    ``<data_dir>/streams.sqlite3``."""
    return config.store.path or os.path.join(config.data_dir, DEFAULT_DATABASE_NAME)


def open_store(config: MasterConfig, accept_history_loss: bool = False) -> StreamStore:
    """Open the configured store (``store.type``); raises :class:`ServiceError`.

    A SQLite store is compared with its history mark (:mod:`replication.store.history`):
    one that lost history is refused unless ``accept_history_loss``
    (``--accept-store-history-loss``), which logs what was lost and goes on."""
    from replication.store.memory import MemoryStore

    if config.store.type == "memory":
        return MemoryStore()
    if config.store.type == "sqlite":
        from replication.store.sqlite import SqliteStore

        path = database_path(config)
        try:
            mark = _read_mark(mark_path(path), accept_history_loss)
            if mark is not None and not os.path.exists(path):
                _history_lost(mark, None, {}, path, accept_history_loss)
                mark = None  # accepted: the new store has nothing to be compared with
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            store = SqliteStore(path)
        except OSError as e:
            raise ServiceError(
                f"cannot create the data directory for {path}: {e.strerror}"
            ) from None
        except StoreError as e:
            raise ServiceError(f"cannot open the store: {e}") from None
        try:
            heads = {
                name: store.head(name) for name, origin in store.keys() if origin == LOCAL_ORIGIN
            }
            _history_lost(mark, store.origin_id, heads, path, accept_history_loss)
        except BaseException:
            store.close()
            raise
        return store
    if config.store.type == "postgres":
        return _open_postgres(config)
    raise ServiceError(f"unknown store type {config.store.type!r}")


def _open_postgres(config: MasterConfig) -> StreamStore:
    """The PostgreSQL store of ``config`` (``store.dsn``, ``store.schema``)."""
    try:
        from replication.store.postgres import DEFAULT_SCHEMA, PostgresStore
    except ImportError as e:
        raise ServiceError(f"cannot open the store: {e}") from None
    if not config.store.dsn:
        raise ServiceError("store.type postgres needs store.dsn (the connection string)")
    try:
        store = PostgresStore(config.store.dsn, config.store.schema or DEFAULT_SCHEMA)
    except ValueError as e:
        raise ServiceError(f"store.schema: {e}") from None
    except StoreError as e:
        raise ServiceError(f"cannot open the store: {e}") from None
    log.info("store: %s (origin %s)", store.name, store.origin_id)
    return store


def _read_mark(path: str, accept: bool) -> HistoryMark | None:
    """The history mark in ``path``; one that cannot be read is an error, or, with
    ``accept``, a warning and no mark (it is written anew once the store is open)."""
    try:
        return read_mark(path)
    except HistoryMarkError as e:
        if not accept:
            raise HistoryMarkError(
                f"{e}; or start once with --accept-store-history-loss to write it anew"
            ) from None
        log.warning("ignoring the history mark (--accept-store-history-loss): %s", e)
        return None


def _history_lost(
    mark: HistoryMark | None, origin_id: str | None, heads: dict[str, int], path: str,
    accept: bool,
) -> None:
    """:func:`~replication.store.history.check_history`; history lost is a
    :class:`ServiceError` saying how to accept it, or, with ``accept``, a warning."""
    try:
        check_history(mark, origin_id, heads, path)
    except HistoryLost as e:
        if not accept:
            raise ServiceError(
                f"refusing to start: {e}. Workers may hold positions this store does not have. "
                "If the loss is expected (a store restored from a backup, or replaced on "
                f"purpose), start once with --accept-store-history-loss: the master takes the "
                f"store as it is, records it in {mark_path(path)}, and sends RESET to workers "
                "ahead of it"
            ) from None
        log.warning("accepting the store's history loss (--accept-store-history-loss): %s", e)


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


class HistoryMarker(Service):
    """Records the store's history mark (:mod:`replication.store.history`) in ``path``:
    once the store is open, every ``interval`` seconds while it changes, when a stream is
    deleted, and on stop. It is started before the :class:`MasterRunner`, so it stops
    after it, when the store is closed and the heads are final. A mark that cannot be
    written is logged (once until a write succeeds again); the master goes on."""

    def __init__(
        self, master: Master, path: str, clock: IReactorTime,
        interval: float = HISTORY_MARK_INTERVAL,
    ) -> None:
        self.master = master
        self.path = path
        self.clock = clock
        self.interval = interval
        self._loop = LoopingCall(self.record)
        self._loop.clock = clock
        self._opened = False
        self._recorded: tuple[str, dict[str, int]] | None = None
        self._failing = False

    def startService(self) -> None:
        super().startService()
        fork(self.master.ready).addCallbacks(self._store_opened, lambda _: None)

    def _store_opened(self, _: None) -> None:
        self._opened = True
        self.master.log.add_listener(self)
        self.record()
        if self.running:
            self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self.record()

    def record(self) -> None:
        """Write the mark if the store's origin id or a head changed since the last one."""
        origin_id = self.master.log.origin_id
        if not self._opened or origin_id is None:
            return
        heads = {s.stream: s.head for s in self.master.log.states() if s.origin == LOCAL_ORIGIN}
        if self._recorded == (origin_id, heads):
            return
        try:
            write_mark(self.path, HistoryMark(origin_id, heads, self.clock.seconds()))
        except StoreError as e:
            if not self._failing:
                log.error("%s; a loss of the store's history will not be noticed", e)
            self._failing = True
            return
        self._failing = False
        self._recorded = (origin_id, heads)

    # -- LogListener: a deletion lowers a head on purpose, so record it at once ------------

    def committed(
        self, state: StreamState, first: int, tokens_rows: Sequence[Sequence[str]], rows: int
    ) -> None:
        pass

    def skipped(self, state: StreamState, first: int, last: int) -> None:
        pass

    def deleted(self, old: StreamState, new: StreamState | None) -> None:
        self.record()


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
        #: The links to the cluster's peers (``cluster.peers``), else ``None``.
        self.peer_links: PeerLinks | None = None

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
    accept_history_loss: bool = False,
) -> MasterService:
    """The service tree of a master from its configuration (see the module docstring).

    :param reactor: the reactor (passed in: tests give a ``MemoryReactorClock``).
    :param store: the store to use; ``None``: open the configured one (:func:`open_store`).
    :param registry: the process's metrics registry; ``None``: a new one with the
        ``process_*`` metrics (:func:`~replication.metrics.process_registry`).
    :param commands: the commands connections understand; ``None``: the built-in ones.
    :param accept_history_loss: open a SQLite store that holds less than its history mark
        recorded (``--accept-store-history-loss``), see :func:`open_store`.
    :raises ServiceError: the store cannot be opened.
    """
    from replication.http import admin_factory

    try:
        keyring = master_keyring(config)
        link_credential = client_credential(config.cluster.auth, "cluster.auth")
    except SecretError as e:
        raise ServiceError(str(e)) from None
    marked = store is None and config.store.type == "sqlite"
    if store is None:
        store = open_store(config, accept_history_loss)
    children: list[Service] = []
    run_write = run_read = None
    if store.blocking:
        threads = StoreThreads(reactor)
        children.append(threads)
        run_write, run_read = threads.run_write, threads.run_read
    metrics = MasterMetrics(registry if registry is not None else process_registry())
    master = Master(
        config, store, reactor, run_blocking=run_write, run_read=run_read, metrics=metrics,
        registry=commands, keyring=keyring,
    )
    if marked:
        children.append(HistoryMarker(master, mark_path(database_path(config)), reactor))
    children.append(MasterRunner(master))
    if isinstance(store, ChangeSource):  # a store other masters write too (PostgreSQL)
        children.append(SharedStoreWatcher(
            master.log, store, reactor, fork(master.ready), config.store.poll_interval,
        ))
    workers = ListeningService(
        _endpoint(reactor, config.listen, "listen"), MasterFactory(master), "workers",
        fork(master.ready),
    )
    children.append(workers)
    if config.http_listen is not None:
        children.append(ListeningService(
            _endpoint(reactor, config.http_listen, "http_listen"), admin_factory(master), "HTTP",
            fork(master.ready),
        ))
    links = None
    if config.cluster.enabled:
        links = _peer_links(config, master, reactor, workers, link_credential)
        master.peer_links = links
        children.append(links)

    def not_opened(failure: Failure) -> None:
        log.error("cannot open the store: %s", failure.getErrorMessage())

    master.ready.addErrback(not_opened)
    root = MasterService(master)
    root.peer_links = links
    for child in children:
        child.setServiceParent(root)
    return root


def _peer_links(
    config: MasterConfig, master: Master, reactor: IReactorTime, workers: ListeningService,
    credential: ClientCredential | None = None,
) -> PeerLinks:
    """The master's links to its cluster's peers. They start dialling once the replication
    port listens (the store is open by then, so the origin id is known, and this master can
    answer the link that turns out to be itself)."""
    from replication.tls import client_endpoint

    def connect(description: str) -> IStreamClientEndpoint:
        try:
            endpoint: IStreamClientEndpoint = client_endpoint(reactor, description)
        except Exception as e:  # what Twisted's parsers raise varies (as in the config check)
            detail = str(e) or type(e).__name__
            raise ServiceError(f"cluster.peers: cannot dial {description!r}: {detail}") from None
        return endpoint

    for description in config.cluster.peers or ():
        connect(description)  # an endpoint that cannot be built stops the master now
    listening = workers.when_listening().addCallback(lambda _: None)
    return peer_links(
        config, master.log, master.fingerprint, reactor, connect, ready=listening,
        credential=credential,
    )


__all__ = [
    "HistoryMarker",
    "MasterRunner",
    "MasterService",
    "DEFAULT_DATABASE_NAME",
    "ServiceError",
    "StoreThreads",
    "database_path",
    "master_service",
    "open_store",
]

