"""Stream replication for Twisted services.

A master owns named streams of rows, each row stamped with an increasing integer token;
workers connect over TCP, subscribe, and receive every row in order, resuming after any
disconnect from the last token they recorded. See README.rst and docs/protocol.rst.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
