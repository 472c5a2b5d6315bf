"""jobd-http against a real HTTP server on loopback: statuses, Retry-After, timeouts, refusals, signing."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jobd_http
import pytest
import trustme
from jobd_http import Settings

from jobd.errors import ConfigError, InvalidJob
from jobd.job import JobState
from jobd.testing import OutcomeKind, open_plugin, plugin_settings, run_handler, validate_payload


class Peer(BaseHTTPRequestHandler):
    """/status/CODE[?retry_after=V], /echo, /big?size=N, /slow (answers when the test ends)."""

    protocol_version = "HTTP/1.1"
    release: threading.Event  # set by the fixture

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client done reading early
            self.wfile.write(body)

    def _route(self) -> None:
        url = urlsplit(self.path)
        query = {name: values[0] for name, values in parse_qs(url.query).items()}
        sent = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if url.path.startswith("/status/"):
            extra = {"Retry-After": query["retry_after"]} if "retry_after" in query else {}
            self._answer(int(url.path.rsplit("/", 1)[1]), b"status page", extra)
        elif url.path == "/echo":
            echoed = {"method": self.command, "headers": dict(self.headers), "body": sent.decode()}
            headers = {"Content-Type": "application/json", "X-Peer": "yes"}
            self._answer(200, json.dumps(echoed).encode(), headers)
        elif url.path == "/big":
            self._answer(200, b"z" * int(query["size"]), {"Content-Type": "text/plain; charset=utf-8"})
        elif url.path == "/latin1":
            self._answer(200, "café".encode("latin-1"), {"Content-Type": "text/plain; charset=latin-1"})
        elif url.path == "/slow":
            self.release.wait(60)
            self._answer(200, b"late")
        else:
            self._answer(404, b"no such page")

    do_GET = do_POST = do_PUT = do_DELETE = _route  # noqa: N815 - the names http.server calls


class PeerServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients hanging up are expected
            super().handle_error(request, client_address)


@contextlib.contextmanager
def serving(tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """A `Peer` on loopback, speaking TLS with `tls` when given; yields its base URL."""
    release = threading.Event()
    handler = type("BoundPeer", (Peer,), {"release": release})
    httpd = PeerServer(("127.0.0.1", 0), handler)
    if tls is not None:  # the handshake runs at accept; one that fails drops that connection only
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{httpd.server_address[1]}"
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.fixture
def server() -> Iterator[str]:
    with serving() as url:
        yield url


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@contextlib.contextmanager
def serving_tls(signer: trustme.CA, *names: str) -> Iterator[str]:
    """A `Peer` over TLS with a certificate `signer` issued for `names`."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    signer.issue_cert(*names).configure_cert(tls)
    with serving(tls) as url:
        yield url


def trusting(ca: trustme.CA, tmp_path: Path) -> dict[str, Any]:
    """`[plugins.http]` trusting only `ca`, named in a CA file."""
    path = tmp_path / f"ca-{id(ca)}.pem"
    ca.cert_pem.write_to_path(str(path))
    return {"ca_file": str(path)}


@pytest.fixture
def refusing_url() -> Iterator[str]:
    """A loopback port that is bound but not listening: connecting is refused, and no one can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"


async def run(payload: dict[str, Any], table: dict[str, Any] | None = None, **options: Any) -> Any:
    """One attempt of the handler registered for `table`, with the plugin's lifespan open."""
    async with open_plugin(jobd_http, table or {}) as registry:
        request = registry.get("http.request")
        assert request is not None
        return await run_handler(request, payload, **options)


async def test_a_2xx_answer_completes_with_status_headers_and_body(server: str) -> None:
    outcome = await run({"method": "post", "url": f"{server}/echo", "body": "hello"})
    assert outcome.kind is OutcomeKind.COMPLETED, outcome.reason
    assert outcome.result["status"] == 200
    assert outcome.result["headers"]["x-peer"] == "yes"
    assert outcome.result["truncated"] is False
    echoed = json.loads(outcome.result["body"])
    assert echoed["method"] == "POST" and echoed["body"] == "hello"
    assert echoed["headers"]["User-Agent"].startswith("jobd-http/")


async def test_json_is_sent_as_json_with_the_given_headers(server: str) -> None:
    payload = {"method": "PUT", "url": f"{server}/echo", "json": {"n": 1, "s": "é"}}
    outcome = await run({**payload, "headers": {"X-Trace": "7"}})
    echoed = json.loads(outcome.result["body"])
    assert json.loads(echoed["body"]) == {"n": 1, "s": "é"}
    assert echoed["headers"]["Content-Type"] == "application/json"
    assert echoed["headers"]["X-Trace"] == "7"


