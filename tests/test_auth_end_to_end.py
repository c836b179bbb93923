"""Authentication end to end: a real master with credentials in a child process, real
workers with the right and a wrong secret, and the blocking publisher with and without a
credential. Everything listens on 127.0.0.1 with free ports; every wait has a deadline."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from processes import (
    HOST,
    Process,
    free_ports,
    metric_value,
    read_positions,
    replication_command,
    start_master,
    wait_until,
)
from replication.client import Publisher
from replication.client.core import PublishError, PublishRefused
from replication.wire.auth import ClientCredential


def secret_file(tmp: Path, name: str, secret: str) -> Path:
    path = tmp / f"{name}.secret"
    path.write_text(secret + "\n")
    os.chmod(path, 0o600)
    return path


def worker(tmp: Path, name: str, port: int, secret: str) -> Process:
    config = tmp / f"{name}.yaml"
    config.write_text(
        f"name: {name}\n"
        f"master: tcp:host={HOST}:port={port}\n"
        "streams: [events]\n"
        f"position_file: {tmp / (name + '.positions')}\n"
        "reconnect: {initial_delay: 0.1, max_delay: 0.3}\n"
        f"auth: {{credential: reader, secret_file: {secret_file(tmp, name, secret)}}}\n"
    )
    return Process(
        name, replication_command("worker", "--config", str(config)),
        stdout=tmp / f"{name}.out", stderr=tmp / f"{name}.err", cwd=tmp,
    ).start()


@pytest.mark.timeout(60)
def test_workers_and_publishers_need_the_right_secret(tmp_path: Path) -> None:
    port, http_port = free_ports(2)
    config = tmp_path / "master.yaml"
    config.write_text(
        "streams: [events]\n"
        "auth:\n"
        "  credentials:\n"
        f"    reader: {{secret_file: {secret_file(tmp_path, 'reader', 'r-secret')}, "
        "read: [events]}\n"
        "    pub: {secret_env: PUB_SECRET, publish: [events]}\n"
        "  open_routes: [/health, /metrics]\n"
    )
    os.environ["PUB_SECRET"] = "p-secret"
    try:
        master = start_master(tmp_path, "master", port, http_port, "--config", str(config))
    finally:
        del os.environ["PUB_SECRET"]
    # The good worker is connected (it handled token 1) before the bad one starts failing:
    # failures slow down every new connection from their address (127.0.0.1 for both), so
    # a good worker that connected after them would wait for the delay.
    with master, worker(tmp_path, "good", port, "r-secret") as good, Publisher(
        f"{HOST}:{port}", credential=ClientCredential("pub", b"p-secret"), timeout=10
    ) as publisher:
        token = publisher.publish("events", [{"n": 1}]).token
        wait_until(
            lambda: (read_positions(tmp_path / "good.positions") or {}).get("events") == 1,
            20, "the good worker at token 1", alive=[good],
        )
        bad = worker(tmp_path, "bad", port, "wrong")
        with bad:
            with pytest.raises(PublishRefused) as refused:
                publisher.publish("other", [{"n": 2}])
            assert refused.value.status == 403
            assert publisher.publish("events", [{"n": 3}]).token == token + 1
            wait_until(
                lambda: (read_positions(tmp_path / "good.positions") or {}).get("events") == 2,
                20, "the good worker at token 2", alive=[good],
            )
            wait_until(lambda: "authentication failed" in bad.stderr_text(), 20,
                       "the bad worker refused", alive=[bad])
            bad_stderr = bad.stderr_text()
        assert read_positions(tmp_path / "bad.positions") in (None, {})
        failures = metric_value(
            http_port, 'replication_auth_failures_total{transport="replication"}'
        )
        assert failures is not None and failures >= 1
        assert "r-secret" not in master.stderr_text() + bad_stderr
        assert "wrong" not in master.stderr_text()
        with pytest.raises(PublishError), Publisher(
            f"{HOST}:{port}", credential=ClientCredential("pub", b"nope"), timeout=3,
            connect_timeout=3, retry_for=0,
        ) as intruder:
            intruder.publish("events", [{"n": 4}])
        with pytest.raises(PublishError), Publisher(
            f"{HOST}:{port}", timeout=3, connect_timeout=3, retry_for=0,
        ) as anonymous:
            anonymous.publish("events", [{"n": 5}])


def tool(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        replication_command(*args), capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.timeout(90)
def test_the_tools_take_a_credential_from_an_option_or_the_environment(tmp_path: Path) -> None:
    port, http_port = free_ports(2)
    config = tmp_path / "master.yaml"
    config.write_text(
        "streams: [events]\n"
        "auth:\n"
        "  credentials:\n"
        "    ops: {secret_env: OPS_SECRET, read: ['*'], publish: [events], status: true}\n"
        "  open_routes: [/health, /metrics]\n"
    )
    os.environ["OPS_SECRET"] = "o-secret"
    try:
        master = start_master(tmp_path, "master", port, http_port, "--config", str(config))
    finally:
        del os.environ["OPS_SECRET"]
    url = f"http://{HOST}:{http_port}"
    with master:
        done = tool("publish", "events", '{"n":1}', "--url", url, "--credential", "ops:o-secret")
        assert (done.returncode, done.stdout.strip()) == (0, "1"), done.stderr
        done = tool("publish", "events", '{"n":2}', "--master", f"{HOST}:{port}",
                    env={"REPLICATION_CREDENTIAL": "ops:o-secret"})
        assert (done.returncode, done.stdout.strip()) == (0, "2"), done.stderr
        done = tool("status", "--url", url, "--json",
                    env={"REPLICATION_CREDENTIAL": "ops:o-secret"})
        assert done.returncode == 0 and '"streams"' in done.stdout, done.stderr
        done = tool("streams", "--url", url, "--json", "--credential", "ops:o-secret")
        assert done.returncode == 0 and "events" in done.stdout, done.stderr
        with Process("tail", replication_command(
            "tail", "events", "--from", "0", "--master", f"tcp:host={HOST}:port={port}",
            "--credential", "ops:o-secret",
        ), stdout=tmp_path / "tail.out", stderr=tmp_path / "tail.err") as tail_process:
            wait_until(lambda: (tmp_path / "tail.out").read_text().count("\n") >= 2, 20,
                       "tail printed both tokens", alive=[tail_process])
        # Without the credential: refused, and the master said why.
        done = tool("status", "--url", url)
        assert done.returncode != 0 and "401" in done.stderr
        assert "authentication required" in done.stderr
        done = tool("publish", "events", '{"n":3}', "--url", url, "--credential", "ops:nope")
        assert done.returncode == 1 and "publish refused (401)" in done.stderr
        assert "o-secret" not in master.stderr_text()
