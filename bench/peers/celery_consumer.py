"""Celery 5 on kombu's SQS transport, run by Celery's own CLI
(``celery -A bench.peers.celery_consumer worker --pool POOL --concurrency N``) and configured as Celery's SQS
page and kombu's transport docs advise: the queue given as a predefined queue (no ListQueues/CreateQueue),
long polling with the bench's wait, the bench's visibility timeout, ``polling_interval`` 0 (kombu: "to rely
entirely on long polling"), and the prefetch multiplier the bench passes (64 for no-op tasks, as Celery's
optimizing guide advises for many short tasks; kombu receives up to 10 a call, within the prefetch count).
kombu acknowledges each task with its own DeleteMessage.

``python -m bench.peers.celery_consumer bodies``: each payload as the task message ``apply_async`` produces,
taken from kombu's in-memory transport and encoded as the SQS transport encodes it (base64 of the JSON
envelope), so the worker reads exactly what a Celery producer would have sent.
"""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery  # type: ignore[import-not-found]
from celery.signals import worker_ready  # type: ignore[import-not-found]

from bench.peers.common import announce_ready, encode_stdin, handler, number, queue_url

QUEUE = "bench"
TASK = "bench.task"

app = Celery("bench", broker="sqs://")
app.conf.update(
    broker_transport_options={
        "region": "us-east-1",
        "predefined_queues": {QUEUE: {"url": queue_url()}},
        "wait_time_seconds": number("BENCH_WAIT_SECONDS", 10),
        "visibility_timeout": number("BENCH_VISIBILITY_SECONDS", 60),
        "polling_interval": 0,
    },
    broker_connection_retry_on_startup=True,
    task_default_queue=QUEUE,
    worker_prefetch_multiplier=number("BENCH_PEER_PREFETCH_MULTIPLIER", 4),
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
)
_handle = handler()


@app.task(name=TASK)  # type: ignore[untyped-decorator]
def bench_task(payload: str) -> None:
    """The bench's handler on the payload."""
    _handle(payload)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _ready(**kwargs: Any) -> None:
    announce_ready()


def encode(payloads: list[str]) -> list[str]:
    """The SQS bodies a Celery producer would send for these payloads."""
    from kombu.asynchronous.aws.sqs.message import AsyncMessage  # type: ignore[import-not-found]
    from kombu.utils.json import dumps  # type: ignore[import-not-found]

    bodies = []
    with app.connection_for_write("memory://") as conn:
        channel = conn.default_channel
        for payload in payloads:
            bench_task.apply_async(args=(payload,), connection=conn)
            bodies.append(AsyncMessage().encode(dumps(channel._get(QUEUE))))
    return bodies


if __name__ == "__main__" and sys.argv[1:] == ["bodies"]:
    encode_stdin(encode)
