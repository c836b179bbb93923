"""The wire protocol's commands: one frozen class per command, parsing and encoding, no I/O.

A line is ``NAME`` or ``NAME SP arguments`` in UTF-8, without its ``\\n``. Each command class
knows its ``NAME``, how to build itself from the argument text (``from_args``) and how to
write it back (``to_args``). A :class:`CommandRegistry` maps names to classes and says which
side (``master`` or ``worker``) may send each one; applications register their own commands
on a copy of the default registry. Every malformed line raises :class:`CommandParseError`
with a message that can be sent to the peer as it is. Nothing here imports Twisted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Self

from replication.cluster.identity import ID_PATTERN

if TYPE_CHECKING:
    from replication.wire.application import ApplicationCommands

_orjson: ModuleType | None
try:  # optional: a faster JSON codec, used where it accepts exactly what the strict path does
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised by the tests with orjson hidden
    _orjson = None

MASTER: Final = "master"
WORKER: Final = "worker"
SIDES: Final = frozenset({MASTER, WORKER})

#: The stream name that ``REPLICATE ALL NOW`` uses to mean every stream; no stream has it.
ALL_STREAMS: Final = "ALL"

_STREAM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
_PEER_NAME = re.compile(r"[\x21-\x7e]{1,128}")
_COMMAND_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,31}")

_compact_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class CommandParseError(ValueError):
    """A line, or a field of a command, that is not valid protocol.

    The message names what is wrong in words a person can act on; the protocol layer sends
    it to the peer as ``ERROR <message>``.
    """


def check_stream_name(name: str) -> str:
    """Return ``name`` if it is a valid stream name, else raise :class:`CommandParseError`.

    Stream names are 1 to 128 characters of ``A-Z a-z 0-9 _ . -``, not starting with ``.``
    or ``-``; ``ALL`` is reserved for ``REPLICATE ALL NOW``.
    """
    if not _STREAM_NAME.fullmatch(name):
        raise CommandParseError(
            f"invalid stream name {name!r}: use 1 to 128 characters of A-Z a-z 0-9 _ . - "
            "(not starting with . or -)"
        )
    if name == ALL_STREAMS:
        raise CommandParseError(f"{ALL_STREAMS!r} is reserved and cannot name a stream")
    return name


#: What joins a stream and an origin in protocol version 2: ``<stream>@<origin>`` names the
#: rows of one origin of a stream (no stream name or origin id contains it).
ORIGIN_SEPARATOR: Final = "@"
#: Most origins one position vector (``REPLICATE <stream> <vector>``) may name.
MAX_VECTOR_ORIGINS: Final = 64


def check_origin(origin: str) -> str:
    """Return ``origin`` if it is a well-formed origin id (16 to 64 characters of ``A-Z a-z
    0-9 - _``), else raise :class:`CommandParseError`."""
    if not isinstance(origin, str) or ID_PATTERN.fullmatch(origin) is None:
        raise CommandParseError(
            f"invalid origin {origin!r}: an origin id is 16 to 64 characters of "
            "A-Z a-z 0-9 - _"
        )
    return origin


def qualify(stream: str, origin: str | None) -> str:
    """``<stream>@<origin>``, or ``stream`` alone when ``origin`` is ``None``: how the
    stream field of ``RDATA``, ``POSITION``, ``GAP``, ``RESET`` and ``HANDLED`` reads."""
    return stream if origin is None else f"{stream}{ORIGIN_SEPARATOR}{origin}"


def split_stream(text: str) -> tuple[str, str | None]:
    """The stream name and origin of a stream field (``events`` or ``events@<origin>``),
    both checked; raises :class:`CommandParseError`."""
    stream, at, origin = text.partition(ORIGIN_SEPARATOR)
    check_stream_name(stream)
    if not at:
        return stream, None
    return stream, check_origin(origin)


def _check_stream_origin(stream: str, origin: str | None) -> None:
    check_stream_name(stream)
    if origin is not None:
        check_origin(origin)


def check_peer_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a valid server or worker name (1 to 128 printable ASCII
    characters, no spaces), else raise :class:`CommandParseError`."""
    if not _PEER_NAME.fullmatch(name):
        raise CommandParseError(
            f"invalid {what} {name!r}: use 1 to 128 printable ASCII characters without spaces"
        )
    return name


def parse_token(text: str, what: str = "token") -> int:
    """Parse a non-negative decimal token (``0`` means "before the first row")."""
    if not text.isdigit() or not text.isascii() or len(text) > 19:
        raise CommandParseError(f"{what} must be a non-negative integer, got {text!r}")
    return int(text)


def _check_token(token: int, what: str = "token") -> None:
    if not isinstance(token, int) or isinstance(token, bool) or not 0 <= token < 10**19:
        raise CommandParseError(f"{what} must be a non-negative integer, got {token!r}")


def encode_json(value: Any) -> str:
    """Encode ``value`` as compact JSON (no spaces, no NaN, non-ASCII kept as UTF-8).

    A JSON document never contains a raw newline, so the result always fits in one line.
    Strings holding lone surrogates (which UTF-8 cannot carry) are refused.
    """
    try:
        text = _compact_json.encode(value)
        text.encode("utf-8")
    except (TypeError, ValueError) as e:
        raise CommandParseError(f"row is not JSON-serialisable: {e}") from None
    except RecursionError:
        raise CommandParseError("row is nested too deeply") from None
    return text


class _NotJson(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _NotJson(f"{text} overflows a float")
    return value


_strict_decode = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_finite_float
).decode


def decode_json(text: str, what: str = "RDATA row") -> Any:
    """Decode one JSON document, strictly: ``NaN``, ``Infinity`` and numbers that overflow
    a float are refused with :class:`CommandParseError` (``"<what> is not valid JSON:
    ..."``), as is anything not JSON or nested too deeply for the decoder."""
    try:
        return _decode_json(text, what)
    except RecursionError:
        raise CommandParseError(f"{what} is nested too deeply") from None


def _decode_json(text: str, what: str) -> Any:
    """:func:`decode_json`, letting a ``RecursionError`` through (see :func:`decode_row`)."""
    try:
        value = _strict_decode(text)
    except ValueError as e:
        raise CommandParseError(f"{what} is not valid JSON: {e}") from None
    if "\\u" in text and "\\ud" in text.lower():
        # An escaped lone surrogate decodes to a string that UTF-8 cannot carry.
        try:
            _compact_json.encode(value).encode("utf-8")
        except UnicodeEncodeError:
            raise CommandParseError(
                f"{what} is not valid JSON: it escapes a lone UTF-16 surrogate"
            ) from None
    return value


