"""A queue's rate limit, as the config writes it ("20/s", "600/m", "5000/h") and as a value."""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_COUNT = 1_000_000  # starts per period, and the burst: a bucket's level stays a 64-bit integer
_PERIODS = {"s": 1, "m": 60, "h": 3600}
_RATE = re.compile(r"(\d+)/([smh])")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `burst` starts at once, and `count` per `period` seconds on average."""

    count: int
    period: int  # seconds: 1, 60 or 3600
    burst: int

    @property
    def per_second(self) -> float:
        return self.count / self.period

    @property
    def text(self) -> str:
        """As the config writes it: "20/s"."""
        unit = next(name for name, seconds in _PERIODS.items() if seconds == self.period)
        return f"{self.count}/{unit}"


def parse_rate(text: object, burst: int | None = None) -> RateLimit:
    """Read "N/s", "N/m" or "N/h" (N from 1 to `MAX_COUNT`); `burst` (the config bounds it
    too) defaults to N. ValueError with a readable reason otherwise."""
    match = _RATE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f'expected "N/s", "N/m" or "N/h" (such as "20/s"), got {text!r}')
    count = int(match[1])
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"the count must be 1 to {MAX_COUNT}, got {text!r}")
    return RateLimit(count, _PERIODS[match[2]], count if burst is None else burst)
