"""The schema: every field of the result dataclasses is described by exactly one key."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from replication.config import (
    MASTER,
    WORKER,
    WORKER_ONLY_KEYS,
    MasterConfig,
    WorkerConfig,
)
from replication.config.kinds import AtLeast, Duration, Integer
from replication.config.schema import Key, Schema


def _leaf_fields(instance: object, prefix: str = "") -> list[str]:
    """Dotted names of the fields of a dataclass instance, descending into nested ones."""
    names = []
    for field in dataclasses.fields(instance):  # type: ignore[arg-type]
        value = getattr(instance, field.name)
        if dataclasses.is_dataclass(value):
            names += _leaf_fields(value, f"{prefix}{field.name}.")
        else:
            names.append(prefix + field.name)
    return names


@pytest.mark.parametrize(("schema", "model"), [(MASTER, MasterConfig), (WORKER, WorkerConfig)])
def test_every_field_is_described_once(schema: Schema[Any], model: type) -> None:
    """The keys' attributes are exactly the result's fields, each once: nothing undocumented,
    nothing described twice."""
    attrs = [".".join(key.attrs) for key in schema.keys]
    assert sorted(attrs) == sorted(_leaf_fields(model()))


def test_defaults_come_from_the_dataclasses() -> None:
    """A key's default is its dataclass field's default (the schema does not repeat them)."""
    assert MASTER.default_of(MASTER.key("http.listen")) == MasterConfig().http_listen
    assert MASTER.default_of(MASTER.key("limits.max_body_bytes")) == 16 * 1024 * 1024
    assert WORKER.default_of(WORKER.key("handler_retry.max_delay")) == 60.0


def test_sections_are_derived_from_key_paths() -> None:
    """The keys a section allows are the next parts of the key paths below it, in order."""
    assert MASTER.children("") == [
        "server_name", "listen", "http", "data_dir", "streams", "strict_streams", "store",
        "retention", "keepalive", "limits", "metrics", "log", "commands", "commands_path",
        "auth", "cluster",
    ]
    assert MASTER.children("retention") == ["max_rows", "max_age", "streams"]
    assert WORKER.children("limits") == ["max_line_bytes", "max_token_rows", "max_token_bytes"]


def test_worker_only_keys_are_the_top_level_keys_a_master_lacks() -> None:
    """detect_role's worker-only keys are derived from the two schemas."""
    assert WORKER_ONLY_KEYS == {
        "name", "master", "handler", "handler_path", "handler_options", "position_file",
        "handler_retry", "reconnect",
    }


def test_a_rule_must_refer_to_an_earlier_key() -> None:
    """Keys are checked in order, so a rule reading a later (unchecked) key is refused."""
    with pytest.raises(ValueError, match="earlier key"):
        Schema(
            MasterConfig,
            (
                Key(
                    "limits.max_buffer_bytes",
                    Integer(1),
                    "x",
                    rule=AtLeast("limits.max_line_bytes"),
                ),
                Key("limits.max_line_bytes", Integer(1), "y"),
            ),
        )


def test_a_key_is_described_once() -> None:
    """The same path twice in one schema is refused."""
    with pytest.raises(ValueError, match="twice"):
        Schema(
            WorkerConfig,
            (
                Key("reconnect.max_delay", Duration(), "x"),
                Key("reconnect.max_delay", Duration(), "y"),
            ),
        )