#: Digits become "0", "-" stays, every other byte becomes a space.
_DIGITS_AS_ZEROS = bytes(
    48 if 48 <= i <= 57 else 45 if i == 45 else 32 for i in range(256)
)
#: orjson reads an integer outside [-2**63, 2**64) as a float: such an integer has 20
#: digits or more, or is negative with 19. A document holding either (in ``data``
#: translated by ``_DIGITS_AS_ZEROS``) goes to the standard library, which keeps every
#: integer exact (19-digit positive numbers, nanosecond timestamps among them, do not).
LONG_DIGITS: Final = b"0" * 20
LONG_NEGATIVE: Final = b"-" + b"0" * 19


def has_long_integer(data: bytes) -> bool:
    """Whether the JSON text ``data`` may hold a number orjson reads inexactly (see
    :data:`LONG_DIGITS`; a string holding such digits counts too, which only costs a
    slower decode). One C-speed pass and two searches."""
    translated = data.translate(_DIGITS_AS_ZEROS)
    return LONG_DIGITS in translated or LONG_NEGATIVE in translated


def decode_json_bytes(data: bytes, what: str = "RDATA row") -> Any:
    """Decode one JSON document from UTF-8 bytes, as strictly as :func:`decode_json`.

    With orjson installed it does the work (it refuses NaN, Infinity, lone surrogates and
    invalid UTF-8 by itself); whatever orjson refuses goes to the standard library path,
    which has the final word, so both accept the same documents. orjson turns integers
    outside [-2**63, 2**64) into floats, so a document with a run of 20 digits, or of 19
    after a minus sign, is always decoded by the standard library, which keeps them
    exact.
    """
    if _orjson is not None and not has_long_integer(data):
        try:
            return _orjson.loads(data)
        except _orjson.JSONDecodeError:
            pass
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CommandParseError(f"{what} is not valid UTF-8 (byte {e.start})") from None
    return decode_json(text, what)


def decode_row(text: str) -> Any:
    """Decode an ``RDATA`` row as :func:`decode_json` does, and refuse one nested deeper
    than the decoders can go with a clear :class:`CommandParseError` rather than a
    ``RecursionError``: the standard library's decoder stops near the interpreter's
    recursion limit (about 1,000 levels), orjson (when installed) at 1,024; a row either of
    them decodes is taken, so that the worker's fast path (orjson) and its general path
    (this) accept the same rows."""
    try:
        return _decode_json(text, "RDATA row")
    except RecursionError:
        pass
    data = text.encode("utf-8", "surrogatepass")
    if _orjson is not None and not has_long_integer(data):
        try:
            return _orjson.loads(data)
        except _orjson.JSONDecodeError:
            pass
    raise CommandParseError(
        "RDATA row is nested too deep to decode (JSON arrays and objects nest at most "
        "about 1,000 levels)"
    )


def json_loader(data: bytes | None) -> Callable[[bytes], Any]:
    """A decoder for the rows of many lines at once, as strict as :func:`decode_json_bytes`:
    orjson's own ``loads`` when orjson is installed and ``data`` (the bytes the lines were
    split from) holds no long integer (:func:`has_long_integer`), so the check is made
    once per read instead of once per row; otherwise :func:`decode_json_bytes`. Both raise
    ``ValueError`` on what they refuse (``CommandParseError``, or orjson's error, which may
    still be a document that the standard library path accepts: pass such lines to the
    general path)."""
    if _orjson is not None and data is not None and not has_long_integer(data):
        return _orjson.loads  # type: ignore[no-any-return]
    return decode_json_bytes


#: The deepest nesting (lists and objects) of a value :func:`encode_parsed_json` encodes
#: with orjson installed: orjson's own limit, so the check costs nothing.
MAX_PARSED_DEPTH: Final = 254
_ORJSON_TOO_DEEP: Final = "Recursion limit reached"


def encode_parsed_json(value: Any) -> str:
    """Encode, as compact JSON, a value that a JSON parser produced (only JSON types, no
    NaN): with orjson when installed, else (or for what orjson cannot encode, such as
    integers beyond 64 bits) with :func:`encode_json`. Both give valid compact JSON.

    A value nested more than :data:`MAX_PARSED_DEPTH` levels deep is refused with
    :class:`CommandParseError` when orjson is installed (without it, only what would
    exhaust Python's recursion limit is: the HTTP publish path then refuses at about
    900 levels)."""
    if _orjson is not None:
        try:
            text: str = _orjson.dumps(value).decode()
        except TypeError as e:
            if str(e) == _ORJSON_TOO_DEEP:
                raise CommandParseError(
                    f"row is nested more than {MAX_PARSED_DEPTH} levels deep"
                ) from None
        else:
            return text
    return encode_json(value)


def encode_parsed_rows(values: Iterable[Any]) -> list[str] | None:
    """:func:`encode_parsed_json` of each value, in one pass when orjson can encode them
    all; ``None`` when it cannot (then encode them one by one)."""
    if _orjson is None:
        return None
    dumps = _orjson.dumps
    try:
        return [dumps(value).decode() for value in values]
    except TypeError:
        return None


def _split(args: str, count: int, name: str, usage: str) -> list[str]:
    parts = args.split(" ", count - 1)
    if len(parts) != count or not all(parts) or " " in parts[-1] and count > 1 and name != "RDATA":
        plural = "argument" if count == 1 else "arguments"
        raise CommandParseError(f"{name} takes {count} {plural}: {name} {usage}")
    return parts


class Command:
    """Base class of every command, built in or registered by an application.

    Subclasses are frozen dataclasses that set ``NAME`` and implement ``from_args`` and
    ``to_args``; ``from_args`` receives everything after ``NAME `` (or ``""``) and raises
    :class:`CommandParseError` for anything it cannot accept.
    """

    NAME: ClassVar[str]

    @classmethod
    def from_args(cls, args: str) -> Command:
        raise NotImplementedError

    def to_args(self) -> str:
        raise NotImplementedError

    def to_line(self) -> bytes:
        """The command as one line of UTF-8, without the trailing ``\\n``."""
        args = self.to_args()
        try:
            return f"{self.NAME} {args}".encode() if args else self.NAME.encode()
        except UnicodeEncodeError as e:
            raise CommandParseError(f"{self.NAME} cannot be encoded as UTF-8: {e.reason}") from None


@dataclass(frozen=True, slots=True)
class ServerCommand(Command):
    """``SERVER <server_name>``: the first line the master sends."""

    NAME: ClassVar[str] = "SERVER"
    server_name: str

    def __post_init__(self) -> None:
        check_peer_name(self.server_name, "server name")

    @classmethod
    def from_args(cls, args: str) -> ServerCommand:
        return cls(_split(args, 1, cls.NAME, "<server_name>")[0])

    def to_args(self) -> str:
        return self.server_name


@dataclass(frozen=True, slots=True)
class NameCommand(Command):
    """``NAME <worker_name>``: the first line the worker sends."""

    NAME: ClassVar[str] = "NAME"
    name: str

    def __post_init__(self) -> None:
        check_peer_name(self.name, "worker name")

    @classmethod
    def from_args(cls, args: str) -> NameCommand:
        return cls(_split(args, 1, cls.NAME, "<worker_name>")[0])

    def to_args(self) -> str:
        return self.name


