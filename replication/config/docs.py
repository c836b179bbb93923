"""The key reference of docs/configuration.rst, generated from the schema.

:func:`reference` writes one schema's keys as a reStructuredText definition list (type,
default, bounds, rule and command line flag from the key's kind, the dataclass default and
the key's flag, then the key's text). :func:`render` puts the reference of each role between
its markers in the document, leaving the prose around them alone::

    .. BEGIN GENERATED master keys (python -m replication.config.docs --write)
    .. END GENERATED master keys

``python -m replication.config.docs --check`` exits 1 when the checked-in file differs from
what the schema gives (and prints a diff); ``--write`` rewrites it; with neither, the
rendered document goes to standard output.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from replication.config.schema import Flag, Key, Schema
from replication.config.sections import MASTER, WORKER

#: docs/configuration.rst in a source checkout.
DOCUMENT: Final = Path(__file__).resolve().parents[2] / "docs" / "configuration.rst"
#: The generated regions: role name -> its schema.
ROLES: Final[dict[str, Schema[Any]]] = {"master": MASTER, "worker": WORKER}

_WIDTH: Final = 96
_INDENT: Final = "    "
_REGION: Final = re.compile(
    r"(?P<begin>^\.\. BEGIN GENERATED (?P<role>\w+) keys [^\n]*\n)"
    r"(?P<body>.*?)"
    r"(?P<end>^\.\. END GENERATED (?P=role) keys\n)",
    re.MULTILINE | re.DOTALL,
)


def _flag_text(flag: Flag) -> str:
    text = f"command line ``{flag.name}``"
    if flag.null_word is not None:
        text += f" (``{flag.null_word}`` for null)"
    if flag.item_option is not None:
        text += f" with ``{flag.item_option.name}``"
    return text


def _header(schema: Schema[Any], key: Key) -> str:
    kind = key.kind
    kind_name = kind.name if "``" in kind.name else f"*{kind.name}*"
    parts = [kind_name, f"default {kind.show(schema.default_of(key))}"]
    if kind.bounds():
        parts.append(kind.bounds())
    if key.rule is not None:
        parts.append(key.rule.describe())
    header = ", ".join(parts)
    if key.flag is not None:
        header += f"; {_flag_text(key.flag)}"
    return header + "."


def entry(schema: Schema[Any], key: Key) -> str:
    """The reference entry of ``key``: its path, then type, default and text, indented."""
    header = _header(schema, key)
    width = _WIDTH - len(_INDENT)
    if "\n" in key.doc:
        body = "\n".join([*textwrap.wrap(header, width, break_on_hyphens=False), key.doc])
    else:
        body = textwrap.fill(
            f"{header} {key.doc}", width, break_on_hyphens=False, break_long_words=False
        )
    return f"``{key.path}``\n{textwrap.indent(body, _INDENT)}\n"


def reference(schema: Schema[Any]) -> str:
    """Every key of ``schema``, in order, as a definition list."""
    return "\n".join(entry(schema, key) for key in schema.keys)


def render(text: str) -> str:
    """``text`` with each generated region replaced by its role's current reference."""

    def replace(match: re.Match[str]) -> str:
        schema = ROLES[match["role"]]
        return f"{match['begin']}\n{reference(schema)}\n{match['end']}"

    rendered, count = _REGION.subn(replace, text)
    if count != len(ROLES):
        raise ValueError(f"expected {len(ROLES)} generated regions, found {count}")
    return rendered


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m replication.config.docs [--check | --write] [FILE]``."""
    parser = argparse.ArgumentParser(
        prog="python -m replication.config.docs",
        description="Generate the key reference of docs/configuration.rst from the schema.",
    )
    parser.add_argument("file", nargs="?", default=str(DOCUMENT), help="the document")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    action.add_argument("--write", action="store_true", help="rewrite the file")
    args = parser.parse_args(argv)
    path = Path(args.file)
    text = path.read_text(encoding="utf-8")
    rendered = render(text)
    if args.write:
        if rendered != text:
            path.write_text(rendered, encoding="utf-8")
        return 0
    if args.check:
        if rendered == text:
            return 0
        sys.stdout.writelines(
            difflib.unified_diff(
                text.splitlines(keepends=True),
                rendered.splitlines(keepends=True),
                str(path),
                "generated",
            )
        )
        return 1
    sys.stdout.write(rendered)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
