"""jobd.testing: running handlers without a daemon, validating payloads, configuring plugins."""

from __future__ import annotations

import sys
import threading
import time
import types
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import pytest
import trio

import jobd
from jobd.errors import ConfigError, Fail, InvalidJob, Retry
from jobd.handlers import Handler, JobContext, handler
from jobd.hookspecs import hookimpl
from jobd.job import JobState, Progress
from jobd.testing import (
    Outcome,
    OutcomeKind,
    configure_plugin,
    open_plugin,
    plugin_settings,
    run_handler,
    validate_payload,
)


def _refuse_odd(payload: Any, settings: Any) -> None:
    if payload.get("n", 0) % 2:
        raise InvalidJob("must be even", field="payload.n")
    if payload.get("n", 0) < 0:
        raise ValueError("n must not be negative")


@handler("kit.echo", validate=_refuse_odd)
async def echo(job: JobContext) -> Any:
    await job.progress(0.25, "started")
    await job.progress(1.0)
    return {
        "payload": job.payload,
        "type": job.type,
        "queue": job.queue,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
    }


@handler("kit.signal")
async def signal(job: JobContext) -> Any:
    kind = job.payload["kind"]
    if kind == "retry":
        raise Retry(delay=12.5, reason="busy")
    if kind == "retry-plain":
        raise Retry()
    if kind == "fail":
        raise Fail("bad input")
    if kind == "error":
        raise KeyError("missing")
    if kind == "exit":
        raise SystemExit(3)
    if kind == "interrupt":
        raise KeyboardInterrupt
    if kind == "not-json":
        return {"when": object()}
    return None


@handler("kit.slow", timeout="5m")
async def slow(job: JobContext) -> Any:
    await trio.sleep(job.payload["seconds"])
    return "done"


async def test_a_returning_handler_completes_with_its_result_and_progress() -> None:
    outcome = await run_handler(echo, {"n": 2}, attempt=2, max_attempts=4, queue="q", job_type="kit.other")
    assert outcome.kind is OutcomeKind.COMPLETED
    expected = {"payload": {"n": 2}, "type": "kit.other", "queue": "q", "attempt": 2, "max_attempts": 4}
    assert outcome.result == expected
    assert outcome.progress == (Progress(0.25, "started"), Progress(1.0, None))
    assert outcome.state is JobState.COMPLETED


async def test_a_handler_reads_the_parents_it_is_given() -> None:
    @handler("kit.report")
    async def report(job: JobContext) -> Any:
        return {str(parent): result for parent, result in job.parents.items()}

    parent = uuid.uuid4()
    outcome = await run_handler(report, None, parents={parent: {"rows": 3}})
    assert outcome.result == {str(parent): {"rows": 3}}
    assert (await run_handler(report, None)).result == {}


async def test_retry_keeps_its_delay_and_reason() -> None:
    outcome = await run_handler(signal, {"kind": "retry"})
    assert outcome == Outcome(
        OutcomeKind.RETRY, 1, 3, delay=12.5, reason="retry requested: busy", error=outcome.error
    )
    assert isinstance(outcome.error, Retry)
    assert outcome.state is JobState.SCHEDULED
    plain = await run_handler(signal, {"kind": "retry-plain"})
    assert plain.reason == "retry requested" and plain.delay is None


async def test_retry_on_the_last_attempt_ends_failed() -> None:
    outcome = await run_handler(signal, {"kind": "retry"}, attempt=3, max_attempts=3)
    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.state is JobState.FAILED


async def test_fail_ends_failed_whatever_attempts_are_left() -> None:
    outcome = await run_handler(signal, {"kind": "fail"}, attempt=1, max_attempts=10)
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.reason == "failed: bad input"
    assert outcome.state is JobState.FAILED


async def test_any_other_exception_is_an_error_that_backs_off() -> None:
    outcome = await run_handler(signal, {"kind": "error"})
    assert outcome.kind is OutcomeKind.ERROR
    assert isinstance(outcome.error, KeyError)
    assert outcome.reason == "KeyError: 'missing'"
    assert outcome.state is JobState.SCHEDULED


@pytest.mark.parametrize(
    ("kind", "reason"), [("exit", "SystemExit: 3"), ("interrupt", "KeyboardInterrupt: ")]
)
async def test_a_handlers_own_exit_or_interrupt_is_an_error_as_in_the_worker(kind: str, reason: str) -> None:
    """The worker counted these as failed attempts while run_handler let them escape."""
    outcome = await run_handler(signal, {"kind": kind})
    assert outcome.kind is OutcomeKind.ERROR and outcome.reason == reason
    assert outcome.state is JobState.SCHEDULED


async def test_a_result_that_is_not_json_is_an_error() -> None:
    outcome = await run_handler(signal, {"kind": "not-json"})
    assert outcome.kind is OutcomeKind.ERROR
    assert "not JSON" in outcome.reason


