"""Handlers for jobd's process-level tests, loaded through the `jobd` entry-point group."""

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import trio

import jobd


@dataclass(frozen=True, slots=True)
class Settings:
    """`[plugins.testplugin]`."""

    greeting: str | None = None


def _validate(payload: Any, settings: Settings) -> None:
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        raise jobd.InvalidJob("must be a string", field="payload.text")


@jobd.handler("testplugin.echo", queue="tests", validate=_validate)
async def echo(job: jobd.JobContext) -> dict[str, Any]:
    await job.progress(1.0, "echoed")
    return {"echo": job.payload["text"], "attempt": job.attempt, "greeting": job.settings.greeting}


@jobd.handler("testplugin.flaky", max_attempts=3)
async def flaky(job: jobd.JobContext) -> str:
    """Fails every attempt but the last."""
    if job.attempt < job.max_attempts:
        raise jobd.Retry(delay=0.05, reason=f"attempt {job.attempt} fails on purpose")
    return "finally"


@jobd.handler("testplugin.stubborn")
async def stubborn(job: jobd.JobContext) -> str:
    """Sleeps without end unless cancelled."""
    await trio.sleep_forever()
    return "never"


@jobd.handler("testplugin.gather")
async def gather(job: jobd.JobContext) -> dict[str, Any]:
    """Sleeps `payload.seconds`, then returns its parents' results by id and its own payload."""
    await trio.sleep(float((job.payload or {}).get("seconds", 0)))
    return {
        "parents": {str(parent): result for parent, result in job.parents.items()},
        "payload": job.payload,
    }


@jobd.handler("testplugin.deaf")
async def deaf(job: jobd.JobContext) -> str:
    """Misbehaves on purpose: catches its cancellation and carries on for an hour."""
    try:
        await trio.sleep_forever()
    except trio.Cancelled:
        with trio.CancelScope(shield=True):
            await trio.sleep(3600)
    return "never"


@jobd.handler("testplugin.thread_bound")
async def thread_bound(job: jobd.JobContext) -> str:
    """Waits on a thread that cannot be interrupted (Trio waits for it, whatever the cancel)."""
    await trio.to_thread.run_sync(time.sleep, 3600)
    return "never"


@jobd.handler("testplugin.block_loop")
async def block_loop(job: jobd.JobContext) -> str:
    """Misbehaves on purpose: blocks the event loop for `payload.seconds`."""
    time.sleep(job.payload["seconds"])  # noqa: ASYNC251 - the very fault under test
    return "blocked"


@jobd.handler("testplugin.blocking")
def blocking(job: jobd.JobContext) -> float:
    """Blocking code done right: a plain def, run in a thread, checking for cancellation."""
    deadline = time.monotonic() + job.payload["seconds"]
    while time.monotonic() < deadline:
        trio.from_thread.check_cancelled()
        time.sleep(0.01)
    return float(job.payload["seconds"])


@jobd.hookimpl
def jobd_configure(config: Mapping[str, Any]) -> Settings:
    return jobd.parse_settings(Settings, config)


@jobd.hookimpl
def jobd_handlers() -> list[jobd.Handler]:
    return [echo, flaky, stubborn, gather, deaf, thread_bound, block_loop, blocking]
