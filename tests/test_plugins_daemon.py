"""The shipped plugins through a real `jobd run`: shell, HTTP, email and the example.

Each plugin's own tests drive its handler directly; these submit jobs to a daemon that
loaded the plugins from their installed distributions and read their `[plugins.NAME]`
tables, against real peers on loopback (processes, an HTTP server, an SMTP sink) started
here. They poll for conditions with deadlines; none sleeps and hopes.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import JOBD, DaemonProcess, wait_until

pytestmark = pytest.mark.process
StartDaemon = Callable[..., DaemonProcess]

# Retries come back within a few tenths of a second unless something (Retry-After) says otherwise:
# a short back-off, and a short poll so that a due retry is claimed at once.
FAST_RETRY = {
    "retry": {"base_delay": "100ms", "max_delay": "200ms", "jitter": False},
    "workers": {"poll_interval": "100ms"},
}


def submit(daemon: DaemonProcess, job_type: str, payload: Any, **options: Any) -> dict[str, Any]:
    with daemon.http() as client:
        answer = client.post("/v1/jobs", json={"type": job_type, "payload": payload, **options})
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def finished(daemon: DaemonProcess, job_id: str, timeout: float = 30) -> dict[str, Any]:
    """The job once it is completed, failed or cancelled."""
    with daemon.http(timeout=timeout + 10) as client:
        job = client.get(f"/v1/jobs/{job_id}/wait", params={"timeout": str(timeout)}).json()
    assert job["state"] in ("completed", "failed", "cancelled"), f"{job}\n{daemon.log()}"
    return dict(job)


def job_state(daemon: DaemonProcess, job_id: str) -> str:
    with daemon.http() as client:
        return str(client.get(f"/v1/jobs/{job_id}").json()["state"])


# -- jobd-shell -----------------------------------------------------------------------


SHELL_TABLE = {"allowed_commands": ["echo", "/bin/sh"], "kill_grace": "500ms"}


def running(pid: int) -> bool:
    """Whether `pid` is a live process; a zombie has ended, it only waits to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_shell_runs_commands_retries_failures_and_refuses_what_is_not_allowed(
    start_daemon: StartDaemon,
) -> None:
    daemon = start_daemon(config={**FAST_RETRY, "plugins": {"shell": SHELL_TABLE}})
    ok = finished(daemon, submit(daemon, "shell.run", {"argv": ["echo", "hello", "world"]})["id"])
    assert ok["state"] == "completed", ok
    assert ok["result"]["exit_code"] == 0
    assert ok["result"]["stdout"] == "hello world\n"
    assert ok["result"]["truncated"] is False

    script = "echo broken pipe dream >&2; exit 3"
    failing = submit(daemon, "shell.run", {"argv": [script], "shell": True}, max_attempts=2)
    failed = finished(daemon, failing["id"])
    assert failed["state"] == "failed" and failed["attempts"] == 2
    assert "exited with code 3" in failed["last_error"]
    assert "broken pipe dream" in failed["last_error"]

    with daemon.http() as client:
        not_allowed = {"type": "shell.run", "payload": {"argv": ["cat", "/etc/hostname"]}}
        refused = client.post("/v1/jobs", json=not_allowed)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["details"]["field"] == "payload.argv"
        assert "allowed_commands" in refused.json()["error"]["message"]
        stored = client.get("/v1/jobs", params={"type": "shell.run"}).json()["jobs"]
    assert len(stored) == 2  # the refused job was never stored


