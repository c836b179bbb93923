"""Scenario 1 (fan-out throughput) and its baselines (scenario 2): Redis pub/sub, raw socket.

All three move the same rows (:func:`common.make_rows`, 120 bytes of JSON each) to the same
number of receivers (1 and 10), each receiver a separate process on 127.0.0.1, and report
rows delivered per second in total: ``receivers * rows / (last receiver done - first
publish)``. Each figure is the median of ``runs`` runs; the processes of one variant are
started once and measure all its runs, except the raw limit, whose processes are new each run.

* **ours**: ``replication master --store memory`` and N ``replication worker`` processes with
  the handler ``handlers:FanoutCounter`` (it counts rows; the worker decodes every row).
  One publisher process POSTs the tokens over HTTP from 4 keep-alive connections; a last
  token carries the end row; each worker's handler writes a small file with ``time.time()``
  when it handles that token. Two variants: 100 rows per token and 1 row per token.
* **redis**: N redis-py subscribers (hiredis parser) that ``json.loads`` every message; one
  publisher that PUBLISHes each row, pipelined 100 at a time; then the end row.
* **raw**: one sender writes the master's exact RDATA bytes in 256 KiB writes to N receivers
  that only count newlines: the most any line protocol can do on this machine. The same
  lines are sent ``repeat`` times (20) in one run, since one pass lasts only milliseconds.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

from common import (
    STREAM,
    Group,
    child,
    cpu_seconds,
    free_ports,
    reactor_args,
    read_positions,
    scratch,
    start_master,
    summary,
    wait_files,
    wait_until,
    worker,
)

REDIS_PORT = 6379
PUBLISH_CLIENTS = 4


def sizes(quick: bool) -> dict[tuple[int, int], int]:
    """Rows per run for (receivers, rows per token). Chosen so one run of ours lasts about
    2 s or more on a 2-core machine (quick mode: about 0.3 s, against 0.5-1 s for Redis). 1-row
    tokens are published 100 to a request, like the Redis baseline's pipelined PUBLISHes."""
    if quick:
        return {(1, 100): 100_000, (10, 100): 50_000, (1, 1): 50_000, (10, 1): 15_000}
    return {(1, 100): 300_000, (10, 100): 100_000, (1, 1): 100_000, (10, 1): 30_000}


def _rate(n: int, rows: int, start: float, done: list[tuple[float, int]]) -> dict[str, Any]:
    last = max(t for t, _ in done)
    counts = [c for _, c in done]
    elapsed = last - start
    return {
        "rows": rows,
        "receivers": n,
        "elapsed_s": elapsed,
        "rows_per_s": n * rows / elapsed,
        "first_done_s": min(t for t, _ in done) - start,
        "complete": all(c == rows for c in counts),
        "counts": counts,
    }


# -- ours ------------------------------------------------------------------------------------


def run_ours(n: int, per_token: int, rows: int, runs: int, timeout: float,
             store: str = "memory", via: str = "http") -> dict[str, Any]:
    """``store``: ``memory`` or ``sqlite`` (the default durable store, in the run's scratch
    directory); ``via``: ``http`` (``http_publish_child.py``), ``port`` (the replication
    port, ``port_publish_child.py``, one token per publish) or ``tokens`` (the same, 100
    one-row tokens per publish); the last two send one row per token only."""
    if via in ("port", "tokens") and per_token != 1:
        raise ValueError("the replication-port publisher sends one row per token")
    with scratch(f"fanout{n}x{per_token}") as tmp, Group() as group:
        done_dir = tmp / "done"
        done_dir.mkdir()
        os.environ["BENCH_DONE_DIR"] = str(done_dir)
        port, http_port = free_ports(2)
        store_args = ["--store", store] + (
            ["--data-dir", str(tmp / "data")] if store == "sqlite" else []
        )
        master = start_master(tmp, "master", port, http_port, "--stream", STREAM, *store_args,
                              *reactor_args())
        group.add(master)
        workers = [
            group.add(worker(tmp, f"w{i}", port, "handlers:FanoutCounter")) for i in range(n)
        ]
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
            cpu_before = {p.name: cpu_seconds(p.pid) for p in [master, *workers]}
            out = tmp / f"pub-{run_id}.json"
            if via in ("port", "tokens"):
                script = "port_publish_child.py"
                argv = [str(port), str(rows), run_id, str(out),
                        "tokens" if via == "tokens" else "single"]
            else:
                script = "http_publish_child.py"
                argv = [str(http_port), str(rows), str(per_token), str(PUBLISH_CLIENTS), run_id,
                        str(out)]
            publisher = group.add(child(f"pub-{run_id}", script, argv, tmp), transient=True)
            publisher.wait_for_exit(timeout)
            info = json.loads(out.read_text())
            if info["errors"]:
                raise RuntimeError(f"publisher failed: {info['errors'][:3]}")
            done = wait_files(done_dir, f"{run_id}.done", n, timeout, f"workers of {run_id}", group)
            result = _rate(n, rows, info["start"], done)
            result["ingest_s"] = info["acked"] - info["start"]
            cpu = {p.name: cpu_seconds(p.pid) - cpu_before[p.name] for p in [master, *workers]}
            result["cpu_s"] = {
                "master": round(cpu["master"], 3),
                "workers_total": round(sum(v for k2, v in cpu.items() if k2 != "master"), 3),
                "publisher": round(info.get("cpu_s", 0.0), 3),
            }
            results.append(result)
            time.sleep(0.3)
        return {"store": store, "via": via, "runs": results,
                **summary([r["rows_per_s"] for r in results])}


