"""The `jobd` command: run the daemon, check or print the config, migrate the store."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import tomli_w
import trio

from jobd.config import Config, load_config
from jobd.durations import format_duration
from jobd.errors import JobdError
from jobd.logs import setup_logging
from jobd.plugins import PluginHost
from jobd.store.factory import create_store, describe
from jobd.version import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobd", description="jobd, the background-job daemon.")
    parser.add_argument("--version", action="version", version=f"jobd {__version__}")
    parser.add_argument("--config", metavar="PATH", help="the config file, for `jobd` alone (= jobd run)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in (
        ("run", "run the daemon in the foreground (the default)"),
        ("check", "validate the config, load the plugins and list the handlers"),
        ("config", "print the effective config (defaults + file + environment) as TOML"),
        ("migrate", "bring the store's schema up to date and exit"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument(
            "--config",
            metavar="PATH",
            default=argparse.SUPPRESS,  # keeps a --config given before the command
            help="the config file (else $JOBD_CONFIG, else /etc/jobd/jobd.toml)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    path = getattr(args, "config", None)
    try:
        config = load_config(path)
        if command == "config":
            sys.stdout.write(tomli_w.dumps(config.to_toml_dict()))
            return 0
        if command == "migrate":
            return _migrate(config)
        host = PluginHost()
        host.load()
        if command == "check":
            return _check(config, host)
        setup_logging(config.daemon.log_level, config.daemon.log_format)
        from jobd import daemon  # the daemon's imports are only needed to run it

        daemon.run(config, host, path)
    except JobdError as error:
        print(f"jobd: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): no traceback at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def _check(config: Config, host: PluginHost) -> int:
    from jobd.settings import build_settings
    from jobd.tracing import require_otel

    settings = build_settings(config, host.configure(config))
    if config.tracing.enabled:
        require_otel(config.source or "the config")
    print(f"config: {config.source or 'built-in defaults'}: ok")
    print(f"store: {describe(config.store.url)}")
    print(f"socket: {config.api.socket}")
    handlers = settings.registry.handlers
    print(f"{len(handlers)} handlers:")
    rows: list[tuple[str, ...]] = [("TYPE", "PLUGIN", "QUEUE", "TIMEOUT", "MAX_ATTEMPTS")]
    for job_type in sorted(handlers):
        defaults = settings.type_defaults(job_type)
        timeout = "-" if defaults.timeout is None else format_duration(defaults.timeout)
        rows.append(
            (job_type, handlers[job_type].plugin, defaults.queue, timeout, str(defaults.max_attempts))
        )
    _print_rows(rows)
    schedules = settings.schedules
    if schedules:
        print(f"{len(schedules)} schedules:")
        rows = [("NAME", "SCHEDULE", "TIMEZONE", "TYPE", "QUEUE", "CATCH_UP", "ENABLED")]
        for name in sorted(schedules):
            schedule = schedules[name]
            recurrence = schedule.recurrence
            rows.append(
                (
                    name,
                    recurrence.describe(),
                    recurrence.timezone,
                    schedule.type,
                    schedule.queue,
                    schedule.catch_up.value,
                    "yes" if schedule.enabled else "no",
                )
            )
        _print_rows(rows)
    return 0


def _print_rows(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _migrate(config: Config) -> int:
    store = create_store(config.store)

    async def migrate() -> None:
        await store.open()
        await store.close()

    trio.run(migrate)
    print(f"jobd: the store {describe(config.store.url)} is up to date")
    return 0
