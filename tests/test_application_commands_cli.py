"""docs/protocol.rst's "Application commands from the command line" example, run as written by
the real command line tool.

The ``ack.py`` block and the two YAML documents of the ``master.yaml`` / ``worker.yaml`` block
are saved into a directory; a master and a worker process are started there with ``-c``
(``python -P``: the directory is found only through the default ``commands_path`` and
``handler_path``). After a publish, the worker handles the token and sends ``ACK``, and the
master's handler logs it; without the module, the master refuses the ``ACK``.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from processes import (
    HOST,
    Process,
    free_ports,
    health_ok,
    publish,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "docs" / "protocol.rst"


def code_block(first_line: str) -> str:
    """The docs/protocol.rst code block whose first line is ``first_line``, dedented."""
    lines = PROTOCOL.read_text().split("\n")
    for index, line in enumerate(lines[:-2]):
        if line.startswith(".. code-block::") and lines[index + 2].strip() == first_line:
            block: list[str] = []
            for text in lines[index + 2:]:
                if text and not text.startswith(" "):
                    break
                block.append(text)
            return textwrap.dedent("\n".join(block)).strip() + "\n"
    raise AssertionError(f"docs/protocol.rst has no code block starting {first_line!r}")


def command(*args: str) -> list[str]:
    return [sys.executable, "-P", "-m", "replication", *args]


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The docs' ``ack.py``, ``master.yaml`` and ``worker.yaml`` in one directory."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    (tmp_path / "ack.py").write_text(
        code_block('"""ack.py: workers acknowledge each token they applied; the master logs it."""')
    )
    configs = code_block("# master.yaml").split("# worker.yaml\n")
    (tmp_path / "master.yaml").write_text(configs[0])
    (tmp_path / "worker.yaml").write_text(configs[1])
    return tmp_path


def start_master(app: Path, port: int, http_port: int, *extra: str) -> Process:
    process = Process(
        "master",
        command(
            "master", *extra, "--listen", f"tcp:{port}:interface={HOST}",
            "--http-listen", f"tcp:{http_port}:interface={HOST}", "--store", "memory",
        ),
        stdout=app / "master.out", stderr=app / "master.err", cwd=app,
    ).start()
    wait_until(lambda: health_ok(http_port), 15, "master /health", alive=[process])
    return process


def start_worker(app: Path, port: int) -> Process:
    return Process(
        "worker",
        command(
            "worker", "-c", "worker.yaml", "--master", f"tcp:host={HOST}:port={port}",
            "--position-file", str(app / "worker.positions"),
        ),
        stdout=app / "worker.out", stderr=app / "worker.err", cwd=app,
    ).start()


def test_the_worker_acks_a_token_and_the_master_logs_it(app: Path) -> None:
    """Both processes load ``ack:acks.register`` and say so; the worker handles token 1 of
    ``events`` (printing it), sends ACK, and the master logs ``worker-1 applied events 1``;
    nobody is refused."""
    port, http_port = free_ports(2)
    with start_master(app, port, http_port, "-c", "master.yaml") as master, \
            start_worker(app, port) as worker:
        publish(http_port, "events", [{"n": 1}])
        wait_until(
            lambda: "worker-1 applied events 1" in master.stderr_text(), 20,
            "the master's ACK log line", alive=[master, worker],
        )
        assert "events 1 [{'n': 1}]" in (app / "worker.out").read_text()
        for process in (master, worker):
            assert "application commands from ack:acks.register: ACK" in process.stderr_text()
        assert "ERROR" not in master.stderr_text() + worker.stderr_text()


def test_a_master_without_the_module_refuses_the_ack(app: Path) -> None:
    """A master started without ``commands`` answers the worker's first ACK with
    ``ERROR unknown command 'ACK'`` and closes the connection."""
    port, http_port = free_ports(2)
    with start_master(app, port, http_port) as master, start_worker(app, port) as worker:
        publish(http_port, "events", [{"n": 1}])
        wait_until(
            lambda: "master master sent ERROR unknown command 'ACK'" in worker.stderr_text(), 20,
            "the worker's log of the refusal", alive=[master, worker],
        )
