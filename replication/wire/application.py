"""Application commands: the handlers an application attaches to the commands it registers.

An application (Synapse's ``USER_SYNC`` and ``FEDERATION_ACK``, or an ``ACK`` of its own)
registers command classes on a :class:`~replication.wire.commands.CommandRegistry` and
attaches a handler to each command it receives, on master connections (commands sent by
workers) or on worker connections (commands sent by the master), through
:class:`ApplicationCommands`. A handler is called as ``handler(peer, command)`` where
``peer`` is the connection's narrow :class:`CommandPeer` interface: who the peer is, and
how to send it a command. The configuration names a module's *register* callable
(``commands: package.module:register``); :func:`load_commands` imports it and calls it with
the registry and the :class:`ApplicationCommands` attached to it.

Pure: nothing here imports Twisted. The protocol layer
(:class:`replication.wire.protocol.ReplicationProtocol`) dispatches to these handlers and
tells :class:`ApplicationCommands` which connections are open.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol

from replication.config.kinds import is_handler_name
from replication.wire.commands import (
    BUILTIN_COMMANDS,
    MASTER,
    SIDES,
    WORKER,
    Command,
    CommandRegistry,
)

__all__ = [
    "ApplicationCommands",
    "CommandHandler",
    "CommandPeer",
    "CommandsLoadError",
    "load_commands",
]


class CommandPeer(Protocol):
    """What a handler of an application command may use of the connection it came on.

    ``side`` is this end's side (``"master"`` or ``"worker"``), ``peer_name`` the name the
    peer gave in its first line, ``dialect`` the protocol dialect agreed on
    (``"synapse-2017"`` for a legacy Synapse worker, see
    :mod:`replication.wire.dialects`). :meth:`send` writes a command to the peer (one the
    registry says this side may send); :meth:`send_error` sends ``ERROR <message>`` and
    closes the connection.
    """

    side: str
    peer_name: str | None
    dialect: str

    def send(self, command: Command) -> None: ...

    def send_error(self, message: str) -> None: ...

    def describe(self) -> str: ...


#: ``handler(peer, command)``: returns ``None``, or an awaitable whose failure is logged.
CommandHandler = Callable[[CommandPeer, Any], object]


class CommandsLoadError(Exception):
    """The module named by ``commands`` cannot be loaded, or its register callable failed;
    the message says which and why."""


class ApplicationCommands:
    """The application's handlers of received commands, and this process's open
    connections, for one registry (which it attaches itself to as ``registry.application``).

    :meth:`on_master` and :meth:`on_worker` attach a handler to a registered command, for the
    connections of that side; :meth:`connections` lists the open ones (after their
    handshake), so that an application can send a command of its own: a worker has at most
    one, to its master.
    """

    def __init__(self, registry: CommandRegistry) -> None:
        if registry.application is not None:
            raise ValueError("this registry already has application commands attached")
        self.registry = registry
        registry.application = self
        self._handlers: dict[tuple[str, str], CommandHandler] = {}
        #: Open connections by side, in the order their handshakes were done.
        self._open: dict[str, dict[CommandPeer, None]] = {side: {} for side in SIDES}

    def on_master(self, command: type[Command], handler: CommandHandler) -> None:
        """Call ``handler(peer, command)`` for each ``command`` a worker sends a master."""
        self._attach(MASTER, command, handler)

    def on_worker(self, command: type[Command], handler: CommandHandler) -> None:
        """Call ``handler(peer, command)`` for each ``command`` a master sends a worker."""
        self._attach(WORKER, command, handler)

    def _attach(self, side: str, command: type[Command], handler: CommandHandler) -> None:
        name = getattr(command, "NAME", None)
        if not isinstance(name, str) or name not in self.registry.names():
            raise ValueError(f"{command.__name__} is not registered: register it first")
        if self.registry.command_class(name) is not command:
            raise ValueError(f"{name} is registered with another class than {command.__name__}")
        if name in BUILTIN_COMMANDS:
            raise ValueError(f"{name} is a built-in command; its handling cannot be replaced")
        sender = WORKER if side == MASTER else MASTER
        if name not in self.registry.names(sent_by=sender):
            raise ValueError(
                f"{name} may not be sent by the {sender}, so a {side} never receives it"
            )
        if (side, name) in self._handlers:
            raise ValueError(f"{name} already has a handler on {side} connections")
        if not callable(handler):
            raise TypeError(f"the handler of {name} is not callable")
        self._handlers[side, name] = handler

    def handler(self, side: str, name: str) -> CommandHandler | None:
        """The handler of command ``name`` received on a connection of ``side``, if any."""
        return self._handlers.get((side, name))

    def handled(self, side: str) -> frozenset[str]:
        """The names of the commands with a handler on connections of ``side``."""
        return frozenset(name for s, name in self._handlers if s == side)

    def connections(self, side: str) -> tuple[CommandPeer, ...]:
        """The open connections of ``side`` in this process, whose handshake is done."""
        return tuple(self._open[side])

    def connected(self, peer: CommandPeer) -> None:
        """``peer``'s handshake is done (called by the protocol layer)."""
        self._open[peer.side][peer] = None

    def disconnected(self, peer: CommandPeer) -> None:
        """``peer``'s connection is gone (called by the protocol layer)."""
        self._open[peer.side].pop(peer, None)


def load_commands(name: str, registry: CommandRegistry) -> ApplicationCommands:
    """Import the register callable named ``package.module:callable`` and call it with
    ``registry`` and a new :class:`ApplicationCommands` attached to it, which is returned.

    The module is imported from ``sys.path`` as it is (the caller puts the configured
    directories first). Every failure is a :class:`CommandsLoadError` naming ``name``.
    """
    if not is_handler_name(name):
        raise CommandsLoadError(f"commands {name!r} must look like package.module:callable")
    module_name, _, attribute = name.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise CommandsLoadError(
            f"commands {name!r}: cannot import {module_name}: {error}"
        ) from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise CommandsLoadError(
                f"commands {name!r}: {module_name} has no {attribute}"
            ) from None
    if not callable(target):
        raise CommandsLoadError(f"commands {name!r} is not callable")
    application = ApplicationCommands(registry)
    try:
        target(registry, application)
    except Exception as error:
        raise CommandsLoadError(
            f"commands {name!r} failed: {type(error).__name__}: {error}"
        ) from error
    return application
