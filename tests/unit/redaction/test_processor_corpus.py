"""SPEC §11 redaction: a corpus of real-looking secrets and PII, in every place a log line can
carry them (values, nested data, messages, tracebacks, query strings), must never survive."""

from __future__ import annotations

import base64
import enum
import io
import json
import os
import string
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.processors import JSONRenderer, add_log_level, dict_tracebacks, format_exc_info

from gateway.redaction.processor import (
    TRUSTED_FIELDS,
    RedactionProcessor,
    Redactor,
    pseudonymize,
    truncate_ip,
)

MAX_EXAMPLES = 50 if os.environ.get("CI") == "true" else 500
CUSTOM_PATTERN = r"TKT-[A-Z]{3}-\d{4}"
REDACTOR = Redactor(extra_keys=["iban", "card pin"], extra_patterns=[CUSTOM_PATTERN])


def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


@dataclass(frozen=True)
class Secret:
    raw: str
    placeholder: str  # what the value alone is replaced by
    fragments: tuple[str, ...] = ()  # further parts that must not survive either

    def forbidden(self) -> list[str]:
        digits = "".join(c for c in self.raw if c.isdigit())
        extra = [digits] if self.placeholder in ("[phone]", "[card]", "[cnic]") else []
        return [self.raw, *self.fragments, *extra]


def _entries(placeholder: str, *raws: str) -> list[Secret]:
    return [Secret(raw, placeholder) for raw in raws]


CORPUS: list[Secret] = [
    *_entries("[email]", "ali.khan@example.com", "ali.khan+orders@gmail.com"),
    *_entries("[email]", "ops@mail.shop.example.co.uk", "first_last-99@sub.domain.com.pk"),
    *_entries("[phone]", "+923001234567", "0300-1234567", "0092 300 1234567", "03217654321"),
    *_entries("[phone]", "+92 321 7654321", "+8801712345678", "01712345678", "+1 (415) 555-2671"),
    *_entries("[card]", "4111 1111 1111 1111", "4111-1111-1111-1111", "4242424242424242"),
    *_entries("[card]", "5555 5555 5555 4444", "5105-1051-0510-5100", "3782 822463 10005"),
    *_entries("[card]", "371449635398431", "6011-0009-9013-9424"),
    *_entries("[cnic]", "35202-1234567-1", "61101-7654321-2", "4210112345679"),
    *_entries("[iban]", "PK36SCBL0000001123456702", "PK36 SCBL 0000 0011 2345 6702"),
    *_entries("[iban]", "GB82WEST12345698765432", "GB82 WEST 1234 5698 7654 32", "DE89370400440532013000"),
    *_entries(
        "[jwt]",
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwia"
        "WF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
        f"{_b64({'alg': 'ES256', 'kid': 'k1'})}.{_b64({'sub': 'u1', 'tenant': 't1'})}.MEUCIQDx-3_zQ",
        f"{_b64({'alg': 'none'})}.{_b64({'sub': 'admin'})}.",
    ),
    Secret("Bearer abc.def", "Bearer [bearer]", ("abc.def",)),
    Secret("Bearer 9f8e7d6c5b4a39281706f5e4d3c2b1a0", "Bearer [bearer]", ("9f8e7d6c5b4a3928",)),
    Secret("Basic dXNlcjpwYXNzd29yZA==", "Basic [bearer]", ("dXNlcjpwYXNzd29yZA",)),
    *_entries("[wc-key]", "ck_" + "a1b2c3d4e5" * 4, "cs_" + "0f" * 20),
    *_entries("[redacted]", "TKT-ABC-1234", "TKT-XYZ-9876"),
]
IDS = [f"{s.placeholder}:{s.raw[:24]}" for s in CORPUS]
corpus = pytest.mark.parametrize("secret", CORPUS, ids=IDS)


def render(*, exc: BaseException | None = None, **kw: Any) -> str:
    """One JSON line through the production-shaped chain (format_exc_info before redaction)."""
    chain = [add_log_level, format_exc_info, RedactionProcessor(REDACTOR), JSONRenderer()]
    log = structlog.wrap_logger(
        structlog.ReturnLogger(), processors=chain, wrapper_class=structlog.BoundLogger
    )
    return (log.error if exc else log.info)(kw.pop("event", "something happened"), exc_info=exc, **kw)


