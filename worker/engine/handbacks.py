"""Messages this worker gave back without running their handler, so their receives are not taken as attempts.

SQS raises ``ApproximateReceiveCount`` on every receive, including receives that ran no handler: messages
a stopping worker's pending long polls brought in and gave back, the later messages of a FIFO group given
back with a failed one, messages left unstarted at a drain. The worker counts those hand-backs per message
id (bounded: the oldest entries are forgotten first) and the policy subtracts them from the receive count.
Hand-backs made by another process are not known here: there, they still count as attempts, never as the
last one (a message is dead-lettered for exhausted retries only after its handler failed).
"""

from __future__ import annotations

from collections import OrderedDict

#: Message ids remembered at most (about 100 bytes each).
HANDBACKS_MAX = 50_000


class HandBacks:
    """Per message id, how many of its receives this worker handed back unprocessed."""

    def __init__(self, limit: int = HANDBACKS_MAX) -> None:
        self._limit = limit
        self._counts: OrderedDict[str, int] = OrderedDict()

    def record(self, message_id: str) -> None:
        """One more receive of ``message_id`` went back without a handler run."""
        self._counts[message_id] = self._counts.pop(message_id, 0) + 1
        while len(self._counts) > self._limit:
            self._counts.popitem(last=False)

    def count(self, message_id: str) -> int:
        """Hand-backs of ``message_id`` known to this worker."""
        return self._counts.get(message_id, 0)

    def forget(self, message_id: str) -> None:
        """The message left the queue (deleted or dead-lettered)."""
        self._counts.pop(message_id, None)

    def __len__(self) -> int:
        return len(self._counts)
