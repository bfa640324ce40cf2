"""The ``killswitch`` config section: default, durations, bounds, unknown keys."""

from __future__ import annotations

import pytest

from gateway.config.errors import ConfigError
from gateway.config_schema import parse_config

BASE = (
    "upstreams:\n  erp:\n    urls: ['http://127.0.0.1:9000']\n"
    "routes:\n  - {name: api, prefix: /api, upstream: erp}\n"
)


def test_default_resync_is_five_seconds() -> None:
    assert parse_config(BASE).killswitch.resync == 5.0


def test_resync_is_a_duration() -> None:
    assert parse_config(BASE + "killswitch: {resync: 500ms}\n").killswitch.resync == 0.5


@pytest.mark.parametrize(
    "section, message",
    [
        ("killswitch: {resync: 10ms}", "killswitch.resync: must be between 100ms and 60s"),
        ("killswitch: {resync: 2m}", "killswitch.resync: must be between 100ms and 60s"),
        ("killswitch: {resync: soon}", "killswitch.resync"),
        ("killswitch: {resynch: 5s}", "killswitch.resynch"),
    ],
)
def test_bad_sections_are_reported_at_their_key_path(section: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + section + "\n")
    assert any(message in error for error in info.value.errors), info.value.errors
