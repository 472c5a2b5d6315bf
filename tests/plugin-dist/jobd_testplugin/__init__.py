"""Handlers for jobd's process-level tests, loaded through the `jobd` entry-point group."""

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


@jobd.hookimpl
def jobd_configure(config: Mapping[str, Any]) -> Settings:
    return jobd.parse_settings(Settings, config)


@jobd.hookimpl
def jobd_handlers() -> list[jobd.Handler]:
    return [echo, flaky, stubborn, gather]
