"""What the daemon currently runs with: config + handlers + plugins' settings, resolved
once per (re)load.

A `Settings` value is frozen; a reload builds a new one and swaps it into the one
`LiveSettings` holder that the engine and the API share, so every request and every
claim sees one consistent generation. Each plugin's settings (what its `jobd_configure`
returned) are part of it: `registry.settings` by plugin, and on each of the plugin's
handlers, which pass them to the payload validator and to `JobContext.settings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from jobd.config import DEFAULT_QUEUE, Config, HandlerConfig
from jobd.handlers import Handler
from jobd.plugins import Registry
from jobd.retry import RetryPolicy

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class QueueLimits:
    concurrency: int  # in this daemon
    global_concurrency: int | None  # across all daemons sharing the store


@dataclass(frozen=True, slots=True)
class TypeDefaults:
    """Options for jobs of one type when the request does not give them."""

    queue: str
    timeout: float | None
    max_attempts: int
    retry: RetryPolicy


@dataclass(frozen=True, slots=True)
class Settings:
    config: Config
    registry: Registry
    queues: Mapping[str, QueueLimits]
    # Each type's defaults, worked out at its first job: every submit and retry asks.
    _defaults: dict[str, TypeDefaults] = field(default_factory=dict, compare=False, repr=False)

    def handler(self, job_type: str) -> Handler | None:
        return self.registry.get(job_type)

    def type_defaults(self, job_type: str) -> TypeDefaults:
        """First found wins: `[handlers."TYPE"]`, then the handler's decorator, then `[retry]`."""
        found = self._defaults.get(job_type)
        if found is None:
            found = self._defaults[job_type] = self._resolve_defaults(job_type)
        return found

    def _resolve_defaults(self, job_type: str) -> TypeDefaults:
        configured = self.config.handlers.get(job_type, HandlerConfig())
        handler = self.registry.get(job_type)
        retry = self.config.retry

        return TypeDefaults(
            queue=pick(configured.queue, handler.queue if handler else None, default=DEFAULT_QUEUE),
            timeout=pick(configured.timeout, handler.timeout if handler else None, default=None),
            max_attempts=pick(
                configured.max_attempts, handler.max_attempts if handler else None, default=retry.max_attempts
            ),
            retry=RetryPolicy(
                base_delay=pick(configured.base_delay, default=retry.base_delay),
                max_delay=pick(configured.max_delay, default=retry.max_delay),
                jitter=pick(configured.jitter, default=retry.jitter),
            ),
        )


def pick(*values: T | None, default: T) -> T:
    """The first value that is not None, else `default`."""
    return next((value for value in values if value is not None), default)


def build_settings(config: Config, registry: Registry) -> Settings:
    names = set(config.queues) | {DEFAULT_QUEUE}
    names |= {handler.queue for handler in registry.handlers.values() if handler.queue}
    queues = {}
    for name in sorted(names):
        declared = config.queues.get(name)
        queues[name] = QueueLimits(
            concurrency=config.queue_concurrency(name),
            global_concurrency=declared.global_concurrency if declared else None,
        )
    return Settings(config, registry, MappingProxyType(queues))


class LiveSettings:
    """The one mutable holder of the current `Settings`; only the daemon swaps it."""

    def __init__(self, settings: Settings) -> None:
        self.current = settings