def assert_clean(line: str, secret: Secret) -> None:
    for forbidden in secret.forbidden():
        assert forbidden not in line, f"{forbidden!r} survived in {line!r}"


# -- the corpus, everywhere ------------------------------------------------------------------
@corpus
def test_value_under_innocent_key_gets_its_kind_placeholder(secret: Secret) -> None:
    assert REDACTOR.redact_value({"note": secret.raw}) == {"note": secret.placeholder}
    line = render(note=secret.raw)
    assert_clean(line, secret)
    assert json.loads(line)["note"] == secret.placeholder


@corpus
def test_value_nested_three_levels_deep(secret: Secret) -> None:
    data = {"l1": {"l2": [{"l3": secret.raw}, (secret.raw,)], "set": {secret.raw}}, "k": [[[secret.raw]]]}
    assert_clean(render(payload=data), secret)
    assert REDACTOR.redact_value(data)["l1"]["l2"][0]["l3"] == secret.placeholder


@corpus
def test_value_inside_free_text_message(secret: Secret) -> None:
    text = f"customer wrote: please use {secret.raw} for the refund, thanks (order INV-2024-00017)"
    masked = REDACTOR.redact_text(text)
    assert secret.placeholder in masked and "INV-2024-00017" in masked
    assert_clean(render(event=text, detail=text), secret)


@corpus
def test_value_inside_an_exception_and_its_traceback(secret: Secret) -> None:
    value = secret.raw
    try:
        raise LookupError(f"no customer for {value}")
    except LookupError as exc:
        caught = exc
    line = render(event="lookup failed", exc=caught, error=caught, errors=[caught])
    assert "LookupError" in json.loads(line)["exception"]
    assert_clean(line, secret)


@corpus
def test_value_as_query_string_value_and_key(secret: Secret) -> None:
    for query in (f"a=1&note={secret.raw}", f"{secret.raw}=1&b=2", f"x={quote_plus(secret.raw)}"):
        masked = REDACTOR.redact_query(query)
        assert_clean(masked, secret)
        assert_clean(render(query=masked), secret)
    encoded_key = REDACTOR.redact_query(f"{quote_plus(secret.raw)}=1")
    assert quote_plus(secret.raw) not in encoded_key and secret.raw not in encoded_key


@corpus
def test_value_as_dict_key_is_pattern_masked(secret: Secret) -> None:
    assert_clean(render(by_customer={secret.raw: 3}), secret)


@given(
    secret=st.sampled_from(CORPUS),
    before=st.text(alphabet=string.printable, max_size=40),
    after=st.text(alphabet=string.printable, max_size=40),
    seps=st.tuples(*[st.sampled_from([c for c in string.printable if not c.isalnum()])] * 2),
)
@settings(max_examples=MAX_EXAMPLES, database=None)
def test_random_text_around_a_secret_never_unmasks_it(
    secret: Secret, before: str, after: str, seps: tuple[str, str]
) -> None:
    assert_clean(REDACTOR.redact_text(f"{before}{seps[0]}{secret.raw}{seps[1]}{after}"), secret)


# -- masked keys ------------------------------------------------------------------------------
MASKED_KEYS = [
    "password", "PASSWORD", "Password", "passwd", "db_password", "dbPassword", "new-password",
    "token", "access_token", "accessToken", "refresh-token", "id_token", "csrfToken", "secret",
    "client_secret", "clientSecret", "totp_secret", "authorization", "Authorization",
    "Proxy-Authorization", "cookie", "Set-Cookie", "set_cookie", "otp", "OTP", "sms_otp", "totp",
    "code", "Code", "recovery_code", "recoveryCodes", "mfa_code", "authCode", "code_verifier", "passcode",
    "api_key", "apikey", "apiKey", "API_KEY", "X-Api-Key", "x_api_key", "consumer_key",
    "consumer_secret", "private_key", "privateKey", "signing_key", "hmac_key",
    "iban", "customer_iban", "customerIban", "card_pin", "CardPin",
]  # fmt: skip
UNMASKED_KEYS = [
    "status_code", "statusCode", "HTTPStatusCode", "error_code", "errorCode", "country_code",
    "currency_code", "exit_code", "footprint", "cache_key", "key_id", "route", "user", "event",
    "duration_ms", "shipping", "pin_count", "postcode",
]  # fmt: skip


