"""Secrets of credentials, read from where the configuration says (a file or an environment
variable) when a process starts: the master's :class:`~replication.wire.auth.Keyring`, the
credential a worker, a peer link or a tool dials with, and ``check-config``'s warnings about
secret files others can read. A secret never appears in a message here."""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Mapping

from replication.config.model import ClientAuthConfig, MasterConfig, WorkerConfig
from replication.wire.auth import ClientCredential, Credential, Keyring, Permissions

#: The environment variable the CLI tools read a credential from (``<name>:<secret>`` or
#: ``<name>:@<file>``).
TOOL_CREDENTIAL_ENV = "REPLICATION_CREDENTIAL"


class SecretError(Exception):
    """A secret cannot be read: the message says which and why (never the secret)."""


def read_secret(
    secret_file: str | None, secret_env: str | None, what: str,
    environ: Mapping[str, str] | None = None,
) -> bytes:
    """The secret ``what`` names: the first line of ``secret_file`` (white space around it
    ignored), or the value of the environment variable ``secret_env``."""
    if secret_file is not None:
        try:
            with open(secret_file, "rb") as f:
                first = f.readline(65536)
        except OSError as e:
            raise SecretError(
                f"{what}: cannot read secret_file {secret_file}: {e.strerror}"
            ) from None
        secret = first.strip()
        if not secret:
            raise SecretError(f"{what}: secret_file {secret_file} is empty")
        return secret
    if secret_env is None:
        raise SecretError(f"{what}: no secret_file or secret_env")
    value = (os.environ if environ is None else environ).get(secret_env, "").strip()
    if not value:
        raise SecretError(f"{what}: the environment variable {secret_env} is not set or empty")
    return value.encode()


def master_keyring(
    config: MasterConfig, environ: Mapping[str, str] | None = None
) -> Keyring | None:
    """The master's credentials with their secrets; ``None`` without ``auth.credentials``."""
    if not config.auth.enabled:
        return None
    credentials = []
    for name, spec in config.auth.credentials.items():
        secret = read_secret(
            spec.secret_file, spec.secret_env, f"auth.credentials.{name}", environ
        )
        permissions = Permissions(
            frozenset(spec.read), frozenset(spec.publish), peer=spec.peer, status=spec.status
        )
        credentials.append(Credential(name, secret, permissions))
    return Keyring(credentials)


def client_credential(
    auth: ClientAuthConfig, section: str = "auth", environ: Mapping[str, str] | None = None
) -> ClientCredential | None:
    """The credential an end dials with; ``None`` when ``auth.credential`` is not set."""
    if auth.credential is None:
        return None
    secret = read_secret(auth.secret_file, auth.secret_env, section, environ)
    return ClientCredential(auth.credential, secret)


def tool_credential(text: str | None) -> ClientCredential | None:
    """A tool's ``--credential`` (or :data:`TOOL_CREDENTIAL_ENV`): ``<name>:<secret>``, or
    ``<name>:@<file>`` for a secret in a file."""
    if text is None:
        text = os.environ.get(TOOL_CREDENTIAL_ENV)
    if not text:
        return None
    name, sep, secret = text.partition(":")
    if not sep or not name or not secret:
        raise SecretError(
            "a credential reads <name>:<secret> or <name>:@<file> (the secret file's first line)"
        )
    if secret.startswith("@"):
        return ClientCredential(name, read_secret(secret[1:], None, f"credential {name}"))
    return ClientCredential(name, secret.encode())


def secret_files(config: MasterConfig | WorkerConfig) -> list[tuple[str, str]]:
    """Every ``(key path, secret file)`` of ``config``."""
    found: list[tuple[str, str]] = []
    if isinstance(config, MasterConfig):
        for name, spec in config.auth.credentials.items():
            if spec.secret_file is not None:
                found.append((f"auth.credentials.{name}.secret_file", spec.secret_file))
        if config.cluster.auth.secret_file is not None:
            found.append(("cluster.auth.secret_file", config.cluster.auth.secret_file))
    elif config.auth.secret_file is not None:
        found.append(("auth.secret_file", config.auth.secret_file))
    return found


def secret_file_warnings(config: MasterConfig | WorkerConfig) -> list[str]:
    """What ``check-config`` warns about: secret files others may read, or that are
    missing."""
    warnings = []
    for path, name in secret_files(config):
        try:
            mode = os.stat(name).st_mode
        except OSError as e:
            warnings.append(f"{path}: cannot read {name}: {e.strerror}")
            continue
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.append(
                f"{path}: {name} may be read by others (mode {stat.S_IMODE(mode):04o}); "
                f"chmod 600 {name}"
            )
    return warnings


def _reaches_beyond_loopback(description: str) -> bool:
    """Whether the server endpoint string ``description`` listens beyond the loopback
    interface: a TCP or TLS endpoint without ``interface=``, or with a non-loopback one.
    Unix sockets and unknown kinds are taken as local (they are not network listeners)."""
    parts = re.split(r"(?<!\\):", description)
    kind = parts[0].lower() if len(parts) > 1 else "tcp"
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    interface = None
    for part in parts[1:]:
        if part.startswith("interface="):
            interface = part[len("interface="):].replace("\\", "")
    if not interface:
        return True
    if interface == "localhost":
        return False
    try:
        return not ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return True  # a host name or anything else: assume it is reachable


def protected_mode_refusal(config: MasterConfig) -> str | None:
    """Why a master must not start (protected mode), or ``None``: a master whose replication
    or HTTP listener reaches beyond the loopback interface needs ``auth.credentials``, or
    ``auth.open: true`` to say that it should run open."""
    if config.auth.enabled or config.auth.open:
        return None
    exposed = [
        f"{key} {value}" for key, value in (("listen", config.listen),
                                            ("http.listen", config.http_listen))
        if value is not None and _reaches_beyond_loopback(value)
    ]
    if not exposed:
        return None
    return (
        f"refusing to start in protected mode: {' and '.join(exposed)} listen(s) beyond the "
        "loopback interface and no authentication is configured, so anyone who can reach "
        "them could read and publish every stream. Either configure credentials "
        "(auth.credentials, see docs/security.rst), or bind the listeners to 127.0.0.1 "
        "(interface=127.0.0.1), or say explicitly that this master runs open with "
        "'auth: {open: true}'"
    )


__all__ = [
    "TOOL_CREDENTIAL_ENV", "SecretError", "client_credential", "master_keyring",
    "protected_mode_refusal", "read_secret", "secret_file_warnings", "secret_files",
    "tool_credential",
]
