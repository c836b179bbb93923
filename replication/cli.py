"""The ``replication`` command line tool: ``master``, ``worker``, ``publish``, ``status``,
``check-config``, and the tools ``streams``, ``tail`` and ``positions``.

This is the only module that touches the global reactor: it reads the configuration, applies
command line overrides, builds the store, the metrics registry (one ``CollectorRegistry`` per
process, passed down, with the ``process_*`` metrics), the master or worker and their
listeners, and runs the reactor until SIGINT or SIGTERM. It sets up logging to standard
error (``text`` or ``json``: ``log.format``, ``--log-format``; see
:mod:`replication.logformat`) and logs where the master's database or the worker's
position file is, as absolute paths. ``status`` reads a master's ``/status`` and prints it as
tables.
"""

from __future__ import annotations

import argparse
import errno
import gc
import json
import logging
import os
import random
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from replication import __version__
from replication.config import (
    MASTER,
    WORKER,
    ConfigError,
    MasterConfig,
    WorkerConfig,
    detect_role,
    load_master_config,
    load_worker_config,
    validate_master,
    validate_worker,
)
from replication.config.flags import add_flags, apply_flags
from replication.credentials import (
    TOOL_CREDENTIAL_ENV,
    SecretError,
    client_credential,
    protected_mode_refusal,
    secret_file_warnings,
    tool_credential,
)
from replication.logformat import TEXT_FORMAT, formatter

if TYPE_CHECKING:
    from replication.wire.auth import ClientCredential
    from replication.wire.commands import CommandRegistry

log = logging.getLogger("replication")

DEFAULT_URL = "http://127.0.0.1:9093"


class CommandLineError(Exception):
    """A problem the user can fix; printed as ``replication: error: <message>``, exit 2."""


#: The handler :func:`_setup_logging` gave the root logger (``None`` when the root logger
#: already had handlers, e.g. inside a test runner); :func:`_use_log_format` formats it.
_stderr_handler: logging.Handler | None = None


def _setup_logging(verbose: bool) -> None:
    global _stderr_handler
    before = list(logging.root.handlers)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=TEXT_FORMAT,
        stream=sys.stderr,
    )
    added = [h for h in logging.root.handlers if h not in before]
    _stderr_handler = added[0] if added else None


def _use_log_format(log_format: str) -> None:
    """Write the process's log lines as ``log_format`` (``log.format``, ``--log-format``):
    sets the formatter of the handler :func:`_setup_logging` installed, if it installed one."""
    if _stderr_handler is not None:
        _stderr_handler.setFormatter(formatter(log_format))


def _where(path: str, *notes: str) -> str:
    """``path`` made absolute for a startup line, followed by what it was given as when
    that was relative and by ``notes``: ``/srv/w.positions (w.positions in the current
    directory; the default)``."""
    said = ([] if os.path.isabs(path) else [f"{path} in the current directory"]) + list(notes)
    absolute = os.path.abspath(path)
    return f"{absolute} ({'; '.join(said)})" if said else absolute


def _log_master_paths(config: MasterConfig) -> None:
    """Say where the master keeps its streams (a startup line)."""
    if config.store.type == "postgres":
        return  # the store names its server, database and schema when it opens
    if config.store.type != "sqlite":
        log.info("store: %s (nothing is written to disk)", config.store.type)
        return
    from replication.master.app import database_path

    origin = "store.path" if config.store.path is not None else (
        f"data_dir {os.path.abspath(config.data_dir)}"
    )
    log.info("store: sqlite database %s", _where(database_path(config), origin))


#: The ``--reactor`` choices of ``master`` and ``worker``; the first is the default.
REACTORS = ("asyncio", "default")


def install_reactor(name: str) -> None:
    """Make ``name`` (one of :data:`REACTORS`) Twisted's global reactor; call it before
    anything imports ``twisted.internet.reactor``.

    ``asyncio`` runs Twisted on an asyncio event loop, so that coroutine handlers can await
    asyncio libraries as well as Deferreds; ``default`` leaves Twisted's platform default
    (epoll on Linux). A reactor installed already (an embedding program's) is kept when it
    is the asked kind; otherwise asking for ``asyncio`` is a CommandLineError.
    """
    if name != "asyncio":
        return
    from twisted.internet import asyncioreactor
    from twisted.internet.error import ReactorAlreadyInstalledError

    try:
        asyncioreactor.install()  # type: ignore[no-untyped-call]
    except ReactorAlreadyInstalledError:
        from twisted.internet import reactor

        if not isinstance(reactor, asyncioreactor.AsyncioSelectorReactor):
            raise CommandLineError(
                "--reactor asyncio: another reactor is installed already "
                f"({type(reactor).__name__})"
            ) from None


def _add_reactor_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reactor", choices=REACTORS, default=REACTORS[0],
        help="the Twisted reactor to run on: asyncio (the default; coroutine handlers can "
        "await asyncio libraries and Deferreds) or default (Twisted's platform default)",
    )


