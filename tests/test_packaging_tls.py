"""``ssl:`` endpoints work after a plain install: ``Twisted[tls]`` is a dependency.

A real master listens for workers and for HTTP on ``ssl:`` endpoints with a certificate made
at test time (``cryptography``, which ``Twisted[tls]`` brings through pyOpenSSL), and a real
worker follows it over ``ssl:``, verifying the master's certificate against that one.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import socket
import ssl
from pathlib import Path
from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# tests/ is not a package, so pytest puts tests/ itself on sys.path.
from processes import (
    HOST,
    Process,
    free_ports,
    read_json_lines,
    replication_command,
    wait_until,
)


def write_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (and ``localhost``) and its key, as PEM files
    ``directory/master.pem`` and ``directory/master.key``; valid from a day ago for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "replication test master")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "master.pem"
    key_path = directory / "master.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def https_publish(context: ssl.SSLContext, port: int, stream: str, rows: list[object]) -> int:
    """Publish ``rows`` as one token over HTTPS; the token, failing on any refusal."""
    connection = http.client.HTTPSConnection(HOST, port, timeout=10, context=context)
    try:
        connection.request("POST", f"/streams/{stream}", json.dumps({"rows": rows}),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 200, answer
    return int(answer["token"])


def https_health(context: ssl.SSLContext, port: int) -> bool:
    connection = http.client.HTTPSConnection(HOST, port, timeout=1, context=context)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


class TlsMaster:
    """A ``replication master`` (memory store) with both listeners on ``ssl:`` endpoints, the
    certificate and key in ``tmp/certs``, and a client context that trusts that certificate.
    Use as a context manager: it waits for ``GET /health`` over HTTPS, and kills the master."""

    def __init__(self, tmp: Path) -> None:
        self.certs = tmp / "certs"
        self.certs.mkdir()
        cert_path, key_path = write_certificate(self.certs)
        self.context = ssl.create_default_context(cafile=str(cert_path))
        self.port, self.http_port = free_ports(2)
        tls = f"interface={HOST}:privateKey={key_path}:certKey={cert_path}"
        self.process = Process(
            "master",
            replication_command(
                "master", "--server-name", "tls-master", "--store", "memory",
                "--listen", f"ssl:{self.port}:{tls}",
                "--http-listen", f"ssl:{self.http_port}:{tls}",
            ),
            stdout=tmp / "master.out", stderr=tmp / "master.err", cwd=tmp,
        )

    def __enter__(self) -> Self:
        self.process.start()
        try:
            wait_until(lambda: https_health(self.context, self.http_port) or None, 20,
                       "the master's HTTPS", alive=[self.process])
        except BaseException:
            self.process.kill()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.process.__exit__(*exc_info)  # type: ignore[arg-type]


def test_master_and_worker_over_ssl_endpoints(tmp_path: Path) -> None:
    """A master started with ``--listen ssl:...`` and ``--http-listen ssl:...`` serves TLS:
    a verifying TLS client gets ``SERVER <name>`` as its first line, HTTPS publishes are
    answered, and a worker given ``--master ssl:host=127.0.0.1:...:caCertsDir=DIR`` (DIR
    holding the master's certificate) receives tokens 1..3 with their rows."""
    with TlsMaster(tmp_path) as master:
        with (
            socket.create_connection((HOST, master.port), timeout=10) as raw,
            master.context.wrap_socket(raw, server_hostname=HOST) as connection,
        ):
            first = connection.recv(4096).split(b"\n")[0]
        assert first == b"SERVER tls-master"

        tokens = [https_publish(master.context, master.http_port, "events", [{"n": n}])
                  for n in range(3)]
        assert tokens == [1, 2, 3]
        worker_out = tmp_path / "worker.out"
        worker = Process(
            "worker",
            replication_command(
                "worker", "--name", "tls-worker", "--stream", "events",
                "--master", f"ssl:host={HOST}:port={master.port}:caCertsDir={master.certs}",
                "--position-file", str(tmp_path / "tls-worker.positions"),
            ),
            stdout=worker_out, stderr=tmp_path / "worker.err", cwd=tmp_path,
        )
        with worker:
            wait_until(
                lambda: len(read_json_lines(worker_out)[0]) >= 3 or None, 20,
                "the worker's three tokens", alive=[master.process, worker],
            )
        lines, _ = read_json_lines(worker_out)
        assert [(line["token"], line["rows"]) for line in lines] == [
            (1, [{"n": 0}]), (2, [{"n": 1}]), (3, [{"n": 2}])
        ]


def test_plain_tcp_client_gets_no_protocol_from_an_ssl_listener(tmp_path: Path) -> None:
    """The ``ssl:`` listener does not fall back to plain text: a client that speaks no TLS
    and sends a protocol line is never sent ``SERVER``; the master closes the connection."""
    with TlsMaster(tmp_path) as master:
        with socket.create_connection((HOST, master.port), timeout=10) as raw:
            raw.sendall(b"NAME plain-worker\n")
            received = b""
            try:
                while chunk := raw.recv(4096):
                    received += chunk
            except ConnectionResetError:
                pass
        assert b"SERVER" not in received
