"""The master's and the worker's configuration keys, described once: :data:`MASTER` and
:data:`WORKER`.

Each :class:`~replication.config.schema.Key` gives a key's YAML path, kind and bounds, its
reference text (docs/configuration.rst is generated from it, see
:mod:`replication.config.docs`) and its command line flag, if it has one. Defaults are the
result dataclasses' (:mod:`replication.config.model`). Keys are checked in this order, and a
rule may only refer to an earlier key.
"""

from __future__ import annotations

from typing import Final

from replication.config.kinds import (
    AtLeast,
    Boolean,
    Choice,
    CredentialName,
    Credentials,
    Directories,
    Duration,
    Endpoint,
    Endpoints,
    FewerThanEntries,
    GreaterThan,
    HandlerName,
    Integer,
    NotWith,
    Nullable,
    OneSecret,
    OnlyWith,
    OpenRoutes,
    Options,
    PeerEndpoints,
    PeerName,
    PerStream,
    RequiredWith,
    SchemaName,
    Size,
    StreamNames,
    Text,
    WorkerStreams,
)
from replication.config.model import MasterConfig, MiB, WorkerConfig
from replication.config.schema import Flag, Key, Schema
from replication.logformat import LOG_FORMATS

#: ``limits.max_line_bytes`` bounds, for master and worker alike.
MIN_LINE_BYTES: Final = 1024
MAX_LINE_BYTES: Final = 64 * MiB
MAX_CONNECTIONS: Final = 1_000_000
MAX_CATCHUP_PAGE_ROWS: Final = 100_000
#: A worker's ``limits.max_token_rows`` upper bound.
MAX_TOKEN_ROWS: Final = 1 << 40
#: ``limits.max_streams`` upper bound.
MAX_STREAMS: Final = 1_000_000
#: ``limits.max_json_values`` upper bound.
MAX_JSON_VALUES: Final = 100_000_000
#: ``limits.max_rows_per_publish`` upper bound.
MAX_ROWS_PER_PUBLISH: Final = 10_000_000
#: ``limits.max_publishes_in_flight`` upper bound.
MAX_PUBLISHES_IN_FLIGHT: Final = 1_000_000
#: ``limits.publish_keys`` upper bound.
MAX_PUBLISH_KEYS: Final = 10_000_000
#: ``http.max_connections`` upper bound.
MAX_HTTP_CONNECTIONS: Final = 100_000
#: ``metrics.max_peer_labels`` upper bound.
MAX_PEER_LABELS: Final = 10_000
#: ``cluster.ack_peers`` upper bound.
MAX_ACK_PEERS: Final = 63
#: ``cluster.ingest_batch_rows`` upper bound.
MAX_INGEST_BATCH_ROWS: Final = 1_000_000

STORE_TYPES: Final = ("memory", "sqlite", "postgres")
WORKER_STREAM_STARTS: Final = ("earliest", "latest")

_LINE_BYTES: Final = Size(MIN_LINE_BYTES, MAX_LINE_BYTES)

_COMMANDS_DOC: Final = """\
A callable that registers the application's own commands and their handlers, written
``package.module:callable`` (as ``handler``); ``null`` (the default) registers none, and a
command that is not built in is then answered ``ERROR unknown command '<NAME>'``. It is
called once at startup as ``register(registry, commands)``: ``registry.register(cls,
sent_by=...)`` adds a command, and ``commands.on_master(cls, handler)`` /
``commands.on_worker(cls, handler)`` attach ``handler(peer, command)`` to it on master or
worker connections. Give master and worker the same module. See `protocol.rst
<protocol.rst>`_, "Application commands". Only the syntax is checked when the file is read;
a module that cannot be imported, or a register callable that fails, stops the process when
it starts, with a message naming it."""

_COMMANDS_PATH_DOC: Final = """\
Directories searched first, in this order, for the ``commands`` module, as ``handler_path``
is for a worker's handler: a relative directory is taken from the current directory, and
the default ``[.]`` is the directory the process was started in."""


