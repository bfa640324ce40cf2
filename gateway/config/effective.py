"""The effective config as plain data for printing (``check-config``, the admin API), with
every secret masked."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from gateway.config.model import StateConfig
from gateway.config.reader import ADDRESS_PATHS

MASK = "********"


class PrintableConfig(Protocol):
    """What masking reads of the whole config (``gateway.config_model.GatewayConfig``); the
    rest is printed field by field."""

    @property
    def state(self) -> StateConfig: ...

    @property
    def secret_values(self) -> frozenset[str]: ...


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, frozenset | set):
        return sorted(_plain(v) for v in value)
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    return value


def _mask_url_password(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", f":{MASK}@", 1)
    # Query options such as sentinel_password carry secrets too.
    query = "&".join(
        f"{k}={MASK}" if "password" in k.lower() or "secret" in k.lower() else f"{k}={v}"
        for k, _, v in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def effective_config(config: PrintableConfig) -> dict[str, Any]:
    """The config as plain data for printing, with every secret masked."""
    data: dict[str, Any] = _plain(config)
    data.pop("secret_paths", None)
    data.pop("secret_values", None)
    secrets = sorted(config.secret_values, key=len, reverse=True)
    data["state"]["url"] = _mask_values(_mask_url_password(config.state.url), secrets)
    if any(secret in config.state.url for secret in secrets):
        data["state"]["url"] = MASK
    for token in data["admin"]["tokens"]:
        token["sha256"] = MASK
    for integration in data.get("integrations", {}).values():
        integration["secret"] = MASK
    # Anything else that came from ${ENV} is treated as a secret: that is how secrets arrive.
    # Masked by value, wherever it ended up (split into parts, sorted into a set, renamed).
    masked: dict[str, Any] = _mask_values(data, secrets)
    # Listen addresses are not secrets (ADDRESS_PATHS); without this, a default such as
    # 127.0.0.1 would be masked for being part of an upstream URL that came from ${ENV}.
    for fields in ADDRESS_PATHS.values():
        for section, key in fields:
            masked[section][key] = data[section][key]
    return masked


def _mask_values(value: Any, secrets: list[str]) -> Any:
    if not secrets:
        return value
    if isinstance(value, dict):
        return {k: _mask_values(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_values(v, secrets) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    text = str(value)
    # Either direction: a secret inside a value, or a value cut out of a secret (a host or port
    # split off a HOST:PORT that came from the environment).
    if any(secret in text or (len(text) >= 4 and text in secret) for secret in secrets):
        return MASK
    return value
