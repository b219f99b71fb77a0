"""Cache tier declarations: `--cache KIND:[DIR[,DIR...]:]SIZE[:key=value...]`, policies.

    mem:8GiB
    ssd:/nvme0/cachefs,/nvme1/cachefs:400GiB:high=0.95:low=0.85
    hdd:/data/cachefs:4TiB:min_free=0.1:min_free_inodes=0.05

Tiers are listed fastest first. Paths may not contain ':' or ','. In TOML, `cache` is a list of
such strings; in the environment, CACHEFS_CACHE holds them separated by ';'.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cachefs.units import parse_size

KINDS = ("mem", "ssd", "hdd")

# Watermarks as fractions of a tier's quota. Eviction starts above `high` and stops at `low`: a gap
# of 10% of the quota lets one eviction pass free room for many blocks instead of one at a time.
DEFAULT_HIGH = 0.95
DEFAULT_LOW = 0.85
# Leave this much of a disk tier's filesystem free (bytes, inodes), whatever the quota says: the
# filesystem may be shared with checkpoints and logs.
DEFAULT_MIN_FREE = 0.05
DEFAULT_MIN_FREE_INODES = 0.02

EVICTION_POLICIES = ("lru", "scan-resistant")


@dataclass(frozen=True)
class TierSpec:
    kind: str
    dirs: tuple[str, ...]
    quota: int
    high: float = DEFAULT_HIGH
    low: float = DEFAULT_LOW
    min_free: float = DEFAULT_MIN_FREE
    min_free_inodes: float = DEFAULT_MIN_FREE_INODES

    @property
    def name(self) -> str:
        return self.kind


def _fraction(key: str, text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"{key}={text!r} is not a number") from None
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{key}={text!r} must be between 0 and 1")
    return v


def parse_tier(text: str) -> TierSpec:
    parts = str(text).split(":")
    kind = parts[0].strip().lower()
    if kind not in KINDS:
        raise ValueError(f"tier {text!r}: kind must be one of {', '.join(KINDS)}")
    rest = parts[1:]
    options = [p for p in rest if "=" in p]
    plain = [p for p in rest if "=" not in p]
    if kind == "mem":
        if len(plain) != 1:
            raise ValueError(f"tier {text!r}: want mem:SIZE[:high=F:low=F]")
        dirs: tuple[str, ...] = ()
        size_text = plain[0]
    else:
        if len(plain) != 2:
            raise ValueError(f"tier {text!r}: want {kind}:DIR[,DIR...]:SIZE[:key=value...]")
        dirs = tuple(d.strip() for d in plain[0].split(",") if d.strip())
        if not dirs or any(not d.startswith("/") for d in dirs):
            raise ValueError(f"tier {text!r}: directories must be absolute paths")
        if len(set(dirs)) != len(dirs):
            raise ValueError(f"tier {text!r}: a directory is listed twice")
        size_text = plain[1]
    quota = parse_size(size_text)
    values: dict[str, float] = {}
    for opt in options:
        key, _, value = opt.partition("=")
        key = key.strip()
        if key not in ("high", "low", "min_free", "min_free_inodes") or (kind == "mem" and key.startswith("min_free")):
            raise ValueError(f"tier {text!r}: unknown setting {key!r}")
        values[key] = _fraction(key, value.strip())
    spec = TierSpec(kind, dirs, quota, **values)
    if not 0 < spec.low <= spec.high:
        raise ValueError(f"tier {text!r}: need 0 < low <= high (low={spec.low}, high={spec.high})")
    return spec


def parse_tiers(value: Any) -> tuple[TierSpec, ...]:
    """A list of tier strings (flags, TOML) or one ';'-separated string (environment)."""
    items = value.split(";") if isinstance(value, str) else list(value)
    tiers = tuple(parse_tier(item) for item in items if str(item).strip())
    if not tiers:
        raise ValueError("at least one tier is needed")
    seen: set[str] = set()
    for t in tiers:
        for d in t.dirs:
            if d in seen:
                raise ValueError(f"directory {d} is used by two tiers")
            seen.add(d)
    return tiers


def parse_promotion(text: Any) -> int:
    """'never' -> 0, 'on-hit' -> 1, 'after:N' -> N: hits in a slower tier before moving up."""
    t = str(text).strip().lower()
    if t == "never":
        return 0
    if t == "on-hit":
        return 1
    m = re.fullmatch(r"after:(\d+)", t)
    if m and int(m.group(1)) >= 1:
        return int(m.group(1))
    raise ValueError(f"invalid promotion {text!r} (use never, on-hit or after:N)")
