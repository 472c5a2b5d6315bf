"""One psycopg statement run on Trio's own I/O, with no worker thread.

psycopg's sync cursor does its protocol work in generators that yield what the socket
must become (`Wait.R`, `Wait.W`, `Wait.RW`) and are sent back what it became; its
`wait()` blocks a thread on them. Here the event loop waits instead. A statement then
costs no thread hop (two wake-ups, one of them of an idle CPU) and no worker thread
fighting the event loop for the GIL.

The generator is psycopg's own but private (`BaseCursor._execute_gen`, psycopg 3.1 to
3.3): `AVAILABLE` says whether this psycopg has it, and the PostgreSQL store runs its
statements in a thread when it does not.
"""

from __future__ import annotations

import select
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any

import psycopg
import trio
import trio.lowlevel
from psycopg.waiting import Ready, Wait

# The psycopg releases whose generators were read and tested; another falls back.
_TESTED = ("3.1.", "3.2.", "3.3.")
KNOWN = "psycopg 3.1 to 3.3"
AVAILABLE = psycopg.__version__.startswith(_TESTED) and hasattr(psycopg.RawCursor, "_execute_gen")

_Protocol = Generator[Wait, Ready, None]
_READ_CHECK = 0.001  # seconds: how often a send the socket holds up looks for input


async def execute(
    cursor: psycopg.RawCursor[Any],
    query: str,
    params: Sequence[Any],
    *,
    on_cancel: Callable[[], Callable[[], Awaitable[None]]],
    meanwhile: Callable[[], None] | None = None,
) -> None:
    """Run `query` on `cursor` (its rows are then read with `fetchall()`, which does no
    I/O). A cancellation does not leave the connection mid-statement: `on_cancel()`
    starts asking the server to cancel the query and returns what stops asking (and
    waits until it has); the statement is followed to its end, shielded, and only then
    is `Cancelled` raised. The query may have committed by then, as in a worker thread.

    `meanwhile`, if given, is called when psycopg first waits for an answer, while the
    server works: work of the caller's that needs neither the answer nor the database
    overlaps the server's. On an autocommit connection that is once the query is sent
    (or, once per connection, when psycopg prepares it: once its PREPARE is sent). It is
    called in any case before `execute` returns, unless the statement fails or is
    cancelled; an error of its own is raised once the statement has ended."""
    protocol: _Protocol = cursor._execute_gen(query, params)  # private: see the module
    fileno = cursor.connection.pgconn.socket
    failed: Exception | None = None
    try:
        wanted = next(protocol)
        while True:
            if wanted == Wait.R and meanwhile is not None:  # sent: the server is at work
                work, meanwhile = meanwhile, None
                failed = _attempt(work)
            try:
                ready = await _until(fileno, wanted)
            except trio.Cancelled:
                stop_cancelling = on_cancel()
                with trio.CancelScope(shield=True):
                    try:
                        await _finish(protocol, fileno, wanted)
                    finally:
                        await stop_cancelling()
                raise
            wanted = protocol.send(ready)
    except StopIteration:
        pass
    if meanwhile is not None:  # the answer was there before the server was waited for
        meanwhile()
    if failed is not None:
        raise failed


def _attempt(work: Callable[[], None]) -> Exception | None:
    """Call `work`; its error, if any, to be raised once the statement has ended."""
    try:
        work()
    except Exception as error:
        return error
    return None


async def _finish(protocol: _Protocol, fileno: int, wanted: Wait) -> None:
    """Follow a cancelled statement to its end; how it ended no longer matters."""
    try:
        while True:
            wanted = protocol.send(await _until(fileno, wanted))
    except StopIteration:
        return
    except psycopg.Error:  # most often QueryCanceled: the connection is usable again
        return


async def _until(fileno: int, wanted: Wait) -> Ready:
    if wanted == Wait.R:
        await trio.lowlevel.wait_readable(fileno)
        return Ready.R
    # Sending: a socket asked for writing nearly always is, and a poll is far cheaper
    # than a turn of the event loop. A send that cannot finish also reads (Wait.RW), so
    # that a server writing back while it reads never leaves both ends waiting: while
    # the socket cannot be written, it is polled again every millisecond for input.
    while True:
        ready = poll(fileno, wanted)
        if ready:
            await trio.lowlevel.checkpoint()
            return ready
        if wanted == Wait.W:
            await trio.lowlevel.wait_writable(fileno)
            return Ready.W
        with trio.move_on_after(_READ_CHECK):
            await trio.lowlevel.wait_writable(fileno)


def poll(fileno: int, wanted: Wait) -> Ready:
    """What the socket `fileno` is ready for now, of `wanted`, without waiting. A socket
    closed or in error reads as readable: reading it says what went wrong."""
    poller = select.poll()  # not select(): it refuses file descriptors past 1023
    poller.register(
        fileno, (select.POLLIN if wanted & Wait.R else 0) | (select.POLLOUT if wanted & Wait.W else 0)
    )
    became = 0
    for _, events in poller.poll(0):
        if events & (select.POLLIN | select.POLLHUP | select.POLLERR | select.POLLNVAL):
            became |= Ready.R
        if events & select.POLLOUT:
            became |= Ready.W
    return Ready(became)
