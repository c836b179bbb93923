"""Rate limiting of repeated log lines: what a flood of identical warnings is cut down to.

:class:`LogRateLimiter` decides, per key (a stream, a peer, ...), whether a repeated message
is logged now: the first one is, then at most one per ``interval`` seconds, and the one that
is logged says how many were suppressed since the previous one. Pure: the time is passed in
and nothing here logs; the caller logs what :meth:`LogRateLimiter.allow` lets through.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final

#: The default interval between two lines of one key, in seconds.
DEFAULT_INTERVAL: Final = 60.0
#: The default number of keys remembered; the oldest key is forgotten past it (a flood of
#: distinct keys must not grow memory either).
DEFAULT_MAX_KEYS: Final = 1024


@dataclass(slots=True)
class _Key:
    logged_at: float
    suppressed: int


class LogRateLimiter:
    """Lets through the first message of a key, then at most one per ``interval`` seconds.

    :param interval: seconds between two messages of one key.
    :param max_keys: keys remembered at most; past it the least recently logged key is
        forgotten (its next message is logged as a first one).
    """

    def __init__(self, interval: float = DEFAULT_INTERVAL,
                 max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if interval < 0:
            raise ValueError(f"interval must be >= 0, got {interval!r}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys!r}")
        self.interval = interval
        self.max_keys = max_keys
        self._keys: dict[Hashable, _Key] = {}

    def allow(self, key: Hashable, now: float) -> int | None:
        """A message of ``key`` at time ``now``: ``None`` when it is to be suppressed,
        otherwise how many of that key were suppressed since the last one logged (0 for
        the first)."""
        state = self._keys.get(key)
        if state is None:
            if len(self._keys) >= self.max_keys:
                del self._keys[next(iter(self._keys))]
            self._keys[key] = _Key(now, 0)
            return 0
        if now - state.logged_at < self.interval:
            state.suppressed += 1
            return None
        suppressed = state.suppressed
        # Moved to the end: the dict's order is the order keys were last logged in.
        del self._keys[key]
        self._keys[key] = _Key(now, 0)
        return suppressed


def suppressed_note(suppressed: int) -> str:
    """The suffix of a rate-limited line: empty, or how many like it were not logged."""
    if not suppressed:
        return ""
    return f" ({suppressed} more like this suppressed)"


__all__ = ["DEFAULT_INTERVAL", "DEFAULT_MAX_KEYS", "LogRateLimiter", "suppressed_note"]
