"""Run the benchmark suite: fan-out (1 and 10 workers) against Redis pub/sub and a raw socket,
fan-out to 10 workers against Redis Streams and NATS JetStream (durable, resuming by position),
latency at 10,000 rows/s, memory per idle connection, and the durable scenarios of
``bench/durable.py``. Prints one table and writes every raw run as JSON.

    .venv/bin/python bench/run.py [--quick]
                                  [--only fanout,redis,raw,streams,latency,idle,durable]
                                  [--json PATH] [--runs N] [--reactor asyncio|default]

See ``docs/performance.rst`` for what each scenario measures and how.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "scenarios"))

import common  # noqa: E402

SCENARIOS = ("fanout", "redis", "raw", "streams", "latency", "idle", "durable")

#: Targets (ratios within one run).
FANOUT_VS_REDIS = {1: 2.0, 10: 3.0}
FANOUT_VS_DURABLE = 3.0
LATENCY_RATE_REACHED = 0.95
LATENCY_P50_MS = 1.0
LATENCY_P99_MS = 5.0
IDLE_KIB = 8.0


def log(message: str) -> None:
    print(message, flush=True)


def run_durable_scenarios(quick: bool) -> dict[str, Any]:
    """Scenarios 3 and 5 (catch-up from SQLite, durable ingest), owned by ``bench/durable.py``.

    Imported lazily. If the module offers ``run(quick)`` (returning a JSON-able dict), that is
    called; otherwise its command line is run in a child process (``--quick`` passed on) and
    its JSON and printed table are kept. Skipped, with the reason, if it is missing or fails.
    """
    path = HERE / "durable.py"
    if not path.exists():
        return {"skipped": "bench/durable.py does not exist"}
    try:
        sys.path.insert(0, str(HERE))
        import durable  # type: ignore[import-not-found]
    except Exception as e:
        return {"skipped": f"bench/durable.py cannot be imported: {e!r}"}
    if callable(getattr(durable, "run", None)):
        return {"results": durable.run(quick)}
    with tempfile.TemporaryDirectory(prefix="bench-durable-out-") as tmp:
        out = Path(tmp) / "durable.json"
        command = [sys.executable, str(path), "--out", str(out)] + (["--quick"] if quick else [])
        log(f"durable: {' '.join(command[1:])}")
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            return {"skipped": "bench/durable.py did not finish within 900 s"}
        if done.returncode != 0 or not out.exists():
            return {
                "skipped": f"bench/durable.py exited with {done.returncode}: {done.stderr[-1500:]}"
            }
        text = done.stdout
        table = (
            text[text.find("Publish throughput over HTTP") :]
            if "Publish throughput over HTTP" in text
            else text
        )
        return {"results": json.loads(out.read_text()), "table": table.strip()}


# -- the table ---------------------------------------------------------------------------------


def fmt_rate(s: dict[str, Any] | None) -> str:
    if not s or s.get("median") is None:
        return "-"
    return f"{s['median'] / 1000:,.0f}k [{s['min'] / 1000:,.0f}-{s['max'] / 1000:,.0f}k]"


def fmt_num(s: dict[str, Any] | None, unit: str, digits: int = 2) -> str:
    if not s or s.get("median") is None:
        return "-"
    return f"{s['median']:.{digits}f} {unit} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def build_table(results: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    for entry in results.get("fanout", []):
        n, per = entry["receivers"], entry["rows_per_token"]
        label = f"fan-out {n} worker{'s' if n > 1 else ''}, {per} row{'s' if per > 1 else ''}/token"
        ours, redis, raw = entry.get("ours"), entry.get("redis"), entry.get("raw")
        if ours is not None or (redis and "median" in redis):
            ratio = None
            if ours and redis and redis.get("median"):
                ratio = ours["median"] / redis["median"]
            target = FANOUT_VS_REDIS[n]
            rows.append(
                [
                    label + " vs Redis",
                    fmt_rate(ours) + " rows/s",
                    fmt_rate(redis)
                    if redis and "median" in redis
                    else (redis or {}).get("skipped", "-")[:30],
                    f"{ratio:.2f}x" if ratio else "-",
                    f">= {target:g}x",
                    verdict(None if ratio is None else ratio >= target),
                ]
            )
        if raw is not None:
            ratio = ours["median"] / raw["median"] if ours and raw.get("median") else None
            rows.append([label + " vs raw socket", fmt_rate(ours) + " rows/s" if ours else "-",
                         fmt_rate(raw), f"{ratio:.3f}x" if ratio else "-", "(limit)", "-"])
    rows += build_durable_rows(results.get("streams"))
    for lat in results.get("latency", []):
        p50, p99, mx = lat["p50_ms"], lat["p99_ms"], lat["max_ms"]
        per = lat["rows_per_token"]
        every = per / lat["rate"] * 1000
        via = lat.get("via", "http")
        where = f"latency 10k rows/s, 10 workers, {per} rows/{every:g} ms, via {via}"
        if via != "port":  # the comparison: what the same load costs published over HTTP
            rows.append([where + ": p50", fmt_num(p50, "ms"), "", "", "(comparison)", "-"])
            rows.append([where + ": p99", fmt_num(p99, "ms"), "", "", "(comparison)", "-"])
            continue
        # A run that fell short of the intended rate measured an easier load: flag it.
        short = [i for i, r in enumerate(lat["runs"])
                 if r["achieved_rate"] < LATENCY_RATE_REACHED * lat["rate"] or not r["complete"]]
        flag = f" (runs {','.join(map(str, short))} SHORT OF RATE)" if short else ""
        rows.append([where + ": p50", fmt_num(p50, "ms"), "", "", f"<= {LATENCY_P50_MS:g} ms",
                     verdict(p50["median"] <= LATENCY_P50_MS) + flag])
        rows.append([where + ": p99", fmt_num(p99, "ms"), "", "", f"<= {LATENCY_P99_MS:g} ms",
                     verdict(p99["median"] <= LATENCY_P99_MS) + flag])
        rows.append([where + ": max", fmt_num(mx, "ms"), "", "", "", "-"])
        rates = summary_of([r["achieved_rate"] for r in lat["runs"]])
        rows.append([where + ": rate reached", fmt_num(rates, "rows/s", 0), "", "",
                     f">= {LATENCY_RATE_REACHED * lat['rate']:,.0f} rows/s",
                     "PASS" if not short else f"FLAG: runs {short} short"])
    idle = results.get("idle")
    if idle and idle.get("median") is not None:
        rows.append([f"idle connections ({idle['connections']}): RSS/conn", fmt_num(idle, "KiB"),
                     "", "", f"<= {IDLE_KIB:g} KiB", verdict(idle["median"] <= IDLE_KIB)])
    for name, info in results.get("errors", {}).items():
        rows.append([f"{name}: ERROR", info.splitlines()[-1][:60], "", "", "", "FAIL"])
    durable = results.get("durable")
    if durable and "skipped" in durable:
        rows.append(
            ["durable (bench/durable.py)", "skipped: " + durable["skipped"][:60], "", "", "", "-"]
        )
    return rows


def summary_of(values: list[float]) -> dict[str, Any]:
    return common.summary(values)


def build_durable_rows(entry: dict[str, Any] | None) -> list[list[str]]:
    """Fan-out to 10 workers, 1 row per token, publishing included: ours (SQLite and memory
    stores, published over the replication port) against Redis Streams and NATS JetStream;
    the same over HTTP for comparison."""
    rows: list[list[str]] = []
    if not entry:
        return rows
    label = "durable fan-out 10 workers, 1 row/token"
    baselines = (("Redis Streams", entry.get("redis_streams") or {}),
                 ("NATS JetStream", entry.get("nats") or {}))
    for key, figure in entry.get("ours", {}).items():
        store, via = key.split("-")
        how = {"port": "port, 1 token/publish", "tokens": "port, 100 tokens/publish",
               "http": "HTTP, 100 tokens/POST"}.get(via, via)
        name = f"{label}, ours {store} via {how}"
        if via == "http":
            rows.append([name, fmt_rate(figure) + " rows/s", "", "", "(comparison)", "-"])
            continue
        for baseline_name, baseline in baselines:
            if "median" not in baseline:
                rows.append([f"{name} vs {baseline_name}", fmt_rate(figure) + " rows/s",
                             "skipped: " + baseline.get("skipped", "-")[:30], "-", "", "-"])
                continue
            ratio = figure["median"] / baseline["median"] if baseline["median"] else None
            rows.append([f"{name} vs {baseline_name}", fmt_rate(figure) + " rows/s",
                         fmt_rate(baseline), f"{ratio:.2f}x" if ratio else "-",
                         f">= {FANOUT_VS_DURABLE:g}x",
                         verdict(None if ratio is None else ratio >= FANOUT_VS_DURABLE)])
    return rows


def print_table(rows: list[list[str]], runs: int) -> str:
    header = [
        "scenario",
        f"ours (median [min-max] of {runs})",
        "baseline",
        "ratio",
        "target",
        "result",
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    # Rows are at least as wide as the header (widths index them); zip stops at the header.
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) for r in rows]
    return "\n".join(lines)


def code_under_test() -> str:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer rows, shorter runs (about 3 minutes)"
    )
    parser.add_argument("--only", metavar="SCENARIO,...",
                        help=f"run only these, from {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--json", metavar="PATH", help="where to write the results "
                        "(default bench/results/run-quick.json or run-full.json)")
    parser.add_argument(
        "--runs",
        type=int,
        default=3,
        help="runs per figure (default 3, at least 3 for the issue's figures)",
    )
    parser.add_argument("--reactor", choices=("asyncio", "default"),
                        help="run masters and workers with `--reactor NAME` "
                        "(default: the tool's own default)")
    args = parser.parse_args(argv)
    only = (
        set(SCENARIOS) if not args.only else {s.strip() for s in args.only.split(",") if s.strip()}
    )
    unknown = only - set(SCENARIOS)
    if unknown:
        parser.error(
            f"unknown scenario(s): {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}"
        )
    common.setup_environment()
    if args.reactor:
        os.environ[common.REACTOR_ENV] = args.reactor
    mode = "quick" if args.quick else "full"
    json_path = Path(args.json) if args.json else HERE / "results" / f"run-{mode}.json"
    began = time.monotonic()
    results: dict[str, Any] = {
        "mode": mode,
        "runs_per_figure": args.runs,
        "machine": common.machine_info(),
        "load_average_start": os.getloadavg(),
        "replication_code": code_under_test(),
        "row_bytes": common.row_bytes(),
        "scenarios": sorted(only),
        "reactor": args.reactor or "tool default",
        "errors": {},
    }
    log(f"bench: {mode} mode, {args.runs} runs per figure, scenarios {', '.join(sorted(only))}; "
        f"{results['machine']['cores']} cores, load {results['load_average_start'][0]:.2f}")

    def attempt(name: str, call: Any) -> Any:
        started = time.monotonic()
        try:
            value = call()
        except Exception:
            text = traceback.format_exc()
            log(f"{name} FAILED:\n{text}")
            results["errors"][name] = text
            return None
        results.setdefault("seconds", {})[name] = round(time.monotonic() - started, 1)
        return value

    if only & {"fanout", "redis", "raw"}:
        import fanout

        value = attempt("fanout", lambda: fanout.run(args.quick, args.runs, log, only))
        if value is not None:
            results["fanout"] = value
    if "streams" in only:
        import resume

        value = attempt("streams", lambda: resume.run(args.quick, args.runs, log))
        if value is not None:
            results["streams"] = value
    if "latency" in only:
        import latency

        value = attempt("latency", lambda: latency.run(args.quick, args.runs, log))
        if value is not None:
            results["latency"] = value
    if "idle" in only:
        import idle

        value = attempt("idle", lambda: idle.run(args.quick, args.runs, log))
        if value is not None:
            results["idle"] = value
    if "durable" in only:
        value = attempt("durable", lambda: run_durable_scenarios(args.quick))
        if value is not None:
            results["durable"] = value
    results["load_average_end"] = os.getloadavg()
    results["total_seconds"] = round(time.monotonic() - began, 1)
    table = print_table(build_table(results), args.runs)
    results["table"] = table
    print()
    if results.get("durable", {}).get("table"):
        print("bench/durable.py (scenarios 3 and 5):")
        print(results["durable"]["table"])
        print()
    print(table)
    print(
        f"\n{mode} mode, {results['total_seconds']:.0f} s; load average "
        f"{results['load_average_start'][0]:.2f} at start, "
        f"{results['load_average_end'][0]:.2f} at end; "
        f"{results['machine']['cpu_model']}, {results['machine']['cores']} cores, "
        f"Python {results['machine']['python']}"
    )
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {json_path}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
