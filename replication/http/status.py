"""What ``GET /status`` answers: :func:`master_status` describes the master, its streams, its
connections (with each worker's position and lag per stream) and what it remembers of each
worker name (connects, last disconnect)."""

from __future__ import annotations

from typing import Any

from replication import __version__
from replication.master import Master, MasterConnection
from replication.metrics import stream_retention


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
