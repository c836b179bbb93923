"""The HTTP route table: matching, 404/405/500 answered as JSON, the authorization seam, and
the master's routes as raw HTTP through the real resources."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

# tests/ is not a package, so pytest puts tests/ itself on sys.path.
from helpers import raw_request, request
from replication.config import MasterConfig
from replication.http import JsonRequest, admin_site, master_routes
from replication.http.routing import (
    HttpError,
    Route,
    RouteError,
    Router,
    RouteTable,
    json_response,
)
from replication.master import Master, PublishError
from replication.store.memory import MemoryStore


def make_master(**changes: Any) -> Master:
    return Master(dataclasses.replace(MasterConfig(), **changes), MemoryStore(), Clock())


def answer(name: str) -> Any:
    """A handler answering ``{"route": name, "params": ...}``."""

    def handler(request: Request, params: Mapping[str, str]) -> bytes:
        return json_response(request, 200, {"route": name, "params": dict(params)})

    return handler


def get_json(table: RouteTable, method: str, path: str) -> tuple[int, dict[str, str], Any]:
    status, headers, body = raw_request(Router(table), method, path)
    return status, headers, json.loads(body) if body else None


TABLE = RouteTable([
    Route("GET", "/items", answer("list")),
    Route("GET", "/items/{item}", answer("get")),
    Route("POST", "/items/{item}", answer("post")),
    Route("GET", "/items/{item}/parts/{part}", answer("part")),
])


def test_the_master_has_exactly_its_documented_routes() -> None:
    """The master's table is the one list of its routes, with the access each needs."""
    routes = [(r.method, r.pattern, r.access) for r in master_routes(make_master()).routes]
    assert sorted(routes) == [
        ("DELETE", "/streams/{stream}", "admin"),
        ("GET", "/", "read"),
        ("GET", "/health", "public"),
        ("GET", "/metrics", "metrics"),
        ("GET", "/status", "read"),
        ("GET", "/streams", "read"),
        ("GET", "/streams/{stream}", "read"),
        ("POST", "/streams/{stream}", "publish"),
    ]


@pytest.mark.parametrize(
    "path, route, params",
    [
        ("/items", "list", {}),
        ("/items/a", "get", {"item": "a"}),
        ("/items/a%2Fb", "get", {"item": "a/b"}),
        ("/items/%C3%A9t%C3%A9", "get", {"item": "été"}),
        ("/items/%FF%00", "get", {"item": "\\xff\x00"}),
        ("/items/", "get", {"item": ""}),
        ("/items/a/parts/b?x=1", "part", {"item": "a", "part": "b"}),
    ],
)
def test_a_parameter_takes_one_percent_decoded_segment(
    path: str, route: str, params: dict[str, str]
) -> None:
    """A parameter takes exactly one segment, percent-decoded (an encoded / stays inside
    the segment), decoded as UTF-8 with undecodable bytes shown as \\xNN; the query string
    is not part of the path."""
    assert get_json(TABLE, "GET", path)[::2] == (200, {"route": route, "params": params})


@pytest.mark.parametrize(
    "path",
    ["/", "/nope", "/items/a/b", "/items/a/parts", "/items/a/parts/b/c", "//items", "/Items"],
)
def test_a_path_no_route_matches_is_a_json_404(path: str) -> None:
    """Segments must match in number and literally (case included), or the answer is 404
    with a JSON error naming the path."""
    status, headers, body = get_json(TABLE, "GET", path)
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert body == {"error": f"no such path: {path}"}


@pytest.mark.parametrize(
    "method, path, allow",
    [
        ("DELETE", "/items/a", "GET, HEAD, POST"),
        ("POST", "/items", "GET, HEAD"),
        ("PUT", "/items/a/parts/b", "GET, HEAD"),
        ("get", "/items", "GET, HEAD"),
    ],
)
def test_a_known_path_with_another_method_is_a_json_405_with_allow(
    method: str, path: str, allow: str
) -> None:
    """Methods are matched exactly; the 405 lists every method the path has (HEAD with
    GET) in the Allow header and in the message."""
    status, headers, body = get_json(TABLE, method, path)
    assert status == 405
    assert headers["allow"] == allow
    assert headers["content-type"] == "application/json"
    assert body == {"error": f"method {method} is not allowed on {path} (allowed: {allow})"}


