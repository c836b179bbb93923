"""Authentication and authorisation through the master's Twisted layer, with in-memory
transports and a Clock: the challenge-response on a MasterConnection, the failure metric and
the per-address delay, and what each credential may do as a worker (REPLICATE), a
publisher (PUBLISH) and a cluster peer (ORIGIN, RELAY)."""

from __future__ import annotations

import dataclasses

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from replication.config import MasterConfig
from replication.master import Master, MasterConnection
from replication.store.memory import MemoryStore
from replication.wire.auth import Credential, Keyring, Permissions, proof

SECRET = b"s3cret-worker"
KEYRING = Keyring([
    Credential("reader", SECRET, Permissions(read=frozenset({"events"}))),
    Credential("publisher", b"pub-secret", Permissions(publish=frozenset({"events"}))),
    Credential("everything", b"all-secret", Permissions(
        frozenset({"*"}), frozenset({"*"}), peer=True, status=True)),
])


def new_master(keyring: Keyring | None = KEYRING) -> tuple[Master, Clock]:
    clock = Clock()
    config = dataclasses.replace(MasterConfig(), streams=("events", "typing"))
    master = Master(config, MemoryStore(), clock, keyring=keyring)
    return master, clock


def connect(master: Master, host: str = "10.0.0.7") -> tuple[MasterConnection, StringTransport]:
    connection = MasterConnection(master)
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
    connection.makeConnection(transport)
    return connection, transport


def take(transport: StringTransport) -> list[str]:
    sent = transport.value().decode().splitlines()
    transport.clear()
    return sent


def authenticate(
    master: Master, name: str, secret: bytes, host: str = "10.0.0.7",
) -> tuple[MasterConnection, StringTransport, list[str]]:
    """Connect as worker ``w`` and prove ``name`` with ``secret``; returns what the master
    sent after the AUTH line."""
    connection, transport = connect(master, host)
    connection.dataReceived(b"NAME w\nVERSION 2 1\n")
    lines = take(transport)
    assert lines[:2] == ["SERVER master", "VERSION 2"]
    assert lines[2].startswith("CHALLENGE ")
    master_nonce = lines[2].split()[1]
    nonce = "ab" * 16
    client = proof(secret, "client", credential=name, master_name="master", client_name="w",
                   master_nonce=master_nonce, client_nonce=nonce)
    connection.dataReceived(f"AUTH {name} {nonce} {client}\n".encode())
    answer = take(transport)
    if answer and answer[0].startswith("AUTH_OK "):
        expected = proof(secret, "master", credential=name, master_name="master",
                         client_name="w", master_nonce=master_nonce, client_nonce=nonce)
        assert answer[0] == f"AUTH_OK {expected}"
    return connection, transport, answer


def test_a_right_secret_is_accepted_and_the_master_proves_it_back() -> None:
    master, _ = new_master()
    connection, transport, answer = authenticate(master, "reader", SECRET)
    assert answer[0].startswith("AUTH_OK ")
    assert connection.credential == "reader"
    assert connection.permissions.may_read("events")
    assert not transport.disconnecting


def test_a_wrong_secret_is_refused_counted_and_the_address_slowed_down() -> None:
    master, clock = new_master()
    _, transport, answer = authenticate(master, "reader", b"wrong")
    assert answer == ["ERROR authentication failed"]
    assert transport.disconnecting
    assert master.auth_failures["replication"] == 1
    assert master.snapshot().auth_failures["replication"] == 1
    # The same address is refused outright for a second, then may try again.
    _, transport2 = connect(master)
    assert take(transport2)[-1] == (
        "ERROR authentication failed: too many failures from this address; try again in 1s"
    )
    assert transport2.disconnecting
    # Another address is not slowed down.
    _, _, answer = authenticate(master, "reader", SECRET, host="10.0.0.8")
    assert answer[0].startswith("AUTH_OK ")
    clock.advance(1)
    _, _, answer = authenticate(master, "reader", b"wrong again")
    assert answer == ["ERROR authentication failed"]
    clock.advance(1)  # two failures: two seconds
    _, transport3 = connect(master)
    assert "try again in 1s" in take(transport3)[-1]
    clock.advance(1)
    _, _, answer = authenticate(master, "reader", SECRET)
    assert answer[0].startswith("AUTH_OK ")
    assert master.auth_delays.wait("10.0.0.7", clock.seconds()) == 0