@pytest.mark.parametrize(
    ("payload", "method"),
    [({}, "GET"), ({"json": {"n": 1}}, "POST"), ({"body": "x"}, "POST"), ({"json": None}, "POST")],
)
async def test_without_a_method_a_body_is_posted_and_anything_else_is_a_get(
    server: str, payload: dict[str, Any], method: str
) -> None:
    outcome = await run({"url": f"{server}/echo", **payload})
    assert outcome.kind is OutcomeKind.COMPLETED, outcome.reason
    assert json.loads(outcome.result["body"])["method"] == method


async def test_printable_header_values_are_accepted_and_sent(server: str) -> None:
    headers = {"Authorization": "Bearer a.b-c~d", "X-Tabbed": "one\ttwo", "X-Empty": ""}
    outcome = await run({"url": f"{server}/echo", "headers": headers})
    assert outcome.kind is OutcomeKind.COMPLETED, outcome.reason
    echoed = json.loads(outcome.result["body"])["headers"]
    assert echoed["Authorization"] == "Bearer a.b-c~d" and echoed["X-Tabbed"] == "one\ttwo"


async def test_a_null_timeout_is_the_configured_one(server: str) -> None:
    outcome = await run({"url": f"{server}/slow", "timeout": None}, {"timeout": "300ms"})
    assert outcome.kind is OutcomeKind.RETRY
    assert "no answer within 0.3s" in outcome.reason


async def test_the_body_is_truncated_at_max_body_bytes(server: str) -> None:
    outcome = await run({"method": "GET", "url": f"{server}/big?size=3000000"}, {"max_body_bytes": 1000})
    assert outcome.result["body"] == "z" * 1000
    assert outcome.result["truncated"] is True


async def test_the_body_is_decoded_with_the_answers_charset(server: str) -> None:
    outcome = await run({"method": "GET", "url": f"{server}/latin1"})
    assert outcome.result["body"] == "café"


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
async def test_server_errors_and_throttling_are_retried(server: str, status: int) -> None:
    outcome = await run({"method": "GET", "url": f"{server}/status/{status}"}, attempt=1, max_attempts=3)
    assert outcome.kind is OutcomeKind.RETRY
    assert f"answered {status}" in outcome.reason and "status page" in outcome.reason
    assert outcome.delay is None
    assert outcome.state is JobState.SCHEDULED


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_other_client_errors_fail_at_once(server: str, status: int) -> None:
    outcome = await run({"method": "GET", "url": f"{server}/status/{status}"}, attempt=1, max_attempts=3)
    assert outcome.kind is OutcomeKind.FAILED
    assert f"answered {status}" in outcome.reason
    assert outcome.state is JobState.FAILED


async def test_a_redirect_is_not_followed_and_fails(server: str) -> None:
    outcome = await run({"method": "GET", "url": f"{server}/status/302"})
    assert outcome.kind is OutcomeKind.FAILED


async def test_retry_after_in_seconds_sets_the_delay(server: str) -> None:
    outcome = await run({"method": "GET", "url": f"{server}/status/429?retry_after=120"})
    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.delay == 120.0


async def test_retry_after_as_an_http_date_sets_the_delay(server: str) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=600), usegmt=True).replace(" ", "%20")
    outcome = await run({"method": "GET", "url": f"{server}/status/503?retry_after={when}"})
    assert outcome.delay is not None and 500 < outcome.delay <= 600


def test_retry_after_values() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert jobd_http.retry_after("7", now) == 7.0
    assert jobd_http.retry_after("Wed, 01 Jan 2025 00:01:00 GMT", now) == 60.0
    assert jobd_http.retry_after("Tue, 31 Dec 2024 00:00:00 GMT", now) == 0.0
    assert jobd_http.retry_after("soon", now) is None
    assert jobd_http.retry_after("-5", now) is None
    assert jobd_http.retry_after(None, now) is None


async def test_expect_status_decides_what_completes(server: str) -> None:
    gone = await run({"method": "DELETE", "url": f"{server}/status/404", "expect_status": [200, 404]})
    assert gone.kind is OutcomeKind.COMPLETED and gone.result["status"] == 404
    wrong = await run({"method": "POST", "url": f"{server}/status/200", "expect_status": 201})
    assert wrong.kind is OutcomeKind.FAILED and "answered 200" in wrong.reason


async def test_a_slow_answer_past_the_timeout_is_retried(server: str) -> None:
    outcome = await run({"method": "GET", "url": f"{server}/slow", "timeout": 0.3})
    assert outcome.kind is OutcomeKind.RETRY
    assert "no answer within 0.3s" in outcome.reason


