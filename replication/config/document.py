"""YAML text to plain values, remembering the line of every key path.

:func:`compose` parses with PyYAML's safe loader only (the node tree is composed with
``yaml.SafeLoader`` and every scalar is built by ``SafeConstructor``, so nothing but plain
safe types ever exists) and returns a :class:`Document`, which knows the source name and the
line of each dotted key path and builds :class:`ConfigError` s that name them.
"""

from __future__ import annotations

from typing import Any, Final

import yaml  # type: ignore[import-untyped,unused-ignore]
from yaml.constructor import SafeConstructor  # type: ignore[import-untyped,unused-ignore]
from yaml.nodes import (  # type: ignore[import-untyped,unused-ignore]
    MappingNode,
    Node,
    ScalarNode,
    SequenceNode,
)

from replication.config.errors import ConfigError
from replication.config.units import describe

_MAP_TAG: Final = "tag:yaml.org,2002:map"
_SEQ_TAG: Final = "tag:yaml.org,2002:seq"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
#: A composed tree can share nodes through aliases; walking it is capped at this many nodes.
_MAX_NODES: Final = 100_000


def join(path: str, key: str) -> str:
    """The path of ``key`` inside the mapping at ``path``."""
    return f"{path}.{key}" if path else key


def _parent(path: str) -> str | None:
    """The path of the mapping or list holding ``path``; ``None`` for the document itself."""
    if not path:
        return None
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else ""


class Document:
    """Where errors are reported: the source name and the line of each key path."""

    def __init__(self, source: str | None, lines: dict[str, int] | None = None) -> None:
        self.source = source
        self.lines: dict[str, int] = {} if lines is None else lines
        #: A path as the checks name it (``streams[1]``) -> as the file wrote it
        #: (``streams.events``), for values the loader rearranged.
        self.aliases: dict[str, str] = {}

    def written(self, path: str) -> str:
        """``path`` as the file wrote it (see :attr:`aliases`)."""
        for checked, written in self.aliases.items():
            if path.startswith(checked) and path[len(checked) : len(checked) + 1] in ("", ".", "["):
                return written + path[len(checked) :]
        return path

    def line_for(self, path: str) -> int | None:
        """The line of ``path``, or of its nearest ancestor that the document has."""
        current: str | None = path
        while current is not None:
            if current in self.lines:
                return self.lines[current]
            current = _parent(current)
        return None

    def error(self, path: str, message: str) -> ConfigError:
        """A :class:`ConfigError` at ``path``, with the line and source of this document."""
        path = self.written(path)
        return ConfigError(message, path, self.line_for(path), self.source)


class Composer:
    """Turn a composed node tree into dicts, lists and safe scalars, recording lines."""

    def __init__(self, document: Document) -> None:
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
                raise self.fail(node, path, yaml_problem(error)) from None
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
                        key_node, path, f"keys must be strings, got {describe(key)} (quote it)"
                    )
                key_path = join(path, key)
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


def yaml_problem(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError):
        parts = [part for part in (error.context, error.problem) if part]
        if parts:
            return "invalid YAML: " + ", ".join(parts)
    return f"invalid YAML: {error}"


def compose(text: str, source: str | None) -> tuple[Document, Any]:
    """Parse ``text`` into plain values and a :class:`Document` of key lines."""
    document = Document(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(yaml_problem(error), "", line, source) from None
    except yaml.YAMLError as error:
        raise ConfigError(yaml_problem(error), "", None, source) from None
    if root is None:
        return document, None
    document.lines[""] = root.start_mark.line + 1
    return document, Composer(document).value(root, "", frozenset())


def read_text(path: str) -> str:
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
