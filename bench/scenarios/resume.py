"""Fan-out against durable baselines that resume by position (issue #9): 10 receivers, one
row per token, publishing included.

Every client is a process of its own; every side moves the same rows
(:func:`common.make_rows`, 120 bytes of JSON) in the same counts (those of the fan-out
scenario's 10-worker, 1-row-per-token variant) to 10 receivers that decode every row, and
the figure is the same as :mod:`fanout`'s: ``receivers * rows / (last receiver done -
first publish)``, the median of ``runs`` runs; the processes of one side are started once
and measure all its runs.

* **ours**: ``replication master`` with the SQLite store (the default durable one: every
  publish answered after its commit, ``synchronous=FULL``) and with the memory store; 10
  ``replication worker`` processes (``handlers:FanoutCounter``) that keep their positions
  in files. Published over the replication port (``port_publish_child.py``: one
  ``replication.client.Publisher``, ``publish_all`` of 1,000 one-row tokens at a time) and,
  for comparison, over HTTP (``http_publish_child.py``, as in :mod:`fanout`).
* **Redis Streams**: one publisher ``XADD``-ing each row (pipelined 1,000 at a time,
  ``redis_xadd_child.py``); 10 readers ``XREAD BLOCK ... COUNT 10000`` from the id of the
  last entry they read (``redis_xread_child.py``). The stream key ``bench-streams-<random>``
  is deleted at the end.
* **NATS JetStream**: a stream ``BENCH_<random>`` (file storage, one replica, limits
  retention, no limits) on the subject ``bench.<random>``; one publisher with
  ``publish_async`` (``nats_pub_child.py``); 10 durable pull consumers (deliver all,
  ``AckPolicy.ALL``) each fetched in batches of 1,000 by a process of its own
  (``nats_pull_child.py``), acking each batch once. The stream and its consumers are
  deleted at the end.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

from common import Group, Process, child, cpu_seconds, scratch, summary, wait_files
from fanout import _rate, run_ours

REDIS_PORT = 6379
NATS_URL = "nats://127.0.0.1:4222"
RECEIVERS = 10

#: (store, via) of our side.
OURS = (("sqlite", "port"), ("sqlite", "tokens"), ("sqlite", "http"),
        ("memory", "port"), ("memory", "tokens"), ("memory", "http"))


def rows_per_run(quick: bool) -> int:
    return 15_000 if quick else 30_000


def server_cpu(name: str) -> float | None:
    """CPU seconds used so far by the process whose ``comm`` is ``name`` (``redis-server``,
    ``nats-server``), read from ``/proc``; ``None`` if there is not exactly one."""
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == name:
                found.append(int(comm.parent.name))
        except OSError:
            continue
    return cpu_seconds(found[0]) if len(found) == 1 else None


class CpuMeter:
    """CPU seconds of the readers (summed) and of a server over one run."""

    def __init__(self, readers: list[Process], server: str) -> None:
        self.readers, self.server = readers, server
        self.before = self._now()

    def _now(self) -> tuple[float, float | None]:
        return sum(cpu_seconds(p.pid) for p in self.readers), server_cpu(self.server)

    def done(self, publisher: float) -> dict[str, float | None]:
        readers, server = self._now()
        return {
            "server": None if server is None or self.before[1] is None
            else round(server - self.before[1], 3),
            "readers_total": round(readers - self.before[0], 3),
            "publisher": round(publisher, 3),
        }


# -- Redis Streams ---------------------------------------------------------------------------


def redis_problem() -> str | None:
    from fanout import redis_available

    return redis_available()


def redis_config() -> dict[str, str]:
    """The persistence settings of the Redis under test (read, never changed)."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=REDIS_PORT, socket_timeout=2)
    try:
        out: dict[str, str] = {"version": client.info("server")["redis_version"]}
        for name in ("appendonly", "appendfsync", "save"):
            out.update(client.config_get(name))
        return out
    except Exception as e:
        return {"error": repr(e)}
    finally:
        client.close()


def run_redis_streams(rows: int, runs: int, timeout: float) -> dict[str, Any]:
    import redis

    key = f"bench-streams-{uuid.uuid4().hex}"
    client = redis.Redis(host="127.0.0.1", port=REDIS_PORT)
    try:
        with scratch("redis-streams") as tmp, Group() as group:
            done_dir = tmp / "done"
            done_dir.mkdir()
            readers = [group.add(child(f"xread{i}", "redis_xread_child.py",
                                       [str(REDIS_PORT), key, str(done_dir)], tmp))
                       for i in range(RECEIVERS)]
            wait_files(done_dir, "ready", RECEIVERS, 30, "redis stream readers ready", group)
            results = []
            for k in range(runs):
                run_id = f"r{k}"
                out = tmp / f"xadd-{run_id}.json"
                meter = CpuMeter(readers, "redis-server")
                publisher = group.add(child(f"xadd-{run_id}", "redis_xadd_child.py",
                                            [str(REDIS_PORT), key, str(rows), run_id, str(out)],
                                            tmp), transient=True)
                publisher.wait_for_exit(timeout)
                info = json.loads(out.read_text())
                if info["errors"]:
                    raise RuntimeError(f"XADD publisher failed: {info['errors'][:3]}")
                done = wait_files(done_dir, f"{run_id}.done", RECEIVERS, timeout,
                                  f"redis stream readers of {run_id}", group)
                result = _rate(RECEIVERS, rows, info["start"], done)
                result["ingest_s"] = info["acked"] - info["start"]
                result["cpu_s"] = meter.done(info.get("cpu_s", 0.0))
                results.append(result)
                time.sleep(0.3)
        return {"key": key, "config": redis_config(), "pipeline": 1000, "count": 10_000,
                "runs": results, **summary([r["rows_per_s"] for r in results])}
    finally:
        client.delete(key)
        client.close()