#: The ``--reactor`` choices of ``master``; the first is the default.
MASTER_REACTORS = ("auto", *REACTORS)


def _add_master_reactor_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reactor", choices=MASTER_REACTORS, default=MASTER_REACTORS[0],
        help="the Twisted reactor to run on: auto (the default: asyncio when the "
        "configuration loads application commands, whose handlers may await asyncio "
        "libraries; else Twisted's platform default, which costs less per publish and per "
        "row), asyncio, or default",
    )


def master_reactor(flag: str, commands: str | None) -> str:
    """The reactor a master runs on (one of :data:`REACTORS`) for ``--reactor flag`` and
    the configuration's ``commands``: ``auto`` is ``asyncio`` when application commands
    are loaded (their coroutine handlers may await asyncio libraries), ``default``
    otherwise (a master runs no other code of the user's)."""
    if flag != "auto":
        return flag
    return "asyncio" if commands is not None else "default"


def _run_reactor(reactor: Any, start: Callable[[], Any], stop: Callable[[], Any]) -> int:
    """Run ``start`` under the reactor; a failure to start stops it with exit status 1."""
    status = {"code": 0}

    def started_failed(failure: Any) -> None:
        print(f"replication: error: {failure.getErrorMessage()}", file=sys.stderr)
        status["code"] = 1
        reactor.stop()

    def go() -> None:
        from twisted.internet.defer import maybeDeferred

        maybeDeferred(start).addErrback(started_failed)

    reactor.callWhenRunning(go)
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()
    return status["code"]


#: The youngest generation's threshold of the garbage collector in ``master`` and
#: ``worker`` processes (CPython's default is 700 allocations).
GC_YOUNG_THRESHOLD = 10_000


