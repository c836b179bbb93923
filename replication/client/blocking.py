"""The blocking publisher client: :class:`Publisher`, for code that runs no reactor (a
Django or Flask view, a Celery task, a script).

How it uses threads (measured: see docs/publishing.rst, "How the blocking client works"):
a publish is written by the calling thread, under a lock, straight to the socket; then the
caller reads the answers itself while nobody else is reading (leader/follower: whoever holds
the read lock reads and completes every answer that arrives, its own and others'), which
keeps one round trip free of thread hand-offs (about 20 µs of Python instead of 55 through
a reader thread). A background thread reads only for futures nobody waits on
(:meth:`Publisher.submit`). No reactor is involved.

Reconnection and failover: a connection that drops (or stays silent past ``timeout`` with
publishes in flight) is replaced at the next need. Publishes that were sent and not
answered are sent again, with their idempotency keys, **to the same master** for up to
``retry_for`` seconds (its key window answers the ones it had committed with their original
tokens); only publishes that were never sent go to another master, in random order. A
publish whose master does not come back fails with :class:`MasterUnreachable` with
``maybe_committed=True`` and its ``key``, rather than risk storing it twice.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any, Literal, overload

from replication.client.core import (
    Built,
    ClientSettings,
    MasterUnreachable,
    ProtocolViolation,
    Published,
    PublisherCore,
    PublishError,
    PublishTimeout,
    lost_in_flight,
    new_core,
    restarted_in_flight,
)
from replication.wire.auth import ClientCredential


class PublishFuture(Future[Published]):
    """A future of a publish; ``key`` is its idempotency key (``None``: it has none)."""

    key: str | None = None


class _Waiter:
    """What a blocking call waits on: cheaper than a future (no lock of its own); the
    thread reading completes it, and waiting threads that are not reading are woken through
    the publisher's one condition."""

    __slots__ = ("key", "outcome")

    def __init__(self, key: str | None) -> None:
        self.key = key
        self.outcome: Published | BaseException | None = None

    def done(self) -> bool:
        return self.outcome is not None


_Future = PublishFuture | _Waiter
_READ_BYTES = 262144
#: The longest a reader waits in one poll, so that it notices deadlines and a close.
_POLL_SECONDS = 0.05
#: After ``n`` polls in a row that caught nothing, the next ``2 ** n`` reads sleep at once.
_SPIN_BACKOFF = 6


