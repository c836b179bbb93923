"""A cluster of three real master processes on 127.0.0.1, each configured with all three
(itself included), durable on SQLite; publishers on all three at once; a worker on each
master and one worker listing all three. During the run a master is SIGKILLed and
restarted, another is SIGSTOPped for a while and continued, and the worker that lists all
three is SIGKILLed and restarted. At the end every worker holds every acknowledged
(origin, token) exactly once, in order per origin (the killed worker may repeat the token
it was handling), and every master holds every origin's rows.

The long run is marked ``slow`` (``pytest -m "not slow"`` skips it locally; CI runs it)."""

from __future__ import annotations

import http.client
import json
import random
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from processes import (
    HOST,
    Process,
    free_ports,
    health_ok,
    http_request,
    read_json_lines,
    replication_command,
    wait_until,
)

STREAM = "events"


class Master:
    """One master of the cluster: its ports, its SQLite directory, its process."""

    def __init__(self, tmp: Path, name: str, port: int, http_port: int,
                 peers: list[str]) -> None:
        self.tmp = tmp
        self.name = name
        self.port = port
        self.http_port = http_port
        self.directory = tmp / name
        self.config = tmp / f"{name}.yaml"
        peer_lines = "".join(f"    - {peer}\n" for peer in peers)
        self.config.write_text(
            f"server_name: {name}\n"
            f"listen: tcp:{port}:interface={HOST}\n"
            f"http:\n  listen: tcp:{http_port}:interface={HOST}\n"
            f"data_dir: {self.directory}\n"
            "store: {type: sqlite}\n"
            "cluster:\n"
            f"  peers:\n{peer_lines}"
            "  reconnect: {initial_delay: 0.2, max_delay: 1}\n"
            "  repair_after: 2s\n"
        )
        self.process: Process | None = None

    def start(self) -> None:
        self.process = Process(
            self.name, replication_command("master", "--config", str(self.config)),
            stdout=self.tmp / f"{self.name}.out", stderr=self.tmp / f"{self.name}.err",
            cwd=self.tmp,
        ).start()
        process = self.process
        wait_until(lambda: health_ok(self.http_port), 20, f"{self.name} /health",
                   alive=[process])

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process = None

    def status(self) -> dict[str, Any]:
        status, answer = http_request(self.http_port, "GET", "/status", timeout=10)
        assert status == 200 and isinstance(answer, dict), (status, answer)
        return answer

    def heads(self) -> dict[str, int]:
        """This master's head of ``events`` per origin id."""
        return {
            view["origin"]: view["head"]
            for view in self.status()["streams"] if view["name"] == STREAM
        }



class Worker:
    """One worker process printing each token as a JSON line."""

    def __init__(self, tmp: Path, name: str, masters: list[Master]) -> None:
        self.tmp = tmp
        self.name = name
        self.output = tmp / f"{name}.out"
        self.config = tmp / f"{name}.yaml"
        entries = "".join(f"  - tcp:host={HOST}:port={m.port}\n" for m in masters)
        self.config.write_text(
            f"name: {name}\n"
            f"master:\n{entries}"
            f"streams:\n  {STREAM}:\n"
            f"position_file: {tmp / (name + '.positions')}\n"
            "reconnect: {initial_delay: 0.1, max_delay: 0.5}\n"
        )
        self.process: Process | None = None

    def start(self) -> None:
        self.process = Process(
            self.name, replication_command("worker", "--config", str(self.config)),
            stdout=self.output, stderr=self.tmp / f"{self.name}.err", cwd=self.tmp,
        ).start()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process = None

    def tokens(self) -> list[tuple[str, int]]:
        """``(origin, token)`` of every token printed, in the order printed."""
        lines, _ = read_json_lines(self.output)
        return [(line["origin"], line["token"]) for line in lines if "token" in line]


