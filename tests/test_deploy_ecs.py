"""ECS: the task definition and the scaling example against botocore's API models, and against the worker."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_deploy_docker import DOCKERFILE, _healthcheck_command, parse_dockerfile
from tests.test_deploy_support import DEPLOY, grace_margin, load_json, load_yaml, settings_from_env

ECS = DEPLOY / "ecs"
#: Fargate's ceiling for stopTimeout (seconds).
FARGATE_MAX_STOP_TIMEOUT = 120


def _validate(service: str, operation: str, params: dict[str, Any]) -> None:
    import botocore.session
    from botocore.validate import validate_parameters

    model = botocore.session.get_session().get_service_model(service)
    validate_parameters(params, model.operation_model(operation).input_shape)


def _task() -> dict[str, Any]:
    return dict(load_json(ECS / "task-definition.json"))


def _container() -> dict[str, Any]:
    (container,) = _task()["containerDefinitions"]
    return dict(container)


def _env() -> dict[str, str]:
    return {item["name"]: item["value"] for item in _container()["environment"]}


@pytest.mark.parametrize(
    ("service", "operation", "filename"),
    [
        ("ecs", "RegisterTaskDefinition", "task-definition.json"),
        ("application-autoscaling", "RegisterScalableTarget", "scalable-target.json"),
        ("application-autoscaling", "PutScalingPolicy", "scaling-policy.json"),
    ],
)
def test_files_are_valid_api_requests(service: str, operation: str, filename: str) -> None:
    """Each file is a valid request of its AWS API (botocore's model: names, types, required fields)."""
    _validate(service, operation, load_json(ECS / filename))


def test_validation_rejects_an_unknown_field() -> None:
    """The same validation fails a container definition with a misspelt key (so the test above can fail)."""
    from botocore.exceptions import ParamValidationError

    task = _task()
    task["containerDefinitions"][0]["stopTimeOut"] = 30
    with pytest.raises(ParamValidationError, match="stopTimeOut"):
        _validate("ecs", "RegisterTaskDefinition", task)


def test_environment_is_the_kubernetes_configuration() -> None:
    """The WORKER_* variables are real settings, validate, and equal the Kubernetes ConfigMap's."""
    env = _env()
    settings_from_env(env)
    configmap = load_yaml(DEPLOY / "k8s" / "configmap.yaml")["data"]
    assert {k: v for k, v in env.items() if k.startswith("WORKER_")} == configmap
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"]


def test_stop_timeout_fits_fargate_and_outlasts_the_drain() -> None:
    """stopTimeout <= 120 s (Fargate) and >= WORKER_SHUTDOWN_TIMEOUT_SECONDS plus the final flushes."""
    settings = settings_from_env(_env())
    stop = _container()["stopTimeout"]
    assert stop <= FARGATE_MAX_STOP_TIMEOUT
    assert stop >= settings.shutdown_timeout_seconds + grace_margin()
    assert settings.shutdown_timeout_seconds >= settings.timeout_seconds


def test_health_check_port_user_and_filesystem_match_the_image() -> None:
    """Same health command as the Dockerfile, the worker's port, the image's uid, read-only root with /tmp."""
    container = _container()
    settings = settings_from_env(_env())
    assert container["healthCheck"]["command"] == ["CMD", *_healthcheck_command()]
    assert container["portMappings"] == [
        {"name": "http", "containerPort": settings.http_port, "protocol": "tcp"}
    ]
    (user,) = parse_dockerfile(DOCKERFILE.read_text())[1][-1].all("USER")
    assert container["user"] == user
    assert container["readonlyRootFilesystem"] is True
    assert container["linuxParameters"]["capabilities"]["drop"] == ["ALL"]
    assert {"sourceVolume": "tmp", "containerPath": "/tmp", "readOnly": False} in container["mountPoints"]
    assert {"name": "tmp"} in _task()["volumes"]
    assert container["command"] == ["run"]


def test_logs_go_to_cloudwatch_without_blocking_the_worker() -> None:
    """awslogs with group, stream prefix, the task's region and non-blocking mode."""
    options = _container()["logConfiguration"]["options"]
    assert _container()["logConfiguration"]["logDriver"] == "awslogs"
    assert options["awslogs-region"] == _env()["AWS_REGION"]
    assert options["awslogs-group"]
    assert options["awslogs-stream-prefix"]
    assert options["mode"] == "non-blocking"


def test_scaling_tracks_backlog_per_task_of_the_worker_queue() -> None:
    """Target tracking on visible messages per running task, for WORKER_QUEUE_URL's queue and this service."""
    settings = settings_from_env(_env())
    target = load_json(ECS / "scalable-target.json")
    policy = load_json(ECS / "scaling-policy.json")
    for key in ("ServiceNamespace", "ResourceId", "ScalableDimension"):
        assert policy[key] == target[key], key
    assert target["MinCapacity"] >= 1
    config = policy["TargetTrackingScalingPolicyConfiguration"]
    metrics = {m["Id"]: m for m in config["CustomizedMetricSpecification"]["Metrics"]}
    (returned,) = [m for m in metrics.values() if m.get("ReturnData")]
    variables = set(returned["Expression"].replace("/", " ").split())
    assert variables <= set(metrics), "the expression uses undefined metric ids"
    queue_dims = [
        d["Value"]
        for m in metrics.values()
        if "MetricStat" in m and m["MetricStat"]["Metric"]["Namespace"] == "AWS/SQS"
        for d in m["MetricStat"]["Metric"]["Dimensions"]
        if d["Name"] == "QueueName"
    ]
    assert queue_dims == [settings.queue_url.rsplit("/", 1)[-1]]
    service = target["ResourceId"].split("/")[-1]
    assert any(
        d == {"Name": "ServiceName", "Value": service}
        for m in metrics.values()
        if "MetricStat" in m
        for d in m["MetricStat"]["Metric"]["Dimensions"]
    )
    assert config["TargetValue"] > 0
