"""Authentication, pure parts: the proofs, the session's challenge-response driven with
plain numbers (fixed nonces, a wrong secret, timeouts, a replayed AUTH), the commands, the
permissions and the per-address delay table. No socket, no reactor, no clock."""

from __future__ import annotations

import pytest

from replication.wire.auth import (
    ALL_PERMISSIONS,
    ClientCredential,
    Credential,
    FailureDelays,
    Keyring,
    Permissions,
    is_nonce,
    new_nonce,
    permissions_of,
    proof,
)
from replication.wire.commands import (
    MASTER,
    WORKER,
    AuthCommand,
    AuthOkCommand,
    ChallengeCommand,
    CommandParseError,
    NameCommand,
    PingCommand,
    PositionCommand,
    ReplicateCommand,
    ServerCommand,
    VersionCommand,
    default_registry,
)
from replication.wire.dialects import VERSION_1, VERSION_3, VERSIONS
from replication.wire.session import (
    AUTH_FAILED,
    AUTH_REQUIRED,
    HANDSHAKE_TIMEOUT,
    Action,
    CloseWithError,
    HandshakeDone,
    Send,
    Session,
    State,
    WakeAt,
)

SECRET = b"correct horse"
KEYRING = Keyring([
    Credential("worker-1", SECRET, Permissions(read=frozenset({"events"}))),
    Credential("other", b"another secret"),
])
N1, N2, N3 = "a" * 32, "b" * 32, "c" * 32


def nonces(*values: str):  # type: ignore[no-untyped-def]
    it = iter(values)
    return lambda: next(it)


def master(*master_nonces: str, keyring: Keyring | None = KEYRING) -> Session:
    return Session(MASTER, "m", ping_interval=5, ping_timeout=25, close_timeout=3,
                   keyring=keyring, nonces=nonces(*master_nonces))


def worker(secret: bytes | None = SECRET, nonce: str = N2, versions=VERSIONS) -> Session:  # type: ignore[no-untyped-def]
    credential = None if secret is None else ClientCredential("worker-1", secret)
    return Session(WORKER, "w", ping_interval=5, ping_timeout=25, close_timeout=3,
                   credential=credential, nonces=nonces(nonce), versions=versions)


def sent(actions: tuple[Action, ...]) -> list[object]:
    return [a.command if isinstance(a, Send) else a for a in actions if not isinstance(a, WakeAt)]


def run(m: Session, w: Session, now: float = 0.0) -> tuple[list[object], list[object]]:
    """Connect both ends and shuttle their commands until neither sends; return everything
    each end's session produced (commands sent, HandshakeDone, CloseWithError)."""
    from_m = sent(m.connected(now))
    from_w = sent(w.connected(now))
    log_m, log_w = list(from_m), list(from_w)
    while from_m or from_w:
        next_w: list[object] = []
        for c in from_m:
            if not isinstance(c, (HandshakeDone, CloseWithError)):
                next_w += sent(w.receive(c, now))  # type: ignore[arg-type]
        next_m: list[object] = []
        for c in from_w:
            if not isinstance(c, (HandshakeDone, CloseWithError)):
                next_m += sent(m.receive(c, now))  # type: ignore[arg-type]
        from_m, from_w = next_m, next_w
        log_m += next_m
        log_w += next_w
    return log_m, log_w


def test_both_ends_prove_the_secret_and_the_handshake_ends_with_the_credential() -> None:
    """Master nonce a..a, worker nonce b..b: VERSION 3, CHALLENGE, AUTH, AUTH_OK; both ends
    are READY, the master knows the worker as credential worker-1."""
    m, w = master(N1), worker()
    log_m, log_w = run(m, w)
    client = proof(SECRET, "client", credential="worker-1", master_name="m", client_name="w",
                   master_nonce=N1, client_nonce=N2)
    server = proof(SECRET, "master", credential="worker-1", master_name="m", client_name="w",
                   master_nonce=N1, client_nonce=N2)
    assert log_m == [
        ServerCommand("m"), VersionCommand((3,)), ChallengeCommand(N1), AuthOkCommand(server),
        HandshakeDone("w", VERSION_3, "worker-1"),
    ]
    assert log_w == [
        NameCommand("w"), VersionCommand((3, 2, 1)), AuthCommand("worker-1", N2, client),
        HandshakeDone("m", VERSION_3, "worker-1"),
    ]
    assert m.state is w.state is State.READY
    assert client != server


def test_a_wrong_secret_fails_without_saying_why() -> None:
    m, w = master(N1), worker(b"wrong")
    log_m, _ = run(m, w)
    assert log_m[-1] == CloseWithError("authentication failed", AUTH_FAILED, WORKER)
    assert m.state is State.CLOSING and m.authenticated is None


