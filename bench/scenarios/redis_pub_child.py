"""Publish rows to a Redis channel: one PUBLISH per row, pipelined 100 at a time.

    python redis_pub_child.py REDIS_PORT CHANNEL ROWS RUN_ID OUT_JSON

Rows are encoded before the clock starts; the end row ``["bench.end", RUN_ID]`` follows
the last batch. Writes ``{"start", "acked", "rows", "receivers"}`` (``receivers``: the
subscriber counts Redis answered for each PUBLISH of the first batch, a check that every
subscriber was listening).
"""

from __future__ import annotations

import json
import sys
import time

import redis

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import encode, end_row, make_rows  # noqa: E402

PIPELINE = 100


def main() -> None:
    port, channel, rows = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    run_id, out_path = sys.argv[4], sys.argv[5]
    payloads = [encode(r).encode() for r in make_rows(rows)]
    client = redis.Redis(host="127.0.0.1", port=port)
    client.ping()
    receivers: list[int] = []
    start = time.time()
    for i in range(0, rows, PIPELINE):
        pipe = client.pipeline(transaction=False)
        for payload in payloads[i:i + PIPELINE]:
            pipe.publish(channel, payload)
        answers = pipe.execute()
        if i == 0:
            receivers = list(set(answers))
    acked = time.time()
    client.publish(channel, encode(end_row(run_id)).encode())
    with open(out_path, "w") as f:
        json.dump({"start": start, "acked": acked, "rows": rows, "receivers": receivers}, f)


if __name__ == "__main__":
    main()
