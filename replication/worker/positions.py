"""Where a worker records the last token it handled, per stream and origin: the
:class:`Positions` interface, its in-memory implementation :class:`MemoryPositions`, and the
position file :class:`PositionFile`, which keeps them on disk.

Positions are keyed by stream and origin (the master that accepted the token). A worker
following one master records every position under the local origin: ``origin=None``
(:data:`LOCAL_ORIGIN`), the default of every method. A worker of a cluster also records
positions of other origins, named by their origin id (16 to 64 characters of ``A-Z a-z 0-9
- _``, checked by :func:`replication.cluster.identity.check_origin_id`; a malformed one is
refused with :class:`OriginError`). The positions of one stream, by origin, are its
**position vector** (:meth:`Positions.vector`), which a worker of a cluster sends when it
asks a master for everything after it.

The position file
-----------------

The file is a journal of text lines followed by NUL bytes up to its preallocated size::

    # replication positions v3
    events 41
    receipts 7
    events 12 Xq3v9kLmN0pQrStUvWxYz1
    events 42
    \\0\\0\\0\\0 ... (up to ``capacity`` bytes, 4 MiB by default)

The first line names the format; each later line records a position, and the last line
for a (stream, origin) is its position: ``<stream> <token>`` for the local origin,
``<stream> <token> <origin id>`` for another origin. The file is preallocated
(``posix_fallocate``) and mapped into the worker's memory (``mmap``, shared), and recording
a position copies one line into the mapping after the previous one: no system call, so it
stays cheap on the per-token path.

A worker that follows one master binds its local positions to that master's origin id the
first time it meets it in protocol version 2 (see :mod:`replication.worker.connection`,
"Positions recorded before origins"): the binding is the line ``@local <origin id>`` of a v3
file (:attr:`PositionFile.local_origin`), written once, never changed. From then on the
local lines *are* that origin's positions (``get``, ``set`` and ``vector`` with its id read
and write them), so a worker of one master keeps writing ``<stream> <token>`` lines, and
only the positions of other origins carry an origin id.

Formats: v1 (the same local lines, without NUL padding) and v2 (the journal, local lines
only) are read and converted. Every compaction (below) writes the oldest format that holds
the positions: v2 while they are all local, v3 once a position of another origin is
recorded; recording the first one compacts the file into v3 at once (the header is never
changed in place). v3 only when needed, rather than always, because a worker that never
joins a cluster then keeps a file that the releases before origins read too, so it can be
rolled back; the price is one extra compaction in the life of a clustered worker's file. A
v3 file is refused, and left as it is, by code that knows only v2 (its message: not a
position file). A file of a newer format than this code knows is refused with a message
naming both versions, and left untouched.

What survives what:

* **The worker process dying** at any instant (even ``SIGKILL``): every position recorded
  before it died is kept. The mapping is the operating system's page cache of the file, so
  a line copied into it belongs to the file as soon as :meth:`PositionFile.set` returns,
  whether or not the process lives on; at most the token being handled when it died is
  handled again. A line the process was killed in the middle of copying is incomplete
  (its newline, or a byte before it, is still NUL) and is ignored.
* **A power cut or an operating system crash**: :meth:`PositionFile.sync` writes the mapped
  pages to the disk (``msync``); the worker's service calls it every second, off the
  per-token path, so the positions on disk are at most about a second old. Positions
  recorded after the last sync may or may not have reached the disk, and since the kernel
  writes pages back in any order the file may then hold a run of NUL bytes followed by some
  later lines: reading stops at the first NUL byte, and the text after the last complete
  line before it is dropped. The positions read are then at least those of the last sync;
  the tokens handled since are handled again. Because the v3 header is only ever written by
  a compaction (fsynced before any line of another origin is appended after it), a v2 header
  above a line with an origin cannot happen, even after a power cut.

When a line does not fit in the space left, the file is compacted: the positions, one line
per (stream, origin), are written to ``<path>.tmp``, which is preallocated (to twice the
size if they would fill more than half of it), fsynced, and renamed over the file; the
directory is fsynced too, so the file on disk is always complete. Opening the file does the
same after reading it, so a torn last line is dropped and a file of an older format is
converted. Recording the first position of another origin in a v2 file compacts it too, into
a v3 file: once per file, not on the steady per-token path.

A file that exists but is not a position file, or has a damaged line (a line with an origin
in a v1 or v2 file, or a malformed origin id, is damaged), stops the worker with a clear
message; it is never overwritten or deleted. Only one process may use a position file at a
time: it holds an exclusive lock (``flock``) on ``<path>.lock`` while the file is open, and
a second worker given the same file stops with a message naming the holder's process id,
rather than both recording positions into one file. The file must not be edited, truncated
or replaced while the worker runs (truncating a mapped file makes the worker's next store
fault). Preallocation makes a full disk an error when the file is opened or compacted
rather than on a store; on copy-on-write file systems (btrfs, ZFS) it cannot fully
guarantee that.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import re
from collections.abc import Callable, Mapping
from typing import BinaryIO, Protocol

from replication.cluster.identity import ID_PATTERN, IdentityError, check_origin_id

HEADER_V1 = b"# replication positions v1\n"
#: The header of a file of local positions only (the format since the journal).
HEADER = b"# replication positions v2\n"
#: The header of a file with positions of other origins too.
HEADER_V3 = b"# replication positions v3\n"

#: The newest format this code reads and writes.
FORMAT_VERSION = 3

_HEADERS: Mapping[int, bytes] = {1: HEADER_V1, 2: HEADER, 3: HEADER_V3}
_HEADER_PATTERN = re.compile(rb"# replication positions v([0-9]+)\n")

#: The most digits a token has (tokens are below 10**19, as the protocol's).
MAX_TOKEN_DIGITS = 19

#: The default size of the file, preallocated; it is compacted when full.
DEFAULT_CAPACITY = 4 * 1024 * 1024


#: The origin of a position recorded without one: the master this worker follows.
LOCAL_ORIGIN = None


class PositionsError(Exception):
    """Positions cannot be read or recorded (closed, or the storage failed)."""


class PositionFileError(PositionsError):
    """The position file cannot be read or written; the message names the path."""


class PositionFileLocked(PositionFileError):
    """The position file is held by another process (a running worker): ``holder`` is its
    process id as written in the lock file (``"?"`` if unknown)."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


