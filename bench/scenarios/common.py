"""Shared pieces of the benchmark scenarios: rows, processes, files, statistics, machine info.

Process helpers come from ``tests/processes.py`` (free ports, :class:`Process` that is killed
on exit, ``wait_until``, ``start_master``). Children inherit ``PYTHONPATH`` with ``bench/`` in
it, so workers can load ``handlers:...``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent
ROOT = BENCH.parent
SCENARIOS = BENCH / "scenarios"

sys.path.insert(0, str(ROOT / "tests"))
from processes import (  # noqa: E402,F401
    FORBIDDEN_PORTS,
    HOST,
    Process,
    free_port,
    free_ports,
    health_ok,
    http_request,
    read_positions,
    replication_command,
    start_master,
    wait_until,
)

STREAM = "events"
END = "bench.end"


#: The environment variable that carries ``bench/run.py --reactor`` to every scenario.
REACTOR_ENV = "BENCH_REACTOR"


def reactor_args() -> list[str]:
    """``--reactor NAME`` for ``replication master`` and ``worker`` when the run picked a
    reactor (``bench/run.py --reactor``); nothing otherwise (the tool's default)."""
    name = os.environ.get(REACTOR_ENV)
    return ["--reactor", name] if name else []


def setup_environment() -> None:
    """Make every child see ``bench/`` on its path (for ``--handler handlers:...``)."""
    parts = [str(BENCH)]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    os.environ["PYTHONPATH"] = os.pathsep.join(parts)


# -- rows ----------------------------------------------------------------------------------


def make_row(i: int) -> list[Any]:
    """One event-like row, about 120 bytes of compact JSON."""
    return [
        "m.room.message",
        "!room:example.org",
        "@user:example.org",
        f"$ev{i:012d}",
        1763700000000 + i,
        {"body": f"hello world {i:06d}"},
    ]


def make_rows(n: int) -> list[list[Any]]:
    return [make_row(i) for i in range(n)]


def encode(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def row_bytes() -> int:
    return len(encode(make_row(123456)).encode())


def end_row(run_id: str) -> list[Any]:
    """The row of the last token of a run: handlers that see it report they are done."""
    return [END, run_id]


# -- processes -------------------------------------------------------------------------------


def child(name: str, script: str, args: Sequence[str], tmp: Path) -> Process:
    """A child running ``bench/scenarios/<script>`` with the venv's Python."""
    return Process(
        name,
        [sys.executable, str(SCENARIOS / script), *args],
        stdout=tmp / f"{name}.out",
        stderr=tmp / f"{name}.err",
        cwd=tmp,
    )


def worker(tmp: Path, name: str, port: int, handler: str, *extra: str) -> Process:
    return Process(
        name,
        replication_command(
            "worker",
            "--master", f"tcp:host={HOST}:port={port}",
            "--stream", STREAM,
            "--name", name,
            "--handler", handler,
            "--position-file", str(tmp / f"{name}.positions"),
            *reactor_args(),
            *extra,
        ),
        stdout=tmp / f"{name}.out",
        stderr=tmp / f"{name}.err",
        cwd=tmp,
    )


class Group:
    """Processes started by one scenario; every one is killed (and reaped) on exit."""

    def __init__(self) -> None:
        self.processes: list[Process] = []
        self.transient: set[int] = set()

    def add(self, process: Process, transient: bool = False) -> Process:
        """Start ``process`` (unless started) and kill it on exit. ``transient``: it is
        expected to exit by itself (a publisher), so :meth:`check_alive` ignores it."""
        self.processes.append(process)
        if transient:
            self.transient.add(id(process))
        if process.popen is None:
            process.start()
        return process

    def __enter__(self) -> Group:
        return self

    def __exit__(self, *exc: Any) -> None:
        for process in reversed(self.processes):
            try:
                process.kill()
            except Exception as e:  # pragma: no cover - keep killing the others
                print(f"bench: could not kill {process.name}: {e}", file=sys.stderr)
        if exc[0] is not None:
            for process in self.processes:
                print(process.describe_output(2000), file=sys.stderr)

    def check_alive(self) -> None:
        for process in self.processes:
            if id(process) in self.transient:
                continue
            code = process.poll()
            if code is not None:
                raise RuntimeError(
                    f"{process.name} exited with status {code}\n{process.describe_output(3000)}"
                )


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{prefix}-") as d:
        yield Path(d)


def read_done_files(directory: Path, suffix: str) -> list[tuple[float, int]]:
    """``(time, count)`` from each ``*.<suffix>`` file the children wrote."""
    out = []
    for path in sorted(directory.glob(f"*.{suffix}")):
        text = path.read_text().split()
        if len(text) >= 2:
            out.append((float(text[0]), int(text[1])))
    return out


def wait_files(directory: Path, suffix: str, count: int, timeout: float, what: str,
               group: Group | None = None) -> list[tuple[float, int]]:
    deadline = time.monotonic() + timeout
    while True:
        found = read_done_files(directory, suffix)
        if len(found) >= count:
            return found
        if group is not None:
            group.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {len(found)} of {count} done after {timeout:.0f}s")
        time.sleep(0.01)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# -- statistics ------------------------------------------------------------------------------


def summary(values: Sequence[float]) -> dict[str, Any]:
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def percentile(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def machine_info() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 1024
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_mib": mem,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        from importlib.metadata import version

        for package in ("replication", "twisted", "redis", "hiredis", "orjson"):
            try:
                info[f"{package}_version"] = version(package)
            except Exception:
                info[f"{package}_version"] = None
    except ImportError:  # pragma: no cover
        pass
    return info
