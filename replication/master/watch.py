# twisted.application.service has no annotations:
# mypy: disable-error-code="no-untyped-call"
"""Keeping a master current on a shared store: :class:`SharedStoreWatcher`.

Several masters on one PostgreSQL database each commit rows the others must fan out. The
watcher pokes the master's stream log (:meth:`~replication.master.log.StreamLog.poke`:
read every head, deliver what lies beyond, in order) when

- the store reports another writer's commit (:meth:`ChangeSource.wait_for_change`: the
  PostgreSQL store's ``LISTEN``, waited for in a thread of the watcher's own, which hands
  each wake-up to the reactor thread), and
- every ``poll_interval`` seconds whatever the notifications said: the backstop, so a lost
  notification (a listener reconnecting, a dropped connection) costs at most that much
  latency, never rows.

Pokes never overlap: one asked for while another runs is run once after it (any number of
wake-ups during a poke make one more). A poke that fails (the database is away) is logged
once until one succeeds again; the next wake-up or poll tries again.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol, runtime_checkable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from replication.master.log import StreamLog
from replication.services import fork
from replication.store import StoreError

log = logging.getLogger("replication.master")

#: Seconds the listening thread waits at most in one call, so that it notices a stop soon.
WAIT_SLICE = 0.5


@runtime_checkable
class ChangeSource(Protocol):
    """A store that other writers share and that can tell when they commit."""

    def wait_for_change(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; ``True`` if another writer (may have) committed."""

    def close_listener(self) -> None:
        """Release what ``wait_for_change`` holds (called from the same thread)."""


class SharedStoreWatcher(Service):
    """Pokes ``stream_log`` when ``source`` reports a change and every ``poll_interval``
    seconds, from the moment ``ready`` fires (the store is open) until the service stops.

    :param reactor: for the backstop timer and, with ``listen``, ``callFromThread``.
    :param listen: run the listening thread (tests drive :meth:`changed` themselves).
    """

    def __init__(
        self,
        stream_log: StreamLog,
        source: ChangeSource,
        reactor: IReactorTime,
        ready: Deferred[None],
        poll_interval: float = 1.0,
        *,
        listen: bool = True,
    ) -> None:
        self.stream_log = stream_log
        self.source = source
        self.reactor = reactor
        self.ready = ready
        self.poll_interval = poll_interval
        self.listen = listen
        self._loop = LoopingCall(self.changed)
        self._loop.clock = reactor
        self._poking = False
        self._again = False
        self._failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_done: Deferred[None] | None = None
        #: Pokes run so far (for tests and debugging).
        self.pokes = 0

    # -- life ------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        fork(self.ready).addCallbacks(self._opened, lambda _: None)

    def _opened(self, _: None) -> None:
        if not self.running:
            return
        self._loop.start(self.poll_interval, now=False)
        if self.listen:
            self._thread_done = Deferred()
            self._thread = threading.Thread(
                target=self._listen, args=(self._thread_done,),
                name="replication-store-listener", daemon=True,
            )
            self._thread.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self._stop.set()
        done, self._thread_done = self._thread_done, None
        return done if done is not None else succeed(None)

    # -- the listening thread --------------------------------------------------------------

    def _listen(self, done: Deferred[None]) -> None:
        reactor: Any = self.reactor
        failing = False
        try:
            while not self._stop.is_set():
                try:
                    changed = self.source.wait_for_change(min(WAIT_SLICE, self.poll_interval))
                    failing = False
                except StoreError as e:
                    if not failing:
                        log.warning("not notified of other masters' commits (polling): %s", e)
                    failing = True
                    self._stop.wait(self.poll_interval)
                    continue
                if changed and not self._stop.is_set():
                    reactor.callFromThread(self.changed)
        except Exception:
            log.exception("the store listener failed; other masters' rows arrive by polling")
        finally:
            self.source.close_listener()
            reactor.callFromThread(done.callback, None)

    # -- reactor thread ----------------------------------------------------------------------

    def changed(self) -> None:
        """Another writer (may have) committed: poke the log, or once more after the poke
        that runs."""
        if self._poking:
            self._again = True
            return
        self._poking = True
        self.pokes += 1
        self.stream_log.poke().addBoth(self._poked)

    def _poked(self, result: None | Failure) -> None:
        self._poking = False
        if isinstance(result, Failure):
            if not self._failing:
                log.warning(
                    "cannot read the heads other masters committed: %s; retrying",
                    result.getErrorMessage(),
                )
            self._failing = True
        else:
            if self._failing:
                log.info("reading the heads other masters committed works again")
            self._failing = False
        if self._again:
            self._again = False
            self.changed()


__all__ = ["ChangeSource", "SharedStoreWatcher", "WAIT_SLICE"]
