"""The asyncio publisher client: :class:`AsyncPublisher`, whose publishes are awaited.

The same rules as the blocking client (:mod:`replication.client.blocking`): publishes are
pipelined on one connection and answered in order; a drop resends what was in flight, with
its idempotency keys, to the same master for up to ``retry_for`` seconds, and only
publishes never sent go to another master (in random order).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from typing import Any

from replication.client.core import (
    ClientSettings,
    MasterUnreachable,
    ProtocolViolation,
    Published,
    PublisherCore,
    PublishError,
    PublishRefused,
    PublishTimeout,
    lost_in_flight,
    new_core,
    restarted_in_flight,
)
from replication.wire.auth import ClientCredential

_Waiter = asyncio.Future[Published]


class AsyncPublisher:
    """A reconnecting publisher on the running asyncio loop.

    :param master: ``host:port`` (or ``tcp:host:port``), or a list of them (a cluster).
    :param name, timeout, connect_timeout, retry_for, idempotent: as for
        :class:`~replication.client.blocking.Publisher`.

    ``await publish(...)`` and ``await publish_tokens(...)`` return
    :class:`~replication.client.core.Published`; :meth:`submit` returns an
    ``asyncio.Future`` at once (pipelining). Use ``async with``, or ``await close()``.
    """

    def __init__(
        self,
        master: str | Sequence[str],
        *,
        name: str | None = None,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        retry_for: float | None = None,
        idempotent: bool = True,
        credential: ClientCredential | None = None,
    ) -> None:
        settings = ClientSettings.build(
            "an AsyncPublisher", master, timeout, connect_timeout, retry_for
        )
        self.endpoints = settings.endpoints
        self.timeout = settings.timeout
        self.connect_timeout = settings.connect_timeout
        self.retry_for = settings.retry_for
        self._core: PublisherCore[_Waiter] = new_core(name, idempotent, credential)
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connect_lock: asyncio.Lock | None = None
        self._endpoint: tuple[str, int] | None = None
        self._lost: list[Any] = []
        self._lost_at = 0.0
        self._closed = False

    @property
    def origin(self) -> str | None:
        return self._core.origin

    async def publish(
        self, stream: str, rows: Sequence[Any], *, key: str | None = None,
        timeout: float | None = None,
    ) -> Published:
        """Publish ``rows`` to ``stream`` as one token."""
        return await self._wait(await self._send(stream, rows, key, False), timeout)

    async def publish_tokens(
        self, stream: str, tokens_rows: Sequence[Sequence[Any]], *, key: str | None = None,
        timeout: float | None = None,
    ) -> Published:
        """Publish several tokens at once, all or none, consecutive."""
        return await self._wait(await self._send(stream, tokens_rows, key, True), timeout)

    async def submit(
        self, stream: str, rows: Sequence[Any], *, key: str | None = None
    ) -> asyncio.Future[Published]:
        """Send a publish and return the future of its answer without waiting for it."""
        return await self._send(stream, rows, key, False)

    async def publish_all(
        self, stream: str, batches: Sequence[Sequence[Any]], *, timeout: float | None = None
    ) -> list[Published]:
        """Publish each of ``batches`` as its own token, pipelined (``PUBLISH_BATCH`` lines
        to a master that takes them), and wait for them all; the first error is raised once
        every answer is in (as :meth:`replication.client.Publisher.publish_all`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        waiters = await self._send_all(stream, batches)
        results: list[Published] = []
        error: PublishError | None = None
        for waiter in waiters:
            try:
                results.append(await self._wait(waiter, max(deadline - loop.time(), 0.0)))
            except PublishError as e:
                error = error or e
        if error is not None:
            raise error
        return results

    async def close(self) -> None:
        self._closed = True
        pending = self._core.reset() + self._lost
        self._lost = []
        for entry in pending:
            _settle(entry.waiter, MasterUnreachable("the publisher was closed",
                                                    maybe_committed=True, key=entry.key))
        writer, self._writer = self._writer, None
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- internals ---------------------------------------------------------------------

    async def _wait(self, waiter: _Waiter, timeout: float | None) -> Published:
        seconds = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), seconds)
        except TimeoutError:
            key = getattr(waiter, "publish_key", None)
            _settle(waiter, PublishTimeout(
                f"no answer within {seconds:g}s; it may still be committed: publish again "
                f"with key={key!r} to find out", key=key,
            ))
            raise PublishTimeout(f"no answer within {seconds:g}s", key=key) from None

    async def _send(self, stream: str, rows: Any, key: str | None, many: bool) -> _Waiter:
        loop = asyncio.get_running_loop()
        waiter: _Waiter = loop.create_future()
        if self._closed:
            raise MasterUnreachable("the publisher is closed")
        core = self._core
        if key is None:
            key = core.new_key()
        waiter.publish_key = key  # type: ignore[attr-defined]
        line = core.publish_line(stream, rows, key, many)
        if self._writer is None or self._lost:
            await self._connect(loop.time() + self.timeout)
        writer = self._writer
        assert writer is not None
        core.sent(stream, line, key, many, waiter)
        writer.write(line)
        if writer.transport.get_write_buffer_size() > 1 << 20:
            await writer.drain()
        return waiter

    async def _send_all(self, stream: str, batches: Sequence[Sequence[Any]]) -> list[_Waiter]:
        """Send one publish per batch, in as few lines as the master takes; their futures,
        in order (a publish refused before it is sent has its future failed)."""
        loop = asyncio.get_running_loop()
        if self._closed:
            raise MasterUnreachable("the publisher is closed")
        if self._writer is None or self._lost:
            await self._connect(loop.time() + self.timeout)
        core = self._core
        built = core.publish_lines(stream, batches)
        if built is None:  # something unusual: one by one, each refused on its own
            waiters = []
            for rows in batches:
                try:
                    waiters.append(await self._send(stream, rows, None, False))
                except PublishRefused as e:
                    failed: _Waiter = loop.create_future()
                    failed.set_exception(e)
                    waiters.append(failed)
            return waiters
        waiters = [loop.create_future() for _ in built.keys]
        for waiter, key in zip(waiters, built.keys, strict=True):
            waiter.publish_key = key  # type: ignore[attr-defined]
        writer = self._writer
        assert writer is not None
        core.sent_many(stream, built, waiters)
        writer.write(built.out)
        if writer.transport.get_write_buffer_size() > 1 << 20:
            await writer.drain()
        return waiters

    async def _connect(self, deadline: float) -> None:
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            loop = asyncio.get_running_loop()
            delay = 0.05
            last_error = "no master tried"
            while self._writer is None or self._lost:
                if self._closed:
                    raise MasterUnreachable("the publisher is closed")
                if self._lost:
                    if loop.time() - self._lost_at > self.retry_for:
                        self._give_up_lost()
                        continue
                    assert self._endpoint is not None
                    order = [self._endpoint]
                else:
                    order = list(self.endpoints)
                    random.shuffle(order)
                for endpoint in order:
                    try:
                        await self._open(endpoint)
                    except (TimeoutError, OSError, PublishError) as e:
                        last_error = f"{endpoint[0]}:{endpoint[1]}: {e}"
                        continue
                    break
                else:
                    if loop.time() + delay > deadline:
                        raise MasterUnreachable(f"no master reachable ({last_error})")
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)

    async def _open(self, endpoint: tuple[str, int]) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(*endpoint), self.connect_timeout
        )
        core = self._core
        core.reset()
        try:
            writer.write(core.hello())

            async def handshake() -> None:
                while not core.ready:
                    data = await reader.read(65536)
                    if not data:
                        raise MasterUnreachable("the master closed the connection")
                    if core.feed(data):
                        raise ProtocolViolation("an answer before the handshake ended")
                    out = core.take_output()
                    if out:
                        writer.write(out)

            await asyncio.wait_for(handshake(), self.connect_timeout)
        except BaseException:
            writer.close()
            raise
        self._writer = writer
        self._endpoint = endpoint
        lost, self._lost = self._lost, []
        out = []
        resend, restarted = core.resendable([e for e in lost if not e.waiter.done()])
        for entry in restarted:
            _settle(entry.waiter, restarted_in_flight(endpoint, entry.key))
        out.extend([core.resend(entry) for entry in resend])
        if out:
            writer.write(b"".join(out))
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader, writer))

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        core = self._core
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(262144), self.timeout)
                except TimeoutError:
                    if core.in_flight:
                        break  # silent with publishes in flight: take it for dead
                    continue
                if not data:
                    break
                for waiter, outcome in core.feed(data):
                    _settle(waiter, outcome)
        except (OSError, ProtocolViolation):
            pass
        if writer is not self._writer:
            return
        self._writer = None
        writer.close()
        lost = core.reset()
        if lost:
            if not self._lost:
                self._lost_at = loop.time()
            self._lost.extend(lost)
            if not self._closed:
                loop.create_task(self._recover())

    async def _recover(self) -> None:
        """Resend what a drop left in flight (to the same master), without waiting for the
        next publish."""
        loop = asyncio.get_running_loop()
        try:
            await self._connect(loop.time() + self.retry_for)
        except PublishError as e:
            for entry in self._lost:
                _settle(entry.waiter, e)
            self._lost = []

    def _give_up_lost(self) -> None:
        lost, self._lost = self._lost, []
        for entry in lost:
            _settle(entry.waiter, lost_in_flight(self._endpoint, self.retry_for, entry.key))


def _settle(waiter: _Waiter, outcome: Published | PublishError) -> None:
    if waiter.done():
        return
    if isinstance(outcome, PublishError):
        waiter.set_exception(outcome)
    else:
        waiter.set_result(outcome)
