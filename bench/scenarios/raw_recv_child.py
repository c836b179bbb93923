"""The raw limit's receiver: accept one TCP connection, count lines, no per-line work.

    python raw_recv_child.py PORT LINES DONE_DIR

Listens on 127.0.0.1:PORT, writes ``DONE_DIR/<pid>.ready``, accepts one connection and
reads it in 256 KiB ``recv`` calls counting ``b"\\n"``; after LINES lines writes
``DONE_DIR/<pid>.done`` with ``<time.time()> <lines>``.
"""

from __future__ import annotations

import os
import socket
import sys
import time


def main() -> None:
    port, lines, directory = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(1)
    with open(os.path.join(directory, f"{os.getpid()}.ready"), "w") as f:
        f.write(f"{time.time():.6f} 0\n")
    connection, _ = server.accept()
    seen = 0
    recv = connection.recv
    while seen < lines:
        data = recv(262144)
        if not data:
            break
        seen += data.count(b"\n")
    now = time.time()
    path = os.path.join(directory, f"{os.getpid()}.done")
    with open(path + ".tmp", "w") as f:
        f.write(f"{now:.6f} {seen}\n")
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
