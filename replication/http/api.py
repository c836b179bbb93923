"""The master's HTTP API and a worker's metrics endpoint: the route tables and their handlers.

:func:`master_routes` is the one list of the master's routes:

- ``POST /streams/<stream>`` with a JSON body ``{"rows": [<json>, ...]}`` publishes the rows
  as one token and answers ``{"stream": ..., "token": N}`` once they are committed;
  ``{"tokens": [[<json>, ...], ...]}`` publishes several tokens at once and answers
  ``{"stream": ..., "tokens": [N, ...]}``. Nothing of a refused request is published.
- ``GET /streams/<stream>`` answers the stream's head; ``GET /streams`` every stream's head
  (``"streams"``: name -> head) and, in ``"details"``, each stream's head, oldest retained token,
  rows retained, retention and creation time.
- ``DELETE /streams/<stream>`` deletes a stream and every row of it (see
  :meth:`Master.delete_stream <replication.master.Master.delete_stream>`) and answers
  ``{"stream": ..., "deleted": true, "recreated": <bool>}``; ``recreated`` is true for a
  configured stream, which is created anew, empty. Its followers are sent ``RESET``.
- ``GET /health`` answers 200 while the master serves.
- ``GET /status`` answers :func:`replication.http.status.master_status`.
- ``GET /`` is the live status page (:mod:`replication.http.page`), which polls ``/status``.
- ``GET /metrics`` is the Prometheus text format of the master's registry;
  :func:`metrics_resource` serves a worker's (``metrics.listen``), with the worker's
  ``GET /health``. Both render on the reactor thread, which is where
  :mod:`replication.metrics` expects to be scraped.

Every refusal is a JSON ``{"error": "..."}`` with a 4xx or 5xx status (see
:mod:`replication.http.routing`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from io import BytesIO
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from replication import __version__
from replication.http.limits import AdminSite, ConnectionLimit, raw_json_answer
from replication.http.page import serve_status_page
from replication.http.routing import (
    HttpError,
    Route,
    RouteHandler,
    Router,
    RouteTable,
    finish,
    json_error,
    json_response,
)
from replication.http.status import master_status
from replication.master import Master, PublishError
from replication.master.log import DeleteError, StreamState
from replication.wire.commands import CommandParseError, decode_json_bytes

log = logging.getLogger(__name__)

_SHAPE = 'body must be a JSON object {"rows": [<json>, ...]} or {"tokens": [[<json>, ...], ...]}'


#: A JSON string, escapes included: what :func:`json_values_bound` leaves out of its count.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def json_values_bound(body: bytes) -> int:
    """At least the number of JSON values in ``body`` (when it is JSON): every value but
    the first follows a ``,`` or opens an array or object, outside strings. Cheap (a regular
    expression and three counts in C), so a body can be judged before it is decoded."""
    stripped = _JSON_STRING.sub(b'""', body)
    return stripped.count(b",") + stripped.count(b"[") + stripped.count(b"{") + 1


def _read_batches(master: Master, request: Request) -> tuple[list[Any], bool]:
    """The tokens' rows of a publish body, and whether it was the one-token ``rows`` form;
    raises :class:`HttpError` for a body that is missing, too large or malformed."""
    limit = master.config.limits.max_body_bytes
    length = request.getHeader(b"content-length")
    content = request.content
    if content is None:
        raise HttpError(400, "missing request body")
    body = content.read(limit + 1)
    if len(body) > limit or (length is not None and length.isdigit() and int(length) > limit):
        raise HttpError(
            413,
            f"request body is over {limit} bytes (limits.max_body_bytes); "
            "publish in smaller batches",
        )
    values = master.config.limits.max_json_values
    if len(body) // 2 + 1 > values and json_values_bound(body) > values:
        # Decoding allocates an object per JSON value (tens of bytes each): a body of tiny
        # values is refused before it is decoded, not after.
        raise HttpError(
            413,
            f"request body holds more than {values} JSON values (limits.max_json_values); "
            "publish in smaller batches",
        )
    try:
        document = decode_json_bytes(body, what="body")
    except CommandParseError as e:
        raise HttpError(400, str(e)) from None
    if not isinstance(document, dict) or len(document.keys() & {"rows", "tokens"}) != 1:
        raise HttpError(400, _SHAPE)
    extra = set(document) - {"rows", "tokens"}
    if extra:
        raise HttpError(400, f"unknown field(s) in body: {', '.join(sorted(extra))}")
    if "rows" in document:
        if not isinstance(document["rows"], list):
            raise HttpError(400, '"rows" must be a list of JSON values')
        return [document["rows"]], True
    batches = document["tokens"]
    if (
        not isinstance(batches, list)
        or not batches
        or not all(isinstance(rows, list) for rows in batches)
    ):
        raise HttpError(400, '"tokens" must be a non-empty list of lists of JSON values')
    return batches, False


class MasterApi:
    """The handlers of the master's routes (see :func:`master_routes`)."""

    def __init__(self, master: Master) -> None:
        self.master = master

    def publish(self, request: Request, params: Mapping[str, str]) -> bytes | int:
        stream = params["stream"]
        publishes = self.master.publishes
        publishes["http"] = publishes.get("http", 0) + 1
        batches, single = _read_batches(self.master, request)
        try:
            encoded = self.master.encode_tokens(stream, batches, parsed=True)
        except PublishError as e:
            raise HttpError(e.status, e.message) from None
        d: Deferred[list[int]] = self.master.submit_many(stream, encoded)
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)

        def published(tokens: list[int]) -> None:
            if gone:
                log.debug("a publisher to %r left before its commit was answered", stream)
                return
            answer: dict[str, Any] = {"stream": stream}
            if single:
                answer["token"] = tokens[0]
            else:
                answer["tokens"] = tokens
            # The tokens are counted per origin: in a cluster they mean something only
            # together with the origin that gave them.
            answer["origin"] = self.master.log.origin_id
            finish(request, json_response(request, 200, answer))

        def failed(failure: Failure) -> None:
            if gone:
                log.debug("a publisher to %r left before its commit failed", stream)
                return
            error = failure.value
            if isinstance(error, PublishError):
                finish(request, json_error(request, error.status, error.message))
            else:
                finish(request, json_error(request, 500, "internal error while publishing"))

        d.addCallbacks(published, failed)
        return NOT_DONE_YET

    def stream(self, request: Request, params: Mapping[str, str]) -> bytes:
        stream = params["stream"]
        if not self.master.knows(stream):
            raise HttpError(404, f"unknown stream {stream!r}")
        return json_response(request, 200, {"stream": stream, "head": self.master.head(stream)})

    def streams(self, request: Request, params: Mapping[str, str]) -> bytes:
        heads = {name: self.master.head(name) for name in self.master.stream_names()}
        details = []
        for state in self.master.stream_states():
            if state.origin:
                continue  # other origins' rows: not streams of this master's own
            retention = self.master.config.retention_for(state.stream)
            details.append({
                "name": state.stream, "head": state.head, "oldest": state.oldest,
                "retained_rows": state.retained_rows, "created": state.created,
                "retention": {"max_rows": retention.max_rows, "max_age": retention.max_age},
            })
        return json_response(request, 200, {"streams": heads, "details": details})

    def delete(self, request: Request, params: Mapping[str, str]) -> int:
        stream = params["stream"]
        d = self.master.delete_stream(stream)

        def deleted(new: StreamState | None) -> None:
            finish(request, json_response(
                request, 200, {"stream": stream, "deleted": True, "recreated": new is not None},
            ))

        def failed(failure: Failure) -> None:
            error = failure.value
            if isinstance(error, DeleteError):
                finish(request, json_error(request, error.status, error.message))
            else:
                finish(request, json_error(request, 500, "internal error while deleting"))

        d.addCallbacks(deleted, failed)
        return NOT_DONE_YET

    def health(self, request: Request, params: Mapping[str, str]) -> bytes:
        return json_response(request, 200, {"status": "ok", "version": __version__})

    def status(self, request: Request, params: Mapping[str, str]) -> bytes:
        return json_response(request, 200, master_status(self.master))


