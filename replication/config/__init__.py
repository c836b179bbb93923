"""Configuration files for the master and the worker: YAML in, frozen dataclasses out.

Every key is described once, as data, in :mod:`replication.config.sections` (the schema:
path, kind, bounds, reference text, command line flag; defaults are the dataclasses'). From
it come loading and checking (:mod:`replication.config.schema`), the key reference in
docs/configuration.rst (:mod:`replication.config.docs`) and the command line overrides of
``replication master`` and ``replication worker`` (:mod:`replication.config.flags`).

The package:

* :mod:`~replication.config.errors`: :class:`ConfigError`, which names the file, line and
  dotted key path;
* :mod:`~replication.config.model`: the result dataclasses (:class:`MasterConfig`,
  :class:`WorkerConfig`, ...), whose field defaults are the key defaults;
* :mod:`~replication.config.units`: the duration and size syntax;
* :mod:`~replication.config.document`: YAML text to plain values with the line of each key,
  safe loading only;
* :mod:`~replication.config.schema` (the machinery), :mod:`~replication.config.kinds` (value
  kinds and rules), :mod:`~replication.config.sections` (the keys);
* :mod:`~replication.config.docs` and :mod:`~replication.config.flags`: what is derived.

This module is the public face: the loaders, :func:`validate_master` and
:func:`validate_worker` (which re-check a configuration changed with
:func:`dataclasses.replace`, for instance by command line flags) and :func:`detect_role`. No
module of the package imports the Twisted reactor; endpoint strings are checked against a
``MemoryReactor``.
"""

from __future__ import annotations

from typing import Literal

from replication.config.document import Document, compose, read_text
from replication.config.errors import ConfigError
from replication.config.kinds import is_handler_name
from replication.config.model import (
    ClusterConfig,
    KeepaliveConfig,
    LimitsConfig,
    MasterConfig,
    MiB,
    ReconnectConfig,
    RetentionConfig,
    StoreConfig,
    WorkerConfig,
    WorkerStream,
    with_overrides,
)
from replication.config.schema import check, load
from replication.config.sections import (
    MASTER,
    MAX_CATCHUP_PAGE_ROWS,
    MAX_CONNECTIONS,
    MAX_LINE_BYTES,
    MAX_PEER_LABELS,
    MAX_STREAMS,
    MIN_LINE_BYTES,
    STORE_TYPES,
    WORKER,
    WORKER_ONLY_KEYS,
    WORKER_STREAM_STARTS,
)
from replication.config.units import parse_duration, parse_size

__all__ = [
    "MASTER",
    "MAX_CATCHUP_PAGE_ROWS",
    "MAX_STREAMS",
    "MAX_CONNECTIONS",
    "MAX_LINE_BYTES",
    "MAX_PEER_LABELS",
    "MIN_LINE_BYTES",
    "STORE_TYPES",
    "WORKER",
    "WORKER_ONLY_KEYS",
    "WORKER_STREAM_STARTS",
    "ClusterConfig",
    "ConfigError",
    "KeepaliveConfig",
    "LimitsConfig",
    "MasterConfig",
    "MiB",
    "ReconnectConfig",
    "RetentionConfig",
    "StoreConfig",
    "WorkerConfig",
    "WorkerStream",
    "detect_role",
    "detect_role_from_text",
    "is_handler_name",
    "load_master_config",
    "load_worker_config",
    "master_config_from_text",
    "parse_duration",
    "parse_size",
    "validate_master",
    "validate_worker",
    "with_overrides",
    "worker_config_from_text",
]


def master_config_from_text(text: str, source: str = "<string>") -> MasterConfig:
    """Build and check a :class:`MasterConfig` from YAML ``text`` (``source`` names it in
    errors). An empty document gives the defaults. Raises :class:`ConfigError`."""
    document, root = compose(text, source)
    return load(MASTER, document, root)


def worker_config_from_text(text: str, source: str = "<string>") -> WorkerConfig:
    """Build and check a :class:`WorkerConfig` from YAML ``text`` (``source`` names it in
    errors). An empty document gives the defaults. Raises :class:`ConfigError`."""
    document, root = compose(text, source)
    return load(WORKER, document, root)


def load_master_config(path: str | None) -> MasterConfig:
    """Read the master configuration file at ``path``; ``None`` gives the defaults."""
    if path is None:
        return validate_master(MasterConfig())
    return master_config_from_text(read_text(path), path)


def load_worker_config(path: str | None) -> WorkerConfig:
    """Read the worker configuration file at ``path``; ``None`` gives the defaults."""
    if path is None:
        return validate_worker(WorkerConfig())
    return worker_config_from_text(read_text(path), path)


def detect_role_from_text(text: str, source: str = "<string>") -> Literal["master", "worker"]:
    """``"worker"`` if the top-level mapping has a key only a worker has (``name``,
    ``master``, ``handler``, ``handler_path``, ``handler_options``, ``position_file``,
    ``handler_retry``, ``reconnect``), else
    ``"master"`` (also for an empty document or one that is not a mapping, which the master
    loader then reports). Raises :class:`ConfigError` for invalid YAML."""
    _, root = compose(text, source)
    if isinstance(root, dict) and WORKER_ONLY_KEYS.intersection(root):
        return "worker"
    return "master"


def detect_role(path: str) -> Literal["master", "worker"]:
    """:func:`detect_role_from_text` for the file at ``path``."""
    return detect_role_from_text(read_text(path), path)


def validate_master(config: MasterConfig) -> MasterConfig:
    """Check every value of ``config`` and return it, or raise :class:`ConfigError` naming the
    key path (``line`` and ``source`` are ``None``)."""
    check(MASTER, config, Document(None))
    return config


def validate_worker(config: WorkerConfig) -> WorkerConfig:
    """Check every value of ``config`` and return it, or raise :class:`ConfigError` naming the
    key path (``line`` and ``source`` are ``None``)."""
    check(WORKER, config, Document(None))
    return config
