"""The Twisted protocol layer under its old name: this module *is*
:mod:`replication.wire.protocol`.

Importing ``replication.protocol`` gives the very module object of
``replication.wire.protocol`` (it replaces itself in ``sys.modules``), so every name, public
or private, is there, and patching one of them patches the protocol itself rather than a
copy. The star import below is what type checkers and readers see.
"""

import sys

from replication.wire import protocol as _protocol
from replication.wire.protocol import *

sys.modules[__name__] = _protocol
