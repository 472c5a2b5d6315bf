"""The composition root: builds every part, starts each service in order, handles signals.

Order of start: control socket (so health answers at once, `degraded` until the store
is open) -> store, with retries for a shared store -> rescue of orphaned jobs ->
plugins' lifespans -> maintenance, scheduler, store listener, worker pool -> READY=1.
Shutdown runs it backwards: stop claiming, drain the pool, exit the lifespans, stop
serving, close the store.

A shutdown ends within `shutdown_timeout` + `SHUTDOWN_MARGIN` of the stop request,
whatever the handlers do: a handler that ignores its cancellation, or waits on a thread
that cannot be interrupted, is abandoned then (its job left to the lease rescue) and the
process exits with `EXIT_ABANDONED`. If the event loop itself is blocked, a thread exits
the process `HARD_EXIT_AFTER` seconds later still.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from typing import NoReturn

import trio

from jobd import http, systemd
from jobd.api import make_handler
from jobd.backoff import StoreOutage
from jobd.clock import Clock, utc_now
from jobd.completer import Completer
from jobd.config import Config, load_config
from jobd.errors import ConfigError, JobdError, PluginError, StoreUnavailable
from jobd.job import JobState
from jobd.logs import setup_logging
from jobd.loopwatch import LoopWatch
from jobd.maintenance import Maintenance
from jobd.metrics import Metrics
from jobd.plugins import Lifespan, PluginHost
from jobd.scheduler import Scheduler
from jobd.service import JobService
from jobd.settings import LiveSettings, build_settings
from jobd.store import Store
from jobd.store.factory import create_store, describe
from jobd.tracing import AttemptTracer, open_tracer
from jobd.version import __version__
from jobd.watch import JobWatch
from jobd.worker import SHUTDOWN_MARGIN, WorkerPool

STATUS_INTERVAL = 5.0
# Objects allocated, less those freed, before the collector looks for cycles among them.
YOUNG_GENERATION = 20_000
# Seconds a thread that wants the interpreter back waits for the one holding it before
# asking it to let go (Python's default is 5 ms); see `settle_interpreter`.
SWITCH_INTERVAL = 0.0005
EXIT_ABANDONED = 70  # sysexits' EX_SOFTWARE: stopped, leaving handlers that would not stop
HARD_EXIT_AFTER = 5.0  # seconds past the shutdown's deadline a blocked event loop is given
STORE_WAIT_MARGIN = 30.0
# The metrics port may be reachable by anyone: scrapes send no body, and few come at once.
METRICS_LIMITS = http.Limits(
    max_body_bytes=0, request_timeout=10.0, max_connections=16
)  # seconds of start timeout granted beyond each retry's delay

log = logging.getLogger("jobd.daemon")


class StartupError(JobdError):
    code = "startup_error"


@dataclass(frozen=True, slots=True)
class Engine:
    """The parts that run jobs and answer for them, wired together by `build_engine`."""

    store: Store
    live: LiveSettings
    metrics: Metrics
    watch: JobWatch
    pool: WorkerPool
    maintenance: Maintenance
    scheduler: Scheduler
    service: JobService


def build_engine(
    store: Store,
    live: LiveSettings,
    metrics: Metrics,
    *,
    owner: str,
    clock: Clock = utc_now,
    tracer: AttemptTracer | None = None,
) -> Engine:
    """The one wiring of the engine, for the daemon and for tests alike."""
    watch = JobWatch()

    def wake_workers() -> None:
        pool.wake()

    maintenance = Maintenance(store, live, metrics, clock, wake_workers=wake_workers)
    completer = Completer(metrics, watch, on_retry_scheduled=maintenance.schedule_changed)
    pool = WorkerPool(store, live, metrics, completer, watch, owner=owner, clock=clock, tracer=tracer)
    scheduler = Scheduler(
        store, live, metrics, clock, wake_workers=wake_workers, schedule_changed=maintenance.schedule_changed
    )
    service = JobService(store, live, pool, maintenance, scheduler, metrics, watch, clock)
    return Engine(store, live, metrics, watch, pool, maintenance, scheduler, service)


@dataclass(frozen=True, slots=True)
class _SocketFile:
    """The control socket this daemon bound: removed at exit only if it is still that file."""

    path: str
    inode: int


class Daemon:
    def __init__(self, config: Config, host: PluginHost, config_path: str | None) -> None:
        self._config_path = config_path
        self._host = host
        self.live = LiveSettings(build_settings(config, host.configure(config)))
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.metrics = Metrics(__version__)
        self.store: Store = create_store(config.store)
        if self.store.shared:  # its listener's gauges read "disconnected" until it connects
            self.metrics.set_listener(False)
        self.tracer = open_tracer(config.tracing.enabled, config.source or "the config", __version__)
        engine = build_engine(self.store, self.live, self.metrics, owner=self.owner, tracer=self.tracer)
        self.pool = engine.pool
        self.maintenance = engine.maintenance
        self.scheduler = engine.scheduler
        self.service = engine.service
        self.loop_watch = LoopWatch(self.pool.job_on_stack, self.metrics)
        self._signals_seen = 0
        self._stopping = trio.Event()
        self._shutdown_deadline = trio.CancelScope()  # its deadline is set by stop()
        self._hard_exit: threading.Timer | None = None  # a thread's, for a blocked event loop
        self._hard_exit_at = math.inf  # time.monotonic() of it
        self._cancel_store_wait: trio.CancelScope | None = None
        self._listening_on = ""
        self._socket_file: _SocketFile | None = None  # the socket we bound, if we did

    @property
    def config(self) -> Config:
        return self.live.current.config

    async def run(self) -> None:
        config = self.config
        # Bind everything before anything runs: a taken address is a clean start error.
        listeners = self._control_listeners()
        try:
            metrics_listeners = await http.bind_tcp(config.metrics.listen) if config.metrics.listen else []
            await self._serve(listeners, metrics_listeners)
        finally:
            self._remove_socket_file()
            with trio.CancelScope(shield=True):
                await self.store.close()
                if self.tracer is not None:  # the spans still buffered leave now
                    await trio.to_thread.run_sync(self.tracer.shutdown)
            if self._hard_exit is not None:
                self._hard_exit.cancel()
        log.info("jobd stopped")

    async def _serve(
        self, listeners: list[trio.SocketListener], metrics_listeners: list[trio.SocketListener]
    ) -> None:
        config = self.config
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._handle_signals)
            await nursery.start(
                partial(http.serve, listeners, make_handler(self.service), limits=self._limits)
            )
            if metrics_listeners:
                await nursery.start(
                    partial(http.serve, metrics_listeners, self._serve_metrics, limits=METRICS_LIMITS)
                )
            await nursery.start(self.loop_watch.run)
            await nursery.start(systemd.run_watchdog)
            nursery.start_soon(self._end_a_stuck_shutdown)
            log.info(
                "jobd %s listening on %s, store %s",
                __version__,
                self._listening_on,
                describe(config.store.url),
                extra={"owner": self.owner},
            )
            if await self._open_store():
                await self._run_engine()
            nursery.cancel_scope.cancel()

    def _limits(self) -> http.Limits:
        api = self.config.api
        return http.Limits(
            max_body_bytes=api.max_request_bytes,
            request_timeout=api.request_timeout,
            max_connections=api.max_connections,
        )

    def _control_listeners(self) -> list[trio.SocketListener]:
        fds = systemd.listen_fds()
        if fds:
            self._listening_on = f"{len(fds)} socket(s) passed by the service manager"
            return [http.listener_from_fd(fd) for fd in fds]
        api = self.config.api
        self._listening_on = api.socket
        try:
            listener = http.bind_unix_socket(api.socket, int(api.socket_mode, 8), api.socket_group)
        except OSError as error:  # e.g. its directory cannot be made
            raise ConfigError(
                f"cannot listen on {api.socket}: {error.strerror or error}", key="api.socket"
            ) from None
        self._socket_file = _SocketFile(api.socket, os.stat(api.socket).st_ino)
        return [listener]

    def _remove_socket_file(self) -> None:
        """A clean exit removes the socket file it made (not one passed by systemd)."""
        if self._socket_file is None:
            return
        with contextlib.suppress(OSError):
            if os.stat(self._socket_file.path).st_ino == self._socket_file.inode:
                os.unlink(self._socket_file.path)

    async def _open_store(self) -> bool:
        """Open the store, retrying a shared store until it answers; False if stopped first."""
        outage = StoreOutage(log, "open the store")
        with trio.CancelScope() as scope:
            self._cancel_store_wait = scope
            while True:
                try:
                    await self.store.open()
                    await self.maintenance.rescue_orphans()
                    outage.succeeded()
                    break
                except StoreUnavailable as error:
                    if not self.store.shared:
                        raise StartupError(
                            f"cannot open the store {describe(self.config.store.url)}: {error}"
                        ) from None
                    delay = outage.failed(error)
                    systemd.notify_status(f"waiting for the store: {error}")
                    # Still starting, and alive: keep systemd from killing the start.
                    systemd.notify(f"EXTEND_TIMEOUT_USEC={int((delay + STORE_WAIT_MARGIN) * 1_000_000)}")
                    await trio.sleep(delay)
        if scope.cancelled_caught:
            return False
        self.service.mark_store_ready()
        return True

    async def _run_engine(self) -> None:
        async with contextlib.AsyncExitStack() as lifespans:
            for lifespan in self._host.lifespans(self.live.current.registry):
                await lifespans.enter_async_context(_plugin_lifespan(lifespan))
            async with trio.open_nursery() as background:
                await background.start(self.maintenance.run)
                await background.start(self.scheduler.run)
                await background.start(self.store.listen, self._on_store_event)
                async with trio.open_nursery() as engine:
                    await engine.start(self._run_pool)
                    with contextlib.suppress(StoreUnavailable):  # the gauges can wait for the store
                        await self.maintenance.refresh_gauges()
                    settle_interpreter()
                    systemd.notify_ready(self._status_line())
                    log.info(
                        "ready: %d handlers, concurrency %d",
                        len(self.live.current.registry.handlers),
                        self.pool.capacity,
                    )
                    background.start_soon(self._report_status)
                background.cancel_scope.cancel()

    async def _run_pool(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.pool.run(grace=self._grace, task_status=task_status)

    def _grace(self) -> float:
        return 0.0 if self._signals_seen > 1 else self.config.daemon.shutdown_timeout

    def _on_store_event(self, event: str) -> None:
        if event == "cancel":
            self.pool.check_cancels()
        elif event == "connected":
            self.metrics.set_listener(True, utc_now())
        elif event == "disconnected":
            self.metrics.set_listener(False)
        else:
            self.pool.wake()
            self.maintenance.schedule_changed()

    async def _serve_metrics(self, request: http.Request) -> http.Response:
        if request.path != "/metrics":
            return http.error_response(404, "not_found", f"no such path: {request.path}")
        exposition = self.service.metrics()
        return http.Response(200, exposition.body, exposition.content_type)

    async def _report_status(self) -> None:
        while True:
            await trio.sleep(STATUS_INTERVAL)
            systemd.notify_status(self._status_line())  # from the counts maintenance keeps fresh

    def _status_line(self) -> str:
        counts = self.maintenance.counts
        pending = sum(states.get(JobState.PENDING, 0) for states in counts.values())
        scheduled = sum(states.get(JobState.SCHEDULED, 0) for states in counts.values())
        return f"running {self.pool.busy}/{self.pool.capacity} jobs; {pending} pending, {scheduled} scheduled"

    # -- signals ------------------------------------------------------------------------

    async def _handle_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self.reload()
                else:
                    self.stop(signal.Signals(signum).name)

    def stop(self, why: str) -> None:
        self._signals_seen += 1
        if self._signals_seen > 1:
            log.warning("%s again: cancelling the running jobs now", why)
            self.pool.request_stop(immediately=True)
            self._set_shutdown_deadline(0.0)
            return
        log.info("%s: stopping; running jobs have %gs to finish", why, self.config.daemon.shutdown_timeout)
        self._set_shutdown_deadline(self.config.daemon.shutdown_timeout)
        self._stopping.set()
        systemd.notify_stopping()
        self.service.stopping = True
        self.pool.request_stop()
        if self._cancel_store_wait is not None:
            self._cancel_store_wait.cancel()

    # -- a shutdown that cannot end ------------------------------------------------------

    def _set_shutdown_deadline(self, grace: float) -> None:
        """The shutdown ends `grace` + `SHUTDOWN_MARGIN` seconds from now at the latest (or
        earlier, if an earlier stop said so); a blocked event loop, `HARD_EXIT_AFTER` later."""
        scope = self._shutdown_deadline
        scope.deadline = min(scope.deadline, trio.current_time() + grace + SHUTDOWN_MARGIN)
        hard_exit_in = grace + SHUTDOWN_MARGIN + HARD_EXIT_AFTER
        if time.monotonic() + hard_exit_in >= self._hard_exit_at:
            return
        if self._hard_exit is not None:
            self._hard_exit.cancel()
        self._hard_exit_at = time.monotonic() + hard_exit_in
        self._hard_exit = threading.Timer(hard_exit_in, self._exit_from_a_blocked_loop)
        self._hard_exit.daemon = True
        self._hard_exit.start()

    async def _end_a_stuck_shutdown(self) -> None:
        """Once stopping: a shutdown still going at its deadline (handlers that ignore their
        cancellation) ends without them; their jobs are left to the lease rescue."""
        await self._stopping.wait()
        with self._shutdown_deadline:
            await trio.sleep_forever()
        stuck = self.pool.abandon()
        self._remove_socket_file()
        log.error(
            "jobd stopped without finishing its shutdown: %d job(s) did not stop within %gs of "
            "being cancelled; exit status %d",
            len(stuck),
            SHUTDOWN_MARGIN,
            EXIT_ABANDONED,
        )
        _exit(EXIT_ABANDONED)

    def _exit_from_a_blocked_loop(self) -> None:
        # A thread: the event loop did not get to end the shutdown, by itself or at its deadline.
        log.critical(
            "jobd stopped without finishing its shutdown: the event loop did not end it in time "
            "(is it blocked?); exit status %d",
            EXIT_ABANDONED,
        )
        _exit(EXIT_ABANDONED)

    async def reload(self) -> None:
        """Re-read the config and swap in one new settings generation, plugins' settings
        included; a bad config is refused and the old generation stays in force, whole."""
        if self.service.stopping:
            log.info("reload ignored: jobd is stopping")
            return
        systemd.notify_reloading()
        old = self.config
        try:
            config = load_config(self._config_path)
            settings = build_settings(config, self._host.configure(config))
        except JobdError as error:
            log.error("reload refused, keeping the old config: %s", error)
        else:
            for what, before, after in (
                ("store.url", old.store.url, config.store.url),
                ("api.socket", old.api.socket, config.api.socket),
                ("metrics.listen", old.metrics.listen, config.metrics.listen),
            ):
                if before != after:
                    log.warning("%s changed; it takes effect at the next restart", what)
            self.live.current = settings
            setup_logging(config.daemon.log_level, config.daemon.log_format)
            self.pool.wake()
            self.scheduler.reload()
            log.info("config reloaded from %s", config.source or "the built-in defaults")
        systemd.notify_ready(self._status_line())


def settle_interpreter() -> None:
    """Tune the interpreter for a running daemon, once it is ready.

    What was made to start (modules, plugins, config) lives as long as the daemon: frozen,
    out of the collector's sight, a full collection does not walk it again (one took 25
    to 40 ms while draining, every few seconds). The young generation's threshold rises
    from 700 objects to `YOUNG_GENERATION`: a round of jobs or a 1,000-job request holds
    thousands of objects at once, which reference counting frees, and at 700 each of them
    set off collections that found nothing to free (a second in a 100,000-job drain on the
    memory store, whose older generations the store's jobs fill).

    The SQLite store's thread runs each statement in SQLite's C with the interpreter let
    go, and must take it back from the event loop after each one; at the default switch
    interval it waited up to 5 ms each time the loop was busy (checking the next chunk
    of a batch, running jobs), at `SWITCH_INTERVAL` up to 0.5 ms."""
    gc.freeze()
    gc.set_threshold(YOUNG_GENERATION, *gc.get_threshold()[1:])
    sys.setswitchinterval(SWITCH_INTERVAL)


@contextlib.asynccontextmanager
async def _plugin_lifespan(lifespan: Lifespan) -> AsyncIterator[None]:
    """A plugin's resources: a failure to open them stops the start naming the plugin; a
    failure to close them is logged, and the shutdown goes on."""
    try:
        await lifespan.context.__aenter__()
    except Exception as error:
        raise PluginError(lifespan.plugin, f"jobd_lifespan failed to start: {error!r}") from error
    try:
        yield
    finally:
        try:
            await lifespan.context.__aexit__(None, None, None)
        except Exception:
            log.exception("plugin %s: jobd_lifespan failed to close", lifespan.plugin)


def run(config: Config, host: PluginHost, config_path: str | None) -> None:
    """Run the daemon until it is stopped; raises JobdError for a failed start."""
    daemon = Daemon(config, host, config_path)
    try:
        trio.run(daemon.run)
    except BaseExceptionGroup as group:
        # A start error raised inside a nursery arrives wrapped: hand it on bare, so the
        # command line prints its message rather than a traceback.
        errors, others = group.split(JobdError)
        if errors is None or others is not None:
            raise
        raise _first_leaf(errors) from None


def _first_leaf(group: BaseExceptionGroup[JobdError]) -> JobdError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _exit(status: int) -> NoReturn:
    """End the process now, tasks and threads still running included (they cannot be
    waited for), after writing out the log."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(status)
