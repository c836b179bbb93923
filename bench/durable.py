"""Durable-store measurements against real ``replication`` processes (SQLite store, and
the PostgreSQL store with ``--postgres DSN``).

    python bench/durable.py [--quick] [--postgres DSN] [--out bench/results/durable.json]

Not a test: it prints a table and writes the figures as JSON. Three parts (four with
``--postgres``):

1. Publish throughput over HTTP: 8 concurrent keep-alive connections (asyncio, one process)
   POST batches of 100 rows and of 1 row per request (and 32 connections of 1 row, to show
   what group commit does with more publishes waiting) for a fixed time; rows/s acknowledged
   (200 answers), median/min/max of 3 runs. The memory store is run the same way as a
   baseline. Meanwhile a separate process sends ``GET /health`` every 10 ms on its own
   keep-alive connection and records each answer's latency: a stalled reactor answers
   late, so p50/p99/max of that latency is the master's responsiveness under load (it also
   includes the probe's own scheduling delays on a busy machine).
2. Catch-up from the store (SQLite; with ``--postgres``, PostgreSQL too): publish a backlog
   (10 rows per token, and 1 row per token), then start a worker with a do-nothing handler
   and time it from process start until its position file shows the head; the master's RSS
   is sampled every 20 ms.
3. While that catch-up runs: a live worker on another stream, fed 100 rows/s (1 row per
   token, each row carrying its send time); its handler logs each row's delivery delay.
   Delays are reported before, during and after the catch-up.
4. With ``--postgres``: three masters on one database, each taking a third of the publishes
   and serving one worker; rows/s published, and until every worker had every row.

Every process listens on 127.0.0.1 only, every phase is bounded in time and rows, and every
process is killed when its phase ends (also on failure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mmap
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

from processes import (  # noqa: E402  (tests/ is not a package)
    HOST,
    Process,
    free_ports,
    health_ok,
    replication_command,
    wait_until,
)

CONNECTIONS = 8

#: The ``store:`` section of a store that needs more than its type (``--postgres DSN`` sets
#: the PostgreSQL one, in a schema of its own that is dropped at the end).
STORE_CONFIG: dict[str, str] = {}


# -- HTTP over asyncio (keep-alive, Content-Length or chunked answers) -----------------------


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if b":" in line:
            key, _, value = line.partition(b":")
            headers[key.strip().lower()] = value.strip().lower()
    if b"content-length" in headers:
        return status, await reader.readexactly(int(headers[b"content-length"]))
    if headers.get(b"transfer-encoding") == b"chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return status, body
            body += (await reader.readexactly(size + 2))[:size]
    raise RuntimeError(f"cannot find the end of an HTTP answer: {head!r}")


class Client:
    """One keep-alive HTTP connection to the master."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        self.writer.write(
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), HOST.encode(), len(body), body)
        )
        return await asyncio.wait_for(_read_response(self.reader), 30)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def make_row(i: int) -> list[Any]:
    """One event-like row of about 120 bytes of JSON, as in the fan-out scenarios."""
    return ["m.room.message", "!room:example.org", "@user:example.org", f"$ev{i:012d}",
            1763700000000 + i, {"body": f"hello world {i:06d}"}]


def rows_body(n: int, start: int = 0) -> bytes:
    """One token of ``n`` distinct rows."""
    rows = [make_row(start + k) for k in range(n)]
    return json.dumps({"rows": rows}, separators=(",", ":")).encode()


def tokens_body(tokens: int, rows_per_token: int, start: int = 0) -> bytes:
    """``tokens`` tokens of ``rows_per_token`` distinct rows, committed together."""
    body = [[make_row(start + t * rows_per_token + k) for k in range(rows_per_token)]
            for t in range(tokens)]
    return json.dumps({"tokens": body}, separators=(",", ":")).encode()


async def load_for(port: int, stream: str, body: bytes, seconds: float, rows: int,
                   connections: int = CONNECTIONS) -> dict[str, Any]:
    """POST ``body`` (``rows`` rows) on ``connections`` connections for ``seconds``."""
    deadline = time.monotonic() + seconds
    counts = {"ok": 0, "refused": 0}

    async def one() -> None:
        client = Client(port)
        try:
            while time.monotonic() < deadline:
                status, _ = await client.post(f"/streams/{stream}", body)
                counts["ok" if status == 200 else "refused"] += 1
        finally:
            client.close()

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(connections)))
    elapsed = time.monotonic() - started
    return {"requests": counts["ok"], "refused": counts["refused"], "seconds": elapsed,
            "rows_per_s": counts["ok"] * rows / elapsed}