def tune_garbage_collector() -> None:
    """Make the garbage collector cheap for a long-running replication process, once its
    start-up is done: the objects alive now (modules, classes, functions, configuration)
    go to the permanent generation (:func:`gc.freeze`), so full collections stop walking
    them, and the youngest generation is collected every :data:`GC_YOUNG_THRESHOLD`
    allocations instead of every 700. Nearly all of the hot paths' garbage is freed by
    reference counting; full collections walking the master's large containers (the key
    window, the memory store) were half of its time per pipelined publish. The ``master``
    and ``worker`` commands call it; an application embedding a master or a worker may
    call it after its own start-up."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _run_service(reactor: Any, service: Any) -> int:
    """Start ``service`` (a tree with ``when_listening()``) under the reactor and stop it,
    awaiting every child, when the reactor shuts down; a failure to start is exit status 1.
    The garbage collector is tuned (:func:`tune_garbage_collector`) before the reactor
    runs."""

    def start() -> Any:
        service.startService()
        return service.when_listening()

    tune_garbage_collector()
    return _run_reactor(reactor, start, service.stopService)


def load_command_registry(name: str | None, path: Sequence[str]) -> CommandRegistry:
    """The commands this process understands: the built-in ones, and those the ``commands``
    callable ``name`` registers (imported with ``path`` first on the import path).

    :raises CommandLineError: the module cannot be loaded or its callable failed.
    """
    from replication.wire import commands as wire
    from replication.wire.application import CommandsLoadError, load_commands
    from replication.worker.handlers import HandlerLoadError, add_import_path

    registry = wire.default_registry()
    if name is None:
        return registry
    try:
        add_import_path(path, "commands_path")
        application = load_commands(name, registry)
    except (HandlerLoadError, CommandsLoadError) as e:
        raise CommandLineError(str(e)) from None
    added = sorted(registry.names() - wire.BUILTIN_COMMANDS)
    log.info(
        "application commands from %s: %s (handled on master connections: %s; on worker "
        "connections: %s)", name, ", ".join(added) or "none",
        ", ".join(sorted(application.handled(wire.MASTER))) or "none",
        ", ".join(sorted(application.handled(wire.WORKER))) or "none",
    )
    return registry


def cmd_master(args: argparse.Namespace) -> int:
    config = validate_master(apply_flags(MASTER, load_master_config(args.config), args))
    refusal = protected_mode_refusal(config)
    if refusal is not None:
        raise CommandLineError(refusal)
    _use_log_format(config.log_format)
    reactor_name = master_reactor(args.reactor, config.commands)
    install_reactor(reactor_name)  # before the application's modules can import a reactor
    commands = load_command_registry(config.commands, config.commands_path)

    from twisted.internet import reactor

    from replication.master.app import ServiceError, master_service
    from replication.metrics import process_registry

    _log_master_paths(config)
    log.info("reactor: %s%s", reactor_name, " (auto)" if args.reactor == "auto" else "")
    try:
        service = master_service(
            config, reactor, registry=process_registry(), commands=commands,
            accept_history_loss=args.accept_store_history_loss,
        )
    except ServiceError as e:
        raise CommandLineError(str(e)) from None
    return _run_service(reactor, service)


def cmd_worker(args: argparse.Namespace) -> int:
    config = validate_worker(apply_flags(WORKER, load_worker_config(args.config), args))
    _use_log_format(config.log_format)
    if not config.streams:
        raise CommandLineError(
            "no streams to follow: give --stream NAME or `streams:` in the config"
        )
    install_reactor(args.reactor)  # before the application's modules can import a reactor
    commands = load_command_registry(config.commands, config.commands_path)

    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    from replication.metrics import WorkerMetrics, process_registry
    from replication.tls import client_endpoint
    from replication.worker import Worker, worker_service
    from replication.worker.handlers import HandlerLoadError, handler_from_config
    from replication.worker.positions import PositionFile, PositionFileError

    try:
        credential = client_credential(config.auth)
        handler = handler_from_config(config)
        positions = PositionFile(config.resolved_position_file())
    except (HandlerLoadError, PositionFileError, SecretError) as e:
        raise CommandLineError(str(e)) from None
    worker = Worker(
        config, handler, positions, reactor, registry=commands,
        metrics=WorkerMetrics(process_registry()), credential=credential,
    )
    masters = config.masters
    service = worker_service(
        worker,
        client_endpoint(reactor, masters[0]) if len(masters) == 1
        else {master: client_endpoint(reactor, master) for master in masters},
        reactor,
        metrics_endpoint=(
            None if config.metrics_listen is None
            else serverFromString(reactor, config.metrics_listen)  # type: ignore[no-untyped-call]
        ),
    )
    notes = () if config.position_file is not None else (
        "the default <name>.positions; set position_file or --position-file to move it",
    )
    log.info(
        "worker %s following %s from %s; positions in %s",
        config.name, ", ".join(s.name for s in config.streams), " or ".join(config.masters),
        _where(config.resolved_position_file(), *notes),
    )

    return _run_service(reactor, service)


def cmd_publish(args: argparse.Namespace) -> int:
    rows = []
    for i, text in enumerate(args.rows):
        try:
            rows.append(json.loads(text))
        except ValueError as e:
            raise CommandLineError(f"row {i + 1} is not valid JSON ({e}): {text!r}") from None
    if args.master:
        if args.url:
            raise CommandLineError("give --master (the replication port) or --url (HTTP), "
                                   "not both")
        return _publish_to_masters(args, rows)
    body = json.dumps({"rows": rows}).encode()
    urls = list(dict.fromkeys(args.url or [DEFAULT_URL]))
    random.shuffle(urls)  # spread publishers over the masters, as Aphlict's did
    unreachable = []
    for base in urls:
        url = f"{base.rstrip('/')}/streams/{urllib.parse.quote(args.stream, safe='')}"
        request = urllib.request.Request(
            url, data=body, method="POST",
            headers={"content-type": "application/json", **_auth_headers(args)},
        )
        try:
            with urllib.request.urlopen(request, timeout=args.timeout) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as e:
            message = _refusal(e)
            if e.code == 503 and len(urls) > 1:
                # Refused before anything was stored: another master may take it.
                print(f"replication: {base} refused the publish (503): {message}; "
                      "trying another master", file=sys.stderr)
                unreachable.append(f"{base} (503: {message})")
                continue
            print(f"replication: publish refused ({e.code}): {message}", file=sys.stderr)
            return 1
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            if not _never_sent(reason):
                # The request may have reached the master and been stored: publishing it
                # to another master could store it twice.
                print(f"replication: no answer from the master at {base}: {reason}; the rows "
                      "may or may not have been published (not retried elsewhere)",
                      file=sys.stderr)
                return 1
            if len(urls) > 1:
                print(f"replication: cannot reach the master at {base}: {reason}; "
                      "trying another master", file=sys.stderr)
            unreachable.append(f"{base} ({reason})")
            continue
        if args.json:
            print(json.dumps(answer, separators=(",", ":")))
        else:
            print(answer["token"])
        return 0
    if len(urls) == 1:
        print(f"replication: cannot reach the master at {unreachable[0]}", file=sys.stderr)
    else:
        print("replication: no master took the publish: " + "; ".join(unreachable),
              file=sys.stderr)
    return 1


def _publish_to_masters(args: argparse.Namespace, rows: list[Any]) -> int:
    """``replication publish --master ...``: one publish over the replication port with the
    blocking client (docs/publishing.rst), which picks a master at random and fails over
    without publishing twice."""
    from replication.client import MasterUnreachable, Publisher, PublishRefused, PublishTimeout

    masters = list(dict.fromkeys(args.master))
    try:
        publisher = Publisher(masters, timeout=args.timeout,
                              connect_timeout=min(args.timeout, 5.0),
                              credential=_credential(args))
    except ValueError as e:
        raise CommandLineError(str(e)) from None
    with publisher:
        try:
            result = publisher.publish(args.stream, rows)
        except PublishRefused as e:
            print(f"replication: publish refused ({e.status}): {e.message}", file=sys.stderr)
            return 1
        except (MasterUnreachable, PublishTimeout) as e:
            maybe = getattr(e, "maybe_committed", isinstance(e, PublishTimeout))
            note = " (the rows may or may not have been published)" if maybe else ""
            print(f"replication: {e}{note}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps({"stream": result.stream, "token": result.token,
                          "origin": result.origin}, separators=(",", ":")))
    else:
        print(result.token)
    return 0


def _never_sent(reason: object) -> bool:
    """Whether a failed HTTP request certainly never reached the master (nothing was
    stored): the connection itself failed. A timeout or a reset after sending may have."""
    if isinstance(reason, (ConnectionRefusedError, socket.gaierror)):
        return True
    if isinstance(reason, OSError) and reason.errno in (
        errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL,
    ):
        return True
    return False


def _credential(args: argparse.Namespace) -> ClientCredential | None:
    """The tool's ``--credential``, else :data:`TOOL_CREDENTIAL_ENV`; ``None``: none."""
    try:
        return tool_credential(getattr(args, "credential", None))
    except SecretError as e:
        raise CommandLineError(f"--credential: {e}") from None


