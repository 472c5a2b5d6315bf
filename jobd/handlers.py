"""What a handler is: `Handler`, the `@handler` decorator, and the `JobContext` it receives.

A handler is an `async def` function, run on the daemon's event loop, or a plain `def`
function for blocking code, run in a worker thread of its own so that it blocks nothing
else (see `Handler.__call__`).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, cast

import orjson

from jobd.durations import parse_duration
from jobd.errors import InvalidJob
from jobd.job import JSON, Progress

HandlerFunction = Callable[["JobContext"], Awaitable[JSON]]
BlockingHandlerFunction = Callable[["JobContext"], JSON]
"""A plain `def` handler: it runs in a worker thread (see `Handler.__call__`)."""
PayloadValidator = Callable[[JSON, Any], None]
"""Called with a payload and the handler's plugin's settings; raises to refuse the payload."""
ProgressSink = Callable[[Progress], Awaitable[None]]

_TYPE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,199}$")

ATTEMPT_ERRORS: tuple[type[BaseException], ...] = (Exception, SystemExit, KeyboardInterrupt)
"""What a handler may raise that fails its attempt, to be retried after the back-off.

The worker and `jobd.testing` both catch exactly these. `SystemExit` and
`KeyboardInterrupt` here come from the handler's own code (a library's `sys.exit()`):
the daemon's signals arrive through a signal receiver, never raised inside a handler.
Anything else that is not an `Exception` (`trio.Cancelled`) passes through.
"""


@dataclass(frozen=True, slots=True)
class Handler:
    """A job type and the function that runs its jobs: a coroutine function, or a plain
    function that blocks (`blocking`), run in a worker thread.

    `queue`, `timeout` (seconds) and `max_attempts` are defaults: the request and
    `[handlers."TYPE"]` in the config both win over them. `validate(payload, settings)`
    checks a payload at submit: it raises `jobd.InvalidJob` (with `field=`), `ValueError`
    or `TypeError` to refuse it. `abandon_on_cancel` (blocking handlers only) lets a
    cancelled job end without waiting for its thread. The plugin host fills in `plugin`,
    the distribution's name, and `settings`, what the plugin's `jobd_configure` returned
    for the config in force: a handler registered by a reload carries that reload's settings.
    """

    type: str
    function: HandlerFunction | BlockingHandlerFunction
    queue: str | None = None
    timeout: float | None = None
    max_attempts: int | None = None
    validate: PayloadValidator | None = None
    plugin: str = ""
    settings: Any = field(default=None, compare=False, repr=False)
    abandon_on_cancel: bool = False
    blocking: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        blocking = not inspect.iscoroutinefunction(self.function)
        if self.abandon_on_cancel and not blocking:
            raise ValueError(f"{self.type}: abandon_on_cancel= is for handlers defined with plain def")
        object.__setattr__(self, "blocking", blocking)  # frozen: set once, here

    async def __call__(self, job: JobContext) -> JSON:
        """Run the handler for `job`. A blocking one runs in a worker thread of its own:
        cancelling the job (its timeout, a cancel, a shutdown) makes
        `trio.from_thread.check_cancelled()` raise in that thread, and the job waits for
        the thread to end, unless `abandon_on_cancel`, when it ends at once and the thread
        runs on unobserved, its result dropped."""
        if not self.blocking:
            return await cast(HandlerFunction, self.function)(job)
        import trio  # here: `jobd`, and so jobd-ctl, import this module, and start without Trio

        return await trio.to_thread.run_sync(
            self._run_blocking,
            job,
            abandon_on_cancel=self.abandon_on_cancel,
            # Its own limiter: the worker pool bounds the jobs running, and Trio's shared
            # default (40 threads) must not make a job wait for another's thread.
            limiter=trio.CapacityLimiter(1),
            thread_name=f"jobd job {self.type}",
        )

    def _run_blocking(self, job: JobContext) -> JSON:
        result = cast(BlockingHandlerFunction, self.function)(job)
        if inspect.isawaitable(result):  # an async callable `inspect` could not tell apart
            if inspect.iscoroutine(result):
                result.close()
            raise TypeError(f"handler {self.type} returned an awaitable from its thread: define it async")
        return result

    def with_plugin(self, plugin: str, settings: Any = None) -> Handler:
        """This handler as registered by `plugin`, whose settings are `settings`."""
        return dataclasses.replace(self, plugin=plugin, settings=settings)

    def check_payload(self, payload: JSON) -> None:
        """Run `validate` with this handler's settings as `POST /v1/jobs` does: raise
        `InvalidJob` naming the field, `payload` itself when the validator raised
        ValueError, TypeError or KeyError."""
        if self.validate is None:
            return
        try:
            self.validate(payload, self.settings)
        except InvalidJob:
            raise
        except (ValueError, TypeError, KeyError) as error:
            raise InvalidJob(f"payload refused: {error}", field="payload") from None


def handler(
    type: str,
    *,
    queue: str | None = None,
    timeout: float | str | None = None,
    max_attempts: int | None = None,
    validate: PayloadValidator | None = None,
    abandon_on_cancel: bool = False,
) -> Callable[[HandlerFunction | BlockingHandlerFunction], Handler]:
    """Declare a function as the handler of job type `type`: an `async def` one runs on
    the event loop, a plain `def` one (blocking code) in a worker thread.

    `timeout` takes seconds or a duration string ("5m"); return the function from
    your plugin's `jobd_handlers` hook to register it. `abandon_on_cancel=True` (plain
    `def` only) lets a cancelled job end without waiting for its thread: only for code
    that is safe to leave running, since the job may meanwhile run again elsewhere.
    """
    if not _TYPE_NAME.match(type):
        raise ValueError(f"invalid job type {type!r}: use letters, digits and . _ : -")
    seconds = None if timeout is None else parse_duration(timeout)
    if max_attempts is not None and max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    if validate is not None:
        _check_validator(validate)

    def decorate(function: HandlerFunction | BlockingHandlerFunction) -> Handler:
        return Handler(
            type, function, queue, seconds, max_attempts, validate, abandon_on_cancel=abandon_on_cancel
        )

    return decorate


def _check_validator(validate: PayloadValidator) -> None:
    """Refuse at import, not at the first submit, a validator that cannot take (payload, settings)."""
    try:
        inspect.signature(validate).bind(None, None)
    except ValueError:  # no signature to inspect (a builtin): take it on trust
        return
    except TypeError:
        raise TypeError(f"validate= must take (payload, settings), got {validate!r}") from None


def check_result(result: JSON) -> JSON:
    """A handler's result, if every store can keep it; TypeError otherwise.

    That is JSON without NaN or infinities, as UTF-8 (no lone surrogates), and without
    NUL characters (PostgreSQL's jsonb refuses them).
    """
    if result is None or type(result) is bool or (type(result) is int and result.bit_length() < 64):
        return result  # most handlers return nothing or a count: nothing to check
    _storable_text(result)
    return result


def storable_json_size(value: JSON) -> int:
    """The size of `value` as the stores write it (`jsoncodec.dumps`: orjson, or the
    standard library for what orjson refuses), if every store can keep it (see
    `check_result`); TypeError otherwise, saying it of "the handler's result"."""
    text = _storable_text(value)
    try:
        return len(orjson.dumps(value))
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, a key that is not a string
        return len(text.encode())


def parsed_json_size(value: JSON) -> int:
    """`storable_json_size` of a value parsed from JSON text, such as a control API body,
    in one pass of orjson instead of two passes. Such a value holds only JSON's own
    types, but a number too large for a float (`1e999`) parses as infinity, which
    orjson writes as null: a value whose JSON holds a null is checked by the standard
    library as well, which refuses infinities."""
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, a lone surrogate
        return storable_json_size(value)
    if b"null" in encoded:
        _storable_text(value)
    elif b"\\u0000" in encoded and _holds_nul(value):
        raise TypeError("the handler's result is not storable JSON: it holds a NUL character")
    return len(encoded)


def _storable_text(value: JSON) -> str:
    """`value` as compact JSON text, if every store can keep it; TypeError otherwise."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        text.encode("utf-8")
    except (TypeError, ValueError) as error:  # UnicodeEncodeError is a ValueError
        raise TypeError(f"the handler's result is not storable JSON: {error}") from None
    # JSON writes a NUL as \u0000, so only a text holding that can hold one.
    if "\\u0000" in text and _holds_nul(value):
        raise TypeError("the handler's result is not storable JSON: it holds a NUL character")
    return text


def _holds_nul(value: JSON) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(key) or _holds_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(_holds_nul(item) for item in value)
    return False


def clean_text(text: str) -> str:
    """`text` as every store can keep it: no NUL characters, no lone surrogates."""
    return text.replace("\x00", "\\0").encode("utf-8", "replace").decode("utf-8")


class JobLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger that adds the job's fields to every record it writes."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs


class JobContext:
    """What a handler sees of the job it runs."""

    __slots__ = (
        "_log",
        "_logger",
        "_progress",
        "attempt",
        "created_at",
        "id",
        "max_attempts",
        "parents",
        "payload",
        "queue",
        "schedule",
        "scheduled_for",
        "settings",
        "type",
    )

    def __init__(
        self,
        *,
        job_id: uuid.UUID,
        job_type: str,
        queue: str,
        payload: JSON,
        attempt: int,
        max_attempts: int,
        created_at: datetime,
        progress: ProgressSink,
        settings: Any = None,
        logger: logging.Logger | None = None,
        schedule: str | None = None,
        scheduled_for: datetime | None = None,
        parents: Mapping[uuid.UUID, JSON] | None = None,
    ) -> None:
        self.id = job_id
        self.type = job_type
        self.queue = queue
        self.payload = payload
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.created_at = created_at
        self.settings = settings  # the plugin's settings in force when the attempt started
        self.schedule = schedule  # the schedule that made the job, or None
        self.scheduled_for = scheduled_for  # the tick it was made for (UTC), or None
        # The jobs named in `after`, each id to its result (None for one pruned since).
        self.parents: Mapping[uuid.UUID, JSON] = MappingProxyType(dict(parents or {}))
        self._progress = progress
        self._logger = logger
        self._log: JobLogger | None = None

    @property
    def log(self) -> JobLogger:
        """A logger named `jobd.job.TYPE` that adds the job's fields to every record."""
        if self._log is None:  # made on first use: most handlers never log
            fields = {"job_id": str(self.id), "type": self.type, "queue": self.queue, "attempt": self.attempt}
            self._log = JobLogger(self._logger or logging.getLogger(f"jobd.job.{self.type}"), fields)
        return self._log

    async def progress(self, fraction: float, message: str | None = None) -> None:
        """Record how far the job has come (0..1) and, optionally, what it is doing."""
        if not isinstance(fraction, int | float) or not math.isfinite(fraction):
            raise ValueError(f"progress fraction must be a number from 0 to 1, got {fraction!r}")
        if message is not None and not isinstance(message, str):
            raise TypeError("progress message must be a string or None")
        text = None if message is None else clean_text(message)
        await self._progress(Progress(min(max(float(fraction), 0.0), 1.0), text))

    def __repr__(self) -> str:
        return f"<JobContext {self.type} {self.id} attempt {self.attempt}/{self.max_attempts}>"