class OriginError(PositionsError, ValueError):
    """An origin that positions cannot be kept for: a malformed origin id."""


def _check_origin(origin: str) -> None:
    """Raise :class:`OriginError` unless ``origin`` is a well-formed origin id."""
    try:
        check_origin_id(origin)
    except IdentityError as e:
        raise OriginError(f"no position can be kept for a malformed origin: {e}") from None


class Positions(Protocol):
    """The last token handled per stream and origin, as the worker's token runner records
    them: :meth:`set` is on the per-token path and must be cheap; :meth:`sync` makes what
    was recorded durable and is called about once a second; after :meth:`close`, :meth:`set`
    raises :class:`PositionsError`.

    ``origin`` is the master that accepted the token: ``None`` (:data:`LOCAL_ORIGIN`, the
    default) is the master this worker follows, any other origin is named by its origin id;
    a malformed id raises :class:`OriginError`.
    """

    def get(self, stream: str, origin: str | None = LOCAL_ORIGIN) -> int | None:
        """The last token of ``origin`` handled on ``stream``, or ``None`` if the worker
        never saw one."""
        ...

    def set(self, stream: str, token: int, origin: str | None = LOCAL_ORIGIN) -> None:
        """Record ``token`` of ``origin`` as handled on ``stream`` (lower than before after a
        reset)."""
        ...

    def vector(self, stream: str) -> dict[str | None, int]:
        """The position vector of ``stream``: its position for each origin recorded
        (``None`` for the local origin); empty if the worker never saw the stream."""
        ...

    # Optional (the built-in implementations have them; the worker keeps a binding in
    # memory only for positions without them):
    #
    #   local_origin: str | None
    #       the origin id the local positions belong to, once bound;
    #   def bind_local_origin(self, origin: str) -> None
    #       record it (once: binding again to another origin raises OriginError).

    def sync(self) -> None:
        """Make the positions recorded so far durable."""
        ...

    def close(self) -> None:
        """Release what the positions hold; later calls do nothing."""
        ...


