"""Command line overrides of ``replication master`` and ``replication worker``, derived from the
schema: the same flags, help and meaning as the hand-written ones they replace."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from replication.cli import build_parser
from replication.config import (
    MASTER,
    WORKER,
    ConfigError,
    MasterConfig,
    StoreConfig,
    WorkerConfig,
    WorkerStream,
    master_config_from_text,
    validate_master,
    validate_worker,
    worker_config_from_text,
)
from replication.config.flags import add_flags, apply_flags
from replication.config.kinds import StreamNames
from replication.config.schema import Flag, Key, Schema

# (flag, dest, metavar, help, choices, default, append) as the CLI had them before the schema
# (``--path`` came later, with ``handler_path``; ``--log-format`` with ``log.format``).
LOG_FORMAT_FLAG = (
    "--log-format", "log_format", None, "how log lines are written (default text)",
    ("text", "json"), None, False,
)
MASTER_FLAGS = [
    ("--listen", "listen", "ENDPOINT",
     "Twisted endpoint for workers, e.g. tcp:9092:interface=127.0.0.1", None, None, False),
    ("--http-listen", "http_listen", "ENDPOINT", "Twisted endpoint for HTTP, or 'none'", None,
     None, False),
    ("--server-name", "server_name", "NAME", "the name sent in SERVER", None, None, False),
    ("--stream", "stream", "NAME", "a stream to create at start (repeatable)", None, None, True),
    (
        "--store", "store", None, "where streams are kept", ("memory", "sqlite", "postgres"),
        None, False,
    ),
    ("--data-dir", "data_dir", "DIR", "directory for the master's data", None, None, False),
    LOG_FORMAT_FLAG,
]
WORKER_FLAGS = [
    ("--master", "master", "ENDPOINT",
     "Twisted client endpoint of the master, e.g. tcp:host=127.0.0.1:port=9092 (repeatable: "
     "masters of one cluster; replaces the config's)", None, None, True),
    ("--stream", "stream", "NAME", "a stream to follow (repeatable; replaces the config's list)",
     None, None, True),
    ("--start", "start", None,
     "for --stream: where to begin a stream this worker never saw (default earliest)",
     ("earliest", "latest"), "earliest", False),
    ("--name", "name", "NAME", "the name sent in NAME", None, None, False),
    ("--handler", "handler", "MODULE:CALLABLE", "handler called with (stream, token, rows)",
     None, None, False),
    ("--path", "path", "DIR",
     "a directory searched first for the handler's module (repeatable; added after the "
     "config's handler_path)", None, None, True),
    ("--position-file", "position_file", "FILE", "where positions are recorded", None, None,
     False),
    ("--metrics-listen", "metrics_listen", "ENDPOINT",
     "Twisted endpoint serving /metrics, e.g. tcp:9100:interface=127.0.0.1, or 'none'", None,
     None, False),
    LOG_FORMAT_FLAG,
]


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]  # type: ignore[no-any-return]
    raise AssertionError("no subcommands")


@pytest.mark.parametrize(("command", "flags"), [("master", MASTER_FLAGS), ("worker", WORKER_FLAGS)])
def test_override_flags_are_unchanged(command: str, flags: list[tuple[Any, ...]]) -> None:
    """Every override flag keeps its name, destination, metavar, help, choices and default,
    and the subcommand has no other flags than these, --config, --verbose, --reactor (the
    reactor to run on, not a configuration key) and the master's
    --accept-store-history-loss (a decision for one start, not a configuration key)."""
    actions = {
        action.option_strings[0]: action
        for action in _subparser(command)._actions
        if action.option_strings
        and action.option_strings[0]
        not in ("-h", "--config", "--verbose", "--reactor", "--accept-store-history-loss")
    }
    assert sorted(actions) == sorted(flag[0] for flag in flags)
    for name, dest, metavar, help_text, choices, default, append in flags:
        action = actions[name]
        assert (action.dest, action.metavar, action.help) == (dest, metavar, help_text)
        assert (tuple(action.choices) if action.choices else None) == choices
        assert action.default == default
        assert isinstance(action, argparse._AppendAction) is append


def _master(argv: list[str], config: MasterConfig | None = None) -> MasterConfig:
    args = build_parser().parse_args(["master", *argv])
    return validate_master(apply_flags(MASTER, config or MasterConfig(), args))


def _worker(argv: list[str], config: WorkerConfig | None = None) -> WorkerConfig:
    args = build_parser().parse_args(["worker", *argv])
    return validate_worker(apply_flags(WORKER, config or WorkerConfig(), args))


def test_no_flags_leave_the_configuration_alone() -> None:
    """Without override flags the loaded configuration is returned as it is."""
    master = master_config_from_text("streams: [a]\nstore: {type: memory}\n")
    assert _master([], master) == master
    worker = worker_config_from_text("streams: {a: {from: latest}}\n")
    assert _worker([], worker) == worker


def test_master_flags_override_their_keys() -> None:
    """Each master flag sets its key; --store sets store.type and keeps store.path."""
    config = _master(
        ["--listen", "tcp:1234", "--http-listen", "tcp:1235", "--server-name", "m2",
         "--store", "sqlite", "--data-dir", "/tmp/d"],
        master_config_from_text("store: {type: sqlite, path: x.db}\n"),
    )
    assert (config.listen, config.http_listen, config.server_name, config.data_dir) == (
        "tcp:1234", "tcp:1235", "m2", "/tmp/d"
    )
    assert config.store == StoreConfig("sqlite", "x.db")
    assert _master(["--store", "memory"]).store == StoreConfig("memory", None)


def test_none_turns_an_endpoint_off() -> None:
    """--http-listen none and --metrics-listen none set the key to null."""
    assert _master(["--http-listen", "none"]).http_listen is None
    configured = worker_config_from_text("metrics: {listen: 'tcp:9100'}\n")
    assert _worker(["--metrics-listen", "none"], configured).metrics_listen is None
    assert _worker(["--metrics-listen", "tcp:9101"]).metrics_listen == "tcp:9101"


def test_master_streams_extend_the_configured_list_once() -> None:
    """--stream adds to the file's streams, keeping their order and naming each stream once."""
    config = master_config_from_text("streams: [a, b]\n")
    assert _master(["--stream", "c", "--stream", "a", "--stream", "c"], config).streams == (
        "a", "b", "c",
    )


