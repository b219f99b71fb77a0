"""Sizes and durations as people write them ('4MiB', '0.5'), parsed and printed; shared by the
configuration, the cache tier declarations and the command line."""
from __future__ import annotations

import re
from typing import Any

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
_UNITS = {"": 1, "b": 1, "k": KiB, "kb": 1000, "kib": KiB, "m": MiB, "mb": 1000**2, "mib": MiB,
          "g": GiB, "gb": 1000**3, "gib": GiB, "t": TiB, "tb": 1000**4, "tib": TiB}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """'4MiB' -> 4194304. Binary for K/M/G/T and KiB.., decimal for KB/MB/.. ."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError("must not be negative")
        return text
    m = _SIZE_RE.match(str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"invalid size {text!r} (use e.g. 4MiB, 512KiB, 10GiB or plain bytes)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def parse_seconds(text: Any) -> float:
    """A duration in seconds, >= 0 ('0.5', 30)."""
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"invalid number of seconds {text!r}") from None
    if v < 0 or v != v:
        raise ValueError(f"must be >= 0 seconds, got {text!r}")
    return v
