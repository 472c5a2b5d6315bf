"""A small HTTP/1.1 server on h11 and Trio listeners, and the sockets it listens on.

What it guarantees, whatever the client does:
- keep-alive, `Content-Length` and chunked request bodies, `Expect: 100-continue`;
- a body over `Limits.max_body_bytes` is answered 413 without being read;
- malformed HTTP, or a body cut short, is answered 400 while an answer can still be sent;
- a request, head and body, must arrive whole within `Limits.request_timeout` of the moment
  the connection opened or its previous answer was sent (else 408, or a quiet close when
  nothing came): one deadline per request, which a byte now and then does not push back;
- a handler that raises gets a 500 and a logged traceback; the server carries on.

At most `Limits.max_connections` connections are open at once, and every one is accepted
and answered. A connection is *busy* from the moment its request has arrived whole until
its answer is sent, and *waiting* otherwise (idle between requests, or still sending its
request). A new connection past the limit takes the place of the connection that has been
waiting longest, which is closed (answered 503 `overloaded` first if it had sent part of a
request); when every connection is busy, the new one is answered 503 `overloaded` at once
and closed. So clients that connect and say nothing, or dribble a byte a second, cannot
lock others out, and none waits unanswered in the listening socket's backlog.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
import trio

from jobd import jsoncodec
from jobd.config import parse_address
from jobd.errors import ConfigError

log = logging.getLogger("jobd.http")

_RECEIVE_SIZE = 64 * 1024
_PIPELINE_BUFFER = 1024 * 1024
_LINGER_SECONDS = 2.0  # after an error answer, how long unread input is drained before closing
_REFUSAL_LINGER_SECONDS = 0.5  # the same after refusing a connection: its request is short
_LINGER_BYTES = 1024 * 1024
_ACCEPT_RETRY_SECONDS = 0.1
_PROBE_TIMEOUT = 1.0
# accept() errors that mean "out of resources for now", not "the listener is broken"
_ACCEPT_TRANSIENT = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


@dataclass(frozen=True, slots=True)
class Peer:
    """The process at the other end of a Unix socket, as the kernel reports it."""

    pid: int
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str  # as sent, e.g. "/v1/jobs?state=failed"
    path: str  # percent-decoded, without the query
    query: Mapping[str, str]  # a repeated name keeps its last value
    headers: tuple[tuple[str, str], ...]  # names in lower case
    body: bytes
    peer: Peer | None  # None on TCP

    def header(self, name: str) -> str | None:
        """The first value of header `name` (any case), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), None)

    def segments(self) -> tuple[str, ...]:
        """The path's segments, each percent-decoded on its own, so "%2F" stays inside one."""
        raw_path, _ = _split_target(self.target)
        return tuple(unquote(part, errors="strict") for part in raw_path.split("/")[1:])


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = field(default=())


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = 1024 * 1024
    request_timeout: float = 30.0  # to send a whole request, from the connection or the last answer
    max_connections: int = 512  # open at once; see the module's docstring for what happens past it


LimitsSource = Limits | Callable[[], Limits]
"""Fixed limits, or a function read at each request and accept (so a reload takes effect)."""


def json_response(status: int, obj: object, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, jsoncodec.dumps(obj), "application/json", headers)


