"""Streaming export of a trail as JSON, CSV or XML (SPEC §11, Appendix B).

Every format is produced record by record and handed out in chunks of about ``CHUNK_SIZE``
bytes, so a million-record export runs in constant memory.

- JSON: an array with one record per line (``[``, ``{...},``, ..., ``]``), each record exactly
  as stored (Appendix B order). ``audit verify --file`` streams this layout back. A stored
  record that is not JSON at all is left out, which the offline verify reports as a seq gap.
- CSV: a header row with the Appendix B columns; ``details`` as JSON; null as an empty cell.
  Formula-safe (Appendix C): a cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a
  CR — or with ``'`` itself, or an empty string — gets one ``'`` in front, so a spreadsheet
  shows it as text. The rule is invertible: a cell starting with ``'`` loses exactly one, an
  empty cell is null. ``audit verify --file`` undoes it before re-hashing (``csv_value``).
- XML: ``<audit tenant="…"><record seq="…"><seq>…</seq><time>…</time>…</record></audit>``,
  one child element per field, ``details`` as JSON text, null as ``xsi:nil="true"``. Characters
  XML 1.0 cannot carry at all (control characters other than tab/LF/CR, U+FFFE, U+FFFF,
  surrogates) are written as the six characters ``\\uXXXX``; inside ``details`` that is
  lossless (it is the JSON escape of the same character); in other fields it is a visible
  marker. CR is written as ``&#13;`` so parsers do not normalise it away.

Time filters: ``since`` and ``until`` are inclusive and accept RFC 3339 timestamps (with an
offset or ``Z``) or Unix seconds; records are compared at their millisecond precision.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import orjson

from gateway.audit.record import FIELDS, format_time

FORMATS = ("json", "csv", "xml")
CONTENT_TYPES = {"json": "application/json", "csv": "text/csv; charset=utf-8", "xml": "application/xml"}
CHUNK_SIZE = 64 * 1024
_UNIX_RE = re.compile(r"[+-]?\d{1,12}(\.\d{1,9})?")
_XML_INVALID = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_XSI = "http://www.w3.org/2001/XMLSchema-instance"


def parse_time_bound(value: str | float | None, *, name: str = "time bound") -> float | None:
    """Unix seconds for an RFC 3339 timestamp or a Unix-seconds number/string; None stays None.

    ValueError with a message fit for an operator (``name`` says which parameter)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected RFC 3339 or Unix seconds, not a boolean")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        seconds = float(text) if _UNIX_RE.fullmatch(text) else _parse_rfc3339(text, name)
    else:
        raise ValueError(f"{name}: expected RFC 3339 or Unix seconds")
    if not math.isfinite(seconds) or abs(seconds) > 253402300799:  # up to 9999-12-31
        raise ValueError(f"{name}: out of range")
    return seconds


