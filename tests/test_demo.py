"""`worker demo --quick` runs to completion and its summary matches what the queues and the bucket hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import unique
from tests.helpers import depth

pytestmark = [pytest.mark.localstack, pytest.mark.slow, pytest.mark.timeout(300)]


def _run_demo(
    aws_env: dict[str, str], tmp_path: Path, prefix: str, *flags: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`worker demo --quick FLAGS` on this test's LocalStack; asserts exit 0; (result, summary JSON path)."""
    summary_path = tmp_path / "summary.json"
    argv = [
        sys.executable,
        "-m",
        "worker",
        "demo",
        "--quick",
        *flags,
        "--endpoint",
        aws_env["AWS_ENDPOINT_URL"],
    ]
    # Any free port: demos run side by side under xdist (9102 is checked free, then bound seconds later).
    argv += ["--prefix", prefix, "--summary-json", str(summary_path), "--http-port", "0"]
    result = subprocess.run(argv, env=aws_env, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, summary_path


async def test_quick_demo_summary_matches_the_stack(
    sqs: Any, aws: Any, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """The demo exits 0; its summary equals what LocalStack holds; each scenario ends as designed."""
    prefix = unique("demo")
    result, summary_path = _run_demo(aws_env, tmp_path, prefix, "--messages", "120")
    assert "every count matches" in result.stdout
    summary = json.loads(summary_path.read_text())
    scenarios = summary["scenarios"]
    outcomes = summary["outcomes"]
    assert sum(outcomes.values()) == 120
    assert outcomes.get("PermanentError", 0) == scenarios.get("poison", 0)
    assert outcomes.get("SchemaError", 0) == scenarios.get("invalid", 0)
    assert outcomes.get("DecodeError", 0) == scenarios.get("garbage", 0)
    assert outcomes.get("Timeout", 0) == scenarios.get("stuck", 0)
    assert summary["retries_immediate"] >= scenarios.get("blip", 0) + scenarios.get("flaky", 0)
    assert summary["retries_delayed"] >= scenarios.get("flaky", 0) + scenarios.get("slow", 0)
    url = (await sqs.get_queue_url(QueueName=f"{prefix}-orders-dlq"))["QueueUrl"]
    assert await depth(sqs, url) == summary["dead_lettered"] == summary["dlq_messages"]
    url = (await sqs.get_queue_url(QueueName=f"{prefix}-orders-confirmed"))["QueueUrl"]
    assert await depth(sqs, url) == summary["succeeded"] == summary["confirmations"]
    url = (await sqs.get_queue_url(QueueName=f"{prefix}-orders"))["QueueUrl"]
    assert await depth(sqs, url) == 0
    s3 = await aws("s3")
    listed = await s3.list_objects_v2(Bucket=f"{prefix}-failures", Prefix="failed/")
    keys = [item["Key"] for item in listed.get("Contents", [])]
    assert len(keys) == summary["dead_lettered"] == summary["s3_records"]
    conditions = {key.split("/")[4] for key in keys}
    assert conditions <= {"PermanentError", "SchemaError", "DecodeError", "Timeout", "RetriesExhausted"}


async def test_canary_demo_rolls_the_bad_version_back(
    sqs: Any, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """`worker demo --quick --canary`: the bad 0.2.0 is rolled back by its gate, record delivered, 0 lost."""
    prefix = unique("demo")
    result, summary_path = _run_demo(aws_env, tmp_path, prefix, "--canary", "--messages", "40")
    assert "the bad version was rolled back, no order lost" in result.stdout
    canary = json.loads(summary_path.read_text())["canary"]
    assert canary["state"] == "rolled_back"
    assert canary["weight"] == 0
    assert canary["candidate_failures"] > 0
    assert canary["candidate_calls"] >= 10
    assert canary["outcomes"] == {"Success": canary["published"]}  # none dead-lettered, none lost
    record = canary["record"]
    assert record["type"] == "CanaryRolledBack"
    assert record["gate"] == "max_error_ratio"
    assert record["versions"] == {"candidate": "0.2.0", "baseline": "demo-1"}
    assert record["observed"] > record["threshold"] == 0.1
    url = (await sqs.get_queue_url(QueueName=f"{prefix}-orders"))["QueueUrl"]
    assert await depth(sqs, url) == 0


async def test_shadow_demo_verifies_green_on_the_shadow_subscription(
    sqs: Any, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """`worker demo --quick --shadow`: green sees every message, delivers to no destination, verdict fits."""
    prefix = unique("demo")
    result, summary_path = _run_demo(aws_env, tmp_path, prefix, "--shadow", "--messages", "60")
    assert "every count matches" in result.stdout  # the live destinations hold the live worker's records only
    summary = json.loads(summary_path.read_text())
    shadow = summary["shadow"]
    assert shadow["seen"] == shadow["published"] == summary["published"] == 60
    assert shadow["destination_records"] == 0
    assert summary["confirmations"] == summary["succeeded"]
    assert summary["s3_records"] == summary["sns_alerts"] == summary["dead_lettered"]
    url = (await sqs.get_queue_url(QueueName=f"{prefix}-orders-shadow-dlq"))["QueueUrl"]
    assert await depth(sqs, url) == sum(shadow["dead_lettered"].values()) == shadow["dlq_messages"]
    url = (await sqs.get_queue_url(QueueName=f"{prefix}-orders-shadow"))["QueueUrl"]
    assert await depth(sqs, url) == 0
    assert shadow["green_ratio"] == shadow["green_failed"] / shadow["green_calls"]
    assert shadow["live_ratio"] == shadow["live_failed"] / shadow["live_calls"]
    fails = shadow["green_ratio"] - shadow["live_ratio"] > shadow["gate"] == 0.1
    assert shadow["healthy"] is not fails
    expected = (
        "green would fail the 0.1 error-ratio gate: do not switch"
        if fails
        else "green looks healthy: worker switch --to green"
    )
    assert shadow["verdict"] == expected
    assert f"verdict: {expected}" in result.stdout
    assert fails  # handle_v2 fails a third of the orders on every attempt: green must not pass
