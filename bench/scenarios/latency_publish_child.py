"""Publish at a steady rate over HTTP, each row stamped with its publish time.

    python latency_publish_child.py PORT RATE PER_TOKEN SECONDS RUN_ID OUT_JSON

One POST of PER_TOKEN rows every PER_TOKEN/RATE seconds (100 rows every 10 ms for 10,000
rows/s), on an absolute schedule: a send that is late does not shift the ones after it. Just
before each POST, ``time.time()`` is written into ``row[4]`` of every row of that token (the
other fields as in the fan-out rows). After SECONDS, one POST carries the end row. Writes
``{"start", "end", "tokens", "rows", "late_sends", "max_late"}``.
"""

from __future__ import annotations

import http.client
import json
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import encode, end_row, make_rows  # noqa: E402


def main() -> None:
    port, rate, per_token = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    seconds, run_id, out_path = float(sys.argv[4]), sys.argv[5], sys.argv[6]
    interval = per_token / rate
    tokens = int(round(seconds / interval))
    template = make_rows(per_token)
    headers = {"content-type": "application/json"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.connect()
    late = 0
    max_late = 0.0
    errors: list[str] = []
    start = time.time()
    base = time.monotonic()
    for n in range(tokens):
        due = base + n * interval
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        else:
            late += 1
            max_late = max(max_late, -wait)
        now = time.time()
        for row in template:
            row[4] = now
        connection.request("POST", "/streams/events", body=encode({"rows": template}).encode(),
                           headers=headers)
        response = connection.getresponse()
        answer = response.read()
        if response.status != 200:
            errors.append(f"{response.status} {answer[:200]!r}")
            break
    end = time.time()
    connection.request("POST", "/streams/events", body=encode({"rows": [end_row(run_id)]}).encode(),
                       headers=headers)
    connection.getresponse().read()
    with open(out_path, "w") as f:
        json.dump({"start": start, "end": end, "tokens": tokens, "rows": tokens * per_token,
                   "late_sends": late, "max_late": max_late, "errors": errors}, f)


if __name__ == "__main__":
    main()
