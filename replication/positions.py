"""Compatibility: positions moved to :mod:`replication.worker.positions`; this module
re-exports its public names."""

from replication.worker.positions import (
    DEFAULT_CAPACITY,
    HEADER,
    HEADER_V1,
    LOCAL_ORIGIN,
    MemoryPositions,
    OriginError,
    PositionFile,
    PositionFileError,
    Positions,
    PositionsError,
)

__all__ = [
    "DEFAULT_CAPACITY",
    "HEADER",
    "HEADER_V1",
    "LOCAL_ORIGIN",
    "MemoryPositions",
    "OriginError",
    "PositionFile",
    "PositionFileError",
    "Positions",
    "PositionsError",
]
