"""The tables behind log redaction (SPEC §11): the masked-key rule, pattern regexes, validators
and placeholders.

Kinds are scanned in separate passes (``scan_builtin_patterns``) so that a candidate one kind
rejects (a 16-digit number failing Luhn) never hides another kind overlapping it; within a
pass the alternatives share one regex. Boundaries are "not a letter or digit" rather than
``\\b``, because ``_`` is a word character and ``x_0300-1234567`` must still be caught.

Speed (this runs on every log line): every regex starts with a literal or a character class,
so ``re`` skips ahead to possible first characters instead of trying each alternative at each
position; boundary look-behinds therefore sit *after* the first character. Credentials are
matched on a lower-cased copy for the same reason (no case-insensitive alternation), and the
digit passes only run when the text holds 7 digits close together (fewer only if a national
id in ``NATIONAL_IDS`` is shorter).

To mask a new national id, add one row to ``NATIONAL_IDS`` below: the digit passes, the digit
gate and the processor's integer gate are all built from that table.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

MASK = "[REDACTED]"  # values of masked keys and query-string values
EMAIL = "[email]"
PHONE = "[phone]"
CARD = "[card]"
CNIC = "[cnic]"
IBAN = "[iban]"
JWT = "[jwt]"
BEARER = "[bearer]"
WC_KEY = "[wc-key]"
EXTRA = "[redacted]"  # matches of logging.redact.extra_patterns


# --- national ids: to add one, add a row to NATIONAL_IDS -----------------------------------
@dataclass(frozen=True, slots=True)
class NationalId:
    """A national id number, masked in free text and in logged integers alike.

    ``groups``: its digit groups as written with separators (one space or dash between them);
    the digits written without separators are matched too, as a whole run of their own.
    ``first``: the digits a run *without* separators may start with (a bare run is the more
    ambiguous form). ``check``: its checksum, if it has one (``luhn_valid``-like).
    """

    placeholder: str
    groups: tuple[int, ...]
    first: str = "0123456789"
    check: Callable[[str], bool] | None = None

    @property
    def digits(self) -> int:
        return sum(self.groups)


NATIONAL_IDS: tuple[NationalId, ...] = (
    # Pakistan CNIC 35202-1234567-1; without dashes the first digit is the province (1-7).
    NationalId(CNIC, (5, 7, 1), first="1234567"),
)

# --- masked keys -------------------------------------------------------------------------
# Masked-key rule (a key's *value* becomes ``[REDACTED]``). The key is normalised first:
# camelCase is split, ``-``/``.``/spaces become ``_``, everything is lower-cased, giving words
# (``X-Api-Key`` -> ``x api key``) and a compact form with the separators dropped (``xapikey``).
# The key is masked when any of these holds:
#
# 1. the compact form *contains* a distinctive secret word: ``password``, ``passwd``,
#    ``passphrase``, ``token``, ``secret``, ``authorization``, ``cookie``, ``apikey``,
#    ``privatekey``, ``consumerkey``, ``otpauth`` (so ``db_password``, ``totp_secret``,
#    ``x_api_key``, ``Set-Cookie``, ``refreshToken``, ``consumer_secret`` are all masked);
# 2. a word ends in ``otp``/``otps`` (``otp``, ``totp``, ``sms_otp``); never a mere substring,
#    because ``footprint`` contains "otp";
# 3. a word is ``code``/``codes`` and the word right before it is not a known non-secret
#    qualifier (``status``, ``error``, ``http``, ``country``, …, see ``_SAFE_CODE_QUALIFIERS``):
#    ``code``, ``recovery_code``, ``mfa_code``, ``code_verifier`` are masked, ``status_code``,
#    ``error_code``, ``countryCode`` are not; or a word is a secret prefix glued to ``code``
#    (``authcode``, ``otpcode``, ``passcode``, ``recoverycodes``);
# 4. a word is ``key``/``keys`` right after a secret qualifier (``signing_key``, ``hmac_key``,
#    ``access_key``), so ``cache_key``/``key_id`` stay readable;
# 5. an ``extra_keys`` entry, normalised the same way, occurs as whole consecutive words
#    (``iban`` masks ``customer_iban`` and ``ibanNumber`` but ``pin`` does not mask ``shipping``).
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
    "reset", "confirm", "login", "security", "access", "oauth", "pass",
))  # fmt: skip
_SECRET_KEY_QUALIFIERS = frozenset((
    "private", "secret", "signing", "hmac", "encryption", "master", "api", "consumer", "session",
    "shared", "access", "client",
))  # fmt: skip
_CAMEL_RE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NON_WORD_RE = re.compile(r"[^a-z0-9]+")


def key_words(key: str) -> tuple[str, ...]:
    """``"X-Api-Key"`` -> ``("x", "api", "key")``; ``"HTTPStatusCode"`` -> ``("http", "status", "code")``."""
    return tuple(w for w in _NON_WORD_RE.split(_CAMEL_RE.sub("_", key).lower()) if w)


def _contains_run(words: tuple[str, ...], run: tuple[str, ...]) -> bool:
    size = len(run)
    return any(words[i : i + size] == run for i in range(len(words) - size + 1))


def is_secret_key(words: tuple[str, ...], extra: tuple[tuple[str, ...], ...]) -> bool:
    """The masked-key rule above, for a key already split by ``key_words``."""
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


# --- patterns ----------------------------------------------------------------------------
_KV = r"[\"']?[ \t]*[:=][ \t]*[\"']?(?:(?:bearer|basic)[ \t]+)?[^\s\"'&,;}]+"
# Pass 1, on the lower-cased text: credentials. No checksum, so the first match wins; before
# e-mail so an address-like prefix ("x@a.Bearer …") cannot swallow the word marking one.
CREDENTIAL_RE = re.compile(
    # SECURITY: Authorization-style credentials. "Token-ish" (a digit, inner punctuation or
    # 16+ chars) so prose such as "missing bearer token" stays readable.
    r"b(?<![a-z0-9]b)(?:earer|asic)[ \t]+"
    r"(?=[a-z0-9._~+/-]{16}|[a-z]*[0-9]|[a-z0-9]*[.~+/-][a-z0-9])[a-z0-9._~+/-]+=*"
    # SECURITY: WooCommerce REST consumer key/secret, the ERP's API credentials.
    r"|c[ks]_[0-9a-f]{40}"
    # SECURITY: "password=…", '"token": "…"', "Authorization: Basic …" in free text (a raw
    # body, a URL in an error). "code" only as a whole word before "=", so "status_code=404"
    # and "error code: 5" survive while "?code=…" (OAuth) does not.
    rf"|pass(?:word|wd|phrase){_KV}|token{_KV}|secret{_KV}|api[_-]?key{_KV}|authorization{_KV}"
    rf"|cookie{_KV}|otp{_KV}|recovery[_-]?codes?{_KV}|code(?<![a-z0-9_]code)={_KV[_KV.index('(?:(?:') :]}"
)
# SECURITY: JWT/JWS/JWE: the base64url JSON header always starts "eyJ". No left boundary, so a
# token glued to other text is still masked from its header on. Matched only at an "eyJ" by
# ``mask_jwts``, which skips the rest of a segment when a start fails (a later "eyJ" in the same
# segment has the same continuation): as a searching regex, "eyJeyJeyJ…" cost quadratic time.
JWT_RE = re.compile(r"eyj[a-z0-9_-]+\.[a-z0-9_-]+(?:\.[a-z0-9_-]*){1,3}", re.IGNORECASE)
JWT_START_RE = re.compile(r"eyj", re.IGNORECASE)
JWT_SEGMENT_RE = re.compile(r"[a-z0-9_-]*", re.IGNORECASE)
KV_VALUE_START_RE = re.compile(r"[:=][ \t]*[\"']?")

# Pass 2: e-mail, also percent-encoded ("%40") as it appears in logged paths. What is masked is
# what ``[A-Za-z0-9._%+-]+(?:@|%40)DOMAIN`` would match, but found from the anchors outward by
# ``mask_emails``: as one regex that scan tries every start position and runs each one to the
# end of the local-part run, quadratic on "aaaa…a@" (SECURITY: one 16 KB query key stalled the
# event loop for 2 s). Each piece below is matched at a fixed position, once per anchor.
EMAIL_ANCHOR_RE = re.compile(r"@|%40")
EMAIL_LOCAL_RUN_RE = re.compile(r"[A-Za-z0-9._%+-]+")
# Labels cannot hold ".", so the only backtracking is one label at a time: linear in the run
# of domain characters after the anchor, and those runs never overlap ("@" and "%" end them).
EMAIL_DOMAIN_RE = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")


# Pass 3: IBAN candidates (ISO 13616), found by their check digits (so the scan skips to
# digits): two letters at a boundary, two digits, then 11-30 alphanumerics in groups split by
# single spaces. The match starts at the first check digit; the country is the 2 chars before.
# Confirmed by the length table and mod-97 in code.
IBAN_RE = re.compile(r"[0-9](?<=(?<![A-Za-z0-9])[A-Za-z]{2}[0-9])[0-9](?: ?[A-Za-z0-9]){11,30}")

# Pass 4: national ids written in groups, and phone numbers. The first character is consumed
# by a shared class; each alternative checks it with a look-behind. Nothing may follow but a
# non-digit. The national-id alternatives come first, one named group each (``DigitPasses``).
_PHONE_ALTERNATIVES = (
    r"(?<=\+)[1-9](?:[ .()-]{0,2}[0-9]){7,14}"  # E.164, loose grouping "+1 (415) 555-2671"
    r"|(?<=0)0[ -]?92[ -]?3(?:[ -]?[0-9]){9}|(?<=9)2[ -]?3(?:[ -]?[0-9]){9}"  # 0092 3xx, 92 3xx
    r"|(?<=0)3[0-9]{2}(?:[ -]?[0-9]){7}"  # Pakistan national 03xx-xxxxxxx
    r"|(?<=0)0[ -]?880[ -]?1[3-9](?:[ -]?[0-9]){8}|(?<=8)80[ -]?1[3-9](?:[ -]?[0-9]){8}"  # 00880, 880
    r"|(?<=0)1[3-9](?:[ -]?[0-9]){8}"  # Bangladesh national 01x, 11 digits
)

# Pass 5: digit runs that could hold a card or a bare national id: groups of 3+ digits joined
# by one space or dash, 13+ digits in all (or the shortest national id's length; the look-ahead
# keeps ordinary numbers off the Python callback). Which groups form a card is decided by Luhn
# in code.
DIGIT_GROUP_RE = re.compile(r"[0-9]+")

# Registered IBAN lengths (ISO 13616 registry, incl. the partial/experimental African ones).
# SECURITY: an exact length per country keeps mod-97 (1 in 97 random strings pass) precise.
_IBAN_TABLE = """
15 NO | 16 BE | 18 DK FI FO GL NL SD FK | 19 MK SI | 20 AT BA EE KZ LT LU MN XK | 21 CH HR LI LV
22 BG BH CR DE GB GE IE ME RS VA | 23 AE GI IL IQ OM SO TL | 24 AD CZ ES MD PK RO SA SE SK TN VG
25 LY PT ST AO CV GW MZ | 26 IS TR DZ IR | 27 BI DJ FR GR IT MC MR SM CM CG GA GQ TD CF KM MG
27 GF GP MQ RE PF TF YT NC PM WF BL MF | 28 AL AZ BY CY DO GT HU LB NI PL SV BJ BF CI ML SN NE TG
28 HN MA | 29 BR EG PS QA UA | 30 JO KW MU YE | 31 MT SC | 32 LC | 33 RU
"""
IBAN_LENGTHS: dict[str, int] = {
    country: int(row.split()[0]) for row in _IBAN_TABLE.replace("\n", "|").split("|") if row.strip()
    for country in row.split()[1:]
}  # fmt: skip

# Letters A-Z become 10-35 for the mod-97 check.
_IBAN_DIGITS = str.maketrans({chr(c): str(c - 55) for c in range(ord("A"), ord("Z") + 1)})
_LUHN_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def luhn_valid(digits: str) -> bool:
    """True when ``digits`` (ASCII digits only) passes the Luhn checksum."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        total += _LUHN_DOUBLED[value] if index & 1 else value
    return total % 10 == 0


