"""TLS endpoints: clients that verify the master's certificate and host name, and listeners
that require client certificates.

Twisted's ``clientFromString`` builds an ``ssl:`` client endpoint that verifies nothing unless
the string names a ``hostname``: without it, ``ssl:host=H:port=P`` accepts any certificate
(self-signed, for any name), and ``ssl:host=H:port=P:caCertsDir=D`` checks the chain against
``D`` but not the name. :func:`verified_client_string` closes that gap by adding
``hostname=<host>`` to an ``ssl:`` string that lacks it, so that Twisted verifies the chain
(against ``caCertsDir``, or the platform's trust store when it is absent) and the host name (or
IP address) in every case; :func:`client_endpoint` builds the endpoint from it. Other endpoint
types (``tcp:``, ``unix:``, ``tls:``, which verifies already) are left as they are.

The worker's ``master`` and ``replication tail --master`` use it; see docs/security.rst.

On the master's side, :func:`server_endpoint` adds one key to Twisted's ``ssl:`` server
string, ``caCertsDir``: with it, the listener requires every client to present a certificate
that a CA of that directory signed (mutual TLS). Without it, the string goes to Twisted as is.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    clientFromString,
    serverFromString,
)
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint

__all__ = [
    "SSL_PREFIX",
    "TlsConfigurationError",
    "client_endpoint",
    "server_endpoint",
    "split_endpoint",
    "verified_client_string",
]

#: The endpoint type whose strings :func:`verified_client_string` completes.
SSL_PREFIX = "ssl"
#: The positional arguments of an ``ssl:`` client string, in order (``ssl:HOST:PORT``).
_SSL_POSITIONAL = ("host", "port")


class TlsConfigurationError(ValueError):
    """An ``ssl:`` endpoint string that cannot do what it says: a client string with no host
    name to verify the master's certificate against, or a ``caCertsDir`` listener with a key
    it does not support or no CA certificate to check clients against."""


def split_endpoint(description: str) -> list[tuple[str | None, str]]:
    """The ``:``-separated parts of a Twisted endpoint string, each as ``(key, value)`` (key
    ``None`` for a positional part), with Twisted's escapes undone (``\\:`` is a colon inside a
    value, ``\\\\`` a backslash). The first part is the endpoint type."""
    parts: list[tuple[str | None, str]] = []
    current: list[str] = []
    key: str | None = None
    escaped = False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append((key, "".join(current)))
            current, key = [], None
        elif char == "=" and key is None and parts:
            key, current = "".join(current), []
        else:
            current.append(char)
    parts.append((key, "".join(current)))
    return parts


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def verified_client_string(description: str) -> str:
    """``description`` unchanged unless it is an ``ssl:`` client string without
    ``hostname=``; then the same string with ``:hostname=<host>`` added, so that Twisted
    verifies the master's certificate and name. Raises :class:`TlsConfigurationError` for an
    ``ssl:`` string with no host (or an empty ``hostname``)."""
    parts = split_endpoint(description)
    if parts[0] != (None, SSL_PREFIX):
        return description
    named: dict[str, str] = {}
    positional = iter(_SSL_POSITIONAL)
    for key, value in parts[1:]:
        if key is None:
            key = next(positional, "")
        named[key] = value
    if "hostname" in named:
        if not named["hostname"]:
            raise TlsConfigurationError(
                "hostname is empty: the master's certificate is verified "
                "against this name"
            )
        return description
    host = named.get("host", "")
    if not host:
        raise TlsConfigurationError(
            "an ssl: endpoint needs host=... (or hostname=...): the "
            "master's certificate is verified against that name"
        )
    return f"{description}:hostname={_escape(host)}"


def client_endpoint(reactor: Any, description: str) -> IStreamClientEndpoint:
    """The client endpoint of ``description`` (see :func:`verified_client_string`). Raises
    ``ValueError`` (:class:`TlsConfigurationError` among others), ``TypeError`` or
    ``KeyError`` for a string Twisted cannot parse, and ``OSError`` when an ``ssl:``
    string's ``caCertsDir``, ``certKey`` or ``privateKey`` cannot be read."""
    endpoint: IStreamClientEndpoint = clientFromString(  # type: ignore[no-untyped-call]
        reactor, verified_client_string(description)
    )
    return endpoint


