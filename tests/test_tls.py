"""TLS between workers and master: the worker's ``ssl:`` master endpoint verifies the master's
certificate and host name by default (:mod:`replication.tls`), and a worker connected over
TLS stops on SIGTERM. Certificates are made at test time (:mod:`certificates`)."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Self

import pytest
from twisted.internet.task import Clock

from certificates import CertificateAuthority, Issued, self_signed
from processes import (
    HOST,
    Process,
    child_env,
    free_ports,
    health_ok,
    publish,
    read_json_lines,
    replication_command,
    wait_until,
)
from replication.cli import main
from replication.tls import (
    TlsConfigurationError,
    server_endpoint,
    split_endpoint,
    verified_client_string,
)
from replication.wire.commands import MASTER, WORKER, PingCommand, default_registry
from replication.wire.protocol import (
    CLOSED_BY_PEER,
    CLOSED_LOCALLY,
    ReplicationProtocol,
)

# -- the endpoint strings ----------------------------------------------------------------------

@pytest.mark.parametrize(("given", "expected"), [
    ("ssl:host=db.example:port=9092", "ssl:host=db.example:port=9092:hostname=db.example"),
    ("ssl:db.example:9092", "ssl:db.example:9092:hostname=db.example"),
    ("ssl:host=127.0.0.1:port=9092:caCertsDir=/ca",
     "ssl:host=127.0.0.1:port=9092:caCertsDir=/ca:hostname=127.0.0.1"),
    ("ssl:host=\\:\\:1:port=9092", "ssl:host=\\:\\:1:port=9092:hostname=\\:\\:1"),
])
def test_an_ssl_string_without_hostname_gets_its_host_as_hostname(
    given: str, expected: str
) -> None:
    """An ``ssl:`` client string without ``hostname=`` is given its host (named or
    positional, escapes kept) as the name the certificate is verified against."""
    assert verified_client_string(given) == expected


@pytest.mark.parametrize("given", [
    "ssl:host=10.0.0.1:port=9092:hostname=master.example",
    "tcp:host=127.0.0.1:port=9092",
    "unix:path=/run/replication.sock",
    "tls:master.example:9092",
])
def test_other_strings_are_left_as_they_are(given: str) -> None:
    """A string naming its ``hostname``, and every other endpoint type, is unchanged."""
    assert verified_client_string(given) == given


@pytest.mark.parametrize(("given", "says"), [
    ("ssl:port=9092", "needs host="),
    ("ssl:host=:port=9092", "needs host="),
    ("ssl:host=127.0.0.1:port=9092:hostname=", "hostname is empty"),
])
def test_an_ssl_string_that_cannot_be_verified_is_refused(given: str, says: str) -> None:
    """An ``ssl:`` string with no host, or an empty ``hostname``, is refused: there is no
    name to verify the master's certificate against."""
    with pytest.raises(TlsConfigurationError, match=says):
        verified_client_string(given)


def test_split_endpoint_undoes_escapes() -> None:
    """Parts are split on unescaped colons; ``\\:`` and ``\\\\`` are a colon and a backslash
    inside a value; the first ``=`` of a part separates its key."""
    assert split_endpoint("ssl:host=a\\:b:port=1:x=y=z:c\\\\d") == [
        (None, "ssl"), ("host", "a:b"), ("port", "1"), ("x", "y=z"), (None, "c\\d"),
    ]