def error_response(
    status: int,
    code: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Response:
    """The one error shape: {"error": {"code", "message", "details"}}."""
    error = {"code": code, "message": message, "details": dict(details or {})}
    return json_response(status, {"error": error}, headers)


async def serve(
    listeners: list[trio.SocketListener],
    handler: Handler,
    *,
    limits: LimitsSource,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `handler` on every listener until cancelled; report started once accepting."""
    current = limits if callable(limits) else (lambda: limits)
    connections = _Connections()
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, handler, current, connections, nursery)
        task_status.started()


class _Connections:
    """The open connections of one server: how many, and which are waiting for a request
    of their own, longest-waiting first (those a newcomer may take the place of)."""

    def __init__(self) -> None:
        self.open = 0
        self._leaving = 0  # told to close, not closed yet
        self._waiting: dict[_Connection, None] = {}  # a dict keeps the order they began to wait

    def admit(self, limit: int) -> bool:
        """Count in a new connection, making room by closing waiting ones if needed;
        False when every connection is busy and none can make room."""
        while self.open - self._leaving >= limit:
            if not self._waiting:
                return False
            longest = next(iter(self._waiting))
            del self._waiting[longest]
            longest.make_room()
            self._leaving += 1
        self.open += 1
        return True

    def waiting(self, connection: _Connection) -> None:
        self._waiting[connection] = None

    def busy(self, connection: _Connection) -> None:
        self._waiting.pop(connection, None)

    def closed(self, connection: _Connection) -> None:
        self.open -= 1
        self._waiting.pop(connection, None)
        if connection.leaving:
            self._leaving -= 1


async def _accept_loop(
    listener: trio.SocketListener,
    handler: Handler,
    current: Callable[[], Limits],
    connections: _Connections,
    nursery: trio.Nursery,
) -> None:
    while True:
        try:
            stream = await listener.accept()
        except OSError as error:
            if error.errno not in _ACCEPT_TRANSIENT:
                raise
            log.warning("cannot accept a connection for now: %s", error)
            await trio.sleep(_ACCEPT_RETRY_SECONDS)
            continue
        limits = current()
        if connections.admit(limits.max_connections):
            connection = _Connection(stream, handler, connections)
            connections.waiting(connection)  # from its first moment, before its task runs
            nursery.start_soon(_run_connection, connection, current)
        else:
            nursery.start_soon(_refuse, _Connection(stream, handler, connections), limits)


async def _run_connection(connection: _Connection, current: Callable[[], Limits]) -> None:
    try:
        async with connection.stream:
            await connection.run(current)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away; nothing left to answer
    except Exception:
        log.exception("connection failed")  # a bug here must not take the server down
    finally:
        connection.closed()


async def _refuse(connection: _Connection, limits: Limits) -> None:
    """Answer a connection there is no room for with 503, without reading its request."""
    log.debug("refused a connection: all %d are busy", limits.max_connections)
    try:
        async with connection.stream:
            await connection.refuse(limits)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def _overloaded(limits: Limits) -> Response:
    return error_response(
        503,
        "overloaded",
        f"the server is busy: all {limits.max_connections} connections are in use; try again",
        {"limit": limits.max_connections},
        headers=(("retry-after", "1"),),
    )


def _peer_of(stream: trio.SocketStream) -> Peer | None:
    sock = stream.socket
    if sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:  # gone already; it will find nothing to read either
        return None
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


class _Connection:
    """One client connection: a loop of request → handler → response."""

    def __init__(self, stream: trio.SocketStream, handler: Handler, connections: _Connections) -> None:
        self.stream = stream
        self._handler = handler
        self._connections = connections
        self._conn = h11.Connection(h11.SERVER)
        self._peer = _peer_of(stream)
        self._head = False  # the current request is a HEAD: its answer carries no body
        self._reading = trio.CancelScope()  # the wait for the next request
        self.leaving = False  # told to make room for a new connection

    def make_room(self) -> None:
        """Stop waiting for a request: the server needs this connection's place."""
        self.leaving = True
        self._reading.cancel()

    def closed(self) -> None:
        self._connections.closed(self)

    async def refuse(self, limits: Limits) -> None:
        """Answer 503 without reading a request: the connection was never counted in."""
        await self._send(_overloaded(limits), limits, close=True)
        await self._linger(_REFUSAL_LINGER_SECONDS)

    async def run(self, current: Callable[[], Limits]) -> None:
        while True:
            limits = current()
            received = await self._next_request(limits)
            if received is None:
                return
            if isinstance(received, Response):  # the request could not be read whole: answer, then close
                await self._send(received, limits, close=True)
                if not self.leaving:
                    await self._linger(_LINGER_SECONDS)
                return
            response = await self._call(received)
            if response is None:  # the client hung up while waiting for its answer
                return
            if not await self._send(response, limits, close=False):
                return
            if self._conn.our_state is not h11.DONE or self._conn.their_state is not h11.DONE:
                return  # either side asked to close
            self._conn.start_next_cycle()

    async def _next_request(self, limits: Limits) -> Request | Response | None:
        """The next request, whole, within the request timeout; else the error to answer,
        or None to close without one (the client closed, or it sent nothing at all)."""
        received: Request | Response | None = None
        self._reading = trio.move_on_after(limits.request_timeout)
        with self._reading:
            if self.leaving:  # told to make room before its task began to read
                self._reading.cancel()
            self._connections.waiting(self)  # already there, in place, on a first request
            try:
                received = await self._receive_request(limits)
            finally:
                self._connections.busy(self)
        if not self._reading.cancelled_caught:
            return received
        if self._conn.their_state is h11.IDLE and not self._conn.trailing_data[0]:
            return None  # not a byte of a request: close quietly
        if self.leaving:
            return _overloaded(limits)
        return error_response(
            408, "request_timeout", f"the request did not arrive within {limits.request_timeout:g} s"
        )

    async def _receive_request(self, limits: Limits) -> Request | Response | None:
        """The whole request; or the error to answer; or None when the client closed between requests."""
        try:
            head = await self._next_event()
            if isinstance(head, h11.ConnectionClosed):
                return None
            assert isinstance(head, h11.Request)  # h11 yields nothing else first to a server
            self._head = head.method == b"HEAD"
            declared = _content_length(head.headers)
            if declared is not None and declared > limits.max_body_bytes:
                return _too_large(limits)
            if self._conn.they_are_waiting_for_100_continue:
                await self._send_event(h11.InformationalResponse(status_code=100, headers=[]))
            body = bytearray()
            while not isinstance(event := await self._next_event(), h11.EndOfMessage):
                assert isinstance(event, h11.Data)  # nothing else comes between a Request and its end
                body += event.data
                if len(body) > limits.max_body_bytes:
                    return _too_large(limits)
        except h11.RemoteProtocolError as error:
            return error_response(error.error_status_hint, "bad_request", f"malformed request: {error}")
        return self._request(head, bytes(body))

    def _request(self, head: h11.Request, body: bytes) -> Request | Response:
        target = head.target.decode("ascii")  # h11 lets through only visible ASCII
        raw_path, raw_query = _split_target(target)
        try:
            path = unquote(raw_path, errors="strict")
            query = dict(parse_qsl(raw_query, keep_blank_values=True, errors="strict"))
        except UnicodeDecodeError:
            return error_response(400, "bad_request", f"the request target {target!r} is not UTF-8")
        return Request(
            method=head.method.decode("ascii"),
            target=target,
            path=path,
            query=MappingProxyType(query),
            headers=tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in head.headers),
            body=body,
            peer=self._peer,
        )

    async def _call(self, request: Request) -> Response | None:
        """The handler's answer; None when a GET's client hung up first. A GET may wait
        long (a long poll): its handler is cancelled when the client leaves, so an
        abandoned wait frees its connection slot at once. Other methods run to the end."""
        if request.method != "GET":
            return await self._answer(request)
        answers: list[Response] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._cancel_on_hang_up, nursery.cancel_scope)
            answers.append(await self._answer(request))
            nursery.cancel_scope.cancel()
        return answers[0] if answers else None

    async def _answer(self, request: Request) -> Response:
        try:
            return await self._handler(request)
        except Exception:
            log.exception("handler failed on %s %s", request.method, request.path)
            return error_response(500, "internal", "internal error; the daemon's log has the details")

    async def _cancel_on_hang_up(self, scope: trio.CancelScope) -> None:
        # What arrives meanwhile is a pipelined request: h11 keeps it for the next cycle,
        # up to a bound; past it, stop reading (and watching) until the answer is sent.
        while len(self._conn.trailing_data[0]) < _PIPELINE_BUFFER:
            data = await self.stream.receive_some(_RECEIVE_SIZE)
            if not data:
                scope.cancel()
                return
            self._conn.receive_data(data)

    async def _next_event(self) -> Any:
        while True:
            event = self._conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self._conn.receive_data(await self.stream.receive_some(_RECEIVE_SIZE))

    async def _send_event(self, event: Any) -> None:
        data = self._conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def _send(self, response: Response, limits: Limits, *, close: bool) -> bool:
        """Send `response` whole within the request timeout; False when it could not be."""
        if self._conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return False  # the protocol no longer allows an answer
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            *response.headers,
            *((("connection", "close"),) if close else ()),
        ]
        # Head, body and end in one write: one system call and one wake-up of the client.
        data = self._conn.send(h11.Response(status_code=response.status, headers=headers)) or b""
        if not self._head:
            data += self._conn.send(h11.Data(data=response.body)) or b""
        data += self._conn.send(h11.EndOfMessage()) or b""
        with trio.move_on_after(limits.request_timeout):
            await self.stream.send_all(data)
            return True
        return False

    async def _linger(self, seconds: float) -> None:
        """Close our side, then drain what the client still sends for a while.

        Closing with unread input makes the kernel reset the connection, and a TCP
        client may then lose the answer it has not read yet.
        """
        with trio.move_on_after(seconds):
            await self.stream.send_eof()
            drained = 0
            while drained < _LINGER_BYTES:
                data = await self.stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    return
                drained += len(data)


