"""The ``replication`` command line tool: ``master``, ``worker``, ``publish``, ``status``,
``check-config``.

This is the only module that touches the global reactor: it reads the configuration, applies
command line overrides, builds the store, the metrics registry (one ``CollectorRegistry`` per
process, passed down, with the ``process_*`` metrics), the master or worker and their
listeners, and runs the reactor until SIGINT or SIGTERM. It sets up logging to standard
error (``text`` or ``json``: ``log.format``, ``--log-format``; see
:mod:`replication.logformat`) and logs where the master's database or the worker's
position file is, as absolute paths. ``status`` reads a master's ``/status`` and prints it as tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
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
    detect_role,
    load_master_config,
    load_worker_config,
    validate_master,
    validate_worker,
)
from replication.config.flags import add_flags, apply_flags
from replication.logformat import TEXT_FORMAT, formatter

if TYPE_CHECKING:
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
                f"--reactor asyncio: another reactor is installed already ({type(reactor).__name__})"
            ) from None


def _add_reactor_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reactor", choices=REACTORS, default=REACTORS[0],
        help="the Twisted reactor to run on: asyncio (the default; coroutine handlers can "
        "await asyncio libraries and Deferreds) or default (Twisted's platform default)",
    )


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


def _run_service(reactor: Any, service: Any) -> int:
    """Start ``service`` (a tree with ``when_listening()``) under the reactor and stop it,
    awaiting every child, when the reactor shuts down; a failure to start is exit status 1."""

    def start() -> Any:
        service.startService()
        return service.when_listening()

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
    _use_log_format(config.log_format)
    install_reactor(args.reactor)  # before the application's modules can import a reactor
    commands = load_command_registry(config.commands, config.commands_path)

    from twisted.internet import reactor

    from replication.master.app import ServiceError, master_service
    from replication.metrics import process_registry

    _log_master_paths(config)
    try:
        service = master_service(
            config, reactor, registry=process_registry(), commands=commands
        )
    except ServiceError as e:
        raise CommandLineError(str(e)) from None
    return _run_service(reactor, service)


def cmd_worker(args: argparse.Namespace) -> int:
    config = validate_worker(apply_flags(WORKER, load_worker_config(args.config), args))
    _use_log_format(config.log_format)
    if not config.streams:
        raise CommandLineError("no streams to follow: give --stream NAME or `streams:` in the config")
    install_reactor(args.reactor)  # before the application's modules can import a reactor
    commands = load_command_registry(config.commands, config.commands_path)

    from twisted.internet import reactor
    from twisted.internet.endpoints import clientFromString, serverFromString

    from replication.metrics import WorkerMetrics, process_registry
    from replication.worker import Worker, worker_service
    from replication.worker.handlers import HandlerLoadError, handler_from_config
    from replication.worker.positions import PositionFile, PositionFileError

    try:
        handler = handler_from_config(config)
        positions = PositionFile(config.resolved_position_file())
    except (HandlerLoadError, PositionFileError) as e:
        raise CommandLineError(str(e)) from None
    worker = Worker(
        config, handler, positions, reactor, registry=commands,
        metrics=WorkerMetrics(process_registry()),
    )
    service = worker_service(
        worker, clientFromString(reactor, config.master), reactor,  # type: ignore[no-untyped-call]
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
        config.name, ", ".join(s.name for s in config.streams), config.master,
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
    url = f"{args.url.rstrip('/')}/streams/{urllib.parse.quote(args.stream, safe='')}"
    request = urllib.request.Request(
        url, data=json.dumps({"rows": rows}).encode(), method="POST",
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]
        except (ValueError, KeyError, TypeError):
            message = e.reason
        print(f"replication: publish refused ({e.code}): {message}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        print(f"replication: cannot reach the master at {args.url}: {reason}", file=sys.stderr)
        return 1
    print(answer["token"])
    return 0


def _fetch_status(url: str, timeout: float) -> dict[str, Any]:
    """GET ``<url>/status`` and decode it; unreachable or odd answers are CommandLineError."""
    target = f"{url.rstrip('/')}/status"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as response:
            document = json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise CommandLineError(f"{target} answered {e.code} {e.reason}") from None
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
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

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
    streams = status["streams"]
    if streams:
        lines += _table(
            ("STREAM", "HEAD", "OLDEST", "RETAINED"),
            [(s["name"], str(s["head"]), str(s["oldest"]), str(s["retained_rows"])) for s in streams],
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
                f"{s['name']}@{s['position']} lag {s['lag']}"
                + ("" if s.get("live", True) else " (catching up)")
                for s in c["streams"]
            )
            if c.get("all_streams"):
                followed = "ALL" + (f": {followed}" if followed else "")
            rows.append((
                c["worker"] or "?", c["address"], _duration(c.get("connected_seconds")),
                _bytes(c["buffered_bytes"]), followed or "-",
            ))
        lines += _table(("WORKER", "ADDRESS", "CONNECTED FOR", "BUFFERED", "STREAMS"), rows)
    else:
        lines.append("no workers connected")
    workers = status.get("workers") or []
    if workers:
        lines.append("")
        rows = []
        for w in workers:
            last = "-"
            if w.get("last_disconnect_reason"):
                ago = _duration(now - w["last_disconnect_at"]) if w.get("last_disconnect_at") else "?"
                last = f"{w['last_disconnect_reason']}, {ago} ago"
            rows.append((w["name"], str(w["connected"]), str(w["connects"]), last))
        lines += _table(("WORKER", "OPEN", "CONNECTS", "LAST DISCONNECT"), rows)
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    status = _fetch_status(args.url, args.timeout)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(format_status(status))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    role = args.role or detect_role(args.file)
    if role == "master":
        load_master_config(args.file)
    else:
        load_worker_config(args.file)
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

    p = sub.add_parser("master", help="run a master", description="Run a master. With no "
                       "configuration it serves workers on 127.0.0.1:9092 and HTTP on 127.0.0.1:9093.")
    p.add_argument("--config", "-c", metavar="FILE", help="YAML configuration file")
    add_flags(p, MASTER)  # --server-name, --listen, --http-listen, --data-dir, --stream, --store
    p.add_argument("--verbose", "-v", action="store_true", help="log debug messages")
    _add_reactor_flag(p)
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

    p = sub.add_parser("publish", help="publish rows over HTTP", description="Publish JSON rows "
                       "to a stream as one token and print the token.")
    p.add_argument("stream", metavar="STREAM")
    p.add_argument("rows", nargs="+", metavar="JSON", help="one JSON value per row")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the master's HTTP address (default {DEFAULT_URL})")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    p.set_defaults(func=cmd_publish, verbose=False)

    p = sub.add_parser("status", help="show a master's streams and workers",
                       description="Show a master's streams, its connected workers with their "
                       "position and lag per stream, and each worker's reconnects, from its /status.")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the master's HTTP address (default {DEFAULT_URL})")
    p.add_argument("--json", action="store_true", help="print the /status JSON instead of tables")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    p.set_defaults(func=cmd_status, verbose=False)

    p = sub.add_parser("check-config", help="validate a configuration file",
                       description="Validate a master or worker configuration file and say what is wrong.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--as", dest="role", choices=("master", "worker"),
                   help="the file's role (default: a file with name, master, handler or position_file is a worker's)")
    p.set_defaults(func=cmd_check_config, verbose=False)
    return parser


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
    "REACTORS",
    "CommandLineError",
    "build_parser",
    "cmd_check_config",
    "cmd_master",
    "cmd_publish",
    "cmd_status",
    "cmd_worker",
    "format_status",
    "install_reactor",
    "load_command_registry",
    "main",
]
