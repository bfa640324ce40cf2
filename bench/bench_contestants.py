"""The upstream and the contestants of run_proxy_bench.py: configs, start-up and readiness.

Each contestant's start() returns the port it listens on and the pid whose process tree is
charged for CPU; it raises StartFailed when it cannot run or does not do its job, and the
benchmark then lists it as skipped.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jwt
import yaml
from bench_support import (
    BENCH_DIR,
    LOAD_CPU,
    LOOPBACK,
    PROJECT_ROOT,
    PROXY_CPU,
    BenchError,
    Launcher,
    StartFailed,
    free_port,
    http_get,
    listen_server,
    wait_ready,
    which,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

# The upstream's fixed 100-byte answer; every contestant must hand back exactly this.
BODY = "ok:" + "0123456789" * 9 + "abcdefg"
JWT_SUB = "bench-user-0001"
JWT_ISS = "https://id.bench.invalid"
JWT_AUD = "shopino-gateway"
JWT_KID = "bench"
GATEWAY_TOKEN_LIFETIME = 2 * 3600  # within the gateway's max_token_lifetime (24h)
START_TIMEOUT = 20.0


@dataclass(frozen=True)
class JwtMaterial:
    public_pem: Path
    token: str
    tampered: str
    alg_none: str
    hs256_with_public_key: str
    jwks_file: Path  # the public key as a JWKS (kid JWT_KID) for the gateway's issuer config
    gateway_token: str  # ES256, with every claim an MFA-protected gateway route needs
    signing_key: ec.EllipticCurvePrivateKey | None = None  # for workloads that mint more tokens


@dataclass(frozen=True)
class BenchEnv:
    launcher: Launcher
    workdir: Path
    project_root: Path
    upstream_port: int
    upstream_pid: int
    jwt: JwtMaterial
    proxy_cpu: int
    python: str  # interpreter for the Python contestants

    @property
    def bearer(self) -> dict[str, str]:
        # One token for every contestant, so all parse and forward the same bytes: the one with
        # the claims an MFA route needs (HAProxy verifies it too: same key, same algorithm).
        return {"Authorization": f"Bearer {self.jwt.gateway_token}"}


@dataclass(frozen=True)
class Running:
    port: int
    pid: int
    headers: dict[str, str] | None = None  # what wrk sends; None = env.bearer
    lua: Path | None = None  # a wrk script of its own (it builds every request); None = wrk_report.lua
    path: str = "/"
    side_pid: int | None = None  # a helper whose CPU is reported beside the proxy's (Redis)


@dataclass(frozen=True)
class Contestant:
    name: str
    what: str
    start: Callable[[BenchEnv], Running]


# ---------------------------------------------------------------- probes
def body_probe(port: int, headers: dict[str, str] | None = None) -> Callable[[], str | None]:
    """Ready when GET / answers 200 with the upstream's exact body."""

    def probe() -> str | None:
        status, body = http_get(port, "/", headers)
        if status == 200 and body == BODY.encode():
            return None
        return f"GET / -> {status} {body[:80]!r}"

    return probe


def health_probe(port: int) -> Callable[[], str | None]:
    """Ready when the gateway's /_gateway/health answers 200."""

    def probe() -> str | None:
        status, body = http_get(port, "/_gateway/health")
        return None if status == 200 else f"health -> {status} {body[:80]!r}"

    return probe


# ---------------------------------------------------------------- nginx
def _nginx_conf(rundir: Path, server_block: str, upstream_block: str = "") -> str:
    return f"""
worker_processes 1;
daemon off;
master_process on;
pid {rundir}/nginx.pid;
error_log {rundir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
    client_body_temp_path {rundir}/body;
    proxy_temp_path {rundir}/proxy;
    fastcgi_temp_path {rundir}/fastcgi;
    uwsgi_temp_path {rundir}/uwsgi;
    scgi_temp_path {rundir}/scgi;
    {upstream_block}
    server {{
        {server_block}
    }}
}}
"""


def _start_nginx(launcher: Launcher, workdir: Path, name: str, conf: str, port: int, cpu: int) -> Running:
    nginx = which("nginx")
    if nginx is None:
        raise StartFailed("nginx is not installed")
    rundir = workdir / name
    rundir.mkdir(parents=True, exist_ok=True)
    (rundir / "nginx.conf").write_text(conf)
    argv = [nginx, "-p", str(rundir), "-e", str(rundir / "error.log"), "-c", str(rundir / "nginx.conf")]
    proc = launcher.start(name, argv, cpu=cpu)
    wait_ready(launcher, name, proc, body_probe(port), START_TIMEOUT)
    return Running(port=port, pid=proc.pid)


