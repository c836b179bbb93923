"""Helpers for end-to-end tests that run the real ``replication`` tool in child processes.

Everything here is bounded in time and cleans up after itself: a :class:`Process` is a context
manager that kills its child on exit (also when the test failed) and, when the block raised,
prints the tail of the child's stderr so the failure report shows what the process said.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")

HOST = "127.0.0.1"
#: Ports the machine reserves for other services; never hand them out.
FORBIDDEN_PORTS = frozenset({6379, 4222, 5432, 3306, 5672, 1883})


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read, close)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in FORBIDDEN_PORTS:
            return int(port)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (held open together so that they differ)."""
    sockets = []
    try:
        ports: list[int] = []
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind((HOST, 0))
            port = s.getsockname()[1]
            if port not in FORBIDDEN_PORTS:
                ports.append(port)
        return ports
    finally:
        for s in sockets:
            s.close()


def wait_until(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    alive: Sequence[Process] = (),
) -> T:
    """Call ``probe`` until it returns something truthy, and return that; fail with
    ``what`` after ``timeout`` seconds, or as soon as one of ``alive`` has exited."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        for process in alive:
            code = process.poll()
            if code is not None:
                raise AssertionError(
                    f"{process.name} exited with status {code} while waiting for {what}\n"
                    f"{process.describe_output()}"
                )
        if time.monotonic() >= deadline:
            details = "".join(f"\n{p.describe_output()}" for p in alive)
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{details}")
        time.sleep(interval)


def replication_command(*args: str) -> list[str]:
    """The command line of the tool: ``python -m replication ARGS``."""
    return [sys.executable, "-m", "replication", *args]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONSTARTUP", None)
    return env


class Process:
    """One child process with its stdout and stderr in files.

    ``stdout`` is opened in append mode, so a process restarted with the same path adds to
    the same file. Use as a context manager: the child is started on entry and killed
    (SIGKILL, then reaped) on exit; if the block raised, the tail of stderr is printed.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        *,
        stdout: Path,
        stderr: Path,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.stdout_path = Path(stdout)
        self.stderr_path = Path(stderr)
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None

    # -- lifetime ----------------------------------------------------------------------

    def start(self) -> Process:
        assert self.popen is None, f"{self.name} already started"
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.popen = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.cwd,
                env=child_env(),
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def poll(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def kill(self) -> int | None:
        """SIGKILL the child (if it runs) and reap it; its exit status."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            return self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a SIGKILLed child is reaped fast
            return None

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the child and wait for it; SIGKILL it if it does not exit in time."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(
                    f"{self.name} did not exit within {timeout:.0f}s of SIGTERM\n"
                    f"{self.describe_output()}"
                ) from None
        return self.popen.returncode

    def __enter__(self) -> Process:
        if self.popen is None:
            self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.kill()
        if error is not None:
            print(self.describe_output(), file=sys.stderr)

    # -- output ------------------------------------------------------------------------

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def describe_output(self, tail: int = 6000) -> str:
        text = self.stderr_text()
        if len(text) > tail:
            text = "..." + text[-tail:]
        status = self.poll()
        state = "running" if self.popen is not None and status is None else f"exit status {status}"
        return (
            f"--- {self.name} ({state}) stderr ({self.stderr_path}) ---\n"
            f"{text}--- end {self.name} ---"
        )

    def wait_for_exit(self, timeout: float) -> int:
        assert self.popen is not None
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name} did not exit within {timeout:.0f}s\n{self.describe_output()}"
            ) from None


def read_json_lines(path: Path) -> tuple[list[dict[str, Any]], str]:
    """The complete JSON lines of ``path`` and the trailing partial line (``""`` if none)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], ""
    *complete, partial = data.split(b"\n")
    return [json.loads(line) for line in complete if line.strip()], partial.decode(errors="replace")


