"""Test a handler without a daemon: run it against a job, check payloads and plugin config.

    settings = plugin_settings(jobd_shell, {"max_output_bytes": 1000})
    outcome = await run_handler(jobd_shell.run, {"argv": ["true"]}, settings=settings)
    assert outcome.kind is OutcomeKind.COMPLETED, outcome

`run_handler` does what a worker does with one attempt: it builds a `JobContext`,
runs the handler under the job's timeout and turns how it ended into an `Outcome`.
`validate_payload` refuses a payload the way `POST /v1/jobs` would. Settings are passed
explicitly: the handler sees them as `job.settings`, its validator as its second
argument. `plugin_settings`, `configure_plugin` and `open_plugin` hand a plugin its
`[plugins.NAME]` table through the same `PluginHost` the daemon uses, so errors read
exactly as the daemon's do; each call stands alone and changes nothing any other host
(a daemon in the same process, another test) sees.
"""

from __future__ import annotations

import enum
import importlib.metadata
import logging
import math
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import trio

from jobd.config import Config
from jobd.errors import Fail, Retry
from jobd.handlers import ATTEMPT_ERRORS, Handler, JobContext, check_result
from jobd.job import JSON, JobState, Progress
from jobd.plugins import ENTRY_POINT_GROUP, PluginHost, Registry

__all__ = [
    "Outcome",
    "OutcomeKind",
    "configure_plugin",
    "open_plugin",
    "plugin_settings",
    "run_handler",
    "validate_payload",
]


class OutcomeKind(enum.StrEnum):
    """How one attempt of a job ended."""

    COMPLETED = "completed"  # the handler returned a result
    RETRY = "retry"  # it raised jobd.Retry
    FAILED = "failed"  # it raised jobd.Fail
    ERROR = "error"  # it raised any other exception
    TIMED_OUT = "timed_out"  # it ran past the job's timeout and was cancelled


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt did; `state` is what the daemon would make of it."""

    kind: OutcomeKind
    attempt: int
    max_attempts: int
    result: JSON = None  # COMPLETED: the handler's return value
    delay: float | None = None  # RETRY: the delay asked for (None: the normal back-off)
    reason: str = ""  # RETRY, FAILED, ERROR, TIMED_OUT: why, as `last_error` would say
    error: BaseException | None = None  # RETRY, FAILED, ERROR: the exception raised
    progress: tuple[Progress, ...] = ()  # every `job.progress(...)` report, in order

    @property
    def state(self) -> JobState:
        """The job's state after this attempt: completed, scheduled (another attempt) or failed."""
        if self.kind is OutcomeKind.COMPLETED:
            return JobState.COMPLETED
        if self.kind is OutcomeKind.FAILED or self.attempt >= self.max_attempts:
            return JobState.FAILED
        return JobState.SCHEDULED


def validate_payload(handler: Handler, payload: JSON, *, settings: Any = None) -> None:
    """Check `payload` with the handler's `validate=`, as `POST /v1/jobs` does before storing.

    The validator gets `settings`, else the settings `handler` was registered with (a
    handler from `configure_plugin`'s registry; None for a bare one). Raises
    `jobd.InvalidJob` (the API's 422) with the handler's `field`, or with
    `field="payload"` when the validator raised `ValueError`, `TypeError` or `KeyError`.
    """
    _with_settings(handler, settings).check_payload(payload)


