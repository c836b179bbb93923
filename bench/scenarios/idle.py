"""Scenario 6: resident memory of the master per idle worker connection.

Each run starts a new master (``--store memory``, with a YAML config raising
``limits.max_connections`` to 5000), warms it up with 20 connections that handshake,
subscribe and close, reads its VmRSS, then has ONE client process open 2,000 connections
that each send ``NAME idle-N`` and ``REPLICATE events NOW`` and wait for the master's
``POSITION events`` (so every connection is admitted and subscribed). After 2 s idle the
master's VmRSS is read again: ``(after - before) / 2000`` KiB per connection.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from common import (
    HOST,
    Group,
    child,
    free_ports,
    reactor_args,
    rss_kib,
    scratch,
    start_master,
    summary,
)

CONNECTIONS = 2000
IDLE = 2.0


def _warm_up(port: int, n: int = 20) -> None:
    sockets = []
    for i in range(n):
        s = socket.create_connection((HOST, port), timeout=10)
        s.sendall(b"NAME warm-%d\nREPLICATE events NOW\n" % i)
        sockets.append(s)
    for s in sockets:
        data = b""
        while b"POSITION events" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
    time.sleep(0.5)


def run(quick: bool, runs: int, log: Any) -> dict[str, Any]:
    log(f"idle connections: {CONNECTIONS} to one master x {runs} runs")
    results = []
    for k in range(runs):
        with scratch("idle") as tmp, Group() as group:
            config = tmp / "master.yaml"
            config.write_text("limits:\n  max_connections: 5000\n")
            port, http_port = free_ports(2)
            master = start_master(tmp, "master", port, http_port, "--stream", "events",
                                  "--config", str(config), *reactor_args())
            group.add(master)
            _warm_up(port)
            before = rss_kib(master.pid)
            ready = tmp / "client.ready"
            group.add(child("client", "idle_client_child.py",
                            [str(port), str(CONNECTIONS), str(ready)], tmp))
            deadline = time.monotonic() + 120
            while not ready.exists():
                group.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError("idle client not ready after 120 s")
                time.sleep(0.05)
            established = int(ready.read_text().split()[0])
            time.sleep(IDLE)
            group.check_alive()
            after = rss_kib(master.pid)
            result = {
                "connections": established,
                "rss_before_kib": before,
                "rss_after_kib": after,
                "kib_per_connection": (after - before) / established,
            }
            log(
                f"  run {k}: {before} KiB -> {after} KiB: "
                f"{result['kib_per_connection']:.2f} KiB/connection"
            )
            results.append(result)
    return {"scenario": "idle", "connections": CONNECTIONS, "runs": results,
            **summary([r["kib_per_connection"] for r in results])}
