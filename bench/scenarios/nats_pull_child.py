"""A NATS JetStream durable pull consumer that fetches in batches and decodes every row.

    python nats_pull_child.py NATS_URL STREAM DURABLE DONE_DIR

nats-py: binds to the durable consumer DURABLE (created by the benchmark: deliver all,
``AckPolicy.ALL``), then ``fetch(batch=BATCH)`` in a loop, ``json.loads`` of every message,
and one ack of the last message of each batch (with ``AckPolicy.ALL`` it acknowledges the
whole batch: the consumer's stored position, as a worker records its token). Writes
``DONE_DIR/<pid>.ready`` once bound; on the row ``["bench.end", RUN_ID]`` writes
``DONE_DIR/<pid>.<RUN_ID>.done`` with ``<time.time()> <rows>`` and counts from 0 again.
Runs until it is killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import nats

BATCH = 1000


async def consume(url: str, stream: str, durable: str, directory: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
    with open(os.path.join(directory, f"{os.getpid()}.ready"), "w") as f:
        f.write(f"{time.time():.6f} 0\n")
    rows = 0
    loads = json.loads
    while True:
        try:
            messages = await sub.fetch(batch=BATCH, timeout=5)
        except TimeoutError:
            continue
        for message in messages:
            row = loads(message.data)
            rows += 1
            if row[0] == "bench.end":
                now = time.time()
                path = os.path.join(directory, f"{os.getpid()}.{row[1]}.done")
                with open(path + ".tmp", "w") as f:
                    f.write(f"{now:.6f} {rows - 1}\n")
                os.replace(path + ".tmp", path)
                rows = 0
        await messages[-1].ack()


def main() -> None:
    asyncio.run(consume(*sys.argv[1:5]))


if __name__ == "__main__":
    main()
