"""README.rst's "Configuring a handler" example, run as written by the real command line tool.

The README's ``sqlite_sink.py`` and ``worker.yaml`` blocks are saved into a directory and the
worker is started there with ``python -P -m replication`` (``-P``: the current directory is
not put on ``sys.path`` by Python, as with the installed ``replication`` script), so the
module is found only through the default ``handler_path``, and the database is opened from
``handler_options``. The command line's handler errors (a missing ``--path`` directory,
options the factory refuses) are checked the same way.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from processes import (
    HOST,
    Process,
    child_env,
    free_ports,
    publish,
    start_master,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.rst"


def literal_block(first_line: str) -> str:
    """The README literal block (after a line ending in ``::``) whose first line is
    ``first_line``, dedented."""
    lines = README.read_text().split("\n")
    for index, line in enumerate(lines[:-2]):
        if line.endswith("::") and lines[index + 2].strip() == first_line:
            block: list[str] = []
            for text in lines[index + 2 :]:
                if text and not text.startswith(" "):
                    break
                block.append(text)
            return textwrap.dedent("\n".join(block)).strip() + "\n"
    raise AssertionError(f"README.rst has no literal block starting {first_line!r}")


def worker_command(*args: str) -> list[str]:
    """``replication worker ARGS`` without the current directory on Python's path."""
    return [sys.executable, "-P", "-m", "replication", "worker", *args]


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory holding the README's ``sqlite_sink.py`` and ``worker.yaml``; children
    import this checkout's ``replication`` through PYTHONPATH, and nothing else."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    directory = tmp_path / "app"
    directory.mkdir()
    (directory / "sqlite_sink.py").write_text(literal_block("# sqlite_sink.py"))
    (directory / "worker.yaml").write_text(literal_block("# worker.yaml"))
    return directory


def stored_rows(database: Path) -> list[tuple[str, int, int, object]]:
    """The rows the README's handler wrote, in order; none while the table is missing."""
    if not database.exists():
        return []
    with sqlite3.connect(database) as db:
        try:
            found = db.execute("SELECT stream, token, i, row FROM rows ORDER BY token, i")
            return [(s, t, i, json.loads(r)) for s, t, i, r in found.fetchall()]
        except sqlite3.OperationalError:
            return []


def test_the_readme_sqlite_handler_stores_every_row(app: Path, tmp_path: Path) -> None:
    """The worker, started in the example's directory with the example's config, imports
    ``sqlite_sink`` from there, opens ``archive.sqlite3`` given by ``handler_options``, and
    writes each published row with its stream, token and place in the token."""
    port, http_port = free_ports(2)
    with start_master(tmp_path, "master", port, http_port):
        worker = Process(
            "worker",
            worker_command(
                "--config", "worker.yaml",
                "--master", f"tcp:host={HOST}:port={port}",
                "--position-file", str(tmp_path / "archive.positions"),
            ),
            stdout=tmp_path / "worker.out",
            stderr=tmp_path / "worker.err",
            cwd=app,
        )
        with worker:
            assert publish(http_port, "events", [{"id": 1}, {"id": 2}]) == 1
            assert publish(http_port, "events", ["three"]) == 2
            expected = [
                ("events", 1, 0, {"id": 1}), ("events", 1, 1, {"id": 2}),
                ("events", 2, 0, "three"),
            ]
            database = app / "archive.sqlite3"
            wait_until(
                lambda: stored_rows(database) == expected, 20, "the rows in archive.sqlite3",
                alive=[worker],
            )
            assert worker.terminate() == 0


def run_worker(app: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a worker that fails at start (before connecting) and return its result."""
    return subprocess.run(
        worker_command("--config", "worker.yaml", *args),
        cwd=app, env=child_env(), capture_output=True, text=True, timeout=60, check=False,
    )


def test_without_the_current_directory_the_handler_module_is_not_found(app: Path) -> None:
    """The control: with ``handler_path: []`` the same worker cannot import ``sqlite_sink``,
    so it is the default ``handler_path`` that made the module importable."""
    config = app / "worker.yaml"
    config.write_text(config.read_text() + "handler_path: []\n")
    result = run_worker(app)
    assert result.returncode == 2
    assert "replication: error: handler 'sqlite_sink:SqliteSink': cannot import sqlite_sink" in (
        result.stderr
    )


def test_the_path_flag_finds_a_module_in_another_directory(app: Path) -> None:
    """``--path lib`` (relative to the current directory) is searched; a module there is
    found even with the file's ``handler_path`` empty."""
    (app / "lib").mkdir()
    (app / "sqlite_sink.py").rename(app / "lib" / "sqlite_sink.py")
    config = app / "worker.yaml"
    text = config.read_text().replace("  path: archive.sqlite3", "  path: 3")
    config.write_text(text + "handler_path: []\n")
    result = run_worker(app, "--path", "lib")
    # The module is imported from lib/ and SqliteSink(path=3) is called, which sqlite3
    # refuses: the message proves the import worked and names the options.
    assert result.returncode == 2
    assert (
        "replication: error: handler 'sqlite_sink:SqliteSink' failed with handler_options "
        "{path: 3}: TypeError:" in result.stderr
    ), result.stderr


def test_a_missing_path_directory_stops_the_worker_naming_it(app: Path) -> None:
    """``--path missing`` is item 1 of handler_path (after the default ``.``): the worker
    stops at start with exit status 2 and says which directory, resolved."""
    result = run_worker(app, "--path", "missing")
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        f"replication: error: handler_path[1]: directory 'missing' ({app / 'missing'}) "
        "does not exist"
    ), result.stderr


def test_options_the_factory_does_not_take_stop_the_worker_naming_them(app: Path) -> None:
    """An option ``SqliteSink`` has no parameter for is refused at start, by name."""
    config = app / "worker.yaml"
    config.write_text(config.read_text().replace("  path: archive.sqlite3", "  file: x.db"))
    result = run_worker(app)
    assert result.returncode == 2
    assert (
        "replication: error: handler 'sqlite_sink:SqliteSink' does not accept handler_options "
        "{file: 'x.db'}: missing a required argument: 'path'" in result.stderr
    ), result.stderr
