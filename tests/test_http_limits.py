"""The limits of the master's HTTP listener, in memory: the body size (refused as soon as it
is known), the request and idle timeouts, rows per publish, nesting depth, and a publisher
that leaves before its commit. Each limit is tested at its edge: at the limit accepted, one
past it refused. The connection limit over real sockets is in test_http_limits_process.py."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from replication.config import MasterConfig
from replication.config.model import LimitsConfig
from replication.http import admin_factory, admin_site
from replication.http.api import JsonRequest
from replication.http.limits import (
    REFUSAL_DRAIN_SECONDS,
    REFUSAL_LOG_INTERVAL,
    raw_json_answer,
)
from replication.master import Master
from replication.store.memory import MemoryStore
from replication.wire.commands import MAX_PARSED_DEPTH
from tests.helpers import ORIGIN_ID

LIMIT = 1024
REQUEST_TIMEOUT = 10.0
IDLE_TIMEOUT = 4.0


def make_master(**limits: Any) -> Master:
    config = dataclasses.replace(
        MasterConfig(),
        limits=dataclasses.replace(
            LimitsConfig(), max_line_bytes=LIMIT, max_body_bytes=LIMIT, **limits
        ),
        http_request_timeout=REQUEST_TIMEOUT,
        http_idle_timeout=IDLE_TIMEOUT,
    )
    return Master(config, MemoryStore(), Clock())


class Client:
    """One connection to the master's site over a StringTransport."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self.requests: list[JsonRequest] = []
        requests = self.requests

        class Recorded(JsonRequest):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                requests.append(self)

        site = admin_site(master)
        site.requestFactory = Recorded
        self.protocol = site.buildProtocol(None)
        assert self.protocol is not None
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def answer(self) -> tuple[int, dict[str, Any]]:
        """The status and JSON body of the first answer written so far."""
        response = self.transport.value()
        head, _, body = response.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if b"transfer-encoding: chunked" in head.lower():
            body = body.partition(b"\r\n")[2]  # the first chunk holds the whole JSON line
        return status, json.loads(body.split(b"\n", 1)[0])

    @property
    def closing(self) -> bool:
        return bool(self.transport.disconnecting)

    @property
    def clock(self) -> Clock:
        assert isinstance(self.master.clock, Clock)
        return self.master.clock


def post_head(length: int | None, *extra: str) -> bytes:
    lines = ["POST /streams/events HTTP/1.1", "Host: x", *extra]
    lines.append(
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    )
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def body_of(size: int) -> bytes:
    """A valid publish body of exactly ``size`` bytes (JSON padded with spaces)."""
    body = b'{"rows": [1]}'
    return body + b" " * (size - len(body))


def chunked(body: bytes, size: int) -> bytes:
    out = b""
    for i in range(0, len(body), size):
        piece = body[i : i + size]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out


def test_a_body_of_exactly_the_limit_is_published() -> None:
    """Content-Length == limits.max_body_bytes is read and published."""
    client = Client(make_master())
    client.send(post_head(LIMIT) + body_of(LIMIT))
    assert client.answer() == (200, {"stream": "events", "token": 1, "origin": ORIGIN_ID})


def test_a_declared_length_one_over_the_limit_is_refused_before_the_body() -> None:
    """Content-Length == limit + 1 is answered 413 as soon as the headers end, before any
    body byte arrives, and the connection is closed; body bytes sent after are dropped and
    nothing is published."""
    master = make_master()
    client = Client(master)
    client.send(post_head(LIMIT + 1))
    status, answer = client.answer()
    assert status == 413 and "limits.max_body_bytes" in answer["error"]
    assert client.closing
    written = client.transport.value()
    client.send(body_of(LIMIT + 1))
    assert client.transport.value() == written
    assert master.stream_names() == []


def test_an_oversized_declared_body_is_not_invited_by_100_continue() -> None:
    """A client that sends ``Expect: 100-continue`` with a length over the limit gets the
    413 and never ``100 Continue``; one within the limit is invited."""
    client = Client(make_master())
    client.send(post_head(LIMIT + 1, "Expect: 100-continue"))
    assert b"100 Continue" not in client.transport.value()
    assert client.answer()[0] == 413
    within = Client(make_master())
    within.send(post_head(LIMIT, "Expect: 100-continue"))
    assert within.transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"


