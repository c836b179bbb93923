"""What every publisher client shares, without I/O: the result and exception types, endpoint
parsing, and :class:`PublisherCore`, the sans-IO state of one publisher connection (the
lines it sends, and what the master's lines mean).

The clients (:mod:`replication.client.blocking`, :mod:`replication.client.twisted_client`,
:mod:`replication.client.asyncio_client`) feed the core the bytes they read and write the
bytes it gives them; it keeps the publishes in flight in order and matches each answer
(``PUBLISHED``/``REFUSED``) to the oldest one, as the protocol answers in order
(docs/protocol.rst, "Publishing"). Nothing here imports Twisted or asyncio.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final, Generic, NamedTuple, TypeVar

from replication.wire.auth import ClientCredential, new_nonce, proof, same

_orjson: ModuleType | None
try:  # optional: the faster encoder
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is optional
    _orjson = None

__all__ = [
    "Built",
    "ClientSettings",
    "MasterUnreachable",
    "PublishError",
    "PublishRefused",
    "PublishTimeout",
    "Published",
    "PublisherCore",
    "ProtocolViolation",
    "default_name",
    "encode_rows",
    "key_prefix",
    "lost_in_flight",
    "new_core",
    "parse_endpoint",
    "restarted_in_flight",
]

#: The protocol version publishers speak.
VERSION: Final = 2

_TCP_KEYWORDS = re.compile(r"tcp:(.*)")


class PublishError(Exception):
    """Base of the publisher clients' errors."""


class PublishRefused(PublishError):
    """The master refused the publish; nothing of it was stored. ``status`` is the HTTP
    status of the same refusal over HTTP (400 bad input, 403 too many streams, 404 unknown
    stream, 409 key reused for another stream, 413 too large, 503 unavailable: retry)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message


class MasterUnreachable(PublishError):
    """No master could be reached (or the one holding this publish's fate went away).
    ``maybe_committed`` is true when the publish was sent and its answer lost: it may have
    been committed; publish again with the same ``key`` to find out without storing it
    twice."""

    def __init__(self, message: str, *, maybe_committed: bool = False,
                 key: str | None = None) -> None:
        super().__init__(message)
        self.maybe_committed = maybe_committed
        self.key = key


def lost_in_flight(endpoint: object, retry_for: float, key: str | None) -> MasterUnreachable:
    """What a publish in flight is failed with when its master went away and did not come
    back within ``retry_for`` seconds (it may have been committed there)."""
    return MasterUnreachable(
        f"master {endpoint} went away with this publish in flight and did not come back "
        f"within {retry_for:g}s; it may have been committed: publish again with "
        f"key={key!r} to find out",
        maybe_committed=True, key=key,
    )


def restarted_in_flight(endpoint: object, key: str | None) -> MasterUnreachable:
    """What a publish in flight is failed with when its master came back as a new process
    (another fingerprint) that does not keep keys across restarts (no ``keys=kept``): it
    does not remember the keys of the old one, so sending the publish again could store it
    twice."""
    return MasterUnreachable(
        f"master {endpoint} restarted with this publish in flight and does not keep "
        "idempotency keys across restarts (its store is not durable); the publish may have "
        "been committed before the restart, so it was not sent again: find out whether your "
        f"workers got it before publishing it again (key={key!r})",
        maybe_committed=True, key=key,
    )


class PublishTimeout(PublishError):
    """No answer within the timeout. The publish may still be committed: publish again with
    the same ``key`` to find out without storing it twice."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ProtocolViolation(PublishError):
    """The master sent something a publisher cannot take (or ``ERROR``)."""


@dataclass(frozen=True, slots=True)
class Published:
    """A committed publish: ``stream``, its ``tokens`` (one, or several for a multi-token
    publish, consecutive) and the ``origin`` that counts them (the master's origin id).

    ``token`` is the (last) token; ``int(result)`` is the same. On one master the token is
    all a reader needs; in a cluster a token means something only with its origin, and
    ``position`` gives both as ``"<origin>:<token>"``, the form of a position vector entry.
    """

    stream: str
    tokens: tuple[int, ...]
    origin: str

    @property
    def token(self) -> int:
        return self.tokens[-1]

    @property
    def position(self) -> str:
        return f"{self.origin}:{self.token}"

    def __int__(self) -> int:
        return self.tokens[-1]


#: What builds a :class:`Published` without its ``__init__``: ``object.__new__`` and the
#: setters of its slots.
_PUBLISHED_SLOTS: Final = (
    object.__new__,
    Published.__dict__["stream"].__set__,
    Published.__dict__["tokens"].__set__,
    Published.__dict__["origin"].__set__,
)


def parse_endpoint(text: str) -> tuple[str, int]:
    """``(host, port)`` of a master's replication endpoint: ``host:port``, ``tcp:host:port``
    or Twisted's ``tcp:host=<host>:port=<port>``. (The Twisted client takes any client
    endpoint string, TLS included.)"""
    match = _TCP_KEYWORDS.fullmatch(text)
    body = match.group(1) if match else text
    if "=" in body:
        fields = dict(part.split("=", 1) for part in body.split(":") if "=" in part)
        host, port = fields.get("host"), fields.get("port")
    else:
        host, _, port = body.rpartition(":")
    if not host or not port or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"invalid master endpoint {text!r}: use host:port or tcp:host:port"
        )
    return host.strip("[]"), int(port)


