"""Keeping going while the store is away: one back-off, one way to say so.

Every loop that calls the store (the dispatcher, maintenance, the daemon opening the
store) warns once when the store stops answering, waits longer after each failure,
and says when the store is back.
"""

from __future__ import annotations

import logging

STORE_RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


def store_retry_delay(failures: int) -> float:
    """Seconds to wait before asking an unavailable store again, after `failures` tries."""
    return STORE_RETRY_DELAYS[min(max(failures, 1), len(STORE_RETRY_DELAYS)) - 1]


class StoreOutage:
    """The state of one loop's access to the store."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what  # e.g. "claim jobs": finishes "cannot ..." and "... again"
        self.failures = 0

    def failed(self, error: Exception) -> float:
        """Record a failure; warn on the first of a run. Returns how long to wait."""
        self.failures += 1
        delay = store_retry_delay(self.failures)
        if self.failures == 1:
            self._log.warning(
                "cannot %s, the store is unavailable: %s; retrying in %gs, then less often",
                self._what,
                error,
                delay,
            )
        return delay

    def succeeded(self) -> None:
        if self.failures:
            self._log.info("the store is back: able to %s again", self._what)
            self.failures = 0
