"""The master's HTTP interface, driven with raw HTTP over a StringTransport."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from twisted.internet.task import Clock

# tests/ is not a package, so pytest puts tests/ itself on sys.path.
from helpers import request
from replication.config import LimitsConfig, MasterConfig
from replication.master import Master
from replication.store.memory import MemoryStore


def make_master(**changes: Any) -> Master:
    return Master(dataclasses.replace(MasterConfig(), **changes), MemoryStore(), Clock())


def test_publish_answers_the_token() -> None:
    """POST /streams/events with rows publishes them as one token and answers it."""
    master = make_master()
    status, body = request(master, "POST", "/streams/events", b'{"rows": [{"a": 1}, [2]]}')
    assert (status, body) == (200, {"stream": "events", "token": 1, "origin": master.log.origin_id})
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
    status, answer = request(
        master, "POST", "/streams/events", b'{"rows": ["' + b"y" * 70000 + b'"]}'
    )
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
    assert request(master, "GET", "/streams") == (200, {
        "streams": {"a": 1},
        "details": [{
            "name": "a", "head": 1, "oldest": 1, "retained_rows": 1, "created": 0.0,
            "retention": {"max_rows": 1_000_000, "max_age": None},
        }],
    })
    assert request(master, "GET", "/streams/a") == (200, {"stream": "a", "head": 1})


def test_several_tokens_in_one_request() -> None:
    """{"tokens": [[...], [...]]} publishes each inner list as one token, consecutively,
    and answers the tokens; a bad inner list refuses the whole request."""
    master = make_master()
    status, body = request(
        master, "POST", "/streams/events", b'{"tokens": [[1], [2, 3], [{"a": 4}]]}'
    )
    assert (status, body) == (
        200, {"stream": "events", "tokens": [1, 2, 3], "origin": master.log.origin_id}
    )
    assert [e.rows for e in master.store.read("events", 0, 3, 100)] == [
        ("1",),
        ("2", "3"),
        ('{"a":4}',),
    ]
    for bad in (
        b'{"tokens": [[1], []]}',
        b'{"tokens": []}',
        b'{"tokens": [1]}',
        b'{"rows": [1], "tokens": [[1]]}',
    ):
        status, _ = request(master, "POST", "/streams/events", bad)
        assert status == 400
    assert master.head("events") == 3
