"""``shopino-gateway`` commands (SPEC §1). Exit codes: 0 ok, 1 usage/config error,
2 the gateway answered with an error, 3 the gateway was unreachable."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import orjson
import yaml

from gateway.cli import operator_client
from gateway.cli.audit import add_audit_commands
from gateway.cli.grants import add_grants_commands
from gateway.cli.incident import add_incident_commands
from gateway.cli.killswitch import add_killswitch_commands
from gateway.cli.lockouts import add_lockout_commands
from gateway.cli.mfa import add_mfa_commands
from gateway.config.effective import effective_config
from gateway.config.errors import ConfigError
from gateway.config_schema import default_config_path, load_config

EXIT_OK, EXIT_USAGE, EXIT_REMOTE_ERROR, EXIT_UNREACHABLE = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _load_or_exit(path_arg: str | None) -> tuple[Path, object]:
    path = default_config_path(path_arg)
    try:
        return path, load_config(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    path, config = _load_or_exit(args.config)
    data = effective_config(config)  # type: ignore[arg-type]
    if args.json:
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"# {path}: valid", file=sys.stderr)
        print(yaml.safe_dump(data, sort_keys=False), end="")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    path, config = _load_or_exit(args.config)
    from gateway.crypto import Keyring, KeyringError
    from gateway.tenancy.keys import ContextKeyError, check_env

    try:
        Keyring.from_env(os.environ)  # fail before binding ports, with a message, not a traceback
        check_env(os.environ)  # a short or placeholder context key (never echoed)
    except (KeyringError, ContextKeyError) as exc:
        print(f"shopino-gateway run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from gateway.runtime import build_verifier

    try:
        build_verifier(config, None)  # type: ignore[arg-type]  # key files readable and valid
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return EXIT_USAGE
    if config.listen.workers > 1:  # type: ignore[attr-defined]
        from gateway.server.workers import prepare_metrics_dir

        prepare_metrics_dir()
    from gateway.logs.setup import configure_logging
    from gateway.server.entry import run_gateway

    configure_logging(config.logging)  # type: ignore[attr-defined]
    return run_gateway(config, path)  # type: ignore[arg-type]


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo.command import run_demo

    return run_demo(port=args.port, admin_port=args.admin_port, backend_port=args.backend_port)


def cmd_token_mint(args: argparse.Namespace) -> int:
    from gateway.cli.tokens import MintError, mint_token

    try:
        print(
            mint_token(
                key_file=args.key,
                kid=args.kid,
                issuer=args.iss,
                audience=args.aud,
                subject=args.sub,
                tenant=args.tenant,
                roles=args.roles,
                amr=args.amr,
                auth_time=args.auth_time,
                ttl=args.ttl,
                extra_claims=args.claim,
            )
        )
    except MintError as exc:
        print(f"token mint: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def cmd_reload(args: argparse.Namespace) -> int:
    return operator_client.run_verb(args, "POST", "/admin/reload", None, _print_reload)


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    return operator_client.run_verb(
        args,
        "POST",
        "/admin/keys/rotate",
        {"revoke_old": args.revoke_old, **({"incident": args.incident} if args.incident else {})},
        lambda d: (
            f"new signing key {d.get('kid')}; older keys "
            + ("revoked now" if d.get("revoke_old") else "verifiable until their tokens expire")
            + f"; published: {', '.join(d.get('jwks_kids', []))}"
        ),
    )


def cmd_sessions_revoke(args: argparse.Namespace) -> int:
    body = {"tenant": args.tenant, **({"user": args.user} if args.user else {})}
    if args.incident:
        body["incident"] = args.incident
    return operator_client.run_verb(
        args,
        "POST",
        "/admin/sessions/revoke",
        body,
        lambda d: (
            f"revoked every token of tenant {d.get('tenant')}"
            + (f", user {d.get('user')}" if d.get("user") else "")
            + f" issued at or before {d.get('revoked_at')}"
        ),
    )


def cmd_integrations_rotate(args: argparse.Namespace) -> int:
    body: dict[str, str] = {}
    if args.secret_env:
        value = os.environ.get(args.secret_env)
        if not value:
            print(f"integrations rotate: ${args.secret_env} is not set", file=sys.stderr)
            return EXIT_USAGE
        body["secret"] = value
    return operator_client.run_verb(
        args,
        "POST",
        f"/admin/integrations/{args.name}/rotate",
        body,
        lambda d: (
            f"rotated {d.get('integration')}; the old secret verifies for {d.get('grace_seconds')} s"
            + (f"\nnew secret (shown once): {d['secret']}" if d.get("secret") else "")
        ),
    )


def _print_reload(data: dict[str, object]) -> str:
    return f"reloaded: generation {data.get('generation')} from {data.get('source')}"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="shopino-gateway", description="The ShopinoERP security gateway.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="start the gateway")
    run.add_argument(
        "-c", "--config", help="config file (default: $SHOPINO_GATEWAY_CONFIG or config/gateway.yaml)"
    )
    run.set_defaults(func=cmd_run)

    check = commands.add_parser("check-config", help="validate a config and print it with secrets masked")
    check.add_argument("-c", "--config")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_check_config)

    demo = commands.add_parser("demo", help="run a demo ERP and the gateway in front of it")
    demo.add_argument("--port", type=int, default=8443, help="the gateway's TLS port on 127.0.0.1")
    demo.add_argument("--admin-port", type=int, default=9090, help="the admin API's port on 127.0.0.1")
    demo.add_argument("--backend-port", type=int, default=9000, help="the demo ERP's port on 127.0.0.1")
    demo.set_defaults(func=cmd_demo)

    token = commands.add_parser("token", help="test tokens").add_subparsers(
        dest="token_command", required=True
    )
    mint = token.add_parser("mint", help="mint a signed test token")
    mint.add_argument("--key", required=True, help="private key PEM (EC P-256, RSA or Ed25519)")
    mint.add_argument(
        "--kid",
        help="the key id for the token's header; write --kid=VALUE when it starts with '-' "
        "(an RFC 7638 thumbprint can)",
    )
    mint.add_argument("--iss", required=True)
    mint.add_argument("--aud", required=True)
    mint.add_argument("--sub", required=True)
    mint.add_argument("--tenant", required=True)
    mint.add_argument("--roles", default="")
    mint.add_argument("--amr", default="pwd")
    mint.add_argument("--auth-time", default="now")
    mint.add_argument("--ttl", default="15m")
    mint.add_argument("--claim", action="append", default=[], metavar="K=V")
    mint.set_defaults(func=cmd_token_mint)

    add_audit_commands(commands)
    add_killswitch_commands(commands)
    add_lockout_commands(commands)
    add_incident_commands(commands)
    add_grants_commands(commands)
    add_mfa_commands(commands)

    keys = commands.add_parser("keys", help="the gateway's token signing keys").add_subparsers(
        dest="keys_command", required=True
    )
    rotate = keys.add_parser("rotate", help="add a new signing key (admin API)")
    rotate.add_argument("--revoke-old", action="store_true", help="an exposed key: invalidate older keys now")
    rotate.add_argument("--incident", help="file the rotation under this incident id")
    operator_client.add_common_arguments(rotate)
    rotate.set_defaults(func=cmd_keys_rotate)

    sessions = commands.add_parser("sessions", help="user sessions").add_subparsers(
        dest="sessions_command", required=True
    )
    revoke = sessions.add_parser("revoke", help="refuse every token issued until now (admin API)")
    revoke.add_argument("--tenant", required=True)
    revoke.add_argument("--user", help="only this user's tokens (the token's sub)")
    revoke.add_argument("--incident", help="file the revocation under this incident id")
    operator_client.add_common_arguments(revoke)
    revoke.set_defaults(func=cmd_sessions_revoke)

    integrations = commands.add_parser("integrations", help="webhook integrations").add_subparsers(
        dest="integrations_command", required=True
    )
    rotate_secret = integrations.add_parser(
        "rotate", help="new webhook secret; the old one stays valid for a grace"
    )
    rotate_secret.add_argument("name")
    rotate_secret.add_argument("--secret-env", metavar="VAR", help="take the new secret from this variable")
    operator_client.add_common_arguments(rotate_secret)
    rotate_secret.set_defaults(func=cmd_integrations_rotate)

    reload = commands.add_parser("reload", help="reload the config on every worker (admin API)")
    operator_client.add_common_arguments(reload)
    reload.set_defaults(func=cmd_reload)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return EXIT_OK


def entrypoint() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    entrypoint()
