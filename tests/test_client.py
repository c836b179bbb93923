"""The publisher clients (replication.client) against real master processes: the blocking
Publisher (round trips, batches, pipelined futures, threads, refusals answered per publish,
timeouts, unreachable masters), the asyncio client, the Twisted client (in a child process,
which owns its reactor), and failover across two masters without publishing anything twice.
A fake master (a socket in a thread) shows what the blocking client resends after a drop."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from processes import (
    HOST,
    Process,
    child_env,
    free_port,
    free_ports,
    start_master,
    stream_head,
)
from replication.client import (
    AsyncPublisher,
    MasterUnreachable,
    Published,
    Publisher,
    PublishRefused,
    PublishTimeout,
)


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """One memory-store master with strict streams (events, other), for the whole module."""
    tmp = tmp_path_factory.mktemp("master")
    config = tmp / "master.yaml"
    config.write_text(
        "streams: [events, other, threads]\nstrict_streams: true\n"
        "limits: {max_line_bytes: 4096, max_body_bytes: 4096, max_buffer_bytes: 1048576}\n"
    )
    port, http_port = free_ports(2)
    with start_master(tmp, "master", port, http_port, "--config", str(config)):
        yield port, http_port


def test_publish_round_trips_and_batches(master: tuple[int, int]) -> None:
    port, http_port = master
    with Publisher(f"{HOST}:{port}", name="t1") as publisher:
        first = publisher.publish("events", [{"n": 1}, {"n": 2}])
        assert isinstance(first, Published) and first.stream == "events"
        assert publisher.origin is not None and first.origin == publisher.origin
        assert first.position == f"{first.origin}:{first.token}" and int(first) == first.token
        several = publisher.publish_tokens("events", [[1], [2, 3], [4]])
        assert several.tokens == (first.token + 1, first.token + 2, first.token + 3)
        batch = publisher.publish_all("events", [[5], [6]])
        assert [r.token for r in batch] == [several.token + 1, several.token + 2]
        assert stream_head(http_port, "events") == batch[-1].token


def test_refusals_are_per_publish(master: tuple[int, int]) -> None:
    """An unknown stream (strict_streams), an oversized row and rows JSON cannot carry are
    refused with their status; the connection carries on."""
    port, http_port = master
    with Publisher(f"tcp:{HOST}:{port}") as publisher:
        before = publisher.publish("events", [0]).token
        with pytest.raises(PublishRefused) as refused:
            publisher.publish("nope", [1])
        assert refused.value.status == 404 and "strict_streams" in refused.value.message
        with pytest.raises(PublishRefused) as too_big:
            publisher.publish("events", ["x" * 4000])
        assert too_big.value.status == 413
        with pytest.raises(PublishRefused) as line:
            publisher.publish("events", ["x"] * 2000)  # the line itself is over the limit
        assert line.value.status == 413 and "limits.max_line_bytes" in line.value.message
        with pytest.raises(PublishRefused) as bad:
            publisher.publish("events", [float("nan")])
        assert bad.value.status == 400
        assert publisher.publish("events", [1]).token == before + 1
        assert stream_head(http_port, "events") == before + 1


def test_pipelined_futures_are_answered_in_order(master: tuple[int, int]) -> None:
    port, _ = master
    with Publisher(f"{HOST}:{port}") as publisher:
        futures = [publisher.submit("other", [i]) for i in range(3000)]
        tokens = [f.result(timeout=30).token for f in futures]
        assert tokens == list(range(tokens[0], tokens[0] + 3000))
        refused = publisher.submit("nope", [1])
        after = publisher.submit("other", [1])
        with pytest.raises(PublishRefused):
            refused.result(timeout=10)
        assert after.result(timeout=10).token == tokens[-1] + 1


def test_threads_share_one_publisher(master: tuple[int, int]) -> None:
    """Eight threads publish through one Publisher: every publish gets its own token."""
    port, http_port = master
    results: list[int] = []
    lock = threading.Lock()
    with Publisher(f"{HOST}:{port}") as publisher:
        def run(n: int) -> None:
            for i in range(150):
                if i % 3 == 0:
                    token = publisher.submit("threads", [n, i]).result(timeout=30).token
                else:
                    token = publisher.publish("threads", [n, i]).token
                with lock:
                    results.append(token)

        threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert sorted(results) == list(range(1, 8 * 150 + 1))
    assert stream_head(http_port, "threads") == 8 * 150


def test_an_unreachable_master() -> None:
    port = free_port()
    with Publisher(f"{HOST}:{port}", timeout=0.5, connect_timeout=0.2) as publisher:
        with pytest.raises(MasterUnreachable, match="no master reachable"):
            publisher.publish("events", [1])
        future = publisher.submit("events", [1])
        with pytest.raises(MasterUnreachable):
            future.result(timeout=5)


class FakeMaster:
    """A master that answers the handshake, then does what the test says with publishes:
    records every line it reads, per connection."""

    def __init__(
        self, answer: bool = True, drop_first: bool = False, restart: bool = False,
        keys_kept: bool = False, batch: bool = False,
    ) -> None:
        self.server = socket.create_server((HOST, 0))
        self.port = self.server.getsockname()[1]
        self.connections: list[list[bytes]] = []
        self.answer = answer
        self.drop_first = drop_first
        #: Each connection comes from a new process of the master (a new fingerprint).
        self.restart = restart
        #: The master says it keeps keys across restarts (``keys=kept``).
        self.keys_kept = keys_kept
        #: The master takes PUBLISH_BATCH; on the first connection it answers the first
        #: publish of the first batch and drops.
        self.batch = batch
        self.token = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            lines: list[bytes] = []
            self.connections.append(lines)
            conn.sendall(b"SERVER fake\n")
            buffer = b""
            dropped = False
            while not dropped:
                data = conn.recv(65536)
                if not data:
                    break
                buffer += data
                *complete, buffer = buffer.split(b"\n")
                for line in complete:
                    lines.append(line)
                    if line == b"PUBLISHER":
                        run = b"%016d" % (len(self.connections) if self.restart else 0)
                        options = b" keys=kept future=1" if self.keys_kept else b""
                        options += b" batch" if self.batch else b""
                        conn.sendall(b"VERSION 2\nORIGIN " + b"F" * 22 + b" " + run
                                     + b"\nPUBLISHING 100 65536" + options + b"\n")
                    elif line.startswith(b"PUBLISH_BATCH ") and len(self.connections) == 1:
                        self.token += 1
                        conn.sendall(b"PUBLISHED %s %d\n" % (line.split(b" ")[1], self.token))
                        dropped = True
                        break
                    elif line.startswith(b"PUBLISH "):
                        if self.drop_first and len(self.connections) == 1:
                            if sum(ln.startswith(b"PUBLISH ") for ln in lines) == 2:
                                dropped = True
                                break
                            continue
                        if self.answer:
                            self.token += 1
                            pid = line.split(b" ")[1]
                            conn.sendall(b"PUBLISHED %s %d\n" % (pid, self.token))
            conn.close()

    def close(self) -> None:
        self.server.close()


def test_a_drop_resends_in_flight_publishes_with_their_keys_to_the_same_master() -> None:
    fake = FakeMaster(drop_first=True)
    try:
        with Publisher(f"{HOST}:{fake.port}", timeout=5) as publisher:
            first = publisher.submit("events", [1])
            second = publisher.submit("events", [2])
            assert first.result(timeout=5).token == 1
            assert second.result(timeout=5).token == 2
        sent_first = [ln for ln in fake.connections[0] if ln.startswith(b"PUBLISH ")]
        sent_again = [ln for ln in fake.connections[1] if ln.startswith(b"PUBLISH ")]
        keys = [ln.split(b" ")[3] for ln in sent_first]
        assert all(key.startswith(b"key=") for key in keys)
        assert [ln.split(b" ")[3] for ln in sent_again] == keys
    finally:
        fake.close()


def test_no_answer_is_a_timeout_with_the_key() -> None:
    fake = FakeMaster(answer=False)
    try:
        with Publisher(f"{HOST}:{fake.port}", timeout=0.3) as publisher:
            with pytest.raises(PublishTimeout) as timeout:
                publisher.publish("events", [1], key="my-key")
            assert timeout.value.key == "my-key"
    finally:
        fake.close()


def test_asyncio_client(master: tuple[int, int]) -> None:
    port, _ = master

    async def main() -> tuple[Published, Published, list[int], int]:
        async with AsyncPublisher(f"{HOST}:{port}") as publisher:
            one = await publisher.publish("events", [{"a": 1}])
            many = await publisher.publish_tokens("events", [[1], [2]])
            futures = [await publisher.submit("events", [i]) for i in range(500)]
            tokens = [(await f).token for f in futures]
            try:
                await publisher.publish("nope", [1])
            except PublishRefused as e:
                status = e.status
            return one, many, tokens, status

    one, many, tokens, status = asyncio.run(main())
    assert many.tokens == (one.token + 1, one.token + 2)
    assert tokens == list(range(many.token + 1, many.token + 501))
    assert status == 404


TWISTED_SCRIPT = textwrap.dedent("""
    import json, sys
    from twisted.internet.task import react
    from twisted.internet.defer import ensureDeferred
    from replication.client import TwistedPublisher, PublishRefused

    async def main(reactor):
        publisher = TwistedPublisher(reactor, sys.argv[1])
        one = await publisher.publish("events", [{"a": 1}])
        many = await publisher.publish_tokens("events", [[1], [2]])
        pipelined = [publisher.publish("events", [i]) for i in range(300)]
        tokens = [(await d).token for d in pipelined]
        try:
            await publisher.publish("nope", [1])
        except PublishRefused as e:
            status = e.status
        await publisher.close()
        print(json.dumps({"one": one.token, "origin": one.origin, "many": list(many.tokens),
                          "tokens": tokens, "status": status}))

    react(lambda reactor: ensureDeferred(main(reactor)))
