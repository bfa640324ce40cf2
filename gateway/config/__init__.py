"""Configuration: load YAML once, validate everything, hand out frozen objects.

``load_config`` either returns a ``GatewayConfig`` or raises ``ConfigError`` carrying every
problem as ``key.path: message``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
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
from gateway.config.reader import Report
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
    return dataclasses.replace(config, secret_paths=frozenset(report.secret_paths))


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
    if isinstance(value, dict):
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
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", f":{MASK}@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def effective_config(config: GatewayConfig) -> dict[str, Any]:
    """The config as plain data for printing, with every secret masked."""
    data: dict[str, Any] = _plain(config)
    data.pop("secret_paths", None)
    data["state"]["url"] = _mask_url_password(config.state.url)
    for token in data["admin"]["tokens"]:
        token["sha256"] = MASK
    # Anything that came from ${ENV} is treated as a secret: that is how secrets arrive.
    for path in config.secret_paths:
        _mask_path(data, path)
    return data


def _mask_path(data: dict[str, Any], path: str) -> None:
    """Best effort: ``routes[0].upstream`` style paths from the reader, mapped onto ``data``."""
    node: Any = data
    parts = path.replace("[", ".[").split(".")
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        key: Any = int(part[1:-1]) if part.startswith("[") else part
        try:
            if last:
                node[key] = MASK
            else:
                node = node[key]
        except (KeyError, IndexError, TypeError):
            return