def iban_valid(compact: str) -> bool:
    """True for an upper-case, space-free IBAN of its country's length whose mod-97 is 1."""
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not (compact.isascii() and compact.isalnum()):
        return False
    rearranged = (compact[4:] + compact[:4]).translate(_IBAN_DIGITS)
    return rearranged.isdigit() and int(rearranged) % 97 == 1


def scan_builtin_patterns(text: str, digit_passes: DigitPasses | None = None) -> str:
    """Mask every built-in kind in ``text``; returns ``text`` itself when nothing matched.
    ``digit_passes``: those built from another national-id table (default: ``DIGIT_PASSES``)."""
    lowered = text.lower()
    if _may_hold_credential(lowered) and CREDENTIAL_RE.search(lowered) is not None:
        text = _mask_credentials(text, lowered)
    if "eyj" in lowered:
        text = mask_jwts(text)
    if "@" in text or "%40" in text:
        text = mask_emails(text)
    return (digit_passes or DIGIT_PASSES).mask(text)


def mask_jwts(text: str) -> str:
    """Replace each JWT (``JWT_RE``) with ``[jwt]``; linear (see ``JWT_RE``)."""
    parts: list[str]
    parts, done, pos = [], 0, 0
    while (start := JWT_START_RE.search(text, pos)) is not None:
        found = JWT_RE.match(text, start.start())
        if found is None:
            pos = JWT_SEGMENT_RE.match(text, start.start()).end()  # type: ignore[union-attr]
            continue
        parts += (text[done : found.start()], JWT)
        done = pos = found.end()
    return "".join(parts) + text[done:] if parts else text


