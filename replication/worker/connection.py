"""One connection of a worker to its master.

:class:`WorkerConnection` is one connection to the master (the lasting state is
:class:`~replication.worker.service.Worker`'s): after the
handshake it sends one ``REPLICATE`` per configured stream (from the recorded position, or
from the start or from now for a stream it never saw), gathers the ``RDATA`` rows of each
token, drops tokens at or below the recorded position, calls the handler, and records the
position only after the handler succeeded.

Handler failures: the token is not recorded; the worker logs the error and calls the handler
again with the same token after a delay that doubles from 1 s up to
``handler_retry_max_delay``, holding back everything after it meanwhile (so order is kept).
If the connection is lost meanwhile, the next connection starts again from the recorded
position.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from replication.commands import (
    WORKER,
    ErrorCommand,
    GapCommand,
    PositionCommand,
    RdataCommand,
    ResetCommand,
    json_loader,
)
from replication.protocol import ReplicationProtocol
from replication.streams import AssemblyError, TokenAssembler
from replication.worker.handlers import Handler

if TYPE_CHECKING:
    from replication.worker.service import Worker

log = logging.getLogger(__name__)

FIRST_RETRY_DELAY = 1.0
_NOT_CALLED = object()


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
        )
        self.worker = worker
        self.assembler = TokenAssembler()
        self._followed_bytes = {name.encode(): name for name in worker.streams}
        self._retry_call: IDelayedCall | None = None
        self._retry_delay = FIRST_RETRY_DELAY
        self._busy = False
        self._lost = False
        #: RDATA lines taken by the fast path of :meth:`lineReceived` (for metrics).
        self.rdata_received = 0
        self._handler_started = 0.0

    def command_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        received, sent = super().command_counts()
        if self.rdata_received:
            received["RDATA"] = received.get("RDATA", 0) + self.rdata_received
        return received, sent

    def handshake_done(self) -> None:
        log.info("connected to master %s", self.peer_name)
        self.worker.connection = self
        self.worker.metrics.connected(self)
        for command in self.worker.replicate_commands():
            self.send(command)
        if self.worker.busy:
            # A handler call from the previous connection is still running: nothing from
            # this connection may be handled before it ends and its position is recorded.
            self.hold_input()
            self.worker.when_idle(self._previous_handler_done)

    def _previous_handler_done(self) -> None:
        if not self._lost and not self._busy:
            self.release_input()

    def closed(self, reason: str) -> None:
        self.worker.metrics.connection_closed(self, reason)
        self._lost = True
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        if self.worker.connection is self:
            self.worker.connection = None
        log.info("disconnected from master %s: %s", self.peer_name or "?", reason)

    def _followed(self, stream: str, what: str) -> bool:
        if stream in self.worker.streams:
            return True
        log.warning("master sent %s for %s, which this worker does not follow", what, stream)
        return False

    # -- commands ----------------------------------------------------------------------

    def linesReceived(self, lines: list[bytes], data: bytes | None) -> None:
        """The hot path. ``RDATA`` lines of followed streams, with a ``batch`` or numeric
        token in order, are parsed (split, token, strict JSON) and gathered here directly,
        and each complete token goes straight to the handler, without building command
        objects. Anything else (other commands, unfollowed streams, malformed lines,
        tokens out of order) takes the general path of :meth:`lineReceived`, which parses
        it fully and answers errors; so does everything after a handler that did not just
        return ``None``. It keeps the contract of the base class: once input is held, the
        remaining lines are held, in order."""
        if self.peer_name is None or self._closing:
            super().linesReceived(lines, data)
            return
        loads = json_loader(data)
        max_line = self.max_line_bytes
        followed = self._followed_bytes
        partial = self.assembler.partial
        last_tokens = self.assembler.last
        worker = self.worker
        heads = worker.heads
        positions = worker.positions
        handler = worker.handler
        handler_done = worker.metrics.handler_done
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
                            try:
                                row = loads(parts[3])
                            except ValueError:
                                pass  # the general path decides, and answers errors
                            else:
                                fast += 1
                                gathered = partial.get(stream)
                                if gathered is None:
                                    partial[stream] = [row]
                                else:
                                    gathered.append(row)
                                continue
                        elif token_text.isdigit() and len(token_text) <= 19:
                            token = int(token_text)
                            last = last_tokens.get(stream)
                            decoded = last is None or token > last  # else: general path
                            if decoded:
                                try:
                                    row = loads(parts[3])
                                except ValueError:
                                    decoded = False
                            if decoded:
                                fast += 1
                                last_tokens[stream] = token
                                rows = partial.pop(stream, None)
                                if rows is None:
                                    rows = [row]
                                else:
                                    rows.append(row)
                                if token > heads.get(stream, 0):
                                    heads[stream] = token
                                position = positions.get(stream)
                                if position is not None and token <= position:
                                    log.debug("dropping %s token %d: already handled (position %d)",
                                              stream, token, position)
                                    continue
                                started = seconds()
                                try:
                                    result = handler(stream, token, rows)
                                except Exception:
                                    result = Failure()
                                if result is None:
                                    positions.set(stream, token)
                                    handler_done(stream, seconds() - started)
                                    self._retry_delay = FIRST_RETRY_DELAY
                                    continue
                                self._handler_started = started
                                self._handler_returned(handler, stream, token, rows, result)
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

    def _rdata(self, stream: str, token: int | None, row: Any) -> None:
        """One ``RDATA`` row by the general path (the reference for :meth:`linesReceived`)."""
        try:
            done = self.assembler.add(stream, token, row)
        except AssemblyError as e:
            self.send_error(str(e))
            return
        if done is None:
            return
        token, rows = done
        worker = self.worker
        heads = worker.heads
        if token > heads.get(stream, 0):
            heads[stream] = token
        position = worker.positions.get(stream)
        if position is not None and token <= position:
            log.debug("dropping %s token %d: already handled (position %d)", stream, token, position)
            return
        handler = worker.handler
        self._handler_started = started = self.clock.seconds()
        try:
            result = handler(stream, token, rows)
        except Exception:
            result = Failure()
        if result is None:
            worker.positions.set(stream, token)
            self._retry_delay = FIRST_RETRY_DELAY
            worker.metrics.handler_done(stream, self.clock.seconds() - started)
            return
        self._handler_returned(handler, stream, token, rows, result)

    def _handler_returned(
        self, handler: Handler, stream: str, token: int, rows: list[Any], result: Any
    ) -> None:
        """The handler returned something other than ``None`` (an awaitable, or by mistake
        a value) or raised (``result`` is the Failure): wait for it, or retry it."""
        self._run(
            lambda: handler(stream, token, rows), stream, token, f"token {token}",
            first_result=result,
        )

    def on_POSITION(self, command: PositionCommand) -> None:
        stream, token = command.stream, command.token
        if not self._followed(stream, "POSITION"):
            return
        self.worker.heads[stream] = token
        position = self.worker.positions.get(stream)
        if position is None or position < token:
            # Subscribed with NOW (no rows before this point are wanted), or the master says
            # nothing lies between our position and its head.
            self.worker.positions.set(stream, token)

    def on_GAP(self, command: GapCommand) -> None:
        stream, first, last = command.stream, command.first, command.last
        if not self._followed(stream, "GAP"):
            return
        log.warning("%s: tokens %d..%d were dropped by the master's retention", stream, first, last)
        hook = getattr(self.worker.handler, "gap", None)
        call: Callable[[], Any] = (lambda: hook(stream, first, last)) if hook else (lambda: None)
        self._run(call, stream, last, f"gap {first}..{last}")

    def on_RESET(self, command: ResetCommand) -> None:
        stream, head = command.stream, command.head
        if not self._followed(stream, "RESET"):
            return
        old = self.worker.positions.get(stream) or 0
        log.warning(
            "%s: the master's head %d is behind this worker's position %d; its history was "
            "lost or replaced: replaying the stream from the start", stream, head, old,
        )
        self.assembler.discard(stream)
        hook = getattr(self.worker.handler, "reset", None)
        call: Callable[[], Any] = (lambda: hook(stream, old, head)) if hook else (lambda: None)
        self._run(call, stream, 0, f"reset to {head}", force=True)

    def on_ERROR(self, command: ErrorCommand) -> None:
        log.error("master %s sent ERROR %s", self.peer_name, command.message)

    # -- running the handler -----------------------------------------------------------

    def _run(
        self, call: Callable[[], Any], stream: str, position: int, what: str,
        force: bool = False, first_result: Any = _NOT_CALLED,
    ) -> None:
        """Run ``call`` (unless ``first_result`` is what it already returned, or the
        Failure it raised); when it succeeds, record ``position`` for ``stream`` (lower than
        the current one only when ``force``). While it is pending or waiting for a retry,
        input is held so that nothing overtakes it."""
        if first_result is _NOT_CALLED:
            self._handler_started = self.clock.seconds()
            try:
                result = call()
            except Exception:
                self._failed(Failure(), call, stream, position, what, force)
                return
        elif isinstance(first_result, Failure):
            self._failed(first_result, call, stream, position, what, force)
            return
        else:
            result = first_result
        if inspect.isawaitable(result):
            deferred: Deferred[Any] = (
                result if isinstance(result, Deferred) else ensureDeferred(result)  # type: ignore[arg-type]
            )
            self._busy = True
            self.hold_input()
            self.worker.handler_started()
            deferred.addCallbacks(
                lambda _: self._done(stream, position, force),
                lambda f: self._failed(f, call, stream, position, what, force),
            )
            deferred.addBoth(lambda _: self.worker.handler_finished())
            return
        self._done(stream, position, force)

    def _done(self, stream: str, position: int, force: bool) -> None:
        self.worker.metrics.handler_done(stream, self.clock.seconds() - self._handler_started)
        self._retry_delay = FIRST_RETRY_DELAY
        current = self.worker.positions.get(stream)
        if force or current is None or position > current:
            self.worker.positions.set(stream, position)
        if self._busy:
            self._busy = False
            if not self._lost:
                self.release_input()

    def _failed(
        self, failure: Failure, call: Callable[[], Any], stream: str, position: int, what: str,
        force: bool,
    ) -> None:
        self.worker.metrics.handler_failed(stream, self.clock.seconds() - self._handler_started)
        delay = self._retry_delay
        self._retry_delay = min(delay * 2, self.worker.config.handler_retry_max_delay)
        log.error(
            "handler failed on %s %s; retrying in %.1fs\n%s",
            stream, what, delay, failure.getTraceback(),
        )
        if self._lost:
            return
        self._busy = True
        self.hold_input()
        self._retry_call = self.clock.callLater(
            delay, self._retry, call, stream, position, what, force
        )

    def _retry(
        self, call: Callable[[], Any], stream: str, position: int, what: str, force: bool
    ) -> None:
        self._retry_call = None
        self._run(call, stream, position, what, force)


class WorkerFactory(Factory):
    """Builds a :class:`WorkerConnection` for each connection to the master."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def buildProtocol(self, addr: IAddress) -> WorkerConnection:
        return WorkerConnection(self.worker)
