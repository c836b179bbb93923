"""The configuration keys of the HTTP limits: ``http.max_connections``,
``http.idle_timeout``, ``http.request_timeout`` and ``limits.max_rows_per_publish``, their
defaults, bounds (checked at their edges) and where they end up."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from replication.config import ConfigError, master_config_from_text
from replication.config.sections import MAX_HTTP_CONNECTIONS, MAX_ROWS_PER_PUBLISH
from replication.http import admin_factory
from replication.master import Master
from replication.store.memory import MemoryStore


def test_the_defaults() -> None:
    """Without the keys: 256 HTTP connections, 60 s idle, 120 s per request, 100,000 rows."""
    config = master_config_from_text("{}")
    assert config.http_max_connections == 256
    assert config.http_idle_timeout == 60.0
    assert config.http_request_timeout == 120.0
    assert config.limits.max_rows_per_publish == 100_000


def test_the_keys_are_read_with_units() -> None:
    """The keys sit under ``http:`` beside ``listen`` and take duration strings."""
    config = master_config_from_text(
        "http:\n  listen: tcp:9999\n  max_connections: 7\n  idle_timeout: 500ms\n"
        "  request_timeout: 2m\nlimits:\n  max_rows_per_publish: 9\n"
    )
    assert config.http_listen == "tcp:9999"
    assert (config.http_max_connections, config.http_idle_timeout) == (7, 0.5)
    assert config.http_request_timeout == 120.0
    assert config.limits.max_rows_per_publish == 9


@pytest.mark.parametrize(
    "key, value, ok",
    [
        ("http.max_connections", 1, True),
        ("http.max_connections", 0, False),
        ("http.max_connections", MAX_HTTP_CONNECTIONS, True),
        ("http.max_connections", MAX_HTTP_CONNECTIONS + 1, False),
        ("limits.max_rows_per_publish", 1, True),
        ("limits.max_rows_per_publish", 0, False),
        ("limits.max_rows_per_publish", MAX_ROWS_PER_PUBLISH, True),
        ("limits.max_rows_per_publish", MAX_ROWS_PER_PUBLISH + 1, False),
        ("http.idle_timeout", 0.001, True),
        ("http.idle_timeout", 0, False),
        ("http.request_timeout", 0.001, True),
        ("http.request_timeout", -1, False),
    ],
)
def test_bounds_at_their_edges(key: str, value: float, ok: bool) -> None:
    """Each key accepts its bounds and refuses one past them with an error naming it."""
    section, name = key.split(".")
    text = f"{section}:\n  {name}: {value}\n"
    if ok:
        master_config_from_text(text)
    else:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            master_config_from_text(text)


def test_the_master_site_takes_its_limits_from_the_config() -> None:
    """admin_factory builds the site with the configured limits."""
    config = master_config_from_text(
        "http:\n  max_connections: 5\n  idle_timeout: 3s\n  request_timeout: 4s\n"
        "limits:\n  max_body_bytes: 2MiB\n"
    )
    factory = admin_factory(Master(config, MemoryStore(), Clock()))
    site = factory.wrappedFactory
    assert factory.max_connections == 5
    assert (site.timeOut, site.request_timeout, site.max_body_bytes) == (3.0, 4.0, 2 * 1024 * 1024)
