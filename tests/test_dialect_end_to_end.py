"""A real master process and a scripted legacy client on a raw socket.

The client behaves as a Synapse (2017-2020) worker does: it sends ``NAME`` and its
``REPLICATE`` lines as soon as it is connected, without waiting for ``SERVER``, announces no
protocol version, and parses only ``SERVER``, ``RDATA``, ``POSITION``, ``PING`` and ``ERROR``:
anything else it answers with ``ERROR invalid command: <NAME>`` and closes, as Synapse did
when our master sent it ``GAP`` and ``RESET``.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from processes import (
    HOST,
    free_ports,
    http_request,
    metric_value,
    publish,
    start_master,
    wait_until,
)

STREAM = "events"
LEGACY_COMMANDS = frozenset({"SERVER", "RDATA", "POSITION", "PING", "ERROR"})


class LegacyClient:
    """A Synapse-like replication client on a blocking socket (every read has a timeout)."""

    def __init__(self, port: int, name: str, replicate: list[str]) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=10)
        self.buffer = b""
        self.received: list[str] = []
        self.refused: list[str] = []
        hello = [f"NAME {name}", *(f"REPLICATE {r}" for r in replicate)]
        self.sock.sendall("".join(line + "\n" for line in hello).encode())

    def read_until(self, wanted: str, timeout: float = 15.0) -> list[str]:
        """Read lines until ``wanted`` arrives; return what came, PINGs left out. A command
        outside the legacy dialect is refused as Synapse refused it, and fails the test."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\n", 1)
                line = raw.decode()
                name = line.split(" ", 1)[0]
                if name not in LEGACY_COMMANDS:
                    self.refused.append(line)
                    self.sock.sendall(f"ERROR invalid command: {name}\n".encode())
                    self.sock.close()
                    raise AssertionError(f"the master sent {line!r}, outside the legacy dialect")
                if name != "PING":
                    self.received.append(line)
                if line == wanted:
                    return list(self.received)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {wanted!r} within {timeout}s; got {self.received}")
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"the master closed the connection; got {self.received}")
            self.buffer += data

    def close(self) -> None:
        self.sock.close()


def _oldest(http_port: int) -> int | None:
    status, answer = http_request(http_port, "GET", "/status", timeout=5)
    if status != 200 or not isinstance(answer, dict):
        return None
    for stream in answer["streams"]:
        if stream["name"] == STREAM:
            return int(stream["oldest"])
    return None


_metric = metric_value


def test_a_synapse_like_client_follows_a_real_master_without_gap_or_reset(
    tmp_path: Path,
) -> None:
    """Against a master keeping 10 rows of 30 tokens: a legacy client at 0 gets
    POSITION events 20 where GAP would be, then 21..30 and POSITION events 30; one ahead of
    the head (at 99) gets POSITION events 30 where RESET would be. Both then receive the
    next publish live and are never sent VERSION, GAP or RESET; the master counts both
    substitutions and two legacy connections."""
    port, http_port = free_ports(2)
    config = tmp_path / "master.yaml"
    config.write_text("retention:\n  max_rows: 10\n")
    with start_master(tmp_path, "master", port, http_port, "--config", str(config)) as master:
        for i in range(1, 31):
            assert publish(http_port, STREAM, [i]) == i
        wait_until(lambda: _oldest(http_port) == 21, 20, "retention to keep tokens 21..30",
                   alive=[master])

        behind = LegacyClient(port, "synapse-behind", [f"{STREAM} 0"])
        ahead = LegacyClient(port, "synapse-ahead", [f"{STREAM} 99"])
        try:
            assert behind.read_until(f"POSITION {STREAM} 30") == [
                "SERVER master",
                f"POSITION {STREAM} 20",
                *(f"RDATA {STREAM} {t} {t}" for t in range(21, 31)),
                f"POSITION {STREAM} 30",
            ]
            assert ahead.read_until(f"POSITION {STREAM} 30") == [
                "SERVER master", f"POSITION {STREAM} 30",
            ]
            assert publish(http_port, STREAM, [{"live": 31}]) == 31
            live = f'RDATA {STREAM} 31 {{"live":31}}'
            assert behind.read_until(live)[-1] == live
            assert ahead.read_until(live)[-1] == live
            assert behind.refused == ahead.refused == []

            def metric(sample: str) -> float | None:
                return _metric(http_port, sample)

            assert metric('replication_legacy_substitutions_total{command="GAP"}') == 1
            assert metric('replication_legacy_substitutions_total{command="RESET"}') == 1
            assert metric('replication_connections_by_dialect{dialect="synapse-2017"}') == 2
            assert metric('replication_connections_by_dialect{dialect="replication/1"}') == 0
        finally:
            behind.close()
            ahead.close()
        assert master.poll() is None