async def test_the_handlers_timeout_applies(autojump_clock: trio.testing.MockClock) -> None:
    outcome = await run_handler(slow, {"seconds": 301})
    assert outcome.kind is OutcomeKind.TIMED_OUT
    assert outcome.reason == "timed out after 300s"
    assert (await run_handler(slow, {"seconds": 299})).kind is OutcomeKind.COMPLETED


async def test_the_callers_timeout_wins(autojump_clock: trio.testing.MockClock) -> None:
    outcome = await run_handler(slow, {"seconds": 10}, timeout=1.5)
    assert outcome.kind is OutcomeKind.TIMED_OUT
    assert outcome.reason == "timed out after 1.5s"


async def test_an_invalid_payload_is_refused_before_the_handler_runs() -> None:
    with pytest.raises(InvalidJob) as refused:
        await run_handler(echo, {"n": 3})
    assert refused.value.field == "payload.n"
    unchecked = await run_handler(echo, {"n": 3}, validate=False)
    assert unchecked.kind is OutcomeKind.COMPLETED


def test_validate_payload_turns_value_errors_into_invalid_job() -> None:
    validate_payload(echo, {"n": 4})
    validate_payload(slow, "anything: slow has no validator")
    with pytest.raises(InvalidJob, match="n must not be negative") as refused:
        validate_payload(echo, {"n": -2})
    assert refused.value.field == "payload"


async def test_attempt_must_be_within_max_attempts() -> None:
    with pytest.raises(ValueError, match="attempt"):
        await run_handler(echo, {}, attempt=4, max_attempts=3)


def _plugin_module(name: str, monkeypatch: pytest.MonkeyPatch, **hooks: Any) -> types.ModuleType:
    """A plugin module importable by name, as an entry point would name it."""
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, hookimpl(function))
    monkeypatch.setitem(sys.modules, name, module)
    return module


@dataclass(frozen=True, slots=True)
class Paint:
    color: Literal["red", "blue"] = "red"


@handler("kit.paint", validate=lambda payload, settings: _refuse_color(payload, settings))
async def paint(job: JobContext) -> Any:
    return job.settings.color


def _refuse_color(payload: Any, settings: Paint) -> None:
    if payload == settings.color:
        raise InvalidJob("already that color", field="payload")


def _paint_plugin(monkeypatch: pytest.MonkeyPatch, seen: list[Mapping[str, Any]]) -> types.ModuleType:
    def jobd_configure(config: Mapping[str, Any]) -> Paint:
        seen.append(dict(config))
        return jobd.parse_settings(Paint, config)

    def jobd_handlers() -> list[Handler]:
        return [echo, paint]

    hooks = {"jobd_configure": jobd_configure, "jobd_handlers": jobd_handlers}
    return _plugin_module("kit_plugin", monkeypatch, **hooks)


def test_configure_plugin_hands_over_the_table_and_collects_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Mapping[str, Any]] = []
    module = _paint_plugin(monkeypatch, seen)
    registry = configure_plugin(module, {"color": "blue"})
    assert seen == [{"color": "blue"}]
    assert registry.settings["kit_plugin"] == Paint("blue")
    found = registry.get("kit.echo")
    assert found is not None and found.plugin == "kit_plugin" and found.settings == Paint("blue")
    assert registry.get("jobd.noop") is not None  # the built-ins are there, as in the daemon
    configure_plugin(module)
    assert seen[-1] == {}
    with pytest.raises(ConfigError) as refused:
        configure_plugin(module, {"color": "green"}, name="paint")
    assert refused.value.key == "plugins.paint.color"
    assert "plugins.paint.color" in str(refused.value)


