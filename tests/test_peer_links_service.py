"""The peer links in the master's service tree: added only with ``cluster.peers``, dialling
once the replication port listens, stopped first (before the listeners and the store)."""

from __future__ import annotations

import dataclasses

import pytest
from twisted.internet.testing import MemoryReactorClock

from replication.cluster.link import LinkState
from replication.cluster.peers import PeerLinks
from replication.config import ClusterConfig, MasterConfig
from replication.master.app import MasterRunner, ServiceError, master_service
from replication.services import ListeningService
from replication.store.memory import MemoryStore

PEERS = ("tcp:host=127.0.0.1:port=19092", "tcp:host=127.0.0.1:port=19192")
CONFIG = MasterConfig(
    listen="tcp:19092:interface=127.0.0.1", http_listen=None,
    cluster=ClusterConfig(peers=PEERS),
)


def test_a_master_without_cluster_peers_has_no_links() -> None:
    service = master_service(
        dataclasses.replace(CONFIG, cluster=ClusterConfig()), MemoryReactorClock(),
        store=MemoryStore(),
    )
    assert [type(c) for c in service] == [MasterRunner, ListeningService]
    assert service.peer_links is None and service.master.peer_links is None


def test_the_links_dial_every_peer_once_the_replication_port_listens() -> None:
    reactor = MemoryReactorClock()
    service = master_service(CONFIG, reactor, store=MemoryStore())
    assert [type(c) for c in service] == [MasterRunner, ListeningService, PeerLinks]
    links = service.peer_links
    assert isinstance(links, PeerLinks) and links is list(service)[-1]
    assert service.master.peer_links is links  # what the master's snapshot reads
    assert [link.endpoint for link in links.links] == list(PEERS)
    assert reactor.tcpClients == []
    service.startService()
    assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [
        (19092, "127.0.0.1")
    ]
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [
        ("127.0.0.1", 19092), ("127.0.0.1", 19192),
    ]
    master = service.master
    assert links.identity == master.identity()
    assert set(links.states().values()) == {LinkState.CONNECTING}
    service.stopService()
    assert set(links.states().values()) == {LinkState.STOPPED}
    assert reactor.getDelayedCalls() == []


def test_a_peer_endpoint_that_cannot_be_built_is_refused_when_building() -> None:
    config = dataclasses.replace(
        CONFIG, cluster=ClusterConfig(peers=("ssl:host=127.0.0.1:port=1:caCertsDir=/nope",))
    )
    with pytest.raises(ServiceError, match="cluster.peers: cannot dial"):
        master_service(config, MemoryReactorClock(), store=MemoryStore())
