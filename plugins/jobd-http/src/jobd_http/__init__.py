"""jobd-http: the `http.request` job type makes one HTTP request.

All jobs share one `httpx.AsyncClient` (one connection pool) per set of trusted CAs (the
system's, or those of `ca_file`), held by `jobd_lifespan` from the daemon's start to its
stop. A 2xx answer (or the one the payload expects) completes the job; 408, 429, 5xx and
network errors are retried, honouring `Retry-After`; a server certificate that does not
verify, and any other answer, fail the job at once. With `signing_secret_file`
configured, every request carries an HMAC-SHA256 signature of its body so a webhook
receiver can tell it came from this daemon.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import math
import re
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

import jobd

__all__ = [
    "Settings",
    "jobd_configure",
    "jobd_handlers",
    "jobd_lifespan",
    "request",
    "retry_after",
    "signature",
    "validate",
]

PAYLOAD_KEYS = frozenset({"method", "url", "headers", "json", "body", "timeout", "expect_status"})
TIMESTAMP_HEADER = "X-Jobd-Timestamp"
JOB_ID_HEADER = "X-Jobd-Job-Id"
RETRYABLE_STATUSES = frozenset({408, 429})  # and every 5xx
REASON_BODY = 200  # characters of the answer's body quoted in a failed attempt's reason
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # RFC 9110 token: methods and header names
# A header value that goes on the wire as it is: printable ASCII (httpx encodes values as
# ASCII), tabs and spaces only between visible characters (h11 refuses them at either end).
_HEADER_VALUE = re.compile(r"(?:[\x21-\x7e](?:[ \t]*[\x21-\x7e])*)?\Z")


@dataclass(frozen=True, slots=True)
class Settings:
    """`[plugins.http]`: each field is a key, with its default, but `signing_secret`, which
    is read from `signing_secret_file` when the table is accepted."""

    max_body_bytes: int = jobd.setting(65_536, minimum=0)
    signing_secret_file: str = ""
    signing_header: str = "X-Jobd-Signature"
    timeout: float = jobd.setting(30.0, duration=True, minimum=0.001)  # when the payload gives none
    ca_file: str = ""
    signing_secret: bytes | None = jobd.setting(None, from_config=False)
    # The PEM text of `ca_file`, read when the table is accepted; None trusts the system's CAs.
    ca_certificates: str | None = jobd.setting(None, from_config=False)

    def __repr__(self) -> str:  # never print the secret
        return (
            f"Settings(max_body_bytes={self.max_body_bytes}, "
            f"signing_secret_file={self.signing_secret_file!r}, "
            f"signing_header={self.signing_header!r}, timeout={self.timeout}, ca_file={self.ca_file!r})"
        )


# While the lifespan is open: the shared clients, by the PEM text of the CAs they trust
# (None: the system's). A reload that names another CA file gets a client of its own.
_clients: dict[str | None, httpx.AsyncClient] | None = None


@jobd.hookimpl
def jobd_configure(config: Mapping[str, Any]) -> Settings:
    settings = jobd.parse_settings(Settings, config)
    if not _TOKEN.match(settings.signing_header):
        raise jobd.ConfigError("must be an HTTP header name", key="signing_header")
    return dataclasses.replace(
        settings,
        signing_secret=_read_secret(settings.signing_secret_file),
        ca_certificates=_read_ca_file(settings.ca_file),
    )


@jobd.hookimpl
def jobd_lifespan(settings: Settings) -> AbstractAsyncContextManager[None]:
    return _shared_clients(settings)


@asynccontextmanager
async def _shared_clients(settings: Settings) -> AsyncIterator[None]:
    """The clients of every `http.request` job of this daemon, closed when it stops; the one
    the settings in force at start need is opened now, others on first use."""
    global _clients
    _clients = {}
    try:
        _client(settings)
        yield
    finally:
        clients, _clients = _clients, None
        for client in clients.values():
            await client.aclose()


def _client(settings: Settings) -> httpx.AsyncClient:
    """The shared client that trusts the CAs `settings` name."""
    if _clients is None:
        raise RuntimeError("jobd-http's clients are closed: its jobd_lifespan is not open")
    client = _clients.get(settings.ca_certificates)
    if client is None:
        user_agent = f"jobd-http/{version('jobd-http')}"
        # The host name and a chain to the CAs are verified; ca_file replaces the system's CAs.
        verify = ssl.create_default_context(cadata=settings.ca_certificates)
        client = httpx.AsyncClient(follow_redirects=False, headers={"User-Agent": user_agent}, verify=verify)
        _clients[settings.ca_certificates] = client
    return client


def _read_secret(path: str) -> bytes | None:
    """The signing secret: the file's bytes without the trailing newline; None when not configured."""
    if not path:
        return None
    try:
        secret = Path(path).read_bytes().rstrip(b"\r\n")
    except OSError as error:
        raise jobd.ConfigError(f"cannot read {path}: {error.strerror}", key="signing_secret_file") from None
    if not secret:
        raise jobd.ConfigError(f"{path} is empty", key="signing_secret_file")
    return secret


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


