"""The systemd side of the daemon, without libsystemd: sd_notify, the watchdog, socket activation.

- `notify()` sends one datagram of newline-separated `KEY=VALUE` fields to `$NOTIFY_SOCKET`
  (a path, or `@name` in the abstract namespace). Outside systemd it does nothing and says so
  by returning False, so callers never need to ask whether they run under systemd.
- `run_watchdog()` pings `WATCHDOG=1` from the event loop itself: if the loop wedges, the
  pings stop and systemd restarts the service after `WatchdogSec=`.
- `listen_fds()` takes the sockets systemd passed (`LISTEN_FDS`, from fd 3 on).
"""

from __future__ import annotations

import os
import socket
import time

import trio

LISTEN_FDS_START = 3
_ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def _notify_address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]  # the abstract namespace: a leading NUL byte
    if value.startswith("/"):
        return value
    return None  # not an AF_UNIX address (e.g. vsock:), which this daemon does not speak


def notify(*fields: str) -> bool:
    """Send `fields` as one message to `$NOTIFY_SOCKET`; False when unset or undeliverable.

    Never blocks: the send is MSG_DONTWAIT, so a stuck receiver costs a lost message,
    not a stalled event loop.
    """
    address = _notify_address(os.environ.get("NOTIFY_SOCKET", ""))
    if address is None or not fields:
        return False
    message = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, socket.MSG_DONTWAIT, address)
    except OSError:
        return False
    return True


def _status_field(text: str) -> str:
    # One field per line: a newline inside the text would start a bogus field.
    return "STATUS=" + " ".join(text.splitlines())


def notify_ready(status: str | None = None) -> bool:
    """The daemon listens and its store is open (also the end of a reload)."""
    return notify("READY=1", *([_status_field(status)] if status is not None else []))


def notify_status(status: str) -> bool:
    """A one-line summary shown by `systemctl status`."""
    return notify(_status_field(status))


def notify_reloading() -> bool:
    """A reload starts; `notify_ready()` ends it.

    `MONOTONIC_USEC` lets systemd >= 253 match the reload with this message; older
    versions ignore the field.
    """
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={now_usec}")


def notify_stopping() -> bool:
    """A graceful shutdown starts."""
    return notify("STOPPING=1")


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of `WATCHDOG_USEC`), or None without a watchdog.

    `WATCHDOG_PID`, when set, names the process the watchdog is meant for: a child that
    inherited the variables must not ping in its parent's name.
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


async def run_watchdog(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Ping `WATCHDOG=1` every `watchdog_interval()` seconds until cancelled.

    Returns at once when there is no watchdog to feed.
    """
    interval = watchdog_interval()
    task_status.started()
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await trio.sleep(interval)


def listen_fds() -> list[int]:
    """The file descriptors passed by socket activation, in order; [] when there are none.

    The variables are removed from the environment whatever they said, and the fds are
    made non-inheritable, so processes the daemon starts (plugins running programs) do
    not believe they were activated themselves.
    """
    pid = os.environ.get("LISTEN_PID", "")
    count = os.environ.get("LISTEN_FDS", "")
    for name in _ACTIVATION_VARIABLES:
        os.environ.pop(name, None)
    if pid != str(os.getpid()) or not count.isdigit():
        return []
    fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)))
    for fd in fds:
        os.set_inheritable(fd, False)
    return fds
