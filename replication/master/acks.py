"""Acknowledgement by peers: a publish that is answered only once ``k`` other masters of the
cluster have stored it (``cluster.ack_peers``), so that it survives the loss of this
master's disk.

A cluster peer that stores rows relayed from this master reports how far it has stored each
stream with ``HANDLED <stream>@<origin> <token>`` (the worker's report, sent by the peer
link after each commit of relayed rows; docs/protocol.rst, "Cluster peers"). The fan-out
hands those reports of this master's own origin to :meth:`PeerAcks.stored`, which keeps,
per stream, the highest token each peer (by origin id) has stored, and fires each waiting
publish once ``k`` distinct peers have stored its last token. A peer's report survives its
disconnection: what it stored is in its store.

A publish whose confirmations do not come within ``timeout`` seconds fails with
:class:`AckTimeout`: its rows are committed here and will still reach the peers when they
can take them, but the publisher is not told they are safe. The waiters are bounded by the
publishes the log lets wait for a commit (``max_pending_rows``) and by the timeout.

No I/O: time comes from the clock it is given.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from replication.master.log import StreamState
from replication.store import LOCAL_ORIGIN

log = logging.getLogger(__name__)


class AckTimeout(Exception):
    """A publish committed on this master that fewer than ``k`` peers confirmed in time."""

    def __init__(self, stream: str, token: int, confirmed: int, wanted: int,
                 timeout: float) -> None:
        self.stream = stream
        self.token = token
        self.confirmed = confirmed
        self.wanted = wanted
        super().__init__(
            f"stored on this master ({stream} token {token}) but confirmed by {confirmed} of "
            f"the {wanted} peers cluster.ack_peers asks for within {timeout:g}s; it will "
            "still reach them"
        )


@dataclass(eq=False, slots=True)
class _Waiter:
    token: int
    deferred: Deferred[None]
    timer: IDelayedCall | None = field(default=None)


class PeerAcks:
    """Publishes waiting for ``wanted`` peers to store them.

    :param wanted: peers that must have stored a publish (``cluster.ack_peers``); 0 turns
        waiting off.
    :param timeout: seconds a publish waits for them (``cluster.ack_timeout``).
    :param clock: for the timeouts.
    """

    def __init__(self, wanted: int, timeout: float, clock: IReactorTime) -> None:
        if wanted < 0:
            raise ValueError("ack_peers must be 0 or more")
        self.wanted = wanted
        self.timeout = timeout
        self.clock = clock
        #: Per stream, the highest token each peer (by origin id) reported stored.
        self._stored: dict[str, dict[str, int]] = {}
        self._waiting: dict[str, list[_Waiter]] = {}
        #: Publishes confirmed, and publishes that timed out, since start.
        self.confirmed = 0
        self.timed_out = 0

    def confirmations(self, stream: str, token: int) -> int:
        """How many peers have stored ``token`` of ``stream``."""
        return sum(1 for t in self._stored.get(stream, {}).values() if t >= token)

    def wait(self, stream: str, token: int) -> Deferred[None]:
        """Fires once ``wanted`` peers have stored ``token`` of ``stream`` (at once when
        they have, or when nothing is wanted); fails with :class:`AckTimeout`."""
        if self.wanted == 0 or self.confirmations(stream, token) >= self.wanted:
            self.confirmed += self.wanted > 0
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        waiter = _Waiter(token, Deferred())
        waiter.timer = self.clock.callLater(self.timeout, self._expire, stream, waiter)
        self._waiting.setdefault(stream, []).append(waiter)
        return waiter.deferred

    def stored(self, stream: str, peer: str, token: int) -> None:
        """Peer ``peer`` (its origin id) has stored this master's ``stream`` up to
        ``token``."""
        by_peer = self._stored.setdefault(stream, {})
        if token <= by_peer.get(peer, 0):
            return
        by_peer[peer] = token
        waiting = self._waiting.get(stream)
        if not waiting:
            return
        still = []
        for waiter in waiting:
            if self.confirmations(stream, waiter.token) >= self.wanted:
                if waiter.timer is not None and waiter.timer.active():
                    waiter.timer.cancel()
                self.confirmed += 1
                waiter.deferred.callback(None)
            else:
                still.append(waiter)
        if still:
            self._waiting[stream] = still
        else:
            del self._waiting[stream]

    def forget(self, stream: str) -> None:
        """``stream`` was deleted here: its tokens start again from 1, so what peers
        reported of the old ones no longer counts."""
        self._stored.pop(stream, None)

    # -- as a listener of the stream log: only deletions matter --------------------------

    def committed(self, state: StreamState, first: int, tokens_rows: Sequence[Sequence[str]],
                  rows: int) -> None:
        pass

    def skipped(self, state: StreamState, first: int, last: int) -> None:
        pass

    def deleted(self, old: StreamState, new: StreamState | None) -> None:
        if old.origin == LOCAL_ORIGIN:
            self.forget(old.stream)

    @property
    def pending(self) -> int:
        """Publishes waiting for confirmations now."""
        return sum(map(len, self._waiting.values()))

    def _expire(self, stream: str, waiter: _Waiter) -> None:
        waiting = self._waiting.get(stream, [])
        if waiter in waiting:
            waiting.remove(waiter)
            if not waiting:
                self._waiting.pop(stream, None)
        confirmed = self.confirmations(stream, waiter.token)
        self.timed_out += 1
        log.warning(
            "%s token %d: confirmed by %d of %d peers within %gs (cluster.ack_peers)",
            stream, waiter.token, confirmed, self.wanted, self.timeout,
        )
        waiter.deferred.errback(
            AckTimeout(stream, waiter.token, confirmed, self.wanted, self.timeout)
        )


__all__ = ["AckTimeout", "PeerAcks"]
