"""Notices when something blocks the event loop: for how long, and which job was running.

A handler that calls `time.sleep` or reads a blocking socket on the event loop stops
every other job, every API request and the watchdog pings with it. The loop stamps a
heartbeat every `HEARTBEAT` seconds; a thread of its own looks at the stamp every
`HEARTBEAT` seconds too. A stamp that has not moved for `BLOCKED_AFTER` seconds, at two
looks in a row (a process the kernel did not schedule for a while catches up at once,
a blocked loop does not), is a block in progress. The thread then reads the loop
thread's stack (`sys._current_frames`) and asks whose task it is (`JobOnStack`): the
blocking job. When the stamp moves again the block is over: the thread logs a warning
naming the job and counts it (`jobd_event_loop_blocked_total{type}`,
`jobd_event_loop_blocked_seconds_total{type}`); while it lasts, it warns every
`STILL_BLOCKED_EVERY` seconds, so that a loop that never comes back leaves a trace
before systemd's watchdog kills the daemon.

The thread only reads; it never pings the watchdog nor touches the loop's state: a
stuck loop must stop the `WATCHDOG=1` pings (`jobd.systemd.run_watchdog`).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType

import trio

from jobd.job import Job
from jobd.metrics import Metrics

log = logging.getLogger("jobd.loopwatch")

HEARTBEAT = 0.1  # seconds between the loop's stamps, and between the thread's looks
BLOCKED_AFTER = 0.5  # seconds without a stamp that make a block worth reporting
STILL_BLOCKED_EVERY = 10.0  # seconds between reports of a block that goes on

JobOnStack = Callable[[frozenset[int]], Job | None]
"""Given the ids of the frames on the loop thread's stack: the job whose task runs there, if any."""


@dataclass(frozen=True, slots=True)
class Block:
    """The event loop did not run for `seconds`, while `job` ran on it (None: no job did)."""

    seconds: float
    job: Job | None


class LoopWatch:
    def __init__(self, job_on_stack: JobOnStack, metrics: Metrics) -> None:
        self._job_on_stack = job_on_stack
        self._metrics = metrics
        self._stamp = time.monotonic()  # written by the loop, read by the thread
        self._loop_thread = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Stamp the heartbeat until cancelled, with the watching thread beside."""
        self._loop_thread = threading.get_ident()
        self._stamp = time.monotonic()
        stop = threading.Event()
        thread = threading.Thread(target=self._watch, args=(stop,), name="jobd loop watch", daemon=True)
        thread.start()
        task_status.started()
        try:
            while True:
                await trio.sleep(HEARTBEAT)
                self._stamp = time.monotonic()
        finally:
            stop.set()  # the thread ends at its next look; nothing waits for it

    def _watch(self, stop: threading.Event) -> None:
        seen = self._stamp
        still_stale = False  # the stamp had not moved at the previous look either
        block: Block | None = None
        reported_at = 0.0
        while not stop.wait(HEARTBEAT):
            stamp, now = self._stamp, time.monotonic()
            if stamp != seen:
                if block is not None:
                    self._ended(Block(stamp - seen, block.job))
                seen, still_stale, block = stamp, False, None
                continue
            if block is None and still_stale and now - stamp >= BLOCKED_AFTER:
                block, reported_at = Block(now - stamp, self._blocking_job()), now
            elif block is not None and now - reported_at >= STILL_BLOCKED_EVERY:
                reported_at = now
                self._goes_on(Block(now - stamp, block.job))
            still_stale = True

    def _ended(self, block: Block) -> None:
        self._metrics.loop_blocked(block.job.type if block.job else "", block.seconds)
        _warn(
            block,
            "the event loop was blocked for %.1fs",
            "a handler must not block: define blocking code with plain def, to run in a thread",
        )

    def _goes_on(self, block: Block) -> None:
        _warn(block, "the event loop has been blocked for %.0fs so far", "")

    def _blocking_job(self) -> Job | None:
        frame = sys._current_frames().get(self._loop_thread)
        try:
            return self._job_on_stack(frozenset(id(each) for each in _stack(frame)))
        except RuntimeError:  # the loop moved on while it was read (a task tree changed size)
            return None


def _warn(block: Block, what: str, advice: str) -> None:
    fields: dict[str, object] = {"blocked_seconds": round(block.seconds, 3)}
    job = block.job
    if job is None:
        log.warning(what + ", outside any job", block.seconds, extra=fields)
        return
    fields.update(job_id=str(job.id), type=job.type, queue=job.queue)
    log.warning(
        what + " by job %s (%s)" + (f": {advice}" if advice else ""),
        block.seconds,
        job.id,
        job.type,
        extra=fields,
    )


def _stack(frame: FrameType | None) -> Iterator[FrameType]:
    while frame is not None:
        yield frame
        frame = frame.f_back
