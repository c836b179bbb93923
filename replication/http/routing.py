"""The HTTP route table: one place that maps (method, path pattern) to a handler and turns
every refusal and every error into a JSON answer ``{"error": "..."}`` with its status.

A :class:`RouteTable` holds :class:`Route` s; :class:`Router` is the twisted.web resource
that serves one. The router is a leaf, so the whole path below it (``request.postpath``:
the segments between ``/``, each percent-decoded by twisted.web) is matched here against
each route's pattern: ``/streams/{stream}`` has a literal segment and a parameter that
takes exactly one segment, any bytes (the empty segment too), decoded as UTF-8 with
undecodable bytes shown as ``\\xNN``. Then:

- a path that no pattern matches is a 404;
- a path that a pattern matches under other methods only is a 405 with an ``Allow`` header;
- ``HEAD`` is served by the ``GET`` handler (twisted.web sends the headers only);
- a handler answers ``bytes`` (see :func:`json_response`) or ``NOT_DONE_YET``; one that
  raises :class:`HttpError` is answered with its status and message; any other exception
  is logged and answered 500 ``{"error": "internal error"}``.

Authentication plugs in here: each route names the kind of access it needs
(:attr:`Route.access`), and a table built with ``authorize`` calls
``authorize(request, route, params)`` before the route's handler; it refuses a request by
raising :class:`HttpError` (401 or 403). A master with credentials installs
:func:`replication.http.auth.bearer_authorizer`; without, every route is open.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from replication.wire.commands import encode_parsed_json

log = logging.getLogger(__name__)

#: A route's handler: called with the request and the pattern's parameters; answers the
#: response body, or ``twisted.web.server.NOT_DONE_YET`` when it finishes the request later.
RouteHandler = Callable[[Request, Mapping[str, str]], "bytes | int"]

#: Called before a route's handler; refuses the request by raising :class:`HttpError`.
Authorizer = Callable[[Request, "Route", Mapping[str, str]], None]


class HttpError(Exception):
    """A refusal answered as ``{"error": message}`` with ``status`` and extra ``headers``."""

    def __init__(
        self, status: int, message: str, headers: Mapping[bytes, bytes] | None = None
    ) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.headers: dict[bytes, bytes] = dict(headers or {})


class RouteError(ValueError):
    """A route table that cannot be built: a malformed pattern or a duplicate route."""


@dataclass(frozen=True)
class _Segment:
    text: str
    is_parameter: bool


def _parse_pattern(pattern: str) -> tuple[_Segment, ...]:
    if not pattern.startswith("/"):
        raise RouteError(f"route pattern {pattern!r} must start with /")
    segments = []
    names: set[str] = set()
    for part in pattern[1:].split("/"):
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1]
            if not name.isidentifier() or name in names:
                raise RouteError(f"route pattern {pattern!r}: bad or repeated parameter {part!r}")
            names.add(name)
            segments.append(_Segment(name, True))
        elif "{" in part or "}" in part:
            raise RouteError(f"route pattern {pattern!r}: a parameter must be a whole segment")
        else:
            segments.append(_Segment(part, False))
    return tuple(segments)


@dataclass(frozen=True)
class Route:
    """One entry of a :class:`RouteTable`.

    :param method: the HTTP method, upper case; not ``HEAD``, which ``GET`` answers.
    :param pattern: the path, ``/``-separated; a segment ``{name}`` is a parameter.
    :param handler: see :data:`RouteHandler`.
    :param access: the kind of access the route needs, for an :data:`Authorizer` to
        check (the master uses ``public``, ``read``, ``metrics`` and ``publish``).
    """

    method: str
    pattern: str
    handler: RouteHandler
    access: str = "public"
    segments: tuple[_Segment, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.method.isupper() or not self.method.isalpha():
            raise RouteError(f"route method {self.method!r} must be an upper-case word")
        if self.method == "HEAD":
            raise RouteError("HEAD is answered by the GET route of the same pattern")
        object.__setattr__(self, "segments", _parse_pattern(self.pattern))

    def match(self, path: Sequence[bytes]) -> dict[str, str] | None:
        """The parameters if ``path`` (percent-decoded segments) fits the pattern."""
        if len(path) != len(self.segments):
            return None
        params = {}
        for segment, given in zip(self.segments, path, strict=True):
            if segment.is_parameter:
                params[segment.text] = given.decode("utf-8", "backslashreplace")
            elif given != segment.text.encode():
                return None
        return params


def _show(path: Sequence[bytes]) -> str:
    return "/" + "/".join(s.decode("utf-8", "backslashreplace") for s in path)


class RouteTable:
    """Routes matched in order; see the module documentation for the answers.

    :param routes: no two may answer the same requests (the same method, and patterns
        that differ only in the names of their parameters).
    :param authorize: called before every handler; ``None``: every route is open.
    """

    def __init__(self, routes: Iterable[Route], *, authorize: Authorizer | None = None) -> None:
        self.routes = tuple(routes)
        self.authorize = authorize
        seen: set[tuple[str, tuple[str | None, ...]]] = set()
        for route in self.routes:
            shape = tuple(None if s.is_parameter else s.text for s in route.segments)
            key = (route.method, shape)
            if key in seen:
                raise RouteError(f"two routes for {route.method} {route.pattern}")
            seen.add(key)

    def resolve(self, method: bytes, path: Sequence[bytes]) -> tuple[Route, dict[str, str]]:
        """The route for ``method`` on ``path`` (percent-decoded segments) and its
        parameters; raises :class:`HttpError` 404 or 405 (with ``Allow``)."""
        wanted = "GET" if method == b"HEAD" else method.decode("latin-1")
        allowed: set[str] = set()
        for route in self.routes:
            params = route.match(path)
            if params is None:
                continue
            if route.method == wanted:
                return route, params
            allowed.add(route.method)
        if not allowed:
            raise HttpError(404, f"no such path: {_show(path)}")
        if "GET" in allowed:
            allowed.add("HEAD")
        allow = ", ".join(sorted(allowed))
        raise HttpError(
            405,
            f"method {method.decode('latin-1')} is not allowed on {_show(path)} (allowed: {allow})",
            {b"allow": allow.encode()},
        )


def json_response(request: Request, status: int, body: Mapping[str, Any]) -> bytes:
    """Set ``status`` and the JSON headers; answer ``body`` as one line of compact JSON."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")  # type: ignore[no-untyped-call]
    request.setHeader(b"cache-control", b"no-store")  # type: ignore[no-untyped-call]
    return encode_parsed_json(body).encode() + b"\n"


def json_error(request: Request, status: int, message: str) -> bytes:
    """:func:`json_response` of ``{"error": message}``."""
    return json_response(request, status, {"error": message})


def finish(request: Request, body: bytes) -> None:
    """Write ``body`` and finish a request whose handler answered ``NOT_DONE_YET``."""
    request.write(body)  # type: ignore[no-untyped-call]
    request.finish()  # type: ignore[no-untyped-call]


class Router(Resource):
    """The twisted.web resource that serves a :class:`RouteTable` (mount it as a site's
    root: it is a leaf, and matches everything below it)."""

    isLeaf = True

    def __init__(self, table: RouteTable) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.table = table

    def render(self, request: Request) -> bytes | int:
        try:
            route, params = self.table.resolve(request.method, request.postpath or [])
            if self.table.authorize is not None:
                self.table.authorize(request, route, params)
            return route.handler(request, params)
        except HttpError as e:
            for name, value in e.headers.items():
                request.setHeader(name, value)  # type: ignore[no-untyped-call]
            return json_error(request, e.status, e.message)
        except Exception:
            log.exception("error answering %s %s", request.method, request.uri)
            return json_error(request, 500, "internal error")
