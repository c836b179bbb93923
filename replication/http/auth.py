"""HTTP authentication and authorisation: bearer tokens of the master's credentials, checked
against each route's access label (:attr:`replication.http.routing.Route.access`).

A request proves a credential with ``Authorization: Bearer <name>:<secret>`` (the secret
itself: use TLS on an HTTP listener reachable from elsewhere; see docs/security.rst). The
labels map to permissions:

* ``publish`` (``POST /streams/<stream>``): the credential may publish to ``<stream>``;
* ``read`` (``GET /status``, ``/streams``, ``/streams/<stream>``, the status page):
  ``status``;
* ``admin`` (``DELETE /streams/<stream>``): ``status`` and publish to ``<stream>``;
* ``metrics`` (``/metrics``) and ``public`` (``/health``): ``status``, unless the route's
  path is in ``auth.open_routes`` (``/health`` by default), which anyone may read.

A missing or wrong token is answered 401 ``{"error": "authentication required: ..."}``
with ``WWW-Authenticate: Bearer``, counted in ``replication_auth_failures_total
{transport="http"}`` and slowed down per address as on the replication port (an address
still waiting is answered 401 with ``Retry-After``); a credential without the permission is
answered 403 naming it and what it lacks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

from twisted.web.server import Request

from replication.http.routing import Authorizer, HttpError, Route
from replication.wire.auth import Keyring

if TYPE_CHECKING:
    from replication.master.service import Master

log = logging.getLogger(__name__)

_CHALLENGE = {b"www-authenticate": b'Bearer realm="replication"'}


def bearer_authorizer(master: Master, keyring: Keyring, open_routes: Collection[str]) -> Authorizer:
    """The :data:`~replication.http.routing.Authorizer` of a master with credentials."""

    def authorize(request: Request, route: Route, params: Mapping[str, str]) -> None:
        if route.method == "GET" and route.pattern in open_routes:
            return
        client = request.getClientAddress()  # type: ignore[no-untyped-call]
        address = str(getattr(client, "host", "?"))
        now = master.clock.seconds()
        wait = master.auth_delays.wait(address, now)
        if wait > 0:
            master.auth_failures["http"] += 1
            seconds = math.ceil(wait)
            raise HttpError(
                401, f"authentication failed: too many failures from this address; try again "
                f"in {seconds}s", {**_CHALLENGE, b"retry-after": str(seconds).encode()},
            )
        raw = request.getHeader(b"authorization")
        header = None if raw is None else raw.decode("latin-1")
        scheme, _, token = (header or "").partition(" ")
        credential = (
            keyring.check_token(token.strip()) if scheme.lower() == "bearer" else None
        )
        if credential is None:
            master.auth_failures["http"] += 1
            if header is not None:  # a wrong token, not a forgotten one
                delay = master.auth_delays.failed(address, now)
                log.warning(
                    "HTTP %s %s from %s: authentication failed (credential %r); this address "
                    "waits %gs", route.method, route.pattern, address,
                    token.partition(":")[0][:64], delay,
                )
            raise HttpError(
                401, "authentication required: send Authorization: Bearer <credential>:<secret>",
                _CHALLENGE,
            )
        master.auth_delays.succeeded(address)
        permissions = credential.permissions
        stream = params.get("stream")
        if route.access == "publish":
            allowed = stream is not None and permissions.may_publish(stream)
            lacking = f"may not publish to stream {stream!r}"
        elif route.access == "admin":
            allowed = (
                stream is not None and permissions.status and permissions.may_publish(stream)
            )
            lacking = f"may not delete stream {stream!r} (needs status and publish to it)"
        else:
            allowed = permissions.status
            lacking = "may not read the master's state (status: true)"
        if not allowed:
            raise HttpError(403, f"credential {credential.name!r} {lacking}")

    return authorize


__all__ = ["bearer_authorizer"]
