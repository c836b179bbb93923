"""The HTTP interfaces (twisted.web): the master's publishing, status, health and metrics,
and a worker's metrics.

:mod:`replication.http.api` holds the resources and :func:`admin_site`, the master's site.
"""

from replication.http.api import (
    JsonRequest,
    admin_resource,
    admin_site,
    master_status,
    metrics_resource,
)

__all__ = ["JsonRequest", "admin_resource", "admin_site", "master_status", "metrics_resource"]
