"""Tracing: the `traceparent` a job is submitted with, each attempt as an OpenTelemetry span
under it, exported over OTLP/HTTP; and nothing of OpenTelemetry without `[tracing]`."""

from __future__ import annotations

import gzip
import http.server
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import DaemonProcess, run_python, wait_until
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from test_worker import handler_of, running_engine

import jobd
from jobd.client import Client
from jobd.handlers import JobContext
from jobd.otel import OtelTracer
from jobd.traceparent import current_traceparent, parse_traceparent

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"
StartDaemon = Callable[..., DaemonProcess]


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        (TRACEPARENT, True),
        (TRACEPARENT[:-2] + "00", True),  # not sampled: still a context to pass on
        (TRACEPARENT.upper(), False),  # the version-00 format is lower-case hex
        ("01" + TRACEPARENT[2:], False),
        (TRACEPARENT + "-extra", False),
        (f"00-{0:032x}-{SPAN_ID:016x}-01", False),
        (f"00-{TRACE_ID:032x}-{0:016x}-01", False),
        ("00-4bf92f35-00f067aa0ba902b7-01", False),
        ("", False),
    ],
)
def test_a_traceparent_is_w3c_version_00(text: str, valid: bool) -> None:
    assert parse_traceparent(text) == (text if valid else None)


def traceparent_of(span: trace.Span) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


@pytest.fixture
def provider() -> TracerProvider:
    return TracerProvider()


def test_the_current_traceparent_is_the_current_span_s(provider: TracerProvider) -> None:
    assert current_traceparent() is None  # no span is current
    with provider.get_tracer("test").start_as_current_span("submitter") as span:
        assert current_traceparent() == traceparent_of(span)
    assert current_traceparent() is None


# -- attempts as spans, on the engine ---------------------------------------------------------


@pytest.fixture
def exported(provider: TracerProvider) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_every_attempt_is_a_span_under_the_submitter_s(
    autojump_clock: trio.testing.MockClock, provider: TracerProvider, exported: InMemorySpanExporter
) -> None:
    inner = provider.get_tracer("handler")

    async def flaky(job: JobContext) -> str:
        with inner.start_as_current_span("the handler's own work"):
            if job.attempt == 1:
                raise RuntimeError("first attempt fails")
        return "done"

    async def hopeless(job: JobContext) -> None:
        raise jobd.Fail("never")

    handlers = (handler_of("t.flaky", flaky), handler_of("t.hopeless", hopeless))
    async with running_engine(*handlers, tracer=OtelTracer(provider, "test")) as engine:
        job = await engine.submit("t.flaky", traceparent=TRACEPARENT)
        assert job.traceparent == TRACEPARENT
        await engine.wait(job)
        await engine.wait(await engine.submit("t.hopeless"))
    spans = exported.get_finished_spans()
    first, second = [span for span in spans if span.name == "run t.flaky"]
    for number, span in enumerate((first, second), start=1):
        assert span.context is not None and span.context.trace_id == TRACE_ID
        assert span.parent is not None and span.parent.span_id == SPAN_ID and span.parent.is_remote
        assert span.kind == trace.SpanKind.CONSUMER
        assert attributes(span)["jobd.job.id"] == str(job.id)
        assert attributes(span)["jobd.job.type"] == "t.flaky"
        assert attributes(span)["jobd.job.queue"] == "default"
        assert attributes(span)["jobd.job.attempt"] == number
    assert attributes(first)["jobd.job.outcome"] == "retried"
    assert attributes(first)["jobd.job.error"] == "RuntimeError: first attempt fails"
    assert first.status.status_code == trace.StatusCode.ERROR
    assert first.status.description == "RuntimeError: first attempt fails"
    assert attributes(second)["jobd.job.outcome"] == "completed"
    assert "jobd.job.error" not in attributes(second)
    assert second.status.status_code == trace.StatusCode.OK
    # The handler's spans are children of its attempt's.
    own = [span for span in spans if span.name == "the handler's own work"]
    assert {span.parent.span_id for span in own if span.parent} == {
        span.context.span_id for span in (first, second) if span.context
    }
    [failed] = [span for span in spans if span.name == "run t.hopeless"]
    assert failed.parent is None  # submitted with no trace: a root of its own
    assert attributes(failed)["jobd.job.outcome"] == "failed"
    assert failed.status.status_code == trace.StatusCode.ERROR


