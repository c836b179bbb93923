"""limits.max_json_values: an HTTP publish body of many tiny JSON values is refused (413)
before it is decoded, so it cannot cost the master hundreds of MB; the count leaves strings
out, and bodies too small to hold that many values are not scanned."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from twisted.internet.task import Clock

import replication.http.api as api
from helpers import request
from replication.config import MasterConfig
from replication.config.model import LimitsConfig
from replication.http.api import json_values_bound
from replication.master import Master
from replication.store.memory import MemoryStore


def make_master(values: int, body_bytes: int = 16 * 1024 * 1024) -> Master:
    limits = dataclasses.replace(
        LimitsConfig(), max_json_values=values, max_body_bytes=body_bytes
    )
    return Master(dataclasses.replace(MasterConfig(), limits=limits), MemoryStore(), Clock())


def test_the_bound_counts_values_outside_strings() -> None:
    assert json_values_bound(b'{"rows":[1,2,3]}') >= 5
    assert json_values_bound(b'{"rows":["a,b,[c{", "\\",["]}') == json_values_bound(
        b'{"rows":["", ""]}'
    )
    for body in (b"[]", b"[[],[],[]]", b'{"a":[{"b":1},{"c":[1,2]}]}', b"1"):
        import json

        def count(value: Any) -> int:
            if isinstance(value, list):
                return 1 + sum(count(v) for v in value)
            if isinstance(value, dict):
                return 1 + sum(count(v) for v in value.values())
            return 1

        assert json_values_bound(body) >= count(json.loads(body)), body


def test_a_body_of_tiny_rows_is_refused_before_it_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """16 MiB of ``[]`` rows: over a million values; answered 413 without decoding."""
    master = make_master(1_000_000)

    def no_decode(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the body was decoded")

    monkeypatch.setattr(api, "decode_json_bytes", no_decode)
    rows = b",".join([b"[]"] * (5 * 1024 * 1024))
    status, answer = request(master, "POST", "/streams/events", b'{"rows":[' + rows + b"]}")
    assert status == 413
    assert answer["error"] == (
        "request body holds more than 1000000 JSON values (limits.max_json_values); publish "
        "in smaller batches"
    )
    assert master.log.head("events") == 0


def test_commas_inside_strings_do_not_count() -> None:
    """A row whose text holds many commas is one value: published."""
    master = make_master(100, body_bytes=1024 * 1024)
    text = "," * 5000
    body = ('{"rows":["' + text + '"]}').encode()
    status, answer = request(master, "POST", "/streams/events", body)
    assert status == 200, answer


def test_a_small_body_is_not_scanned(monkeypatch: pytest.MonkeyPatch) -> None:
    master = make_master(1_000_000)

    def no_scan(body: bytes) -> int:
        raise AssertionError("a small body was scanned")

    monkeypatch.setattr(api, "json_values_bound", no_scan)
    status, _ = request(master, "POST", "/streams/events", b'{"rows":[1,2,3]}')
    assert status == 200
