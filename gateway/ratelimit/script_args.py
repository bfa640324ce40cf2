"""The stage script's per-item arguments (``gateway.ratelimit.stage_script``), built once per
compiled item. A leaf module: ``policies`` builds them without importing the script's client."""

from __future__ import annotations

import struct

KINDS = {"moving-window": "m", "fixed-window": "f"}
KEY_PREFIX = "sgw:rl"  # the first part of every rate-limit store key (limits' ``key_prefix``)


def bulk_strings(args: tuple[str | bytes, ...]) -> bytes:
    """``args`` in RESP's bulk-string framing (``$<bytes>\\r\\n<arg>\\r\\n`` each), exactly as
    ``hiredis.pack_command`` frames an argument: a fixed part of a command, framed once."""
    framed = b""
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        framed += b"$%d\r\n%b\r\n" % (len(raw), raw)
    return framed


def item_args(strategy: str, quota: int, window: int, cost: int, shadow: bool = False) -> tuple[str, ...]:
    """kind, limit, expiry, amount, ``limit - amount`` (the LINDEX limits' acquire reads) and
    ``limit - 1`` (the LTRIM end), as strings: Redis formats a Lua number argument with sprintf
    (``%.14g``), which was a large share of the script's CPU. Empty for other strategies.
    A shadow item's kind is upper-case (``M``/``F``): counted the same, it never refuses the
    stage (no extra argument per item for Redis to build)."""
    kind = KINDS.get(strategy)
    if kind is None:
        return ()
    if shadow:
        kind = kind.upper()
    return (kind, str(quota), str(window), str(cost), str(quota - cost), str(quota - 1))


def key_framing(key_head: str, key_tail: str) -> tuple[bytes, bytes, int]:
    """An item's store key (``KEY_PREFIX:key_head<value>key_tail``) split around its value, for
    RESP framing: the bytes before the value, the bytes after it with the bulk string's CRLF,
    and the key's length in bytes less the value's. Built once per compiled item, so framing a
    key costs the value's encoding and a concatenation per request."""
    head = f"{KEY_PREFIX}:{key_head}".encode()
    tail = key_tail.encode()
    return head, tail + b"\r\n", len(head) + len(tail)


_ITEM_NUMBERS = struct.Struct("<cddd")  # the stage script's ITEM: '<c1dddBc0Bc0Bc0Bc0'


def pack_item(args: tuple[str, ...]) -> bytes:
    """``item_args``' strings as the stage script's one argument per item (its ``ITEM`` struct):
    the kind; limit, expiry and amount as doubles (exact: integers); then the expiry, the amount,
    ``limit - amount`` and ``limit - 1`` as text, each after its length in one byte. Redis reads
    the numbers without a strtod and hands the text to its commands as it is."""
    kind, limit, expiry, amount, index, trim = args
    texts = b"".join(bytes((len(text),)) + text.encode() for text in (expiry, amount, index, trim))
    return _ITEM_NUMBERS.pack(kind.encode(), int(limit), int(expiry), int(amount)) + texts
