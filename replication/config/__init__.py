"""Configuration files for the master and the worker: YAML in, frozen dataclasses out.

A file is read with PyYAML's safe loader only (the node tree is composed with
``yaml.SafeLoader`` and every scalar is built by ``SafeConstructor``, so nothing but plain
safe types ever exists), checked key by key, and turned into a :class:`MasterConfig` or a
:class:`WorkerConfig`. Every problem raises one :class:`ConfigError` that names the dotted key
path, the line and the file. Value checks live in :func:`validate_master` and
:func:`validate_worker`, which the loaders call and which can re-check a configuration changed
with :func:`dataclasses.replace` (for instance by command line flags). This module never
imports the Twisted reactor; endpoint strings are checked against a ``MemoryReactor``.
docs/configuration.rst is the reference for every key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Final, Literal, TypeVar

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from replication.commands import CommandParseError, check_peer_name, check_stream_name

__all__ = [
    "ConfigError",
    "KeepaliveConfig",
    "LimitsConfig",
    "RetentionConfig",
    "StoreConfig",
    "MasterConfig",
    "WorkerStream",
    "ReconnectConfig",
    "WorkerConfig",
    "parse_duration",
    "parse_size",
    "load_master_config",
    "load_worker_config",
    "master_config_from_text",
    "worker_config_from_text",
    "detect_role",
    "detect_role_from_text",
    "with_overrides",
    "validate_master",
    "validate_worker",
]

MiB: Final = 1024 * 1024

#: ``limits.max_line_bytes`` bounds, for master and worker alike.
MIN_LINE_BYTES: Final = 1024
MAX_LINE_BYTES: Final = 64 * MiB
MAX_CONNECTIONS: Final = 1_000_000
MAX_CATCHUP_PAGE_ROWS: Final = 100_000
#: ``metrics.max_peer_labels`` upper bound.
MAX_PEER_LABELS: Final = 10_000

STORE_TYPES: Final = ("memory", "sqlite")
WORKER_STREAM_STARTS: Final = ("earliest", "latest")

#: Top-level keys that only a worker file has; :func:`detect_role` looks for them.
WORKER_ONLY_KEYS: Final = frozenset(
    {"name", "master", "handler", "position_file", "handler_retry", "reconnect"}
)


class ConfigError(Exception):
    """A configuration that cannot be used, and where it went wrong.

    ``path`` is the dotted key path (``limits.max_buffer_bytes``, ``streams[2]``,
    ``retention.streams.events.max_rows``; ``""`` for the whole document), ``line`` the
    1-based line in the file (``None`` when unknown, e.g. for a configuration built in code),
    ``source`` the file name (``None`` when unknown) and ``message`` what is wrong.
    ``str(err)`` reads ``config.yaml:12: limits.max_buffer_bytes: must be ...``.
    """

    def __init__(
        self,
        message: str,
        path: str = "",
        line: int | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__(message, path, line, source)
        self.message = message
        self.path = path
        self.line = line
        self.source = source

    def __str__(self) -> str:
        if self.source is not None and self.line is not None:
            where = f"{self.source}:{self.line}"
        elif self.source is not None:
            where = self.source
        elif self.line is not None:
            where = f"line {self.line}"
        else:
            where = ""
        parts = [part for part in (where, self.path) if part]
        return ": ".join([*parts, self.message])


# ---------------------------------------------------------------------------------------------
# The dataclasses


@dataclass(frozen=True)
class KeepaliveConfig:
    """Keepalive timers of one connection, in seconds."""

    #: Send ``PING`` after this many seconds without sending anything.
    ping_interval: float = 5.0
    #: Cut off a peer that has pinged once and then is silent this long; > ``ping_interval``.
    ping_timeout: float = 25.0
    #: Abort (instead of finishing) a graceful close that takes longer than this.
    close_timeout: float = 5.0


@dataclass(frozen=True)
class LimitsConfig:
    """The master's resource limits (yaml ``limits:``)."""

    #: Longest line either side may send, ``1024 ..= 64 MiB``.
    max_line_bytes: int = 65536
    #: Bytes buffered per connection before ``ERROR Failed to keep up``; >= ``max_line_bytes``.
    max_buffer_bytes: int = 8 * MiB
    #: Simultaneous worker connections, ``1 ..= 1_000_000``.
    max_connections: int = 1000
    #: Largest HTTP publish body; >= ``max_line_bytes``.
    max_body_bytes: int = 16 * MiB
    #: Rows read from the store per catch-up step, ``1 ..= 100_000``.
    catchup_page_rows: int = 1000


