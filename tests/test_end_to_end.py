"""End-to-end tests: a real master, real workers and the command line tool in child processes.

Every process is started as ``python -m replication ...``, listens on 127.0.0.1 only, is
killed when its test ends (also when it fails), and every wait has a deadline.
"""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import pytest

# tests/ is not a package, so pytest puts tests/ itself on sys.path.
from processes import (
    Process,
    free_ports,
    http_request,
    publish,
    read_json_lines,
    read_positions,
    replication_command,
    start_master,
    wait_until,
    worker_command,
)

STREAM = "events"
TOKENS = 100
ROWS_PER_TOKEN = 100
KILL_AFTER_TOKENS = 50  # SIGKILL w1 after 5,000 rows
RESTART_AFTER_TOKENS = 65  # publish a bit more while w1 is dead, then restart it


def _tokens(lines: list[dict[str, Any]]) -> list[int]:
    return [line["token"] for line in lines]


def _check_token_lines(who: str, lines: list[dict[str, Any]]) -> None:
    """``lines`` are exactly tokens 1..TOKENS, in order, each with its complete rows."""
    for line in lines:
        assert line.get("stream") == STREAM and "token" in line, f"{who}: unexpected line {line!r}"
    tokens = _tokens(lines)
    assert tokens == list(range(1, TOKENS + 1)), f"{who}: tokens are {_summarise(tokens)}"
    for line in lines:
        token = line["token"]
        expected = [{"seq": s} for s in range((token - 1) * ROWS_PER_TOKEN, token * ROWS_PER_TOKEN)]
        assert line["rows"] == expected, f"{who}: token {token} has the wrong rows"
    sequence = [row["seq"] for line in lines for row in line["rows"]]
    assert sequence == list(range(TOKENS * ROWS_PER_TOKEN)), f"{who}: rows out of order or missing"


def _summarise(tokens: list[int]) -> str:
    """A short description of a token list: its runs, e.g. ``1..49, 49..100``."""
    if not tokens:
        return "[]"
    runs = []
    start = previous = tokens[0]
    for token in tokens[1:]:
        if token != previous + 1:
            runs.append(f"{start}..{previous}" if start != previous else str(start))
            start = token
        previous = token
    runs.append(f"{start}..{previous}" if start != previous else str(start))
    return ", ".join(runs)


def _output_reaches(path: Path, token: int) -> bool:
    lines, _ = read_json_lines(path)
    return any(line.get("token") == token for line in lines)


def _position_is(path: Path, token: int) -> bool:
    positions = read_positions(path)
    return positions is not None and positions.get(STREAM) == token


@pytest.mark.timeout(90)
def test_two_workers_follow_10000_rows_across_a_worker_kill(tmp_path: Path) -> None:
    port, http_port = free_ports(2)
    started = time.monotonic()
    with ExitStack() as stack:
        master = stack.enter_context(start_master(tmp_path, "master", port, http_port))

        def worker(name: str) -> Process:
            return Process(
                name,
                worker_command(port, name, tmp_path / f"{name}.json"),
                stdout=tmp_path / f"{name}.out",
                stderr=tmp_path / f"{name}.err",
                cwd=tmp_path,
            )

        w1 = stack.enter_context(worker("w1"))
        w2 = stack.enter_context(worker("w2"))
        everyone = [master, w1, w2]
        # A worker that connected and subscribed records the master's head (0) at once.
        for w in (w1, w2):
            wait_until(
                partial(_position_is, tmp_path / f"{w.name}.json", 0),
                15, f"{w.name} to subscribe", alive=everyone,
            )

        def publish_tokens(first: int, last: int) -> None:
            for token in range(first, last + 1):
                rows = [
                    {"seq": s} for s in range((token - 1) * ROWS_PER_TOKEN, token * ROWS_PER_TOKEN)
                ]
                assert publish(http_port, STREAM, rows) == token

        publish_tokens(1, KILL_AFTER_TOKENS)
        w1.kill()
        killed_at = read_positions(tmp_path / "w1.json")
        before_kill, torn = read_json_lines(tmp_path / "w1.out")
        assert torn == "", f"w1 was killed in the middle of writing a line: {torn!r}"

        publish_tokens(KILL_AFTER_TOKENS + 1, RESTART_AFTER_TOKENS)
        w1 = stack.enter_context(worker("w1"))  # same position file, same (appended) stdout
        everyone = [master, w1, w2]
        publish_tokens(RESTART_AFTER_TOKENS + 1, TOKENS)
        published = time.monotonic()

        for w in (w1, w2):
            wait_until(
                partial(_output_reaches, tmp_path / f"{w.name}.out", TOKENS),
                60, f"{w.name} to print token {TOKENS}", alive=everyone,
            )
            wait_until(
                partial(_position_is, tmp_path / f"{w.name}.json", TOKENS),
                10, f"{w.name} to record position {TOKENS}", alive=everyone,
            )
        caught_up = time.monotonic()

        w2_lines, torn = read_json_lines(tmp_path / "w2.out")
        assert torn == ""
        _check_token_lines("w2", w2_lines)

        w1_lines, torn = read_json_lines(tmp_path / "w1.out")
        assert torn == ""
        after_restart = w1_lines[len(before_kill):]
        assert w1_lines[: len(before_kill)] == before_kill
        assert killed_at is not None, "w1 recorded no position before it was killed"
        recorded = killed_at[STREAM]
        last_before = before_kill[-1]["token"] if before_kill else 0
        # The position is recorded after the handler: at the kill, the last printed token is
        # the recorded one, or the one after it (handled, not yet recorded).
        assert last_before in (recorded, recorded + 1), (
            f"w1 printed up to {last_before} but recorded {recorded} when it was killed"
        )
        assert after_restart, "w1 printed nothing after its restart"
        assert after_restart[0]["token"] == recorded + 1, (
            f"w1 resumed at token {after_restart[0]['token']}, its position file said {recorded}"
        )
        tokens = _tokens(w1_lines)
        duplicates = sorted({t for t in tokens if tokens.count(t) > 1})
        if duplicates:
            assert duplicates == [last_before] and last_before == recorded + 1, (
                f"w1 handled {duplicates} twice; only the token being handled at the kill "
                f"({recorded + 1}) may repeat; tokens: {_summarise(tokens)}"
            )
            assert after_restart[0] == before_kill[-1], "the repeated token has different rows"
            w1_lines = before_kill[:-1] + after_restart
        _check_token_lines("w1", w1_lines)

        print(
            f"w1 killed after printing token {last_before} (recorded {recorded}); "
            f"repeated tokens: {duplicates or 'none'}; "
            f"publishing took {published - started:.1f}s, "
            f"catch-up after the last publish {caught_up - published:.1f}s"
        )
        for p in (master, w1, w2):
            assert p.poll() is None, f"{p.name} exited early\n{p.describe_output()}"