def _commands() -> tuple[Key, ...]:
    """The application commands' keys, the same for master and worker."""
    return (
        Key("commands", Nullable(HandlerName()), _COMMANDS_DOC),
        Key("commands_path", Directories(), _COMMANDS_PATH_DOC),
    )


def _log_format() -> Key:
    """The ``log.format`` key, the same for master and worker."""
    return Key(
        "log.format",
        Choice(LOG_FORMATS, either=True),
        "How log lines are written to standard error: ``text`` (``<time> <LEVEL> <logger>: "
        "<message>``) or ``json``, one object per line with ``time`` (ISO 8601, UTC), "
        "``level``, ``logger``, ``message`` and, when there is one, ``exception`` (the "
        "traceback). See `operations.rst <operations.rst>`_.",
        attr="log_format",
        flag=Flag("--log-format", "how log lines are written (default text)"),
    )


_CLUSTER_PEERS_DOC: Final = """\
The replication port of every master of the cluster, this one included, as Twisted client
endpoint strings (as a worker's ``master``); give every master the same list. Each master
dials every entry: the entry that turns out to be itself (its own origin id and fingerprint
come back in ``ORIGIN``) is not dialled again, and every other one becomes a peer link that
relays that master's own rows to this one. Each entry must be listed once. Leave ``cluster``
out for a master on its own: nothing changes then. See `clustering.rst <clustering.rst>`_."""


def _cluster() -> tuple[Key, ...]:
    """The master's ``cluster`` section: its peers and the timers of its peer links."""
    return (
        Key(
            "cluster.peers", PeerEndpoints(), _CLUSTER_PEERS_DOC,
            rule=NotWith(
                "store.type", "postgres",
                "masters on one PostgreSQL database already share every row; a peer cluster "
                "is for masters with stores of their own (docs/clustering.rst)",
            ),
        ),
        Key(
            "cluster.reconnect.initial_delay",
            Duration(),
            "The wait before dialling a peer again after its link was lost or refused (the "
            "same backoff as a worker's ``reconnect``, with jitter).",
        ),
        Key(
            "cluster.reconnect.max_delay",
            Duration(),
            "The longest wait between attempts to reach a peer; the delay doubles from "
            "``initial_delay`` up to this. A peer that announces this master's own origin id "
            "(a conflict) or lost history this master holds is retried at this pace.",
            rule=AtLeast("cluster.reconnect.initial_delay"),
        ),
        Key(
            "cluster.reconnect.healthy_after",
            Duration(),
            "How long a peer link must last to count as healthy; a shorter one counts as a "
            "failed attempt, so the wait keeps growing.",
        ),
        Key(
            "cluster.max_pending_bytes",
            Size(),
            "JSON bytes of rows a peer link holds received but not yet committed to the "
            "store; past this it stops reading from the peer until the store has caught up "
            "(half of it committed), so a fast peer cannot grow this master's memory.",
        ),
        Key(
            "cluster.ingest_batch_rows",
            Integer(1, MAX_INGEST_BATCH_ROWS),
            "Rows one store transaction of a peer link carries at most. Tokens that arrive "
            "while a transaction runs are committed together in the next one (whole tokens: "
            "a token with more rows is committed alone).",
        ),
        Key(
            "cluster.repair_after",
            Duration(),
            "How long the link to a peer may be down before this master asks its other "
            "peers for that peer's rows (repair): rows that reached any live master reach "
            "this one even while their origin is away. Once the link is back and caught up, "
            "the repair stops.",
        ),
        Key(
            "cluster.ack_peers",
            Integer(0, MAX_ACK_PEERS),
            "Peers that must have stored a publish before it is answered (0: answered once "
            "this master has committed it). With 1 or more, an acknowledged publish "
            "survives the loss of this master's disk. A publish not confirmed within "
            "``ack_timeout`` is answered ``504``: it is stored here and still reaches the "
            "peers, but was not confirmed.",
            rule=FewerThanEntries("cluster.peers"),
        ),
        Key(
            "cluster.ack_timeout",
            Duration(),
            "How long a publish waits for ``ack_peers`` confirmations.",
        ),
        *_client_auth("cluster.auth", "each peer link"),
    )