async def test_a_batch_takes_the_header_s_traceparent_unless_an_item_names_its_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    other = f"00-{1:032x}-{2:016x}-00"
    async with running_engine(config={"queues": {"paused": {}}}) as engine:
        await engine.service.pause("paused")
        items = [
            {"type": "jobd.noop", "queue": "paused"},
            {"type": "jobd.noop", "queue": "paused", "traceparent": other},
        ]
        inserted = await engine.service.submit_batch({"jobs": items}, TRACEPARENT)
        assert [item.job.traceparent for item in inserted] == [TRACEPARENT, other]
        stored = await engine.service.get(str(inserted[0].job.id))
        assert stored.to_json()["traceparent"] == TRACEPARENT
        untraced = await engine.submit("jobd.noop", queue="paused")
        assert untraced.to_json()["traceparent"] is None


@pytest.mark.parametrize("bad", ["00-nonsense", 42, TRACEPARENT.upper()])
async def test_a_bad_traceparent_field_is_refused_naming_it(
    autojump_clock: trio.testing.MockClock, bad: object
) -> None:
    async with running_engine() as engine:
        with pytest.raises(jobd.InvalidJob) as caught:
            await engine.submit("jobd.noop", traceparent=bad)
    assert caught.value.field == "traceparent"
    assert "W3C trace context" in caught.value.message


# -- without the extra, or without tracing -----------------------------------------------------

DAEMON_WITHOUT_TRACING = textwrap.dedent(
    """
    import sys

    import trio

    import jobd
    import jobd.cli
    from jobd.client import Client
    from jobd.config import parse_config
    from jobd.daemon import Daemon
    from jobd.plugins import PluginHost

    socket = sys.argv[1]
    config = parse_config({"store": {"url": "memory:"}, "api": {"socket": socket}, "metrics": {"listen": ""}})
    host = PluginHost()
    host.load()
    daemon = Daemon(config, host, None)


    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.run)
            with Client(socket) as client:  # in threads: the daemon answers on this event loop
                while True:
                    try:
                        await trio.to_thread.run_sync(client.health)
                        break
                    except jobd.ApiError:
                        await trio.sleep(0.01)
                job = await trio.to_thread.run_sync(client.submit, "jobd.noop", {"n": 1})
                done = await trio.to_thread.run_sync(client.wait, job.id, 20)
                assert done.state == "completed", done
            daemon.stop("the test")


    trio.run(main)
    print(sorted(name for name in sys.modules if name.split(".")[0] == "opentelemetry"))
    """
)


