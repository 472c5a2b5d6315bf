"""Tracing of attempts: what the worker pool reports each attempt to when `[tracing]
enabled = true`, and the daemon's way to get it.

Nothing here imports OpenTelemetry at import time: `jobd.otel` implements `AttemptTracer`
with it and is imported only by `open_tracer` (and `require_otel`), so a daemon without
tracing loads none of it.
"""

from __future__ import annotations

from typing import Protocol

from jobd.errors import ConfigError
from jobd.job import Job

_OTEL_EXTRA = "pip install 'jobd[otel]'"


class AttemptSpan(Protocol):
    """One attempt, traced from its start until `finish`."""

    def finish(self, outcome: str, error: str | None) -> None:
        """The attempt ended: `outcome` is the `Outcome` value, or "lost" when the job was
        no longer this daemon's; `error` the job's `last_error` from this attempt."""


class AttemptTracer(Protocol):
    def start(self, job: Job) -> AttemptSpan:
        """An attempt of `job` (as claimed: `attempts` is this attempt's number) starts in
        the calling task; the span is current there, so the handler's own spans are its
        children, until `finish`."""

    def shutdown(self) -> None:
        """Export what is still buffered and stop. Blocks: call it from a thread."""


def require_otel(where: str) -> None:
    """Raise `ConfigError` naming `tracing.enabled` unless jobd's OpenTelemetry extra is installed."""
    try:
        import jobd.otel  # noqa: F401 - imported to learn whether its dependencies are there
    except ImportError as error:
        raise ConfigError(
            f"tracing needs OpenTelemetry, which is not installed ({_OTEL_EXTRA}): {error}",
            key="tracing.enabled",
            file=where,
        ) from None


def open_tracer(enabled: bool, where: str, version: str) -> AttemptTracer | None:
    """The daemon's tracer when tracing is `enabled` (exporting over OTLP/HTTP as the
    standard OTEL_* variables say), else None. Raises `ConfigError` when the extra is missing."""
    if not enabled:
        return None
    require_otel(where)
    from jobd.otel import start_tracing

    return start_tracing(version)
