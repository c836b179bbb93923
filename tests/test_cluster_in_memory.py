"""Three masters as one cluster on a :class:`~replication.testing.MemoryNetwork` and a
Clock: real ``Master`` objects, their ``PeerLinks`` and a real worker service, joined by
in-memory links; partitions are dropped links. Publishes on every master reach every master
(one hop each), a partitioned master's rows are repaired through the third one, and after
the heal every master holds the same heads per origin; a worker that fails over between
masters handles every (origin, token) once, in order per origin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from replication.cluster.peers import PeerLinks, peer_links
from replication.config import (
    ClusterConfig,
    MasterConfig,
    ReconnectConfig,
    WorkerConfig,
    WorkerStream,
)
from replication.master import Master, MasterFactory
from replication.store.memory import MemoryStore
from replication.testing import MemoryNetwork
from replication.wire.auth import ClientCredential, Credential, Keyring, Permissions
from replication.worker import Worker, worker_service
from replication.worker.positions import MemoryPositions

NAMES = ("m1", "m2", "m3")


class OriginRecorder:
    """A handler that learns each token's origin."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def __call__(self, stream: str, token: int, rows: list[Any], origin: str | None = None
                 ) -> None:
        assert origin is not None
        self.seen.append((origin, token))
PEERS = tuple(f"tcp:host={name}:port=9092" for name in NAMES)


class Cluster:
    """Three masters on a MemoryNetwork; with ``keyring``, each master requires its
    credentials and dials its peers with ``credentials[name]``."""

    def __init__(
        self, keyring: Keyring | None = None,
        credentials: dict[str, ClientCredential] | None = None,
    ) -> None:
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.network = MemoryNetwork(self.clock)
        self.masters: dict[str, Master] = {}
        self.links: dict[str, PeerLinks] = {}
        for name in NAMES:
            config = MasterConfig(
                server_name=name,
                cluster=ClusterConfig(
                    peers=PEERS, reconnect=ReconnectConfig(0.5, 2.0, 10.0), repair_after=2.0,
                ),
            )
            master = Master(config, MemoryStore(), self.clock, keyring=keyring)
            self.network.listen(name, MasterFactory(master))
            links = peer_links(
                config, master.log, master.fingerprint, self.clock,
                lambda endpoint, source=name: self.network.client_endpoint(
                    source, endpoint.split("host=")[1].split(":")[0]
                ),
                credential=(credentials or {}).get(name),
            )
            master.peer_links = links
            links.startService()
            self.masters[name] = master
            self.links[name] = links
        self.settle(3)

    def settle(self, seconds: float) -> None:
        self.network.run_until_idle()
        self.network.advance(seconds, steps=max(int(seconds * 4), 1))

    def publish(self, name: str, rows: list[Any]) -> tuple[str, int]:
        master = self.masters[name]
        tokens: list[int] = []
        master.publish("events", rows).addCallback(tokens.append)
        assert tokens, "the memory store commits at once"
        origin = master.log.origin_id
        assert origin is not None
        return origin, tokens[0]

    def heads(self, name: str) -> dict[str, int]:
        master = self.masters[name]
        own = master.log.origin_id
        return {
            (own if s.origin == "" else s.origin) or "": s.head
            for s in master.log.states() if s.stream == "events"
        }

    def stop(self) -> None:
        for links in self.links.values():
            links.stopService()
        self.network.advance(10, steps=10)