def _split_target(target: str) -> tuple[str, str]:
    """(path, query) of a request target, still percent-encoded."""
    if target.startswith("/"):  # the usual origin form; urlsplit would read "//x/y" as a host
        path, _, query = target.partition("?")
        return path, query
    parts = urlsplit(target)  # the absolute form, "http://host/path?query"
    return parts.path, parts.query


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    # h11 has already checked that the value is a well-formed integer
    return next((int(value) for name, value in headers if name == b"content-length"), None)


def _too_large(limits: Limits) -> Response:
    return error_response(
        413,
        "request_too_large",
        f"the request body is over the limit of {limits.max_body_bytes} bytes",
        {"limit": limits.max_body_bytes},
    )


def bind_unix_socket(path: str, mode: int, group: str) -> trio.SocketListener:
    """Listen on a Unix socket at `path`, never taking it from a live daemon.

    The parent directory is created (0755) when missing. An existing socket at `path`
    that accepts a connection belongs to a running daemon: that is an error. One that
    refuses is a stale leftover: it is removed. Any other kind of file is left alone,
    and is an error. The socket is created owner-only, then given `group` (a name or
    number; "" keeps ours) and `mode`.
    """
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        os.makedirs(parent, exist_ok=True)
        os.chmod(parent, 0o755)
    _check_directory(parent)
    gid = _group_id(group)
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening = False
    try:
        _bind_private(sock, path)
        try:
            if gid is not None:
                os.chown(path, -1, gid)
            os.chmod(path, mode)
            sock.listen(socket.SOMAXCONN)
        except OSError as error:
            os.unlink(path)
            if gid is not None and error.errno == errno.EPERM:
                message = f"cannot give {path} to group {group!r}: {error.strerror}"
                raise ConfigError(message, key="api.socket_group") from None
            raise
        listening = True
    except OSError as error:
        raise ConfigError(f"cannot listen on {path}: {error.strerror}", key="api.socket") from None
    finally:
        if not listening:
            sock.close()
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def _check_directory(directory: str) -> None:
    """Refuse a socket directory that someone else could swap the socket in (a
    pre-made /tmp/jobd-UID of another user, a world-writable directory)."""
    found = os.stat(directory)
    if found.st_uid not in (os.geteuid(), 0):
        raise ConfigError(
            f"the socket's directory {directory} belongs to another user (uid {found.st_uid})",
            key="api.socket",
        )
    if found.st_mode & stat.S_IWOTH and not found.st_mode & stat.S_ISVTX:
        raise ConfigError(f"the socket's directory {directory} is writable by everyone", key="api.socket")


