"""jobd-email against a real SMTP server on loopback (a small sink on socketserver), in
plain text, with STARTTLS and with implicit TLS (certificates made by trustme)."""

from __future__ import annotations

import base64
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import jobd_email
import pytest
import trustme
from jobd_email import Settings

from jobd.errors import ConfigError, InvalidJob
from jobd.job import JobState
from jobd.testing import (
    Outcome,
    OutcomeKind,
    configure_plugin,
    plugin_settings,
    run_handler,
    validate_payload,
)


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    encrypted: bool  # the message came over TLS

    @property
    def message(self) -> EmailMessage:
        stored = self.data.replace(b"\r\n", b"\n")  # as a mailbox keeps it: lines end in LF
        return BytesParser(policy=policy.default).parsebytes(stored)


@dataclass
class Sink:
    """What the server answers (by command, or by recipient for RCPT) and what it received."""

    port: int = 0
    replies: dict[str, str] = field(default_factory=dict)  # by command (or "GREETING") -> reply
    recipient_replies: dict[str, str] = field(default_factory=dict)
    silent: bool = False  # accept connections but never greet
    tls: ssl.SSLContext | None = None  # offers STARTTLS with it, or with implicit_tls speaks TLS at once
    implicit_tls: bool = False
    connections: int = 0
    received: list[Received] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    settings: Settings = field(default_factory=Settings)  # [plugins.email] pointing at this sink


class SmtpSession(socketserver.StreamRequestHandler):
    sink: Sink

    encrypted = False

    def reply(self, line: str) -> None:
        self.connection.sendall(line.encode() + b"\r\n")

    def secure(self) -> bool:
        """Speak TLS from here on; False when the client gave up on the handshake."""
        assert self.sink.tls is not None
        try:
            self.connection = self.sink.tls.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError):  # the client refused our certificate
            return False
        self.rfile = self.connection.makefile("rb")
        self.encrypted = True
        return True

    def finish(self) -> None:
        super().finish()
        if self.encrypted:  # the server closes the plain socket it accepted, now detached
            self.connection.close()

    def handle(self) -> None:
        sink = self.sink
        sink.connections += 1
        if sink.silent:
            sink.release.wait(60)
            return
        if sink.implicit_tls and not self.secure():
            return
        self.reply(sink.replies.get("GREETING", "220 sink ESMTP"))
        sender = ""
        recipients: list[str] = []
        while line := self.rfile.readline():
            command, _, argument = line.decode().rstrip("\r\n").partition(" ")
            verb = command.upper()
            if verb in ("EHLO", "HELO"):
                starttls = "250-STARTTLS\r\n" if sink.tls and not self.encrypted else ""
                self.reply(f"250-sink\r\n{starttls}250-AUTH PLAIN\r\n250 8BITMIME")
            elif verb == "STARTTLS" and sink.tls and not self.encrypted:
                self.reply("220 go ahead")
                if not self.secure():
                    return
            elif verb == "AUTH":
                _, user, password = base64.b64decode(argument.split()[1]).decode().split("\0")
                sink.logins.append((user, password))
                self.reply(sink.replies.get("AUTH", "235 ok"))
            elif verb == "MAIL":
                sender = argument.partition(":")[2].strip().split()[0].strip("<>")
                recipients = []
                self.reply(sink.replies.get("MAIL", "250 ok"))
            elif verb == "RCPT":
                recipient = argument.partition(":")[2].strip().strip("<>")
                answer = sink.recipient_replies.get(recipient, "250 ok")
                if answer.startswith("250"):
                    recipients.append(recipient)
                self.reply(answer)
            elif verb == "DATA":
                self.reply("354 go on")
                lines = []
                while (data := self.rfile.readline()) not in (b".\r\n", b""):
                    lines.append(data[1:] if data.startswith(b"..") else data)
                answer = sink.replies.get("DATA", "250 queued")
                if answer.startswith("250"):
                    sink.received.append(Received(sender, recipients, b"".join(lines), self.encrypted))
                self.reply(answer)
            elif verb == "QUIT":
                self.reply(sink.replies.get("QUIT", "221 bye"))
                return
            else:  # RSET, NOOP and anything else
                self.reply("250 ok")


