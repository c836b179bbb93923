"""The history mark: what a master last knew its store to hold, kept in a small file beside
the store, so that a store that lost history is noticed instead of being taken as new.

A store replaced by an empty file, wiped, or restored from an old backup opens like any
other store: SQLite cannot tell. So the master records, in ``<database>.history`` (JSON,
replaced atomically), the store's origin id and each of its own streams' heads: when it
starts, periodically while it runs, when a stream is deleted, and when it stops cleanly.
When it starts again, :func:`check_history` compares the store with that mark: a different
origin id (a new or replaced store) or a stream whose head is below the recorded one (or
that is gone) is history lost, and the master refuses to start unless told to accept it.

Pure: no reactor, time passed in. The file holds::

    {"origin_id": "<id>", "heads": {"<stream>": <head>, ...}, "written_at": <seconds>}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from replication.store import StoreError

#: The suffix of the mark's file name: ``<database path>.history``.
SUFFIX = ".history"
#: How many lost streams a refusal lists by name.
LISTED = 5


class HistoryMarkError(StoreError):
    """The history mark file cannot be read or written: the message says why."""


class HistoryLost(StoreError):
    """The store holds less than the master recorded: the message says what was found."""


@dataclass(frozen=True, slots=True)
class HistoryMark:
    """The store's ``origin_id`` and the ``heads`` of its own origin's streams, as recorded
    at ``written_at`` (seconds since the epoch)."""

    origin_id: str
    heads: Mapping[str, int]
    written_at: float


def mark_path(database: str) -> str:
    """The mark file of the database at ``database``."""
    return database + SUFFIX


def read_mark(path: str) -> HistoryMark | None:
    """The mark in ``path``; ``None`` if there is none. Raises :class:`HistoryMarkError`
    for a file that cannot be read or is not a mark."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise HistoryMarkError(f"history mark {path}: cannot read: {e.strerror}") from None
    try:
        data = json.loads(text)
        origin_id = data["origin_id"]
        heads = data["heads"]
        written_at = data["written_at"]
        if not (
            isinstance(origin_id, str)
            and isinstance(heads, dict)
            and all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in heads.items())
            and isinstance(written_at, (int, float))
        ):
            raise ValueError("a field has the wrong type")
    except (ValueError, KeyError, TypeError) as e:
        raise HistoryMarkError(
            f"history mark {path}: not a history mark ({e}); remove it to start afresh"
        ) from None
    return HistoryMark(origin_id, dict(heads), float(written_at))


def write_mark(path: str, mark: HistoryMark) -> None:
    """Replace the mark in ``path`` atomically (a temporary file, fsync, rename). Raises
    :class:`HistoryMarkError`."""
    data = {"origin_id": mark.origin_id, "heads": dict(sorted(mark.heads.items())),
            "written_at": mark.written_at}
    temporary = path + ".tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as e:
        raise HistoryMarkError(f"history mark {path}: cannot write: {e.strerror}") from None


def check_history(
    mark: HistoryMark | None, origin_id: str | None, heads: Mapping[str, int], store: str
) -> None:
    """Raise :class:`HistoryLost` if the store at ``store``, with ``origin_id`` (``None``:
    the store's file does not exist) and ``heads`` (its own streams), holds less than
    ``mark`` recorded; no mark: nothing to compare, nothing raised."""
    if mark is None:
        return
    if origin_id is None:
        raise HistoryLost(
            f"the store {store} does not exist, but this master recorded origin id "
            f"{mark.origin_id} for it (with {len(mark.heads)} streams): the file was removed "
            "or moved, or store.path / data_dir changed"
        )
    if mark.origin_id != origin_id:
        raise HistoryLost(
            f"the store {store} has origin id {origin_id}, but this master recorded origin id "
            f"{mark.origin_id} for it (with {len(mark.heads)} streams): the store was replaced, "
            "emptied or wiped, and the rows it held are not in it"
        )
    behind = [
        (name, heads.get(name), recorded)
        for name, recorded in sorted(mark.heads.items())
        if heads.get(name, 0) < recorded
    ]
    if behind:
        listed = "; ".join(
            f"{name}: {'missing' if head is None else f'head {head}'}, recorded {recorded}"
            for name, head, recorded in behind[:LISTED]
        )
        more = f" and {len(behind) - LISTED} more" if len(behind) > LISTED else ""
        raise HistoryLost(
            f"the store {store} holds less than this master recorded: {len(behind)} "
            f"stream(s) went backwards ({listed}{more}): its recent history is gone (an old "
            "backup, or a file changed outside the master)"
        )


__all__ = [
    "HistoryLost",
    "HistoryMark",
    "HistoryMarkError",
    "check_history",
    "mark_path",
    "read_mark",
    "write_mark",
]