#: Most versions one ``VERSION`` line may list.
MAX_VERSIONS: Final = 16


@dataclass(frozen=True, slots=True)
class VersionCommand(Command):
    """``VERSION <version>[ <version>...]``: the protocol versions a worker speaks, sent
    right after its ``NAME``; the master answers with the one version it chose.

    Versions are positive integers of at most 9 digits, 1 to :data:`MAX_VERSIONS` of them.
    """

    NAME: ClassVar[str] = "VERSION"
    versions: tuple[int, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.versions) <= MAX_VERSIONS:
            raise CommandParseError(
                f"VERSION takes 1 to {MAX_VERSIONS} versions: VERSION <version>[ <version>...]"
            )
        for version in self.versions:
            if not isinstance(version, int) or isinstance(version, bool) or not 0 < version < 10**9:
                raise CommandParseError(f"version must be a positive integer, got {version!r}")

    @classmethod
    def from_args(cls, args: str) -> VersionCommand:
        parts = args.split(" ")
        if not all(parts) or len(parts) > MAX_VERSIONS:
            raise CommandParseError(
                f"VERSION takes 1 to {MAX_VERSIONS} versions: VERSION <version>[ <version>...]"
            )
        versions = []
        for text in parts:
            if not (text.isdigit() and text.isascii() and len(text) <= 9 and text[0] != "0"):
                raise CommandParseError(f"version must be a positive integer, got {text!r}")
            versions.append(int(text))
        return cls(tuple(versions))

    def to_args(self) -> str:
        return " ".join(map(str, self.versions))


@dataclass(frozen=True, slots=True)
class PingCommand(Command):
    """``PING <ms timestamp>``: keepalive, sent by either side after a silence."""

    NAME: ClassVar[str] = "PING"
    timestamp_ms: int

    def __post_init__(self) -> None:
        _check_token(self.timestamp_ms, "PING timestamp")

    @classmethod
    def from_args(cls, args: str) -> PingCommand:
        (text,) = _split(args, 1, cls.NAME, "<ms timestamp>")
        return cls(parse_token(text, "PING timestamp"))

    def to_args(self) -> str:
        return str(self.timestamp_ms)


@dataclass(frozen=True, slots=True)
class ReplicateCommand(Command):
    """``REPLICATE <stream> <token>``, ``REPLICATE <stream> NOW`` or ``REPLICATE ALL NOW``;
    in protocol version 2 also ``REPLICATE <stream> <vector>``.

    ``token`` is the last token the worker has; ``None`` means ``NOW`` (new rows only).
    ``stream`` is :data:`ALL_STREAMS` only together with ``NOW``.

    ``vector`` (version 2) is the worker's position per origin, as ``(origin, token)``
    pairs: ``<origin>:<token>[,<origin>:<token>...]``, or ``-`` for none at all; every
    origin it does not name is sent from its start. ``token`` is ``None`` with a vector.
    """

    NAME: ClassVar[str] = "REPLICATE"
    stream: str
    token: int | None
    vector: tuple[tuple[str, int], ...] | None = None

    def __post_init__(self) -> None:
        if self.stream == ALL_STREAMS:
            if self.token is not None or self.vector is not None:
                raise CommandParseError("REPLICATE ALL takes NOW, not a token")
        else:
            check_stream_name(self.stream)
        if self.token is not None:
            _check_token(self.token)
        if self.vector is not None:
            if self.token is not None:
                raise CommandParseError("REPLICATE takes a token or a position vector, not both")
            if len(self.vector) > MAX_VECTOR_ORIGINS:
                raise CommandParseError(
                    f"a position vector names at most {MAX_VECTOR_ORIGINS} origins, "
                    f"got {len(self.vector)}"
                )
            seen = set()
            for origin, token in self.vector:
                check_origin(origin)
                _check_token(token)
                if origin in seen:
                    raise CommandParseError(f"origin {origin} is named twice in the vector")
                seen.add(origin)

    @property
    def positions(self) -> dict[str, int]:
        """The vector as a dict (empty without one)."""
        return dict(self.vector) if self.vector else {}

    @classmethod
    def from_args(cls, args: str) -> ReplicateCommand:
        stream, token = _split(args, 2, cls.NAME, "<stream> <token|vector|NOW>")
        if token == "NOW":
            return cls(stream, None)
        if token == "-":
            return cls(stream, None, ())
        if ":" in token:
            pairs = token.split(",")
            if len(pairs) > MAX_VECTOR_ORIGINS:
                raise CommandParseError(
                    f"a position vector names at most {MAX_VECTOR_ORIGINS} origins, "
                    f"got {len(pairs)}"
                )
            vector = []
            for pair in pairs:
                origin, colon, text = pair.partition(":")
                if not colon:
                    raise CommandParseError(
                        f"position vector entry {pair!r} is not <origin>:<token>"
                    )
                vector.append((check_origin(origin), parse_token(text)))
            return cls(stream, None, tuple(vector))
        return cls(stream, parse_token(token))

    def to_args(self) -> str:
        if self.vector is not None:
            text = ",".join(f"{o}:{t}" for o, t in self.vector) if self.vector else "-"
            return f"{self.stream} {text}"
        return f"{self.stream} {'NOW' if self.token is None else self.token}"


@dataclass(frozen=True, slots=True)
class RdataCommand(Command):
    """``RDATA <stream> <token|batch> <json>``: one row of a stream.

    The rows of one token are sent in order; all but the last carry ``batch`` (``token`` is
    ``None``) and the last carries the token. In protocol version 2 the stream field is
    ``<stream>@<origin>`` (``origin``).
    """

    NAME: ClassVar[str] = "RDATA"
    stream: str
    token: int | None
    row: Any
    origin: str | None = None

    def __post_init__(self) -> None:
        _check_stream_origin(self.stream, self.origin)
        if self.token is not None:
            _check_token(self.token)

    @classmethod
    def from_args(cls, args: str) -> RdataCommand:
        field, token, row = _split(args, 3, cls.NAME, "<stream> <token|batch> <json>")
        stream, origin = split_stream(field)
        value = decode_row(row)
        return cls(stream, None if token == "batch" else parse_token(token), value, origin)

    def to_args(self) -> str:
        token = "batch" if self.token is None else str(self.token)
        return f"{qualify(self.stream, self.origin)} {token} {encode_json(self.row)}"


