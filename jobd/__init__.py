"""jobd: a background-job daemon. This module is the plugin author's and application's API."""

from jobd.client import Client
from jobd.errors import (
    ApiError,
    ConfigError,
    DaemonUnreachable,
    Fail,
    IllegalTransition,
    InvalidJob,
    JobdError,
    JobNotFound,
    PluginError,
    Retry,
)
from jobd.handlers import Handler, JobContext, handler
from jobd.hookspecs import hookimpl
from jobd.job import Job, JobState, Progress
from jobd.transactional import submit
from jobd.version import __version__

__all__ = [
    "ApiError",
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
    "PluginError",
    "Progress",
    "Retry",
    "__version__",
    "handler",
    "hookimpl",
    "submit",
]