def test_version_1_workers_are_refused_with_a_clear_error() -> None:
    master, _ = new_master()
    connection, transport = connect(master)
    connection.dataReceived(b"NAME w\nVERSION 1\n")
    lines = take(transport)
    assert lines[-1].startswith("ERROR authentication required: this master requires "
                                "credentials, which protocol version 2 carries")
    assert transport.disconnecting


def test_legacy_workers_are_refused_with_a_clear_error() -> None:
    master, _ = new_master()
    connection, transport = connect(master)
    connection.dataReceived(b"NAME w\nREPLICATE events 0\n")
    assert "the worker speaks the legacy dialect" in take(transport)[-1]
    assert transport.disconnecting


def test_silence_after_the_challenge_times_out() -> None:
    master, clock = new_master()
    connection, transport = connect(master)
    connection.dataReceived(b"NAME w\nVERSION 2\n")
    take(transport)
    clock.advance(25)
    assert take(transport)[-1] == "ERROR handshake timeout: expected AUTH within 25s"


def test_a_reader_may_replicate_its_streams_only() -> None:
    master, _ = new_master()
    connection, transport, _ = authenticate(master, "reader", SECRET)
    take(transport)
    connection.dataReceived(b"REPLICATE typing NOW\n")
    assert take(transport) == [
        "ERROR REPLICATE typing refused: credential 'reader' may not read stream 'typing'"
    ]
    assert not transport.disconnecting
    connection.dataReceived(b"REPLICATE ALL NOW\n")
    assert take(transport) == [
        "ERROR REPLICATE ALL refused: credential 'reader' may not read every stream"
    ]
    connection.dataReceived(b"REPLICATE events NOW\n")
    assert any(line.startswith("POSITION events") for line in take(transport))
    assert not transport.disconnecting


def test_a_reader_may_not_join_as_a_peer() -> None:
    master, _ = new_master()
    connection, transport, _ = authenticate(master, "reader", SECRET)
    take(transport)
    connection.dataReceived(b"ORIGIN " + b"a" * 32 + b" " + b"b" * 32 + b"\n")
    assert take(transport) == [
        "ERROR ORIGIN refused: credential 'reader' may not join as a cluster peer (peer: true)"
    ]
    assert transport.disconnecting


def test_a_publisher_is_refused_403_per_publish_to_a_stream_it_may_not_publish_to() -> None:
    master, _ = new_master()
    connection, transport, _ = authenticate(master, "publisher", b"pub-secret")
    take(transport)
    connection.dataReceived(b"PUBLISHER\n")
    take(transport)
    connection.dataReceived(b'PUBLISH 1 typing [{"a":1}]\n')
    connection.dataReceived(b'PUBLISH 2 events [{"a":1}]\n')
    assert take(transport) == [
        "REFUSED 1 403 credential 'publisher' may not publish to stream 'typing'",
        "PUBLISHED 2 1",
    ]
    assert not transport.disconnecting


def test_without_a_keyring_everything_is_as_before() -> None:
    master, _ = new_master(keyring=None)
    connection, transport = connect(master)
    connection.dataReceived(b"NAME w\nVERSION 2 1\nREPLICATE typing NOW\n")
    lines = take(transport)
    assert lines[:2] == ["SERVER master", "VERSION 2"]
    assert not any(line.startswith(("CHALLENGE", "ERROR")) for line in lines)
