"""Tests for replication.config: YAML files to frozen dataclasses, and every way to get one
wrong."""

from __future__ import annotations

import dataclasses
import pickle
import re
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

from replication.config import (
    ConfigError,
    KeepaliveConfig,
    LimitsConfig,
    MasterConfig,
    ReconnectConfig,
    RetentionConfig,
    StoreConfig,
    WorkerConfig,
    WorkerStream,
    detect_role,
    detect_role_from_text,
    load_master_config,
    load_worker_config,
    master_config_from_text,
    parse_duration,
    parse_size,
    validate_master,
    validate_worker,
    with_overrides,
    worker_config_from_text,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.rst"


def _text(source: str) -> str:
    return textwrap.dedent(source).lstrip("\n")


# ---------------------------------------------------------------------------------------------
# Durations and sizes


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (5, 5.0),
        (0.25, 0.25),
        ("500ms", 0.5),
        ("1ms", 0.001),
        ("5s", 5.0),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        ("30", 30.0),
        (" 5 s ", 5.0),
        (".5s", 0.5),
    ],
)
def test_parse_duration_accepts_numbers_and_units(value: object, seconds: float) -> None:
    """Durations are seconds as numbers, or strings with ms/s/m/h/d (no unit means seconds)."""
    assert parse_duration(value) == seconds
    assert isinstance(parse_duration(value), float)


@pytest.mark.parametrize(
    "value",
    [0, -1, 0.0, "0s", "-5s", "5x", "5 sec", "ms", "", "5S", True, False, None, float("inf"),
     float("nan"), [5], "1e3s"],
)
def test_parse_duration_rejects(value: object) -> None:
    """Zero, negatives, booleans, infinities, unknown units and non-numbers are ValueErrors."""
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (1, 1),
        (65536, 65536),
        ("512B", 512),
        ("64KiB", 65536),
        ("8MiB", 8 * 1024 * 1024),
        ("1GiB", 1024**3),
        ("1TiB", 1024**4),
        ("1KB", 1000),
        ("2MB", 2_000_000),
        ("1GB", 10**9),
        ("1.5MiB", 1572864),
        ("1024", 1024),
        ("8 MiB", 8 * 1024 * 1024),
    ],
)
def test_parse_size_accepts_bytes_and_units(value: object, size: int) -> None:
    """Sizes are whole bytes as ints, or strings with B, KiB/MiB/GiB/TiB or KB/MB/GB/TB."""
    assert parse_size(value) == size
    assert type(parse_size(value)) is int


@pytest.mark.parametrize(
    "value",
    [0, -1, "0B", "-1KiB", "0.3KiB", "1.5B", "8mib", "8MIB", "8 megabytes", "", "KiB", True,
     1024.0, None, ["1KiB"]],
)
def test_parse_size_rejects(value: object) -> None:
    """Zero, negatives, fractions of a byte, floats, booleans and unknown units are rejected."""
    with pytest.raises(ValueError):
        parse_size(value)


# ---------------------------------------------------------------------------------------------
# Defaults


def test_no_file_means_defaults() -> None:
    """Loading with path None gives the documented defaults."""
    master = load_master_config(None)
    assert master == MasterConfig()
    assert master.listen == "tcp:9092:interface=127.0.0.1"
    assert master.http_listen == "tcp:9093:interface=127.0.0.1"
    assert master.limits == LimitsConfig(65536, 8 * 1024 * 1024, 1000, 16 * 1024 * 1024, 1000)
    assert master.retention == RetentionConfig(max_rows=1_000_000, max_age=None)
    assert dict(master.stream_retention) == {}
    assert load_worker_config(None) == WorkerConfig()


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n", "~\n", "null\n"])
def test_empty_document_means_defaults(text: str) -> None:
    """An empty document (or a lone null) is the default configuration for either role."""
    assert master_config_from_text(text) == MasterConfig()
    assert worker_config_from_text(text) == WorkerConfig()


def test_empty_sections_mean_defaults() -> None:
    """A section written with no value takes its defaults."""
    text = "limits:\nkeepalive:\nretention:\nstore:\nhttp:\n"
    assert master_config_from_text(text) == MasterConfig()
    text = "limits:\nkeepalive:\nreconnect:\nhandler_retry:\n"
    assert worker_config_from_text(text) == WorkerConfig()