class Publisher(threading.Thread):
    """Publishes batches of tokens (1 to 3 rows each) to one master over HTTP until it has
    ``rows`` acknowledged rows; records each acknowledged (origin, token)."""

    def __init__(self, master: Master, rows: int, seed: int) -> None:
        super().__init__(daemon=True)
        self.master = master
        self.rows = rows
        self.random = random.Random(seed)
        self.acknowledged: list[tuple[str, int]] = []
        self.acknowledged_rows = 0
        self.refused = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            sequence = 0
            deadline = time.monotonic() + 120
            while self.acknowledged_rows < self.rows and time.monotonic() < deadline:
                tokens = []
                for _ in range(10):
                    count = self.random.choice((1, 1, 2, 3))
                    name = self.master.name
                    tokens.append([{"m": name, "i": sequence + n} for n in range(count)])
                    sequence += count
                try:
                    status, answer = http_request(
                        self.master.http_port, "POST", f"/streams/{STREAM}",
                        {"tokens": tokens}, timeout=30,
                    )
                except (OSError, http.client.HTTPException):
                    # The master is down, or was killed in the middle of its answer (the
                    # publish may or may not be stored: it is not counted as acknowledged).
                    self.refused += 1
                    time.sleep(0.2)  # its publishers wait for it
                    continue
                if status != 200:
                    self.refused += 1
                    time.sleep(0.2)
                    continue
                origin = answer["origin"]
                for token, rows in zip(answer["tokens"], tokens, strict=True):
                    self.acknowledged.append((origin, token))
                    self.acknowledged_rows += len(rows)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


def check_exactly_once(name: str, seen: list[tuple[str, int]], acknowledged: set[tuple[str, int]],
                       repeats_allowed: int) -> None:
    """Every acknowledged (origin, token) in ``seen``; per origin, tokens in order; no
    repeat except up to ``repeats_allowed`` (the token in flight at a kill)."""
    missing = acknowledged - set(seen)
    assert not missing, f"{name} is missing {len(missing)} tokens, e.g. {sorted(missing)[:5]}"
    last: dict[str, int] = defaultdict(int)
    repeats = 0
    for origin, token in seen:
        if token <= last[origin]:
            repeats += 1
            assert token == last[origin], (
                f"{name}: {origin} token {token} after {last[origin]} (out of order)"
            )
            continue
        assert token == last[origin] + 1, (
            f"{name}: {origin} token {token} after {last[origin]} (a gap)"
        )
        last[origin] = token
    assert repeats <= repeats_allowed, f"{name} repeated {repeats} tokens"


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_three_masters_lose_nothing_through_kills_a_stop_and_a_worker_kill(
    tmp_path: Path,
) -> None:
    ports = free_ports(6)
    peers = [f"tcp:host={HOST}:port={ports[i]}" for i in range(3)]
    masters = [
        Master(tmp_path, f"m{i + 1}", ports[i], ports[3 + i], peers) for i in range(3)
    ]
    workers: list[Worker] = []
    try:
        for master in masters:
            master.start()
        workers = [Worker(tmp_path, f"w{i + 1}", [masters[i]]) for i in range(3)]
        workers.append(Worker(tmp_path, "wall", masters))
        for worker in workers:
            worker.start()
        publishers = [Publisher(master, 10_000, seed) for seed, master in enumerate(masters)]
        for publisher in publishers:
            publisher.start()

        time.sleep(2)
        masters[0].kill()  # SIGKILL a master under load, restart it on its store
        time.sleep(1.5)
        masters[0].start()
        time.sleep(1)
        stopped = masters[1].process
        assert stopped is not None
        stopped.popen.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            time.sleep(1)
            workers[3].kill()  # SIGKILL the worker that lists every master, restart it
            time.sleep(0.5)
            workers[3].start()
            time.sleep(8.5)
        finally:
            stopped.popen.send_signal(signal.SIGCONT)  # type: ignore[union-attr]

        for publisher in publishers:
            publisher.join(150)
            assert not publisher.is_alive(), f"publisher to {publisher.master.name} hung"
            assert publisher.error is None, publisher.error
        acknowledged = {pair for p in publishers for pair in p.acknowledged}
        total_rows = sum(p.acknowledged_rows for p in publishers)
        assert total_rows >= 30_000

        wanted: dict[str, int] = defaultdict(int)
        for origin, token in acknowledged:
            wanted[origin] = max(wanted[origin], token)
        assert len(wanted) == 3

        def all_heads() -> bool:
            for master in masters:
                heads = master.heads()
                if any(heads.get(origin, 0) < head for origin, head in wanted.items()):
                    return False
            return True

        wait_until(all_heads, 90, "every master holding every acknowledged token")
        heads = [master.heads() for master in masters]
        assert heads[0] == heads[1] == heads[2], heads
        # Each row crosses each link once: N-1 = 2 relays per row in the steady state (the
        # status end-to-end test checks that exactly). Over this run, summed over the three
        # masters, rows relayed per row originated stays near 2 (2.46 measured): rows that reached a
        # peer through a third master while their origin was away (repair) are sent once
        # more at most, and the restarted master counts only since its restart. Never the
        # growth of Aphlict's relays.
        clusters = [master.status()["cluster"] for master in masters]
        relayed = sum(c["relayed_rows"] for c in clusters)
        originated = sum(c["originated_rows"] for c in clusters)
        relays = relayed / originated
        assert 1.7 <= relays <= 3.0, (relayed, originated)

        def caught_up(worker: Worker) -> bool:
            return acknowledged <= set(worker.tokens())

        for worker in workers:
            wait_until(lambda w=worker: caught_up(w), 90, f"{worker.name} holding every token")
        for worker in workers:
            check_exactly_once(
                worker.name, worker.tokens(), acknowledged,
                repeats_allowed=3 if worker.name == "wall" else 0,
            )
    finally:
        for worker in workers:
            if worker.process is not None:
                worker.kill()
        for master in masters:
            if master.process is not None:
                process = master.process
                if process.popen is not None:
                    process.popen.send_signal(signal.SIGCONT)
                master.kill()
    print(json.dumps({"rows": total_rows, "tokens": len(acknowledged), "relays": relays}))


