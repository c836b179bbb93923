"""Authentication configuration: ``auth.credentials`` on a master, ``auth`` on a worker and
``cluster.auth`` for peer links; errors that name the key and line; secrets read from files
and the environment (never shown); ``check-config``'s warning about readable secret files;
the master refusing to start without a secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from replication.config import ConfigError, load_master_config, load_worker_config
from replication.config.model import AuthConfig, MasterConfig
from replication.credentials import (
    SecretError,
    client_credential,
    master_keyring,
    read_secret,
    secret_file_warnings,
    tool_credential,
)


def write(tmp: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def secret(tmp: Path, value: str = "s3cret", mode: int = 0o600) -> Path:
    path = tmp / "secret"
    path.write_text(value + "\n")
    os.chmod(path, mode)
    return path


def test_no_auth_section_means_no_authentication() -> None:
    assert MasterConfig().auth == AuthConfig() and not MasterConfig().auth.enabled
    assert master_keyring(MasterConfig()) is None


def test_credentials_are_read_with_their_permissions(tmp_path: Path) -> None:
    path = secret(tmp_path)
    config = load_master_config(write(tmp_path, (
        "auth:\n  credentials:\n"
        f"    w: {{secret_file: {path}, read: [events, '*'], status: true}}\n"
        "    p: {secret_env: P_SECRET, publish: [events], peer: true}\n"
    )))
    keyring = master_keyring(config, environ={"P_SECRET": " from-env "})
    assert keyring is not None and keyring.names() == ["p", "w"]
    w, p = keyring.get("w"), keyring.get("p")
    assert w is not None and p is not None
    assert w.secret == b"s3cret" and p.secret == b"from-env"
    assert w.permissions.may_read_all() and w.permissions.status and not w.permissions.peer
    assert p.permissions.may_publish("events") and p.permissions.peer
    assert not p.permissions.may_read("events")


@pytest.mark.parametrize("text, message", [
    ("auth:\n  credentials:\n    w: {read: [e]}\n",
     "c.yaml:3: auth.credentials.w: needs exactly one of secret_file"),
    ("auth:\n  credentials:\n    w: {secret_file: a, secret_env: B}\n",
     "auth.credentials.w: needs exactly one of secret_file"),
    ("auth:\n  credentials:\n    w: {secret_env: B, reads: [e]}\n",
     "auth.credentials.w.reads: unknown key 'reads'"),
    ("auth:\n  credentials:\n    w: {secret_env: B, read: e}\n",
     "auth.credentials.w.read: must be a list of stream names or '*'"),
    ("auth:\n  credentials:\n    w: {secret_env: B, read: ['bad name']}\n",
     "auth.credentials.w.read[0]"),
    ("auth:\n  credentials:\n    w: {secret_env: B, peer: 'yes'}\n",
     "auth.credentials.w.peer: must be true or false"),
    ("auth:\n  credentials:\n    'bad/name': {secret_env: B}\n",
     "a credential name must be 1 to 64 of"),
    ("cluster:\n  peers: [tcp:host=127.0.0.1:port=1]\n  auth: {credential: peers}\n",
     "cluster.auth: needs exactly one of secret_file"),
])
def test_master_config_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_master_config(write(tmp_path, text))
    assert message in str(error.value)


@pytest.mark.parametrize("text, message", [
    ("auth: {credential: w}\n", "auth: needs exactly one of secret_file"),
    ("auth: {secret_env: W}\n", "auth.secret_env: is only allowed with auth.credential"),
    ("auth: {secret_file: w}\n", "auth.secret_file: is only allowed with auth.credential"),
    ("auth: {credential: 'a b', secret_env: W}\n", "a credential name must be"),
])
def test_worker_config_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_worker_config(write(tmp_path, "master: tcp:host=127.0.0.1:port=1\n" + text))
    assert message in str(error.value)


def test_a_worker_credential_and_its_secret(tmp_path: Path) -> None:
    path = secret(tmp_path, "worker-secret")
    config = load_worker_config(write(tmp_path, (
        "master: tcp:host=127.0.0.1:port=1\n"
        f"auth: {{credential: w1, secret_file: {path}}}\n"
    )))
    credential = client_credential(config.auth)
    assert credential is not None and credential.name == "w1"
    assert credential.secret == b"worker-secret"
    assert "worker-secret" not in repr(credential) + repr(config)


def test_secrets_that_cannot_be_read_are_errors_that_never_show_a_secret(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="cannot read secret_file .*missing"):
        read_secret(str(tmp_path / "missing"), None, "auth")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SecretError, match="is empty"):
        read_secret(str(empty), None, "auth")
    with pytest.raises(SecretError, match="environment variable NOPE is not set"):
        read_secret(None, "NOPE", "auth", environ={})


def test_tool_credentials() -> None:
    credential = tool_credential("ops:abc:def")
    assert credential is not None and credential.name == "ops"
    assert credential.secret == b"abc:def"
    with pytest.raises(SecretError):
        tool_credential("no-secret")


def test_check_config_warns_about_a_secret_file_others_can_read(tmp_path: Path) -> None:
    path = secret(tmp_path, mode=0o644)
    config_path = write(tmp_path, (
        f"auth:\n  credentials:\n    w: {{secret_file: {path}, read: ['*']}}\n"
    ))
    config = load_master_config(config_path)
    assert secret_file_warnings(config) == [
        f"auth.credentials.w.secret_file: {path} may be read by others (mode 0644); "
        f"chmod 600 {path}"
    ]
    done = subprocess.run(
        [sys.executable, "-m", "replication", "check-config", str(config_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0
    assert "may be read by others" in done.stderr
    assert "valid master configuration" in done.stdout
    os.chmod(path, 0o600)
    assert secret_file_warnings(config) == []


def test_a_master_without_its_secret_refuses_to_start(tmp_path: Path) -> None:
    config_path = write(tmp_path, (
        "auth:\n  credentials:\n    w: {secret_env: REPLICATION_TEST_UNSET_SECRET}\n"
    ))
    env = {k: v for k, v in os.environ.items() if k != "REPLICATION_TEST_UNSET_SECRET"}
    done = subprocess.run(
        [sys.executable, "-m", "replication", "master", "--config", str(config_path),
         "--store", "memory", "--listen", "tcp:0:interface=127.0.0.1",
         "--http-listen", "none"],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )
    assert done.returncode != 0
    assert "auth.credentials.w: the environment variable REPLICATION_TEST_UNSET_SECRET" in (
        done.stderr
    )
