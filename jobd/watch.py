"""Wakes the tasks waiting for a given job to change (the API's long poll)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import trio


class JobWatch:
    def __init__(self) -> None:
        self._events: dict[uuid.UUID, tuple[trio.Event, int]] = {}

    def changed(self, job_id: uuid.UUID) -> None:
        if self._events:
            entry = self._events.pop(job_id, None)
            if entry is not None:
                entry[0].set()

    @contextlib.contextmanager
    def watching(self, job_id: uuid.UUID) -> Iterator[trio.Event]:
        """An event set at the next change of `job_id`. Take it *before* reading the job,
        so that a change between the read and the wait is not missed."""
        event, waiters = self._events.get(job_id, (trio.Event(), 0))
        self._events[job_id] = (event, waiters + 1)
        try:
            yield event
        finally:
            current = self._events.get(job_id)
            if current is not None and current[0] is event:
                if current[1] > 1:
                    self._events[job_id] = (event, current[1] - 1)
                else:
                    del self._events[job_id]
