"""Fan-out through a three-master cluster against the same load on one master, side by side.

    .venv/bin/python bench/cluster.py [--quick] [--runs N] [--json PATH]

Both setups use the memory store and three workers (``handlers:FanoutCounter``, which
decodes every row and counts it), and one publisher process that POSTs the same rows to the
first master over HTTP (4 keep-alive connections; ``bench/scenarios/http_publish_child.py``),
then an end row; a worker that handled the end row has handled everything before it (one
origin: token order).

* **one master**: the three workers follow it;
* **cluster**: three masters, each configured with all three (``cluster.peers``); one
  worker on each master. Rows published to the first master reach the two others over
  their peer links (one hop each: 2 relays per row) and their workers from there.

Runs alternate between the setups (one master, cluster, one master, ...), each setup's
processes started once. It reports, per setup and rows per token, rows delivered per second
(``3 * rows / (last worker done - first publish)``), the masters' CPU seconds per 1,000
rows (all masters summed), and for the cluster the relays per row the first master reports
(``replication_relays_per_row``) and the relay cost: the extra master CPU per 1,000 rows
over the single master. Medians over the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "scenarios"))
sys.path.insert(0, str(HERE.parent / "tests"))

from common import (  # noqa: E402
    HOST,
    STREAM,
    Group,
    Process,
    child,
    cpu_seconds,
    free_ports,
    health_ok,
    read_positions,
    replication_command,
    scratch,
    setup_environment,
    start_master,
    wait_files,
    wait_until,
    worker,
)

from processes import metric_value  # noqa: E402

PUBLISH_CLIENTS = 4
WORKERS = 3


def sizes(quick: bool) -> dict[int, int]:
    """Rows per run, by rows per token."""
    return {100: 30_000, 1: 6_000} if quick else {100: 150_000, 1: 30_000}


class Setup:
    """The processes of one setup: masters (the first takes the publishes) and workers."""

    def __init__(self, name: str, tmp: Path, group: Group, clustered: bool) -> None:
        self.name = name
        self.tmp = tmp
        self.done_dir = tmp / "done"
        self.done_dir.mkdir()
        count = WORKERS if clustered else 1
        ports = free_ports(2 * count)
        self.ports, self.http_ports = ports[:count], ports[count:]
        self.masters: list[Process] = []
        if clustered:
            peers = "".join(f"    - tcp:host={HOST}:port={p}\n" for p in self.ports)
            for i, (port, http_port) in enumerate(zip(self.ports, self.http_ports, strict=True)):
                config = tmp / f"m{i}.yaml"
                config.write_text(
                    f"server_name: m{i}\nlisten: tcp:{port}:interface={HOST}\n"
                    f"http: {{listen: 'tcp:{http_port}:interface={HOST}'}}\n"
                    f"store: {{type: memory}}\nstreams: [{STREAM}]\n"
                    f"cluster:\n  peers:\n{peers}"
                )
                process = Process(
                    f"m{i}", replication_command("master", "--config", str(config)),
                    stdout=tmp / f"m{i}.out", stderr=tmp / f"m{i}.err", cwd=tmp,
                )
                group.add(process)
                wait_until(lambda h=http_port: health_ok(h), 30, f"m{i} /health",
                           alive=[process])
                self.masters.append(process)
        else:
            self.masters.append(group.add(start_master(
                tmp, "m0", self.ports[0], self.http_ports[0], "--stream", STREAM,
            )))
        os.environ["BENCH_DONE_DIR"] = str(self.done_dir)
        self.workers = [
            group.add(worker(tmp, f"w{i}", self.ports[i % count], "handlers:FanoutCounter"))
            for i in range(WORKERS)
        ]
        for i, w in enumerate(self.workers):
            wait_until(
                lambda i=i: (read_positions(tmp / f"w{i}.positions") or {}).get(STREAM)
                is not None or (tmp / f"w{i}.positions").exists(),
                30, f"{name}: worker w{i} subscribed", alive=[w],
            )
        if clustered:
            time.sleep(1.5)  # the peer links have linked

    def run(self, group: Group, run_id: str, rows: int, per_token: int,
            timeout: float) -> dict[str, Any]:
        os.environ["BENCH_DONE_DIR"] = str(self.done_dir)
        cpu_before = [cpu_seconds(p.pid) for p in self.masters]
        out = self.tmp / f"pub-{run_id}.json"
        publisher = group.add(child(
            f"pub-{run_id}", "http_publish_child.py",
            [str(self.http_ports[0]), str(rows), str(per_token), str(PUBLISH_CLIENTS), run_id,
             str(out)],
            self.tmp,
        ), transient=True)
        publisher.wait_for_exit(timeout)
        info = json.loads(out.read_text())
        if info["errors"]:
            raise RuntimeError(f"publisher failed: {info['errors'][:3]}")
        done = wait_files(self.done_dir, f"{run_id}.done", WORKERS, timeout,
                          f"{self.name} workers of {run_id}", group)
        elapsed = max(t for t, _ in done) - info["start"]
        cpu = sum(cpu_seconds(p.pid) - before
                  for p, before in zip(self.masters, cpu_before, strict=True))
        result = {
            "rows": rows,
            "rows_per_s": WORKERS * rows / elapsed,
            "complete": all(c == rows for _, c in done),
            "master_cpu_s_per_1k_rows": 1000 * cpu / rows,
        }
        if len(self.masters) > 1:
            result["relays_per_row"] = metric_value(
                self.http_ports[0], "replication_relays_per_row"
            )
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    parser.add_argument("--runs", type=int, default=3, help="runs per setup (default 3)")
    parser.add_argument("--json", metavar="PATH", help="write every run as JSON")
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args(argv)
    setup_environment()
    results: dict[str, dict[int, list[dict[str, Any]]]] = {"single": {}, "cluster": {}}
    with scratch("cluster-single") as single_tmp, scratch("cluster-three") as cluster_tmp, \
            Group() as group:
        setups = {
            "single": Setup("one master", single_tmp, group, clustered=False),
            "cluster": Setup("cluster", cluster_tmp, group, clustered=True),
        }
        for per_token, rows in sizes(args.quick).items():
            for k in range(args.runs):
                for key, setup in setups.items():
                    run_id = f"t{per_token}r{k}"
                    result = setup.run(group, run_id, rows, per_token, args.timeout)
                    results[key].setdefault(per_token, []).append(result)
                    print(f"{setup.name:10} {per_token:3} rows/token run {k}: "
                          f"{result['rows_per_s']:,.0f} rows/s", flush=True)
                    time.sleep(0.3)
    print()
    print(f"{'rows/token':>10}  {'one master':>12}  {'cluster':>12}  {'ratio':>6}  "
          f"{'CPU/1k rows 1':>13}  {'CPU/1k rows 3':>13}  {'relay cost':>10}  {'relays/row':>10}")
    for per_token in sizes(args.quick):
        one = results["single"][per_token]
        three = results["cluster"][per_token]
        rate1 = statistics.median(r["rows_per_s"] for r in one)
        rate3 = statistics.median(r["rows_per_s"] for r in three)
        cpu1 = statistics.median(r["master_cpu_s_per_1k_rows"] for r in one)
        cpu3 = statistics.median(r["master_cpu_s_per_1k_rows"] for r in three)
        relays = three[-1].get("relays_per_row")
        print(f"{per_token:>10}  {rate1:>12,.0f}  {rate3:>12,.0f}  {rate3 / rate1:>6.2f}  "
              f"{cpu1 * 1000:>11.1f}ms  {cpu3 * 1000:>11.1f}ms  "
              f"{(cpu3 - cpu1) * 1000:>8.1f}ms  {relays if relays is not None else '-':>10}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
