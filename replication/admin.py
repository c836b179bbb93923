"""The master's HTTP interface (twisted.web): publishing and health.

``POST /streams/<stream>`` with a JSON body ``{"rows": [<json>, ...]}`` publishes the rows as
one token and answers ``{"stream": ..., "token": N}`` once they are committed. Every refusal
is a JSON ``{"error": "..."}`` with a 4xx or 5xx status, and nothing of a refused request is
published. ``GET /health`` answers 200 while the master serves.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from replication import __version__
from replication.master import Master, PublishError


def _respond(request: Request, status: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


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
            document = json.loads(body)
        except ValueError as e:
            return _error(request, 400, f"body is not valid JSON: {e}")
        except RecursionError:
            return _error(request, 400, "body is nested too deeply")
        if not isinstance(document, dict) or "rows" not in document:
            return _error(request, 400, 'body must be a JSON object {"rows": [<json>, ...]}')
        extra = set(document) - {"rows"}
        if extra:
            return _error(request, 400, f"unknown field(s) in body: {', '.join(sorted(extra))}")
        rows = document["rows"]
        if not isinstance(rows, list):
            return _error(request, 400, '"rows" must be a list of JSON values')
        try:
            encoded = self.master.encode_rows(self.stream, rows)
        except PublishError as e:
            return _error(request, e.status, e.message)
        d: Deferred[int] = self.master.submit(self.stream, encoded)

        def published(token: int) -> None:
            request.write(_respond(request, 200, {"stream": self.stream, "token": token}))
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


def admin_resource(master: Master) -> Resource:
    """The root resource of the master's HTTP listener."""
    root = Resource()
    root.putChild(b"streams", _Streams(master))
    root.putChild(b"health", _Health(master))
    return root
