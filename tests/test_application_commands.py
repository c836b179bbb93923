"""Application commands: handlers attached with ApplicationCommands are called with the
connection's narrow interface on master and worker connections, over real protocol code
(in-memory pipes); a legacy Synapse worker's own commands reach the master's handlers; the
register callable named by ``commands`` is loaded, and every way it can fail says so."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from test_commands import AckCommand  # ACK <stream> <token>, sent by workers
from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import StringTransport

from replication.cli import CommandLineError, load_command_registry
from replication.master import MasterConnection
from replication.testing import Harness
from replication.wire.application import (
    ApplicationCommands,
    CommandPeer,
    CommandsLoadError,
    load_commands,
)
from replication.wire.commands import (
    MASTER,
    WORKER,
    Command,
    CommandParseError,
    CommandRegistry,
    ReplicateCommand,
    default_registry,
)
from replication.wire.dialects import LEGACY, VERSION_3
from replication.worker import Worker


@dataclass(frozen=True, slots=True)
class ThanksCommand(Command):
    """THANKS <text>: the master's answer to an ACK."""

    NAME: ClassVar[str] = "THANKS"
    text: str

    @classmethod
    def from_args(cls, args: str) -> ThanksCommand:
        return cls(args)

    def to_args(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class UserSyncCommand(Command):
    """Synapse's USER_SYNC <instance_id> <user_id> <start|end> <last_sync_ms>."""

    NAME: ClassVar[str] = "USER_SYNC"
    arguments: str

    @classmethod
    def from_args(cls, args: str) -> UserSyncCommand:
        if len(args.split(" ")) != 4:
            raise CommandParseError("USER_SYNC takes 4 arguments")
        return cls(args)

    def to_args(self) -> str:
        return self.arguments


def ack_registry() -> CommandRegistry:
    registry = default_registry()
    registry.register(AckCommand, sent_by={WORKER})
    registry.register(ThanksCommand, sent_by={MASTER})
    return registry


# -- attaching handlers ------------------------------------------------------------------


def test_a_handler_needs_a_registered_class_received_on_that_side() -> None:
    """on_master/on_worker refuse an unregistered class, a built-in command, a command the
    peer may not send, a second handler, and a handler that is not callable; each says why."""
    registry = ack_registry()
    application = ApplicationCommands(registry)
    with pytest.raises(ValueError, match="UserSyncCommand is not registered"):
        application.on_master(UserSyncCommand, lambda peer, command: None)
    with pytest.raises(ValueError, match="REPLICATE is a built-in command"):
        application.on_master(ReplicateCommand, lambda peer, command: None)
    with pytest.raises(ValueError, match="ACK may not be sent by the master"):
        application.on_worker(AckCommand, lambda peer, command: None)
    with pytest.raises(TypeError, match="not callable"):
        application.on_master(AckCommand, "nope")  # type: ignore[arg-type]
    application.on_master(AckCommand, lambda peer, command: None)
    with pytest.raises(ValueError, match="ACK already has a handler on master connections"):
        application.on_master(AckCommand, lambda peer, command: None)
    assert application.handled(MASTER) == {"ACK"} and application.handled(WORKER) == set()
    assert registry.application is application
    with pytest.raises(ValueError, match="already has application commands"):
        ApplicationCommands(registry)
    assert registry.copy().application is None


def test_a_class_registered_under_the_name_is_the_one_handled() -> None:
    """A different class with a registered command's NAME is refused."""

    @dataclass(frozen=True, slots=True)
    class OtherAck(AckCommand):
        pass

    application = ApplicationCommands(ack_registry())
    with pytest.raises(ValueError, match="registered with another class than OtherAck"):
        application.on_master(OtherAck, lambda peer, command: None)


# -- over connections ----------------------------------------------------------------------


def connected_pair(tmp_path: Path) -> tuple[Harness, Worker, ApplicationCommands,
                                            ApplicationCommands, list[tuple[str, Any]]]:
    """A master and a worker process, each with its own ACK/THANKS registry: the master
    records each ACK and thanks the worker; the worker records each THANKS."""
    harness = Harness(tmp_path)
    seen: list[tuple[str, Any]] = []
    master_commands = ApplicationCommands(ack_registry())
    harness.master.registry = master_commands.registry

    def acked(peer: CommandPeer, command: AckCommand) -> None:
        seen.append((f"master from {peer.peer_name} ({peer.dialect})", command))
        peer.send(ThanksCommand(f"got {command.token}"))

    master_commands.on_master(AckCommand, acked)
    worker_commands = ApplicationCommands(ack_registry())
    worker_commands.on_worker(
        ThanksCommand, lambda peer, command: seen.append((f"worker from {peer.peer_name}", command))
    )

    def handler(stream: str, token: int, rows: list[Any]) -> None:
        for master in worker_commands.connections(WORKER):
            master.send(AckCommand(stream, token))

    worker = harness.worker(handler)
    worker.registry = worker_commands.registry
    return harness, worker, master_commands, worker_commands, seen


def test_the_worker_acks_each_token_and_the_master_thanks_it(tmp_path: Path) -> None:
    """The worker's handler sends ACK on its one connection after each token; the master's
    handler gets the worker's name and dialect with each ACK and answers THANKS on the same
    connection, which reaches the worker's handler. Nothing is refused."""
    harness, worker, master_commands, worker_commands, seen = connected_pair(tmp_path)
    harness.publish("events", [{"n": 1}])
    pipe = harness.connect(worker)
    harness.run(pipe)
    harness.publish("events", [{"n": 2}])
    harness.run(pipe)
    assert seen == [
        (f"master from w1 ({VERSION_3.name})", AckCommand("events", 1)),
        ("worker from master", ThanksCommand("got 1")),
        (f"master from w1 ({VERSION_3.name})", AckCommand("events", 2)),
        ("worker from master", ThanksCommand("got 2")),
    ]
    assert len(master_commands.connections(MASTER)) == 1
    assert worker_commands.connections(WORKER) == (worker.connection,)
    assert worker.connection is not None and worker.connection.close_reason is None


def test_connections_are_listed_from_handshake_to_close(tmp_path: Path) -> None:
    """A connection is listed once its handshake is done and no longer once it closed."""
    harness, _, master_commands, _, _ = connected_pair(tmp_path)
    connection = MasterConnection(harness.master)
    connection.makeConnection(StringTransport())
    assert master_commands.connections(MASTER) == ()
    connection.dataReceived(b"NAME w9\nVERSION 1\n")
    assert master_commands.connections(MASTER) == (connection,)
    connection.connectionLost()
    assert master_commands.connections(MASTER) == ()


def raw_master_connection(harness: Harness) -> tuple[MasterConnection, StringTransport]:
    connection = MasterConnection(harness.master)
    transport = StringTransport()
    connection.makeConnection(transport)
    return connection, transport


def synapse_master(tmp_path: Path) -> tuple[Harness, list[tuple[str | None, str, str]]]:
    """A master whose registry has Synapse's USER_SYNC, each recorded with the worker's
    name and dialect."""
    harness = Harness(tmp_path)
    registry = default_registry()
    registry.register(UserSyncCommand, sent_by={WORKER})
    commands = ApplicationCommands(registry)
    seen: list[tuple[str | None, str, str]] = []
    commands.on_master(
        UserSyncCommand,
        lambda peer, command: seen.append((peer.peer_name, peer.dialect, command.arguments)),
    )
    harness.master.registry = registry
    return harness, seen


def test_a_legacy_synapse_worker_sending_user_sync_first_keeps_working(tmp_path: Path) -> None:
    """A Synapse worker (no VERSION) that sends USER_SYNC right after NAME, then REPLICATE:
    the USER_SYNC reaches the handler (it shows the legacy dialect), the catch-up and live
    rows follow in the legacy dialect, and nothing is refused."""
    harness, seen = synapse_master(tmp_path)
    harness.publish("events", [{"n": 1}])
    connection, transport = raw_master_connection(harness)
    connection.dataReceived(
        b"NAME synapse-1\nUSER_SYNC synapse-1 @a:hs start 1700000000000\nREPLICATE events 0\n"
    )
    for _ in range(20):
        harness.clock.advance(0)
    harness.publish("events", [{"n": 2}])
    connection.dataReceived(b"USER_SYNC synapse-1 @a:hs end 1700000001000\n")
    assert seen == [
        ("synapse-1", LEGACY.name, "synapse-1 @a:hs start 1700000000000"),
        ("synapse-1", LEGACY.name, "synapse-1 @a:hs end 1700000001000"),
    ]
    assert transport.value().decode().splitlines() == [
        "SERVER master", 'RDATA events 1 {"n":1}', "POSITION events 1", 'RDATA events 2 {"n":2}',
    ]
    assert not transport.disconnecting and connection.dialect == LEGACY.name


def test_without_the_module_user_sync_is_refused(tmp_path: Path) -> None:
    """The same Synapse worker, against a master without USER_SYNC registered, is answered
    ERROR unknown command and closed: what the ``commands`` key is for."""
    harness = Harness(tmp_path)
    connection, transport = raw_master_connection(harness)
    connection.dataReceived(b"NAME synapse-1\nUSER_SYNC synapse-1 @a:hs start 1\n")
    assert transport.value().decode().splitlines()[-1] == "ERROR unknown command 'USER_SYNC'"
    assert transport.disconnecting


def test_a_failing_handler_is_logged_and_the_connection_stays_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that raises, or returns a failing Deferred or coroutine, is logged with
    its traceback; the connection stays open and the next command is handled."""
    harness = Harness(tmp_path)
    registry = default_registry()
    registry.register(AckCommand, sent_by={WORKER})
    commands = ApplicationCommands(registry)
    calls: list[int] = []

    async def failing_later() -> None:
        raise RuntimeError("async boom")

    def handler(peer: CommandPeer, command: AckCommand) -> object:
        calls.append(command.token)
        if command.token == 1:
            raise RuntimeError("boom")
        if command.token == 2:
            return fail(RuntimeError("deferred boom"))
        if command.token == 3:
            return failing_later()
        return Deferred()  # pending: nothing waits for it

    commands.on_master(AckCommand, handler)
    harness.master.registry = registry
    connection, transport = raw_master_connection(harness)
    with caplog.at_level(logging.ERROR, "replication.wire.protocol"):
        connection.dataReceived(
            b"NAME w\nVERSION 1\nACK events 1\nACK events 2\nACK events 3\nACK events 4\n"
        )
    assert calls == [1, 2, 3, 4]
    failures = [r.getMessage() for r in caplog.records]
    assert len(failures) == 3
    assert all("the handler of ACK failed" in text for text in failures)
    assert "boom" in (caplog.records[0].exc_text or "")
    assert "deferred boom" in failures[1] and "async boom" in failures[2]
    assert not transport.disconnecting


def test_a_handler_can_refuse_the_peer(tmp_path: Path) -> None:
    """A handler that calls ``peer.send_error`` sends ``ERROR <message>`` and closes."""
    harness = Harness(tmp_path)
    registry = default_registry()
    registry.register(AckCommand, sent_by={WORKER})
    commands = ApplicationCommands(registry)
    commands.on_master(AckCommand, lambda peer, command: peer.send_error("no acks here"))
    harness.master.registry = registry
    connection, transport = raw_master_connection(harness)
    connection.dataReceived(b"NAME w\nVERSION 1\nACK events 1\n")
    assert transport.value().decode().splitlines()[-1] == "ERROR no acks here"
    assert transport.disconnecting


def test_a_registered_command_without_a_handler_is_unhandled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A registered command with no handler goes to ``unhandled``: logged, ignored, open."""
    harness = Harness(tmp_path)
    registry = default_registry()
    registry.register(AckCommand, sent_by={WORKER})
    ApplicationCommands(registry)
    harness.master.registry = registry
    connection, transport = raw_master_connection(harness)
    with caplog.at_level(logging.WARNING):
        connection.dataReceived(b"NAME w\nVERSION 1\nACK events 1\n")
    assert any("ignoring ACK: no handler" in r.getMessage() for r in caplog.records)
    assert not transport.disconnecting


# -- loading -------------------------------------------------------------------------------


MODULE = '''
from replication.wire.commands import WORKER

from test_application_commands import AckCommand

seen = []


def register(registry, commands):
    registry.register(AckCommand, sent_by={WORKER})
    commands.on_master(AckCommand, lambda peer, command: seen.append(command))


def broken(registry, commands):
    commands.on_master(AckCommand, print)


not_callable = 3
'''


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "appcmds_example.py").write_text(MODULE)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "appcmds_example", raising=False)
    return tmp_path


