"""The HTTP connection limit and timeouts of a real master process, over real sockets:
``http.max_connections`` connections are served and the next is answered 503 while worker
connections go on; a silent connection is closed after ``http.idle_timeout``; a request
dribbled too slowly is answered 408 after ``http.request_timeout``."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from processes import HOST, free_ports, http_request, start_master

MAX_CONNECTIONS = 3
IDLE_TIMEOUT = 1.0
REQUEST_TIMEOUT = 2.5


@contextmanager
def running_master(
    tmp_path: Path, idle_timeout: float, request_timeout: float
) -> Iterator[tuple[int, int]]:
    """A master with http.max_connections MAX_CONNECTIONS and the given timeouts; yields
    its replication and HTTP ports."""
    port, http_port = free_ports(2)
    (tmp_path / "master.yaml").write_text(
        "http:\n"
        f"  max_connections: {MAX_CONNECTIONS}\n"
        f"  idle_timeout: {idle_timeout}\n"
        f"  request_timeout: {request_timeout}\n"
    )
    with start_master(tmp_path, "master", port, http_port, "-c", "master.yaml"):
        yield port, http_port


@pytest.fixture()
def master(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A master whose timeouts are long enough not to interfere."""
    with running_master(tmp_path, 60, 120) as ports:
        yield ports


@pytest.fixture()
def quick_master(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A master with short timeouts (IDLE_TIMEOUT, REQUEST_TIMEOUT)."""
    with running_master(tmp_path, IDLE_TIMEOUT, REQUEST_TIMEOUT) as ports:
        yield ports


def connect(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=10)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while True:
        piece = sock.recv(65536)
        if not piece:
            return data
        data += piece


def status_and_json(response: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def wait_for_health(http_port: int, deadline: float = 10.0) -> int:
    end = time.monotonic() + deadline
    while True:
        status, _ = http_request(http_port, "GET", "/health", timeout=5)
        if status == 200 or time.monotonic() > end:
            return status
        time.sleep(0.05)


def test_connections_past_the_limit_are_answered_503_and_workers_are_not_affected(
    master: tuple[int, int],
) -> None:
    """With http.max_connections slow partial POSTs open, the next HTTP connection is
    answered 503 with a JSON error and closed, while the replication port still greets
    a worker; once a slot frees, HTTP is served again."""
    port, http_port = master
    slow = []
    for _ in range(MAX_CONNECTIONS):
        sock = connect(http_port)
        sock.sendall(b"POST /streams/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        slow.append(sock)
    time.sleep(0.2)
    refused = connect(http_port)
    status, answer = status_and_json(read_all(refused))
    refused.close()
    assert status == 503
    assert "http.max_connections" in str(answer["error"])
    # A client that sends its request at once still reads the 503.
    connection = http.client.HTTPConnection(HOST, http_port, timeout=10)
    connection.request("GET", "/health")
    assert connection.getresponse().status == 503
    connection.close()
    worker = connect(port)
    assert worker.recv(100).startswith(b"SERVER ")
    worker.close()
    slow.pop().close()
    assert wait_for_health(http_port) == 200
    for sock in slow:
        sock.close()


def test_a_silent_connection_is_closed_after_the_idle_timeout(
    quick_master: tuple[int, int],
) -> None:
    """A connection that sends nothing is closed by the master after http.idle_timeout
    (not before, and well before the request timeout would apply)."""
    _, http_port = quick_master
    sock = connect(http_port)
    started = time.monotonic()
    assert read_all(sock) == b""
    waited = time.monotonic() - started
    sock.close()
    assert IDLE_TIMEOUT * 0.9 <= waited < IDLE_TIMEOUT + 2


def test_a_body_dribbled_within_the_idle_timeout_is_cut_at_the_request_timeout(
    quick_master: tuple[int, int],
) -> None:
    """A client that sends a body byte every half idle timeout is never idle, but is
    answered 408 and closed once http.request_timeout has passed since its first line."""
    _, http_port = quick_master
    sock = connect(http_port)
    sock.sendall(b"POST /streams/events HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
    started = time.monotonic()
    sock.settimeout(IDLE_TIMEOUT / 2)
    response = b""
    while time.monotonic() - started < REQUEST_TIMEOUT + 3:
        try:
            sock.sendall(b" ")
        except OSError:
            break
        try:
            piece = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not piece:
            break
        response += piece
    waited = time.monotonic() - started
    sock.close()
    status, answer = status_and_json(response)
    assert status == 408 and "http.request_timeout" in str(answer["error"])
    assert REQUEST_TIMEOUT * 0.9 <= waited < REQUEST_TIMEOUT + 2
