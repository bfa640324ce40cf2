"""The signed ``X-Gateway-Context`` assertion (SPEC §7, Appendix B).

The gateway tells a backend who is acting with plain headers (``X-Tenant-ID``, ``X-User-ID``,
``X-User-Roles``, ``X-Request-ID``) plus one MAC over them::

    X-Gateway-Context: v1.<unix-ts>.<base64url(HMAC-SHA256(key, message)) without padding>
    message = "\\n".join(["v1", ts, method, target, tenant, user, ",".join(roles), request_id])

``target`` is the path and query string exactly as forwarded. A backend calls
``verify_context`` on every request; without it, anything that can reach the backend directly
(a compromised neighbour, an SSRF) can claim any tenant with four plain headers.

Replays: the MAC binds method, target, identity and request id, and ``max_age`` (default 60 s)
bounds how long a captured request stays usable. Within that window the same request can be
replayed byte for byte; pass a ``ReplayCache`` to refuse a MAC seen before. Because the request
id may be chosen by the client, two genuinely identical requests in the same second carry the
same MAC, so use the cache where a repeat is never legitimate (unsafe methods), as the demo
backend does. The cache is per process: with several backend processes, a replay to another
process is only bounded by ``max_age``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CONTEXT_HEADER = "X-Gateway-Context"
TENANT_HEADER = "X-Tenant-ID"
USER_HEADER = "X-User-ID"
ROLES_HEADER = "X-User-Roles"
REQUEST_ID_HEADER = "X-Request-ID"
VERSION = "v1"
DEFAULT_MAX_AGE = 60.0
DEFAULT_SKEW = 5.0  # seconds a timestamp may lie in the future (clocks of gateway and backend)
# 32-byte MAC = 43 base64url chars. The timestamp is written as the signer writes it (no leading
# zeros), so the MAC covers the header's own text, not a re-formatted number.
_VALUE_RE = re.compile(r"v1\.(0|[1-9][0-9]{0,11})\.([A-Za-z0-9_-]{43})")

Key = str | bytes


class ContextInvalid(Exception):
    """The request's gateway context is missing, malformed, forged, too old or replayed.

    ``reason`` is one of ``missing``, ``malformed``, ``bad_signature``, ``expired``, ``future``,
    ``replayed``. The message never contains header values or key material."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VerifiedContext:
    tenant: str
    user: str
    roles: tuple[str, ...]
    request_id: str
    issued_at: int = 0


def _key_bytes(key: Key) -> bytes:
    raw = key.encode("utf-8") if isinstance(key, str) else key
    if not isinstance(raw, bytes) or not raw:
        raise ValueError("a context key must be a non-empty str or bytes")
    return raw


def _message(
    ts: int | str, method: str, target: str, tenant: str, user: str, roles: str, request_id: str
) -> bytes:
    return f"{VERSION}\n{ts}\n{method}\n{target}{identity_tail(tenant, user, roles)}{request_id}".encode()


def identity_tail(tenant: str, user: str, roles: str) -> str:
    """The part of the message between the target and the request id: the identity with the
    separators around it, the same on every request of one identity (``ContextSigner.sign_tail``
    takes it ready-made)."""
    return f"\n{tenant}\n{user}\n{roles}\n"


_URLSAFE = bytes.maketrans(b"+/", b"-_")
_PADDING = b"=\n"  # base64url without padding: one translate maps +/ and drops these
_time = time.time
_trunc = math.trunc  # int() of a float, without int's type-call overhead


class ContextSigner:
    """Signs contexts with one key (stdlib HMAC-SHA256, never a MAC built by hand). The keyed
    state is set up once and copied per request: cheaper than ``hmac.digest``, which sets up the
    key every call. The timestamp's text is made once per second."""

    __slots__ = ("_keyed", "_stamp")

    def __init__(self, key: Key) -> None:
        keyed = hmac.new(_key_bytes(key), digestmod="sha256")
        # The OpenSSL object inside the stdlib wrapper, where there is one: copy, update and
        # digest then run in C (the wrapper's Python methods were a third of the signing cost).
        self._keyed: Any = getattr(keyed, "_hmac", None) or keyed
        # (second, the message's "v1\n<ts>\n", the value's "v1.<ts>.")
        self._stamp: tuple[int, str, str] = (-1, "", "")

    def sign(
        self,
        method: str,
        target: str,
        tenant: str,
        user: str,
        roles: Sequence[str],
        request_id: str,
        *,
        now: float | None = None,
    ) -> str:
        return self.sign_joined(method, target, tenant, user, ",".join(roles), request_id, now=now)

    def sign_joined(
        self,
        method: str,
        target: str,
        tenant: str,
        user: str,
        roles_text: str,
        request_id: str,
        *,
        now: float | None = None,
    ) -> str:
        """``sign`` with the roles already comma-joined."""
        return self.sign_tail(method, target, identity_tail(tenant, user, roles_text), request_id, now=now)

    def sign_tail(
        self, method: str, target: str, tail: str, request_id: str, *, now: float | None = None
    ) -> str:
        """``sign`` with the identity as ``identity_tail`` gives it (the gateway's per-request
        call: an identity's tail is made once per token, gateway.tenancy.identity)."""
        second = _trunc(_time() if now is None else now)
        stamp = self._stamp
        if stamp[0] != second:
            stamp = self._stamp = (second, f"{VERSION}\n{second}\n", f"{VERSION}.{second}.")
        mac = self._keyed.copy()
        mac.update(f"{stamp[1]}{method}\n{target}{tail}{request_id}".encode())
        return stamp[2] + binascii.b2a_base64(mac.digest()).translate(_URLSAFE, _PADDING).decode()

    def __repr__(self) -> str:
        return "ContextSigner(<key redacted>)"