async def publish_count(port: int, stream: str, tokens: int, rows_per_token: int,
                        connections: int = 2 * CONNECTIONS) -> dict[str, Any]:
    """Publish ``tokens`` tokens of ``rows_per_token`` distinct rows as fast as possible:
    several tokens to a request (``{"tokens": ...}``), about 1,000 rows a request."""
    per_request = max(1, 1000 // rows_per_token)
    starts = list(range(0, tokens, per_request))
    next_request = 0

    async def one() -> None:
        nonlocal next_request
        client = Client(port)
        try:
            while next_request < len(starts):
                first = starts[next_request]
                next_request += 1
                count = min(per_request, tokens - first)
                status, answer = await client.post(
                    f"/streams/{stream}", tokens_body(count, rows_per_token, first * rows_per_token)
                )
                if status != 200:
                    raise RuntimeError(f"publish refused ({status}): {answer[:200]!r}")
        finally:
            client.close()

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(connections)))
    elapsed = time.monotonic() - started
    return {"tokens": tokens, "rows": tokens * rows_per_token, "seconds": elapsed,
            "rows_per_s": tokens * rows_per_token / elapsed}


# -- the health probe (a separate process) -----------------------------------------------------


def _probe(port: int, interval: float, stop: Any, results: Any) -> None:
    import http.client

    latencies: list[float] = []
    failures = 0
    connection = http.client.HTTPConnection(HOST, port, timeout=30)
    next_at = time.monotonic()
    while not stop.is_set():
        sent = time.monotonic()
        try:
            connection.request("GET", "/health")
            response = connection.getresponse()
            response.read()
            latencies.append(time.monotonic() - sent)
        except (OSError, http.client.HTTPException):
            failures += 1
            connection.close()
            connection = http.client.HTTPConnection(HOST, port, timeout=30)
        next_at += interval
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        else:
            next_at = time.monotonic()
    connection.close()
    results.send({"latencies": latencies, "failures": failures})


