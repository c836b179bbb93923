"""The result types of configuration: frozen dataclasses the master, the worker and the tests use.

Their field defaults are the defaults of every configuration key (the schema in
:mod:`replication.config.sections` reads them from here rather than repeating them).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

MiB: Final = 1024 * 1024


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
    #: Streams the master holds at most (publishing to a new one past it is refused),
    #: ``1 ..= 1_000_000``.
    max_streams: int = 10_000
    #: Rows one HTTP publish may carry, all its tokens together, ``1 ..= 10_000_000``.
    max_rows_per_publish: int = 100_000
    #: JSON values one HTTP publish body may hold (checked before it is decoded).
    max_json_values: int = 1_000_000
    #: Publishes one publisher connection may have read and not yet answered; past it
    #: the master stops reading that connection until answers go out, ``1 ..= 1_000_000``.
    max_publishes_in_flight: int = 1024
    #: Idempotency keys the master remembers (the newest ones), ``0 ..= 10_000_000``
    #: (0: keys are ignored).
    publish_keys: int = 100_000
    #: Seconds an idempotency key is remembered after its publish arrived.
    publish_key_seconds: float = 600.0


@dataclass(frozen=True)
class RetentionConfig:
    """How much history a stream keeps; ``None`` means unbounded."""

    max_rows: int | None = 1_000_000
    #: Seconds.
    max_age: float | None = None


@dataclass(frozen=True)
class StoreConfig:
    """Where the master keeps its streams."""

    #: ``"memory"``, ``"sqlite"`` or ``"postgres"``.
    type: str = "sqlite"
    #: SQLite database file; only with ``type: sqlite``. ``None``: a default inside ``data_dir``.
    path: str | None = None
    #: PostgreSQL connection string; required with ``type: postgres``.
    dsn: str | None = None
    #: PostgreSQL schema; only with ``type: postgres``. ``None``: ``replication``.
    schema: str | None = None
    #: Seconds between two reads of the heads of a shared (PostgreSQL) store, whatever the
    #: notifications say.
    poll_interval: float = 1.0


@dataclass(frozen=True)
class ReconnectConfig:
    """Backoff between connection attempts (a worker's to its master, a master's to each
    cluster peer), in seconds."""

    initial_delay: float = 0.5
    #: >= ``initial_delay``.
    max_delay: float = 30.0
    #: A connection that lasted less than this counts as a failed attempt for the backoff.
    healthy_after: float = 10.0


@dataclass(frozen=True)
class CredentialSpec:
    """One of the master's named credentials (yaml ``auth.credentials.<name>``): where its
    secret is (a file or an environment variable; read at startup) and what it may do.
    Stream lists hold names or ``*`` (every stream)."""

    name: str
    secret_file: str | None = None
    secret_env: str | None = None
    read: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    peer: bool = False
    status: bool = False


@dataclass(frozen=True)
class ClientAuthConfig:
    """The credential one end dials with (a worker's ``auth``, a master's
    ``cluster.auth`` for its peer links); ``credential`` ``None``: none."""

    credential: str | None = None
    secret_file: str | None = None
    secret_env: str | None = None


@dataclass(frozen=True)
class ClusterConfig:
    """A master's cluster peers (yaml ``cluster:``); ``peers`` ``None``: not in a cluster."""

    #: Twisted client endpoint strings of every master's replication port, this one
    #: included, the same list on every master; ``None`` when ``cluster`` is not configured.
    peers: tuple[str, ...] | None = None
    reconnect: ReconnectConfig = ReconnectConfig(initial_delay=1.0)
    #: JSON bytes a peer link holds received and not yet committed before it stops reading.
    max_pending_bytes: int = 16 * MiB
    #: Rows one ingest (one store transaction) of a peer link carries at most.
    ingest_batch_rows: int = 10_000
    #: Seconds a peer's link may be down before its rows are asked of the other peers.
    repair_after: float = 5.0
    #: Peers that must have stored a publish before it is answered (0: none).
    ack_peers: int = 0
    #: Seconds a publish waits for ``ack_peers`` confirmations before a 504.
    ack_timeout: float = 10.0
    auth: ClientAuthConfig = ClientAuthConfig()

    @property
    def enabled(self) -> bool:
        """Whether this master is one of a cluster (``cluster.peers`` is set)."""
        return self.peers is not None


