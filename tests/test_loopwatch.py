"""The event loop watch, on a real clock: a blocked loop is noticed, measured, named and counted."""

from __future__ import annotations

import logging
import time

import pytest
import trio

from jobd.loopwatch import BLOCKED_AFTER, HEARTBEAT, LoopWatch
from jobd.metrics import Metrics


async def test_a_block_outside_any_job_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics("test")
    asked: list[frozenset[int]] = []

    def job_on_stack(frame_ids: frozenset[int]) -> None:
        asked.append(frame_ids)
        return None

    watch = LoopWatch(job_on_stack, metrics)
    with caplog.at_level(logging.WARNING, logger="jobd.loopwatch"):
        async with trio.open_nursery() as nursery:
            await nursery.start(watch.run)
            await trio.sleep(3 * HEARTBEAT)
            time.sleep(BLOCKED_AFTER + 0.5)  # noqa: ASYNC251 - the fault under test
            await trio.sleep(3 * HEARTBEAT)  # the thread sees the stamp move again
            nursery.cancel_scope.cancel()
    [record] = caplog.records
    assert record.getMessage().startswith("the event loop was blocked for ")
    assert record.getMessage().endswith("s, outside any job")
    seconds = record.blocked_seconds
    assert BLOCKED_AFTER + 0.5 <= seconds < 30
    assert asked and all(asked)  # it read the loop thread's stack while the loop was blocked
    labels = {"type": ""}
    assert metrics.registry.get_sample_value("jobd_event_loop_blocked_total", labels) == 1
    counted = metrics.registry.get_sample_value("jobd_event_loop_blocked_seconds_total", labels)
    assert counted == pytest.approx(seconds, abs=0.001)