class MemoryPositions:
    """:class:`Positions` kept in memory only, for tests and for workers whose handler
    keeps its own positions: lost when the process ends.

    :param initial: local positions to start from, by stream.
    """

    def __init__(self, initial: Mapping[str, int] | None = None) -> None:
        self._positions: dict[str, int] = dict(initial or {})
        self._origins: dict[str, dict[str, int]] = {}
        self._closed = False
        #: The origin id the local positions belong to, once bound.
        self.local_origin: str | None = None

    def get(self, stream: str, origin: str | None = LOCAL_ORIGIN) -> int | None:
        if origin is None or origin == self.local_origin:
            return self._positions.get(stream)
        return _get_origin(self._origins, stream, origin)

    def bind_local_origin(self, origin: str) -> None:
        """Record that the local positions belong to ``origin`` (once): from then on they
        are that origin's (see :func:`_merge_bound`)."""
        _check_binding(self.local_origin, origin)
        self.local_origin = origin
        _merge_bound(self._positions, self._origins, origin)

    def set(self, stream: str, token: int, origin: str | None = LOCAL_ORIGIN) -> None:
        if self._closed:
            raise PositionsError("positions are closed")
        if origin is None or origin == self.local_origin:
            self._positions[stream] = token
        else:
            _set_origin(self._origins, stream, token, origin)

    def vector(self, stream: str) -> dict[str | None, int]:
        return _vector(self._positions, self._origins, stream, self.local_origin)

    def all(self) -> Mapping[str, int]:
        """The local positions, by stream."""
        return dict(self._positions)

    def sync(self) -> None:
        """Nothing to make durable."""

    def close(self) -> None:
        self._closed = True


def _check_binding(bound: str | None, origin: str) -> None:
    """Refuse a malformed origin, or a binding to another origin than the one recorded."""
    _check_origin(origin)
    if bound is not None and bound != origin:
        raise OriginError(
            f"the local positions belong to origin {bound}; they cannot be bound to {origin}"
        )


def _get_origin(origins: dict[str, dict[str, int]], stream: str, origin: str) -> int | None:
    """The position of ``origin`` on ``stream`` in ``origins`` (stream -> origin -> token);
    an origin never recorded is checked, so a malformed one is refused, not just unknown."""
    token = origins.get(stream, {}).get(origin)
    if token is None:
        _check_origin(origin)
    return token


def _set_origin(origins: dict[str, dict[str, int]], stream: str, token: int, origin: str) -> None:
    """Record ``token`` of ``origin`` on ``stream`` in ``origins``, checking an origin not
    yet recorded on the stream."""
    vector = origins.get(stream)
    if vector is None or origin not in vector:
        _check_origin(origin)
        if vector is None:
            vector = origins[stream] = {}
    vector[origin] = token


def _vector(
    local: Mapping[str, int], origins: Mapping[str, Mapping[str, int]], stream: str,
    bound: str | None = None,
) -> dict[str | None, int]:
    """The position vector of ``stream``: ``local``'s position under the origin it is bound
    to (``None`` while unbound) and each of ``origins``' under its origin id."""
    vector: dict[str | None, int] = {
        origin: token for origin, token in origins.get(stream, {}).items()
    }
    token = local.get(stream)
    if token is not None:
        vector[bound] = token
    return vector


def _merge_bound(local: dict[str, int], origins: dict[str, dict[str, int]], bound: str) -> None:
    """Once the local positions are bound to ``bound`` they *are* that origin's: positions
    recorded under its id before (by origin) join them, the higher token winning, so that
    one (stream, origin) never has two positions."""
    for stream, by_origin in list(origins.items()):
        token = by_origin.pop(bound, None)
        if token is not None and token > local.get(stream, 0):
            local[stream] = token
        if not by_origin:
            del origins[stream]


