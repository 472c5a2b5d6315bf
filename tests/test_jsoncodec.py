"""The JSON the API answers with and the stores keep: the same as `Job.to_json`, on the
fast path and on the standard library's."""

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from jobd import jsoncodec
from jobd.handlers import parsed_json_size, storable_json_size
from jobd.job import Job, JobState, ParentFailure, Progress

BERLIN_WINTER = timezone(timedelta(hours=1))


def every_field(payload: object) -> Job:
    at = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    return Job(
        id=uuid.uuid4(),
        type="mail.send",
        queue="email",
        payload=payload,
        state=JobState.RUNNING,
        priority=-3,
        attempts=2,
        max_attempts=5,
        timeout=12.5,
        run_at=at,
        created_at=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),  # no microseconds
        updated_at=at.astimezone(BERLIN_WINTER),  # as a pooled PostgreSQL session may give it
        started_at=at,
        finished_at=None,
        last_error="boom: ünïcode",
        result={"sent": [1, 2.5, None, True]},
        progress=Progress(0.25, "a quarter"),
        key="k-1",
        schedule="nightly",
        scheduled_for=at,
        after=(uuid.uuid4(), uuid.uuid4()),
        on_parent_failure=ParentFailure.RUN,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )


@pytest.mark.parametrize(
    "payload",
    [
        {"to": "a@example.org", "name": "Zoë 😀"},
        {"big": 2**70, "negative": -(2**80)},  # past orjson's 64 bits: the standard library's path
    ],
    ids=["fast", "fallback"],
)
def test_a_job_is_written_as_to_json_writes_it(payload: object) -> None:
    job = every_field(payload)
    written = jsoncodec.dumps({"jobs": [job], "next": None})
    assert json.loads(written) == {"jobs": [job.to_json()], "next": None}
    assert json.loads(written)["jobs"][0]["updated_at"] == "2030-01-02T03:04:05.678901Z"


def test_text_is_compact_utf8() -> None:
    assert jsoncodec.dumps_text({"a": [1, "é"], "b": None}) == '{"a":[1,"é"],"b":null}'
    assert jsoncodec.dumps_text(2**64) == "18446744073709551616"


def test_keys_that_are_not_text_are_written_as_the_standard_library_writes_them() -> None:
    result = {1e-05: "a", 1e-07: "b", 3: "c", 2.5: "d", True: "e", None: "f"}
    assert jsoncodec.dumps(result) == json.dumps(result, separators=(",", ":")).encode()
    assert json.loads(jsoncodec.dumps(result)) == {
        "1e-05": "a",
        "1e-07": "b",
        "3": "c",
        "2.5": "d",
        "true": "e",
        "null": "f",
    }


def test_nan_on_the_standard_librarys_path_is_refused() -> None:
    with pytest.raises(ValueError, match="Out of range"):
        jsoncodec.dumps({"big": 2**70, "nan": float("nan")})


def test_what_is_not_json_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="set"):
        jsoncodec.dumps({"payload": {1, 2}})


@pytest.mark.parametrize(
    "text",
    [
        '{"n": 1}',
        '{"to": "ünïcødé ✉", "cc": [], "tags": {"a": [1.5, -2, 0.25, true, false]}}',
        '{"maybe": null, "list": [null]}',
        '"x\\"y\\\\z\\n"',
        "18446744073709551616",  # beyond 64 bits: the standard library writes it
        "[1e-05, 1e300, 1e-07]",  # spelt 0.00001, 1e+300 and 1e-7 by orjson, 1e-05 … by json.dumps
        "[1e-05, null]",
        '{"1e-05": [1e-05, 18446744073709551616]}',
    ],
)
def test_a_payload_is_sized_as_the_stores_write_it(text: str) -> None:
    value = json.loads(text)
    # Either way in, the same size: that of the bytes every store keeps.
    assert parsed_json_size(value) == storable_json_size(value) == len(jsoncodec.dumps(value))


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ('{"x": 1e999}', "Out of range"),  # parses as infinity, which orjson writes as null
        ("[-1e999, 18446744073709551616]", "Out of range"),
        ('{"k": "a\\u0000"}', "NUL"),
        ('{"k\\u0000": 1}', "NUL"),
        ('"\\ud800"', "surrogates"),
    ],
)
def test_a_parsed_payload_that_no_store_keeps_is_refused(text: str, fault: str) -> None:
    with pytest.raises(TypeError, match=fault):
        parsed_json_size(json.loads(text))