def test_head_is_answered_by_the_get_handler_without_a_body() -> None:
    """HEAD gets the GET answer's status and headers, and no body."""
    status, headers, body = raw_request(Router(TABLE), "HEAD", "/items/a")
    assert (status, body) == (200, b"")
    assert int(headers["content-length"]) == len(b'{"route":"get","params":{"item":"a"}}\n')


def test_an_unexpected_exception_is_logged_and_answered_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler that raises anything but HttpError is a 500 {"error": "internal error"},
    whatever headers it had set, and the exception is logged."""

    def broken(request: Request, params: Mapping[str, str]) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        raise ZeroDivisionError("boom")

    with caplog.at_level(logging.ERROR, logger="replication.http.routing"):
        status, headers, body = get_json(RouteTable([Route("GET", "/x", broken)]), "GET", "/x")
    assert (status, body) == (500, {"error": "internal error"})
    assert headers["content-type"] == "application/json"
    assert "ZeroDivisionError: boom" in caplog.text


def test_an_http_error_is_answered_with_its_status_message_and_headers() -> None:
    def refuse(request: Request, params: Mapping[str, str]) -> bytes:
        raise HttpError(429, "slow down", {b"retry-after": b"3"})

    status, headers, body = get_json(RouteTable([Route("GET", "/x", refuse)]), "GET", "/x")
    assert (status, body, headers["retry-after"]) == (429, {"error": "slow down"}, "3")


def test_the_authorizer_sees_each_route_before_its_handler_and_can_refuse() -> None:
    """The table calls authorize(request, route, params) before the handler; an HttpError from it
    is the answer and the handler is not called."""
    seen: list[str] = []
    called: list[str] = []

    def authorize(request: Request, route: Route, params: Mapping[str, str]) -> None:
        seen.append(route.access)
        if route.access != "public" and request.getHeader(b"authorization") is None:
            raise HttpError(401, "authentication required")

    def handler(request: Request, params: Mapping[str, str]) -> bytes:
        called.append(params["name"])
        return json_response(request, 200, {})

    table = RouteTable(
        [
            Route("GET", "/open/{name}", handler),
            Route("GET", "/closed/{name}", handler, access="read"),
        ],
        authorize=authorize,
    )
    assert get_json(table, "GET", "/open/a")[0] == 200
    assert get_json(table, "GET", "/closed/b")[::2] == (401, {"error": "authentication required"})
    assert (seen, called) == (["public", "read"], ["a"])


@pytest.mark.parametrize(
    "routes, message",
    [
        (
            [Route("GET", "/a", answer("x")), Route("GET", "/a", answer("y"))],
            "two routes for GET /a",
        ),
        (
            [Route("GET", "/a/{x}", answer("x")), Route("GET", "/a/{y}", answer("y"))],
            "two routes for GET /a/{y}",
        ),
    ],
)
def test_a_table_with_two_routes_for_one_request_is_refused(
    routes: list[Route], message: str
) -> None:
    with pytest.raises(RouteError, match=message.replace("{", r"\{").replace("}", r"\}")):
        RouteTable(routes)


@pytest.mark.parametrize(
    "method, pattern",
    [
        ("GET", "a"),
        ("GET", "/a/{x}/{x}"),
        ("GET", "/a/{1x}"),
        ("GET", "/a/b{x}"),
        ("get", "/a"),
        ("", "/a"),
        ("HEAD", "/a"),
    ],
)
def test_a_malformed_route_is_refused(method: str, pattern: str) -> None:
    with pytest.raises(RouteError):
        Route(method, pattern, answer("x"))


def test_extra_segments_after_a_stream_are_a_404_and_publish_nothing() -> None:
    """POST /streams/events/extra used to publish to events; it is no route at all."""
    master = make_master()
    for method in ("POST", "GET"):
        status, body = request(master, method, "/streams/events/extra", b'{"rows": [1]}')
        assert (status, body) == (404, {"error": "no such path: /streams/events/extra"})
    assert master.store.stream_names() == []
    assert request(master, "GET", "/health/extra")[0] == 404


def test_a_url_encoded_stream_name_is_decoded_before_it_is_checked() -> None:
    """%65 is an e; an encoded slash stays in the name, which is then refused."""
    master = make_master()
    assert request(master, "POST", "/streams/ev%65nts", b'{"rows": [1]}') == (
        200,
        {"stream": "events", "token": 1, "origin": master.log.origin_id},
    )
    assert request(master, "GET", "/streams/%65vents") == (200, {"stream": "events", "head": 1})
    status, body = request(master, "POST", "/streams/a%2Fb", b'{"rows": [1]}')
    assert status == 400
    assert body["error"].startswith("invalid stream name 'a/b'")
    assert master.store.stream_names() == ["events"]


def test_a_stream_name_that_is_not_utf8_is_refused_naming_its_bytes() -> None:
    """A non-UTF-8 name is shown with \\xNN escapes: a publish is a 400, and on a master
    with strict streams a read is a 404; nothing is published."""
    master = make_master(streams=("events",), strict_streams=True)
    status, body = request(master, "POST", "/streams/%FFevents", b'{"rows": [1]}')
    assert status == 400
    assert body["error"].startswith("invalid stream name '\\\\xffevents'")
    assert request(master, "GET", "/streams/%FF") == (404, {"error": "unknown stream '\\\\xff'"})
    assert master.head("events") == 0


@pytest.mark.parametrize(
    "method, path, allow",
    [
        ("PATCH", "/streams/events", "DELETE, GET, HEAD, POST"),
        ("POST", "/streams", "GET, HEAD"),
        ("PUT", "/health", "GET, HEAD"),
    ],
)
def test_the_master_answers_a_wrong_method_with_a_json_405(
    method: str, path: str, allow: str
) -> None:
    status, headers, body = raw_request(master_site_root(), method, path)
    assert (status, headers["allow"]) == (405, allow)
    assert json.loads(body)["error"].startswith(f"method {method} is not allowed")


def master_site_root() -> Any:
    return admin_site(make_master()).resource


def test_a_failure_inside_a_master_handler_is_a_json_500(monkeypatch: pytest.MonkeyPatch) -> None:
    master = make_master()

    def broken() -> list[str]:
        raise RuntimeError("store went away")

    monkeypatch.setattr(master, "stream_names", broken)
    assert request(master, "GET", "/streams") == (500, {"error": "internal error"})
    assert request(master, "GET", "/health")[0] == 200


def test_a_post_to_the_master_site_is_not_parsed_as_a_form() -> None:
    """The master's site uses JsonRequest, which sets Content-Type aside on POSTs: a body
    that is also a valid form leaves request.args empty, while a GET's query still counts."""
    site = admin_site(make_master())
    assert site.requestFactory is JsonRequest
    channel = DummyChannel()
    channel.site = site
    post = JsonRequest(channel)
    post.requestHeaders.setRawHeaders(b"content-type", [b"application/x-www-form-urlencoded"])
    post.gotLength(3)
    post.handleContentChunk(b"a=b")
    post.requestReceived(b"POST", b"/streams/events", b"HTTP/1.1")
    assert post.args == {}
    get = JsonRequest(channel)
    get.gotLength(0)
    get.requestReceived(b"GET", b"/streams?a=b", b"HTTP/1.1")
    assert get.args == {b"a": [b"b"]}


