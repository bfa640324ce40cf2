"""deploy/k8s/: schema-valid manifests (kubernetes-validate, offline, pinned Kubernetes version)
whose parts fit together and fit the gateway: probes on the gateway's own endpoints and port,
the config in the ConfigMap is deploy/gateway.yaml and loads with the Deployment's environment,
every Secret reference resolves, and the Secret holds placeholders the gateway refuses."""

from __future__ import annotations

import base64
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.auth.keysources import StaticKeys
from gateway.config import load_config
from gateway.crypto import Keyring, KeyringError

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
DEPLOY_CONFIG = K8S.parent / "gateway.yaml"
KUBERNETES_VERSION = "1.30.0"  # schemas ship inside kubernetes-validate: no network needed
MANIFESTS = sorted(K8S.glob("*.yaml"))


def manifests() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            found[doc["kind"]] = doc
    return found


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    # The console script's own module, run by this interpreter (PATH may lack the venv's bin).
    command = [sys.executable, "-m", "kubernetes_validate", "-k", KUBERNETES_VERSION, "--strict", "--quiet"]
    return subprocess.run([*command, *map(str, paths)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def kinds() -> dict[str, dict[str, Any]]:
    return manifests()


def container(kinds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def test_every_manifest_validates_against_the_kubernetes_schema() -> None:
    assert {p.name for p in MANIFESTS} >= {
        "deployment.yaml",
        "service.yaml",
        "pdb.yaml",
        "secret.yaml",
        "configmap.yaml",
    }
    result = validate(*MANIFESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validator_refuses_a_misspelt_field(tmp_path: Path) -> None:
    broken = tmp_path / "deployment.yaml"
    broken.write_text((K8S / "deployment.yaml").read_text().replace("readinessProbe:", "readinesProbe:"))
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
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    drain = load_config_with(container(kinds), kinds, tmp_path).listen.drain_timeout
    assert pod["terminationGracePeriodSeconds"] >= drain + 5 + 5  # preStop pause + margin


def test_service_and_pdb_select_the_deployments_pods(kinds: dict[str, dict[str, Any]]) -> None:
    deployment = kinds["Deployment"]["spec"]
    labels = deployment["template"]["metadata"]["labels"]
    assert deployment["selector"]["matchLabels"].items() <= labels.items()
    assert kinds["Service"]["spec"]["selector"].items() <= labels.items()
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert kinds["Service"]["spec"]["ports"][0]["targetPort"] == "https"
    assert 1 <= kinds["PodDisruptionBudget"]["spec"]["minAvailable"] < deployment["replicas"]
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_secret_references_resolve_and_hold_only_placeholders(kinds: dict[str, dict[str, Any]]) -> None:
    secret = kinds["Secret"]
    values = secret["stringData"]
    refs = [env["valueFrom"]["secretKeyRef"] for env in container(kinds)["env"] if "valueFrom" in env]
    assert {ref["name"] for ref in refs} == {secret["metadata"]["name"]}
    assert {ref["key"] for ref in refs} == set(values)
    assert {"master-key", "context-key"} <= set(values)
    assert all(value.startswith("REPLACE-ME") for value in values.values())
    # SECURITY: a forgotten placeholder must stop the gateway, not become its master key.
    with pytest.raises(KeyringError):
        Keyring.parse(values["master-key"])


def load_config_with(gateway: dict[str, Any], kinds: dict[str, dict[str, Any]], tmp: Path) -> Any:
    """Load the ConfigMap's gateway.yaml through the real loader with the Deployment's env."""
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
    volumes = {v["name"]: v for v in kinds["Deployment"]["spec"]["template"]["spec"]["volumes"]}
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
    # The placeholder IdP key is a usable public key (the gateway starts), marked for replacement.
    keys = StaticKeys.from_jwks_file(tmp_path / "idp.jwks.json")
    assert keys.known_keys("replace-me")


def test_the_pod_runs_locked_down(kinds: dict[str, dict[str, Any]]) -> None:
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    security = container(kinds)["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