@dataclass(frozen=True)
class RetentionConfig:
    """How much history a stream keeps; ``None`` means unbounded."""

    max_rows: int | None = 1_000_000
    #: Seconds.
    max_age: float | None = None


@dataclass(frozen=True)
class StoreConfig:
    """Where the master keeps its streams."""

    #: ``"memory"`` or ``"sqlite"``.
    type: str = "sqlite"
    #: SQLite database file; only with ``type: sqlite``. ``None``: a default inside ``data_dir``.
    path: str | None = None


def _empty_retention_map() -> Mapping[str, RetentionConfig]:
    return types.MappingProxyType({})


@dataclass(frozen=True)
class MasterConfig:
    """Everything ``replication master`` needs."""

    server_name: str = "master"
    #: Twisted server endpoint string for worker connections.
    listen: str = "tcp:9092:interface=127.0.0.1"
    #: yaml ``http: {listen: ...}``; ``None`` disables the HTTP admin server.
    http_listen: str | None = "tcp:9093:interface=127.0.0.1"
    data_dir: str = "./replication-data"
    #: Streams declared up front.
    streams: tuple[str, ...] = ()
    #: When true, only the declared ``streams`` may be published to or followed.
    strict_streams: bool = False
    store: StoreConfig = StoreConfig()
    #: The default retention of every stream.
    retention: RetentionConfig = RetentionConfig()
    #: Per-stream overrides (yaml ``retention.streams``), already merged with ``retention``.
    #: Left out of ``hash()`` (a mapping is not hashable) but part of ``==``.
    stream_retention: Mapping[str, RetentionConfig] = field(
        default_factory=_empty_retention_map, hash=False
    )
    keepalive: KeepaliveConfig = KeepaliveConfig()
    limits: LimitsConfig = LimitsConfig()
    #: yaml ``metrics: {max_peer_labels: ...}``: distinct worker names used as metric label
    #: values (and remembered in ``/status``); later names are reported as ``other``.
    metrics_max_peer_labels: int = 100

    def retention_for(self, stream: str) -> RetentionConfig:
        """The retention of ``stream``: its override if it has one, else the default."""
        return self.stream_retention.get(stream, self.retention)


@dataclass(frozen=True)
class WorkerStream:
    """A stream a worker follows."""

    name: str
    #: ``"earliest"`` or ``"latest"``: where to begin when there is no recorded position.
    start: str = "earliest"


@dataclass(frozen=True)
class ReconnectConfig:
    """Backoff between a worker's connection attempts, in seconds."""

    initial_delay: float = 0.5
    #: >= ``initial_delay``.
    max_delay: float = 30.0


@dataclass(frozen=True)
class WorkerConfig:
    """Everything ``replication worker`` needs."""

    name: str = "worker"
    #: Twisted client endpoint string of the master.
    master: str = "tcp:host=127.0.0.1:port=9092"
    streams: tuple[WorkerStream, ...] = ()
    #: ``package.module:callable``; only its syntax is checked here, it is not imported.
    handler: str = "replication.handlers:print_json"
    #: ``None``: ``<name>.positions`` in the current directory.
    position_file: str | None = None
    #: yaml ``handler_retry: {max_delay: ...}``: longest wait between retries of a handler.
    handler_retry_max_delay: float = 60.0
    #: yaml ``limits: {max_line_bytes: ...}``.
    max_line_bytes: int = 65536
    keepalive: KeepaliveConfig = KeepaliveConfig()
    reconnect: ReconnectConfig = ReconnectConfig()
    #: yaml ``metrics: {listen: ...}``: Twisted server endpoint serving ``/metrics``;
    #: ``None`` serves none.
    metrics_listen: str | None = None

    def resolved_position_file(self) -> str:
        """The position file to use: ``position_file``, or ``<name>.positions``."""
        if self.position_file is not None:
            return self.position_file
        return f"{self.name}.positions"


_Config = TypeVar("_Config", MasterConfig, WorkerConfig)


def with_overrides(config: _Config, **changes: Any) -> _Config:
    """Return a copy of ``config`` with ``changes`` applied (:func:`dataclasses.replace`).

    Nothing is checked: call :func:`validate_master` or :func:`validate_worker` on the result.
    """
    return dataclasses.replace(config, **changes)


# ---------------------------------------------------------------------------------------------
# Durations and sizes

_NUMBER = r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_DURATION = re.compile(_NUMBER + r"\s*(?P<unit>ms|s|m|h|d)?")
_SIZE = re.compile(_NUMBER + r"\s*(?P<unit>B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?")