@dataclass(frozen=True, slots=True)
class RowsCommand(Command):
    """``ROWS <stream> <first> <json array of arrays of rows>`` (protocol version 3, master
    to worker): the consecutive tokens ``first``, ``first + 1``, ... of a stream in one
    line, each token the array of its rows (at least one). It carries what the ``RDATA``
    lines of those tokens would, in fewer bytes and with one JSON document to decode; the
    stream field is ``<stream>@<origin>`` as in version 2.
    """

    NAME: ClassVar[str] = "ROWS"
    stream: str
    first: int
    tokens: list[list[Any]]
    origin: str | None = None

    def __post_init__(self) -> None:
        _check_stream_origin(self.stream, self.origin)
        _check_token(self.first, "first token")
        check_token_rows(self.tokens, self.first)

    @property
    def last(self) -> int:
        return self.first + len(self.tokens) - 1

    @classmethod
    def from_args(cls, args: str) -> RowsCommand:
        parts = args.split(" ", 2)
        if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2]:
            raise CommandParseError(
                "ROWS takes 3 arguments: ROWS <stream> <first> <json array of arrays of rows>"
            )
        stream, origin = split_stream(parts[0])
        first = parse_token(parts[1], "first token")
        tokens = decode_row(parts[2])
        return cls(stream, first, tokens, origin)

    def to_args(self) -> str:
        return f"{qualify(self.stream, self.origin)} {self.first} {encode_json(self.tokens)}"


#: The bounds of a ``LINE_LIMIT``: those of ``limits.max_line_bytes`` (the configuration's
#: ``MIN_LINE_BYTES`` and ``MAX_LINE_BYTES``).
MIN_LINE_LIMIT: Final = 1024
MAX_LINE_LIMIT: Final = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class LineLimitCommand(Command):
    """``LINE_LIMIT <bytes>`` (protocol version 3, worker to master, once, before its
    ``REPLICATE``): the longest line the worker takes (its ``limits.max_line_bytes``). The
    master keeps its ``ROWS`` lines to that connection within it."""

    NAME: ClassVar[str] = "LINE_LIMIT"
    limit: int

    def __post_init__(self) -> None:
        if (
            not isinstance(self.limit, int) or isinstance(self.limit, bool)
            or not MIN_LINE_LIMIT <= self.limit <= MAX_LINE_LIMIT
        ):
            raise CommandParseError(
                f"LINE_LIMIT must be {MIN_LINE_LIMIT} to {MAX_LINE_LIMIT} bytes, "
                f"got {self.limit!r}"
            )

    @classmethod
    def from_args(cls, args: str) -> LineLimitCommand:
        if not (args.isdigit() and args.isascii() and len(args) <= 9):
            raise CommandParseError(
                f"LINE_LIMIT takes 1 argument: LINE_LIMIT <bytes>, got {args[:40]!r}"
            )
        return cls(int(args))

    def to_args(self) -> str:
        return str(self.limit)


def check_token_rows(tokens: Any, first: int) -> None:
    """Refuse (:class:`CommandParseError`) a ``ROWS`` value that is not a non-empty array
    of non-empty arrays of rows, or whose tokens would not all be below ``10**19``."""
    if type(tokens) is not list or not tokens:
        raise CommandParseError("ROWS needs a non-empty JSON array of tokens")
    for i, rows in enumerate(tokens):
        if type(rows) is not list or not rows:
            raise CommandParseError(
                f"ROWS token {first + i} is not a non-empty JSON array of rows"
            )
    if first < 1 or first + len(tokens) - 1 >= 10**19:
        raise CommandParseError(
            f"ROWS tokens {first}..{first + len(tokens) - 1} are not between 1 and "
            f"{10**19 - 1}"
        )


@dataclass(frozen=True, slots=True)
class _StreamTokenCommand(Command):
    """The shape of ``<NAME> <stream>[@<origin>] <token>`` commands (``POSITION``,
    ``HANDLED``)."""

    stream: str
    token: int
    origin: str | None = None

    def __post_init__(self) -> None:
        _check_stream_origin(self.stream, self.origin)
        _check_token(self.token)

    @classmethod
    def from_args(cls, args: str) -> Self:
        field, token = _split(args, 2, cls.NAME, "<stream> <token>")
        stream, origin = split_stream(field)
        return cls(stream, parse_token(token), origin)

    def to_args(self) -> str:
        return f"{qualify(self.stream, self.origin)} {self.token}"


@dataclass(frozen=True, slots=True)
class PositionCommand(_StreamTokenCommand):
    """``POSITION <stream> <token>``: catch-up of the stream is done; live rows follow."""

    NAME: ClassVar[str] = "POSITION"


@dataclass(frozen=True, slots=True)
class HandledCommand(_StreamTokenCommand):
    """``HANDLED <stream> <token>``: the position the worker has recorded for a stream it
    follows (protocol version 1; at most once a second, only when it changed), so the
    master can show what each worker has handled, not only what it was sent."""

    NAME: ClassVar[str] = "HANDLED"


@dataclass(frozen=True, slots=True)
class GapCommand(Command):
    """``GAP <stream> <first> <last>``: tokens ``first..last`` are no longer retained.

    Sent during catch-up when the worker asked for history that retention has dropped; the
    rows that follow start after ``last``.
    """

    NAME: ClassVar[str] = "GAP"
    stream: str
    first: int
    last: int
    origin: str | None = None

    def __post_init__(self) -> None:
        _check_stream_origin(self.stream, self.origin)
        _check_token(self.first, "first token")
        _check_token(self.last, "last token")
        if not 0 < self.first <= self.last:
            raise CommandParseError(
                f"GAP needs 0 < first <= last, got first={self.first} last={self.last}"
            )

    @classmethod
    def from_args(cls, args: str) -> GapCommand:
        field, first, last = _split(args, 3, cls.NAME, "<stream> <first> <last>")
        stream, origin = split_stream(field)
        return cls(
            stream, parse_token(first, "first token"), parse_token(last, "last token"), origin
        )

    def to_args(self) -> str:
        return f"{qualify(self.stream, self.origin)} {self.first} {self.last}"


@dataclass(frozen=True, slots=True)
class ResetCommand(Command):
    """``RESET <stream> <head>``: the worker's token is ahead of the master's head.

    The master's history of the stream was lost or replaced (an in-memory master restarted).
    The worker forgets its position; the stream is then replayed from its start.
    """

    NAME: ClassVar[str] = "RESET"
    stream: str
    head: int
    origin: str | None = None

    def __post_init__(self) -> None:
        _check_stream_origin(self.stream, self.origin)
        _check_token(self.head, "head token")

    @classmethod
    def from_args(cls, args: str) -> ResetCommand:
        field, head = _split(args, 2, cls.NAME, "<stream> <head>")
        stream, origin = split_stream(field)
        return cls(stream, parse_token(head, "head token"), origin)

    def to_args(self) -> str:
        return f"{qualify(self.stream, self.origin)} {self.head}"


