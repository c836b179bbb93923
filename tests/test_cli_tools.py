"""The tools of the command line, run against real master and worker processes:
``replication streams`` (and ``streams delete``), ``replication tail`` and ``replication
positions``."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from processes import (
    HOST,
    Process,
    free_ports,
    publish,
    read_json_lines,
    replication_command,
    start_master,
    wait_until,
    worker_command,
)
from replication.cli import main
from replication.worker.positions import PositionFile


def run_tool(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``replication ARGS`` to its end; its exit status and output."""
    return subprocess.run(
        replication_command(*args), capture_output=True, text=True, timeout=timeout, check=False
    )


def tokens_printed(path: Path) -> list[tuple[int, list[object]]]:
    lines, _ = read_json_lines(path)
    return [(line["token"], line["rows"]) for line in lines]


def test_streams_lists_and_deletes_on_a_real_master(tmp_path: Path) -> None:
    """`replication streams` lists each stream with head, oldest, rows, retention and
    creation time; `streams delete NAME` is refused without --yes (nothing deleted), and
    with it deletes the stream; a configured stream is created anew, empty; an unknown
    stream is refused with the master's message."""
    port, http_port = free_ports(2)
    url = f"http://{HOST}:{http_port}"
    with start_master(tmp_path, "master", port, http_port, "--stream", "configured"):
        publish(http_port, "events", [1, 2])
        publish(http_port, "events", [3])
        listed = run_tool("streams", "--url", url)
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert lines[0].split() == [
            "STREAM",
            "HEAD",
            "OLDEST",
            "ROWS",
            "RETENTION",
            "CREATED",
            "(UTC)",
        ]
        assert lines[1].split()[:6] == ["configured", "0", "1", "0", "1000000", "rows"]
        assert lines[2].split()[:6] == ["events", "2", "1", "3", "1000000", "rows"]
        details = json.loads(run_tool("streams", "--url", url, "--json").stdout)
        assert [d["name"] for d in details] == ["configured", "events"]
        assert all(isinstance(d["created"], float) for d in details)

        refused = run_tool("streams", "delete", "events", "--url", url)
        assert refused.returncode == 2
        assert "add --yes to confirm" in refused.stderr
        assert [
            d["name"] for d in json.loads(run_tool("streams", "--url", url, "--json").stdout)
        ] == [
            "configured",
            "events",
        ]

        done = run_tool("streams", "--url", url, "delete", "events", "--yes")
        assert (done.returncode, done.stdout) == (0, "deleted stream events\n")
        done = run_tool("streams", "delete", "configured", "--yes", "--url", url)
        assert (done.returncode, done.stdout) == (
            0, "deleted stream configured (configured: created anew, empty)\n"
        )
        details = json.loads(run_tool("streams", "--url", url, "--json").stdout)
        assert [(d["name"], d["head"]) for d in details] == [("configured", 0)]
        again = run_tool("streams", "delete", "events", "--yes", "--url", url)
        assert again.returncode == 2
        assert "refused (404): unknown stream 'events'" in again.stderr
        assert publish(http_port, "events", ["new"]) == 1


def test_streams_reports_an_unreachable_master(capsys: pytest.CaptureFixture[str]) -> None:
    """An unreachable master is exit status 2 with a message naming it."""
    (port,) = free_ports(1)
    assert main(["streams", "--url", f"http://{HOST}:{port}", "--timeout", "2"]) == 2
    assert "cannot reach the master" in capsys.readouterr().err


def test_tail_follows_a_stream_through_a_deletion_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """`replication tail events --from 1` prints tokens 2.. as JSON lines, then live ones;
    after the stream is deleted it prints the new stream's token 1 (it was sent RESET);
    SIGINT (Ctrl-C) ends it with status 0."""
    port, http_port = free_ports(2)
    out = tmp_path / "tail.out"
    with start_master(tmp_path, "master", port, http_port):
        for rows in ([1], [2, 3], [4]):
            publish(http_port, "events", rows)
        with Process(
            "tail",
            replication_command("tail", "events", "--from", "1",
                                "--master", f"tcp:host={HOST}:port={port}"),
            stdout=out, stderr=tmp_path / "tail.err",
        ).start() as tail:
            wait_until(lambda: len(tokens_printed(out)) == 2, 15, "catch-up lines", alive=[tail])
            publish(http_port, "events", [5])
            wait_until(lambda: len(tokens_printed(out)) == 3, 15, "a live line", alive=[tail])
            assert main(["streams", "delete", "events", "--yes",
                         "--url", f"http://{HOST}:{http_port}"]) == 0
            publish(http_port, "events", ["new"])
            wait_until(lambda: len(tokens_printed(out)) == 4, 15, "the new token", alive=[tail])
            assert tail.popen is not None
            tail.popen.send_signal(signal.SIGINT)
            assert tail.wait_for_exit(15) == 0
    assert tokens_printed(out) == [(2, [2, 3]), (3, [4]), (4, [5]), (1, ["new"])]
    line = out.read_text().splitlines()[0]
    assert json.loads(line) == {"stream": "events", "token": 2, "rows": [2, 3]}
    assert "RESET" not in out.read_text()


