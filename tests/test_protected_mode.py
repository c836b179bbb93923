"""Protected mode: a master whose listeners reach beyond the loopback interface refuses to
start without credentials unless ``auth.open`` says it runs open; loopback and Unix socket
listeners start as before."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from replication.config import MasterConfig
from replication.config.model import AuthConfig, CredentialSpec
from replication.credentials import protected_mode_refusal

LOOPBACK = "tcp:9092:interface=127.0.0.1"


def config(listen: str = LOOPBACK, http: str | None = None, **auth: object) -> MasterConfig:
    return dataclasses.replace(
        MasterConfig(), listen=listen,
        http_listen="tcp:9093:interface=127.0.0.1" if http is None else http,
        auth=AuthConfig(**auth),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("listen", [
    LOOPBACK, "tcp:9092:interface=localhost", "tcp6:9092:interface=\\:\\:1",
    "tcp:9092:interface=127.0.0.2", "unix:/tmp/replication.sock",
])
def test_loopback_and_unix_listeners_start_without_credentials(listen: str) -> None:
    assert protected_mode_refusal(config(listen)) is None


@pytest.mark.parametrize("listen, http", [
    ("tcp:9092", None), ("tcp:9092:interface=0.0.0.0", None),
    ("tcp:9092:interface=10.0.0.5", None), (LOOPBACK, "tcp:9093"),
    ("ssl:9092:privateKey=k.pem:certKey=c.pem", None),
    ("tcp:9092:interface=master.example.net", None),
])
def test_listeners_beyond_loopback_need_credentials_or_open(listen: str, http: str | None) -> None:
    refusal = protected_mode_refusal(config(listen, http))
    assert refusal is not None and refusal.startswith("refusing to start in protected mode")
    assert "auth.credentials" in refusal and "auth: {open: true}" in refusal
    assert protected_mode_refusal(config(listen, http, open=True)) is None
    spec = CredentialSpec("w", secret_env="X", read=("*",))
    assert protected_mode_refusal(config(listen, http, credentials={"w": spec})) is None


def test_the_master_command_refuses_to_start_and_says_how_to_fix_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "replication", "master", "--store", "memory",
         "--listen", "tcp:0", "--http-listen", "none"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "refusing to start in protected mode: listen tcp:0" in done.stderr
    assert "auth: {open: true}" in done.stderr
