"""``python -m worker redrive`` / ``dlq`` as processes: kill -9 mid-run, --watch with /metrics, CLI errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import QueueFactory
from tests.helpers import depth, drain, free_port, http_get_async, wait_for
from tests.test_redrive_support import dead_letter, original_id, queue_counts, record_of, redrive, seed

pytestmark = pytest.mark.localstack


def start(env: dict[str, str], log: Path, *argv: str, **settings: str) -> subprocess.Popen[bytes]:
    """``python -m worker ARGV`` with WORKER_* settings, stdin closed, output to ``log``."""
    full = {**env, **{f"WORKER_{k.upper()}": v for k, v in settings.items()}, "WORKER_LOG_FORMAT": "json"}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "worker", *argv],
            env=full,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )


def run(env: dict[str, str], *argv: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m worker ARGV`` to the end."""
    full = {**env, **{f"WORKER_{k.upper()}": v for k, v in settings.items()}}
    return subprocess.run(
        [sys.executable, "-m", "worker", *argv],
        env=full,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_kill_9_mid_run_loses_nothing(
    sqs: Any, queues: QueueFactory, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """SIGKILL in the middle of an app-mode redrive: after the leases run out, a second run moves the rest
    and every message is in the target at least once (duplicates allowed), none left behind."""
    q = await queues()
    requests = [dead_letter(q, {"n": i}) for i in range(300)]
    await seed(sqs, q["dlq_url"], requests)
    proc = start(
        aws_env,
        tmp_path / "redrive.log",
        "redrive", "--mode", "app", "--rate", "100", "--visibility-timeout", "2",
        dlq_url=q["dlq_url"], queue_url=q["url"],
    )  # fmt: skip
    log = tmp_path / "redrive.log"

    async def under_way() -> bool:
        assert proc.poll() is None, f"redrive exited {proc.returncode}: {log.read_text()[-2000:]}"
        return await _at_least(sqs, q["url"], 60)

    try:
        await wait_for(under_way, timeout=20, what="the redrive under way")
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # Whatever the killed process held comes back when its 2 s leases run out.
    await wait_for(lambda: _none_in_flight(sqs, q["dlq_url"]), timeout=15, what="leases expired")
    assert 0 < await depth(sqs, q["dlq_url"]) < 300
    report = await redrive(q["dlq_url"], queue_url=q["url"], mode="app")
    assert report.exit_code == 0
    total = await depth(sqs, q["url"])  # 300, plus any copy sent twice around the kill
    assert total >= 300
    got = await drain(sqs, q["url"], expect=total, timeout=30)
    assert len(got) == total
    assert {record_of(e).original_message_id for e in got} == {original_id(r) for r in requests}
    assert await depth(sqs, q["dlq_url"]) == 0


async def _at_least(sqs: Any, url: str, n: int) -> bool:
    return await depth(sqs, url) >= n


async def _none_in_flight(sqs: Any, url: str) -> bool:
    return (await queue_counts(sqs, url))["ApproximateNumberOfMessagesNotVisible"] == "0"


async def test_watch_waits_for_min_age_and_serves_metrics(
    sqs: Any, queues: QueueFactory, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """--watch moves an old message at once and a fresh one only once --min-age has passed, counts both
    in worker_redrive_messages_total on /metrics, and exits 0 on SIGTERM."""
    q = await queues()
    port = free_port()
    old = dead_letter(q, {"k": "old"}, dead_lettered_at=datetime.now(UTC) - timedelta(minutes=10))
    await seed(sqs, q["dlq_url"], [old])
    proc = start(
        aws_env,
        tmp_path / "watch.log",
        "redrive", "--watch", "--min-age", "2s",
        dlq_url=q["dlq_url"], queue_url=q["url"], http_port=str(port), http_host="127.0.0.1",
    )  # fmt: skip
    try:
        [first] = await drain(sqs, q["url"], expect=1, timeout=20)
        assert json.loads(first["Body"]) == {"k": "old"}
        young_at = datetime.now(UTC)
        await seed(sqs, q["dlq_url"], [dead_letter(q, {"k": "young"}, dead_lettered_at=young_at)])
        [second] = await drain(sqs, q["url"], expect=1, timeout=20)
        assert json.loads(second["Body"]) == {"k": "young"}
        moved_at = datetime.fromtimestamp(int(second["Attributes"]["SentTimestamp"]) / 1000, UTC)
        assert (moved_at - young_at).total_seconds() >= 2
        dlq_name = q["dlq_url"].rsplit("/", 1)[-1]
        moved = f'worker_redrive_messages_total{{result="moved",source="{dlq_name}"}} 2.0'

        async def scrape() -> str | None:
            # The count follows the DLQ delete, which follows the send this test already received.
            status, body = await http_get_async(port, "/metrics")
            assert status == 200
            return body if moved in body else None

        body = await wait_for(scrape, timeout=10, what=moved)
        assert f'worker_redrive_messages_total{{result="skipped",source="{dlq_name}"}}' in body
        proc.send_signal(signal.SIGTERM)
        await wait_for(lambda: proc.poll() is not None, timeout=20, what="watch exit")
        assert proc.returncode == 0, (tmp_path / "watch.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_cli_errors_are_one_line_exit_2(queues: QueueFactory, aws_env: dict[str, str]) -> None:
    """Unknown queue, bad setting, no DLQ, bad argument, contradictory mode, a remote endpoint without --yes:
    exit 2 with one clear line (usage for argument errors), never a traceback."""
    q = await queues()
    missing = q["dlq_url"] + "-missing"
    for argv in (["redrive", "--dlq", missing], ["dlq", "--dlq", missing]):
        result = run(aws_env, *argv)
        assert result.returncode == 2, result
        assert result.stderr.count("\n") == 1, result.stderr
        assert "cannot read the queue" in result.stderr
        assert "Traceback" not in result.stderr
    result = run(aws_env, "redrive", dlq_url="orders-dlq")
    assert (result.returncode, result.stderr) == (
        2,
        "worker: configuration error: WORKER_DLQ_URL: must be an SQS queue URL "
        "(https://host/account/name), got 'orders-dlq'\n",
    )
    result = run(aws_env, "redrive")
    assert result.returncode == 2
    assert "no dead-letter queue" in result.stderr
    for argv in (
        ["--rate", "-1"],
        ["--mode", "native", "--filter", "error_type=X"],
        ["--filter", "colour=red"],
    ):
        result = run(aws_env, "redrive", *argv, dlq_url=q["dlq_url"])
        assert result.returncode == 2, result
        assert result.stderr.startswith("usage: worker redrive"), result.stderr
    remote = {
        **aws_env,
        "AWS_ENDPOINT_URL": "http://192.0.2.1:4566",
    }  # TEST-NET-1: never answers, never called
    result = run(remote, "redrive", "--dlq", "http://192.0.2.1:4566/000000000000/q-dlq")
    assert result.returncode == 2
    assert result.stderr == (
        "worker: refusing to redrive against http://192.0.2.1:4566 without --yes: "
        "stdin is not a terminal to confirm on\n"
    )


async def test_native_sigint_cancels_the_move_task(
    sqs: Any, queues: QueueFactory, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """SIGINT during a native move (--rate 50) cancels the SQS task: the rest stays in the DLQ, exit 130."""
    q = await queues()
    await seed(sqs, q["dlq_url"], [dead_letter(q, {"n": i}) for i in range(200)])
    log = tmp_path / "native.log"
    proc = start(aws_env, log, "redrive", "--rate", "50", "--json", dlq_url=q["dlq_url"], queue_url=q["url"])

    async def under_way() -> bool:
        assert proc.poll() is None, f"redrive exited {proc.returncode}: {log.read_text()[-2000:]}"
        return await _at_least(sqs, q["url"], 10)

    try:
        await wait_for(under_way, timeout=20, what="the move task under way")
        proc.send_signal(signal.SIGINT)
        await wait_for(lambda: proc.poll() is not None, timeout=20, what="redrive exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, log.read_text()[-2000:]
    summary = json.loads(log.read_text()[log.read_text().index("{\n") :])
    assert summary["mode"] == "native"
    assert summary["native"]["status"] == "CANCELLED"
    moved = summary["native"]["moved"]
    assert 10 <= moved < 200
    assert await depth(sqs, q["url"]) == moved
    assert await depth(sqs, q["dlq_url"]) == 200 - moved
