"""The Twisted publisher client: :class:`TwistedPublisher`, whose publishes return
Deferreds, for code that runs a reactor.

The same rules as the blocking client (:mod:`replication.client.blocking`): publishes are
pipelined on one connection and answered in order; a drop resends what was in flight, with
its idempotency keys, to the same master for up to ``retry_for`` seconds, and only
publishes never sent go to another master (in random order); the reactor is passed in.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from replication.client.core import (
    MasterUnreachable,
    ProtocolViolation,
    Published,
    PublisherCore,
    PublishError,
    PublishTimeout,
    default_name,
    key_prefix,
    lost_in_flight,
    parse_endpoint,
    restarted_in_flight,
)
from replication.tls import client_endpoint as tls_client_endpoint
from replication.wire.auth import ClientCredential

_Waiter = Deferred[Published]


def client_endpoint(reactor: Any, text: str, timeout: float) -> IStreamClientEndpoint:
    """A Twisted client endpoint: an endpoint string (``tcp:host=...:port=...``, or
    ``ssl:...``, verified as the worker's are: :func:`replication.tls.client_endpoint`), or
    ``host:port``."""
    if "=" in text:
        return tls_client_endpoint(reactor, text)
    host, port = parse_endpoint(text)
    return HostnameEndpoint(reactor, host, port, timeout=timeout)


class _Connection(Protocol):
    def __init__(self, publisher: TwistedPublisher) -> None:
        self.publisher = publisher
        self.ready: Deferred[_Connection] = Deferred()
        self.gone = False

    def connectionMade(self) -> None:
        transport: Any = self.transport
        if hasattr(transport, "setTcpNoDelay"):
            transport.setTcpNoDelay(True)
        self.publisher._core.reset()
        transport.write(self.publisher._core.hello())

    def dataReceived(self, data: bytes) -> None:
        self.publisher._data(self, data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.gone = True
        if not self.ready.called:
            self.ready.errback(MasterUnreachable(
                f"the master closed the connection in the handshake: {reason.getErrorMessage()}"
            ))
        self.publisher._lost_connection(self)


class TwistedPublisher:
    """A reconnecting publisher on a reactor.

    :param reactor: the reactor (``IReactorTCP`` and ``IReactorTime``).
    :param master: an endpoint string or ``host:port``, or a list of them (a cluster).
    :param name, timeout, connect_timeout, retry_for, idempotent: as for
        :class:`~replication.client.blocking.Publisher`.

    :meth:`publish` and :meth:`publish_tokens` return a Deferred that fires with
    :class:`~replication.client.core.Published` or fails with a
    :class:`~replication.client.core.PublishError`. :meth:`close` fires once the
    connection is closed.
    """

    def __init__(
        self,
        reactor: Any,
        master: str | Sequence[str],
        *,
        name: str | None = None,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        retry_for: float | None = None,
        idempotent: bool = True,
        credential: ClientCredential | None = None,
    ) -> None:
        masters = [master] if isinstance(master, str) else list(master)
        if not masters:
            raise ValueError("a TwistedPublisher needs at least one master endpoint")
        for text in masters:
            if "=" not in text:
                parse_endpoint(text)
        self.reactor = reactor
        self.masters = masters
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retry_for = timeout if retry_for is None else retry_for
        self._core: PublisherCore[_Waiter] = PublisherCore(
            name or default_name(), key_prefix() if idempotent else None, credential
        )
        self._connection: _Connection | None = None
        self._connecting: Deferred[_Connection] | None = None
        self._master: str | None = None
        #: Publishes not sent yet (waiting for a connection), in order.
        self._queue: list[tuple[str, bytes, str | None, bool, _Waiter]] = []
        #: Publishes a drop left unanswered, and when the drop happened.
        self._lost: list[Any] = []
        self._lost_at = 0.0
        self._last_read = 0.0
        self._closed = False
        self._watch: IDelayedCall | None = None

    @property
    def origin(self) -> str | None:
        return self._core.origin

    def publish(
        self, stream: str, rows: Sequence[Any], *, key: str | None = None,
        timeout: float | None = None,
    ) -> Deferred[Published]:
        """Publish ``rows`` to ``stream`` as one token."""
        return self._publish(stream, rows, key, False, timeout)

    def publish_tokens(
        self, stream: str, tokens_rows: Sequence[Sequence[Any]], *, key: str | None = None,
        timeout: float | None = None,
    ) -> Deferred[Published]:
        """Publish several tokens at once, all or none, consecutive."""
        return self._publish(stream, tokens_rows, key, True, timeout)

    def publish_all(
        self, stream: str, batches: Sequence[Sequence[Any]], *, timeout: float | None = None
    ) -> Deferred[list[Published]]:
        """Publish each of ``batches`` as its own token, pipelined (``PUBLISH_BATCH`` lines
        to a master that takes them, once connected), and fire with the results in order
        once every answer is in, or fail with the first error then (as
        :meth:`replication.client.Publisher.publish_all`)."""
        if self._closed:
            return fail(MasterUnreachable("the publisher is closed"))
        core = self._core
        connection = self._connection
        built = None
        if connection is not None and core.ready and not self._lost:
            built = core.publish_lines(stream, batches)
        if built is None:  # not connected yet, or something unusual: one by one
            return _all([self._publish(stream, rows, None, False, timeout)
                         for rows in batches])
        waiters: list[_Waiter] = [Deferred() for _ in built.keys]
        keys = built.keys
        seconds = self.timeout if timeout is None else timeout

        def expire() -> None:
            for waiter, key in zip(waiters, keys, strict=True):
                _settle(waiter, PublishTimeout(
                    f"no answer within {seconds:g}s; it may still be committed: publish "
                    f"again with key={key!r} to find out", key=key,
                ))

        call = self.reactor.callLater(seconds, expire)
        core.sent_many(stream, built, waiters)
        assert connection is not None and connection.transport is not None
        connection.transport.write(built.out)
        return _all(waiters).addBoth(_cancelling(call))

    def close(self) -> Deferred[None]:
        """Close; publishes in flight fail with ``MasterUnreachable`` (``maybe_committed``)."""
        self._closed = True
        if self._watch is not None and self._watch.active():
            self._watch.cancel()
        pending = [entry.waiter for entry in self._core.reset() + self._lost]
        pending += [item[4] for item in self._queue]
        self._lost, self._queue = [], []
        for waiter in pending:
            _settle(waiter, MasterUnreachable("the publisher was closed", maybe_committed=True))
        connection = self._connection
        self._connection = None
        if connection is None or connection.gone or connection.transport is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        original = connection.connectionLost

        def lost(reason: Failure = connectionDone) -> None:
            original(reason)
            done.callback(None)

        connection.connectionLost = lost  # type: ignore[method-assign]
        connection.transport.loseConnection()
        return done

    # -- internals ---------------------------------------------------------------------

    def _publish(
        self, stream: str, rows: Any, key: str | None, many: bool, timeout: float | None
    ) -> Deferred[Published]:
        if self._closed:
            return fail(MasterUnreachable("the publisher is closed"))
        core = self._core
        if key is None:
            key = core.new_key()
        try:
            line = core.publish_line(stream, rows, key, many)
        except PublishError:
            return fail()
        waiter: _Waiter = Deferred()
        seconds = self.timeout if timeout is None else timeout
        call = self.reactor.callLater(seconds, _settle, waiter, PublishTimeout(
            f"no answer within {seconds:g}s; it may still be committed: publish again with "
            f"key={key!r} to find out", key=key,
        ))

        def cancel_timer(result: object) -> object:
            if call.active():
                call.cancel()
            return result

        waiter.addBoth(cancel_timer)
        connection = self._connection
        if connection is not None and core.ready and not self._lost:
            core.sent(stream, line, key, many, waiter)
            assert connection.transport is not None
            connection.transport.write(line)
        else:
            self._queue.append((stream, line, key, many, waiter))
            self._connect()
        return waiter

    def _connect(self) -> None:
        if self._connecting is not None or self._connection is not None or self._closed:
            return
        if self._lost and self._master is not None:
            order = [self._master]
        else:
            order = list(self.masters)
            random.shuffle(order)
        self._connecting = d = self._try(order, 0)

        def connected(connection: _Connection) -> None:
            self._connecting = None
            self._connection = connection
            self._last_read = self.reactor.seconds()
            lost, self._lost = self._lost, []
            queue, self._queue = self._queue, []
            core = self._core
            out = []
            resend, restarted = core.resendable([e for e in lost if not e.waiter.called])
            for entry in restarted:
                _settle(entry.waiter, restarted_in_flight(self._master, entry.key))
            out.extend([core.resend(entry) for entry in resend])
            for stream, line, key, many, waiter in queue:
                if not waiter.called:
                    core.sent(stream, line, key, many, waiter)
                    out.append(line)
            if out:
                assert connection.transport is not None
                connection.transport.write(b"".join(out))
            self._arm_watch()

        def failed(failure: Failure) -> None:
            self._connecting = None
            if self._lost and self.reactor.seconds() - self._lost_at < self.retry_for:
                self.reactor.callLater(0.2, self._connect)
                return
            if self._lost:
                self._give_up_lost()
                if self._queue:
                    self.reactor.callLater(0, self._connect)
                return
            queue, self._queue = self._queue, []
            for item in queue:
                _settle(item[4], MasterUnreachable(
                    f"no master reachable ({failure.getErrorMessage()})"
                ))

        d.addCallbacks(connected, failed)

    def _try(self, order: list[str], i: int) -> Deferred[_Connection]:
        master = order[i]
        endpoint = client_endpoint(self.reactor, master, self.connect_timeout)
        self._master = master
        d: Deferred[Any] = endpoint.connect(Factory.forProtocol(lambda: _Connection(self)))
        d.addCallback(lambda connection: connection.ready)
        if i + 1 < len(order):
            d.addErrback(lambda _: self._try(order, i + 1))
        return d

    def _data(self, connection: _Connection, data: bytes) -> None:
        self._last_read = self.reactor.seconds()
        try:
            done = self._core.feed(data)
            out = self._core.take_output()
            if out:
                assert connection.transport is not None
                connection.transport.write(out)
        except ProtocolViolation as e:
            if not connection.ready.called:
                connection.ready.errback(e)
            assert connection.transport is not None
            connection.transport.loseConnection()
            return
        if self._core.ready and not connection.ready.called:
            connection.ready.callback(connection)
        for waiter, outcome in done:
            _settle(waiter, outcome)

    def _lost_connection(self, connection: _Connection) -> None:
        if connection is not self._connection:
            return
        self._connection = None
        lost = self._core.reset()
        if lost:
            if not self._lost:
                self._lost_at = self.reactor.seconds()
            self._lost.extend(lost)
        if (self._lost or self._queue) and not self._closed:
            self._connect()

    def _arm_watch(self) -> None:
        """Take a connection silent for ``timeout`` with publishes in flight for dead."""
        if self._watch is not None and self._watch.active():
            return
        self._watch = self.reactor.callLater(self.timeout / 4, self._check)

    def _check(self) -> None:
        self._watch = None
        connection = self._connection
        if connection is None or self._closed:
            return
        if self._core.in_flight and self.reactor.seconds() - self._last_read > self.timeout:
            transport: Any = connection.transport
            transport.abortConnection()
            return
        self._arm_watch()

    def _give_up_lost(self) -> None:
        lost, self._lost = self._lost, []
        for entry in lost:
            _settle(entry.waiter, lost_in_flight(self._master, self.retry_for, entry.key))


def _all(waiters: list[_Waiter]) -> Deferred[list[Published]]:
    """The results of ``waiters`` in order once all have fired, or the first failure (in
    their order) then."""
    done: Deferred[list[Published]] = Deferred()
    results: list[Any] = [None] * len(waiters)
    failures: dict[int, Failure] = {}
    left = [len(waiters)]

    def one(outcome: Any, i: int) -> None:
        if isinstance(outcome, Failure):
            failures[i] = outcome
        else:
            results[i] = outcome
        left[0] -= 1
        if left[0] == 0:
            if failures:
                done.errback(failures[min(failures)])
            else:
                done.callback(results)

    if not waiters:
        done.callback([])
    for i, waiter in enumerate(waiters):
        waiter.addBoth(one, i)
    return done


def _cancelling(call: IDelayedCall) -> Any:
    def cancel(result: object) -> object:
        if call.active():
            call.cancel()
        return result

    return cancel


def _settle(waiter: _Waiter, outcome: Published | PublishError) -> None:
    if waiter.called:
        return
    if isinstance(outcome, PublishError):
        waiter.errback(outcome)
    else:
        waiter.callback(outcome)
