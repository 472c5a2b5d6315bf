"""The built-in handlers, registered through the same hook as any plugin."""

from __future__ import annotations

import math

import trio

from jobd.errors import InvalidJob
from jobd.handlers import Handler, JobContext, handler
from jobd.hookspecs import hookimpl
from jobd.job import JSON


@handler("jobd.noop")
async def noop(job: JobContext) -> JSON:
    """Return the payload unchanged: for demos, tests and benchmarks."""
    return job.payload


def _validate_sleep(payload: JSON, settings: None) -> None:
    if not isinstance(payload, dict):
        raise InvalidJob('payload must be an object such as {"seconds": 5}', field="payload")
    seconds = payload.get("seconds")
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        raise InvalidJob("must be a number of seconds >= 0", field="payload.seconds")


@handler("jobd.sleep", validate=_validate_sleep)
async def sleep(job: JobContext) -> JSON:
    """Sleep `payload.seconds`, cancellably: for demos, tests and benchmarks."""
    seconds = float(job.payload["seconds"])
    await trio.sleep(seconds)
    return {"slept": seconds}


@hookimpl
def jobd_handlers() -> list[Handler]:
    return [noop, sleep]