def start_upstream(launcher: Launcher, workdir: Path, cpu: int) -> Running:
    port = free_port()
    rundir = workdir / "upstream"
    server = f"""listen {LOOPBACK}:{port} backlog=4096;
        location / {{ default_type text/plain; return 200 "{BODY}"; }}"""
    return _start_nginx(launcher, workdir, "upstream", _nginx_conf(rundir, server), port, cpu)


def start_bench_env(launcher: Launcher, workdir: Path, python: str) -> BenchEnv:
    """The nginx upstream (on the load CPU) and the key, JWKS and tokens every contestant uses."""
    try:
        upstream = start_upstream(launcher, workdir, LOAD_CPU)
    except StartFailed as exc:
        raise BenchError(f"the nginx upstream did not start: {exc}") from exc
    return BenchEnv(
        launcher=launcher,
        workdir=workdir,
        project_root=PROJECT_ROOT,
        upstream_port=upstream.port,
        upstream_pid=upstream.pid,
        jwt=make_jwt_material(workdir),
        proxy_cpu=PROXY_CPU,
        python=python,
    )


def start_direct(env: BenchEnv) -> Running:
    """The upstream itself: already running, nothing to start."""
    status, body = http_get(env.upstream_port)
    if status != 200 or body != BODY.encode():
        raise StartFailed(f"upstream answers {status}")
    return Running(port=env.upstream_port, pid=env.upstream_pid)


def start_nginx_proxy(env: BenchEnv) -> Running:
    port = free_port()
    rundir = env.workdir / "nginx-proxy"
    upstream = f"""upstream app {{
        server {LOOPBACK}:{env.upstream_port};
        keepalive 64;
        keepalive_requests 10000000;
    }}"""
    server = f"""listen {LOOPBACK}:{port} backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}"""
    conf = _nginx_conf(rundir, server, upstream)
    return _start_nginx(env.launcher, env.workdir, "nginx-proxy", conf, port, env.proxy_cpu)


# ---------------------------------------------------------------- aiohttp-min
def aiohttp_min_argv(env: BenchEnv, port: int) -> list[str]:
    script = str(BENCH_DIR / "minimal_aiohttp_proxy.py")
    return [env.python, script, "--port", str(port), "--upstream", f"http://{LOOPBACK}:{env.upstream_port}"]


def start_aiohttp_min(env: BenchEnv) -> Running:
    port = free_port()
    proc = env.launcher.start("aiohttp-min", aiohttp_min_argv(env, port), cpu=env.proxy_cpu)
    wait_ready(env.launcher, "aiohttp-min", proc, body_probe(port, env.bearer), START_TIMEOUT)
    return Running(port=port, pid=proc.pid)


def python_floor_argv(env: BenchEnv, port: int) -> list[str]:
    script = str(BENCH_DIR / "minimal_httptools_proxy.py")
    return [env.python, script, "--port", str(port), "--upstream-port", str(env.upstream_port)]


def start_python_floor(env: BenchEnv) -> Running:
    port = free_port()
    proc = env.launcher.start("python-floor", python_floor_argv(env, port), cpu=env.proxy_cpu)
    wait_ready(env.launcher, "python-floor", proc, body_probe(port, env.bearer), START_TIMEOUT)
    return Running(port=port, pid=proc.pid)


# ---------------------------------------------------------------- haproxy-jwt
def make_jwt_material(workdir: Path) -> JwtMaterial:
    """A fresh EC P-256 key pair, an ES256 token and three tokens that must be refused."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_pem = workdir / "jwt-es256-public.pem"
    public_pem.write_bytes(pem)
    now = int(time.time())
    claims = {
        "sub": JWT_SUB,
        "iss": JWT_ISS,
        "aud": JWT_AUD,
        "tid": "tenant-bench",
        "iat": now,
        "exp": now + 86400,
    }
    token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": JWT_KID})
    jwks_file = workdir / "jwt-es256-jwks.json"
    jwks_file.write_text(json.dumps(jwks_for(key.public_key())))
    header, payload, signature = token.split(".")
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    tampered = f"{header}.{payload}.{signature[:middle]}{flipped}{signature[middle + 1 :]}"
    none_header = _b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    hs_header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    hs_sig = hmac.new(pem, f"{hs_header}.{payload}".encode(), hashlib.sha256).digest()
    return JwtMaterial(
        public_pem=public_pem,
        token=token,
        tampered=tampered,
        alg_none=f"{none_header}.{payload}.",
        hs256_with_public_key=f"{hs_header}.{payload}.{_b64url(hs_sig)}",
        jwks_file=jwks_file,
        gateway_token=mint_gateway_token(key, now),
        signing_key=key,
    )


def jwks_for(public_key: ec.EllipticCurvePublicKey) -> dict[str, object]:
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(public_key, as_dict=True)
    return {"keys": [{**jwk, "kid": JWT_KID, "alg": "ES256", "use": "sig"}]}


def mint_gateway_token(key: ec.EllipticCurvePrivateKey, now: int, jti: str | None = None) -> str:
    """An ES256 token the gateway accepts on an MFA route (the HAProxy token has no amr/roles)."""
    claims: dict[str, object] = {
        "iss": JWT_ISS,
        "aud": JWT_AUD,
        "sub": JWT_SUB,
        "tid": "bench",
        "roles": ["bench"],
        "amr": ["pwd", "otp"],
        "auth_time": now,
        "iat": now,
        "exp": now + GATEWAY_TOKEN_LIFETIME,
    }
    if jti is not None:
        claims["jti"] = jti
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": JWT_KID})


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def haproxy_config(port: int, upstream_port: int, pem: Path, stats_socket: Path) -> str:
    return f"""
