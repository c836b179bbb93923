"""The master's live status page, ``GET /``: one HTML document (``status_page.html``, shipped
in this package) with its CSS and JavaScript inline, which polls ``GET /status`` every
second and shows streams (heads and rates), connected workers (with lag) and known workers,
and on a master of a cluster its peer links, the streams' origins and each connection's role.

:func:`load_status_page` reads the document and derives its Content-Security-Policy: the
page may run only its own inline ``<script>`` and apply only its own inline ``<style>``
(allowed by their SHA-256 hashes, so an injected element would not run) and may fetch only
from its own origin. :func:`serve_status_page` is the route handler :mod:`.api` mounts.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from twisted.web.server import Request

from replication.http.routing import RouteHandler

PAGE_RESOURCE = "status_page.html"

_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


class StatusPageError(ValueError):
    """The packaged page is not what :func:`load_status_page` expects (no inline script,
    a ``<script>`` or ``<style>`` with attributes)."""


@dataclass(frozen=True)
class StatusPage:
    """The page's bytes and the headers it is served with."""

    body: bytes
    content_security_policy: str

    def headers(self) -> dict[bytes, bytes]:
        """The response headers of ``GET /``."""
        return {
            b"content-type": b"text/html; charset=utf-8",
            b"content-security-policy": self.content_security_policy.encode(),
            b"x-content-type-options": b"nosniff",
            b"referrer-policy": b"no-referrer",
            b"cache-control": b"no-cache",
        }


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def content_security_policy(html: str) -> str:
    """The policy for ``html``: nothing is allowed but the document's own inline
    ``<script>`` and ``<style>`` elements (by hash) and requests to its own origin."""
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for kind, text in _INLINE.findall(html):
        hashes[kind].append(_digest(text))
    if not hashes["script"]:
        raise StatusPageError("the status page has no inline <script>")
    if re.search(r"<(script|style)\s", html):
        raise StatusPageError("the status page's <script> and <style> must have no attributes")
    return "; ".join([
        "default-src 'none'",
        "script-src " + " ".join(hashes["script"]),
        "style-src " + (" ".join(hashes["style"]) or "'none'"),
        "connect-src 'self'",
        "img-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ])


def status_page_from(html: str) -> StatusPage:
    """:class:`StatusPage` of a document's text."""
    return StatusPage(html.encode(), content_security_policy(html))


@cache
def load_status_page() -> StatusPage:
    """The packaged page (read once)."""
    html = files("replication.http").joinpath(PAGE_RESOURCE).read_text(encoding="utf-8")
    return status_page_from(html)


def serve_status_page(page: StatusPage | None = None) -> RouteHandler:
    """A handler answering ``page`` (default: the packaged one) with its headers."""
    chosen = page if page is not None else load_status_page()
    headers = chosen.headers()

    def status_page(request: Request, params: Mapping[str, str]) -> bytes:
        for name, value in headers.items():
            request.setHeader(name, value)  # type: ignore[no-untyped-call]
        return chosen.body

    return status_page
