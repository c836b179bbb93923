"""replication.testing's MemoryNetwork: connecting, refusal, partitions (dropped and stalled
links), connection timeouts, back-pressure, Twisted's ClientService reconnecting through it
under a Clock, and a real worker resuming by token after a partition heals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.application.internet import ClientService
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import (
    CannotListenError,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from replication.testing import Harness, MemoryNetwork, NetworkNotIdle, Recording


class Peer(Protocol):
    """Records what it receives and how its connection ended; echoes if asked to."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.received = b""
        self.lost: Failure | None = None
        self.paused = 0
        self.resumed = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.echo:
            self.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason

    # as a push producer of its own writes
    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None:
        pass


class PeerFactory(Factory):
    """Builds :class:`Peer` s and keeps them; counts doStart/doStop."""

    noisy = False

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.built: list[Peer] = []

    def buildProtocol(self, addr: Any) -> Peer:
        peer = Peer(self.echo)
        peer.factory = self
        self.built.append(peer)
        return peer


def outcome(d: Deferred[Any]) -> list[Any]:
    """What ``d`` has fired with so far: [] while pending, [result] or [Failure]."""
    results: list[Any] = []
    d.addBoth(results.append)
    return results


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def network(clock: Clock) -> MemoryNetwork:
    return MemoryNetwork(clock)


def test_a_connection_settles_in_run_until_idle_and_carries_bytes_both_ways(
    network: MemoryNetwork,
) -> None:
    """connect() answers a pending Deferred; the next run_until_idle connects, with host
    names as addresses, and moves bytes until nothing moves."""
    servers = PeerFactory(echo=True)
    network.listen("server", servers, port=7000)
    clients = PeerFactory()
    d = network.client_endpoint("client", "server", port=7000).connect(clients)
    result = outcome(d)
    assert result == []
    network.run_until_idle()
    client = result[0]
    assert client is clients.built[0]
    assert (client.transport.getPeer().host, client.transport.getPeer().port) == ("server", 7000)
    server_peer = servers.built[0].transport.getPeer()
    assert server_peer.host == "client"
    client.transport.write(b"hello")
    assert network.run_until_idle() == 10
    assert client.received == b"hello"
    assert [(link.source, link.target) for link in network.links] == [("client", "server")]


def test_nothing_listening_is_refused_and_the_factory_is_stopped(network: MemoryNetwork) -> None:
    clients = PeerFactory()
    result = outcome(network.client_endpoint("client", "server").connect(clients))
    network.run_until_idle()
    assert result[0].check(ConnectionRefusedError)
    assert clients.numPorts == 0
    assert network.links == []


def test_a_port_that_stopped_listening_refuses_new_connections_but_keeps_its_links(
    network: MemoryNetwork,
) -> None:
    port = network.listen("server", PeerFactory())
    first = outcome(network.client_endpoint("a", "server").connect(PeerFactory()))
    network.run_until_idle()
    port.stopListening()
    second = outcome(network.client_endpoint("b", "server").connect(PeerFactory()))
    network.run_until_idle()
    assert first[0].lost is None
    assert second[0].check(ConnectionRefusedError)
    assert len(network.links) == 1


def test_listening_twice_on_one_address_is_refused(network: MemoryNetwork) -> None:
    network.listen("server", PeerFactory())
    with pytest.raises(CannotListenError):
        network.listen("server", PeerFactory())
    network.listen("server", PeerFactory(), port=9093)
    failed = outcome(network.server_endpoint("server", 9093).listen(PeerFactory()))
    assert failed[0].check(CannotListenError)


def test_a_partition_drops_the_links_between_two_hosts_only(network: MemoryNetwork) -> None:
    """Both ends of each link between a and b are lost with ConnectionLost; other links stay."""
    servers = PeerFactory()
    network.listen("b", servers)
    ab = outcome(network.client_endpoint("a", "b").connect(PeerFactory()))
    cb = outcome(network.client_endpoint("c", "b").connect(PeerFactory()))
    network.run_until_idle()
    network.partition("a", "b")
    assert ab[0].lost.check(ConnectionLost)
    assert servers.built[0].lost.check(ConnectionLost)
    assert cb[0].lost is None
    assert [link.source for link in network.links] == ["c"]


def test_a_connection_across_a_partition_times_out_at_the_connect_timeout(clock: Clock) -> None:
    network = MemoryNetwork(clock, connect_timeout=10.0)
    network.listen("b", PeerFactory())
    network.partition("a", "b")
    clients = PeerFactory()
    result = outcome(network.client_endpoint("a", "b").connect(clients))
    network.advance(9.999)
    assert result == []
    network.advance(0.001)
    assert result[0].check(ConnectTimeoutError)
    assert clock.getDelayedCalls() == []
    assert clients.numPorts == 0


def test_a_heal_before_the_timeout_connects_and_leaves_no_timer(
    network: MemoryNetwork, clock: Clock
) -> None:
    network.listen("b", PeerFactory())
    network.partition("b", "a")
    result = outcome(network.client_endpoint("a", "b").connect(PeerFactory()))
    network.advance(5)
    network.heal("a", "b")
    network.run_until_idle()
    assert isinstance(result[0], Peer)
    assert clock.getDelayedCalls() == []


