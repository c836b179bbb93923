"""The wire: everything one connection speaks, from bytes to commands.

* :mod:`replication.wire.commands`: the command codec (pure: lines to frozen command objects
  and back, the registry of who may send what).
* :mod:`replication.wire.protocol`: the Twisted side (line framing, the outbound buffer and
  its bound, carrying out what the session decides).

``replication.commands`` and ``replication.protocol`` are the same modules under their old
names.
"""