def test_load_commands_calls_the_register_callable(app_dir: Path) -> None:
    """The named callable is called with the registry and its ApplicationCommands."""
    sys.path.insert(0, str(app_dir))
    registry = default_registry()
    application = load_commands("appcmds_example:register", registry)
    assert registry.application is application
    assert registry.command_class("ACK") is AckCommand
    assert application.handled(MASTER) == {"ACK"}


@pytest.mark.parametrize(("name", "message"), [
    ("appcmds_example", "must look like package.module:callable"),
    ("no_such_module_xyz:register", "cannot import no_such_module_xyz"),
    ("appcmds_example:missing", "appcmds_example has no missing"),
    ("appcmds_example:not_callable", "is not callable"),
    ("appcmds_example:broken", "failed: ValueError: AckCommand is not registered"),
])
def test_load_commands_failures_name_the_callable(app_dir: Path, name: str, message: str) -> None:
    """Each failure to load is a CommandsLoadError naming the configured callable."""
    sys.path.insert(0, str(app_dir))
    with pytest.raises(CommandsLoadError, match=f"commands {name!r}") as caught:
        load_commands(name, default_registry())
    assert message in str(caught.value)


def test_the_command_line_loads_from_commands_path(app_dir: Path) -> None:
    """``commands_path`` directories are searched first; none configured: the built-ins;
    a directory that does not exist is a command line error naming the key."""
    registry = load_command_registry("appcmds_example:register", [str(app_dir)])
    assert registry.command_class("ACK") is AckCommand
    assert load_command_registry(None, [str(app_dir)]).command_class("ACK") is None
    with pytest.raises(CommandLineError, match=r"commands_path\[0\]: directory .* does not exist"):
        load_command_registry("appcmds_example:register", [str(app_dir / "missing")])
    with pytest.raises(CommandLineError, match="cannot import"):
        load_command_registry("nowhere_xyz:register", [])
