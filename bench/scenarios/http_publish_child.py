"""Publish rows to a master over HTTP as fast as it takes them, then one end token.

    python http_publish_child.py PORT ROWS PER_TOKEN CLIENTS RUN_ID OUT_JSON

The bodies are encoded before the clock starts. ``CLIENTS`` threads each hold one keep-alive
HTTP connection and publish an equal share of the requests, waiting for each answer. A token of 100
rows or more is one POST; smaller tokens go several to a POST (``{"tokens": [[...], ...]}``, about
100 rows a request), as the Redis baseline pipelines 100 PUBLISHes per round trip. When all are
answered, one more POST carries the end row ``["bench.end", RUN_ID]``: the master sends tokens to
each worker in token order, so a worker that handled it has handled everything before it. Writes
``{"start": <time.time() before the first POST>, "acked": <time when the last data POST was
answered>, "tokens": n, "rows": n}``.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import encode, end_row, make_rows  # noqa: E402

HOST = "127.0.0.1"
ROWS_PER_REQUEST = 100


def main() -> None:
    port, rows, per_token, clients = (int(a) for a in sys.argv[1:5])
    run_id, out_path = sys.argv[5], sys.argv[6]
    all_rows = make_rows(rows)
    tokens = [all_rows[i:i + per_token] for i in range(0, rows, per_token)]
    if per_token >= ROWS_PER_REQUEST:
        bodies = [encode({"rows": t}).encode() for t in tokens]
    else:
        # Small tokens travel several to a request ({"tokens": [...]}), about
        # ROWS_PER_REQUEST rows each, as the Redis baseline pipelines its PUBLISHes.
        step = ROWS_PER_REQUEST // per_token
        bodies = [
            encode({"tokens": tokens[i : i + step]}).encode() for i in range(0, len(tokens), step)
        ]
    shares = [bodies[i::clients] for i in range(clients)]
    headers = {"content-type": "application/json"}
    connections = [http.client.HTTPConnection(HOST, port, timeout=60) for _ in range(clients)]
    for c in connections:
        c.connect()
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def client(connection: http.client.HTTPConnection, share: list[bytes]) -> None:
        barrier.wait()
        try:
            for body in share:
                connection.request("POST", "/streams/events", body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                if response.status != 200:
                    errors.append(f"{response.status} {answer[:200]!r}")
                    return
        except Exception as e:  # report, don't hang the run
            errors.append(repr(e))

    threads = [
        threading.Thread(target=client, args=(c, s))
        for c, s in zip(connections, shares, strict=True)
    ]
    for t in threads:
        t.start()
    start = time.time()
    cpu = time.process_time()
    barrier.wait()
    for t in threads:
        t.join()
    acked = time.time()
    cpu = time.process_time() - cpu
    if not errors:
        c = connections[0]
        c.request("POST", "/streams/events", body=encode({"rows": [end_row(run_id)]}).encode(),
                  headers=headers)
        response = c.getresponse()
        response.read()
        if response.status != 200:
            errors.append(f"end token: {response.status}")
    with open(out_path, "w") as f:
        json.dump({"start": start, "acked": acked, "cpu_s": cpu, "tokens": len(tokens),
                   "rows": rows, "errors": errors}, f)


if __name__ == "__main__":
    main()
