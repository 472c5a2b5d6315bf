"""The wall clock the engine stamps jobs with, injectable so tests can run on Trio's virtual time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)