def _http_limits() -> tuple[Key, ...]:
    """The master's HTTP connection limits (``http.*`` besides ``listen``)."""
    return (
        Key(
            "http.max_connections",
            Integer(1, MAX_HTTP_CONNECTIONS),
            "Simultaneous HTTP connections, counted apart from worker connections "
            "(``limits.max_connections``). A connection past this is answered ``503`` with a "
            "JSON error and closed at once, without reading its request.",
            attr="http_max_connections",
        ),
        Key(
            "http.idle_timeout",
            Duration(),
            "An HTTP connection that sends nothing for this long (between requests, or in the "
            "middle of one) is closed.",
            attr="http_idle_timeout",
        ),
        Key(
            "http.request_timeout",
            Duration(),
            "Time from a request's first line to the last byte of its body. A request still "
            "arriving after this (a client dribbling its headers or body) is answered ``408`` "
            "and its connection closed.",
            attr="http_request_timeout",
        ),
    )


def _client_auth(section: str, who: str) -> tuple[Key, ...]:
    """The keys of the credential ``who`` dials with, under ``section``."""
    return (
        Key(
            f"{section}.credential",
            Nullable(CredentialName()),
            f"The name of the credential {who} authenticates with (one of the master's "
            "``auth.credentials``); ``null`` (the default): none. A master with credentials "
            "refuses a connection without one, and a connection with one refuses a master "
            "that does not ask for it or cannot prove the same secret back (see "
            "`security.rst <security.rst>`_).",
        ),
        Key(
            f"{section}.secret_file",
            Nullable(Text()),
            "A file holding the credential's secret (its first line; surrounding white "
            "space is ignored). ``check-config`` warns when others may read it.",
        ),
        Key(
            f"{section}.secret_env",
            Nullable(Text()),
            "An environment variable holding the credential's secret (instead of "
            "``secret_file``).",
            rule=OneSecret(section),
        ),
    )


_CREDENTIALS_DOC: Final = """\
Named credentials; with at least one, every connection on the replication port
authenticates (protocol version 2 only: version 1 and legacy workers are refused) and may do
only what its credential allows. Each credential has ``secret_file`` (a file holding the
secret) or ``secret_env`` (an environment variable holding it), never the secret itself, and
its permissions: ``read`` (streams it may follow, names or ``*``), ``publish`` (streams it
may publish to), ``peer`` (whether it may join as a cluster peer, default ``false``) and
``status`` (whether it may read ``/status``, default ``false``)::

    auth:
      credentials:
        worker-1: {secret_file: /etc/replication/worker-1.secret, read: [events]}
        publisher: {secret_env: REPLICATION_PUBLISHER_SECRET, publish: ["*"]}
        peers: {secret_file: /etc/replication/peers.secret, read: ["*"], peer: true}

Leave ``auth`` out and nothing is authenticated. See `security.rst <security.rst>`_."""


def _keepalive() -> tuple[Key, ...]:
    """The keepalive keys, the same for master and worker."""
    return (
        Key(
            "keepalive.ping_interval",
            Duration(),
            "Send ``PING`` after this long without sending anything.",
        ),
        Key(
            "keepalive.ping_timeout",
            Duration(),
            "Cut off a peer that has pinged and then stays silent this long; also the time a "
            "new connection has to send its first line (``SERVER`` or ``NAME``) and to "
            "answer the protocol version announcement (``VERSION``).",
            rule=GreaterThan("keepalive.ping_interval"),
        ),
        Key(
            "keepalive.close_timeout",
            Duration(),
            "A graceful close (after ``ERROR`` or at shutdown) that takes longer than this is "
            "aborted.",
        ),
    )