def mask_emails(text: str) -> str:
    """Replace each e-mail address (``local@domain``, ``local%40domain``) with ``[email]``.

    Linear: anchors are visited left to right, the domain is matched at the anchor, and the
    local part is the run of local characters the anchor ends (found by one forward pass).
    Like the greedy regex, anchors chained inside one run ("a%40b.com%40c.org") make one match.
    """
    spans: list[list[int]] = []  # [start, end, start of the local run it began in]
    runs = EMAIL_LOCAL_RUN_RE.finditer(text)
    run = next(runs, None)
    for anchor in EMAIL_ANCHOR_RE.finditer(text):
        at, after = anchor.span()
        domain = EMAIL_DOMAIN_RE.match(text, after)
        if domain is None or at == 0:
            continue
        while run is not None and run.end() < at:  # the run holding text[at - 1], if any
            run = next(runs, None)
        if run is None or run.start() >= at:
            continue
        if spans and spans[-1][2] == run.start():
            spans[-1][1] = domain.end()  # the same local run: the greedy match extends
            continue
        start = max(run.start(), spans[-1][1] if spans else 0)
        if start < at:
            spans.append([start, domain.end(), run.start()])
    if not spans:
        return text
    parts: list[str]
    parts, done = [], 0
    for start, end, _ in spans:
        parts += (text[done:start], EMAIL)
        done = end
    return "".join(parts) + text[done:]