@pytest.mark.parametrize("chunk", [1, 7, 100, LIMIT])
def test_a_chunked_body_of_exactly_the_limit_is_published(chunk: int) -> None:
    """A chunked body of limit bytes, in chunks of any size, is published."""
    client = Client(make_master())
    client.send(post_head(None) + chunked(body_of(LIMIT), chunk) + b"0\r\n\r\n")
    assert client.answer() == (200, {"stream": "events", "token": 1, "origin": ORIGIN_ID})


@pytest.mark.parametrize("chunk", [1, 7, 100, LIMIT + 1])
def test_a_chunked_body_is_refused_once_it_passes_the_limit(chunk: int) -> None:
    """A chunked body is answered 413 and closed on the chunk that takes it past the limit,
    without waiting for its end; what is kept of it never exceeds the limit."""
    master = make_master()
    client = Client(master)
    client.send(post_head(None))
    request = client.requests[-1]
    data = chunked(body_of(LIMIT + 1), chunk)
    sent = 0
    while not client.transport.value() and sent < len(data):
        client.send(data[sent : sent + chunk])
        sent += chunk
        kept = request.content.tell()
        assert kept <= LIMIT
    status, answer = client.answer()
    assert status == 413 and "limits.max_body_bytes" in answer["error"]
    assert client.closing
    assert master.stream_names() == []


def test_a_request_arriving_just_within_the_request_timeout_is_served() -> None:
    """A request dribbled a byte at a time whose last byte arrives just before
    http.request_timeout is served."""
    client = Client(make_master())
    data = post_head(13) + b'{"rows": [1]}'
    step = (REQUEST_TIMEOUT - 0.001) / (len(data) - 1)
    for i, byte in enumerate(data):
        if i:
            client.clock.advance(step)
        client.send(bytes([byte]))
    assert client.answer() == (200, {"stream": "events", "token": 1, "origin": ORIGIN_ID})


def test_a_request_still_arriving_at_the_request_timeout_is_answered_408() -> None:
    """A client that dribbles its body a byte a second (never idle for long) is answered
    408 and closed when http.request_timeout has passed since the request's first line."""
    master = make_master()
    client = Client(master)
    client.send(post_head(100))
    for _ in range(int(REQUEST_TIMEOUT) - 1):
        client.clock.advance(1)
        client.send(b" ")
    assert client.transport.value() == b"" and not client.closing
    client.clock.advance(1)
    status, answer = client.answer()
    assert status == 408 and "http.request_timeout" in answer["error"]
    assert client.closing
    assert master.stream_names() == []


def hold_commits(master: Master) -> list[Deferred[list[int]]]:
    """Make ``master``'s commits wait: each publish's Deferred is appended to the list
    returned, for the test to fire."""
    commits: list[Deferred[list[int]]] = []

    def submit_many(stream: str, encoded: Any) -> Deferred[list[int]]:
        commits.append(Deferred())
        return commits[-1]

    master.submit_many = submit_many  # type: ignore[method-assign]
    return commits


def test_the_request_timeout_stops_once_the_request_is_received() -> None:
    """The request timeout covers receiving only: a publish whose commit takes longer than
    it is still answered, and no timer is left once the connection closes."""
    master = make_master()
    commits = hold_commits(master)
    client = Client(master)
    client.send(post_head(13) + b'{"rows": [1]}')
    client.clock.advance(REQUEST_TIMEOUT * 2)
    commits[0].callback([1])
    assert client.answer() == (200, {"stream": "events", "token": 1, "origin": ORIGIN_ID})
    client.protocol.connectionLost(Failure(ConnectionError("closed")))
    assert client.clock.getDelayedCalls() == []


def test_a_connection_silent_for_the_idle_timeout_is_closed() -> None:
    """http.idle_timeout: a connection that sends nothing for that long is closed; one that
    sent something just before is not."""
    client = Client(make_master())
    client.clock.advance(IDLE_TIMEOUT - 0.001)
    client.send(b"P")
    client.clock.advance(IDLE_TIMEOUT - 0.001)
    assert not client.closing
    client.clock.advance(0.001)
    assert client.closing


@pytest.mark.parametrize("form", ["rows", "tokens"])
def test_rows_per_publish_at_the_limit_are_published_and_one_more_is_refused(form: str) -> None:
    """limits.max_rows_per_publish counts every row of a publish, all its tokens together:
    at the limit it is published, one more is answered 413 and nothing is published."""

    def body(rows: int) -> bytes:
        if form == "rows":
            return json.dumps({"rows": list(range(rows))}).encode()
        return json.dumps({"tokens": [[0], list(range(rows - 1))]}).encode()

    master = make_master(max_rows_per_publish=5)
    client = Client(master)
    client.send(post_head(len(body(5))) + body(5))
    assert client.answer()[0] == 200
    head = master.head("events")
    over = Client(master)
    over.send(post_head(len(body(6))) + body(6))
    status, answer = over.answer()
    assert status == 413 and "limits.max_rows_per_publish" in answer["error"]
    assert "at most 5 rows" in answer["error"]
    assert master.head("events") == head


