"""gateway/redaction/patterns.py: the national-id table is the one place to add an id (SPEC §11);
a new row is masked in text, grouped and bare, and in logged integers, with nothing else edited."""

from __future__ import annotations

from gateway.redaction import patterns as pat
from gateway.redaction.processor import RedactionProcessor, Redactor

# An Aadhaar-shaped row (12 digits, written 4-4-4, never starting with 0 or 1), as a newcomer
# would add it to NATIONAL_IDS.
AADHAAR = pat.NationalId("[aadhaar]", (4, 4, 4), first="23456789")
WITH_AADHAAR = pat.DigitPasses((*pat.NATIONAL_IDS, AADHAAR))
AADHAAR_INT = 234567890124


def test_the_shipped_table_masks_cnics_grouped_and_bare() -> None:
    assert pat.scan_builtin_patterns("id 35202-1234567-1 ok") == f"id {pat.CNIC} ok"
    assert pat.scan_builtin_patterns("id 35202 1234567 1 ok") == f"id {pat.CNIC} ok"
    assert pat.scan_builtin_patterns("id 3520212345671 ok") == f"id {pat.CNIC} ok"
    assert pat.scan_builtin_patterns("id 9520212345671 ok") == "id 9520212345671 ok"  # no province 9


def test_a_new_row_is_masked_in_text_grouped_and_bare() -> None:
    text = "aadhaar 2345 6789 0124, again 2345-6789-0124 and 234567890124."
    assert pat.scan_builtin_patterns(text) == text  # not in the shipped table: the test can fail
    masked = pat.scan_builtin_patterns(text, WITH_AADHAAR)
    assert masked == "aadhaar [aadhaar], again [aadhaar] and [aadhaar]."
    # Its "first" rule holds for the bare form; the rows already there keep working.
    assert pat.scan_builtin_patterns("n 134567890124", WITH_AADHAAR) == "n 134567890124"
    assert pat.scan_builtin_patterns("id 35202-1234567-1", WITH_AADHAAR) == f"id {pat.CNIC}"
    assert pat.scan_builtin_patterns("card 4111 1111 1111 1111", WITH_AADHAAR) == f"card {pat.CARD}"


def test_a_new_row_is_masked_when_logged_as_an_int_anywhere() -> None:
    event = {"event": "kyc", "id": AADHAAR_INT, "deep": {"ids": [AADHAAR_INT]}}
    shipped = RedactionProcessor(Redactor())(None, "info", dict(event))
    assert shipped["id"] == AADHAAR_INT  # the shipped table has no such id
    redacted = RedactionProcessor(Redactor(digit_passes=WITH_AADHAAR))(None, "info", dict(event))
    assert redacted["id"] == "[aadhaar]" and redacted["deep"] == {"ids": ["[aadhaar]"]}


def test_a_row_shorter_than_the_digit_gate_lowers_it() -> None:
    # A 6-digit id: the text gate (7 digits) and the int gate both follow the table.
    six = pat.DigitPasses((*pat.NATIONAL_IDS, pat.NationalId("[six]", (3, 3), first="9")))
    assert six.gate_digits == 6
    assert pat.scan_builtin_patterns("id 912-345 and 912345", six) == "id [six] and [six]"
    redacted = RedactionProcessor(Redactor(digit_passes=six))(None, "info", {"event": "e", "n": [912345]})
    assert redacted["n"] == ["[six]"]


def test_a_row_with_a_checksum_masks_only_valid_numbers() -> None:
    def even_sum(digits: str) -> bool:
        return sum(map(int, digits)) % 2 == 0

    checked = pat.DigitPasses((pat.NationalId("[chk]", (4, 4, 4), check=even_sum),))
    assert pat.scan_builtin_patterns("a 2345-6789-0125 b", checked) == "a [chk] b"  # sum 56
    assert pat.scan_builtin_patterns("a 2345-6789-0124 b", checked) == "a 2345-6789-0124 b"  # sum 55
    assert pat.scan_builtin_patterns("a 234567890125 b", checked) == "a [chk] b"