@pytest.mark.parametrize("key", MASKED_KEYS)
def test_masked_key_at_any_depth(key: str) -> None:
    for depth in range(4):
        data: Any = {key: "hunter2"}
        for level in range(depth):
            data = {f"level{level}": [data]}
        line = render(payload=data, **{key: "hunter2"})
        assert "hunter2" not in line and "[REDACTED]" in line
    assert REDACTOR.is_masked_key(key)


@pytest.mark.parametrize("key", UNMASKED_KEYS)
def test_ordinary_key_is_not_masked(key: str) -> None:
    assert not REDACTOR.is_masked_key(key)
    assert json.loads(render(**{key: 404}))[key] == 404


# -- what must survive ------------------------------------------------------------------------
SURVIVORS = [
    "INV-2024-00017", "1234567812345678", "2026-11-27T19:37:35.123456Z", "1764272255",
    str(uuid.UUID("123e4567-e89b-12d3-a456-426614174000")), "4f9c2e1a7b3d4c5e8f9a0b1c2d3e4f50",
    "12.5ms", "took 1234 ms", "E_UPSTREAM_TIMEOUT", "ERR-5003", "203.0.113.0", "HTTP/1.1 200",
    "/api/v1/orders/{id}", "SKU-000123-XL", "PKR 12,500.00", "version 3.11.9", "404 Not Found",
    "missing bearer token", "Basic auth failed", "status_code=404", "error code: 5",
    "token_type=bearer", "u_1f2e3d4c5b6a7980",
]  # fmt: skip


@pytest.mark.parametrize("text", SURVIVORS)
def test_ordinary_values_survive(text: str) -> None:
    assert REDACTOR.redact_text(text) == text
    assert json.loads(render(note=text, status_code=404, duration_ms=12.5))["note"] == text


def test_numbers_and_safe_scalars_survive_but_a_card_as_int_does_not() -> None:
    data = {"status_code": 404, "duration": 0.25, "ok": True, "none": None, "n": 1234567812345678}
    assert REDACTOR.redact_value(data) == data
    assert REDACTOR.redact_value({"n": 4111111111111111}) == {"n": "[card]"}


def test_odd_values_are_made_safe() -> None:
    loop: list[Any] = []
    loop.append(loop)
    card_enum = enum.IntEnum("CardEnum", {"A": 4111111111111111}).A
    data = {
        "loop": loop,
        "raw": b"from ali.khan@example.com",
        "enum": card_enum,
        "obj": ValueError("0300-1234567"),
    }
    text = json.dumps(REDACTOR.redact_value(data))
    assert "[REDACTED]" in text and "[email]" in text and "[card]" in text and "[phone]" in text
    # Lower-casing "İ" changes the length, so credentials are found by the case-insensitive path.
    assert REDACTOR.redact_text("İ Bearer abc.def PASSWORD=x") == "İ Bearer [bearer] PASSWORD=[REDACTED]"


def test_own_pseudonyms_pass_untouched() -> None:
    pseudonym = pseudonymize("user-1", KEY_A)
    assert REDACTOR.redact_text(pseudonym) == pseudonym
    assert REDACTOR.redact_text("u_4111111111111111") == "u_[card]"  # all digits: still scanned


# -- structlog integration ------------------------------------------------------------------
def test_configure_style_chain_to_a_print_logger() -> None:
    out = io.StringIO()
    log = structlog.wrap_logger(
        structlog.PrintLogger(out),
        processors=[add_log_level, format_exc_info, RedactionProcessor(REDACTOR), JSONRenderer()],
        wrapper_class=structlog.BoundLogger,
    )
    email, card, token = "ali.khan@example.com", "4111 1111 1111 1111", "Bearer abc.def"
    try:
        raise ValueError(f"charge failed for {email} card {card}")
    except ValueError:
        log.error("payment error", exc_info=True, customer=email, headers={"Authorization": token})
    text = out.getvalue()
    for raw in (email, card, "abc.def"):
        assert raw not in text
    assert json.loads(text)["customer"] == "[email]"