def test_a_master_restarted_on_a_wiped_store_is_a_new_origin(tmp_path: Path) -> None:
    """Its store is its identity: wiped, the master comes back with a new origin id; its
    peers notice (logged), keep the old origin's rows and relay the new origin's, and a
    worker following a peer gets both origins' tokens, each counted from 1."""
    ports = free_ports(4)
    peers = [f"tcp:host={HOST}:port={ports[i]}" for i in range(2)]
    first, second = (Master(tmp_path, f"m{i + 1}", ports[i], ports[2 + i], peers)
                     for i in range(2))
    worker = Worker(tmp_path, "w1", [first])
    try:
        first.start()
        second.start()
        worker.start()
        token_rows = [[{"n": 1}], [{"n": 2}]]
        status, answer = http_request(second.http_port, "POST", f"/streams/{STREAM}",
                                      {"tokens": token_rows})
        assert status == 200, answer
        old_origin = answer["origin"]
        wait_until(lambda: len(worker.tokens()) == 2, 30, "the old origin's tokens")

        second.kill()
        import shutil

        shutil.rmtree(second.directory)
        second.start()
        status, answer = http_request(second.http_port, "POST", f"/streams/{STREAM}",
                                      {"rows": [{"n": 3}]})
        assert status == 200, answer
        new_origin = answer["origin"]
        assert new_origin != old_origin and answer["token"] == 1
        wait_until(lambda: len(worker.tokens()) == 3, 30, "the new origin's token")
        assert worker.tokens() == [(old_origin, 1), (old_origin, 2), (new_origin, 1)]
        log_text = (tmp_path / "m1.err").read_text()
        assert f"now announces origin {new_origin} (it was {old_origin}" in log_text
    finally:
        if worker.process is not None:
            worker.kill()
        for master in (first, second):
            if master.process is not None:
                master.kill()