@dataclass(frozen=True, slots=True)
class OriginCommand(Command):
    """``ORIGIN <origin_id> <fingerprint>`` (protocol version 2): the sender is a master,
    with this durable origin id and this per-process fingerprint
    (:mod:`replication.cluster.identity`). A master sends it first after ``VERSION 2``; a
    master dialling a peer sends it to say it is a cluster peer, before any ``RELAY``."""

    NAME: ClassVar[str] = "ORIGIN"
    origin_id: str
    fingerprint: str

    def __post_init__(self) -> None:
        check_origin(self.origin_id)
        if ID_PATTERN.fullmatch(self.fingerprint) is None:
            raise CommandParseError(
                f"invalid fingerprint {self.fingerprint!r}: 16 to 64 characters of "
                "A-Z a-z 0-9 - _"
            )

    @classmethod
    def from_args(cls, args: str) -> OriginCommand:
        origin_id, fingerprint = _split(args, 2, cls.NAME, "<origin_id> <fingerprint>")
        return cls(origin_id, fingerprint)

    def to_args(self) -> str:
        return f"{self.origin_id} {self.fingerprint}"


#: The stream field of ``RELAY * <origin>``: every stream of the origin not named before.
EVERY_STREAM: Final = "*"


@dataclass(frozen=True, slots=True)
class RelayCommand(Command):
    """``RELAY <stream> <origin> <token>`` or ``RELAY * <origin>`` (protocol version 2, sent
    only by a cluster peer, after its ``ORIGIN``): send me the rows of ``origin`` on
    ``stream`` after ``token``, and live ones after that; ``*`` (``token`` ``None``) means
    every stream of ``origin`` not named in an earlier ``RELAY``, from its start, and every
    stream of it that appears later. Unlike ``REPLICATE``, no other origin is sent."""

    NAME: ClassVar[str] = "RELAY"
    stream: str
    origin: str
    token: int | None

    def __post_init__(self) -> None:
        check_origin(self.origin)
        if self.stream == EVERY_STREAM:
            if self.token is not None:
                raise CommandParseError("RELAY * takes an origin and no token")
            return
        check_stream_name(self.stream)
        if self.token is None:
            raise CommandParseError("RELAY takes <stream> <origin> <token> or * <origin>")
        _check_token(self.token)

    @classmethod
    def from_args(cls, args: str) -> RelayCommand:
        parts = args.split(" ")
        if len(parts) == 2 and parts[0] == EVERY_STREAM:
            return cls(EVERY_STREAM, parts[1], None)
        if len(parts) != 3 or not all(parts):
            raise CommandParseError(
                "RELAY takes 3 arguments: RELAY <stream> <origin> <token> (or RELAY * <origin>)"
            )
        return cls(parts[0], parts[1], parse_token(parts[2]))

    def to_args(self) -> str:
        if self.token is None:
            return f"{self.stream} {self.origin}"
        return f"{self.stream} {self.origin} {self.token}"


#: What a publish id and an idempotency key may hold: printable ASCII without spaces.
_PUBLISH_ID = re.compile(r"[\x21-\x7e]{1,64}")
_PUBLISH_KEY = re.compile(r"[\x21-\x7e]{1,128}")
#: The prefix of the optional idempotency key field of ``PUBLISH`` and ``PUBLISH_TOKENS``.
KEY_PREFIX: Final = "key="


def check_publish_id(text: str) -> str:
    """Return ``text`` if it is a valid publish id (1 to 64 printable ASCII characters, no
    spaces), else raise :class:`CommandParseError`."""
    if not isinstance(text, str) or _PUBLISH_ID.fullmatch(text) is None:
        raise CommandParseError(
            f"invalid publish id {text!r}: use 1 to 64 printable ASCII characters without "
            "spaces"
        )
    return text


def check_publish_key(text: str) -> str:
    """Return ``text`` if it is a valid idempotency key (1 to 128 printable ASCII
    characters, no spaces), else raise :class:`CommandParseError`."""
    if not isinstance(text, str) or _PUBLISH_KEY.fullmatch(text) is None:
        raise CommandParseError(
            f"invalid publish key {text!r}: use 1 to 128 printable ASCII characters without "
            "spaces"
        )
    return text


@dataclass(frozen=True, slots=True)
class PublisherCommand(Command):
    """``PUBLISHER`` (protocol version 2): this connection publishes. Sent by a publisher as
    its first command after the handshake; the master answers with ``PUBLISHING``. A
    publisher may not ``REPLICATE``, and a worker may not ``PUBLISH``."""

    NAME: ClassVar[str] = "PUBLISHER"

    @classmethod
    def from_args(cls, args: str) -> PublisherCommand:
        if args:
            raise CommandParseError("PUBLISHER takes no arguments")
        return cls()

    def to_args(self) -> str:
        return ""


@dataclass(frozen=True, slots=True)
class PublishingCommand(Command):
    """``PUBLISHING <max_in_flight> <max_line_bytes>[ keys=kept][ batch]`` (protocol version
    2): the master's answer to ``PUBLISHER``: how many publishes it reads ahead of their
    answers on this connection (``limits.max_publishes_in_flight``; beyond that it stops
    reading), the longest line it accepts (``limits.max_line_bytes``), ``keys=kept`` when
    its store keeps idempotency keys across restarts, and ``batch`` when it takes
    ``PUBLISH_BATCH``. Fields after the first two are options; one a publisher does not
    know is ignored, so that masters may add more."""

    NAME: ClassVar[str] = "PUBLISHING"
    max_in_flight: int
    max_line_bytes: int
    keys_kept: bool = False
    #: The master takes ``PUBLISH_BATCH`` (option ``batch``).
    batch: bool = False

    def __post_init__(self) -> None:
        _check_token(self.max_in_flight, "max_in_flight")
        _check_token(self.max_line_bytes, "max_line_bytes")

    @classmethod
    def from_args(cls, args: str) -> PublishingCommand:
        fields = args.split(" ")
        if len(fields) < 2:
            _split(args, 2, cls.NAME, "<max_in_flight> <max_line_bytes>")  # raises
        return cls(
            parse_token(fields[0], "max_in_flight"), parse_token(fields[1], "max_line_bytes"),
            "keys=kept" in fields[2:], "batch" in fields[2:],
        )

    def to_args(self) -> str:
        kept = " keys=kept" if self.keys_kept else ""
        batch = " batch" if self.batch else ""
        return f"{self.max_in_flight} {self.max_line_bytes}{kept}{batch}"


