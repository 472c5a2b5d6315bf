"""The HTTP server, in-process on a temporary Unix socket, spoken to with raw bytes and with httpx."""

from __future__ import annotations

import grp
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import h11
import httpx
import pytest
import trio
import trio.testing

from jobd.errors import ConfigError
from jobd.http import (
    Limits,
    Request,
    Response,
    bind_tcp,
    bind_unix_socket,
    error_response,
    json_response,
    listener_from_fd,
    serve,
)

SMALL = Limits(max_body_bytes=1000, request_timeout=10.0, max_connections=64)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes: pytest's tmp_path may be too long
    path = Path(tempfile.mkdtemp(prefix="jobd-http-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def echo(request: Request) -> Response:
    """Says what it received; /boom raises."""
    if request.path == "/boom":
        raise RuntimeError("handler exploded")
    peer = request.peer
    return json_response(
        200,
        {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "body": request.body.decode(),
            "segments": list(request.segments()),
            "content_type": request.header("Content-Type"),
            "peer": None if peer is None else [peer.pid, peer.uid, peer.gid],
        },
    )


async def start(nursery: trio.Nursery, path: Path, limits: Limits = SMALL) -> None:
    listener = bind_unix_socket(str(path), 0o600, "")
    await nursery.start(partial(serve, [listener], echo, limits=limits))


class RawClient:
    """An HTTP/1.1 client over a raw socket: bytes out, h11-parsed answers in."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, path: Path) -> RawClient:
        return cls(await trio.open_unix_socket(str(path)))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def next_event(self) -> object:
        while (event := self.conn.next_event()) is h11.NEED_DATA:
            self.conn.receive_data(await self.stream.receive_some(65536))
        return event

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next final response; informational ones are skipped."""
        status, headers, body = 0, {}, b""
        while not isinstance(event := await self.next_event(), h11.EndOfMessage):
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = {name.decode(): value.decode() for name, value in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif not isinstance(event, h11.InformationalResponse):
                raise AssertionError(f"unexpected {event!r}")
        return status, headers, body

    async def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        headers = [("Host", "jobd"), ("Content-Length", str(len(body)))]
        await self.send(self.conn.send(h11.Request(method=method, target=target, headers=headers)))
        await self.send(self.conn.send(h11.Data(data=body)) or b"")
        await self.send(self.conn.send(h11.EndOfMessage()) or b"")
        return await self.response()

    async def receive_until_closed(self) -> bytes:
        received = b""
        while data := await self.stream.receive_some(65536):
            received += data
        return received


def error_of(body: bytes) -> dict[str, object]:
    decoded = json.loads(body)
    assert set(decoded) == {"error"}
    error = decoded["error"]
    assert set(error) == {"code", "message", "details"}
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


def split_responses(raw: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each response in a stream of them, each with a Content-Length."""
    answers = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        fields = dict(line.lower().split(b": ", 1) for line in lines[1:])
        length = int(fields[b"content-length"])
        answers.append((int(lines[0].split(b" ")[1]), rest[:length]))
        raw = rest[length:]
    return answers


def status_line(raw: bytes) -> bytes:
    return raw.split(b"\r\n", 1)[0]


async def test_keep_alive_two_requests_on_one_connection(nursery: trio.Nursery, socket_dir: Path) -> None:
    path = socket_dir / "s"
    await start(nursery, path)
    client = await RawClient.connect(path)
    status, _, body = await client.request("GET", "/first?a=1&b=two%20words")
    assert status == 200
    assert json.loads(body)["query"] == {"a": "1", "b": "two words"}
    status, _, body = await client.request("POST", "/second", b"hello")
    assert status == 200
    assert json.loads(body)["body"] == "hello"
    assert json.loads(body)["method"] == "POST"


async def test_pipelined_requests_are_answered_in_order(nursery: trio.Nursery, socket_dir: Path) -> None:
    path = socket_dir / "s"
    await start(nursery, path)
    client = await RawClient.connect(path)
    await client.send(
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET //three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    answers = split_responses(await client.receive_until_closed())
    assert [status for status, _ in answers] == [200, 200, 200]
    paths = [json.loads(body)["path"] for _, body in answers]
    assert paths == ["/one", "/two", "//three"]


async def test_absolute_form_target(nursery: trio.Nursery, socket_dir: Path) -> None:
    path = socket_dir / "s"
    await start(nursery, path)
    client = await RawClient.connect(path)
    _, _, body = await client.request("GET", "http://jobd/v1/stats?x=1")
    assert json.loads(body)["path"] == "/v1/stats"
    assert json.loads(body)["segments"] == ["v1", "stats"]
    assert json.loads(body)["query"] == {"x": "1"}


async def test_head_gets_headers_only(
    nursery: trio.Nursery, socket_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = socket_dir / "s"
    await start(nursery, path)
    client = await RawClient.connect(path)
    await client.send(b"HEAD /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    received = await client.receive_until_closed()
    head, _, body = received.partition(b"\r\n\r\n")
    assert status_line(head) == b"HTTP/1.1 200 "
    assert body == b""
    assert not [record for record in caplog.records if record.name.startswith("jobd")]


async def test_peer_credentials_are_this_process(nursery: trio.Nursery, socket_dir: Path) -> None:
    path = socket_dir / "s"
    await start(nursery, path)
    client = await RawClient.connect(path)
    _, _, body = await client.request("GET", "/")
    assert json.loads(body)["peer"] == [os.getpid(), os.getuid(), os.getgid()]


async def test_path_segments_keep_an_encoded_slash(nursery: trio.Nursery, socket_dir: Path) -> None:
    path = socket_dir / "s"
    await start(nursery, path)
    client = await RawClient.connect(path)
    _, _, body = await client.request("GET", "/v1/queues/a%2Fb/pause")
    assert json.loads(body)["segments"] == ["v1", "queues", "a/b", "pause"]
    assert json.loads(body)["path"] == "/v1/queues/a/b/pause"


async def test_target_that_is_not_utf8_is_400(nursery: trio.Nursery, socket_dir: Path) -> None:
    path = socket_dir / "s"
    await start(nursery, path)
    client = await RawClient.connect(path)
    status, _, body = await client.request("GET", "/x?name=%ff")
    assert status == 400
    assert error_of(body)["code"] == "bad_request"


async def test_chunked_body(nursery: trio.Nursery, socket_dir: Path) -> None:
    path = socket_dir / "s"
    await start(nursery, path)
    client = await RawClient.connect(path)
    await client.send(
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    status, _, body = await client.response()
    assert status == 200
    assert json.loads(body)["body"] == "hello world"
    assert json.loads(body)["content_type"] == "text/plain"


async def test_declared_oversized_body_is_413_unread_then_closed(
    nursery: trio.Nursery, socket_dir: Path
) -> None:
    path = socket_dir / "s"
    await start(nursery, path)
    client = await RawClient.connect(path)
    await client.send(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n" + b"x" * 5000)
    status, headers, body = await client.response()
    assert status == 413
    assert headers["connection"] == "close"
    assert error_of(body)["details"] == {"limit": 1000}
    assert await client.receive_until_closed() == b""  # a clean end of stream, not a reset


async def test_chunked_oversized_body_is_413(nursery: trio.Nursery, socket_dir: Path) -> None:
    path = socket_dir / "s"
    await start(nursery, path)
    client = await RawClient.connect(path)
    chunk = b"x" * 600
    await client.send(b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    await client.send(b"258\r\n" + chunk + b"\r\n" + b"258\r\n" + chunk + b"\r\n")
    status, _, body = await client.response()
    assert status == 413
    assert error_of(body)["code"] == "request_too_large"
    assert await client.receive_until_closed() == b""


async def test_expect_100_continue(nursery: trio.Nursery, socket_dir: Path) -> None:
    path = socket_dir / "s"
    await start(nursery, path)
    client = await RawClient.connect(path)
    headers = [("Host", "x"), ("Content-Length", "4"), ("Expect", "100-continue")]
    await client.send(client.conn.send(h11.Request(method="POST", target="/e", headers=headers)) or b"")
    interim = await client.next_event()
    assert isinstance(interim, h11.InformationalResponse) and interim.status_code == 100
    await client.send(client.conn.send(h11.Data(data=b"ping")) or b"")
    await client.send(client.conn.send(h11.EndOfMessage()) or b"")
    status, _, body = await client.response()
    assert status == 200
    assert json.loads(body)["body"] == "ping"


async def test_expect_100_continue_over_the_limit_gets_413_and_no_100(
    nursery: trio.Nursery, socket_dir: Path
) -> None:
    path = socket_dir / "s"
    await start(nursery, path)
    client = await RawClient.connect(path)
    await client.send(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
    received = await client.receive_until_closed()
    assert status_line(received) == b"HTTP/1.1 413 "
    assert b" 100 " not in received


async def test_body_cut_short_by_half_close_is_400(nursery: trio.Nursery, socket_dir: Path) -> None:
    path = socket_dir / "s"
    await start(nursery, path)
    client = await RawClient.connect(path)
    await client.send(b"POST /short HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten..")
    await client.stream.send_eof()
    status, _, body = await client.response()
    assert status == 400
    assert error_of(body)["code"] == "bad_request"


async def test_request_cut_short_by_close_does_not_hurt_the_server(
    nursery: trio.Nursery, socket_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = socket_dir / "s"
    await start(nursery, path)
    caplog.set_level(logging.WARNING, logger="jobd")
    for partial_request in (
        b"POST /short HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc",
        b"GET /x HT",
    ):
        cut = await RawClient.connect(path)
        await cut.send(partial_request)
        await cut.stream.aclose()
    await trio.testing.wait_all_tasks_blocked()
    client = await RawClient.connect(path)
    status, _, _ = await client.request("GET", "/after")
    assert status == 200
    assert not [record for record in caplog.records if record.name.startswith("jobd")]


async def test_garbage_is_400(nursery: trio.Nursery, socket_dir: Path) -> None:
    path = socket_dir / "s"
    await start(nursery, path)
    client = await RawClient.connect(path)
    await client.send(b"\x00\x01 this is not http\r\n\r\n")
    received = await client.receive_until_closed()
    assert status_line(received) == b"HTTP/1.1 400 "
    assert error_of(received.split(b"\r\n\r\n", 1)[1])["code"] == "bad_request"


async def test_oversized_headers_are_refused(nursery: trio.Nursery, socket_dir: Path) -> None:
    path = socket_dir / "s"
    await start(nursery, path)
    client = await RawClient.connect(path)
    await client.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 100_000 + b"\r\n\r\n")
    received = await client.receive_until_closed()
    assert status_line(received) == b"HTTP/1.1 431 "


async def test_idle_client_is_disconnected(
    nursery: trio.Nursery, socket_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = socket_dir / "s"
    await start(nursery, path)
    client = await RawClient.connect(path)
    await client.request("GET", "/one")
    started = trio.current_time()
    assert await client.receive_until_closed() == b""
    assert trio.current_time() - started == pytest.approx(SMALL.request_timeout)


async def test_slow_request_gets_408(
    nursery: trio.Nursery, socket_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = socket_dir / "s"
    await start(nursery, path)
    client = await RawClient.connect(path)
    await client.send(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    started = trio.current_time()
    status, headers, body = await client.response()
    assert status == 408
    assert headers["connection"] == "close"
    assert error_of(body)["code"] == "request_timeout"
    assert trio.current_time() - started == pytest.approx(SMALL.request_timeout)
    assert await client.receive_until_closed() == b""


async def test_handler_exception_is_500_and_logged(
    nursery: trio.Nursery, socket_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = socket_dir / "s"
    await start(nursery, path)
    client = await RawClient.connect(path)
    with caplog.at_level(logging.ERROR, logger="jobd.http"):
        status, _, body = await client.request("GET", "/boom")
    assert status == 500
    assert error_of(body)["code"] == "internal"
    assert "handler exploded" not in body.decode()  # no internals leak to the client
    [record] = [record for record in caplog.records if record.name == "jobd.http"]
    assert record.exc_info is not None and "handler exploded" in str(record.exc_info[1])
    status, _, _ = await client.request("GET", "/still-alive")  # same connection, still served
    assert status == 200


TWO = Limits(max_body_bytes=1000, request_timeout=10.0, max_connections=2)


async def closed_quietly(client: RawClient) -> bool:
    """Whether the server closed the connection without another answer."""
    return await client.receive_until_closed() == b""


@pytest.mark.parametrize("sends", [b"", b"GET /slow HTTP/1.1\r\nHost: x\r\n"])
async def test_a_request_must_arrive_within_the_timeout_of_the_connection_opening(
    nursery: trio.Nursery, socket_dir: Path, autojump_clock: trio.testing.MockClock, sends: bytes
) -> None:
    """Sending nothing, or a byte a second after a pause: the deadline is not pushed back."""
    path = socket_dir / "s"
    await start(nursery, path)
    client = await RawClient.connect(path)
    opened = trio.current_time()
    await trio.sleep(5)

    async def dribble() -> None:
        for byte in sends:
            await client.send(bytes([byte]))
            await trio.sleep(1)

    nursery.start_soon(dribble)
    if sends:
        status, headers, body = await client.response()
        assert (status, error_of(body)["code"], headers["connection"]) == (408, "request_timeout", "close")
    else:
        assert await closed_quietly(client)
    assert trio.current_time() - opened == pytest.approx(SMALL.request_timeout)


async def test_past_the_limit_a_new_connection_takes_the_place_of_the_longest_waiting(
    nursery: trio.Nursery, socket_dir: Path
) -> None:
    path = socket_dir / "s"
    await start(nursery, path, TWO)
    served = await RawClient.connect(path)
    assert (await served.request("GET", "/one"))[0] == 200  # then idle: waiting since its answer
    await trio.testing.wait_all_tasks_blocked()  # the server is past its answer too
    silent = await RawClient.connect(path)  # waiting since it connected, later
    newcomer = await RawClient.connect(path)
    assert (await newcomer.request("GET", "/two"))[0] == 200
    assert await closed_quietly(served)
    await trio.testing.wait_all_tasks_blocked()
    partial_request = await RawClient.connect(path)  # takes the silent one's place
    await partial_request.send(b"GET /three HTTP/1.1\r\n")
    assert await closed_quietly(silent)
    assert (await newcomer.request("GET", "/four"))[0] == 200  # waiting anew, since this answer
    await trio.testing.wait_all_tasks_blocked()
    last = await RawClient.connect(path)  # takes the half-sent request's place
    assert (await last.request("GET", "/five"))[0] == 200
    status, headers, body = await partial_request.response()
    assert (status, error_of(body)["code"], headers["retry-after"]) == (503, "overloaded", "1")
    assert error_of(body)["details"] == {"limit": 2}
    assert await closed_quietly(partial_request)


async def test_when_every_connection_is_busy_a_new_one_gets_503_at_once(
    nursery: trio.Nursery, socket_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = socket_dir / "s"
    release = trio.Event()

    async def slow(request: Request) -> Response:
        await release.wait()
        return await echo(request)

    listener = bind_unix_socket(str(path), 0o600, "")
    await nursery.start(partial(serve, [listener], slow, limits=TWO))
    answers: list[int] = []

    async def busy_request() -> None:
        client = await RawClient.connect(path)
        answers.append((await client.request("POST", "/busy"))[0])

    for _ in range(2):
        nursery.start_soon(busy_request)
    await trio.testing.wait_all_tasks_blocked()
    refused = await RawClient.connect(path)
    before = trio.current_time()
    status, headers, body = await refused.response()  # before it even sends a request
    assert (status, error_of(body)["code"], headers["connection"]) == (503, "overloaded", "close")
    assert trio.current_time() == before
    await refused.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # read and dropped while it lingers
    assert await refused.receive_until_closed() == b""
    release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert answers == [200, 200]
    assert (await (await RawClient.connect(path)).request("GET", "/after"))[0] == 200


async def test_hundreds_of_silent_connections_do_not_keep_out_a_client_with_a_request(
    nursery: trio.Nursery, socket_dir: Path
) -> None:
    path = socket_dir / "s"
    await start(nursery, path, Limits(max_body_bytes=1000, request_timeout=3600.0, max_connections=16))
    silent = []
    for index in range(100):  # every other one starts a request and says no more
        silent.append(client := await RawClient.connect(path))
        await client.send(b"POST /jobs HTTP/1.1\r\n" if index % 2 else b"")

    def talk() -> int:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://jobd") as client:
            return client.get("/ok", timeout=30).status_code

    with trio.fail_after(30):
        assert await trio.to_thread.run_sync(talk) == 200
        for client in silent[:84]:  # the 84 that waited longest made room; the last 16 stay
            await client.receive_until_closed()


async def test_limits_may_be_read_at_each_request(nursery: trio.Nursery, socket_dir: Path) -> None:
    path = socket_dir / "s"
    current = [Limits(max_body_bytes=10)]
    listener = bind_unix_socket(str(path), 0o600, "")
    await nursery.start(partial(serve, [listener], echo, limits=lambda: current[0]))
    client = await RawClient.connect(path)
    assert (await client.request("POST", "/", b"x" * 20))[0] == 413
    current[0] = Limits(max_body_bytes=100)
    client = await RawClient.connect(path)
    assert (await client.request("POST", "/", b"x" * 20))[0] == 200


async def test_httpx_client(nursery: trio.Nursery, socket_dir: Path) -> None:
    path = socket_dir / "s"
    await start(nursery, path)

    def talk() -> list[httpx.Response]:
        transport = httpx.HTTPTransport(uds=str(path))
        with httpx.Client(transport=transport, base_url="http://jobd") as client:
            chunks = iter([b"chunk-one ", b"chunk-two"])
            return [
                client.get("/a", params={"state": "failed"}),
                client.post("/b", json={"x": 1}),
                client.post("/c", content=chunks),
                client.post("/d", content=b"y" * 5000),
                client.get("/boom"),
            ]

    got, posted, chunked, too_big, boom = await trio.to_thread.run_sync(talk)
    assert got.status_code == 200
    assert got.json()["query"] == {"state": "failed"}
    assert got.headers["content-type"] == "application/json"
    assert json.loads(posted.json()["body"]) == {"x": 1}
    assert chunked.json()["body"] == "chunk-one chunk-two"
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "request_too_large"
    assert boom.status_code == 500


def test_json_and_error_helpers() -> None:
    response = error_response(404, "not_found", "no such thing", {"field": "id"})
    assert response.status == 404
    assert response.content_type == "application/json"
    assert json.loads(response.body) == {
        "error": {"code": "not_found", "message": "no such thing", "details": {"field": "id"}}
    }
    assert json.loads(error_response(400, "bad_request", "no").body)["error"]["details"] == {}
    assert json_response(200, {"é": 1}).body == '{"é":1}'.encode()  # compact UTF-8, not escaped


# --- the listening sockets ---------------------------------------------------------------


async def test_socket_mode_and_group(socket_dir: Path) -> None:
    path = socket_dir / "run" / "jobd.sock"
    if os.getuid() == 0:
        group = grp.getgrgid(1 if os.getgid() != 1 else 2).gr_name  # root may give it any group
    else:
        group = grp.getgrgid(os.getgid()).gr_name
    listener = bind_unix_socket(str(path), 0o660, group)
    try:
        info = os.stat(path)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert info.st_gid == grp.getgrnam(group).gr_gid
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o755
    finally:
        await listener.aclose()


def test_unknown_group_names_the_key(socket_dir: Path) -> None:
    path = socket_dir / "s"
    with pytest.raises(ConfigError) as caught:
        bind_unix_socket(str(path), 0o660, "no-such-group-jobd")
    assert caught.value.key == "api.socket_group"
    assert "no-such-group-jobd" in str(caught.value)
    assert not path.exists()


async def test_refuses_to_take_a_live_socket(socket_dir: Path) -> None:
    path = socket_dir / "s"
    first = bind_unix_socket(str(path), 0o600, "")
    try:
        with pytest.raises(ConfigError, match="another jobd is already listening on") as caught:
            bind_unix_socket(str(path), 0o600, "")
        assert caught.value.key == "api.socket"
        with socket.socket(socket.AF_UNIX) as probe:  # the first listener still owns the path
            probe.connect(str(path))
    finally:
        await first.aclose()


async def test_replaces_a_stale_socket(socket_dir: Path) -> None:
    path = socket_dir / "s"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # a file nobody listens on: what a killed daemon leaves
    listener = bind_unix_socket(str(path), 0o600, "")
    try:
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(str(path))
    finally:
        await listener.aclose()


def test_refuses_a_path_that_is_not_a_socket(socket_dir: Path) -> None:
    path = socket_dir / "s"
    path.write_text("precious")
    with pytest.raises(ConfigError, match="not a socket") as caught:
        bind_unix_socket(str(path), 0o600, "")
    assert caught.value.key == "api.socket"
    assert path.read_text() == "precious"


async def test_socket_is_never_open_to_others_while_created(
    socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modes: list[int] = []
    real_chmod = os.chmod

    def spying_chmod(target: str, mode: int) -> None:
        if target == str(socket_dir / "s"):
            modes.append(stat.S_IMODE(os.stat(target).st_mode))
        real_chmod(target, mode)

    monkeypatch.setattr(os, "chmod", spying_chmod)
    listener = bind_unix_socket(str(socket_dir / "s"), 0o666, "")
    await listener.aclose()
    assert modes == [0o600]  # before the final chmod, only the owner had access


async def test_listener_from_fd(nursery: trio.Nursery, socket_dir: Path) -> None:
    path = socket_dir / "activated"
    inherited = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    inherited.bind(str(path))
    inherited.listen()
    listener = listener_from_fd(inherited.detach())
    await nursery.start(partial(serve, [listener], echo, limits=SMALL))
    client = await RawClient.connect(path)
    assert (await client.request("GET", "/"))[0] == 200


def test_listener_from_fd_refuses_what_is_not_a_listening_socket(socket_dir: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unbound, pytest.raises(ConfigError):
        listener_from_fd(unbound.fileno())
    with open(socket_dir / "file", "w") as plain, pytest.raises(ConfigError, match="not a socket"):
        listener_from_fd(plain.fileno())


async def test_tcp_listener_has_no_peer(nursery: trio.Nursery) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")  # bind_tcp refuses port 0
    await nursery.start(partial(serve, listeners, echo, limits=SMALL))
    port = listeners[0].socket.getsockname()[1]
    client = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
    status, _, body = await client.request("GET", "/metrics")
    assert status == 200
    assert json.loads(body)["peer"] is None


@pytest.mark.parametrize("address", ["9464", "localhost", "127.0.0.1:http", "127.0.0.1:70000", ":9464"])
async def test_bad_tcp_address_names_the_key(address: str) -> None:
    with pytest.raises(ConfigError) as caught:
        await bind_tcp(address)
    assert caught.value.key == "metrics.listen"


async def test_a_get_whose_client_hangs_up_is_cancelled_at_once(socket_dir: Path) -> None:
    """An abandoned long poll must not hold its connection slot until its timeout."""
    started, cancelled = trio.Event(), trio.Event()

    async def long_poll(request: Request) -> Response:
        if request.method == "POST":
            return json_response(200, {"posted": True})
        started.set()
        try:
            await trio.sleep(3600)
        finally:
            cancelled.set()
        return json_response(200, {})

    path = socket_dir / "s.sock"
    async with trio.open_nursery() as nursery:
        listener = bind_unix_socket(str(path), 0o600, "")
        await nursery.start(partial(serve, [listener], long_poll, limits=SMALL))
        client = await RawClient.connect(path)
        await client.send(b"GET /wait HTTP/1.1\r\nHost: jobd\r\n\r\n")
        await started.wait()
        await client.stream.aclose()
        with trio.fail_after(5):
            await cancelled.wait()
        # A POST is answered even when its client half-closes after sending it.
        other = await RawClient.connect(path)
        await other.send(b"POST /x HTTP/1.1\r\nHost: jobd\r\nContent-Length: 0\r\n\r\n")
        await other.stream.send_eof()
        status, _, body = await other.response()
        assert status == 200 and json.loads(body) == {"posted": True}
        nursery.cancel_scope.cancel()


def test_a_socket_directory_others_could_write_is_refused(socket_dir: Path) -> None:
    shared = socket_dir / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigError, match="writable by everyone"):
        bind_unix_socket(str(shared / "s.sock"), 0o600, "")
    if os.geteuid() != 0:
        return  # only root can give a directory to another user
    foreign = socket_dir / "foreign"
    foreign.mkdir()
    os.chown(foreign, 12345, -1)
    with pytest.raises(ConfigError, match="another user"):
        bind_unix_socket(str(foreign / "s.sock"), 0o600, "")