def sign_context(
    key: Key,
    method: str,
    target: str,
    tenant: str,
    user: str,
    roles: Sequence[str],
    request_id: str,
    *,
    now: float | None = None,
) -> str:
    """The ``X-Gateway-Context`` value for one request (convenience; the gateway keeps a
    ``ContextSigner`` per process instead)."""
    return ContextSigner(key).sign(method, target, tenant, user, roles, request_id, now=now)


class ReplayCache:
    """MACs accepted within the window; a second use of one is refused. Thread-safe, bounded:
    when ``max_entries`` unexpired MACs are held, new requests are refused (fail closed) rather
    than forgetting one that could then be replayed."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    def check_and_add(self, mac: str, expires_at: float, now: float) -> None:
        with self._lock:
            seen = self._seen
            while seen:  # insertion order is close to expiry order: prune from the front
                oldest, expiry = next(iter(seen.items()))
                if expiry > now:
                    break
                del seen[oldest]
            previous = seen.get(mac)
            if previous is not None and previous > now:
                raise ContextInvalid("replayed", "the gateway context was already used")
            if len(seen) >= self._max:
                raise ContextInvalid("replayed", "too many recent requests to check for replays")
            seen[mac] = expires_at

    def __len__(self) -> int:
        return len(self._seen)


def _header(headers: Any, name: str) -> str | None:
    """One header value, case-insensitively; a repeated header is refused as ambiguous."""
    getall = getattr(headers, "getall", None)
    if getall is not None:  # multidict (aiohttp): case-insensitive, keeps repetitions
        values = getall(name, [])
    else:
        lower = name.lower()
        items = headers.items() if isinstance(headers, Mapping) else headers
        values = [v for k, v in items if _name(k) == lower]
    if len(values) > 1:
        raise ContextInvalid("malformed", f"{name} appears more than once")
    if not values:
        return None
    value = values[0]
    if isinstance(value, bytes | bytearray):  # raw headers (ASGI scopes): the gateway sends UTF-8
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise ContextInvalid("malformed", f"{name} is not UTF-8") from None
    if not isinstance(value, str):
        raise ContextInvalid("malformed", f"{name} is not a header value")
    return value


def _name(key: object) -> str | None:
    if isinstance(key, bytes | bytearray):
        return bytes(key).decode("latin-1").lower()
    return key.lower() if isinstance(key, str) else None


def _keys(key: Key | Iterable[Key]) -> list[bytes]:
    if isinstance(key, str | bytes):
        return [_key_bytes(key)]
    keys = [_key_bytes(k) for k in key]
    if not keys:
        raise ValueError("at least one context key is required")
    return keys


def verify_context(
    headers: Any,
    method: str,
    target: str,
    key: Key | Iterable[Key],
    max_age: float = DEFAULT_MAX_AGE,
    *,
    replay_cache: ReplayCache | None = None,
    skew: float = DEFAULT_SKEW,
    now: float | None = None,
) -> VerifiedContext:
    """Check the gateway's signed context on a backend request; return who is acting.

    ``headers``: a mapping or multidict of the request headers; ``target``: the request's path
    and query string as received; ``key``: the raw secret (a ``str`` is UTF-8 encoded) or a
    list of them (current and previous during a rotation). Raises ``ContextInvalid``."""
    keys = _keys(key)
    value = _header(headers, CONTEXT_HEADER)
    if value is None:
        raise ContextInvalid("missing", f"{CONTEXT_HEADER} is missing")
    match = _VALUE_RE.fullmatch(value.strip())
    if match is None:
        raise ContextInvalid("malformed", f"{CONTEXT_HEADER} is malformed")
    ts, given = int(match.group(1)), match.group(2)
    tenant, user = _header(headers, TENANT_HEADER), _header(headers, USER_HEADER)
    request_id = _header(headers, REQUEST_ID_HEADER)
    roles = _header(headers, ROLES_HEADER) or ""
    if not tenant or not user or not request_id:
        raise ContextInvalid("missing", "the tenant, user or request id header is missing")
    try:
        given_mac = base64.urlsafe_b64decode(given + "=")
    except (binascii.Error, ValueError):
        raise ContextInvalid("malformed", f"{CONTEXT_HEADER} is malformed") from None
    try:
        message = _message(ts, method, target, tenant, user, roles, request_id)
    except UnicodeEncodeError:
        # Servers decode undecodable header or path bytes as lone surrogates (aiohttp's
        # surrogateescape): never something the gateway signed, and never a crash.
        raise ContextInvalid("malformed", "the request carries text that is not valid UTF-8") from None
    valid = False
    for raw in keys:
        expected = hmac.new(raw, message, hashlib.sha256).digest()
        # SECURITY: constant-time comparison (MAC forgery by timing), every key tried.
        valid |= hmac.compare_digest(expected, given_mac)
    if not valid:
        raise ContextInvalid("bad_signature", f"{CONTEXT_HEADER} does not verify")
    current = time.time() if now is None else now
    if current - ts > max_age:
        raise ContextInvalid("expired", f"{CONTEXT_HEADER} is too old")
    if ts - current > skew:
        raise ContextInvalid("future", f"{CONTEXT_HEADER} is dated in the future")
    if replay_cache is not None:
        # Keyed on the decoded MAC: base64 has several spellings of one value (padding bits).
        replay_cache.check_and_add(given_mac.hex(), ts + max_age, current)
    return VerifiedContext(
        tenant=tenant,
        user=user,
        roles=tuple(r for r in roles.split(",") if r),
        request_id=request_id,
        issued_at=ts,
    )
