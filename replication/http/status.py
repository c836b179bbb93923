"""What ``GET /status`` answers: :func:`master_status` describes the master (with its origin
id and process fingerprint), its streams, its
connections (with each worker's position and lag per stream) and what it remembers of each
worker name (connects, last disconnect), all read from the master's one read-only view,
:meth:`Master.snapshot <replication.master.Master.snapshot>`."""

from __future__ import annotations

from typing import Any

from replication import __version__
from replication.master import Master


def master_status(master: Master) -> dict[str, Any]:
    """What ``GET /status`` answers, from the master's snapshot: the master (its origin id,
    ``null`` until the store is open, and this process's fingerprint), each stream
    (head, oldest retained token, rows retained, when it was created: ``null`` when not
    known), each connection (worker name, address,
    since when, per stream the last token *sent* and the lag behind the head, the position
    the worker reported *handled* and its lag, ``null`` until reported, bytes buffered)
    and, per worker name, how often it connected and why it last disconnected.
    Times are seconds since the epoch."""
    view = master.snapshot()
    now = view.now
    open_by_label: dict[str, int] = {}
    connections = []
    for connection in view.connections:
        open_by_label[connection.label] = open_by_label.get(connection.label, 0) + 1
        since = connection.connected_since
        connections.append({
            "worker": connection.peer_name,
            "address": connection.address,
            "connected_since": since,
            "connected_seconds": now - since if since is not None else None,
            "all_streams": connection.all_streams,
            "streams": [
                {
                    "name": f.name, "position": f.position, "lag": f.lag, "live": f.live,
                    "handled": f.handled, "handled_lag": f.handled_lag,
                }
                for f in connection.streams
            ],
            "buffered_bytes": connection.buffered_bytes,
        })
    return {
        "server_name": view.server_name,
        "origin_id": view.origin_id,
        "fingerprint": view.fingerprint,
        "version": __version__,
        "now": now,
        "started_at": view.started_at,
        "uptime_seconds": now - view.started_at,
        "limits": {"max_buffer_bytes": view.max_buffer_bytes},
        "streams": [
            {
                "name": s.name, "head": s.head, "oldest": s.oldest,
                "retained_rows": s.retained_rows, "rows_published": s.rows_published,
                "created": s.created,
            }
            for s in view.streams
        ],
        "connections": connections,
        "workers": [
            {
                "name": peer.label,
                "connected": open_by_label.get(peer.label, 0),
                "connects": peer.connects,
                "disconnects": dict(peer.disconnects),
                "last_disconnect_reason": peer.last_disconnect_reason,
                "last_disconnect_at": peer.last_disconnect_at,
            }
            for peer in view.peers
        ],
    }