@pytest.mark.timeout(60)
def test_publish_and_check_config_commands(tmp_path: Path) -> None:
    port, http_port, closed_port, other_closed = free_ports(4)
    url = f"http://127.0.0.1:{http_port}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            replication_command(*args), capture_output=True, text=True, timeout=30, cwd=tmp_path,
        )

    with start_master(tmp_path, "master", port, http_port):
        done = run("publish", STREAM, '{"a":1}', "--url", url)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "1", done.stdout
        done = run("publish", STREAM, '{"b":2}', "[3]", "--url", url)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "2", done.stdout
        assert http_request(http_port, "GET", f"/streams/{STREAM}") == (
            200, {"stream": STREAM, "head": 2},
        )

        done = run("publish", STREAM, "not json", "--url", url)
        assert done.returncode != 0
        assert done.stdout == ""
        assert "not valid JSON" in done.stderr and "not json" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        # Nothing was published by the refused command.
        assert http_request(http_port, "GET", f"/streams/{STREAM}")[1]["head"] == 2

        # Several masters: an unreachable one is passed over (in whichever order they are
        # tried), the publish lands once, and --json names the origin with the token.
        done = run("publish", STREAM, '{"c":4}', "--url", f"http://127.0.0.1:{closed_port}",
                   "--url", url, "--json")
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["stream"] == STREAM and answer["token"] == 3
        assert isinstance(answer["origin"], str) and len(answer["origin"]) >= 16
        assert http_request(http_port, "GET", f"/streams/{STREAM}")[1]["head"] == 3

    done = run("publish", STREAM, '{"a":1}', "--url", f"http://127.0.0.1:{closed_port}",
               "--timeout", "5")
    assert done.returncode != 0
    assert "cannot reach the master" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    done = run("publish", STREAM, '{"a":1}', "--url", f"http://127.0.0.1:{closed_port}",
               "--url", f"http://127.0.0.1:{other_closed}", "--timeout", "5")
    assert done.returncode != 0
    assert "no master took the publish" in done.stderr, done.stderr

    bad = tmp_path / "worker.yaml"
    bad.write_text(
        "name: w1\n"
        "master: tcp:host=127.0.0.1:port=9\n"
        "reconnect:\n"
        "  initial_delay: 0.1\n"
        "  max_dealy: 0.5\n"
    )
    done = run("check-config", str(bad))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "reconnect.max_dealy" in done.stderr, done.stderr
    assert f"{bad}:5" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr

    good = tmp_path / "good.yaml"
    good.write_text("name: w1\nreconnect: {initial_delay: 0.1, max_delay: 0.5}\n")
    done = run("check-config", str(good))
    assert done.returncode == 0, done.stderr
    assert "valid worker configuration" in done.stdout


