"""The state machine, every state x every action, and the job's JSON form."""

import uuid
from datetime import UTC, datetime

import pytest

from jobd.errors import IllegalTransition
from jobd.job import (
    STATE_OF,
    TRANSITIONS,
    Action,
    Job,
    JobState,
    ParentFailure,
    Progress,
    format_time,
    next_state,
    parse_time,
)

S, A = JobState, Action
LEGAL = {
    (S.WAITING, A.RELEASE): S.PENDING,
    (S.WAITING, A.RELEASE_LATER): S.SCHEDULED,
    (S.WAITING, A.CANCEL): S.CANCELLED,
    (S.SCHEDULED, A.PROMOTE): S.PENDING,
    (S.SCHEDULED, A.CANCEL): S.CANCELLED,
    (S.PENDING, A.CLAIM): S.RUNNING,
    (S.PENDING, A.CANCEL): S.CANCELLED,
    (S.RUNNING, A.COMPLETE): S.COMPLETED,
    (S.RUNNING, A.BACK_OFF): S.SCHEDULED,
    (S.RUNNING, A.FAIL): S.FAILED,
    (S.RUNNING, A.CANCEL): S.CANCELLED,
    (S.RUNNING, A.REQUEUE): S.PENDING,
    (S.FAILED, A.RETRY): S.PENDING,
    (S.CANCELLED, A.RETRY): S.PENDING,
}


@pytest.mark.parametrize("state", list(JobState))
@pytest.mark.parametrize("action", list(Action))
def test_every_state_and_action(state: JobState, action: Action) -> None:
    job_id = uuid.uuid4()
    if (state, action) in LEGAL:
        assert next_state(job_id, state, action) is LEGAL[(state, action)]
    else:
        with pytest.raises(IllegalTransition) as caught:
            next_state(job_id, state, action)
        assert caught.value.job_id == str(job_id)
        assert caught.value.state == state.value
        assert caught.value.action == action.value
        assert state.value in str(caught.value)


def test_the_table_is_exactly_the_contract() -> None:
    assert dict(TRANSITIONS) == LEGAL


def test_finished_states_have_no_way_out_but_retry() -> None:
    for state in (S.COMPLETED, S.FAILED, S.CANCELLED):
        assert state.finished
        exits = {action for (source, action) in TRANSITIONS if source is state}
        assert exits <= {A.RETRY}
    assert not S.RUNNING.finished


def test_job_round_trips_through_json() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    job = Job(
        id=uuid.uuid4(),
        type="t",
        queue="q",
        payload={"a": [1, "ü", None]},
        state=S.RUNNING,
        priority=-3,
        attempts=2,
        max_attempts=5,
        timeout=1.5,
        run_at=now,
        created_at=now,
        updated_at=now,
        started_at=now,
        progress=Progress(0.5, "half"),
        key="k",
        result={"ok": True},
        last_error="boom",
        after=(uuid.uuid4(), uuid.uuid4()),
        on_parent_failure=ParentFailure.RUN,
    )
    data = job.to_json()
    assert data["after"] == [str(parent) for parent in job.after]
    assert data["on_parent_failure"] == "run"
    assert data["run_at"] == "2026-01-02T03:04:05.678901Z"
    assert data["finished_at"] is None
    assert data["progress"] == {"fraction": 0.5, "message": "half"}
    assert Job.from_json(data) == job


def test_times_are_rfc3339_utc() -> None:
    assert format_time(None) is None
    assert parse_time("2026-01-02T03:04:05+02:00") == datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)
    assert parse_time("2026-01-02T03:04:05") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_time("yesterday")


def test_state_of_gives_what_the_enum_gives_for_every_state() -> None:
    assert {state.value: JobState(state.value) for state in JobState} == STATE_OF