@pytest.mark.parametrize(
    "failure, status, error",
    [
        (None, 200, None),
        (PublishError(503, "store unavailable"), 503, "store unavailable"),
        (OSError("disk full"), 500, "internal error while publishing"),
    ],
)
def test_a_publish_is_answered_when_its_commit_settles(
    monkeypatch: pytest.MonkeyPatch, failure: Exception | None, status: int, error: str | None
) -> None:
    """The answer waits for the commit's Deferred: the tokens once it fires, the
    PublishError's status and message if it fails with one, and a 500 otherwise."""
    master = make_master()
    commits: list[Deferred[list[int]]] = []

    def submit_many(stream: str, encoded: Any) -> Deferred[list[int]]:
        commits.append(Deferred())
        return commits[-1]

    monkeypatch.setattr(master, "submit_many", submit_many)
    channel = DummyChannel()
    channel.site = admin_site(master)
    post = JsonRequest(channel)
    body = b'{"rows": [1]}'
    post.gotLength(len(body))
    post.handleContentChunk(body)
    post.requestReceived(b"POST", b"/streams/events", b"HTTP/1.1")
    assert not post.finished and len(commits) == 1
    if failure is None:
        commits[0].callback([7])
    else:
        commits[0].errback(failure)
    assert post.finished and post.code == status
    answer: dict[str, object] = (
        {"stream": "events", "token": 7, "origin": master.log.origin_id}
        if error is None else {"error": error}
    )
    assert (
        json.dumps(answer, separators=(",", ":")).encode() + b"\n"
        in channel.transport.written.getvalue()
    )