def _bind_private(sock: socket.socket, path: str) -> None:
    """Bind with a umask that makes the socket file owner-only from its first moment."""
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)


def _group_id(group: str) -> int | None:
    if not group:
        return None
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"no group named {group!r}", key="api.socket_group") from None


def _remove_stale_socket(path: str) -> None:
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(found.st_mode):
        raise ConfigError(f"{path} exists and is not a socket; it was left alone", key="api.socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(_PROBE_TIMEOUT)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # nobody listens: a leftover of a daemon that died
            return
        except FileNotFoundError:
            return  # gone meanwhile
        except (BlockingIOError, TimeoutError):
            pass  # a listener with a full backlog: alive
        except OSError as error:
            raise ConfigError(f"cannot check the socket {path}: {error.strerror}", key="api.socket") from None
    raise ConfigError(f"another jobd is already listening on {path}", key="api.socket")


def listener_from_fd(fd: int) -> trio.SocketListener:
    """The listening socket handed over by socket activation (systemd's `LISTEN_FDS`)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as error:
        message = f"file descriptor {fd} from socket activation is not a socket: {error.strerror}"
        raise ConfigError(message) from None
    try:
        return trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    except ValueError as error:  # not a stream socket, or not listening
        sock.detach()
        raise ConfigError(f"file descriptor {fd} from socket activation: {error}") from None


async def bind_tcp(address: str, key: str = "metrics.listen") -> list[trio.SocketListener]:
    """Listen on "HOST:PORT" (`jobd.config.parse_address`), on every address HOST resolves to."""
    try:
        parsed = parse_address(address)
    except ValueError as error:
        raise ConfigError(str(error), key=key) from None
    try:
        return await trio.open_tcp_listeners(parsed.port, host=parsed.host)
    except OSError as error:
        raise ConfigError(f"cannot listen on {address}: {error.strerror or error}", key=key) from None
