"""The master's HTTP interface, driven with raw HTTP over a StringTransport."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.server import Site

from replication.admin import admin_resource
from replication.config import LimitsConfig, MasterConfig
from replication.master import Master
from replication.store.memory import MemoryStore


def make_master(**changes: Any) -> Master:
    return Master(dataclasses.replace(MasterConfig(), **changes), MemoryStore(), Clock())


def request(master: Master, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
    """Send one HTTP/1.1 request through the real Site and parse the JSON answer."""
    site = Site(admin_resource(master))
    protocol = site.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    protocol.dataReceived(head.encode() + body)
    response = transport.value()
    status_line, _, rest = response.partition(b"\r\n")
    status = int(status_line.split()[1])
    payload = rest.split(b"\r\n\r\n", 1)[1]
    if b"transfer-encoding: chunked" in rest.lower().split(b"\r\n\r\n", 1)[0]:
        payload = payload.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0].rsplit(b"\r\n", 1)[0]
    protocol.connectionLost(None)
    return status, json.loads(payload)


def test_publish_answers_the_token() -> None:
    """POST /streams/events with rows publishes them as one token and answers it."""
    master = make_master()
    status, body = request(master, "POST", "/streams/events", b'{"rows": [{"a": 1}, [2]]}')
    assert (status, body) == (200, {"stream": "events", "token": 1})
    status, body = request(master, "POST", "/streams/events", b'{"rows": ["x"]}')
    assert body["token"] == 2
    assert master.store.read("events", 0, 2, 100)[0].rows == ('{"a":1}', "[2]")


@pytest.mark.parametrize(
    "path, body, status, fragment",
    [
        ("/streams/events", b"{not json", 400, "not valid JSON"),
        ("/streams/events", b"[1, 2]", 400, 'JSON object {"rows"'),
        ("/streams/events", b"{}", 400, 'JSON object {"rows"'),
        ("/streams/events", b'{"rows": []}', 400, "at least one row"),
        ("/streams/events", b'{"rows": {"a": 1}}', 400, "must be a list"),
        ("/streams/events", b'{"rows": [1], "extra": 2}', 400, "unknown field(s) in body: extra"),
        ("/streams/bad%20name", b'{"rows": [1]}', 400, "invalid stream name"),
        ("/streams/events", b'{"rows": [1, "' + b"x" * 70000 + b'"]}', 413, "row 1 is"),
        ("/streams/events", b"[" * 100000, 400, ""),
    ],
)
def test_bad_publishes_are_refused_with_a_json_error(
    path: str, body: bytes, status: int, fragment: str
) -> None:
    """Every bad request is a 4xx with {"error": ...}; nothing is published."""
    master = make_master()
    got_status, answer = request(master, "POST", path, body)
    assert got_status == status
    assert fragment in answer["error"]
    assert master.store.stream_names() == []


def test_a_body_over_the_limit_is_refused_with_413() -> None:
    master = make_master(limits=LimitsConfig(max_body_bytes=70000))
    status, answer = request(master, "POST", "/streams/events", b'{"rows": ["' + b"y" * 70000 + b'"]}')
    assert status == 413
    assert "limits.max_body_bytes" in answer["error"]


def test_strict_streams_answers_404_for_unknown_streams() -> None:
    master = make_master(streams=("events",), strict_streams=True)
    status, answer = request(master, "POST", "/streams/other", b'{"rows": [1]}')
    assert status == 404
    assert "unknown stream 'other'" in answer["error"]
    assert request(master, "GET", "/streams/other")[0] == 404


def test_health_and_stream_listing() -> None:
    master = make_master()
    request(master, "POST", "/streams/a", b'{"rows": [1]}')
    assert request(master, "GET", "/health")[0] == 200
    assert request(master, "GET", "/streams") == (200, {"streams": {"a": 1}})
    assert request(master, "GET", "/streams/a") == (200, {"stream": "a", "head": 1})
