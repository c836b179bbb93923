"""The master's end of one connection: :class:`MasterConnection` and its factory.

A connection is admitted or refused (``limits.max_connections``), speaks the handshake and
keepalive of :class:`~replication.wire.protocol.ReplicationProtocol`, and hands ``REPLICATE`` to the
master's fan-out, for which it is a :class:`~replication.master.fanout.Follower`: fan-out
writes to it, asks whether it can take more, and is told when its transport drains.

In protocol version 2 the master names itself first with ``ORIGIN``; a connection that
answers with an ``ORIGIN`` of its own is a cluster peer (another master), which may then
ask for rows by origin with ``RELAY`` (docs/protocol.rst, "Version 2: origins").

A version 2 connection whose first command is ``PUBLISHER`` is a publisher: its ``PUBLISH``
and ``PUBLISH_TOKENS`` go to its :class:`~replication.master.publishing.PublishPipeline`,
and it may not follow streams (docs/protocol.rst, "Publishing"). A connection's
:attr:`~MasterConnection.role` (``worker``, ``publisher``, ``peer``) labels metrics.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory

from replication.cluster.identity import (
    Identity,
    IdentityError,
    Recognition,
    conflict_reason,
    recognise,
)
from replication.master.publishing import (
    Fields,
    PublishPipeline,
    fast_publish,
    publish_batch_head,
    publish_id,
)
from replication.wire.auth import ALL_PERMISSIONS, Permissions, permissions_of
from replication.wire.commands import (
    ALL_STREAMS,
    MASTER,
    ORIGIN_SEPARATOR,
    Command,
    ErrorCommand,
    HandledCommand,
    LineLimitCommand,
    OriginCommand,
    PublishBatchCommand,
    PublishCommand,
    PublisherCommand,
    PublishingCommand,
    PublishTokensCommand,
    RelayCommand,
    ReplicateCommand,
)
from replication.wire.dialects import DIALECTS, VERSION_1
from replication.wire.protocol import PROTOCOL_ERROR, ReplicationProtocol, TooLongLine
from replication.wire.session import AUTH_FAILED

if TYPE_CHECKING:
    from replication.master.fanout import Subscription
    from replication.master.service import Master

log = logging.getLogger("replication.master")

TOO_MANY_CONNECTIONS = "too many connections"
#: The close reason of a connection from an address that must wait after failures.
AUTH_DELAYED = "authentication delayed"
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
            keyring=master.keyring,
        )
        self.master = master
        #: What this connection may do: everything without authentication; nothing until
        #: the handshake proved a credential, then that credential's permissions.
        self.permissions = ALL_PERMISSIONS if master.keyring is None else Permissions()
        self._admitted = False
        #: A cluster peer's identity, once it sent ``ORIGIN`` (``None``: a worker).
        self.peer_identity: Identity | None = None
        #: A publisher's pipeline, once it sent ``PUBLISHER`` (``None``: not a publisher).
        self.publishing: PublishPipeline | None = None
        #: Whether the peer sent a command of a worker or a cluster peer (``REPLICATE``...).
        self._follows = False

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
        rows_lines = self.master.fanout.rows_lines_sent(self)
        if rows_lines:
            sent["ROWS"] = sent.get("ROWS", 0) + rows_lines
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
            return
        if self.master.keyring is not None:
            wait = self.master.auth_delays.wait(self.address(), self.clock.seconds())
            if wait > 0:
                self.master.auth_failures["replication"] += 1
                self.send_error(
                    f"{AUTH_FAILED}: too many failures from this address; "
                    f"try again in {math.ceil(wait)}s",
                    AUTH_DELAYED,
                )

    def address(self) -> str:
        """The peer's host (what failures are counted by)."""
        peer = self.transport.getPeer() if self.transport is not None else None
        return str(getattr(peer, "host", peer))

    def send_error(self, message: str, reason: str = PROTOCOL_ERROR) -> None:
        if reason == AUTH_FAILED and not self._closing:
            master = self.master
            delay = master.auth_delays.failed(self.address(), self.clock.seconds())
            master.auth_failures["replication"] += 1
            log.warning(
                "%s: authentication failed (credential %r); this address waits %gs before "
                "its next attempt", self.describe(), self.session.claimed, delay,
            )
        super().send_error(message, reason)

    def handshake_done(self) -> None:
        keyring = self.master.keyring
        if keyring is not None:
            self.permissions = permissions_of(keyring, self.credential)
            self.master.auth_delays.succeeded(self.address())
            log.info("%s authenticated as %r", self.describe(), self.credential)
        log.info("%s connected, speaking %s", self.describe(), self.dialect)
        self.master.history.connected(self.peer_name)
        if DIALECTS[self.dialect].origins:
            identity = self.master.identity()
            assert identity is not None, "connections are accepted once the store is open"
            self.send(OriginCommand(identity.origin_id, identity.fingerprint))

    def on_REPLICATE(self, command: ReplicateCommand) -> None:
        permissions = self.permissions
        stream = command.stream
        if stream == ALL_STREAMS:
            allowed = permissions.may_read_all()
        else:
            allowed = permissions.may_read(stream.partition(ORIGIN_SEPARATOR)[0])
        if not allowed:
            self.send(ErrorCommand(
                f"REPLICATE {stream} refused: credential {self.credential!r} may not read "
                f"{'every stream' if stream == ALL_STREAMS else 'stream ' + repr(stream)}"
            ))
            return
        self.master.fanout.replicate(self, command)

    def on_ORIGIN(self, command: OriginCommand) -> None:
        """A master dialling this one as a cluster peer names itself."""
        if not self.permissions.peer:
            self.send_error(
                f"ORIGIN refused: credential {self.credential!r} may not join as a cluster "
                "peer (peer: true)"
            )
            return
        if not DIALECTS[self.dialect].origins:
            self.send_error(f"ORIGIN needs protocol version 2; this connection speaks "
                            f"{self.dialect}")
            return
        if self.peer_identity is not None:
            self.send_error("ORIGIN may only be sent once")
            return
        ours = self.master.identity()
        assert ours is not None
        try:
            announced = Identity(command.origin_id, command.fingerprint)
        except IdentityError as e:  # pragma: no cover - the codec checks the same pattern
            self.send_error(str(e))
            return
        seen = recognise(ours, announced)
        if seen is Recognition.CONFLICT:
            reason = conflict_reason(ours, announced)
            log.error("%s: %s", self.describe(), reason)
            self.send_error(reason)
            return
        if not self.master.clustered:
            self.send_error(
                "this master is not one of a cluster (it has no cluster.peers): "
                "it takes no peer links"
            )
            return
        self.peer_identity = announced
        if seen is Recognition.SELF:
            log.debug("%s is this master dialling itself", self.describe())
        else:
            log.info("%s is cluster peer %s", self.describe(), announced.origin_id)

    def on_RELAY(self, command: RelayCommand) -> None:
        if not self.permissions.peer:
            self.send_error(
                f"RELAY refused: credential {self.credential!r} may not join as a cluster "
                "peer (peer: true)"
            )
            return
        peer = self.peer_identity
        if peer is None:
            self.send_error("RELAY is for cluster peers: a peer sends ORIGIN first")
            return
        if command.origin == peer.origin_id:
            self.send_error(f"RELAY of origin {command.origin}: that is the peer's own origin")
            return
        self.master.fanout.relay(self, command)

    def on_HANDLED(self, command: HandledCommand) -> None:
        self.master.fanout.handled(self, command)

    def on_LINE_LIMIT(self, command: LineLimitCommand) -> None:
        if not DIALECTS[self.dialect].rows_lines:
            self.send_error(f"LINE_LIMIT needs protocol version 3; this connection speaks "
                            f"{self.dialect}")
            return
        self.master.fanout.line_limit(self, command.limit)

    def writable(self) -> None:
        self.master.fanout.pump(self)

    # -- publishers (docs/protocol.rst, "Publishing") -----------------------------------

    @property
    def role(self) -> str:
        """``publisher``, ``peer`` or ``worker``: what this connection is, for metrics."""
        if self.publishing is not None:
            return "publisher"
        if self.peer_identity is not None:
            return "peer"
        return "worker"

    def command_received(self, command: Command) -> None:
        if command.NAME in _NOT_FOR_PUBLISHERS:
            if self.publishing is not None:
                self.send_error(
                    f"{command.NAME} is not for publishers: this connection sent PUBLISHER; "
                    "follow streams on a connection of its own"
                )
                return
            self._follows = True
        super().command_received(command)

    def linesReceived(self, lines: list[bytes], data: bytes | None) -> None:
        publishing = self.publishing
        if publishing is None:
            super().linesReceived(lines, data)
            return
        # The publisher's hot path: PUBLISH lines parsed without the codec (a test checks
        # both take every line alike), and the publishes of one read committed together
        # (PublishPipeline.begin_batch). Each line otherwise as ReplicationProtocol takes it.
        limit = self.max_line_bytes
        counts = self.received_counts
        run: list[Fields] = []
        room = publishing.room
        publishing.begin_batch()
        try:
            for i, line in enumerate(lines):
                if self._closing:
                    return
                too_long = len(line) > limit or type(line) is TooLongLine
                fields = (
                    fast_publish(line)
                    if line.startswith(b"PUBLISH ") and not too_long else None
                )
                if fields is not None:
                    run.append(fields)
                    if len(run) < room:
                        continue
                    # As many as may be in flight: take them; the input is held after.
                    counts["PUBLISH"] = counts.get("PUBLISH", 0) + len(run)
                    publishing.take_run(run)
                    run = []
                else:
                    if run:
                        counts["PUBLISH"] = counts.get("PUBLISH", 0) + len(run)
                        publishing.take_run(run)
                        run = []
                    publishing.end_batch()
                    publishing.begin_batch()
                    if too_long:
                        self._too_long_publish(line)
                    else:
                        self.lineReceived(line)
                if self._holding:
                    self.hold_remaining(lines, i + 1)
                    return
                room = publishing.room
            if run and not self._closing:
                counts["PUBLISH"] = counts.get("PUBLISH", 0) + len(run)
                publishing.take_run(run)
        finally:
            publishing.end_batch()

    def answers_too_long(self, head: bytes) -> bool:
        # A publisher's too-long publish is refused alone (see _too_long_publish).
        return self.publishing is not None and head.startswith(_PUBLISH_COMMANDS)

    def _too_long_publish(self, line: bytes) -> None:
        """A publisher's line past ``limits.max_line_bytes``: a publish whose id can be read
        is answered ``REFUSED <id> 413`` in its turn and the connection goes on (its bytes
        are dropped as they arrive); anything else is a framing error, as on any
        connection."""
        length = line.length if type(line) is TooLongLine else len(line)
        publishing = self.publishing
        batch = publish_batch_head(line) if line.startswith(b"PUBLISH_BATCH ") else None
        id_ = publish_id(line) if line.startswith(_PUBLISH_COMMANDS) else None
        if (
            (id_ is None and batch is None)
            or publishing is None
            or (batch is not None and batch[1] > publishing.max_in_flight)
        ):
            self.lineReceived(line)  # ERROR line too long
            return
        counts = self.received_counts
        name = line[:line.index(b" ")].decode()
        counts[name] = counts.get(name, 0) + 1
        more = "more than " if type(line) is TooLongLine else ""
        message = (
            f"the publish line is {more}{length} bytes, over the line limit of "
            f"{self.max_line_bytes} bytes (limits.max_line_bytes): publish fewer or smaller "
            "rows at a time"
        )
        if batch is not None:
            publishing.refuse_batch(batch[0], batch[1], 413, message)
        else:
            assert id_ is not None
            publishing.refuse(id_, 413, message)

    def on_PUBLISHER(self, command: PublisherCommand) -> None:
        if not DIALECTS[self.dialect].origins:
            self.send_error(
                f"PUBLISHER needs protocol version 2; this connection speaks {self.dialect}"
            )
            return
        if self.publishing is not None:
            self.send_error("PUBLISHER may only be sent once")
            return
        if self._follows:
            self.send_error(
                "PUBLISHER must be the first command after the handshake: this connection "
                "already follows streams or is a cluster peer"
            )
            return
        limits = self.master.config.limits
        log.info("%s is a publisher", self.describe())
        self.publishing = PublishPipeline(self.master, self, limits.max_publishes_in_flight)
        self.send(PublishingCommand(
            limits.max_publishes_in_flight, limits.max_line_bytes,
            keys_kept=self.master.log.keeps_keys and limits.publish_keys > 0, batch=True,
        ))

    def on_PUBLISH(self, command: PublishCommand) -> None:
        publishing = self.publishing
        if publishing is None:
            self.send_error(
                f"{command.NAME} needs PUBLISHER first: workers may not publish (send "
                "PUBLISHER as the first command after the handshake)"
            )
            return
        publishing.publish(command)

    def on_PUBLISH_TOKENS(self, command: PublishTokensCommand) -> None:
        self.on_PUBLISH(command)

    def on_PUBLISH_BATCH(self, command: PublishBatchCommand) -> None:
        publishing = self.publishing
        if publishing is None:
            self.send_error(
                "PUBLISH_BATCH needs PUBLISHER first: workers may not publish (send "
                "PUBLISHER as the first command after the handshake)"
            )
            return
        if command.count > publishing.max_in_flight:
            self.send_error(
                f"PUBLISH_BATCH of {command.count} publishes: this master reads at most "
                f"{publishing.max_in_flight} ahead of their answers "
                "(limits.max_publishes_in_flight, in PUBLISHING)"
            )
            return
        publishing.take_batch(command)

    def closed(self, reason: str) -> None:
        if self.publishing is not None:
            self.publishing.closed()
        received, sent = self.command_counts()
        self.master.history.closed(self.peer_name, reason, self.clock.seconds(), received, sent)
        if self._admitted:
            log.info("%s disconnected: %s", self.describe(), reason)
            self.master.connection_lost(self)


#: The commands that publish (the start of their lines).
_PUBLISH_COMMANDS = (b"PUBLISH ", b"PUBLISH_TOKENS ", b"PUBLISH_BATCH ")

#: What a publisher may not send: it follows no stream and is no cluster peer.
_NOT_FOR_PUBLISHERS = frozenset(
    {ReplicateCommand.NAME, RelayCommand.NAME, HandledCommand.NAME, OriginCommand.NAME}
)


class MasterFactory(Factory):
    """Builds a :class:`MasterConnection` for each incoming connection."""

    def __init__(self, master: Master) -> None:
        self.master = master

    def buildProtocol(self, addr: IAddress | None) -> MasterConnection:
        return MasterConnection(self.master)