""")


def test_twisted_client(master: tuple[int, int], tmp_path: Path) -> None:
    port, _ = master
    script = tmp_path / "twisted_publisher.py"
    script.write_text(TWISTED_SCRIPT)
    for endpoint in (f"{HOST}:{port}", f"tcp:host={HOST}:port={port}"):
        done = subprocess.run(
            [sys.executable, str(script), endpoint], env=child_env(), capture_output=True,
            text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["many"] == [answer["one"] + 1, answer["one"] + 2]
        assert answer["tokens"] == list(range(answer["one"] + 3, answer["one"] + 303))
        assert answer["status"] == 404


def test_failover_across_two_masters(tmp_path: Path) -> None:
    """A publisher given two masters publishes to one; that one is killed; the next
    publishes go to the other. Every publish is stored once: the two heads add up to the
    publishes made."""
    a_port, a_http, b_port, b_http = free_ports(4)
    with start_master(tmp_path, "a", a_port, a_http) as a, \
            start_master(tmp_path, "b", b_port, b_http) as b:
        masters: dict[str, tuple[Process, int]] = {}
        with Publisher([f"{HOST}:{a_port}", f"{HOST}:{b_port}"], timeout=5,
                       retry_for=0.5) as publisher:
            first = publisher.publish("events", [0])
            for process, port, http_port in ((a, a_port, a_http), (b, b_port, b_http)):
                if publisher._endpoint == (HOST, port):
                    masters["used"] = (process, http_port)
                else:
                    masters["other"] = (process, http_port)
            for i in range(1, 20):
                publisher.publish("events", [i])
            used, used_http = masters["used"]
            used.kill()
            results = [publisher.publish("events", [i]) for i in range(20, 50)]
            assert {r.origin for r in results} != {first.origin}
        other_http = masters["other"][1]
        assert stream_head(other_http, "events") == 30
        assert results[-1].token == 30


def test_a_cli_free_publisher_module_does_not_import_twisted() -> None:
    """import replication.client costs neither Twisted nor asyncio's client."""
    code = (
        "import sys, replication.client; "
        "print(any(m == 'twisted' or m.startswith('twisted.') for m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True,
                          text=True, timeout=30)
    assert done.stdout.strip() == "False", done.stderr