def _may_hold_credential(lowered: str) -> bool:
    # Substring probes are several times cheaper than one regex scan, and most lines fail them.
    return (
        "eyj" in lowered
        or "k_" in lowered
        or "s_" in lowered
        or "bearer" in lowered
        or "basic" in lowered
        or (("=" in lowered or ":" in lowered) and any(word in lowered for word in _KV_WORDS))
    )


_KV_WORDS = ("pass", "token", "secret", "key", "authorization", "cookie", "otp", "code")


def _mask_credentials(text: str, lowered: str) -> str:
    if len(lowered) != len(text):
        # A few non-ASCII letters change length when lower-cased, so spans found in the copy
        # would not fit; fall back to a case-insensitive scan of the text itself.
        return _CREDENTIAL_RE_I.sub(lambda m: _credential_placeholder(m.group(), m.group().lower()), text)
    parts: list[str]
    parts, done = [], 0
    for match in CREDENTIAL_RE.finditer(lowered):
        start, end = match.span()
        parts += (text[done:start], _credential_placeholder(text[start:end], match.group()))
        done = end
    return "".join(parts) + text[done:]


_CREDENTIAL_RE_I = re.compile(CREDENTIAL_RE.pattern, re.IGNORECASE)


def _credential_placeholder(original: str, lowered: str) -> str:
    if lowered.startswith(("bearer", "basic")):
        return f"{original.split(None, 1)[0]} {BEARER}"  # keep the scheme as written
    if lowered.startswith("eyj"):
        return JWT
    if lowered[2:3] == "_" and lowered[:2] in ("ck", "cs"):
        return WC_KEY
    value = KV_VALUE_START_RE.search(original)  # keep "password=" / '"token": "'
    return original[: value.end()] + MASK if value else MASK