def test_check_config_refuses_an_ssl_master_with_no_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``check-config`` of a worker whose ``master`` is ``ssl:`` with no host fails, naming
    the key and saying why."""
    config = tmp_path / "worker.yaml"
    config.write_text("name: w\nmaster: ssl:port=9092\nstreams: [events]\n")
    assert main(["check-config", str(config), "--as", "worker"]) != 0
    err = capsys.readouterr().err
    assert "master" in err and "needs host=" in err


# -- a real master over ssl: and real clients --------------------------------------------------

class SslMaster:
    """A ``replication master`` (memory store) serving workers on ``ssl:`` with ``issued``
    as its certificate, and HTTP in plain TCP. A context manager that kills it."""

    def __init__(self, tmp: Path, issued: Issued, *, https: bool = False,
                 client_cas: Path | None = None) -> None:
        self.port, self.http_port = free_ports(2)
        tls = f"interface={HOST}:privateKey={issued.key}:certKey={issued.cert}"
        http = f"ssl:{self.http_port}:{tls}" if https else f"tcp:{self.http_port}:interface={HOST}"
        mutual = "" if client_cas is None else f":caCertsDir={client_cas}"
        self.process = Process(
            "master",
            replication_command(
                "master", "--server-name", "tls-master", "--store", "memory",
                "--listen", f"ssl:{self.port}:{tls}{mutual}", "--http-listen", http,
            ),
            stdout=tmp / "master.out", stderr=tmp / "master.err", cwd=tmp,
        )
        self.listening = (lambda: port_open(self.http_port)) if https else (
            lambda: health_ok(self.http_port))

    def __enter__(self) -> Self:
        self.process.start()
        try:
            wait_until(lambda: self.listening() or None, 20, "the master's HTTP listener",
                       alive=[self.process])
        except BaseException:
            self.process.kill()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.process.__exit__(*exc_info)  # type: ignore[arg-type]


def port_open(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except OSError:
        return False
    return True


def tail(master: SslMaster, description: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``replication tail events --from 0 --master <description>``, run to its end (it ends
    when the connection does: here, when the TLS handshake is refused)."""
    return subprocess.run(
        replication_command("tail", "events", "--from", "0", "--master", description),
        check=False, capture_output=True, text=True, timeout=30, cwd=cwd, env=child_env(),
    )


