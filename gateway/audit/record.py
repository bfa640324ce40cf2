"""The audit record of SPEC Appendix B and its hash.

A record is ``{"seq", "time", "tenant", "event", "actor", "request_id", "incident", "details",
"prev_hash", "hash"}``. ``hash`` is the lowercase hex SHA-256 of the record's canonical JSON
without ``hash``: sorted keys, separators ``,`` and ``:``, UTF-8, non-ASCII not escaped - exactly
``json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()``.

The standard library defines the canonical form, not orjson: the two agree on strings and
64-bit integers but differ on float spelling (``1e-07`` versus ``1e-7``), and orjson reads
integers beyond 64 bits back as floats. ``normalize_details`` therefore admits only values
that survive a store round trip unchanged (finite floats, integers within 64 bits), so a
record read back always hashes to what was written.

Stored bytes are orjson in Appendix B field order (fast to read and to stream out); the hash
never depends on the stored spelling because verification re-canonicalises.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

FIELDS: tuple[str, ...] = (
    "seq",
    "time",
    "tenant",
    "event",
    "actor",
    "request_id",
    "incident",
    "details",
    "prev_hash",
    "hash",
)
GENESIS_HASH = "0" * 64
SYSTEM_TENANT = "_system"
GATEWAY_ACTOR = "gateway"  # the actor of the records the gateway files itself (checkpoints, anchors)
CHECKPOINT_EVENT = "audit.checkpoint"
PURGED_EVENT = "tenant.purged"
# Events whose details say which prefix of the trail was removed and the hash of its last record.
VOUCHING_EVENTS = frozenset({CHECKPOINT_EVENT, PURGED_EVENT})

# Tenant ids become stream names and key prefixes ("mfa:{tenant}:"): a ':' would let purging
# tenant "a" match keys of tenant "a:b", so the separator is excluded along with whitespace.
_TENANT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@-]{0,127}")
# The tenant id syntax of the whole gateway (tenancy, MFA, grants): a named tenant must be one the
# gateway can file records for. SECURITY: "_system" is the gateway's own trail (switches, key
# rotations, reloads), never a tenant a token may act for, name, grant in, or have records filed under.
TENANT_ID_RE = re.compile(rf"(?!{SYSTEM_TENANT}\Z){_TENANT_RE.pattern}")
_INT64 = 2**63


def validate_tenant(tenant: object) -> str:
    """Return ``tenant`` if it is a valid trail name, else raise ValueError (no echo of the value
    beyond its length, since a bad tenant may come from a hostile token)."""
    if not isinstance(tenant, str) or not _TENANT_RE.fullmatch(tenant):
        raise ValueError(
            "invalid tenant id: expected 1-128 characters of letters, digits and . _ @ - "
            "(not starting with . @ -)"
        )
    return tenant


@functools.lru_cache(maxsize=64)
def _second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def format_time(ts: float) -> str:
    """Unix seconds as RFC 3339 UTC with milliseconds, e.g. ``2026-11-27T19:02:40.123Z``
    (truncated to the millisecond, never rounded up into the next second)."""
    seconds, millis = divmod(math.floor(ts * 1000), 1000)
    return f"{_second(seconds)}.{millis:03d}Z"


def _check_json(value: Any, depth: int = 0) -> Any:
    if depth > 32:
        raise ValueError("audit details nest too deeply")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise ValueError("audit details: integers must fit in 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("audit details: floats must be finite")
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError("audit details: object keys must be strings")
            out[key] = _check_json(item, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_check_json(item, depth + 1) for item in value]
    raise ValueError(f"audit details: {type(value).__name__} is not a JSON value")


def normalize_details(details: Mapping[str, Any] | None) -> dict[str, Any]:
    """A plain-JSON copy of ``details`` (tuples become lists), or ValueError for values that
    would not read back identically (and so would break the record's own hash)."""
    if details is None:
        return {}
    checked = _check_json(details)
    if not isinstance(checked, dict):
        raise ValueError("audit details must be a JSON object")
    return checked


def _has_float(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def canonical_bytes(body: Mapping[str, Any]) -> bytes:
    """The canonical JSON the hash is taken over (``body`` must not contain ``hash``).

    Defined as the ``json.dumps`` form. orjson with sorted keys produces the very same bytes for
    strings (every code point checked), integers, booleans, null and nesting, about ten times
    faster, so it is used whenever the body holds no float (the one spelling that differs) and
    orjson accepts it; ``test_record`` proves the equality property-based."""
    if type(body) is dict and not _has_float(body):
        try:
            return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass  # e.g. a surrogate or a huge integer: let the reference path decide
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def compute_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 over the canonical JSON of ``record`` without its ``hash`` field."""
    body = {k: v for k, v in record.items() if k != "hash"}
    # SECURITY: the tamper-evidence of the whole trail rests on this one definition.
    return hashlib.sha256(canonical_bytes(body)).hexdigest()


def build_record(
    *,
    seq: int,
    time: str,
    tenant: str,
    event: str,
    actor: str | None,
    request_id: str | None,
    incident: str | None,
    details: Mapping[str, Any],
    prev_hash: str,
) -> dict[str, Any]:
    """A complete record in Appendix B field order, hashed."""
    record: dict[str, Any] = {
        "seq": seq,
        "time": time,
        "tenant": tenant,
        "event": event,
        "actor": actor,
        "request_id": request_id,
        "incident": incident,
        "details": dict(details),
        "prev_hash": prev_hash,
    }
    # SECURITY: prev_hash inside the hashed body is what chains each record to the one before.
    record["hash"] = compute_hash(record)
    return record


def encode_record(record: Mapping[str, Any]) -> bytes:
    return orjson.dumps(record)


def decode_record(raw: bytes) -> dict[str, Any] | None:
    """The stored record, or None when the bytes are not a JSON object."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


__all__ = [
    "CHECKPOINT_EVENT",
    "FIELDS",
    "GATEWAY_ACTOR",
    "GENESIS_HASH",
    "PURGED_EVENT",
    "SYSTEM_TENANT",
    "TENANT_ID_RE",
    "VOUCHING_EVENTS",
    "build_record",
    "canonical_bytes",
    "compute_hash",
    "decode_record",
    "encode_record",
    "format_time",
    "normalize_details",
    "validate_tenant",
]