def _mask_ibans(text: str) -> str:
    # A manual search loop rather than re.sub: when a candidate fails, the real IBAN may start
    # at its next group ("AB12 GB82 WEST…"), which re.sub would already have skipped.
    parts: list[str]
    parts, done, pos = [], 0, 0
    while (match := IBAN_RE.search(text, pos)) is not None:
        start = match.start() - 2  # the country code before the check digits
        length = _iban_length(text[start : match.end()])
        if length:
            parts += (text[done:start], IBAN)
            done = pos = start + length
        else:
            space = text.find(" ", start, match.end())
            pos = space + 1 if space >= 0 else match.end()
    return "".join(parts) + text[done:] if parts else text


def _iban_length(candidate: str) -> int:
    """Characters (spaces included) of the valid IBAN ``candidate`` starts with, else 0."""
    length = IBAN_LENGTHS.get(candidate[:2].upper())
    if length is None:
        return 0
    seen = 0
    for end, char in enumerate(candidate, 1):
        seen += char != " "
        if seen == length:
            return end if iban_valid(candidate[:end].replace(" ", "").upper()) else 0
    return 0


_CARD_DIGITS = (13, 19)  # card numbers (PANs) are 13 to 19 digits long
_PHONE_DIGITS = 7  # the shortest phone form above (E.164 "+1" + 7) holds 7+ digits


