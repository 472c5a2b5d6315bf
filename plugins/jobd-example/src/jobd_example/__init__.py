"""jobd-example: the smallest useful jobd plugin, a template to copy.

It provides one job type, `example.greet`, whose payload is `{"name": "…"}` and whose
result is `{"message": "Hello, …!"}`. The greeting comes from the plugin's own config
table, `[plugins.example] greeting = "Hello"`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jobd

__all__ = ["greet", "jobd_configure", "jobd_handlers", "validate"]

DEFAULT_GREETING = "Hello"

# The table in force. jobd calls `jobd_configure` at start and on every reload (SIGHUP);
# a table it refuses leaves this as it was.
_greeting = DEFAULT_GREETING


@jobd.hookimpl
def jobd_configure(config: Mapping[str, Any]) -> None:
    """Check `[plugins.example]` strictly: an unknown key or a bad value names the key."""
    global _greeting
    for key in config:
        if key != "greeting":
            raise jobd.ConfigError("unknown key (known: greeting)", key=key)
    greeting = config.get("greeting", DEFAULT_GREETING)
    if not isinstance(greeting, str) or not greeting.strip():
        raise jobd.ConfigError("must be a non-empty string", key="greeting")
    _greeting = greeting


def validate(payload: Any) -> None:
    """Refuse a bad payload at submit: `POST /v1/jobs` answers 422 naming the field."""
    if not isinstance(payload, dict):
        raise jobd.InvalidJob('payload must be an object such as {"name": "Ada"}', field="payload")
    name = payload.get("name")
    if not isinstance(name, str) or not name:
        raise jobd.InvalidJob("must be a non-empty string", field="payload.name")


@jobd.handler("example.greet", timeout="10s", max_attempts=2, validate=validate)
async def greet(job: jobd.JobContext) -> dict[str, Any]:
    """Greet `payload.name`. Return a JSON-able result; raise jobd.Retry or jobd.Fail to say otherwise."""
    name: str = job.payload["name"]
    if name == "nobody":
        raise jobd.Fail("there is nobody to greet")  # permanent: no further attempt would help
    await job.progress(0.5, f"greeting {name}")
    job.log.info("greeting %s", name)
    return {"message": f"{_greeting}, {name}!"}


@jobd.hookimpl
def jobd_handlers() -> list[jobd.Handler]:
    return [greet]