@pytest.fixture
def sink() -> Iterator[Sink]:
    state = Sink()
    handler = type("BoundSession", (SmtpSession,), {"sink": state})
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.settings = plugin_settings(
        jobd_email, {"host": "127.0.0.1", "port": state.port, "from": "Jobs <jobs@example.com>"}
    )
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def configure(sink: Sink, **table: Any) -> None:
    """Send to `sink` with `[plugins.email]` holding these keys too."""
    table = {"host": "127.0.0.1", "port": sink.port, "from": "jobs@example.com", **table}
    sink.settings = plugin_settings(jobd_email, table)


async def send(sink: Sink, payload: Any, **options: Any) -> Outcome:
    return await run_handler(jobd_email.send, payload, settings=sink.settings, **options)


async def test_a_text_message_arrives_with_its_headers_and_envelope(sink: Sink) -> None:
    payload = {"to": "Ops <ops@example.org>", "subject": "Disk full", "text": "Clean /var.\n"}
    outcome = await send(sink, payload)
    assert outcome.kind is OutcomeKind.COMPLETED, outcome.reason
    [received] = sink.received
    assert received.sender == "jobs@example.com"
    assert received.recipients == ["ops@example.org"]
    message = received.message
    assert message["From"] == "Jobs <jobs@example.com>"
    assert message["To"] == "Ops <ops@example.org>"
    assert message["Subject"] == "Disk full"
    assert message["Date"]
    assert message["Message-ID"] == outcome.result["message_id"]
    assert outcome.result["message_id"].endswith("@example.com>")
    assert message.get_content_type() == "text/plain"
    assert message.get_content() == "Clean /var.\n"
    assert outcome.result["accepted"] == ["ops@example.org"]
    assert outcome.result["refused"] == {}


async def test_text_and_html_make_a_multipart_alternative(sink: Sink) -> None:
    payload = {"to": ["a@example.org"], "subject": "Report", "text": "plain", "html": "<p>rich</p>"}
    await send(sink, payload)
    message = sink.received[0].message
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert parts[0].get_content() == "plain\n"
    assert parts[1].get_content() == "<p>rich</p>\n"


async def test_html_alone_is_a_single_html_part(sink: Sink) -> None:
    await send(sink, {"to": "a@example.org", "subject": "s", "html": "<b>hi</b>"})
    message = sink.received[0].message
    assert message.get_content_type() == "text/html"


async def test_cc_and_reply_to_are_headers_and_bcc_only_the_envelope(sink: Sink) -> None:
    payload = {
        "to": ["a@example.org", "b@example.org"],
        "cc": "c@example.org",
        "bcc": ["hidden@example.org", "a@example.org"],
        "reply_to": "help@example.com",
        "subject": "s",
        "text": "t",
    }
    outcome = await send(sink, payload)
    received = sink.received[0]
    assert received.recipients == ["a@example.org", "b@example.org", "c@example.org", "hidden@example.org"]
    message = received.message
    assert message["Cc"] == "c@example.org"
    assert message["Reply-To"] == "help@example.com"
    assert message["Bcc"] is None
    assert b"hidden@example.org" not in received.data
    assert outcome.result["accepted"] == received.recipients


async def test_non_ascii_subject_and_body_survive(sink: Sink) -> None:
    await send(sink, {"to": "a@example.org", "subject": "Größe ✓", "text": "naïve café"})
    message = sink.received[0].message
    assert message["Subject"] == "Größe ✓"
    assert message.get_content() == "naïve café\n"


