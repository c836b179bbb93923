"""The master's ``cluster`` section: peers as client endpoints, each once, never an empty
list; the peer links' timers with their defaults; absent, nothing changes."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest

from replication.config import (
    ClusterConfig,
    ConfigError,
    MasterConfig,
    ReconnectConfig,
    master_config_from_text,
    validate_master,
)


def load(source: str) -> MasterConfig:
    return master_config_from_text(textwrap.dedent(source).lstrip("\n"), "master.yaml")


def test_without_a_cluster_section_the_master_is_on_its_own() -> None:
    config = load("listen: tcp:9092\n")
    assert config.cluster == ClusterConfig() and not config.cluster.enabled
    assert config.cluster.peers is None


def test_a_cluster_lists_its_peers_and_takes_the_link_defaults() -> None:
    config = load("""
        cluster:
          peers:
            - tcp:host=10.0.0.1:port=9092
            - tcp:host=10.0.0.2:port=9092
            - ssl:host=m3.example:port=9092
    """)
    assert config.cluster.enabled
    assert config.cluster.peers == (
        "tcp:host=10.0.0.1:port=9092", "tcp:host=10.0.0.2:port=9092",
        "ssl:host=m3.example:port=9092",
    )
    assert config.cluster.reconnect == ReconnectConfig(1.0, 30.0, 10.0)
    assert config.cluster.max_pending_bytes == 16 * 1024 * 1024
    assert config.cluster.ingest_batch_rows == 10_000


def test_the_link_timers_and_bounds_can_be_set() -> None:
    config = load("""
        cluster:
          peers: [tcp:host=a:port=1]
          reconnect: {initial_delay: 250ms, max_delay: 1m, healthy_after: 5s}
          max_pending_bytes: 1MiB
          ingest_batch_rows: 500
    """)
    assert config.cluster == ClusterConfig(
        ("tcp:host=a:port=1",), ReconnectConfig(0.25, 60.0, 5.0), 1024 * 1024, 500
    )


@pytest.mark.parametrize(
    ("source", "path", "line", "message"),
    [
        # Aphlict's cases: a bad endpoint, an empty list, a peer listed twice.
        (
            "cluster:\n  peers:\n    - tcp:host=a:port=1\n    - bogus:x\n",
            "cluster.peers[1]", 4, "invalid Twisted client endpoint 'bogus:x'",
        ),
        (
            "cluster:\n  peers: [tcp:host=a:port=99999]\n",
            "cluster.peers[0]", 2, "port 99999 is not in 0..65535",
        ),
        (
            "cluster:\n  peers: []\n", "cluster.peers", 2,
            "must list at least one peer: every master of the cluster, this one included",
        ),
        ("cluster:\n  peers:\n", "cluster.peers", 2, "must list at least one peer"),
        (
            "cluster:\n  peers:\n    - tcp:host=a:port=1\n    - tcp:host=b:port=1\n"
            "    - tcp:host=a:port=1\n",
            "cluster.peers[2]", 5,
            "'tcp:host=a:port=1' is listed more than once, at indexes 0 and 2: each peer "
            "must have a unique endpoint",
        ),
        ("cluster:\n  peers: tcp:host=a:port=1\n", "cluster.peers", 2,
         "must be a list of client endpoints, got 'tcp:host=a:port=1'"),
        ("cluster:\n  peers: [7]\n", "cluster.peers[0]", 2, "must be a string, got 7"),
        ("cluster:\n", "cluster", 1, "cluster.peers is missing"),
        ("cluster:\n  reconnect: {max_delay: 5s}\n", "cluster", 1, "cluster.peers is missing"),
        ("cluster:\n  peer: [tcp:host=a:port=1]\n", "cluster.peer", 2,
         "unknown key 'peer'; did you mean 'peers'?"),
        (
            "cluster:\n  peers: [tcp:host=a:port=1]\n  reconnect:\n    initial_delay: 10s\n"
            "    max_delay: 5s\n",
            "cluster.reconnect.max_delay", 5,
            "must be at least cluster.reconnect.initial_delay (10s), got 5s",
        ),
        ("cluster:\n  peers: [tcp:host=a:port=1]\n  ingest_batch_rows: 0\n",
         "cluster.ingest_batch_rows", 3, "0"),
        ("cluster:\n  peers: [tcp:host=a:port=1]\n  max_pending_bytes: lots\n",
         "cluster.max_pending_bytes", 3, "lots"),
    ],
)
def test_bad_cluster_sections_name_the_file_line_and_key(
    source: str, path: str, line: int, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        master_config_from_text(source, "master.yaml")
    error = caught.value
    assert (error.source, error.line, error.path) == ("master.yaml", line, path)
    assert message in str(error)


def test_a_cluster_built_in_code_is_checked_too() -> None:
    """validate_master re-checks a configuration changed in code, naming the key path."""
    good = dataclasses.replace(MasterConfig(), cluster=ClusterConfig(("tcp:host=a:port=1",)))
    assert validate_master(good) is good
    for peers, where in [((), "cluster.peers"), (("tcp:host=a:port=1",) * 2, "cluster.peers[1]")]:
        bad = dataclasses.replace(MasterConfig(), cluster=ClusterConfig(peers))
        with pytest.raises(ConfigError) as caught:
            validate_master(bad)
        assert caught.value.path == where


def test_ack_peers_is_bounded_by_the_peers_listed() -> None:
    """cluster.ack_peers counts peers besides this master: at most len(peers) - 1."""
    with pytest.raises(ConfigError) as caught:
        load("""
            cluster:
              peers: ['tcp:host=a:port=1', 'tcp:host=b:port=1']
              ack_peers: 2
        """)
    assert str(caught.value) == (
        "master.yaml:3: cluster.ack_peers: is 2, but cluster.peers lists 2 masters, this one "
        "included: at most 1 peers can confirm a publish"
    )
    cluster = load("""
        cluster:
          peers: ['tcp:host=a:port=1', 'tcp:host=b:port=1']
          ack_peers: 1
          ack_timeout: 2s
          repair_after: 500ms
    """).cluster
    assert (cluster.ack_peers, cluster.ack_timeout, cluster.repair_after) == (1, 2.0, 0.5)


def test_a_cluster_is_not_combined_with_a_shared_postgres_store() -> None:
    with pytest.raises(ConfigError) as caught:
        load("""
            store: {type: postgres, dsn: "dbname=test"}
            cluster:
              peers: ['tcp:host=a:port=1', 'tcp:host=b:port=1']
        """)
    assert "cluster.peers: is not allowed with store.type postgres" in str(caught.value)