T = TypeVar("T")


class Built(NamedTuple):
    """Publishes :meth:`PublisherCore.publish_lines` built: per publish its key, its line
    and its index in that line (-1: the line is its own ``PUBLISH``; else it is element
    ``index`` of a ``PUBLISH_BATCH``), and ``out``, every line once, to send."""

    keys: list[str | None]
    lines: list[bytes]
    indexes: list[int]
    out: bytes


class _InFlight(Generic[T]):
    """One publish sent and not yet answered, with the fingerprint of the master process it
    was sent to (what ``ORIGIN`` said)."""

    __slots__ = ("fingerprint", "index", "key", "line", "many", "stream", "waiter")

    def __init__(
        self, stream: str, line: bytes, key: str | None, many: bool, waiter: T,
        fingerprint: str | None = None, index: int = -1,
    ) -> None:
        self.stream = stream
        #: The publish's line, or (``index`` >= 0) the ``PUBLISH_BATCH`` line it is element
        #: ``index`` of.
        self.line = line
        self.key = key
        self.many = many
        self.waiter = waiter
        self.fingerprint = fingerprint
        self.index = index


_strict = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _strict_dumps(value: Any) -> bytes:
    return _strict.encode(value).encode("utf-8")


def _holds_nan(value: Any) -> bool:
    """Whether ``value``, which orjson encoded (writing NaN and infinities as ``null``),
    holds a float JSON cannot carry: the standard library's strict encoder says."""
    try:
        _strict.encode(value)
    except ValueError:
        return True
    return False


def encode_rows(value: Any) -> bytes:
    """Compact JSON of rows; ``TypeError``/``ValueError`` for what JSON cannot carry (NaN
    and infinities included). orjson, when installed, does the work; it writes NaN as
    ``null``, so output holding ``null`` is checked by the standard library's strict
    encoder."""
    if _orjson is None:
        return _strict_dumps(value)
    try:
        data: bytes = _orjson.dumps(value)
    except TypeError:
        return _strict_dumps(value)  # e.g. integers beyond 64 bits; raises what JSON refuses
    if b"null" in data:
        return _strict_dumps(value)
    return data