def test_cancelling_a_waiting_connection_leaves_nothing_behind(
    network: MemoryNetwork, clock: Clock
) -> None:
    network.listen("b", PeerFactory())
    network.partition("a", "b")
    clients = PeerFactory()
    d = network.client_endpoint("a", "b").connect(clients)
    result = outcome(d)
    network.run_until_idle()
    d.cancel()
    assert result[0].check(CancelledError)
    network.heal("a", "b")
    network.run_until_idle()
    assert network.links == []
    assert clock.getDelayedCalls() == []
    assert clients.numPorts == 0


def test_a_stalled_partition_holds_bytes_pauses_the_writer_and_delivers_on_heal(
    clock: Clock,
) -> None:
    """Without drop, the link stays open: nothing is delivered, a writer with more than
    high_water bytes waiting is paused, and after the heal everything arrives in order
    and the writer is resumed."""
    network = MemoryNetwork(clock, high_water=100)
    servers = PeerFactory()
    network.listen("b", servers)
    client = outcome(network.client_endpoint("a", "b").connect(PeerFactory()))
    network.run_until_idle()
    writer = client[0]
    writer.transport.registerProducer(writer, True)
    network.partition("a", "b", drop=False)
    writer.transport.write(b"x" * 100)
    assert writer.paused == 0
    writer.transport.write(b"y")
    assert writer.paused == 1
    network.advance(60)
    assert servers.built[0].received == b""
    network.heal("a", "b")
    network.run_until_idle()
    assert servers.built[0].received == b"x" * 100 + b"y"
    assert writer.resumed == 1


def test_run_until_idle_gives_up_on_peers_that_never_stop(network: MemoryNetwork) -> None:
    network.listen("b", PeerFactory(echo=True))
    client = outcome(network.client_endpoint("a", "b").connect(PeerFactory(echo=True)))
    network.run_until_idle()
    client[0].transport.write(b"ping")
    with pytest.raises(NetworkNotIdle):
        network.run_until_idle(max_turns=50)


def test_client_service_reconnects_through_the_network_after_a_partition_heals(
    network: MemoryNetwork, clock: Clock
) -> None:
    """ClientService under a Clock: connected, cut off by a partition, its attempts time
    out while it lasts, it connects again after the heal, and once stopped no timer is left."""
    servers = PeerFactory()
    network.listen("server", servers)
    service = ClientService(
        network.client_endpoint("client", "server"), PeerFactory(), clock=clock,
        retryPolicy=lambda attempt: 1.0,
    )
    service.startService()
    network.run_until_idle()
    first = outcome(service.whenConnected())[0]
    network.partition("client", "server")
    assert first.lost is not None
    network.advance(120, steps=120)
    assert len(servers.built) == 1
    network.heal("client", "server")
    network.advance(60, steps=60)
    second = outcome(service.whenConnected())[0]
    assert second is not first and second.lost is None
    assert len(servers.built) == 2
    stopped = outcome(service.stopService())
    network.run_until_idle()
    assert stopped == [None]
    assert network.links == []
    assert clock.getDelayedCalls() == []


def test_a_worker_resumes_by_token_after_a_partition_heals(tmp_path: Path) -> None:
    """A worker service connected over the harness's network handles 1..3; a partition
    cuts it off while 4..6 are published; after the heal it reconnects by itself, asks
    from token 3 and handles exactly 4..6. Stopped, it leaves no connection and no timer."""
    h = Harness(tmp_path)
    for i in range(3):
        h.publish("events", [i])
    handler = Recording()
    worker = h.worker(handler)
    service = h.worker_service(worker)
    service.startService()
    h.network.run_until_idle()
    assert handler.token_numbers() == [1, 2, 3]
    h.network.partition("w1", Harness.MASTER_HOST)
    assert worker.connection is None and h.master.connections == set()
    for i in range(3, 6):
        h.publish("events", [i])
    h.network.advance(90, steps=90)
    assert handler.token_numbers() == [1, 2, 3]
    h.network.heal("w1", Harness.MASTER_HOST)
    h.network.advance(60, steps=60)
    assert handler.token_numbers() == [1, 2, 3, 4, 5, 6]
    assert [rows for _, _, rows in handler.tokens] == [[0], [1], [2], [3], [4], [5]]
    stopped = outcome(service.stopService())
    h.network.run_until_idle()
    assert stopped == [None]
    assert h.master.connections == set() and h.network.links == []
    assert h.clock.getDelayedCalls() == []


def test_a_stalled_link_is_cut_off_by_keepalive_and_the_worker_comes_back(tmp_path: Path) -> None:
    """With the link stalled rather than dropped, the keepalive timeout (25 s of silence
    from a peer that has pinged) ends it; the worker retries, and resumes once the
    partition heals."""
    h = Harness(tmp_path)
    handler = Recording()
    worker = h.worker(handler)
    service = h.worker_service(worker)
    service.startService()
    h.network.run_until_idle()
    h.publish("events", ["a"])
    h.network.advance(6, steps=6)  # both sides have pinged
    h.network.partition("w1", Harness.MASTER_HOST, drop=False)
    h.publish("events", ["b"])
    h.network.advance(20, steps=20)
    assert worker.connection is not None
    h.network.advance(20, steps=20)
    assert worker.connection is None and h.master.connections == set()
    h.network.heal("w1", Harness.MASTER_HOST)
    h.network.advance(30, steps=30)
    assert handler.token_numbers() == [1, 2]
    service.stopService()
    h.network.run_until_idle()
    assert h.clock.getDelayedCalls() == []
