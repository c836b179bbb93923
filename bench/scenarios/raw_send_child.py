"""The raw limit's sender: the same RDATA lines the master would send, in 256 KiB writes.

    python raw_send_child.py ROWS PER_TOKEN REPEAT OUT_JSON PORT [PORT ...]

The whole set of lines is sent REPEAT times (a run of a few MB would last milliseconds,
too short to time).

Encodes the rows as the master's fan-out does (``replication.commands.rdata_lines``), connects
to every receiver, then writes each 256 KiB chunk to every connection in turn. Writes
``{"start": <time.time() before the first write>, "sent": <time after the last>, "bytes"}``.
"""

from __future__ import annotations

import json
import socket
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import encode, make_rows  # noqa: E402

from replication.commands import rdata_lines  # noqa: E402

CHUNK = 262144


def main() -> None:
    rows, per_token, repeat = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    out_path = sys.argv[4]
    ports = [int(p) for p in sys.argv[5:]]
    texts = [encode(r) for r in make_rows(rows)]
    data = b"".join(
        rdata_lines("events", n + 1, texts[i:i + per_token])
        for n, i in enumerate(range(0, rows, per_token))
    )
    view = memoryview(data)
    sockets = [socket.create_connection(("127.0.0.1", p)) for p in ports]
    start = time.time()
    for _ in range(repeat):
        for i in range(0, len(data), CHUNK):
            chunk = view[i:i + CHUNK]
            for s in sockets:
                s.sendall(chunk)
    sent = time.time()
    for s in sockets:
        s.close()
    with open(out_path, "w") as f:
        json.dump({"start": start, "sent": sent, "bytes": len(data)}, f)


if __name__ == "__main__":
    main()
