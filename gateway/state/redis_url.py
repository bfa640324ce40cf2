"""Parsing ``redis://``, ``rediss://`` and ``redis+sentinel://`` state URLs into one value.

Parsed here rather than by ``redis.from_url`` so that unknown options fail at start-up with a
clear ``ValueError`` (redis-py would pass them on and fail at the first command) and so the
short default timeouts cannot be silently lost. Errors never quote the password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

DEFAULT_SOCKET_TIMEOUT = 1.0  # seconds: no request waits long on a dead or hung Redis

_FLOATS = {"socket_timeout", "socket_connect_timeout"}
_STRINGS = {"client_name"}
_TLS_STRINGS = {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path"}
_SECRETS = {"sentinel_password"}
_CERT_REQS = {"none", "optional", "required"}
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass(frozen=True)
class RedisTarget:
    """Where and how to connect. ``password`` fields are kept out of ``repr``."""

    scheme: str  # "redis", "rediss" or "redis+sentinel"
    hosts: tuple[tuple[str, int], ...]
    db: int
    display: str  # the URL with secrets masked
    service: str | None = None  # sentinel master name
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    options: dict[str, Any] = field(default_factory=dict)

    def secrets(self) -> list[str]:
        return [s for s in (self.password, self.sentinel_password) if s]


def _host_port(item: str) -> tuple[str, int]:
    host, _, port = item.rpartition(":") if not item.endswith("]") else (item, "", "")
    if not host:  # no port given
        host, port = item, ""
    host = host.strip("[]")
    if not host:
        raise ValueError("state.url: missing host")
    try:
        number = int(port) if port else 6379
    except ValueError:
        raise ValueError(f"state.url: invalid port in {item!r}") from None
    if not 0 < number < 65536:
        raise ValueError(f"state.url: invalid port in {item!r}")
    return host, number


def _tls_string(name: str, value: str) -> bool:
    return name in _TLS_STRINGS or (name == "ssl_cert_reqs" and value in _CERT_REQS)


def _options(scheme: str, query: str) -> tuple[dict[str, Any], str | None, str]:
    options: dict[str, Any] = {
        "socket_timeout": DEFAULT_SOCKET_TIMEOUT,
        "socket_connect_timeout": DEFAULT_SOCKET_TIMEOUT,
    }
    sentinel_password = None
    shown: list[tuple[str, str]] = []
    for name, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        shown.append((name, "***" if name in _SECRETS else value))
        if name in _FLOATS:
            try:
                options[name] = float(value)
            except ValueError:
                raise ValueError(f"state.url: {name} must be a number of seconds") from None
            if not 0 < options[name] < 3600:  # also rejects nan and inf
                raise ValueError(f"state.url: {name} must be between 0 and 3600 seconds")
        elif name == "max_connections" and value.isdigit() and 0 < int(value) <= 10_000:
            options[name] = int(value)
        elif name in _STRINGS or (scheme == "rediss" and _tls_string(name, value)):
            options[name] = value
        elif name == "ssl_check_hostname" and scheme == "rediss" and value.lower() in _BOOLS:
            options[name] = _BOOLS[value.lower()]
        elif name == "sentinel_password" and scheme == "redis+sentinel":
            sentinel_password = value
        else:
            raise ValueError(f"state.url: unsupported or invalid option {name!r} for {scheme}://")
    if scheme == "rediss":
        options["ssl"] = True
    return options, sentinel_password, urlencode(shown, safe="*/")


def parse_redis_url(url: str) -> RedisTarget:
    """Parse a Redis state URL; ``ValueError`` (without secrets) when it is malformed."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis", "rediss", "redis+sentinel"):
        raise ValueError("state.url: expected redis://, rediss:// or redis+sentinel://")
    rest, _, query = rest.partition("?")
    rest, _, _fragment = rest.partition("#")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    hosts = tuple(_host_port(item) for item in (hostlist or "localhost").split(","))
    parts = [p for p in path.split("/") if p]
    service = None
    if scheme == "redis+sentinel":
        if not parts:
            raise ValueError("state.url: redis+sentinel:// needs /service_name[/db]")
        service = unquote(parts.pop(0))
    elif len(hosts) != 1:
        raise ValueError(f"state.url: {scheme}:// takes exactly one host")
    if len(parts) > 1 or (parts and not parts[0].isdigit()):
        raise ValueError("state.url: the path must be /db (a number)")
    db = int(parts[0]) if parts else 0
    options, sentinel_password, shown_query = _options(scheme, query)
    masked_user = quote(username or "", safe="") + (":***" if password else "")
    display = f"{scheme}://{masked_user + '@' if at else ''}{hostlist}/{path}"
    display += f"?{shown_query}" if shown_query else ""
    return RedisTarget(
        scheme=scheme,
        hosts=hosts,
        db=db,
        display=display,
        service=service,
        username=username,
        password=password,
        sentinel_password=sentinel_password,
        options=options,
    )
