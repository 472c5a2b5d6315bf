"""The template's tests: run the handler with jobd.testing, no daemon needed."""

from __future__ import annotations

import jobd_example
import pytest
from jobd_example import Settings

from jobd.errors import ConfigError, InvalidJob
from jobd.testing import OutcomeKind, configure_plugin, plugin_settings, run_handler, validate_payload


async def test_greets_with_the_configured_greeting() -> None:
    settings = plugin_settings(jobd_example, {"greeting": "Hi"})
    assert settings == Settings(greeting="Hi")
    outcome = await run_handler(jobd_example.greet, {"name": "Ada"}, settings=settings)
    assert outcome.kind is OutcomeKind.COMPLETED
    assert outcome.result == {"message": "Hi, Ada!"}
    assert [report.fraction for report in outcome.progress] == [0.5]


async def test_nobody_fails_without_retrying() -> None:
    outcome = await run_handler(jobd_example.greet, {"name": "nobody"}, settings=Settings())
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.reason == "failed: there is nobody to greet"


def test_a_payload_without_a_name_is_refused_at_submit() -> None:
    with pytest.raises(InvalidJob) as refused:
        validate_payload(jobd_example.greet, {"name": ""}, settings=Settings())
    assert refused.value.field == "payload.name"


@pytest.mark.parametrize(
    ("table", "key"),
    [({"greting": "Hi"}, "plugins.example.greting"), ({"greeting": " "}, "plugins.example.greeting"),
     ({"greeting": 3}, "plugins.example.greeting")],
)
def test_a_bad_table_names_the_key(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        configure_plugin(jobd_example, table)
    assert refused.value.key == key


def test_the_handler_is_registered_with_its_defaults_and_settings() -> None:
    registry = configure_plugin(jobd_example, {})
    handler = registry.get("example.greet")
    assert handler is not None
    assert (handler.plugin, handler.timeout, handler.max_attempts) == ("jobd-example", 10.0, 2)
    assert handler.settings == Settings()