def _auth_headers(args: argparse.Namespace) -> dict[str, str]:
    """The ``Authorization`` header of the tool's credential, if it has one."""
    credential = _credential(args)
    if credential is None:
        return {}
    return {"authorization": f"Bearer {credential.name}:{credential.secret.decode()}"}


def _add_credential_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--credential", metavar="NAME:SECRET",
        help="authenticate with this credential of the master: NAME:SECRET, or NAME:@FILE "
        f"for a secret in a file (default: the environment variable {TOOL_CREDENTIAL_ENV})",
    )


def _fetch_status(
    url: str, timeout: float, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """GET ``<url>/status`` and decode it; unreachable or odd answers are CommandLineError."""
    target = f"{url.rstrip('/')}/status"
    try:
        request = urllib.request.Request(target, headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            document = json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise CommandLineError(
            f"{target} answered {e.code} {e.reason}: {_refusal(e)}"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise CommandLineError(f"cannot reach the master at {url}: {reason}") from None
    except ValueError as e:
        raise CommandLineError(f"{target} did not answer JSON: {e}") from None
    if not isinstance(document, dict) or "streams" not in document:
        raise CommandLineError(f"{target} did not answer a master's status")
    return document


def _duration(seconds: float | None) -> str:
    """``3725.2`` -> ``1h 2m``; ``42.5`` -> ``42s``."""
    if seconds is None:
        return "-"
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n]
    return " ".join(shown[:2]) or "0s"


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        # Rows are at least as wide as the headers (widths index them); zip stops there.
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def format_status(status: dict[str, Any]) -> str:
    """A master's ``/status`` document as readable tables."""
    now = status.get("now") or 0.0
    lines = [
        f"master {status['server_name']} (replication {status.get('version', '?')}), "
        f"up {_duration(status.get('uptime_seconds'))}",
        f"origin {status.get('origin_id') or '?'}, process {status.get('fingerprint') or '?'}",
        "",
    ]
    cluster = status.get("cluster")
    streams = status["streams"]
    by_origin = cluster is not None or any(s.get("local") is False for s in streams)
    if streams and by_origin:
        lines += _table(
            ("STREAM", "ORIGIN", "HEAD", "OLDEST", "RETAINED"),
            [
                (s["name"], _origin(s.get("origin"), s.get("local", True)), str(s["head"]),
                 str(s["oldest"]), str(s["retained_rows"]))
                for s in streams
            ],
        )
    elif streams:
        lines += _table(
            ("STREAM", "HEAD", "OLDEST", "RETAINED"),
            [
                (s["name"], str(s["head"]), str(s["oldest"]), str(s["retained_rows"]))
                for s in streams
            ],
        )
    else:
        lines.append("no streams")
    lines.append("")
    connections = status["connections"]
    rows: list[tuple[str, ...]]
    if connections:
        rows = []
        for c in connections:
            followed = ", ".join(
                f"{_at(s['name'], s['position'])} lag {s['lag']}"
                + ("" if s.get("live", True) else " (catching up)")
                for s in c["streams"]
            )
            if c.get("all_streams"):
                followed = "ALL" + (f": {followed}" if followed else "")
            handled = ", ".join(
                f"{_at(s['name'], s['handled'])} lag {s['handled_lag']}"
                for s in c["streams"] if s.get("handled") is not None
            )
            row: tuple[str, ...] = (
                c["worker"] or "?", c["address"], _duration(c.get("connected_seconds")),
                _bytes(c["buffered_bytes"]), followed or "-", handled or "-",
            )
            if cluster is not None:
                row = (row[0], c.get("role") or "worker", *row[1:])
            rows.append(row)
        headers: tuple[str, ...] = (
            "WORKER", "ADDRESS", "CONNECTED FOR", "BUFFERED", "STREAMS", "HANDLED"
        )
        if cluster is not None:
            headers = ("NAME", "ROLE", *headers[1:])
        lines += _table(headers, rows)
    else:
        lines.append("no workers connected")
    workers = status.get("workers") or []
    if workers:
        lines.append("")
        rows = []
        for w in workers:
            last = "-"
            if w.get("last_disconnect_reason"):
                ago = (
                    _duration(now - w["last_disconnect_at"]) if w.get("last_disconnect_at") else "?"
                )
                last = f"{w['last_disconnect_reason']}, {ago} ago"
            rows.append((w["name"], str(w["connected"]), str(w["connects"]), last))
        lines += _table(
            ("WORKER" if cluster is None else "NAME", "OPEN", "CONNECTS", "LAST DISCONNECT"), rows
        )
    if cluster is not None:
        lines += ["", *_format_cluster(cluster, now)]
    return "\n".join(lines)


def _at(name: str, token: int) -> str:
    """``events@41``; ``events@<origin>:41`` for a stream named with its origin."""
    return f"{name}:{token}" if "@" in name else f"{name}@{token}"


def _origin(origin: str | None, local: bool) -> str:
    return f"{origin or '?'} (this master)" if local else (origin or "?")


def _format_cluster(cluster: dict[str, Any], now: float) -> list[str]:
    """The ``cluster`` object of a master's ``/status`` as lines: relays and repairs, the
    acknowledgements, and one row per entry of ``cluster.peers``."""
    relays = cluster.get("relays_per_row")
    repairing = cluster.get("repairing") or []
    lines = [
        f"cluster: {len(cluster.get('peers') or [])} peers; relays per row "
        + ("-" if relays is None else f"{relays:.2f}")
        + f" ({cluster.get('relayed_rows', 0)} rows relayed, "
        f"{cluster.get('originated_rows', 0)} published here); repairing "
        + (", ".join(repairing) if repairing else "nothing"),
    ]
    acks = cluster.get("acks") or {}
    if cluster.get("ack_peers"):
        lines.append(
            f"acks: {cluster['ack_peers']} peers within {cluster.get('ack_timeout')}s; "
            f"{acks.get('confirmed', 0)} confirmed, {acks.get('timed_out', 0)} timed out, "
            f"{acks.get('pending', 0)} waiting"
        )
    rows = []
    for peer in cluster.get("peers") or []:
        state = str(peer["state"]) + (" (this master)" if peer.get("self") else "")
        since = peer.get("since")
        sent = peer.get("rows_sent")
        rows.append((
            peer["endpoint"], state,
            _duration(now - since) if since is not None else "-",
            peer.get("name") or "-", peer.get("origin") or "-",
            str(peer.get("rows_received", 0)), "-" if sent is None else str(sent),
            _bytes(peer.get("pending_bytes", 0)),
            ", ".join(peer.get("repairs") or []) or "-",
            peer.get("problem") or "-",
        ))
    lines += _table(
        ("PEER", "STATE", "FOR", "NAME", "ORIGIN", "RECEIVED", "SENT", "PENDING", "REPAIRING",
         "PROBLEM"),
        rows,
    )
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    status = _fetch_status(args.url, args.timeout, _auth_headers(args))
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(format_status(status))
    return 0


# -- tools: streams, tail, positions --------------------------------------------------------


def _refusal(error: urllib.error.HTTPError) -> str:
    """The master's ``{"error": ...}`` text of a refused request, or the HTTP reason."""
    try:
        return str(json.loads(error.read())["error"])
    except (ValueError, KeyError, TypeError):
        return str(error.reason)


def _http_json(
    method: str, url: str, timeout: float, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """``method`` ``url`` and decode the JSON answer; a refusal is a CommandLineError with
    the master's message, as is an unreachable master or an answer that is not JSON."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            document = json.loads(response.read())
    except urllib.error.HTTPError as e:
        message = _refusal(e)
        raise CommandLineError(f"{method} {url} refused ({e.code}): {message}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise CommandLineError(f"cannot reach the master at {url}: {reason}") from None
    except ValueError as e:
        raise CommandLineError(f"{url} did not answer JSON: {e}") from None
    if not isinstance(document, dict):
        raise CommandLineError(f"{url} did not answer a JSON object")
    return document


def _time(when: float | None) -> str:
    """Seconds since the epoch as UTC ``2026-11-26 20:30:05``; ``-`` when not known."""
    if when is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when))


def _retention(retention: dict[str, Any] | None) -> str:
    """``{"max_rows": 1000, "max_age": 3600}`` as ``1000 rows, 1h``."""
    if not retention:
        return "-"
    parts = []
    if retention.get("max_rows") is not None:
        parts.append(f"{retention['max_rows']} rows")
    if retention.get("max_age") is not None:
        parts.append(_duration(retention["max_age"]))
    return ", ".join(parts) or "keep all"


def format_streams(details: Sequence[dict[str, Any]]) -> str:
    """The ``details`` of ``GET /streams`` as a table."""
    if not details:
        return "no streams"
    return "\n".join(_table(
        ("STREAM", "HEAD", "OLDEST", "ROWS", "RETENTION", "CREATED (UTC)"),
        [
            (d["name"], str(d["head"]), str(d["oldest"]), str(d["retained_rows"]),
             _retention(d.get("retention")), _time(d.get("created")))
            for d in details
        ],
    ))


def cmd_streams(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    if args.streams_command == "delete":
        if not args.yes:
            raise CommandLineError(
                f"deleting stream {args.name!r} drops every row of it and makes its workers "
                "start it again from token 1; add --yes to confirm"
            )
        url = f"{base}/streams/{urllib.parse.quote(args.name, safe='')}"
        answer = _http_json("DELETE", url, args.timeout, _auth_headers(args))
        if answer.get("recreated"):
            print(f"deleted stream {args.name} (configured: created anew, empty)")
        else:
            print(f"deleted stream {args.name}")
        return 0
    document = _http_json("GET", f"{base}/streams", args.timeout, _auth_headers(args))
    details = document.get("details")
    if not isinstance(details, list):
        raise CommandLineError(f"{base}/streams did not answer a master's stream list")
    if args.json:
        print(json.dumps(details, indent=2, sort_keys=True))
    else:
        print(format_streams(details))
    return 0


class _TailPrinter:
    """The handler of ``replication tail``: prints each token as one JSON line
    ``{"stream": ..., "token": N, "rows": [...]}`` on ``out`` (the worker's runner logs
    gaps and resets on stderr). A closed output (``| head``) calls ``stop``."""

    def __init__(self, out: Any, stop: Callable[[], None]) -> None:
        self.out = out
        self.stop = stop

    def __call__(self, stream: str, token: int, rows: list[Any]) -> None:
        try:
            self.out.write(json.dumps({"stream": stream, "token": token, "rows": rows}) + "\n")
            self.out.flush()
        except BrokenPipeError:
            self.stop()



def cmd_tail(args: argparse.Namespace) -> int:
    from replication.wire.commands import CommandParseError, check_stream_name

    try:
        check_stream_name(args.stream)
    except CommandParseError as e:
        raise CommandLineError(str(e)) from None
    if args.start is not None and args.start < 0:
        raise CommandLineError(f"--from {args.start}: a token is 0 or more")

    from twisted.internet import reactor

    from replication.config import WorkerStream
    from replication.tls import client_endpoint
    from replication.worker import Worker
    from replication.worker.connection import WorkerConnection, WorkerFactory
    from replication.worker.positions import MemoryPositions

    if not args.verbose:
        logging.getLogger("replication").setLevel(logging.WARNING)
    outcome = {"code": 0, "stopping": False}

    def stopping() -> None:
        outcome["stopping"] = True

    def stop() -> None:
        if not outcome["stopping"]:
            stopping()
            reactor.stop()

    config = WorkerConfig(
        name=args.name, master=args.master, streams=(WorkerStream(args.stream, "latest"),),
    )
    initial = {} if args.start is None else {args.stream: args.start}
    worker = Worker(config, _TailPrinter(sys.stdout, stop), MemoryPositions(initial), reactor,
                    credential=_credential(args))

    class TailConnection(WorkerConnection):
        """A worker connection that ends the tail when it closes."""

        def closed(self, reason: str) -> None:
            super().closed(reason)
            if not outcome["stopping"]:
                print(f"replication: the connection to the master ended: {reason}",
                      file=sys.stderr)
                stop()

    factory = WorkerFactory(worker)
    factory.buildProtocol = lambda addr: TailConnection(worker)  # type: ignore[method-assign]
    try:
        endpoint = client_endpoint(reactor, args.master)
    except (ValueError, OSError) as e:
        raise CommandLineError(f"--master {args.master!r}: {e}") from None

    def connect() -> None:
        def failed(failure: Any) -> None:
            print(f"replication: error: cannot connect to the master at {args.master}: "
                  f"{failure.getErrorMessage()}", file=sys.stderr)
            outcome["code"] = 1
            stop()

        endpoint.connect(factory).addErrback(failed)

    reactor.callWhenRunning(connect)
    reactor.addSystemEventTrigger("before", "shutdown", stopping)  # Ctrl-C, SIGTERM
    reactor.run()
    return int(outcome["code"])


def _position_rows(
    local: dict[str, int], origins: dict[str, dict[str, int]]
) -> list[tuple[str, str, str]]:
    rows = []
    for stream in sorted(local.keys() | origins.keys()):
        if stream in local:
            rows.append((stream, str(local[stream]), "-"))
        for origin, token in sorted(origins.get(stream, {}).items()):
            rows.append((stream, str(token), origin))
    return rows


def cmd_positions(args: argparse.Namespace) -> int:
    import os

    from replication.wire.commands import CommandParseError, check_stream_name
    from replication.worker.positions import (
        PositionFile,
        PositionFileError,
        PositionFileLocked,
        lock_holder,
        read_local_origin,
        read_positions,
    )

    path = args.file
    if not os.path.exists(path):
        raise CommandLineError(f"no position file at {path}")
    changes: list[tuple[str, int]] = []
    for item in args.set or ():
        stream, sep, token = item.rpartition("=")
        if not sep or not token.isdigit():
            raise CommandLineError(f"--set {item!r}: give STREAM=TOKEN, TOKEN 0 or more")
        try:
            check_stream_name(stream)
        except CommandParseError as e:
            raise CommandLineError(f"--set {item!r}: {e}") from None
        changes.append((stream, int(token)))
    try:
        if changes:
            try:
                positions = PositionFile(path)
            except PositionFileLocked as e:
                raise CommandLineError(
                    f"position file {path} is in use by a running worker (pid {e.holder}); "
                    "stop the worker before changing its positions"
                ) from None
            try:
                for stream, token in changes:
                    old = positions.get(stream)
                    positions.set(stream, token)
                    print(f"{stream}: {'-' if old is None else old} -> {token}")
                positions.sync()
            finally:
                positions.close()
            return 0
        version, local, origins = read_positions(path)
        bound = read_local_origin(path)
        holder = lock_holder(path)
    except PositionFileError as e:
        raise CommandLineError(str(e)) from None
    if args.json:
        print(json.dumps({
            "path": os.path.abspath(path), "format": version, "in_use_by_pid": holder,
            "positions": local, "origins": origins, "local_origin": bound,
        }, indent=2, sort_keys=True))
        return 0
    state = f"in use by a worker (pid {holder})" if holder else "not in use"
    print(f"position file {os.path.abspath(path)} (format v{version}), {state}")
    if bound is not None:
        print(f"positions without an origin are origin {bound}'s (bound by protocol version 2)")
    rows = _position_rows(local, origins)
    if rows:
        print("\n".join(_table(("STREAM", "POSITION", "ORIGIN"), rows)))
    else:
        print("no positions")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    role = args.role or detect_role(args.file)
    config: MasterConfig | WorkerConfig
    if role == "master":
        config = load_master_config(args.file)
    else:
        config = load_worker_config(args.file)
    for warning in secret_file_warnings(config):
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
    print(f"{args.file}: valid {role} configuration")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="replication",
        description="Stream replication over TCP: a master that owns ordered streams, "
        "workers that follow them.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "master",
        help="run a master",
        description="Run a master. With no "
        "configuration it serves workers on 127.0.0.1:9092 and HTTP on 127.0.0.1:9093.",
    )
    p.add_argument("--config", "-c", metavar="FILE", help="YAML configuration file")
    add_flags(p, MASTER)  # --server-name, --listen, --http-listen, --data-dir, --stream, --store
    p.add_argument("--verbose", "-v", action="store_true", help="log debug messages")
    p.add_argument(
        "--accept-store-history-loss", action="store_true",
        help="start even though the SQLite store holds less than this master recorded "
        "(replaced, emptied or restored from an old backup); see docs/operations.rst",
    )
    _add_master_reactor_flag(p)
    p.set_defaults(func=cmd_master)

    p = sub.add_parser("worker", help="run a worker", description="Run a worker that follows "
                       "streams of a master and hands each token to a handler.")
    p.add_argument("--config", "-c", metavar="FILE", help="YAML configuration file")
    # --name, --master, --stream with --start, --handler, --path, --position-file,
    # --metrics-listen
    add_flags(p, WORKER)
    p.add_argument("--verbose", "-v", action="store_true", help="log debug messages")
    _add_reactor_flag(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("publish", help="publish rows (replication port or HTTP)",
                       description="Publish JSON rows to a stream as one token and print the "
                       "token: over the replication port with --master, else over HTTP.")
    p.add_argument("stream", metavar="STREAM")
    p.add_argument("rows", nargs="+", metavar="JSON", help="one JSON value per row")
    p.add_argument(
        "--url", action="append", metavar="URL",
        help=f"a master's HTTP address (default {DEFAULT_URL}); repeat it to name several "
        "masters of a cluster: they are tried in random order until one takes the publish",
    )
    p.add_argument(
        "--master", action="append", metavar="ENDPOINT",
        help="a master's replication port (host:port or tcp:host:port): publish over it with "
        "the client library instead of HTTP; repeat it to name several masters of a cluster "
        "(tried in random order; a publish whose answer was lost is never sent to another)",
    )
    p.add_argument("--json", action="store_true",
                   help='print the answer {"stream":..., "token":..., "origin":...}')
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    _add_credential_option(p)
    p.set_defaults(func=cmd_publish, verbose=False)

    p = sub.add_parser(
        "status",
        help="show a master's streams and workers",
        description="Show a master's streams, its connected workers with their "
        "position and lag per stream, and each worker's reconnects, from its /status; on a "
        "master of a cluster also the streams' origins, each connection's role and every "
        "peer link (state, repairs, relays per row).",
    )
    p.add_argument(
        "--url", default=DEFAULT_URL, help=f"the master's HTTP address (default {DEFAULT_URL})"
    )
    p.add_argument("--json", action="store_true", help="print the /status JSON instead of tables")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    _add_credential_option(p)
    p.set_defaults(func=cmd_status, verbose=False)

    p = sub.add_parser(
        "check-config",
        help="validate a configuration file",
        description="Validate a master or worker configuration file and say what is wrong.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "--as",
        dest="role",
        choices=("master", "worker"),
        help="the file's role (default: a file with name, master, handler or position_file "
        "is a worker's)",
    )
    p.set_defaults(func=cmd_check_config, verbose=False)
    _add_tool_parsers(sub)
    return parser


def _add_tool_parsers(sub: Any) -> None:
    """The tools' subcommands: ``streams`` (and ``streams delete``), ``tail``, ``positions``."""
    url_help = f"the master's HTTP address (default {DEFAULT_URL})"
    p = sub.add_parser("streams", help="list a master's streams, or delete one",
                       description="List a master's streams with their head, oldest retained "
                       "token, rows retained, retention and creation time (from GET /streams); "
                       "`streams delete NAME --yes` deletes one.")
    p.add_argument("--url", default=DEFAULT_URL, help=url_help)
    p.add_argument("--json", action="store_true", help="print the stream details as JSON")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    _add_credential_option(p)
    p.set_defaults(func=cmd_streams, verbose=False, streams_command=None)
    actions = p.add_subparsers(dest="streams_command", metavar="ACTION")
    d = actions.add_parser("delete", help="delete a stream and every row of it",
                           description="Delete a stream and every row of it. Its workers are "
                           "sent RESET and follow it again from token 1; a configured stream "
                           "is created anew, empty. Refused without --yes.")
    d.add_argument("name", metavar="NAME")
    d.add_argument("--yes", action="store_true", help="confirm the deletion")
    d.add_argument("--url", default=argparse.SUPPRESS, help=url_help)
    d.add_argument("--timeout", type=float, default=argparse.SUPPRESS,
                   help="seconds to wait (default 10)")
    d.add_argument("--credential", default=argparse.SUPPRESS, metavar="NAME:SECRET",
                   help="as for streams")

    p = sub.add_parser("tail", help="follow a stream and print its rows",
                       description="Connect to a master's replication port as a worker does, "
                       "follow one stream and print each token as a JSON line "
                       '{"stream": ..., "token": N, "rows": [...]}, from now or after --from '
                       "TOKEN. No position file. Stops on Ctrl-C and when the master closes "
                       "the connection.")
    p.add_argument("stream", metavar="STREAM")
    p.add_argument("--from", dest="start", type=int, metavar="TOKEN",
                   help="print the tokens after TOKEN (0: the whole retained stream); "
                   "default: from now")
    p.add_argument("--master", default="tcp:host=127.0.0.1:port=9092",
                   help="the master's replication endpoint (default tcp:host=127.0.0.1:port=9092)")
    p.add_argument("--name", default="replication-tail",
                   help="the worker name to announce (default replication-tail)")
    p.add_argument("--verbose", "-v", action="store_true", help="log debug messages")
    _add_credential_option(p)
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("positions", help="show or set a worker's position file",
                       description="Show the positions in a worker's position file (also while "
                       "the worker runs), or, with the worker stopped, set or rewind a "
                       "stream's position with --set STREAM=TOKEN (the worker then resumes "
                       "after TOKEN). Refused while a worker holds the file.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--set", action="append", metavar="STREAM=TOKEN",
                   help="record TOKEN as the last handled token of STREAM (repeatable)")
    p.add_argument("--json", action="store_true", help="print the positions as JSON")
    p.set_defaults(func=cmd_positions, verbose=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"replication: configuration error: {e}", file=sys.stderr)
        return 2
    except CommandLineError as e:
        print(f"replication: error: {e}", file=sys.stderr)
        return 2


__all__ = [
    "DEFAULT_URL",
    "GC_YOUNG_THRESHOLD",
    "REACTORS",
    "CommandLineError",
    "build_parser",
    "cmd_check_config",
    "cmd_master",
    "cmd_positions",
    "cmd_publish",
    "cmd_status",
    "cmd_streams",
    "cmd_tail",
    "cmd_worker",
    "format_status",
    "format_streams",
    "install_reactor",
    "master_reactor",
    "load_command_registry",
    "main",
    "tune_garbage_collector",
]
