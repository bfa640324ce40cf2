"""SPEC §2: scalar config values — durations, sizes and ``${ENV}`` interpolation."""

from __future__ import annotations

import math

import pytest

from gateway.config.values import interpolate_env, parse_duration, parse_size

DURATION_HINT = "expected a duration like '30s', '15m' or '2h'"
SIZE_HINT = "expected a size like '16KiB' or '1MiB'"


# --- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        pytest.param("250ms", 0.25, id="milliseconds"),
        pytest.param("30s", 30.0, id="seconds"),
        pytest.param("15m", 900.0, id="minutes"),
        pytest.param("2h", 7200.0, id="hours"),
        pytest.param("400d", 400 * 86400.0, id="days"),
        pytest.param("1.5h", 5400.0, id="fraction"),
        pytest.param(" 10s ", 10.0, id="surrounding-space"),
        pytest.param("0s", 0.0, id="zero"),
        pytest.param(45, 45.0, id="int-seconds"),
        pytest.param(2.5, 2.5, id="float-seconds"),
        pytest.param(0, 0.0, id="int-zero"),
    ],
)
def test_duration_accepted(raw: object, seconds: float) -> None:
    result = parse_duration(raw)
    assert isinstance(result, float)
    assert result == pytest.approx(seconds)


@pytest.mark.parametrize("raw", [True, False], ids=["true", "false"])
def test_duration_refuses_booleans(raw: bool) -> None:
    # bool is an int subclass: YAML `yes` must not become a 1-second timeout.
    with pytest.raises(ValueError) as info:
        parse_duration(raw)
    assert str(info.value) == DURATION_HINT


@pytest.mark.parametrize("raw", [-1, -0.5], ids=["negative-int", "negative-float"])
def test_duration_refuses_negative_numbers(raw: float) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(raw)
    assert str(info.value) == "duration must not be negative"


@pytest.mark.parametrize(
    "raw",
    ["30", "abc", "30x", "", "s", "-5s", "30 seconds", "1e3s", "5.s", None, [30], {"s": 30}],
    ids=repr,
)
def test_duration_refuses_junk(raw: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(raw)
    assert str(info.value) == DURATION_HINT


def test_duration_refuses_nan() -> None:
    with pytest.raises(ValueError):
        parse_duration(math.nan)


# --- sizes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "size"),
    [
        pytest.param("16KiB", 16 * 1024, id="kib"),
        pytest.param("1MiB", 1024**2, id="mib"),
        pytest.param("2GiB", 2 * 1024**3, id="gib"),
        pytest.param("10MB", 10_000_000, id="mb-decimal"),
        pytest.param("3kb", 3000, id="unit-case-insensitive"),
        pytest.param("1KIB", 1024, id="binary-unit-case-insensitive"),
        pytest.param("1 GB", 1_000_000_000, id="space-before-unit"),
        pytest.param("512B", 512, id="bytes-unit"),
        pytest.param("512", 512, id="bare-number-text"),
        pytest.param(4096, 4096, id="int"),
        pytest.param(0, 0, id="zero"),
    ],
)
def test_size_accepted(raw: object, size: int) -> None:
    result = parse_size(raw)
    assert isinstance(result, int)
    assert result == size


@pytest.mark.parametrize("raw", [True, False, 1.5, "1.5MiB", "MiB", "", "abc", None, [1]], ids=repr)
def test_size_refuses_junk(raw: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(raw)
    assert str(info.value) == SIZE_HINT


def test_size_refuses_negative() -> None:
    with pytest.raises(ValueError) as info:
        parse_size(-1)
    assert str(info.value) == "size must not be negative"


@pytest.mark.parametrize(("raw", "unit"), [("10XB", "XB"), ("4kilobytes", "kilobytes"), ("1 Tb", "Tb")])
def test_size_unknown_unit_is_named_with_the_valid_units(raw: str, unit: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(raw)
    assert str(info.value) == f"unknown size unit {unit!r} (use B, KiB, MiB, GiB, KB, MB, GB)"


# --- ${ENV} interpolation ----------------------------------------------------------------------


def test_env_set_is_substituted_and_flagged() -> None:
    assert interpolate_env("${WC_SECRET}", {"WC_SECRET": "s3cr3t"}) == ("s3cr3t", True)


def test_env_substituted_inside_text() -> None:
    text, from_env = interpolate_env("redis://:${PW}@${HOST}:6379/0", {"PW": "p", "HOST": "db"})
    assert text == "redis://:p@db:6379/0"
    assert from_env is True


def test_text_without_placeholders_is_untouched_and_not_flagged() -> None:
    for text in ("plain", "$HOME", "${1BAD}", "${}", "cost: $5"):
        assert interpolate_env(text, {"HOME": "/root", "1BAD": "x"}) == (text, False)


def test_env_unset_is_an_error_naming_the_variable() -> None:
    with pytest.raises(ValueError) as info:
        interpolate_env("${MISSING_SECRET}", {})
    assert str(info.value) == "environment variable MISSING_SECRET is not set"


def test_env_unset_error_never_contains_a_value() -> None:
    env = {"DB_PASSWORD": "hunter2-very-secret"}
    with pytest.raises(ValueError) as info:
        interpolate_env("${DB_PASSWORD}:${DB_USER}", env)
    message = str(info.value)
    assert "DB_USER" in message
    assert "hunter2" not in message
    assert "DB_PASSWORD" not in message


def test_env_default_used_when_unset_and_not_flagged() -> None:
    assert interpolate_env("${PORT:-8443}", {}) == ("8443", False)
    assert interpolate_env("${EMPTY_DEFAULT:-}", {}) == ("", False)


def test_env_default_ignored_when_set_and_flagged() -> None:
    assert interpolate_env("${PORT:-8443}", {"PORT": "9443"}) == ("9443", True)


def test_env_flag_set_when_any_part_came_from_the_environment() -> None:
    text, from_env = interpolate_env("${HOST:-localhost}:${PORT:-1}", {"PORT": "9090"})
    assert text == "localhost:9090"
    assert from_env is True


def test_env_values_are_not_expanded_again() -> None:
    # A value that itself looks like a placeholder must not pull in another variable.
    env = {"OUTER": "${INNER}", "INNER": "leaked"}
    assert interpolate_env("${OUTER}", env) == ("${INNER}", True)


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPINO_TEST_INTERP", "from-os")
    assert interpolate_env("${SHOPINO_TEST_INTERP}") == ("from-os", True)
    monkeypatch.delenv("SHOPINO_TEST_INTERP")
    with pytest.raises(ValueError, match="SHOPINO_TEST_INTERP"):
        interpolate_env("${SHOPINO_TEST_INTERP}")
