"""Plugin settings are a value the daemon owns: one generation, swapped whole, never shared.

The plugins here keep no module state; what their `jobd_configure` returns is all jobd
keeps. A reload takes every plugin's new settings or none, and a second host in the same
process (`jobd.testing` next to a daemon) cannot change what the daemon's handlers see.
"""

from __future__ import annotations

import importlib.metadata
import sys
import types
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import trio

import jobd
from jobd import daemon as daemon_module
from jobd.config import load_config
from jobd.daemon import Daemon
from jobd.job import JobState
from jobd.plugins import ENTRY_POINT_GROUP, PluginHost
from jobd.testing import configure_plugin, run_handler


@dataclass(frozen=True, slots=True)
class Level:
    level: int = jobd.setting(1, minimum=1)


def level_plugin(name: str, monkeypatch: pytest.MonkeyPatch) -> importlib.metadata.EntryPoint:
    """A plugin `name` with one handler, `NAME.level`, that returns its settings' level."""

    @jobd.handler(f"{name}.level")
    async def report(job: jobd.JobContext) -> int:
        settings: Level = job.settings
        return settings.level

    def jobd_configure(config: Mapping[str, Any]) -> Level:
        return jobd.parse_settings(Level, config)

    def jobd_handlers() -> list[jobd.Handler]:
        return [report]

    module = types.ModuleType(f"plugin_{name}")
    module.jobd_configure = jobd.hookimpl(jobd_configure)  # type: ignore[attr-defined]
    module.jobd_handlers = jobd.hookimpl(jobd_handlers)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return importlib.metadata.EntryPoint(name=name, value=module.__name__, group=ENTRY_POINT_GROUP)


def write_config(path: Path, tmp_path: Path, plugins: dict[str, Any]) -> None:
    tables = {
        "store": {"url": "memory:"},
        "api": {"socket": str(tmp_path / "jobd.sock")},
        "metrics": {"listen": ""},
        "plugins": plugins,
    }
    path.write_text(tomli_w.dumps(tables))


@asynccontextmanager
async def engine(daemon: Daemon) -> AsyncIterator[None]:
    """The daemon's own store, service and worker pool, without its sockets."""
    await daemon.store.open()
    daemon.service.mark_store_ready()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(daemon.pool.run, grace=lambda: 5.0))
            yield
            daemon.pool.request_stop()
    finally:
        await daemon.store.close()


async def run_job(daemon: Daemon, job_type: str, payload: Any = None) -> Any:
    inserted = await daemon.service.submit({"type": job_type, "payload": payload})
    with trio.fail_after(30):
        job = await daemon.service.wait(str(inserted.job.id), "30")
    assert job.state == JobState.COMPLETED, job.last_error
    return job.result


async def test_a_reload_takes_every_plugins_settings_or_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon_module, "setup_logging", lambda *args: None)  # keep pytest's log capture
    path = tmp_path / "jobd.toml"
    write_config(path, tmp_path, {"alpha": {"level": 1}, "beta": {"level": 1}})
    host = PluginHost()
    host.load([level_plugin("alpha", monkeypatch), level_plugin("beta", monkeypatch)])
    daemon = Daemon(load_config(str(path), env={}), host, str(path))

    async with engine(daemon):
        assert await run_job(daemon, "alpha.level") == 1
        before = daemon.live.current

        # alpha accepts its new table, beta (loaded after it) refuses its own.
        write_config(path, tmp_path, {"alpha": {"level": 2}, "beta": {"level": 0}})
        await daemon.reload()
        assert daemon.live.current is before
        assert await run_job(daemon, "alpha.level") == 1
        assert await run_job(daemon, "beta.level") == 1

        write_config(path, tmp_path, {"alpha": {"level": 3}, "beta": {"level": 4}})
        await daemon.reload()
        settings = daemon.live.current.registry.settings
        assert dict(settings) == {"jobd": None, "alpha": Level(3), "beta": Level(4)}
        assert await run_job(daemon, "alpha.level") == 3
        assert await run_job(daemon, "beta.level") == 4


async def test_a_daemon_and_jobd_testing_in_one_process_do_not_share_settings(
    tmp_path: Path,
) -> None:
    jobd_example = pytest.importorskip("jobd_example")
    path = tmp_path / "jobd.toml"
    write_config(path, tmp_path, {"example": {"greeting": "Howdy"}})
    host = PluginHost()
    host.load()
    daemon = Daemon(load_config(str(path), env={}), host, str(path))

    async with engine(daemon):
        # A test configures the same plugin module next to the running daemon.
        hi = configure_plugin(jobd_example, {"greeting": "Hi"}).get("example.greet")
        assert hi is not None
        assert (await run_handler(hi, {"name": "Ada"})).result == {"message": "Hi, Ada!"}
        assert await run_job(daemon, "example.greet", {"name": "Ada"}) == {"message": "Howdy, Ada!"}
