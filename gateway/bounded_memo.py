"""The one rule for the hot path's memos: a memo whose keys a client or an upstream chooses
(paths, header names, Host values, rate-limit values) holds at most ``limit`` entries and is
emptied when full. SECURITY: memory exhaustion — a flood of fresh keys costs the memo's bound,
never more. Each memo keeps its hit inline (one dict lookup where it is read); a miss stores
through ``remember``."""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(memo: dict[K, V], limit: int, key: K, value: V) -> V:
    """Store ``key`` → ``value`` in ``memo``, emptying it first when it holds ``limit`` entries;
    returns ``value``."""
    if len(memo) >= limit:
        memo.clear()
    memo[key] = value
    return value
