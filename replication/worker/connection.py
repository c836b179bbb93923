"""One connection of a worker to its master: parsing and assembling.

:class:`WorkerConnection` is one connection to the master. Its session announces the protocol
versions it speaks with its ``NAME`` (``VERSION 2 1``, see :mod:`replication.wire.dialects`);
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

Protocol version 2 (origins)
----------------------------

When the master answers ``VERSION 2``, the connection waits for its ``ORIGIN <origin_id>
<fingerprint>`` (within ``keepalive.ping_timeout`` seconds; ``PING`` and ``ERROR`` are
taken meanwhile, anything else is answered with ``ERROR expected ORIGIN after VERSION 2, got
<NAME>`` and a close), then sends one ``REPLICATE <stream> <vector>`` per followed stream,
built from the positions recorded per origin (``-`` when there are none; ``NOW`` for a
``from: latest`` stream never seen). Every ``RDATA``, ``POSITION``, ``GAP`` and ``RESET``
must then name ``<stream>@<origin>`` (an unqualified one is answered with ``ERROR`` and a
close), and the assembler, the token runner and the positions keep everything per
``(stream, origin)``: the assembler and the fast path are keyed by the qualified field
itself. An origin the vector did not name is sent from its start (its last token is taken
as 0 when it first appears), except on a stream asked for ``NOW``. ``HANDLED`` reports are
qualified too. Under version 1, a qualified stream field is refused the same way.

Positions recorded before origins
---------------------------------

Positions recorded under versions 1 and legacy have no origin (``None``, the *local*
origin): they are positions of the one master the worker followed, whose origin id it did
not know. They are never applied to an origin by guess (a position applied to the wrong
origin would skip that origin's rows silently). The first master of version 2 the worker
meets *while it follows that one master alone* (``master`` names one endpoint) binds them
to its origin id: the binding is recorded in the position file (``@local <origin id>``),
and each local position is copied to that origin (where that origin has none yet), which
is logged. From then on they are that origin's positions, whichever master the worker
follows: a master of another origin is sent them as that origin's part of the vector. A
worker with unbound local positions that follows several masters does not guess which of
them recorded them: it logs an error, closes the connection and retries with backoff
(follow the old master alone once, or move the position file aside).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from replication.ratelimit import suppressed_note
from replication.streams import AssemblyError, TokenAssembler
from replication.wire.commands import (
    MAX_VECTOR_ORIGINS,
    WORKER,
    ChallengeCommand,
    Command,
    ErrorCommand,
    GapCommand,
    HandledCommand,
    LineLimitCommand,
    OriginCommand,
    PingCommand,
    PositionCommand,
    RdataCommand,
    ResetCommand,
    RowsCommand,
    json_loader,
    qualify,
)
from replication.wire.dialects import DIALECTS
from replication.wire.protocol import ReplicationProtocol
from replication.wire.session import HANDSHAKE_TIMEOUT
from replication.worker.reporting import describe_resume, describe_vector_resume

if TYPE_CHECKING:
    from replication.worker.service import Worker

log = logging.getLogger(__name__)

#: What a master older than protocol versions answers the worker's ``VERSION`` with.
OLD_MASTER_ANSWER = "unknown command 'VERSION'"
#: Seconds between two ``HANDLED`` reports of one stream, at least.
HANDLED_INTERVAL = 1.0
#: What a version 2 master may send before its ``ORIGIN``.
_BEFORE_ORIGIN = frozenset({OriginCommand.NAME, PingCommand.NAME, ErrorCommand.NAME})

#: How the fast path finds a stream field: ``(key, stream, origin)``, where ``key`` is the
#: field as text (the stream alone under version 1, ``<stream>@<origin>`` under 2): what
#: the assembler and the runner's heads are keyed by.
Route = tuple[str, str, str | None]


class HeldTokens(bytes):
    """The tokens of a ``ROWS`` line not handled yet when input was held (a handler went
    on asynchronously): kept among the held lines, first, and handed to the runner when
    input is released. Empty bytes, so no line-based check takes it for a command."""

    stream: str
    origin: str | None
    first: int
    tokens: list[list[Any]]

    def __new__(
        cls, stream: str, origin: str | None, first: int, tokens: list[list[Any]]
    ) -> HeldTokens:
        held = super().__new__(cls)
        held.stream, held.origin, held.first, held.tokens = stream, origin, first, tokens
        return held


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
            credential=worker.credential,
        )
        self.worker = worker
        self.runner = worker.runner
        self.assembler = TokenAssembler(config.max_token_rows, config.max_token_bytes)
        #: The bytes of the JSON row of the RDATA line the general path is handling (a
        #: token's bytes are the sum of its rows' JSON bytes as received, in both paths).
        self._row_size = 0
        #: The fast path's routes, by the stream field's bytes: every followed stream under
        #: version 1; under version 2, each ``<stream>@<origin>`` once it is known (from the
        #: vector sent, or when it first arrives through the general path).
        self._followed_bytes: dict[bytes, Route] = {
            name.encode(): (name, name, None) for name in worker.streams
        }
        #: RDATA lines taken by the fast path of :meth:`linesReceived` (for metrics).
        self.rdata_received = 0
        #: ROWS lines taken by the fast path (for metrics).
        self.rows_lines_received = 0
        #: Whether the master may send ``ROWS`` (version 3).
        self.rows_lines = False
        #: The positions last reported with ``HANDLED`` on this connection, by stream field.
        self._reported: dict[str, int] = {}
        self._handled_reports: LoopingCall | None = None
        #: Version 2: the master's origin id and fingerprint, once its ``ORIGIN`` arrived.
        self.origin: str | None = None
        self.fingerprint: str | None = None
        #: Whether the connection speaks a dialect with origins (version 2).
        self.origins = False
        self._awaiting_origin = False
        self._origin_timer: IDelayedCall | None = None
        #: Version 2: streams asked for with a vector (an origin not in it starts at 0).
        self._vector_streams: set[str] = set()
        #: Version 2: the origins of each stream that have a route.
        self._route_origins: dict[str, set[str]] = {}

    def command_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        received, sent = super().command_counts()
        if self.rdata_received:
            received["RDATA"] = received.get("RDATA", 0) + self.rdata_received
        if self.rows_lines_received:
            received["ROWS"] = received.get("ROWS", 0) + self.rows_lines_received
        return received, sent

    def handshake_done(self) -> None:
        if len(self.worker.masters) > 1:
            log.info("connected to master %s at %s", self.peer_name,
                     self.worker.endpoint_description)
        else:
            log.info("connected to master %s", self.peer_name)
        self.worker.connection = self
        self.worker.metrics.connected(self)
        self.rows_lines = DIALECTS[self.dialect].rows_lines
        if self.rows_lines:  # ROWS lines within this worker's line limit
            self.send(LineLimitCommand(self.max_line_bytes))
        if DIALECTS[self.dialect].origins:
            self.origins = True
            self._followed_bytes = {}
            self._awaiting_origin = True
            self._origin_timer = self.clock.callLater(self.ping_timeout, self._origin_timeout)
            return
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
            self._start_handled_reports()

    def _start_handled_reports(self) -> None:
        reports = self._handled_reports = LoopingCall(self.report_handled)
        reports.clock = self.clock
        reports.start(HANDLED_INTERVAL, now=False)

    # -- version 2 -----------------------------------------------------------------------

    def _origin_timeout(self) -> None:
        self._origin_timer = None
        self.send_error(
            f"handshake timeout: expected ORIGIN within {self.ping_timeout:g}s", HANDSHAKE_TIMEOUT
        )

    def _cancel_origin_timer(self) -> None:
        timer, self._origin_timer = self._origin_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def command_received(self, command: Command) -> None:
        if (
            self._awaiting_origin and command.NAME not in _BEFORE_ORIGIN
            and command.NAME != ChallengeCommand.NAME  # the session's: no credential here
        ):
            counts = self.received_counts
            counts[command.NAME] = counts.get(command.NAME, 0) + 1
            self.send_error(f"expected ORIGIN after VERSION 2, got {command.NAME}")
            return
        super().command_received(command)

    def on_ORIGIN(self, command: OriginCommand) -> None:
        if not self.origins:
            self.send_error(f"ORIGIN is not part of protocol {self.dialect}")
            return
        if not self._awaiting_origin:
            self.send_error("ORIGIN may only be sent once, as the master's first line after "
                            "VERSION 2")
            return
        self._awaiting_origin = False
        self._cancel_origin_timer()
        self.origin, self.fingerprint = command.origin_id, command.fingerprint
        log.info("master %s is origin %s (fingerprint %s)", self.peer_name, self.origin,
                 self.fingerprint)
        if not self.worker.adopt_local_positions(self.origin, self.peer_name or "?"):
            self.close()
            return
        try:
            commands = self.worker.replicate_vectors()
            for command_ in commands:
                length = len(command_.to_line())
                if length > self.max_line_bytes:
                    raise ValueError(
                        f"REPLICATE {command_.stream} would be a line of {length} bytes, over "
                        f"limits.max_line_bytes ({self.max_line_bytes})"
                    )
        except ValueError as e:
            log.error("cannot ask master %s for the streams: %s", self.peer_name, e)
            self.close()
            return
        log.info("resuming %s", describe_vector_resume(commands))
        catchup = self.worker.catchup
        for command_ in commands:
            self.send(command_)
            stream = command_.stream
            if command_.vector is None:  # NOW: no origin is known before its POSITION
                continue
            self._vector_streams.add(stream)
            for origin, token in command_.vector:
                key = qualify(stream, origin)
                self.assembler.start(key, token)
                self._route(stream, origin)
                catchup.started(key, token)
        self.runner.attach(self)
        self._start_handled_reports()

    def _route(self, stream: str, origin: str) -> bool:
        """Add ``<stream>@<origin>`` to the fast path's routes when it is new (an origin of
        a stream asked for with a vector and not named in it starts at 0). A stream holds
        at most :data:`~replication.wire.commands.MAX_VECTOR_ORIGINS` origins, as many as
        a vector names: a master that sends more is answered with ``ERROR`` and a close,
        and ``False`` is returned."""
        key = qualify(stream, origin)
        field = key.encode()
        if field in self._followed_bytes:
            return True
        origins = self._route_origins.setdefault(stream, set())
        if origin not in origins:
            known = {o for o in self.runner.positions.vector(stream) if o is not None}
            if len(known | origins | {origin}) > MAX_VECTOR_ORIGINS:
                self.send_error(
                    f"{key}: stream {stream} would hold more than {MAX_VECTOR_ORIGINS} "
                    "origins, the most a position vector names"
                )
                return False
            origins.add(origin)
        self._followed_bytes[field] = (key, stream, origin)
        if stream in self._vector_streams and key not in self.assembler.last:
            self.assembler.start(key, 0)
        return True

    def _key(
        self, command: RdataCommand | RowsCommand | PositionCommand | GapCommand | ResetCommand
    ) -> tuple[str, str | None] | None:
        """The assembler's key and the origin of a command with a stream field, checked
        against the dialect: ``None`` (after ``ERROR`` and a close) when the field is
        qualified under version 1 or unqualified under version 2."""
        stream, origin = command.stream, command.origin
        if self.origins:
            if origin is None:
                self.send_error(
                    f"{command.NAME} {stream}: protocol version 2 names every stream with "
                    "its origin (<stream>@<origin>)"
                )
                return None
            return qualify(stream, origin), origin
        if origin is not None:
            self.send_error(
                f"{command.NAME} {qualify(stream, origin)}: origins are not part of protocol "
                f"{self.dialect}"
            )
            return None
        return stream, None

    def report_handled(self) -> None:
        """Send ``HANDLED <stream> <position>`` for each followed stream whose recorded
        position changed since the last report on this connection (driven once a second by
        a looping call, stopped when the connection closes); under version 2, ``HANDLED
        <stream>@<origin> <position>`` per origin recorded."""
        if self._closing:
            return
        positions = self.runner.positions
        reported = self._reported
        if self.origins:
            for stream in self.worker.streams:
                for origin, token in sorted(
                    (o, t) for o, t in positions.vector(stream).items() if o is not None
                ):
                    key = qualify(stream, origin)
                    if reported.get(key) != token:
                        reported[key] = token
                        self.send(HandledCommand(stream, token, origin))
            return
        get = positions.get
        for stream in self.worker.streams:
            position = get(stream)
            if position is not None and reported.get(stream) != position:
                reported[stream] = position
                self.send(HandledCommand(stream, position))

    def closed(self, reason: str) -> None:
        self._awaiting_origin = False
        self._cancel_origin_timer()
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
        token in order, and ``ROWS`` lines (version 3) whose first token is in order, are
        parsed (split, token, strict JSON) and gathered here directly, without building
        command objects, and each complete token goes through the synchronous half of
        :meth:`TokenRunner.submit <replication.worker.runner.TokenRunner.submit>`, repeated
        inline (a call per token would cost 6%); a handler that does not just return
        ``None`` goes on in the runner. Anything else (other commands, unfollowed streams,
        malformed lines, tokens that are not the next one, a token at its row or byte
        bound) takes the general path of :meth:`lineReceived`, which parses it fully and
        answers errors; so does everything after a token the runner did not finish at once
        (its handler did not just return ``None``). It keeps the contract of the base
        class: once input is held, the remaining lines are held, in order (the tokens of a
        ``ROWS`` line not yet handled first, as a :class:`HeldTokens`)."""
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
        takes_origin = runner.handler_takes_origin
        handlers_done = runner.metrics.handlers_done
        seconds = self.clock.seconds
        rows_lines = self.rows_lines
        fast = rows_fast = 0
        try:
            for i, line in enumerate(lines):
                tokens: list[list[Any]] | tuple[list[Any]] | None = None
                if line[:6] == b"RDATA " and len(line) <= max_line:
                    parts = line.split(b" ", 3)
                    route = followed.get(parts[1]) if len(parts) == 4 else None
                    if route is not None:
                        key, stream, origin = route
                        token_text = parts[2]
                        if token_text == b"batch":
                            gathered = partial.get(key)
                            size = partial_bytes.get(key, 0) + len(parts[3])
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
                                        partial[key] = [row]
                                    else:
                                        gathered.append(row)
                                    partial_bytes[key] = size
                                    continue
                        elif token_text.isdigit() and len(token_text) <= 19:
                            first = int(token_text)
                            last = last_tokens.get(key)
                            rows = partial.get(key)
                            # A token out of order, or past the bounds: the general path.
                            decoded = (last is None or first == last + 1) and (
                                rows is None or (
                                    len(rows) < max_rows
                                    and partial_bytes[key] + len(parts[3]) <= max_bytes
                                )
                            )
                            if decoded:
                                try:
                                    row = loads(parts[3])
                                except (ValueError, RecursionError):
                                    decoded = False
                            if decoded:
                                fast += 1
                                last_tokens[key] = first
                                if rows is None:
                                    rows = [row]
                                else:
                                    del partial[key], partial_bytes[key]
                                    rows.append(row)
                                tokens = (rows,)
                elif line[:5] == b"ROWS " and rows_lines and len(line) <= max_line:
                    parts = line.split(b" ", 3)
                    route = followed.get(parts[1]) if len(parts) == 4 else None
                    if route is not None and route[0] not in partial:
                        key, stream, origin = route
                        token_text = parts[2]
                        if token_text.isdigit() and len(token_text) <= 19:
                            first = int(token_text)
                            last = last_tokens.get(key)
                            if first > 0 and (last is None or first == last + 1):
                                try:
                                    value = loads(parts[3])
                                except (ValueError, RecursionError):
                                    value = None  # the general path decides
                                if (
                                    type(value) is list and value
                                    and first + len(value) <= 10**19
                                    and all(type(r) is list and r and len(r) <= max_rows
                                            for r in value)
                                ):
                                    rows_fast += 1
                                    last_tokens[key] = first + len(value) - 1
                                    tokens = value
                if tokens is None:
                    # The general path.
                    self.lineReceived(line)
                    if self._holding:
                        self.hold_remaining(lines, i + 1)
                        return
                    if self._closing:
                        return
                    continue
                # TokenRunner.submit, its synchronous half inline, for each token; the
                # line's tokens are consecutive, so the head and the position are looked
                # at once, and handler times are counted once per line.
                count = len(tokens)
                if first + count - 1 > heads.get(key, 0):
                    heads[key] = first + count - 1
                position = positions.get(stream, origin)
                start = 0
                if position is not None and position >= first:
                    start = min(position - first + 1, count)
                    log.debug("dropping %s tokens %d..%d: already handled (position %d)",
                              key, first, first + start - 1, position)
                times: list[float] = []
                started = seconds()
                for j in range(start, count):
                    rows = tokens[j]
                    token = first + j
                    try:
                        if takes_origin:
                            result = handler(
                                stream, token, rows, origin=origin  # type: ignore[call-arg]
                            )
                        else:
                            result = handler(stream, token, rows)
                    except Exception:  # noqa: BLE001  (any handler error is retried)
                        result = Failure()  # type: ignore[no-untyped-call]
                    if result is None:
                        positions.set(stream, token, origin)
                        ended = seconds()
                        times.append(ended - started)
                        started = ended
                        continue
                    if times:
                        handlers_done(stream, times)
                        times = []
                    runner.handler_returned(stream, token, rows, result, started, origin)
                    if self._holding:
                        self._hold_tokens(stream, origin, token + 1, list(tokens[j + 1:]))
                        self.hold_remaining(lines, i + 1)
                        return
                    if self._closing:
                        return
                    started = seconds()
                if times:
                    handlers_done(stream, times)
        finally:
            self.rdata_received += fast
            self.rows_lines_received += rows_fast

    def on_RDATA(self, command: RdataCommand) -> None:
        keyed = self._key(command)
        if keyed is not None and self._followed(command.stream, "RDATA"):
            key, origin = keyed
            if origin is not None and not self._route(command.stream, origin):
                return
            self._rdata(key, command.stream, origin, command.token, command.row)

    def on_ROWS(self, command: RowsCommand) -> None:
        if not self.rows_lines:
            self.send_error(f"ROWS is not part of protocol {self.dialect}")
            return
        keyed = self._key(command)
        if keyed is not None and self._followed(command.stream, "ROWS"):
            key, origin = keyed
            if origin is not None and not self._route(command.stream, origin):
                return
            try:
                self.assembler.tokens(key, command.first, command.tokens)
            except AssemblyError as e:
                self.send_error(str(e))
                return
            self._submit_tokens(
                HeldTokens(command.stream, origin, command.first, command.tokens)
            )

    def _submit_tokens(self, held: HeldTokens) -> None:
        """Hand the tokens of a ``ROWS`` line, already accounted for by the assembler, to
        the runner one by one; when one of them makes it hold input, the rest are held
        first, before the lines that followed."""
        runner, tokens = self.runner, held.tokens
        for i, rows in enumerate(tokens):
            runner.submit(held.stream, held.first + i, rows, held.origin)
            if self._holding:
                self._hold_tokens(held.stream, held.origin, held.first + i + 1, tokens[i + 1:])
                return
            if self._closing:
                return

    def _hold_tokens(
        self, stream: str, origin: str | None, first: int, rest: list[list[Any]]
    ) -> None:
        """Input was held in the middle of a ``ROWS`` line: its tokens not handled yet
        (``rest``, from ``first``) go first among the held lines, before the lines after
        it."""
        if rest:
            self._held.append(HeldTokens(stream, origin, first, rest))

    def lineReceived(self, line: bytes) -> None:
        if type(line) is HeldTokens:
            self._submit_tokens(line)
            return
        if line[:6] == b"RDATA ":
            parts = line.split(b" ", 3)
            self._row_size = len(parts[3]) if len(parts) == 4 else 0
        super().lineReceived(line)

    def _rdata(
        self, key: str, stream: str, origin: str | None, token: int | None, row: Any
    ) -> None:
        """One ``RDATA`` row by the general path (the reference for :meth:`linesReceived`)."""
        try:
            done = self.assembler.add(key, token, row, self._row_size)
        except AssemblyError as e:
            self.send_error(str(e))
            return
        if done is not None:
            self.runner.submit(stream, *done, origin)

    def on_POSITION(self, command: PositionCommand) -> None:
        keyed = self._key(command)
        stream, token = command.stream, command.token
        if keyed is None or not self._followed(stream, "POSITION"):
            return
        key, origin = keyed
        if origin is not None and not self._route(stream, origin):
            return
        try:
            check = self.assembler.position(key, token)
        except AssemblyError as e:
            self.send_error(str(e))
            return
        if check.reset:
            # A master that lost history, or a substitute for RESET: handled as RESET is,
            # but the stream goes on live from ``token`` (nothing before it is replayed).
            self.runner.reset(stream, token, replay=False, origin=origin)
        self.runner.caught_up(stream, token, origin)
        self.worker.catchup.caught_up(key, token)

    def on_GAP(self, command: GapCommand) -> None:
        keyed = self._key(command)
        if keyed is not None and self._followed(command.stream, "GAP"):
            key, origin = keyed
            if origin is not None and not self._route(command.stream, origin):
                return
            try:
                self.assembler.gap(key, command.first, command.last)
            except AssemblyError as e:
                self.send_error(str(e))
                return
            self.runner.gap(command.stream, command.first, command.last, origin)

    def on_RESET(self, command: ResetCommand) -> None:
        keyed = self._key(command)
        if keyed is not None and self._followed(command.stream, "RESET"):
            key, origin = keyed
            if origin is not None and not self._route(command.stream, origin):
                return
            try:
                self.assembler.reset(key)
            except AssemblyError as e:
                self.send_error(str(e))
                return
            self.runner.reset(command.stream, command.head, origin=origin)

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
