"""The gateway's own short memory of its traffic (Appendix C, issue 16): what the console's
kill switch dry run and traffic view read, without Prometheus.

Two rings, both filled by ``observe`` from ``GatewayMetrics.observe_request`` (both listeners):

* per second, the last ``DRY_RUN_WINDOW`` (300) seconds: route → acting tenant → method →
  canonical path → count. A dry run replays these keys through the real switch matcher.
* per ``BUCKET_S`` (10) seconds, the last 15 minutes: per route the answers by status class,
  refusals by problem type, and refused clients (IP, user), shown truncated / pseudonymised.

Hot-path cost: a few dict lookups and one int increment; nested dicts (never a tuple key) so
nothing is allocated per request once a key has been seen. Memory is bounded: at most
``MAX_PATHS`` distinct paths per second (further paths are counted under ``""``, which only an
endpoint dry run cannot place) and ``MAX_CLIENTS`` refused clients per bucket.
The rings are per process: with ``listen.workers: N`` each worker answers from its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.redaction import truncate_ip

if TYPE_CHECKING:
    from gateway.context import RequestContext

DRY_RUN_WINDOW = 300
BUCKET_S = 10
TRAFFIC_WINDOW = 900
MAX_PATHS = 2000
MAX_CLIENTS = 500
UNTRACKED = ""  # the path key once a second has seen MAX_PATHS distinct paths

# route → tenant ("" when none) → method → path → count
SecondCounts = dict[str, dict[str, dict[str, dict[str, int]]]]


@dataclass(slots=True)
class _Bucket:
    start: int = -1
    routes: dict[str, list[int]] = field(default_factory=dict)  # status class (index 0-5) → count
    refusals: dict[str, int] = field(default_factory=dict)  # problem type → count
    statuses: dict[str, int] = field(default_factory=dict)  # problem type → its status
    clients: dict[str, dict[str, int]] = field(default_factory=dict)  # ip → user ("" none) → count
    client_keys: int = 0

    def reset(self, start: int) -> None:
        self.start = start
        self.routes, self.refusals, self.statuses, self.clients = {}, {}, {}, {}
        self.client_keys = 0


class TrafficRecorder:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._stamps = [-1] * DRY_RUN_WINDOW
        self._seconds: list[SecondCounts] = [{} for _ in range(DRY_RUN_WINDOW)]
        self._second = -1
        self._current: SecondCounts = self._seconds[0]
        self._paths = 0  # distinct paths in the current second
        self._buckets = [_Bucket() for _ in range(TRAFFIC_WINDOW // BUCKET_S)]
        self._bucket = self._buckets[0]

    # -- hot path -----------------------------------------------------------------------------
    def observe(self, ctx: RequestContext) -> None:
        second = int(self._clock())
        if second != self._second:
            self._turn(second)
        route = ctx.route.name if ctx.route is not None else UNTRACKED
        tenants = self._current.get(route)
        if tenants is None:
            tenants = self._current[route] = {}
        methods = tenants.get(ctx.tenant or "")
        if methods is None:
            methods = tenants[ctx.tenant or ""] = {}
        method = ctx.request.method
        paths = methods.get(method)
        if paths is None:
            paths = methods[method] = {}
        path = ctx.target.path if ctx.target is not None else UNTRACKED
        count = paths.get(path)
        if count is not None:
            paths[path] = count + 1
        elif self._paths < MAX_PATHS:
            self._paths += 1
            paths[path] = 1
        else:
            paths[UNTRACKED] = paths.get(UNTRACKED, 0) + 1
        bucket = self._bucket
        classes = bucket.routes.get(route)
        if classes is None:
            classes = bucket.routes[route] = [0] * 6
        classes[min(ctx.status // 100, 5)] += 1
        if ctx.refusal is not None:
            self._refused(bucket, ctx)

    def _refused(self, bucket: _Bucket, ctx: RequestContext) -> None:
        slug = ctx.refusal or ""
        bucket.refusals[slug] = bucket.refusals.get(slug, 0) + 1
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

    def _turn(self, second: int) -> None:
        """A new second (and maybe a new bucket): its slot is emptied before it is reused."""
        slot = second % DRY_RUN_WINDOW
        if self._stamps[slot] != second:
            self._stamps[slot] = second
            self._seconds[slot] = {}
        self._current, self._second, self._paths = self._seconds[slot], second, 0
        start = second - second % BUCKET_S
        bucket = self._buckets[(start // BUCKET_S) % len(self._buckets)]
        if bucket.start != start:
            bucket.reset(start)
        self._bucket = bucket

    # -- reading (admin calls) ----------------------------------------------------------------
    def seconds(self, window: int = DRY_RUN_WINDOW) -> Iterator[SecondCounts]:
        """The per-second counts of the last ``window`` seconds (this one included)."""
        now = int(self._clock())
        for stamp, counts in zip(self._stamps, self._seconds, strict=True):
            if now - window < stamp <= now:
                yield counts

    def report(self, pseudonym: Callable[[str], str], top: int = 10) -> dict[str, object]:
        """The traffic view: one point per bucket of the last 15 minutes, oldest first, plus the
        top refused clients over the whole window (truncated IP, user pseudonym)."""
        now = int(self._clock())
        live = sorted(
            (b for b in self._buckets if now - TRAFFIC_WINDOW < b.start <= now), key=lambda b: b.start
        )
        clients: dict[tuple[str, str], int] = {}
        points = []
        for bucket in live:
            points.append(
                {
                    "t": bucket.start,
                    "routes": {
                        route or "-": {f"{i}xx": n for i, n in enumerate(classes) if n and i}
                        for route, classes in bucket.routes.items()
                    },
                    "refusals": dict(bucket.refusals),
                }
            )
            for ip, users in bucket.clients.items():
                for user, n in users.items():
                    # SECURITY: only the truncated IP and the keyed pseudonym leave the process.
                    key = (truncate_ip(ip), pseudonym(user) if user else "")
                    clients[key] = clients.get(key, 0) + n
        statuses: dict[str, int] = {}
        for bucket in live:
            statuses.update(bucket.statuses)
        ranked = sorted(clients.items(), key=lambda item: -item[1])[:top]
        return {
            "bucket_s": BUCKET_S,
            "window_s": TRAFFIC_WINDOW,
            "now": now,
            "points": points,
            "refusal_status": statuses,
            "top_refused": [
                {"client_ip": ip, "user": user or None, "refusals": n} for (ip, user), n in ranked
            ],
        }


TRAFFIC = TrafficRecorder()
