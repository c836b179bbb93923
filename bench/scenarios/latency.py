"""Scenario 4: latency from publish to handler at a steady 10,000 rows/s with 10 workers.

A master (``--store memory``) and 10 workers with the handler ``handlers:LatencyRecorder``.
One publisher process publishes one token on an absolute schedule, over the replication
port with ``replication.client.Publisher`` (the target's figure) and, in a second pass,
over HTTP (one POST per token, for comparison); just before each publish it writes
``time.time()`` into ``row[4]`` of the token's rows. Two variants of the same rate:
**steady**, 10 rows every 1 ms (the target's figure), and **bursts**, 100 rows every 10 ms,
where each worker gets 100 rows at once and the last of 10 workers waits for the other nine
on 2 cores. Each worker's handler
notes ``time.time()`` once per token (the handler is called once per token, with its rows)
and keeps ``(publish time, handler time)`` per row; the end token makes it write them to a
file. Rows published in the first second of a run (warm-up) are left out; the rest (about 3 s
in quick mode, 5 s otherwise) give p50, p99 and max over all rows of all 10 workers. Each run
reuses the same processes; each figure is the median of the runs. A run whose publisher
reached less than 95% of the intended rate (``rate_reached`` false) is flagged in the
table: it measured an easier load.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from common import (
    STREAM,
    Group,
    child,
    free_ports,
    percentile,
    reactor_args,
    read_positions,
    scratch,
    start_master,
    summary,
    wait_files,
    wait_until,
    worker,
)

RATE = 10_000
#: Rows per token of each variant: (name, rows per token); one token every rows/RATE seconds.
VARIANTS = (("steady", 10), ("bursts", 100))
#: How the publisher publishes: over the replication port with ``replication.client`` (the
#: figure the target is about), and over HTTP for comparison.
PUBLISHERS = ("port", "http")
WORKERS = 10
WARMUP = 1.0
#: A run whose publisher sent less than this share of ``RATE`` (its sends fell behind the
#: schedule, for example because each POST waited on a busy master) measured an easier
#: load: the table flags it.
RATE_REACHED = 0.95


def _read(path: str) -> tuple[list[float], list[float]]:
    sent, handled = [], []
    with open(path) as f:
        f.readline()
        for line in f:
            s, h = line.split()
            sent.append(float(s))
            handled.append(float(h))
    return sent, handled


def run(quick: bool, runs: int, log: Any) -> list[dict[str, Any]]:
    return [run_variant(name, per_token, via, quick, runs, log)
            for via in PUBLISHERS for name, per_token in VARIANTS]


def run_variant(
    variant: str, per_token: int, via: str, quick: bool, runs: int, log: Any
) -> dict[str, Any]:
    measure = 3.0 if quick else 5.0
    timeout = 60.0
    log(f"latency ({variant}, published via {via}): {WORKERS} workers, {RATE} rows/s as "
        f"{per_token} rows every {per_token / RATE * 1000:.0f} ms, {WARMUP:.0f} s warm-up + "
        f"{measure:.0f} s x {runs} runs")
    with scratch(f"latency-{variant}") as tmp, Group() as group:
        done_dir = tmp / "done"
        done_dir.mkdir()
        os.environ["BENCH_DONE_DIR"] = str(done_dir)
        port, http_port = free_ports(2)
        master = start_master(tmp, "master", port, http_port, "--stream", STREAM, *reactor_args())
        group.add(master)
        workers = [group.add(worker(tmp, f"w{i}", port, "handlers:LatencyRecorder"))
                   for i in range(WORKERS)]
        for i, w in enumerate(workers):
            wait_until(
                lambda i=i: (read_positions(tmp / f"w{i}.positions") or {}).get(STREAM) is not None,
                30,
                f"worker w{i} subscribed",
                alive=[master, w],
            )
        results = []
        for k in range(runs):
            run_id = f"r{k}"
            out = tmp / f"pub-{run_id}.json"
            publisher = group.add(child(f"pub-{run_id}", "latency_publish_child.py",
                                        [via, str(port if via == "port" else http_port),
                                         str(RATE), str(per_token),
                                         str(WARMUP + measure), run_id, str(out)], tmp),
                                  transient=True)
            publisher.wait_for_exit(WARMUP + measure + timeout)
            info = json.loads(out.read_text())
            if info["errors"]:
                raise RuntimeError(f"publisher failed: {info['errors'][:3]}")
            wait_files(done_dir, f"{run_id}.lat", WORKERS, timeout, f"workers of {run_id}", group)
            cutoff = info["start"] + WARMUP
            latencies: list[float] = []
            received = 0
            for path in done_dir.glob(f"*.{run_id}.lat"):
                sent, handled = _read(str(path))
                received += len(sent)
                latencies.extend(h - s for s, h in zip(sent, handled, strict=True) if s >= cutoff)
            latencies.sort()
            published = info["rows"]
            result = {
                "published_rows": published,
                "measured_rows": len(latencies),
                "delivered_rows": received,
                "complete": received == (published + info.get("warmup_rows", 0)) * WORKERS,
                "achieved_rate": published / (info["end"] - info["start"]),
                "rate_reached": published / (info["end"] - info["start"]) >= RATE_REACHED * RATE,
                "late_sends": info["late_sends"],
                "max_late_ms": info["max_late"] * 1000,
                "p50_ms": percentile(latencies, 50) * 1000,
                "p90_ms": percentile(latencies, 90) * 1000,
                "p99_ms": percentile(latencies, 99) * 1000,
                "p999_ms": percentile(latencies, 99.9) * 1000,
                "max_ms": latencies[-1] * 1000 if latencies else None,
            }
            log(f"  run {k}: p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
                f"max {result['max_ms']:.2f} ms ({result['achieved_rate']:.0f} rows/s, "
                f"{result['late_sends']} late sends)"
                + ("" if result["rate_reached"] else " SHORT OF THE INTENDED RATE"))
            results.append(result)
            time.sleep(0.3)
    return {
        "scenario": "latency",
        "variant": variant,
        "via": via,
        "workers": WORKERS,
        "rate": RATE,
        "rows_per_token": per_token,
        "warmup_s": WARMUP,
        "measure_s": measure,
        "runs": results,
        "p50_ms": summary([r["p50_ms"] for r in results]),
        "p99_ms": summary([r["p99_ms"] for r in results]),
        "max_ms": summary([r["max_ms"] for r in results]),
        "achieved_rate": summary([r["achieved_rate"] for r in results]),
        "runs_short_of_rate": [i for i, r in enumerate(results) if not r["rate_reached"]],
    }
