"""Test harness: a sealed AWS environment, one embedded LocalStack per session, throwaway queues.

A second SQS implementation, moto's server, can be opted into per test: ``@on_emulators()`` runs a test on
both (``emulator`` is ``"localstack"`` or ``"moto"``); ``sqs``, ``queues`` and ``aws_env`` follow it. Tests
that do not opt in run on LocalStack only, as before.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlparse

import pytest

from tests.faultproxy import FaultProxy
from tests.motoserver import MotoServer

# The soak runs only when SOAK_SECONDS is set (`make soak`): otherwise it is not collected, so `make test`
# neither runs it nor counts it as a skip (CI fails on skips, tests/skip_gate.py).
collect_ignore = [] if os.environ.get("SOAK_SECONDS") else ["test_soak.py"]

# A developer can point the suite at a LocalStack already running (`worker localstack`): loopback only.
_EXISTING_ENDPOINT = os.environ.get("TEST_LOCALSTACK_ENDPOINT")

# --- Seal the environment before anything imports botocore: a real account can never be reached. ---
for _name in list(os.environ):
    if _name.startswith(("AWS_", "WORKER_")):
        del os.environ[_name]
_EMPTY = Path(tempfile.mkdtemp(prefix="worker-tests-")) / "empty"
_EMPTY.write_text("")
os.environ.update(
    {
        "AWS_CONFIG_FILE": str(_EMPTY),
        "AWS_SHARED_CREDENTIALS_FILE": str(_EMPTY),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
)


def assert_loopback(endpoint: str) -> None:
    """Refuse any endpoint that is not on this machine."""
    host = urlparse(endpoint).hostname or ""
    assert host == "localhost" or ipaddress.ip_address(host).is_loopback, (
        f"not a loopback endpoint: {endpoint}"
    )


class _Running(Protocol):
    @property
    def endpoint(self) -> str: ...


_R = TypeVar("_R", bound=_Running)


class _Startable(Protocol[_R]):
    def start(self) -> _R: ...


def start_or_skip(stack: _Startable[_R], what: str = "embedded LocalStack") -> _R:
    """Start an emulator on loopback; if it cannot start, skip (locally) or fail (CI set)."""
    try:
        instance = stack.start()
    except Exception as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{what} unavailable: {exc}")
    assert_loopback(instance.endpoint)
    return instance


@pytest.fixture(scope="session")
def localstack_endpoint() -> Iterator[str]:
    """One embedded LocalStack per test session (skips locally, fails in CI, when it cannot start)."""
    from worker.devkit.localstack import EmbeddedLocalStack

    if _EXISTING_ENDPOINT:
        assert_loopback(_EXISTING_ENDPOINT)
        os.environ["AWS_ENDPOINT_URL"] = _EXISTING_ENDPOINT
        yield _EXISTING_ENDPOINT
        return

    stack = EmbeddedLocalStack()
    instance = start_or_skip(stack)
    os.environ["AWS_ENDPOINT_URL"] = instance.endpoint
    try:
        yield instance.endpoint
    finally:
        os.environ.pop("AWS_ENDPOINT_URL", None)
        stack.stop()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto server per test session (skips locally, fails in CI, when it cannot start).

    Unlike ``localstack_endpoint`` it never sets ``AWS_ENDPOINT_URL`` in this process: clients on moto
    get the endpoint explicitly, worker subprocesses through their own environment (``aws_env``).
    """
    server = MotoServer()
    instance = start_or_skip(server, "moto server")
    try:
        yield instance.endpoint
    finally:
        server.stop()


#: The SQS emulators a test can run on.
EMULATORS = ("localstack", "moto")


def on_emulators(*, moto_xfail: str | None = None) -> pytest.MarkDecorator:
    """Run a test once per emulator (``emulator`` fixture); ``moto_xfail`` makes the moto run strict xfail."""
    moto: Any = "moto"
    if moto_xfail:
        moto = pytest.param("moto", marks=pytest.mark.xfail(strict=True, reason=moto_xfail))
    return pytest.mark.parametrize("emulator", ["localstack", moto], indirect=True)