async def run_handler(
    handler: Handler,
    payload: JSON,
    *,
    settings: Any = None,
    attempt: int = 1,
    max_attempts: int = 3,
    job_type: str | None = None,
    queue: str = "default",
    timeout: float | None = None,
    validate: bool = True,
    logger: logging.Logger | None = None,
    schedule: str | None = None,
    scheduled_for: datetime | None = None,
    parents: Mapping[uuid.UUID, JSON] | None = None,
) -> Outcome:
    """Run one attempt of a job with `payload` through `handler` and say how it ended.

    The handler sees `settings` as `job.settings`; without them, the settings it was
    registered with (None for a bare handler). `timeout` (seconds) defaults to the
    handler's own; with neither, the attempt may run for ever, as in the daemon. With
    `validate` (the default) the payload is first checked by `validate_payload`, so an
    invalid one raises `jobd.InvalidJob` like a refused submit. `schedule` and
    `scheduled_for` stand for a job a schedule's tick made (`job.schedule`,
    `job.scheduled_for`). `parents` stands for a job submitted with `after`: the
    handler reads it as `job.parents` (each parent's id and result). Cancelling the
    caller cancels the handler, as cancelling the job would. A handler defined with
    plain `def` runs in a worker thread, as in the daemon: past the timeout,
    `trio.from_thread.check_cancelled()` raises in it, and a result it returns after
    the timeout still makes the outcome `TIMED_OUT`.
    """
    if not 1 <= attempt <= max_attempts:
        raise ValueError(f"attempt must be from 1 to max_attempts ({max_attempts}), got {attempt}")
    handler = _with_settings(handler, settings)
    if validate:
        handler.check_payload(payload)
    reports: list[Progress] = []

    async def record(progress: Progress) -> None:
        reports.append(progress)

    job = JobContext(
        job_id=uuid.uuid4(),
        job_type=job_type or handler.type,
        queue=queue,
        payload=payload,
        attempt=attempt,
        max_attempts=max_attempts,
        created_at=datetime.now(UTC),
        progress=record,
        settings=handler.settings,
        logger=logger,
        schedule=schedule,
        scheduled_for=scheduled_for,
        parents=parents,
    )
    limit = handler.timeout if timeout is None else timeout

    def ended(kind: OutcomeKind, **fields: Any) -> Outcome:
        return Outcome(kind, attempt, max_attempts, progress=tuple(reports), **fields)

    with trio.move_on_after(math.inf if limit is None else limit) as scope:
        try:
            result = check_result(await handler(job))
            if scope.cancel_called:  # returned past the deadline (a thread that ran on): as the worker says
                return ended(OutcomeKind.TIMED_OUT, reason=f"timed out after {limit:g}s")
        except Retry as signal:
            reason = f"retry requested: {signal.reason}" if signal.reason else "retry requested"
            return ended(OutcomeKind.RETRY, delay=signal.delay, reason=reason, error=signal)
        except Fail as signal:
            return ended(OutcomeKind.FAILED, reason=f"failed: {signal.reason}", error=signal)
        except ATTEMPT_ERRORS as error:  # backs off, as in the daemon
            return ended(OutcomeKind.ERROR, reason=f"{type(error).__name__}: {error}", error=error)
        return ended(OutcomeKind.COMPLETED, result=result)
    assert scope.cancelled_caught
    return ended(OutcomeKind.TIMED_OUT, reason=f"timed out after {limit:g}s")


def _with_settings(handler: Handler, settings: Any) -> Handler:
    return handler if settings is None else handler.with_plugin(handler.plugin, settings)


def plugin_settings(
    module: ModuleType, table: Mapping[str, Any] | None = None, *, name: str | None = None
) -> Any:
    """What the plugin `module` makes of `table` as its `[plugins.NAME]`: the value its
    `jobd_configure` returns, checked as the daemon checks it (see `configure_plugin`)."""
    entry_point = _entry_point(module, name)
    return _host(entry_point).configure(_config(entry_point.name, table)).settings[entry_point.name]


def configure_plugin(
    module: ModuleType, table: Mapping[str, Any] | None = None, *, name: str | None = None
) -> Registry:
    """Load `module` as the daemon would, hand it `table` as `[plugins.NAME]`, and collect its handlers.

    NAME is `name`, else the name of the installed `jobd` entry point naming `module`,
    else the module's last dotted part. A refused table raises `jobd.ConfigError` with
    `key="plugins.NAME.the_key"`, exactly as `jobd check` reports it. The returned
    `Registry` holds the plugin's handlers next to the built-ins, each carrying the
    plugin's settings (`registry.settings[NAME]`).
    """
    entry_point = _entry_point(module, name)
    return _host(entry_point).configure(_config(entry_point.name, table))


@asynccontextmanager
async def open_plugin(
    module: ModuleType, table: Mapping[str, Any] | None = None, *, name: str | None = None
) -> AsyncIterator[Registry]:
    """`configure_plugin`, then hold the plugin's `jobd_lifespan` open around the block.

    Use it for plugins whose handlers need shared resources (a client, a pool) opened
    by their lifespan; they are closed when the block ends.
    """
    entry_point = _entry_point(module, name)
    host = _host(entry_point)
    registry = host.configure(_config(entry_point.name, table))
    async with AsyncExitStack() as stack:
        for lifespan in host.lifespans(registry):
            await stack.enter_async_context(lifespan.context)
        yield registry


def _config(plugin_name: str, table: Mapping[str, Any] | None) -> Config:
    return Config(plugins={plugin_name: dict(table)} if table is not None else {})


def _entry_point(module: ModuleType, name: str | None) -> importlib.metadata.EntryPoint:
    """The installed `jobd` entry point naming `module` (and called `name`, if given), else
    one made up for it, named `name` or the module's last dotted part."""
    installed = [
        entry_point
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        if entry_point.value == module.__name__ and (name is None or entry_point.name == name)
    ]
    if installed:
        return installed[0]
    return importlib.metadata.EntryPoint(
        name=name or module.__name__.rpartition(".")[2], value=module.__name__, group=ENTRY_POINT_GROUP
    )


def _host(entry_point: importlib.metadata.EntryPoint) -> PluginHost:
    """A plugin host of its own, as the daemon's: the built-ins and this one plugin."""
    host = PluginHost()
    host.load([entry_point])
    return host