def test_an_unknown_credential_fails_the_same_way() -> None:
    m = master(N1)
    run_m = sent(m.connected(0)) + sent(m.receive(NameCommand("w"), 0))
    run_m += sent(m.receive(VersionCommand((2,)), 0))
    assert run_m[-1] == ChallengeCommand(N1)
    got = sent(m.receive(AuthCommand("nobody", N2, "0" * 64), 0))
    assert got == [CloseWithError("authentication failed", AUTH_FAILED, WORKER)]


def test_a_rogue_master_without_the_secret_is_refused_by_the_worker() -> None:
    """A master that holds another secret for worker-1 cannot feed the worker: the worker
    checks AUTH_OK and closes."""
    w = worker()
    w.connected(0)
    w.receive(ServerCommand("m"), 0)
    w.receive(VersionCommand((2,)), 0)
    assert isinstance(sent(w.receive(ChallengeCommand(N1), 0))[0], AuthCommand)
    # The rogue cannot check the proof; it says AUTH_OK with whatever it can compute.
    guess = proof(b"guess", "master", credential="worker-1", master_name="m", client_name="w",
                  master_nonce=N1, client_nonce=N2)
    got = sent(w.receive(AuthOkCommand(guess), 0))
    assert got == [CloseWithError("authentication failed", AUTH_FAILED, MASTER)]
    assert w.state is State.CLOSING and w.authenticated is None


def test_a_master_that_does_not_ask_is_refused_by_a_worker_with_a_credential() -> None:
    """Either at the master's first command after VERSION, or when the handshake timeout
    passes (PINGs do not count)."""
    m, w = master(keyring=None), worker()
    run(m, w)
    assert m.state is State.READY and w.state is State.AUTHENTICATING
    got = sent(w.receive(PositionCommand("events", 5), 1))
    assert len(got) == 1 and isinstance(got[0], CloseWithError)
    assert got[0].reason == AUTH_REQUIRED and "did not ask" in got[0].message
    w2 = worker()
    run(master(keyring=None), w2)
    w2.receive(PingCommand(1), 1)
    for t in (5, 10, 15, 20):
        w2.poll(t)
    assert sent(w2.poll(25)) == [CloseWithError(
        "handshake timeout: expected CHALLENGE within 25s", HANDSHAKE_TIMEOUT, MASTER)]


def test_a_master_that_asks_is_refused_by_a_worker_without_a_credential() -> None:
    m, w = master(N1), worker(None)
    _, log_w = run(m, w)
    last = log_w[-1]
    assert isinstance(last, CloseWithError) and last.reason == AUTH_REQUIRED
    assert "has none configured" in last.message


@pytest.mark.parametrize("versions", [(1,), None])
def test_version_1_and_legacy_workers_are_refused_by_a_master_with_credentials(
    versions: tuple[int, ...] | None,
) -> None:
    m = master(N1)
    m.connected(0)
    m.receive(NameCommand("w"), 0)
    command = ReplicateCommand("events", 0) if versions is None else VersionCommand(versions)
    got = sent(m.receive(command, 0))
    assert len(got) == 1 and isinstance(got[0], CloseWithError)
    assert got[0].message.startswith("authentication required: this master requires")
    assert ("legacy" if versions is None else "version 1") in got[0].message


def test_a_worker_speaking_only_version_1_with_a_credential_refuses_to_go_on() -> None:
    m, w = master(keyring=None), worker(versions={1: VERSION_1})
    _, log_w = run(m, w)
    last = log_w[-1]
    assert isinstance(last, CloseWithError) and last.reason == AUTH_REQUIRED


def test_a_replayed_auth_fails_on_another_connection() -> None:
    """An AUTH recorded on one connection is worth nothing on the next: the master's nonce
    differs."""
    m1, w = master(N1), worker()
    log_m, log_w = run(m1, w)
    recorded = next(c for c in log_w if isinstance(c, AuthCommand))
    m2 = master(N3)
    m2.connected(0)
    m2.receive(NameCommand("w"), 0)
    m2.receive(VersionCommand((2,)), 0)
    got = sent(m2.receive(recorded, 0))
    assert got == [CloseWithError("authentication failed", AUTH_FAILED, WORKER)]


def test_authentication_has_the_handshake_timeout_from_the_agreement() -> None:
    m = master(N1)
    m.connected(0)
    m.receive(NameCommand("w"), 10)
    m.receive(VersionCommand((2,)), 20)
    assert m.state is State.AUTHENTICATING
    assert m.deadline == 25  # a PING is due first
    m.poll(25)
    assert m.deadline == 30
    m.poll(30)
    m.poll(35)
    m.poll(40)
    assert m.state is State.AUTHENTICATING
    got = sent(m.poll(45))
    assert got == [CloseWithError("handshake timeout: expected AUTH within 25s",
                                  HANDSHAKE_TIMEOUT, WORKER)]


