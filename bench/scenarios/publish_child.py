"""One publishing client of ``bench/publish.py``, in a process of its own.

    python publish_child.py MODE PORT COUNT THREADS SECONDS OUT_JSON

``MODE``:

- ``ours-rt``: ``Publisher.publish`` of one row, waiting for each answer;
- ``ours-pipe``: ``Publisher.publish_all`` of one-row publishes, 1,000 at a time (pipelined
  on one connection, every answer awaited);
- ``redis-rt``: redis-py ``publish()`` of the same row's JSON, one round trip each;
- ``redis-pipe``: a redis-py pipeline (``transaction=False``) of 1,000 ``PUBLISH`` per
  ``execute()``;
- ``http-rt``: one row per ``POST /streams/events`` on a keep-alive connection (``PORT`` is
  then the master's HTTP port).

With ``SECONDS`` > 0 each of ``THREADS`` threads (one connection each) publishes until that
many seconds have passed; else the one thread publishes ``COUNT`` rows. Rows are the fan-out
scenarios' 120-byte event rows; Redis gets them JSON-encoded before the clock starts (its
fastest use), ours encodes them itself. Writes ``{"rows": n, "seconds": s, "errors": [...]}``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import make_rows  # noqa: E402

HOST = "127.0.0.1"
CHUNK = 1000
CHANNEL = "replication-bench-publish"


class Clock:
    """Every thread connects first; the clock starts when all have (a barrier)."""

    def __init__(self, threads: int, seconds: float) -> None:
        self.barrier = threading.Barrier(threads, action=self._start)
        self.seconds = seconds
        self.start = 0.0
        self.deadline: float | None = None

    def _start(self) -> None:
        self.start = time.perf_counter()
        self.deadline = self.start + self.seconds if self.seconds > 0 else None

    def go(self) -> float | None:
        self.barrier.wait()
        return self.deadline


def run_ours(mode: str, port: int, rows: list[Any], clock: Clock) -> int:
    from replication.client import Publisher

    done = 0
    with Publisher(f"{HOST}:{port}", timeout=60) as publisher:
        publisher.publish("events", rows[0])  # connect before the clock starts
        deadline = clock.go()
        i = 0
        while True:
            if deadline is None and i >= len(rows):
                return done
            if deadline is not None and time.perf_counter() >= deadline:
                return done
            if mode == "ours-rt":
                publisher.publish("events", rows[i % len(rows)])
                done += 1
                i += 1
            else:
                chunk = [rows[(i + k) % len(rows)] for k in range(CHUNK)]
                publisher.publish_all("events", chunk)
                done += CHUNK
                i += CHUNK


def run_http(port: int, rows: list[Any], clock: Clock) -> int:
    """One row per ``POST /streams/events`` on a keep-alive connection, each answer awaited:
    the HTTP publish path, for comparison."""
    import http.client

    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    headers = {"content-type": "application/json"}
    bodies = [json.dumps({"rows": row}, separators=(",", ":")).encode() for row in rows]

    def post(body: bytes) -> None:
        connection.request("POST", "/streams/events", body=body, headers=headers)
        response = connection.getresponse()
        answer = response.read()
        if response.status != 200:
            raise RuntimeError(f"{response.status} {answer[:200]!r}")

    post(bodies[0])  # connect before the clock starts
    deadline = clock.go()
    done = 0
    i = 0
    while True:
        if deadline is None and i >= len(bodies):
            return done
        if deadline is not None and time.perf_counter() >= deadline:
            return done
        post(bodies[i % len(bodies)])
        done += 1
        i += 1


def run_redis(mode: str, rows: list[Any], clock: Clock) -> int:
    import redis

    client = redis.Redis(HOST, 6379)
    payloads = [json.dumps(row, separators=(",", ":")).encode() for row in rows]
    client.publish(CHANNEL, payloads[0])  # connect before the clock starts
    deadline = clock.go()
    done = 0
    i = 0
    while True:
        if deadline is None and i >= len(payloads):
            return done
        if deadline is not None and time.perf_counter() >= deadline:
            return done
        if mode == "redis-rt":
            client.publish(CHANNEL, payloads[i % len(payloads)])
            done += 1
            i += 1
        else:
            pipe = client.pipeline(transaction=False)
            for k in range(CHUNK):
                pipe.publish(CHANNEL, payloads[(i + k) % len(payloads)])
            pipe.execute()
            done += CHUNK
            i += CHUNK


def main() -> None:
    mode = sys.argv[1]
    port, count, threads = (int(a) for a in sys.argv[2:5])
    seconds = float(sys.argv[5])
    out_path = sys.argv[6]
    rows = [[row] for row in make_rows(max(count, CHUNK))]
    rows = rows[:count] if seconds <= 0 else rows
    errors: list[str] = []
    counts: list[int] = []
    clock = Clock(max(threads, 1), seconds)

    def one() -> None:
        try:
            if mode.startswith("ours"):
                counts.append(run_ours(mode, port, rows, clock))
            elif mode == "http-rt":
                counts.append(run_http(port, rows, clock))
            else:
                counts.append(run_redis(mode, rows, clock))
        except Exception as e:  # report, don't hang the run
            errors.append(repr(e))
            clock.barrier.abort()

    workers = [threading.Thread(target=one) for _ in range(max(threads, 1))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - clock.start
    with open(out_path, "w") as f:
        json.dump({"rows": sum(counts), "seconds": elapsed, "errors": errors}, f)


if __name__ == "__main__":
    main()
