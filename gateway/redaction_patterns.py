"""The pattern table behind log redaction (SPEC §11): regexes, validators, placeholders.

Kinds are scanned in separate passes (see ``Redactor.redact_text``) so that a candidate one
kind rejects (a 16-digit number that fails Luhn) never hides a different kind overlapping it.
Within a pass, alternatives are combined into one regex. Boundaries are "not a letter or
digit" rather than ``\\b`` because ``_`` is a word character and ``x_0300-1234567`` must
still be caught.
"""

from __future__ import annotations

import re

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

_NOT_ALNUM_BEFORE = r"(?<![A-Za-z0-9])"
_B64URL = r"[A-Za-z0-9_-]"

# Pass 1: credentials. None needs a checksum, so first match wins. Before e-mail, so an
# address-like prefix ("x@a.Bearer …") cannot swallow the word that marks a credential.
TOKEN_RE = re.compile(
    # SECURITY: credentials in Authorization-style text. "Token-ish" (a digit, inner
    # punctuation, or 16+ chars) so prose such as "missing bearer token" stays readable.
    rf"(?P<bearer>{_NOT_ALNUM_BEFORE}(?P<scheme>(?i:bearer|basic))[ \t]+"
    r"(?=[A-Za-z0-9._~+/-]{16}|[A-Za-z]*[0-9]|[A-Za-z0-9]*[.~+/-][A-Za-z0-9])"
    r"[A-Za-z0-9._~+/-]+=*)"
    # SECURITY: JWT/JWS/JWE (base64url JSON header always starts "eyJ"); no boundary on the
    # left so a token glued to other text is still masked from its header on.
    rf"|(?P<jwt>eyJ{_B64URL}+\.{_B64URL}+(?:\.{_B64URL}*){{1,3}})"
    # SECURITY: WooCommerce REST consumer key/secret, the ERP's API credentials.
    r"|(?P<wckey>c[ks]_[0-9a-fA-F]{40})"
    # SECURITY: "password=…", '"token": "…"', "Authorization: Basic …" inside free text (a raw
    # body, a URL in an error message). "code" only as a whole word followed by "=", so
    # "status_code=404" and "error code: 5" survive while "?code=…" (OAuth) does not.
    r"|(?P<kv>(?:(?i:pass(?:word|wd|phrase)|token|secret|api[_-]?key|authorization|cookie|otp"
    r"|recovery[_-]?codes?)[\"']?[ \t]*[:=][ \t]*[\"']?|(?<![A-Za-z0-9_])(?i:code)=)"
    r"(?P<kvval>(?:(?i:bearer|basic)[ \t]+)?[^\s\"'&,;}]+))"
)
TOKEN_PLACEHOLDERS = {"jwt": JWT, "wckey": WC_KEY}

# Pass 2: e-mail, also percent-encoded ("%40") as it appears in logged paths.
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+(?:@|%40)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")

# Pass 3: IBAN candidates (ISO 13616): country, check digits, then 11-30 alphanumerics in
# optional groups separated by single spaces; confirmed by length table + mod-97 in code.
IBAN_RE = re.compile(rf"{_NOT_ALNUM_BEFORE}[A-Za-z]{{2}}[0-9]{{2}}(?: ?[A-Za-z0-9]){{11,30}}")

# Pass 4: dashed CNIC and phone numbers. Each ends where no further digit follows.
NUMBER_RE = re.compile(
    rf"{_NOT_ALNUM_BEFORE}(?:"
    r"(?P<cnic>[0-9]{5}[ -][0-9]{7}[ -][0-9])"
    # E.164: "+", country code, 8-15 digits, loose grouping ("+1 (415) 555-2671").
    r"|(?P<e164>\+[1-9](?:[ .()-]{0,2}[0-9]){7,14})"
    # Pakistan: 0092 3xx…, bare 92 3xx…, national 03xx-xxxxxxx.
    r"|(?P<pk>(?:00[ -]?)?92[ -]?3(?:[ -]?[0-9]){9}|03[0-9]{2}(?:[ -]?[0-9]){7})"
    # Bangladesh: 00880 1x…, bare 880 1x…, national 01x (11 digits).
    r"|(?P<bd>(?:00[ -]?)?880[ -]?1[3-9](?:[ -]?[0-9]){8}|01[3-9](?:[ -]?[0-9]){8})"
    r")(?![0-9])"
)
NUMBER_PLACEHOLDERS = {"cnic": CNIC, "e164": PHONE, "pk": PHONE, "bd": PHONE}

# Pass 5: digit runs that could hold a card or a bare CNIC: groups of 3+ digits joined by one
# space or dash, at least 13 digits in all (the lookahead keeps ordinary numbers off the
# Python callback). Which groups form a card is decided by Luhn in code.
DIGITS_RE = re.compile(rf"{_NOT_ALNUM_BEFORE}(?=[0-9](?:[ -]?[0-9]){{12}})[0-9]{{3,}}(?:[ -][0-9]{{3,}})*")
DIGIT_GROUP_RE = re.compile(r"[0-9]+")

# Fast path: a string matching none of these cannot contain any built-in kind.
HINT_RE = re.compile(r"[0-9]{2}|@|%40|eyJ|c[ks]_|(?i:bearer|basic|pass|token|secret|key|auth|cookie)")
# Passes 3-5 all need digits.
HAS_DIGITS_RE = re.compile(r"[0-9]{2}")

