"""The HTTP interfaces (twisted.web): the master's publishing, status, health and metrics,
and a worker's metrics.

``POST /streams/<stream>`` with a JSON body ``{"rows": [<json>, ...]}`` publishes the rows as
one token and answers ``{"stream": ..., "token": N}`` once they are committed. Every refusal
is a JSON ``{"error": "..."}`` with a 4xx or 5xx status, and nothing of a refused request is
published. ``GET /health`` answers 200 while the master serves. ``GET /status`` describes the
master, its streams, its connections (with each worker's position and lag per stream) and
what it remembers of each worker name (connects, last disconnect); :func:`master_status`
builds it. ``GET /metrics`` is the Prometheus text format of the master's registry;
:func:`metrics_resource` serves a worker's (``metrics.listen``). Both render on the reactor
thread, which is where :mod:`replication.metrics` expects to be scraped.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from replication import __version__
from replication.commands import CommandParseError, decode_json_bytes, encode_parsed_json
from replication.master import Master, MasterConnection, PublishError
from replication.metrics import stream_retention


def _respond(request: Request, status: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return encode_parsed_json(body).encode() + b"\n"


def _error(request: Request, status: int, message: str) -> bytes:
    return _respond(request, status, {"error": message})


class _StreamResource(Resource):
    isLeaf = True

    def __init__(self, master: Master, stream: str) -> None:
        super().__init__()
        self.master = master
        self.stream = stream

    def render_POST(self, request: Request) -> bytes | int:
        limit = self.master.config.limits.max_body_bytes
        length = request.getHeader(b"content-length")
        content = request.content
        if content is None:
            return _error(request, 400, "missing request body")
        body = content.read(limit + 1)
        if len(body) > limit or (length is not None and length.isdigit() and int(length) > limit):
            return _error(
                request, 413,
                f"request body is over {limit} bytes (limits.max_body_bytes); publish in smaller batches",
            )
        try:
            document = decode_json_bytes(body, what="body")
        except CommandParseError as e:
            return _error(request, 400, str(e))
        except RecursionError:
            return _error(request, 400, "body is nested too deeply")
        shape = 'body must be a JSON object {"rows": [<json>, ...]} or {"tokens": [[<json>, ...], ...]}'
        if not isinstance(document, dict) or len(document.keys() & {"rows", "tokens"}) != 1:
            return _error(request, 400, shape)
        extra = set(document) - {"rows", "tokens"}
        if extra:
            return _error(request, 400, f"unknown field(s) in body: {', '.join(sorted(extra))}")
        if "rows" in document:
            batches = [document["rows"]]
            if not isinstance(batches[0], list):
                return _error(request, 400, '"rows" must be a list of JSON values')
        else:
            batches = document["tokens"]
            if not isinstance(batches, list) or not batches or not all(
                isinstance(rows, list) for rows in batches
            ):
                return _error(request, 400, '"tokens" must be a non-empty list of lists of JSON values')
        try:
            encoded = self.master.encode_tokens(self.stream, batches, parsed=True)
        except PublishError as e:
            return _error(request, e.status, e.message)
        d: Deferred[list[int]] = self.master.submit_many(self.stream, encoded)
        single = "rows" in document

        def published(tokens: list[int]) -> None:
            answer: dict[str, Any] = {"stream": self.stream}
            if single:
                answer["token"] = tokens[0]
            else:
                answer["tokens"] = tokens
            request.write(_respond(request, 200, answer))
            request.finish()

        def failed(failure: Failure) -> None:
            if failure.check(PublishError):
                error: PublishError = failure.value  # type: ignore[assignment]
                request.write(_error(request, error.status, error.message))
            else:
                request.write(_error(request, 500, "internal error while publishing"))
            request.finish()

        d.addCallbacks(published, failed)
        return NOT_DONE_YET

    def render_GET(self, request: Request) -> bytes:
        if not self.master.knows(self.stream):
            return _error(request, 404, f"unknown stream {self.stream!r}")
        return _respond(request, 200, {"stream": self.stream, "head": self.master.head(self.stream)})


class _Streams(Resource):
    def __init__(self, master: Master) -> None:
        super().__init__()
        self.master = master

    def getChild(self, path: bytes, request: Request) -> Resource:
        try:
            name = path.decode("utf-8")
        except UnicodeDecodeError:
            name = ""
        return _StreamResource(self.master, name)

    def render_GET(self, request: Request) -> bytes:
        streams = {name: self.master.head(name) for name in self.master.stream_names()}
        return _respond(request, 200, {"streams": streams})


class _Health(Resource):
    isLeaf = True

    def __init__(self, master: Master) -> None:
        super().__init__()
        self.master = master

    def render_GET(self, request: Request) -> bytes:
        return _respond(request, 200, {"status": "ok", "version": __version__})


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self.registry)


class _Status(Resource):
    isLeaf = True

    def __init__(self, master: Master) -> None:
        super().__init__()
        self.master = master

    def render_GET(self, request: Request) -> bytes:
        return _respond(request, 200, master_status(self.master))


def _address(connection: MasterConnection) -> str:
    transport: Any = connection.transport
    peer: Any = transport.getPeer() if transport is not None else None
    if hasattr(peer, "host") and hasattr(peer, "port"):
        return f"{peer.host}:{peer.port}"
    return str(getattr(peer, "name", None) or peer)


def master_status(master: Master) -> dict[str, Any]:
    """What ``GET /status`` answers: the master, each stream (head, oldest retained token,
    rows retained), each connection (worker name, address, since when, per stream the last
    token *sent* and the lag behind the head, bytes buffered) and, per worker name, how often
    it connected and why it last disconnected. Times are seconds since the epoch."""
    now = master.clock.seconds()
    metrics = master.metrics
    streams = []
    for state in master.stream_states():
        oldest, retained = stream_retention(master, state.name, state.head)
        streams.append({
            "name": state.name, "head": state.head, "oldest": oldest, "retained_rows": retained,
            "rows_published": state.rows_published,
        })
    connections = []
    open_by_label: dict[str, int] = {}
    for connection in sorted(master.connections, key=lambda c: c.connected_since or 0.0):
        label = metrics.peer_label(connection.peer_name)
        open_by_label[label] = open_by_label.get(label, 0) + 1
        since = connection.connected_since
        followed = []
        for stream, position in master.sent_positions(connection).items():
            sub = connection.subscriptions.get(stream)
            followed.append({
                "name": stream,
                "position": position,
                "lag": max(master.head(stream) - position, 0),
                "live": sub.live if sub is not None else True,
            })
        connections.append({
            "worker": connection.peer_name,
            "address": _address(connection),
            "connected_since": since,
            "connected_seconds": now - since if since is not None else None,
            "all_streams": master.follows_all(connection),
            "streams": followed,
            "buffered_bytes": connection.queued_bytes,
        })
    workers = [
        {
            "name": label,
            "connected": open_by_label.get(label, 0),
            "connects": record.connects,
            "disconnects": dict(sorted(record.disconnects.items())),
            "last_disconnect_reason": record.last_disconnect_reason,
            "last_disconnect_at": record.last_disconnect_at,
        }
        for label, record in sorted(metrics.peers.items())
    ]
    return {
        "server_name": master.config.server_name,
        "version": __version__,
        "now": now,
        "started_at": master.started_at,
        "uptime_seconds": now - master.started_at,
        "limits": {"max_buffer_bytes": master.config.limits.max_buffer_bytes},
        "streams": streams,
        "connections": connections,
        "workers": workers,
    }


class JsonRequest(Request):
    """A request for an API that reads JSON bodies only.

    twisted.web parses the body of every POST that has a Content-Type header as a form
    (through the email package), which costs about 0.1 ms a request; this API never reads
    forms, so the header is set aside before that step.
    """

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if command == b"POST":
            self.requestHeaders.removeHeader(b"content-type")
        super().requestReceived(command, path, version)


def admin_site(master: Master) -> Site:
    """The master's HTTP site: :func:`admin_resource` with :class:`JsonRequest`."""
    site = Site(admin_resource(master))
    site.requestFactory = JsonRequest
    site.noisy = False
    return site


def admin_resource(master: Master) -> Resource:
    """The root resource of the master's HTTP listener."""
    root = Resource()
    root.putChild(b"streams", _Streams(master))
    root.putChild(b"health", _Health(master))
    root.putChild(b"status", _Status(master))
    root.putChild(b"metrics", _Metrics(master.metrics.registry))
    return root


def metrics_resource(registry: CollectorRegistry) -> Resource:
    """A root resource that serves ``registry`` at ``/metrics`` (a worker's
    ``metrics.listen``)."""
    root = Resource()
    root.putChild(b"metrics", _Metrics(registry))
    return root