async def test_settings_reach_the_handler_and_its_validator(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _paint_plugin(monkeypatch, [])
    blue = plugin_settings(module, {"color": "blue"})
    assert blue == Paint("blue")
    assert (await run_handler(paint, "red", settings=blue)).result == "blue"
    with pytest.raises(InvalidJob, match="already that color"):
        validate_payload(paint, "blue", settings=blue)
    # A handler from a registry carries the settings it was registered with.
    registered = configure_plugin(module, {"color": "blue"}).get("kit.paint")
    assert registered is not None
    assert (await run_handler(registered, "red")).result == "blue"
    assert (await run_handler(registered, "blue", settings=Paint("red"))).result == "red"


def test_a_validator_that_takes_no_settings_is_refused_when_declared() -> None:
    with pytest.raises(TypeError, match=r"validate= must take \(payload, settings\)"):
        handler("kit.old", validate=lambda payload: None)(echo.function)


def test_a_plugin_without_a_configure_hook_refuses_a_table(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _plugin_module("kit_bare", monkeypatch)
    configure_plugin(module, {})
    with pytest.raises(ConfigError, match="takes no configuration"):
        configure_plugin(module, {"anything": 1})


def test_an_installed_plugin_gets_its_entry_point_name_and_distribution() -> None:
    jobd_example = pytest.importorskip("jobd_example")
    with pytest.raises(ConfigError) as refused:
        configure_plugin(jobd_example, {"nope": 1})
    assert refused.value.key == "plugins.example.nope"
    found = configure_plugin(jobd_example, {}).get("example.greet")
    assert found is not None and found.plugin == "jobd-example"


async def test_open_plugin_holds_the_lifespan_open_around_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def resources() -> AsyncIterator[None]:
        events.append("open")
        yield
        events.append("closed")

    def jobd_lifespan(settings: Paint) -> AbstractAsyncContextManager[None]:
        events.append(settings.color)
        return resources()

    def jobd_configure(config: Mapping[str, Any]) -> Paint:
        return jobd.parse_settings(Paint, config)

    hooks = {"jobd_lifespan": jobd_lifespan, "jobd_configure": jobd_configure}
    module = _plugin_module("kit_pool", monkeypatch, **hooks)
    async with open_plugin(module, {"color": "blue"}) as registry:
        assert events == ["blue", "open"]
        assert registry.get("jobd.sleep") is not None
    assert events == ["blue", "open", "closed"]


@handler("kit.tick")
async def tick(job: JobContext) -> Any:
    tick_time = None if job.scheduled_for is None else str(job.scheduled_for)
    return {"schedule": job.schedule, "scheduled_for": tick_time}


async def test_a_handler_sees_the_schedule_and_tick_that_made_its_job() -> None:
    when = datetime(2030, 1, 1, 2, 30, tzinfo=UTC)
    made = await run_handler(tick, None, schedule="nightly", scheduled_for=when)
    assert made.result == {"schedule": "nightly", "scheduled_for": "2030-01-01 02:30:00+00:00"}
    plain = await run_handler(tick, None)
    assert plain.result == {"schedule": None, "scheduled_for": None}


# -- blocking handlers: plain `def`, run in a worker thread ------------------------------------


@handler("kit.blocking")
def blocking(job: JobContext) -> Any:
    """Blocking code, in its own thread: reports progress through the event loop."""
    trio.from_thread.run(job.progress, 0.5, "half way")
    if job.payload == "fail":
        raise Fail("no good")
    return {"thread": threading.get_ident(), "attempt": job.attempt}


async def test_a_plain_def_handler_runs_in_a_worker_thread() -> None:
    outcome = await run_handler(blocking, None)
    assert outcome.kind is OutcomeKind.COMPLETED
    assert outcome.result["thread"] != threading.get_ident()
    assert outcome.progress == (Progress(0.5, "half way"),)
    assert blocking.blocking and not echo.blocking
    failed = await run_handler(blocking, "fail")
    assert (failed.kind, failed.reason) == (OutcomeKind.FAILED, "failed: no good")


async def test_a_blocking_handler_that_checks_for_cancellation_stops_at_its_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    checks: list[int] = []

    @handler("kit.polling", timeout=5)
    def polling(job: JobContext) -> None:
        while True:
            checks.append(1)
            trio.from_thread.check_cancelled()  # raises Cancelled once the job is cancelled
            time.sleep(0.001)

    outcome = await run_handler(polling, None)
    assert (outcome.kind, outcome.reason) == (OutcomeKind.TIMED_OUT, "timed out after 5s")
    assert checks


@pytest.mark.parametrize("abandon", [False, True])
async def test_a_blocking_handler_past_its_timeout_is_waited_for_unless_abandoned(
    autojump_clock: trio.testing.MockClock, abandon: bool
) -> None:
    release, ended = threading.Event(), threading.Event()

    @handler("kit.stuck", timeout=5, abandon_on_cancel=abandon)
    def stuck(job: JobContext) -> str:
        release.wait(30)
        ended.set()
        return "late"

    async def release_later() -> None:
        await trio.sleep(60)  # virtual: well past the timeout
        release.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(release_later)
        outcome = await run_handler(stuck, None)
        assert outcome.kind is OutcomeKind.TIMED_OUT
        assert ended.is_set() is not abandon  # abandoned: the job ended while the thread still ran
        assert (trio.current_time() >= 60) is not abandon


def test_abandon_on_cancel_is_only_for_blocking_handlers() -> None:
    async def coroutine(job: JobContext) -> None:
        pass

    with pytest.raises(ValueError, match="plain def"):
        handler("kit.async", abandon_on_cancel=True)(coroutine)


async def test_an_async_callable_that_looks_blocking_is_refused_clearly() -> None:
    class Sneaky:
        async def __call__(self, job: JobContext) -> None:
            pass

    outcome = await run_handler(handler("kit.sneaky")(Sneaky()), None)
    assert outcome.kind is OutcomeKind.ERROR and "define it async" in outcome.reason
