"""Configuration: load YAML once, validate everything, hand out frozen objects.

``load_config`` either returns a ``GatewayConfig`` or raises ``ConfigError`` carrying every
problem as ``key.path: message``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from gateway.config.model import (
    AdminConfig,
    CorsPolicy,
    GatewayConfig,
    ListenConfig,
    RouteConfig,
    TlsConfig,
    UpstreamConfig,
)
from gateway.config.reader import ADDRESS_PATHS, Report
from gateway.config.schema import build_config

__all__ = [
    "AdminConfig",
    "ConfigError",
    "CorsPolicy",
    "GatewayConfig",
    "ListenConfig",
    "RouteConfig",
    "TlsConfig",
    "UpstreamConfig",
    "default_config_path",
    "effective_config",
    "load_config",
    "parse_config",
]

MASK = "********"


class ConfigError(Exception):
    """Every problem of one config file; ``str()`` is one ``key.path: message`` per line."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


def default_config_path(explicit: str | None = None) -> Path:
    """``-c`` wins, then ``$SHOPINO_GATEWAY_CONFIG``, then ``config/gateway.yaml`` (SPEC §1)."""
    return Path(explicit or os.environ.get("SHOPINO_GATEWAY_CONFIG") or "config/gateway.yaml")


def parse_config(text: str, source: str = "<memory>") -> GatewayConfig:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"<root>: invalid YAML{where}"]) from None
    report = Report()
    config = build_config(data, report, source)
    if report.errors:
        raise ConfigError(report.errors)
    return dataclasses.replace(
        config,
        secret_paths=frozenset(report.secret_paths),
        secret_values=frozenset(v for v in report.secret_values if v),
    )


def load_config(path: str | Path) -> GatewayConfig:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"<file>: cannot read {file}: {exc.strerror}"]) from None
    return parse_config(text, str(file))


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


def effective_config(config: GatewayConfig) -> dict[str, Any]:
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
