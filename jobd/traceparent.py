"""The W3C `traceparent` a job carries from its submitter to its attempts.

No OpenTelemetry at import time: `current_traceparent` reads the caller's context only
when the calling program has imported OpenTelemetry itself (without that, it has no
current span to pass on), so `jobd-ctl` and an application that does not trace load
none of it. Tracing the attempts themselves is `jobd.tracing`'s.
"""

from __future__ import annotations

import re
import sys

# Version 00 (https://www.w3.org/TR/trace-context/#traceparent-header): lower-case hex only.
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


def parse_traceparent(text: str) -> str | None:
    """`text` if it is a valid version-00 `traceparent`, else None (ids of all zeros are not)."""
    match = _TRACEPARENT.fullmatch(text)
    if match is None or int(match[1], 16) == 0 or int(match[2], 16) == 0:
        return None
    return text


def current_traceparent() -> str | None:
    """The `traceparent` of the calling program's current span, when it has imported
    OpenTelemetry and a span is current; else None."""
    if "opentelemetry.context" not in sys.modules:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")
