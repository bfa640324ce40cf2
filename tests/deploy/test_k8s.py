"""deploy/k8s/: schema-valid manifests (kubernetes-validate, offline, pinned Kubernetes version)
whose parts fit together and fit the gateway: probes on the gateway's own endpoints and port,
the config in the ConfigMap is deploy/gateway.yaml and loads with the StatefulSet's environment,
every Secret reference resolves to the example Secret, which lies outside the applied directory,
and every placeholder (IdP JWKS, master key, context key) stops a real gateway at start-up."""

from __future__ import annotations

import base64
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.auth.keysources import KeySourceError, StaticKeys
from gateway.config_schema import load_config
from gateway.crypto import Keyring, KeyringError
from gateway.demo.issuer import DemoIssuer
from gateway.tenancy.keys import ContextKeyError, check_key

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
DEPLOY_CONFIG = K8S.parent / "gateway.yaml"
KUBERNETES_VERSION = "1.30.0"  # schemas ship inside kubernetes-validate: no network needed
# What `kubectl apply -f deploy/k8s/` applies (not recursive): the README's instruction.
MANIFESTS = sorted(K8S.glob("*.yaml"))
SECRET_EXAMPLE = K8S / "examples" / "secret.example.yaml"


def all_docs(*paths: Path) -> list[dict[str, Any]]:
    return [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests() -> dict[str, dict[str, Any]]:
    """kind -> the first such document (service.yaml: the LoadBalancer first), plus the Secret
    from the example file the operator copies."""
    found: dict[str, dict[str, Any]] = {}
    for doc in all_docs(*MANIFESTS, SECRET_EXAMPLE):
        found.setdefault(doc["kind"], doc)
    return found


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    # The console script's own module, run by this interpreter (PATH may lack the venv's bin).
    command = [sys.executable, "-m", "kubernetes_validate", "-k", KUBERNETES_VERSION, "--strict", "--quiet"]
    return subprocess.run([*command, *map(str, paths)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def kinds() -> dict[str, dict[str, Any]]:
    return manifests()


def container(kinds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = kinds["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    return only


def test_every_manifest_validates_against_the_kubernetes_schema() -> None:
    assert {p.name for p in MANIFESTS} >= {"statefulset.yaml", "service.yaml", "pdb.yaml", "configmap.yaml"}
    result = validate(*MANIFESTS, SECRET_EXAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_applied_directory_holds_no_secret() -> None:
    # SECURITY: `kubectl apply -f deploy/k8s/` must never overwrite the operator's real Secret
    # with placeholders; the example lives in a subdirectory a non-recursive apply skips.
    assert all(doc["kind"] != "Secret" for doc in all_docs(*MANIFESTS))
    assert SECRET_EXAMPLE.parent != K8S and SECRET_EXAMPLE.parent.parent == K8S
    assert [doc["kind"] for doc in all_docs(SECRET_EXAMPLE)] == ["Secret"]


def test_the_validator_refuses_a_misspelt_field(tmp_path: Path) -> None:
    broken = tmp_path / "statefulset.yaml"
    broken.write_text((K8S / "statefulset.yaml").read_text().replace("readinessProbe:", "readinesProbe:"))
    result = validate(broken)
    assert result.returncode != 0 and "readinesProbe" in result.stdout + result.stderr


def test_probes_use_the_gateways_ready_and_health_endpoints_on_its_port(
    kinds: dict[str, dict[str, Any]],
) -> None:
    gateway = container(kinds)
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    listen_port = yaml.safe_load(DEPLOY_CONFIG.read_text())["listen"]["port"]
    assert ports["https"] == listen_port
    ready, live = gateway["readinessProbe"]["httpGet"], gateway["livenessProbe"]["httpGet"]
    assert ready == {"path": "/_gateway/ready", "port": "https", "scheme": "HTTPS"}
    assert live == {"path": "/_gateway/health", "port": "https", "scheme": "HTTPS"}


def test_the_grace_period_outlasts_the_drain(kinds: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    pod = kinds["StatefulSet"]["spec"]["template"]["spec"]
    drain = load_config_with(container(kinds), kinds, tmp_path).listen.drain_timeout
    assert pod["terminationGracePeriodSeconds"] >= drain + 5 + 5  # preStop pause + margin


def test_services_and_pdb_select_the_gateway_pods(kinds: dict[str, dict[str, Any]]) -> None:
    workload = kinds["StatefulSet"]["spec"]
    labels = workload["template"]["metadata"]["labels"]
    assert workload["selector"]["matchLabels"].items() <= labels.items()
    services = {doc["metadata"]["name"]: doc["spec"] for doc in all_docs(K8S / "service.yaml")}
    for service in services.values():
        assert service["selector"].items() <= labels.items()
        assert service["ports"][0]["targetPort"] == "https"
    assert kinds["Service"]["spec"]["type"] == "LoadBalancer"
    assert services[workload["serviceName"]].get("clusterIP") == "None"  # the headless one
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= kinds["PodDisruptionBudget"]["spec"]["minAvailable"] < workload["replicas"]
    assert workload["updateStrategy"]["type"] == "RollingUpdate"


def test_the_audit_spool_and_last_anchors_are_on_a_persistent_volume_per_pod(
    kinds: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    # last-anchors/ is how `audit verify` notices a trail stripped of its anchors: an emptyDir
    # would lose it with every rescheduled pod.
    workload = kinds["StatefulSet"]["spec"]
    mount = next(m for m in container(kinds)["volumeMounts"] if m["name"] == "state")
    assert all(v["name"] != "state" for v in workload["template"]["spec"]["volumes"])
    (claim,) = [t for t in workload["volumeClaimTemplates"] if t["metadata"]["name"] == "state"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    assert workload["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    spool = load_config_with(container(kinds), kinds, tmp_path).audit.spool_dir
    assert spool.startswith(mount["mountPath"] + "/")


def test_secret_references_resolve_and_hold_only_placeholders(kinds: dict[str, dict[str, Any]]) -> None:
    secret = kinds["Secret"]
    values = secret["stringData"]
    refs = [env["valueFrom"]["secretKeyRef"] for env in container(kinds)["env"] if "valueFrom" in env]
    assert {ref["name"] for ref in refs} == {secret["metadata"]["name"]}
    assert {ref["key"] for ref in refs} == set(values)
    assert {"master-key", "context-key"} <= set(values)
    assert all(value.startswith("REPLACE-ME") for value in values.values())
    # SECURITY: a forgotten placeholder must stop the gateway, not become its master key...
    with pytest.raises(KeyringError):
        Keyring.parse(values["master-key"])
    # ...nor the context MAC key every backend trusts (it is public, in this repository).
    with pytest.raises(ContextKeyError) as refused:
        check_key("SHOPINO_GATEWAY_CONTEXT_KEY", values["context-key"])
    assert "SHOPINO_GATEWAY_CONTEXT_KEY" in str(refused.value)
    assert values["context-key"] not in str(refused.value)


def load_config_with(gateway: dict[str, Any], kinds: dict[str, dict[str, Any]], tmp: Path) -> Any:
    """Load the ConfigMap's gateway.yaml through the real loader with the StatefulSet's env."""
    data = kinds["ConfigMap"]["data"]
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    generated = {
        "SHOPINO_GATEWAY_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "SHOPINO_GATEWAY_CONTEXT_KEY": secrets.token_urlsafe(32),
        "SHOPINO_ADMIN_TOKEN_SHA256": "a" * 64,
        "SHOPINO_STATE_URL": "redis+sentinel://sentinel:26379/shopino",
    }
    env.update({name: generated[name] for name, value in env.items() if value is None})
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        jwks = tmp / "idp.jwks.json"
        jwks.write_text(data["idp.jwks.json"])
        patch.setenv("SHOPINO_IDP_JWKS", str(jwks))
        config_file = tmp / "gateway.yaml"
        config_file.write_text(data["gateway.yaml"])
        return load_config(config_file)


def test_the_configmap_carries_deploy_gateway_yaml_and_it_loads(
    kinds: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    data = kinds["ConfigMap"]["data"]
    assert data["gateway.yaml"] == DEPLOY_CONFIG.read_text(), "copy deploy/gateway.yaml into configmap.yaml"
    gateway = container(kinds)
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    mounts = {m["name"]: m["mountPath"] for m in gateway["volumeMounts"]}
    volumes = {v["name"]: v for v in kinds["StatefulSet"]["spec"]["template"]["spec"]["volumes"]}
    config_volume = next(name for name, v in volumes.items() if "configMap" in v)
    assert volumes[config_volume]["configMap"]["name"] == kinds["ConfigMap"]["metadata"]["name"]
    assert env["SHOPINO_GATEWAY_CONFIG"] == f"{mounts[config_volume]}/gateway.yaml"
    assert env["SHOPINO_IDP_JWKS"] == f"{mounts[config_volume]}/idp.jwks.json"
    config = load_config_with(gateway, kinds, tmp_path)
    assert config.state.url.startswith("redis+sentinel://")
    assert (config.listen.tls.cert, config.listen.tls.key) == (
        env["SHOPINO_TLS_CERT"],
        env["SHOPINO_TLS_KEY"],
    )
    assert config.listen.tls.cert.startswith(mounts["tls"] + "/")
    assert config.audit.spool_dir.startswith(mounts["state"] + "/")
    # SECURITY: the placeholder IdP JWKS is no key at all (a usable placeholder key would let
    # whoever holds its private half, or a key nobody controls, be trusted): it is refused.
    with pytest.raises(KeySourceError, match="still the deployment placeholder"):
        StaticKeys.from_jwks_file(tmp_path / "idp.jwks.json")


def start_gateway(
    kinds: dict[str, dict[str, Any]], tmp: Path, **override: str
) -> subprocess.CompletedProcess[str]:
    """``shopino-gateway run`` on the ConfigMap's files with the StatefulSet's environment, real
    secrets generated for the Secret's keys unless ``override`` gives one. Every refusal tested
    here happens before a port is bound or the store is asked."""
    data = kinds["ConfigMap"]["data"]
    (tmp / "gateway.yaml").write_text(data["gateway.yaml"])
    (tmp / "idp.jwks.json").write_text(data["idp.jwks.json"])
    env = {e["name"]: e["value"] for e in container(kinds)["env"] if "value" in e}
    env.update(
        SHOPINO_GATEWAY_MASTER_KEY=base64.b64encode(secrets.token_bytes(32)).decode(),
        SHOPINO_GATEWAY_CONTEXT_KEY=secrets.token_urlsafe(32),
        SHOPINO_ADMIN_TOKEN_SHA256="a" * 64,
        # Never reached: the refusals come first (loopback anyway, port 9 discards).
        SHOPINO_STATE_URL="redis+sentinel://127.0.0.1:9/shopino",
        SHOPINO_IDP_JWKS=str(tmp / "idp.jwks.json"),
        PATH="/usr/bin:/bin",
        PYTHONPATH=str(K8S.parents[1]),
    )
    env.update(override)
    return subprocess.run(
        [sys.executable, "-m", "gateway", "run", "-c", str(tmp / "gateway.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_gateway_refuses_to_start_on_the_placeholder_idp_jwks(
    kinds: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    result = start_gateway(kinds, tmp_path)
    assert result.returncode == 1, result.stderr
    assert "auth.issuers: jwks_file " in result.stderr and "still the deployment placeholder" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("key", ["context-key", "short"])
def test_a_gateway_refuses_to_start_on_a_placeholder_or_short_context_key(
    kinds: dict[str, dict[str, Any]], tmp_path: Path, key: str
) -> None:
    value = kinds["Secret"]["stringData"][key] if key == "context-key" else "too-short-0123456789"
    jwks = DemoIssuer().write_jwks(tmp_path / "real.jwks.json")  # a real key: only the context key is wrong
    result = start_gateway(kinds, tmp_path, SHOPINO_GATEWAY_CONTEXT_KEY=value, SHOPINO_IDP_JWKS=str(jwks))
    assert result.returncode == 1, result.stderr
    assert "$SHOPINO_GATEWAY_CONTEXT_KEY: " in result.stderr
    # SECURITY: the refused value is never echoed.
    assert value not in result.stderr and "Traceback" not in result.stderr


def test_the_pod_runs_locked_down(kinds: dict[str, dict[str, Any]]) -> None:
    pod = kinds["StatefulSet"]["spec"]["template"]["spec"]
    security = container(kinds)["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
