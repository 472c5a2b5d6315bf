"""The hooks a jobd plugin may implement (pluggy project name `jobd`).

A plugin is a module named by an entry point in the group `jobd`; the entry point's
name is the plugin's name and selects its config table `[plugins.NAME]`. Hooks are
synchronous: they register and configure. Async work belongs in handlers and in the
context manager returned by `jobd_lifespan`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from jobd.handlers import Handler

PROJECT = "jobd"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def jobd_handlers() -> Sequence[Handler]:
    """Return the handlers this plugin provides.

    Each item is what `@jobd.handler(...)` made of an async function. Two plugins
    returning the same job type stop the daemon at start, naming both plugins.
    Called once at start and again on every reload, after `jobd_configure`.
    """
    raise NotImplementedError


@hookspec
def jobd_configure(config: Mapping[str, Any]) -> None:
    """Receive this plugin's own config table, `[plugins.NAME]` of the daemon's config.

    Called once per plugin, with only that plugin's table (an empty mapping when the
    config has none), before `jobd_handlers` and again on every reload. Validate it
    strictly: raise `jobd.ConfigError(reason, key="the_key")` for a bad or unknown
    key; jobd reports it as `plugins.NAME.the_key` with the config file's name, and
    `jobd check` and the daemon's start fail. On reload, a refused table keeps the
    old config in force.
    """


@hookspec
def jobd_lifespan() -> AbstractAsyncContextManager[None] | None:
    """Return an async context manager that holds resources for this plugin's handlers.

    The daemon enters it after configuring plugins and before the first job runs,
    and exits it on shutdown after the last job has stopped: open a shared HTTP
    client or a connection pool on enter, close it on exit. Return None to hold
    nothing.
    """