def test_three_masters_relay_once_repair_across_a_partition_and_agree(tmp_path: Path) -> None:
    cluster = Cluster()
    states = {name: sorted(s.value for s in links.states().values())
              for name, links in cluster.links.items()}
    assert all(found == ["connected", "connected", "self"] for found in states.values()), states

    acknowledged = [cluster.publish(name, [{"n": i, "m": name}]) for i in range(3)
                    for name in NAMES]
    cluster.settle(1)
    wanted = {}
    for origin, token in acknowledged:
        wanted[origin] = max(wanted.get(origin, 0), token)
    for name in NAMES:
        assert cluster.heads(name) == wanted, name
    # One hop: each master sent each of its rows to each of its two peers once.
    for name in NAMES:
        view = cluster.masters[name].snapshot().cluster
        assert view is not None and view.relays_per_row == 2.0

    # m1 cannot reach m2 (and the reverse); m3 reaches both.
    cluster.network.partition("m1", "m2")
    for i in range(5):
        acknowledged.append(cluster.publish("m1", [{"during": i}]))
        acknowledged.append(cluster.publish("m2", [{"during": i}]))
    cluster.settle(30)  # links time out, back off; repairs start after repair_after
    wanted = {}
    for origin, token in acknowledged:
        wanted[origin] = max(wanted.get(origin, 0), token)
    for name in NAMES:
        assert cluster.heads(name) == wanted, (name, cluster.heads(name), wanted)
    assert cluster.links["m1"].repairing() or cluster.links["m2"].repairing()

    cluster.network.heal("m1", "m2")
    cluster.settle(30)
    for name in NAMES:
        assert cluster.heads(name) == wanted
        assert not cluster.links[name].repairing(), name
    cluster.stop()


def test_a_worker_fails_over_between_masters_and_handles_each_token_once(
    tmp_path: Path,
) -> None:
    cluster = Cluster()
    handler = OriginRecorder()
    config = WorkerConfig(name="w", master=PEERS, streams=(WorkerStream("events"),))
    worker = Worker(config, handler, MemoryPositions(), cluster.clock)
    endpoints = {
        peer: cluster.network.client_endpoint("w", peer.split("host=")[1].split(":")[0])
        for peer in PEERS
    }
    service = worker_service(worker, endpoints, cluster.clock)
    service.startService()
    cluster.settle(2)
    published = []
    for round_ in range(4):
        for name in NAMES:
            published.append(cluster.publish(name, [{"round": round_}]))
        cluster.settle(1)
        # The worker's master goes away: every link to it is cut; it fails over.
        current = worker.connection
        assert current is not None
        host = next(n for n in NAMES if cluster.masters[n].log.origin_id == current.origin)
        for name in (*NAMES, "w"):
            if name != host:
                cluster.network.partition(host, name)
        cluster.settle(40)
        for name in (*NAMES, "w"):
            if name != host:
                cluster.network.heal(host, name)
        cluster.settle(5)
    cluster.settle(30)
    seen = handler.seen
    assert sorted(set(seen)) == sorted(set(published))
    assert len(seen) == len(set(seen)), "a token was handled twice"
    last: dict[str, int] = {}
    for origin, token in seen:
        assert token == last.get(origin, 0) + 1, (origin, token, last)
        last[origin] = token
    service.stopService()
    cluster.stop()


PEER_KEYRING = Keyring([
    Credential("peers", b"peer-secret", Permissions(read=frozenset({"*"}), peer=True)),
    Credential("reader", b"reader-secret", Permissions(read=frozenset({"*"}))),
])


def test_peer_links_authenticate_with_their_credential_and_need_peer_permission() -> None:
    """Masters that require credentials link up when they dial with a peer credential
    (rows relay as without authentication); with a credential that may only read, every
    link is refused at ORIGIN; with a wrong secret, at AUTH."""
    good = Cluster(PEER_KEYRING, {n: ClientCredential("peers", b"peer-secret") for n in NAMES})
    states = sorted(s.value for s in good.links["m1"].states().values())
    assert states == ["connected", "connected", "self"], states
    origin, token = good.publish("m1", [{"n": 1}])
    good.settle(1)
    assert good.heads("m2")[origin] == token and good.heads("m3")[origin] == token
    good.stop()

    for credential in (ClientCredential("reader", b"reader-secret"),
                       ClientCredential("peers", b"wrong")):
        bad = Cluster(PEER_KEYRING, {n: credential for n in NAMES})
        origin, token = bad.publish("m1", [{"n": 1}])
        bad.settle(1)
        assert origin not in bad.heads("m2")
        states = sorted(s.value for s in bad.links["m1"].states().values())
        assert "connected" not in states, states
        bad.stop()