MASTER: Final = Schema(
    MasterConfig,
    (
        Key(
            "server_name",
            PeerName("server_name"),
            "The name the master sends in ``SERVER``; shown in worker logs and metrics. A "
            "server or worker name (see above).",
            flag=Flag("--server-name", "the name sent in SERVER", metavar="NAME"),
        ),
        Key(
            "listen",
            Endpoint(server=True),
            "Where workers connect.",
            flag=Flag(
                "--listen",
                "Twisted endpoint for workers, e.g. tcp:9092:interface=127.0.0.1",
                metavar="ENDPOINT",
            ),
        ),
        Key(
            "http.listen",
            Nullable(Endpoint(server=True)),
            "The HTTP admin server (publish, status, health, metrics). ``null`` disables it; "
            "``http:`` with no value keeps the default.",
            attr="http_listen",
            flag=Flag(
                "--http-listen",
                "Twisted endpoint for HTTP, or 'none'",
                metavar="ENDPOINT",
                null_word="none",
            ),
        ),
        *_http_limits(),
        Key(
            "data_dir",
            Text(),
            "Directory for the master's files, including the SQLite database when "
            "``store.path`` is not set. A relative directory is taken from the master's "
            "current directory; the master logs the database's absolute path at startup.",
            flag=Flag("--data-dir", "directory for the master's data", metavar="DIR"),
        ),
        Key(
            "streams",
            StreamNames(),
            "Streams that exist from the start. Each name must be valid and appear once.",
            flag=Flag(
                "--stream",
                "a stream to create at start (repeatable)",
                metavar="NAME",
                repeat="extend",
            ),
        ),
        Key(
            "strict_streams",
            Boolean(),
            "When ``true``, only the streams listed in ``streams`` can be published to or "
            "followed; other names are refused. When ``false``, a stream is created by its "
            "first publish.",
        ),
        Key(
            "store.type",
            Choice(STORE_TYPES),
            "``sqlite`` keeps streams in a database file (WAL mode, every publish committed "
            "with ``synchronous=FULL`` before it is acknowledged), so they survive crashes and "
            "restarts; ``memory`` keeps them in the process (fast, lost on restart: workers "
            "that come back are sent ``RESET``); ``postgres`` keeps them in a PostgreSQL "
            "database that any number of masters share (see `postgres.rst <postgres.rst>`_).",
            flag=Flag("--store", "where streams are kept"),
        ),
        Key(
            "store.path",
            Nullable(Text()),
            "The SQLite database file; ``null`` means ``<data_dir>/streams.sqlite3``. The "
            "master creates the directory. A file from a newer version, a file that is not a "
            "database, a corrupt one or another application's database stops the master with "
            "a message saying which; the file is never modified or deleted.",
            rule=OnlyWith("store.type", "sqlite"),
        ),
        Key(
            "store.dsn",
            Nullable(Text()),
            "The PostgreSQL connection string, libpq style (``host=db1 dbname=app "
            "user=replication``) or a URI (``postgresql://replication@db1/app``). Keep the "
            "password out of it: libpq reads ``PGPASSWORD`` and ``~/.pgpass``. "
            "``connect_timeout`` (5 s) and TCP keepalives are added unless it sets them. A "
            "server that cannot be reached, a failed login, a missing permission or a schema "
            "that is not a replication store stops the master with a message saying which.",
            rule=RequiredWith("store.type", "postgres"),
        ),
        Key(
            "store.schema",
            Nullable(SchemaName()),
            "The PostgreSQL schema holding the store's tables, created if missing; ``null`` "
            "means ``replication``. Every master naming the same database and schema shares "
            "the same streams and tokens (and is one origin). Lower-case letters, digits and "
            "``_``.",
            rule=OnlyWith("store.type", "postgres"),
        ),
        Key(
            "store.poll_interval",
            Duration(),
            "With ``store.type: postgres``: how often a master reads the heads of every stream "
            "from the database even when no notification came, the backstop that bounds the "
            "latency of a lost ``NOTIFY`` (rows committed by another master reach this one's "
            "workers within it). Ignored by the other stores.",
        ),
        Key(
            "retention.max_rows",
            Nullable(Integer(1)),
            "The newest rows kept per stream; ``null`` keeps every row.",
        ),
        Key(
            "retention.max_age",
            Nullable(Duration()),
            "Rows older than this are dropped; ``null`` keeps rows of any age.",
        ),
        Key(
            "retention.streams",
            PerStream("retention", declared="streams", strict="strict_streams"),
            "Per-stream overrides, each a mapping of ``max_rows`` and ``max_age``. A key left "
            "out of an override is taken from the top-level ``retention``; a key set to "
            "``null`` there means unbounded. A stream with no value (``events:``) uses the "
            "top-level retention. With ``strict_streams: true`` every stream named here must "
            "be in ``streams``.",
            attr="stream_retention",
        ),
        *_keepalive(),
        Key(
            "limits.max_line_bytes",
            _LINE_BYTES,
            "The longest protocol line either side may send. Rows whose line would be longer "
            "are refused at publish time.",
        ),
        Key(
            "limits.max_buffer_bytes",
            Size(),
            "Bytes buffered for one worker connection before the master gives up on it with "
            "``ERROR Failed to keep up`` and closes it; the worker then reconnects and catches "
            "up from the store.",
            rule=AtLeast("limits.max_line_bytes"),
        ),
        Key(
            "limits.max_body_bytes",
            Size(),
            "The largest HTTP publish body.",
            rule=AtLeast("limits.max_line_bytes"),
        ),
        Key(
            "limits.max_connections",
            Integer(1, MAX_CONNECTIONS),
            "Simultaneous worker connections; further connections are refused with an "
            "``ERROR``.",
        ),
        Key(
            "limits.catchup_page_rows",
            Integer(1, MAX_CATCHUP_PAGE_ROWS),
            "Rows read from the store per catch-up step for a worker that is behind.",
        ),
        Key(
            "limits.max_streams",
            Integer(1, MAX_STREAMS),
            "Streams the master holds at most, the configured ones included. A publish that "
            "would create a stream past this is refused (HTTP 403); publishes to existing "
            "streams go on. Following a stream never creates it, so workers cannot grow the "
            "master by subscribing to invented names.",
        ),
        Key(
            "limits.max_rows_per_publish",
            Integer(1, MAX_ROWS_PER_PUBLISH),
            "Rows one HTTP publish may carry, all its tokens together. A body with more is "
            "refused (413) after it is decoded and before any row is encoded or stored, which "
            "bounds the work and memory of one request; see `operations.rst "
            "<operations.rst>`_.",
        ),
        Key(
            "limits.max_json_values",
            Integer(1, MAX_JSON_VALUES),
            "JSON values (rows, and the values inside them) one HTTP publish body may hold. "
            "Decoding costs memory per value (tens of bytes each), far more than the body's "
            "bytes for tiny values, so a body that holds more is refused (413) before it is "
            "decoded. The count is taken only for bodies over twice this many bytes.",
        ),
        Key(
            "limits.max_publishes_in_flight",
            Integer(1, MAX_PUBLISHES_IN_FLIGHT),
            "Publishes one publisher connection (protocol version 2, ``PUBLISHER``) may have "
            "sent and not yet been answered. Past it the master stops reading that connection "
            "until answers go out: back-pressure, not an error. See `protocol.rst "
            "<protocol.rst>`_, \"Publishing\".",
        ),
        Key(
            "limits.publish_keys",
            Integer(0, MAX_PUBLISH_KEYS),
            "Idempotency keys (``PUBLISH ... key=<key>``) the master remembers, the newest "
            "ones; a retried publish whose key is remembered is answered with its original "
            "tokens instead of being stored again. Kept in memory and, with the SQLite or "
            "PostgreSQL store, stored with the rows and loaded again at start (the memory "
            "store loses them at a restart); 0 turns keys off.",
        ),
        Key(
            "limits.publish_key_seconds",
            Duration(),
            "How long an idempotency key is remembered after its publish arrived (and at "
            "most ``limits.publish_keys`` of them).",
        ),
        Key(
            "metrics.max_peer_labels",
            Integer(0, MAX_PEER_LABELS),
            "How many distinct worker names the master uses as the ``peer`` label of its "
            "metrics and remembers in ``GET /status`` (connects, last disconnect). The first "
            "names seen keep their own label for the life of the process; later names are "
            "counted as ``other``, so a fleet that renames workers (or a client that invents "
            "names) cannot grow the metrics without bound. The master serves ``/metrics`` on "
            "its HTTP listener (``http.listen``); see `operations.rst <operations.rst>`_.",
            attr="metrics_max_peer_labels",
        ),
        _log_format(),
        *_commands(),
        Key("auth.credentials", Credentials(), _CREDENTIALS_DOC),
        Key(
            "auth.open_routes",
            OpenRoutes(),
            "HTTP routes anyone may ``GET`` without a token when ``auth.credentials`` is "
            "set: ``/health`` and ``/metrics`` may be listed (``[]``: every route needs a "
            "bearer token). Every other route needs a credential's token; see "
            "`security.rst <security.rst>`_.",
        ),
        Key(
            "auth.open",
            Boolean(),
            "Protected mode: a master whose ``listen`` or ``http.listen`` reaches beyond "
            "the loopback interface (no ``interface=``, or a non-loopback one) refuses to "
            "start without ``auth.credentials``. ``true`` says explicitly that it should run "
            "open (anyone who can reach it may read and publish every stream). See "
            "`security.rst <security.rst>`_.",
        ),
        *_cluster(),
    ),
)

