"""The worker's own CPU per message: `worker run`'s engine with SQS replaced by an in-process stub.

No emulator, no network, no SDK: every SQS call answers at the next checkpoint from memory, so what is
left is what the worker itself spends per message (parsing, leases, breakers, policy, metrics, batching,
scheduling), measured without the noise a shared emulator adds. It is the number to watch when changing
the hot path: compare with an older source tree in the same run (``--baseline DIR``, rounds in random order).

    python -m bench.engine_cpu [-n 20000] [--rounds 5] [--baseline DIR]

Each round runs in a fresh interpreter; CPU is the process's (user + system) between 10 % and 90 % of the
messages deleted, so start-up is not in it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.lowlevel import checkpoint

# A round runs this file in a fresh interpreter, the measured tree first on the path, whose `bench` package
# may be older than this one: nothing here imports from `bench` at module level (main() does, in this tree).
ROOT = Path(__file__).resolve().parent.parent

QUEUE_URL = "http://127.0.0.1:1/000000000000/engine-cpu"
DLQ_URL = "http://127.0.0.1:1/000000000000/engine-cpu-dlq"


class StubSQS:
    """The SQS calls `worker run` makes, answered from memory after one checkpoint."""

    def __init__(self, messages: int) -> None:
        self.left = messages
        #: (count, event set once that many messages were deleted)
        self._waiters: list[tuple[int, anyio.Event]] = []
        self.deleted = 0
        self.sent = 0
        self._body = json.dumps({"order": 1, "pad": "x" * 200})

    async def get_queue_attributes(self, **kwargs: Any) -> dict[str, Any]:
        await checkpoint()
        return {"Attributes": {"QueueArn": "arn:aws:sqs:us-east-1:000000000000:engine-cpu"}}

    async def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        if self.left <= 0:
            await anyio.sleep(kwargs.get("WaitTimeSeconds", 0) or 0.01)
            return {"ResponseMetadata": {"RetryAttempts": 0}}
        await checkpoint()
        count = min(self.left, kwargs.get("MaxNumberOfMessages", 1))
        self.left -= count
        now = str(int(time.time() * 1000))
        messages = []
        for _ in range(count):
            self.sent += 1
            messages.append(
                {
                    "MessageId": f"m-{self.sent}",
                    "ReceiptHandle": f"rh-{self.sent}",
                    "Body": self._body,
                    "MD5OfBody": "0" * 32,
                    "Attributes": {
                        "SentTimestamp": now,
                        "ApproximateReceiveCount": "1",
                        "ApproximateFirstReceiveTimestamp": now,
                        "SenderId": "AIDAEXAMPLE",
                    },
                }
            )
        return {"Messages": messages, "ResponseMetadata": {"RetryAttempts": 0}}

    async def deleted_at_least(self, count: int) -> None:
        """Return once ``count`` messages were deleted."""
        event = anyio.Event()
        self._waiters.append((count, event))
        if self.deleted < count:
            await event.wait()

    async def delete_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        await checkpoint()
        entries = kwargs["Entries"]
        self.deleted += len(entries)
        for count, event in self._waiters:
            if self.deleted >= count:
                event.set()
        return {"Successful": [{"Id": e["Id"]} for e in entries], "Failed": []}

    async def change_message_visibility_batch(self, **kwargs: Any) -> dict[str, Any]:
        await checkpoint()
        return {"Successful": [{"Id": e["Id"]} for e in kwargs["Entries"]], "Failed": []}


def one_round(messages: int) -> dict[str, float]:
    """In this interpreter: run the worker on the stub until every message is deleted; its CPU per message."""
    return anyio.run(_one_round, messages)


async def _one_round(messages: int) -> dict[str, float]:
    from worker.service import app
    from worker.settings import Settings

    stub = StubSQS(messages)

    @asynccontextmanager
    async def stub_client(*args: Any, **kwargs: Any) -> AsyncIterator[StubSQS]:
        yield stub

    app.create_client = stub_client  # type: ignore[assignment]
    settings = Settings(
        queue_url=QUEUE_URL,
        dlq_url=DLQ_URL,
        handler="bench.handlers:noop",
        http_host="127.0.0.1",
        http_port=0,
        wait_time_seconds=1,
        pollers=4,
    )
    low, high = messages // 10, messages - messages // 10
    async with anyio.create_task_group() as tg:
        worker = await tg.start(partial(app.run_worker, settings, handle_signals=False))
        await stub.deleted_at_least(low)
        cpu0, at0, n0 = _cpu(), time.perf_counter(), stub.deleted
        await stub.deleted_at_least(high)
        cpu1, at1, n1 = _cpu(), time.perf_counter(), stub.deleted
        with anyio.fail_after(30):  # the rest drains before the stop: every message handled and deleted
            await stub.deleted_at_least(messages)
        worker.stop()
    return {
        "cpu_ms_per_msg": (cpu1 - cpu0) / (n1 - n0) * 1000,
        "msgs_per_s": (n1 - n0) / (at1 - at0),
        "deleted": stub.deleted,
    }


def _cpu() -> float:
    """This process's CPU seconds (user + system, every thread), at nanosecond resolution."""
    return time.process_time()