#: The keys of an ``ssl:`` server string that requires client certificates
#: (``caCertsDir`` and the Twisted keys it can be combined with).
_MUTUAL_KEYS = frozenset(
    {"port", "interface", "backlog", "privateKey", "certKey", "extraCertChain", "caCertsDir"}
)
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


def _certificates(path: Path) -> list[Any]:
    """The certificates of a PEM file (pyOpenSSL objects), in order."""
    from twisted.internet.ssl import Certificate

    return [Certificate.loadPEM(pem) for pem in _PEM_CERTIFICATE.findall(path.read_bytes())]


def _mutual_tls_options(named: dict[str, str]) -> Any:
    """The ``CertificateOptions`` of a listener that requires a client certificate signed by
    a CA of ``named["caCertsDir"]`` (every ``*.pem`` file there, all certificates of each)."""
    from twisted.internet.ssl import (
        CertificateOptions,
        KeyPair,
        trustRootFromCertificates,
    )

    key_path = named.get("privateKey", "server.pem")
    certificate = _certificates(Path(named.get("certKey", key_path)))
    if not certificate:
        raise TlsConfigurationError(
            f"certKey {named.get('certKey', key_path)!r} holds no PEM certificate"
        )
    key = KeyPair.load(Path(key_path).read_bytes(), 1)  # 1: OpenSSL's FILETYPE_PEM
    chain: list[Any] = []
    if "extraCertChain" in named:
        chain = _certificates(Path(named["extraCertChain"]))
        if not chain:
            raise TlsConfigurationError(
                f"extraCertChain {named['extraCertChain']!r} holds no certificate"
            )
    directory = Path(named["caCertsDir"])
    authorities = [c for pem in sorted(directory.glob("*.pem")) for c in _certificates(pem)]
    if not authorities:
        raise TlsConfigurationError(
            f"caCertsDir {str(directory)!r} holds no *.pem CA certificate"
        )
    return CertificateOptions(
        privateKey=key.original,
        certificate=certificate[0].original,
        extraCertChain=[c.original for c in chain] or None,
        trustRoot=trustRootFromCertificates(authorities),  # type: ignore[no-untyped-call]
    )


def server_endpoint(reactor: Any, description: str) -> IStreamServerEndpoint:
    """The server endpoint of ``description``: Twisted's, except for an ``ssl:`` string with
    ``caCertsDir=DIR``, whose listener requires a client certificate signed by a CA of DIR
    (``port``, ``interface``, ``backlog``, ``privateKey``, ``certKey`` and ``extraCertChain``
    mean what they mean to Twisted; other keys are refused with it). Raises
    :class:`TlsConfigurationError` for a ``caCertsDir`` listener that cannot work,
    ``ValueError``, ``TypeError`` or ``KeyError`` for a string Twisted cannot parse, and
    ``OSError`` when a file cannot be read."""
    parts = split_endpoint(description)
    if parts[0] != (None, SSL_PREFIX) or all(key != "caCertsDir" for key, _ in parts[1:]):
        endpoint: IStreamServerEndpoint = serverFromString(  # type: ignore[no-untyped-call]
            reactor, description
        )
        return endpoint
    named: dict[str, str] = {}
    for key, value in parts[1:]:
        if key is None and "port" not in named:
            key = "port"
        if key not in _MUTUAL_KEYS:
            raise TlsConfigurationError(
                f"{key or value!r} is not supported with caCertsDir (supported: "
                f"{', '.join(sorted(_MUTUAL_KEYS))})"
            )
        named[key] = value
    if "port" not in named:
        raise TlsConfigurationError("an ssl: listener needs a port")
    return SSL4ServerEndpoint(  # type: ignore[no-untyped-call]
        reactor, int(named["port"]), _mutual_tls_options(named),
        backlog=int(named.get("backlog", "50")), interface=named.get("interface", ""),
    )