def nested(depth: int) -> str:
    """A JSON value of ``depth`` nested lists."""
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth, status", [(MAX_PARSED_DEPTH, 200), (MAX_PARSED_DEPTH + 1, 400)])
def test_rows_nested_to_the_depth_limit_are_published_and_deeper_are_refused(
    depth: int, status: int
) -> None:
    """A row nested MAX_PARSED_DEPTH lists deep is published as sent; one level more is a
    400 that says so."""
    master = make_master()
    master.config = dataclasses.replace(
        master.config, limits=dataclasses.replace(master.config.limits, max_body_bytes=4 * LIMIT)
    )
    body = f'{{"rows": [{nested(depth)}]}}'.encode()
    client = Client(master)
    client.send(post_head(len(body)) + body)
    code, answer = client.answer()
    assert code == status
    if status == 400:
        assert answer == {"error": f"row 0: row is nested more than {MAX_PARSED_DEPTH} levels deep"}
        assert master.stream_names() == []


@pytest.mark.parametrize("depth", [1000, 1023, 1024, 1025, 5000])
def test_a_body_nested_about_a_thousand_deep_is_a_400_not_a_500(
    depth: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows nested ~1,000 deep (the depth at which decoding used to raise RecursionError)
    are answered 400 with a message about nesting, and nothing is logged as an error."""
    master = make_master()
    master.config = dataclasses.replace(
        master.config, limits=dataclasses.replace(master.config.limits, max_body_bytes=16 * LIMIT)
    )
    body = f'{{"rows": [{nested(depth)}]}}'.encode()
    client = Client(master)
    with caplog.at_level(logging.ERROR):
        client.send(post_head(len(body)) + body)
    status, answer = client.answer()
    assert status == 400 and "nested" in answer["error"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("outcome", ["committed", "failed"])
def test_a_publisher_that_leaves_before_its_commit_costs_no_traceback(
    outcome: str, caplog: pytest.LogCaptureFixture
) -> None:
    """When the client has gone by the time its commit settles, the answer is dropped with
    one debug line: the commit's Deferred ends without an error (no "Unhandled error in
    Deferred")."""
    master = make_master()
    commits = hold_commits(master)
    client = Client(master)
    client.send(post_head(13) + b'{"rows": [1]}')
    client.protocol.connectionLost(Failure(ConnectionError("gone")))
    with caplog.at_level(logging.DEBUG, logger="replication.http.api"):
        if outcome == "committed":
            commits[0].callback([1])
        else:
            commits[0].errback(OSError("disk full"))
    results: list[object] = []
    commits[0].addBoth(results.append)
    assert results == [None]
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert "left before its commit" in caplog.records[0].getMessage()


def test_raw_json_answer_is_a_complete_response() -> None:
    """The refusal written straight to a transport is a whole HTTP/1.1 response that
    closes its connection, with a Content-Length matching its JSON body."""
    data = raw_json_answer(503, "busy")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    assert "Connection: close" in lines
    assert f"Content-Length: {len(body)}" in lines
    assert json.loads(body) == {"error": "busy"}


def test_the_connection_limit_counts_open_connections_and_answers_503_past_it() -> None:
    """admin_factory serves http.max_connections connections at once; the next is answered
    503 and closed without being counted, and a closed connection frees its slot."""
    master = make_master()
    master.config = dataclasses.replace(master.config, http_max_connections=2)
    factory = admin_factory(master)
    served = []
    for _ in range(2):
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        served.append(protocol)
    assert factory.open_connections == 2
    refused = factory.buildProtocol(None)
    assert isinstance(refused, Protocol) and not isinstance(refused, HTTPChannel)
    transport = StringTransport()
    refused.makeConnection(transport)
    assert transport.value().startswith(b"HTTP/1.1 503 ")
    assert b"http.max_connections" in transport.value()
    assert factory.open_connections == 2 and factory.refused == 1
    refused.connectionLost(Failure(ConnectionError("closed by the client")))
    served[0].connectionLost(Failure(ConnectionError("closed")))
    assert factory.open_connections == 1
    again = factory.buildProtocol(None)
    assert again is not None
    again.makeConnection(StringTransport())
    assert factory.open_connections == 2 and factory.refused == 1


def test_json_request_outside_an_admin_site_has_no_limits() -> None:
    """JsonRequest applies limits only on an AdminSite: on another site it keeps any body
    and starts no timer."""
    from twisted.web.test.requesthelper import DummyChannel

    channel = DummyChannel()
    request = JsonRequest(channel)
    request.gotLength(None)
    request.handleContentChunk(b"x" * (LIMIT * 4))
    assert request.content.tell() == LIMIT * 4


class AbortTransport(StringTransport):
    """A StringTransport that records an abort."""

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


def test_a_refused_connection_is_drained_for_a_second_at_most() -> None:
    """A connection past http.max_connections gets its 503, then what it sends is read and
    dropped (so the client reads the 503, not a reset) until it closes, or for
    REFUSAL_DRAIN_SECONDS at most; then it is closed, and aborted if still open as long
    again after; no more than max_connections refused
    connections are drained at once, later ones are closed at once; no timer is left
    behind."""
    master = make_master()
    master.config = dataclasses.replace(master.config, http_max_connections=1)
    factory = admin_factory(master)
    clock = master.clock
    assert isinstance(clock, Clock)
    served = factory.buildProtocol(None)
    assert served is not None
    served.makeConnection(StringTransport())
    first = factory.buildProtocol(None)
    assert first is not None
    draining = AbortTransport()
    first.makeConnection(draining)
    assert draining.value().startswith(b"HTTP/1.1 503 ")
    assert not draining.disconnecting
    first.dataReceived(b"POST /streams/events HTTP/1.1\r\n\r\n")
    assert draining.value().count(b"HTTP/1.1") == 1
    second = factory.buildProtocol(None)
    assert second is not None
    at_once = AbortTransport()
    second.makeConnection(at_once)
    assert at_once.value().startswith(b"HTTP/1.1 503 ")
    assert at_once.disconnecting and not at_once.aborted
    second.connectionLost(Failure(ConnectionError("closed")))
    clock.advance(REFUSAL_DRAIN_SECONDS - 0.001)
    assert not draining.disconnecting
    clock.advance(0.001)
    assert draining.disconnecting and not draining.aborted
    clock.advance(REFUSAL_DRAIN_SECONDS - 0.001)
    assert not draining.aborted
    clock.advance(0.001)
    assert draining.aborted
    first.connectionLost(Failure(ConnectionError("aborted")))
    assert factory.draining == set() and factory.refused == 2
    served.connectionLost(Failure(ConnectionError("closed")))
    assert clock.getDelayedCalls() == []


def test_refused_connections_are_logged_once_a_minute_at_most(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first refusal logs a warning; later ones within REFUSAL_LOG_INTERVAL are only
    counted, and the next warning after it says how many there were."""
    master = make_master()
    master.config = dataclasses.replace(master.config, http_max_connections=1)
    factory = admin_factory(master)
    clock = master.clock
    assert isinstance(clock, Clock)
    served = factory.buildProtocol(None)
    assert served is not None
    served.makeConnection(StringTransport())

    def refuse() -> None:
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        protocol.makeConnection(StringTransport())
        protocol.connectionLost(Failure(ConnectionError("closed")))

    with caplog.at_level(logging.WARNING, logger="replication.http.limits"):
        refuse()
        for _ in range(4):
            clock.advance(REFUSAL_LOG_INTERVAL / 5)
            refuse()
        clock.advance(REFUSAL_LOG_INTERVAL / 5)
        refuse()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "refused 1 HTTP connection(s) since startup: http.max_connections (1) are open",
        "refused 5 HTTP connection(s) since the last warning: http.max_connections (1) are open",
    ]
    served.connectionLost(Failure(ConnectionError("closed")))
    assert clock.getDelayedCalls() == []


def test_the_connection_limit_offers_the_sites_protocols_to_tls() -> None:
    """Behind a TLS listener, the connection limit answers ALPN with the site's protocols
    (found when HTTPS handshakes that offered ALPN failed with an internal error)."""
    from twisted.internet.interfaces import IProtocolNegotiationFactory

    from replication.http.limits import ConnectionLimit

    site = admin_site(make_master())
    limited = ConnectionLimit(site, 4)
    assert IProtocolNegotiationFactory.providedBy(limited)
    assert limited.acceptableProtocols() == list(site.acceptableProtocols())
    assert b"http/1.1" in limited.acceptableProtocols()