@dataclass(frozen=True, slots=True)
class PublishCommand(Command):
    """``PUBLISH <id> <stream>[ key=<key>] <json array of rows>`` (protocol version 2, from
    a publisher): publish the rows as one token. ``id`` names the publish in its answer
    (``PUBLISHED`` or ``REFUSED``, in the order of the publishes); ``key`` is an optional
    idempotency key (see docs/protocol.rst, "Publishing").

    Only the id and the key are checked here (a bad one is a protocol error); the stream
    name and the rows (``rows``, the JSON text as received) are checked by the master, which
    refuses a bad one with ``REFUSED`` and keeps the connection."""

    NAME: ClassVar[str] = "PUBLISH"
    #: The shape of ``rows``, in the usage of errors.
    ROWS: ClassVar[str] = "<json array of rows>"
    id: str
    stream: str
    rows: str
    key: str | None = None

    def __post_init__(self) -> None:
        check_publish_id(self.id)
        if not self.stream or " " in self.stream:
            raise CommandParseError(f"{self.NAME} needs a stream name without spaces")
        if self.key is not None:
            check_publish_key(self.key)

    @classmethod
    def from_args(cls, args: str) -> Self:
        parts = args.split(" ", 2)
        if len(parts) != 3 or not all(parts):
            raise CommandParseError(
                f"{cls.NAME} takes 3 or 4 arguments: {cls.NAME} <id> <stream> [key=<key>] "
                f"{cls.ROWS}"
            )
        id_, stream, rest = parts
        key = None
        if rest.startswith(KEY_PREFIX):
            key, _, rest = rest[len(KEY_PREFIX):].partition(" ")
            if not rest:
                raise CommandParseError(f"{cls.NAME} {id_}: rows missing after the key")
        return cls(id_, stream, rest, key)

    def to_args(self) -> str:
        key = "" if self.key is None else f" {KEY_PREFIX}{self.key}"
        return f"{self.id} {self.stream}{key} {self.rows}"


@dataclass(frozen=True, slots=True)
class PublishTokensCommand(PublishCommand):
    """``PUBLISH_TOKENS <id> <stream>[ key=<key>] <json array of arrays of rows>`` (protocol
    version 2, from a publisher): publish several tokens at once, all or none, with
    consecutive tokens (the multi-token form of :class:`PublishCommand`)."""

    NAME: ClassVar[str] = "PUBLISH_TOKENS"
    ROWS: ClassVar[str] = "<json array of arrays of rows>"


#: The most publishes one ``PUBLISH_BATCH`` may carry, whatever the master's in-flight limit
#: (which bounds it further: the master refuses a batch of more than it reads ahead).
MAX_BATCH: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class PublishBatchCommand(Command):
    """``PUBLISH_BATCH <first-id> <count> <stream>[ keys=<prefix>-<start>] <json array of
    arrays of rows>`` (protocol version 2, from a publisher, to a master that said
    ``batch`` in ``PUBLISHING``): ``count`` publishes to one stream in one line, each the
    rows of one token and each on its own, as ``count`` ``PUBLISH`` lines would be: publish
    ``i`` (from 0) has the id ``first_id + i`` and, with ``keys=``, the idempotency key
    ``<prefix>-<start + i>``; each is committed or refused alone and answered in order
    (``PUBLISHED_RUN`` for a run of them committed as consecutive tokens).

    The ids, count and keys are checked here (a bad one is a protocol error, as for
    ``PUBLISH``); the stream and the rows are checked by the master, which refuses what it
    cannot take with ``REFUSED``, per publish, and keeps the connection."""

    NAME: ClassVar[str] = "PUBLISH_BATCH"
    first_id: int
    count: int
    stream: str
    rows: str
    key_prefix: str | None = None
    key_start: int = 0

    def __post_init__(self) -> None:
        _check_token(self.first_id, "PUBLISH_BATCH first id")
        if not isinstance(self.count, int) or not 0 < self.count <= MAX_BATCH:
            raise CommandParseError(
                f"PUBLISH_BATCH count must be 1 to {MAX_BATCH}, got {self.count!r}"
            )
        if not self.stream or " " in self.stream:
            raise CommandParseError("PUBLISH_BATCH needs a stream name without spaces")
        if self.key_prefix is not None:
            _check_token(self.key_start, "PUBLISH_BATCH key start")
            check_publish_key(f"{self.key_prefix}-{self.key_start + self.count - 1}")

    @property
    def ids(self) -> range:
        """The ids of the publishes, in order."""
        return range(self.first_id, self.first_id + self.count)

    def key(self, i: int) -> str | None:
        """The idempotency key of publish ``i`` (``None``: it has none)."""
        if self.key_prefix is None:
            return None
        return f"{self.key_prefix}-{self.key_start + i}"

    @classmethod
    def from_args(cls, args: str) -> PublishBatchCommand:
        parts = args.split(" ", 3)
        if len(parts) != 4 or not all(parts):
            raise CommandParseError(
                "PUBLISH_BATCH takes 4 or 5 arguments: PUBLISH_BATCH <first-id> <count> "
                "<stream> [keys=<prefix>-<start>] <json array of arrays of rows>"
            )
        first, count, stream, rest = parts
        prefix = None
        start = 0
        if rest.startswith("keys="):
            keys, _, rest = rest[len("keys="):].partition(" ")
            prefix, dash, number = keys.rpartition("-")
            if not dash or not prefix:
                raise CommandParseError(
                    f"PUBLISH_BATCH keys must be <prefix>-<start>, got {keys!r}"
                )
            start = parse_token(number, "PUBLISH_BATCH key start")
            if not rest:
                raise CommandParseError(f"PUBLISH_BATCH {first}: rows missing after the keys")
        return cls(parse_token(first, "PUBLISH_BATCH first id"),
                   parse_token(count, "PUBLISH_BATCH count"), stream, rest, prefix, start)

    def to_args(self) -> str:
        keys = "" if self.key_prefix is None else f" keys={self.key_prefix}-{self.key_start}"
        return f"{self.first_id} {self.count} {self.stream}{keys} {self.rows}"


@dataclass(frozen=True, slots=True)
class PublishedRunCommand(Command):
    """``PUBLISHED_RUN <first-id> <count> <first-token>`` (protocol version 2, master to
    publisher): the ``count`` publishes of a ``PUBLISH_BATCH`` with the ids ``first_id`` to
    ``first_id + count - 1`` are committed as the consecutive tokens ``first_token`` to
    ``first_token + count - 1``, one each: ``count`` ``PUBLISHED`` answers in one line."""

    NAME: ClassVar[str] = "PUBLISHED_RUN"
    first_id: int
    count: int
    first_token: int

    def __post_init__(self) -> None:
        _check_token(self.first_id, "PUBLISHED_RUN first id")
        _check_token(self.first_token, "PUBLISHED_RUN first token")
        if not isinstance(self.count, int) or not 0 < self.count <= MAX_BATCH:
            raise CommandParseError(
                f"PUBLISHED_RUN count must be 1 to {MAX_BATCH}, got {self.count!r}"
            )
        if self.first_token < 1:
            raise CommandParseError("PUBLISHED_RUN first token must be at least 1")

    @classmethod
    def from_args(cls, args: str) -> PublishedRunCommand:
        first, count, token = _split(args, 3, cls.NAME, "<first-id> <count> <first-token>")
        return cls(parse_token(first, "PUBLISHED_RUN first id"),
                   parse_token(count, "PUBLISHED_RUN count"),
                   parse_token(token, "PUBLISHED_RUN first token"))

    def to_args(self) -> str:
        return f"{self.first_id} {self.count} {self.first_token}"


