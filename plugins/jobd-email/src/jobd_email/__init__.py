"""jobd-email: the `email.send` job type sends one message over SMTP.

The server, the From address and the credentials come from `[plugins.email]` (the
password from `password_file` or `$JOBD_SMTP_PASSWORD`), never from a payload. smtplib
blocks, so each message is sent from a worker thread, at most `CONNECTIONS` at once.
Temporary refusals (4xx replies) and network errors are retried; permanent ones (5xx),
and a server certificate that does not verify, fail the job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import smtplib
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid
from functools import partial
from pathlib import Path
from typing import Any

import trio

import jobd

__all__ = ["Settings", "build_message", "jobd_configure", "jobd_handlers", "send", "validate"]

PASSWORD_VARIABLE = "JOBD_SMTP_PASSWORD"
CONNECTIONS = 4  # SMTP conversations at once in one daemon
PAYLOAD_KEYS = frozenset({"to", "cc", "bcc", "subject", "text", "html", "reply_to"})
SMTP_PORT, SMTPS_PORT = 25, 465

_limiter = trio.CapacityLimiter(CONNECTIONS)


@dataclass(frozen=True, slots=True)
class Settings:
    """`[plugins.email]`: each field is a key (`sender` is `from`), with its default, but
    `password`, which is read from `password_file` or the environment when the table is
    accepted."""

    host: str = "localhost"
    port: int = jobd.setting(SMTP_PORT, minimum=1, maximum=65535)  # SMTPS_PORT with tls, unless given
    sender: str = jobd.setting(f"jobd@{socket.gethostname()}", key="from")
    starttls: bool = False
    tls: bool = False
    username: str = ""
    password_file: str = ""
    timeout: float = jobd.setting(30.0, duration=True, minimum=0.001)
    ca_file: str = ""
    password: str = jobd.setting("", from_config=False)
    # The PEM text of `ca_file`, read when the table is accepted; None trusts the system's CAs.
    ca_certificates: str | None = jobd.setting(None, from_config=False)

    def __repr__(self) -> str:  # never print the password
        return f"Settings(host={self.host!r}, port={self.port}, sender={self.sender!r}, tls={self.tls})"

    def tls_context(self) -> ssl.SSLContext:
        """What the server's certificate is verified with: the host name, and a chain to
        the CAs of `ca_file`, or to the system's when there is none."""
        return ssl.create_default_context(cadata=self.ca_certificates)


@jobd.hookimpl
def jobd_configure(config: Mapping[str, Any]) -> Settings:
    settings = jobd.parse_settings(Settings, config)
    if not settings.host:
        raise jobd.ConfigError("must be a host name or address", key="host")
    if settings.starttls and settings.tls:
        raise jobd.ConfigError("tls (implicit TLS, port 465) and starttls exclude each other", key="tls")
    if _address(settings.sender) is None:
        example = "'jobs@example.com' or 'Jobs <jobs@example.com>'"
        raise jobd.ConfigError(f"must be one address such as {example}", key="from")
    password = _read_password(settings.password_file)
    if settings.username and not password:
        message = f"a username needs a password: set password_file or ${PASSWORD_VARIABLE}"
        raise jobd.ConfigError(message, key="username")
    if settings.ca_file and not (settings.tls or settings.starttls):
        raise jobd.ConfigError("a CA file verifies TLS: set tls or starttls too", key="ca_file")
    port = SMTPS_PORT if settings.tls and "port" not in config else settings.port
    certificates = _read_ca_file(settings.ca_file)
    return dataclasses.replace(settings, port=port, password=password, ca_certificates=certificates)


def _read_password(path: str) -> str:
    """The password: the file's first line, else `$JOBD_SMTP_PASSWORD`, else none."""
    if not path:
        return os.environ.get(PASSWORD_VARIABLE, "")
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not text"
        raise jobd.ConfigError(f"cannot read {path}: {reason}", key="password_file") from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise jobd.ConfigError(f"{path} is empty", key="password_file")
    return password


def _read_ca_file(path: str) -> str | None:
    """The CA certificates of `path` as PEM text, checked to load; None without a file."""
    if not path:
        return None
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not text"
        raise jobd.ConfigError(f"cannot read {path}: {reason}", key="ca_file") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with contextlib.suppress(ssl.SSLError, ValueError):  # an empty file or garbage loads nothing
        context.load_verify_locations(cadata=text)
    if not context.cert_store_stats()["x509"]:
        raise jobd.ConfigError(f"{path} holds no PEM certificate", key="ca_file")
    return text


def _address(text: str) -> str | None:
    """The addr-spec of one address ("Name <a@b>" or "a@b"); None when it is not exactly one address."""
    if any(char in text for char in "\r\n\0"):
        return None
    found = getaddresses([text])
    if len(found) != 1:
        return None
    local, at, domain = found[0][1].rpartition("@")
    return found[0][1] if at and local and domain and " " not in found[0][1] else None


def _address_list(payload: Mapping[str, Any], field: str, *, required: bool = False) -> list[str]:
    value = payload.get(field, [])
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise jobd.InvalidJob("must be an address or a list of addresses", field=f"payload.{field}")
    if required and not items:
        raise jobd.InvalidJob("needs at least one address", field=f"payload.{field}")
    for item in items:
        if _address(item) is None:
            raise jobd.InvalidJob(f"{item!r} is not one email address", field=f"payload.{field}")
    return items


