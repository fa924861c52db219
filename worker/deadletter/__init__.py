"""Dead-lettering: the DLQ record (pure: build it, read it back) and the writer that sends it."""

from worker.deadletter.record import FailureRecord as FailureRecord
from worker.deadletter.record import read_failure as read_failure
from worker.deadletter.record import restore_attributes as restore_attributes