def signature(secret: bytes, timestamp: str, job_id: str, body: bytes) -> str:
    """The signature header's value: `sha256=` and the hex HMAC of "TIMESTAMP.JOB_ID." + body."""
    signed = f"{timestamp}.{job_id}.".encode() + body
    return "sha256=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()


def validate(payload: Any, settings: Settings) -> None:
    """Refuse an `http.request` payload at submit, naming the field at fault."""
    if not isinstance(payload, dict):
        example = '{"method": "GET", "url": "https://example.com/"}'
        raise jobd.InvalidJob(f"payload must be an object such as {example}", field="payload")
    unknown = sorted(set(payload) - PAYLOAD_KEYS)
    if unknown:
        known = ", ".join(sorted(PAYLOAD_KEYS))
        raise jobd.InvalidJob(f"unknown field (known: {known})", field=f"payload.{unknown[0]}")
    method = payload.get("method")
    if method is not None and (not isinstance(method, str) or not _TOKEN.match(method)):
        raise jobd.InvalidJob("must be an HTTP method such as GET or POST", field="payload.method")
    _validate_url(payload.get("url"))
    headers = payload.get("headers", {})
    if not isinstance(headers, dict):
        raise jobd.InvalidJob("must be an object of header names to strings", field="payload.headers")
    for name, value in headers.items():
        field = f"payload.headers.{name}"
        if not _TOKEN.match(name):
            raise jobd.InvalidJob("not a header name: letters, digits and !#$%&'*+.^_`|~- only", field=field)
        if not isinstance(value, str) or not _HEADER_VALUE.match(value):
            message = "must be a string of printable ASCII, without control characters or surrounding spaces"
            raise jobd.InvalidJob(message, field=field)
    if "json" in payload and "body" in payload:
        raise jobd.InvalidJob("give either json or body, not both", field="payload.body")
    if "body" in payload and not isinstance(payload["body"], str):
        raise jobd.InvalidJob("must be a string (use json for structured data)", field="payload.body")
    if "json" in payload:
        try:
            json.dumps(payload["json"], allow_nan=False)
        except ValueError as error:
            raise jobd.InvalidJob(str(error), field="payload.json") from None
    timeout = payload.get("timeout")
    if timeout is not None and not _positive_number(timeout):
        raise jobd.InvalidJob("must be a number of seconds > 0", field="payload.timeout")
    if "expect_status" in payload:
        _expected_statuses(payload["expect_status"])


def _validate_url(url: Any) -> None:
    if not isinstance(url, str):
        raise jobd.InvalidJob("must be an http:// or https:// URL", field="payload.url")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise jobd.InvalidJob(f"not a URL: {error}", field="payload.url") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise jobd.InvalidJob("must be an http:// or https:// URL with a host", field="payload.url")


