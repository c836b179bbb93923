"""Compare two versions of the code side by side: fan-out and durable ingest, interleaved.

    .venv/bin/python bench/compare.py --baseline REV [--new REV] [--rounds 3] [--json PATH]

The package as it was at git revision ``--baseline`` is extracted into a temporary directory
(and so is ``--new``'s when given; without it the working tree is the new side); then,
for each round, the fan-out scenario (``bench/run.py --quick --only fanout --runs 1``: our
master and workers only, 1 and 10 workers, 1 and 100 rows per token) and the ingest part of
``bench/durable.py --quick --skip-catch-up`` (HTTP publishes to the SQLite and memory stores)
run once against the baseline and once against the working tree, alternately, so that both
see the same machine load. Child processes import ``replication`` from the tree under test
through ``PYTHONPATH``. It prints, per figure, the median of each side over the rounds and
the ratio new / baseline; 1.00 means no change (runs on a shared 2-core machine move by
15-35%, so read ratios within that band as "no change").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def extract(revision: str, into: Path) -> Path:
    """``replication/`` as it was at ``revision``, under ``into``."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision, "replication"],
        cwd=ROOT, capture_output=True, check=True, timeout=60,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_child(args: list[str], code: Path, out: Path, timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def figures(code: Path, scratch: Path) -> dict[str, float]:
    """One round of every figure against ``code``: rows/s by figure name."""
    out: dict[str, float] = {}
    fan = scratch / "fanout.json"
    fan.unlink(missing_ok=True)
    result = run_child(
        [str(HERE / "run.py"), "--quick", "--only", "fanout", "--runs", "1", "--json", str(fan)],
        code, fan, 900,
    )
    for entry in result.get("fanout", []):
        ours = entry.get("ours")
        if ours and ours.get("median"):
            out[f"fan-out {entry['receivers']} workers, {entry['rows_per_token']} rows/token"] = (
                ours["median"]
            )
    durable = scratch / "durable.json"
    durable.unlink(missing_ok=True)
    result = run_child(
        [str(HERE / "durable.py"), "--quick", "--skip-catch-up", "--out", str(durable)],
        code, durable, 900,
    )
    for store, by_shape in result.get("throughput", {}).items():
        for _key, value in by_shape.items():
            out[f"ingest {store}, {value['rows_per_request']} rows/request, "
                f"{value['connections']} connections"] = value["rows_per_s"]["median"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--baseline", required=True, metavar="REV", help="git revision to compare with"
    )
    parser.add_argument("--new", metavar="REV", help="git revision of the new side "
                        "(default: the working tree)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side (default 3)")
    parser.add_argument("--json", metavar="PATH", default=str(HERE / "results" / "compare.json"))
    args = parser.parse_args(argv)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        base = extract(args.baseline, Path(tmp) / "baseline")
        new = extract(args.new, Path(tmp) / "new") if args.new else ROOT
        sides = {"baseline": base, "new": new}
        samples: dict[str, dict[str, list[float]]] = {"baseline": {}, "new": {}}
        for round_ in range(args.rounds):
            order = ("baseline", "new") if round_ % 2 == 0 else ("new", "baseline")
            for side in order:
                print(f"round {round_ + 1}/{args.rounds}: {side}", flush=True)
                scratch = Path(tmp) / f"{side}-{round_}"
                scratch.mkdir()
                for name, value in figures(sides[side], scratch).items():
                    samples[side].setdefault(name, []).append(value)
    rows = []
    for name in sorted(set(samples["baseline"]) | set(samples["new"])):
        old = samples["baseline"].get(name, [])
        new = samples["new"].get(name, [])
        old_m = statistics.median(old) if old else None
        new_m = statistics.median(new) if new else None
        ratio = new_m / old_m if old_m and new_m else None
        rows.append({"figure": name, "baseline": old, "new": new, "baseline_median": old_m,
                     "new_median": new_m, "ratio": ratio})
    width = max(len(r["figure"]) for r in rows) if rows else 10
    print(f"\n{'figure':{width}}  {'baseline rows/s':>16}  {'new rows/s':>12}  ratio")
    for r in rows:
        old_s = f"{r['baseline_median']:,.0f}" if r["baseline_median"] else "-"
        new_s = f"{r['new_median']:,.0f}" if r["new_median"] else "-"
        ratio_s = f"{r['ratio']:.2f}" if r["ratio"] else "-"
        print(f"{r['figure']:{width}}  {old_s:>16}  {new_s:>12}  {ratio_s}")
    print(f"\n{args.rounds} rounds per side, interleaved; {time.monotonic() - began:.0f} s; "
          f"baseline {args.baseline}, new {args.new or 'working tree'}")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"baseline": args.baseline, "new": args.new or "working tree",
                                "rounds": args.rounds, "figures": rows},
                               indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