# -- redis -----------------------------------------------------------------------------------


def redis_available() -> str | None:
    """None if the Redis at 127.0.0.1:6379 answers and redis-py has hiredis; else why not."""
    try:
        import redis
        from redis.utils import HIREDIS_AVAILABLE
    except ImportError:
        return "redis-py is not installed (pip install -e '.[bench]')"
    if not HIREDIS_AVAILABLE:
        return "hiredis is not installed (pip install -e '.[bench]')"
    try:
        redis.Redis(host="127.0.0.1", port=REDIS_PORT, socket_timeout=2).ping()
    except Exception as e:
        return f"no Redis at 127.0.0.1:{REDIS_PORT}: {e}"
    return None


def run_redis(n: int, rows: int, runs: int, timeout: float) -> dict[str, Any]:
    import redis

    channel = f"bench-fanout-{uuid.uuid4().hex}"
    client = redis.Redis(host="127.0.0.1", port=REDIS_PORT)
    with scratch(f"redis{n}") as tmp, Group() as group:
        done_dir = tmp / "done"
        done_dir.mkdir()
        for i in range(n):
            group.add(child(f"sub{i}", "redis_sub_child.py",
                            [str(REDIS_PORT), channel, str(done_dir)], tmp))
        wait_files(done_dir, "ready", n, 30, "redis subscribers ready", group)
        wait_until(lambda: dict(client.pubsub_numsub(channel)).get(channel.encode()) == n,
                   10, "PUBSUB NUMSUB")
        results = []
        for k in range(runs):
            run_id = f"r{k}"
            out = tmp / f"pub-{run_id}.json"
            publisher = group.add(
                child(
                    f"rpub-{run_id}",
                    "redis_pub_child.py",
                    [str(REDIS_PORT), channel, str(rows), run_id, str(out)],
                    tmp,
                ),
                transient=True,
            )
            publisher.wait_for_exit(timeout)
            info = json.loads(out.read_text())
            if info["receivers"] != [n]:
                raise RuntimeError(f"Redis delivered to {info['receivers']} subscribers, not {n}")
            done = wait_files(
                done_dir, f"{run_id}.done", n, timeout, f"redis subscribers of {run_id}", group
            )
            result = _rate(n, rows, info["start"], done)
            result["ingest_s"] = info["acked"] - info["start"]
            results.append(result)
            time.sleep(0.3)
        client.close()
        return {"channel": channel, "runs": results, **summary([r["rows_per_s"] for r in results])}


# -- raw -------------------------------------------------------------------------------------


def run_raw(n: int, per_token: int, rows: int, runs: int, timeout: float,
            repeat: int = 20) -> dict[str, Any]:
    tokens = (rows + per_token - 1) // per_token
    results = []
    for _ in range(runs):
        with scratch(f"raw{n}") as tmp, Group() as group:
            ports = free_ports(n)
            for i, p in enumerate(ports):
                group.add(
                    child(
                        f"recv{i}", "raw_recv_child.py", [str(p), str(rows * repeat), str(tmp)], tmp
                    )
                )
            wait_files(tmp, "ready", n, 30, "raw receivers ready", group)
            out = tmp / "send.json"
            sender = group.add(
                child(
                    "send",
                    "raw_send_child.py",
                    [str(rows), str(per_token), str(repeat), str(out), *map(str, ports)],
                    tmp,
                ),
                transient=True,
            )
            sender.wait_for_exit(timeout)
            info = json.loads(out.read_text())
            done = wait_files(tmp, "done", n, timeout, "raw receivers", group)
            result = _rate(n, rows * repeat, info["start"], done)
            result["repeat"] = repeat
            result["bytes_per_receiver"] = info["bytes"] * repeat
            result["tokens"] = tokens
            results.append(result)
    return {"runs": results, **summary([r["rows_per_s"] for r in results])}


# -- the scenario ----------------------------------------------------------------------------


def run(quick: bool, runs: int, log: Any, only: set[str]) -> list[dict[str, Any]]:
    timeout = 120.0
    out = []
    redis_problem = redis_available() if "redis" in only else "not selected"
    for (n, per_token), rows in sizes(quick).items():
        entry: dict[str, Any] = {"scenario": "fanout", "receivers": n, "rows_per_token": per_token,
                                 "rows": rows}
        if "fanout" in only:
            log(f"fan-out: {n} worker(s), {per_token} row(s)/token, {rows} rows x {runs} runs")
            entry["ours"] = run_ours(n, per_token, rows, runs, timeout)
            log(f"  ours   {entry['ours']['median']:>12,.0f} rows/s")
        if "redis" in only:
            if redis_problem:
                log(f"  redis baseline skipped: {redis_problem}")
                entry["redis"] = {"skipped": redis_problem}
            else:
                entry["redis"] = run_redis(n, rows, runs, timeout)
                log(f"  redis  {entry['redis']['median']:>12,.0f} rows/s")
        if "raw" in only:
            entry["raw"] = run_raw(n, per_token, rows, runs, timeout)
            log(f"  raw    {entry['raw']['median']:>12,.0f} rows/s")
        out.append(entry)
    return out
