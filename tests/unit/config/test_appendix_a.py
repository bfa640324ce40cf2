"""SPEC Appendix A is "a complete config, as the schema's reference": the exact file from the
spec must load, and its values must land where the spec says (a rename would break operators)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.errors import ConfigError
from gateway.config_schema import parse_config

APPENDIX_A = Path(__file__).with_name("appendix_a.yaml")


@pytest.fixture
def appendix_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WC_WEBHOOK_SECRET", "appendix-a-webhook-secret-0123456789")


def test_appendix_a_loads_as_written(appendix_env: None) -> None:
    try:
        config = parse_config(APPENDIX_A.read_text(), source=str(APPENDIX_A))
    except ConfigError as exc:  # show every key path at once
        pytest.fail("Appendix A rejected:\n" + "\n".join(exc.errors))
    routes = {route.name: route for route in config.routes}
    assert set(routes) == {"login", "finance", "inventory", "reports", "tenant-api", "woo"}
    assert routes["finance"].audit is True and routes["finance"].mfa_max_age == 900
    assert routes["woo"].auth == "webhook" and routes["woo"].max_body == 1024 * 1024
    assert routes["reports"].mfa is False
    assert config.admin.port == 9090 and config.state.url.startswith("redis://")
    assert config.integrations["woocommerce"].rotation_grace == 86400


def test_appendix_a_with_an_unknown_key_is_refused(appendix_env: None) -> None:
    text = APPENDIX_A.read_text().replace("  resync: 5s\n", "  resync: 5s\n  resink: 5s\n")
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert any(error.startswith("killswitch.resink") for error in caught.value.errors)
