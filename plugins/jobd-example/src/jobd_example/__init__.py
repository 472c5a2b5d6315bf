"""jobd-example: the smallest useful jobd plugin, a template to copy.

It provides one job type, `example.greet`, whose payload is `{"name": "…"}` and whose
result is `{"message": "Hello, …!"}`. The greeting comes from the plugin's own config
table, `[plugins.example] greeting = "Hello"`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jobd

__all__ = ["Settings", "greet", "jobd_configure", "jobd_handlers", "validate"]


@dataclass(frozen=True, slots=True)
class Settings:
    """`[plugins.example]`: each field is a key, with its default."""

    greeting: str = "Hello"


@jobd.hookimpl
def jobd_configure(config: Mapping[str, Any]) -> Settings:
    """Read `[plugins.example]` strictly: an unknown key or a bad value names the key.

    jobd keeps what this returns and hands it to `greet` as `job.settings`; it calls this
    again on every reload (SIGHUP), and a table it refuses changes nothing.
    """
    settings = jobd.parse_settings(Settings, config)
    if not settings.greeting.strip():
        raise jobd.ConfigError("must not be blank", key="greeting")
    return settings


def validate(payload: Any, settings: Settings) -> None:
    """Refuse a bad payload at submit: `POST /v1/jobs` answers 422 naming the field."""
    if not isinstance(payload, dict):
        raise jobd.InvalidJob('payload must be an object such as {"name": "Ada"}', field="payload")
    name = payload.get("name")
    if not isinstance(name, str) or not name:
        raise jobd.InvalidJob("must be a non-empty string", field="payload.name")


@jobd.handler("example.greet", timeout="10s", max_attempts=2, validate=validate)
async def greet(job: jobd.JobContext) -> dict[str, Any]:
    """Greet `payload.name`. Return a JSON-able result; raise jobd.Retry or jobd.Fail to say otherwise."""
    settings: Settings = job.settings
    name: str = job.payload["name"]
    if name == "nobody":
        raise jobd.Fail("there is nobody to greet")  # permanent: no further attempt would help
    await job.progress(0.5, f"greeting {name}")
    job.log.info("greeting %s", name)
    return {"message": f"{settings.greeting}, {name}!"}


@jobd.hookimpl
def jobd_handlers() -> list[jobd.Handler]:
    return [greet]
