"""One connection of a worker to its master: parsing and assembling.

:class:`WorkerConnection` is one connection to the master. Its session announces the protocol
versions it speaks with its ``NAME`` (``VERSION 1``, see :mod:`replication.wire.dialects`);
a master too old to know ``VERSION`` answers with an ``ERROR`` that is logged with what to
do. After the handshake it sends one
``REPLICATE`` per configured stream (from the recorded position, or from the start or from
now for a stream it never saw), gathers the ``RDATA`` rows of each token, and hands each
complete token, and the master's ``GAP``, ``RESET`` and ``POSITION``, to the worker's
:class:`~replication.worker.runner.TokenRunner`, which outlives it: the runner calls the
handler, records positions, retries, and holds this connection's input (it is the runner's
:class:`~replication.worker.runner.InputGate`) while a call is pending or waiting for a
retry. What outlives a connection is :class:`~replication.worker.service.Worker`'s.

Its :class:`~replication.streams.TokenAssembler` checks that each line follows from those
before it (docs/protocol.rst, "What a worker accepts"): a token that is not the next one, a
``POSITION`` above the last token received, a ``GAP`` that skips tokens, a token past
``limits.max_token_rows`` or ``limits.max_token_bytes`` are answered with ``ERROR`` and a
close, so that no position is recorded that was not handled; a ``POSITION`` below it is a
reset.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from replication.ratelimit import suppressed_note
from replication.streams import AssemblyError, TokenAssembler
from replication.wire.commands import (
    WORKER,
    ErrorCommand,
    GapCommand,
    HandledCommand,
    PositionCommand,
    RdataCommand,
    ResetCommand,
    json_loader,
)
from replication.wire.dialects import DIALECTS, VERSION_1
from replication.wire.protocol import ReplicationProtocol
from replication.worker.reporting import describe_resume

if TYPE_CHECKING:
    from replication.worker.service import Worker

log = logging.getLogger(__name__)

#: What a master older than protocol versions answers the worker's ``VERSION`` with.
OLD_MASTER_ANSWER = "unknown command 'VERSION'"
#: Seconds between two ``HANDLED`` reports of one stream, at least.
HANDLED_INTERVAL = 1.0


class WorkerConnection(ReplicationProtocol):
    """The worker's end of a connection to the master."""

    def __init__(self, worker: Worker) -> None:
        config = worker.config
        super().__init__(
            worker.clock,
            worker.registry,
            WORKER,
            config.name,
            keepalive=config.keepalive,
            max_line_bytes=config.max_line_bytes,
            max_buffer_bytes=None,
            versions={1: VERSION_1},
        )
        self.worker = worker
        self.runner = worker.runner
        self.assembler = TokenAssembler(config.max_token_rows, config.max_token_bytes)
        #: The bytes of the JSON row of the RDATA line the general path is handling (a
        #: token's bytes are the sum of its rows' JSON bytes as received, in both paths).
        self._row_size = 0
        self._followed_bytes = {name.encode(): name for name in worker.streams}
        #: RDATA lines taken by the fast path of :meth:`linesReceived` (for metrics).
        self.rdata_received = 0
        #: The positions last reported with ``HANDLED`` on this connection, by stream.
        self._reported: dict[str, int] = {}
        self._handled_reports: LoopingCall | None = None

    def command_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        received, sent = super().command_counts()
        if self.rdata_received:
            received["RDATA"] = received.get("RDATA", 0) + self.rdata_received
        return received, sent

    def handshake_done(self) -> None:
        log.info("connected to master %s", self.peer_name)
        self.worker.connection = self
        self.worker.metrics.connected(self)
        commands = self.worker.replicate_commands()
        log.info("resuming %s", describe_resume(commands, self.runner.positions.get))
        catchup = self.worker.catchup
        for command in commands:
            self.send(command)
            self.assembler.start(command.stream, command.token)
            catchup.started(command.stream, command.token)
        # If a handler call from the previous connection is still running, the runner holds
        # this connection's input until it ends and its position is recorded.
        self.runner.attach(self)
        if DIALECTS[self.dialect].version is not None:  # a legacy master knows no HANDLED
            reports = self._handled_reports = LoopingCall(self.report_handled)
            reports.clock = self.clock
            reports.start(HANDLED_INTERVAL, now=False)

    def report_handled(self) -> None:
        """Send ``HANDLED <stream> <position>`` for each followed stream whose recorded
        position changed since the last report on this connection (driven once a second by
        a looping call, stopped when the connection closes)."""
        if self._closing:
            return
        get = self.runner.positions.get
        reported = self._reported
        for stream in self.worker.streams:
            position = get(stream)
            if position is not None and reported.get(stream) != position:
                reported[stream] = position
                self.send(HandledCommand(stream, position))

    def closed(self, reason: str) -> None:
        reports, self._handled_reports = self._handled_reports, None
        if reports is not None and reports.running:
            reports.stop()
        self.worker.metrics.connection_closed(self, reason)
        if self.connected_since is not None:
            self.worker.backoff.connection_ended(self.clock.seconds() - self.connected_since)
        self.runner.detach(self)
        if self.worker.connection is self:
            self.worker.connection = None
            self.worker.catchup.stopped()
        log.info("disconnected from master %s: %s", self.peer_name or "?", reason)

    def _followed(self, stream: str, what: str) -> bool:
        if stream in self.worker.streams:
            return True
        suppressed = self.worker.warnings.allow((stream, what), self.clock.seconds())
        if suppressed is not None:
            log.warning("master sent %s for %s, which this worker does not follow%s",
                        what, stream, suppressed_note(suppressed))
        return False

    # -- commands ----------------------------------------------------------------------

    def linesReceived(self, lines: list[bytes], data: bytes | None) -> None:
        """The hot path. ``RDATA`` lines of followed streams, with a ``batch`` or numeric
        token in order, are parsed (split, token, strict JSON) and gathered here directly,
        without building command objects, and each complete token goes through the
        synchronous half of :meth:`TokenRunner.submit
        <replication.worker.runner.TokenRunner.submit>`, repeated inline (a call per token
        would cost 6%); a handler that does not just return ``None`` goes on in the
        runner. Anything else (other commands, unfollowed streams, malformed lines,
        tokens that are not the next one, a token at its row or byte bound) takes the
        general path of :meth:`lineReceived`, which parses
        it fully and answers errors; so does everything after a token the runner did not
        finish at once (its handler did not just return ``None``). It keeps the contract
        of the base class: once input is held, the remaining lines are held, in order."""
        if self.peer_name is None or self._closing:
            super().linesReceived(lines, data)
            return
        loads = json_loader(data)
        max_line = self.max_line_bytes
        followed = self._followed_bytes
        assembler = self.assembler
        partial = assembler.partial
        partial_bytes = assembler.partial_bytes
        max_rows = assembler.max_rows
        max_bytes = assembler.max_bytes
        last_tokens = assembler.last
        runner = self.runner
        heads = runner.heads
        positions = runner.positions
        handler = runner.handler
        handler_done = runner.metrics.handler_done
        seconds = self.clock.seconds
        fast = 0
        try:
            for i, line in enumerate(lines):
                if line[:6] == b"RDATA " and len(line) <= max_line:
                    parts = line.split(b" ", 3)
                    stream = followed.get(parts[1]) if len(parts) == 4 else None
                    if stream is not None:
                        token_text = parts[2]
                        if token_text == b"batch":
                            gathered = partial.get(stream)
                            size = partial_bytes.get(stream, 0) + len(parts[3])
                            if gathered is None:
                                within = size <= max_bytes
                            else:
                                within = size <= max_bytes and len(gathered) < max_rows
                            if within:  # else: the general path refuses it
                                try:
                                    row = loads(parts[3])
                                except (ValueError, RecursionError):
                                    pass  # the general path decides, and answers errors
                                else:
                                    fast += 1
                                    if gathered is None:
                                        partial[stream] = [row]
                                    else:
                                        gathered.append(row)
                                    partial_bytes[stream] = size
                                    continue
                        elif token_text.isdigit() and len(token_text) <= 19:
                            token = int(token_text)
                            last = last_tokens.get(stream)
                            rows = partial.get(stream)
                            # A token out of order, or past the bounds: the general path.
                            decoded = (last is None or token == last + 1) and (
                                rows is None or (
                                    len(rows) < max_rows
                                    and partial_bytes[stream] + len(parts[3]) <= max_bytes
                                )
                            )
                            if decoded:
                                try:
                                    row = loads(parts[3])
                                except (ValueError, RecursionError):
                                    decoded = False
                            if decoded:
                                fast += 1
                                last_tokens[stream] = token
                                if rows is None:
                                    rows = [row]
                                else:
                                    del partial[stream], partial_bytes[stream]
                                    rows.append(row)
                                # TokenRunner.submit, its synchronous half inline:
                                if token > heads.get(stream, 0):
                                    heads[stream] = token
                                position = positions.get(stream)
                                if position is not None and token <= position:
                                    log.debug("dropping %s token %d: already handled "
                                              "(position %d)", stream, token, position)
                                    continue
                                started = seconds()
                                try:
                                    result = handler(stream, token, rows)
                                except Exception:  # noqa: BLE001  (any handler error is retried)
                                    result = Failure()  # type: ignore[no-untyped-call]
                                if result is None:
                                    positions.set(stream, token)
                                    handler_done(stream, seconds() - started)
                                    continue
                                runner.handler_returned(stream, token, rows, result, started)
                                if self._holding:
                                    self.hold_remaining(lines, i + 1)
                                    return
                                if self._closing:
                                    return
                                continue
                # The general path.
                self.lineReceived(line)
                if self._holding:
                    self.hold_remaining(lines, i + 1)
                    return
                if self._closing:
                    return
        finally:
            self.rdata_received += fast

    def on_RDATA(self, command: RdataCommand) -> None:
        if self._followed(command.stream, "RDATA"):
            self._rdata(command.stream, command.token, command.row)

    def lineReceived(self, line: bytes) -> None:
        if line[:6] == b"RDATA ":
            parts = line.split(b" ", 3)
            self._row_size = len(parts[3]) if len(parts) == 4 else 0
        super().lineReceived(line)

    def _rdata(self, stream: str, token: int | None, row: Any) -> None:
        """One ``RDATA`` row by the general path (the reference for :meth:`linesReceived`)."""
        try:
            done = self.assembler.add(stream, token, row, self._row_size)
        except AssemblyError as e:
            self.send_error(str(e))
            return
        if done is not None:
            self.runner.submit(stream, *done)

    def on_POSITION(self, command: PositionCommand) -> None:
        stream, token = command.stream, command.token
        if not self._followed(stream, "POSITION"):
            return
        try:
            check = self.assembler.position(stream, token)
        except AssemblyError as e:
            self.send_error(str(e))
            return
        if check.reset:
            # A master that lost history, or a substitute for RESET: handled as RESET is,
            # but the stream goes on live from ``token`` (nothing before it is replayed).
            self.runner.reset(stream, token, replay=False)
        self.runner.caught_up(stream, token)
        self.worker.catchup.caught_up(stream, token)

    def on_GAP(self, command: GapCommand) -> None:
        if self._followed(command.stream, "GAP"):
            try:
                self.assembler.gap(command.stream, command.first, command.last)
            except AssemblyError as e:
                self.send_error(str(e))
                return
            self.runner.gap(command.stream, command.first, command.last)

    def on_RESET(self, command: ResetCommand) -> None:
        if self._followed(command.stream, "RESET"):
            try:
                self.assembler.reset(command.stream)
            except AssemblyError as e:
                self.send_error(str(e))
                return
            self.runner.reset(command.stream, command.head)

    def on_ERROR(self, command: ErrorCommand) -> None:
        log.error("master %s sent ERROR %s", self.session.peer_name, command.message)
        if self.peer_name is None and command.message == OLD_MASTER_ANSWER:
            # Our VERSION announcement (sent by the session with NAME) was not understood.
            log.error(
                "master %s does not negotiate protocol versions: it runs an older release "
                "than this worker. Upgrade the masters before their workers (docs/protocol.rst, "
                "Protocol versions); this worker keeps its positions and retries with backoff.",
                self.session.peer_name,
            )


class WorkerFactory(Factory):
    """Builds a :class:`WorkerConnection` for each connection to the master."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def buildProtocol(self, addr: IAddress | None) -> WorkerConnection:
        return WorkerConnection(self.worker)