def test_a_worker_waits_for_challenge_then_auth_ok_with_the_same_timeout() -> None:
    w = worker()
    w.connected(0)
    w.receive(ServerCommand("m"), 0)
    w.receive(VersionCommand((2,)), 1)
    w.receive(ChallengeCommand(N1), 2)
    assert w.state is State.AUTHENTICATING
    for t in (5, 10, 15, 20, 25):
        w.poll(t)
    got = sent(w.poll(26))
    assert got == [CloseWithError("handshake timeout: expected AUTH_OK within 25s",
                                  HANDSHAKE_TIMEOUT, MASTER)]


def test_auth_ok_after_the_handshake_is_a_protocol_error() -> None:
    m, w = master(N1), worker()
    log_m, _ = run(m, w)
    again = next(c for c in log_m if isinstance(c, AuthOkCommand))
    got = sent(w.receive(again, 0))
    assert got == [CloseWithError("AUTH_OK may only be sent once, during the handshake",
                                  "protocol error", MASTER)]


# -- commands -------------------------------------------------------------------------------


def test_the_commands_round_trip_and_refuse_bad_arguments() -> None:
    registry = default_registry()
    lines = [
        (b"CHALLENGE " + N1.encode(), MASTER),
        (b"AUTH worker-1 " + N2.encode() + b" " + b"f" * 64, WORKER),
        (b"AUTH_OK " + b"0" * 64, MASTER),
    ]
    for line, side in lines:
        assert registry.parse(line, side).to_line() == line
    for bad, side in [
        (b"CHALLENGE short", MASTER),
        (b"CHALLENGE " + b"A" * 32, MASTER),
        (b"AUTH worker-1 " + N2.encode(), WORKER),
        (b"AUTH bad/name " + N2.encode() + b" " + b"f" * 64, WORKER),
        (b"AUTH w " + N2.encode() + b" " + b"f" * 63, WORKER),
        (b"AUTH w " + N2.encode() + b" " + b"f" * 64 + b" x", WORKER),
        (b"AUTH_OK " + b"0" * 65, MASTER),
        (b"AUTH_OK " + b"0" * 64, WORKER),
        (b"AUTH w " + N2.encode() + b" " + b"f" * 64, MASTER),
    ]:
        with pytest.raises(CommandParseError):
            registry.parse(bad, side)


def test_nonces_are_fresh_and_well_formed() -> None:
    a, b = new_nonce(), new_nonce()
    assert a != b and is_nonce(a) and is_nonce(b)


def test_secrets_are_not_in_reprs() -> None:
    assert "correct horse" not in repr(KEYRING.get("worker-1"))
    assert "guess" not in repr(ClientCredential("x", b"guess"))


# -- permissions ----------------------------------------------------------------------------


def test_permissions() -> None:
    p = Permissions(read=frozenset({"events"}), publish=frozenset({"*"}))
    assert p.may_read("events") and not p.may_read("typing") and not p.may_read_all()
    assert p.may_publish("anything") and not p.peer and not p.status
    assert permissions_of(None, None) is ALL_PERMISSIONS
    assert permissions_of(KEYRING, "worker-1").may_read("events")
    assert permissions_of(KEYRING, "nobody") == Permissions()


def test_bearer_tokens() -> None:
    assert KEYRING.check_token("worker-1:correct horse") is KEYRING.get("worker-1")
    for bad in ("worker-1:wrong", "worker-1", "nobody:correct horse", ":", ""):
        assert KEYRING.check_token(bad) is None


def test_a_credential_defined_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        Keyring([Credential("a", b"1"), Credential("a", b"2")])


# -- the delay table ------------------------------------------------------------------------


def test_failures_double_the_delay_up_to_the_maximum_and_a_success_forgets() -> None:
    delays = FailureDelays(base=1, maximum=8, forget_after=100)
    assert delays.wait("10.0.0.1", 0) == 0
    assert [delays.failed("10.0.0.1", 0) for _ in range(5)] == [1, 2, 4, 8, 8]
    assert delays.wait("10.0.0.1", 3) == 5
    assert delays.wait("10.0.0.1", 8) == 0
    assert delays.wait("10.0.0.2", 0) == 0
    delays.succeeded("10.0.0.1")
    assert delays.wait("10.0.0.1", 0) == 0


def test_failures_are_forgotten_after_a_quiet_time() -> None:
    delays = FailureDelays(base=1, maximum=60, forget_after=100)
    for _ in range(5):
        delays.failed("a", 0)
    assert delays.wait("a", 99) == 0  # 16 s have passed long ago
    assert delays.failed("a", 99) == 32  # still counted
    assert delays.failed("a", 199) == 1  # forgotten: counting starts again
    assert delays.wait("a", 300) == 0 and len(delays) == 0


def test_the_table_is_bounded() -> None:
    delays = FailureDelays(max_addresses=3)
    for i in range(10):
        delays.failed(f"10.0.0.{i}", float(i))
    assert len(delays) == 3
    assert delays.wait("10.0.0.0", 9.5) == 0  # forgotten: the oldest went first
    assert delays.wait("10.0.0.9", 9.5) == 0.5