def test_configs_are_frozen_and_hashable() -> None:
    """Configs cannot be changed in place, and hash despite the per-stream retention map."""
    config = MasterConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.listen = "tcp:1"  # type: ignore[misc]
    assert hash(config) == hash(MasterConfig())
    assert hash(WorkerConfig()) == hash(WorkerConfig())
    assert isinstance(config.stream_retention, types.MappingProxyType)


def test_config_module_does_not_import_the_reactor() -> None:
    """Importing and using replication.config never installs the global reactor."""
    import subprocess

    code = (
        "import sys, replication.config as c; c.load_master_config(None);"
        "c.load_worker_config(None); print('twisted.internet.reactor' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------
# Valid documents


def test_full_master_document() -> None:
    """Every master key is read into the matching dataclass field, with units applied."""
    config = master_config_from_text(
        _text(
            """
            server_name: master-1
            listen: "tcp:19092:interface=0.0.0.0"
            http:
              listen: "unix:/tmp/replication-admin.sock"
            data_dir: /var/lib/replication
            streams: [events, presence, "2024"]
            strict_streams: true
            store:
              type: sqlite
              path: /var/lib/replication/db.sqlite
            retention:
              max_rows: 5000
              max_age: 7d
              streams:
                events: {max_rows: 100}
                presence: {max_age: 1h, max_rows: null}
                "2024":
            keepalive:
              ping_interval: 500ms
              ping_timeout: 2
              close_timeout: 1.5
            limits:
              max_line_bytes: 1KiB
              max_buffer_bytes: 1MB
              max_connections: 5
              max_body_bytes: 2048
              catchup_page_rows: 100000
            """
        )
    )
    assert config == MasterConfig(
        server_name="master-1",
        listen="tcp:19092:interface=0.0.0.0",
        http_listen="unix:/tmp/replication-admin.sock",
        data_dir="/var/lib/replication",
        streams=("events", "presence", "2024"),
        strict_streams=True,
        store=StoreConfig(type="sqlite", path="/var/lib/replication/db.sqlite"),
        retention=RetentionConfig(max_rows=5000, max_age=604800.0),
        stream_retention=types.MappingProxyType(
            {
                "events": RetentionConfig(max_rows=100, max_age=604800.0),
                "presence": RetentionConfig(max_rows=None, max_age=3600.0),
                "2024": RetentionConfig(max_rows=5000, max_age=604800.0),
            }
        ),
        keepalive=KeepaliveConfig(ping_interval=0.5, ping_timeout=2.0, close_timeout=1.5),
        limits=LimitsConfig(
            max_line_bytes=1024,
            max_buffer_bytes=1_000_000,
            max_connections=5,
            max_body_bytes=2048,
            catchup_page_rows=100_000,
        ),
    )
    assert isinstance(config.keepalive.ping_timeout, float)


def test_retention_for_uses_override_or_default() -> None:
    """retention_for gives a stream's override (inheriting unset keys) or the default."""
    config = master_config_from_text(
        "retention: {max_rows: 5000, max_age: 7d, streams: {events: {max_rows: 100}}}"
    )
    assert config.retention_for("events") == RetentionConfig(max_rows=100, max_age=604800.0)
    assert config.retention_for("other") == RetentionConfig(max_rows=5000, max_age=604800.0)


def test_override_inherits_default_retention_when_top_level_keys_are_unset() -> None:
    """An override under a retention section without max_rows inherits the built-in 1000000."""
    config = master_config_from_text("retention: {streams: {events: {max_age: 1m}}}")
    assert config.retention_for("events") == RetentionConfig(max_rows=1_000_000, max_age=60.0)


def test_http_listen_null_disables_http() -> None:
    """http.listen: null turns the HTTP server off; http with no value keeps the default."""
    assert master_config_from_text("http: {listen: null}").http_listen is None
    assert master_config_from_text("http:").http_listen == MasterConfig().http_listen


def test_metrics_keys() -> None:
    """metrics.max_peer_labels (master, default 100) and metrics.listen (worker, default
    null: no /metrics) are read; a section with no value keeps the defaults."""
    assert MasterConfig().metrics_max_peer_labels == 100
    assert master_config_from_text("metrics: {max_peer_labels: 0}").metrics_max_peer_labels == 0
    assert master_config_from_text("metrics:\n").metrics_max_peer_labels == 100
    assert WorkerConfig().metrics_listen is None
    config = worker_config_from_text("metrics: {listen: 'tcp:9100:interface=127.0.0.1'}")
    assert config.metrics_listen == "tcp:9100:interface=127.0.0.1"
    assert worker_config_from_text("metrics: {listen: null}").metrics_listen is None
    assert worker_config_from_text("metrics:\n") == WorkerConfig()


def test_sqlite_store_without_path_is_allowed() -> None:
    """type sqlite alone means a default database file inside data_dir."""
    config = master_config_from_text("store: {type: sqlite}")
    assert config.store == StoreConfig(type="sqlite", path=None)


def test_full_worker_document_with_stream_mapping() -> None:
    """Every worker key is read; a stream mapping gives each stream its start."""
    config = worker_config_from_text(
        _text(
            """
            name: worker-1
            master: "tcp:host=master.internal:port=9092"
            streams:
              events:
              presence: {from: latest}
              receipts: {from: earliest}
            handler: "myapp.sync:Syncer.handle"
            position_file: /var/lib/w1.json
            handler_retry: {max_delay: 2m}
            limits: {max_line_bytes: 128KiB}
            keepalive: {ping_interval: 1, ping_timeout: 3s, close_timeout: 250ms}
            reconnect: {initial_delay: 100ms, max_delay: 1h}
            """
        )
    )
    assert config == WorkerConfig(
        name="worker-1",
        master="tcp:host=master.internal:port=9092",
        streams=(
            WorkerStream("events", "earliest"),
            WorkerStream("presence", "latest"),
            WorkerStream("receipts", "earliest"),
        ),
        handler="myapp.sync:Syncer.handle",
        position_file="/var/lib/w1.json",
        handler_retry_max_delay=120.0,
        max_line_bytes=131072,
        keepalive=KeepaliveConfig(ping_interval=1.0, ping_timeout=3.0, close_timeout=0.25),
        reconnect=ReconnectConfig(initial_delay=0.1, max_delay=3600.0),
    )
    assert config.resolved_position_file() == "/var/lib/w1.json"


def test_worker_stream_list_starts_from_earliest() -> None:
    """A list of stream names follows each from earliest."""
    config = worker_config_from_text("streams: [events, presence]")
    assert config.streams == (WorkerStream("events"), WorkerStream("presence"))
    assert config.streams[0].start == "earliest"


def test_default_position_file_is_named_after_the_worker() -> None:
    """Without position_file the worker uses <name>.positions in the current directory."""
    assert worker_config_from_text("name: w7").resolved_position_file() == "w7.positions"
    assert WorkerConfig().resolved_position_file() == "worker.positions"


def test_anchors_aliases_and_merge_keys_work_like_safe_load() -> None:
    """Anchors, aliases and << merge keys are honoured; explicit keys win over merged ones."""
    config = master_config_from_text(
        _text(
            """
            retention:
              max_rows: 10
              streams:
                events: &short {max_rows: 5, max_age: 1m}
                presence: *short
                receipts:
                  <<: *short
                  max_rows: 7
            """
        )
    )
    assert config.retention_for("presence") == RetentionConfig(5, 60.0)
    assert config.retention_for("receipts") == RetentionConfig(7, 60.0)


def test_load_from_file(tmp_path: Path) -> None:
    """The loaders read files, and name the file in errors."""
    path = tmp_path / "master.yaml"
    path.write_text("server_name: m\nlimits:\n  max_connections: 0\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_master_config(str(path))
    assert caught.value.source == str(path)
    assert caught.value.line == 3
    assert str(caught.value).startswith(f"{path}:3: limits.max_connections: ")

    path.write_text("\ufeffserver_name: m\n", encoding="utf-8")
    assert load_master_config(str(path)).server_name == "m"
    path.write_text("name: w\nstreams: [a]\n", encoding="utf-8")
    assert load_worker_config(str(path)).streams == (WorkerStream("a"),)


def test_missing_and_undecodable_files(tmp_path: Path) -> None:
    """A missing file or one that is not UTF-8 is a ConfigError naming the file."""
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read the configuration file") as caught:
        load_master_config(str(missing))
    assert caught.value.source == str(missing)
    assert caught.value.path == ""
    with pytest.raises(ConfigError):
        load_worker_config(str(tmp_path))  # a directory
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"server_name: m\nlisten: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not valid UTF-8") as caught:
        load_master_config(str(binary))
    assert caught.value.line == 2


# ---------------------------------------------------------------------------------------------
# Invalid documents: (yaml, expected path, expected line, message fragment)

MASTER_ERRORS = [
    ("listne: 'tcp:9092'\n", "listne", 1, "unknown key 'listne'; did you mean 'listen'?"),
    (
        "limits:\n  max_bufer_bytes: 1\n",
        "limits.max_bufer_bytes",
        2,
        "did you mean 'max_buffer_bytes'?",
    ),
    (
        "zzz: 1\n",
        "zzz",
        1,
        "unknown key 'zzz'; valid keys are: auth, cluster, commands, commands_path",
    ),
    ("- a\n- b\n", "", 1, "must be a mapping of keys to values, got a list"),
    ("just text\n", "", 1, "must be a mapping"),
    ("limits: 5\n", "limits", 1, "must be a mapping of keys to values, got 5"),
    ("server_name: m\nlisten: [1\n", "", 3, "invalid YAML"),
    ("a: b: c\n", "", 1, "mapping values are not allowed here"),
    ("listen: x\nlisten: y\n", "listen", 2, "duplicate key 'listen' (first on line 1)"),
    (
        "limits:\n  max_connections: 1\n  max_connections: 2\n",
        "limits.max_connections",
        3,
        "duplicate key",
    ),
    ("--- {}\n--- {}\n", "", 2, "expected a single document"),
    (
        "limits:\n  max_connections: true\n",
        "limits.max_connections",
        2,
        "must be a positive integer, got true",
    ),
    ("limits:\n  max_line_bytes: false\n", "limits.max_line_bytes", 2, "got false"),
    ("limits:\n  catchup_page_rows: '5'\n", "limits.catchup_page_rows", 2, "got '5'"),
    ("limits:\n  max_connections: 1.5\n", "limits.max_connections", 2, "got 1.5"),
    (
        "limits:\n  max_buffer_bytes: big\n",
        "limits.max_buffer_bytes",
        2,
        "must be a positive integer or a size like '64KiB', '8MiB', '1GiB', got 'big'",
    ),
    (
        "limits:\n  max_buffer_bytes: -5\n",
        "limits.max_buffer_bytes",
        2,
        "must be a positive integer, got -5",
    ),
    ("limits:\n  max_body_bytes: -1KiB\n", "limits.max_body_bytes", 2, "got '-1KiB'"),
    (
        "limits:\n  max_line_bytes: 1023\n",
        "limits.max_line_bytes",
        2,
        "must be between 1024 and 67108864, got 1023",
    ),
    ("limits:\n  max_line_bytes: 65MiB\n", "limits.max_line_bytes", 2, "between 1024"),
    (
        "limits:\n  max_line_bytes: 1MiB\n  max_buffer_bytes: 512KiB\n",
        "limits.max_buffer_bytes",
        3,
        "must be at least limits.max_line_bytes (1048576), got 524288",
    ),
    (
        "limits:\n  max_line_bytes: 32MiB\n",
        "limits.max_buffer_bytes",
        1,
        "must be at least limits.max_line_bytes",
    ),
    ("limits:\n  max_body_bytes: 1KiB\n", "limits.max_body_bytes", 2, "at least"),
    (
        "limits:\n  max_connections: 0\n",
        "limits.max_connections",
        2,
        "must be between 1 and 1000000, got 0",
    ),
    ("limits:\n  max_connections: 1000001\n", "limits.max_connections", 2, "between 1 and"),
    (
        "limits:\n  catchup_page_rows: 100001\n",
        "limits.catchup_page_rows",
        2,
        "between 1 and 100000",
    ),
    (
        "keepalive:\n  ping_interval: 30\n",
        "keepalive.ping_timeout",
        1,
        "must be greater than keepalive.ping_interval (30s), got 25s",
    ),
    (
        "keepalive:\n  ping_interval: 5s\n  ping_timeout: 5s\n",
        "keepalive.ping_timeout",
        3,
        "must be greater than",
    ),
    (
        "keepalive:\n  ping_interval: 0\n",
        "keepalive.ping_interval",
        2,
        "must be a positive number of seconds, got 0",
    ),
    ("keepalive:\n  close_timeout: -1s\n", "keepalive.close_timeout", 2, "got '-1s'"),
    (
        "keepalive:\n  close_timeout: soon\n",
        "keepalive.close_timeout",
        2,
        "a duration like '500ms'",
    ),
    ("keepalive:\n  ping_interval: yes\n", "keepalive.ping_interval", 2, "got true"),
    ("keepalive:\n  ping_interval: .inf\n", "keepalive.ping_interval", 2, "got inf"),
    (
        "listen: 'tcp:notaport'\n",
        "listen",
        1,
        "invalid Twisted server endpoint 'tcp:notaport': invalid literal for int()",
    ),
    ("listen: 'carrier-pigeon:9092'\n", "listen", 1, "Unknown endpoint type: 'carrier-pigeon'"),
    ("listen: 'tcp:99999'\n", "listen", 1, "port 99999 is not in 0..65535"),
    ("listen: 9092\n", "listen", 1, "must be a string, got 9092"),
    ("http:\n  listen: 'tcp:9093:bogus=1'\n", "http.listen", 2, "unexpected keyword argument"),
    ("http:\n  listn: x\n", "http.listn", 2, "did you mean 'listen'?"),
    ("server_name: 'my master'\n", "server_name", 1, "invalid server_name 'my master'"),
    ("server_name: ''\n", "server_name", 1, "must not be empty"),
    ("data_dir: null\n", "data_dir", 1, "must be a string, got null"),
    ("streams: events\n", "streams", 1, "must be a list of stream names, got 'events'"),
    ("streams:\n  - events\n  - 'bad name'\n", "streams[1]", 3, "invalid stream name 'bad name'"),
    ("streams: [events, ALL]\n", "streams[1]", 1, "'ALL' is reserved"),
    (
        "streams: [events, 2024]\n",
        "streams[1]",
        1,
        "a stream name must be a string, got 2024 (quote it)",
    ),
    ("streams:\n  - a\n  - b\n  - a\n", "streams[2]", 4, "duplicate stream 'a' (also streams[0])"),
    ("strict_streams: 1\n", "strict_streams", 1, "must be true or false, got 1"),
    ("store:\n  type: memory\n  path: x.db\n", "store.path", 3, "only allowed with type sqlite"),
    (
        "store:\n  type: redis\n", "store.type", 2,
        "must be one of memory, sqlite, postgres, got 'redis'",
    ),
    ("store:\n  type: postgres\n", "store.dsn", 1, "is required with type postgres"),
    ("store:\n  type: sqlite\n  dsn: x\n", "store.dsn", 3, "only allowed with type postgres"),
    ("store:\n  type: memory\n  schema: x\n", "store.schema", 3, "only allowed with type postgres"),
    ("store:\n  poll_interval: 0\n", "store.poll_interval", 2, "positive number of seconds"),
    (
        "store:\n  type: postgres\n  dsn: x\n  schema: My-Schema\n", "store.schema", 4,
        "schema 'My-Schema': use lower-case letters",
    ),
    ("store:\n  type: sqlite\n  paht: x\n", "store.paht", 3, "did you mean 'path'?"),
    ("retention:\n  max_rows: 0\n", "retention.max_rows", 2, "must be a positive integer, got 0"),
    ("retention:\n  max_age: 0s\n", "retention.max_age", 2, "got '0s'"),
    (
        "retention:\n  streams:\n    events:\n      max_rows: -1\n",
        "retention.streams.events.max_rows",
        4,
        "must be a positive integer, got -1",
    ),
    (
        "retention:\n  streams:\n    events:\n      max_row: 1\n",
        "retention.streams.events.max_row",
        4,
        "did you mean 'max_rows'?",
    ),
    (
        "retention:\n  streams:\n    'bad name': {max_rows: 1}\n",
        "retention.streams.bad name",
        3,
        "invalid stream name",
    ),
    ("retention:\n  streams: [events]\n", "retention.streams", 2, "must be a mapping"),
    (
        "streams: [a]\nstrict_streams: true\nretention:\n  streams:\n    b: {max_rows: 1}\n",
        "retention.streams.b",
        5,
        "not in streams, and strict_streams is true",
    ),
    ("1: x\n", "", 1, "keys must be strings, got 1 (quote it)"),
    ("listen: !!python/object/apply:os.system ['true']\n", "listen", 1, "unsupported YAML tag"),
    ("listen: !custom x\n", "listen", 1, "unsupported YAML tag '!custom'"),
    ("streams: !!set {a}\n", "streams", 1, "unsupported YAML tag"),
    ("a: &a [*a]\n", "a[0]", 1, "an alias refers to a value that contains it"),
    (
        "metrics:\n  max_peer_labels: -1\n",
        "metrics.max_peer_labels",
        2,
        "must be between 0 and 10000, got -1",
    ),
    ("metrics:\n  max_peer_labels: 10001\n", "metrics.max_peer_labels", 2, "between 0 and 10000"),
    (
        "metrics:\n  max_peer_labels: many\n",
        "metrics.max_peer_labels",
        2,
        "must be an integer, got 'many'",
    ),
    (
        "metrics:\n  max_peer_label: 5\n",
        "metrics.max_peer_label",
        2,
        "did you mean 'max_peer_labels'?",
    ),
    ("metrics:\n  listen: 'tcp:9100'\n", "metrics.listen", 2, "unknown key 'listen'"),
]


@pytest.mark.parametrize(("text", "path", "line", "fragment"), MASTER_ERRORS)
def test_bad_master_documents(text: str, path: str, line: int, fragment: str) -> None:
    """Each bad master document is a ConfigError naming the key path, line and problem."""
    with pytest.raises(ConfigError) as caught:
        master_config_from_text(text, "master.yaml")
    error = caught.value
    assert (error.path, error.line) == (path, line), str(error)
    assert fragment in error.message
    assert error.source == "master.yaml"
    prefix = f"master.yaml:{line}: {path}: " if path else f"master.yaml:{line}: "
    assert str(error) == prefix + error.message


WORKER_ERRORS = [
    ("nmae: w\n", "nmae", 1, "unknown key 'nmae'; did you mean 'name'?"),
    ("name: 'two words'\n", "name", 1, "invalid name 'two words'"),
    ("name: 7\n", "name", 1, "must be a string, got 7"),
    ("master: 'tcp:host=x'\n", "master", 1, "invalid Twisted client endpoint 'tcp:host=x'"),
    ("master: 'tcp:9092:interface=127.0.0.1'\n", "master", 1, "invalid Twisted client endpoint"),
    ("master: 'tcp:host=x:port=70000'\n", "master", 1, "port 70000 is not in 0..65535"),
    ("streams: events\n", "streams", 1, "must be a list of stream names or a mapping"),
    ("streams:\n  - events\n  - ''\n", "streams[1]", 3, "invalid stream name ''"),
    ("streams:\n  - events\n  - {events: {from: latest}}\n", "streams[1]", 3,
     "a stream name must be a string, got a mapping"),
    ("streams: [a, b, a]\n", "streams[2]", 1, "duplicate stream 'a' (also streams[0])"),
    ("streams:\n  events: {from: middle}\n", "streams.events.from", 2,
     "must be earliest or latest, got 'middle'"),
    ("streams:\n  events: {form: latest}\n", "streams.events.form", 2, "did you mean 'from'?"),
    ("streams:\n  events: latest\n", "streams.events", 2, "must be a mapping"),
    ("streams:\n  'bad/name':\n", "streams.bad/name", 2, "invalid stream name"),
    ("streams:\n  a:\n  a:\n", "streams.a", 3, "duplicate key 'a' (first on line 2)"),
    ("handler: print\n", "handler", 1, "must look like 'package.module:callable', got 'print'"),
    ("handler: 'my-pkg:run'\n", "handler", 1, "must look like"),
    ("handler: 'pkg.mod:'\n", "handler", 1, "must look like"),
    ("position_file: ''\n", "position_file", 1, "must not be empty"),
    ("handler_retry:\n  max_delay: forever\n", "handler_retry.max_delay", 2, "got 'forever'"),
    ("handler_retry:\n  delay: 1\n", "handler_retry.delay", 2, "did you mean 'max_delay'?"),
    ("limits:\n  max_buffer_bytes: 1MiB\n", "limits.max_buffer_bytes", 2,
     "unknown key 'max_buffer_bytes'; did you mean 'max_line_bytes'?"),
    ("limits:\n  max_line_bytes: 512B\n", "limits.max_line_bytes", 2, "between 1024"),
    ("keepalive:\n  ping_timeout: 1s\n", "keepalive.ping_timeout", 2, "must be greater than"),
    ("reconnect:\n  initial_delay: 10s\n  max_delay: 5s\n", "reconnect.max_delay", 3,
     "must be at least reconnect.initial_delay (10s), got 5s"),
    ("reconnect:\n  initial_delay: 60\n", "reconnect.max_delay", 1, "must be at least"),
    ("reconnect:\n  initial_delay: false\n", "reconnect.initial_delay", 2, "got false"),
    ("metrics:\n  listen: 'tcp:notaport'\n", "metrics.listen", 2,
     "invalid Twisted server endpoint 'tcp:notaport'"),
    ("metrics:\n  listen: 9100\n", "metrics.listen", 2, "must be a string, got 9100"),
    ("metrics:\n  max_peer_labels: 5\n", "metrics.max_peer_labels", 2,
     "unknown key 'max_peer_labels'; valid keys are: listen"),
]


@pytest.mark.parametrize(("text", "path", "line", "fragment"), WORKER_ERRORS)
def test_bad_worker_documents(text: str, path: str, line: int, fragment: str) -> None:
    """Each bad worker document is a ConfigError naming the key path, line and problem."""
    with pytest.raises(ConfigError) as caught:
        worker_config_from_text(text, "worker.yaml")
    error = caught.value
    assert (error.path, error.line) == (path, line), str(error)
    assert fragment in error.message
    assert str(error) == f"worker.yaml:{line}: {path}: {error.message}"


def test_safe_loading_never_runs_python_tags() -> None:
    """A python/object tag is refused before anything is constructed."""
    calls: list[str] = []
    sys.modules[__name__].__dict__["_record"] = calls.append
    with pytest.raises(ConfigError, match="unsupported YAML tag"):
        master_config_from_text(f"listen: !!python/object/apply:{__name__}._record ['x']\n")
    assert calls == []


def test_alias_bomb_is_refused() -> None:
    """A billion-laughs document stops with a ConfigError instead of expanding for ever."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]")
    with pytest.raises(ConfigError, match="more than"):
        master_config_from_text("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# ConfigError


def test_config_error_str_drops_unknown_parts() -> None:
    """str(ConfigError) leaves out the file, line or path when they are not known."""
    assert str(ConfigError("bad", "limits.x", 12, "c.yaml")) == "c.yaml:12: limits.x: bad"
    assert str(ConfigError("bad", "limits.x", None, "c.yaml")) == "c.yaml: limits.x: bad"
    assert str(ConfigError("bad", "limits.x", 3, None)) == "line 3: limits.x: bad"
    assert str(ConfigError("bad", "limits.x")) == "limits.x: bad"
    assert str(ConfigError("bad", "", 2, "c.yaml")) == "c.yaml:2: bad"
    assert str(ConfigError("bad")) == "bad"


def test_config_error_pickles() -> None:
    """A ConfigError keeps its attributes through pickle (e.g. across processes)."""
    error = pickle.loads(pickle.dumps(ConfigError("bad", "limits.x", 12, "c.yaml")))
    assert (error.message, error.path, error.line, error.source) == (
        "bad", "limits.x", 12, "c.yaml"
    )


# ---------------------------------------------------------------------------------------------
# Validating configurations built in code


def test_validate_returns_valid_configs() -> None:
    """validate_master/validate_worker return a valid config unchanged."""
    config = MasterConfig(streams=("a",))
    assert validate_master(config) is config
    worker = WorkerConfig(streams=(WorkerStream("a", "latest"),))
    assert validate_worker(worker) is worker


@pytest.mark.parametrize(
    ("changes", "path", "fragment"),
    [
        ({"listen": "tcp:nope"}, "listen", "invalid Twisted server endpoint"),
        ({"http_listen": "nope:1"}, "http.listen", "Unknown endpoint type"),
        ({"limits": LimitsConfig(max_connections=True)}, "limits.max_connections", "got true"),
        ({"limits": LimitsConfig(max_buffer_bytes=100)}, "limits.max_buffer_bytes", "at least"),
        ({"keepalive": KeepaliveConfig(ping_timeout=1.0)}, "keepalive.ping_timeout", "greater"),
        ({"streams": ("a", "a")}, "streams[1]", "duplicate stream 'a'"),
        ({"streams": ["a"]}, "streams", "must be a tuple"),
        (
            {"store": StoreConfig(type="memory", path="x")},
            "store.path",
            "only allowed with type sqlite",
        ),
        ({"retention": RetentionConfig(max_age=0)}, "retention.max_age", "positive"),
        (
            {"stream_retention": {"bad name": RetentionConfig()}},
            "retention.streams.bad name",
            "invalid stream name",
        ),
        ({"server_name": ""}, "server_name", "must not be empty"),
        ({"metrics_max_peer_labels": True}, "metrics.max_peer_labels", "got true"),
    ],
)
def test_validate_master_checks_replaced_values(
    changes: dict[str, Any], path: str, fragment: str
) -> None:
    """A config changed with dataclasses.replace is re-checked; errors have no line."""
    config = with_overrides(MasterConfig(), **changes)
    with pytest.raises(ConfigError) as caught:
        validate_master(config)
    assert caught.value.path == path
    assert caught.value.line is None and caught.value.source is None
    assert fragment in caught.value.message


@pytest.mark.parametrize(
    ("changes", "path", "fragment"),
    [
        ({"master": "tcp:host=x"}, "master", "invalid Twisted client endpoint"),
        ({"streams": (WorkerStream("a"), WorkerStream("a"))}, "streams[1]", "duplicate"),
        ({"streams": (WorkerStream("a", "newest"),)}, "streams[0].from", "earliest or latest"),
        ({"streams": ("a",)}, "streams[0]", "must be a WorkerStream"),
        ({"handler": "nope"}, "handler", "package.module:callable"),
        ({"max_line_bytes": 10}, "limits.max_line_bytes", "between 1024"),
        ({"handler_retry_max_delay": -1}, "handler_retry.max_delay", "positive"),
        ({"reconnect": ReconnectConfig(5.0, 1.0)}, "reconnect.max_delay", "at least"),
        ({"metrics_listen": "nope:1"}, "metrics.listen", "Unknown endpoint type"),
    ],
)
def test_validate_worker_checks_replaced_values(
    changes: dict[str, Any], path: str, fragment: str
) -> None:
    """A worker config changed in code is re-checked with the same rules as a file."""
    with pytest.raises(ConfigError) as caught:
        validate_worker(dataclasses.replace(WorkerConfig(), **changes))
    assert caught.value.path == path
    assert fragment in caught.value.message


def test_with_overrides_is_replace() -> None:
    """with_overrides copies the config with the changes, leaving the original alone."""
    config = MasterConfig()
    changed = with_overrides(config, listen="tcp:1234")
    assert changed.listen == "tcp:1234" and config.listen == MasterConfig().listen
    assert changed == dataclasses.replace(config, listen="tcp:1234")


# ---------------------------------------------------------------------------------------------
# detect_role


@pytest.mark.parametrize(
    ("text", "role"),
    [
        ("", "master"),
        ("listen: 'tcp:1'\n", "master"),
        ("streams: [a]\nlimits: {max_line_bytes: 2048}\nkeepalive:\n", "master"),
        ("- a\n", "master"),
        ("name: w\n", "worker"),
        ("master: 'tcp:host=h:port=1'\n", "worker"),
        ("handler: 'a:b'\n", "worker"),
        ("position_file: p\n", "worker"),
        ("handler_retry: {max_delay: 1}\n", "worker"),
        ("reconnect:\n", "worker"),
        ("streams: [a]\nserver_name: m\nname: w\n", "worker"),
    ],
)
def test_detect_role(text: str, role: str) -> None:
    """A file with any worker-only top-level key is a worker file, anything else a master's."""
    assert detect_role_from_text(text) == role


def test_detect_role_reads_files(tmp_path: Path) -> None:
    """detect_role reads the file, and reports unreadable or invalid files as ConfigError."""
    path = tmp_path / "w.yaml"
    path.write_text("name: w\n", encoding="utf-8")
    assert detect_role(str(path)) == "worker"
    path.write_text("a: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid YAML"):
        detect_role(str(path))
    with pytest.raises(ConfigError, match="cannot read"):
        detect_role(str(tmp_path / "missing.yaml"))


# ---------------------------------------------------------------------------------------------
# The documentation's examples


def _doc_example(name: str) -> str:
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(
        rf"\.\. code-block:: yaml\n   :name: {name}\n\n((?:   .*\n|\n)+)", text
    )
    assert match is not None, f"no example {name} in {DOCS}"
    return textwrap.dedent(match.group(1))


def test_documented_master_example_is_valid() -> None:
    """The complete master example in docs/configuration.rst loads, as a master file."""
    text = _doc_example("master-example")
    assert detect_role_from_text(text) == "master"
    config = master_config_from_text(text, "configuration.rst")
    assert config.store == StoreConfig("sqlite", "./replication-data/streams.sqlite")
    assert config.retention_for("presence") == RetentionConfig(10000, 7 * 86400.0)
    assert config.limits == LimitsConfig()
    assert config.keepalive == KeepaliveConfig()


def test_documented_worker_example_is_valid() -> None:
    """The complete worker example in docs/configuration.rst loads, as a worker file."""
    text = _doc_example("worker-example")
    assert detect_role_from_text(text) == "worker"
    config = worker_config_from_text(text, "configuration.rst")
    assert config.streams == (WorkerStream("events"), WorkerStream("presence", "latest"))
    assert config.reconnect == ReconnectConfig()
    assert config.keepalive == KeepaliveConfig()