def run_tree(src: Path, messages: int) -> dict[str, float]:
    """One round in a fresh interpreter, with ``src`` first on the path (its `worker` package is run)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WORKER_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(src), str(ROOT)])
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    # This file by path: the candidate tree may not have it; its `worker` package comes first on the path.
    argv = [sys.executable, str(Path(__file__).resolve()), "--one-round", "-n", str(messages)]
    done = subprocess.run(argv, cwd=src, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"round in {src} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.engine_cpu", description=__doc__.splitlines()[0])
    p.add_argument("--messages", "-n", type=int, default=20_000, help="messages per round (default 20,000)")
    p.add_argument(
        "--rounds", type=int, default=5, help="rounds per tree, each in a random order (default 5)"
    )
    p.add_argument("--baseline", type=Path, default=None, help="an older source tree to compare with")
    p.add_argument("--seed", type=int, default=None, help="seed of the rounds' orders (default: random)")
    p.add_argument("--output", default=None, help="results JSON (default bench/results/engine-<date>.json)")
    p.add_argument("--one-round", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def summarize(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Median and 95 % interval of each tree's CPU per message and rate; with a baseline, the ratio of each
    round's figures (this / baseline), paired by round."""
    from bench import stats

    out: dict[str, Any] = {}
    for name, rounds in runs.items():
        cpu, cpu_ci = stats.summary([r["cpu_ms_per_msg"] for r in rounds], 4)
        rate, rate_ci = stats.summary([r["msgs_per_s"] for r in rounds], 0)
        out[name] = {
            "cpu_ms_per_msg": cpu,
            "cpu_ms_per_msg_ci95": cpu_ci,
            "msgs_per_s": rate,
            "msgs_per_s_ci95": rate_ci,
        }
    if "baseline" in runs:
        pairs = zip(runs["this"], runs["baseline"], strict=True)
        ratio, ratio_ci = stats.summary([a["cpu_ms_per_msg"] / b["cpu_ms_per_msg"] for a, b in pairs], 3)
        out["ratio_to_baseline"] = {"cpu_ms_per_msg": ratio, "cpu_ms_per_msg_ci95": ratio_ci}
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print the medians (and the ratio to the baseline), write the JSON."""
    args = parse_args(argv)
    if args.one_round:
        import logging

        logging.disable(logging.WARNING)
        print(json.dumps(one_round(args.messages)))
        return 0
    from bench.common import log, write_results
    from bench.run import git_state, machine

    trees = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    rng = random.Random(seed)
    results: dict[str, Any] = {
        "kind": "engine",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "emulator": "none: an in-process SQS stub (no SDK, no network)",
        "emulator_kind": "stub",
        "machine": machine(),
        "git": git_state(),
        "trees": {name: {"path": str(path), "git": git_state(path)} for name, path in trees.items()},
        "messages": args.messages,
        "repeat": args.rounds,
        "seed": seed,
        "order": [],
        "runs": {name: [] for name in trees},
    }
    for index in range(args.rounds):
        order = list(trees)
        rng.shuffle(order)
        results["order"].append(order)
        for name in order:
            result = run_tree(trees[name], args.messages)
            results["runs"][name].append(result)
            log(f"round {index + 1} {name:>8}: {result['cpu_ms_per_msg']:.4f} CPU ms/msg")
    results["summary"] = summarize(results["runs"])
    print(table(results))
    print(f"\nresults: {write_results(results, args.output, 'engine-')}")
    return 0


def table(results: dict[str, Any]) -> str:
    """The Markdown table of a run: each tree's CPU per message and rate, and the ratio to the baseline."""
    summary = results["summary"]
    lines = ["| tree | commit | CPU ms / message | msg/s |", "|---|---|---:|---:|"]
    for name, tree in results["trees"].items():
        row = summary[name]
        sha = (tree["git"].get("sha") or "?")[:7] + (" (dirty)" if tree["git"].get("dirty") else "")
        lines.append(
            f"| {name} | `{sha}` | {row['cpu_ms_per_msg']:.4f} {_interval(row['cpu_ms_per_msg_ci95'], 4)} "
            f"| {row['msgs_per_s']:,.0f} |"
        )
    ratio = summary.get("ratio_to_baseline")
    if ratio:
        lines += [
            "",
            f"this / baseline, CPU per message: {ratio['cpu_ms_per_msg']:.3f} "
            f"{_interval(ratio['cpu_ms_per_msg_ci95'], 3)} (paired by round)",
        ]
    return "\n".join(lines)


def _interval(ci: list[float] | None, digits: int) -> str:
    return "" if ci is None else f"[{ci[0]:.{digits}f}-{ci[1]:.{digits}f}]"


if __name__ == "__main__":
    sys.exit(main())