_DURATION_UNITS: Final[dict[str, Fraction]] = {
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
    "d": Fraction(86400),
}
_SIZE_UNITS: Final = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}


def parse_duration(value: object) -> float:
    """Return a positive duration in seconds, or raise :class:`ValueError`.

    ``value`` is a number of seconds (``int`` or ``float``, not ``bool``) or a string: a
    number with an optional unit ``ms``, ``s``, ``m``, ``h`` or ``d`` (``"500ms"``,
    ``"1.5s"``, ``"2m"``, ``"7d"``; no unit means seconds). It must be finite and > 0.
    """
    if isinstance(value, bool):
        raise ValueError(f"a duration must be a number of seconds, got {_describe(value)}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise ValueError(
                f"a duration must be a number of seconds or a number with a unit "
                f"(ms, s, m, h, d) like '500ms' or '5s', got {value!r}"
            )
        unit = match["unit"] or "s"
        seconds = float(Fraction(match["number"]) * _DURATION_UNITS[unit])
    else:
        raise ValueError(f"a duration must be a number of seconds, got {_describe(value)}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be greater than 0, got {_describe(value)}")
    return seconds


def parse_size(value: object) -> int:
    """Return a positive number of bytes, or raise :class:`ValueError`.

    ``value`` is a positive ``int`` (not ``bool``) or a string: a number with an optional unit
    ``B``, ``KiB``, ``MiB``, ``GiB``, ``TiB`` (powers of 1024) or ``KB``, ``MB``, ``GB``,
    ``TB`` (powers of 1000), e.g. ``"64KiB"``, ``"1.5MiB"``, ``"512B"``. The result must be a
    whole number of bytes greater than 0.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"a size must be a number of bytes, got {_describe(value)}")
    if isinstance(value, int):
        size = Fraction(value)
    else:
        match = _SIZE.fullmatch(value.strip())
        if match is None:
            raise ValueError(
                f"a size must be a number of bytes or a number with a unit (B, KiB, MiB, GiB, "
                f"KB, MB, GB) like '64KiB' or '8MiB', got {value!r}"
            )
        size = Fraction(match["number"]) * _SIZE_UNITS[match["unit"] or "B"]
    if size.denominator != 1:
        raise ValueError(f"a size must be a whole number of bytes, got {value!r}")
    if size <= 0:
        raise ValueError(f"a size must be greater than 0, got {value!r}")
    return int(size)


# ---------------------------------------------------------------------------------------------
# From text to plain values, remembering the line of every key path

_MAP_TAG: Final = "tag:yaml.org,2002:map"
_SEQ_TAG: Final = "tag:yaml.org,2002:seq"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
#: A composed tree can share nodes through aliases; walking it is capped at this many nodes.
_MAX_NODES: Final = 100_000


def _describe(value: object) -> str:
    """``value`` as a person who wrote the YAML would recognise it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, int | float | str):
        return repr(value)
    return f"{type(value).__name__} {value!r}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _parent(path: str) -> str | None:
    if not path:
        return None
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else ""


class _Document:
    """Where errors are reported: the source name and the line of each key path."""

    def __init__(self, source: str | None, lines: dict[str, int] | None = None) -> None:
        self.source = source
        self.lines: dict[str, int] = {} if lines is None else lines

    def line_for(self, path: str) -> int | None:
        """The line of ``path``, or of its nearest ancestor that the document has."""
        current: str | None = path
        while current is not None:
            if current in self.lines:
                return self.lines[current]
            current = _parent(current)
        return None

    def error(self, path: str, message: str) -> ConfigError:
        return ConfigError(message, path, self.line_for(path), self.source)


