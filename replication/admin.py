"""Compatibility module: the HTTP interfaces moved to :mod:`replication.http`; this keeps
``replication.admin`` importable with the same public names."""

from replication.http import (
    JsonRequest,
    admin_resource,
    admin_site,
    master_status,
    metrics_resource,
)

__all__ = ["JsonRequest", "admin_resource", "admin_site", "master_status", "metrics_resource"]
