"""Service trees whose children stop one after another.

Twisted's ``MultiService`` calls every child's ``stopService`` at once (in reverse order) and
waits for all of them together. A process of ours needs more: stop accepting connections,
*then* close the connections and the store, *then* stop the threads the store ran in. So
:class:`OrderedMultiService` starts its children in order and stops them in reverse, each
child's stop Deferred awaited before the next child is stopped.
"""

from __future__ import annotations

import logging

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.python.failure import Failure

log = logging.getLogger(__name__)


class OrderedMultiService(MultiService):
    """A ``MultiService`` that stops its children in reverse order, one at a time; a child
    whose stop fails is logged and the next one is still stopped."""

    def stopService(self) -> Deferred[None]:
        if not self.running:
            return succeed(None)
        self.running = 0
        children: list[IService] = list(self)
        children.reverse()
        done: Deferred[None] = succeed(None)

        def stop_next(_: object, child: IService) -> Deferred[None]:
            d: Deferred[None] = maybeDeferred(child.stopService)

            def failed(failure: Failure) -> None:
                log.error("stopping %r failed: %s", child, failure.getErrorMessage())

            return d.addErrback(failed)

        for child in children:
            done.addCallback(stop_next, child)
        return done


__all__ = ["OrderedMultiService"]
