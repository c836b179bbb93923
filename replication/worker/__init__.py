"""The worker: follows streams of a master and hands each token to a handler, once, in order.

The package's modules:

* :mod:`replication.worker.service`: :class:`Worker` (what outlives a connection) and
  :func:`worker_service` (the service tree: metrics listener, position sync, connection).
* :mod:`replication.worker.connection`: :class:`WorkerConnection` (one connection to the
  master: parses and assembles tokens).
* :mod:`replication.worker.runner`: :class:`TokenRunner` (complete tokens in: handler calls,
  retries, positions recorded; outlives connections).
* :mod:`replication.worker.positions`: the :class:`Positions` interface, in memory and in
  the position file.
* :mod:`replication.worker.handlers`: what a handler is, the default one, and loading one
  named in the configuration.
* :mod:`replication.worker.reporting`: what the worker logs about reaching its master
  (failed connects, rate-limited; reconnects) and about catching up (progress, summary).

The names below are the package's public interface (``from replication.worker import
Worker``).
"""

from replication.worker.connection import WorkerConnection, WorkerFactory
from replication.worker.positions import MemoryPositions, PositionFile, Positions
from replication.worker.runner import FIRST_RETRY_DELAY, InputGate, TokenRunner
from replication.worker.service import (
    POSITION_SYNC_INTERVAL,
    Worker,
    WorkerService,
    worker_service,
)

__all__ = [
    "FIRST_RETRY_DELAY",
    "POSITION_SYNC_INTERVAL",
    "InputGate",
    "MemoryPositions",
    "PositionFile",
    "Positions",
    "TokenRunner",
    "Worker",
    "WorkerConnection",
    "WorkerFactory",
    "WorkerService",
    "worker_service",
]
