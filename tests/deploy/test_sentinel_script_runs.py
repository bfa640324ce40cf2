"""The compose file's Redis and Sentinel start scripts, run as they are (sh, their heredocs,
redis-server reading its config on stdin, redis-sentinel) with loopback in place of Docker's
names: the configs are ones Redis and Sentinel accept, both refuse clients without the password,
the Sentinel finds the primary under the service name the gateways' state URL asks for (and the
replica, which needs `sentinel auth-pass`), and the gateway's own store connects with that URL."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.errors import StoreUnavailable
from gateway.state.redis import RedisStore
from gateway.state.redis_url import parse_redis_url
from tests.deploy.test_compose import OPERATOR_ENV, interpolate
from tests.support.gateway_proc import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def spawn(
    args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.terminate()
    for proc in started:
        proc.wait(timeout=10)


def poll(check: object, deadline_s: float = 20.0) -> object:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            answer = check()  # type: ignore[operator]
            if answer:
                return answer
        except redis.RedisError:
            pass
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def loopback_script(script: str, *swaps: tuple[str, str]) -> str:
    """A compose start script with loopback names and ports; ``docker-entrypoint.sh`` (the
    image's step down from root) is dropped: these tests run unprivileged already."""
    script = interpolate(script, OPERATOR_ENV).replace("docker-entrypoint.sh ", "")
    for old, new in swaps:
        assert old in script, old
        script = script.replace(old, new)
    return script


async def test_the_compose_store_scripts_require_the_password_and_serve_the_gateways_url(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    state_url = interpolate(services["gateway-1"]["environment"]["SHOPINO_STATE_URL"], OPERATOR_ENV)
    target = parse_redis_url(state_url)
    master_name, password = target.service, OPERATOR_ENV["SHOPINO_REDIS_PASSWORD"]
    primary, replica, sentinel = free_port(), free_port(), free_port()
    local = "bind 127.0.0.1\nsave ''\nappendonly no"
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "SHOPINO_REDIS_PASSWORD": password}
    for name, port, swap in (
        ("redis-primary", primary, []),
        ("redis-replica", replica, [("replicaof redis-primary 6379", f"replicaof 127.0.0.1 {primary}")]),
    ):
        (tmp_path / name).mkdir()
        script = loopback_script(
            services[name]["command"][-1],
            ("port 6379", f"port {port}"),
            ("appendonly yes", local),
            (f"replica-announce-ip {name}", "replica-announce-ip 127.0.0.1"),
            *swap,
        )
        processes.append(spawn(["sh", "-c", script], tmp_path / f"{name}.log", env, tmp_path / name))
    authed = redis.Redis(port=replica, socket_timeout=1, password=password)
    try:  # masterauth: the replica's link to the primary is up (before the Sentinel looks)
        poll(lambda: authed.info("replication")["master_link_status"] == "up")
    finally:
        authed.close()
    script = loopback_script(
        services["sentinel-1"]["command"][-1],
        ("redis-primary 6379", f"127.0.0.1 {primary}"),
        ("port 26379", f"port {sentinel}\nbind 127.0.0.1"),
        ("/tmp/sentinel.conf", str(tmp_path / "sentinel.conf")),
    )
    assert f"sentinel monitor {master_name} 127.0.0.1 {primary} 2" in script
    processes.append(spawn(["sh", "-c", script], tmp_path / "sentinel.log", env, tmp_path))
    poll(lambda: (tmp_path / "sentinel.conf").exists())
    assert (tmp_path / "sentinel.conf").stat().st_mode & 0o077 == 0  # it holds the password

    # SECURITY: without the password neither Redis nor the Sentinel answers.
    for port in (primary, replica, sentinel):
        # No retries: redis-py retries an AuthenticationError (a ConnectionError) with backoff.
        anonymous = redis.Redis(port=port, socket_timeout=1, retry=Retry(NoBackoff(), 0))
        try:
            poll(lambda a=anonymous: _refuses(a))
        finally:
            anonymous.close()
    client = redis.Redis(port=sentinel, socket_timeout=1, password=password)
    try:
        master = poll(lambda: client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", master_name))
        assert [part.decode() for part in master] == ["127.0.0.1", str(primary)]  # type: ignore[attr-defined]
        # The replica is found through the primary's INFO: only with `sentinel auth-pass`.
        replicas = poll(lambda: client.execute_command("SENTINEL", "REPLICAS", master_name))
        assert replicas, (tmp_path / "sentinel.log").read_text()
    finally:
        client.close()

    # The compose healthchecks pass with the password and fail without it (a NOAUTH answer
    # exits 0 from redis-cli: they must not count it as healthy).
    checks = [
        ("redis-primary", [("redis-cli ping", f"redis-cli -p {primary} ping")]),
        ("sentinel-1", [("-p 26379", f"-p {sentinel}"), ("grep -qx 6379", f"grep -qx {primary}")]),
    ]
    for name, swaps in checks:
        kind, shell, dash_c, command = services[name]["healthcheck"]["test"]
        assert (kind, shell, dash_c) == ("CMD", "sh", "-c")
        command = loopback_script(command, *swaps)
        for secret, healthy in ((password, True), ("wrong", False), ("", False)):
            result = subprocess.run(
                ["sh", "-c", command],
                env={**env, "SHOPINO_REDIS_PASSWORD": secret},
                capture_output=True,
                timeout=10,
            )
            assert (result.returncode == 0) is healthy, (name, secret == password)

    # The gateway's own store on the compose URL (Sentinel hosts moved to loopback).
    url = state_url.replace(",".join(f"{h}:{p}" for h, p in target.hosts), f"127.0.0.1:{sentinel}")
    store = RedisStore(url)
    await store.open()
    try:
        await store.set("deploy-test", b"ok")
        assert await store.get("deploy-test") == b"ok"
    finally:
        await store.close()
    wrong = RedisStore(url.replace(password, "wrong-password", 1))  # Redis password wrong
    await wrong.open()
    try:
        with pytest.raises(StoreUnavailable):
            await wrong.get("deploy-test")
    finally:
        await wrong.close()


def _refuses(client: redis.Redis) -> bool:
    try:
        client.ping()
    except redis.AuthenticationError:
        return True
    except redis.ResponseError as exc:
        return "NOAUTH" in str(exc)
    return False