async def test_some_recipients_refused_completes_with_the_others(sink: Sink) -> None:
    sink.recipient_replies["gone@example.org"] = "550 no such user"
    payload = {"to": ["a@example.org", "gone@example.org"], "subject": "s", "text": "t"}
    outcome = await send(sink, payload)
    assert outcome.kind is OutcomeKind.COMPLETED
    assert outcome.result["accepted"] == ["a@example.org"]
    assert outcome.result["refused"] == {"gone@example.org": "550 no such user"}


async def test_every_recipient_refused_temporarily_is_retried(sink: Sink) -> None:
    sink.recipient_replies["a@example.org"] = "450 mailbox busy"
    outcome = await send(sink, {"to": "a@example.org", "subject": "s", "text": "t"})
    assert outcome.kind is OutcomeKind.RETRY
    assert "450 mailbox busy" in outcome.reason


async def test_every_recipient_refused_permanently_fails(sink: Sink) -> None:
    sink.recipient_replies["a@example.org"] = "550 no such user"
    outcome = await send(sink, {"to": "a@example.org", "subject": "s", "text": "t"})
    assert outcome.kind is OutcomeKind.FAILED
    assert "550 no such user" in outcome.reason


@pytest.mark.parametrize(
    ("command", "reply", "kind"),
    [
        ("MAIL", "451 try again later", OutcomeKind.RETRY),
        ("MAIL", "553 sender not allowed", OutcomeKind.FAILED),
        ("DATA", "452 out of storage", OutcomeKind.RETRY),
        ("DATA", "554 rejected as spam", OutcomeKind.FAILED),
        ("GREETING", "421 too busy", OutcomeKind.RETRY),
    ],
)
async def test_4xx_replies_retry_and_5xx_replies_fail(
    sink: Sink, command: str, reply: str, kind: OutcomeKind
) -> None:
    sink.replies[command] = reply
    outcome = await send(sink, {"to": "a@example.org", "subject": "s", "text": "t"})
    assert outcome.kind is kind
    assert reply.split()[0] in outcome.reason
    assert sink.received == []


@pytest.mark.parametrize("reply", ["421 closing down", "500 what quit"])
async def test_a_failed_quit_after_the_message_was_accepted_still_completes(sink: Sink, reply: str) -> None:
    sink.replies["QUIT"] = reply
    outcome = await send(sink, {"to": "a@example.org", "subject": "s", "text": "t"})
    assert outcome.kind is OutcomeKind.COMPLETED, outcome.reason
    assert outcome.result["accepted"] == ["a@example.org"]
    assert len(sink.received) == 1


async def test_a_refused_connection_is_retried() -> None:
    with socket.socket() as bound_not_listening:
        bound_not_listening.bind(("127.0.0.1", 0))
        refusing = {"host": "127.0.0.1", "port": bound_not_listening.getsockname()[1]}
        settings = plugin_settings(jobd_email, refusing)
        payload = {"to": "a@example.org", "subject": "s", "text": "t"}
        outcome = await run_handler(jobd_email.send, payload, settings=settings)
    assert outcome.kind is OutcomeKind.RETRY
    assert "ConnectionRefusedError" in outcome.reason


async def test_a_server_that_never_answers_times_out_and_is_retried(sink: Sink) -> None:
    sink.silent = True
    configure(sink, timeout="300ms")
    outcome = await send(sink, {"to": "a@example.org", "subject": "s", "text": "t"})
    assert outcome.kind is OutcomeKind.RETRY
    assert "timed out" in outcome.reason


async def test_login_uses_the_password_file(sink: Sink, tmp_path: Path) -> None:
    (tmp_path / "password").write_text("hunter2\n")
    configure(sink, username="mailer", password_file=str(tmp_path / "password"))
    outcome = await send(sink, {"to": "a@example.org", "subject": "s", "text": "t"})
    assert outcome.kind is OutcomeKind.COMPLETED, outcome.reason
    assert sink.logins == [("mailer", "hunter2")]