class DigitPasses:
    """Passes 3-5 of ``scan_builtin_patterns`` (IBANs, grouped ids and phones, digit runs),
    compiled once from a national-id table; the gates follow the shortest id in it."""

    def __init__(self, national_ids: Iterable[NationalId]) -> None:
        ids = tuple(national_ids)
        shortest = min((nid.digits for nid in ids), default=_CARD_DIGITS[0])
        self.gate_digits = min(_PHONE_DIGITS, shortest)  # fewer digits than this: nothing to mask
        # Hold 7+ digits (or the shortest id's) at most a few characters apart.
        self._gate_re = re.compile(rf"[0-9](?:[^0-9]{{0,4}}[0-9]){{{self.gate_digits - 1}}}")
        grouped = [(f"nid{i}", nid) for i, nid in enumerate(ids) if len(nid.groups) > 1]
        self._grouped = dict(grouped)
        # Ids of 3+ digit groups can be the start of a card written in groups ("4111 1111 1111"
        # of "4111 1111 1111 1111"): then pass 5, which sees the same run, masks the card.
        self._card_prefixes = {name for name, nid in grouped if min(nid.groups) >= 3}
        alternatives = [
            rf"(?<=[0-9])(?P<{name}>[0-9]{{{nid.groups[0] - 1}}}"
            + "".join(rf"[ -][0-9]{{{size}}}" for size in nid.groups[1:])
            + ")"
            for name, nid in grouped
        ]
        self._number_re = re.compile(
            r"[0-9+](?<![A-Za-z0-9][0-9+])(?:"
            + "|".join((*alternatives, _PHONE_ALTERNATIVES))
            + r")(?![0-9])"
        )
        self._bare: dict[int, tuple[NationalId, ...]] = {}
        for nid in ids:
            self._bare[nid.digits] = (*self._bare.get(nid.digits, ()), nid)
        self._min_run = min(_CARD_DIGITS[0], shortest)
        self._max_run = max(_CARD_DIGITS[1], *(nid.digits for nid in ids))
        self._digits_re = re.compile(
            rf"[0-9](?<![A-Za-z0-9][0-9])(?=(?:[ -]?[0-9]){{{self._min_run - 1}}})"
            r"[0-9]{2,}(?:[ -][0-9]{3,})*"
        )
        # Bound once: re.sub takes them per call.
        self._number_repl = self._number_placeholder
        self._digits_repl = self._digit_run_placeholder

    def mask(self, text: str) -> str:
        encoded = text.encode("utf-8", "surrogatepass")
        if len(encoded) - len(encoded.translate(None, b"0123456789")) < self.gate_digits:
            return text
        if self._gate_re.search(text) is None:
            return text
        text = _mask_ibans(text)
        text = self._number_re.sub(self._number_repl, text)
        return self._digits_re.sub(self._digits_repl, text)

    def _number_placeholder(self, match: re.Match[str]) -> str:
        name = match.lastgroup
        if name is None:
            return PHONE
        nid = self._grouped[name]
        if name in self._card_prefixes and _starts_a_card(match):
            return match.group()
        if nid.check is not None and not nid.check(match.group(name).replace(" ", "").replace("-", "")):
            return match.group()
        return nid.placeholder

    def _digit_run_placeholder(self, match: re.Match[str]) -> str:
        return self._mask_digit_run(match.group())

    def _mask_digit_run(self, run: str) -> str:
        """Mask each card or national id made of whole digit groups in a run of digit groups.

        Windows are aligned to groups so a card next to other numbers ("qty 3 4111 1111 1111
        1111") is still found, while one long non-Luhn number is left alone.
        """
        groups = [(g.start(), g.end()) for g in DIGIT_GROUP_RE.finditer(run)]
        parts: list[str]
        parts, done, first = [], 0, 0
        while first < len(groups):
            found = self._window_at(run, groups, first)
            if found is None:
                first += 1
                continue
            last, placeholder = found
            parts += (run[done : groups[first][0]], placeholder)
            done, first = groups[last][1], last + 1
        return "".join(parts) + run[done:] if parts else run

    def _window_at(self, run: str, groups: list[tuple[int, int]], first: int) -> tuple[int, str] | None:
        total, lasts = 0, []
        for last in range(first, len(groups)):
            total += groups[last][1] - groups[last][0]
            if total > self._max_run:
                break
            if total >= self._min_run:
                lasts.append(last)
        for last in reversed(lasts):  # the longest candidate first
            digits = "".join(run[a:b] for a, b in groups[first : last + 1])
            if first == last:  # a national id without separators is a group of its own
                for nid in self._bare.get(len(digits), ()):
                    if digits[0] in nid.first and (nid.check is None or nid.check(digits)):
                        return last, nid.placeholder
            if _CARD_DIGITS[0] <= len(digits) <= _CARD_DIGITS[1] and luhn_valid(digits):
                return last, CARD
        return None


_GROUPS_AFTER_RE = re.compile(r"(?:[ -][0-9]{3,})+")


def _starts_a_card(match: re.Match[str]) -> bool:
    """Whether the digit groups right after ``match`` complete it into a Luhn-valid card."""
    after = _GROUPS_AFTER_RE.match(match.string, match.end())
    if after is None:
        return False
    digits = DIGIT_GROUP_RE.findall(match.group())
    for group in DIGIT_GROUP_RE.findall(after.group()):
        digits.append(group)
        joined = "".join(digits)
        if len(joined) > _CARD_DIGITS[1]:
            return False
        if len(joined) >= _CARD_DIGITS[0] and luhn_valid(joined):
            return True
    return False


DIGIT_PASSES = DigitPasses(NATIONAL_IDS)