def test_cancelling_a_shell_job_kills_its_whole_process_group(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    daemon = start_daemon(config={"plugins": {"shell": SHELL_TABLE}})
    pids = tmp_path / "pids"
    # The shell ignores SIGTERM, and so does its background child (an ignored signal stays
    # ignored across exec): only the SIGKILL after kill_grace ends them.
    script = 'trap "" TERM; sleep 600 & echo $$ $! > "$1.tmp"; mv "$1.tmp" "$1"; wait'
    submitted = daemon.ctl(
        "--json", "submit", "shell.run", json.dumps({"argv": [script, str(pids)], "shell": True})
    )
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    wait_until(pids.exists, what="the command to write its pids")
    shell_pid, sleep_pid = (int(pid) for pid in pids.read_text().split())
    assert running(shell_pid) and running(sleep_pid)

    started = time.monotonic()
    cancelled = daemon.ctl("cancel", job["id"])
    assert cancelled.returncode == 0, cancelled.stderr
    wait_until(lambda: job_state(daemon, job["id"]) == "cancelled", timeout=5, what="the job to be cancelled")
    wait_until(
        lambda: not running(shell_pid) and not running(sleep_pid),
        timeout=10,
        what="the command and its child to be killed",
    )
    # Cancelling waits at most 0.5 s between SIGTERM and SIGKILL, whatever kill_grace says.
    assert time.monotonic() - started < 4.5
    assert daemon.stop() == 0


# -- jobd-http ------------------------------------------------------------------------


SECRET = b"webhook secret"


@dataclass
class HttpPeer:
    """What the test server saw: arrival times of /flaky, and the checked signatures of /hook."""

    url: str = ""
    flaky_failures: int = 1  # how many /flaky requests answer 503 before it recovers
    flaky_arrivals: list[float] = field(default_factory=list)
    hooks: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class PeerHandler(BaseHTTPRequestHandler):
    """/ok, /flaky (503 + Retry-After: 1, then 200), /hook (checks the HMAC), anything else 404."""

    protocol_version = "HTTP/1.1"
    peer: HttpPeer  # set on the class bound by the fixture

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(ConnectionError):
            self.wfile.write(body)

    def route(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/ok":
            self.answer(200, b'{"hello": "world"}', {"Content-Type": "application/json", "X-Peer": "yes"})
        elif self.path == "/flaky":
            with self.peer.lock:
                self.peer.flaky_arrivals.append(time.monotonic())
                failing = len(self.peer.flaky_arrivals) <= self.peer.flaky_failures
            if failing:
                self.answer(503, b"busy", {"Retry-After": "1"})
            else:
                self.answer(200, b"recovered")
        elif self.path == "/hook":
            self.answer(*self.check_signature(body))
        else:
            self.answer(404, b"no such page")

    def check_signature(self, body: bytes) -> tuple[int, bytes]:
        """Verify as a webhook receiver would: HMAC-SHA256 of "TIMESTAMP.JOB_ID." + the raw body."""
        timestamp = self.headers.get("X-Jobd-Timestamp", "")
        job_id = self.headers.get("X-Jobd-Job-Id", "")
        signed = f"{timestamp}.{job_id}.".encode() + body
        expected = "sha256=" + hmac.new(SECRET, signed, hashlib.sha256).hexdigest()
        valid = hmac.compare_digest(expected, self.headers.get("X-Jobd-Signature", ""))
        with self.peer.lock:
            self.peer.hooks.append({"valid": valid, "job_id": job_id, "body": body})
        return (200, b"signed") if valid else (401, b"bad signature")

    do_GET = do_POST = route  # noqa: N815 - the names http.server calls


@pytest.fixture
def http_peer() -> Iterator[HttpPeer]:
    peer = HttpPeer()
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("BoundPeer", (PeerHandler,), {"peer": peer}))
    server.daemon_threads = True
    peer.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield peer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_http_requests_complete_retry_after_and_fail_on_4xx(
    start_daemon: StartDaemon, http_peer: HttpPeer
) -> None:
    daemon = start_daemon(config=FAST_RETRY)

    def get(path: str, **options: Any) -> dict[str, Any]:
        return submit(daemon, "http.request", {"method": "GET", "url": f"{http_peer.url}{path}"}, **options)

    ok = finished(daemon, get("/ok")["id"])
    assert ok["state"] == "completed", ok
    assert ok["result"]["status"] == 200
    assert json.loads(ok["result"]["body"]) == {"hello": "world"}
    assert ok["result"]["headers"]["x-peer"] == "yes"

    recovered = finished(daemon, get("/flaky", max_attempts=3)["id"])
    assert recovered["state"] == "completed", recovered
    assert recovered["attempts"] == 2 and recovered["result"]["body"] == "recovered"
    first, second = http_peer.flaky_arrivals
    # The back-off and the poll here are 100 ms: only Retry-After makes the second attempt wait a second.
    assert second - first >= 0.95

    failed = finished(daemon, get("/nope", max_attempts=3)["id"])
    assert failed["state"] == "failed" and failed["attempts"] == 1
    assert "404" in failed["last_error"]


def test_http_requests_are_signed_with_the_secret_from_the_file(
    start_daemon: StartDaemon, http_peer: HttpPeer, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    daemon = start_daemon(config={"plugins": {"http": {"signing_secret_file": str(secret_file)}}})
    payload = {"method": "POST", "url": f"{http_peer.url}/hook", "json": {"event": "deployed", "n": 7}}
    job = finished(daemon, submit(daemon, "http.request", payload)["id"])
    assert job["state"] == "completed", job
    [hook] = http_peer.hooks
    assert hook["valid"] is True
    assert hook["job_id"] == job["id"]
    assert json.loads(hook["body"]) == {"event": "deployed", "n": 7}


# -- jobd-email -----------------------------------------------------------------------


@dataclass
class SmtpSink:
    """A loopback SMTP server: what it answers to MAIL FROM, and the messages it accepted."""

    port: int = 0
    mail_reply: str = "250 ok"
    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)  # sender, recipients, data


class SmtpSession(socketserver.StreamRequestHandler):
    sink: SmtpSink  # set on the class bound by the fixture

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        self.reply("220 sink ESMTP")
        sender = ""
        recipients: list[str] = []
        while line := self.rfile.readline():
            verb, _, argument = line.decode().rstrip("\r\n").partition(" ")
            verb = verb.upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250-sink\r\n250 8BITMIME")
            elif verb == "MAIL":
                sender, recipients = argument.partition(":")[2].strip().strip("<>"), []
                self.reply(self.sink.mail_reply)
            elif verb == "RCPT":
                recipients.append(argument.partition(":")[2].strip().strip("<>"))
                self.reply("250 ok")
            elif verb == "DATA":
                self.reply("354 go on")
                lines = []
                while (data := self.rfile.readline()) not in (b".\r\n", b""):
                    lines.append(data[1:] if data.startswith(b"..") else data)
                self.sink.received.append((sender, recipients, b"".join(lines)))
                self.reply("250 queued")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("250 ok")


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    session = type("BoundSession", (SmtpSession,), {"sink": sink})
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), session)
    server.daemon_threads = True
    sink.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_email_arrives_as_multipart_alternative_and_a_5xx_fails_at_once(
    start_daemon: StartDaemon, smtp_sink: SmtpSink
) -> None:
    table = {"host": "127.0.0.1", "port": smtp_sink.port, "from": "Jobs <jobs@example.com>", "timeout": "10s"}
    daemon = start_daemon(config={**FAST_RETRY, "plugins": {"email": table}})
    payload = {
        "to": ["Ops <ops@example.org>"],
        "bcc": "audit@example.org",
        "subject": "Nightly report",
        "text": "All green.\n",
        "html": "<p>All <b>green</b>.</p>\n",
    }
    sent = finished(daemon, submit(daemon, "email.send", payload)["id"])
    assert sent["state"] == "completed", sent
    assert sent["result"]["accepted"] == ["ops@example.org", "audit@example.org"]

    [(sender, recipients, data)] = smtp_sink.received
    assert sender == "jobs@example.com"
    assert recipients == ["ops@example.org", "audit@example.org"]
    message = BytesParser(policy=policy.default).parsebytes(data.replace(b"\r\n", b"\n"))
    assert message["To"] == "Ops <ops@example.org>"
    assert message["Subject"] == "Nightly report"
    assert message["From"] == "Jobs <jobs@example.com>"
    assert message["Bcc"] is None
    assert message["Message-ID"] == sent["result"]["message_id"]
    assert message.get_content_type() == "multipart/alternative"
    parts = [(part.get_content_type(), part.get_content()) for part in message.iter_parts()]
    assert parts == [("text/plain", "All green.\n"), ("text/html", "<p>All <b>green</b>.</p>\n")]

    smtp_sink.mail_reply = "550 5.7.1 sender rejected"
    rejected = finished(daemon, submit(daemon, "email.send", payload, max_attempts=3)["id"])
    assert rejected["state"] == "failed" and rejected["attempts"] == 1
    assert "550" in rejected["last_error"] and "sender rejected" in rejected["last_error"]
    assert len(smtp_sink.received) == 1


