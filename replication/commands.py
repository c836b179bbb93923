"""The command codec under its old name: this module *is* :mod:`replication.wire.commands`.

Importing ``replication.commands`` gives the very module object of
``replication.wire.commands`` (it replaces itself in ``sys.modules``), so every name, public
or private, is there, and patching one of them (tests swap ``_orjson``) patches the codec
itself rather than a copy. The star import below is what type checkers and readers see.
"""

import sys

from replication.wire import commands as _commands
from replication.wire.commands import *

sys.modules[__name__] = _commands
