"""What the daemon currently runs with: config + handlers + plugins' settings, resolved
once per (re)load.

A `Settings` value is frozen; a reload builds a new one and swaps it into the one
`LiveSettings` holder that the engine and the API share, so every request and every
claim sees one consistent generation. Each plugin's settings (what its `jobd_configure`
returned) are part of it: `registry.settings` by plugin, and on each of the plugin's
handlers, which pass them to the payload validator and to `JobContext.settings`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TypeVar

from jobd.config import DEFAULT_QUEUE, Config, HandlerConfig, ScheduleConfig
from jobd.errors import ConfigError, InvalidJob, PayloadTooLarge
from jobd.handlers import Handler
from jobd.job import new_job_id
from jobd.plugins import Registry
from jobd.rates import RateLimit
from jobd.recurrence import Recurrence
from jobd.retry import RetryPolicy
from jobd.schedules import CatchUp, Schedule
from jobd.store import NewJob
from jobd.submission import Submission

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class QueueLimits:
    concurrency: int  # in this daemon
    global_concurrency: int | None  # across all daemons sharing the store
    rate: RateLimit | None = None  # starts across all daemons sharing the store


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
    schedules: Mapping[str, Schedule] = field(default_factory=dict)
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

    def new_job(
        self,
        asked: Submission,
        now: datetime,
        *,
        schedule: str | None = None,
        scheduled_for: datetime | None = None,
        earlier: Sequence[uuid.UUID] = (),
    ) -> NewJob:
        """The job `asked` for, as this daemon accepts one: a handler for its type (unless
        `api.accept_unknown_types`), its payload within `api.max_payload_bytes` and
        accepted by the handler's validation, its queue one that exists; the options it
        leaves out from `type_defaults`; `earlier` the ids of the batch's items before it,
        which its `after` may name. Raises `InvalidJob` naming the field at fault."""
        handler = self.handler(asked.job_type)
        api = self.config.api
        if handler is None and not api.accept_unknown_types:
            message = f"unknown job type {asked.job_type!r}: no loaded plugin handles it"
            raise InvalidJob(message, field="type")
        if asked.payload_size > api.max_payload_bytes:
            raise PayloadTooLarge(
                f"payload is {asked.payload_size} bytes, over the limit of {api.max_payload_bytes}",
                field="payload",
            )
        if handler is not None:
            handler.check_payload(asked.payload)
        defaults = self.type_defaults(asked.job_type)
        queue = asked.queue or defaults.queue
        if queue not in self.queues:
            raise InvalidJob(f"unknown queue {queue!r} (known: {', '.join(self.queues)})", field="queue")
        return NewJob(
            id=new_job_id(),
            type=asked.job_type,
            queue=queue,
            payload=asked.payload,
            priority=asked.priority,
            run_at=asked.run_at,
            max_attempts=asked.max_attempts or defaults.max_attempts,
            timeout=asked.timeout if asked.timeout is not None else defaults.timeout,
            key=asked.key,
            created_at=now,
            schedule=schedule,
            scheduled_for=scheduled_for,
            after=asked.parents(earlier),
            on_parent_failure=asked.on_parent_failure,
            unique_for=asked.unique_for,
            traceparent=asked.traceparent,
        )

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
            rate=declared.rate_limit() if declared else None,
        )
    settings = Settings(config, registry, MappingProxyType(queues))
    schedules = {name: _resolve_schedule(settings, name, table) for name, table in config.schedules.items()}
    return dataclasses.replace(settings, schedules=MappingProxyType(schedules))


_CHECKED_AT = datetime(1970, 1, 1, tzinfo=UTC)  # a schedule's job has no delay: any instant will do


def _resolve_schedule(settings: Settings, name: str, table: ScheduleConfig) -> Schedule:
    """`[schedules.NAME]` against the handlers in force: its job checked as a submit is
    (`Settings.new_job`), its options resolved once for every tick. A `ConfigError`
    names the key at fault."""
    asked = table.submission()
    try:
        job = settings.new_job(asked, _CHECKED_AT)
    except InvalidJob as error:
        key = f"schedules.{name}.{error.field or 'type'}"
        raise ConfigError(error.message, key=key, file=settings.config.source or "the config") from None
    return Schedule(
        name=name,
        recurrence=Recurrence(table.cron, table.every, table.timezone),
        type=job.type,
        payload=job.payload,
        queue=job.queue,
        priority=job.priority,
        max_attempts=job.max_attempts,
        timeout=job.timeout,
        catch_up=CatchUp(table.catch_up),
        skip_overlap=table.overlap == "skip",
        jitter=table.jitter,
        enabled=table.enabled,
    )


class LiveSettings:
    """The one mutable holder of the current `Settings`; only the daemon swaps it."""

    def __init__(self, settings: Settings) -> None:
        self.current = settings