async def test_the_config_timeout_applies_when_the_payload_gives_none(server: str) -> None:
    outcome = await run({"method": "GET", "url": f"{server}/slow"}, {"timeout": "300ms"})
    assert "no answer within 0.3s" in outcome.reason


async def test_a_refused_connection_is_retried(refusing_url: str) -> None:
    outcome = await run({"method": "GET", "url": refusing_url})
    assert outcome.kind is OutcomeKind.RETRY
    assert "ConnectError" in outcome.reason


async def test_requests_are_signed_with_the_secret_from_the_file(server: str, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret\n")
    payload = {"method": "POST", "url": f"{server}/echo", "json": {"event": "paid"}}
    outcome = await run(payload, {"signing_secret_file": str(secret_file)})
    echoed = json.loads(outcome.result["body"])
    headers = echoed["headers"]
    signed = f"{headers['X-Jobd-Timestamp']}.{headers['X-Jobd-Job-Id']}.{echoed['body']}".encode()
    expected = "sha256=" + hmac.new(b"s3cret", signed, hashlib.sha256).hexdigest()
    assert headers["X-Jobd-Signature"] == expected
    assert abs(int(headers["X-Jobd-Timestamp"]) - datetime.now(UTC).timestamp()) < 300


async def test_no_signature_without_a_secret(server: str) -> None:
    outcome = await run({"method": "POST", "url": f"{server}/echo", "body": "x"})
    assert "X-Jobd-Signature" not in json.loads(outcome.result["body"])["headers"]


async def test_the_signing_header_is_configurable(server: str, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"k")
    table = {"signing_secret_file": str(secret_file), "signing_header": "X-Hub-Signature-256"}
    outcome = await run({"method": "POST", "url": f"{server}/echo", "body": "x"}, table)
    assert json.loads(outcome.result["body"])["headers"]["X-Hub-Signature-256"].startswith("sha256=")


async def test_the_client_is_shared_and_closed_with_the_lifespan(server: str) -> None:
    payload = {"method": "GET", "url": f"{server}/echo"}
    async with open_plugin(jobd_http, {}):
        assert jobd_http._clients is not None
        [client] = jobd_http._clients.values()
        await run_handler(jobd_http.request, payload, settings=Settings())
        assert list(jobd_http._clients.values()) == [client]
    assert client.is_closed and jobd_http._clients is None
    outcome = await run_handler(jobd_http.request, payload, settings=Settings())
    assert outcome.kind is OutcomeKind.ERROR and "lifespan" in outcome.reason


async def test_https_with_a_certificate_from_the_configured_ca_completes(
    ca: trustme.CA, tmp_path: Path
) -> None:
    with serving_tls(ca, "127.0.0.1", "localhost") as url:
        payload = {"method": "POST", "url": f"{url}/echo", "body": "secret"}
        outcome = await run(payload, trusting(ca, tmp_path))
    assert outcome.kind is OutcomeKind.COMPLETED, outcome.reason
    assert json.loads(outcome.result["body"])["body"] == "secret"


async def test_https_with_a_certificate_from_another_ca_fails_for_good(
    ca: trustme.CA, tmp_path: Path
) -> None:
    with serving_tls(trustme.CA(), "127.0.0.1") as url:
        payload = {"method": "GET", "url": f"{url}/echo"}
        outcome = await run(payload, trusting(ca, tmp_path), attempt=1, max_attempts=5)
    assert outcome.kind is OutcomeKind.FAILED  # not retried: the next attempt would meet the same certificate
    assert outcome.state is JobState.FAILED
    assert outcome.reason == (
        f"failed: GET {url}/echo: the server's certificate was refused: "
        "unable to get local issuer certificate"
    )


async def test_https_with_a_certificate_for_another_host_fails_for_good(
    ca: trustme.CA, tmp_path: Path
) -> None:
    with serving_tls(ca, "api.example.org") as url:
        outcome = await run({"method": "GET", "url": f"{url}/echo"}, trusting(ca, tmp_path))
    assert outcome.kind is OutcomeKind.FAILED
    assert "the server's certificate was refused: IP address mismatch" in outcome.reason


async def test_without_a_ca_file_the_system_cas_decide(ca: trustme.CA) -> None:
    with serving_tls(ca, "127.0.0.1") as url:
        outcome = await run({"method": "GET", "url": f"{url}/echo"})  # trustme's CA is no system CA
    assert outcome.kind is OutcomeKind.FAILED
    assert "certificate was refused" in outcome.reason


async def test_each_job_trusts_the_ca_of_its_own_settings(ca: trustme.CA, tmp_path: Path) -> None:
    """A reload that names another CA file applies to the next job: each set of CAs has its client."""
    first, second = plugin_settings(jobd_http, trusting(ca, tmp_path)), plugin_settings(jobd_http, {})
    with serving_tls(ca, "127.0.0.1") as url:
        payload = {"method": "GET", "url": f"{url}/echo"}
        async with open_plugin(jobd_http, trusting(ca, tmp_path)):
            kinds = [
                (await run_handler(jobd_http.request, payload, settings=settings)).kind
                for settings in (first, second, first)
            ]
            assert jobd_http._clients is not None and len(jobd_http._clients) == 2
    assert kinds == [OutcomeKind.COMPLETED, OutcomeKind.FAILED, OutcomeKind.COMPLETED]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ("GET http://x", "payload"),
        ({"method": 5, "url": "http://x/"}, "payload.method"),
        ({"method": "GE T", "url": "http://x/"}, "payload.method"),
        ({"method": "GET"}, "payload.url"),
        ({"method": "GET", "url": "ftp://x/"}, "payload.url"),
        ({"method": "GET", "url": "/relative"}, "payload.url"),
        ({"method": "GET", "url": "http://x/", "headers": []}, "payload.headers"),
        ({"method": "GET", "url": "http://x/", "headers": {"A": 1}}, "payload.headers.A"),
        ({"method": "GET", "url": "http://x/", "headers": {"A": "1\r\nB: 2"}}, "payload.headers.A"),
        ({"url": "http://x/", "headers": {"X-Name": "Zoë €"}}, "payload.headers.X-Name"),
        ({"url": "http://x/", "headers": {"X-Bell": "a\x07b"}}, "payload.headers.X-Bell"),
        ({"url": "http://x/", "headers": {"X-Lf": "value\n"}}, "payload.headers.X-Lf"),
        ({"url": "http://x/", "headers": {"X-Pad": " x "}}, "payload.headers.X-Pad"),
        ({"url": "http://x/", "headers": {"Bad Name": "x"}}, "payload.headers.Bad Name"),
        ({"url": "http://x/", "headers": {"Näme": "x"}}, "payload.headers.Näme"),
        ({"method": "POST", "url": "http://x/", "json": {}, "body": ""}, "payload.body"),
        ({"method": "POST", "url": "http://x/", "body": {"a": 1}}, "payload.body"),
        ({"method": "POST", "url": "http://x/", "json": float("nan")}, "payload.json"),
        ({"method": "GET", "url": "http://x/", "timeout": -1}, "payload.timeout"),
        ({"method": "GET", "url": "http://x/", "expect_status": 99}, "payload.expect_status"),
        ({"method": "GET", "url": "http://x/", "expect_status": []}, "payload.expect_status"),
        ({"method": "GET", "url": "http://x/", "data": "x"}, "payload.data"),
    ],
)
def test_bad_payloads_are_refused_naming_the_field(payload: Any, field: str) -> None:
    with pytest.raises(InvalidJob) as refused:
        validate_payload(jobd_http.request, payload)
    assert refused.value.field == field


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"max_body": 1}, "plugins.http.max_body"),
        ({"max_body_bytes": -1}, "plugins.http.max_body_bytes"),
        ({"signing_secret_file": "/nonexistent/secret"}, "plugins.http.signing_secret_file"),
        ({"signing_secret_file": 5}, "plugins.http.signing_secret_file"),
        ({"signing_header": "Bad Header"}, "plugins.http.signing_header"),
        ({"timeout": "0s"}, "plugins.http.timeout"),
        ({"timeout": "later"}, "plugins.http.timeout"),
        ({"ca_file": "/nonexistent/ca.pem"}, "plugins.http.ca_file"),
        ({"ca_file": ["ca.pem"]}, "plugins.http.ca_file"),
    ],
)
async def test_a_bad_config_table_is_refused_naming_the_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        async with open_plugin(jobd_http, table):
            pass
    assert refused.value.key == key


async def test_an_empty_secret_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        async with open_plugin(jobd_http, {"signing_secret_file": str(tmp_path / "secret")}):
            pass


def test_the_secret_is_read_into_the_settings_and_never_shown(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"hush\n")
    settings = plugin_settings(jobd_http, {"signing_secret_file": str(tmp_path / "secret"), "timeout": "5s"})
    assert settings.signing_secret == b"hush" and settings.timeout == 5.0
    assert "hush" not in repr(settings)


@pytest.mark.parametrize("content", ["", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"])
async def test_a_ca_file_without_a_certificate_is_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / "ca.pem").write_text(content)
    with pytest.raises(ConfigError, match="holds no PEM certificate") as refused:
        plugin_settings(jobd_http, {"ca_file": str(tmp_path / "ca.pem")})
    assert refused.value.key == "plugins.http.ca_file"