def _no_credentials() -> Mapping[str, CredentialSpec]:
    return types.MappingProxyType({})


@dataclass(frozen=True)
class AuthConfig:
    """A master's ``auth`` section. ``enabled`` false (no ``auth.credentials``): every
    connection may do everything, as before."""

    credentials: Mapping[str, CredentialSpec] = field(default_factory=_no_credentials, hash=False)
    open_routes: tuple[str, ...] = ("/health",)
    open: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.credentials)


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
    #: yaml ``http: {max_connections: ...}``: simultaneous HTTP connections; more are
    #: answered 503 and closed.
    http_max_connections: int = 256
    #: yaml ``http: {idle_timeout: ...}``: seconds an HTTP connection may send nothing.
    http_idle_timeout: float = 60.0
    #: yaml ``http: {request_timeout: ...}``: seconds from a request's first line to its
    #: last body byte.
    http_request_timeout: float = 120.0
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
    #: yaml ``log: {format: ...}``: ``"text"`` or ``"json"`` (one object per line).
    log_format: str = "text"
    #: ``package.module:callable`` registering application commands; ``None``: none.
    commands: str | None = None
    #: Directories put first on the import path before the ``commands`` module is imported.
    commands_path: tuple[str, ...] = (".",)
    #: yaml ``cluster:``: the peers of a cluster of masters; ``cluster.enabled`` is false
    #: when the section is absent.
    cluster: ClusterConfig = ClusterConfig()
    auth: AuthConfig = AuthConfig()

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
class WorkerConfig:
    """Everything ``replication worker`` needs."""

    name: str = "worker"
    #: Twisted client endpoint string of the master, or a tuple of them (masters of one
    #: cluster: the worker follows one at a time and moves to another when it fails; see
    #: :attr:`masters`).
    master: str | tuple[str, ...] = "tcp:host=127.0.0.1:port=9092"
    streams: tuple[WorkerStream, ...] = ()
    #: ``package.module:callable``; only its syntax is checked here, it is not imported.
    handler: str = "replication.handlers:print_json"
    #: yaml ``handler_path``: directories put first on the import path before the handler's
    #: module is imported; a relative one is taken from the worker's current directory, so
    #: the default ``(".",)`` imports modules from the directory the worker was started in.
    handler_path: tuple[str, ...] = (".",)
    #: yaml ``handler_options``: when not ``None``, ``handler`` names a factory called with
    #: these keyword arguments, which returns the handler. Left out of ``hash()``.
    handler_options: Mapping[str, Any] | None = field(default=None, hash=False)
    #: ``None``: ``<name>.positions`` in the current directory.
    position_file: str | None = None
    #: yaml ``handler_retry: {max_delay: ...}``: longest wait between retries of a handler.
    handler_retry_max_delay: float = 60.0
    #: yaml ``limits: {max_line_bytes: ...}``.
    max_line_bytes: int = 65536
    #: yaml ``limits: {max_token_rows: ...}``: rows of one token (the most a 16 MiB publish
    #: body can hold).
    max_token_rows: int = 8 * MiB
    #: yaml ``limits: {max_token_bytes: ...}``: JSON bytes of one token's rows;
    #: >= ``max_line_bytes``.
    max_token_bytes: int = 32 * MiB
    keepalive: KeepaliveConfig = KeepaliveConfig()
    reconnect: ReconnectConfig = ReconnectConfig()
    #: yaml ``metrics: {listen: ...}``: Twisted server endpoint serving ``/metrics``;
    #: ``None`` serves none.
    metrics_listen: str | None = None
    #: yaml ``log: {format: ...}``: ``"text"`` or ``"json"`` (one object per line).
    log_format: str = "text"
    #: ``package.module:callable`` registering application commands; ``None``: none.
    commands: str | None = None
    #: Directories put first on the import path before the ``commands`` module is imported.
    commands_path: tuple[str, ...] = (".",)
    #: yaml ``auth:``: the credential this worker authenticates with.
    auth: ClientAuthConfig = ClientAuthConfig()

    @property
    def masters(self) -> tuple[str, ...]:
        """``master`` as a tuple: the endpoint strings of every master to follow."""
        return (self.master,) if isinstance(self.master, str) else tuple(self.master)

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

