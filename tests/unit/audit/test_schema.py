"""``audit.anchor_every`` (SPEC App. C): a duration, default 1h, between 1s and 1d."""

from __future__ import annotations

import pytest

from gateway.config.errors import ConfigError
from gateway.config_schema import parse_config


def test_anchor_every_defaults_to_an_hour() -> None:
    assert parse_config("").audit.anchor_every == 3600.0
    assert parse_config("audit: {anchor_every: 15m}\n").audit.anchor_every == 900.0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0s", "audit.anchor_every: must be between 1s and 1d"),
        ("2d", "audit.anchor_every: must be between 1s and 1d"),
    ],
)
def test_anchor_every_out_of_range_is_refused_at_its_key(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"audit: {{anchor_every: {value}}}\n")
    assert info.value.errors == [message]


def test_anchor_every_must_be_a_duration() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("audit: {anchor_every: soon}\n")
    assert [e.split(":")[0] for e in info.value.errors] == ["audit.anchor_every"]
