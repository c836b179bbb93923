"""Who a master is: its durable **origin id**, its per-process **fingerprint**, and how a
master recognises itself among the peers it was told to dial.

- The **origin id** names the rows a master accepted, for every other master and worker. It
  is created with the master's store and kept in it (:attr:`StreamStore.origin_id
  <replication.store.StreamStore.origin_id>`), so it survives restarts; a new or wiped store
  is a new origin. Inside its own store a master still calls itself the local origin ``""``
  (:data:`~replication.store.LOCAL_ORIGIN`): the id is what the others call it.
- The **fingerprint** is random at every start of the master process and never stored. It
  tells two processes apart that claim the same origin id.

Both are strings of the URL-safe base64 alphabet (``A-Z a-z 0-9 - _``), 16 to 64
characters long: :data:`ID_PATTERN` is the one definition, :func:`check_origin_id` and
:func:`check_fingerprint` apply it. New origin ids have 22 characters (128 random bits from
:mod:`secrets`), new fingerprints 16 (96 bits), like Aphlict's 16-character fingerprints.

:func:`recognise` is the self-detection that Aphlict and NATS routes do at the end of a
handshake: every master lists every master, itself included, and learns which entry is
itself when the peer it dialled announces its own identity. Pure: no reactor, no I/O.
"""

from __future__ import annotations

import enum
import re
import secrets
from dataclasses import dataclass

#: What an origin id and a fingerprint look like: 16 to 64 URL-safe base64 characters.
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,64}")

#: Random bytes in a new origin id (22 characters) and in a new fingerprint (16 characters).
ORIGIN_ID_BYTES = 16
FINGERPRINT_BYTES = 12


class IdentityError(ValueError):
    """An origin id or fingerprint that does not match :data:`ID_PATTERN`; the message says
    which and what was wrong."""


def _check(what: str, value: object) -> str:
    if not isinstance(value, str) or ID_PATTERN.fullmatch(value) is None:
        raise IdentityError(
            f"{what} {value!r} is malformed: expected 16 to 64 characters of A-Z, a-z, 0-9, "
            "'-' and '_'"
        )
    return value


def check_origin_id(value: object) -> str:
    """``value`` if it is a well-formed origin id, else raise :class:`IdentityError`."""
    return _check("origin id", value)


def check_fingerprint(value: object) -> str:
    """``value`` if it is a well-formed fingerprint, else raise :class:`IdentityError`."""
    return _check("fingerprint", value)


def new_origin_id() -> str:
    """A new random origin id: for a store being created, never for one that exists."""
    return secrets.token_urlsafe(ORIGIN_ID_BYTES)


def new_fingerprint() -> str:
    """A new random fingerprint: one per master process, at its start."""
    return secrets.token_urlsafe(FINGERPRINT_BYTES)


@dataclass(frozen=True, slots=True)
class Identity:
    """A master process as others see it: the origin id of its store and the fingerprint of
    this run. Both are checked when the identity is built."""

    origin_id: str
    fingerprint: str

    def __post_init__(self) -> None:
        check_origin_id(self.origin_id)
        check_fingerprint(self.fingerprint)


class Recognition(enum.Enum):
    """What the identity a dialled peer announced says about that entry of the peer list."""

    #: The entry is this very process: stop dialling it and show it as ``self``.
    SELF = "self"
    #: Another master: keep the link.
    PEER = "peer"
    #: Another process that claims one half of our identity (two processes on one store, or
    #: a copied store file): refuse the link, loudly; rows of two histories must never be
    #: mixed under one origin id.
    CONFLICT = "conflict"


def recognise(ours: Identity, announced: Identity) -> Recognition:
    """Decide what the peer that ``announced`` its identity at the end of a handshake is to
    the master whose identity is ``ours``.

    - the same origin id and the same fingerprint: :attr:`Recognition.SELF` (we dialled
      ourselves);
    - a different origin id and a different fingerprint: :attr:`Recognition.PEER`;
    - the same origin id with a different fingerprint: :attr:`Recognition.CONFLICT` (another
      process runs on our store, or on a copy of it). Our fingerprint with a different
      origin id cannot happen by chance (96 random bits) and is a conflict too.
    """
    same_origin = announced.origin_id == ours.origin_id
    same_process = announced.fingerprint == ours.fingerprint
    if same_origin and same_process:
        return Recognition.SELF
    if not same_origin and not same_process:
        return Recognition.PEER
    return Recognition.CONFLICT


def conflict_reason(ours: Identity, announced: Identity) -> str:
    """What to tell the operator about a :attr:`Recognition.CONFLICT`, naming both
    identities."""
    if announced.origin_id == ours.origin_id:
        return (
            f"a peer announced our origin id {ours.origin_id} with fingerprint "
            f"{announced.fingerprint}, but this process is {ours.fingerprint}: two masters "
            "run on one store, or one store file was copied; refusing the link (give each "
            "master its own store)"
        )
    return (
        f"a peer announced our fingerprint {ours.fingerprint} with origin id "
        f"{announced.origin_id}, but our origin id is {ours.origin_id}; refusing the link"
    )


__all__ = [
    "FINGERPRINT_BYTES",
    "ID_PATTERN",
    "ORIGIN_ID_BYTES",
    "Identity",
    "IdentityError",
    "Recognition",
    "check_fingerprint",
    "check_origin_id",
    "conflict_reason",
    "new_fingerprint",
    "new_origin_id",
    "recognise",
]
