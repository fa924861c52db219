"""Kubernetes manifests: schema-valid, real settings, the worker's probes and port, shutdown, KEDA, scrape."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.test_deploy_docker import DOCKERFILE, parse_dockerfile
from tests.test_deploy_support import (
    DEPLOY,
    ROOT,
    RULES,
    grace_margin,
    load_json,
    load_yaml,
    load_yaml_all,
    require,
    settings_from_env,
)

K8S = DEPLOY / "k8s"
#: Kinds defined by CRDs (KEDA, Prometheus Operator): no bundled schema, checked structurally below.
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "PodMonitor", "PrometheusRule"}


def _resources() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_yaml_all(path):
            out[doc["kind"]] = doc
    return out


def _pod() -> dict[str, Any]:
    return dict(_resources()["Deployment"]["spec"]["template"]["spec"])


def _container() -> dict[str, Any]:
    (container,) = _pod()["containers"]
    return dict(container)


def _settings() -> Any:
    return settings_from_env(dict(_resources()["ConfigMap"]["data"]))


def test_kustomization_lists_every_manifest() -> None:
    """kustomization.yaml's resources are exactly the manifest files of the directory."""
    listed = set(load_yaml(K8S / "kustomization.yaml")["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize("version", ["1.30", "1.37"])
def test_builtin_kinds_validate_against_the_kubernetes_schema(version: str) -> None:
    """Deployment, ConfigMap, ServiceAccount, PDB and Namespace pass kubernetes-validate in strict mode."""
    kv = require("kubernetes_validate")
    checked = []
    for kind, doc in _resources().items():
        if kind in CRD_KINDS:
            continue
        kv.validate(doc, version, strict=True)
        checked.append(kind)
    assert {"Deployment", "ConfigMap", "ServiceAccount", "PodDisruptionBudget", "Namespace"} <= set(checked)


def test_schema_validation_rejects_a_misspelt_field() -> None:
    """The same validation fails a Deployment whose probe says `initialDelaySecond` (so the test can fail)."""
    kv = require("kubernetes_validate")
    doc = _resources()["Deployment"]
    doc["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["initialDelaySecond"] = 10
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, "1.30", strict=True)


def test_configmap_holds_real_settings_that_validate() -> None:
    """Every ConfigMap key is a WORKER_* setting and Settings accepts the values (as `worker run` would)."""
    settings = _settings()
    assert settings.dlq_url
    assert settings.queue_url.startswith("https://sqs.")
    container = _container()
    assert container["envFrom"] == [{"configMapRef": {"name": _resources()["ConfigMap"]["metadata"]["name"]}}]
    for variable in container.get("env", []):
        assert variable["name"].startswith("AWS_"), f"{variable['name']}: settings belong in the ConfigMap"


def test_probes_and_port_are_the_workers() -> None:
    """Liveness and startup probe /healthz, readiness /readyz, on the named port that is the worker's port."""
    settings = _settings()
    container = _container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.http_port}
    for probe, path in (
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    # Liveness must not kill a pod during an SQS outage: /healthz stays green then, and its own
    # staleness window is longer than what the probe tolerates before restarting.
    assert container["livenessProbe"]["failureThreshold"] >= 3


def test_grace_period_outlasts_the_drain() -> None:
    """terminationGracePeriodSeconds > shutdown timeout + final flushes; the drain covers a handler run."""
    settings = _settings()
    grace = _pod()["terminationGracePeriodSeconds"]
    assert grace >= settings.shutdown_timeout_seconds + grace_margin()
    assert settings.shutdown_timeout_seconds >= settings.timeout_seconds
    assert settings.wait_time_seconds < settings.shutdown_timeout_seconds


def test_security_context_is_restricted_and_matches_the_image_user() -> None:
    """Non-root as the image's uid, read-only root with /tmp, no escalation, no capabilities, seccomp."""
    pod, container = _pod(), _container()
    (user,) = parse_dockerfile(DOCKERFILE.read_text())[1][-1].all("USER")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == user.split(":")[0]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["privileged"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert pod["automountServiceAccountToken"] is False
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]


def test_image_is_the_released_version_everywhere() -> None:
    """The Deployment and the ECS task run the same image, tagged with the worker's version."""
    from worker import __version__

    image = _container()["image"]
    assert image.endswith(f":{__version__}")
    (ecs,) = load_json(DEPLOY / "ecs" / "task-definition.json")["containerDefinitions"]
    assert ecs["image"] == image


def test_keda_scales_the_deployment_on_its_queue() -> None:
    """aws-sqs-queue on WORKER_QUEUE_URL in its region, per-pod target within the concurrency, no replicas."""
    resources = _resources()
    settings = _settings()
    scaled = resources["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == resources["Deployment"]["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "aws-sqs-queue"
    metadata = trigger["metadata"]
    assert metadata["queueURL"] == settings.queue_url
    region = re.fullmatch(r"sqs\.([a-z0-9-]+)\.amazonaws\.com", urlsplit(settings.queue_url).hostname or "")
    assert region
    assert metadata["awsRegion"] == region.group(1)
    assert 0 < int(metadata["queueLength"]) <= settings.concurrency
    assert all(isinstance(value, str) for value in metadata.values()), "KEDA metadata values are strings"
    assert trigger["authenticationRef"]["name"] == resources["TriggerAuthentication"]["metadata"]["name"]
    assert resources["TriggerAuthentication"]["spec"]["podIdentity"]["provider"] == "aws"
    assert scaled["spec"]["minReplicaCount"] >= 1 <= scaled["spec"]["maxReplicaCount"]
    assert "replicas" not in resources["Deployment"]["spec"], "KEDA owns replicas"


def test_pdb_lets_unready_pods_be_evicted() -> None:
    """The PDB selects the worker pods and has unhealthyPodEvictionPolicy AlwaysAllow."""
    resources = _resources()
    pdb = resources["PodDisruptionBudget"]["spec"]
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    labels = resources["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert "maxUnavailable" in pdb or "minAvailable" in pdb


def test_service_account_carries_the_worker_role() -> None:
    """The pod uses the IRSA-annotated ServiceAccount, whose role is the ECS task role too."""
    resources = _resources()
    account = resources["ServiceAccount"]
    assert _pod()["serviceAccountName"] == account["metadata"]["name"]
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@/-]+", role)
    assert load_json(DEPLOY / "ecs" / "task-definition.json")["taskRoleArn"] == role


def test_podmonitor_scrapes_metrics_under_the_rules_job_name() -> None:
    """The PodMonitor selects the pods, scrapes /metrics on the http port, names the job the rules expect."""
    resources = _resources()
    monitor = resources["PodMonitor"]["spec"]
    labels = resources["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert endpoint["port"] == "http"
    assert endpoint["path"] == "/metrics"
    job = labels[monitor["jobLabel"]]
    assert f'up{{job="{job}"}}' in RULES.read_text()


def test_prometheusrule_carries_the_tested_rules() -> None:
    """The PrometheusRule's groups are exactly deploy/prometheus/rules/sqs-worker.yml's."""
    assert _resources()["PrometheusRule"]["spec"] == load_yaml(RULES)


def test_rules_timeout_is_the_deployed_timeout() -> None:
    """worker:handler_timeout_seconds in the rules equals the manifests' WORKER_TIMEOUT_SECONDS."""
    (record,) = [
        rule
        for group in load_yaml(RULES)["groups"]
        for rule in group["rules"]
        if rule.get("record") == "worker:handler_timeout_seconds"
    ]
    value = re.fullmatch(r"vector\((\d+(?:\.\d+)?)\)", record["expr"].strip())
    assert value
    assert float(value.group(1)) == _settings().timeout_seconds


def test_namespace_enforces_the_restricted_pod_security_standard() -> None:
    """The namespace enforces `restricted`, which the pod spec above satisfies."""
    labels = _resources()["Namespace"]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert load_yaml(K8S / "kustomization.yaml")["namespace"] == _resources()["Namespace"]["metadata"]["name"]


def _deploy_doc() -> str:
    """The configuration page, which holds the sizing table."""
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert "## Sizing the timeouts together" in doc
    return doc


def test_documented_sizing_table_obeys_the_rules_and_matches_the_manifests() -> None:
    """Every row of the docs' sizing table has S >= T and G >= S + margin; one row is the shipped setting."""
    rows = re.findall(
        r"^\| [^|]+ \| (\d+)(?: \(default\))? \| (\d+) \| (\d+) \| (\d+)", _deploy_doc(), re.MULTILINE
    )
    assert len(rows) >= 3, "sizing table not found"
    for timeout, shutdown, grace, visibility in ((float(v) for v in row) for row in rows):
        assert shutdown >= timeout
        assert grace >= shutdown + grace_margin()
        assert visibility >= 1
    settings = _settings()
    shipped = (
        settings.timeout_seconds,
        settings.shutdown_timeout_seconds,
        _pod()["terminationGracePeriodSeconds"],
    )
    assert shipped in {(float(t), float(s), int(g)) for t, s, g, _ in rows}
