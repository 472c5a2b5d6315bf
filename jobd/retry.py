"""The back-off policy, pure: which attempt failed -> how long to wait before the next."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_delay: float = 1.0
    max_delay: float = 60.0
    jitter: bool = True

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1 for the first).

        Exponential: base, 2*base, 4*base... capped at max_delay. With jitter the
        delay is drawn uniformly from its upper half, so that jobs that failed
        together do not all come back together, yet none retries much earlier
        than planned.
        """
        exponent = max(attempt - 1, 0)
        # 2**exponent overflows float for absurd attempt counts; the cap is hit long before.
        ceiling = self.max_delay if exponent >= 64 else min(self.max_delay, self.base_delay * 2.0**exponent)
        if not self.jitter:
            return ceiling
        return (rng or random).uniform(ceiling / 2, ceiling)
