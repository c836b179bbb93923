"""``python -m replication``: the same tool as the ``replication`` console script."""

from replication.cli import main

raise SystemExit(main())
