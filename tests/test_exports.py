"""The public surface of `jobd` is a promise to plugin authors and applications: pin it."""

import subprocess
import sys

import jobd

PUBLIC = {
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
}


def test_all_is_pinned() -> None:
    assert set(jobd.__all__) == PUBLIC


def test_every_public_name_resolves() -> None:
    for name in PUBLIC:
        assert getattr(jobd, name) is not None, name


def test_job_state_is_a_str_enum() -> None:
    assert jobd.JobState.COMPLETED == "completed"
    assert isinstance(jobd.JobState.PENDING, str)


def test_importing_jobd_loads_neither_trio_nor_database_drivers() -> None:
    code = (
        "import sys, jobd, jobd.ctl, jobd.client; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'trio', 'psycopg', 'sqlite3', 'pluggy'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
