"""Log redaction (SPEC §11): masked keys at any depth, PII and secret patterns in any string,
query-string masking, keyed pseudonyms and truncated client IPs. Pure Python, no aiohttp.

Masked-key rule (a key's *value* becomes ``[REDACTED]``). The key is normalised first:
camelCase is split, ``-``/``.``/spaces become ``_``, everything is lower-cased, giving words
(``X-Api-Key`` -> ``x api key``) and a compact form with the separators dropped (``xapikey``).
The key is masked when any of these holds:

1. the compact form *contains* a distinctive secret word: ``password``, ``passwd``,
   ``passphrase``, ``token``, ``secret``, ``authorization``, ``cookie``, ``apikey``,
   ``privatekey``, ``consumerkey``, ``otpauth`` (so ``db_password``, ``totp_secret``,
   ``x_api_key``, ``Set-Cookie``, ``refreshToken``, ``consumer_secret`` are all masked);
2. a word ends in ``otp``/``otps`` (``otp``, ``totp``, ``sms_otp``); never a mere substring,
   because ``footprint`` contains "otp";
3. a word is ``code``/``codes`` and the word right before it is not a known non-secret
   qualifier (``status``, ``error``, ``http``, ``country``, …, see ``_SAFE_CODE_QUALIFIERS``):
   ``code``, ``recovery_code``, ``mfa_code``, ``code_verifier`` are masked, ``status_code``,
   ``error_code``, ``countryCode`` are not; or a word is a secret prefix glued to ``code``
   (``authcode``, ``otpcode``, ``recoverycodes``);
4. a word is ``key``/``keys`` right after a secret qualifier (``signing_key``, ``hmac_key``,
   ``access_key``), so ``cache_key``/``key_id`` stay readable;
5. an ``extra_keys`` entry, normalised the same way, occurs as whole consecutive words
   (``iban`` masks ``customer_iban`` and ``ibanNumber`` but ``pin`` does not mask ``shipping``).
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import hmac
import ipaddress
import re
import uuid
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_plus

from structlog.processors import format_exc_info
from structlog.typing import EventDict, WrappedLogger

from gateway import redaction_patterns as pat

__all__ = [
    "TRUSTED_FIELDS",
    "Pseudonymizer",
    "RedactionProcessor",
    "Redactor",
    "pseudonymize",
    "truncate_ip",
]

_SECRET_SUBSTRINGS = (
    "password", "passwd", "passphrase", "token", "secret", "authorization", "cookie",
    "apikey", "privatekey", "consumerkey", "otpauth",
)  # fmt: skip
_SAFE_CODE_QUALIFIERS = frozenset((
    "status", "error", "err", "http", "response", "resp", "exit", "return", "result", "reason",
    "failure", "country", "currency", "language", "lang", "locale", "region", "postal", "zip",
    "area", "dial", "iso", "product", "item", "sku", "hs", "tax", "branch", "swift", "bic", "sort",
    "event", "message", "msg", "category", "city", "airport", "unit", "state",
))  # fmt: skip
_SECRET_CODE_PREFIXES = frozenset((
    "otp", "totp", "hotp", "mfa", "auth", "recovery", "backup", "verification", "verify", "sms",
    "reset", "confirm", "login", "security", "access", "oauth",
))  # fmt: skip
_SECRET_KEY_QUALIFIERS = frozenset((
    "private", "secret", "signing", "hmac", "encryption", "master", "api", "consumer", "session",
    "shared", "access", "client",
))  # fmt: skip
_CAMEL_RE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NON_WORD_RE = re.compile(r"[^a-z0-9]+")

# Gateway-produced fields whose values skip the pattern scan when they look safe (see
# RedactionProcessor). Add a field here only if the gateway itself generates its value.
TRUSTED_FIELDS = frozenset({"status", "duration_ms", "route", "method", "level", "timestamp", "request_id"})
# SECURITY: stricter than "short identifier": a 7+ digit run (phone, card, CNIC, IBAN), a JWT
# header or a WooCommerce key prefix sends even a trusted field through the full scan.
_TRUSTED_STR_RE = re.compile(r"(?!.*(?:[0-9]{7}|eyJ|c[ks]_))[A-Za-z0-9_.:/-]{0,64}")
_TRUSTED_SCALARS = (int, float, bool)

_SAFE_SCALARS = (float, bool, type(None), dt.datetime, dt.date, dt.time, dt.timedelta, uuid.UUID)
_BIG_INT = 10**12  # ints of 13+ digits may be a card or CNIC stored as a number
_MAX_DEPTH = 32
_CACHE_LIMIT = 4096
_CLEAN_CACHE_MAX_LEN = 256


def _key_words(key: str) -> tuple[str, ...]:
    return tuple(w for w in _NON_WORD_RE.split(_CAMEL_RE.sub("_", key).lower()) if w)


def _contains_run(words: tuple[str, ...], run: tuple[str, ...]) -> bool:
    size = len(run)
    return any(words[i : i + size] == run for i in range(len(words) - size + 1))


def _is_secret_key(words: tuple[str, ...], extra: tuple[tuple[str, ...], ...]) -> bool:
    compact = "".join(words)
    if any(word in compact for word in _SECRET_SUBSTRINGS):
        return True
    for index, word in enumerate(words):
        before = words[index - 1] if index else ""
        if word.endswith(("otp", "otps")):
            return True
        if word in ("code", "codes"):
            if before not in _SAFE_CODE_QUALIFIERS:
                return True
        elif word.endswith(("code", "codes")) and word.rstrip("s")[:-4] in _SECRET_CODE_PREFIXES:
            return True
        if word in ("key", "keys") and before in _SECRET_KEY_QUALIFIERS:
            return True
    return any(_contains_run(words, run) for run in extra)


def _compile_extra(index: int, pattern: str) -> re.Pattern[str]:
    where = f"logging.redact.extra_patterns[{index}]"
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{where}: invalid regular expression {pattern!r}: {exc}") from exc
    # A zero-width match would splice "[redacted]" between characters of every log line.
    if any(m.end() == m.start() for m in compiled.finditer("a aB-1_.@ x\n")):
        raise ValueError(f"{where}: {pattern!r} can match the empty string")
    return compiled


class Redactor:
    """Compiled once per runtime; masks secrets in any value before it is logged."""

    def __init__(self, extra_keys: Iterable[str] = (), extra_patterns: Iterable[str] = ()) -> None:
        self._extra_keys = tuple(words for words in map(_key_words, extra_keys) if words)
        self._extra_patterns = tuple(_compile_extra(i, p) for i, p in enumerate(extra_patterns))
        # key -> (masked?, key as shown); strings known to need no change. Both bounded:
        # keys and messages can come from clients (headers, query), so a flood only resets them.
        self._keys: dict[str, tuple[bool, str]] = {}
        self._clean: set[str] = set()

    def classify_key(self, key: str) -> tuple[bool, str]:
        """(whether the key's value is masked, the key itself with patterns masked)."""
        known = self._keys.get(key)
        if known is None:
            if len(self._keys) >= _CACHE_LIMIT:
                self._keys.clear()
            known = self._keys[key] = (
                _is_secret_key(_key_words(key), self._extra_keys),
                self.redact_text(key),
            )
        return known

    def is_masked_key(self, key: str) -> bool:
        return self.classify_key(key)[0]

    def redact_text(self, text: str) -> str:
        """Mask every pattern kind in free text, each with its own placeholder."""
        if text in self._clean:
            return text
        out = text
        for pattern in self._extra_patterns:
            out = pattern.sub(pat.EXTRA, out)
        out = pat.scan_builtin_patterns(out)
        if out == text and len(text) <= _CLEAN_CACHE_MAX_LEN:
            if len(self._clean) >= _CACHE_LIMIT:
                self._clean.clear()
            self._clean.add(text)
        return out

    def redact_value(self, obj: object, _depth: int = 0) -> Any:
        """Return a copy of ``obj`` safe to log: masked keys at any depth, patterns in strings."""
        kind = type(obj)
        if kind is str:
            return self.redact_text(obj)  # type: ignore[arg-type]
        if kind is int:
            return obj if -_BIG_INT < obj < _BIG_INT else self._redact_big_int(obj)  # type: ignore[operator]
        if isinstance(obj, _SAFE_SCALARS):
            return obj
        if _depth >= _MAX_DEPTH:
            return pat.MASK  # SECURITY: cyclic or absurdly deep data is dropped, never rendered raw.
        if isinstance(obj, Mapping):
            out = {}
            for key, value in obj.items():
                if isinstance(key, str):
                    masked, key = self.classify_key(key)
                    out[key] = pat.MASK if masked else self.redact_value(value, _depth + 1)
                else:
                    out[key] = self.redact_value(value, _depth + 1)
            return out
        if isinstance(obj, (list, tuple, set, frozenset)):
            items = [self.redact_value(item, _depth + 1) for item in obj]
            # Sets become lists: the JSON renderer has no set, and str() of one would go unscanned.
            return tuple(items) if isinstance(obj, tuple) else items
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return self.redact_text(bytes(obj).decode("utf-8", "replace"))
        if isinstance(obj, (int, decimal.Decimal)):  # int subclasses (IntEnum), Decimal
            return self._redact_big_int(obj)
        # SECURITY: anything else would be rendered by the serializer's str() fallback, so
        # exceptions, URLs and custom objects are stringified here and scanned.
        return self.redact_text(str(obj))

    def _redact_big_int(self, number: object) -> object:
        text = str(number)
        masked = self.redact_text(text)
        return number if masked == text else masked

    def redact_query(self, query: str) -> str:
        """Mask every query-string value; keep keys, but pattern-mask them (``a=1`` -> ``a=[REDACTED]``)."""
        if not query:
            return query
        prefix = "?" if query.startswith("?") else ""
        parts = []
        for field in query[len(prefix) :].split("&"):
            key, equals, value = field.partition("=")
            shown = self.redact_text(key)
            if shown == key and ("%" in key or "+" in key):
                # SECURITY: "ali%40mail.com", "0300+1234567" hide PII from the scan until decoded.
                decoded = unquote_plus(key)
                shown = key if self.redact_text(decoded) == decoded else self.redact_text(decoded)
            if not equals:
                parts.append(shown)  # a bare "?flag" is shown as a (pattern-masked) key
            else:
                parts.append(f"{shown}={pat.MASK if value else ''}")
        return prefix + "&".join(parts)


def _is_trusted_value(value: object) -> bool:
    kind = type(value)
    if kind is str:
        return len(value) <= 64 and _TRUSTED_STR_RE.fullmatch(value) is not None  # type: ignore[arg-type]
    return kind in _TRUSTED_SCALARS


class RedactionProcessor:
    """structlog processor: the whole event dict, the ``event`` message and tracebacks.

    Place it last before the renderer and *after* ``format_exc_info`` (or
    ``dict_tracebacks``), so the rendered ``exception`` text is what gets scanned. If it meets
    a still-unrendered ``exc_info`` it renders it itself: an exception object handed to the
    JSON renderer would otherwise be stringified raw, message and all.
    """

    def __init__(self, redactor: Redactor, trusted_fields: Iterable[str] = TRUSTED_FIELDS) -> None:
        self._redactor = redactor
        self._trusted = frozenset(trusted_fields)

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        if "exc_info" in event_dict:
            event_dict = format_exc_info(logger, method_name, event_dict)
        redactor = self._redactor
        trusted = self._trusted
        out: EventDict = {}
        for key, value in event_dict.items():
            if key in trusted and _is_trusted_value(value):
                out[key] = value
                continue
            masked, shown = redactor.classify_key(key)
            out[shown] = pat.MASK if masked else redactor.redact_value(value)
        return out


class Pseudonymizer:
    """Keyed pseudonym of a user id: ``u_`` + 16 hex chars of HMAC-SHA256. Key prepared once."""

    __slots__ = ("_mac",)

    def __init__(self, key: bytes) -> None:
        # SECURITY: a short or empty key makes pseudonyms a plain hash, reversible by hashing
        # every known user id; require at least 128 bits.
        if len(key) < 16:
            raise ValueError("pseudonymization key must be at least 16 bytes")
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    def __call__(self, value: str) -> str:
        mac = self._mac.copy()
        mac.update(value.encode("utf-8", "surrogatepass"))
        return "u_" + mac.hexdigest()[:16]

    def __repr__(self) -> str:
        return "Pseudonymizer(key=<masked>)"


def pseudonymize(value: str, key: bytes) -> str:
    """One-off form of ``Pseudonymizer(key)(value)``; hot paths keep a ``Pseudonymizer``."""
    return Pseudonymizer(key)(value)


@lru_cache(maxsize=4096)
def truncate_ip(ip: str) -> str:
    """IPv4 to its /24 (``a.b.c.0``), IPv6 to its /48; anything unparsable to ``"invalid"``."""
    if not isinstance(ip, str):
        return "invalid"
    raw = ip.strip()
    if raw.startswith("[") and raw.endswith("]"):
        raw = raw[1:-1]
    raw = raw.partition("%")[0]  # zone id ("fe80::1%eth0") says nothing about the client
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return "invalid"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # "::ffff:1.2.3.4" is an IPv4 client
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)