# -- NATS JetStream --------------------------------------------------------------------------


def nats_problem() -> str | None:
    try:
        import nats  # noqa: F401
    except ImportError:
        return "nats-py is not installed (pip install -e '.[bench]')"

    async def check() -> str | None:
        import nats

        nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0,
                                allow_reconnect=False)
        try:
            await nc.jetstream().account_info()
        finally:
            await nc.close()
        return None

    try:
        return asyncio.run(check())
    except Exception as e:
        return f"no NATS with JetStream at {NATS_URL}: {e!r}"


async def _nats_setup(stream: str, subject: str, durables: list[str]) -> dict[str, Any]:
    import nats
    from nats.js.api import (
        AckPolicy,
        ConsumerConfig,
        DeliverPolicy,
        RetentionPolicy,
        StorageType,
        StreamConfig,
    )

    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        info = await js.add_stream(StreamConfig(
            name=stream, subjects=[subject], storage=StorageType.FILE, num_replicas=1,
            retention=RetentionPolicy.LIMITS,
        ))
        for name in durables:
            await js.add_consumer(stream, ConsumerConfig(
                durable_name=name, deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.ALL, max_ack_pending=100_000,
            ))
        server = nc._server_info
        return {"stream": stream, "subject": subject, "storage": "file", "replicas": 1,
                "retention": "limits", "consumers": len(durables), "ack_policy": "all",
                "server_version": server.get("version"), "config": str(info.config)[:400]}
    finally:
        await nc.close()


async def _nats_teardown(stream: str, durables: list[str]) -> None:
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        for name in durables:
            try:
                await js.delete_consumer(stream, name)
            except Exception:
                pass
        await js.delete_stream(stream)
    finally:
        await nc.close()


def run_nats(rows: int, runs: int, timeout: float) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:12]
    stream, subject = f"BENCH_{tag}", f"bench.{tag}"
    durables = [f"reader{i}" for i in range(RECEIVERS)]
    config = asyncio.run(_nats_setup(stream, subject, durables))
    try:
        with scratch("nats") as tmp, Group() as group:
            done_dir = tmp / "done"
            done_dir.mkdir()
            readers = [group.add(child(f"pull{i}", "nats_pull_child.py",
                                       [NATS_URL, stream, name, str(done_dir)], tmp))
                       for i, name in enumerate(durables)]
            wait_files(done_dir, "ready", RECEIVERS, 30, "nats consumers ready", group)
            results = []
            for k in range(runs):
                run_id = f"r{k}"
                out = tmp / f"npub-{run_id}.json"
                meter = CpuMeter(readers, "nats-server")
                publisher = group.add(child(f"npub-{run_id}", "nats_pub_child.py",
                                            [NATS_URL, subject, str(rows), run_id, str(out)],
                                            tmp), transient=True)
                publisher.wait_for_exit(timeout)
                info = json.loads(out.read_text())
                if info["errors"]:
                    raise RuntimeError(f"NATS publisher failed: {info['errors'][:3]}")
                done = wait_files(done_dir, f"{run_id}.done", RECEIVERS, timeout,
                                  f"nats consumers of {run_id}", group)
                result = _rate(RECEIVERS, rows, info["start"], done)
                result["ingest_s"] = info["acked"] - info["start"]
                result["cpu_s"] = meter.done(info.get("cpu_s", 0.0))
                results.append(result)
                time.sleep(0.3)
        return {"config": config, "batch": 1000, "runs": results,
                **summary([r["rows_per_s"] for r in results])}
    finally:
        asyncio.run(_nats_teardown(stream, durables))


# -- the scenario ----------------------------------------------------------------------------


def run(quick: bool, runs: int, log: Any) -> dict[str, Any]:
    timeout = 120.0
    rows = rows_per_run(quick)
    out: dict[str, Any] = {"scenario": "resume", "receivers": RECEIVERS, "rows_per_token": 1,
                           "rows": rows, "ours": {}}
    log(f"durable fan-out: {RECEIVERS} receivers, 1 row/token, {rows} rows x {runs} runs")
    for store, via in OURS:
        figure = run_ours(RECEIVERS, 1, rows, runs, timeout, store=store, via=via)
        out["ours"][f"{store}-{via}"] = figure
        log(f"  ours {store:>6} via {via:<4} {figure['median']:>12,.0f} rows/s")
    problem = redis_problem()
    if problem:
        out["redis_streams"] = {"skipped": problem}
        log(f"  redis streams skipped: {problem}")
    else:
        out["redis_streams"] = run_redis_streams(rows, runs, timeout)
        log(f"  redis streams      {out['redis_streams']['median']:>12,.0f} rows/s")
    problem = nats_problem()
    if problem:
        out["nats"] = {"skipped": problem}
        log(f"  nats jetstream skipped: {problem}")
    else:
        out["nats"] = run_nats(rows, runs, timeout)
        log(f"  nats jetstream     {out['nats']['median']:>12,.0f} rows/s")
    return out
