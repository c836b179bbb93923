"""A Redis pub/sub subscriber (redis-py, hiredis parser) that decodes every message's JSON.

    python redis_sub_child.py REDIS_PORT CHANNEL DONE_DIR

Subscribes, writes ``DONE_DIR/<pid>.ready``, then for every message ``json.loads`` the data
and counts it; on the row ``["bench.end", RUN_ID]`` writes ``DONE_DIR/<pid>.<RUN_ID>.done``
with ``<time.time()> <rows>`` and counts again from 0. Exits when the connection drops.
"""

from __future__ import annotations

import json
import os
import sys
import time

import redis
from redis.utils import HIREDIS_AVAILABLE


def main() -> None:
    port, channel, directory = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    if not HIREDIS_AVAILABLE:
        sys.exit("hiredis is not installed: the baseline must use the hiredis parser")
    client = redis.Redis(host="127.0.0.1", port=port)
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    while True:  # the subscribe confirmation
        message = pubsub.get_message(timeout=10.0)
        if message is not None and message["type"] == "subscribe":
            break
    with open(os.path.join(directory, f"{os.getpid()}.ready"), "w") as f:
        f.write(f"{time.time():.6f} 0\n")
    rows = 0
    loads = json.loads
    for message in pubsub.listen():
        if message["type"] != "message":
            continue
        row = loads(message["data"])
        rows += 1
        if row[0] == "bench.end":
            now = time.time()
            path = os.path.join(directory, f"{os.getpid()}.{row[1]}.done")
            with open(path + ".tmp", "w") as f:
                f.write(f"{now:.6f} {rows - 1}\n")
            os.replace(path + ".tmp", path)
            rows = 0


if __name__ == "__main__":
    main()