def test_cli_publishes_over_the_replication_port(master: tuple[int, int]) -> None:
    """replication publish --master uses the client; --json prints the origin too; a
    refusal is reported with its status; --master with --url is an error."""
    from processes import replication_command

    port, http_port = master

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(replication_command("publish", *args), env=child_env(),
                              capture_output=True, text=True, timeout=60)

    done = run("--master", f"{HOST}:{free_port()}", "--master", f"{HOST}:{port}", "events",
               '{"n": 1}', "2")
    assert done.returncode == 0, done.stderr
    token = int(done.stdout)
    assert stream_head(http_port, "events") == token
    done = run("--master", f"tcp:{HOST}:{port}", "--json", "events", "3")
    answer = json.loads(done.stdout)
    assert answer["token"] == token + 1 and answer["stream"] == "events"
    assert len(answer["origin"]) >= 16
    done = run("--master", f"{HOST}:{port}", "nope", "1")
    assert done.returncode == 1
    assert "publish refused (404)" in done.stderr
    done = run("--master", f"{HOST}:{port}", "--url", "http://x", "events", "1")
    assert done.returncode != 0 and "not both" in done.stderr


def test_asyncio_client_resends_in_flight_publishes_with_their_keys() -> None:
    fake = FakeMaster(drop_first=True)

    async def main() -> list[int]:
        async with AsyncPublisher(f"{HOST}:{fake.port}", timeout=5) as publisher:
            first = await publisher.submit("events", [1])
            second = await publisher.submit("events", [2])
            return [(await first).token, (await second).token]

    try:
        assert asyncio.run(main()) == [1, 2]
        sent_first = [ln for ln in fake.connections[0] if ln.startswith(b"PUBLISH ")]
        sent_again = [ln for ln in fake.connections[1] if ln.startswith(b"PUBLISH ")]
        assert [ln.split(b" ")[3] for ln in sent_again] == [ln.split(b" ")[3] for ln in sent_first]
    finally:
        fake.close()


