"""HTTP authentication on a master with credentials: bearer tokens, 401 and 403 JSON
answers, route labels mapped to permissions, auth.open_routes, the failure metric and the
per-address delay. In memory: the master's resource answers requests on a StringTransport."""

from __future__ import annotations

import dataclasses
import json

from twisted.internet.task import Clock

from helpers import raw_request
from replication.config import MasterConfig
from replication.config.model import AuthConfig
from replication.http import admin_resource
from replication.master import Master
from replication.store.memory import MemoryStore
from replication.wire.auth import Credential, Keyring, Permissions

KEYRING = Keyring([
    Credential("pub", b"p", Permissions(publish=frozenset({"events"}))),
    Credential("ops", b"o", Permissions(status=True)),
    Credential("admin", b"a", Permissions(publish=frozenset({"*"}), status=True)),
])


def new_master(open_routes: tuple[str, ...] = ("/health",)) -> tuple[Master, Clock]:
    clock = Clock()
    config = dataclasses.replace(
        MasterConfig(), streams=("events", "typing"), auth=AuthConfig(open_routes=open_routes)
    )
    return Master(config, MemoryStore(), clock, keyring=KEYRING), clock


def request(master: Master, method: str, path: str, token: str | None = None,
            body: bytes = b"") -> tuple[int, dict[str, str], object]:
    headers = {"Content-Type": "application/json"} if body else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    status, response_headers, payload = raw_request(
        admin_resource(master), method, path, body, headers
    )
    parsed = json.loads(payload) if payload.startswith(b"{") else payload
    return status, response_headers, parsed


ROWS = b'{"rows": [{"a": 1}]}'


def test_without_a_token_every_route_but_health_answers_401() -> None:
    master, _ = new_master()
    for method, path in [("GET", "/status"), ("GET", "/streams"), ("GET", "/metrics"),
                         ("GET", "/streams/events"), ("GET", "/")]:
        status, headers, body = request(master, method, path)
        assert status == 401, path
        assert body == {"error": "authentication required: send Authorization: Bearer "
                                 "<credential>:<secret>"}
        assert headers["www-authenticate"] == 'Bearer realm="replication"'
    assert request(master, "POST", "/streams/events", body=ROWS)[0] == 401
    assert request(master, "GET", "/health")[0] == 200
    assert master.auth_failures["http"] == 6


def test_publish_needs_publish_permission_for_that_stream() -> None:
    master, _ = new_master()
    assert request(master, "POST", "/streams/events", "pub:p", ROWS)[0] == 200
    status, _, body = request(master, "POST", "/streams/typing", "pub:p", ROWS)
    assert (status, body) == (403, {"error": "credential 'pub' may not publish to stream "
                                             "'typing'"})
    assert request(master, "POST", "/streams/events", "ops:o", ROWS)[0] == 403


def test_status_and_metrics_need_status_permission() -> None:
    master, _ = new_master()
    assert request(master, "GET", "/status", "ops:o")[0] == 200
    assert request(master, "GET", "/metrics", "ops:o")[0] == 200
    status, _, body = request(master, "GET", "/status", "pub:p")
    assert (status, body) == (403, {"error": "credential 'pub' may not read the master's "
                                             "state (status: true)"})


def test_delete_needs_status_and_publish() -> None:
    master, _ = new_master()
    assert request(master, "DELETE", "/streams/events", "ops:o")[0] == 403
    assert request(master, "DELETE", "/streams/events", "pub:p")[0] == 403
    assert request(master, "DELETE", "/streams/events", "admin:a")[0] != 403


def test_open_routes_may_open_metrics_and_close_health() -> None:
    master, _ = new_master(("/metrics",))
    assert request(master, "GET", "/metrics")[0] == 200
    assert request(master, "GET", "/health")[0] == 401


def test_wrong_tokens_are_counted_and_slow_the_address_down() -> None:
    master, clock = new_master()
    for token in ("pub:wrong", "nobody:p", "pub", "pub:"):
        clock.advance(60)
        assert request(master, "GET", "/status", token)[0] == 401
    status, headers, body = request(master, "GET", "/status", "ops:o")
    assert status == 401 and "too many failures" in str(body)
    assert int(headers["retry-after"]) >= 1
    assert master.auth_failures["http"] == 5
    clock.advance(60)
    assert request(master, "GET", "/status", "ops:o")[0] == 200
    assert request(master, "GET", "/status", "Basic x")[0] == 401
