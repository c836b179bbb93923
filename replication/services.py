# twisted.application.service has no annotations:
# mypy: disable-error-code="no-untyped-call"
"""Service trees for our processes: children that stop one after another, and listeners.

Twisted's ``MultiService`` calls every child's ``stopService`` at once and waits for all of
them together. A process of ours needs more: stop accepting connections, *then* close the
connections and the store, *then* stop the threads the store ran in. So
:class:`OrderedMultiService` starts its children in order and stops them in reverse, each
child's stop Deferred awaited before the next child is stopped. :class:`ListeningService`
listens on a server endpoint while running (optionally once a Deferred has fired). Both the
master's and the worker's trees are built from them.
"""

from __future__ import annotations

import logging

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.python.failure import Failure

log = logging.getLogger(__name__)


class OrderedMultiService(MultiService):
    """A ``MultiService`` whose children start in the order they were added and stop in
    reverse, each stop (its Deferred) finished before the next one begins.

    A child whose ``startService`` raises stops the children started before it (in
    reverse) and the error propagates. A child whose stop fails is logged and the next one
    is stopped all the same.
    """

    def startService(self) -> None:
        Service.startService(self)
        started: list[IService] = []
        for child in self:
            try:
                child.startService()
            except BaseException:
                self.running = 0
                for done in reversed(started):
                    done.stopService()
                raise
            started.append(child)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return ensureDeferred(self._stop_children())

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            if not child.running:
                continue
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                log.exception("stopping %s failed", child.name or child)


class ListeningService(Service):
    """Listens on ``endpoint`` with ``factory`` while running; ``what`` names it in logs.

    A listen that fails at once (the usual case: the address is taken) makes
    :meth:`startService` raise; :meth:`when_listening` tells of a later outcome too.
    Stopping stops listening and waits for the port to close.

    With ``ready``, listening waits until that Deferred fires (the master's store is open);
    if it fails, the listener fails with it. ``ready`` is shared by nothing else: pass each
    listener its own (see :func:`fork`).
    """

    def __init__(self, endpoint: IStreamServerEndpoint, factory: IProtocolFactory,
                 what: str, ready: Deferred[None] | None = None) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.what = what
        self.ready = ready
        self._port: IListeningPort | None = None
        self._outcome: IListeningPort | Failure | None = None
        self._waiters: list[Deferred[IListeningPort]] = []
        self._listening: Deferred[IListeningPort] | None = None

    def startService(self) -> None:
        Service.startService(self)
        self._outcome = None
        if self.ready is not None:
            ready, self.ready = self.ready, None
            ready.addCallbacks(lambda _: self._listen(), self._not_ready)
        else:
            self._listen()
        if isinstance(self._outcome, Failure):
            self.running = 0
            self._outcome.raiseException()

    def _not_ready(self, failure: Failure) -> None:
        self._failed(failure)

    def _listen(self) -> None:
        if not self.running:
            return
        self._listening = self.endpoint.listen(self.factory)
        self._listening.addCallbacks(self._listened, self._failed)

    def _listened(self, port: IListeningPort) -> None:
        self._listening = None
        self._port = self._outcome = port
        log.info("listening for %s on %s", self.what, describe_address(port.getHost()))
        self._tell()

    def _failed(self, failure: Failure) -> None:
        self._listening = None
        self._outcome = failure
        if not self.running:
            return  # raised by startService, or cancelled by stopService
        log.error("cannot listen for %s: %s", self.what, failure.getErrorMessage())
        self._tell()

    def _tell(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._fire(waiter)

    def _fire(self, waiter: Deferred[IListeningPort]) -> None:
        outcome = self._outcome
        if isinstance(outcome, Failure):
            waiter.errback(outcome)
        elif outcome is not None:
            waiter.callback(outcome)

    def when_listening(self) -> Deferred[IListeningPort]:
        """Fires with the port once listening, or fails if the listen failed."""
        waiter: Deferred[IListeningPort] = Deferred()
        if self._outcome is None:
            self._waiters.append(waiter)
        else:
            self._fire(waiter)
        return waiter

    def stopService(self) -> Deferred[None] | None:
        Service.stopService(self)
        port, self._port = self._port, None
        if port is not None:
            stopped: Deferred[None] = maybeDeferred(port.stopListening)  # type: ignore[call-overload]
            return stopped
        if self._listening is not None:
            self._listening.cancel()
        return None


def describe_address(address: IAddress) -> str:
    """``host:port`` for an IP address, else the path of a UNIX address or its text."""
    port = getattr(address, "port", None)
    if port is not None:
        return f"{getattr(address, 'host', '')}:{port}"
    return str(getattr(address, "name", address))


def fork(d: Deferred[None]) -> Deferred[None]:
    """A new Deferred that fires with ``d``'s outcome, leaving ``d``'s own result as it is:
    several listeners can each wait for one ``ready``."""
    out: Deferred[None] = Deferred()

    def pass_on(result: object) -> object:
        if isinstance(result, Failure):
            out.errback(result)
        else:
            out.callback(None)
        return result

    d.addBoth(pass_on)
    return out


__all__ = ["ListeningService", "OrderedMultiService", "describe_address", "fork"]
