"""``mfa status``, ``mfa unfreeze --reason R`` and ``mfa allow --tenant T --user U --reason R
[--ttl 15m]``: the MFA enrolment freeze a state store reset imposes
(``gateway.auth.mfa_freeze``), through the admin API."""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from gateway.cli import operator_client


def add_mfa_commands(commands: Any) -> None:
    mfa = commands.add_parser("mfa", help="the gateway's MFA enrolment freeze (after a store reset)")
    verbs = mfa.add_subparsers(dest="mfa_command", required=True)
    status = verbs.add_parser("status", help="whether MFA enrolment is frozen, since when and why")
    operator_client.add_common_arguments(status)
    status.set_defaults(func=cmd_mfa_status)
    unfreeze = verbs.add_parser(
        "unfreeze", help="lift the freeze: enrolment opens again on every instance (gateway-admin)"
    )
    unfreeze.add_argument("--reason", required=True, help="why it is safe now (audited)")
    operator_client.add_common_arguments(unfreeze)
    unfreeze.set_defaults(func=cmd_mfa_unfreeze)
    allow = verbs.add_parser(
        "allow", help="let one user enrol once during the freeze (identity checked out of band)"
    )
    allow.add_argument("--tenant", required=True)
    allow.add_argument("--user", required=True, help="the user's token sub")
    allow.add_argument("--reason", required=True, help="how the user's identity was checked (audited)")
    allow.add_argument("--ttl", default="15m", help="how long the allowance lasts (default 15m, at most 24h)")
    operator_client.add_common_arguments(allow)
    allow.set_defaults(func=cmd_mfa_allow)


def _when(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds")


def _status(data: dict[str, Any]) -> str:
    freeze = data.get("freeze")
    stale = " (this instance could not read the store: its own view)" if data.get("stale") else ""
    if not data.get("frozen") or not isinstance(freeze, dict):
        return f"MFA enrolment: open{stale}"
    return (
        f"MFA enrolment: FROZEN since {_when(freeze.get('since'))} (freeze {freeze.get('id')}, "
        f"store reset: {freeze.get('reason')}, noticed by {freeze.get('instance')}){stale}\n"
        "lift it with: shopino-gateway mfa unfreeze --reason '...'"
    )


def cmd_mfa_status(args: argparse.Namespace) -> int:
    return operator_client.run_verb(args, "GET", "/admin/mfa/freeze", None, _status)


def cmd_mfa_unfreeze(args: argparse.Namespace) -> int:
    def human(data: dict[str, Any]) -> str:
        lifted = data.get("lifted") or {}
        return (
            f"MFA enrolment open again: freeze {lifted.get('id')} (since {_when(lifted.get('since'))}) "
            f"lifted by {lifted.get('lifted_by')}"
        )

    return operator_client.run_verb(args, "DELETE", "/admin/mfa/freeze", {"reason": args.reason}, human)


def cmd_mfa_allow(args: argparse.Namespace) -> int:
    body = {"tenant": args.tenant, "user": args.user, "reason": args.reason, "ttl": args.ttl}

    def human(data: dict[str, Any]) -> str:
        return (
            f"{data.get('user')} of {data.get('tenant')} may enrol once until "
            f"{_when(data.get('expires_at'))} (freeze {data.get('freeze')})"
        )

    return operator_client.run_verb(args, "POST", "/admin/mfa/allowances", body, human)
