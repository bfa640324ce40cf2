"""``shopino-gateway demo``: the demo ERP and the gateway in front of it, in one process.

The gateway runs the shipped config unchanged; the demo only supplies the ``SHOPINO_DEMO_*``
variables that file reads (ports, the backend's URL, a temporary state dir). The shipped config
is ``config/gateway.yaml``; the package carries it as ``gateway/default_config.yaml`` (a symlink
in the source tree, a real file in the wheel) so the demo also runs from an installed package.
State, keys and the self-signed certificate go to a fresh temporary directory, never next to the
package (site-packages may be read-only, and must not collect secrets).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import tempfile
from pathlib import Path

import uvloop

import gateway
from gateway.config.errors import ConfigError
from gateway.config_schema import load_config
from gateway.demo.walkthrough import banner
from gateway.tenancy.keys import ENV_VAR as CONTEXT_KEY_ENV
from gateway.tenancy.keys import PREVIOUS_ENV_VAR as PREVIOUS_CONTEXT_KEY_ENV


def shipped_config_path() -> Path:
    """The config the demo runs: package data, so it is there after ``pip install``."""
    return Path(gateway.__file__).resolve().parent / "default_config.yaml"


def run_demo(*, port: int, admin_port: int, backend_port: int) -> int:
    config_path = shipped_config_path()
    if not config_path.exists():
        print(f"demo: {config_path} is missing: the package is incomplete, reinstall it", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="shopino-demo-"))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            return runner.run(_demo(config_path, workdir, port, admin_port, backend_port))
        except OSError as exc:
            print(
                f"demo: cannot listen ({exc.strerror}); choose other ports with --port, "
                "--admin-port, --backend-port",
                file=sys.stderr,
            )
            return 1


async def _demo(config_path: Path, workdir: Path, port: int, admin_port: int, backend_port: int) -> int:
    from gateway.demo.backend import start_backend
    from gateway.demo.identities import DEMO_PASSWORDS, default_users
    from gateway.demo.issuer import DemoIssuer
    from gateway.logs.setup import configure_logging
    from gateway.server.process import GatewayProcess

    issuer = DemoIssuer()
    users = default_users()
    issuer.write_jwks(workdir / "demo-issuer.jwks.json")
    issuer.write_private_pem(workdir / "demo-issuer.key.pem")
    # SPEC §7: the gateway signs X-Gateway-Context with this key and the demo ERP refuses any
    # request whose context does not verify; one random key per run unless the operator set one.
    if not os.environ.get(CONTEXT_KEY_ENV):
        os.environ[CONTEXT_KEY_ENV] = secrets.token_urlsafe(32)
    keys = [os.environ[CONTEXT_KEY_ENV]]
    if os.environ.get(PREVIOUS_CONTEXT_KEY_ENV):
        keys.append(os.environ[PREVIOUS_CONTEXT_KEY_ENV])
    backend = await start_backend(issuer, users, port=backend_port, context_keys=keys)
    os.environ.update(
        {
            "SHOPINO_DEMO_PORT": str(port),
            "SHOPINO_DEMO_ADMIN_PORT": str(admin_port),
            "SHOPINO_DEMO_UPSTREAM": backend.url,
            "SHOPINO_DEMO_STATE": f"local:{workdir / 'state'}",
            "SHOPINO_DEMO_AUDIT_SPOOL": str(workdir / "audit-spool"),
            "SHOPINO_DEMO_ISSUER": issuer.issuer,
            "SHOPINO_DEMO_JWKS": str(workdir / "demo-issuer.jwks.json"),
        }
    )
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        await backend.close()
        print("\n".join(exc.errors), file=sys.stderr)
        return 1
    configure_logging(config.logging)
    process = GatewayProcess(config, config_path, workdir=workdir / "tls", demo=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(process.reload()))
    try:
        await process.start()
        print(banner(port, admin_port, backend.url, workdir, users, DEMO_PASSWORDS), flush=True)
        await stop.wait()
    finally:
        await process.stop()
        await backend.close()
    print("demo stopped", flush=True)
    return 0
