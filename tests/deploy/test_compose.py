"""deploy/compose.yaml without a Docker daemon: the file is read with PyYAML, and everything it
hands the gateway goes through the gateway's real code - the mounted config through the real
config loader with the environment compose would pass, the certificate names the way the
gateway writes them, haproxy.cfg through ``haproxy -c``, and the demo ERP's command run as a
real process on loopback."""

from __future__ import annotations

import base64
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.auth.keysources import StaticKeys
from gateway.config.errors import ConfigError
from gateway.config_model import GatewayConfig
from gateway.config_schema import load_config
from gateway.crypto import Keyring
from gateway.demo.issuer import DEFAULT_ISSUER
from gateway.server.tls import self_signed_certificate
from gateway.state.redis_url import parse_redis_url
from tests.support.gateway_proc import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
GATEWAYS = ("gateway-1", "gateway-2")
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")
# Variables the gateway process reads itself; every other SHOPINO_* must be used by the config.
READ_BY_THE_GATEWAY = {
    "SHOPINO_GATEWAY_CONFIG",
    "SHOPINO_GATEWAY_MASTER_KEY",
    "SHOPINO_GATEWAY_CONTEXT_KEY",
}
# What an operator exports before `docker compose up` (the file's own instructions).
OPERATOR_ENV = {
    "SHOPINO_GATEWAY_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
    "SHOPINO_GATEWAY_CONTEXT_KEY": secrets.token_urlsafe(32),
    "SHOPINO_ADMIN_TOKEN_SHA256": "b" * 64,
    "SHOPINO_REDIS_PASSWORD": secrets.token_hex(32),
}
STORE = ("redis-primary", "redis-replica", *SENTINELS)
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, environ: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$`` (a literal ``$``,
    for the container's shell); KeyError when required and unset, as compose refuses to start."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if environ.get(name):
            return environ[name]
        if op in (":-", "-"):
            return arg
        raise KeyError(name)

    return "$".join(_INTERPOLATION.sub(one, part) for part in value.split("$$"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def gateway_env(service: dict[str, Any]) -> dict[str, str]:
    return {name: interpolate(str(value), OPERATOR_ENV) for name, value in service["environment"].items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source (a named volume, or a path relative to deploy/)."""
    found = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        found[target] = source
    return found


def test_the_topology(compose: dict[str, Any]) -> None:
    assert set(services(compose)) == {
        "redis-primary",
        "redis-replica",
        *SENTINELS,
        "tls-init",
        "erp",
        *GATEWAYS,
        "proxy",
    }
    for name, service in services(compose).items():
        if service["image"] == "shopino-gateway:local":
            assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file(), name
    replica = services(compose)["redis-replica"]["command"][-1]
    assert re.search(r"^\s*replicaof redis-primary 6379$", replica, re.M)


def test_redis_and_the_sentinels_refuse_to_start_without_a_password(compose: dict[str, Any]) -> None:
    # SECURITY: no unauthenticated Redis or Sentinel; the password comes from the operator's
    # environment like the other secrets, and compose refuses to start without it.
    for name in STORE:
        service = services(compose)[name]
        assert str(service["environment"]["SHOPINO_REDIS_PASSWORD"]).startswith("${SHOPINO_REDIS_PASSWORD:?")
        with pytest.raises(KeyError):
            interpolate(service["environment"]["SHOPINO_REDIS_PASSWORD"], {})
        script = interpolate(service["command"][-1], OPERATOR_ENV)  # $$: for the container's sh
        assert re.search(r"^\s*requirepass \$SHOPINO_REDIS_PASSWORD$", script, re.M), name
        # Healthchecks must authenticate, and only PONG / the master's port count (a NOAUTH
        # answer exits 0 as well).
        check = interpolate(" ".join(service["healthcheck"]["test"]), OPERATOR_ENV)
        assert 'REDISCLI_AUTH="$SHOPINO_REDIS_PASSWORD"' in check and "grep -qx" in check
    for name in ("redis-primary", "redis-replica"):
        script = interpolate(services(compose)[name]["command"][-1], OPERATOR_ENV)
        assert re.search(r"^\s*masterauth \$SHOPINO_REDIS_PASSWORD$", script, re.M)
        # The config arrives on stdin: the password is on no command line.
        assert "redis-server -" in script and "--requirepass" not in script
    for name in SENTINELS:
        script = interpolate(services(compose)[name]["command"][-1], OPERATOR_ENV)
        assert re.search(r"^\s*sentinel auth-pass shopino \$SHOPINO_REDIS_PASSWORD$", script, re.M)
        assert "umask 077" in script
    for name in GATEWAYS:
        with pytest.raises(KeyError):
            interpolate(services(compose)[name]["environment"]["SHOPINO_STATE_URL"], {})


def test_the_store_and_the_erp_sit_on_internal_networks_shared_only_with_the_gateways(
    compose: dict[str, Any],
) -> None:
    networks = compose["networks"]
    members: dict[str, set[str]] = {name: set() for name in networks}
    for name, service in services(compose).items():
        for network in service.get("networks", []):
            members[network].add(name)
    assert networks["store"] == {"internal": True}
    assert members["store"] == {*STORE, *GATEWAYS}
    assert networks["backend"] == {"internal": True}
    assert members["backend"] == {"erp", *GATEWAYS}
    assert members["edge"] == {"proxy", *GATEWAYS}
    assert services(compose)["tls-init"]["network_mode"] == "none"
    # Only the proxy publishes a port, and only on loopback (the demo identity provider's users
    # and passwords are public).
    published = {name: s["ports"] for name, s in services(compose).items() if "ports" in s}
    assert published == {"proxy": ["127.0.0.1:8443:8443"]}


def test_the_demo_erp_and_identity_provider_run_only_in_the_demo_profile(compose: dict[str, Any]) -> None:
    assert services(compose)["erp"]["profiles"] == ["demo"]
    assert [n for n, s in services(compose).items() if "profiles" in s] == ["erp"]
    for name in GATEWAYS:
        # Without the profile the gateways still start (with the operator's own ERP and IdP).
        assert services(compose)[name]["depends_on"]["erp"]["required"] is False
    assert "--profile demo up" in COMPOSE.read_text()


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        if name == "tls-init":  # a one-shot job: others wait for it to complete
            assert "restart" not in service
            continue
        check = service.get("healthcheck")
        assert check and check["test"][0] == "CMD", name
        assert service["restart"] == "unless-stopped", name


def test_depends_on_names_real_services_in_a_startable_order(compose: dict[str, Any]) -> None:
    all_services = services(compose)
    for name, service in all_services.items():
        for target, condition in service.get("depends_on", {}).items():
            assert target in all_services, (name, target)
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in all_services[target], (name, target)
            elif condition["condition"] == "service_completed_successfully":
                assert "restart" not in all_services[target], (name, target)
    # No cycles: repeatedly start the services whose dependencies are all started.
    started: set[str] = set()
    while len(started) < len(all_services):
        ready = {
            n for n, s in all_services.items() if n not in started and set(s.get("depends_on", {})) <= started
        }
        assert ready, f"dependency cycle among {set(all_services) - started}"
        started |= ready
    for gateway in GATEWAYS:
        needs = all_services[gateway]["depends_on"]
        assert {s for s in SENTINELS if needs[s]["condition"] == "service_healthy"} == set(SENTINELS)
        assert needs["erp"]["condition"] == "service_healthy"


def load_gateway_config(service: dict[str, Any], tmp_path: Path) -> tuple[GatewayConfig, dict[str, str]]:
    """The config file the service mounts, through the gateway's loader with its environment.
    Paths inside named volumes are mapped into ``tmp_path`` (filled the way compose would)."""
    env = gateway_env(service)
    volumes = mounts(service)
    config_source = volumes[env["SHOPINO_GATEWAY_CONFIG"]]
    assert not config_source.startswith("/"), "mount the repository's file, relative to deploy/"
    jwks = tmp_path / "idp.jwks.json"
    jwks.write_text('{"keys": []}')
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        patch.setenv("SHOPINO_IDP_JWKS", str(jwks))  # the erp-data volume's file, stand-in
        config = load_config(DEPLOY / config_source)
    return config, env


def environment_problems(service: dict[str, Any]) -> list[str]:
    """Variables the service passes that nobody reads, and ones the config needs but lacks."""
    env = gateway_env(service)
    config_text = (DEPLOY / mounts(service)[env["SHOPINO_GATEWAY_CONFIG"]]).read_text()
    # A misspelt variable would be silently ignored: each must be read by someone.
    unread = [v for v in env if v not in READ_BY_THE_GATEWAY and "${" + v not in config_text]
    missing = [v for v in re.findall(r"\$\{([A-Z0-9_]+)\}", config_text) if v not in env]
    return [f"unread: {v}" for v in unread] + [f"missing: {v}" for v in missing]


@pytest.mark.parametrize("name", GATEWAYS)
def test_the_gateways_config_and_environment_are_what_the_gateway_accepts(
    name: str, compose: dict[str, Any], tmp_path: Path
) -> None:
    service = services(compose)[name]
    config, env = load_gateway_config(service, tmp_path)
    assert environment_problems(service) == []
    Keyring.parse(env["SHOPINO_GATEWAY_MASTER_KEY"])
    assert config.listen.workers == 1 and config.admin.host == "127.0.0.1"
    # Secrets come from the operator's environment, never from the file.
    for secret in ("SHOPINO_GATEWAY_MASTER_KEY", "SHOPINO_GATEWAY_CONTEXT_KEY", "SHOPINO_ADMIN_TOKEN_SHA256"):
        assert str(service["environment"][secret]).startswith("${" + secret + ":?"), secret
    # Each gateway keeps its own audit spool and last anchors.
    assert mounts(service)["/var/lib/shopino"] == f"{name}-data"
    assert config.audit.spool_dir.startswith("/var/lib/shopino/")


def test_a_misspelt_or_missing_variable_is_caught(compose: dict[str, Any]) -> None:
    service = dict(services(compose)["gateway-1"])
    env = dict(service["environment"])
    env["SHOPINO_ERP_URI"] = env.pop("SHOPINO_ERP_URL")
    service["environment"] = env
    assert environment_problems(service) == ["unread: SHOPINO_ERP_URI", "missing: SHOPINO_ERP_URL"]


def test_a_value_the_schema_refuses_is_caught(compose: dict[str, Any], tmp_path: Path) -> None:
    service = dict(services(compose)["gateway-1"])
    service["environment"] = {**service["environment"], "SHOPINO_STATE_URL": "memcached://cache:11211"}
    with pytest.raises(ConfigError) as info:
        load_gateway_config(service, tmp_path)
    assert info.value.errors == ["state.url: expected local:PATH, redis://, rediss:// or redis+sentinel://"]


def test_the_state_url_names_the_sentinels_and_the_monitored_primary(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    config, _ = load_gateway_config(services(compose)["gateway-1"], tmp_path)
    target = parse_redis_url(config.state.url)
    assert target.scheme == "redis+sentinel"
    # Authenticated to Redis and to the Sentinels, with the password the store services get.
    assert target.password == target.sentinel_password == OPERATOR_ENV["SHOPINO_REDIS_PASSWORD"]
    assert OPERATOR_ENV["SHOPINO_REDIS_PASSWORD"] not in target.display
    assert {host for host, _ in target.hosts} == set(SENTINELS)
    for name in SENTINELS:
        script = services(compose)[name]["command"][-1]
        monitor = re.search(r"sentinel monitor (\S+) (\S+) (\d+) (\d+)", script)
        assert monitor is not None, name
        master, host, port, quorum = monitor.groups()
        assert (master, host, port) == (target.service, "redis-primary", "6379")
        assert 2 <= int(quorum) <= len(SENTINELS)
        assert {port for _, port in target.hosts} == {
            int(p) for p in re.findall(r"^\s*port (\d+)$", script, re.M)
        }


@pytest.mark.parametrize("name", GATEWAYS)
def test_login_spraying_and_floods_are_bounded_behind_the_proxy(
    name: str, compose: dict[str, Any], tmp_path: Path
) -> None:
    # Behind haproxy in tcp mode every client has the proxy's address: the per-IP budgets are
    # deployment-wide, but they must still be finite (1e6 failures was unlimited spraying).
    config, _ = load_gateway_config(services(compose)[name], tmp_path)
    login = config.rate_limits.login
    assert 20 <= login.failures_per_ip <= 1000
    assert login.failures_per_username <= 10
    (rule,) = [r for r in config.rate_limits.pre_auth if r.key == "ip"]
    count, _, per = rule.limit.partition("/")
    assert per == "second" and 300 <= int(count) <= 10_000


def test_the_deploy_config_defaults_limit_each_client(tmp_path: Path) -> None:
    # Where client addresses are real (k8s: externalTrafficPolicy: Local) nothing overrides them.
    env = {
        **OPERATOR_ENV,
        "SHOPINO_STATE_URL": "redis://127.0.0.1:9/0",
        "SHOPINO_ERP_URL": "http://127.0.0.1:9",
    }
    env |= {"SHOPINO_IDP_ISSUER": DEFAULT_ISSUER, "SHOPINO_IDP_JWKS": str(tmp_path / "j.json")}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.delenv("SHOPINO_PRE_AUTH_PER_IP", raising=False)
        patch.delenv("SHOPINO_LOGIN_FAILURES_PER_IP", raising=False)
        config = load_config(DEPLOY / "gateway.yaml")
    assert config.rate_limits.login.failures_per_ip == 20
    assert [(r.key, r.limit) for r in config.rate_limits.pre_auth] == [("ip", "300/second")]


def test_tls_and_idp_files_are_where_the_producing_services_write_them(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    all_services = services(compose)
    gateway = all_services["gateway-1"]
    env = gateway_env(gateway)
    # tls-init writes with the gateway's own helper: the names must be the ones it writes.
    init_mounts = mounts(all_services["tls-init"])
    (init_dir,) = init_mounts
    cert, key = self_signed_certificate(tmp_path / "tls")
    gateway_tls_dir = next(t for t, s in mounts(gateway).items() if s == init_mounts[init_dir])
    assert env["SHOPINO_TLS_CERT"] == f"{gateway_tls_dir}/{cert.name}"
    assert env["SHOPINO_TLS_KEY"] == f"{gateway_tls_dir}/{key.name}"
    assert init_dir in all_services["tls-init"]["command"][0]
    # The IdP's JWKS: written by the erp into its volume, read by the gateways from the same one.
    erp = all_services["erp"]
    (erp_dir,) = mounts(erp)
    jwks_out = next(a.split("=", 1)[1] for a in erp["command"] if a.startswith("--jwks-out="))
    gateway_idp_dir = next(t for t, s in mounts(gateway).items() if s == mounts(erp)[erp_dir])
    assert env["SHOPINO_IDP_JWKS"] == gateway_idp_dir + jwks_out.removeprefix(erp_dir)
    assert env["SHOPINO_IDP_ISSUER"] == DEFAULT_ISSUER
    assert (
        erp["environment"]["SHOPINO_GATEWAY_CONTEXT_KEY"]
        == gateway["environment"]["SHOPINO_GATEWAY_CONTEXT_KEY"]
    )


def test_the_proxy_balances_over_both_gateways_on_readiness(compose: dict[str, Any], tmp_path: Path) -> None:
    config, _ = load_gateway_config(services(compose)["gateway-1"], tmp_path)
    haproxy = (DEPLOY / "haproxy.cfg").read_text()
    servers = dict(re.findall(r"^\s*server (\S+) (\S+)$", haproxy, re.M))
    assert servers == {name: f"{name}:{config.listen.port}" for name in GATEWAYS}
    assert re.search(r"^\s*mode tcp$", haproxy, re.M)
    assert "http-check send meth GET uri /_gateway/ready" in haproxy
    assert "/_gateway/ready" in " ".join(services(compose)["gateway-1"]["healthcheck"]["test"])
    assert f"{config.listen.port}:8443" in services(compose)["proxy"]["ports"][0]
    assert mounts(services(compose)["proxy"])["/usr/local/etc/haproxy/haproxy.cfg"] == "./haproxy.cfg"


def test_haproxy_accepts_its_config() -> None:
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(DEPLOY / "haproxy.cfg")], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_erp_service_command_runs_and_publishes_its_jwks(compose: dict[str, Any], tmp_path: Path) -> None:
    erp = services(compose)["erp"]
    assert erp["entrypoint"] == ["python", "-m", "gateway.demo.erp_server"]
    (volume_dir,) = mounts(erp)
    port = free_port()
    args = [
        a.replace(volume_dir, str(tmp_path)).replace("0.0.0.0", "127.0.0.1").replace("9000", str(port))
        for a in erp["command"]
    ]
    env = {
        "PATH": "/usr/bin:/bin",
        "SHOPINO_GATEWAY_CONTEXT_KEY": OPERATOR_ENV["SHOPINO_GATEWAY_CONTEXT_KEY"],
    }
    log = (tmp_path / "erp.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.demo.erp_server", *args],
        env={**env, "PYTHONPATH": str(DEPLOY.parent)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
                    assert answer.status == 200
                break
            except OSError:
                started = proc.poll() is None and time.monotonic() < deadline
                assert started, (tmp_path / "erp.log").read_text()
                time.sleep(0.1)
        jwks = next(Path(a.split("=", 1)[1]) for a in args if a.startswith("--jwks-out="))
        assert StaticKeys.from_jwks_file(jwks).keys.entries  # the gateways' loader accepts it
        key_file = next(Path(a.split("=", 1)[1]) for a in args if a.startswith("--key-file="))
        assert key_file.stat().st_mode & 0o077 == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        log.close()
    assert code == 0


def test_the_erp_refuses_to_start_without_the_context_key(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.demo.erp_server", "--key-file", "k", "--jwks-out", "j"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(DEPLOY.parent)},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
    )
    assert result.returncode == 1 and "SHOPINO_GATEWAY_CONTEXT_KEY" in result.stderr
    assert not (tmp_path / "k").exists()
