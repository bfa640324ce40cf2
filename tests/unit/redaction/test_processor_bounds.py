"""Appendix C bounded redaction: linear scans, ``logging.redact.max_scan``, and numbers that
could hold a phone or an id are scanned like text. Speed itself is measured (as a ratio) in
bench/redaction_bench.py; these tests check what is masked and what is kept."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config_schema import parse_config
from gateway.redaction import patterns as pat
from gateway.redaction.processor import _CACHE_LIMIT, RedactionProcessor, Redactor

# The e-mail regex as it was: the reference the anchored scan must agree with (short inputs only,
# it is quadratic on long ones).
SEARCHING_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+(?:@|%40)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
SEARCHING_JWT_RE = re.compile(r"eyj[a-z0-9_-]+\.[a-z0-9_-]+(?:\.[a-z0-9_-]*){1,3}", re.IGNORECASE)
PIECES = ["a", "Z", "9", ".", "-", "+", "_", "%", "%4", "%40", "@", "com", ".org", " ", "eyJ", "eyj"]
MAX_SCAN = 2048

# Every shape that made one of the table's regexes try each start position against a long run
# (the searching e-mail and JWT patterns), or that stresses a bounded one, at max_scan length.
ADVERSARIAL = {
    "local run, bare @": "a" * (MAX_SCAN - 1) + "@",
    "local run, bare %40": "a" * (MAX_SCAN - 3) + "%40",
    "chained %40": "a%40" * (MAX_SCAN // 4),
    "labels without a TLD": "a@" + "1." * (MAX_SCAN // 2 - 1),
    "labels as local part": "a." * (MAX_SCAN // 2 - 2) + "%40",
    "many @": "a@b." * (MAX_SCAN // 4),
    "eyJ run": "eyJ" * (MAX_SCAN // 3),
    "eyJ run with a dot": "eyJa" * (MAX_SCAN // 8) + "." + "b" * (MAX_SCAN // 2 - 1),
    "bearer run": "bearer " * (MAX_SCAN // 7),
    "token spaces": "token" + " " * (MAX_SCAN - 5),
    "password=": "password=" * (MAX_SCAN // 9),
    "digit singles": "1 " * (MAX_SCAN // 2),
    "digit groups": "12-" * (MAX_SCAN // 3),
    "IBAN starts": "AB12 " * (MAX_SCAN // 5),
    "E.164 groups": "+1" + " 1" * (MAX_SCAN // 2 - 1),
    "ck_ run": "ck_" + "a" * (MAX_SCAN - 3),
    "zeros": "0" * MAX_SCAN,
}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=20).map("".join))
def test_the_anchored_email_scan_masks_exactly_what_the_regex_did(text: str) -> None:
    assert pat.mask_emails(text) == SEARCHING_EMAIL_RE.sub(pat.EMAIL, text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["eyJ", "eyj", "a", "_", "-", ".", " ", "9", "x"]), max_size=24).map("".join))
def test_the_anchored_jwt_scan_masks_exactly_what_the_regex_did(text: str) -> None:
    assert pat.mask_jwts(text) == SEARCHING_JWT_RE.sub(pat.JWT, text)


@pytest.mark.parametrize("shape", sorted(ADVERSARIAL))
def test_adversarial_shapes_at_max_scan_are_scanned_whole(shape: str) -> None:
    text = ADVERSARIAL[shape]
    assert len(text) <= MAX_SCAN
    assert Redactor().redact_text(text) == pat.scan_builtin_patterns(text)  # not truncated
    # ...and an address glued to the end of the shape is still found.
    masked = pat.scan_builtin_patterns(text + " ali@example.pk")
    assert masked.endswith(" [email]") and "ali@" not in masked


def test_an_address_at_the_end_of_a_long_local_run_is_masked_whole() -> None:
    assert pat.mask_emails("x" * 5000 + "@example.com tail") == "[email] tail"
    assert pat.mask_emails("q=" + "a" * 5000 + "%40mail.example.com") == "q=[email]"


def test_an_overlong_field_is_cut_at_max_scan_with_a_marker() -> None:
    redactor = Redactor(max_scan=256)
    text = "contact ali@example.pk " + "x" * 1000
    shown = redactor.redact_text(text)
    assert shown == "contact [email]…[truncated 1001 chars]"  # the marker counts what was cut
    assert len(shown) < 300


def test_the_cut_never_keeps_half_a_value() -> None:
    redactor = Redactor(max_scan=256)
    card = "4111 1111 1111 1111"
    text = "n" * 240 + " " + card + " " + "y" * 300  # the cut falls inside the card's groups
    shown = redactor.redact_text(text)
    assert "4111" not in shown and "1111" not in shown
    one_run = redactor.redact_text("a" * 5000 + "@example.com")
    assert one_run == "…[truncated 5012 chars]"


def test_query_keys_are_bounded_each() -> None:
    shown = Redactor().redact_query("?" + "a." * 8000 + "%40&page=2")
    assert "…[truncated " in shown and shown.endswith("&page=[REDACTED]") and len(shown) < 3 * MAX_SCAN


@pytest.mark.parametrize(
    ("number", "placeholder"),
    [
        (923001234567, pat.PHONE),  # a Pakistani mobile without "+": 12 digits
        (8801712345678, pat.PHONE),  # Bangladeshi, 13 digits
        (4111111111111111, pat.CARD),
        (3520245187632, pat.CNIC),
    ],
)
def test_numbers_that_hold_a_phone_or_id_are_masked(number: int, placeholder: str) -> None:
    assert Redactor().redact_value(number) == placeholder
    processor = RedactionProcessor(Redactor())
    assert processor(None, "info", {"event": "x", "msisdn": number})["msisdn"] == placeholder
    assert processor(None, "info", {"event": "x", "bytes": 1834, "total": 123_456_789}) == {
        "event": "x",
        "bytes": 1834,
        "total": 123_456_789,
    }


def test_max_scan_is_configured_under_logging_redact() -> None:
    assert parse_config("logging: {}\n").logging.redact.max_scan == 2048
    assert parse_config("logging: {redact: {max_scan: 4KiB}}\n").logging.redact.max_scan == 4096


def test_redacted_queries_are_remembered_within_a_bound() -> None:
    """A query's redaction is remembered (the same answer, every value masked) and the memory
    starts over at its cap, however many queries a client invents; long ones are not kept."""
    redactor = Redactor()
    first = redactor.redact_query("limit=4&email=ali@mail.com")
    assert first == "limit=[REDACTED]&email=[REDACTED]"
    assert redactor.redact_query("limit=4&email=ali@mail.com") == first
    for n in range(_CACHE_LIMIT + 10):
        assert redactor.redact_query(f"k{n}=v") == f"k{n}=[REDACTED]"
    assert len(redactor._queries) <= _CACHE_LIMIT
    overlong = "a=" + "x" * 300
    assert redactor.redact_query(overlong) == "a=[REDACTED]"
    assert overlong not in redactor._queries
    # Keys are still pattern-masked (decoded first), remembered or not.
    shown = redactor.redact_query("ali%40mail.com=1")
    assert "ali" not in shown and redactor.redact_query("ali%40mail.com=1") == shown
