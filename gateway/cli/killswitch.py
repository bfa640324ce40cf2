"""``killswitch engage|release|list|extend|instances`` (SPEC §9, App. B "CLI flags", App. C):
a thin admin-API client, the same calls the incident console makes.

The human output says plainly whether every live instance enforces the switch: a responder
under pressure must not have to read JSON to learn that one instance lags behind.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Any

from gateway.cli import operator_client
from gateway.cli.operator_client import EXIT_OK, EXIT_REMOTE_ERROR, EXIT_USAGE
from gateway.killswitch.scopes import SCOPES, target_help


def add_killswitch_commands(commands: Any) -> None:
    killswitch = commands.add_parser("killswitch", help="isolate a scope on every instance (admin API)")
    verbs = killswitch.add_subparsers(dest="killswitch_command", required=True)

    engage = verbs.add_parser("engage", help="engage a switch; returns once every instance enforces it")
    engage.add_argument("--scope", required=True, choices=SCOPES)
    engage.add_argument("--target", help=target_help())
    engage.add_argument("--mode", required=True, choices=("block", "read-only"))
    engage.add_argument("--reason", required=True)
    engage.add_argument("--incident", help="incident id, shown to refused clients and in the audit trail")
    engage.add_argument("--ttl", help="auto-release after this long, e.g. 30m or 2h")
    engage.add_argument(
        "--dry-run",
        action="store_true",
        help="only say how many of the last 5 minutes' requests it would refuse",
    )
    operator_client.add_common_arguments(engage)
    engage.set_defaults(func=cmd_killswitch_engage)

    release = verbs.add_parser("release", help="release a switch by id, or every switch of an incident")
    release.add_argument("id", nargs="?", metavar="ID", help="the switch's id (killswitch list shows it)")
    release.add_argument("--incident", help="instead of an ID: release every active switch of this incident")
    release.add_argument("--reason")
    operator_client.add_common_arguments(release)
    release.set_defaults(func=cmd_killswitch_release)

    listing = verbs.add_parser("list", help="active switches and each live instance's applied version")
    operator_client.add_common_arguments(listing)
    listing.set_defaults(func=cmd_killswitch_list)

    extend = verbs.add_parser("extend", help="give an active switch a new expiry, counted from now")
    extend.add_argument("id", metavar="ID")
    extend.add_argument("--ttl", required=True, help="e.g. 30m or 2h")
    extend.add_argument("--reason")
    operator_client.add_common_arguments(extend)
    extend.set_defaults(func=cmd_killswitch_extend)

    instances = verbs.add_parser("instances", help="every instance: enforcing, lagging or silent")
    operator_client.add_common_arguments(instances)
    instances.set_defaults(func=cmd_killswitch_instances)


def cmd_killswitch_engage(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"scope": args.scope, "mode": args.mode, "reason": args.reason}
    for name in ("target", "incident", "ttl"):
        if getattr(args, name):
            body[name] = getattr(args, name)
    if args.dry_run:
        return operator_client.run_verb(
            args, "POST", "/admin/killswitch?dry_run=true", body, _describe_dry_run
        )
    return operator_client.run_verb(args, "POST", "/admin/killswitch", body, _describe_engaged)


def cmd_killswitch_extend(args: argparse.Namespace) -> int:
    body = {"ttl": args.ttl, **({"reason": args.reason} if args.reason else {})}
    return operator_client.run_verb(args, "PATCH", _release_path(args.id), body, _describe_extended)


def cmd_killswitch_instances(args: argparse.Namespace) -> int:
    return operator_client.run_verb(args, "GET", "/admin/instances", None, _describe_instances)


def _release_path(switch_id: str) -> str:
    return f"/admin/killswitch/{urllib.parse.quote(switch_id, safe='')}"


def cmd_killswitch_release(args: argparse.Namespace) -> int:
    if (args.id is None) == (args.incident is None):
        print("error: name either a switch ID or --incident INCIDENT", file=sys.stderr)
        return EXIT_USAGE
    body = {"reason": args.reason} if args.reason else None
    if args.incident is not None:
        return _release_incident(args, body)
    return operator_client.run_verb(args, "DELETE", _release_path(args.id), body, _describe_released)


def _release_incident(args: argparse.Namespace, body: dict[str, Any] | None) -> int:
    """List, then release each switch of the incident through the same audited DELETE a
    release by id uses (so every release has its own audit record and acknowledgement)."""
    try:
        _, listing = operator_client.checked_call(args, "GET", "/admin/killswitch", None)
        ids = [s["id"] for s in listing.get("switches", []) if s.get("incident") == args.incident]
        released, gone = [], []
        for switch_id in ids:
            # 404: it expired or someone released it between the list and now; it is gone either way.
            status, data = operator_client.checked_call(
                args, "DELETE", _release_path(switch_id), body, allowed=frozenset({404})
            )
            if status == 404:
                gone.append(switch_id)
            else:
                released.append(data)
    except operator_client.VerbFailed as failed:
        return failed.exit_code
    if args.json:
        print(json.dumps({"incident": args.incident, "released": released, "already_gone": gone}, indent=2))
    else:
        for data in released:
            print(_describe_released(data))
        for switch_id in gone:
            print(f"{switch_id}: already released or expired")
    if not ids:
        # Like an unknown ID: a mistyped incident must not look like a successful release.
        print(f"error: no active kill switch of incident {args.incident}", file=sys.stderr)
        return EXIT_REMOTE_ERROR
    return EXIT_OK


def cmd_killswitch_list(args: argparse.Namespace) -> int:
    return operator_client.run_verb(args, "GET", "/admin/killswitch", None, _describe_list)


def _propagation(data: dict[str, Any]) -> str:
    acked, lagging = data.get("acknowledged", []), data.get("lagging", [])
    line = f"acknowledged by {len(acked)} instance(s)"
    if lagging:
        line += f"; LAGGING (not yet enforcing): {', '.join(lagging)}"
    return line


def _describe_change(verb: str, data: dict[str, Any], details: str, version: object) -> str:
    """One engaged, released or extended switch, and how far the change has reached."""
    return (
        f"{verb} {data.get('id')}: {data.get('scope')} {data.get('target')}{details} "
        f"(version {version})\n{_propagation(data)}"
    )


def _describe_engaged(data: dict[str, Any]) -> str:
    expires = f", expires {data['expires_at']}" if data.get("expires_at") else ""
    incident = f", incident {data['incident']}" if data.get("incident") else ""
    return _describe_change("engaged", data, f" {data.get('mode')}{incident}{expires}", data.get("version"))


def _describe_released(data: dict[str, Any]) -> str:
    return _describe_change("released", data, "", data.get("released_version"))


def _describe_dry_run(data: dict[str, Any]) -> str:
    untracked = f", {data['untracked']} not placeable" if data.get("untracked") else ""
    return (
        f"dry run: would have refused {data.get('would_refuse')} of {data.get('requests')} requests "
        f"in the last {data.get('window_s')} s (this instance's counters{untracked}); nothing engaged"
    )


def _describe_extended(data: dict[str, Any]) -> str:
    return _describe_change("extended", data, f" until {data.get('expires_at')}", data.get("version"))


def _describe_instances(data: dict[str, Any]) -> str:
    rows = [
        [i["instance"], str(i["version"]), f"{i['heartbeat_age_s']:.1f}s", i["store"], i["state"].upper()]
        for i in data.get("instances", [])
    ]
    head = f"switch set version {data.get('version')}; silent after {data.get('silent_after_s')} s"
    return head + "\n" + (_table(rows, ["INSTANCE", "VERSION", "AGE", "STORE", "STATE"]) if rows else "none")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    )


def _describe_list(data: dict[str, Any]) -> str:
    switches = data.get("switches", [])
    rows = [
        [
            s["id"],
            s["scope"],
            s["target"],
            s["mode"],
            s.get("incident") or "-",
            s.get("expires_at") or "-",
            s.get("actor") or "-",
            s["reason"],
        ]
        for s in switches
    ]
    parts = [
        _table(rows, ["ID", "SCOPE", "TARGET", "MODE", "INCIDENT", "EXPIRES", "ACTOR", "REASON"])
        if rows
        else "no active kill switches"
    ]
    instances = [
        [i["instance"], str(i["version"]), f"{i['age_s']:.1f}s", "stale" if i.get("stale") else "ok"]
        for i in data.get("instances", [])
    ]
    parts.append(f"\nswitch set version {data.get('version')}; live instances:")
    parts.append(_table(instances, ["INSTANCE", "VERSION", "AGE", "STORE"]) if instances else "none")
    return "\n".join(parts)
