"""Worker handlers for the benchmarks (run the worker with ``PYTHONPATH=bench``).

``noop`` does nothing: it measures what the master and the worker cost, not the handler.
``delay`` appends, for each row ``{"t": <send time>}``, ``<receive time> <delay>`` in seconds
to the file named by the environment variable ``BENCH_DELAY_FILE``.
"""

from __future__ import annotations

import os
import time
from typing import Any, TextIO


def noop(stream: str, token: int, rows: list[Any]) -> None:
    pass


_out: TextIO | None = None


def delay(stream: str, token: int, rows: list[Any]) -> None:
    global _out
    now = time.time()
    if _out is None:
        _out = open(os.environ["BENCH_DELAY_FILE"], "a", buffering=1)
    for row in rows:
        if isinstance(row, dict) and "t" in row:
            _out.write(f"{now:.6f} {now - row['t']:.6f}\n")


# -- bench/run.py (fan-out and latency scenarios) ------------------------------------------
# Both are classes (the worker instantiates them without arguments) and look only at the last
# row of each token: a row ``["bench.end", RUN_ID]`` ends a run. They write one small file in
# the directory named by ``BENCH_DONE_DIR`` when they see it, so the benchmark's own cost
# is one ``len`` and one index per token.


class FanoutCounter:
    """Counts rows; on the end row of a run, writes ``<dir>/<pid>.<run>.done`` holding
    ``<time.time()> <rows of this run, end row excluded>`` and starts counting again."""

    def __init__(self) -> None:
        self.rows = 0
        self.directory = os.environ["BENCH_DONE_DIR"]

    def __call__(self, stream: str, token: int, rows: list[Any]) -> None:
        self.rows += len(rows)
        last = rows[-1]
        if last[0] == "bench.end":
            now = time.time()
            path = os.path.join(self.directory, f"{os.getpid()}.{last[1]}.done")
            with open(path + ".tmp", "w") as f:
                f.write(f"{now:.6f} {self.rows - 1}\n")
            os.replace(path + ".tmp", path)
            self.rows = 0


class LatencyRecorder:
    """Keeps ``(publish time, handler time)`` per row: the publish time is ``row[4]`` (a
    float set by the publisher just before its HTTP request). On the end row it writes them
    as text to ``<dir>/<pid>.<run>.lat`` (``.lat.tmp`` first, then renamed) and clears."""

    def __init__(self) -> None:
        self.directory = os.environ["BENCH_DONE_DIR"]
        self.sent: list[float] = []
        self.handled: list[float] = []

    def __call__(self, stream: str, token: int, rows: list[Any]) -> None:
        now = time.time()
        last = rows[-1]
        if last[0] == "bench.end":
            path = os.path.join(self.directory, f"{os.getpid()}.{last[1]}.lat")
            with open(path + ".tmp", "w") as f:
                f.write(f"{now:.6f} {len(self.sent)}\n")
                f.writelines(
                    f"{s:.6f} {h:.6f}\n" for s, h in zip(self.sent, self.handled, strict=True)
                )
            os.replace(path + ".tmp", path)
            self.sent.clear()
            self.handled.clear()
            return
        sent = self.sent
        for row in rows:
            sent.append(row[4])
        self.handled.extend([now] * len(rows))