class HealthProbe:
    """``GET /health`` every 10 ms from another process while the block runs."""

    def __init__(self, port: int, interval: float = 0.01) -> None:
        ctx = multiprocessing.get_context("fork")
        self.stop = ctx.Event()
        self.receive, send = ctx.Pipe(duplex=False)
        self.process = ctx.Process(
            target=_probe, args=(port, interval, self.stop, send), daemon=True
        )
        self.result: dict[str, Any] = {}

    def __enter__(self) -> HealthProbe:
        self.process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.receive.poll(15):
            self.result = self.receive.recv()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def summarise(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    """p50/p99/max (times ``scale``: ms by default) and the sample count."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * scale

    return {"n": len(ordered), "p50": pick(0.50), "p99": pick(0.99), "max": ordered[-1] * scale}


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


# -- processes ---------------------------------------------------------------------------------


def start_master(
    tmp: Path, name: str, store: str, extra_config: str = ""
) -> tuple[Process, int, int]:
    port, http_port = free_ports(2)
    config = tmp / f"{name}.yaml"
    config.write_text(
        f"listen: 'tcp:{port}:interface={HOST}'\n"
        f"http: {{listen: 'tcp:{http_port}:interface={HOST}'}}\n"
        f"data_dir: {json.dumps(str(tmp / (name + '-data')))}\n"
        + STORE_CONFIG.get(store, f"store: {{type: {store}}}\n") + extra_config
    )
    process = Process(name, replication_command("master", "--config", str(config)),
                      stdout=tmp / f"{name}.out", stderr=tmp / f"{name}.err", cwd=tmp).start()
    try:
        wait_until(lambda: health_ok(http_port), 20, f"{name} /health", alive=[process])
    except BaseException:
        process.kill()
        raise
    return process, port, http_port


def worker(tmp: Path, name: str, port: int, stream: str, handler: str, start: str,
           env: dict[str, str] | None = None) -> Process:
    process = Process(
        name,
        replication_command(
            "worker", "--master", f"tcp:host={HOST}:port={port}", "--stream", stream,
            "--start", start, "--name", name, "--handler", handler,
            "--position-file", str(tmp / f"{name}.pos"),
        ),
        stdout=tmp / f"{name}.out", stderr=tmp / f"{name}.err", cwd=tmp,
    )
    saved = dict(os.environ)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), saved.get("PYTHONPATH")]))
    os.environ.update(env or {})
    try:
        process.start()  # child_env() copies os.environ
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return process


def last_position(path: Path, stream: str) -> int | None:
    """The last ``<stream> <token>`` line of a position file, reading only its tail: the
    file is mapped and its journal ends at the first NUL byte (the preallocated rest)."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            end = mm.find(b"\0")
            if end < 0:
                end = len(mm)
            tail = mm[max(0, end - 4096):end]
    except (FileNotFoundError, ValueError):  # ValueError: an empty file cannot be mapped
        return None
    prefix = stream.encode() + b" "
    for line in reversed(tail.split(b"\n")[:-1]):
        if line.startswith(prefix) and line[len(prefix):].isdigit():
            return int(line[len(prefix):])
    return None


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# -- part 1: publish throughput ------------------------------------------------------------


def bench_throughput(tmp: Path, store: str, seconds: float, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with ExitStack() as stack:
        master, _, http_port = start_master(tmp, f"tp-{store}", store)
        stack.callback(master.kill)
        for rows, connections in ((100, CONNECTIONS), (1, CONNECTIONS), (1, 4 * CONNECTIONS)):
            body = rows_body(rows)
            results, probes = [], []
            for _ in range(runs):
                with HealthProbe(http_port) as probe:
                    results.append(asyncio.run(
                        load_for(http_port, "tp", body, seconds, rows, connections)))
                probes.append(probe.result)
                if master.poll() is not None:
                    raise RuntimeError(f"master exited\n{master.describe_output()}")
            latencies = [x for p in probes for x in p.get("latencies", [])]
            key = f"batch{rows}-c{connections}"
            out[key] = {
                "rows_per_request": rows,
                "connections": connections,
                "seconds_per_run": seconds,
                "rows_per_s": spread([r["rows_per_s"] for r in results]),
                "requests_per_s": spread([r["requests"] / r["seconds"] for r in results]),
                "refused": sum(r["refused"] for r in results),
                "health_ms": summarise(latencies),
                "health_failures": sum(p.get("failures", 0) for p in probes),
            }
            print(f"  {store:6} {rows:3} rows/request, {connections:2} connections: "
                  f"{out[key]['rows_per_s']['median']:9.0f} rows/s "
                  f"health p99 {out[key]['health_ms'].get('p99', 0):.1f} ms", flush=True)
    return out


# -- parts 2 and 3: catch-up, with a live worker alongside --------------------------------


async def _live_publisher(port: int, stop: asyncio.Event, counts: dict[str, int],
                          rate: float = 100.0) -> None:
    client = Client(port)
    interval = 1.0 / rate
    next_at = time.monotonic()
    try:
        while not stop.is_set():
            body = json.dumps({"rows": [{"t": time.time()}]}).encode()
            status, _ = await client.post("/streams/live", body)
            counts["sent" if status == 200 else "refused"] += 1
            next_at += interval
            pause = next_at - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            else:
                counts["late"] += 1
                next_at = time.monotonic()
    finally:
        client.close()


async def _catch_up(tmp: Path, label: str, total_rows: int, rows_per_token: int,
                    baseline: float, deadline: float, store: str = "sqlite") -> dict[str, Any]:
    result: dict[str, Any] = {"rows": total_rows, "rows_per_token": rows_per_token,
                              "tokens": total_rows // rows_per_token, "store": store}
    with ExitStack() as stack:
        master, port, http_port = start_master(
            tmp, f"cu-{label}", store, "retention: {max_rows: null}\n")
        stack.callback(master.kill)
        published = await publish_count(http_port, "bulk", total_rows // rows_per_token,
                                        rows_per_token)
        result["publish"] = published
        print(f"  {label}: published {total_rows} rows as {result['tokens']} tokens in "
              f"{published['seconds']:.1f}s ({published['rows_per_s']:.0f} rows/s)", flush=True)
        head = result["tokens"]
        await asyncio.sleep(1.0)
        result["rss_before_mib"] = rss_mib(master.pid)

        delays_path = tmp / f"{label}-delays.txt"
        live = worker(tmp, f"{label}-live", port, "live", "handlers:delay", "latest",
                      {"BENCH_DELAY_FILE": str(delays_path)})
        stack.callback(live.kill)
        wait_until(lambda: last_position(tmp / f"{label}-live.pos", "live") is not None, 20,
                   "the live worker to subscribe", alive=[master, live])
        stop = asyncio.Event()
        counts = {"sent": 0, "refused": 0, "late": 0}
        feeder = asyncio.create_task(_live_publisher(http_port, stop, counts))
        await asyncio.sleep(baseline)

        samples: list[tuple[float, float]] = []
        started_wall = time.time()
        started = time.monotonic()
        bulk = worker(tmp, f"{label}-bulk", port, "bulk", "handlers:noop", "earliest")
        stack.callback(bulk.kill)
        first_progress = None
        position = None
        try:
            while True:
                now = time.monotonic()
                rss = rss_mib(master.pid)
                if rss is not None:
                    samples.append((now - started, rss))
                position = last_position(tmp / f"{label}-bulk.pos", "bulk")
                if position and first_progress is None:
                    first_progress = now
                if position == head:
                    break
                for p in (master, live, bulk):
                    if p.poll() is not None:
                        raise RuntimeError(f"{p.name} exited\n{p.describe_output()}")
                if now - started > deadline:
                    raise RuntimeError(
                        f"catch-up not done after {deadline:.0f}s: at {position} of {head}"
                    )
                await asyncio.sleep(0.02)
        finally:
            done = time.monotonic()
            done_wall = time.time()
            await asyncio.sleep(min(baseline, 2.0))
            stop.set()
            await feeder
        elapsed = done - started
        result["catch_up"] = {
            "seconds_from_start": elapsed,
            "rows_per_s": total_rows / elapsed,
            "seconds_from_first_position": (done - first_progress) if first_progress else None,
        }
        peak = max(r for _, r in samples)
        result["rss_peak_mib"] = peak
        result["rss_growth_mib"] = peak - (result["rss_before_mib"] or peak)
        result["rss_after_mib"] = rss_mib(master.pid)

        live_head = counts["sent"]
        wait_until(lambda: last_position(tmp / f"{label}-live.pos", "live") == live_head, 20,
                   "the live worker to reach its head", alive=[master, live])
        phases: dict[str, list[float]] = {"before": [], "during": [], "after": []}
        for line in delays_path.read_text().splitlines():
            received, delay = map(float, line.split())
            key = (
                "before"
                if received < started_wall
                else "during"
                if received <= done_wall
                else "after"
            )
            phases[key].append(delay)
        result["live"] = {
            "published": counts["sent"], "refused": counts["refused"],
            "late_ticks": counts["late"],
            "received": sum(len(v) for v in phases.values()),
            "delay_ms": {k: summarise(v) for k, v in phases.items()},
        }
        print(f"  {label}: caught up in {elapsed:.1f}s ({total_rows / elapsed:.0f} rows/s), "
              f"RSS {result['rss_before_mib']:.0f} -> peak {peak:.0f} MiB, live delay max "
              f"during {result['live']['delay_ms']['during'].get('max', 0):.0f} ms", flush=True)
    return result


# -- part 4 (with --postgres): three masters on one database ---------------------------------


async def _shared_fanout(tmp: Path, total_rows: int, deadline: float) -> dict[str, Any]:
    """Three masters on one PostgreSQL schema (``STORE_CONFIG["postgres"]``), each taking a
    third of the publishes (10 rows per token, about 1,000 rows per request, 4 connections
    each) and serving one worker (no-op handler) that follows the whole stream. Figures:
    rows/s acknowledged while all three publish, and rows/s from the first publish until
    every worker recorded the last token (every master fans out every master's rows)."""
    rows_per_token = 10
    tokens = total_rows // rows_per_token // 3
    with ExitStack() as stack:
        ports = []
        for i in range(3):
            master, port, http_port = start_master(
                tmp, f"shared-{i}", "postgres", "streams: [shared]\nretention: {max_rows: null}\n"
            )
            stack.callback(master.kill)
            ports.append((port, http_port))
        workers = []
        for i, (port, _) in enumerate(ports):
            w = worker(tmp, f"shared-w{i}", port, "shared", "handlers:noop", "earliest")
            stack.callback(w.kill)
            workers.append(w)
        for w in workers:
            wait_until(lambda w=w: last_position(tmp / f"{w.name}.pos", "shared") is not None,
                       20, f"{w.name} to subscribe", alive=workers)
        started = time.monotonic()
        published = await asyncio.gather(*(
            publish_count(http_port, "shared", tokens, rows_per_token, connections=4)
            for _, http_port in ports
        ))
        publish_done = time.monotonic()
        head = 3 * tokens
        while True:
            positions = [last_position(tmp / f"{w.name}.pos", "shared") for w in workers]
            if all(p == head for p in positions):
                break
            if time.monotonic() - started > deadline:
                raise RuntimeError(f"shared fan-out not done after {deadline:.0f}s: {positions}")
            for w in workers:
                if w.poll() is not None:
                    raise RuntimeError(f"{w.name} exited\n{w.describe_output()}")
            await asyncio.sleep(0.02)
        done = time.monotonic()
    rows = 3 * tokens * rows_per_token
    result = {
        "rows": rows, "tokens": head, "masters": 3,
        "publish_rows_per_s": rows / (publish_done - started),
        "per_master_publish_rows_per_s": [p["rows_per_s"] for p in published],
        "fanout_rows_per_s": rows / (done - started),
        "last_worker_behind_publish_s": done - publish_done,
    }
    print(f"  3 masters: published {rows} rows at {result['publish_rows_per_s']:.0f} rows/s; "
          f"every worker had every row {result['last_worker_behind_publish_s']:.2f}s after "
          f"the last publish ({result['fanout_rows_per_s']:.0f} rows/s end to end)", flush=True)
    return result


# -- main ----------------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    lines = []
    add = lines.append
    add("Publish throughput over HTTP "
        f"(keep-alive connections, median [min..max] of {results['runs']} runs "
        f"of {results['seconds_per_run']:g}s)")
    add(f"  {'store':8} {'rows/req':>8} {'conns':>5} {'rows/s':>26} {'req/s':>9}   "
        "/health latency ms p50/p99/max")
    for store, per in results["throughput"].items():
        for _key, r in per.items():
            s = r["rows_per_s"]
            h = r["health_ms"]
            add(f"  {store:8} {r['rows_per_request']:8} {r['connections']:5} "
                f"{s['median']:9.0f} [{s['min']:6.0f}..{s['max']:6.0f}] "
                f"{r['requests_per_s']['median']:9.0f}   "
                f"{h.get('p50', 0):.1f} / {h.get('p99', 0):.1f} / {h.get('max', 0):.1f}"
                + (f"  ({r['refused']} refused)" if r["refused"] else ""))
    add("  /health latency: a separate process sends GET /health every 10 ms during the load;")
    add("  a late answer means the master's reactor was busy or stalled (probe delays included).")
    add("")
    add("Catch-up from the store (worker with a no-op handler; time from worker process start")
    add("until its position file shows the head; master RSS sampled every 20 ms)")
    add(f"  {'store':8} {'backlog':24} {'publish rows/s':>14} {'catch-up s':>10} {'rows/s':>9} "
        f"{'(after 1st pos.)':>16} {'RSS before/peak/growth MiB':>28}")
    for _label, r in results["catch_up"].items():
        c = r["catch_up"]
        first = c["seconds_from_first_position"]
        after_first = f"{r['rows'] / first:9.0f} rows/s" if first else "-"
        add(f"  {r.get('store', 'sqlite'):8} {r['rows']:>8} rows / {r['tokens']:>7} tok "
            f"{r['publish']['rows_per_s']:14.0f} "
            f"{c['seconds_from_start']:10.2f} {c['rows_per_s']:9.0f} {after_first:>16} "
            f"{r['rss_before_mib']:10.1f} / {r['rss_peak_mib']:6.1f} / {r['rss_growth_mib']:+6.1f}")
    add("  catch-up s includes the worker's start (Python + Twisted import, ~0.3-0.5 s); the")
    add("  second rate counts from the first position the worker recorded (sampled every 20 ms).")
    add("")
    add("Live worker on another stream, 100 rows/s (1 row per token), during that catch-up:")
    add("  delivery delay = worker handler time - publisher send time (includes HTTP + commit)")
    add(f"  {'store':8} {'backlog':24} {'before p50/p99/max ms':>24} {'during p50/p99/max ms':>24} "
        f"{'after p50/p99/max ms':>22}")
    for _label, r in results["catch_up"].items():
        d = r["live"]["delay_ms"]

        def fmt(x: dict[str, float]) -> str:
            return f"{x.get('p50', 0):.0f}/{x.get('p99', 0):.0f}/{x.get('max', 0):.0f} (n={x['n']})"

        add(f"  {r.get('store', 'sqlite'):8} {r['rows']:>8} rows / {r['tokens']:>7} tok "
            f"{fmt(d['before']):>24} "
            f"{fmt(d['during']):>24} {fmt(d['after']):>22}")
    shared = results.get("shared_fanout")
    if shared:
        add("")
        add("Three masters on one PostgreSQL database (each takes a third of the publishes, "
            "10 rows/token, and serves one worker that follows everything):")
        add(f"  {shared['rows']} rows published at {shared['publish_rows_per_s']:.0f} rows/s "
            f"(all masters together); every worker had every row "
            f"{shared['last_worker_behind_publish_s']:.2f}s after the last publish "
            f"({shared['fanout_rows_per_s']:.0f} rows/s end to end)")
    return "\n".join(lines)


def _code_under_test() -> str:
    """Where the child processes import ``replication`` from (``PYTHONPATH`` may point at a
    snapshot, e.g. ``git archive HEAD replication | tar -x -C /tmp/snap``)."""
    import subprocess

    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import replication; print(replication.__file__, replication.__version__)",
        ],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
        timeout=30,
    )
    return done.stdout.strip() or done.stderr.strip()[-300:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small backlogs, short runs (~2 min)")
    parser.add_argument("--out", default=str(HERE / "results" / "durable.json"))
    parser.add_argument("--skip-memory", action="store_true", help="no memory-store baseline")
    parser.add_argument("--skip-throughput", action="store_true", help="only the catch-up part")
    parser.add_argument("--skip-catch-up", action="store_true", help="only the throughput part")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--postgres", metavar="DSN",
                        help="also measure the PostgreSQL store on this database (a schema "
                        "bench_<random> is created and dropped)")
    args = parser.parse_args()
    quick = args.quick
    seconds = 1.5 if quick else 5.0
    runs = 3
    tmp = Path(tempfile.mkdtemp(prefix="bench-durable-"))
    began = time.monotonic()
    results: dict[str, Any] = {
        "mode": "quick" if quick else "full", "cpus": os.cpu_count(), "runs": runs,
        "seconds_per_run": seconds, "python": sys.version.split()[0], "throughput": {},
        "catch_up": {},
        "replication_code": _code_under_test(),
    }
    try:
        print("publish throughput", flush=True)
        stores = (
            () if args.skip_throughput else ("sqlite",) + (() if args.skip_memory else ("memory",))
        )
        schemas: list[str] = []

        def postgres_store() -> None:
            """A new schema for the next master started with store ``postgres``."""
            schemas.append(f"bench_{os.urandom(4).hex()}")
            STORE_CONFIG["postgres"] = (
                f"store: {{type: postgres, dsn: {json.dumps(args.postgres)},"
                f" schema: {schemas[-1]}}}\n"
            )

        if args.postgres and not args.skip_throughput:
            stores = ("postgres", *stores)
        try:
            for store in stores:
                if store == "postgres":
                    postgres_store()
                results["throughput"][store] = bench_throughput(tmp, store, seconds, runs)
            print("catch-up", flush=True)
            backlogs = [
                ("sqlite", "10-per-token", 1_000_000, 10),
                ("sqlite", "1-per-token", 200_000 if quick else 1_000_000, 1),
            ]
            if args.postgres:
                backlogs.append(("postgres", "postgres-10-per-token", 1_000_000, 10))
            for store, label, total, per_token in [] if args.skip_catch_up else backlogs:
                if store == "postgres":
                    postgres_store()
                results["catch_up"][label] = asyncio.run(
                    _catch_up(tmp, label, total, per_token, baseline=2.0 if quick else 3.0,
                              deadline=120 if quick else 400, store=store))
            if args.postgres and not args.skip_catch_up:
                print("three masters on one PostgreSQL database", flush=True)
                postgres_store()
                results["shared_fanout"] = asyncio.run(
                    _shared_fanout(tmp, 300_000 if quick else 1_200_000,
                                   deadline=120 if quick else 400))
        finally:
            if schemas:
                import psycopg

                with psycopg.connect(args.postgres, autocommit=True) as conn:
                    for schema in schemas:
                        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    results["total_seconds"] = time.monotonic() - began
    print()
    print(table(results))
    print(f"\n({results['mode']} mode, {results['total_seconds']:.0f}s)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
