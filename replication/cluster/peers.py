# twisted.application.service has no annotations:
# mypy: disable-error-code="no-untyped-call"
""":class:`PeerLinks`: the service that keeps a master linked to the other masters of its
cluster, one :class:`~replication.cluster.link.PeerLink` per entry of ``cluster.peers``.

It starts dialling once the master's store is open (``ready``: the master's origin id is
known only then, and ingests need the open stream log), and on stop closes every link
through its protocol, stops dialling and waits for the store calls in flight, so that the
store is closed after them. :func:`peer_links` builds it from a
:class:`~replication.config.MasterConfig`.

**Repair.** Each link asks its peer for the peer's own rows only. When no link to an origin
has been connected for ``cluster.repair_after`` seconds (its master is down, partitioned
from this one, or its entry unreachable), every connected link also asks its peer for that
origin's rows (:meth:`PeerLink.add_repair`): a row that reached any live master reaches
this one while its origin is away; tokens already stored are dropped as duplicates. Once a
link to that origin is connected again, the repairing links stop (each is reconnected
without it, :meth:`PeerLink.drop_repair`). The origins considered are those this master
holds rows of and those its links have met; an origin it never heard of cannot be asked
for by name (see docs/clustering.rst).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from replication.cluster.identity import Identity
from replication.cluster.link import LinkSettings, LinkState, PeerLink
from replication.config import MasterConfig
from replication.master.log import StreamLog
from replication.snapshot import PeerLinkView
from replication.wire.auth import ClientCredential

log = logging.getLogger(__name__)


class PeerLinks(Service):
    """One :class:`PeerLink` per configured peer, dialled while the service runs.

    :param peers: the entries of ``cluster.peers`` (client endpoint strings, this master's
        own included).
    :param log: the master's stream log (``log.origin_id`` is read once ``ready`` fired).
    :param fingerprint: this master process's fingerprint (made once per process,
        :func:`~replication.cluster.identity.new_fingerprint`; the master's
        ``Master.fingerprint``): with ``log.origin_id`` it is the identity each link
        compares the announced one with.
    :param clock: the reactor's time.
    :param settings: what every link is configured with (:class:`LinkSettings`).
    :param connect: builds the client endpoint of an entry (``replication.tls.client_endpoint``
        with the reactor, in a process).
    :param ready: fires once the store is open (the master's ``ready``, forked); ``None``:
        the log is open already. If it fails, no link is started.
    :param jitter: passed to each link's backoff (tests pass ``lambda: 0``).

    ``links`` holds the links in the order of ``peers``; their attributes are what status
    and metrics read (:class:`PeerLink`).
    """

    def __init__(
        self,
        peers: Sequence[str],
        log: StreamLog,
        fingerprint: str,
        clock: IReactorTime,
        settings: LinkSettings,
        connect: Callable[[str], IStreamClientEndpoint],
        *,
        ready: Deferred[None] | None = None,
        jitter: Callable[[], float] | None = None,
        repair_after: float = 5.0,
    ) -> None:
        self.log = log
        self.repair_after = repair_after
        #: When each origin was last seen without a connected link, by origin id.
        self._unlinked_since: dict[str, float] = {}
        self._repair_loop: LoopingCall | None = None
        self.fingerprint = fingerprint
        self.clock = clock
        self.settings = settings
        self.connect = connect
        self.ready = ready
        self.links = [PeerLink(peer, log, clock, settings, jitter=jitter) for peer in peers]
        #: This master's identity, once the store is open.
        self.identity: Identity | None = None

    def link(self, endpoint: str) -> PeerLink:
        """The link of the entry ``endpoint``; :class:`KeyError` if there is none."""
        for link in self.links:
            if link.endpoint == endpoint:
                return link
        raise KeyError(endpoint)

    def startService(self) -> None:
        super().startService()
        ready, self.ready = self.ready, None
        if ready is None:
            self._start_links()
        else:
            ready.addCallbacks(lambda _: self._start_links(), self._not_ready)

    def _not_ready(self, failure: Failure) -> None:
        log.error("not dialling the cluster's peers: %s", failure.getErrorMessage())

    def _start_links(self) -> None:
        if not self.running:
            return
        origin_id = self.log.origin_id
        assert origin_id is not None, "the stream log is open"
        self.identity = identity = Identity(origin_id, self.fingerprint)
        log.info(
            "dialling %d cluster peers as origin %s (fingerprint %s)", len(self.links),
            identity.origin_id, identity.fingerprint,
        )
        for link in self.links:
            link.start(identity, self.connect(link.endpoint))
        loop = self._repair_loop = LoopingCall(self.check_repairs)
        loop.clock = self.clock
        loop.start(min(1.0, self.repair_after / 2), now=False)

    def check_repairs(self) -> None:
        """Start and stop repairs (see the module docstring); run every second."""
        identity = self.identity
        if identity is None:
            return
        now = self.clock.seconds()
        connected = {
            link.origin_id: link for link in self.links
            if link.state is LinkState.CONNECTED and link.origin_id is not None
        }
        known = {state.origin for state in self.log.states() if state.origin}
        known.update(link.origin_id for link in self.links if link.origin_id is not None)
        known.discard(identity.origin_id)
        wanted = set()
        for origin in known:
            if origin in connected:
                self._unlinked_since.pop(origin, None)
                continue
            since = self._unlinked_since.setdefault(origin, now)
            if now - since >= self.repair_after:
                wanted.add(origin)
        for link in connected.values():
            for origin in link.repairs - wanted:
                link.drop_repair(origin)
            for origin in sorted(wanted - link.repairs - {link.origin_id}):
                link.add_repair(origin)

    def repairing(self) -> set[str]:
        """The origins some link is asking its peer for besides the peer's own, now."""
        return set().union(*(link.repairs for link in self.links))

    def stopService(self) -> Deferred[None]:
        """Close every link and stop dialling; fires once each link's store calls in
        flight have finished."""
        super().stopService()
        loop, self._repair_loop = self._repair_loop, None
        if loop is not None and loop.running:
            loop.stop()
        started = [link for link in self.links if link.service is not None]
        if not started:
            return succeed(None)
        d = DeferredList([link.stop() for link in started], consumeErrors=True)
        return d.addCallback(lambda _: None)

    def views(self) -> tuple[PeerLinkView, ...]:
        """Every link now, in the order of ``peers``, for the master's snapshot."""
        return tuple(link.view() for link in self.links)

    def states(self) -> dict[str, LinkState]:
        """Each entry's state, by endpoint."""
        return {link.endpoint: link.state for link in self.links}


def peer_links(
    config: MasterConfig,
    log: StreamLog,
    fingerprint: str,
    clock: IReactorTime,
    connect: Callable[[str], IStreamClientEndpoint],
    *,
    ready: Deferred[None] | None = None,
    credential: ClientCredential | None = None,
) -> PeerLinks:
    """The :class:`PeerLinks` of a master configured with ``cluster.peers``; ``credential``:
    what the links authenticate with (``cluster.auth``, its secret read)."""
    peers = config.cluster.peers
    if peers is None:
        raise ValueError("the master has no cluster.peers")
    return PeerLinks(
        peers, log, fingerprint, clock, LinkSettings.from_config(config, credential), connect,
        ready=ready,
        repair_after=config.cluster.repair_after,
    )


__all__ = ["PeerLinks", "peer_links"]