def test_a_daemon_without_tracing_imports_nothing_of_opentelemetry(short_dir: Path) -> None:
    result = run_python(DAEMON_WITHOUT_TRACING, str(short_dir / "s"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


@pytest.mark.parametrize("command", ["check", "run"])
def test_tracing_without_the_extra_is_a_clear_config_error(tmp_path: Path, command: str) -> None:
    config = tmp_path / "jobd.toml"
    config.write_text(
        f'[store]\nurl = "memory:"\n[api]\nsocket = "{tmp_path}/s"\n[metrics]\nlisten = ""\n'
        "[tracing]\nenabled = true\n"
    )
    # As if the extra were not installed: importing OpenTelemetry fails.
    code = "import sys; sys.modules['opentelemetry'] = None; from jobd.cli import main; sys.exit(main())"
    result = run_python(code, command, "--config", str(config))
    assert result.returncode == 1
    assert "tracing.enabled" in result.stderr and str(config) in result.stderr
    assert "pip install 'jobd[otel]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_tracing_setting_that_is_not_a_boolean_names_its_key(tmp_path: Path) -> None:
    config = tmp_path / "jobd.toml"
    config.write_text('[tracing]\nenabled = "yes"\n')
    result = subprocess.run(
        [sys.executable, "-m", "jobd", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "tracing.enabled" in result.stderr and "true or false" in result.stderr


# -- end to end: a daemon exports to an OTLP/HTTP receiver ------------------------------------


class _Receiver(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver on loopback: decodes each export, keeps its spans."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) of every span received so far."""
        with self.lock:
            return [
                ({item.key: item.value.string_value for item in resource.resource.attributes}, span)
                for request in self.requests
                for resource in request.resource_spans
                for scope in resource.scope_spans
                for span in scope.spans
            ]


class _ReceiverHandler(http.server.BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.server.lock:
            self.server.requests.append(request)
            self.server.paths.append(self.path)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test's output to failures


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    server = _Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def span_attributes(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in span.attributes:
        value = item.value
        out[item.key] = value.int_value if value.WhichOneof("value") == "int_value" else value.string_value
    return out


@pytest.mark.process
def test_a_daemon_exports_each_attempt_under_the_submitter_s_trace(
    start_daemon: StartDaemon, receiver: _Receiver, provider: TracerProvider
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # milliseconds: export soon after each attempt
        "OTEL_SERVICE_NAME": "jobd-under-test",
    }
    daemon = start_daemon(config={"tracing": {"enabled": True}}, env=env)
    with (
        provider.get_tracer("submitter").start_as_current_span("checkout") as submitter,
        Client(daemon.socket) as client,
    ):
        job = client.submit("testplugin.flaky")  # fails twice, then completes
        [batched] = client.submit_many([{"type": "jobd.noop"}])
    assert job.traceparent == batched.traceparent == traceparent_of(submitter)
    with Client(daemon.socket) as client:
        assert client.wait(job.id, timeout=20).state == "completed"
        assert client.wait(batched.id, timeout=20).state == "completed"
        untraced = client.submit("jobd.noop")
        assert untraced.traceparent is None
        assert client.wait(untraced.id, timeout=20).state == "completed"
    trace_id = submitter.get_span_context().trace_id.to_bytes(16, "big")
    parent_id = submitter.get_span_context().span_id.to_bytes(8, "big")

    def attempts() -> list[dict[str, Any]]:
        return [
            span_attributes(span)
            for _, span in receiver.spans()
            if span.trace_id == trace_id and span.parent_span_id == parent_id
        ]

    found = wait_until(lambda: len(attempts()) == 4 and attempts(), what="4 attempts' spans")
    flaky = sorted(
        (span for span in found if span["jobd.job.type"] == "testplugin.flaky"),
        key=lambda span: span["jobd.job.attempt"],
    )
    assert [(span["jobd.job.attempt"], span["jobd.job.outcome"]) for span in flaky] == [
        (1, "retried"),
        (2, "retried"),
        (3, "completed"),
    ]
    assert all(span["jobd.job.id"] == str(job.id) and span["jobd.job.queue"] == "default" for span in flaky)
    assert flaky[0]["jobd.job.error"] == "retry requested: attempt 1 fails on purpose"
    [noop] = [span for span in found if span["jobd.job.type"] == "jobd.noop"]
    assert noop["jobd.job.id"] == str(batched.id)
    assert set(receiver.paths) == {"/v1/traces"}
    resources = {resource["service.name"] for resource, _ in receiver.spans()}
    assert resources == {"jobd-under-test"}
    assert daemon.stop() == 0
    # The untraced job's attempt is a root span of its own trace, flushed at exit at the latest.
    roots = [span_attributes(span) for _, span in receiver.spans() if not span.parent_span_id]
    assert [span["jobd.job.id"] for span in roots] == [str(untraced.id)]
