"""The hooks a jobd plugin may implement (pluggy project name `jobd`).

A plugin is a module named by an entry point in the group `jobd`; the entry point's
name is the plugin's name and selects its config table `[plugins.NAME]`. Hooks are
synchronous: they register and configure. Async work belongs in handlers and in the
context manager returned by `jobd_lifespan`.

A plugin keeps no state of its own between calls: `jobd_configure` returns the plugin's
settings, and jobd hands that value back to the plugin's other hooks (`settings`), to
its payload validators and to its handlers (`job.settings`). As with any pluggy hook,
an implementation may leave out arguments it does not use.
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
def jobd_configure(config: Mapping[str, Any]) -> Any:
    """Parse this plugin's own config table, `[plugins.NAME]`, and return its settings.

    `config` is only that plugin's table (an empty mapping when the config has none).
    Read it with `jobd.parse_settings(Settings, config)`, add the checks that span
    several keys, and return the result: a frozen value, kept by jobd with the rest of
    the config in force. Raise `jobd.ConfigError(reason, key="the_key")` to refuse the
    table; jobd reports it as `plugins.NAME.the_key` with the config file's name, and
    `jobd check` and the daemon's start fail.

    Called once per plugin at start, by `jobd check`, and again on every reload, with no
    effect but its return value: on reload, jobd takes every plugin's new settings at
    once, or, when any plugin refuses its table, none of them.
    """


@hookspec
def jobd_handlers(settings: Any) -> Sequence[Handler]:
    """Return the handlers this plugin provides.

    Each item is what `@jobd.handler(...)` made of an async function. Two plugins
    returning the same job type stop the daemon at start, naming both plugins.
    Called after `jobd_configure`, with what it returned (None without that hook),
    at start and again on every reload, so the list may depend on the settings.
    """
    raise NotImplementedError


@hookspec
def jobd_lifespan(settings: Any) -> AbstractAsyncContextManager[None] | None:
    """Return an async context manager that holds resources for this plugin's handlers.

    The daemon enters it after configuring plugins and before the first job runs,
    and exits it on shutdown after the last job has stopped: open a shared HTTP
    client or a connection pool on enter, close it on exit. Return None to hold
    nothing. `settings` are those in force at start; a reload does not reopen the
    lifespan, so read per-job values from `job.settings`.
    """
