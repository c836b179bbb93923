"""Command line flags that override configuration keys, derived from the schema.

:func:`add_flags` adds an ``argparse`` option for every key of a schema that has a
:class:`~replication.config.schema.Flag` (name, help and metavar from the flag, choices from
the key's kind); :func:`apply_flags` returns the configuration with the given flags applied.
Nothing is checked here: the caller passes the result to ``validate_master`` or
``validate_worker``, so a flag's value gets the same checks and messages as a file's.
"""

from __future__ import annotations

import argparse
from typing import Any, TypeVar

from replication.config.schema import Flag, Schema, replace_at

_Config = TypeVar("_Config")


def _dest(flag: Flag) -> str:
    """The ``argparse`` attribute of ``flag``: ``--http-listen`` -> ``http_listen``."""
    return flag.name.lstrip("-").replace("-", "_")


def add_flags(parser: argparse.ArgumentParser, schema: Schema[Any]) -> None:
    """Add the override flags of ``schema``'s keys to ``parser``, in key order."""
    for key in schema.keys:
        flag = key.flag
        if flag is None:
            continue
        options: dict[str, Any] = {"dest": _dest(flag), "help": flag.help}
        if flag.metavar is not None:
            options["metavar"] = flag.metavar
        choices = key.kind.choices()
        if choices is not None:
            options["choices"] = choices
        if flag.repeat is not None:
            options["action"] = "append"
        parser.add_argument(flag.name, **options)
        if flag.item_option is not None:
            item_option = key.kind.item_option()
            if item_option is None:
                raise TypeError(f"{key.path}: {flag.item_option.name} needs items with an option")
            option_choices, default = item_option
            parser.add_argument(
                flag.item_option.name,
                dest=_dest(flag.item_option),
                choices=option_choices,
                default=default,
                help=flag.item_option.help,
            )


def apply_flags(schema: Schema[_Config], config: _Config, args: argparse.Namespace) -> _Config:
    """``config`` with every override flag given in ``args`` applied.

    A flag's value replaces the key's; the flag's null word (``none``) sets it to null; a
    repeated flag's values extend or replace the configured list (see
    :attr:`~replication.config.schema.Flag.repeat`), items taking the value of the flag's
    item option (``--start``).
    """
    for key in schema.keys:
        flag = key.flag
        if flag is None:
            continue
        given = getattr(args, _dest(flag), None)
        if given is None:
            continue
        value: object
        if flag.repeat is not None:
            option = None
            if flag.item_option is not None:
                option = getattr(args, _dest(flag.item_option), None)
            items = key.kind.items_from_flag(list(given), option)
            if flag.repeat == "extend":
                current = key.value_in(config)
                assert isinstance(current, tuple)
                value = tuple(dict.fromkeys((*current, *items)))
            else:
                value = key.kind.from_flag_items(items)
        elif flag.null_word is not None and given == flag.null_word:
            value = None
        else:
            value = key.kind.from_flag(given)
        config = replace_at(config, key.attrs, value)
    return config