# -- jobd-example ---------------------------------------------------------------------


def test_the_example_plugin_greets_through_the_daemon(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(config={"plugins": {"example": {"greeting": "Howdy"}}})
    with daemon.http() as client:
        handlers = {h["type"]: h for h in client.get("/v1/handlers").json()["handlers"]}
        refused = client.post("/v1/jobs", json={"type": "example.greet", "payload": {"name": ""}})
    assert handlers["example.greet"]["plugin"] == "jobd-example"
    assert handlers["example.greet"]["max_attempts"] == 2 and handlers["example.greet"]["timeout"] == 10
    assert refused.status_code == 422 and refused.json()["error"]["details"]["field"] == "payload.name"
    greeted = finished(daemon, submit(daemon, "example.greet", {"name": "Ada"})["id"])
    assert greeted["state"] == "completed" and greeted["result"] == {"message": "Howdy, Ada!"}
    nobody = finished(daemon, submit(daemon, "example.greet", {"name": "nobody"})["id"])
    assert nobody["state"] == "failed" and nobody["attempts"] == 1
    assert "nobody to greet" in nobody["last_error"]


# -- a plugin's bad config table ------------------------------------------------------


def test_a_bad_plugin_table_fails_check_and_start_naming_the_key(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(config={"plugins": {"shell": {"allowed_command": ["echo"]}}}, wait=False)
    assert daemon.wait_exit(30) == 1
    config = str(daemon.config_path)
    assert "plugins.shell.allowed_command" in daemon.log() and config in daemon.log()
    assert "Traceback" not in daemon.log()
    checked = subprocess.run([*JOBD, "check", "--config", config], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 1
    assert "plugins.shell.allowed_command" in checked.stderr and config in checked.stderr
    assert "Traceback" not in checked.stderr
