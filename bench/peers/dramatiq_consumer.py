"""dramatiq with dramatiq-sqs 0.4.x, run by dramatiq's own CLI as its docs show
(``dramatiq bench.peers.dramatiq_consumer --processes P --threads T``): an ``SQSBroker`` with dramatiq's
default middleware and the bench's visibility timeout, one actor on the bench's queue. The consumer prefetches
up to 10 messages a ReceiveMessage and deletes each one on its own (``DeleteMessage`` per ack: dramatiq-sqs
has no batch ack); its long-poll wait is dramatiq's ``worker_timeout``, left at its default of 1 s (the CLI
has no option for it).

``python -m bench.peers.dramatiq_consumer bodies``: each payload as a dramatiq message for that actor, encoded
as ``SQSBroker.enqueue`` encodes it (base64 of ``Message.encode()``).
"""

from __future__ import annotations

import sys
from base64 import b64encode

import dramatiq  # type: ignore[import-not-found]
from dramatiq_sqs import SQSBroker  # type: ignore[import-not-found]

from bench.peers.common import encode_stdin, handler, number, queue_name

ACTOR = "bench_task"

broker = SQSBroker(visibility_timeout=number("BENCH_VISIBILITY_SECONDS", 60))
dramatiq.set_broker(broker)
_handle = handler()


@dramatiq.actor(queue_name=queue_name(), actor_name=ACTOR)  # type: ignore[untyped-decorator]
def bench_task(payload: str) -> None:
    """The bench's handler on the payload."""
    _handle(payload)


def encode(payloads: list[str]) -> list[str]:
    """The SQS bodies ``SQSBroker.enqueue`` would send for these payloads."""
    name = queue_name()
    return [
        b64encode(
            dramatiq.Message(queue_name=name, actor_name=ACTOR, args=(p,), kwargs={}, options={}).encode()
        ).decode()
        for p in payloads
    ]


if __name__ == "__main__" and sys.argv[1:] == ["bodies"]:
    encode_stdin(encode)