def _expected_statuses(value: Any) -> frozenset[int]:
    statuses = value if isinstance(value, list) else [value]
    if not statuses or not all(_is_status(status) for status in statuses):
        message = "must be a status code from 100 to 599, or a list of them"
        raise jobd.InvalidJob(message, field="payload.expect_status")
    return frozenset(statuses)


def _is_status(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599


def _positive_number(value: Any) -> bool:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return is_number and math.isfinite(value) and value > 0


@jobd.handler("http.request", validate=validate)
async def request(job: jobd.JobContext) -> dict[str, Any]:
    """Make the request; the answer's status decides between completed, retried and failed."""
    settings: Settings = job.settings
    client = _client(settings)
    payload = job.payload
    method = _method(payload)
    url: str = payload["url"]
    content, headers = _content(payload)
    if settings.signing_secret is not None:
        timestamp = str(int(time.time()))
        headers[TIMESTAMP_HEADER] = timestamp
        headers[JOB_ID_HEADER] = str(job.id)
        headers[settings.signing_header] = signature(settings.signing_secret, timestamp, str(job.id), content)
    timeout = payload.get("timeout") or settings.timeout  # null counts as absent
    try:
        async with client.stream(method, url, content=content, headers=headers, timeout=timeout) as response:
            body, truncated = await _read_body(response, settings.max_body_bytes)
    except httpx.TimeoutException as error:
        reason = f"{method} {url}: no answer within {timeout:g}s ({type(error).__name__})"
        raise jobd.Retry(reason=reason) from None
    except httpx.RequestError as error:  # refused, reset, DNS, TLS, a broken answer: all may pass
        refused = _refused_certificate(error)
        if refused is not None:  # but the same certificate will be refused next time too
            raise jobd.Fail(f"{method} {url}: the server's certificate was refused: {refused}") from None
        raise jobd.Retry(reason=f"{method} {url}: {type(error).__name__}: {error}") from None
    status = response.status_code
    expected = _expected_statuses(payload["expect_status"]) if "expect_status" in payload else None
    if status in expected if expected is not None else 200 <= status < 300:
        return {"status": status, "headers": dict(response.headers), "body": body, "truncated": truncated}
    reason = f"{method} {url} answered {status} {response.reason_phrase}: {body[:REASON_BODY]}".rstrip(": ")
    if status >= 500 or status in RETRYABLE_STATUSES:
        raise jobd.Retry(delay=retry_after(response.headers.get("Retry-After")), reason=reason)
    raise jobd.Fail(reason)


def _refused_certificate(error: BaseException) -> str | None:
    """Why the TLS handshake refused the server's certificate, if that is what `error`
    comes from (httpx wraps it, under Trio in a BrokenResourceError too); None otherwise."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return str(cause.verify_message)
        cause = cause.__cause__ or cause.__context__
    return None


def _method(payload: Mapping[str, Any]) -> str:
    """The payload's method, upper-cased; without one, POST when there is a body to send, else GET."""
    method = payload.get("method")
    if method is not None:
        return str(method).upper()
    return "POST" if "json" in payload or "body" in payload else "GET"


def _content(payload: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The request body as the exact bytes sent (and signed), and the headers to send."""
    headers = dict(payload.get("headers", {}))
    has_type = any(name.lower() == "content-type" for name in headers)
    if "json" in payload:
        if not has_type:
            headers["Content-Type"] = "application/json"
        return json.dumps(payload["json"], separators=(",", ":"), ensure_ascii=False).encode(), headers
    return payload.get("body", "").encode(), headers


async def _read_body(response: httpx.Response, limit: int) -> tuple[str, bool]:
    """The first `limit` bytes of the (decoded) body as text, and whether there was more."""
    data = bytearray()
    truncated = False
    async for chunk in response.aiter_bytes():
        room = limit - len(data)
        if len(chunk) > room:
            data += chunk[:room]
            truncated = True
            break  # the rest is never read: closing the response drops the connection
        data += chunk
    return data.decode(response.encoding or "utf-8", errors="replace"), truncated


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` value (seconds or an HTTP date); None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@jobd.hookimpl
def jobd_handlers() -> list[jobd.Handler]:
    return [request]
