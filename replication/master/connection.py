"""The master's end of one connection: :class:`MasterConnection` and its factory.

A connection is admitted or refused (``limits.max_connections``), speaks the handshake and
keepalive of :class:`~replication.wire.protocol.ReplicationProtocol`, and hands ``REPLICATE`` to the
master's fan-out, for which it is a :class:`~replication.master.fanout.Follower`: fan-out
writes to it, asks whether it can take more, and is told when its transport drains.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory

from replication.wire.commands import MASTER, HandledCommand, ReplicateCommand
from replication.wire.dialects import VERSION_1
from replication.wire.protocol import ReplicationProtocol

if TYPE_CHECKING:
    from replication.master.fanout import Subscription
    from replication.master.service import Master

log = logging.getLogger("replication.master")

TOO_MANY_CONNECTIONS = "too many connections"
#: The name of the dialect of protocol version 1 (docs/protocol.rst). A connection's own
#: ``dialect`` is what its handshake agreed on (see :mod:`replication.wire.dialects`).
DIALECT = VERSION_1.name


class MasterConnection(ReplicationProtocol):
    """The master's end of one worker connection. Its ``dialect`` (set by the handshake)
    tells fan-out what the worker can parse."""

    def __init__(self, master: Master) -> None:
        config = master.config
        super().__init__(
            master.clock,
            master.registry,
            MASTER,
            config.server_name,
            keepalive=config.keepalive,
            max_line_bytes=config.limits.max_line_bytes,
            max_buffer_bytes=config.limits.max_buffer_bytes,
            versions={1: VERSION_1},
        )
        self.master = master
        self._admitted = False

    @property
    def subscriptions(self) -> dict[str, Subscription]:
        """This connection's subscriptions by stream (a copy, from the fan-out)."""
        return self.master.fanout.subscriptions(self)

    def rdata_sent(self) -> int:
        """RDATA lines written to this connection (see :meth:`FanOut.rdata_sent`)."""
        return self.master.fanout.rdata_sent(self)

    def command_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        received, sent = super().command_counts()
        rdata = self.rdata_sent()
        if rdata:
            sent["RDATA"] = sent.get("RDATA", 0) + rdata
        return received, sent

    def connectionMade(self) -> None:
        super().connectionMade()
        self._admitted = self.master.connection_made(self)
        if not self._admitted:
            limit = self.master.config.limits.max_connections
            self.send_error(
                f"too many connections: this master takes {limit} (limits.max_connections)",
                TOO_MANY_CONNECTIONS,
            )

    def handshake_done(self) -> None:
        log.info("%s connected, speaking %s", self.describe(), self.dialect)
        self.master.history.connected(self.peer_name)

    def on_REPLICATE(self, command: ReplicateCommand) -> None:
        self.master.fanout.replicate(self, command)

    def on_HANDLED(self, command: HandledCommand) -> None:
        self.master.fanout.handled(self, command)

    def writable(self) -> None:
        self.master.fanout.pump(self)

    def closed(self, reason: str) -> None:
        received, sent = self.command_counts()
        self.master.history.closed(self.peer_name, reason, self.clock.seconds(), received, sent)
        if self._admitted:
            log.info("%s disconnected: %s", self.describe(), reason)
            self.master.connection_lost(self)


class MasterFactory(Factory):
    """Builds a :class:`MasterConnection` for each incoming connection."""

    def __init__(self, master: Master) -> None:
        self.master = master

    def buildProtocol(self, addr: IAddress | None) -> MasterConnection:
        return MasterConnection(self.master)