def validate(payload: Any, settings: Settings) -> None:
    """Refuse an `email.send` payload at submit, naming the field at fault."""
    if not isinstance(payload, dict):
        example = '{"to": "ops@example.com", "subject": "…", "text": "…"}'
        raise jobd.InvalidJob(f"payload must be an object such as {example}", field="payload")
    unknown = sorted(set(payload) - PAYLOAD_KEYS)
    if unknown:
        known = ", ".join(sorted(PAYLOAD_KEYS))
        raise jobd.InvalidJob(f"unknown field (known: {known})", field=f"payload.{unknown[0]}")
    _address_list(payload, "to", required=True)
    for field in ("cc", "bcc", "reply_to"):
        _address_list(payload, field)
    subject = payload.get("subject")
    if not isinstance(subject, str) or any(char in subject for char in "\r\n\0"):
        raise jobd.InvalidJob("must be a one-line string", field="payload.subject")
    for field in ("text", "html"):
        if field in payload and not isinstance(payload[field], str):
            raise jobd.InvalidJob("must be a string", field=f"payload.{field}")
    if "text" not in payload and "html" not in payload:
        raise jobd.InvalidJob("give a text body, an html body or both", field="payload.text")


def build_message(payload: Mapping[str, Any], sender: str) -> EmailMessage:
    """The MIME message: text and html together make multipart/alternative; Bcc never appears."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(_address_list(payload, "to"))
    for field, header in (("cc", "Cc"), ("reply_to", "Reply-To")):
        addresses = _address_list(payload, field)
        if addresses:
            message[header] = ", ".join(addresses)
    message["Subject"] = payload["subject"]
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=(_address(sender) or "").rpartition("@")[2])
    text, html = payload.get("text"), payload.get("html")
    if text is not None:
        message.set_content(text)
        if html is not None:
            message.add_alternative(html, subtype="html")
    else:
        message.set_content(html, subtype="html")
    return message


@jobd.handler("email.send", validate=validate)
async def send(job: jobd.JobContext) -> dict[str, Any]:
    """Send the message; 4xx replies and network errors retry, 5xx replies fail."""
    settings: Settings = job.settings
    payload = job.payload
    message = build_message(payload, settings.sender)
    # The envelope: To, Cc and Bcc, each address once; Bcc appears nowhere else.
    everyone = [item for field in ("to", "cc", "bcc") for item in _address_list(payload, field)]
    recipients = list(dict.fromkeys(_address(item) or item for item in everyone))
    where = f"{settings.host}:{settings.port}"
    try:
        # An abandoned conversation ends on its own within `timeout`; the job does not wait for it.
        refused = await trio.to_thread.run_sync(
            partial(_deliver, settings, message, recipients), limiter=_limiter, abandon_on_cancel=True
        )
    except smtplib.SMTPRecipientsRefused as error:
        replies = {address: (code, _text(reply)) for address, (code, reply) in error.recipients.items()}
        reason = f"{where} refused every recipient: " + "; ".join(
            f"{address}: {code} {text}" for address, (code, text) in replies.items()
        )
        if any(400 <= code < 500 for code, _ in replies.values()):
            raise jobd.Retry(reason=reason) from None
        raise jobd.Fail(reason) from None
    except smtplib.SMTPResponseException as error:
        reason = f"{where} answered {error.smtp_code} {_text(error.smtp_error)}"
        if 500 <= error.smtp_code < 600:
            raise jobd.Fail(reason) from None
        raise jobd.Retry(reason=reason) from None
    except smtplib.SMTPNotSupportedError as error:
        raise jobd.Fail(f"{where}: {error}") from None
    except ssl.SSLCertVerificationError as error:  # the same certificate will be refused next time too
        raise jobd.Fail(f"{where}: the server's certificate was refused: {error.verify_message}") from None
    except (smtplib.SMTPException, OSError) as error:  # disconnected, refused, timed out, TLS
        raise jobd.Retry(reason=f"{where}: {type(error).__name__}: {error}") from None
    if refused:
        job.log.warning("%s refused some recipients: %s", where, ", ".join(sorted(refused)))
    return {
        "message_id": message["Message-ID"],
        "accepted": [address for address in recipients if address not in refused],
        "refused": {address: f"{code} {_text(reply)}" for address, (code, reply) in refused.items()},
    }


def _deliver(
    settings: Settings, message: EmailMessage, recipients: list[str]
) -> dict[str, tuple[int, bytes]]:
    """One SMTP conversation (in a worker thread); returns the recipients the server refused."""
    context = settings.tls_context()
    smtp: smtplib.SMTP
    if settings.tls:
        smtp = smtplib.SMTP_SSL(settings.host, settings.port, timeout=settings.timeout, context=context)
    else:
        smtp = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
    try:
        if settings.starttls:
            smtp.starttls(context=context)
        if settings.username:
            smtp.login(settings.username, settings.password)
        return smtp.send_message(message, from_addr=_address(settings.sender), to_addrs=recipients)
    finally:
        _hang_up(smtp)


def _hang_up(smtp: smtplib.SMTP) -> None:
    """QUIT and close, ignoring any error: the message's fate is already known, and a
    failed QUIT after an accepted message must neither fail the job nor send it twice."""
    with contextlib.suppress(smtplib.SMTPException, OSError):
        smtp.quit()
    with contextlib.suppress(OSError):
        smtp.close()


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", errors="replace") if isinstance(reply, bytes) else reply


@jobd.hookimpl
def jobd_handlers() -> list[jobd.Handler]:
    return [send]
