"""The plugin host: loads the `jobd` entry points through pluggy and collects their handlers."""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Any

import pluggy

from jobd import builtins, hookspecs
from jobd.config import Config
from jobd.errors import ConfigError, PluginError
from jobd.handlers import Handler

ENTRY_POINT_GROUP = "jobd"
BUILTIN_PLUGIN = "jobd"

log = logging.getLogger("jobd.plugins")


@dataclass(frozen=True, slots=True)
class LoadedPlugin:
    name: str  # the entry point's name: selects [plugins.NAME]
    distribution: str  # the installed distribution, as `GET /v1/handlers` reports it
    module: ModuleType


@dataclass(frozen=True, slots=True)
class Registry:
    """The handlers of every loaded plugin, by job type."""

    handlers: Mapping[str, Handler] = field(default_factory=dict)
    plugins: Sequence[LoadedPlugin] = ()

    def get(self, job_type: str) -> Handler | None:
        return self.handlers.get(job_type)


class PluginHost:
    """Owns the pluggy manager; `load` once, then `configure` at start and on every reload."""

    def __init__(self) -> None:
        self._manager = pluggy.PluginManager(hookspecs.PROJECT)
        self._manager.add_hookspecs(hookspecs)
        self._plugins: list[LoadedPlugin] = []

    def load(self, entry_points: Iterable[importlib.metadata.EntryPoint] | None = None) -> None:
        """Register the built-ins and every plugin of the `jobd` entry-point group."""
        self._register(LoadedPlugin(BUILTIN_PLUGIN, BUILTIN_PLUGIN, builtins))
        if entry_points is None:
            entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        for entry_point in sorted(entry_points, key=lambda ep: ep.name):
            distribution = entry_point.dist.name if entry_point.dist else entry_point.name
            label = f"{entry_point.name} ({distribution})"
            try:
                module = entry_point.load()
            except Exception as error:  # any import-time failure of third-party code
                raise PluginError(label, f"failed to import {entry_point.value!r}: {error!r}") from error
            if not isinstance(module, ModuleType):
                raise PluginError(label, f"entry point {entry_point.value!r} must name a module")
            if any(plugin.name == entry_point.name for plugin in self._plugins):
                raise PluginError(label, f"another plugin is already named {entry_point.name!r}")
            self._register(LoadedPlugin(entry_point.name, distribution, module))

    def _register(self, plugin: LoadedPlugin) -> None:
        try:
            self._manager.register(plugin.module, name=plugin.name)
        except (ValueError, pluggy.PluginValidationError) as error:
            raise PluginError(plugin.name, str(error)) from error
        self._plugins.append(plugin)
        log.debug("loaded plugin %s from %s", plugin.name, plugin.distribution)

    @property
    def plugins(self) -> Sequence[LoadedPlugin]:
        return tuple(self._plugins)

    def configure(self, config: Config) -> Registry:
        """Hand each plugin its table, then collect the handlers into a `Registry`."""
        names = {plugin.name for plugin in self._plugins}
        for table_name in config.plugins:
            if table_name not in names:
                raise ConfigError(
                    f"no installed plugin is named {table_name!r} (installed: {', '.join(sorted(names))})",
                    key=f"plugins.{table_name}",
                    file=config.source,
                )
        for plugin in self._plugins:
            self._configure_one(plugin, config.plugins.get(plugin.name, {}), config.source)
        return Registry(MappingProxyType(self._collect_handlers()), tuple(self._plugins))

    def _configure_one(self, plugin: LoadedPlugin, table: Mapping[str, Any], source: str | None) -> None:
        hook = self._implementation("jobd_configure", plugin)
        if hook is None:
            if table:
                raise ConfigError(
                    "this plugin takes no configuration", key=f"plugins.{plugin.name}", file=source
                )
            return
        try:
            hook(config=MappingProxyType(dict(table)))
        except ConfigError as error:
            key = f"plugins.{plugin.name}" + (f".{error.key}" if error.key else "")
            raise ConfigError(error.reason, key=key, file=source) from None
        except Exception as error:
            raise PluginError(plugin.distribution, f"jobd_configure failed: {error!r}") from error

    def _collect_handlers(self) -> dict[str, Handler]:
        found: dict[str, Handler] = {}
        for plugin in self._plugins:
            hook = self._implementation("jobd_handlers", plugin)
            if hook is None:
                continue
            try:
                handlers = list(hook())
            except Exception as error:
                raise PluginError(plugin.distribution, f"jobd_handlers failed: {error!r}") from error
            for item in handlers:
                if not isinstance(item, Handler):
                    raise PluginError(
                        plugin.distribution,
                        f"jobd_handlers returned {item!r}; decorate handlers with @jobd.handler",
                    )
                if item.type in found:
                    raise PluginError(
                        plugin.distribution,
                        f"job type {item.type!r} is already handled by plugin {found[item.type].plugin!r}",
                    )
                found[item.type] = item.with_plugin(plugin.distribution)
        return found

    def _implementation(self, hook_name: str, plugin: LoadedPlugin) -> Any:
        """The function `plugin` registered for `hook_name` with @jobd.hookimpl, if any."""
        caller = getattr(self._manager.hook, hook_name)
        for implementation in caller.get_hookimpls():
            if implementation.plugin_name == plugin.name:
                return implementation.function
        return None

    def lifespans(self) -> list[tuple[str, AbstractAsyncContextManager[None]]]:
        """(plugin, resource holder) of every plugin that holds resources, in load order."""
        found = []
        for plugin in self._plugins:
            hook = self._implementation("jobd_lifespan", plugin)
            if hook is None:
                continue
            try:
                lifespan = hook()
            except Exception as error:
                raise PluginError(plugin.distribution, f"jobd_lifespan failed: {error!r}") from error
            if lifespan is not None:
                found.append((plugin.distribution, lifespan))
        return found