def serve_metrics(registry: CollectorRegistry) -> RouteHandler:
    """A handler answering ``registry`` in the Prometheus text format."""

    def metrics(request: Request, params: Mapping[str, str]) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())  # type: ignore[no-untyped-call]
        request.setHeader(b"cache-control", b"no-store")  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    return metrics


def master_routes(master: Master) -> RouteTable:
    """Every route of the master's HTTP listener."""
    api = MasterApi(master)
    authorize = None
    if master.keyring is not None:
        from replication.http.auth import bearer_authorizer

        authorize = bearer_authorizer(master, master.keyring, master.config.auth.open_routes)
    return RouteTable([
        Route("POST", "/streams/{stream}", api.publish, access="publish"),
        Route("GET", "/streams/{stream}", api.stream, access="read"),
        Route("DELETE", "/streams/{stream}", api.delete, access="admin"),
        Route("GET", "/streams", api.streams, access="read"),
        Route("GET", "/health", api.health, access="public"),
        Route("GET", "/status", api.status, access="read"),
        Route("GET", "/metrics", serve_metrics(master.metrics.registry), access="metrics"),
        Route("GET", "/", serve_status_page(), access="read"),
    ], authorize=authorize)


class JsonRequest(Request):
    """A request for an API that reads JSON bodies only, within the limits of its
    :class:`~replication.http.limits.AdminSite` (none on another site).

    twisted.web parses the body of every POST that has a Content-Type header as a form
    (through the email package), which costs about 0.1 ms a request; this API never reads
    forms, so the header is set aside before that step.

    The body is refused as soon as its size is known to be over ``max_body_bytes``: a
    declared ``Content-Length`` over it is answered 413 before any byte of the body is read
    (and ``Expect: 100-continue`` is not answered), and a chunked body is answered 413 once
    the bytes received pass it; in both cases the connection is closed and what else
    arrives is dropped, so no more than ``max_body_bytes`` is ever kept. A request whose
    headers and body have not all arrived ``request_timeout`` seconds after its first line
    is answered 408 and its connection closed.
    """

    _refused = False
    _received = 0
    _deadline: IDelayedCall | None = None

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)  # type: ignore[no-untyped-call]
        site = getattr(channel, "site", None)
        if isinstance(site, AdminSite):
            self._deadline = site.reactor.callLater(site.request_timeout, self._too_slow)

    def _limit(self) -> int | None:
        site = getattr(self.channel, "site", None)
        return site.max_body_bytes if isinstance(site, AdminSite) else None

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with ``message`` straight on the transport and close."""
        self._refused = True
        self._cancel_deadline()
        self.content = BytesIO()
        transport = self.channel.transport
        if transport is not None:
            transport.write(raw_json_answer(status, message))
        self.channel.loseConnection()  # type: ignore[no-untyped-call]

    def _too_slow(self) -> None:
        self._deadline = None
        self._refuse(408, "request not received in time (http.request_timeout)")

    def _too_large(self, limit: int) -> None:
        self._refuse(
            413,
            f"request body is over {limit} bytes (limits.max_body_bytes); "
            "publish in smaller batches",
        )

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def gotLength(self, length: int | None) -> None:
        limit = self._limit()
        if limit is not None and length is not None and length > limit:
            self.requestHeaders.removeHeader(b"expect")
            self._too_large(limit)
            return
        super().gotLength(length)  # type: ignore[no-untyped-call]

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        limit = self._limit()
        self._received += len(data)
        if limit is not None and self._received > limit:
            self._too_large(limit)
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._cancel_deadline()
        if self._refused:
            return
        if command == b"POST":
            self.requestHeaders.removeHeader(b"content-type")
        super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure) -> None:
        self._cancel_deadline()
        super().connectionLost(reason)  # type: ignore[no-untyped-call]


def admin_site(master: Master) -> AdminSite:
    """The master's HTTP site: :func:`admin_resource` with :class:`JsonRequest`, within the
    master's ``limits.max_body_bytes``, ``http.idle_timeout`` and ``http.request_timeout``."""
    config = master.config
    site = AdminSite(
        admin_resource(master),
        master.clock,
        max_body_bytes=config.limits.max_body_bytes,
        idle_timeout=config.http_idle_timeout,
        request_timeout=config.http_request_timeout,
    )
    site.requestFactory = JsonRequest
    return site


def admin_factory(master: Master) -> ConnectionLimit:
    """What the master's HTTP listener serves: :func:`admin_site` on at most
    ``http.max_connections`` connections at once."""
    return ConnectionLimit(admin_site(master), master.config.http_max_connections)


def admin_resource(master: Master) -> Resource:
    """The root resource of the master's HTTP listener: :func:`master_routes`."""
    return Router(master_routes(master))


def serve_health(health: Callable[[], Mapping[str, Any]]) -> RouteHandler:
    """A handler answering 200 with ``health()`` as JSON."""

    def answer(request: Request, params: Mapping[str, str]) -> bytes:
        return json_response(request, 200, dict(health()))

    return answer


def metrics_resource(
    registry: CollectorRegistry, health: Callable[[], Mapping[str, Any]] | None = None
) -> Resource:
    """A root resource that serves ``registry`` at ``/metrics`` (a worker's
    ``metrics.listen``) and, given ``health``, ``GET /health`` answering 200 with
    ``health()`` (see :meth:`replication.worker.Worker.health`)."""
    routes = [Route("GET", "/metrics", serve_metrics(registry), access="metrics")]
    if health is not None:
        routes.append(Route("GET", "/health", serve_health(health), access="public"))
    return Router(RouteTable(routes))
