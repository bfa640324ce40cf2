"""The gateway's own short memory of its traffic (Appendix C, issue 16): what the console's
kill switch dry run and traffic view read, without Prometheus.

* **Per second, the last ``DRY_RUN_WINDOW`` (300) s** — request counts per *key* (route,
  acting tenant, method, canonical path), filled by ``observe`` from
  ``GatewayMetrics.observe_request`` (both listeners). A dry run replays the keys through the
  real switch matcher. Keys are interned once in a persistent tree (route → tenant → method →
  path → id), so a request costs a few dict lookups and one int increment and allocates nothing
  once its key is known; a second holds only ``{id: count}``. (Nested dicts rebuilt every
  second cost ~4 % of a full-chain request's instructions under callgrind.)
* **Per ``BUCKET_S`` (10) s, the last 15 minutes** — a ring of snapshots of the request and
  refusal counters ``GatewayMetrics`` keeps anyway (summed over the workers when there are
  several), taken at the first request of each bucket, so other requests add nothing for it;
  the traffic view is the difference of consecutive snapshots. The snapshots include the
  per-policy counts of ``mode: shadow`` rules over their limit (``shopino_gateway_ratelimit_
  shadow_refusals``, App. C), so the view shows what each shadow rule would have refused; the
  policies are the config's, so they are bounded like the routes. (The first request of a
  bucket, if a shadow rule was over for it, counts in the bucket before: the snapshot cannot
  tell which policy it was, and nothing is lost from the window but at its oldest edge.)
  Only refusals (rarer, and already the slow path) note their status and client, per worker.

Bounded memory: at most ``MAX_KEYS`` interned keys, paths of at most ``MAX_PATH`` chars; when
the table is full, keys no second of the window counts are forgotten (checked at most every
10 s). Past the bound a request counts under its (route, tenant, method) with the path
``UNTRACKED`` (only an endpoint dry run cannot place those), past twice the bound under one
``OVERFLOW`` key no scope can place. Refused clients: ``MAX_CLIENTS`` per bucket.
The per-second counts are per process: with ``listen.workers: N`` a dry run answers from the
counts of the worker that took the admin call.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise

from gateway.facts import RequestFacts
from gateway.redaction.processor import truncate_ip

DRY_RUN_WINDOW = 300
BUCKET_S = 10
TRAFFIC_WINDOW = 900
MAX_KEYS = 10_000
MAX_PATH = 256
MAX_CLIENTS = 500
UNTRACKED = ""  # the path of requests counted without theirs (table full, path too long)
OVERFLOW = 0  # the key id of requests counted without any key (table full twice over)

_trunc = math.trunc
Key = tuple[str, str, str, str]  # route ("" none), tenant ("" none), method ("" overflow), path
_Tree = dict[str, dict[str, dict[str, dict[str, int]]]]
# (route, status) → answered, problem type → refused, shadow policy → would have refused: the
# process's (or the workers' summed) counters so far.
Counters = tuple[dict[tuple[str, int], int], dict[str, int], dict[str, int]]


@dataclass(slots=True)
class _Refusals:
    """One bucket's refusals: their statuses and who was refused."""

    start: int
    statuses: dict[str, int] = field(default_factory=dict)  # problem type → its status
    clients: dict[str, dict[str, int]] = field(default_factory=dict)  # ip → user ("" none) → count
    client_keys: int = 0


def _no_counters() -> Counters:
    return {}, {}, {}


