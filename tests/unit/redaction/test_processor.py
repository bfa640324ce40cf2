"""gateway/redaction/processor.py: integers that can hold PII are scanned like text (SPEC §11),
on both paths an int reaches the renderer by: a top-level field and a value nested anywhere."""

from __future__ import annotations

import orjson
import structlog

from gateway.redaction import patterns as pat
from gateway.redaction.processor import RedactionProcessor, Redactor

CNIC_INT = 3520212345671  # a Pakistani CNIC without dashes (13 digits, province 3)
MOBILE_INT = 923001234567  # a Pakistani mobile without "+" (12 digits)


def _rendered(processor: RedactionProcessor, **event: object) -> dict[str, object]:
    """The line as the JSON renderer writes it (the processor runs just before it)."""
    line = structlog.processors.JSONRenderer(serializer=orjson.dumps)(
        None, "info", processor(None, "info", event)
    )
    assert isinstance(line, bytes | str)
    return orjson.loads(line)


def test_a_national_id_logged_as_an_int_is_masked_at_the_top_in_a_nested_dict_and_in_a_list() -> None:
    # The attack: PII slips into a log line as a number rather than a string.
    line = _rendered(
        RedactionProcessor(Redactor()),
        event="kyc_checked",
        nid=CNIC_INT,
        customer={"profile": {"nid": CNIC_INT, "phone": MOBILE_INT}},
        batch=[CNIC_INT, {"ids": [CNIC_INT, -CNIC_INT]}],
    )
    text = orjson.dumps(line).decode()
    assert str(CNIC_INT) not in text and str(MOBILE_INT) not in text
    assert line["nid"] == pat.CNIC
    assert line["customer"] == {"profile": {"nid": pat.CNIC, "phone": pat.PHONE}}
    assert line["batch"] == [pat.CNIC, {"ids": [pat.CNIC, "-" + pat.CNIC]}]


def test_ints_that_cannot_hold_a_pattern_keep_their_type() -> None:
    line = _rendered(
        RedactionProcessor(Redactor()),
        event="order_synced",
        order=999_999,
        items=[3, 12, 250],
        nested={"count": -999_999},
        big_but_harmless=10**15,  # digits, but no pattern: left as a number
    )
    assert line["order"] == 999_999 and line["items"] == [3, 12, 250]
    assert line["nested"] == {"count": -999_999} and line["big_but_harmless"] == 10**15


def test_the_int_gate_follows_the_digit_gate_of_the_pattern_table() -> None:
    # A fixed cut (once 13 digits) would skip a shorter id; the gate is derived, never typed in.
    assert Redactor().big_int == 10 ** (pat.DIGIT_PASSES.gate_digits - 1)
    short = pat.DigitPasses((*pat.NATIONAL_IDS, pat.NationalId("[short-id]", (3, 3))))
    assert Redactor(digit_passes=short).big_int == 10**5
