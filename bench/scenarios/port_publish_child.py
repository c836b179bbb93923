"""Publish rows to a master over its replication port (``replication.client.Publisher``),
one row per token, pipelined, then one end token.

    python port_publish_child.py PORT ROWS RUN_ID OUT_JSON [MODE]

The rows are built before the clock starts; the client encodes them itself. One connection.
``MODE`` ``single`` (default): ``Publisher.publish_all`` writes ``CHUNK`` one-row publishes
at once and waits for every answer (each answered only once the master's store committed
it), repeated. ``tokens``: each publish carries ``TOKENS`` consecutive one-row tokens
(``Publisher.submit_tokens``, all or none, as HTTP's ``{"tokens": [...]}``), ``CHUNK`` rows
of them in flight at once, every answer awaited, repeated. Then the end
row ``["bench.end", RUN_ID]`` as one more publish. Writes ``{"start": <time.time() before
the first publish>, "acked": <time when the last data publish was answered>, "tokens",
"rows", "errors"}``, as ``http_publish_child.py`` does.
"""

from __future__ import annotations

import json
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import end_row, make_rows  # noqa: E402

from replication.client import Publisher  # noqa: E402

HOST = "127.0.0.1"
CHUNK = 1000
TOKENS = 100


def main() -> None:
    port, rows = int(sys.argv[1]), int(sys.argv[2])
    run_id, out_path = sys.argv[3], sys.argv[4]
    mode = sys.argv[5] if len(sys.argv) > 5 else "single"
    tokens = [[row] for row in make_rows(rows)]
    errors: list[str] = []
    with Publisher(f"{HOST}:{port}", timeout=60) as publisher:
        publisher.publish("warm-up", [["bench.warm-up"]])  # connect before the clock starts
        start = time.time()
        cpu = time.process_time()
        try:
            for i in range(0, rows, CHUNK):
                if mode == "tokens":
                    futures = [publisher.submit_tokens("events", tokens[j:j + TOKENS])
                               for j in range(i, min(i + CHUNK, rows), TOKENS)]
                    for future in futures:
                        future.result(60)
                else:
                    publisher.publish_all("events", tokens[i:i + CHUNK])
        except Exception as e:  # report, don't hang the run
            errors.append(repr(e))
        acked = time.time()
        cpu = time.process_time() - cpu
        if not errors:
            publisher.publish("events", [end_row(run_id)])
    with open(out_path, "w") as f:
        json.dump({"start": start, "acked": acked, "cpu_s": cpu, "tokens": rows, "rows": rows,
                   "errors": errors}, f)


if __name__ == "__main__":
    main()
