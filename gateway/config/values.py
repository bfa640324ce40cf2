"""Scalar value parsers shared by every config section: durations, sizes, ${ENV} interpolation.

Each parser raises ``ValueError`` with a message meant to follow ``key.path: `` in the report.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Final

_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_SIZE_UNITS: Final = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE_RE: Final = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")
_ENV_RE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def parse_duration(value: object) -> float:
    """``"30s"``, ``"15m"``, ``"2h"``, ``"400d"``, ``"250ms"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '30s', '15m' or '2h'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.match(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ValueError("expected a duration like '30s', '15m' or '2h'")
    if not math.isfinite(seconds):
        raise ValueError("duration must be a finite number")
    if seconds < 0:
        raise ValueError("duration must not be negative")
    return seconds


def parse_size(value: object) -> int:
    """``"16KiB"``, ``"1MiB"``, ``"10MB"`` or a number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size like '16KiB' or '1MiB'")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE_RE.match(value)):
        unit = match.group(2).lower()
        if unit not in _SIZE_UNITS:
            raise ValueError(f"unknown size unit {match.group(2)!r} (use B, KiB, MiB, GiB, KB, MB, GB)")
        size = int(match.group(1)) * _SIZE_UNITS[unit]
    else:
        raise ValueError("expected a size like '16KiB' or '1MiB'")
    if size < 0:
        raise ValueError("size must not be negative")
    return size


def interpolate_env(
    text: str, environ: Mapping[str, str] | None = None, *, sink: list[str] | None = None
) -> tuple[str, bool]:
    """Replace ``${VAR}`` / ``${VAR:-default}``; returns the text and whether the environment
    supplied any part of it (such values are masked when the config is printed).

    A missing variable without a default is an error naming the variable (never its value).
    """
    env = os.environ if environ is None else environ
    missing: list[str] = []
    from_env: list[str] = []
    secrets_seen: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if value is not None and (value or default is None):
            from_env.append(name)
            secrets_seen.append(value)
            return value
        if default is not None:  # shell semantics: unset or empty takes the default
            return default
        missing.append(name)
        return ""

    result = _ENV_RE.sub(substitute, text)
    if missing:
        raise ValueError(f"environment variable {missing[0]} is not set")
    if sink is not None:
        sink.extend(secrets_seen)
    return result, bool(from_env)
