"""Authentication: named credentials, their permissions, the challenge-response proofs, and
the per-address delay after failures. Pure: nothing here imports Twisted or reads a clock.

The exchange (protocol version 2; see docs/protocol.rst, "Authentication", and
docs/security.rst) runs in the session (:mod:`replication.wire.session`) between the version
agreement and ``READY``::

    master: CHALLENGE <master nonce>
    client: AUTH <credential> <client nonce> <client proof>
    master: AUTH_OK <master proof>

Each proof is HMAC-SHA256, keyed with the credential's secret, over a label saying who
proves (``client`` or ``master``), both nonces, the credential's name and both ends' names
(:func:`proof`). The secret never crosses the wire; a proof is good for one pair of nonces
only, so a recorded ``AUTH`` line is worth nothing on another connection (the master's
nonce differs), and the master's answer proves to the client that the master holds the
secret too. Proofs are compared with :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

#: Random bytes in a nonce (sent as twice as many hex digits).
NONCE_BYTES: Final = 16
#: What a credential name may be (it travels in ``AUTH`` and in logs).
CREDENTIAL_NAME: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
#: ``*``: every stream.
EVERY_STREAM: Final = "*"
#: The ``ERROR`` text of every failed authentication (it says nothing more, on purpose).
AUTH_FAILED: Final = "authentication failed"

_HEX = re.compile(r"[0-9a-f]{32}")
_PROOF = re.compile(r"[0-9a-f]{64}")
#: The key a proof is computed with when the credential is unknown: the answer takes as long.
_UNKNOWN: Final = secrets.token_bytes(32)


def new_nonce() -> str:
    """A fresh random nonce, as hex."""
    return secrets.token_hex(NONCE_BYTES)


def is_nonce(text: str) -> bool:
    """Whether ``text`` is a well-formed nonce (lower-case hex, :data:`NONCE_BYTES` bytes)."""
    return _HEX.fullmatch(text) is not None


def is_proof(text: str) -> bool:
    """Whether ``text`` is a well-formed proof (lower-case hex of 32 bytes)."""
    return _PROOF.fullmatch(text) is not None


def proof(
    secret: bytes,
    who: str,
    *,
    credential: str,
    master_name: str,
    client_name: str,
    master_nonce: str,
    client_nonce: str,
) -> str:
    """The proof ``who`` (``"client"`` or ``"master"``) sends: HMAC-SHA256 keyed with
    ``secret`` over ``replication-auth-v2``, ``who``, both nonces, the credential and both
    names, one per line; as lower-case hex."""
    if who not in ("client", "master"):
        raise ValueError("who must be 'client' or 'master'")
    message = "\n".join((
        "replication-auth-v2", who, master_nonce, client_nonce, credential, master_name,
        client_name,
    )).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def same(expected: str, got: str) -> bool:
    """Constant-time comparison of two proofs."""
    return hmac.compare_digest(expected.encode(), got.encode())


@dataclass(frozen=True, slots=True)
class Permissions:
    """What a credential may do. Stream sets hold names, or ``*`` for every stream."""

    read: frozenset[str] = frozenset()
    publish: frozenset[str] = frozenset()
    peer: bool = False
    status: bool = False

    def may_read(self, stream: str) -> bool:
        """Whether ``stream`` may be followed (``REPLICATE``, ``tail``)."""
        return EVERY_STREAM in self.read or stream in self.read

    def may_read_all(self) -> bool:
        """Whether every stream may be followed (``REPLICATE ALL``)."""
        return EVERY_STREAM in self.read

    def may_publish(self, stream: str) -> bool:
        """Whether rows may be published to ``stream``."""
        return EVERY_STREAM in self.publish or stream in self.publish


#: Everything: the identity of a connection when no authentication is configured.
ALL_PERMISSIONS: Final = Permissions(
    frozenset({EVERY_STREAM}), frozenset({EVERY_STREAM}), peer=True, status=True
)


@dataclass(frozen=True, slots=True)
class Credential:
    """One named credential: its secret (never shown by ``repr``) and its permissions."""

    name: str
    secret: bytes = field(repr=False)
    permissions: Permissions = Permissions()


@dataclass(frozen=True, slots=True)
class ClientCredential:
    """What a worker, peer link or publisher authenticates with."""

    name: str
    secret: bytes = field(repr=False)


class Keyring:
    """The master's credentials by name."""

    def __init__(self, credentials: Iterable[Credential]) -> None:
        self._by_name: dict[str, Credential] = {}
        for credential in credentials:
            if credential.name in self._by_name:
                raise ValueError(f"credential {credential.name!r} is defined twice")
            self._by_name[credential.name] = credential

    def get(self, name: str) -> Credential | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def check_token(self, token: str) -> Credential | None:
        """The credential an HTTP bearer token ``<name>:<secret>`` names, if the secret is
        right (compared in constant time); ``None`` otherwise."""
        name, sep, secret = token.partition(":")
        credential = self._by_name.get(name) if sep else None
        expected = _UNKNOWN if credential is None else credential.secret
        good = hmac.compare_digest(expected, secret.encode())
        return credential if good and credential is not None else None

    def verify(
        self, credential: str, got: str, *, master_name: str, client_name: str,
        master_nonce: str, client_nonce: str,
    ) -> Credential | None:
        """The credential if ``got`` is its client proof for these nonces and names."""
        found = self._by_name.get(credential)
        secret = _UNKNOWN if found is None else found.secret
        expected = proof(
            secret, "client", credential=credential, master_name=master_name,
            client_name=client_name, master_nonce=master_nonce, client_nonce=client_nonce,
        )
        return found if same(expected, got) and found is not None else None