_WORKER_STREAMS_DOC: Final = """\
Either a list of stream names, each followed from ``earliest``::

    streams: [events, presence]

or a mapping of stream name to options, where a stream with no value takes the defaults::

    streams:
      events:
      presence: {from: latest}

``streams.<name>.from``
    ``earliest`` (default) or ``latest``: where to begin when the worker has no recorded
    position for the stream. ``earliest`` replays all retained history; ``latest`` starts
    with the next row published. Once a position is recorded, the worker always resumes
    from it.

Each stream may appear once. ``--stream`` replaces the file's list; ``--start`` gives the
``from`` of the streams it names."""

_POSITION_FILE_DOC: Final = """\
The file where the worker records the last token it handled for each stream. ``null``
means ``<name>.positions`` in the current directory; the worker logs the file's absolute
path at startup. It is a journal of
``<stream> <token>`` lines after a header line, in a file preallocated to 4 MiB (the unused
end is NUL bytes) and mapped into the worker's memory: recording a handled token copies one
line into the mapping, without a system call.

* If the worker process dies at any moment (even ``kill -9``), every position recorded
  before is kept (the mapped pages belong to the operating system, not the process), so
  at most the token being handled is handled again.
* The file is flushed to the disk every second (and when the worker stops), so a power
  cut or an operating system crash loses at most about the last second of positions;
  those tokens are handled again. A line cut short, or anything after a run of NUL
  bytes (pages not written back in time), is ignored when the file is read.
* When the file is full it is rewritten with one line per stream, through a temporary
  file (``<position_file>.tmp``), fsync and rename, so the file on disk is always
  complete; it is also rewritten this way each time the worker starts. Its size doubles
  if the streams' positions alone would fill more than half of it.
* A file that is not a position file, or has a damaged line, stops the worker with a
  message naming it; it is never overwritten or deleted. Files of the older format
  (``# replication positions v1``) are read and converted. A file only becomes format v3
  (positions per stream *and origin*) once a position of another origin is recorded; see
  "The position file's formats" below.
* One worker per file: while it runs, the worker holds a lock on
  ``<position_file>.lock`` (which holds its process id). A second worker given the same
  file stops at once with a message naming the first one's process id. The lock goes
  with the process, so a worker restarted after a crash is not held up.

The space is reserved when the file is created, so a full disk shows up as an error
naming the file when it is created or rewritten, not as a crash while recording a
position. Do not edit, truncate or replace the file while the worker runs; stop the
worker first."""

