"""The duration and size syntax of configuration values, and how a value is named in errors.

Pure functions: :func:`parse_duration` and :func:`parse_size` read what a person writes
(``"500ms"``, ``"8MiB"``), :func:`format_duration` and :func:`format_size` write it back (for
the generated reference), and :func:`describe` names any value as it was written in YAML.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Final

_NUMBER = r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_DURATION = re.compile(_NUMBER + r"\s*(?P<unit>ms|s|m|h|d)?")
_SIZE = re.compile(_NUMBER + r"\s*(?P<unit>B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?")

_DURATION_UNITS: Final[dict[str, Fraction]] = {
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
    "d": Fraction(86400),
}
_SIZE_UNITS: Final = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}


def parse_duration(value: object) -> float:
    """Return a positive duration in seconds, or raise :class:`ValueError`.

    ``value`` is a number of seconds (``int`` or ``float``, not ``bool``) or a string: a
    number with an optional unit ``ms``, ``s``, ``m``, ``h`` or ``d`` (``"500ms"``,
    ``"1.5s"``, ``"2m"``, ``"7d"``; no unit means seconds). It must be finite and > 0.
    """
    if isinstance(value, bool):
        raise ValueError(f"a duration must be a number of seconds, got {describe(value)}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise ValueError(
                f"a duration must be a number of seconds or a number with a unit "
                f"(ms, s, m, h, d) like '500ms' or '5s', got {value!r}"
            )
        unit = match["unit"] or "s"
        seconds = float(Fraction(match["number"]) * _DURATION_UNITS[unit])
    else:
        raise ValueError(f"a duration must be a number of seconds, got {describe(value)}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be greater than 0, got {describe(value)}")
    return seconds


def parse_size(value: object) -> int:
    """Return a positive number of bytes, or raise :class:`ValueError`.

    ``value`` is a positive ``int`` (not ``bool``) or a string: a number with an optional unit
    ``B``, ``KiB``, ``MiB``, ``GiB``, ``TiB`` (powers of 1024) or ``KB``, ``MB``, ``GB``,
    ``TB`` (powers of 1000), e.g. ``"64KiB"``, ``"1.5MiB"``, ``"512B"``. The result must be a
    whole number of bytes greater than 0.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"a size must be a number of bytes, got {describe(value)}")
    if isinstance(value, int):
        size = Fraction(value)
    else:
        match = _SIZE.fullmatch(value.strip())
        if match is None:
            raise ValueError(
                f"a size must be a number of bytes or a number with a unit (B, KiB, MiB, GiB, "
                f"KB, MB, GB) like '64KiB' or '8MiB', got {value!r}"
            )
        size = Fraction(match["number"]) * _SIZE_UNITS[match["unit"] or "B"]
    if size.denominator != 1:
        raise ValueError(f"a size must be a whole number of bytes, got {value!r}")
    if size <= 0:
        raise ValueError(f"a size must be greater than 0, got {value!r}")
    return int(size)


def format_duration(seconds: float) -> str:
    """``seconds`` as a duration string: ``500ms`` below a second when exact, else ``5s``."""
    milliseconds = round(seconds * 1000)
    if seconds < 1 and milliseconds / 1000 == seconds:
        return f"{milliseconds}ms"
    return f"{seconds:g}s"


def format_size(size: int) -> str:
    """``size`` in the largest power-of-1024 unit that divides it: ``64KiB``, ``8MiB``."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        count, rest = divmod(size, _SIZE_UNITS[unit])
        if rest == 0 and count > 0:
            return f"{count}{unit}"
    return f"{size}B"


def describe(value: object) -> str:
    """``value`` as a person who wrote the YAML would recognise it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, int | float | str):
        return repr(value)
    return f"{type(value).__name__} {value!r}"
