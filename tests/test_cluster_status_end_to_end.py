"""Three real ``replication master`` processes as one cluster on 127.0.0.1, observed the way
an operator would: ``GET /status``, ``GET /metrics`` and ``replication status``. Every wait
is bounded."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

# tests/ is not a package, so pytest puts tests/ itself on sys.path.
from processes import (
    HOST,
    Process,
    free_ports,
    health_ok,
    http_request,
    metric_value,
    publish,
    replication_command,
    wait_until,
)

MASTERS = 3


def _config(name: str, port: int, http_port: int, peers: list[int]) -> str:
    entries = "".join(f"    - tcp:host={HOST}:port={p}\n" for p in peers)
    return (
        f"server_name: {name}\n"
        f"listen: tcp:{port}:interface={HOST}\n"
        f'http: {{listen: "tcp:{http_port}:interface={HOST}"}}\n'
        "store: {type: memory}\n"
        "cluster:\n"
        "  reconnect: {initial_delay: 0.2s, max_delay: 1s}\n"
        "  peers:\n"
        f"{entries}"
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[tuple[Process, int]]]:
    """Three masters m1..m3 listing each other (themselves included); ``(process, HTTP
    port)`` of each, once each answers /health."""
    ports = free_ports(2 * MASTERS)
    replication, http = ports[:MASTERS], ports[MASTERS:]
    with ExitStack() as stack:
        masters = []
        for i in range(MASTERS):
            name = f"m{i + 1}"
            config = tmp_path / f"{name}.yaml"
            config.write_text(_config(name, replication[i], http[i], replication))
            process = stack.enter_context(Process(
                name, replication_command("master", "--config", str(config)),
                stdout=tmp_path / f"{name}.out", stderr=tmp_path / f"{name}.err", cwd=tmp_path,
            ))
            masters.append((process, http[i]))
        processes = [p for p, _ in masters]
        for process, port in masters:
            wait_until(lambda port=port: health_ok(port), 20, f"{process.name} /health",
                       alive=processes)
        yield masters


def _status(port: int) -> dict[str, Any]:
    code, body = http_request(port, "GET", "/status", timeout=5)
    assert code == 200, body
    assert isinstance(body, dict)
    return body


def test_three_masters_show_each_other_and_relay_each_row_twice(
    cluster: list[tuple[Process, int]],
) -> None:
    """Each master's /status shows all three origins' heads of the stream and every peer
    link connected, the entry that is itself marked self; once every publish reached every
    master, each master relayed each of its rows twice (N-1): replication_relays_per_row
    is 2; replication status prints the cluster section."""
    processes = [p for p, _ in cluster]
    origins = []
    for i, (_, port) in enumerate(cluster):
        publish(port, "events", [{"from": i}, {"row": 2}])
        origins.append(_status(port)["origin_id"])
    assert len(set(origins)) == MASTERS

    def settled(port: int) -> dict[str, Any] | None:
        body = _status(port)
        heads = {s["origin"]: s["head"] for s in body["streams"] if s["name"] == "events"}
        peers = (body.get("cluster") or {}).get("peers") or []
        states = sorted(p["state"] for p in peers)
        if heads == dict.fromkeys(origins, 1) and states == ["connected", "connected", "self"]:
            return body
        return None

    for process, port in cluster:
        body = wait_until(lambda port=port: settled(port), 30,
                          f"{process.name} to hold every origin with every link up",
                          alive=processes)
        own = body["origin_id"]
        local = [s for s in body["streams"] if s["local"]]
        assert [(s["name"], s["origin"]) for s in local] == [("events", own)]
        (me,) = [p for p in body["cluster"]["peers"] if p["self"]]
        assert (me["state"], me["name"], me["origin"]) == ("self", process.name, own)
        others = [p for p in body["cluster"]["peers"] if not p["self"]]
        assert {p["origin"] for p in others} == set(origins) - {own}
        assert all(p["rows_received"] == 2 and p["problem"] is None for p in others), others

    for process, port in cluster:
        wait_until(lambda port=port: metric_value(port, "replication_relays_per_row") == 2.0,
                   15, f"{process.name} to relay each of its rows to both peers",
                   alive=processes)
        assert metric_value(port, "replication_relayed_rows_total") == 4
        body = _status(port)
        assert [c["role"] for c in body["connections"]] == ["peer", "peer"]
        assert body["cluster"]["relays_per_row"] == 2.0

    _, port = cluster[0]
    result = subprocess.run(
        replication_command("status", "--url", f"http://{HOST}:{port}"),
        capture_output=True, text=True, timeout=60, check=True,
    )
    out = result.stdout
    assert "cluster: 3 peers; relays per row 2.00 (4 rows relayed, 2 published here)" in out
    assert out.count("self (this master)") == 1
    assert len([line for line in out.splitlines() if " connected " in line]) == 2
    assert f"{origins[0]} (this master)" in out