@dataclass(frozen=True, slots=True)
class PublishedCommand(Command):
    """``PUBLISHED <id> <token>`` or ``PUBLISHED <id> <first> <last>`` (protocol version 2,
    master to publisher): the publish ``id`` is committed as ``token`` (or as the
    consecutive tokens ``first..last`` of a ``PUBLISH_TOKENS``), of the origin the master
    named in its ``ORIGIN`` line."""

    NAME: ClassVar[str] = "PUBLISHED"
    id: str
    first: int
    last: int

    def __post_init__(self) -> None:
        check_publish_id(self.id)
        _check_token(self.first)
        _check_token(self.last)
        if not 0 < self.first <= self.last:
            raise CommandParseError(
                f"PUBLISHED needs 0 < first <= last, got first={self.first} last={self.last}"
            )

    @property
    def tokens(self) -> list[int]:
        return list(range(self.first, self.last + 1))

    @classmethod
    def from_args(cls, args: str) -> PublishedCommand:
        parts = args.split(" ")
        if len(parts) not in (2, 3) or not all(parts):
            raise CommandParseError(
                "PUBLISHED takes 2 or 3 arguments: PUBLISHED <id> <token> or "
                "PUBLISHED <id> <first> <last>"
            )
        first = parse_token(parts[1])
        last = parse_token(parts[2]) if len(parts) == 3 else first
        return cls(parts[0], first, last)

    def to_args(self) -> str:
        if self.last == self.first:
            return f"{self.id} {self.first}"
        return f"{self.id} {self.first} {self.last}"


@dataclass(frozen=True, slots=True)
class RefusedCommand(Command):
    """``REFUSED <id> <status> <message>`` (protocol version 2, master to publisher): the
    publish ``id`` was refused and nothing of it is stored; ``status`` is the HTTP status
    the same refusal has over HTTP (400, 403, 404, 409, 413, 503)."""

    NAME: ClassVar[str] = "REFUSED"
    id: str
    status: int
    message: str

    def __post_init__(self) -> None:
        check_publish_id(self.id)
        if not isinstance(self.status, int) or not 100 <= self.status <= 599:
            raise CommandParseError(f"REFUSED status must be 100 to 599, got {self.status!r}")
        if "\n" in self.message or "\r" in self.message or not self.message:
            flat = " ".join(self.message.splitlines()) or "refused"
            object.__setattr__(self, "message", flat)

    @classmethod
    def from_args(cls, args: str) -> RefusedCommand:
        parts = args.split(" ", 2)
        if len(parts) != 3 or not all(parts):
            raise CommandParseError("REFUSED takes 3 arguments: REFUSED <id> <status> <message>")
        status = parts[1]
        if not (status.isdigit() and status.isascii() and len(status) == 3):
            raise CommandParseError(f"REFUSED status must be 100 to 599, got {status!r}")
        return cls(parts[0], int(status), parts[2])

    def to_args(self) -> str:
        return f"{self.id} {self.status} {self.message}"


@dataclass(frozen=True, slots=True)
class ChallengeCommand(Command):
    """``CHALLENGE <nonce>``: the master asks the client to authenticate (protocol version 2,
    right after ``VERSION``, on a master with credentials configured)."""

    NAME: ClassVar[str] = "CHALLENGE"
    nonce: str

    def __post_init__(self) -> None:
        _check_hex(self.nonce, 32, "CHALLENGE nonce")

    @classmethod
    def from_args(cls, args: str) -> ChallengeCommand:
        return cls(_split(args, 1, cls.NAME, "<nonce>")[0])

    def to_args(self) -> str:
        return self.nonce


@dataclass(frozen=True, slots=True)
class AuthCommand(Command):
    """``AUTH <credential> <nonce> <proof>``: the client names its credential, sends its own
    nonce and proves the secret (see :mod:`replication.wire.auth`)."""

    NAME: ClassVar[str] = "AUTH"
    credential: str
    nonce: str
    proof: str

    def __post_init__(self) -> None:
        if not _CREDENTIAL.fullmatch(self.credential):
            raise CommandParseError(
                "credential name must be 1 to 64 of A-Z a-z 0-9 _ . -, got "
                f"{self.credential[:70]!r}"
            )
        _check_hex(self.nonce, 32, "AUTH nonce")
        _check_hex(self.proof, 64, "AUTH proof")

    @classmethod
    def from_args(cls, args: str) -> AuthCommand:
        credential, nonce, proof = _split(args, 3, cls.NAME, "<credential> <nonce> <proof>")
        if " " in proof:
            raise CommandParseError("AUTH takes 3 arguments: AUTH <credential> <nonce> <proof>")
        return cls(credential, nonce, proof)

    def to_args(self) -> str:
        return f"{self.credential} {self.nonce} {self.proof}"


@dataclass(frozen=True, slots=True)
class AuthOkCommand(Command):
    """``AUTH_OK <proof>``: the master accepts the client and proves the secret back."""

    NAME: ClassVar[str] = "AUTH_OK"
    proof: str

    def __post_init__(self) -> None:
        _check_hex(self.proof, 64, "AUTH_OK proof")

    @classmethod
    def from_args(cls, args: str) -> AuthOkCommand:
        return cls(_split(args, 1, cls.NAME, "<proof>")[0])

    def to_args(self) -> str:
        return self.proof


_CREDENTIAL = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def _check_hex(text: str, length: int, what: str) -> None:
    if not isinstance(text, str) or len(text) != length or not all(
        c in "0123456789abcdef" for c in text
    ):
        raise CommandParseError(f"{what} must be {length} lower-case hex digits")


@dataclass(frozen=True, slots=True)
class ErrorCommand(Command):
    """``ERROR <text>``: something went wrong; the text says what.

    Line breaks in ``message`` are replaced by spaces so it always fits in one line.
    """

    NAME: ClassVar[str] = "ERROR"
    message: str

    def __post_init__(self) -> None:
        if "\n" in self.message or "\r" in self.message:
            flat = self.message.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
            object.__setattr__(self, "message", flat)

    @classmethod
    def from_args(cls, args: str) -> ErrorCommand:
        return cls(args)

    def to_args(self) -> str:
        return self.message


