"""Stream replication for Twisted services.

A master owns named streams of rows, each row stamped with an increasing integer token;
workers connect over TCP, subscribe, and receive every row in order, resuming after any
disconnect from the last token they recorded. See README.rst and docs/protocol.rst.

:func:`master_service_from` and :func:`worker_service_from` (from :mod:`replication.embed`,
imported on first use so that ``import replication`` stays light) run a master or a worker
inside one's own program: see docs/embedding.rst.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "master_service_from", "worker_service_from"]

_EMBEDDED = frozenset({"master_service_from", "worker_service_from"})


def __getattr__(name: str) -> Any:
    """The names of :mod:`replication.embed`, imported when first asked for."""
    if name in _EMBEDDED:
        from replication import embed

        return getattr(embed, name)
    raise AttributeError(f"module 'replication' has no attribute {name!r}")
