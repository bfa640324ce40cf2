"""``python -m gateway.demo.erp_server``: the demo ERP alone, as its own process or container.

``shopino-gateway demo`` runs the demo ERP and one gateway in one process on loopback; a
deployment with several gateways (``deploy/compose.yaml``) needs the ERP as a service of its own.
This runs the same backend (``gateway.demo.backend``) with the same demo users, and:

- keeps the demo identity provider's signing key in ``--key-file`` (created 0600 on first start,
  reused afterwards, so tokens survive a restart of the ERP);
- writes that provider's public JWKS to ``--jwks-out``, the file the gateways name in
  ``auth.issuers[].jwks_file``;
- verifies ``X-Gateway-Context`` with ``$SHOPINO_GATEWAY_CONTEXT_KEY`` (and ``..._PREVIOUS``):
  like the in-process demo it refuses requests that did not come through a gateway. Without
  the key it refuses to start, since it would otherwise trust any ``X-Tenant-ID``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from gateway.demo.backend import start_backend
from gateway.demo.identities import default_users
from gateway.demo.issuer import DemoIssuer
from gateway.tenancy.keys import ENV_VAR as CONTEXT_KEY_ENV
from gateway.tenancy.keys import PREVIOUS_ENV_VAR as PREVIOUS_CONTEXT_KEY_ENV


def _issuer(key_file: Path) -> DemoIssuer:
    if key_file.exists():
        return DemoIssuer.from_pem_file(key_file)
    issuer = DemoIssuer()
    issuer.write_private_pem(key_file)
    return issuer


async def _serve(args: argparse.Namespace, context_keys: list[str]) -> None:
    issuer = _issuer(Path(args.key_file))
    issuer.write_jwks(args.jwks_out)
    backend = await start_backend(
        issuer, default_users(), host=args.host, port=args.port, context_keys=context_keys
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"demo ERP listening on {backend.url}; issuer {issuer.issuer}, JWKS in {args.jwks_out}", flush=True)
    try:
        await stop.wait()
    finally:
        await backend.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.demo.erp_server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument(
        "--key-file", required=True, help="the demo IdP's private key (PEM; created if missing)"
    )
    parser.add_argument("--jwks-out", required=True, help="where to write the demo IdP's public JWKS")
    args = parser.parse_args(argv)
    context_keys = [
        key for key in (os.environ.get(CONTEXT_KEY_ENV), os.environ.get(PREVIOUS_CONTEXT_KEY_ENV)) if key
    ]
    if not context_keys:
        print(f"erp_server: ${CONTEXT_KEY_ENV} must be set (the gateways' context key)", file=sys.stderr)
        return 1
    asyncio.run(_serve(args, context_keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
