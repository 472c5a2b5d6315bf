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
    """One configuration of every loaded plugin: its handlers by job type, and each
    plugin's settings by plugin name (what its `jobd_configure` returned, else None).

    Each handler carries its plugin's settings from this same configuration.
    """

    handlers: Mapping[str, Handler] = field(default_factory=dict)
    plugins: Sequence[LoadedPlugin] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)

    def get(self, job_type: str) -> Handler | None:
        return self.handlers.get(job_type)


@dataclass(frozen=True, slots=True)
class Lifespan:
    """The resources a plugin holds while the daemon runs (`jobd_lifespan`)."""

    plugin: str  # the distribution's name, for messages
    context: AbstractAsyncContextManager[None]


class PluginHost:
    """Owns the pluggy manager; `load` once, then `configure` at start and on every reload.

    `configure` changes nothing in the host or the plugins: it returns a new `Registry`,
    or raises, so a refused reload leaves every plugin on the settings already in force.
    """

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
        """Hand each plugin its table, then collect the handlers with their plugin's settings."""
        names = {plugin.name for plugin in self._plugins}
        for table_name in config.plugins:
            if table_name not in names:
                raise ConfigError(
                    f"no installed plugin is named {table_name!r} (installed: {', '.join(sorted(names))})",
                    key=f"plugins.{table_name}",
                    file=config.source,
                )
        settings = {
            plugin.name: self._configure_one(plugin, config.plugins.get(plugin.name, {}), config.source)
            for plugin in self._plugins
        }
        handlers = self._collect_handlers(settings)
        return Registry(MappingProxyType(handlers), tuple(self._plugins), MappingProxyType(settings))

    def _configure_one(self, plugin: LoadedPlugin, table: Mapping[str, Any], source: str | None) -> Any:
        """The plugin's settings for `table`: what its `jobd_configure` returns, None without one."""
        if self._implementation("jobd_configure", plugin) is None:
            if table:
                raise ConfigError(
                    "this plugin takes no configuration", key=f"plugins.{plugin.name}", file=source
                )
            return None
        try:
            return self._call("jobd_configure", plugin, config=MappingProxyType(dict(table)))
        except ConfigError as error:
            key = f"plugins.{plugin.name}" + (f".{error.key}" if error.key else "")
            raise ConfigError(error.reason, key=key, file=source) from None
        except Exception as error:
            raise PluginError(plugin.distribution, f"jobd_configure failed: {error!r}") from error

    def _collect_handlers(self, settings: Mapping[str, Any]) -> dict[str, Handler]:
        found: dict[str, Handler] = {}
        for plugin in self._plugins:
            if self._implementation("jobd_handlers", plugin) is None:
                continue
            try:
                handlers = list(self._call("jobd_handlers", plugin, settings=settings[plugin.name]))
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
                found[item.type] = item.with_plugin(plugin.distribution, settings[plugin.name])
        return found

    def lifespans(self, registry: Registry) -> list[Lifespan]:
        """The resource holders of every plugin that has some, in load order, each given its
        plugin's settings from `registry`."""
        found = []
        for plugin in self._plugins:
            if self._implementation("jobd_lifespan", plugin) is None:
                continue
            try:
                context = self._call("jobd_lifespan", plugin, settings=registry.settings.get(plugin.name))
            except Exception as error:
                raise PluginError(plugin.distribution, f"jobd_lifespan failed: {error!r}") from error
            if context is not None:
                found.append(Lifespan(plugin.distribution, context))
        return found

    def _implementation(self, hook_name: str, plugin: LoadedPlugin) -> pluggy.HookImpl | None:
        """What `plugin` registered for `hook_name` with @jobd.hookimpl, if anything."""
        caller = getattr(self._manager.hook, hook_name)
        for implementation in caller.get_hookimpls():
            if implementation.plugin_name == plugin.name:
                return implementation  # type: ignore[no-any-return]
        return None

    def _call(self, hook_name: str, plugin: LoadedPlugin, **arguments: Any) -> Any:
        """Call `plugin`'s implementation of `hook_name` alone, with the arguments it names
        (pluggy lets an implementation take fewer than its hookspec offers)."""
        implementation = self._implementation(hook_name, plugin)
        assert implementation is not None
        return implementation.function(**{name: arguments[name] for name in implementation.argnames})