def test_tail_from_now_stops_when_the_master_closes(tmp_path: Path) -> None:
    """Without --from, tail prints only tokens published after it subscribed; when the
    master goes away it says so and exits 0."""
    port, http_port = free_ports(2)
    out = tmp_path / "tail.out"
    err = tmp_path / "tail.err"
    with start_master(tmp_path, "master", port, http_port) as master:
        publish(http_port, "events", ["old"])
        with Process(
            "tail",
            replication_command("tail", "events", "--master", f"tcp:host={HOST}:port={port}"),
            stdout=out, stderr=err,
        ).start() as tail:
            wait_until(
                lambda: "replication-tail" in json.dumps(
                    json.loads(run_tool("status", "--url", f"http://{HOST}:{http_port}",
                                        "--json").stdout)["connections"]),
                15, "the tail's connection", alive=[tail],
            )
            publish(http_port, "events", ["fresh"])
            wait_until(lambda: tokens_printed(out), 15, "a line", alive=[tail])
            master.terminate()
            assert tail.wait_for_exit(15) == 0
    assert tokens_printed(out) == [(2, ["fresh"])]
    assert "the connection to the master ended" in err.read_text()


def test_tail_reports_a_master_it_cannot_reach(tmp_path: Path) -> None:
    """No master listening: exit status 1 and a message naming the endpoint."""
    (port,) = free_ports(1)
    result = run_tool("tail", "events", "--master", f"tcp:host={HOST}:port={port}")
    assert result.returncode == 1
    assert f"cannot connect to the master at tcp:host={HOST}:port={port}" in result.stderr
    assert result.stdout == ""


def test_positions_shows_sets_and_is_refused_while_a_worker_holds_the_file(
    tmp_path: Path,
) -> None:
    """`replication positions FILE` shows a running worker's positions and that it is in
    use; --set is refused while the worker holds the file (nothing changed); with the worker
    stopped, --set rewinds the stream and the worker, started again, handles the tokens
    after the new position."""
    port, http_port = free_ports(2)
    positions = tmp_path / "w.positions"
    handled = tmp_path / "handled.jsonl"
    handler = tmp_path / "record.py"
    handler.write_text(
        "import json\n"
        f"PATH = {str(handled)!r}\n"
        "def handle(stream, token, rows):\n"
        "    with open(PATH, 'a') as f:\n"
        "        f.write(json.dumps({'token': token}) + '\\n')\n"
    )
    command = worker_command(port, "w1", positions, "--handler", "record:handle",
                             "--path", str(tmp_path))
    with start_master(tmp_path, "master", port, http_port):
        for i in range(5):
            publish(http_port, "events", [i])
        with Process("worker", command, stdout=tmp_path / "w.out",
                     stderr=tmp_path / "w.err", cwd=tmp_path).start() as worker:
            wait_until(lambda: len(read_json_lines(handled)[0]) == 5, 15, "5 tokens",
                       alive=[worker])
            shown = run_tool("positions", str(positions))
            assert shown.returncode == 0, shown.stderr
            assert f"in use by a worker (pid {worker.pid})" in shown.stdout
            assert shown.stdout.splitlines()[-1].split() == ["events", "5", "-"]
            refused = run_tool("positions", str(positions), "--set", "events=2")
            assert refused.returncode == 2
            assert f"in use by a running worker (pid {worker.pid})" in refused.stderr
            assert "stop the worker" in refused.stderr
            assert worker.terminate() == 0
        document = json.loads(run_tool("positions", str(positions), "--json").stdout)
        assert (document["positions"], document["in_use_by_pid"]) == ({"events": 5}, None)
        rewound = run_tool("positions", str(positions), "--set", "events=2")
        assert (rewound.returncode, rewound.stdout) == (0, "events: 5 -> 2\n")
        with Process("worker", command, stdout=tmp_path / "w.out",
                     stderr=tmp_path / "w.err", cwd=tmp_path).start() as worker:
            wait_until(lambda: len(read_json_lines(handled)[0]) == 8, 15, "3 more tokens",
                       alive=[worker])
    assert [line["token"] for line in read_json_lines(handled)[0]] == [1, 2, 3, 4, 5, 3, 4, 5]


def test_positions_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing file, a malformed --set and a file that is not a position file are exit
    status 2 with a message; none of them creates or changes a file."""
    missing = tmp_path / "missing.positions"
    assert main(["positions", str(missing)]) == 2
    assert f"no position file at {missing}" in capsys.readouterr().err
    assert not missing.exists()
    file = tmp_path / "p.positions"
    PositionFile(str(file)).close()
    for bad in ("events", "events=-1", "events=x", "bad name=3"):
        assert main(["positions", str(file), "--set", bad]) == 2
        assert f"--set {bad!r}" in capsys.readouterr().err
    other = tmp_path / "other.txt"
    other.write_text("hello\n")
    assert main(["positions", str(other)]) == 2
    assert "is not a position file" in capsys.readouterr().err
    assert other.read_text() == "hello\n"
    assert main(["positions", str(file), "--set", "events=0"]) == 0
    assert main(["positions", str(file)]) == 0
    out = capsys.readouterr().out
    assert "not in use" in out and out.splitlines()[-1].split() == ["events", "0", "-"]
