"""What ``GET /status`` answers: :func:`master_status` describes the master (with its origin
id and process fingerprint), its streams (per origin), its connections (workers and cluster
peers, with each one's position and lag per stream), what it remembers of each peer name
(connects, last disconnect) and, on a master of a cluster, the cluster (each configured
peer's link, repairs, acknowledgements, relays), all read from the master's one read-only
view, :meth:`Master.snapshot <replication.master.Master.snapshot>`."""

from __future__ import annotations

from typing import Any

from replication import __version__
from replication.master import Master
from replication.snapshot import ClusterView


def master_status(master: Master) -> dict[str, Any]:
    """What ``GET /status`` answers, from the master's snapshot: the master (its origin id,
    ``null`` until the store is open, and this process's fingerprint), each stream
    (head, oldest retained token, rows retained, when it was created: ``null`` when not
    known), each connection (worker name, address,
    since when, per stream the last token *sent* and the lag behind the head, the position
    the worker reported *handled* and its lag, ``null`` until reported, bytes buffered)
    and, per worker name, how often it connected and why it last disconnected.
    Times are seconds since the epoch.

    Each stream is one ``(stream, origin)``: ``origin`` is the origin id of the master that
    accepted its rows (this master's own for its rows, ``local`` true). Each connection has
    a ``role``: ``worker``, or ``peer`` (another master of the cluster, with its ``origin``
    and ``rows_sent``). ``cluster`` is ``null`` unless the master is one of a cluster
    (:func:`cluster_status`)."""
    view = master.snapshot()
    now = view.now
    open_by_label: dict[str, int] = {}
    connections = []
    for connection in view.connections:
        open_by_label[connection.label] = open_by_label.get(connection.label, 0) + 1
        since = connection.connected_since
        connections.append({
            "worker": connection.peer_name,
            "role": connection.role,
            "origin": connection.peer_origin,
            "rows_sent": connection.rows_sent,
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
                "name": s.name, "origin": view.origin_name(s.origin), "local": s.local,
                "head": s.head, "oldest": s.oldest,
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
        "cluster": None if view.cluster is None else cluster_status(view.cluster, now),
    }


def cluster_status(cluster: ClusterView, now: float) -> dict[str, Any]:
    """The ``cluster`` object of ``/status``: ``peers``, every entry of ``cluster.peers`` as
    this master dials it (``state``: connecting, connected, backing off, self, conflict,
    diverged or stopped; ``self`` true for the entry that is this master; ``since`` when it
    took that state; the peer's ``name`` and ``origin`` once announced; ``problem``, the last
    error; counts since start; ``pending_bytes`` received and not yet stored; ``repairs``,
    the other origins asked of it now; ``rows_sent``, the rows this master served to the
    peer of that name); ``repairing``, the origins asked of other peers because their own
    link is down; ``ack_peers`` and ``ack_timeout`` (``cluster.ack_peers``) with ``acks``
    (publishes ``confirmed``, ``timed_out`` since start, ``pending`` now); ``rows_sent`` by
    peer name; ``relayed_rows`` (rows sent to peers), ``originated_rows`` (rows published
    to this master) and ``relays_per_row``, their ratio (N-1 in a steady full mesh of N
    masters, ``null`` until a row was published here), all since start."""
    rows_sent = cluster.rows_sent
    return {
        "peers": [
            {
                "endpoint": link.endpoint,
                "state": link.state,
                "self": link.is_self,
                "since": link.since,
                "since_seconds": now - link.since,
                "name": link.peer_name,
                "origin": link.origin_id,
                "fingerprint": link.fingerprint,
                "problem": link.problem,
                "retry_at": link.retry_at,
                "links": link.links,
                "rows_received": link.rows_received,
                "bytes_received": link.bytes_received,
                "tokens_received": link.tokens_received,
                "ingests": link.ingests,
                "gaps": link.gaps,
                "skipped_tokens": link.skipped_tokens,
                "resets": link.resets,
                "conflicts": link.conflicts,
                "ingest_failures": link.ingest_failures,
                "pending_bytes": link.pending_bytes,
                "repairs": list(link.repairs),
                "repair_rows": link.repair_rows,
                "rows_sent": (
                    None if link.is_self or link.peer_name is None
                    else rows_sent.get(link.peer_name, 0)
                ),
            }
            for link in cluster.links
        ],
        "repairing": list(cluster.repairing),
        "ack_peers": cluster.ack_peers,
        "ack_timeout": cluster.ack_timeout,
        "acks": {
            "confirmed": cluster.acks_confirmed,
            "timed_out": cluster.acks_timed_out,
            "pending": cluster.acks_pending,
        },
        "rows_sent": dict(rows_sent),
        "relayed_rows": cluster.relayed_rows,
        "originated_rows": cluster.originated_rows,
        "relays_per_row": cluster.relays_per_row,
    }