class CommandRegistry:
    """Which commands exist and which side may send each.

    ``parse(line, sender)`` turns one received line into a command, checking that ``sender``
    (the peer's side) is allowed to send it. Applications add their own commands with
    :meth:`register` on a registry from :func:`default_registry`; built-in names cannot be
    replaced. ``application`` holds the handlers an application attached to its commands
    (a :class:`replication.wire.application.ApplicationCommands`, which attaches itself), or
    ``None``.
    """

    def __init__(self) -> None:
        self._classes: dict[str, type[Command]] = {}
        self._senders: dict[str, frozenset[str]] = {}
        self.application: ApplicationCommands | None = None

    def register(self, cls: type[Command], sent_by: Iterable[str]) -> None:
        """Add ``cls`` to the registry; ``sent_by`` holds ``"master"``, ``"worker"`` or both."""
        name = getattr(cls, "NAME", None)
        if not isinstance(name, str) or not _COMMAND_NAME.fullmatch(name):
            raise ValueError(
                f"{cls.__name__}.NAME must be 1 to 32 of A-Z 0-9 _ starting with a letter"
            )
        if name in self._classes:
            raise ValueError(f"a command named {name} is already registered")
        senders = frozenset(sent_by)
        if not senders or not senders <= SIDES:
            raise ValueError(f"sent_by must name 'master', 'worker' or both, got {sorted(senders)}")
        self._classes[name] = cls
        self._senders[name] = senders

    def command_class(self, name: str) -> type[Command] | None:
        """The class registered as ``name``, if any."""
        return self._classes.get(name)

    def copy(self) -> CommandRegistry:
        """A registry with the same commands, to extend; without ``application``."""
        new = CommandRegistry()
        new._classes = dict(self._classes)
        new._senders = dict(self._senders)
        return new

    def names(self, sent_by: str | None = None) -> frozenset[str]:
        """The registered command names, or those ``sent_by`` may send."""
        if sent_by is None:
            return frozenset(self._classes)
        return frozenset(n for n, s in self._senders.items() if sent_by in s)

    def parse(self, line: bytes, sender: str) -> Command:
        """Parse one line (without ``\\n``) received from a peer on side ``sender``."""
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CommandParseError(f"line is not valid UTF-8 (byte {e.start})") from None
        if "\n" in text or "\r" in text:
            raise CommandParseError("line contains an embedded line break")
        name, _, args = text.partition(" ")
        cls = self._classes.get(name)
        if cls is None:
            shown = name if len(name) <= 40 else name[:40] + "..."
            raise CommandParseError(f"unknown command {shown!r}")
        if sender not in self._senders[name]:
            raise CommandParseError(f"{name} may not be sent by the {sender}")
        return cls.from_args(args)


_BUILTINS: tuple[tuple[type[Command], frozenset[str]], ...] = (
    (ServerCommand, frozenset({MASTER})),
    (NameCommand, frozenset({WORKER})),
    (VersionCommand, SIDES),
    (PingCommand, SIDES),
    (ReplicateCommand, frozenset({WORKER})),
    (RdataCommand, frozenset({MASTER})),
    (RowsCommand, frozenset({MASTER})),
    (LineLimitCommand, frozenset({WORKER})),
    (PositionCommand, frozenset({MASTER})),
    (HandledCommand, frozenset({WORKER})),
    (GapCommand, frozenset({MASTER})),
    (ResetCommand, frozenset({MASTER})),
    (ErrorCommand, SIDES),
    (OriginCommand, SIDES),
    (RelayCommand, frozenset({WORKER})),
    (PublisherCommand, frozenset({WORKER})),
    (PublishingCommand, frozenset({MASTER})),
    (PublishCommand, frozenset({WORKER})),
    (PublishTokensCommand, frozenset({WORKER})),
    (PublishBatchCommand, frozenset({WORKER})),
    (PublishedCommand, frozenset({MASTER})),
    (PublishedRunCommand, frozenset({MASTER})),
    (RefusedCommand, frozenset({MASTER})),
    (ChallengeCommand, frozenset({MASTER})),
    (AuthCommand, frozenset({WORKER})),
    (AuthOkCommand, frozenset({MASTER})),
)


#: The names of the built-in commands: an application cannot replace or handle them.
BUILTIN_COMMANDS: Final = frozenset(cls.NAME for cls, _ in _BUILTINS)


def default_registry() -> CommandRegistry:
    """A new registry holding the built-in commands, ready for applications to extend."""
    registry = CommandRegistry()
    for cls, senders in _BUILTINS:
        registry.register(cls, senders)
    return registry


def rdata_lines(stream: str, token: int, rows: Iterable[str]) -> bytes:
    """Encode the rows of one token as ``RDATA`` lines, each ending in ``\\n``.

    ``rows`` are compact JSON texts; all but the last get ``batch``, the last the token.
    This is the master's fan-out encoder: the result is written as it is to every
    subscriber of ``stream``.
    """
    return rdata_block(stream, [(token, list(rows))])


def rdata_block(stream: str, tokens: Iterable[tuple[int, Sequence[str]]]) -> bytes:
    """:func:`rdata_lines` of many ``(token, rows)`` of one stream, joined: what the master
    writes for a multi-token publish or a catch-up page, built in one pass."""
    head = f"RDATA {stream} "
    batch = f"RDATA {stream} batch "
    between = "\n" + batch

    def several(token: int, rows: Sequence[str]) -> str:
        if not rows:
            raise ValueError("a token carries at least one row")
        last = len(rows) - 1
        return f"{batch}{between.join(rows[:last])}\n{head}{token} {rows[last]}\n"

    return "".join([
        f"{head}{token} {rows[0]}\n" if len(rows) == 1 else several(token, rows)
        for token, rows in tokens
    ]).encode()


def rows_block(
    stream: str, first: int, tokens_rows: Sequence[Sequence[str]], max_line: int
) -> bytes:
    """The consecutive tokens ``first, first + 1, ...`` of one stream (each a sequence of
    compact JSON rows) as ``ROWS`` lines of at most ``max_line`` bytes each (the newline
    not counted): as many tokens to a line as fit, in order. A token too large for a line
    of its own goes as its ``RDATA`` lines (:func:`rdata_block`), which a version 3 worker
    also takes. What the master writes to followers of version 3."""
    head = f"ROWS {stream} "
    joined = [",".join(rows) for rows in tokens_rows]
    body = "],[".join(joined)
    line_text = f"{head}{first} [[{body}]]"
    if len(line_text) <= max_line:  # characters: a lower bound of the bytes
        line = line_text.encode()
        if len(line) <= max_line:
            return line + b"\n"
    out: list[bytes] = []
    i, count = 0, len(joined)
    while i < count:
        start = i
        prefix = f"{head}{first + start} [["
        size = len(prefix.encode()) + 2
        parts: list[bytes] = []
        while i < count:
            text = joined[i].encode()
            grown = size + len(text) + (3 if parts else 0)
            if grown > max_line:
                break
            parts.append(text)
            size = grown
            i += 1
        if parts:
            out.append(prefix.encode() + b"],[".join(parts) + b"]]\n")
        else:  # one token larger than a line: its RDATA lines
            out.append(rdata_block(stream, ((first + i, tokens_rows[i]),)))
            i += 1
    return b"".join(out)


def rdata_line_length(stream: str, row: str) -> int:
    """The longest encoded ``RDATA`` line ``row`` can produce in ``stream``, in bytes, for
    checking a row against the line limit before a token is known (19 token digits, and
    room for the longest ``@<origin>`` of protocol version 2)."""
    return len("RDATA ") + len(stream.encode()) + 1 + 64 + 1 + 19 + 1 + len(row.encode())
