"""Append rows to a Redis stream: one ``XADD`` per row, pipelined ``PIPELINE`` at a time.

    python redis_xadd_child.py REDIS_PORT KEY ROWS RUN_ID OUT_JSON

Each row is one entry with one field, ``d``, its compact JSON (encoded before the clock
starts); redis-py with the hiredis parser, ``pipeline(transaction=False)`` (no MULTI/EXEC),
``XADD KEY * d <json>`` with no trimming. The end row ``["bench.end", RUN_ID]`` follows the
last batch. Writes ``{"start", "acked", "rows", "errors"}``.
"""

from __future__ import annotations

import json
import sys
import time

import redis

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import encode, end_row, make_rows  # noqa: E402

PIPELINE = 1000


def main() -> None:
    port, key, rows = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    run_id, out_path = sys.argv[4], sys.argv[5]
    payloads = [encode(r).encode() for r in make_rows(rows)]
    client = redis.Redis(host="127.0.0.1", port=port)
    client.ping()
    errors: list[str] = []
    start = time.time()
    cpu = time.process_time()
    try:
        for i in range(0, rows, PIPELINE):
            pipe = client.pipeline(transaction=False)
            for payload in payloads[i:i + PIPELINE]:
                pipe.xadd(key, {"d": payload})
            pipe.execute()
    except Exception as e:  # report, don't hang the run
        errors.append(repr(e))
    acked = time.time()
    cpu = time.process_time() - cpu
    client.xadd(key, {"d": encode(end_row(run_id)).encode()})
    with open(out_path, "w") as f:
        json.dump({"start": start, "acked": acked, "cpu_s": cpu, "rows": rows, "errors": errors}, f)


if __name__ == "__main__":
    main()
