"""The template's tests: run the handler with jobd.testing, no daemon needed."""

from __future__ import annotations

import jobd_example
import pytest

from jobd.errors import ConfigError, InvalidJob
from jobd.testing import OutcomeKind, configure_plugin, run_handler, validate_payload


@pytest.fixture(autouse=True)
def _default_config() -> None:
    configure_plugin(jobd_example, {})


async def test_greets_with_the_configured_greeting() -> None:
    configure_plugin(jobd_example, {"greeting": "Hi"})
    outcome = await run_handler(jobd_example.greet, {"name": "Ada"})
    assert outcome.kind is OutcomeKind.COMPLETED
    assert outcome.result == {"message": "Hi, Ada!"}
    assert [report.fraction for report in outcome.progress] == [0.5]


async def test_nobody_fails_without_retrying() -> None:
    outcome = await run_handler(jobd_example.greet, {"name": "nobody"})
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.reason == "failed: there is nobody to greet"


def test_a_payload_without_a_name_is_refused_at_submit() -> None:
    with pytest.raises(InvalidJob) as refused:
        validate_payload(jobd_example.greet, {"name": ""})
    assert refused.value.field == "payload.name"


def test_an_unknown_config_key_is_named() -> None:
    with pytest.raises(ConfigError) as refused:
        configure_plugin(jobd_example, {"greting": "Hi"})
    assert refused.value.key == "plugins.example.greting"


def test_the_handler_is_registered_with_its_defaults() -> None:
    registry = configure_plugin(jobd_example, {})
    handler = registry.get("example.greet")
    assert handler is not None
    assert (handler.plugin, handler.timeout, handler.max_attempts) == ("jobd-example", 10.0, 2)
