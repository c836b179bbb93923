"""Publishing benchmarks: the replication port's client library against redis-py, side by
side in one run, and the durable SQLite store under concurrent and pipelined publishers.

    .venv/bin/python bench/publish.py --quick     # about a minute
    .venv/bin/python bench/publish.py             # 5 rounds, larger counts

Every client runs in a process of its own (``bench/scenarios/publish_child.py``); masters run
as ``python -m replication master`` on 127.0.0.1 with port 0 style free ports, Redis is the
one at 127.0.0.1:6379 (``PUBLISH`` to a channel nobody follows: nothing is stored, nothing
to clean up). Scenarios, each repeated ``--rounds`` times, ours and Redis's alternating:

- **round trips**: one client, one row per publish, waiting for each answer; memory store
  vs redis-py ``publish()``. Target: at least 1.5x Redis.
- **pipelined**: one client, one-row publishes pipelined 1,000 at a time on one connection
  (``Publisher.publish_all``) vs a redis-py pipeline (``transaction=False``) of 1,000
  ``PUBLISH`` per ``execute()``. Target: at least 2x Redis.
- **SQLite, 32 publishers**: 32 blocking publishers (4 processes of 8 threads, one connection
  each) publishing one row at a time for a few seconds; acknowledged (committed) rows/s.
  Target: 30,000.
- **SQLite, one pipelining client**: as *pipelined*, against the SQLite store. Target: 50,000.
- For comparison, the same round trips and the same 32 publishers over HTTP (one row per
  ``POST`` on keep-alive connections).

It prints the table (medians, [min..max] over the rounds, and the ratio to Redis of each
round) and writes ``bench/results/publish.json``.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "scenarios"))
from common import (  # noqa: E402
    BENCH,
    Group,
    child,
    free_ports,
    machine_info,
    reactor_args,
    scratch,
    setup_environment,
    start_master,
    summary,
    wait_until,
)

#: The scenarios, for ``--only``: round trips, pipelined, HTTP round trips, SQLite with 32
#: publishers (and over HTTP), SQLite with one pipelining client.
SCENARIOS = ("rt", "pipe", "http", "sqlite32", "sqlitepipe")
TARGETS = {"rt_ratio": 1.5, "pipe_ratio": 2.0, "sqlite_32": 30_000, "sqlite_pipe": 50_000}


def log(message: str) -> None:
    print(f"[publish] {message}", file=sys.stderr, flush=True)


def redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(100).startswith(b"+PONG")
    except OSError:
        return False


def run_client(tmp: Path, group: Group, mode: str, port: int, count: int, threads: int,
               seconds: float, processes: int = 1, timeout: float = 120) -> float:
    """Rows/s of ``processes`` children of ``publish_child.py`` running together."""
    outs = []
    children = []
    for p in range(processes):
        out = tmp / f"{mode}-{time.monotonic_ns()}-{p}.json"
        outs.append(out)
        children.append(group.add(child(
            f"{mode}-{p}", "publish_child.py",
            [mode, str(port), str(count), str(threads), str(seconds), str(out)], tmp,
        ), transient=True))
    wait_until(lambda: all(o.exists() for o in outs), timeout, f"{mode} clients")
    for process in children:
        process.wait_for_exit(10)
    results = [json.loads(o.read_text()) for o in outs]
    errors = [e for r in results for e in r["errors"]]
    if errors:
        raise RuntimeError(f"{mode}: {errors[:3]}")
    return sum(r["rows"] for r in results) / max(r["seconds"] for r in results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, smaller counts")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--only", default=",".join(SCENARIOS),
        help=f"run only these scenarios, from {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "publish.json")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    unknown = only - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    rounds = args.rounds or (3 if args.quick else 5)
    rt_count = 2000 if args.quick else 5000
    pipe_count = 20_000 if args.quick else 50_000
    seconds = 3.0 if args.quick else 5.0
    setup_environment()
    have_redis = redis_up()
    if not have_redis:
        log("no Redis at 127.0.0.1:6379: the Redis columns are left out")
    samples: dict[str, list[float]] = {k: [] for k in (
        "ours_rt", "redis_rt", "ours_pipe", "redis_pipe", "sqlite_32", "sqlite_pipe",
        "rt_ratio", "pipe_ratio", "http_rt", "sqlite_32_http",
    )}
    started = time.time()
    with scratch("publish-bench-") as tmp, Group() as group:
        port, http_port, sq_port, sq_http = free_ports(4)
        group.add(start_master(tmp, "memory-master", port, http_port, *reactor_args()))
        group.add(start_master(
            tmp, "sqlite-master", sq_port, sq_http, "--store", "sqlite", "--data-dir",
            str(tmp / "data"), *reactor_args(),
        ))

        def side_by_side(kind: str, count: int) -> None:
            """Ours, then redis-py, the same client mode (``rt`` or ``pipe``), one process each."""
            ours = run_client(tmp, group, f"ours-{kind}", port, count, 1, 0)
            samples[f"ours_{kind}"].append(ours)
            if have_redis:
                theirs = run_client(tmp, group, f"redis-{kind}", port, count, 1, 0)
                samples[f"redis_{kind}"].append(theirs)
                samples[f"{kind}_ratio"].append(ours / theirs)

        for r in range(rounds):
            log(f"round {r + 1}/{rounds}")
            if "rt" in only:
                side_by_side("rt", rt_count)
            if "pipe" in only:
                side_by_side("pipe", pipe_count)
            if "http" in only:
                samples["http_rt"].append(
                    run_client(tmp, group, "http-rt", http_port, rt_count, 1, 0)
                )
            if "sqlite32" in only:
                samples["sqlite_32"].append(
                    run_client(tmp, group, "ours-rt", sq_port, 0, 8, seconds, processes=4)
                )
                samples["sqlite_32_http"].append(
                    run_client(tmp, group, "http-rt", sq_http, 0, 8, seconds, processes=4)
                )
            if "sqlitepipe" in only:
                samples["sqlite_pipe"].append(
                    run_client(tmp, group, "ours-pipe", sq_port, pipe_count, 1, 0)
                )
    stats = {k: summary(v) for k, v in samples.items()}
    table = build_table(stats)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "started": started, "seconds": time.time() - started, "rounds": rounds,
        "counts": {"round_trips": rt_count, "pipelined": pipe_count, "sqlite_seconds": seconds},
        "machine": machine_info(), "samples": samples, "summary": stats, "targets": TARGETS,
        "table": table,
    }, indent=2))
    log(f"wrote {args.out}")
    return 0


def _fmt(s: dict[str, Any], digits: int = 0) -> str:
    if s["median"] is None:
        return "n/a"
    if digits:
        return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}..{s['max']:.{digits}f}]"
    return f"{s['median']:,.0f} [{s['min']:,.0f}..{s['max']:,.0f}]"


def _verdict(value: float | None, target: float) -> str:
    if value is None:
        return "n/a"
    return "met" if value >= target else "MISSED"


def build_table(stats: dict[str, dict[str, Any]]) -> str:
    rows = [
        ("one client, round trips (memory)", _fmt(stats["ours_rt"]), _fmt(stats["redis_rt"]),
         _fmt(stats["rt_ratio"], 2), f">= {TARGETS['rt_ratio']}x",
         _verdict(stats["rt_ratio"]["median"], TARGETS["rt_ratio"])),
        ("one client, pipelined (memory)", _fmt(stats["ours_pipe"]), _fmt(stats["redis_pipe"]),
         _fmt(stats["pipe_ratio"], 2), f">= {TARGETS['pipe_ratio']}x",
         _verdict(stats["pipe_ratio"]["median"], TARGETS["pipe_ratio"])),
        ("one client, round trips, over HTTP (memory)", _fmt(stats["http_rt"]), "", "",
         "(HTTP, for comparison)", ""),
        ("SQLite, 32 publishers, rows/s", _fmt(stats["sqlite_32"]), "", "",
         f">= {TARGETS['sqlite_32']:,}",
         _verdict(stats["sqlite_32"]["median"], TARGETS["sqlite_32"])),
        ("SQLite, 32 publishers over HTTP, rows/s", _fmt(stats["sqlite_32_http"]), "", "",
         "(HTTP, for comparison)", ""),
        ("SQLite, one pipelining client, rows/s", _fmt(stats["sqlite_pipe"]), "", "",
         f">= {TARGETS['sqlite_pipe']:,}",
         _verdict(stats["sqlite_pipe"]["median"], TARGETS["sqlite_pipe"])),
    ]
    header = ("scenario", "ours (publishes/s)", "redis-py (publishes/s)", "ratio", "target",
              "verdict")
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    line = "  ".join("=" * w for w in widths)
    out = [line, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), line]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    out.append(line)
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