def first_tail_line(description: str, cwd: Path) -> dict[str, object]:
    """The first token ``replication tail events --from 0 --master <description>`` prints,
    parsed; the tail is then stopped."""
    process = subprocess.Popen(
        replication_command("tail", "events", "--from", "0", "--master", description),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=child_env(),
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
    finally:
        process.terminate()
        _, err = process.communicate(timeout=10)
    assert line, err
    parsed: dict[str, object] = json.loads(line)
    return parsed


def worker_process(tmp: Path, description: str) -> Process:
    """A ``replication worker`` named tls-worker following ``events`` from ``description``,
    its position file, output and log in ``tmp``."""
    return Process(
        "worker",
        replication_command(
            "worker", "--name", "tls-worker", "--stream", "events", "--master", description,
            "--position-file", str(tmp / "tls-worker.positions"),
        ),
        stdout=tmp / "worker.out", stderr=tmp / "worker.err", cwd=tmp,
    )


def test_a_worker_verifies_a_private_ca_and_stops_on_sigterm(tmp_path: Path) -> None:
    """A worker given ``--master ssl:host=127.0.0.1:port=P:caCertsDir=DIR`` (DIR holding the
    private CA) follows a master whose certificate that CA signed for 127.0.0.1, and stops
    within 5 seconds of SIGTERM with status 0, logging the positions it stopped at."""
    ca = CertificateAuthority(tmp_path / "ca")
    with SslMaster(
        tmp_path, ca.issue(tmp_path / "master", "master", [HOST, "localhost"])
    ) as master:
        assert publish(master.http_port, "events", [{"n": 1}]) == 1
        out = tmp_path / "worker.out"
        worker = worker_process(
            tmp_path, f"ssl:host={HOST}:port={master.port}:caCertsDir={ca.directory}"
        )
        with worker:
            wait_until(lambda: read_json_lines(out)[0] or None, 20, "the worker's token",
                       alive=[master.process, worker])
            started = time.monotonic()
            assert worker.terminate(timeout=5) == 0
            assert time.monotonic() - started < 5
        assert [(line["token"], line["rows"]) for line in read_json_lines(out)[0]] == [
            (1, [{"n": 1}])
        ]
        assert "stopped; positions recorded: events at 1" in worker.stderr_text()


def test_a_certificate_for_another_name_is_refused(tmp_path: Path) -> None:
    """A master presenting a self-signed certificate for ``other.example`` is refused by a
    client dialling 127.0.0.1, even with that very certificate as its trusted CA: the name
    does not match. No row is printed, and the client logs ``TLS failed`` with the mismatch."""
    other = self_signed(tmp_path / "other", "other", ["other.example"])
    with SslMaster(tmp_path, other) as master:
        publish(master.http_port, "events", [{"n": 1}])
        done = tail(master, f"ssl:host={HOST}:port={master.port}:caCertsDir={other.cert.parent}",
                    tmp_path)
    assert done.stdout == ""
    assert "TLS failed" in done.stderr and "Mismatch" in done.stderr, done.stderr
    assert "the connection to the master ended" in done.stderr, done.stderr


def test_a_private_ca_is_not_trusted_without_cacertsdir(tmp_path: Path) -> None:
    """Without ``caCertsDir`` the platform's trust store is used: a master certificate that
    a private CA signed for the right address is refused. No row is printed, and the
    client logs ``TLS failed`` with OpenSSL's ``certificate verify failed``."""
    ca = CertificateAuthority(tmp_path / "ca")
    with SslMaster(tmp_path, ca.issue(tmp_path / "master", "master", [HOST])) as master:
        publish(master.http_port, "events", [{"n": 1}])
        done = tail(master, f"ssl:host={HOST}:port={master.port}", tmp_path)
    assert done.stdout == ""
    assert "TLS failed" in done.stderr and "certificate verify failed" in done.stderr, done.stderr
    assert "the connection to the master ended" in done.stderr, done.stderr


def test_tail_follows_a_verified_master(tmp_path: Path) -> None:
    """The same ``tail`` with the private CA's directory prints the master's rows (the
    refusals above are the certificate's, not the setup's)."""
    ca = CertificateAuthority(tmp_path / "ca")
    with SslMaster(tmp_path, ca.issue(tmp_path / "master", "master", ["localhost"])) as master:
        publish(master.http_port, "events", [{"n": 1}])
        first = first_tail_line(
            f"ssl:host={HOST}:port={master.port}:hostname=localhost:caCertsDir={ca.directory}",
            tmp_path,
        )
    assert first == {"stream": "events", "token": 1, "rows": [{"n": 1}]}


def test_https_tools_verify_the_master_and_take_a_ca_from_ssl_cert_file(tmp_path: Path) -> None:
    """``replication status --url https://127.0.0.1:P`` refuses a master whose HTTPS
    certificate a private CA signed (exit status 2, ``certificate verify failed``), and
    answers with ``SSL_CERT_FILE`` naming that CA's certificate."""
    ca = CertificateAuthority(tmp_path / "ca")
    issued = ca.issue(tmp_path / "master", "master", [HOST])
    with SslMaster(tmp_path, issued, https=True) as master:
        command = replication_command("status", "--json", "--url", f"https://{HOST}:{master.http_port}")
        refused = subprocess.run(command, check=False, capture_output=True, text=True,
                                 timeout=30, cwd=tmp_path, env=child_env())
        trusted = subprocess.run(command, check=False, capture_output=True, text=True,
                                 timeout=30, cwd=tmp_path,
                                 env={**child_env(), "SSL_CERT_FILE": str(ca.files.cert)})
    assert refused.returncode == 2 and "certificate verify failed" in refused.stderr, refused
    assert trusted.returncode == 0, trusted
    assert json.loads(trusted.stdout)["server_name"] == "tls-master"


def test_a_worker_waiting_for_server_over_tls_stops_on_sigterm(tmp_path: Path) -> None:
    """A worker connected over TLS to a server that completes the TLS handshake but never
    sends ``SERVER`` stops within 5 seconds of SIGTERM (long before its handshake timeout):
    its close reaches the server as a TLS close."""
    ca = CertificateAuthority(tmp_path / "ca")
    issued = ca.issue(tmp_path / "master", "master", [HOST])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(issued.cert, issued.key)
    listener = socket.create_server((HOST, 0))
    port = listener.getsockname()[1]
    accepted = threading.Event()
    closed_by_worker = threading.Event()

    def serve() -> None:
        raw, _ = listener.accept()
        with context.wrap_socket(raw, server_side=True) as connection:
            accepted.set()
            try:
                while connection.recv(4096):
                    pass
                closed_by_worker.set()
            except OSError:
                pass

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    worker = worker_process(tmp_path, f"ssl:host={HOST}:port={port}:caCertsDir={ca.directory}")
    try:
        with worker:
            assert accepted.wait(20), worker.describe_output()
            time.sleep(0.2)  # the worker's side of the handshake
            assert worker.terminate(timeout=5) == 0
        assert closed_by_worker.wait(5)
    finally:
        listener.close()


# -- mutual TLS: the master requires client certificates ---------------------------------------

def test_server_strings_without_cacertsdir_go_to_twisted(tmp_path: Path) -> None:
    """A ``tcp:`` string, and an ``ssl:`` one without ``caCertsDir``, give Twisted's own
    endpoints; with ``caCertsDir`` an ``ssl:`` endpoint on the given port and interface."""
    from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
    from twisted.internet.testing import MemoryReactor

    ca = CertificateAuthority(tmp_path / "ca")
    issued = ca.issue(tmp_path / "master", "master", [HOST])
    reactor = MemoryReactor()
    assert isinstance(server_endpoint(reactor, "tcp:9092"), TCP4ServerEndpoint)
    tls = f"privateKey={issued.key}:certKey={issued.cert}"
    assert isinstance(server_endpoint(reactor, f"ssl:9092:{tls}"), SSL4ServerEndpoint)
    mutual = server_endpoint(reactor, f"ssl:9092:interface={HOST}:{tls}:caCertsDir={ca.directory}")
    assert isinstance(mutual, SSL4ServerEndpoint)
    assert (mutual._port, mutual._interface) == (9092, HOST)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("extra", "says"), [
    ("sslmethod=TLSv1_2_METHOD", "'sslmethod' is not supported with caCertsDir"),
    ("caCertsDir={empty}", "holds no \\*.pem CA certificate"),
])
def test_a_mutual_tls_listener_that_cannot_work_is_refused(
    tmp_path: Path, extra: str, says: str
) -> None:
    """``caCertsDir`` with a key it cannot be combined with, or naming a directory with no
    CA certificate, is refused with a message saying so."""
    from twisted.internet.testing import MemoryReactor

    ca = CertificateAuthority(tmp_path / "ca")
    issued = ca.issue(tmp_path / "master", "master", [HOST])
    (tmp_path / "empty").mkdir()
    description = (f"ssl:9092:privateKey={issued.key}:certKey={issued.cert}:caCertsDir="
                   f"{ca.directory}:{extra.format(empty=tmp_path / 'empty')}")
    with pytest.raises(TlsConfigurationError, match=says):
        server_endpoint(MemoryReactor(), description)