global
    nbthread 1
    maxconn 4000
    stats socket {stats_socket} mode 600 level admin

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend fe_jwt
    bind {LOOPBACK}:{port}
    # per-user request rate, keyed by the verified token's sub claim
    stick-table type string len 64 size 100k expire 60s store http_req_rate(10s)
    acl jwt_alg_es256 var(txn.jwt_alg) -m str ES256
    acl jwt_signature_ok var(txn.bearer),jwt_verify(txn.jwt_alg,"{pem}") -m int 1
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.jwt_alg) var(txn.bearer),jwt_header_query('$.alg')
    # the alg check first: never let the token pick HMAC against a public key
    http-request deny deny_status 401 unless jwt_alg_es256
    http-request deny deny_status 401 unless jwt_signature_ok
    http-request set-var(txn.sub) var(txn.bearer),jwt_payload_query('$.sub')
    http-request deny deny_status 401 unless {{ var(txn.sub) -m found }}
    http-request track-sc0 var(txn.sub)
    # a limit high enough never to trigger: the cost of tracking is what is measured
    http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt 100000000 }}
    default_backend be_app

backend be_app
    http-reuse always
    server app {LOOPBACK}:{upstream_port}
"""


def start_haproxy_jwt(env: BenchEnv) -> Running:
    haproxy = which("haproxy")
    if haproxy is None:
        raise StartFailed("haproxy is not installed")
    port = free_port()
    rundir = env.workdir / "haproxy-jwt"
    rundir.mkdir(parents=True, exist_ok=True)
    stats_socket = rundir / "stats.sock"
    cfg = rundir / "haproxy.cfg"
    cfg.write_text(haproxy_config(port, env.upstream_port, env.jwt.public_pem, stats_socket))
    check = env.launcher.start("haproxy-jwt-check", [haproxy, "-c", "-f", str(cfg)], cpu=None)
    if check.wait(timeout=30) != 0:
        raise StartFailed(f"config rejected: {env.launcher.log_tail('haproxy-jwt-check')}")
    proc = env.launcher.start("haproxy-jwt", [haproxy, "-db", "-f", str(cfg)], cpu=env.proxy_cpu)
    wait_ready(env.launcher, "haproxy-jwt", proc, body_probe(port, env.bearer), START_TIMEOUT)
    verify_haproxy_does_the_job(port, env.jwt, stats_socket)
    return Running(port=port, pid=proc.pid)


def verify_haproxy_does_the_job(port: int, material: JwtMaterial, stats_socket: Path) -> None:
    """200 with the token; 401 without, tampered, alg=none, HS256-with-the-public-key."""
    refused = {
        "no token": None,
        "tampered signature": material.tampered,
        "alg none": material.alg_none,
        "HS256 keyed with the public key": material.hs256_with_public_key,
    }
    for label, token in refused.items():
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        status, _ = http_get(port, "/", headers)
        if status != 401:
            raise StartFailed(f"verification failed: {label} -> {status}, expected 401")
    for token in (material.token, material.gateway_token):  # the benchmark sends the second
        status, body = http_get(port, "/", {"Authorization": f"Bearer {token}"})
        if status != 200 or body != BODY.encode():
            raise StartFailed(f"verification failed: valid token -> {status}")
    table = _haproxy_command(stats_socket, "show table fe_jwt")
    if f"key={JWT_SUB}" not in table:
        raise StartFailed(f"verification failed: sub not tracked in stick table: {table[:200]}")


def _haproxy_command(stats_socket: Path, command: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(stats_socket))
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


# ---------------------------------------------------------------- gateway
def gateway_config(
    port: int,
    admin_port: int,
    state_dir: Path,
    upstream_port: int,
    *,
    access_log: bool = True,
    jwks_file: Path | None = None,
) -> str:
    """One route to the upstream: ``auth: none``, or with ``jwks_file`` the default ``auth: jwt``
    with ``mfa: true`` against one issuer whose keys are that JWKS."""
    route: dict[str, object] = {"name": "bench", "prefix": "/", "upstream": "app"}
    if jwks_file is None:
        route["auth"] = "none"
    config: dict[str, object] = {
        "listen": {"host": LOOPBACK, "port": port, "tls": "off", "workers": 1, **listen_server()},
        "admin": {"listen": f"{LOOPBACK}:{admin_port}"},
        "state": {"url": f"local:{state_dir}"},
        "upstreams": {"app": {"urls": [f"http://{LOOPBACK}:{upstream_port}"]}},
        "routes": [route],
        "logging": {"level": "warning", "access_log": access_log},
        "audit": {"spool_dir": str(state_dir.parent / "audit-spool")},
    }
    if jwks_file is not None:
        config["auth"] = {
            "issuers": [{"issuer": JWT_ISS, "audience": JWT_AUD, "jwks_file": str(jwks_file)}],
            "max_token_lifetime": "24h",
        }
    return yaml.safe_dump(config, sort_keys=False)


_MASTER_KEY = base64.b64encode(os.urandom(32)).decode()  # a throwaway key for the bench run


def prepare_gateway(
    env: BenchEnv, name: str, *, access_log: bool = True, jwt_auth: bool = False
) -> tuple[int, Path, list[str], dict[str, str]]:
    """The port, run directory, command line and environment of one gateway contestant (its
    config written to the run directory)."""
    port, admin_port = free_port(), free_port()
    rundir = env.workdir / name
    rundir.mkdir(parents=True, exist_ok=True)
    cfg = rundir / "gateway.yaml"
    jwks_file = env.jwt.jwks_file if jwt_auth else None
    cfg.write_text(
        gateway_config(
            port, admin_port, rundir / "state", env.upstream_port, access_log=access_log, jwks_file=jwks_file
        )
    )
    pythonpath = os.pathsep.join(filter(None, [str(env.project_root), os.environ.get("PYTHONPATH")]))
    environ = {**os.environ, "PYTHONPATH": pythonpath, "SHOPINO_GATEWAY_MASTER_KEY": _MASTER_KEY}
    return port, rundir, [env.python, "-m", "gateway", "run", "-c", str(cfg)], environ


def start_gateway(
    env: BenchEnv, *, access_log: bool = True, jwt_auth: bool = False, name: str | None = None
) -> Running:
    """One gateway contestant from ``env.project_root``'s code; ``name`` defaults to the route's."""
    name = name or ("gateway-jwt" if jwt_auth else "gateway" if access_log else "gateway-nolog")
    port, _, argv, environ = prepare_gateway(env, name, access_log=access_log, jwt_auth=jwt_auth)
    proc = env.launcher.start(name, argv, cpu=env.proxy_cpu, env=environ, cwd=env.project_root)
    wait_ready(env.launcher, name, proc, health_probe(port), START_TIMEOUT)
    headers = env.bearer
    probe = body_probe(port, headers)()
    if probe is not None:
        raise StartFailed(f"healthy but does not proxy: {probe}")
    if jwt_auth:
        verify_gateway_jwt_does_the_job(port, env.jwt)
    return Running(port=port, pid=proc.pid, headers=headers)


def verify_gateway_jwt_does_the_job(port: int, material: JwtMaterial) -> None:
    """401 without a token, with a tampered signature, and with the HAProxy token (no amr)."""
    tampered = material.gateway_token[:-8] + ("A" if material.gateway_token[-8] != "A" else "B")
    refused = {
        "no token": None,
        "tampered signature": tampered + material.gateway_token[-7:],
        "token without MFA (amr)": material.token,
    }
    for label, token in refused.items():
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        status, _ = http_get(port, "/", headers)
        if status != 401:
            raise StartFailed(f"verification failed: {label} -> {status}, expected 401")


CONTESTANTS: tuple[Contestant, ...] = (
    Contestant("direct", "nginx upstream, no proxy (CPU 1)", start_direct),
    Contestant("nginx-proxy", "nginx reverse proxy, keep-alive pool", start_nginx_proxy),
    Contestant("aiohttp-min", "bench/minimal_aiohttp_proxy.py", start_aiohttp_min),
    Contestant(
        "python-floor",
        "bench/minimal_httptools_proxy.py: uvloop + httptools forwarding bytes, no header work",
        start_python_floor,
    ),
    Contestant("haproxy-jwt", "HAProxy ES256 jwt_verify + per-sub stick table", start_haproxy_jwt),
    Contestant("gateway", "python -m gateway run, route auth: none, access log on", start_gateway),
    Contestant(
        "gateway-nolog",
        "the same with logging.access_log: false (logging cost = ratio to gateway)",
        functools.partial(start_gateway, access_log=False),
    ),
    Contestant(
        "gateway-jwt",
        "the gateway on an auth: jwt + mfa route, valid ES256 token (auth cost = ratio to gateway)",
        functools.partial(start_gateway, jwt_auth=True),
    ),
)
