"""sqs-workers 0.7.x as its README runs it: a RawQueue addressed by URL (no GetQueueUrl), batch reads
(``BatchMessages(10)``: one ReceiveMessage of 10, the handler on the list, one DeleteMessageBatch), and
``process_queue()`` in each of ``BENCH_PEER_PROCESSES`` processes (the library runs one queue per process;
more processes are how it scales). The parent forks them, forwards SIGTERM (sqs-workers installs no handler,
so a child exits at once, as under any process manager) and waits.

``python -m bench.peers.sqs_workers_consumer bodies``: raw queues take the payload as the body unchanged.
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import sys
from typing import Any

from bench.peers.common import announce_ready, encode_stdin, handler, number, queue_url


def consume(url: str, wait: int) -> None:
    """One process: the queue processed in sqs-workers' own loop until SIGTERM ends the process."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from sqs_workers import RawQueue, SQSEnv  # type: ignore[import-not-found]
    from sqs_workers.batching import BatchMessages  # type: ignore[import-not-found]

    handle = handler()
    sqs = SQSEnv()
    queue = sqs.queue("bench", RawQueue, batching_policy=BatchMessages(batch_size=10), queue_url=url)

    @queue.raw_processor()  # type: ignore[untyped-decorator]
    def process(messages: list[Any]) -> None:
        for message in messages:
            handle(message.body)

    queue.process_queue(wait_second=wait)


def main() -> None:
    """Fork the processes, print ``ready``, forward SIGTERM, wait for them, print the counts."""
    import sqs_workers  # noqa: F401  # imported once before the fork, as process_queues() does

    processes = number("BENCH_PEER_PROCESSES", 1)
    wait = number("BENCH_WAIT_SECONDS", 10)
    url = queue_url()
    children = [multiprocessing.Process(target=consume, args=(url, wait)) for _ in range(processes)]

    def stop(signum: int, frame: object) -> None:
        for child in children:
            if child.pid is not None:
                child.terminate()

    signal.signal(signal.SIGTERM, stop)
    for child in children:
        child.start()
    announce_ready()
    for child in children:
        child.join()
    print(json.dumps({"processes": processes}), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["bodies"]:
        encode_stdin(lambda payloads: payloads)
    else:
        multiprocessing.set_start_method("fork")
        main()