class TrafficRecorder:
    def __init__(self, clock: Callable[[], float] = time.time, max_keys: int = MAX_KEYS) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self.counters: Callable[[], Counters] = _no_counters  # set by GatewayMetrics
        self._tree: _Tree = {}
        self._keys: list[Key | None] = [("", "", "", UNTRACKED)]  # id → key; None: a free id
        self._free: list[int] = []
        self._stamps = [-1] * DRY_RUN_WINDOW
        self._seconds: list[dict[int, int]] = [{} for _ in range(DRY_RUN_WINDOW)]
        self._second = -1
        self._bucket_start = -1
        self._current: dict[int, int] = self._seconds[0]
        buckets = TRAFFIC_WINDOW // BUCKET_S
        self._snapshots: deque[tuple[int, Counters]] = deque(maxlen=buckets + 1)
        self._refusals: deque[_Refusals] = deque(maxlen=buckets)

    # -- hot path -----------------------------------------------------------------------------
    def observe(self, ctx: RequestFacts) -> None:
        second = _trunc(self._clock())  # int(), without int's type-call overhead
        if second != self._second:
            self._turn(second, ctx)
        route = ctx.route.name if ctx.route is not None else UNTRACKED
        target = ctx.target
        path = target.path if target is not None else UNTRACKED
        method = ctx.request.method
        tenant = ctx.tenant or ""
        try:
            key = self._tree[route][tenant][method][path]
        except KeyError:
            key = self._intern(route, tenant, method, path)
        counts = self._current
        counts[key] = counts.get(key, 0) + 1
        if ctx.refusal is not None:
            self._refused(ctx)

    def _intern(self, route: str, tenant: str, method: str, path: str) -> int:
        """The id of a key seen for the first time (bounded: see the module docstring)."""
        live = len(self._keys) - len(self._free)
        if live >= self._max_keys or len(path) > MAX_PATH:
            path = UNTRACKED
            if live >= 2 * self._max_keys:
                return OVERFLOW
        paths = self._tree.setdefault(route, {}).setdefault(tenant, {}).setdefault(method, {})
        key = paths.get(path)
        if key is None:
            key = self._free.pop() if self._free else len(self._keys)
            if key == len(self._keys):
                self._keys.append(None)
            self._keys[key] = (route, tenant, method, path)
            paths[path] = key
        return key

    def _refused(self, ctx: RequestFacts) -> None:
        bucket = self._refusals[-1]
        slug = ctx.refusal or ""
        bucket.statuses[slug] = ctx.status
        users = bucket.clients.get(ctx.client_ip)
        if users is None:
            if bucket.client_keys >= MAX_CLIENTS:
                return
            users = bucket.clients[ctx.client_ip] = {}
        user = ctx.user or ""
        if user not in users:
            if bucket.client_keys >= MAX_CLIENTS:
                return
            bucket.client_keys += 1
        users[user] = users.get(user, 0) + 1

    # -- once a second / once a bucket ----------------------------------------------------------
    def _turn(self, second: int, ctx: RequestFacts) -> None:
        """A new second: its slot is emptied before reuse; a new bucket: a counter snapshot."""
        slot = second % DRY_RUN_WINDOW
        if self._stamps[slot] != second:
            self._stamps[slot] = second
            self._seconds[slot] = {}
        self._current, self._second = self._seconds[slot], second
        start = second - second % BUCKET_S
        if start != self._bucket_start:
            self._bucket_start = start
            # Everything before this request belongs to earlier buckets; it is already counted
            # (answered and, if so, refused), so it is taken back out of the snapshot.
            answered, refused, shadow = self.counters()
            mine = (ctx.route.name if ctx.route is not None else "-", ctx.status or 0)
            if answered.get(mine):
                answered[mine] -= 1
            if ctx.refusal is not None and refused.get(ctx.refusal):
                refused[ctx.refusal] -= 1
            self._snapshots.append((start, (answered, refused, shadow)))
            self._refusals.append(_Refusals(start))
            if len(self._keys) - len(self._free) >= self._max_keys:
                self._forget_idle(second)

    def _forget_idle(self, second: int) -> None:
        """Free the ids of keys that no second of the window counts any more."""
        used = {OVERFLOW}
        for stamp, counts in zip(self._stamps, self._seconds, strict=True):
            if second - DRY_RUN_WINDOW < stamp <= second:
                used.update(counts)
        for key, entry in enumerate(self._keys):
            if entry is None or key in used:
                continue
            route, tenant, method, path = entry
            methods = self._tree[route][tenant]
            del methods[method][path]
            if not methods[method]:
                del methods[method]
            self._keys[key] = None
            self._free.append(key)

    # -- reading (admin calls) ----------------------------------------------------------------
    def seconds(self, window: int = DRY_RUN_WINDOW) -> Iterator[tuple[Key, int]]:
        """(key, count) of every second of the last ``window`` seconds (this one included)."""
        now = int(self._clock())
        keys = self._keys
        for stamp, counts in zip(self._stamps, self._seconds, strict=True):
            if now - window < stamp <= now:
                for key, n in counts.items():
                    entry = keys[key]
                    if entry is not None:
                        yield entry, n

    def report(self, pseudonym: Callable[[str], str], top: int = 10) -> dict[str, object]:
        """The traffic view: one point per bucket of the last 15 minutes that saw requests,
        oldest first, plus the top refused clients over the window (truncated IP, pseudonym) and
        per shadow policy what it would have refused over the window."""
        now = int(self._clock())
        snapshots = [*self._snapshots, (now, self.counters())]
        points = []
        would_refuse: dict[str, int] = {}
        for (start, before), (_, after) in pairwise(snapshots):
            if start <= now - TRAFFIC_WINDOW:
                continue
            (answered, refused, shadow_before), (answered_next, refused_next, shadow_next) = before, after
            routes: dict[str, dict[str, int]] = {}
            for (route, status), n in answered_next.items():
                delta = n - answered.get((route, status), 0)
                if delta > 0:
                    classes = routes.setdefault(route, {})
                    cls = f"{min(status // 100, 5)}xx"
                    classes[cls] = classes.get(cls, 0) + delta
            refusals = _increase(refused, refused_next)
            shadow = _increase(shadow_before, shadow_next)
            for policy, n in shadow.items():
                would_refuse[policy] = would_refuse.get(policy, 0) + n
            points.append({"t": start, "routes": routes, "refusals": refusals, "shadow": shadow})
        clients: dict[tuple[str, str], int] = {}
        statuses: dict[str, int] = {}
        for bucket in self._refusals:
            if bucket.start <= now - TRAFFIC_WINDOW:
                continue
            statuses.update(bucket.statuses)
            for ip, users in bucket.clients.items():
                for user, n in users.items():
                    # SECURITY: only the truncated IP and the keyed pseudonym leave the process.
                    key = (truncate_ip(ip), pseudonym(user) if user else "")
                    clients[key] = clients.get(key, 0) + n
        ranked = sorted(clients.items(), key=lambda item: -item[1])[:top]
        return {
            "bucket_s": BUCKET_S,
            "window_s": TRAFFIC_WINDOW,
            "now": now,
            "points": points,
            "refusal_status": statuses,
            "shadow_refusals": dict(sorted(would_refuse.items())),
            "top_refused": [
                {"client_ip": ip, "user": user or None, "refusals": n} for (ip, user), n in ranked
            ],
        }


def _increase(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """What grew between two snapshots of name → count (only the names that did)."""
    return {name: n - before.get(name, 0) for name, n in after.items() if n > before.get(name, 0)}


TRAFFIC = TrafficRecorder()