def _failure(path: str, what: str) -> PositionFileError:
    return PositionFileError(
        f"position file {path} {what}; move it aside to start over, or restore it"
    )


#: The first word of the line of a v3 file that binds the local positions to an origin id.
LOCAL_BINDING = b"@local"


def _parse(
    path: str, raw: bytes
) -> tuple[int, dict[str, int], dict[str, dict[str, int]], str | None]:
    """The format version, the local positions, the other origins' positions and the
    origin the local positions are bound to (``None``: not bound) of the bytes ``raw`` of
    the position file ``path``; raises :class:`PositionFileError` for a file that is not a
    position file, has a damaged line or is of a newer format."""
    match = _HEADER_PATTERN.match(raw)
    version = int(match[1]) if match is not None else 0
    if version > FORMAT_VERSION:
        raise PositionFileError(
            f"position file {path} is of format v{version}, newer than this version "
            f"of replication reads (v1 to v{FORMAT_VERSION}); run the newer version, or "
            "move the file aside to start over"
        )
    if match is None or match[0] != _HEADERS.get(version):
        raise _failure(path, "is not a position file (its first line is not "
                       f"{HEADER_V3.decode().strip()!r} or an older format's)")
    # The journal ends at the first NUL: the preallocated space never written, or a gap
    # of pages not written back before a power cut (what follows it was not synced).
    body = raw[match.end():]
    end = body.find(b"\0")
    if end >= 0:
        body = body[:end]
    lines = body.split(b"\n")
    lines.pop()  # the text after the last newline: empty, or a line cut short
    positions: dict[str, int] = {}
    origins: dict[str, dict[str, int]] = {}
    bound: str | None = None
    for number, line in enumerate(lines, start=2):
        parts = line.split(b" ")
        if parts[0] == LOCAL_BINDING and version >= 3:
            origin = parts[1].decode("ascii", "replace") if len(parts) == 2 else ""
            if ID_PATTERN.fullmatch(origin) is None or bound not in (None, origin):
                raise _failure(path, f"has a damaged line {number}: {line[:80]!r}")
            bound = origin
            continue
        if len(parts) >= 2 and parts[1].isdigit() and len(parts[1]) > MAX_TOKEN_DIGITS:
            raise _failure(
                path,
                f"has a token of {len(parts[1])} digits on line {number} (at most "
                f"{MAX_TOKEN_DIGITS}): {line[:80]!r}",
            )
        if len(parts) == 2 and parts[1].isdigit():
            positions[parts[0].decode("utf-8", "replace")] = int(parts[1])
            continue
        if len(parts) == 3 and version >= 3 and parts[1].isdigit():
            origin = parts[2].decode("ascii", "replace")
            if ID_PATTERN.fullmatch(origin) is not None:
                stream = parts[0].decode("utf-8", "replace")
                origins.setdefault(stream, {})[origin] = int(parts[1])
                continue
        raise _failure(path, f"has a damaged line {number}: {line[:80]!r}")
    return version, positions, origins, bound


def read_positions(path: str) -> tuple[int, dict[str, int], dict[str, dict[str, int]]]:
    """Read the position file ``path`` without taking its lock or changing it (a running
    worker may hold it; what it recorded is in the file as soon as it was recorded): its
    format version, the local positions by stream, and other origins' positions by stream
    and origin id. Raises :class:`PositionFileError` for a missing, unreadable or damaged
    file. For tools (``replication positions``); a worker opens :class:`PositionFile`."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise PositionFileError(f"cannot read position file {path}: {e.strerror or e}") from None
    version, local, origins, _ = _parse(os.path.abspath(path), raw)
    return version, local, origins


def read_local_origin(path: str) -> str | None:
    """The origin id the local positions of the position file ``path`` are bound to
    (``None``: not bound), read as :func:`read_positions` reads."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise PositionFileError(f"cannot read position file {path}: {e.strerror or e}") from None
    return _parse(os.path.abspath(path), raw)[3]