def read_positions(path: Path) -> dict[str, int] | None:
    """The positions recorded in a worker's position file, or ``None`` if there is none.

    Reads the file without the product's code (which may create or rewrite it), in either
    format: the journal (``# replication positions v1`` or ``v2`` then ``<stream> <token>``
    lines, the last line of a stream wins, a line cut short at the end is ignored; v2 is
    padded with NUL bytes, where the journal ends) or the older JSON ``{"positions": {...}}``.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    if raw.lstrip().startswith(b"{"):
        try:
            positions = json.loads(raw).get("positions")
        except ValueError:
            return None
        return positions if isinstance(positions, dict) else None
    end = raw.find(b"\0")
    if end >= 0:
        raw = raw[:end]
    *lines, _torn = raw.split(b"\n")
    if not lines or not lines[0].startswith(b"#"):
        return None
    positions = {}
    for line in lines[1:]:
        parts = line.split(b" ")
        if len(parts) == 2 and parts[1].isdigit():
            positions[parts[0].decode(errors="replace")] = int(parts[1])
    return positions


# -- HTTP ----------------------------------------------------------------------------------


def http_request(
    port: int, method: str, path: str, body: Any = None, timeout: float = 10.0
) -> tuple[int, Any]:
    """One HTTP request to 127.0.0.1:``port``; ``(status, decoded JSON body or text)``."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {}
        payload = None
        if body is not None:
            payload = json.dumps(body, separators=(",", ":")).encode()
            headers["content-type"] = "application/json"
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw.decode(errors="replace")
    finally:
        connection.close()


def metric_value(http_port: int, sample: str) -> float | None:
    """The value of one sample (``name{labels}``) of ``GET /metrics``, or None if absent."""
    _, text = http_request(http_port, "GET", "/metrics", timeout=5)
    for line in str(text).splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def health_ok(port: int) -> bool:
    try:
        status, _ = http_request(port, "GET", "/health", timeout=1.0)
    except OSError:
        return False
    return status == 200


def publish(port: int, stream: str, rows: list[Any], timeout: float = 10.0) -> int:
    """Publish ``rows`` as one token over HTTP and return the token; fail on any refusal."""
    status, answer = http_request(port, "POST", f"/streams/{stream}", {"rows": rows}, timeout)
    assert status == 200, f"publish to {stream} answered {status}: {answer!r}"
    assert isinstance(answer, dict) and answer.get("stream") == stream, answer
    token = answer["token"]
    assert isinstance(token, int), answer
    return token


def start_master(
    tmp: Path, name: str, port: int, http_port: int, *extra: str, timeout: float = 15.0
) -> Process:
    """Start ``replication master`` on the given ports with the memory store and wait until
    ``GET /health`` answers 200. The caller must kill it (use it as a context manager)."""
    process = Process(
        name,
        replication_command(
            "master",
            "--listen", f"tcp:{port}:interface={HOST}",
            "--http-listen", f"tcp:{http_port}:interface={HOST}",
            "--store", "memory",
            *extra,
        ),
        stdout=tmp / f"{name}.out",
        stderr=tmp / f"{name}.err",
        cwd=tmp,
    ).start()
    try:
        wait_until(lambda: health_ok(http_port), timeout, f"{name} /health", alive=[process])
    except BaseException:
        process.kill()
        print(process.describe_output(), file=sys.stderr)
        raise
    return process


def worker_command(port: int, name: str, position_file: Path, *extra: str) -> list[str]:
    return replication_command(
        "worker",
        "--master", f"tcp:host={HOST}:port={port}",
        "--stream", "events",
        "--name", name,
        "--position-file", str(position_file),
        *extra,
    )


# -- durable masters (SQLite store) ---------------------------------------------------------


def start_sqlite_master(
    tmp: Path, name: str, port: int, http_port: int, data_dir: Path, *extra: str,
    timeout: float = 15.0,
) -> Process:
    """Start ``replication master`` with the SQLite store in ``data_dir`` (the database is
    ``data_dir/streams.sqlite3``) and wait until ``GET /health`` answers 200. Restarting it
    with the same ``data_dir`` reopens the same store. The caller must kill it."""
    return start_master(
        tmp, name, port, http_port, "--store", "sqlite", "--data-dir", str(data_dir), *extra,
        timeout=timeout,
    )


def write_worker_config(path: Path, name: str, port: int, *, initial_delay: float = 0.1,
                        max_delay: float = 0.5) -> Path:
    """A worker YAML config that reconnects quickly (for tests that restart the master);
    give the streams and position file on the command line (:func:`worker_command`)."""
    path.write_text(
        f"name: {name}\n"
        f"master: tcp:host={HOST}:port={port}\n"
        f"reconnect: {{initial_delay: {initial_delay}, max_delay: {max_delay}}}\n"
    )
    return path


def stream_head(http_port: int, stream: str, timeout: float = 5.0) -> int:
    """The master's head of ``stream`` (``GET /streams/<stream>``); fails unless 200."""
    status, answer = http_request(http_port, "GET", f"/streams/{stream}", timeout=timeout)
    assert status == 200 and isinstance(answer, dict), (status, answer)
    return int(answer["head"])
