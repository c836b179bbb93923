"""The wire: everything one connection speaks, from bytes to commands.

* :mod:`replication.wire.commands`: the command codec (pure: lines to frozen command objects
  and back, the registry of who may send what).
* :mod:`replication.wire.application`: the handlers an application attaches to the commands
  it registers, and the loading of its register callable (pure).
* :mod:`replication.wire.dialects`: the protocol versions and what each lets a master send
  (pure: a table; a new version is an entry in it).
* :mod:`replication.wire.session`: the handshake (with the version negotiation), keepalive
  and close of one connection as a sans-IO state machine (pure: time is passed in; a
  transition table as data; a deadline for every state that waits on the peer).
  Authentication plugs in here.
* :mod:`replication.wire.protocol`: the Twisted side (line framing, the outbound buffer and
  its bound, carrying out what the session decides with one timer).

``replication.commands`` and ``replication.protocol`` are the same modules under their old
names.
"""