def lock_holder(path: str) -> str | None:
    """The process id (as text) of the process holding the lock of the position file
    ``path``, or ``None`` when no process holds it. Takes the lock for an instant to find
    out, and never creates the lock file."""
    try:
        fd = os.open(f"{os.path.abspath(path)}.lock", os.O_RDWR)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PositionFileError(
            f"cannot open the lock of position file {path}: {e.strerror or e}"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _preallocate(fd: int, size: int) -> None:
    """Reserve ``size`` bytes of disk for the file open on ``fd`` (zero-filled)."""
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, 0, size)
        return
    chunk = bytes(min(size, 1 << 20))
    offset = 0
    while offset < size:
        offset += os.pwrite(fd, chunk[: size - offset], offset)


class PositionFile:
    """:class:`Positions` of one worker in a file, loaded at start and recorded on every
    change (see the module's documentation for the format and what survives what).

    :param path: the file; its directory is created if missing.
    :param fsync: make :meth:`sync` flush to the disk (survives power loss). Off, positions
        are still safe when the process dies, but a power cut may lose recent ones.
    :param capacity: the size in bytes the file is preallocated to; when the journal fills
        it, it is compacted (and the capacity doubled if the compact positions take more
        than half of it).
    """

    def __init__(self, path: str, fsync: bool = True, capacity: int = DEFAULT_CAPACITY) -> None:
        self.path = os.path.abspath(path)
        self.fsync = fsync
        self.capacity = max(int(capacity), 1)
        self._positions: dict[str, int] = {}
        self._origins: dict[str, dict[str, int]] = {}
        #: The origin id the local positions belong to, once bound (the ``@local`` line).
        self.local_origin: str | None = None
        #: The header of the file mapped now: HEADER (v2) or HEADER_V3.
        self.header = HEADER
        self._mm: mmap.mmap | None = None
        self._write: Callable[[bytes], int] = self._closed_write
        self._synced = 0  # the offset in the mapping up to which it was last flushed
        self._lock_file: BinaryIO | None = None
        self._lock()
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        """Take the exclusive lock on ``<path>.lock`` (kept until :meth:`close`, released by
        the kernel if the process dies), or fail naming the process that holds it."""
        lock_path = f"{self.path}.lock"
        try:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # a new directory
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise self._error("open", e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise PositionFileLocked(
                f"position file {self.path} is in use by another process (pid {holder}); "
                "give each worker its own position file",
                holder,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        # A file object, so that a PositionFile dropped without close() still lets go.
        self._lock_file = os.fdopen(fd, "r+b", buffering=0)

    def _fail(self, what: str) -> PositionFileError:
        return _failure(self.path, what)

    def _error(self, doing: str, e: OSError) -> PositionFileError:
        return PositionFileError(f"cannot {doing} position file {self.path}: {e.strerror or e}")

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            self._compact()
            return
        except OSError as e:
            raise self._error("read", e) from None
        _, self._positions, self._origins, self.local_origin = _parse(self.path, raw)
        # Always start from a fresh compact file: drops a torn line, converts v1 and v2.
        self._compact()
    def get(self, stream: str, origin: str | None = LOCAL_ORIGIN) -> int | None:
        """The last token of ``origin`` handled on ``stream``, or ``None`` if the worker
        never saw one."""
        if origin is not None and origin != self.local_origin:
            return _get_origin(self._origins, stream, origin)
        return self._positions.get(stream)

    def vector(self, stream: str) -> dict[str | None, int]:
        """The position vector of ``stream``, by origin (the local positions under the
        origin they are bound to, ``None`` while unbound)."""
        return _vector(self._positions, self._origins, stream, self.local_origin)

    def all(self) -> Mapping[str, int]:
        """The local positions, by stream."""
        return dict(self._positions)

    def set(self, stream: str, token: int, origin: str | None = LOCAL_ORIGIN) -> None:
        """Record ``token`` of ``origin`` as handled on ``stream``: one line copied into the
        mapped file (no system call), or a compaction when the file is full (or when it
        becomes v3)."""
        if origin is not None and origin != self.local_origin:
            self._set_origin(stream, token, origin)
            return
        line = f"{stream} {token}\n".encode()
        self._positions[stream] = token
        try:
            self._write(line)
        except ValueError:  # mmap.write: "data out of range", or the mapping is closed
            self._full()

    def bind_local_origin(self, origin: str) -> None:
        """Record that the local positions belong to ``origin``: the file is compacted (as
        v3, with the ``@local`` line) once; binding again to the same origin does nothing,
        to another one raises :class:`OriginError`."""
        _check_binding(self.local_origin, origin)
        if self.local_origin == origin:
            return
        self.local_origin = origin
        _merge_bound(self._positions, self._origins, origin)
        self._full()

    def _set_origin(self, stream: str, token: int, origin: str) -> None:
        _set_origin(self._origins, stream, token, origin)
        if self.header is not HEADER_V3:
            self._full()  # rewrites the file as v3, with this position
            return
        try:
            self._write(f"{stream} {token} {origin}\n".encode())
        except ValueError:
            self._full()

    def _full(self) -> None:
        if self._mm is None or self._mm.closed:
            raise PositionFileError(f"position file {self.path} is closed")
        # The positions (with the one just set) go to a new compact file.
        self._compact()

    def _closed_write(self, data: bytes) -> int:
        raise ValueError("closed")

    def sync(self) -> None:
        """Flush recorded positions to the disk (when ``fsync`` is on)."""
        mm = self._mm
        if mm is None or mm.closed:
            return
        offset = mm.tell()
        if offset != self._synced and self.fsync:
            try:
                mm.flush()
            except OSError as e:
                raise self._error("sync", e) from None
        self._synced = offset

    def _content(self) -> tuple[bytes, bytes]:
        """The header and the compact journal of the positions: one line per (stream,
        origin), by stream, the local origin first; v2 unless another origin is recorded."""
        lines: list[str] = []
        if self.local_origin is not None:
            lines.append(f"{LOCAL_BINDING.decode()} {self.local_origin}\n")
        for stream in sorted(self._positions.keys() | self._origins.keys()):
            token = self._positions.get(stream)
            if token is not None:
                lines.append(f"{stream} {token}\n")
            for origin, token in sorted(self._origins.get(stream, {}).items()):
                lines.append(f"{stream} {token} {origin}\n")
        v3 = self._origins or self.local_origin is not None
        return (HEADER_V3 if v3 else HEADER), "".join(lines).encode()

    def _compact(self) -> None:
        """Write every position to a preallocated temporary file, fsync it, rename it over
        the file, fsync the directory, and map the new file in place of the old one."""
        directory = os.path.dirname(self.path)
        temporary = f"{self.path}.tmp"
        header, journal = self._content()
        content = header + journal
        capacity = self.capacity
        while len(content) > capacity // 2:
            capacity *= 2
        renamed = False
        mm: mmap.mmap | None = None
        try:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _preallocate(fd, capacity)
                os.pwrite(fd, content, 0)
                os.fsync(fd)
                mm = mmap.mmap(fd, capacity)
            finally:
                os.close(fd)  # the mapping holds its own reference to the file
            os.replace(temporary, self.path)
            renamed = True
        except OSError as e:
            if mm is not None:
                mm.close()
            if not renamed:
                try:
                    os.unlink(temporary)
                except OSError:
                    pass
            raise self._error("write", e) from None
        # The path now names the new file: switch to it before anything else can fail.
        mm.seek(len(content))
        old = self._mm
        self._mm = mm
        self._write = mm.write
        self._synced = len(content)
        self.capacity = capacity
        self.header = header
        if old is not None:
            old.close()
        try:
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise self._error("write", e) from None

    def close(self) -> None:
        """Unmap the file (recorded positions stay in it) and release its lock; later calls
        do nothing."""
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        self._write = self._closed_write
        if self._lock_file is not None:
            self._lock_file.close()  # releases the lock
            self._lock_file = None