_HANDLER_PATH_DOC: Final = """\
Directories searched first, in this order, for the handler's module (and whatever it
imports), as if they were at the front of ``PYTHONPATH``. A relative directory is taken
from the worker's current directory (not from the configuration file's), so the default
``[.]`` makes modules next to where the worker was started importable, as ``python -m``
does. Setting the key replaces the list: keep ``.`` in it to keep the current directory,
or write ``[]`` for none. ``--path DIR`` (repeatable) adds directories after the file's.
Only the syntax is checked when the file is read; a directory that does not exist (or is
not a directory) stops the worker when it starts, with a message naming the key."""

_HANDLER_OPTIONS_DOC: Final = """\
Options for the handler. When set (even to ``{}``), ``handler`` names a *factory*: it is
called once, when the worker starts, with these options as keyword arguments, and what it
returns is the handler (a callable, which may have ``gap`` and ``reset`` methods). A class
is a factory of its instances::

    handler: myapp.replication:SqliteSink
    handler_options:
      path: /var/lib/myapp/rows.sqlite3
      table: events

calls ``SqliteSink(path="/var/lib/myapp/rows.sqlite3", table="events")``. Values are
plain YAML (strings, numbers, booleans, null, lists, mappings), passed as they are. A
factory that does not accept the options (an unexpected or missing keyword), raises, or
returns something that is not callable stops the worker when it starts, with a message
naming the options. When ``null`` (the default), a class is instantiated without
arguments and any other callable is the handler itself."""

