"""``observability`` config: the endpoint is checked with its key path, and setting one without
the ``otel`` extra installed is a config error, not a surprise at the first request."""

from __future__ import annotations

import sys

import pytest
import yaml

from gateway.config.errors import ConfigError
from gateway.config_schema import parse_config
from gateway.tracing.schema import EXTRA_HINT, OTEL_MODULES, traces_url

BASE = {
    "upstreams": {"erp": {"urls": ["http://127.0.0.1:9000"]}},
    "routes": [{"name": "a", "prefix": "/a", "upstream": "erp", "auth": "none"}],
}


def _errors(observability: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_dump({**BASE, "observability": observability}))
    return caught.value.errors


def test_export_is_off_by_default() -> None:
    assert parse_config(yaml.safe_dump(BASE)).observability.otlp_endpoint is None


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("ftp://127.0.0.1:4318", "expected an http(s) URL like http://127.0.0.1:4318"),
        ("127.0.0.1:4318", "expected an http(s) URL like http://127.0.0.1:4318"),
        ("http://127.0.0.1:99999", "expected an http(s) URL like http://127.0.0.1:4318"),
        ("http://user:secret@127.0.0.1:4318", "no credentials, query or fragment in the URL"),
        ("http://127.0.0.1:4318/v1/traces?token=x", "no credentials, query or fragment in the URL"),
    ],
)
def test_a_bad_endpoint_is_a_key_path_error(endpoint: str, message: str) -> None:
    errors = _errors({"otlp_endpoint": endpoint})
    assert errors == [f"observability.otlp_endpoint: {message}"]
    assert "secret" not in errors[0]


def test_unknown_keys_are_refused() -> None:
    assert _errors({"otlp_endpont": "http://127.0.0.1:4318"})[0].startswith("observability.otlp_endpont: ")


def test_an_endpoint_without_the_otel_extra_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_MODULES:  # as if the extra were not installed: importing them fails
        monkeypatch.setitem(sys.modules, name, None)
    assert _errors({"otlp_endpoint": "http://127.0.0.1:4318"}) == [
        f"observability.otlp_endpoint: {EXTRA_HINT}"
    ]


def test_traces_url_follows_the_otlp_endpoint_convention() -> None:
    assert traces_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("http://127.0.0.1:4318/") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("https://c.example/otlp/v1/traces") == "https://c.example/otlp/v1/traces"
