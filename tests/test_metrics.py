"""The Prometheus exposition: names and labels of the contract, values that move, sane buckets."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from jobd.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the rendered exposition, keyed by name and label set."""
    exposition = metrics.render()
    assert exposition.content_type == CONTENT_TYPE_LATEST
    out = {}
    for family in text_string_to_metric_families(exposition.body.decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def families(metrics: Metrics) -> dict[str, str]:
    body = metrics.render().body
    return {family.name: family.type for family in text_string_to_metric_families(body.decode())}


def test_every_contract_metric_is_exposed_with_its_type() -> None:
    metrics = Metrics("1.2.3")
    metrics.job_submitted("default", "echo")
    metrics.job_started("default", 0.1)
    metrics.job_finished("default", "echo", "completed", 0.2)
    metrics.set_queue_counts({"default": {"pending": 1}})
    metrics.set_workers(1, 10)
    metrics.schedule_fired("nightly", 1, 1)
    metrics.set_schedule_next_run("nightly", datetime(2030, 1, 1, tzinfo=UTC))
    metrics.queue_rate_limited("webhooks")
    metrics.loop_blocked("echo", 0.75)
    exposed = {name: kind for name, kind in families(metrics).items() if not name.endswith("_created")}
    assert exposed == {
        "jobd_jobs_submitted": "counter",
        "jobd_jobs_finished": "counter",
        "jobd_job_duration_seconds": "histogram",
        "jobd_job_wait_seconds": "histogram",
        "jobd_jobs": "gauge",
        "jobd_workers_busy": "gauge",
        "jobd_workers_capacity": "gauge",
        "jobd_build_info": "gauge",
        "jobd_schedule_ticks": "counter",
        "jobd_schedule_jobs": "counter",
        "jobd_schedule_next_run_timestamp_seconds": "gauge",
        "jobd_queue_rate_limited": "counter",
        "jobd_oldest_pending_job_age_seconds": "gauge",
        "jobd_jobs_rescued": "counter",
        "jobd_completions_discarded": "counter",
        "jobd_store_call_duration_seconds": "histogram",
        "jobd_event_loop_blocked": "counter",
        "jobd_event_loop_blocked_seconds": "counter",
    }
    assert value(metrics, "jobd_event_loop_blocked_seconds_total", type="echo") == 0.75


def test_schedule_counters_start_at_zero_and_the_next_run_gauge_comes_and_goes() -> None:
    metrics = Metrics("0")
    metrics.schedule_seen("nightly")
    assert value(metrics, "jobd_schedule_ticks_total", schedule="nightly") == 0
    assert value(metrics, "jobd_schedule_jobs_total", schedule="nightly") == 0
    metrics.schedule_fired("nightly", 3, 2)
    metrics.schedule_fired("nightly", 0, 1)  # a trigger
    assert value(metrics, "jobd_schedule_ticks_total", schedule="nightly") == 3
    assert value(metrics, "jobd_schedule_jobs_total", schedule="nightly") == 3
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    metrics.set_schedule_next_run("nightly", when)
    assert value(metrics, "jobd_schedule_next_run_timestamp_seconds", schedule="nightly") == when.timestamp()
    metrics.set_schedule_next_run("nightly", None)
    metrics.set_schedule_next_run("nightly", None)
    assert value(metrics, "jobd_schedule_next_run_timestamp_seconds", schedule="nightly") is None


def test_build_info_carries_the_version() -> None:
    assert value(Metrics("1.2.3"), "jobd_build_info", version="1.2.3") == 1


def test_submitted_counter_moves_per_queue_and_type() -> None:
    metrics = Metrics("0")
    metrics.job_submitted("default", "echo")
    metrics.job_submitted("default", "echo")
    metrics.job_submitted("email", "email.send")
    assert value(metrics, "jobd_jobs_submitted_total", queue="default", type="echo") == 2
    assert value(metrics, "jobd_jobs_submitted_total", queue="email", type="email.send") == 1


@pytest.mark.parametrize("outcome", ["completed", "failed", "retried", "cancelled"])
def test_finished_counter_moves_for_every_outcome(outcome: str) -> None:
    metrics = Metrics("0")
    metrics.job_finished("default", "echo", outcome, 1.5)
    assert value(metrics, "jobd_jobs_finished_total", queue="default", type="echo", outcome=outcome) == 1
    assert value(metrics, "jobd_job_duration_seconds_count", queue="default", type="echo") == 1
    assert value(metrics, "jobd_job_duration_seconds_sum", queue="default", type="echo") == 1.5


def test_a_cancelled_waiting_job_counts_without_a_duration() -> None:
    metrics = Metrics("0")
    metrics.job_finished("default", "echo", "cancelled", None)
    assert value(metrics, "jobd_jobs_finished_total", queue="default", type="echo", outcome="cancelled") == 1
    assert value(metrics, "jobd_job_duration_seconds_count", queue="default", type="echo") is None


def test_an_unknown_outcome_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown outcome 'done'"):
        Metrics("0").job_finished("default", "echo", "done", 1.0)


def test_wait_histogram_observes_ready_to_started() -> None:
    metrics = Metrics("0")
    metrics.job_started("default", 0.003)
    metrics.job_started("default", 120.0)
    assert value(metrics, "jobd_job_wait_seconds_count", queue="default") == 2
    assert value(metrics, "jobd_job_wait_seconds_bucket", queue="default", le="0.005") == 1
    assert value(metrics, "jobd_job_wait_seconds_bucket", queue="default", le="120.0") == 2


def test_duration_buckets_span_milliseconds_to_hours() -> None:
    metrics = Metrics("0")
    for seconds in (0.0005, 0.002, 45.0, 3000.0, 5 * 3600.0):
        metrics.job_finished("default", "echo", "completed", seconds)
    buckets = {
        dict(labels)["le"]: count
        for (name, labels), count in samples(metrics).items()
        if name == "jobd_job_duration_seconds_bucket"
    }
    bounds = sorted(float(le) for le in buckets)
    assert bounds[0] <= 0.001
    assert 3600.0 in bounds and 21600.0 in bounds
    assert bounds[-1] == math.inf
    # Each observation lands in its own bucket: nothing is lumped into the ends.
    assert buckets["0.001"] == 1
    assert buckets["0.0025"] == 2
    assert buckets["60.0"] == 3
    assert buckets["3600.0"] == 4
    assert buckets["21600.0"] == 5


def test_queue_gauge_sets_every_state_and_drops_to_zero() -> None:
    metrics = Metrics("0")
    metrics.set_queue_counts({"default": {"pending": 4, "running": 2}, "email": {"failed": 1}})
    assert value(metrics, "jobd_jobs", queue="default", state="pending") == 4
    assert value(metrics, "jobd_jobs", queue="default", state="running") == 2
    assert value(metrics, "jobd_jobs", queue="default", state="scheduled") == 0
    assert value(metrics, "jobd_jobs", queue="email", state="failed") == 1

    metrics.set_queue_counts({"default": {"running": 1}})
    assert value(metrics, "jobd_jobs", queue="default", state="pending") == 0
    assert value(metrics, "jobd_jobs", queue="default", state="running") == 1
    # A queue absent from the new counts reads 0 rather than its stale value.
    assert value(metrics, "jobd_jobs", queue="email", state="failed") == 0


def test_workers_gauges() -> None:
    metrics = Metrics("0")
    metrics.set_workers(3, 10)
    assert value(metrics, "jobd_workers_busy") == 3
    assert value(metrics, "jobd_workers_capacity") == 10
    metrics.set_workers(0, 20)
    assert value(metrics, "jobd_workers_busy") == 0
    assert value(metrics, "jobd_workers_capacity") == 20


def test_registries_are_private() -> None:
    first, second = Metrics("0"), Metrics("0")
    first.job_submitted("default", "echo")
    assert value(second, "jobd_jobs_submitted_total", queue="default", type="echo") is None
    assert b"jobd_" not in generate_latest(REGISTRY)


def test_queue_health_series_read_zero_from_when_a_queue_is_seen() -> None:
    metrics = Metrics("0")
    assert value(metrics, "jobd_jobs_rescued_total", queue="default") is None
    metrics.set_queue_counts({"default": {}, "email": {"pending": 2}})
    metrics.set_oldest_pending({"email": 12.5})
    for queue in ("default", "email"):
        assert value(metrics, "jobd_jobs_rescued_total", queue=queue) == 0
        assert value(metrics, "jobd_completions_discarded_total", queue=queue) == 0
    assert value(metrics, "jobd_oldest_pending_job_age_seconds", queue="default") == 0
    assert value(metrics, "jobd_oldest_pending_job_age_seconds", queue="email") == 12.5
    metrics.job_rescued("email")
    metrics.completion_discarded("email")
    metrics.completion_discarded("email")
    assert value(metrics, "jobd_jobs_rescued_total", queue="email") == 1
    assert value(metrics, "jobd_completions_discarded_total", queue="email") == 2
    # Nothing waits any more; a clock a little behind the store's never reads negative.
    metrics.set_oldest_pending({"default": -0.5})
    assert value(metrics, "jobd_oldest_pending_job_age_seconds", queue="email") == 0
    assert value(metrics, "jobd_oldest_pending_job_age_seconds", queue="default") == 0


def test_store_calls_are_timed_once_each_by_operation_even_when_they_fail() -> None:
    metrics = Metrics("0")
    for operation in ("claim", "complete", "insert"):
        assert value(metrics, "jobd_store_call_duration_seconds_count", operation=operation) == 0
    with metrics.store_call("claim"):
        pass
    with pytest.raises(RuntimeError), metrics.store_call("complete"):
        raise RuntimeError("the store went away")
    assert value(metrics, "jobd_store_call_duration_seconds_count", operation="claim") == 1
    assert value(metrics, "jobd_store_call_duration_seconds_count", operation="complete") == 1
    assert value(metrics, "jobd_store_call_duration_seconds_count", operation="insert") == 0
    assert value(metrics, "jobd_store_call_duration_seconds_bucket", operation="claim", le="30.0") == 1


def test_listener_gauges_appear_with_the_first_report() -> None:
    metrics = Metrics("0")
    assert "jobd_store_listener_connected" not in families(metrics)
    metrics.set_listener(False)
    assert value(metrics, "jobd_store_listener_connected") == 0
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    metrics.set_listener(True, when)
    assert value(metrics, "jobd_store_listener_connected") == 1
    assert value(metrics, "jobd_store_listener_last_connect_timestamp_seconds") == when.timestamp()
    metrics.set_listener(False)
    assert value(metrics, "jobd_store_listener_connected") == 0
    assert value(metrics, "jobd_store_listener_last_connect_timestamp_seconds") == when.timestamp()