@pytest.mark.timeout(60)
def test_a_memory_master_restarted_is_a_new_origin_to_its_worker(tmp_path: Path) -> None:
    port, http_port = free_ports(2)
    config = tmp_path / "worker.yaml"
    positions = tmp_path / "w.json"
    config.write_text(
        "name: w\n"
        f"master: tcp:host=127.0.0.1:port={port}\n"
        "streams: [events]\n"
        f"position_file: {positions}\n"
        "reconnect: {initial_delay: 0.1, max_delay: 0.5}\n"
    )
    out = tmp_path / "w.out"
    before = 5
    with ExitStack() as stack:
        master = stack.enter_context(start_master(tmp_path, "master1", port, http_port))
        worker = stack.enter_context(
            Process(
                "worker",
                replication_command("worker", "--config", str(config)),
                stdout=out, stderr=tmp_path / "w.err", cwd=tmp_path,
            )
        )
        wait_until(lambda: _position_is(positions, 0), 15, "the worker to subscribe",
                   alive=[master, worker])
        for i in range(before):
            assert publish(http_port, STREAM, [{"old": i}]) == i + 1
        wait_until(lambda: _position_is(positions, before), 15, f"the worker at token {before}",
                   alive=[master, worker])

        old_origin = read_json_lines(out)[0][0]["origin"]
        master.terminate()
        master = stack.enter_context(start_master(tmp_path, "master2", port, http_port))
        restarted = time.monotonic()

        def reconnected_to_master2() -> bool:
            # The worker logs each master's origin as it connects: a second one is master2.
            return (tmp_path / "w.err").read_text().count(" is origin ") >= 2

        wait_until(reconnected_to_master2, 15, "the worker to reconnect to master2",
                   alive=[master, worker])
        reconnected = time.monotonic()
        # A master restarted on a new (memory) store is a new origin: its tokens start from
        # 1 again, and the worker takes them as that origin's, with no reset; it keeps its
        # positions of the old origin.
        answers = []
        for i in range(3):
            status, answer = http_request(http_port, "POST", f"/streams/{STREAM}",
                                          {"rows": [{"new": i}]})
            assert status == 200 and answer["token"] == i + 1, answer
            answers.append(answer)
        new_origin = answers[0]["origin"]
        assert new_origin != old_origin

        def new_tokens_seen() -> bool:
            lines, _ = read_json_lines(out)
            return sum(1 for line in lines if line.get("origin") == new_origin) == 3

        wait_until(new_tokens_seen, 15, "the worker at token 3 of master2",
                   alive=[master, worker])

        lines, torn = read_json_lines(out)
        assert torn == ""
        assert lines == [
            *({"stream": STREAM, "token": i + 1, "rows": [{"old": i}], "origin": old_origin}
              for i in range(before)),
            *({"stream": STREAM, "token": i + 1, "rows": [{"new": i}], "origin": new_origin}
              for i in range(3)),
        ], lines
        print(f"worker reconnected {reconnected - restarted:.2f}s after the master restarted")
        assert worker.poll() is None and master.poll() is None


@pytest.mark.timeout(60)
def test_a_worker_with_a_small_line_limit_gets_rows_lines_it_takes(tmp_path: Path) -> None:
    """A worker configured with ``limits.max_line_bytes: 1024`` against a master of the
    default 64 KiB: under protocol version 3 it sends ``LINE_LIMIT 1024`` and the master
    keeps its ``ROWS`` lines within it, so a catch-up of 300 tokens, one of them larger
    than 1 KiB (sent as RDATA lines), arrives whole, on one connection, without an
    ``ERROR``."""
    port, http_port = free_ports(2)
    config = tmp_path / "worker.yaml"
    config.write_text("limits: {max_line_bytes: 1024}\n")
    with ExitStack() as stack:
        master = stack.enter_context(start_master(tmp_path, "master", port, http_port))
        tokens = [[{"i": i, "pad": "x" * 40}] for i in range(300)]
        tokens[150] = [{"i": 150, "pad": "y" * 200} for _ in range(10)]  # over 1 KiB
        for first in range(0, 300, 100):
            status, answer = http_request(http_port, "POST", f"/streams/{STREAM}",
                                          {"tokens": tokens[first:first + 100]})
            assert status == 200, answer
        worker = stack.enter_context(Process(
            "w1",
            worker_command(port, "w1", tmp_path / "w1.json", "--config", str(config)),
            stdout=tmp_path / "w1.out", stderr=tmp_path / "w1.err", cwd=tmp_path,
        ))
        wait_until(partial(_output_reaches, tmp_path / "w1.out", 300), 30, "w1 to print 300",
                   alive=[master, worker])
        lines, torn = read_json_lines(tmp_path / "w1.out")
        assert torn == ""
        assert _tokens(lines) == list(range(1, 301))
        assert [line["rows"] for line in lines] == tokens
        errors = (tmp_path / "w1.err").read_text()
        assert "ERROR" not in errors and "line too long" not in errors, errors
        assert errors.count("connected to master") == 1, errors