class Publisher:
    """A thread-safe, reconnecting publisher to one master or a cluster of masters.

    :param master: an endpoint (``host:port``, ``tcp:host:port``) or a list of them (the
        masters of a cluster: tried in random order).
    :param name: what the publisher calls itself to the master (its logs and metrics);
        default ``publisher-<host>-<pid>``.
    :param timeout: seconds a publish may wait for its answer, connecting included, before
        :class:`PublishTimeout`; also how long a connection with publishes in flight may stay
        silent before it is taken for dead.
    :param connect_timeout: seconds one connection attempt (TCP and handshake) may take.
    :param retry_for: seconds to keep trying the same master for publishes whose answer a
        drop lost (default ``timeout``).
    :param credential: what the publisher authenticates with (a
        :class:`~replication.wire.auth.ClientCredential`; see docs/security.rst).
    :param idempotent: give every publish an idempotency key (default), so that a resent
        publish is never stored twice.
    :param spin: seconds the thread waiting for an answer polls the socket before it sleeps
        (default 0.0005; 0 never polls). Answers that come within it skip the cost of
        waking a sleeping thread; the polling backs off by itself when answers come
        slower (see :meth:`_receive`).

    ``publish`` and ``publish_tokens`` block until the answer; ``submit`` and
    ``submit_tokens`` return a :class:`concurrent.futures.Future` at once (pipelining: many
    publishes in flight on one connection). Use it as a context manager, or call
    :meth:`close`.
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
        spin: float = 0.0005,
    ) -> None:
        settings = ClientSettings.build(
            "a Publisher", master, timeout, connect_timeout, retry_for
        )
        self.endpoints = settings.endpoints
        self.timeout = settings.timeout
        self.connect_timeout = settings.connect_timeout
        self.retry_for = settings.retry_for
        if not 0.0 <= spin <= 0.1:
            raise ValueError(f"spin must be between 0 and 0.1 seconds, not {spin!r}")
        self.spin = spin
        self._spin_misses = 0
        self._spin_skip = 0
        self._core: PublisherCore[_Future] = new_core(name, idempotent, credential)
        self._lock = threading.RLock()
        self._read_lock = threading.Lock()
        self._sock: socket.socket | None = None
        #: The master of the current (or the lost) connection.
        self._endpoint: tuple[str, int] | None = None
        #: Publishes a drop left unanswered: resent to ``_endpoint`` before anything else.
        self._lost: list[Any] = []
        self._lost_at = 0.0
        self._last_read = 0.0
        self._closed = False
        self._unattended = 0
        self._wake = threading.Condition(threading.Lock())
        #: Threads waiting for an answer while another reads, and what wakes them.
        self._followers = 0
        self._progress = threading.Condition(threading.Lock())
        self._thread = threading.Thread(
            target=self._background, name="replication-publisher", daemon=True
        )
        self._thread.start()

    # -- the API ---------------------------------------------------------------------------

    @property
    def origin(self) -> str | None:
        """The origin id of the master connected to now (``None``: not connected)."""
        return self._core.origin

    def publish(
        self, stream: str, rows: Sequence[Any], *, key: str | None = None,
        timeout: float | None = None,
    ) -> Published:
        """Publish ``rows`` (JSON values) to ``stream`` as one token; returns once committed.
        Raises :class:`PublishRefused`, :class:`MasterUnreachable` or
        :class:`PublishTimeout`."""
        return self._wait(self._send(stream, rows, key, False, attended=True), timeout)

    def publish_tokens(
        self, stream: str, tokens_rows: Sequence[Sequence[Any]], *, key: str | None = None,
        timeout: float | None = None,
    ) -> Published:
        """Publish several tokens at once (each a list of rows), all or none, with
        consecutive tokens (``result.tokens``)."""
        return self._wait(self._send(stream, tokens_rows, key, True, attended=True), timeout)

    def submit(self, stream: str, rows: Sequence[Any], *, key: str | None = None) -> _Future:
        """:meth:`publish` without waiting: a future of the result. Publishes submitted
        one after another are pipelined on one connection and answered in order."""
        return self._send(stream, rows, key, False, attended=False)

    def submit_tokens(
        self, stream: str, tokens_rows: Sequence[Sequence[Any]], *, key: str | None = None
    ) -> _Future:
        """:meth:`publish_tokens` without waiting."""
        return self._send(stream, tokens_rows, key, True, attended=False)

    def publish_all(
        self, stream: str, batches: Sequence[Sequence[Any]], *, timeout: float | None = None
    ) -> list[Published]:
        """Publish each of ``batches`` as its own token, pipelined (written to the socket at
        once), and wait for them all; the first error is raised once every answer is in."""
        waiters = self._send_many(stream, batches)
        results = []
        error: BaseException | None = None
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        if waiters:
            # Answers come in order: once the last is in, so are the others, as a rule.
            with contextlib.suppress(PublishError):
                self._wait(waiters[-1], max(deadline - time.monotonic(), 0.0))
        for waiter in waiters:
            outcome = waiter.outcome
            if isinstance(outcome, Published):
                results.append(outcome)
                continue
            try:
                results.append(self._wait(waiter, max(deadline - time.monotonic(), 0.0)))
            except PublishError as e:
                error = error or e
        if error is not None:
            raise error
        return results

    def close(self) -> None:
        """Close the connection; publishes still in flight fail with
        :class:`MasterUnreachable` (``maybe_committed``)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = self._core.reset() + self._lost
            self._lost = []
            if self._sock is not None:
                self._sock.close()
                self._sock = None
        for entry in pending:
            _settle(entry.waiter, MasterUnreachable(
                "the publisher was closed with this publish in flight", maybe_committed=True,
                key=entry.key,
            ))
        with self._wake:
            self._wake.notify_all()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending -----------------------------------------------------------------------

    @overload
    def _send(self, stream: str, rows: Any, key: str | None, many: bool, *,
              attended: Literal[True]) -> _Waiter: ...

    @overload
    def _send(self, stream: str, rows: Any, key: str | None, many: bool, *,
              attended: Literal[False]) -> PublishFuture: ...

    def _send(
        self, stream: str, rows: Any, key: str | None, many: bool, *, attended: bool
    ) -> _Future:
        future: _Future
        deadline = time.monotonic() + self.timeout
        with self._lock:
            if self._closed:
                raise MasterUnreachable("the publisher is closed")
            core = self._core
            if key is None:
                key = core.new_key()
            if attended:
                future = _Waiter(key)
            else:
                future = PublishFuture()
                future.key = key
            try:
                line = core.publish_line(stream, rows, key, many)
                if self._sock is not None and not core.in_flight:
                    self._check_idle(self._sock)
                if self._sock is None:
                    self._connect(deadline)
            except PublishError as e:
                _settle(future, e)
                return future
            if isinstance(future, PublishFuture):
                self._unattended += 1
                future.add_done_callback(self._attended)
            core.sent(stream, line, key, many, future)
            sock = self._sock
            assert sock is not None
            try:
                sock.sendall(line)
            except OSError as e:
                self._drop(sock, f"sending failed: {e}")
        if not attended:
            with self._wake:
                self._wake.notify()
        return future

    def _send_many(self, stream: str, batches: Sequence[Sequence[Any]]) -> list[_Waiter]:
        """Send one publish per batch, ``_SEND_CHUNK`` at a time, each chunk sent before the
        next is encoded so that the master works on one while this thread encodes the next
        (``PUBLISH_BATCH`` lines to a master that takes them: the connection is made first,
        so its ``PUBLISHING`` is known); their waiters, in order."""
        deadline = time.monotonic() + self.timeout
        waiters: list[_Waiter] = []
        with self._lock:
            if self._closed:
                raise MasterUnreachable("the publisher is closed")
            core = self._core
            for start in range(0, len(batches), _SEND_CHUNK):
                part = batches[start:start + _SEND_CHUNK]
                try:
                    if self._sock is not None and not core.in_flight:
                        self._check_idle(self._sock)
                    if self._sock is None:
                        self._connect(deadline)
                except PublishError as e:
                    for _ in part:
                        waiter = _Waiter(None)
                        _settle(waiter, e)
                        waiters.append(waiter)
                    continue
                built = core.publish_lines(stream, part)
                if built is not None:
                    sending = [_Waiter(key) for key in built.keys]
                    waiters.extend(sending)
                else:
                    sending, keys, lines = [], [], []
                    for rows in part:
                        waiter = _Waiter(core.new_key())
                        waiters.append(waiter)
                        try:
                            lines.append(core.publish_line(stream, rows, waiter.key, False))
                        except PublishError as e:
                            _settle(waiter, e)
                            continue
                        sending.append(waiter)
                        keys.append(waiter.key)
                    built = Built(keys, lines, [-1] * len(lines), b"".join(lines))
                if not sending:
                    continue
                core.sent_many(stream, built, sending)
                sock = self._sock
                assert sock is not None
                try:
                    sock.sendall(built.out)
                except OSError as e:
                    self._drop(sock, f"sending failed: {e}")
        return waiters

    def _check_idle(self, sock: socket.socket) -> None:
        """With nothing in flight nobody reads: read what waits (pings), and notice a
        connection the master closed meanwhile, before a publish is sent into it (whose
        fate would then be unknown)."""
        if not self._read_lock.acquire(blocking=False):
            return
        try:
            while True:
                try:
                    data = sock.recv(_READ_BYTES, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    return
                if not data:
                    self._drop(sock, "closed by the master")
                    return
                if self._core.feed(data):
                    raise ProtocolViolation("an answer with nothing in flight")
        except (OSError, ValueError, ProtocolViolation) as e:
            self._drop(sock, str(e))
        finally:
            self._read_lock.release()

    def _attended(self, _: Future[Published]) -> None:
        with self._lock:
            self._unattended -= 1

    # -- connecting --------------------------------------------------------------------

    def _connect(self, deadline: float) -> None:
        """Connect (with ``_lock`` held), first to the master that holds lost publishes,
        then to the others in random order, until ``deadline``; resend what a drop lost."""
        delay = 0.05
        last_error = "no master tried"
        while True:
            if self._lost:
                if time.monotonic() - self._lost_at > self.retry_for:
                    self._give_up_lost()
                    continue
                assert self._endpoint is not None
                order = [self._endpoint]
            else:
                order = list(self.endpoints)
                random.shuffle(order)
                if self._endpoint in order:  # stay where we were while it works
                    order.remove(self._endpoint)
                    order.insert(0, self._endpoint)
            for endpoint in order:
                try:
                    self._open(endpoint)
                except (OSError, PublishError) as e:
                    last_error = f"{endpoint[0]}:{endpoint[1]}: {e}"
                    continue
                return
            if time.monotonic() + delay > deadline:
                raise MasterUnreachable(f"no master reachable ({last_error})")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _open(self, endpoint: tuple[str, int]) -> None:
        sock = socket.create_connection(endpoint, timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            core = self._core
            core.reset()
            sock.sendall(core.hello())
            until = time.monotonic() + self.connect_timeout
            while not core.ready:
                sock.settimeout(max(until - time.monotonic(), 0.001))
                data = sock.recv(_READ_BYTES)
                if not data:
                    raise MasterUnreachable("the master closed the connection in the handshake")
                if core.feed(data):
                    raise ProtocolViolation("an answer before the handshake ended")
                out = core.take_output()
                if out:
                    sock.sendall(out)
            # Blocking from here, with the kernel's timeouts: reads end after _POLL_SECONDS so
            # the reader sees deadlines; a send that stalls for ``timeout`` fails.
            sock.settimeout(None)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(_POLL_SECONDS))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(self.timeout))
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._endpoint = endpoint
        self._last_read = time.monotonic()
        lost, self._lost = self._lost, []
        resend, restarted = core.resendable([e for e in lost if not e.waiter.done()])
        for entry in restarted:
            _settle(entry.waiter, restarted_in_flight(f"{endpoint[0]}:{endpoint[1]}", entry.key))
        if resend:
            sock.sendall(b"".join([core.resend(entry) for entry in resend]))

    def _drop(self, sock: socket.socket, why: str) -> None:
        """The connection ``sock`` is gone: keep what was in flight for the same master."""
        with self._lock:
            if sock is not self._sock:
                return
            sock.close()
            self._sock = None
            lost = self._core.reset()
            if lost:
                if not self._lost:
                    self._lost_at = time.monotonic()
                self._lost.extend(lost)

    def _give_up_lost(self) -> None:
        lost, self._lost = self._lost, []
        endpoint = self._endpoint
        for entry in lost:
            _settle(entry.waiter, lost_in_flight(endpoint, self.retry_for, entry.key))

    # -- reading -----------------------------------------------------------------------

    def _wait(self, future: _Future, timeout: float | None) -> Published:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not future.done():
            now = time.monotonic()
            if now >= deadline:
                _settle(future, PublishTimeout(
                    f"no answer within {self.timeout if timeout is None else timeout:g}s; "
                    f"it may still be committed: publish again with key={future.key!r} to "
                    "find out",
                    key=future.key,
                ))
                break
            if self._read_lock.acquire(blocking=False):
                try:
                    self._read(future, deadline)
                finally:
                    self._read_lock.release()
                    if self._followers:
                        with self._progress:
                            self._progress.notify_all()  # one of them may read now
            else:
                with self._progress:
                    self._followers += 1
                    try:
                        if not future.done() and self._read_lock.locked():
                            self._progress.wait(min(deadline - now, _POLL_SECONDS))
                    finally:
                        self._followers -= 1
        if isinstance(future, PublishFuture):
            return future.result()
        outcome = future.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        assert outcome is not None
        return outcome

    def _read(self, future: _Future | None, deadline: float) -> None:
        """Read and complete answers (holding ``_read_lock``) until ``future`` is done (or,
        without one, while unattended publishes wait), or ``deadline``."""
        while True:
            if future is not None and future.done():
                return
            if future is None and (self._unattended <= 0 or self._closed):
                return
            now = time.monotonic()
            if now >= deadline:
                return
            sock = self._sock
            if sock is None:
                with self._lock:
                    if self._closed:
                        return
                    if self._sock is None:
                        try:
                            self._connect(deadline)
                        except PublishError as e:
                            for entry in self._core.reset() + self._lost:
                                _settle(entry.waiter, e)
                            self._lost = []
                            return
                continue
            try:
                data = self._receive(sock, attended=future is not None)
            except (BlockingIOError, InterruptedError, TimeoutError):
                if self._core.in_flight and time.monotonic() - self._last_read > self.timeout:
                    self._drop(sock, "silent with publishes in flight")
                continue
            except (OSError, ValueError) as e:
                self._drop(sock, str(e))
                continue
            if not data:
                self._drop(sock, "closed by the master")
                continue
            self._last_read = time.monotonic()
            try:
                done = self._core.feed(data)
            except ProtocolViolation:
                self._drop(sock, "protocol violation")
                continue
            for waiter, outcome in done:
                _settle(waiter, outcome)
            if self._followers and done:
                with self._progress:
                    self._progress.notify_all()

    def _receive(self, sock: socket.socket, attended: bool = True) -> bytes:
        """One read of ``sock``, for the thread holding ``_read_lock`` (``attended``: a
        thread waits for an answer; the background reader of :meth:`submit` futures never
        polls, so that it does not compete for the CPU and the GIL with the threads that
        submit).

        A thread that blocks in ``recv`` is put to sleep, and waking it when the answer
        arrives costs more than the round trip itself on many machines (about 150 µs on the
        VMs we measure on, against 50 µs for a whole round trip with a reader that does not
        sleep). So the reader first polls the socket without sleeping for up to ``spin``
        seconds. It adapts, as adaptive mutexes do: a poll that caught nothing makes the
        next 2, 4, ... 64 reads skip it, and a poll that caught an answer makes the next
        one poll again; so a publisher whose answers come slower than ``spin`` (a durable
        store's commits, a far master) spins about once in 64 reads and costs almost no
        CPU, and one whose answers come fast gets them without the wake-up."""
        spin = self.spin
        if spin > 0.0 and attended:
            if self._spin_skip <= 0:
                data = _spin_recv(sock, spin)
                if data:
                    self._spin_misses = 0
                    return data
                self._spin_misses = misses = min(self._spin_misses + 1, _SPIN_BACKOFF)
                self._spin_skip = 1 << misses
            else:
                self._spin_skip -= 1
        # A blocking recv that the kernel ends after _POLL_SECONDS (SO_RCVTIMEO, set in
        # _open): one system call per read, no select.
        return sock.recv(_READ_BYTES)

    def _background(self) -> None:
        """Read for futures nobody waits on (:meth:`submit`)."""
        while not self._closed:
            with self._wake:
                while self._unattended <= 0 and not self._closed:
                    self._wake.wait(1.0)
            if self._closed:
                return
            with self._read_lock:
                self._read(None, time.monotonic() + self.timeout)


#: ``publish_all`` sends its publishes this many at a time (a line or a few each).
_SEND_CHUNK = 250


def _spin_recv(sock: socket.socket, seconds: float) -> bytes:
    """What ``sock`` receives within ``seconds`` of polling it without sleeping (``b""``:
    nothing yet, or the master closed the connection, which the blocking read after
    this then reports)."""
    end = time.perf_counter() + seconds
    recv = sock.recv
    while True:
        try:
            return recv(_READ_BYTES, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            if time.perf_counter() >= end:
                return b""


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))


def _settle(future: _Future, outcome: Published | BaseException) -> None:
    if isinstance(future, _Waiter):
        if future.outcome is None:
            future.outcome = outcome
        return
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except InvalidStateError:
        pass  # timed out (or closed) before its answer came
