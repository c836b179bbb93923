"""A real worker process on the asyncio reactor (the default) running a coroutine handler that
uses asyncio itself: an ``asyncio.start_server`` echo server on 127.0.0.1, a connection to it
with ``asyncio.open_connection``, ``asyncio.sleep``, and a Twisted Deferred in the same call.
With ``--reactor default`` the same handler cannot run, and says why."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from processes import (
    Process,
    free_ports,
    publish,
    read_json_lines,
    read_positions,
    start_master,
    wait_until,
    worker_command,
)

HANDLER = '''
"""A handler that echoes each token's rows through an asyncio server, then awaits a Deferred."""
import asyncio
import json

from twisted.internet import reactor, task

_server = None


async def _echo(reader, writer):
    line = await reader.readline()
    writer.write(line.upper())
    await writer.drain()
    writer.close()


async def handle(stream, token, rows):
    global _server
    if _server is None:
        _server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = _server.sockets[0].getsockname()[1]
    await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(json.dumps(rows).encode() + b"\\n")
    await writer.drain()
    echoed = (await reader.readline()).decode().strip()
    writer.close()
    await writer.wait_closed()
    later = await task.deferLater(reactor, 0.01, lambda: "deferred")
    with open("handled.jsonl", "a") as out:
        out.write(json.dumps({
            "token": token, "echo": echoed, "later": later, "reactor": type(reactor).__name__,
        }) + "\\n")
'''


def _write_handler(tmp: Path) -> None:
    (tmp / "asynchandler.py").write_text(textwrap.dedent(HANDLER))


def test_a_coroutine_handler_uses_an_asyncio_connection_and_a_deferred(tmp_path: Path) -> None:
    """On the default (asyncio) reactor, each token's handler call opens an asyncio
    connection to an asyncio server in the same process, sleeps with asyncio, awaits a
    Deferred, and only then is its position recorded: both tokens are handled in order."""
    _write_handler(tmp_path)
    port, http_port = free_ports(2)
    positions = tmp_path / "w.positions"
    with start_master(tmp_path, "master", port, http_port) as master:
        first = publish(http_port, "events", [{"n": "a"}])
        second = publish(http_port, "events", [{"n": "b"}, {"n": "c"}])
        with Process(
            "worker", worker_command(port, "w", positions, "--handler", "asynchandler:handle"),
            stdout=tmp_path / "w.out", stderr=tmp_path / "w.err", cwd=tmp_path,
        ) as worker:
            wait_until(lambda: (read_positions(positions) or {}).get("events") == second, 30,
                       "the worker records the second token", alive=[master, worker])
            lines, partial = read_json_lines(tmp_path / "handled.jsonl")
    assert partial == ""
    assert lines == [
        {"token": first, "echo": json.dumps([{"n": "a"}]).upper(), "later": "deferred",
         "reactor": "AsyncioSelectorReactor"},
        {"token": second, "echo": json.dumps([{"n": "b"}, {"n": "c"}]).upper(),
         "later": "deferred", "reactor": "AsyncioSelectorReactor"},
    ]


def test_on_the_default_reactor_the_asyncio_handler_fails_and_is_not_recorded(
    tmp_path: Path,
) -> None:
    """``--reactor default`` runs Twisted's platform reactor (here for the master too, which
    serves as before): the worker's handler's first asyncio call fails with "no running event loop",
    the failure is logged for retry, and the token is not recorded."""
    _write_handler(tmp_path)
    port, http_port = free_ports(2)
    positions = tmp_path / "w.positions"
    with start_master(tmp_path, "master", port, http_port, "--reactor", "default") as master:
        publish(http_port, "events", [{"n": "a"}])
        with Process(
            "worker", worker_command(port, "w", positions, "--handler", "asynchandler:handle",
                                     "--reactor", "default"),
            stdout=tmp_path / "w.out", stderr=tmp_path / "w.err", cwd=tmp_path,
        ) as worker:
            wait_until(lambda: "no running event loop" in worker.stderr_text(), 30,
                       "the handler's failure is logged", alive=[master, worker])
            assert "retrying in" in worker.stderr_text()
            assert (read_positions(positions) or {}).get("events") is None
    assert not (tmp_path / "handled.jsonl").exists()
