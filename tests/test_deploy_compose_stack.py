"""`docker compose up` without Docker: the same hook, healthcheck, worker settings and traffic, for real.

A dedicated embedded LocalStack gets localstack/init/ready.d where the container would mount it, so
LocalStack itself runs the hook; the compose healthcheck command decides when it is ready; then the
worker runs with the compose service's environment and the traffic generator with its command, only
the LocalStack address swapped for this one's.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.conftest import start_or_skip
from tests.helpers import endpoint_env, free_port, http_get_async, wait_for
from tests.test_deploy_support import COMPOSE, ROOT, load_yaml, settings_from_env

pytestmark = [pytest.mark.localstack, pytest.mark.slow, pytest.mark.timeout(180)]

HOOKS = ROOT / "localstack" / "init" / "ready.d"
COMPOSE_ENDPOINT = "http://localstack:4566"


def _services() -> dict[str, Any]:
    return dict(load_yaml(COMPOSE)["services"])


def _healthcheck(endpoint: str) -> list[str]:
    test = _services()["localstack"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python3"]
    assert "http://127.0.0.1:4566/" in test[-1], "the healthcheck no longer calls LocalStack's own port"
    return [sys.executable, *[part.replace("http://127.0.0.1:4566", endpoint) for part in test[2:]]]


def _compose_env(service: str, endpoint: str, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    for key, value in _services()[service]["environment"].items():
        env[key] = str(value).replace(COMPOSE_ENDPOINT, endpoint)
    return env


async def _counters(port: int) -> str:
    """The worker's counters and gauges (no histogram buckets), for a failure message."""
    _, body = await http_get_async(port, "/metrics")
    skip = ("#", "worker_handler_duration", "worker_message_age")
    return "\n".join(
        line for line in body.splitlines() if not line.startswith(skip) and "_created" not in line
    )


@pytest.fixture(scope="module")
def compose_localstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An embedded LocalStack whose init directory holds the compose hooks (skips locally, fails in CI)."""
    from worker.devkit.localstack import EmbeddedLocalStack

    root = tmp_path_factory.mktemp("compose-localstack")
    target = root / "etc" / "localstack" / "init" / "ready.d"
    target.mkdir(parents=True)
    for hook in HOOKS.iterdir():
        if hook.suffix in {".py", ".sh"}:
            shutil.copy(hook, target / hook.name)
    stack = EmbeddedLocalStack(state_dir=root)
    instance = start_or_skip(stack)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(
            _healthcheck(instance.endpoint), capture_output=True, timeout=10, check=False
        ).returncode:
            assert time.monotonic() < deadline, (
                f"hook never succeeded: {instance.log_path.read_text()[-3000:]}"
            )
            time.sleep(0.2)  # LocalStack runs its ready stage in the background: nothing to wait on
        yield instance.endpoint
    finally:
        stack.stop()


@pytest.fixture
async def clients(compose_localstack: str) -> AsyncIterator[dict[str, Any]]:
    """SQS, SNS and S3 clients on the compose LocalStack."""
    from aiobotocore.session import get_session

    async with AsyncExitStack() as stack:
        session = get_session()
        yield {
            name: await stack.enter_async_context(
                session.create_client(name, endpoint_url=compose_localstack)
            )
            for name in ("sqs", "sns", "s3")
        }


def test_healthcheck_fails_while_no_hook_has_run(localstack_endpoint: str) -> None:
    """The compose healthcheck command exits non-zero against a LocalStack that ran no ready hook."""
    result = subprocess.run(_healthcheck(localstack_endpoint), capture_output=True, timeout=30, check=False)
    assert result.returncode != 0


async def test_hook_creates_the_topology_the_compose_worker_uses(clients: dict[str, Any]) -> None:
    """Run by LocalStack, the hook creates every queue, topic, subscription and bucket compose names."""
    sqs, sns, s3 = clients["sqs"], clients["sns"], clients["s3"]
    worker_env = {k: str(v) for k, v in _services()["worker"]["environment"].items()}
    settings = settings_from_env(worker_env)

    async def attributes(url_or_name: str) -> dict[str, str]:
        name = url_or_name.rsplit("/", 1)[-1]
        real = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
        return dict((await sqs.get_queue_attributes(QueueUrl=real, AttributeNames=["All"]))["Attributes"])

    source, dlq = await attributes(settings.queue_url), await attributes(str(settings.dlq_url))
    redrive = json.loads(source["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq["QueueArn"]
    assert int(redrive["maxReceiveCount"]) > settings.max_attempts
    (success,) = settings.on_success
    await attributes(success)
    fifo, fifo_dlq = await attributes("orders.fifo"), await attributes("orders-dlq.fifo")
    assert fifo["FifoQueue"] == "true"
    assert json.loads(fifo["RedrivePolicy"])["deadLetterTargetArn"] == fifo_dlq["QueueArn"]

    bucket = next(uri for uri in settings.on_failure if uri.startswith("s3://"))[5:].split("/")[0]
    await s3.head_bucket(Bucket=bucket)
    alerts = next(uri for uri in settings.on_failure if uri.startswith("sns:"))[4:]
    topic = _services()["traffic"]["environment"]["TRAFFIC_TOPIC_ARN"]
    subscriptions = {
        (s["TopicArn"], s["Endpoint"]) for s in (await sns.list_subscriptions())["Subscriptions"]
    }
    assert (topic, source["QueueArn"]) in subscriptions
    assert any(arn == alerts for arn, _ in subscriptions)


def test_hook_topology_is_the_one_worker_topology_defines(
    compose_localstack: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`worker topology --check` passes on the hook's orders topology (subscription DLQ and policies too)."""
    from worker.cli import main

    with endpoint_env(compose_localstack):
        code = main(
            ["topology", "--check", "--topic", "orders", "--queue", "orders", "--max-receive-count", "8"]
        )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "  ok       subscription-dlq orders-sns-dlq policy " in out


