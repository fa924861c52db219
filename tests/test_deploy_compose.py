"""docker-compose.yml without Docker: the compose spec, pinned images, start order, real settings, sizing."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.test_deploy_support import (
    COMPOSE,
    ROOT,
    grace_margin,
    load_yaml,
    require,
    settings_from_env,
)

HOOKS = ROOT / "localstack" / "init" / "ready.d"


def _services() -> dict[str, Any]:
    return dict(load_yaml(COMPOSE)["services"])


def _seconds(value: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value))


def test_compose_file_matches_the_compose_specification() -> None:
    """The compose-spec parser (merge keys applied) accepts the file and rejects a misspelt key."""
    require("compose_spec")
    from compose_spec.compose_spec import PyOptions

    options = PyOptions(apply_merge=True)
    parsed = options.from_yaml(COMPOSE.read_text())
    parsed.validate()
    assert set(parsed.service_names()) == set(_services())
    broken = COMPOSE.read_text().replace("    stop_grace_period:", "    stop_grace_periods:", 1)
    with pytest.raises(ValueError, match="stop_grace_periods"):
        options.from_yaml(broken).validate()


def test_images_are_pinned_and_localstack_is_the_tokenless_tag() -> None:
    """LocalStack is exactly 4.13.1, Prometheus and Grafana pinned versions; built services use Dockerfile."""
    services = _services()
    assert services["localstack"]["image"] == "localstack/localstack:4.13.1"
    for name, service in services.items():
        if "build" in service:
            assert service["build"] == ".", name
            assert "image" not in service, f"{name}: a built image needs no registry name"
        else:
            image = service["image"]
            _repo, _, tag = image.partition(":")
            assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: {image} is not pinned to a version"
    assert services["prometheus"]["image"].startswith("prom/prometheus:v")
    assert services["grafana"]["image"].startswith("grafana/grafana:")


def test_worker_starts_only_once_localstack_ran_its_topology_hook() -> None:
    """Hooks mounted at the ready stage; the healthcheck reads /_localstack/init/ready; workers wait on it."""
    services = _services()
    localstack = services["localstack"]
    assert "./localstack/init/ready.d:/etc/localstack/init/ready.d:ro" in localstack["volumes"]
    assert any(HOOKS.glob("*.py")) or any(HOOKS.glob("*.sh"))
    test = localstack["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert "/_localstack/init/ready" in test[-1]
    assert "SUCCESSFUL" in test[-1]
    for name in ("worker", "traffic"):
        assert services[name]["depends_on"]["localstack"] == {"condition": "service_healthy"}, name
    assert localstack["environment"]["SQS_ENDPOINT_STRATEGY"] == "path"
    assert {"sqs", "sns", "s3"} <= set(localstack["environment"]["SERVICES"].split(","))


def test_worker_environment_is_real_settings_that_validate() -> None:
    """Every WORKER_* of the worker service is a Settings field, and Settings accepts the values."""
    env = {k: str(v) for k, v in _services()["worker"]["environment"].items()}
    settings = settings_from_env(env)
    assert settings.queue_url.startswith(env["AWS_ENDPOINT_URL"] + "/")
    assert settings.handler == "worker.examples.orders:handle"
    assert env["AWS_ENDPOINT_URL"] == "http://localstack:4566"


def test_stop_grace_period_outlasts_the_drain() -> None:
    """stop_grace_period exceeds WORKER_SHUTDOWN_TIMEOUT_SECONDS plus final flushes; drain covers a run."""
    worker = _services()["worker"]
    settings = settings_from_env({k: str(v) for k, v in worker["environment"].items()})
    assert _seconds(worker["stop_grace_period"]) >= settings.shutdown_timeout_seconds + grace_margin()
    assert settings.shutdown_timeout_seconds >= settings.timeout_seconds


def test_published_ports_are_loopback_only_and_match_the_worker() -> None:
    """Every published port binds 127.0.0.1; the worker publishes its metrics port."""
    from worker.settings import Settings

    services = _services()
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is reachable from the network"
    default = Settings.model_fields["http_port"].default
    assert f"127.0.0.1:{default}:{default}" in services["worker"]["ports"]


def test_containers_are_locked_down() -> None:
    """Worker and traffic run read-only, without capabilities or privilege escalation."""
    for name in ("worker", "traffic"):
        service = _services()[name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name


def test_bind_mounts_exist() -> None:
    """Every ./ bind mount of the compose file points at a file or directory of the repository."""
    for name, service in _services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"


def test_traffic_generator_runs_the_repository_script() -> None:
    """The traffic service runs tools/traffic.py (mounted) under tini, against the topic the hook creates."""
    traffic = _services()["traffic"]
    assert "./tools:/opt/tools:ro" in traffic["volumes"]
    assert traffic["entrypoint"][:2] == ["/usr/bin/tini", "--"]
    assert traffic["entrypoint"][-1] == "/opt/tools/traffic.py"
    assert (ROOT / "tools" / "traffic.py").is_file()
    topic = traffic["environment"]["TRAFFIC_TOPIC_ARN"]
    assert topic.rsplit(":", 1)[-1] in (HOOKS / "10-topology.py").read_text()


def test_commented_redrive_service_is_ready_to_enable() -> None:
    """The commented redrive service parses once uncommented, runs `redrive --watch`, with real settings."""
    yaml = require("yaml")
    text = COMPOSE.read_text()
    block = re.search(r"^  # redrive:\n((?:  #.*\n)+)", text, re.MULTILINE)
    assert block, "no commented redrive service"
    lines = ["  redrive:"] + [line.replace("  #", "", 1) for line in block.group(1).splitlines()]
    anchors = text[: text.index("services:")]
    doc = yaml.safe_load(anchors + "services:\n" + "\n".join(lines))
    redrive = doc["services"]["redrive"]
    assert redrive["command"] == ["redrive", "--watch"]
    settings_from_env({k: str(v) for k, v in redrive["environment"].items()})
