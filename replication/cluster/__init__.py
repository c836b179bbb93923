"""Several masters as one cluster: the package will hold each master's identity, the peer
links between masters, the relay of each origin's rows to its peers, and the repair of rows
an origin could not send itself.

Built so far: :mod:`replication.cluster.identity` (origin ids, per-process fingerprints and
recognising oneself among the configured peers). Nothing here is imported by the rest of
the package except that pure module.
"""