def test_processor_renders_a_still_raw_exc_info_itself() -> None:
    processor = RedactionProcessor(REDACTOR)
    try:
        raise RuntimeError("user ali.khan@example.com")
    except RuntimeError as exc:
        event = processor(None, "error", {"event": "x", "exc_info": exc})
    assert "exc_info" not in event and "[email]" in event["exception"]
    assert "ali.khan@example.com" not in event["exception"]


def test_dict_tracebacks_are_walked() -> None:
    processor = RedactionProcessor(REDACTOR)
    try:
        raise KeyError("0300-1234567")
    except KeyError as exc:
        event = processor(None, "error", dict_tracebacks(None, "error", {"event": "x", "exc_info": exc}))
    assert "0300-1234567" not in json.dumps(event, default=str)


def test_trusted_fields_skip_the_scan_only_for_safe_looking_values() -> None:
    processor = RedactionProcessor(REDACTOR)
    assert {"status", "route", "request_id"} <= TRUSTED_FIELDS
    safe = {"event": "access", "status": 200, "route": "/api/orders", "request_id": "r-1f2e3d"}
    assert processor(None, "info", dict(safe)) == safe
    hostile = {"route": "/x ali@example.com", "request_id": "eyJa.eyJb.c", "method": "x ck_" + "ab" * 20}
    expected = {"route": "/x [email]", "request_id": "[jwt]", "method": "x [wc-key]"}
    assert processor(None, "info", hostile) == expected


# -- configuration --------------------------------------------------------------------------
def test_invalid_extra_pattern_is_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match=r"extra_patterns\[1\]: invalid regular expression"):
        Redactor(extra_patterns=["ok", "(unclosed"])
    with pytest.raises(ValueError, match="empty string"):
        Redactor(extra_patterns=[r"\b"])


def test_spec_appendix_extra_pattern() -> None:
    redactor = Redactor(extra_keys=["iban"], extra_patterns=[r"\bPK\d{2}[A-Z]{4}\d{16}\b"])
    assert redactor.redact_text("to PK36SCBL0000001123456702 now") == "to [redacted] now"
    assert redactor.redact_value({"iban": "x"}) == {"iban": "[REDACTED]"}


def test_redact_query_keeps_keys_and_empty_values() -> None:
    assert REDACTOR.redact_query("a=1&token=x") == "a=[REDACTED]&token=[REDACTED]"
    assert REDACTOR.redact_query("?page=2&flag&empty=") == "?page=[REDACTED]&flag&empty="
    assert REDACTOR.redact_query("") == ""


# -- pseudonyms and IPs -----------------------------------------------------------------------
KEY_A, KEY_B = b"k" * 32, b"j" * 32


def test_pseudonymize_is_stable_keyed_and_hides_the_id() -> None:
    first = pseudonymize("user-42@tenant", KEY_A)
    assert first == pseudonymize("user-42@tenant", KEY_A)
    assert first != pseudonymize("user-42@tenant", KEY_B) and first != pseudonymize("user-43", KEY_A)
    assert first.startswith("u_") and len(first) == 18 and "user-42" not in first
    with pytest.raises(ValueError):
        pseudonymize("u", b"short")


@pytest.mark.parametrize(
    ("raw", "truncated"),
    [
        ("203.0.113.77", "203.0.113.0"),
        ("10.1.2.3", "10.1.2.0"),
        ("2001:db8:85a3:8d3:1319:8a2e:370:7348", "2001:db8:85a3::"),
        ("[2001:db8::1]", "2001:db8::"),
        ("fe80::1%eth0", "fe80::"),
        ("::ffff:198.51.100.23", "198.51.100.0"),
        ("not-an-ip", "invalid"),
        ("", "invalid"),
        ("999.1.1.1", "invalid"),
        ("1.2.3", "invalid"),
    ],
)
def test_truncate_ip(raw: str, truncated: str) -> None:
    assert truncate_ip(raw) == truncated
