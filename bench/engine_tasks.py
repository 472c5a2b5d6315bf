"""Benchmark: what running a job as a Trio task costs, against long-lived workers.

    .venv/bin/python bench/engine_tasks.py
    .venv/bin/python bench/engine_tasks.py --jobs 300000 --repeat 7

Trio alone, no jobd: no-op jobs in rounds of `--slots`, each run in a cancel scope of its
own (as the pool gives every job one, for its timeout and for `cancel`), three ways:
- a task per job, as the pool runs them (each task has its own copy of the context);
- one long-lived worker per slot, taking jobs from a queue, every job in the worker's
  context (a context variable one handler sets is seen by the next job of that worker);
- the same workers, each job's coroutine driven step by step in a fresh copy of the
  context, which keeps each job's context variables its own;
- those, with a checkpoint after each job: a worker that finds more jobs waiting lets the
  other tasks run first, as a task per job does (without it, one worker may run a whole
  round of no-op jobs before any other task runs).
Prints the CPU time per job of each way, the minimum and the median over `--repeat` runs.
This is a benchmark, not a test: it asserts nothing beyond every job having run.
"""

from __future__ import annotations

import argparse
import collections
import contextvars
import statistics
import time
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

import trio
import trio.lowlevel
import trio.testing


async def no_op(job: int) -> None:
    return None


@types.coroutine
def in_context(context: contextvars.Context, coro: Coroutine[Any, Any, None]) -> Generator[Any, Any, None]:
    """Drive `coro`, each of its steps inside `context`."""
    step: Callable[[Any], Any] = coro.send
    value: Any = None
    while True:
        try:
            yielded = context.run(step, value)
        except StopIteration:
            return
        try:
            value, step = (yield yielded), coro.send
        except BaseException as error:  # thrown into the worker: on into the job
            value, step = error, coro.throw


async def task_per_job(jobs: int, slots: int) -> int:
    done = 0

    async def run(job: int) -> None:
        nonlocal done
        with trio.CancelScope():
            await no_op(job)
        done += 1

    async with trio.open_nursery() as nursery:
        for start in range(0, jobs, slots):
            for job in range(start, min(start + slots, jobs)):
                nursery.start_soon(run, job)
            await trio.testing.wait_all_tasks_blocked()
    return done


async def workers(jobs: int, slots: int, *, own_context: bool, fair: bool = False) -> int:
    done = 0
    ready: collections.deque[int] = collections.deque()
    more = trio.Event()
    base = contextvars.copy_context()

    async def worker() -> None:
        nonlocal done
        while True:
            while not ready:
                await more.wait()
            job = ready.popleft()
            with trio.CancelScope():
                if own_context:
                    await in_context(base.copy(), no_op(job))
                else:
                    await no_op(job)
            done += 1
            if fair:
                await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for _ in range(slots):
            nursery.start_soon(worker)
        for start in range(0, jobs, slots):
            ready.extend(range(start, min(start + slots, jobs)))
            more.set()
            more = trio.Event()
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    return done


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--slots", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    jobs, slots = args.jobs, args.slots
    ways: dict[str, Callable[[], Awaitable[int]]] = {
        "task per job": lambda: task_per_job(jobs, slots),
        "workers, shared context": lambda: workers(jobs, slots, own_context=False),
        "workers, a context per job": lambda: workers(jobs, slots, own_context=True),
        "the same, a checkpoint after each": lambda: workers(jobs, slots, own_context=True, fair=True),
    }
    costs: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(args.repeat):  # interleaved, so that the machine's noise hits each alike
        for name, way in ways.items():
            began = time.process_time()
            done = trio.run(way)
            costs[name].append((time.process_time() - began) / args.jobs * 1e6)
            assert done == args.jobs, f"{name}: {done} of {args.jobs} jobs ran"
    for name, values in costs.items():
        print(f"{name:34} min {min(values):5.2f} µs, median {statistics.median(values):5.2f} µs a job")


if __name__ == "__main__":
    main()