_MASTER_DOC: Final = """\
The master to follow: a client endpoint string, or a list of them for the masters of one
cluster (each listed once)::

    master:
      - tcp:host=master-a.internal:port=9092
      - tcp:host=master-b.internal:port=9092

With several, the worker connects to one of them at random; when the connection drops or a
master cannot be reached, it moves to another (in a random order, each tried once per round,
then waits as ``reconnect`` says before the next round). Its positions per origin make the
resume on any master of the cluster correct (protocol version 2, see protocol.rst). An
``ssl:`` endpoint verifies the master's certificate (against ``caCertsDir``, else the
platform's trust store) and host name (``hostname``, else ``host``); see security.rst."""

WORKER: Final = Schema(
    WorkerConfig,
    (
        Key(
            "name",
            PeerName("name"),
            "The name the worker sends in ``NAME``; used in the master's logs and metrics and "
            "in the default position file name. A server or worker name (see above).",
            flag=Flag("--name", "the name sent in NAME", metavar="NAME"),
        ),
        Key(
            "master",
            Endpoints(),
            _MASTER_DOC,
            flag=Flag(
                "--master",
                "Twisted client endpoint of the master, e.g. tcp:host=127.0.0.1:port=9092 "
                "(repeatable: masters of one cluster; replaces the config's)",
                metavar="ENDPOINT",
                repeat="replace",
            ),
        ),
        Key(
            "streams",
            WorkerStreams(Choice(WORKER_STREAM_STARTS, either=True)),
            _WORKER_STREAMS_DOC,
            flag=Flag(
                "--stream",
                "a stream to follow (repeatable; replaces the config's list)",
                metavar="NAME",
                repeat="replace",
                item_option=Flag(
                    "--start",
                    "for --stream: where to begin a stream this worker never saw "
                    "(default earliest)",
                ),
            ),
        ),
        Key(
            "handler",
            HandlerName(),
            "The function called with each token's rows, written ``package.module:callable``: "
            "dotted Python identifiers either side of the colon (the part after ``:`` may be "
            "dotted, e.g. ``myapp.sync:Syncer.handle``). Only the syntax is checked when the "
            "file is read; the module is imported when the worker starts.",
            flag=Flag(
                "--handler",
                "handler called with (stream, token, rows)",
                metavar="MODULE:CALLABLE",
            ),
        ),
        Key(
            "handler_path",
            Directories(),
            _HANDLER_PATH_DOC,
            flag=Flag(
                "--path",
                "a directory searched first for the handler's module (repeatable; added "
                "after the config's handler_path)",
                metavar="DIR",
                repeat="extend",
            ),
        ),
        Key(
            "handler_options",
            Options(),
            _HANDLER_OPTIONS_DOC,
        ),
        Key(
            "position_file",
            Nullable(Text()),
            _POSITION_FILE_DOC,
            flag=Flag("--position-file", "where positions are recorded", metavar="FILE"),
        ),
        Key(
            "handler_retry.max_delay",
            Duration(),
            "A handler that fails is retried with a doubling delay, at most this long; the "
            "stream does not move on until the handler succeeds.",
            attr="handler_retry_max_delay",
        ),
        Key(
            "limits.max_line_bytes",
            _LINE_BYTES,
            "The longest line accepted from the master; it should be at least the master's "
            "``limits.max_line_bytes`` (a row's ``RDATA`` line can be that long). Under "
            "protocol version 3 the worker tells the master (``LINE_LIMIT``), which keeps "
            "its ``ROWS`` lines, many tokens to a line, within it.",
            attr="max_line_bytes",
        ),
        Key(
            "limits.max_token_rows",
            Integer(1, MAX_TOKEN_ROWS),
            "The most rows of one token (its ``RDATA ... batch`` lines and the line that "
            "closes it). A master that sends more is refused with ``ERROR`` and the worker "
            "reconnects. The default is the most rows a publish of the master's default "
            "``limits.max_body_bytes`` (16 MiB) can hold.",
            attr="max_token_rows",
        ),
        Key(
            "limits.max_token_bytes",
            Size(),
            "The most bytes of JSON in the rows of one token, counted as they arrive. A "
            "master that sends more is refused with ``ERROR`` and the worker reconnects; it "
            "should be at least the master's ``limits.max_body_bytes`` (the default is twice "
            "the master's default). Decoded rows take several times their JSON bytes in "
            "memory: lower both limits (and the master's ``limits.max_body_bytes``) for a "
            "worker with little memory.",
            attr="max_token_bytes",
            rule=AtLeast("limits.max_line_bytes"),
        ),
        *_keepalive(),
        Key(
            "reconnect.initial_delay",
            Duration(),
            "The wait before the first reconnection attempt after a connection is lost or "
            "refused.",
        ),
        Key(
            "reconnect.max_delay",
            Duration(),
            "The longest wait between attempts; the delay grows from ``initial_delay`` up to "
            "this.",
            rule=AtLeast("reconnect.initial_delay"),
        ),
        Key(
            "reconnect.healthy_after",
            Duration(),
            "How long a connection must last to count as healthy. After a healthy "
            "connection the next attempt waits ``initial_delay`` again; a shorter one (a "
            "master that refuses the worker right after its catch-up, or during the "
            "handshake) counts as a failed attempt, so the wait keeps growing up to "
            "``max_delay`` and a refusing master is not dialled in a tight loop.",
        ),
        Key(
            "metrics.listen",
            Nullable(Endpoint(server=True)),
            "Where the worker serves its Prometheus metrics at ``/metrics`` (for instance "
            "``tcp:9100:interface=127.0.0.1``); ``null`` serves none. See `operations.rst "
            "<operations.rst>`_ for the metrics.",
            attr="metrics_listen",
            flag=Flag(
                "--metrics-listen",
                "Twisted endpoint serving /metrics, e.g. tcp:9100:interface=127.0.0.1, "
                "or 'none'",
                metavar="ENDPOINT",
                null_word="none",
            ),
        ),
        _log_format(),
        *_commands(),
        *_client_auth("auth", "the worker"),
    ),
)

#: Top-level keys that only a worker file has; ``detect_role`` looks for them.
WORKER_ONLY_KEYS: Final = frozenset(WORKER.children("")) - frozenset(MASTER.children(""))
