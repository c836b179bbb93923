"""The master's HTTP API and a worker's metrics endpoint: the route tables and their handlers.

:func:`master_routes` is the one list of the master's routes:

- ``POST /streams/<stream>`` with a JSON body ``{"rows": [<json>, ...]}`` publishes the rows
  as one token and answers ``{"stream": ..., "token": N}`` once they are committed;
  ``{"tokens": [[<json>, ...], ...]}`` publishes several tokens at once and answers
  ``{"stream": ..., "tokens": [N, ...]}``. Nothing of a refused request is published.
- ``GET /streams/<stream>`` answers the stream's head; ``GET /streams`` every stream's head (``"streams"``: name -> head) and, in ``"details"``,
  each stream's head, oldest retained token, rows retained, retention and creation time.
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

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from replication import __version__
from replication.wire.commands import CommandParseError, decode_json_bytes
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
from replication.http.page import serve_status_page
from replication.http.status import master_status
from replication.master import Master, PublishError
from replication.master.log import DeleteError, StreamState

_SHAPE = 'body must be a JSON object {"rows": [<json>, ...]} or {"tokens": [[<json>, ...], ...]}'


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
            413, f"request body is over {limit} bytes (limits.max_body_bytes); publish in smaller batches"
        )
    try:
        document = decode_json_bytes(body, what="body")
    except CommandParseError as e:
        raise HttpError(400, str(e)) from None
    except RecursionError:
        raise HttpError(400, "body is nested too deeply") from None
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
    if not isinstance(batches, list) or not batches or not all(isinstance(rows, list) for rows in batches):
        raise HttpError(400, '"tokens" must be a non-empty list of lists of JSON values')
    return batches, False


class MasterApi:
    """The handlers of the master's routes (see :func:`master_routes`)."""

    def __init__(self, master: Master) -> None:
        self.master = master

    def publish(self, request: Request, params: Mapping[str, str]) -> bytes | int:
        stream = params["stream"]
        batches, single = _read_batches(self.master, request)
        try:
            encoded = self.master.encode_tokens(stream, batches, parsed=True)
        except PublishError as e:
            raise HttpError(e.status, e.message) from None
        d: Deferred[list[int]] = self.master.submit_many(stream, encoded)

        def published(tokens: list[int]) -> None:
            answer: dict[str, Any] = {"stream": stream}
            if single:
                answer["token"] = tokens[0]
            else:
                answer["tokens"] = tokens
            finish(request, json_response(request, 200, answer))

        def failed(failure: Failure) -> None:
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
    return RouteTable([
        Route("POST", "/streams/{stream}", api.publish, access="publish"),
        Route("GET", "/streams/{stream}", api.stream, access="read"),
        Route("DELETE", "/streams/{stream}", api.delete, access="admin"),
        Route("GET", "/streams", api.streams, access="read"),
        Route("GET", "/health", api.health, access="public"),
        Route("GET", "/status", api.status, access="read"),
        Route("GET", "/metrics", serve_metrics(master.metrics.registry), access="metrics"),
        Route("GET", "/", serve_status_page(), access="read"),
    ])


class JsonRequest(Request):
    """A request for an API that reads JSON bodies only.

    twisted.web parses the body of every POST that has a Content-Type header as a form
    (through the email package), which costs about 0.1 ms a request; this API never reads
    forms, so the header is set aside before that step.
    """

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if command == b"POST":
            self.requestHeaders.removeHeader(b"content-type")
        super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]


def admin_site(master: Master) -> Site:
    """The master's HTTP site: :func:`admin_resource` with :class:`JsonRequest`."""
    site = Site(admin_resource(master))  # type: ignore[no-untyped-call]
    site.requestFactory = JsonRequest
    site.noisy = False
    return site


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