def test_a_master_with_cacertsdir_requires_a_client_certificate_its_ca_signed(
    tmp_path: Path
) -> None:
    """A master listening on ``ssl:...:caCertsDir=DIR`` serves a client presenting a
    certificate that a CA of DIR signed (``certKey``/``privateKey`` in its ``ssl:`` string),
    and refuses a client presenting none or a self-signed one: they print no row."""
    ca = CertificateAuthority(tmp_path / "ca")
    clients = CertificateAuthority(tmp_path / "client-ca")
    worker = clients.issue(tmp_path / "worker", "worker", ["tls-worker"], client=True)
    stranger = self_signed(tmp_path / "stranger", "stranger", ["tls-worker"])
    with SslMaster(tmp_path, ca.issue(tmp_path / "master", "master", [HOST]),
                   client_cas=clients.directory) as master:
        publish(master.http_port, "events", [{"n": 1}])
        base = f"ssl:host={HOST}:port={master.port}:caCertsDir={ca.directory}"
        without = tail(master, base, tmp_path)
        with_stranger = tail(
            master, f"{base}:certKey={stranger.cert}:privateKey={stranger.key}", tmp_path
        )
        first = first_tail_line(f"{base}:certKey={worker.cert}:privateKey={worker.key}", tmp_path)
    assert first == {"stream": "events", "token": 1, "rows": [{"n": 1}]}
    for refused in (without, with_stranger):
        assert refused.stdout == ""
        assert "TLS failed" in refused.stderr, refused.stderr


