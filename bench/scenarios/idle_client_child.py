"""Open many idle worker connections to one master from this one process.

    python idle_client_child.py PORT COUNT READY_FILE

Raises its open-file limit, connects COUNT times, sends ``NAME idle-N`` and
``REPLICATE events NOW`` on each, and reads each connection until the master's
``POSITION events`` line shows it was admitted and subscribed (a connection refused for
``limits.max_connections`` gets ERROR instead and fails the run). Then writes READY_FILE
(``<connections>``) and stays idle, answering nothing, until killed (at most 300 s).
"""

from __future__ import annotations

import resource
import selectors
import socket
import sys
import time

WAVE = 40


def main() -> None:
    port, count, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 100
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard) if hard > 0 else want, hard))
    # Connect in waves of WAVE and wait for each wave's POSITION lines before the next: the
    # master's listen backlog (50) would otherwise overflow and SYN retries cost seconds.
    sockets: list[socket.socket] = []
    selector = selectors.DefaultSelector()
    deadline = time.monotonic() + 120
    for first in range(0, count, WAVE):
        wave = []
        for i in range(first, min(first + WAVE, count)):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(b"NAME idle-%d\nREPLICATE events NOW\n" % i)
            s.setblocking(False)
            selector.register(s, selectors.EVENT_READ, b"")
            wave.append(s)
        pending = set(wave)
        while pending:
            if time.monotonic() > deadline:
                sys.exit(f"{len(pending)} connections got no POSITION within 120 s")
            for key, _ in selector.select(timeout=1.0):
                s = key.fileobj  # type: ignore[assignment]
                data = s.recv(65536)
                buffer = key.data + data
                if not data:
                    sys.exit(f"the master closed a connection: {buffer!r}")
                if b"ERROR" in buffer:
                    sys.exit(f"the master refused a connection: {buffer!r}")
                if b"POSITION events" in buffer:
                    pending.discard(s)
                    selector.unregister(s)
                else:
                    selector.modify(s, selectors.EVENT_READ, buffer)
        sockets.extend(wave)
    with open(ready + ".tmp", "w") as f:
        f.write(f"{len(sockets)}\n")
    import os

    os.replace(ready + ".tmp", ready)
    time.sleep(300)


if __name__ == "__main__":
    main()
