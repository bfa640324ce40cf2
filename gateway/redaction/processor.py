"""Log redaction (SPEC §11): masked keys at any depth, PII and secret patterns in any string,
query-string masking, keyed pseudonyms and truncated client IPs. Pure Python, no aiohttp.

The masked-key rule, the pattern regexes and the national-id table live in
``gateway.redaction.patterns``.
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
from collections.abc import Set as AbstractSet
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_plus

from structlog.processors import format_exc_info
from structlog.typing import EventDict, WrappedLogger

from gateway.config.model import DEFAULT_MAX_SCAN, RedactConfig
from gateway.redaction import patterns as pat

__all__ = [
    "TRUSTED_FIELDS",
    "Pseudonymizer",
    "RedactionProcessor",
    "Redactor",
    "pseudonymize",
    "truncate_ip",
]

# Gateway-produced fields whose values skip the pattern scan when they look safe (see
# RedactionProcessor). Add a field here only if the gateway itself generates its value.
TRUSTED_FIELDS = frozenset({"status", "duration_ms", "route", "method", "level", "timestamp", "request_id"})
# Trust rests on provenance: the shape check only stops free text (spaces, "@", quotes) that
# slipped into such a field. A request id taken from a client header must be validated to this
# shape by whoever accepts it, or the field must leave this set.
_TRUSTED_STR_RE = re.compile(r"[A-Za-z0-9_.:/-]{0,64}")
_TRUSTED_SCALARS = frozenset({int, float, bool})
_PSEUDONYM_RE = re.compile(r"u_[0-9a-f]{16}")

_SAFE_SCALARS = (float, bool, type(None), dt.datetime, dt.date, dt.time, dt.timedelta, uuid.UUID)


# SECURITY: PII logged as an int (a national id, a mobile number) — ints with as many digits as
# the digit gate (7, or the shortest id in patterns.NATIONAL_IDS) are scanned like text; smaller
# ones cannot hold a digit pattern and skip the scan. The bound follows the table, so a new,
# shorter national id is never skipped (a fixed 13-digit cut once let 923001234567, a Pakistani
# mobile without "+", through unmasked).
def _int_gate(digit_passes: pat.DigitPasses) -> int:
    """The smallest magnitude an int needs to hold a pattern: 10 ** (digits - 1)."""
    return 10 ** (digit_passes.gate_digits - 1)


_MAX_DEPTH = 32
_CACHE_LIMIT = 4096
_NUMBER_CHARS = "0123456789 \t-+.()/"
_CUT_AT = (" ", "\t", "\n", "\r", "&", ";", ",", '"', "'", "/", "?", "=")
_CLEAN_CACHE_MAX_LEN = 256


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

    def __init__(
        self,
        extra_keys: Iterable[str] = (),
        extra_patterns: Iterable[str] = (),
        max_scan: int = DEFAULT_MAX_SCAN,
        digit_passes: pat.DigitPasses = pat.DIGIT_PASSES,
    ) -> None:
        self._max_scan = max_scan
        self._digit_passes = digit_passes
        self.big_int = _int_gate(digit_passes)  # ints from this magnitude on are scanned
        self._extra_keys = tuple(words for words in map(pat.key_words, extra_keys) if words)
        self._extra_patterns = tuple(_compile_extra(i, p) for i, p in enumerate(extra_patterns))
        # key -> (masked?, key as shown); strings known to need no change. Both bounded:
        # keys and messages can come from clients (headers, query), so a flood only resets them.
        self._keys: dict[str, tuple[bool, str]] = {}
        self._clean: set[str] = set()
        # query -> its redacted form (which holds no value: every one is masked). Bounded like
        # the caches above; a client's query string repeats across its requests.
        self._queries: dict[str, str] = {}

    @classmethod
    def from_config(cls, config: RedactConfig) -> Redactor:
        """The redactor ``logging.redact`` describes."""
        return cls(config.extra_keys, config.extra_patterns, config.max_scan)

    def classify_key(self, key: str) -> tuple[bool, str]:
        """(whether the key's value is masked, the key itself with patterns masked)."""
        known = self._keys.get(key)
        if known is None:
            if len(self._keys) >= _CACHE_LIMIT:
                self._keys.clear()
            known = self._keys[key] = (
                pat.is_secret_key(pat.key_words(key), self._extra_keys),
                self.redact_text(key),
            )
        return known

    @property
    def clean_texts(self) -> AbstractSet[str]:
        """Texts known to need no change: a bounded cache, one set object for the redactor's
        life. Hot paths probe it before calling ``redact_text`` (a method call per field)."""
        return self._clean

    @property
    def known_queries(self) -> Mapping[str, str]:
        """Query strings already redacted → their redacted form (never empty): a bounded cache,
        one dict object for the redactor's life. Hot paths probe it before ``redact_query``."""
        return self._queries

    def is_masked_key(self, key: str) -> bool:
        return self.classify_key(key)[0]

    def redact_text(self, text: str) -> str:
        """Mask every pattern kind in free text, each with its own placeholder."""
        if text in self._clean:
            return text
        if len(text) > self._max_scan:
            # SECURITY: a request chooses what gets logged (path, query keys, headers in errors);
            # scanning is linear, and this bounds it per field so no line can stall the loop.
            return self._redact_overlong(text)
        out = text
        if not _is_pseudonym(text):
            for pattern in self._extra_patterns:
                out = pattern.sub(pat.EXTRA, out)
            out = pat.scan_builtin_patterns(out, self._digit_passes)
        if out == text and len(text) <= _CLEAN_CACHE_MAX_LEN:
            if len(self._clean) >= _CACHE_LIMIT:
                self._clean.clear()
            self._clean.add(text)
        return out

    def _redact_overlong(self, text: str) -> str:
        """The first ``max_scan`` characters, scanned, then a marker for the rest. The cut goes
        back to the last separator and before a trailing run of digit groups, so no value is
        kept cut in half (a card's first 12 digits, an address without its domain would escape
        the patterns)."""
        kept = text[: self._max_scan]
        if not text[self._max_scan].isspace():
            kept = kept[: max(map(kept.rfind, _CUT_AT)) + 1]
        # Digit groups run across separators ("4111 1111 1111 | 1111"): drop a trailing run.
        kept = kept.rstrip(_NUMBER_CHARS)
        return f"{self.redact_text(kept)}…[truncated {len(text) - len(kept)} chars]"

    def redact_value(self, obj: object, _depth: int = 0) -> Any:
        """Return a copy of ``obj`` safe to log: masked keys at any depth, patterns in strings."""
        kind = type(obj)
        if kind is str:
            return self.redact_text(obj)  # type: ignore[arg-type]
        if kind is int:
            big = self.big_int
            return obj if -big < obj < big else self._redact_big_int(obj)  # type: ignore[operator]
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
        known = self._queries.get(query)
        if known is not None:
            return known
        shown = self._redact_query(query)
        if len(query) <= _CLEAN_CACHE_MAX_LEN:
            if len(self._queries) >= _CACHE_LIMIT:
                self._queries.clear()
            self._queries[query] = shown
        return shown

    def _redact_query(self, query: str) -> str:
        prefix = "?" if query.startswith("?") else ""
        parts = []
        for field in query[len(prefix) :].split("&"):
            key, equals, value = field.partition("=")
            shown = self.redact_text(key)
            if shown == key and ("%" in key or "+" in key):
                # SECURITY: "ali%40mail.com", "0300+1234567" hide PII from the scan until decoded.
                decoded = unquote_plus(key)
                masked = self.redact_text(decoded)
                shown = key if masked == decoded else masked
            if not equals:
                parts.append(shown)  # a bare "?flag" is shown as a (pattern-masked) key
            else:
                parts.append(f"{shown}={pat.MASK if value else ''}")
        return prefix + "&".join(parts)


def _is_pseudonym(text: str) -> bool:
    # Our own pseudonyms are scanned often (one per user) and are safe by construction; skipping
    # them also keeps hex that happens to look like a phone from being mangled. SECURITY: an
    # all-digit body could be a card written as "u_<digits>", so that one is still scanned.
    return (
        len(text) == 18
        and text[:2] == "u_"
        and _PSEUDONYM_RE.fullmatch(text) is not None
        and not text[2:].isdigit()
    )


def _is_trusted_str(text: str) -> bool:
    # SECURITY: a JWT or a WooCommerce key fits the identifier shape; both are cheap to rule out
    # with substring checks, so neither rides through a trusted field unscanned.
    if len(text) > 64 or not text.isascii():
        return False
    if text.isalnum():  # "GET", "info": fits the shape below, without a regex call
        return True
    return (
        _TRUSTED_STR_RE.fullmatch(text) is not None
        and "eyJ" not in text
        and ("_" not in text or ("k_" not in text and "s_" not in text))
    )


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
        self._shaped: set[str] = set()  # trusted-field values already shape-checked (route, method)

    def _trusted_shape(self, text: str) -> bool:
        if not _is_trusted_str(text):
            return False
        if len(self._shaped) >= _CACHE_LIMIT:
            self._shaped.clear()
        self._shaped.add(text)
        return True

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        if "exc_info" in event_dict:
            event_dict = format_exc_info(logger, method_name, event_dict)
        # Runs for every log line: the cache look-ups that redact_text/classify_key start with
        # are inlined, so a typical access line costs dict and set probes, not method calls.
        redactor = self._redactor
        trusted, keys, clean, shaped = self._trusted, redactor._keys, redactor._clean, self._shaped
        big = redactor.big_int
        out: EventDict = {}
        for key, value in event_dict.items():
            kind = type(value)
            if key in trusted and (
                kind in _TRUSTED_SCALARS or (kind is str and (value in shaped or self._trusted_shape(value)))
            ):
                out[key] = value
                continue
            masked, shown = keys.get(key) or redactor.classify_key(key)
            if masked:
                out[shown] = pat.MASK
            elif kind is str:
                out[shown] = value if value in clean else redactor.redact_text(value)
            elif kind is float or (kind is int and -big < value < big):
                out[shown] = value
            else:
                out[shown] = redactor.redact_value(value)
        return out


class Pseudonymizer:
    """Keyed pseudonym of a user id: ``u_`` + 16 hex chars of HMAC-SHA256. Key prepared once."""

    __slots__ = ("_known", "_mac")

    def __init__(self, key: bytes) -> None:
        # SECURITY: a short or empty key makes pseudonyms a plain hash, reversible by hashing
        # every known user id; require at least 128 bits.
        if len(key) < 16:
            raise ValueError("pseudonymization key must be at least 16 bytes")
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self._known: dict[str, str] = {}  # active users repeat; an HMAC costs ~2 µs

    @property
    def known(self) -> Mapping[str, str]:
        """Pseudonyms computed so far (bounded; one dict object for the pseudonymizer's life):
        hot paths probe it before calling."""
        return self._known

    def __call__(self, value: str) -> str:
        known = self._known.get(value)
        if known is None:
            mac = self._mac.copy()
            mac.update(value.encode("utf-8", "surrogatepass"))
            if len(self._known) >= _CACHE_LIMIT:
                self._known.clear()
            known = self._known[value] = "u_" + mac.hexdigest()[:16]
        return known

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