TWISTED_RESEND_SCRIPT = textwrap.dedent("""
    import json, sys
    from twisted.internet.task import react
    from twisted.internet.defer import ensureDeferred
    from replication.client import TwistedPublisher

    async def main(reactor):
        publisher = TwistedPublisher(reactor, sys.argv[1], timeout=5)
        first = publisher.publish("events", [1])
        second = publisher.publish("events", [2])
        print(json.dumps([(await first).token, (await second).token]))
        await publisher.close()

    react(lambda reactor: ensureDeferred(main(reactor)))
""")


def test_twisted_client_resends_in_flight_publishes_with_their_keys(tmp_path: Path) -> None:
    fake = FakeMaster(drop_first=True)
    script = tmp_path / "twisted_resend.py"
    script.write_text(TWISTED_RESEND_SCRIPT)
    try:
        done = subprocess.run(
            [sys.executable, str(script), f"{HOST}:{fake.port}"], env=child_env(),
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == [1, 2]
        sent_first = [ln for ln in fake.connections[0] if ln.startswith(b"PUBLISH ")]
        sent_again = [ln for ln in fake.connections[1] if ln.startswith(b"PUBLISH ")]
        assert [ln.split(b" ")[3] for ln in sent_again] == [ln.split(b" ")[3] for ln in sent_first]
    finally:
        fake.close()


# -- the blocking client's polling reader ---------------------------------------------------


def test_spin_must_be_a_small_number_of_seconds() -> None:
    with pytest.raises(ValueError, match="spin must be between 0 and 0.1"):
        Publisher("127.0.0.1:1", spin=-1)
    with pytest.raises(ValueError, match="spin must be between 0 and 0.1"):
        Publisher("127.0.0.1:1", spin=0.5)


def test_the_reader_stops_polling_when_answers_come_slower_than_spin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An answer already waiting is taken by the poll; a poll that catches nothing makes the
    next 2 reads sleep at once, a second miss the next 4, and a catch polls again."""
    import replication.client.blocking as blocking

    polls: list[float] = []
    real = blocking._spin_recv

    def counting(sock: socket.socket, seconds: float) -> bytes:
        polls.append(seconds)
        return real(sock, seconds)

    monkeypatch.setattr(blocking, "_spin_recv", counting)
    ours, theirs = socket.socketpair()
    # As Publisher._open leaves its socket: blocking, with a kernel receive timeout.
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, blocking._timeval(0.01))
    publisher = Publisher("127.0.0.1:1", spin=0.001)
    try:
        def read_once() -> bytes | None:
            try:
                return publisher._receive(ours)
            except BlockingIOError:  # the kernel's receive timeout
                return None

        theirs.sendall(b"PUBLISHED 1 1\n")
        assert read_once() == b"PUBLISHED 1 1\n"
        assert len(polls) == 1
        assert read_once() is None  # a miss: the next 2 reads do not poll
        assert len(polls) == 2
        for _ in range(2):
            theirs.sendall(b"x")
            assert read_once() == b"x"
        assert len(polls) == 2
        assert read_once() is None  # polls again, misses again: the next 4 do not poll
        assert len(polls) == 3
        for _ in range(4):
            assert read_once() is None
        assert len(polls) == 3
        theirs.sendall(b"y")
        assert read_once() == b"y"  # polled and caught: polling is back on
        assert len(polls) == 4
        theirs.sendall(b"z")
        assert read_once() == b"z"
        assert len(polls) == 5
    finally:
        publisher.close()
        ours.close()
        theirs.close()


def test_spin_zero_never_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    import replication.client.blocking as blocking

    monkeypatch.setattr(blocking, "_spin_recv", lambda *a: pytest.fail("polled"))
    ours, theirs = socket.socketpair()
    publisher = Publisher("127.0.0.1:1", spin=0)
    try:
        theirs.sendall(b"a")
        assert publisher._receive(ours) == b"a"
    finally:
        publisher.close()
        ours.close()
        theirs.close()


# -- a master that restarted with publishes in flight ----------------------------------------


def _not_resent(fake: FakeMaster) -> None:
    """The two publishes in flight at the drop went to the first process only."""
    sent_first = [ln for ln in fake.connections[0] if ln.startswith(b"PUBLISH ")]
    sent_again = [ln for ln in fake.connections[1] if ln.startswith(b"PUBLISH ")]
    assert len(sent_first) == 2
    assert [ln.split(b" ")[3] for ln in sent_again] == [b"key=mine-3"]


def test_publishes_in_flight_are_not_resent_to_a_restarted_master() -> None:
    """A drop with publishes in flight, then the master comes back as a new process (a new
    fingerprint in ORIGIN): its key window is empty, so sending them again could store them
    twice. They fail with MasterUnreachable (maybe_committed, with their keys) instead, and
    the publisher goes on with new publishes."""
    fake = FakeMaster(drop_first=True, restart=True)
    try:
        with Publisher(f"{HOST}:{fake.port}", timeout=5) as publisher:
            first = publisher.submit("events", [1], key="mine-1")
            second = publisher.submit("events", [2], key="mine-2")
            for future, key in ((first, "mine-1"), (second, "mine-2")):
                with pytest.raises(MasterUnreachable, match="restarted with this publish") as e:
                    future.result(timeout=5)
                assert e.value.maybe_committed and e.value.key == key
            assert publisher.publish("events", [3], key="mine-3").token == 1
        _not_resent(fake)
    finally:
        fake.close()


def test_asyncio_client_does_not_resend_to_a_restarted_master() -> None:
    fake = FakeMaster(drop_first=True, restart=True)

    async def main() -> list[str]:
        async with AsyncPublisher(f"{HOST}:{fake.port}", timeout=5) as publisher:
            first = await publisher.submit("events", [1], key="mine-1")
            second = await publisher.submit("events", [2], key="mine-2")
            errors = []
            for waiter in (first, second):
                try:
                    await waiter
                except MasterUnreachable as e:
                    assert e.maybe_committed
                    errors.append(str(e.key))
            assert (await publisher.publish("events", [3], key="mine-3")).token == 1
            return errors

    try:
        assert asyncio.run(main()) == ["mine-1", "mine-2"]
        _not_resent(fake)
    finally:
        fake.close()


TWISTED_RESTART_SCRIPT = textwrap.dedent("""
    import json, sys
    from twisted.internet.task import react
    from twisted.internet.defer import ensureDeferred
    from replication.client import MasterUnreachable, TwistedPublisher

    async def main(reactor):
        publisher = TwistedPublisher(reactor, sys.argv[1], timeout=5)
        waiting = [publisher.publish("events", [1], key="mine-1"),
                   publisher.publish("events", [2], key="mine-2")]
        errors = []
        for d in waiting:
            try:
                await d
            except MasterUnreachable as e:
                errors.append([e.key, e.maybe_committed])
        third = await publisher.publish("events", [3], key="mine-3")
        print(json.dumps([errors, third.token]))
        await publisher.close()

    react(lambda reactor: ensureDeferred(main(reactor)))
""")


def test_twisted_client_does_not_resend_to_a_restarted_master(tmp_path: Path) -> None:
    fake = FakeMaster(drop_first=True, restart=True)
    script = tmp_path / "twisted_restart.py"
    script.write_text(TWISTED_RESTART_SCRIPT)
    try:
        done = subprocess.run(
            [sys.executable, str(script), f"{HOST}:{fake.port}"], env=child_env(),
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == [[["mine-1", True], ["mine-2", True]], 1]
        _not_resent(fake)
    finally:
        fake.close()


@pytest.mark.parametrize("durable", [True, False])
def test_a_real_master_restarted_with_publishes_in_flight(tmp_path: Path, durable: bool) -> None:
    """A master is stopped (SIGSTOP) with two publishes sent to it, killed, and started
    again on the same ports (and, for SQLite, the same store). The SQLite master says that
    it keeps keys (``keys=kept``): the publisher sends the two again and they are stored
    once. The memory-store master keeps nothing: the publisher fails the two with
    MasterUnreachable (maybe_committed) instead of sending them again. Either way the next
    publish goes to the restarted master."""
    import os
    import signal

    from processes import start_sqlite_master

    port, http_port = free_ports(2)
    data = tmp_path / "data"

    def start(name: str) -> Process:
        if durable:
            return start_sqlite_master(tmp_path, name, port, http_port, data)
        return start_master(tmp_path, name, port, http_port)

    master = start("m1")
    try:
        with Publisher(f"{HOST}:{port}", timeout=20, retry_for=20) as publisher:
            assert publisher.publish("events", [0]).token == 1
            os.kill(master.pid, signal.SIGSTOP)
            waiting = [publisher.submit("events", [1]), publisher.submit("events", [2])]
            master.kill()
            master = start("m2")
            if durable:
                assert [f.result(timeout=20).token for f in waiting] == [2, 3]
                assert publisher.publish("events", [3]).token == 4
            else:
                for future in waiting:
                    with pytest.raises(MasterUnreachable, match="restarted") as error:
                        future.result(timeout=20)
                    assert error.value.maybe_committed and error.value.key is not None
                assert publisher.publish("events", [3]).token == 1  # a new, empty store
        assert stream_head(http_port, "events") == (4 if durable else 1)
    finally:
        master.kill()


def test_the_background_reader_of_futures_does_not_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """Futures that nobody waits on are read by the background thread, which sleeps in
    recv rather than polling (it would compete with the submitting threads for the CPU)."""
    import replication.client.blocking as blocking

    monkeypatch.setattr(blocking, "_spin_recv", lambda *a: pytest.fail("the reader polled"))
    fake = FakeMaster()
    try:
        with Publisher(f"{HOST}:{fake.port}", timeout=5) as publisher:
            futures = [publisher.submit("events", [i]) for i in range(20)]
            assert [f.result(timeout=5).token for f in futures] == list(range(1, 21))
    finally:
        fake.close()


def test_publishes_in_flight_are_resent_to_a_restarted_master_that_kept_its_keys() -> None:
    """A master that says ``keys=kept`` in PUBLISHING (an option the client knows, beside
    one it does not) still knows the keys after a restart: the publishes in flight at the
    drop are sent to its new process, with their keys."""
    fake = FakeMaster(drop_first=True, restart=True, keys_kept=True)
    try:
        with Publisher(f"{HOST}:{fake.port}", timeout=5) as publisher:
            first = publisher.submit("events", [1], key="mine-1")
            second = publisher.submit("events", [2], key="mine-2")
            assert [first.result(timeout=5).token, second.result(timeout=5).token] == [1, 2]
        sent_again = [ln for ln in fake.connections[1] if ln.startswith(b"PUBLISH ")]
        assert [ln.split(b" ")[3] for ln in sent_again] == [b"key=mine-1", b"key=mine-2"]
    finally:
        fake.close()
