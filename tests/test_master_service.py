"""The master as a Twisted service tree: children start in order (listeners only once the
store is open) and stop in reverse, each stop awaited; a listener that cannot listen fails
``started``; the command line exits 1 with the reason."""

from __future__ import annotations

import dataclasses
import queue
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock

from replication.config import MasterConfig
from replication.master.app import MasterRunner, ServiceError, StoreThreads, master_service
from replication.services import ListeningService
from replication.store import StoreError
from replication.store.memory import MemoryStore
from replication.store.sqlite import SqliteStore

CONFIG = MasterConfig(
    listen="tcp:19092:interface=127.0.0.1", http_listen="tcp:19093:interface=127.0.0.1"
)


def test_a_memory_master_listens_on_both_ports_once_started() -> None:
    """With the memory store the store is open at once: starting the tree listens on the
    replication and HTTP ports, and ``started`` fires."""
    reactor = MemoryReactorClock()
    service = master_service(CONFIG, reactor, store=MemoryStore())
    assert [type(c) for c in service] == [MasterRunner, ListeningService, ListeningService]
    assert reactor.tcpServers == []
    started: list[object] = []
    service.startService()
    service.when_listening().addCallback(started.append)
    assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [
        (19092, "127.0.0.1"), (19093, "127.0.0.1"),
    ]
    assert started == [None]
    service.stopService()
    assert reactor.getDelayedCalls() == []


def test_without_http_there_is_one_listener() -> None:
    reactor = MemoryReactorClock()
    service = master_service(
        dataclasses.replace(CONFIG, http_listen=None), reactor, store=MemoryStore()
    )
    assert [type(c) for c in service] == [MasterRunner, ListeningService]


class ThreadedMemoryReactor(MemoryReactorClock):
    """A memory reactor that also takes calls from threads (as thread pools make them),
    run by :meth:`drain` on the test's thread."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: queue.Queue[tuple[Any, tuple[Any, ...], dict[str, Any]]] = queue.Queue()

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        self.from_threads.put((f, args, kwargs))

    def drain_until(self, done: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "timed out waiting for the store's threads"
            try:
                f, args, kwargs = self.from_threads.get(timeout=0.01)
            except queue.Empty:
                continue
            f(*args, **kwargs)


def test_a_blocking_store_runs_in_threads_and_listeners_wait_for_it_to_open(tmp_path: Path) -> None:
    """With SQLite the store is opened on the writer thread and the listeners listen only
    after that; stopping the tree stops listening, closes the store (on the writer thread)
    and then stops the threads."""
    reactor = ThreadedMemoryReactor()
    store = SqliteStore(str(tmp_path / "s.db"))
    service = master_service(CONFIG, reactor, store=store)
    assert [type(c) for c in service] == [
        StoreThreads,
        MasterRunner,
        ListeningService,
        ListeningService,
    ]
    service.startService()
    assert reactor.tcpServers == []  # the store is not open yet
    reactor.drain_until(lambda: len(reactor.tcpServers) == 2)
    stopped: list[object] = []
    service.stopService().addCallback(stopped.append)
    reactor.drain_until(lambda: bool(stopped))
    assert store._closed
    threads = list(service)[0]
    assert isinstance(threads, StoreThreads)
    assert not threads.writer.started and not threads.reader.started
    assert reactor.getDelayedCalls() == []


def test_a_listen_description_that_cannot_be_parsed_is_refused_when_building() -> None:
    """An endpoint string no endpoint parser takes is a ServiceError naming the key."""
    with pytest.raises(ServiceError, match="listen: cannot listen on 'nonsense:1'"):
        master_service(dataclasses.replace(CONFIG, listen="nonsense:1"), MemoryReactorClock(),
                       store=MemoryStore())


def test_a_store_that_cannot_be_opened_fails_the_listeners() -> None:
    """If opening the store fails, no listener listens and ``when_listening`` fails with
    the store's error."""

    class Broken(MemoryStore):
        def keys(self) -> list[tuple[str, str]]:
            raise StoreError("cannot read the streams table")

    reactor = MemoryReactorClock()
    service = master_service(CONFIG, reactor, store=Broken())
    errors: list[Any] = []
    try:
        service.startService()
    except StoreError:
        pass
    service.when_listening().addErrback(errors.append)
    assert reactor.tcpServers == []
    assert errors and "cannot read the streams table" in errors[0].getErrorMessage()
    service.stopService()


def test_the_command_line_exits_1_when_the_port_is_taken(tmp_path: Path) -> None:
    """``replication master`` on a port that is already bound prints the reason and exits 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "replication", "master", "--store", "memory",
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--http-listen", "none"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )
    assert done.returncode == 1
    assert "replication: error:" in done.stderr and "Address already in use" in done.stderr


def test_children_stop_in_reverse_one_at_a_time() -> None:
    """The second child is stopped only after the third child's stop Deferred fired; a
    failing stop is logged and the rest still stop."""
    from twisted.application.service import Service
    from twisted.internet.defer import Deferred, fail

    from replication.services import OrderedMultiService

    events: list[str] = []
    pending: Deferred[None] = Deferred()

    class Child(Service):
        def __init__(self, name: str, result: Any = None) -> None:
            self.name = name
            self.result = result

        def startService(self) -> None:
            super().startService()
            events.append(f"start {self.name}")

        def stopService(self) -> Any:
            super().stopService()
            events.append(f"stop {self.name}")
            return self.result

    root = OrderedMultiService()
    for child in (Child("a"), Child("b", fail(RuntimeError("boom"))), Child("c", pending)):
        child.setServiceParent(root)
    root.startService()
    stopped: list[object] = []
    root.stopService().addCallback(stopped.append)
    assert events == ["start a", "start b", "start c", "stop c"]
    pending.callback(None)
    assert events[3:] == ["stop c", "stop b", "stop a"]
    assert stopped == [None]
