"""The record format of Appendix B and its hash, pinned byte for byte."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.record import (
    FIELDS,
    GENESIS_HASH,
    build_record,
    canonical_bytes,
    compute_hash,
    decode_record,
    encode_record,
    format_time,
    normalize_details,
    validate_tenant,
)

NESTED = {"zeta": [1, {"ß": "Ünïcödé ✓", "a": None}], "alpha": {"y": True, "x": -5}, "ok": "ok"}


def sample(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "seq": 1,
        "time": "2026-11-27T19:02:40.123Z",
        "tenant": "acme",
        "event": "auth.login",
        "actor": "ali@acme",
        "request_id": "req-1",
        "incident": None,
        "details": NESTED,
        "prev_hash": GENESIS_HASH,
    }
    fields.update(overrides)
    return build_record(**fields)


def test_record_has_exactly_the_appendix_b_fields_in_order() -> None:
    assert list(sample()) == list(FIELDS)
    assert FIELDS == (
        "seq", "time", "tenant", "event", "actor", "request_id", "incident", "details", "prev_hash", "hash",
    )  # fmt: skip


def test_hash_is_sha256_of_hand_written_canonical_json() -> None:
    rec = sample()
    # Written out by hand: sorted keys at every depth, no spaces, non-ASCII as raw UTF-8.
    expected_text = (
        '{"actor":"ali@acme","details":{"alpha":{"x":-5,"y":true},"ok":"ok",'
        '"zeta":[1,{"a":null,"ß":"Ünïcödé ✓"}]},"event":"auth.login","incident":null,'
        '"prev_hash":"' + "0" * 64 + '","request_id":"req-1","seq":1,"tenant":"acme",'
        '"time":"2026-11-27T19:02:40.123Z"}'
    )
    expected = expected_text.encode("utf-8")
    body = {k: v for k, v in rec.items() if k != "hash"}
    assert canonical_bytes(body) == expected
    assert rec["hash"] == hashlib.sha256(expected).hexdigest()
    assert rec["hash"] == rec["hash"].lower() and len(rec["hash"]) == 64
    assert "Ü".encode() in expected and b"\\u" not in expected  # non-ASCII not escaped


def test_canonical_form_equals_json_dumps_and_where_orjson_differs() -> None:
    body = {k: v for k, v in sample().items() if k != "hash"}
    reference = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert canonical_bytes(body) == reference
    # orjson agrees on strings, ints, nesting and non-ASCII...
    assert orjson.dumps(body, option=orjson.OPT_SORT_KEYS) == reference
    # ...but spells some floats differently, which is why the standard library defines the hash.
    assert orjson.dumps(1e-07) != json.dumps(1e-07).encode()


def test_hash_covers_every_field() -> None:
    rec = sample()
    for field in FIELDS[:-1]:
        changed = dict(rec)
        changed[field] = "x" if field != "seq" else 2
        assert compute_hash(changed) != rec["hash"], field


def test_format_time_is_rfc3339_utc_milliseconds() -> None:
    assert format_time(1_795_806_160.123) == "2026-11-27T19:02:40.123Z"
    assert format_time(1_795_806_160.0) == "2026-11-27T19:02:40.000Z"
    assert format_time(1_795_806_160.9999) == "2026-11-27T19:02:40.999Z"  # truncated, never rounded up
    assert format_time(0) == "1970-01-01T00:00:00.000Z"


@settings(max_examples=150, deadline=None)
@given(
    details=st.dictionaries(
        st.text(max_size=8),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(min_value=-(2**63), max_value=2**63 - 1)
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
            ),
            max_leaves=10,
        ),
        max_size=5,
    ),
    actor=st.text(),
)
def test_stored_record_reads_back_with_the_same_hash(details: dict[str, Any], actor: str) -> None:
    try:
        canonical_bytes(details)
        clean = normalize_details(details)
    except (UnicodeEncodeError, ValueError):
        return  # lone surrogates cannot be stored; record() refuses them
    try:
        actor.encode()
    except UnicodeEncodeError:
        return
    rec = sample(details=clean, actor=actor)
    again = decode_record(encode_record(rec))
    assert again == rec
    assert again is not None and compute_hash(again) == rec["hash"]


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(exclude_categories=["Cs"])),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=6), inner, max_size=4
        )
    ),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(body=st.dictionaries(st.sampled_from(FIELDS[:-1]), JSON_VALUES, min_size=1))
def test_canonical_bytes_always_equal_the_json_dumps_definition(body: dict[str, Any]) -> None:
    reference = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert canonical_bytes(body) == reference


@pytest.mark.parametrize(
    "details",
    [{"n": 2**64}, {"f": float("nan")}, {"f": float("inf")}, {1: "int key"}, {"s": {1, 2}}, {"b": b"x"}],
)
def test_details_that_would_not_read_back_are_refused(details: Any) -> None:
    with pytest.raises(ValueError):
        normalize_details(details)


def test_details_normalised_to_plain_json() -> None:
    assert normalize_details(None) == {}
    assert normalize_details({"t": (1, 2)}) == {"t": [1, 2]}
    with pytest.raises(ValueError):
        normalize_details([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize("tenant", ["acme", "_system", "shop-42", "a.b_c@d", "x" * 128])
def test_valid_tenants(tenant: str) -> None:
    assert validate_tenant(tenant) == tenant


@pytest.mark.parametrize("tenant", ["", "a:b", "acme ", "x" * 129, "-x", "a/b", "a\nb", None, 5])
def test_invalid_tenants(tenant: Any) -> None:
    with pytest.raises(ValueError, match="invalid tenant id"):
        validate_tenant(tenant)


def test_decode_record_rejects_non_objects() -> None:
    assert decode_record(b"not json") is None
    assert decode_record(b"[1]") is None