class FailureDelays:
    """Repeated authentication failures from one address are slowed down.

    After ``n`` failures in a row from an address, its next attempt is refused until
    ``min(base * 2 ** (n - 1), maximum)`` seconds after the last failure. The table is
    bounded (``max_addresses``; the address least recently failed is forgotten first), and
    an address forgets its failures ``forget_after`` seconds after the last one, or at a
    success. Pure: time is passed in.
    """

    def __init__(
        self, *, base: float = 1.0, maximum: float = 60.0, forget_after: float = 600.0,
        max_addresses: int = 10_000,
    ) -> None:
        self.base = base
        self.maximum = maximum
        self.forget_after = forget_after
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def wait(self, address: str, now: float) -> float:
        """Seconds ``address`` must still wait before it may try again (0: it may)."""
        entry = self._failures.get(address)
        if entry is None:
            return 0.0
        count, last = entry
        if now - last >= self.forget_after:
            del self._failures[address]
            return 0.0
        return max(0.0, last + self.delay(count) - now)

    def delay(self, count: int) -> float:
        """The delay after ``count`` failures in a row."""
        if count <= 0:
            return 0.0
        return float(min(self.base * 2 ** min(count - 1, 32), self.maximum))

    def failed(self, address: str, now: float) -> float:
        """Record a failure; returns the delay the address now has."""
        count, last = self._failures.pop(address, (0, now))
        if now - last >= self.forget_after:
            count = 0
        count += 1
        self._failures[address] = (count, now)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)
        return self.delay(count)

    def succeeded(self, address: str) -> None:
        """A success forgets the address's failures."""
        self._failures.pop(address, None)


#: How a master finds a credential's secret and checks a proof: a :class:`Keyring`.
Verifier = Keyring
#: A source of nonces (tests pass fixed ones).
NonceSource = Callable[[], str]


def permissions_of(keyring: Keyring | None, credential: str | None) -> Permissions:
    """The permissions of a connection: everything without a keyring, else its credential's
    (nothing for an unknown name)."""
    if keyring is None:
        return ALL_PERMISSIONS
    found = keyring.get(credential) if credential is not None else None
    return Permissions() if found is None else found.permissions


__all__ = [
    "ALL_PERMISSIONS", "AUTH_FAILED", "CREDENTIAL_NAME", "EVERY_STREAM", "NONCE_BYTES",
    "ClientCredential", "Credential", "FailureDelays", "Keyring", "NonceSource", "Permissions",
    "Verifier", "is_nonce", "is_proof", "new_nonce", "permissions_of", "proof", "same",
]