class _Composer:
    """Turn a composed node tree into dicts, lists and safe scalars, recording lines."""

    def __init__(self, document: _Document) -> None:
        self.document = document
        self.constructor = SafeConstructor()
        self.visited = 0

    def fail(self, node: Node, path: str, message: str) -> ConfigError:
        return ConfigError(message, path, node.start_mark.line + 1, self.document.source)

    def value(self, node: Node, path: str, active: frozenset[int]) -> Any:
        self.visited += 1
        if self.visited > _MAX_NODES:
            raise self.fail(node, path, f"the document has more than {_MAX_NODES} values")
        if id(node) in active:
            raise self.fail(node, path, "an alias refers to a value that contains it")
        if isinstance(node, ScalarNode):
            try:
                return self.constructor.construct_object(node, deep=True)
            except yaml.constructor.ConstructorError as error:
                if node.tag not in self.constructor.yaml_constructors:
                    raise self.fail(node, path, f"unsupported YAML tag {node.tag!r}") from None
                raise self.fail(node, path, _yaml_problem(error)) from None
            except (yaml.YAMLError, ValueError, TypeError) as error:
                # SafeConstructor lets ValueError out of e.g. ``!!int abc``.
                raise self.fail(
                    node, path, f"invalid value {node.value!r} for tag {node.tag!r}: {error}"
                ) from None
        active = active | {id(node)}
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ_TAG:
                raise self.fail(node, path, f"unsupported YAML tag {node.tag!r}")
            items = []
            for index, item in enumerate(node.value):
                item_path = f"{path}[{index}]"
                self.document.lines.setdefault(item_path, item.start_mark.line + 1)
                items.append(self.value(item, item_path, active))
            return items
        if isinstance(node, MappingNode):
            if node.tag != _MAP_TAG:
                raise self.fail(node, path, f"unsupported YAML tag {node.tag!r}")
            result: dict[str, Any] = {}
            for key_node, value_node in self.pairs(node, path, active):
                key = self.value(key_node, path, active)
                if not isinstance(key, str):
                    raise self.fail(
                        key_node, path, f"keys must be strings, got {_describe(key)} (quote it)"
                    )
                key_path = _join(path, key)
                if key in result:
                    first = self.document.lines.get(key_path)
                    where = f" (first on line {first})" if first is not None else ""
                    raise self.fail(key_node, key_path, f"duplicate key {key!r}{where}")
                self.document.lines[key_path] = key_node.start_mark.line + 1
                result[key] = self.value(value_node, key_path, active)
            return result
        raise self.fail(node, path, f"unsupported YAML node {type(node).__name__}")

    def pairs(
        self, node: MappingNode, path: str, active: frozenset[int]
    ) -> list[tuple[Node, Node]]:
        """The mapping's own pairs, then pairs from ``<<`` merge keys whose key it lacks."""
        own: list[tuple[Node, Node]] = []
        merged: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                own.append((key_node, value_node))
                continue
            if isinstance(value_node, MappingNode):
                sources = [value_node]
            elif isinstance(value_node, SequenceNode):
                sources = list(value_node.value)
            else:
                sources = [value_node]
            for source in sources:
                if not isinstance(source, MappingNode) or id(source) in active:
                    raise self.fail(source, path, "a merge key (<<) must refer to mappings")
                merged.extend(self.pairs(source, path, active | {id(source)}))
        if not merged:
            return own
        seen = {self.key_of(key_node) for key_node, _ in own}
        for key_node, value_node in merged:
            key = self.key_of(key_node)
            if key is None or key not in seen:
                own.append((key_node, value_node))
                seen.add(key)
        return own

    def key_of(self, node: Node) -> object:
        """The constructed key of a scalar key node, or None (the walk reports bad keys)."""
        if not isinstance(node, ScalarNode):
            return None
        try:
            return self.constructor.construct_object(node)
        except yaml.YAMLError:
            return None


def _yaml_problem(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError):
        parts = [part for part in (error.context, error.problem) if part]
        if parts:
            return "invalid YAML: " + ", ".join(parts)
    return f"invalid YAML: {error}"