async def test_compose_worker_and_traffic_run_end_to_end_and_stop_within_the_grace_period(
    compose_localstack: str, clients: dict[str, Any], aws_env: dict[str, str], tmp_path: Path
) -> None:
    """The compose worker handles the generated orders: all outcomes, S3 records; SIGTERM exits 0 in time."""
    base = {k: v for k, v in aws_env.items() if k != "AWS_ENDPOINT_URL"}
    port = free_port()
    env = _compose_env("worker", compose_localstack, base)
    env.update(WORKER_HTTP_HOST="127.0.0.1", WORKER_HTTP_PORT=str(port), PYTHONPATH=str(ROOT))
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, polled below
        [sys.executable, "-m", "worker", "run"], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
    )
    try:
        # /healthz: serving after start-up. (/readyz waits for the first long poll to return, which on
        # an empty queue takes WORKER_WAIT_TIME_SECONDS.)
        async def started() -> bool:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            return (await http_get_async(port, "/healthz"))[0] == 200

        await wait_for(started, timeout=30, interval=0.2, what="worker started")
        traffic = _services()["traffic"]
        command = [sys.executable, str(ROOT / "tools" / "traffic.py"), *traffic["command"]]
        command += ["--count", "60", "--rate", "500", "--seed", "11"]  # a burst instead of 5/s
        result = await anyio.run_process(
            command, env=_compose_env("traffic", compose_localstack, base), check=False
        )
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        assert b"60 orders published" in result.stdout

        async def metric(name: str, **labels: str) -> float:
            status, body = await http_get_async(port, "/metrics")
            assert status == 200
            total = 0.0
            for line in body.splitlines():
                if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                    total += float(line.rsplit(" ", 1)[1])
            return total

        async def busy() -> bool:
            return (
                await metric("worker_messages_received_total") >= 60
                and await metric("worker_messages_processed_total", outcome="succeeded") > 0
                and await metric("worker_dead_lettered_total") > 0
                and await metric("worker_retries_total") > 0
                and await metric("worker_destination_deliveries_total", result="ok") > 0
            )

        try:
            await wait_for(busy, timeout=40, interval=0.5, what="every kind of outcome")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\n{await _counters(port)}\n{(tmp_path / 'worker.log').read_text()[-3000:]}"
            ) from None
        listed = await clients["s3"].list_objects_v2(Bucket="orders-failures", Prefix="failed/")
        assert listed.get("KeyCount", 0) > 0, "no failure record reached the compose bucket"

        grace = float(_services()["worker"]["stop_grace_period"].removesuffix("s"))
        signalled = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        await wait_for(lambda: worker.poll() is not None, timeout=grace, interval=0.1, what="exit on SIGTERM")
        assert worker.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
        # The drain budget the compose file gives the worker, well inside the grace period docker allows.
        budget = float(_services()["worker"]["environment"]["WORKER_SHUTDOWN_TIMEOUT_SECONDS"])
        assert budget + 5 < grace
        assert time.monotonic() - signalled < budget
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        log.close()
