"""The incident index: everything done under one incident id, found without scanning trails.

Audit records carry an ``incident`` field but live in per-tenant chains, so "what was done under
INC-7" would mean reading every trail. Instead each record that names an incident leaves a
pointer ``"<tenant>:<seq>"`` in the store set ``incidents:<id>``.

Why the pointer is written *before* the record, inside the chain lock (``ChainWriter``'s
``pre_append`` hook), not after it:
- A pointer written after the append could be lost when the store fails between the two
  writes (or the process dies): the record would exist, unfindable. Written first, a failure
  of the pointer write is a failure of the append itself - the event is spooled
  (``gateway.audit.spool``) and, at replay, goes through the same path again, pointer first.
- The price is a pointer whose append then failed. Its seq may later hold another record, so
  readers trust a pointer only when the record at that seq names the same incident (and skip
  it otherwise). Pointers to records removed by retention or ``tenant purge`` are skipped the
  same way: the index never breaks a lookup, it only narrows the search.
Tenant ids never contain ``:`` (``validate_tenant``), so ``rpartition(":")`` splits a pointer.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import orjson

from gateway.audit.chain import stream_name
from gateway.audit.record import SYSTEM_TENANT, decode_record
from gateway.state.base import StateStore

INDEX_PREFIX = "incidents:"
MAX_ACTIONS = 10_000
_GAP = 16
# The same shape the kill switch accepts: short, printable, safe in a store key and a URL path.
_INCIDENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


def validate_incident(value: object) -> str:
    """``value`` if it is a valid incident id, else ValueError (the value is not echoed)."""
    if not isinstance(value, str) or not _INCIDENT_RE.fullmatch(value):
        raise ValueError("incident must be 1-64 letters, digits and . _ : - (first a letter or digit)")
    return value


def index_key(incident: str) -> str:
    return INDEX_PREFIX + incident


async def write_pointer(store: StateStore, record: dict[str, Any]) -> None:
    """Point ``incidents:<id>`` at ``record`` (about to be appended); no-op without an incident."""
    incident = record.get("incident")
    if isinstance(incident, str) and incident:
        await store.sadd(index_key(incident), f"{record['tenant']}:{record['seq']}")


def _pointers(members: set[str]) -> dict[str, list[int]]:
    by_tenant: dict[str, list[int]] = defaultdict(list)
    for member in members:
        tenant, _, seq = member.rpartition(":")
        if tenant and seq.isdigit():
            by_tenant[tenant].append(int(seq))
    return by_tenant


def _runs(seqs: list[int]) -> list[list[int]]:
    """Sorted seqs grouped so that one range read serves each group (gaps of at most _GAP
    records are read and dropped: fewer round trips than one read per record)."""
    runs: list[list[int]] = []
    for seq in sorted(set(seqs)):
        if runs and seq - runs[-1][-1] <= _GAP:
            runs[-1].append(seq)
        else:
            runs.append([seq])
    return runs


async def _read(store: StateStore, tenant: str, wanted: list[int]) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    keep = set(wanted)
    async for seq, raw in store.log_read(stream_name(tenant), start_seq=wanted[0], end_seq=wanted[-1]):
        rec = decode_record(raw) if seq in keep else None
        if rec is not None:
            found[seq] = rec
    return found


def _merge(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One action per event, however many trails it was filed in (a tenant-scoped switch is in
    the tenant's trail and ``_system``): ``tenants`` lists them, ``tenant`` names the first
    real tenant among them (``_system`` only when there is no other). Copies are recognised by
    time, event, actor, request id and details."""
    merged: dict[bytes, dict[str, Any]] = {}
    for index, rec in enumerate(records):
        # Copies of one event share its request id; without one, nothing proves two records are
        # the same act (two revocations in one millisecond look alike), so they stay apart.
        same = rec.get("request_id") if rec.get("request_id") is not None else f"#{index}"
        key = orjson.dumps(
            [rec.get("time"), rec.get("event"), rec.get("actor"), same, rec.get("details")],
            option=orjson.OPT_SORT_KEYS,
        )
        action = merged.get(key)
        if action is None:
            merged[key] = action = {
                "time": rec.get("time"),
                "tenant": rec.get("tenant"),
                "tenants": [],
                "event": rec.get("event"),
                "actor": rec.get("actor"),
                "request_id": rec.get("request_id"),
                "details": rec.get("details"),
            }
        action["tenants"].append(rec.get("tenant"))
        if action["tenant"] == SYSTEM_TENANT:
            action["tenant"] = rec.get("tenant")
    return sorted(merged.values(), key=lambda a: (str(a["time"]), str(a["event"]), str(a["tenant"])))


async def incident_actions(store: StateStore, incident: str) -> tuple[list[dict[str, Any]], bool]:
    """(actions in time order, truncated?) for ``incident``; ``[]`` when nothing is known.
    Raises StoreUnavailable when the store cannot be read."""
    members = await store.smembers(index_key(incident))
    records: list[dict[str, Any]] = []
    truncated = False
    for tenant, seqs in sorted(_pointers(members).items()):
        for run in _runs(seqs):
            if len(records) >= MAX_ACTIONS:
                truncated = True
                break
            for seq, rec in sorted((await _read(store, tenant, run)).items()):
                # SECURITY: trust only a record that names this incident at the pointed seq: a
                # stale pointer (failed append, purged trail) must not claim another record.
                if (rec.get("incident"), rec.get("tenant"), rec.get("seq")) == (incident, tenant, seq):
                    records.append(rec)
    if len(records) > MAX_ACTIONS:
        records, truncated = records[:MAX_ACTIONS], True
    return _merge(records), truncated