def _compose(text: str, source: str | None) -> tuple[_Document, Any]:
    """Parse ``text`` into plain values and a :class:`_Document` of key lines."""
    document = _Document(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(_yaml_problem(error), "", line, source) from None
    except yaml.YAMLError as error:
        raise ConfigError(_yaml_problem(error), "", None, source) from None
    if root is None:
        return document, None
    document.lines[""] = root.start_mark.line + 1
    return document, _Composer(document).value(root, "", frozenset())


def _read(path: str) -> str:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise ConfigError(
            f"cannot read the configuration file: {error.strerror or error}", "", None, path
        ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError("the file is not valid UTF-8", "", line, path) from None


# ---------------------------------------------------------------------------------------------
# From plain values to dataclasses (structure and syntax; values are checked by validate_*)


def _section(doc: _Document, value: Any, path: str, keys: Collection[str]) -> dict[str, Any]:
    """``value`` as a mapping with only ``keys``; null means an empty mapping."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        what = "the configuration" if not path else "this section"
        raise doc.error(
            path, f"{what} must be a mapping of keys to values, got {_describe(value)}"
        )
    for key in value:
        if key not in keys:
            raise doc.error(_join(path, key), _unknown_key(key, keys))
    return value


def _unknown_key(key: str, keys: Collection[str]) -> str:
    close = difflib.get_close_matches(key, list(keys), n=1)
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}?"
    return f"unknown key {key!r}; valid keys are: {', '.join(sorted(keys))}"


def _duration(doc: _Document, value: Any, path: str) -> Any:
    """A duration string or number as float seconds; anything else is left for validate_*."""
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError:
            raise doc.error(
                path,
                f"must be a positive number of seconds or a duration like '500ms', '5s', '2m', "
                f"'1h', '7d', got {value!r}",
            ) from None
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _size(doc: _Document, value: Any, path: str) -> Any:
    """A size string as int bytes; anything else is left for validate_*."""
    if isinstance(value, str):
        try:
            return parse_size(value)
        except ValueError:
            raise doc.error(
                path,
                f"must be a positive integer or a size like '64KiB', '8MiB', '1GiB', "
                f"got {value!r}",
            ) from None
    return value


def _keepalive(doc: _Document, value: Any, path: str) -> KeepaliveConfig:
    section = _section(doc, value, path, ("ping_interval", "ping_timeout", "close_timeout"))
    return KeepaliveConfig(
        **{key: _duration(doc, item, _join(path, key)) for key, item in section.items()}
    )


_MASTER_KEYS: Final = (
    "server_name",
    "listen",
    "http",
    "data_dir",
    "streams",
    "strict_streams",
    "store",
    "retention",
    "keepalive",
    "limits",
    "metrics",
)
_RETENTION_KEYS: Final = ("max_rows", "max_age")
_LIMITS_KEYS: Final = (
    "max_line_bytes",
    "max_buffer_bytes",
    "max_connections",
    "max_body_bytes",
    "catchup_page_rows",
)
_WORKER_KEYS: Final = (
    "name",
    "master",
    "streams",
    "handler",
    "position_file",
    "handler_retry",
    "limits",
    "keepalive",
    "reconnect",
    "metrics",
)


def _retention(
    doc: _Document, section: dict[str, Any], path: str, base: RetentionConfig
) -> RetentionConfig:
    changes: dict[str, Any] = {}
    if "max_rows" in section:
        changes["max_rows"] = section["max_rows"]
    if "max_age" in section:
        max_age = section["max_age"]
        if max_age is not None:
            max_age = _duration(doc, max_age, f"{path}.max_age")
        changes["max_age"] = max_age
    return dataclasses.replace(base, **changes)


def master_config_from_text(text: str, source: str = "<string>") -> MasterConfig:
    """Build and check a :class:`MasterConfig` from YAML ``text`` (``source`` names it in
    errors). An empty document gives the defaults. Raises :class:`ConfigError`."""
    doc, root = _compose(text, source)
    top = _section(doc, root, "", _MASTER_KEYS)
    changes: dict[str, Any] = {}
    for key in ("server_name", "listen", "data_dir", "strict_streams"):
        if key in top:
            changes[key] = top[key]
    if "http" in top:
        http = _section(doc, top["http"], "http", ("listen",))
        if "listen" in http:
            changes["http_listen"] = http["listen"]
    if "streams" in top:
        streams = top["streams"]
        if streams is not None and not isinstance(streams, list):
            raise doc.error("streams", f"must be a list of stream names, got {_describe(streams)}")
        changes["streams"] = tuple(streams or ())
    if "store" in top:
        changes["store"] = StoreConfig(**_section(doc, top["store"], "store", ("type", "path")))
    if "retention" in top:
        section = _section(doc, top["retention"], "retention", (*_RETENTION_KEYS, "streams"))
        default = _retention(doc, section, "retention", RetentionConfig())
        changes["retention"] = default
        overrides = _section(doc, section.get("streams"), "retention.streams", _Anything())
        per_stream: dict[str, RetentionConfig] = {}
        for stream, spec in overrides.items():
            stream_path = f"retention.streams.{stream}"
            _check_stream(doc, stream, stream_path)
            per_stream[stream] = _retention(
                doc, _section(doc, spec, stream_path, _RETENTION_KEYS), stream_path, default
            )
        changes["stream_retention"] = types.MappingProxyType(per_stream)
    if "keepalive" in top:
        changes["keepalive"] = _keepalive(doc, top["keepalive"], "keepalive")
    if "limits" in top:
        limits = _section(doc, top["limits"], "limits", _LIMITS_KEYS)
        for key in ("max_line_bytes", "max_buffer_bytes", "max_body_bytes"):
            if key in limits:
                limits[key] = _size(doc, limits[key], f"limits.{key}")
        changes["limits"] = LimitsConfig(**limits)
    if "metrics" in top:
        metrics = _section(doc, top["metrics"], "metrics", ("max_peer_labels",))
        if "max_peer_labels" in metrics:
            changes["metrics_max_peer_labels"] = metrics["max_peer_labels"]
    config = MasterConfig(**changes)
    _validate_master(config, doc)
    return config


def worker_config_from_text(text: str, source: str = "<string>") -> WorkerConfig:
    """Build and check a :class:`WorkerConfig` from YAML ``text`` (``source`` names it in
    errors). An empty document gives the defaults. Raises :class:`ConfigError`."""
    doc, root = _compose(text, source)
    top = _section(doc, root, "", _WORKER_KEYS)
    changes: dict[str, Any] = {}
    for key in ("name", "master", "handler", "position_file"):
        if key in top:
            changes[key] = top[key]
    stream_paths: list[str] = []
    if "streams" in top:
        streams = top["streams"]
        built: list[WorkerStream] = []
        if isinstance(streams, list):
            for index, name in enumerate(streams):
                built.append(WorkerStream(name))
                stream_paths.append(f"streams[{index}]")
        elif isinstance(streams, dict):
            for name, spec in streams.items():
                path = f"streams.{name}"
                options = _section(doc, spec, path, ("from",))
                built.append(WorkerStream(name, options.get("from", "earliest")))
                stream_paths.append(path)
        elif streams is not None:
            raise doc.error(
                "streams",
                "must be a list of stream names or a mapping of stream name to options, "
                f"got {_describe(streams)}",
            )
        changes["streams"] = tuple(built)
    if "handler_retry" in top:
        retry = _section(doc, top["handler_retry"], "handler_retry", ("max_delay",))
        if "max_delay" in retry:
            changes["handler_retry_max_delay"] = _duration(
                doc, retry["max_delay"], "handler_retry.max_delay"
            )
    if "limits" in top:
        limits = _section(doc, top["limits"], "limits", ("max_line_bytes",))
        if "max_line_bytes" in limits:
            changes["max_line_bytes"] = _size(
                doc, limits["max_line_bytes"], "limits.max_line_bytes"
            )
    if "keepalive" in top:
        changes["keepalive"] = _keepalive(doc, top["keepalive"], "keepalive")
    if "reconnect" in top:
        section = _section(doc, top["reconnect"], "reconnect", ("initial_delay", "max_delay"))
        changes["reconnect"] = ReconnectConfig(
            **{key: _duration(doc, item, f"reconnect.{key}") for key, item in section.items()}
        )
    if "metrics" in top:
        metrics = _section(doc, top["metrics"], "metrics", ("listen",))
        if "listen" in metrics:
            changes["metrics_listen"] = metrics["listen"]
    config = WorkerConfig(**changes)
    _validate_worker(config, doc, stream_paths)
    return config


class _Anything(Collection[str]):
    """Every key is allowed (a mapping whose keys are names, checked elsewhere)."""

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def load_master_config(path: str | None) -> MasterConfig:
    """Read the master configuration file at ``path``; ``None`` gives the defaults."""
    if path is None:
        return validate_master(MasterConfig())
    return master_config_from_text(_read(path), path)


def load_worker_config(path: str | None) -> WorkerConfig:
    """Read the worker configuration file at ``path``; ``None`` gives the defaults."""
    if path is None:
        return validate_worker(WorkerConfig())
    return worker_config_from_text(_read(path), path)


def detect_role_from_text(text: str, source: str = "<string>") -> Literal["master", "worker"]:
    """``"worker"`` if the top-level mapping has a key only a worker has (``name``,
    ``master``, ``handler``, ``position_file``, ``handler_retry``, ``reconnect``), else
    ``"master"`` (also for an empty document or one that is not a mapping, which the master
    loader then reports). Raises :class:`ConfigError` for invalid YAML."""
    _, root = _compose(text, source)
    if isinstance(root, dict) and WORKER_ONLY_KEYS.intersection(root):
        return "worker"
    return "master"


def detect_role(path: str) -> Literal["master", "worker"]:
    """:func:`detect_role_from_text` for the file at ``path``."""
    return detect_role_from_text(_read(path), path)


# ---------------------------------------------------------------------------------------------
# Value checks, shared by the loaders and by code that builds or replaces configurations


def validate_master(config: MasterConfig) -> MasterConfig:
    """Check every value of ``config`` and return it, or raise :class:`ConfigError` naming the
    key path (``line`` and ``source`` are ``None``)."""
    _validate_master(config, _Document(None))
    return config


def validate_worker(config: WorkerConfig) -> WorkerConfig:
    """Check every value of ``config`` and return it, or raise :class:`ConfigError` naming the
    key path (``line`` and ``source`` are ``None``)."""
    _validate_worker(config, _Document(None), ())
    return config


def _check_type(doc: _Document, value: object, kind: type, path: str, wanted: str) -> None:
    if not isinstance(value, kind):
        raise doc.error(path, f"must be {wanted}, got {_describe(value)}")


def _check_int(doc: _Document, value: object, path: str, low: int, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        wanted = "a positive integer" if low == 1 else "an integer"
        raise doc.error(path, f"must be {wanted}, got {_describe(value)}")
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        if low == 1 and high is None:
            raise doc.error(path, f"must be a positive integer, got {value}")
        raise doc.error(path, f"must be {bounds}, got {value}")
    return value


def _check_seconds(doc: _Document, value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise doc.error(path, f"must be a positive number of seconds, got {_describe(value)}")
    if not math.isfinite(value) or value <= 0:
        raise doc.error(path, f"must be a positive number of seconds, got {value}")
    return float(value)


def _check_text(doc: _Document, value: object, path: str) -> str:
    if not isinstance(value, str):
        raise doc.error(path, f"must be a string, got {_describe(value)}")
    if not value:
        raise doc.error(path, "must not be empty")
    return value


def _check_name(doc: _Document, value: object, path: str, what: str) -> None:
    _check_text(doc, value, path)
    assert isinstance(value, str)
    try:
        check_peer_name(value, what)
    except CommandParseError as error:
        raise doc.error(path, str(error)) from None


def _check_stream(doc: _Document, value: object, path: str) -> None:
    if not isinstance(value, str):
        raise doc.error(path, f"a stream name must be a string, got {_describe(value)} (quote it)")
    try:
        check_stream_name(value)
    except CommandParseError as error:
        raise doc.error(path, str(error)) from None


def _check_endpoint(doc: _Document, value: object, path: str, server: bool) -> None:
    # Imported here so that importing this module stays cheap; neither import installs or
    # touches the global reactor, and a MemoryReactor never listens or connects.
    from twisted.internet.endpoints import clientFromString, serverFromString
    from twisted.internet.testing import MemoryReactor

    kind = "server" if server else "client"
    _check_text(doc, value, path)
    assert isinstance(value, str)
    parse: Callable[[Any, str], object] = serverFromString if server else clientFromString
    try:
        endpoint = parse(MemoryReactor(), value)  # type: ignore[no-untyped-call]
    except Exception as error:  # Twisted raises ValueError, TypeError, KeyError, ImportError
        detail = str(error) or type(error).__name__
        raise doc.error(
            path, f"invalid Twisted {kind} endpoint {value!r}: {detail}"
        ) from None
    port = getattr(endpoint, "_port", None)
    if isinstance(port, int) and not 0 <= port <= 65535:
        raise doc.error(
            path, f"invalid Twisted {kind} endpoint {value!r}: port {port} is not in 0..65535"
        )


_HANDLER: Final = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
    r":[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
)


def _check_keepalive(doc: _Document, keepalive: object, path: str) -> None:
    _check_type(doc, keepalive, KeepaliveConfig, path, "a KeepaliveConfig")
    assert isinstance(keepalive, KeepaliveConfig)
    interval = _check_seconds(doc, keepalive.ping_interval, f"{path}.ping_interval")
    timeout = _check_seconds(doc, keepalive.ping_timeout, f"{path}.ping_timeout")
    _check_seconds(doc, keepalive.close_timeout, f"{path}.close_timeout")
    if timeout <= interval:
        raise doc.error(
            f"{path}.ping_timeout",
            f"must be greater than {path}.ping_interval ({interval:g}s), got {timeout:g}s",
        )


def _check_retention(doc: _Document, retention: object, path: str) -> None:
    _check_type(doc, retention, RetentionConfig, path, "a RetentionConfig")
    assert isinstance(retention, RetentionConfig)
    if retention.max_rows is not None:
        _check_int(doc, retention.max_rows, f"{path}.max_rows", 1, None)
    if retention.max_age is not None:
        _check_seconds(doc, retention.max_age, f"{path}.max_age")


def _check_line_bytes(doc: _Document, value: object, path: str) -> int:
    return _check_int(doc, value, path, MIN_LINE_BYTES, MAX_LINE_BYTES)


def _validate_master(config: MasterConfig, doc: _Document) -> None:
    _check_name(doc, config.server_name, "server_name", "server_name")
    _check_endpoint(doc, config.listen, "listen", server=True)
    if config.http_listen is not None:
        _check_endpoint(doc, config.http_listen, "http.listen", server=True)
    _check_text(doc, config.data_dir, "data_dir")

    _check_type(doc, config.streams, tuple, "streams", "a tuple of stream names")
    first_index: dict[str, int] = {}
    for index, stream in enumerate(config.streams):
        path = f"streams[{index}]"
        _check_stream(doc, stream, path)
        if stream in first_index:
            raise doc.error(
                path, f"duplicate stream {stream!r} (also streams[{first_index[stream]}])"
            )
        first_index[stream] = index
    _check_type(doc, config.strict_streams, bool, "strict_streams", "true or false")

    store = config.store
    _check_type(doc, store, StoreConfig, "store", "a StoreConfig")
    if store.type not in STORE_TYPES:
        raise doc.error(
            "store.type",
            f"must be one of {', '.join(STORE_TYPES)}, got {_describe(store.type)}",
        )
    if store.path is not None:
        _check_text(doc, store.path, "store.path")
        if store.type != "sqlite":
            raise doc.error(
                "store.path", f"is only allowed with type sqlite, not with type {store.type}"
            )

    _check_retention(doc, config.retention, "retention")
    _check_type(
        doc, config.stream_retention, Mapping, "retention.streams", "a mapping of stream names"
    )
    for stream, retention in config.stream_retention.items():
        path = f"retention.streams.{stream}"
        _check_stream(doc, stream, path)
        if config.strict_streams and stream not in first_index:
            raise doc.error(
                path, f"stream {stream!r} is not in streams, and strict_streams is true"
            )
        _check_retention(doc, retention, path)

    _check_keepalive(doc, config.keepalive, "keepalive")

    limits = config.limits
    _check_type(doc, limits, LimitsConfig, "limits", "a LimitsConfig")
    line = _check_line_bytes(doc, limits.max_line_bytes, "limits.max_line_bytes")
    for key in ("max_buffer_bytes", "max_body_bytes"):
        value = _check_int(doc, getattr(limits, key), f"limits.{key}", 1, None)
        if value < line:
            raise doc.error(
                f"limits.{key}",
                f"must be at least limits.max_line_bytes ({line}), got {value}",
            )
    _check_int(doc, limits.max_connections, "limits.max_connections", 1, MAX_CONNECTIONS)
    _check_int(
        doc, limits.catchup_page_rows, "limits.catchup_page_rows", 1, MAX_CATCHUP_PAGE_ROWS
    )
    _check_int(
        doc, config.metrics_max_peer_labels, "metrics.max_peer_labels", 0, MAX_PEER_LABELS
    )


def _validate_worker(config: WorkerConfig, doc: _Document, stream_paths: Sequence[str]) -> None:
    _check_name(doc, config.name, "name", "name")
    _check_endpoint(doc, config.master, "master", server=False)

    _check_type(doc, config.streams, tuple, "streams", "a tuple of WorkerStream")
    first_path: dict[str, str] = {}
    for index, stream in enumerate(config.streams):
        path = stream_paths[index] if index < len(stream_paths) else f"streams[{index}]"
        _check_type(doc, stream, WorkerStream, path, "a WorkerStream")
        _check_stream(doc, stream.name, path)
        if stream.name in first_path:
            raise doc.error(
                path, f"duplicate stream {stream.name!r} (also {first_path[stream.name]})"
            )
        first_path[stream.name] = path
        if stream.start not in WORKER_STREAM_STARTS:
            raise doc.error(
                f"{path}.from",
                f"must be earliest or latest, got {_describe(stream.start)}",
            )

    _check_text(doc, config.handler, "handler")
    if not _HANDLER.fullmatch(config.handler):
        raise doc.error(
            "handler",
            f"must look like 'package.module:callable', got {config.handler!r}",
        )
    if config.position_file is not None:
        _check_text(doc, config.position_file, "position_file")
    _check_seconds(doc, config.handler_retry_max_delay, "handler_retry.max_delay")
    _check_line_bytes(doc, config.max_line_bytes, "limits.max_line_bytes")
    _check_keepalive(doc, config.keepalive, "keepalive")

    reconnect = config.reconnect
    _check_type(doc, reconnect, ReconnectConfig, "reconnect", "a ReconnectConfig")
    initial = _check_seconds(doc, reconnect.initial_delay, "reconnect.initial_delay")
    maximum = _check_seconds(doc, reconnect.max_delay, "reconnect.max_delay")
    if maximum < initial:
        raise doc.error(
            "reconnect.max_delay",
            f"must be at least reconnect.initial_delay ({initial:g}s), got {maximum:g}s",
        )
    if config.metrics_listen is not None:
        _check_endpoint(doc, config.metrics_listen, "metrics.listen", server=True)
