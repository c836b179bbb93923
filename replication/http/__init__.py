"""The HTTP interfaces (twisted.web): the master's publishing, status, health and metrics,
and a worker's metrics.

- :mod:`replication.http.routing`: the route table, which maps (method, path pattern) to a
  handler, answers every error as JSON and is where authentication will plug in;
- :mod:`replication.http.api`: the master's routes and their handlers, the worker's metrics
  route, and :func:`admin_site`, the master's site;
- :mod:`replication.http.limits`: what bounds an HTTP client (connections, idle time,
  request time, body size) and :class:`AdminSite`;
- :mod:`replication.http.status`: :func:`master_status`, what ``GET /status`` answers.
"""

from replication.http.api import (
    JsonRequest,
    admin_factory,
    admin_resource,
    admin_site,
    master_routes,
    metrics_resource,
)
from replication.http.status import master_status

__all__ = [
    "JsonRequest",
    "admin_factory",
    "admin_resource",
    "admin_site",
    "master_routes",
    "master_status",
    "metrics_resource",
]