@pytest.fixture
def emulator(request: pytest.FixtureRequest) -> str:
    """The SQS emulator of this test: LocalStack unless the test opts in to both with ``@on_emulators()``."""
    name = str(getattr(request, "param", "localstack"))
    assert name in EMULATORS, name
    return name


@pytest.fixture
def sqs_endpoint(emulator: str, request: pytest.FixtureRequest) -> str:
    """The endpoint of this test's emulator (only that one is started)."""
    endpoint = str(request.getfixturevalue(f"{emulator}_endpoint"))
    assert_loopback(endpoint)
    return endpoint


@pytest.fixture
def aws_env(sqs_endpoint: str) -> dict[str, str]:
    """The environment a worker subprocess gets: sealed, pointed at this test's emulator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env["AWS_ENDPOINT_URL"] = sqs_endpoint
    assert_loopback(env["AWS_ENDPOINT_URL"])
    return env


@pytest.fixture
def fault_proxy(aws_env: dict[str, str]) -> Iterator[FaultProxy]:
    """A TCP fault proxy in front of the test's emulator (``fault_proxy.endpoint``), stopped after it."""
    proxy = FaultProxy.towards(aws_env["AWS_ENDPOINT_URL"]).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
async def sqs(sqs_endpoint: str) -> AsyncIterator[Any]:
    """An aiobotocore SQS client on this test's emulator (endpoint passed explicitly)."""
    from worker.aws.client import client_config, create_client

    assert_loopback(sqs_endpoint)
    async with create_client("sqs", client_config(read_timeout=30), endpoint_url=sqs_endpoint) as client:
        yield client


@pytest.fixture
async def aws(localstack_endpoint: str) -> AsyncIterator[Callable[[str], Any]]:
    """Clients for other services (sns, s3, events) on LocalStack, closed after the test."""
    from contextlib import AsyncExitStack

    from worker.aws.client import client_config, create_client

    async with AsyncExitStack() as stack:
        cache: dict[str, Any] = {}

        async def get(service: str) -> Any:
            if service not in cache:
                cache[service] = await stack.enter_async_context(
                    create_client(service, client_config(), endpoint_url=localstack_endpoint)
                )
            return cache[service]

        yield get  # type: ignore[misc]


def unique(prefix: str = "t") -> str:
    """A random resource name."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


QueueFactory = Callable[..., Awaitable[dict[str, str]]]


@pytest.fixture
async def queues(sqs: Any, sqs_endpoint: str) -> AsyncIterator[QueueFactory]:
    """Creates a source queue and its DLQ (random names, deleted after the test) on this test's emulator.

    The dict also names the ``endpoint`` the queues live on (``running_worker`` points its worker there).
    """
    created: list[str] = []

    async def make(
        *, fifo: bool = False, max_receive_count: int | None = 20, visibility: int = 30, **attributes: str
    ) -> dict[str, str]:
        suffix = ".fifo" if fifo else ""
        base = unique("q")
        fifo_attrs = {"FifoQueue": "true"} if fifo else {}
        dlq = (await sqs.create_queue(QueueName=f"{base}-dlq{suffix}", Attributes=fifo_attrs))["QueueUrl"]
        created.append(dlq)
        dlq_arn = (await sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"]))["Attributes"][
            "QueueArn"
        ]
        attrs = {"VisibilityTimeout": str(visibility), **fifo_attrs, **attributes}
        if max_receive_count is not None:
            attrs["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count}
            )
        url = (await sqs.create_queue(QueueName=f"{base}{suffix}", Attributes=attrs))["QueueUrl"]
        created.append(url)
        arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"][
            "QueueArn"
        ]
        return {"url": url, "arn": arn, "dlq_url": dlq, "dlq_arn": dlq_arn, "endpoint": sqs_endpoint}

    yield make
    for url in created:
        with contextlib.suppress(Exception):  # best-effort cleanup of a throwaway queue
            await sqs.delete_queue(QueueUrl=url)