# Registered IBAN lengths (ISO 13616 registry, incl. the partial/experimental African ones).
# SECURITY: an exact length per country keeps mod-97 (1 in 97 random strings pass) precise.
IBAN_LENGTHS: dict[str, int] = {
    **dict.fromkeys(["NO"], 15),
    **dict.fromkeys(["BE"], 16),
    **dict.fromkeys(["DK", "FI", "FO", "GL", "NL", "SD", "FK"], 18),
    **dict.fromkeys(["MK", "SI"], 19),
    **dict.fromkeys(["AT", "BA", "EE", "KZ", "LT", "LU", "MN", "XK"], 20),
    **dict.fromkeys(["CH", "HR", "LI", "LV"], 21),
    **dict.fromkeys(["BG", "BH", "CR", "DE", "GB", "GE", "IE", "ME", "RS", "VA"], 22),
    **dict.fromkeys(["AE", "GI", "IL", "IQ", "OM", "SO", "TL"], 23),
    **dict.fromkeys(["AD", "CZ", "ES", "MD", "PK", "RO", "SA", "SE", "SK", "TN", "VG"], 24),
    **dict.fromkeys(["LY", "PT", "ST", "AO", "CV", "GW", "MZ"], 25),
    **dict.fromkeys(["IS", "TR", "DZ", "IR"], 26),
    **dict.fromkeys(
        ["BI", "DJ", "FR", "GR", "IT", "MC", "MR", "SM", "CM", "CG", "GA", "GQ", "TD", "CF", "KM", "MG"],
        27,
    ),
    **dict.fromkeys(["GF", "GP", "MQ", "RE", "PF", "TF", "YT", "NC", "PM", "WF", "BL", "MF"], 27),
    **dict.fromkeys(["AL", "AZ", "BY", "CY", "DO", "GT", "HU", "LB", "NI", "PL", "SV"], 28),
    **dict.fromkeys(["BJ", "BF", "CI", "ML", "SN", "NE", "TG", "HN", "MA"], 28),
    **dict.fromkeys(["BR", "EG", "PS", "QA", "UA"], 29),
    **dict.fromkeys(["JO", "KW", "MU", "YE"], 30),
    **dict.fromkeys(["MT", "SC"], 31),
    **dict.fromkeys(["LC"], 32),
    **dict.fromkeys(["RU"], 33),
}

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
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum():
        return False
    rearranged = (compact[4:] + compact[:4]).translate(_IBAN_DIGITS)
    return rearranged.isdigit() and int(rearranged) % 97 == 1


def scan_builtin_patterns(text: str) -> str:
    """Mask every built-in kind in ``text``; returns ``text`` itself when nothing matched."""
    if HINT_RE.search(text) is None:
        return text  # fast path: no digits pair, "@", "eyJ", key prefix or secret word
    text = TOKEN_RE.sub(_token_repl, text)
    if "@" in text or "%40" in text:
        text = EMAIL_RE.sub(EMAIL, text)
    if HAS_DIGITS_RE.search(text) is not None:
        text = _mask_ibans(text)
        text = NUMBER_RE.sub(_number_repl, text)
        text = DIGITS_RE.sub(_digits_repl, text)
    return text


def _token_repl(match: re.Match[str]) -> str:
    # lastgroup names the innermost group for nested alternatives, so test those directly.
    placeholder = TOKEN_PLACEHOLDERS.get(match.lastgroup or "")
    if placeholder is not None:
        return placeholder
    if match.start("kvval") >= 0:  # keep "password=" / '"token": "', mask only the value
        return match.string[match.start() : match.start("kvval")] + MASK
    return f"{match.group('scheme')} {BEARER}"


def _number_repl(match: re.Match[str]) -> str:
    return NUMBER_PLACEHOLDERS[match.lastgroup or ""]


def _mask_ibans(text: str) -> str:
    # A manual search loop rather than re.sub: when a candidate fails, the real IBAN may start
    # at its next group ("AB12 GB82 WEST…"), which re.sub would already have skipped.
    parts, done, pos = [], 0, 0
    while (match := IBAN_RE.search(text, pos)) is not None:
        length = _iban_length(match.group())
        if length:
            parts += (text[done : match.start()], IBAN)
            done = pos = match.start() + length
        else:
            space = text.find(" ", match.start(), match.end())
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


def _digits_repl(match: re.Match[str]) -> str:
    return _mask_digit_run(match.group())


def _mask_digit_run(run: str) -> str:
    """Mask each card/CNIC made of whole digit groups in a run of digit groups.

    Windows are aligned to groups so a card next to other numbers ("qty 3 4111 1111 1111
    1111") is still found, while one long non-Luhn number is left alone.
    """
    groups = [(g.start(), g.end()) for g in DIGIT_GROUP_RE.finditer(run)]
    parts, done, first = [], 0, 0
    while first < len(groups):
        found = _window_at(run, groups, first)
        if found is None:
            first += 1
            continue
        last, placeholder = found
        parts += (run[done : groups[first][0]], placeholder)
        done, first = groups[last][1], last + 1
    return "".join(parts) + run[done:] if parts else run


def _window_at(run: str, groups: list[tuple[int, int]], first: int) -> tuple[int, str] | None:
    total, lasts = 0, []
    for last in range(first, len(groups)):
        total += groups[last][1] - groups[last][0]
        if total > 19:
            break
        if total >= 13:
            lasts.append(last)
    for last in reversed(lasts):  # the longest candidate first
        digits = "".join(run[a:b] for a, b in groups[first : last + 1])
        if first == last and len(digits) == 13 and digits[0] in "1234567":
            return last, CNIC  # bare CNIC: 13 digits, the first is the province (1-7)
        if luhn_valid(digits):
            return last, CARD
    return None
