"""jobd: a background-job daemon. This module is the plugin author's and application's API.

`Client`, `hookimpl` and `submit` load on first use, so that `jobd-ctl` starts without
importing pluggy or psycopg.
"""

from typing import TYPE_CHECKING, Any

from jobd.config import parse_settings, setting
from jobd.durations import parse_duration
from jobd.errors import (
    ApiError,
    BadRequest,
    ConfigError,
    DaemonUnreachable,
    Fail,
    IllegalTransition,
    InvalidJob,
    JobdError,
    JobNotFound,
    KeyInUse,
    Overloaded,
    PayloadTooLarge,
    PluginError,
    QueueNotFound,
    Retry,
    ScheduleNotFound,
    ShuttingDown,
    StoreUnavailable,
)
from jobd.handlers import Handler, JobContext, handler
from jobd.job import Job, JobState, Progress
from jobd.version import __version__

if TYPE_CHECKING:
    from jobd.client import Client
    from jobd.hookspecs import hookimpl
    from jobd.transactional import submit

__all__ = [
    "ApiError",
    "BadRequest",
    "Client",
    "ConfigError",
    "DaemonUnreachable",
    "Fail",
    "Handler",
    "IllegalTransition",
    "InvalidJob",
    "Job",
    "JobContext",
    "JobNotFound",
    "JobState",
    "JobdError",
    "KeyInUse",
    "Overloaded",
    "PayloadTooLarge",
    "PluginError",
    "Progress",
    "QueueNotFound",
    "Retry",
    "ScheduleNotFound",
    "ShuttingDown",
    "StoreUnavailable",
    "__version__",
    "handler",
    "hookimpl",
    "parse_duration",
    "parse_settings",
    "setting",
    "submit",
]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from jobd.client import Client

        return Client
    if name == "hookimpl":
        from jobd.hookspecs import hookimpl

        return hookimpl
    if name == "submit":
        from jobd.transactional import submit

        return submit
    raise AttributeError(f"module 'jobd' has no attribute {name!r}")
