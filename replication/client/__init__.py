"""Publisher clients: publish to a master (or a cluster of masters) over the replication
port (docs/protocol.rst, "Publishing"; docs/publishing.rst).

- :class:`Publisher` (:mod:`replication.client.blocking`): blocking and thread-safe, for
  code that runs no reactor; it imports neither Twisted nor asyncio.
- :class:`~replication.client.twisted_client.TwistedPublisher`: Deferreds, on a reactor.
- :class:`~replication.client.asyncio_client.AsyncPublisher`: awaitables, on an asyncio
  loop.

All three return :class:`Published` (``token``, ``tokens``, ``origin``) and raise
:class:`PublishRefused` (with ``status``), :class:`MasterUnreachable` and
:class:`PublishTimeout`, all :class:`PublishError`. The shared sans-IO part is
:mod:`replication.client.core`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from replication.client.blocking import Publisher, PublishFuture
from replication.client.core import (
    MasterUnreachable,
    ProtocolViolation,
    Published,
    PublishError,
    PublishRefused,
    PublishTimeout,
)

if TYPE_CHECKING:
    from replication.client.asyncio_client import AsyncPublisher
    from replication.client.twisted_client import TwistedPublisher

__all__ = [
    "AsyncPublisher",
    "MasterUnreachable",
    "ProtocolViolation",
    "PublishError",
    "PublishFuture",
    "PublishRefused",
    "PublishTimeout",
    "Published",
    "Publisher",
    "TwistedPublisher",
]


def __getattr__(name: str) -> Any:
    # The Twisted and asyncio clients are imported on first use, so that the blocking
    # client costs neither import.
    if name == "TwistedPublisher":
        from replication.client.twisted_client import TwistedPublisher

        return TwistedPublisher
    if name == "AsyncPublisher":
        from replication.client.asyncio_client import AsyncPublisher

        return AsyncPublisher
    raise AttributeError(name)