class PublisherCore(Generic[T]):
    """One publisher connection's state, sans I/O.

    :param name: what the publisher calls itself (``NAME``).
    :param keys: the prefix of the idempotency keys made for publishes without one
        (``None``: publishes carry a key only when given one).
    :param credential: what the publisher authenticates with (``None``: nothing; a master
        that asks is then refused, as one that does not ask when a credential is given).
        With one, ``PUBLISHER`` is sent once the master proved the secret back; what
        :meth:`feed` leaves to send meanwhile is in :meth:`take_output`.

    ``hello()`` is what to send first; ``publish_line()`` builds a publish and
    ``sent(...)`` records it as in flight with a waiter (whatever the client completes:
    a future, a Deferred); ``feed(data)`` takes bytes read and returns the completed
    ``(waiter, result or exception)`` pairs, in order. ``origin`` and the master's limits
    are known once the handshake lines arrived (``ready``).
    """

    def __init__(
        self, name: str, keys: str | None = None, credential: ClientCredential | None = None
    ) -> None:
        self.name = name
        self.credential = credential
        self._output = b""
        self._nonces: tuple[str, str] | None = None
        self._keys = keys
        self._key_counter = itertools.count(1)
        self._ids = itertools.count(1)
        self.in_flight: deque[_InFlight[T]] = deque()
        self._buffer = b""
        self.server_name: str | None = None
        self.origin: str | None = None
        #: The fingerprint of the master process connected to (random at each start of a
        #: master, from its ``ORIGIN`` line): a new one after a drop means it restarted.
        self.fingerprint: str | None = None
        #: Whether the master connected to keeps idempotency keys across its restarts
        #: (``keys=kept`` in ``PUBLISHING``: the SQLite and PostgreSQL stores).
        self.keys_kept = False
        #: Whether the master takes ``PUBLISH_BATCH`` (``batch`` in ``PUBLISHING``).
        self.batch = False
        self.max_in_flight = 1024
        self.max_line_bytes = 65536
        self.ready = False

    def hello(self) -> bytes:
        if self.credential is not None:
            return f"NAME {self.name}\nVERSION {VERSION}\n".encode()
        return f"NAME {self.name}\nVERSION {VERSION}\nPUBLISHER\n".encode()

    def take_output(self) -> bytes:
        """What the handshake needs sent now (``AUTH``, then ``PUBLISHER``), once."""
        out, self._output = self._output, b""
        return out

    def _challenged(self, master_nonce: str) -> None:
        credential = self.credential
        if credential is None:
            raise ProtocolViolation(
                "the master requires authentication: give the publisher a credential"
            )
        if self.server_name is None or self._nonces is not None:
            raise ProtocolViolation("unexpected CHALLENGE from the master")
        nonce = new_nonce()
        self._nonces = (master_nonce, nonce)
        client = proof(credential.secret, "client", credential=credential.name,
                       master_name=self.server_name, client_name=self.name,
                       master_nonce=master_nonce, client_nonce=nonce)
        self._output += f"AUTH {credential.name} {nonce} {client}\n".encode()

    def _accepted(self, master_proof: str) -> None:
        credential = self.credential
        if credential is None or self._nonces is None or self.server_name is None:
            raise ProtocolViolation("unexpected AUTH_OK from the master")
        expected = proof(credential.secret, "master", credential=credential.name,
                         master_name=self.server_name, client_name=self.name,
                         master_nonce=self._nonces[0], client_nonce=self._nonces[1])
        if not same(expected, master_proof):
            raise ProtocolViolation(
                "authentication failed: the master did not prove the credential's secret"
            )
        self._output += b"PUBLISHER\n"

    def new_key(self) -> str | None:
        if self._keys is None:
            return None
        return f"{self._keys}-{next(self._key_counter)}"

    def publish_line(
        self, stream: str, rows: Any, key: str | None, many: bool
    ) -> bytes:
        """The line of a publish (with its ``\\n``); raises :class:`PublishRefused` (400,
        413) for rows JSON cannot carry or a line past the master's limit, before anything
        is sent."""
        if not isinstance(stream, str) or not stream or " " in stream or "\n" in stream:
            raise PublishRefused(400, f"invalid stream name {stream!r}")
        if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
            raise PublishRefused(400, "rows must be a list of JSON values")
        try:
            payload = encode_rows(list(rows) if not isinstance(rows, list) else rows)
        except (TypeError, ValueError) as e:
            raise PublishRefused(400, f"rows are not JSON-serialisable: {e}") from None
        command = b"PUBLISH_TOKENS " if many else b"PUBLISH "
        key_field = b"" if key is None else b" key=" + key.encode()
        line = (command + str(next(self._ids)).encode() + b" " + stream.encode() + key_field
                + b" " + payload + b"\n")
        if len(line) - 1 > self.max_line_bytes:
            raise PublishRefused(
                413,
                f"the publish is {len(line) - 1} bytes on the wire, over the master's line "
                f"limit of {self.max_line_bytes} (limits.max_line_bytes): publish fewer rows "
                "at a time",
            )
        return line

    def publish_lines(self, stream: str, batches: Sequence[Any]) -> Built | None:
        """:meth:`publish_line` of each of ``batches`` (one token each) with a new key,
        built together: ``PUBLISH_BATCH`` lines when the master takes them (``batch``),
        else one ``PUBLISH`` line each. ``None`` when any of them needs
        :meth:`publish_line` one by one (which also words what is wrong)."""
        if (
            _orjson is None
            or not isinstance(stream, str) or not stream or " " in stream or "\n" in stream
            or not all(type(rows) is list for rows in batches)
        ):
            return None
        if self.batch and self.ready and batches:
            return self._batch_lines(stream, batches)
        dumps = _orjson.dumps
        try:
            payloads = [dumps(rows) for rows in batches]
        except TypeError:
            return None
        if b"null" in b"".join(payloads) and _holds_nan(batches):
            return None  # publish_line words the refusal
        n = len(payloads)
        first = next(self._ids)
        self._ids = itertools.count(first + n)
        name = stream.encode()
        keys: list[str | None]
        if self._keys is None:
            keys = [None] * n
            lines = [b"PUBLISH %d %s %s\n" % (first + i, name, payload)
                     for i, payload in enumerate(payloads)]
        else:
            k = next(self._key_counter)
            self._key_counter = itertools.count(k + n)
            prefix = self._keys
            keys = [f"{prefix}-{k + i}" for i in range(n)]
            start = b"key=" + prefix.encode() + b"-"
            lines = [b"PUBLISH %d %s %s%d %s\n" % (first + i, name, start, k + i, payload)
                     for i, payload in enumerate(payloads)]
        if n and max(map(len, lines)) - 1 > self.max_line_bytes:
            return None
        return Built(keys, lines, [-1] * n, b"".join(lines))

    def _batch_lines(self, stream: str, batches: Sequence[list[Any]]) -> Built | None:
        """:meth:`publish_lines` as ``PUBLISH_BATCH`` lines: as few as the master's line
        limit and in-flight limit allow, the JSON of the rows encoded once per line."""
        assert _orjson is not None
        n = len(batches)
        name = stream.encode()
        prefix = self._keys
        first_id = next(self._ids)
        self._ids = itertools.count(first_id + n)
        first_key = 0
        if prefix is not None:
            first_key = next(self._key_counter)
            self._key_counter = itertools.count(first_key + n)
        limit = self.max_line_bytes
        # The longest head a line of this call can have, so that a line's JSON may take
        # the rest.
        head_room = limit - len(b"PUBLISH_BATCH %d %d %s keys=%s-%d \n" % (
            first_id + n, n, name, (prefix or "").encode(), first_key + n))
        per_line = max(1, min(self.max_in_flight, n))
        chunks: list[tuple[int, int, bytes]] = []
        todo = [(i, min(i + per_line, n)) for i in range(0, n, per_line)]
        dumps = _orjson.dumps
        while todo:
            start, end = todo.pop()
            try:
                payload = dumps(batches[start:end] if start or end < n else batches)
            except TypeError:
                return None
            if len(payload) <= head_room:
                chunks.append((start, end, payload))
            elif end - start == 1:
                return None  # one publish over the limit: publish_line words the 413
            else:
                # Split in the proportion the limit takes of the payload, at least in two.
                part = max(1, min(end - start - 1,
                                  (end - start) * head_room // len(payload) - 1))
                todo.append((start + part, end))
                todo.append((start, start + part))
        chunks.sort()
        if b"null" in b"".join(chunk[2] for chunk in chunks) and _holds_nan(batches):
            return None  # publish_line words the refusal
        lines: list[bytes] = []
        indexes: list[int] = []
        out = []
        for start, end, payload in chunks:
            if prefix is None:
                line = b"PUBLISH_BATCH %d %d %s %s\n" % (first_id + start, end - start, name,
                                                         payload)
            else:
                line = b"PUBLISH_BATCH %d %d %s keys=%s-%d %s\n" % (
                    first_id + start, end - start, name, prefix.encode(), first_key + start,
                    payload)
            out.append(line)
            lines.extend([line] * (end - start))
            indexes.extend(range(end - start))
        keys: list[str | None] = (
            [None] * n if prefix is None
            else [f"{prefix}-{k}" for k in range(first_key, first_key + n)]
        )
        return Built(keys, lines, indexes, b"".join(out))

    def sent(self, stream: str, line: bytes, key: str | None, many: bool, waiter: T) -> None:
        self.in_flight.append(_InFlight(stream, line, key, many, waiter, self.fingerprint))

    def resend(self, entry: _InFlight[T]) -> bytes:
        """Take ``entry``, a publish a drop left unanswered, as in flight again on this
        connection; returns its line to send. A publish of a ``PUBLISH_BATCH`` goes alone
        now, as a ``PUBLISH`` line with its key (the publishes before it in its batch may
        have been answered)."""
        line = entry.line
        if entry.index >= 0:
            fields = line.rstrip(b"\n").split(b" ", 4)
            rows = fields[4]
            if rows.startswith(b"keys="):
                rows = rows.split(b" ", 1)[1]
            tokens = (_orjson.loads(rows) if _orjson is not None
                      else json.loads(rows.decode("utf-8")))
            key_field = b"" if entry.key is None else b" key=" + entry.key.encode()
            line = (b"PUBLISH %d %s%s %s\n" % (next(self._ids), fields[3], key_field,
                                               encode_rows(tokens[entry.index])))
        self.sent(entry.stream, line, entry.key, entry.many, entry.waiter)
        return line

    def resendable(self, lost: list[_InFlight[T]]) -> tuple[list[_InFlight[T]],
                                                            list[_InFlight[T]]]:
        """Of publishes a drop left unanswered, now that a connection is ready again: those
        that may be sent again (sent to the master process this connection reaches, or to
        a master that keeps its keys across restarts: its key window answers the ones it
        committed) and those that may not (sent to a process of that master that has since
        restarted and forgot their keys: see :func:`restarted_in_flight`)."""
        fingerprint = self.fingerprint
        if self.keys_kept:  # a restarted master that still knows the keys answers them
            return lost, []
        same = [entry for entry in lost if entry.fingerprint == fingerprint]
        if len(same) == len(lost):
            return lost, []
        return same, [entry for entry in lost if entry.fingerprint != fingerprint]

    def sent_many(self, stream: str, built: Built, waiters: Sequence[T]) -> None:
        """:meth:`sent` of the single-token publishes to ``stream`` that
        :meth:`publish_lines` built, in order (``built.out`` is what to send)."""
        fingerprint = self.fingerprint
        self.in_flight.extend([
            _InFlight(stream, line, key, False, waiter, fingerprint, index)
            for key, line, waiter, index in zip(
                built.keys, built.lines, waiters, built.indexes, strict=True)
        ])

    def feed(self, data: bytes) -> list[tuple[T, Published | PublishError]]:
        """Bytes read from the master; the publishes they answer, in order. Raises
        :class:`ProtocolViolation` on ``ERROR`` or a line a publisher cannot take."""
        if self._buffer:
            data = self._buffer + data
        lines = data.split(b"\n")
        self._buffer = lines.pop()
        done: list[tuple[T, Published | PublishError]] = []
        in_flight = self.in_flight
        origin = self.origin
        for line in lines:
            if line.startswith(b"PUBLISHED "):
                parts = line.split(b" ")
                if len(parts) == 3 and in_flight and origin is not None and parts[2].isdigit():
                    # The common answer, one token, parsed here rather than in _published.
                    entry = in_flight.popleft()
                    done.append((entry.waiter, Published(entry.stream, (int(parts[2]),), origin)))
                    continue
                done.append(self._published(line))
            elif line.startswith(b"PUBLISHED_RUN "):
                self._published_run(line, done)
            elif line.startswith(b"REFUSED "):
                done.append(self._refused(line))
            else:
                self._other(line)
        if len(self._buffer) > max(self.max_line_bytes, 65536) * 2:
            raise ProtocolViolation("the master sent a line over the line limit")
        return done

    def _oldest(self, what: bytes) -> _InFlight[T]:
        if not self.in_flight:
            raise ProtocolViolation(f"the master answered a publish not sent: {what!r}")
        return self.in_flight.popleft()

    def _published(self, line: bytes) -> tuple[T, Published | PublishError]:
        parts = line.split(b" ")
        entry = self._oldest(line)
        try:
            first = int(parts[2])
            last = int(parts[3]) if len(parts) > 3 else first
        except (IndexError, ValueError):
            raise ProtocolViolation(f"malformed answer {line!r}") from None
        assert self.origin is not None
        return entry.waiter, Published(entry.stream, tuple(range(first, last + 1)), self.origin)

    def _published_run(
        self, line: bytes, done: list[tuple[T, Published | PublishError]]
    ) -> None:
        """``PUBLISHED_RUN <first-id> <count> <first-token>``: the oldest ``count``
        publishes in flight are committed as consecutive tokens, one each."""
        parts = line.split(b" ")
        if len(parts) != 4 or not all(part.isdigit() for part in parts[1:]):
            raise ProtocolViolation(f"malformed answer {line!r}")
        count, first = int(parts[2]), int(parts[3])
        in_flight = self.in_flight
        if not 0 < count <= len(in_flight):
            raise ProtocolViolation(
                f"the master answered {count} publishes, {len(in_flight)} in flight: {line!r}"
            )
        origin = self.origin
        if origin is None:
            raise ProtocolViolation(f"an answer before ORIGIN: {line!r}")
        popleft = in_flight.popleft
        append = done.append
        # Published(entry.stream, (token,), origin), built through its slots (what the
        # frozen dataclass's __init__ does, at half the cost: this runs per publish).
        new, set_stream, set_tokens, set_origin = _PUBLISHED_SLOTS
        for token in range(first, first + count):
            entry = popleft()
            result = new(Published)
            set_stream(result, entry.stream)
            set_tokens(result, (token,))
            set_origin(result, origin)
            append((entry.waiter, result))

    def _refused(self, line: bytes) -> tuple[T, Published | PublishError]:
        parts = line.decode("utf-8", "replace").split(" ", 3)
        entry = self._oldest(line)
        try:
            status = int(parts[2])
        except (IndexError, ValueError):
            raise ProtocolViolation(f"malformed answer {line!r}") from None
        return entry.waiter, PublishRefused(status, parts[3] if len(parts) > 3 else "")

    def _other(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        name, _, args = text.partition(" ")
        if name == "PING" or name == "VERSION":
            return
        if name == "SERVER":
            self.server_name = args
        elif name == "CHALLENGE":
            self._challenged(args)
        elif name == "AUTH_OK":
            self._accepted(args)
        elif name == "ORIGIN" and self.credential is not None and self._nonces is None:
            raise ProtocolViolation(
                "the master did not ask for the credential: is it the right master?"
            )
        elif name == "ORIGIN":
            self.origin, _, fingerprint = args.partition(" ")
            self.fingerprint = fingerprint or None
        elif name == "PUBLISHING":
            fields = args.split(" ")  # fields past the first two are options
            self.max_in_flight = int(fields[0])
            self.max_line_bytes = int(fields[1])
            self.keys_kept = "keys=kept" in fields[2:]
            self.batch = "batch" in fields[2:]
            self.ready = True
        elif name == "ERROR":
            raise ProtocolViolation(f"the master sent ERROR {args}")
        else:
            raise ProtocolViolation(f"unexpected line from the master: {text[:200]!r}")

    def reset(self) -> list[_InFlight[T]]:
        """The connection is gone: a new one starts from the handshake. Returns what was in
        flight (sent, unanswered), in order."""
        lost = list(self.in_flight)
        self.in_flight.clear()
        self._buffer = b""
        self.ready = False
        self.origin = None
        self.fingerprint = None
        self.keys_kept = False
        self.batch = False
        self._output = b""
        self._nonces = None
        return lost


def default_name() -> str:
    """``publisher-<host>-<pid>``, shortened to a valid peer name."""
    host = re.sub(r"[^\x21-\x7e]", "_", socket.gethostname())[:64] or "host"
    return f"publisher-{host}-{os.getpid()}"


def key_prefix() -> str:
    """A random prefix for the keys of one client (unique per client object)."""
    return os.urandom(9).hex()


@dataclass(frozen=True)
class ClientSettings:
    """What every client takes: the masters' endpoints (``host``, ``port``), the timeouts,
    and how long publishes in flight are retried on the same master after a drop."""

    endpoints: list[tuple[str, int]]
    timeout: float
    connect_timeout: float
    retry_for: float

    @classmethod
    def build(cls, what: str, master: str | Sequence[str], timeout: float,
              connect_timeout: float, retry_for: float | None) -> ClientSettings:
        """Check and parse a client's arguments; ``what`` names the client in errors."""
        masters = [master] if isinstance(master, str) else list(master)
        if not masters:
            raise ValueError(f"{what} needs at least one master endpoint")
        return cls(
            [parse_endpoint(m) for m in masters], timeout, connect_timeout,
            timeout if retry_for is None else retry_for,
        )


def new_core(
    name: str | None, idempotent: bool, credential: ClientCredential | None = None
) -> PublisherCore[Any]:
    """The protocol state of a new client: its name, its keys if ``idempotent``, and the
    credential it authenticates with (if any)."""
    return PublisherCore(
        name or default_name(), key_prefix() if idempotent else None, credential
    )
