"""The wire: everything one connection speaks, from bytes to commands.

* :mod:`replication.wire.commands`: the command codec (pure: lines to frozen command objects
  and back, the registry of who may send what).
* :mod:`replication.wire.session`: the handshake, keepalive and close of one connection as a
  sans-IO state machine (pure: time is passed in; a transition table as data; a deadline for
  every state that waits on the peer). Version negotiation and authentication plug in here.
* :mod:`replication.wire.protocol`: the Twisted side (line framing, the outbound buffer and
  its bound, carrying out what the session decides with one timer).

``replication.commands`` and ``replication.protocol`` are the same modules under their old
names.
"""
