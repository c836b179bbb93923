"""The master: owns the streams, serves workers their catch-up and live rows, takes publishes.

The package, by responsibility (who calls whom, top down):

- :mod:`~replication.master.service`: :class:`Master` joins the parts below for one master:
  it checks and encodes publishes, admits connections, runs retention on a timer and builds
  the read-only :class:`~replication.snapshot.MasterSnapshot` for metrics and status.
- :mod:`~replication.master.connection`: :class:`MasterConnection`, the master's end of one
  connection (framing, handshake and keepalive come from
  :class:`~replication.wire.protocol.ReplicationProtocol`); it hands ``REPLICATE`` to the fan-out.
- :mod:`~replication.master.fanout`: :class:`~replication.master.fanout.FanOut`,
  subscriptions, catch-up paged from the store and live writes, talking to connections
  through the narrow :class:`~replication.master.fanout.Follower` interface.
- :mod:`~replication.master.log`: :class:`~replication.master.log.StreamLog`, the one owner
  of the stream state (heads per stream and origin), the commit queue (group commit on a
  blocking store) and the order of commits; the fan-out is one of its listeners.
- the store, reached only through the log and only asynchronously
  (:mod:`replication.store.asynchronous`).

A token is sent to workers only after the store has committed it, so no worker ever sees a
token that a crash could take back. :func:`~replication.master.app.master_service` runs a
master as a Twisted service tree.
"""

from __future__ import annotations

from replication.master.connection import TOO_MANY_CONNECTIONS, MasterConnection, MasterFactory
from replication.master.fanout import PAGES_PER_TURN, FanOut, Follower, Subscription
from replication.master.log import PublishError, StreamKey, StreamLog, StreamState
from replication.master.service import Master

__all__ = [
    "PAGES_PER_TURN",
    "TOO_MANY_CONNECTIONS",
    "FanOut",
    "Follower",
    "Master",
    "MasterConnection",
    "MasterFactory",
    "PublishError",
    "StreamKey",
    "StreamLog",
    "StreamState",
    "Subscription",
]
