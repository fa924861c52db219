"""Parsing destination URIs (``WORKER_ON_SUCCESS`` / ``WORKER_ON_FAILURE``): pure, no I/O, no imports run.

Accepted forms:

* ``sqs://queue-name`` (resolved with GetQueueUrl at start-up), a queue URL ``https://host/account/name``
  (``http://`` too, for local endpoints) or a queue ARN ``arn:aws:sqs:region:account:name``;
* ``sns:arn:aws:sns:region:account:topic``;
* ``s3://bucket`` or ``s3://bucket/prefix`` (one object per record under the prefix);
* ``events:bus-name`` (or ``events:arn:aws:events:region:account:event-bus/name``);
* ``python:pkg.module:callable`` (an in-process hook; imported by the sink, not here).

A bad URI raises ValueError with the reason; the settings turn it into a one-line configuration error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from worker.aws.names import Arn, queue_name

Kind = Literal["sqs", "sns", "s3", "events", "python"]

#: SQS queue names: 1-80 letters, digits, hyphens and underscores; FIFO queues end in ``.fifo``.
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}(\.fifo)?$")
_PARTITION = r"aws(?:-[a-z]+)*"
_SQS_ARN = re.compile(rf"^arn:{_PARTITION}:sqs:[a-z0-9-]+:\d{{12}}:([A-Za-z0-9_.-]+)$")
_SNS_ARN = re.compile(rf"^arn:{_PARTITION}:sns:[a-z0-9-]+:\d{{12}}:([A-Za-z0-9_.-]{{1,256}})$")
#: S3 bucket names: 3-63 lower-case letters, digits, dots and hyphens, starting and ending alphanumeric.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
#: EventBridge bus names (custom buses: letters, digits, ``.``, ``-``, ``_``, ``/``; at most 256).
_BUS_NAME = re.compile(r"^[A-Za-z0-9._/-]{1,256}$")
_BUS_ARN = re.compile(rf"^arn:{_PARTITION}:events:[a-z0-9-]+:\d{{12}}:event-bus/([A-Za-z0-9._/-]{{1,256}})$")
_PYTHON_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

_FORMS = (
    "sqs://name, https://queue-url, arn:aws:sqs:..., sns:arn:aws:sns:..., s3://bucket/prefix, "
    "events:bus, python:pkg.mod:fn"
)


@dataclass(frozen=True, slots=True)
class DestinationUri:
    """A parsed destination.

    ``target`` is what the service call needs: a queue name (``sqs://``), queue URL or queue ARN for
    SQS, the topic ARN for SNS, the bucket for S3, the bus name or ARN for EventBridge, the
    ``pkg.mod:fn`` path for Python hooks. ``prefix`` is the S3 key prefix (no leading or trailing
    slash), empty for every other kind.
    """

    kind: Kind
    target: str
    uri: str
    prefix: str = ""

    @property
    def name(self) -> str:
        """The short name of the target: queue, topic, bucket, bus, or the python path."""
        if self.kind == "sqs":
            return queue_name(self.target)
        if self.kind == "sns":
            return self.target.rsplit(":", 1)[-1]
        if self.kind == "events":
            return self.target.rsplit("event-bus/", 1)[-1] if self.target.startswith("arn:") else self.target
        return self.target

    @property
    def label(self) -> str:
        """The metrics label, low-cardinality: the kind and the target's name (``sqs:orders``)."""
        return f"{self.kind}:{self.name}"

    @property
    def is_fifo(self) -> bool:
        """True for FIFO queues and topics (their sends need a group id and a deduplication id)."""
        return self.kind in ("sqs", "sns") and self.name.endswith(".fifo")


def parse_destination(uri: str) -> DestinationUri:
    """Parse one destination URI; raise ValueError naming what is wrong."""
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError("empty destination URI")
    if uri != uri.strip():
        raise ValueError(f"destination {uri!r} has surrounding whitespace")
    lowered = uri.lower()
    if lowered.startswith("sqs://"):
        return _sqs_name(uri)
    if lowered.startswith(("https://", "http://")):
        return _sqs_url(uri)
    if lowered.startswith("arn:"):
        return _bare_arn(uri)
    if lowered.startswith("sns:"):
        return _sns(uri)
    if lowered.startswith("s3://"):
        return _s3(uri)
    if lowered.startswith("events:"):
        return _events(uri)
    if lowered.startswith("python:"):
        return _python(uri)
    if ":" not in uri:
        raise ValueError(f"destination {uri!r} has no scheme; expected one of {_FORMS}")
    scheme = uri.split(":", 1)[0]
    raise ValueError(f"unknown destination scheme {scheme!r} in {uri!r}; expected one of {_FORMS}")


def _sqs_name(uri: str) -> DestinationUri:
    name = uri[len("sqs://") :]
    if not name:
        raise ValueError(f"SQS destination {uri!r} has an empty queue name")
    if not _QUEUE_NAME.fullmatch(name):
        raise ValueError(
            f"SQS destination {uri!r}: {name!r} is not a queue name "
            "(1-80 letters, digits, '-' or '_', optionally ending in .fifo)"
        )
    return DestinationUri("sqs", name, uri)


def _sqs_url(uri: str) -> DestinationUri:
    parts = urlsplit(uri)
    segments = [s for s in parts.path.split("/") if s]
    if not parts.hostname or len(segments) < 2 or parts.query or parts.fragment:
        raise ValueError(f"SQS destination {uri!r} is not a queue URL (https://host/account/queue-name)")
    if not _QUEUE_NAME.fullmatch(segments[-1]):
        raise ValueError(f"SQS destination {uri!r}: {segments[-1]!r} is not a queue name")
    return DestinationUri("sqs", uri, uri)


def _bare_arn(uri: str) -> DestinationUri:
    if _SQS_ARN.fullmatch(uri):
        return DestinationUri("sqs", uri, uri)
    try:
        service = Arn.parse(uri).service
    except ValueError:
        service = ""
    if service == "sns":
        raise ValueError(f"SNS destinations are written sns:<topic ARN>, got {uri!r}")
    if service == "sqs":
        raise ValueError(f"SQS destination {uri!r} is not a queue ARN (arn:aws:sqs:region:account:name)")
    raise ValueError(f"unsupported ARN destination {uri!r}: only SQS queue ARNs may be given bare")


def _sns(uri: str) -> DestinationUri:
    target = uri[len("sns:") :]
    if not target:
        raise ValueError(f"SNS destination {uri!r} has no topic ARN")
    if not _SNS_ARN.fullmatch(target):
        raise ValueError(
            f"SNS destination {uri!r}: target must be a topic ARN (arn:aws:sns:region:account:topic), "
            f"got {target!r}"
        )
    return DestinationUri("sns", target, uri)


def _s3(uri: str) -> DestinationUri:
    rest = uri[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"S3 destination {uri!r} has an empty bucket name")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(
            f"S3 destination {uri!r}: {bucket!r} is not a bucket name "
            "(3-63 lower-case letters, digits, '.' or '-')"
        )
    prefix = prefix.strip("/")
    if "//" in prefix:
        raise ValueError(f"S3 destination {uri!r}: the prefix has an empty path segment")
    return DestinationUri("s3", bucket, uri, prefix=prefix)


def _events(uri: str) -> DestinationUri:
    target = uri[len("events:") :]
    if not target:
        raise ValueError(f"EventBridge destination {uri!r} has an empty bus name")
    if target.startswith("arn:"):
        if not _BUS_ARN.fullmatch(target):
            raise ValueError(f"EventBridge destination {uri!r}: {target!r} is not an event bus ARN")
    elif not _BUS_NAME.fullmatch(target):
        raise ValueError(
            f"EventBridge destination {uri!r}: {target!r} is not a bus name "
            "(letters, digits, '.', '-', '_' or '/', at most 256)"
        )
    return DestinationUri("events", target, uri)


def _python(uri: str) -> DestinationUri:
    target = uri[len("python:") :]
    if not _PYTHON_PATH.fullmatch(target):
        raise ValueError(f"python destination {uri!r} must look like python:pkg.module:callable")
    return DestinationUri("python", target, uri)
