"""The schema machinery: keys described as data, and the two passes that read and check them.

A :class:`Schema` is the result dataclass (``MasterConfig``) and an ordered tuple of
:class:`Key` s. A key names its dotted YAML path (``limits.max_line_bytes``), the dotted
attribute that holds it in the result (``limits.max_line_bytes``, or ``http_listen`` for
``http.listen``), its :class:`Kind` (type, bounds, how it is read and checked), its
documentation, an optional :class:`Rule` relating it to an earlier key, and an optional
command line :class:`Flag`. Defaults are not repeated here: they are the defaults of the result
dataclass, read by :meth:`Schema.default_of`.

From that one description come:

* :func:`load`: YAML plain values to a result (unknown keys with a "did you mean", units
  applied), then :func:`check`;
* :func:`check`: every value of a result, loaded or built in code, in key order, each error a
  :class:`ConfigError` naming the YAML key path (and the line, for a loaded file);
* the reference in docs/configuration.rst (:mod:`replication.config.docs`) and the command
  line flags (:mod:`replication.config.flags`).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from replication.config.document import Document, join
from replication.config.units import describe

_Config = TypeVar("_Config")


class Kind:
    """The type of a key's value: how it is read from YAML, checked, and documented.

    :meth:`load` turns what YAML gave into the value the result holds (``"5s"`` -> ``5.0``) and
    raises only for what it cannot read; anything of the wrong type is left as it is for
    :meth:`check`, which is also what re-checks results built in code.
    """

    #: How the reference names the type (``duration``, ``server endpoint``).
    name: str = "value"

    def load(self, loading: Loading, value: Any, path: str) -> Any:
        """The value to store for ``value`` read from YAML at ``path``."""
        return value

    def check(self, checking: Checking, value: object, path: str) -> None:
        """Raise :class:`ConfigError` unless ``value`` is valid at ``path``."""

    def finish(self, value: Any, config: Any) -> Any:
        """The final value, once every other loaded value is in ``config`` (for inheritance)."""
        return value

    def show(self, value: object) -> str:
        """``value`` as the reference writes it (the default)."""
        return str(value)

    def text(self, value: object) -> str:
        """``value`` as an error message quotes it (a rule's limit)."""
        return str(value)

    def bounds(self) -> str:
        """The bounds for the reference (``between 1 and 10``), or ``""``."""
        return ""

    def choices(self) -> tuple[str, ...] | None:
        """The allowed values, for a command line flag; ``None`` when not a fixed set."""
        return None

    def from_flag(self, text: str) -> object:
        """The value a command line flag's ``text`` stands for."""
        return text

    def item_option(self) -> tuple[tuple[str, ...], str] | None:
        """For a list whose items have an option (a worker stream's ``from``): the option's
        allowed values and default; ``None`` otherwise."""
        return None

    def items_from_flag(self, texts: list[str], option: str | None) -> tuple[object, ...]:
        """The list items that a repeated flag's ``texts`` stand for (``option``: the value
        of the flag's :attr:`Flag.item_option`, if it has one)."""
        return tuple(texts)

    def from_flag_items(self, items: tuple[object, ...]) -> object:
        """The value a repeated flag that replaces the key's gives it (the items)."""
        return items


class Rule:
    """A check of a key against an earlier key, run right after the key's own check."""

    #: The YAML path of the earlier key the rule reads.
    other: str

    def check(self, checking: Checking, key: Key, value: object) -> None:
        """Raise :class:`ConfigError` unless ``value`` of ``key`` fits the other key's value."""
        raise NotImplementedError

    def describe(self) -> str:
        """The rule for the reference (``at least ``limits.max_line_bytes````)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Flag:
    """A command line flag that overrides a key (``replication master --listen``)."""

    #: ``--listen``.
    name: str
    help: str
    metavar: str | None = None
    #: A word that sets the key to null (``none`` for ``--http-listen none``).
    null_word: str | None = None
    #: For a list: the flag may be repeated, and its values ``extend`` the configured list
    #: (without repeating a name) or ``replace`` it.
    repeat: Literal["extend", "replace"] | None = None
    #: For a repeated flag whose items have an option: the flag that sets that option for
    #: every item the flag names (``--start`` for the worker's ``--stream``).
    item_option: Flag | None = None


@dataclass(frozen=True)
class Key:
    """One configuration key, described once."""

    #: The dotted YAML path: ``listen``, ``limits.max_line_bytes``.
    path: str
    kind: Kind
    #: The reference text (reStructuredText) after the type, default and bounds.
    doc: str
    #: The dotted attribute in the result; ``""`` means the same as ``path``.
    attr: str = ""
    rule: Rule | None = None
    flag: Flag | None = None

    @property
    def attrs(self) -> tuple[str, ...]:
        """The attribute path in the result, split at dots."""
        return tuple((self.attr or self.path).split("."))

    @property
    def name(self) -> str:
        """The last part of the YAML path: the key as its section writes it."""
        return self.path.rpartition(".")[2]

    @property
    def section(self) -> str:
        """The YAML path of the section holding the key; ``""`` for the top level."""
        return self.path.rpartition(".")[0]

    def value_in(self, config: object) -> object:
        """The key's value in the result ``config``."""
        value = config
        for attr in self.attrs:
            value = getattr(value, attr)
        return value


@dataclass(frozen=True)
class Schema(Generic[_Config]):
    """The keys of one configuration file and the dataclass they fill."""

    model: type[_Config]
    keys: tuple[Key, ...]

    def __post_init__(self) -> None:
        paths = [key.path for key in self.keys]
        if len(set(paths)) != len(paths):
            raise ValueError("a key is described twice")
        for index, key in enumerate(self.keys):
            if key.rule is not None and key.rule.other not in paths[:index]:
                raise ValueError(f"{key.path}: a rule must refer to an earlier key")

    def key(self, path: str) -> Key:
        """The key at YAML ``path``; :class:`KeyError` if there is none."""
        for key in self.keys:
            if key.path == path:
                return key
        raise KeyError(path)

    def children(self, section: str) -> list[str]:
        """The names written directly in the mapping at ``section``, in key order."""
        prefix = f"{section}." if section else ""
        names: dict[str, None] = {}
        for key in self.keys:
            if key.path.startswith(prefix):
                names.setdefault(key.path[len(prefix) :].partition(".")[0], None)
        return list(names)

    def default(self) -> _Config:
        """The result with every default."""
        return self.model()

    def default_of(self, key: Key) -> object:
        """The default value of ``key``."""
        return key.value_in(self.default())


class Loading:
    """What a :class:`Kind` can use while a document is read."""

    def __init__(self, document: Document, schema: Schema[Any]) -> None:
        self.document = document
        self.schema = schema

    def section(self, value: Any, path: str, keys: Collection[str]) -> dict[str, Any]:
        """``value`` as a mapping with only ``keys``; null means an empty mapping."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            what = "the configuration" if not path else "this section"
            raise self.document.error(
                path, f"{what} must be a mapping of keys to values, got {describe(value)}"
            )
        for key in value:
            if key not in keys:
                raise self.document.error(join(path, key), unknown_key(key, keys))
        return value


class Checking:
    """What a :class:`Kind` or :class:`Rule` can use while a result is checked."""

    def __init__(self, document: Document, schema: Schema[Any], config: object) -> None:
        self.document = document
        self.schema = schema
        self.config = config

    def value_of(self, path: str) -> object:
        """The value of the key at YAML ``path`` in the result being checked."""
        return self.schema.key(path).value_in(self.config)


class AnyKey(Collection[str]):
    """Every key is allowed (a mapping whose keys are names, checked by the kind)."""

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def unknown_key(key: str, keys: Collection[str]) -> str:
    """The message for an unknown ``key``: the closest of ``keys``, or all of them."""
    close = difflib.get_close_matches(key, list(keys), n=1)
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}?"
    return f"unknown key {key!r}; valid keys are: {', '.join(sorted(keys))}"


def load(schema: Schema[_Config], document: Document, root: Any) -> _Config:
    """Read the plain values ``root`` of ``document`` into a checked result."""
    loading = Loading(document, schema)
    values: dict[str, Any] = {}
    _load_section(loading, root, "", values)
    config = schema.default()
    for path, value in values.items():
        config = replace_at(config, schema.key(path).attrs, value)
    for path, value in values.items():
        key = schema.key(path)
        finished = key.kind.finish(value, config)
        if finished is not value:
            config = replace_at(config, key.attrs, finished)
    check(schema, config, document)
    return config


def _load_section(loading: Loading, value: Any, section: str, values: dict[str, Any]) -> None:
    names = loading.schema.children(section)
    mapping = loading.section(value, section, names)
    for name in names:
        if name not in mapping:
            continue
        path = join(section, name)
        try:
            key = loading.schema.key(path)
        except KeyError:
            _load_section(loading, mapping[name], path, values)
        else:
            values[path] = key.kind.load(loading, mapping[name], path)


def replace_at(config: _Config, attrs: tuple[str, ...], value: object) -> _Config:
    """A copy of the dataclass ``config`` with the attribute at path ``attrs`` set to ``value``
    (nested dataclasses are copied too; nothing is checked)."""
    if len(attrs) > 1:
        value = replace_at(getattr(config, attrs[0]), attrs[1:], value)
    return dataclasses.replace(config, **{attrs[0]: value})  # type: ignore[type-var]


def check(schema: Schema[_Config], config: _Config, document: Document) -> None:
    """Check every key of ``config`` in order; raise :class:`ConfigError` at the first problem.

    A key held in a nested dataclass (``limits.max_line_bytes``) first checks that the
    section's value is that dataclass (``limits: must be a LimitsConfig``).
    """
    checking = Checking(document, schema, config)
    default = schema.default()
    for key in schema.keys:
        value: object = config
        expected: object = default
        sections = key.path.split(".")
        for depth, attr in enumerate(key.attrs[:-1]):
            value = getattr(value, attr)
            expected = getattr(expected, attr)
            if not isinstance(value, type(expected)):
                raise document.error(
                    ".".join(sections[: depth + 1]),
                    f"must be a {type(expected).__name__}, got {describe(value)}",
                )
        value = getattr(value, key.attrs[-1])
        key.kind.check(checking, value, key.path)
        if key.rule is not None:
            key.rule.check(checking, key, value)