def _parse_rfc3339(text: str, name: str) -> float:
    hint = "expected RFC 3339 like 2026-11-27T19:02:40Z or Unix seconds like 1795806160"
    if len(text) > 40 or len(text) < 11 or text[10] not in "Tt ":
        raise ValueError(f"{name}: {hint}")
    normalized = text[:10] + "T" + text[11:]  # RFC 3339 allows "t", and a space by its note
    if normalized[-1] in "zZ":
        normalized = normalized[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(normalized)
    except ValueError:
        raise ValueError(f"{name}: {hint}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{name}: RFC 3339 needs a UTC offset or Z, e.g. 2026-11-27T19:02:40Z")
    return parsed.timestamp()


def time_filter(since: float | None, until: float | None) -> Callable[[Any], bool]:
    """A predicate on a record's ``time``; compares our fixed-width strings, so no parsing per
    record. Bounds are rounded to whole milliseconds toward inclusion of exact matches only."""
    low = high = None
    if since is not None:
        micros = round(since * 1_000_000)  # exact to the microsecond for any real date
        low = format_time(-(-micros // 1000) / 1000)  # ceil to a whole millisecond
    if until is not None:
        high = format_time((round(until * 1_000_000) // 1000) / 1000)  # floor

    def keep(time: Any) -> bool:
        if not isinstance(time, str):
            return low is None and high is None
        return (low is None or time >= low) and (high is None or time <= high)

    return keep


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else _json_text(value)


# SECURITY: formula injection — a ``sub`` chosen by one tenant's IdP lands in another tenant's
# trail (tenant.mismatch) and would run as a formula in the victim's spreadsheet.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")
TEXT_MARK = "'"


def csv_cell(value: Any) -> str:
    """One CSV cell: null empty, non-strings as JSON, text marked when a spreadsheet would not
    take it as plain text (or when the mark itself, or emptiness, would be ambiguous)."""
    if value is None:
        return ""
    text = _cell(value)
    return TEXT_MARK + text if not text or text.startswith(_FORMULA_STARTS) else text


def csv_value(cell: str) -> str | None:
    """The inverse of ``csv_cell`` up to JSON: null for an empty cell, the text without its mark."""
    if not cell:
        return None
    return cell[1:] if cell.startswith(TEXT_MARK) else cell


def _xml_safe(text: str) -> str:
    return _XML_INVALID.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _xml_field(field: str, value: Any) -> str:
    if value is None:
        return f'<{field} xsi:nil="true"/>'
    text = _xml_safe(_cell(value))
    return f"<{field}>{escape(text, {chr(13): '&#13;'})}</{field}>"


def _xml_record(rec: dict[str, Any]) -> str:
    seq = quoteattr(_xml_safe(_cell(rec.get("seq"))))
    children = "".join(_xml_field(f, rec.get(f)) for f in FIELDS)
    return f"<record seq={seq}>{children}</record>\n"


class _Chunker:
    """Collect small pieces and release them in chunks of about ``CHUNK_SIZE`` bytes."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, data: bytes) -> bytes | None:
        self._parts.append(data)
        self._size += len(data)
        if self._size < CHUNK_SIZE:
            return None
        return self.flush()

    def flush(self) -> bytes:
        out = b"".join(self._parts)
        self._parts, self._size = [], 0
        return out


async def render(
    records: AsyncIterator[dict[str, Any]],
    *,
    tenant: str,
    fmt: str,
    keep: Callable[[Any], bool],
    close_on: str | None = None,
) -> AsyncIterator[bytes]:
    """``records`` (decoded, in seq order) filtered by ``keep(time)``, rendered as ``fmt``.

    ``close_on`` (an event name: the audit anchor's): once a record was written, records are
    written on, whatever their time, until one of that event: the export never ends (or breaks
    off) between two signatures."""
    chunker = _Chunker()
    if fmt == "json":
        head, sep, tail = b"[\n", b",\n", b"\n]\n"
    elif fmt == "xml":
        head = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<audit tenant={quoteattr(_xml_safe(tenant))} xmlns:xsi={quoteattr(_XSI)}>\n"
        ).encode()
        sep, tail = b"", b"</audit>\n"
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(FIELDS)
        head, sep, tail = buffer.getvalue().encode(), b"", b""
    chunker.add(head)
    first = True
    open_tail = False  # a record was written and no ``close_on`` record after it yet
    async for rec in records:
        if not (keep(rec.get("time")) or open_tail):
            continue
        open_tail = close_on is not None and rec.get("event") != close_on
        if fmt == "json":
            # The record as stored, every key included: an export must not hide an added field.
            body = orjson.dumps(rec)
        elif fmt == "xml":
            body = _xml_record(rec).encode()
        else:
            buffer.seek(0)
            buffer.truncate()
            writer.writerow([csv_cell(rec.get(f)) for f in FIELDS])
            body = buffer.getvalue().encode()
        chunk = chunker.add(body if first else sep + body)
        first = False
        if chunk is not None:
            yield chunk
    if fmt == "json" and first:
        tail = b"]\n"  # "[\n]\n": an empty array
    chunker.add(tail)
    last = chunker.flush()
    if last:
        yield last
