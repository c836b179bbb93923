"""Compatibility: the position file moved to :mod:`replication.worker.positions`; this module
re-exports its public names."""

from replication.worker.positions import (
    DEFAULT_CAPACITY,
    HEADER,
    HEADER_V1,
    PositionFile,
    PositionFileError,
)

__all__ = ["DEFAULT_CAPACITY", "HEADER", "HEADER_V1", "PositionFile", "PositionFileError"]