async def test_login_uses_the_environment_without_a_password_file(
    sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBD_SMTP_PASSWORD", "from-env")
    configure(sink, username="mailer")
    await send(sink, {"to": "a@example.org", "subject": "s", "text": "t"})
    assert sink.logins == [("mailer", "from-env")]
    assert sink.settings.password == "from-env" and "from-env" not in repr(sink.settings)


async def test_refused_credentials_fail(sink: Sink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBD_SMTP_PASSWORD", "wrong")
    sink.replies["AUTH"] = "535 authentication failed"
    configure(sink, username="mailer")
    outcome = await send(sink, {"to": "a@example.org", "subject": "s", "text": "t"})
    assert outcome.kind is OutcomeKind.FAILED
    assert "535" in outcome.reason


async def test_starttls_against_a_server_without_it_fails(sink: Sink) -> None:
    configure(sink, starttls=True)
    outcome = await send(sink, {"to": "a@example.org", "subject": "s", "text": "t"})
    assert outcome.kind is OutcomeKind.FAILED
    assert "STARTTLS" in outcome.reason
    assert sink.received == []


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def serve_tls(
    sink: Sink,
    tmp_path: Path,
    signer: trustme.CA,
    *,
    trusted: trustme.CA | None,
    implicit: bool,
    names: tuple[str, ...],
) -> None:
    """Make `sink` speak TLS with a certificate `signer` issued for `names`, and send to it
    with `[plugins.email]` trusting only `trusted` (its certificate as `ca_file`; None:
    no `ca_file`, the system's CAs)."""
    sink.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    signer.issue_cert(*names).configure_cert(sink.tls)
    sink.implicit_tls = implicit
    table: dict[str, Any] = {"tls" if implicit else "starttls": True}
    if trusted is not None:
        trusted.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        table["ca_file"] = str(tmp_path / "ca.pem")
    configure(sink, **table)


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
async def test_a_server_certificate_from_the_configured_ca_is_trusted(
    sink: Sink, tmp_path: Path, ca: trustme.CA, implicit: bool
) -> None:
    serve_tls(sink, tmp_path, ca, trusted=ca, implicit=implicit, names=("127.0.0.1", "localhost"))
    outcome = await send(sink, {"to": "a@example.org", "subject": "s", "text": "over TLS"})
    assert outcome.kind is OutcomeKind.COMPLETED, outcome.reason
    [received] = sink.received
    assert received.encrypted
    assert received.message.get_content() == "over TLS\n"


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
async def test_a_certificate_from_another_ca_fails_for_good(
    sink: Sink, tmp_path: Path, ca: trustme.CA, implicit: bool
) -> None:
    serve_tls(sink, tmp_path, trustme.CA(), trusted=ca, implicit=implicit, names=("127.0.0.1",))
    payload = {"to": "a@example.org", "subject": "s", "text": "t"}
    outcome = await send(sink, payload, attempt=1, max_attempts=5)
    assert outcome.kind is OutcomeKind.FAILED  # not retried: the next attempt would meet the same certificate
    assert outcome.state is JobState.FAILED
    assert f"127.0.0.1:{sink.port}: the server's certificate was refused" in outcome.reason
    assert "unable to get local issuer certificate" in outcome.reason
    assert sink.received == [] and sink.connections == 1


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
async def test_a_certificate_for_another_host_fails_for_good(
    sink: Sink, tmp_path: Path, ca: trustme.CA, implicit: bool
) -> None:
    serve_tls(sink, tmp_path, ca, trusted=ca, implicit=implicit, names=("mail.example.org",))
    outcome = await send(sink, {"to": "a@example.org", "subject": "s", "text": "t"})
    assert outcome.kind is OutcomeKind.FAILED
    assert "the server's certificate was refused: IP address mismatch" in outcome.reason
    assert sink.received == []


async def test_without_a_ca_file_the_system_cas_decide(sink: Sink, tmp_path: Path, ca: trustme.CA) -> None:
    # trustme's CA is no system CA
    serve_tls(sink, tmp_path, ca, trusted=None, implicit=True, names=("127.0.0.1",))
    outcome = await send(sink, {"to": "a@example.org", "subject": "s", "text": "t"})
    assert outcome.kind is OutcomeKind.FAILED
    assert "certificate was refused" in outcome.reason


def test_defaults_are_localhost_port_25_without_tls() -> None:
    current = plugin_settings(jobd_email, {})
    assert (current.host, current.port, current.tls, current.starttls) == ("localhost", 25, False, False)
    assert plugin_settings(jobd_email, {"tls": True}).port == 465
    assert plugin_settings(jobd_email, {"tls": True, "port": 2465}).port == 2465


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ("to someone", "payload"),
        ({"subject": "s", "text": "t"}, "payload.to"),
        ({"to": [], "subject": "s", "text": "t"}, "payload.to"),
        ({"to": "not an address", "subject": "s", "text": "t"}, "payload.to"),
        ({"to": "a@example.org, b@example.org", "subject": "s", "text": "t"}, "payload.to"),
        ({"to": "a@example.org\r\nBcc: x@example.org", "subject": "s", "text": "t"}, "payload.to"),
        ({"to": "a@example.org", "cc": 5, "subject": "s", "text": "t"}, "payload.cc"),
        ({"to": "a@example.org", "bcc": ["x"], "subject": "s", "text": "t"}, "payload.bcc"),
        ({"to": "a@example.org", "reply_to": "@x", "subject": "s", "text": "t"}, "payload.reply_to"),
        ({"to": "a@example.org", "text": "t"}, "payload.subject"),
        ({"to": "a@example.org", "subject": "a\nBcc: x@y", "text": "t"}, "payload.subject"),
        ({"to": "a@example.org", "subject": "s"}, "payload.text"),
        ({"to": "a@example.org", "subject": "s", "html": 1}, "payload.html"),
        ({"to": "a@example.org", "subject": "s", "text": "t", "from": "me@x.org"}, "payload.from"),
    ],
)
def test_bad_payloads_are_refused_naming_the_field(payload: Any, field: str) -> None:
    with pytest.raises(InvalidJob) as refused:
        validate_payload(jobd_email.send, payload)
    assert refused.value.field == field


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"server": "x"}, "plugins.email.server"),
        ({"host": ""}, "plugins.email.host"),
        ({"port": 0}, "plugins.email.port"),
        ({"port": "25"}, "plugins.email.port"),
        ({"from": "nobody"}, "plugins.email.from"),
        ({"tls": True, "starttls": True}, "plugins.email.tls"),
        ({"starttls": "yes"}, "plugins.email.starttls"),
        ({"username": "u"}, "plugins.email.username"),
        ({"username": "u", "password_file": "/nonexistent/password"}, "plugins.email.password_file"),
        ({"timeout": "forever"}, "plugins.email.timeout"),
        ({"ca_file": "/nonexistent/ca.pem", "tls": True}, "plugins.email.ca_file"),
        ({"ca_file": 5, "tls": True}, "plugins.email.ca_file"),
    ],
)
def test_a_bad_config_table_is_refused_naming_the_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        configure_plugin(jobd_email, table)
    assert refused.value.key == key


@pytest.mark.parametrize(
    "content", ["", "not a certificate\n", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]
)
def test_a_ca_file_without_a_certificate_is_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / "ca.pem").write_text(content)
    with pytest.raises(ConfigError, match="holds no PEM certificate") as refused:
        configure_plugin(jobd_email, {"ca_file": str(tmp_path / "ca.pem"), "starttls": True})
    assert refused.value.key == "plugins.email.ca_file"


def test_a_ca_file_without_tls_is_refused(tmp_path: Path, ca: trustme.CA) -> None:
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    with pytest.raises(ConfigError, match="set tls or starttls") as refused:
        configure_plugin(jobd_email, {"ca_file": str(tmp_path / "ca.pem")})
    assert refused.value.key == "plugins.email.ca_file"
