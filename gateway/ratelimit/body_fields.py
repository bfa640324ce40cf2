"""SPEC §8 / Appendix C: the body fields a rate limit or login protection counts, read so that
the gateway and any upstream framework cannot disagree about their value.

``counted_fields(content_type, body, names)`` returns the value of each counted name found in a
JSON object, a urlencoded form or a multipart form, or raises ``BadRequest`` when the body gives
a counted name more than one possible reading. Why refuse instead of picking one: frameworks
disagree (aiohttp's ``dict(await post())`` takes the first value, PHP and orjson the last,
aiohttp reads a ``filename=""`` part as a plain field, a part's own charset decodes differently),
and whichever the gateway picked, an attacker would put a decoy where the gateway looks and the
real guess where the upstream looks — a fresh counter per attempt and no lockout.

The rule, for counted names only (other fields are the upstream's business):
- any second occurrence of the name → 400 (JSON duplicate keys, ``a=1&a=2``, two parts; also
  PHP-style aliases such as ``username[]`` or ``user.name`` for ``user_name``);
- a JSON array or object as its value → 400 (several values in one);
- a multipart part under the name with a ``filename``/``filename*`` parameter (even empty), a
  repeated or RFC 2231-encoded ``name``, a charset other than UTF-8 (its own or the form's),
  a non-text content type, a transfer or content encoding, or bytes that are not UTF-8 → 400;
- a multipart body the parser finds defective (no boundary, unterminated) → 400.
Everything else keeps its lenient reading (declared charsets for JSON and urlencoded forms,
``NaN``, UTF-16/32 JSON, a JSON object sent under another type), as before.

Before any of that, ``counted_content_type`` refuses a body with two Content-Types and
``counted_body_limit`` says how much of it may be held in memory to be read at all.
"""

from __future__ import annotations

import email.errors
import email.policy
import email.utils
import json
from collections.abc import Iterable, Sequence
from email.message import Message
from email.parser import BytesParser
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from gateway.auth.webhooks import DEFAULT_MAX_BODY as WEBHOOK_MAX_BODY
from gateway.errors import BadRequest

if TYPE_CHECKING:
    from gateway.config.model import RouteConfig

_UTF8 = frozenset(("utf-8", "utf8"))
_PLAIN_TRANSFER = frozenset(("7bit", "8bit", "binary"))
_REFUSAL = "A rate-limited body field is ambiguous"  # one client-safe detail for every case


DEFAULT_MAX_BODY = 64 * 1024  # a login form or JSON body; routes may set max_body
# SECURITY: counted bodies are held in memory before any authentication; a route's large
# max_body (an upload route with a body: key) must not let a flood pin that much per request.
COUNTED_BODY_CAP = 1024 * 1024


class AmbiguousField(BadRequest):
    """A counted body field has more than one possible reading (Appendix C) → 400 bad-request."""


def counted_content_type(content_types: Sequence[str]) -> str:
    """The one Content-Type of a body whose fields are counted ("" without one)."""
    if len(content_types) > 1:
        # SECURITY: frameworks take the first or the last Content-Type: two readings of one body.
        raise BadRequest("A request with a rate-limited body has more than one Content-Type")
    return content_types[0] if content_types else ""


def counted_body_limit(route: RouteConfig | None) -> int:
    """How many body bytes may be read to count its fields on ``route``."""
    if route is None:
        return DEFAULT_MAX_BODY
    if route.auth == "webhook":  # it keeps its own default: the signature stage reuses the body
        return route.max_body or WEBHOOK_MAX_BODY
    return min(route.max_body or DEFAULT_MAX_BODY, COUNTED_BODY_CAP)


def counted_fields(content_type: str, body: bytes, names: frozenset[str]) -> dict[str, Any]:
    """The counted ``names`` present in ``body`` with their one value; raises ``AmbiguousField``.

    ``content_type`` is the whole header (charset and boundary included)."""
    if not names or not body:
        return {}
    header = _header("Content-Type", content_type or "application/octet-stream")
    mime = header.get_content_type()
    charset = _single_param(header, "charset")
    if mime == "application/x-www-form-urlencoded":
        return _form(body, charset, names)
    if mime == "multipart/form-data":
        _single_param(header, "boundary")  # the first or the last boundary: two bodies
        return _multipart(content_type, body, charset, names)
    return _json(body, charset, names)


def _header(name: str, value: str) -> Message:
    message = Message()
    message[name] = value
    return message


def _params(value: str) -> list[tuple[str, Any]]:
    """A header value's parameters in order, duplicates kept, RFC 2231 values as tuples."""
    return [(k.lower(), v) for k, v in _header("Content-Type", value).get_params(failobj=[])]