# -- the protocol's close over TLS, in memory ----------------------------------------------------

class End(ReplicationProtocol):
    """A protocol end that records its close reasons."""

    def __init__(self, clock: Clock, side: str) -> None:
        super().__init__(clock, default_registry(), side, f"{side}-end")
        self.reasons: list[str] = []

    def closed(self, reason: str) -> None:
        self.reasons.append(reason)


def tls_pair(tmp: Path) -> tuple[End, End, Clock, Any]:
    """A master end and a worker end connected over in-memory TLS (the worker verifying a
    CA-signed master certificate for 127.0.0.1), their clock and the I/O pump."""
    from twisted.internet.protocol import Factory
    from twisted.internet.ssl import (
        Certificate,
        PrivateCertificate,
        optionsForClientTLS,
    )
    from twisted.protocols.tls import TLSMemoryBIOFactory
    from twisted.test.iosim import connectedServerAndClient

    ca = CertificateAuthority(tmp / "ca")
    issued = ca.issue(tmp / "master", "master", [HOST])
    server_options = PrivateCertificate.loadPEM(
        issued.cert.read_bytes() + issued.key.read_bytes()
    ).options()
    client_options = optionsForClientTLS(
        HOST, trustRoot=Certificate.loadPEM(ca.files.cert.read_bytes())
    )
    clock = Clock()
    master, worker = End(clock, MASTER), End(clock, WORKER)
    server = TLSMemoryBIOFactory(server_options, False, Factory.forProtocol(lambda: master), clock)
    client = TLSMemoryBIOFactory(client_options, True, Factory.forProtocol(lambda: worker), clock)
    _, _, pump = connectedServerAndClient(
        lambda: server.buildProtocol(None), lambda: client.buildProtocol(None), clock=clock
    )
    return master, worker, clock, pump


def test_a_close_over_tls_completes_without_waiting_for_the_abort_timer(tmp_path: Path) -> None:
    """Master and worker ends over in-memory TLS complete their handshake; the worker's
    ``close()`` then ends the connection on both sides at once (closed locally / closed by
    peer), with no clock time passing: the protocol stops producing, so TLS sends its close
    alert instead of waiting for the close timeout to abort. No timer is left."""
    master, worker, clock, pump = tls_pair(tmp_path)
    pump.flush()
    assert (worker.peer_name, master.peer_name) == ("master-end", "worker-end")
    worker.close()
    pump.flush()
    assert (worker.reasons, master.reasons) == ([CLOSED_LOCALLY], [CLOSED_BY_PEER])
    assert clock.getDelayedCalls() == []


def test_a_close_over_tls_sends_the_lines_held_while_paused_first(tmp_path: Path) -> None:
    """A close while the transport has paused the worker's output keeps the held line and
    the connection open; once the transport resumes, the line is sent and the connection
    closes on both sides."""
    master, worker, clock, pump = tls_pair(tmp_path)
    pump.flush()
    pings = master.received_counts.get("PING", 0)
    worker.pauseProducing()
    worker.send(PingCommand(1))
    worker.close()
    pump.flush()
    assert (worker.reasons, master.reasons) == ([], [])
    worker.resumeProducing()
    pump.flush()
    assert master.received_counts.get("PING", 0) == pings + 1
    assert (worker.reasons, master.reasons) == ([CLOSED_LOCALLY], [CLOSED_BY_PEER])
    assert clock.getDelayedCalls() == []
