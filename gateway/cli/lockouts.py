"""``lockouts list`` and ``lockouts clear --ip IP | --username U`` (SPEC §1, App. B)."""

from __future__ import annotations

import argparse
import datetime
import urllib.parse
from typing import Any

from gateway.cli import operator_client


def add_lockout_commands(commands: Any) -> None:
    lockouts = commands.add_parser("lockouts", help="login lockouts (credential-stuffing defence)")
    verbs = lockouts.add_subparsers(dest="lockouts_command", required=True)
    listing = verbs.add_parser("list", help="active lockouts (usernames shown as keyed hashes)")
    operator_client.add_common_arguments(listing)
    listing.set_defaults(func=cmd_lockouts_list)
    clear = verbs.add_parser("clear", help="lift a lockout and forget its failures")
    which = clear.add_mutually_exclusive_group(required=True)
    which.add_argument("--ip")
    which.add_argument("--username")
    operator_client.add_common_arguments(clear)
    clear.set_defaults(func=cmd_lockouts_clear)


def _table(data: dict[str, Any]) -> str:
    rows = data.get("lockouts", [])
    if not rows:
        return "no active lockouts"
    lines = [f"{'KIND':<5} {'SUBJECT':<40} {'LEVEL':>5} {'RETRY-AFTER':>11}  UNTIL"]
    for row in rows:
        until = datetime.datetime.fromtimestamp(row["until"], datetime.UTC).isoformat(timespec="seconds")
        lines.append(
            f"{row['kind']:<5} {row['subject']:<40} {row['level']:>5} {row['retry_after']:>10}s  {until}"
        )
    return "\n".join(lines)


def cmd_lockouts_list(args: argparse.Namespace) -> int:
    return operator_client.run_verb(args, "GET", "/admin/lockouts", None, _table)


def cmd_lockouts_clear(args: argparse.Namespace) -> int:
    query = {"ip": args.ip} if args.ip is not None else {"username": args.username}

    def human(data: dict[str, Any]) -> str:
        state = "cleared" if data.get("cleared") else "was not locked (failures forgotten)"
        return f"{data.get('kind')} {data.get('subject')}: {state}"

    return operator_client.run_verb(
        args, "DELETE", f"/admin/lockouts?{urllib.parse.urlencode(query)}", None, human
    )
