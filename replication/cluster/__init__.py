"""Several masters as one cluster: each master's identity, the peer links between masters,
the relay of each origin's rows to its peers, and (to come) the repair of rows an origin
could not send itself.

- :mod:`replication.cluster.identity` (pure): origin ids, per-process fingerprints and
  recognising oneself among the configured peers.
- :mod:`replication.cluster.link`: one peer link, the dialling side (:class:`PeerLink`, its
  connection :class:`PeerConnection`, :class:`LinkSettings`, :class:`LinkState`).
- :mod:`replication.cluster.peers`: :class:`PeerLinks`, the service holding a master's
  links, which ``replication.master.app.master_service`` adds with ``cluster.peers``.

The serving side (answering a peer's ``ORIGIN`` and ``RELAY``) belongs to the master's
fan-out and connections. The pure identity module is what the codec imports; nothing
else of the package imports the links except the master's service tree.
"""
