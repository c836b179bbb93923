"""The value kinds and rules that configuration keys are described with.

Each :class:`~replication.config.schema.Kind` here reads one type of value from YAML, checks it
with the messages users see (``must be a positive integer, got 0``), and describes itself for
the reference. Each :class:`~replication.config.schema.Rule` relates a key to an earlier one
(``max_buffer_bytes`` at least ``max_line_bytes``). Also here: :func:`is_handler_name`, the one
definition of a handler name, shared with :mod:`replication.handlers`.

Endpoint strings are parsed against a ``MemoryReactor``; nothing here imports the reactor.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from replication.config.document import Document, join
from replication.config.model import CredentialSpec, WorkerStream
from replication.config.schema import AnyKey, Checking, Key, Kind, Loading, Rule
from replication.config.units import (
    describe,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)
from replication.wire.commands import CommandParseError, check_peer_name, check_stream_name


def is_handler_name(name: str) -> bool:
    """Whether ``name`` reads ``package.module:callable``.

    Both sides of the one ``:`` are dotted Python identifiers (``str.isidentifier``, so
    ``café.sync:run`` is a name and ``my-pkg:run``, ``pkg..mod:run``, ``pkg.mod:`` and
    ``pkg.1st:run`` are not): exactly the names ``importlib`` and ``getattr`` can reach.
    """
    module, colon, attribute = name.partition(":")
    parts = [*module.split("."), *attribute.split(".")]
    return bool(colon) and all(part.isidentifier() for part in parts)


def _literal(value: object) -> str:
    if value is None:
        return "``null``"
    if isinstance(value, bool):
        return f"``{str(value).lower()}``"
    return f"``{value}``"


def _text(document: Document, value: object, path: str) -> str:
    if not isinstance(value, str):
        raise document.error(path, f"must be a string, got {describe(value)}")
    if not value:
        raise document.error(path, "must not be empty")
    return value


def _stream_name(document: Document, value: object, path: str) -> str:
    if not isinstance(value, str):
        raise document.error(
            path, f"a stream name must be a string, got {describe(value)} (quote it)"
        )
    try:
        check_stream_name(value)
    except CommandParseError as error:
        raise document.error(path, str(error)) from None
    return value


def _with_unit(
    document: Document, text: str, path: str, parse: Callable[[str], object], wanted: str
) -> object:
    """``parse(text)``, or an error saying the value must be ``wanted``."""
    try:
        return parse(text)
    except ValueError:
        raise document.error(path, f"must be {wanted}, got {text!r}") from None


def _items(document: Document, value: object, path: str, wanted: str) -> Iterator[tuple[str, Any]]:
    """Each item of the tuple ``value`` with its path (``streams[2]``); an error if ``value`` is
    not a tuple."""
    _instance(document, value, tuple, path, wanted)
    assert isinstance(value, tuple)
    for index, item in enumerate(value):
        yield f"{path}[{index}]", item


def _once(document: Document, seen: dict[str, str], stream: str, path: str) -> None:
    """Record that ``stream`` is at ``path``; an error if ``seen`` already has it."""
    if stream in seen:
        raise document.error(path, f"duplicate stream {stream!r} (also {seen[stream]})")
    seen[stream] = document.written(path)


def _instance(document: Document, value: object, kind: type, path: str, wanted: str) -> None:
    if not isinstance(value, kind):
        raise document.error(path, f"must be {wanted}, got {describe(value)}")


class Text(Kind):
    """A non-empty string."""

    name = "string"

    def check(self, checking: Checking, value: object, path: str) -> None:
        _text(checking.document, value, path)

    def show(self, value: object) -> str:
        return _literal(value)


class PeerName(Text):
    """A server or worker name: printable ASCII without spaces (``check_peer_name``)."""

    def __init__(self, what: str) -> None:
        #: How the name's errors call it (``invalid server_name 'my master'``).
        self.what = what

    def check(self, checking: Checking, value: object, path: str) -> None:
        name = _text(checking.document, value, path)
        try:
            check_peer_name(name, self.what)
        except CommandParseError as error:
            raise checking.document.error(path, str(error)) from None


class SchemaName(Text):
    """A PostgreSQL schema name the store accepts: lower-case letters, digits and ``_``, not
    starting with a digit, at most 63 characters (the pattern of
    :func:`replication.store.postgres.check_schema_name`, kept here so that checking a
    configuration does not need psycopg)."""

    name = "schema name"

    def check(self, checking: Checking, value: object, path: str) -> None:
        schema = _text(checking.document, value, path)
        if not _SCHEMA_NAME.match(schema):
            raise checking.document.error(
                path,
                f"schema {schema!r}: use lower-case letters, digits and '_' (not first), at "
                "most 63 characters",
            )


_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")


class Endpoint(Text):
    """A Twisted endpoint string, server (listen) or client (connect); a client string is
    checked as :func:`replication.tls.client_endpoint` builds it (an ``ssl:`` one must name
    the host its certificate is verified against), a server string as
    :func:`replication.tls.server_endpoint` does (``ssl:`` takes ``caCertsDir``)."""

    def __init__(self, server: bool) -> None:
        self.server = server
        self.name = "server endpoint" if server else "client endpoint"

    def check(self, checking: Checking, value: object, path: str) -> None:
        # Imported here so that importing this module stays cheap; neither import installs or
        # touches the global reactor, and a MemoryReactor never listens or connects.
        from twisted.internet.testing import MemoryReactor

        from replication.tls import client_endpoint, server_endpoint

        kind = "server" if self.server else "client"
        description = _text(checking.document, value, path)
        parse: Callable[[Any, str], object] = server_endpoint if self.server else client_endpoint
        try:
            endpoint = parse(MemoryReactor(), description)  # type: ignore[no-untyped-call]
        except Exception as error:  # Twisted raises ValueError, TypeError, KeyError, ImportError
            detail = str(error) or type(error).__name__
            raise checking.document.error(
                path, f"invalid Twisted {kind} endpoint {description!r}: {detail}"
            ) from None
        port = getattr(endpoint, "_port", None)
        if isinstance(port, int) and not 0 <= port <= 65535:
            raise checking.document.error(
                path,
                f"invalid Twisted {kind} endpoint {description!r}: port {port} is not in 0..65535",
            )


class Endpoints(Kind):
    """One client endpoint string, or a non-empty list of them, each valid and listed once
    (the worker's ``master``). A string is kept as a string, a list becomes a tuple; the
    items' errors name them ``master[i]``."""

    name = "client endpoint, or list of client endpoints"

    def __init__(self) -> None:
        self.endpoint = Endpoint(server=False)

    def load(self, loading: Loading, value: Any, path: str) -> Any:
        return tuple(value) if isinstance(value, list) else value

    def check(self, checking: Checking, value: object, path: str) -> None:
        document = checking.document
        if isinstance(value, str):
            self.endpoint.check(checking, value, path)
            return
        _instance(document, value, tuple, path, "a client endpoint or a list of them")
        assert isinstance(value, tuple)
        if not value:
            raise document.error(path, "must name at least one master")
        seen: dict[str, str] = {}
        for item, description in _items(document, value, path, "a tuple of client endpoints"):
            self.endpoint.check(checking, description, item)
            if description in seen:
                raise document.error(
                    item, f"duplicate master {description!r} (also {seen[description]})"
                )
            seen[description] = document.written(item)

    def show(self, value: object) -> str:
        if isinstance(value, tuple):
            return f"``[{', '.join(value)}]``"
        return _literal(value)

    def items_from_flag(self, texts: list[str], option: str | None) -> tuple[object, ...]:
        return tuple(texts)

    def from_flag_items(self, items: tuple[object, ...]) -> object:
        """One ``--master`` is one endpoint string, as the key's single form."""
        return items[0] if len(items) == 1 else items


class HandlerName(Text):
    """``package.module:callable`` (see :func:`is_handler_name`); it is not imported here."""

    def check(self, checking: Checking, value: object, path: str) -> None:
        name = _text(checking.document, value, path)
        if not is_handler_name(name):
            raise checking.document.error(
                path, f"must look like 'package.module:callable', got {name!r}"
            )


class _Strings(Kind):
    """A YAML list of strings, held as a tuple: ``null`` is the empty list, anything else
    that is not a list is an error (``must be a list of ...``, from :attr:`name`)."""

    def load(self, loading: Loading, value: Any, path: str) -> Any:
        if value is not None and not isinstance(value, list):
            raise loading.document.error(path, f"must be a {self.name}, got {describe(value)}")
        return tuple(value or ())

    def show(self, value: object) -> str:
        assert isinstance(value, tuple)
        return f"``[{', '.join(value)}]``"


class Directories(_Strings):
    """A list of directory names (non-empty strings); whether they exist is not checked here.

    A list is the only form: ``null`` is the empty list, a single string is an error.
    """

    name = "list of directories"

    def check(self, checking: Checking, value: object, path: str) -> None:
        document = checking.document
        for item, directory in _items(document, value, path, "a tuple of directories"):
            if "\0" in _text(document, directory, item):
                raise document.error(item, "must not contain a NUL character")


class Options(Kind):
    """Keyword arguments: a mapping of option names (strings) to plain YAML values, or null.

    The loaded mapping is read-only; its values are whatever YAML gave (nested lists and
    mappings included) and are not checked here.
    """

    name = "mapping of option names to values, or null"

    def load(self, loading: Loading, value: Any, path: str) -> Any:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise loading.document.error(
                path, f"must be a mapping of option names to values, got {describe(value)}"
            )
        return types.MappingProxyType(dict(value))

    def check(self, checking: Checking, value: object, path: str) -> None:
        if value is None:
            return
        document = checking.document
        _instance(document, value, Mapping, path, "a mapping of option names to values")
        assert isinstance(value, Mapping)
        for name in value:
            if not isinstance(name, str) or not name:
                raise document.error(
                    path, f"option names must be non-empty strings, got {describe(name)}"
                )

    def show(self, value: object) -> str:
        return _literal(None) if value is None else "``{...}``"


class Boolean(Kind):
    """``true`` or ``false``."""

    name = "boolean"

    def check(self, checking: Checking, value: object, path: str) -> None:
        _instance(checking.document, value, bool, path, "true or false")

    def show(self, value: object) -> str:
        return _literal(value)


class Choice(Kind):
    """One of a few strings."""

    def __init__(self, options: tuple[str, ...], either: bool = False) -> None:
        self.options = options
        #: Errors say ``must be a or b`` instead of ``must be one of a, b``.
        self.either = either
        self.name = " or ".join(f"``{option}``" for option in options)

    def check(self, checking: Checking, value: object, path: str) -> None:
        if value not in self.options:
            if self.either:
                wanted = " or ".join(self.options)
            else:
                wanted = f"one of {', '.join(self.options)}"
            raise checking.document.error(path, f"must be {wanted}, got {describe(value)}")

    def show(self, value: object) -> str:
        return _literal(value)

    def choices(self) -> tuple[str, ...]:
        return self.options


class Integer(Kind):
    """An integer (not a boolean) in ``low ..= high`` (``high`` ``None``: no upper bound)."""

    name = "integer"

    def __init__(self, low: int, high: int | None = None) -> None:
        self.low = low
        self.high = high

    def check(self, checking: Checking, value: object, path: str) -> None:
        document, low, high = checking.document, self.low, self.high
        if isinstance(value, bool) or not isinstance(value, int):
            wanted = "a positive integer" if low == 1 else "an integer"
            raise document.error(path, f"must be {wanted}, got {describe(value)}")
        if value < low or (high is not None and value > high):
            if low == 1 and high is None:
                raise document.error(path, f"must be a positive integer, got {value}")
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            raise document.error(path, f"must be {bounds}, got {value}")

    def show(self, value: object) -> str:
        return _literal(value)

    def bounds(self) -> str:
        if self.high is None:
            return f"at least {self.low}"
        return f"between {self.low} and {self.high}"


class Size(Integer):
    """A number of bytes: an integer or a size string (``64KiB``)."""

    name = "size"

    def __init__(self, low: int = 1, high: int | None = None) -> None:
        super().__init__(low, high)

    def load(self, loading: Loading, value: Any, path: str) -> Any:
        if isinstance(value, str):
            wanted = "a positive integer or a size like '64KiB', '8MiB', '1GiB'"
            return _with_unit(loading.document, value, path, parse_size, wanted)
        return value

    def show(self, value: object) -> str:
        assert isinstance(value, int)
        return f"``{format_size(value)}``"

    def bounds(self) -> str:
        if self.high is None:
            return "" if self.low == 1 else f"at least ``{format_size(self.low)}``"
        return f"between ``{format_size(self.low)}`` and ``{format_size(self.high)}``"


class Duration(Kind):
    """A positive number of seconds: a number or a duration string (``500ms``, ``7d``)."""

    name = "duration"

    def load(self, loading: Loading, value: Any, path: str) -> Any:
        if isinstance(value, str):
            wanted = (
                "a positive number of seconds or a duration like '500ms', '5s', '2m', '1h', '7d'"
            )
            return _with_unit(loading.document, value, path, parse_duration, wanted)
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value

    def check(self, checking: Checking, value: object, path: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise checking.document.error(
                path, f"must be a positive number of seconds, got {describe(value)}"
            )
        if not math.isfinite(value) or value <= 0:
            raise checking.document.error(
                path, f"must be a positive number of seconds, got {value}"
            )

    def show(self, value: object) -> str:
        assert isinstance(value, int | float)
        return f"``{format_duration(value)}``"

    def text(self, value: object) -> str:
        assert isinstance(value, int | float)
        return f"{value:g}s"


class Nullable(Kind):
    """``inner`` or ``null``."""

    def __init__(self, inner: Kind) -> None:
        self.inner = inner
        self.name = f"{inner.name} or null"

    def load(self, loading: Loading, value: Any, path: str) -> Any:
        return None if value is None else self.inner.load(loading, value, path)

    def check(self, checking: Checking, value: object, path: str) -> None:
        if value is not None:
            self.inner.check(checking, value, path)

    def show(self, value: object) -> str:
        return _literal(None) if value is None else self.inner.show(value)

    def bounds(self) -> str:
        return self.inner.bounds()

    def choices(self) -> tuple[str, ...] | None:
        return self.inner.choices()


class StreamNames(_Strings):
    """The master's list of stream names, each valid and listed once."""

    name = "list of stream names"

    def check(self, checking: Checking, value: object, path: str) -> None:
        document = checking.document
        seen: dict[str, str] = {}
        for item, stream in _items(document, value, path, "a tuple of stream names"):
            _once(document, seen, _stream_name(document, stream, item), item)


class PeerEndpoints(Kind):
    """A cluster's peers: a non-empty list of Twisted client endpoint strings, each listed
    once. ``None`` (the default: the section not written) means no cluster; written as
    ``null`` or ``[]`` it is an empty list, an error. A section written without this key is
    an error too, so that a misspelt ``peers`` does not leave a master silently outside its
    cluster."""

    name = "list of client endpoints"

    def __init__(self) -> None:
        self.endpoint = Endpoint(server=False)

    def load(self, loading: Loading, value: Any, path: str) -> Any:
        if value is not None and not isinstance(value, list):
            raise loading.document.error(path, f"must be a {self.name}, got {describe(value)}")
        return tuple(value or ())

    def check(self, checking: Checking, value: object, path: str) -> None:
        document = checking.document
        section = path.rpartition(".")[0]
        if value is None:
            if section in document.lines:  # the section is written, without peers
                raise document.error(
                    section,
                    f"{path} is missing: list every master of the cluster (this one "
                    f"included), or leave {section} out for a master on its own",
                )
            return
        if isinstance(value, tuple) and not value:
            raise document.error(
                path,
                "must list at least one peer: every master of the cluster, this one "
                f"included; leave {section} out for a master on its own",
            )
        seen: dict[str, int] = {}
        for index, (item, endpoint) in enumerate(
            _items(document, value, path, "a tuple of endpoint strings")
        ):
            self.endpoint.check(checking, endpoint, item)
            assert isinstance(endpoint, str)
            if endpoint in seen:
                raise document.error(
                    item,
                    f"{endpoint!r} is listed more than once, at indexes {seen[endpoint]} and "
                    f"{index}: each peer must have a unique endpoint",
                )
            seen[endpoint] = index

    def show(self, value: object) -> str:
        if value is None:
            return _literal(None)
        assert isinstance(value, tuple)
        return f"``[{', '.join(value)}]``"


class WorkerStreams(Kind):
    """The worker's streams: a list of names, or a mapping of name to ``{from: ...}``.

    Items are :class:`WorkerStream`. Checks name item ``i`` ``streams[i]``; for a mapping the
    document's aliases turn that back into ``streams.<name>``.
    """

    name = "list of stream names, or mapping of stream name to options"

    def __init__(self, start: Choice) -> None:
        #: The kind of an item's ``from`` option.
        self.start = start

    def load(self, loading: Loading, value: Any, path: str) -> Any:
        document = loading.document
        if value is None:
            return ()
        if isinstance(value, list):
            return tuple(WorkerStream(name) for name in value)
        if not isinstance(value, dict):
            raise document.error(
                path,
                "must be a list of stream names or a mapping of stream name to options, "
                f"got {describe(value)}",
            )
        built: list[WorkerStream] = []
        for index, (name, spec) in enumerate(value.items()):
            item = f"{path}.{name}"
            document.aliases[f"{path}[{index}]"] = item
            options = loading.section(spec, item, ("from",))
            built.append(WorkerStream(name, options["from"]) if options else WorkerStream(name))
        return tuple(built)

    def check(self, checking: Checking, value: object, path: str) -> None:
        document = checking.document
        seen: dict[str, str] = {}
        for item, stream in _items(document, value, path, "a tuple of WorkerStream"):
            _instance(document, stream, WorkerStream, item, "a WorkerStream")
            assert isinstance(stream, WorkerStream)
            _once(document, seen, _stream_name(document, stream.name, item), item)
            self.start.check(checking, stream.start, f"{item}.from")

    def show(self, value: object) -> str:
        assert isinstance(value, tuple)
        return "``[]``" if not value else _literal(value)

    def item_option(self) -> tuple[tuple[str, ...], str]:
        default = {field.name: field.default for field in dataclasses.fields(WorkerStream)}
        return self.start.options, str(default["start"])

    def items_from_flag(self, texts: list[str], option: str | None) -> tuple[object, ...]:
        if option is None:
            return tuple(WorkerStream(name) for name in texts)
        return tuple(WorkerStream(name, option) for name in texts)


class PerStream(Kind):
    """Per-stream overrides of the section ``base`` (a mapping of stream name to its keys).

    ``base`` is both the YAML section and the attribute of the result holding the defaults an
    override starts from; the result is a read-only mapping of stream name to that dataclass.
    With ``strict`` true, every stream must be one of ``declared``.
    """

    def __init__(self, base: str, declared: str, strict: str) -> None:
        self.base = base
        self.declared = declared
        self.strict = strict
        self.name = f"mapping of stream name to {base} keys"

    def _items(self, keys: tuple[Key, ...]) -> list[Key]:
        return [key for key in keys if key.section == self.base and key.kind is not self]

    def load(self, loading: Loading, value: Any, path: str) -> Any:
        items = self._items(loading.schema.keys)
        overrides: dict[str, dict[str, Any]] = {}
        for stream, spec in loading.section(value, path, AnyKey()).items():
            stream_path = f"{path}.{stream}"
            _stream_name(loading.document, stream, stream_path)
            options = loading.section(spec, stream_path, [key.name for key in items])
            changes: dict[str, Any] = {}
            for key in items:
                if key.name in options:
                    item = join(stream_path, key.name)
                    changes[key.attrs[-1]] = key.kind.load(loading, options[key.name], item)
            overrides[stream] = changes
        return overrides

    def finish(self, value: Any, config: Any) -> Any:
        base = getattr(config, self.base)
        return types.MappingProxyType(
            {stream: dataclasses.replace(base, **changes) for stream, changes in value.items()}
        )

    def check(self, checking: Checking, value: object, path: str) -> None:
        document = checking.document
        _instance(document, value, Mapping, path, "a mapping of stream names")
        assert isinstance(value, Mapping)
        strict = checking.value_of(self.strict)
        declared = checking.value_of(self.declared)
        assert isinstance(declared, tuple)  # checked before, as an earlier key
        model = type(getattr(checking.schema.default(), self.base))
        items = self._items(checking.schema.keys)
        for stream, override in value.items():
            stream_path = f"{path}.{stream}"
            _stream_name(document, stream, stream_path)
            if strict and stream not in declared:
                raise document.error(
                    stream_path,
                    f"stream {stream!r} is not in {self.declared}, and {self.strict} is true",
                )
            _instance(document, override, model, stream_path, f"a {model.__name__}")
            for key in items:
                item = getattr(override, key.attrs[-1])
                key.kind.check(checking, item, join(stream_path, key.name))

    def show(self, value: object) -> str:
        return "``{}``"


class _Compared(Rule):
    """The key's value compared with the ``other`` key's (both numbers, already checked)."""

    #: How the rule reads: ``at least``.
    wording: str

    def __init__(self, other: str) -> None:
        self.other = other

    def fails(self, value: float, other: float) -> bool:
        """Whether ``value`` breaks the rule against ``other``."""
        raise NotImplementedError

    def check(self, checking: Checking, key: Key, value: object) -> None:
        other_key = checking.schema.key(self.other)
        other = other_key.value_in(checking.config)
        assert isinstance(value, int | float) and isinstance(other, int | float)
        if self.fails(value, other):
            raise checking.document.error(
                key.path,
                f"must be {self.wording} {self.other} ({other_key.kind.text(other)}), "
                f"got {key.kind.text(value)}",
            )

    def describe(self) -> str:
        return f"{self.wording} ``{self.other}``"


class AtLeast(_Compared):
    """The key's value is at least the ``other`` key's."""

    wording = "at least"

    def fails(self, value: float, other: float) -> bool:
        return value < other


class GreaterThan(_Compared):
    """The key's value is greater than the ``other`` key's."""

    wording = "greater than"

    def fails(self, value: float, other: float) -> bool:
        return value <= other


class OnlyWith(Rule):
    """The key may be set (not null) only when the ``other`` key is ``required``."""

    def __init__(self, other: str, required: str) -> None:
        self.other = other
        self.required = required

    def check(self, checking: Checking, key: Key, value: object) -> None:
        other = checking.value_of(self.other)
        if value is not None and other != self.required:
            name = self.other.rpartition(".")[2]
            raise checking.document.error(
                key.path,
                f"is only allowed with {name} {self.required}, not with {name} {other}",
            )

    def describe(self) -> str:
        return f"only with ``{self.other}: {self.required}``"


class FewerThanEntries(Rule):
    """The key's value is below the number of entries of the ``other`` key, a list (a
    ``None`` list: the key must be 0): ``cluster.ack_peers`` counts peers besides this
    master."""

    def __init__(self, other: str) -> None:
        self.other = other

    def check(self, checking: Checking, key: Key, value: object) -> None:
        entries = checking.value_of(self.other)
        count = len(entries) if isinstance(entries, (list, tuple)) else 0
        if isinstance(value, int) and value > max(count - 1, 0):
            raise checking.document.error(
                key.path,
                f"is {value}, but {self.other} lists {count} masters, this one included: "
                f"at most {max(count - 1, 0)} peers can confirm a publish",
            )

    def describe(self) -> str:
        return f"less than the number of entries of ``{self.other}``"


class RequiredWith(OnlyWith):
    """As :class:`OnlyWith`, and the key must be set (not null) when the ``other`` key is
    ``required``."""

    def check(self, checking: Checking, key: Key, value: object) -> None:
        super().check(checking, key, value)
        other = checking.value_of(self.other)
        if value is None and other == self.required:
            name = self.other.rpartition(".")[2]
            raise checking.document.error(key.path, f"is required with {name} {self.required}")

    def describe(self) -> str:
        return f"required with, and only with, ``{self.other}: {self.required}``"


class NotWith(Rule):
    """The key may not be set (not null) when the ``other`` key is ``excluded``:
    ``cluster.peers`` and ``store.type: postgres`` are two ways to run several masters,
    never combined."""

    def __init__(self, other: str, excluded: str, why: str) -> None:
        self.other = other
        self.excluded = excluded
        self.why = why

    def check(self, checking: Checking, key: Key, value: object) -> None:
        other = checking.value_of(self.other)
        if value is not None and other == self.excluded:
            name = self.other
            raise checking.document.error(
                key.path, f"is not allowed with {name} {self.excluded}: {self.why}"
            )

    def describe(self) -> str:
        return f"not with ``{self.other}: {self.excluded}``"


_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_CREDENTIAL_KEYS = ("secret_file", "secret_env", "read", "publish", "peer", "status")


def _credential_name(document: Document, value: object, path: str) -> str:
    if not isinstance(value, str) or not _CREDENTIAL_NAME.fullmatch(value):
        raise document.error(
            path, f"a credential name must be 1 to 64 of A-Z a-z 0-9 _ . -, got {describe(value)}"
        )
    return value


def _secret_source(
    document: Document, path: str, secret_file: object, secret_env: object
) -> None:
    """Exactly one of ``secret_file`` and ``secret_env``, each a non-empty string."""
    if (secret_file is None) == (secret_env is None):
        raise document.error(
            path, "needs exactly one of secret_file (a file holding the secret) and "
            "secret_env (an environment variable holding it)"
        )
    if secret_file is not None:
        _text(document, secret_file, join(path, "secret_file"))
    if secret_env is not None:
        _text(document, secret_env, join(path, "secret_env"))


class CredentialName(Text):
    """A credential's name: 1 to 64 of ``A-Z a-z 0-9 _ . -``."""

    def check(self, checking: Checking, value: object, path: str) -> None:
        _credential_name(checking.document, value, path)


class Credentials(Kind):
    """The master's named credentials: a mapping of credential name to ``secret_file`` or
    ``secret_env``, ``read``, ``publish`` (lists of stream names or ``*``), ``peer`` and
    ``status`` (booleans). Loaded as a read-only mapping of name to
    :class:`~replication.config.model.CredentialSpec`."""

    name = "mapping of credential name to its secret and permissions"

    def load(self, loading: Loading, value: Any, path: str) -> Any:
        built: dict[str, CredentialSpec] = {}
        for name, spec in loading.section(value, path, AnyKey()).items():
            item = f"{path}.{name}"
            _credential_name(loading.document, name, item)
            options = loading.section(spec, item, _CREDENTIAL_KEYS)
            streams = {}
            for which in ("read", "publish"):
                listed = options.get(which, [])
                if listed is None:
                    listed = []
                if not isinstance(listed, list):
                    raise loading.document.error(
                        join(item, which),
                        f"must be a list of stream names or '*', got {describe(listed)}",
                    )
                streams[which] = tuple(listed)
            built[name] = CredentialSpec(
                name, options.get("secret_file"), options.get("secret_env"),
                streams["read"], streams["publish"], options.get("peer", False),
                options.get("status", False),
            )
        return types.MappingProxyType(built)

    def check(self, checking: Checking, value: object, path: str) -> None:
        document = checking.document
        _instance(document, value, Mapping, path, "a mapping of credential names")
        assert isinstance(value, Mapping)
        for name, spec in value.items():
            item = f"{path}.{name}"
            _credential_name(document, name, item)
            _instance(document, spec, CredentialSpec, item, "a CredentialSpec")
            assert isinstance(spec, CredentialSpec)
            _secret_source(document, item, spec.secret_file, spec.secret_env)
            for which in ("read", "publish"):
                for index, stream in enumerate(getattr(spec, which)):
                    if stream != "*":
                        _stream_name(document, stream, f"{item}.{which}[{index}]")
            for which in ("peer", "status"):
                if not isinstance(getattr(spec, which), bool):
                    raise document.error(
                        join(item, which),
                        f"must be true or false, got {describe(getattr(spec, which))}",
                    )

    def show(self, value: object) -> str:
        return "``{}``"


class OneSecret(Rule):
    """With ``<section>.credential`` set, exactly one of ``<section>.secret_file`` and
    ``<section>.secret_env``; without it, neither."""

    def __init__(self, section: str) -> None:
        self.section = section
        #: The earlier key this rule refers to (the schema checks it comes first).
        self.other = f"{section}.secret_file"

    def check(self, checking: Checking, key: Key, value: object) -> None:
        credential = checking.value_of(f"{self.section}.credential")
        secret_file = checking.value_of(f"{self.section}.secret_file")
        if credential is None:
            if secret_file is not None or value is not None:
                raise checking.document.error(
                    key.path if value is not None else f"{self.section}.secret_file",
                    f"is only allowed with {self.section}.credential",
                )
            return
        _secret_source(checking.document, self.section, secret_file, value)

    def describe(self) -> str:
        return (
            f"with ``{self.section}.credential``, exactly one of ``secret_file`` and "
            "``secret_env``"
        )


#: The HTTP routes ``auth.open_routes`` may open.
OPENABLE_ROUTES = ("/health", "/metrics")


class OpenRoutes(_Strings):
    """A list of HTTP routes from :data:`OPENABLE_ROUTES`."""

    name = "list of routes (/health, /metrics)"

    def check(self, checking: Checking, value: object, path: str) -> None:
        document = checking.document
        for item, route in _items(document, value, path, "a list of routes"):
            if route not in OPENABLE_ROUTES:
                raise document.error(
                    item, f"must be one of {', '.join(OPENABLE_ROUTES)}, got {describe(route)}"
                )