def test_worker_streams_replace_the_configured_list_from_start() -> None:
    """--stream replaces the file's streams; --start (default earliest) is where each begins."""
    config = worker_config_from_text("streams: {a: {from: latest}}\n")
    assert _worker(["--stream", "b", "--stream", "c"], config).streams == (
        WorkerStream("b", "earliest"), WorkerStream("c", "earliest"),
    )
    assert _worker(["--stream", "b", "--start", "latest"], config).streams == (
        WorkerStream("b", "latest"),
    )
    assert _worker(["--start", "latest"], config).streams == config.streams


def test_worker_flags_override_their_keys() -> None:
    """--master, --name, --handler and --position-file set their keys."""
    config = _worker(
        ["--master", "tcp:host=h:port=1", "--name", "w2", "--handler", "a.b:c",
         "--position-file", "p.pos"]
    )
    assert (config.master, config.name, config.handler, config.position_file) == (
        "tcp:host=h:port=1", "w2", "a.b:c", "p.pos"
    )


@pytest.mark.parametrize(
    ("argv", "path", "fragment"),
    [
        (["master", "--listen", "tcp:nope"], "listen", "invalid Twisted server endpoint"),
        (["master", "--listen", ""], "listen", "must not be empty"),
        (["master", "--stream", "bad name"], "streams[0]", "invalid stream name"),
        (["worker", "--handler", "nope"], "handler", "package.module:callable"),
        (["worker", "--stream", "a", "--stream", "a"], "streams[1]", "duplicate stream 'a'"),
        (["worker", "--name", "two words"], "name", "invalid name"),
    ],
)
def test_flag_values_get_the_checks_of_file_values(
    argv: list[str], path: str, fragment: str
) -> None:
    """A bad flag value is a ConfigError naming the key path, with no file or line."""
    with pytest.raises(ConfigError) as caught:
        if argv[0] == "master":
            _master(argv[1:])
        else:
            _worker(argv[1:])
    assert (caught.value.path, caught.value.line, caught.value.source) == (path, None, None)
    assert fragment in caught.value.message


def test_choices_are_enforced_by_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    """--store and --start only take their kind's choices."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["master", "--store", "redis"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--start", "middle"])
    assert "invalid choice" in capsys.readouterr().err


def test_an_item_option_flag_needs_items_with_an_option() -> None:
    """A flag with an item option on a list whose items have none is a schema mistake, refused
    when the parser is built rather than ignored."""
    schema = Schema(
        MasterConfig,
        (
            Key(
                "streams",
                StreamNames(),
                "x",
                flag=Flag("--stream", "h", repeat="extend", item_option=Flag("--start", "h")),
            ),
        ),
    )
    with pytest.raises(TypeError, match="--start"):
        add_flags(argparse.ArgumentParser(), schema)
