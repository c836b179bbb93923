"""Publish rows to a NATS JetStream stream with asynchronous acknowledgements.

    python nats_pub_child.py NATS_URL SUBJECT ROWS RUN_ID OUT_JSON

nats-py: one connection, ``JetStreamContext.publish_async`` for every row (its compact JSON,
encoded before the clock starts; at most 4,000 unacknowledged, nats-py's default), then
``publish_async_completed()``: every row is then acknowledged by the server, that is
stored in the stream. Every acknowledgement is checked. The end row ``["bench.end",
RUN_ID]`` follows with a plain ``publish`` (waiting for its acknowledgement). Writes
``{"start", "acked", "rows", "errors"}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import nats

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import encode, end_row, make_rows  # noqa: E402


async def publish(url: str, subject: str, rows: int, run_id: str) -> dict[str, object]:
    payloads = [encode(r).encode() for r in make_rows(rows)]
    nc = await nats.connect(url)
    js = nc.jetstream()
    errors: list[str] = []
    start = time.time()
    cpu = time.process_time()
    futures = []
    try:
        for payload in payloads:
            futures.append(await js.publish_async(subject, payload))
        await js.publish_async_completed()
        for future in futures:
            if future.exception() is not None:
                errors.append(repr(future.exception()))
                break
    except Exception as e:  # report, don't hang the run
        errors.append(repr(e))
    acked = time.time()
    cpu = time.process_time() - cpu
    await js.publish(subject, encode(end_row(run_id)).encode())
    await nc.drain()
    return {"start": start, "acked": acked, "cpu_s": cpu, "rows": rows, "errors": errors}


def main() -> None:
    url, subject, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
    run_id, out_path = sys.argv[4], sys.argv[5]
    info = asyncio.run(publish(url, subject, rows, run_id))
    with open(out_path, "w") as f:
        json.dump(info, f)


if __name__ == "__main__":
    main()
