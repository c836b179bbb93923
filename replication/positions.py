"""Compatibility: positions moved to :mod:`replication.worker.positions`; this module
re-exports its public names."""

from replication.worker.positions import (
    DEFAULT_CAPACITY,
    FORMAT_VERSION,
    HEADER,
    HEADER_V1,
    HEADER_V3,
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
    "FORMAT_VERSION",
    "HEADER",
    "HEADER_V1",
    "HEADER_V3",
    "LOCAL_ORIGIN",
    "MemoryPositions",
    "OriginError",
    "PositionFile",
    "PositionFileError",
    "Positions",
    "PositionsError",
]
