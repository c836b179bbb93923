"""A Redis Streams reader that resumes from its last entry id and decodes every row.

    python redis_xread_child.py REDIS_PORT KEY DONE_DIR

redis-py with the hiredis parser: ``XREAD BLOCK 5000 COUNT 10000 STREAMS KEY <last id>``
in a loop, starting from ``0-0`` (the stream is new), keeping the id of the last entry it
read (its position, as a worker keeps its token). ``json.loads`` of every entry's ``d``
field. Writes ``DONE_DIR/<pid>.ready`` once connected; on the row ``["bench.end", RUN_ID]``
writes ``DONE_DIR/<pid>.<RUN_ID>.done`` with ``<time.time()> <rows>`` and counts from 0
again. Runs until it is killed.
"""

from __future__ import annotations

import json
import os
import sys
import time

import redis
from redis.utils import HIREDIS_AVAILABLE

COUNT = 10_000


def main() -> None:
    port, key, directory = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    if not HIREDIS_AVAILABLE:
        sys.exit("hiredis is not installed: the baseline must use the hiredis parser")
    client = redis.Redis(host="127.0.0.1", port=port)
    client.ping()
    with open(os.path.join(directory, f"{os.getpid()}.ready"), "w") as f:
        f.write(f"{time.time():.6f} 0\n")
    last: bytes | str = "0-0"
    rows = 0
    loads = json.loads
    while True:
        reply = client.xread({key: last}, count=COUNT, block=5000)
        if not reply:
            continue
        for _stream, entries in reply:
            for _id, fields in entries:
                row = loads(fields[b"d"])
                rows += 1
                if row[0] == "bench.end":
                    now = time.time()
                    path = os.path.join(directory, f"{os.getpid()}.{row[1]}.done")
                    with open(path + ".tmp", "w") as f:
                        f.write(f"{now:.6f} {rows - 1}\n")
                    os.replace(path + ".tmp", path)
                    rows = 0
            last = entries[-1][0]


if __name__ == "__main__":
    main()