def _single_param(header: Message, param: str) -> str | None:
    values = [v for k, v in _params(str(header["Content-Type"])) if k == param]
    if len(values) > 1:  # SECURITY: parsers pick the first or the last duplicate parameter
        raise AmbiguousField(_REFUSAL)
    value = values[0] if values else None
    return value if isinstance(value, str) and value else None


def _aliases(name: str) -> str:
    """The name as PHP files it: ``a[x]`` under ``a``, spaces and dots as ``_``, no leading blanks."""
    base = name.lstrip(" ").split("[", 1)[0]
    return base.replace(" ", "_").replace(".", "_")


def _collect(pairs: Iterable[tuple[str, Any]], names: frozenset[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, value in pairs:
        key = name if name in names else _aliases(name)
        if key not in names:
            continue
        # SECURITY: decoy + real value (or an alias of the name): each reader picks another one.
        if key in found or name != key:
            raise AmbiguousField(_REFUSAL)
        if isinstance(value, list | dict):  # several values in one field
            raise AmbiguousField(_REFUSAL)
        found[key] = value
    return found


class _Pairs(list[tuple[str, Any]]):
    """A JSON object kept as its key/value pairs, so duplicate keys stay visible."""


def _json(body: bytes, charset: str | None, names: frozenset[str]) -> dict[str, Any]:
    """Parsed as leniently as Python upstreams parse (NaN, UTF-16/32 and BOM detection, or the
    declared charset); a body that is not a JSON object counts nothing."""
    try:
        text: str | bytes = body.decode(charset) if charset else body
        value = json.loads(text, object_pairs_hook=_Pairs)
    except (ValueError, LookupError, RecursionError):
        return {}
    if not isinstance(value, _Pairs):
        return {}
    return _collect(((k, list(v) if isinstance(v, _Pairs) else v) for k, v in value), names)


def _form(body: bytes, charset: str | None, names: frozenset[str]) -> dict[str, Any]:
    charset = charset or "utf-8"
    try:
        text = body.rstrip().decode(charset)
        pairs = parse_qsl(text, keep_blank_values=True, encoding=charset)
    except (UnicodeError, LookupError, ValueError):
        return {}
    return _collect(pairs, names)


def _multipart(content_type: str, body: bytes, charset: str | None, names: frozenset[str]) -> dict[str, Any]:
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    try:
        message = BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        parts = list(message.iter_parts())
    except (UnicodeError, LookupError, ValueError, TypeError, email.errors.MessageError):
        raise AmbiguousField(_REFUSAL) from None
    if not message.is_multipart() or _defective(message):
        raise AmbiguousField(_REFUSAL)  # SECURITY: the upstream's parser may recover differently
    pairs = []
    for part in parts:
        name = _part_name(part, names)
        if name is not None:
            pairs.append((name, _part_value(part, charset)))
    return _collect(pairs, names)


def _defective(message: Message) -> bool:
    return bool(message.defects) or any(part.defects for part in message.walk())


def _part_name(part: Message, names: frozenset[str]) -> str | None:
    """The part's field name, or None for a part no counted name can be read from."""
    dispositions = _raw(part, "content-disposition")
    params = [param for value in dispositions for param in _params(value)]
    raw = [v for k, v in params if k == "name"]
    candidates = {email.utils.collapse_rfc2231_value(v) for v in raw}
    if not any(c in names or _aliases(c) in names for c in candidates):
        return None
    # SECURITY: a second Content-Disposition, a second or encoded name, or a filename (aiohttp
    # reads ``filename=""`` as a plain field, others as a file) each allow two readings.
    if len(dispositions) != 1 or len(raw) != 1 or not isinstance(raw[0], str):
        raise AmbiguousField(_REFUSAL)
    if any(k == "filename" or k.startswith("filename*") for k, _ in params):
        raise AmbiguousField(_REFUSAL)
    return raw[0]


def _raw(part: Message, header: str) -> list[str]:
    return [str(value) for name, value in part.raw_items() if name.lower() == header]


def _part_value(part: Message, form_charset: str | None) -> str:
    content_type = _raw(part, "content-type")
    transfer = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    if len(content_type) > 1 or transfer not in _PLAIN_TRANSFER or part.get("Content-Encoding") is not None:
        raise AmbiguousField(_REFUSAL)
    if content_type and part.get_content_type() != "text/plain":
        raise AmbiguousField(_REFUSAL)  # aiohttp hands a non-text part over as bytes
    charsets = [v for k, v in _params(content_type[0]) if k == "charset"] if content_type else []
    declared = [c for c in [*charsets, form_charset] if c is not None]
    if any(not isinstance(c, str) or c.strip().lower() not in _UTF8 for c in declared):
        raise AmbiguousField(_REFUSAL)  # SECURITY: a part's own charset decodes differently per framework
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        raise AmbiguousField(_REFUSAL)
    try:
        return payload.decode("utf-8")
    except UnicodeError:
        raise AmbiguousField(_REFUSAL) from None
