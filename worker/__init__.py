"""A resilient asyncio SQS/SNS worker: timeouts, staged retries, dead-lettering, destinations, metrics."""

from ._version import __version__ as __version__
from .errors import ConfigError as ConfigError
from .errors import DecodeError as DecodeError
from .errors import PermanentError as PermanentError
from .errors import RetryLater as RetryLater
from .errors import SchemaError as SchemaError
from .errors import WorkerError as WorkerError
from .hooks import Outcome as Outcome
from .message import Message as Message
from .message import MessageAttribute as MessageAttribute
from .message import SnsInfo as SnsInfo
from .policy import Condition as Condition
from .records import DestinationRecord as DestinationRecord

__all__ = [  # noqa: RUF022 - grouped by purpose, as the docs present them
    # handler API
    "Message",
    "MessageAttribute",
    "SnsInfo",
    # errors
    "ConfigError",
    "DecodeError",
    "PermanentError",
    "RetryLater",
    "SchemaError",
    "WorkerError",
    # outcomes and hooks
    "Condition",
    "DestinationRecord",
    "Outcome",
    # meta
    "__version__",
]
