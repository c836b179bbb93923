"""Publish at a steady rate, each row stamped with its publish time.

    python latency_publish_child.py VIA PORT RATE PER_TOKEN SECONDS RUN_ID OUT_JSON

``VIA`` is ``port`` (``replication.client.Publisher`` on the master's replication port,
one ``submit`` per token: open loop, answers checked as they come) or ``http`` (one
``POST /streams/events`` per token on a keep-alive connection; ``PORT`` is then the HTTP
port). One publish of PER_TOKEN rows
every PER_TOKEN/RATE seconds (100 rows every 10 ms for 10,000 rows/s), on an absolute
schedule: a send that is late does not shift the ones after it. Just before each publish,
``time.time()`` is written into ``row[4]`` of every row of that token (the other fields as
in the fan-out rows). After SECONDS, one publish carries the end row. Writes
``{"start", "end", "tokens", "rows", "late_sends", "max_late"}``.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from typing import Any

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import encode, end_row, make_rows  # noqa: E402


class _Http:
    #: Rows published before the schedule starts (the workers get them too).
    warmup_rows = 0

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.connection.connect()
        self.headers = {"content-type": "application/json"}

    def publish(self, rows: list[Any]) -> str | None:
        self.connection.request("POST", "/streams/events",
                                body=encode({"rows": rows}).encode(), headers=self.headers)
        response = self.connection.getresponse()
        answer = response.read()
        return None if response.status == 200 else f"{response.status} {answer[:200]!r}"


class _Port:
    """Open loop: each publish is submitted (pipelined) without waiting for its answer, so
    a slow answer never delays the next send; the answers are checked as they complete
    and at the end. The publisher does not spin (``spin=0``): it waits on nothing."""

    def __init__(self, port: int) -> None:
        from replication.client import Publisher

        self.publisher = Publisher(f"127.0.0.1:{port}", timeout=30, spin=0)
        self.publisher.publish("events", make_rows(1))  # connected before the clock starts
        self.warmup_rows = 1
        self.pending: list[Any] = []

    def publish(self, rows: list[Any]) -> str | None:
        self.pending.append(self.publisher.submit("events", rows))  # encoded at once
        while self.pending and self.pending[0].done():
            error = self.pending.pop(0).exception()
            if error is not None:
                return repr(error)
        return None

    def finish(self) -> str | None:
        for future in self.pending:
            error = future.exception(timeout=30)
            if error is not None:
                return repr(error)
        return None


def main() -> None:
    via, port, rate, per_token = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    seconds, run_id, out_path = float(sys.argv[5]), sys.argv[6], sys.argv[7]
    interval = per_token / rate
    tokens = int(round(seconds / interval))
    template = make_rows(per_token)
    publisher = _Port(port) if via == "port" else _Http(port)
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
        error = publisher.publish(template)
        if error is not None:
            errors.append(error)
            break
    end = time.time()
    error = publisher.publish([end_row(run_id)])
    if error is None and isinstance(publisher, _Port):
        error = publisher.finish()
    if error is not None:
        errors.append(error)
    with open(out_path, "w") as f:
        json.dump({"start": start, "end": end, "tokens": tokens, "rows": tokens * per_token,
                   "warmup_rows": publisher.warmup_rows, "late_sends": late,
                   "max_late": max_late, "errors": errors}, f)


if __name__ == "__main__":
    main()
