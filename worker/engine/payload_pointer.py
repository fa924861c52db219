"""Extended-client payload pointers (pure): recognise, parse and write ``PayloadS3Pointer`` bodies.

The AWS extended client libraries (Java ``amazon-sqs-java-extended-client-lib`` and its SNS twin, Python
``amazon-sqs-extended-client`` / ``amazon-sns-extended-client``, the older ``sqs-extended-client``) put a
body above 256 KiB in S3 and send, in its place, a two-element JSON array (Jackson's wrapper-array form of
the Java class)::

    ["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": "b", "s3Key": "k"}]

with a Number attribute ``ExtendedPayloadSize`` holding the payload's size in bytes. Older Java versions and
the ``sqs-extended-client`` package write ``com.amazon.sqs.javamessaging.MessageS3Pointer`` and
``SQSLargePayloadSize``; both forms are read, the current one is written (compact, as Jackson writes it).
Through SNS the pointer is the notification's ``Message`` (or, with raw delivery, the SQS body), and the
attribute an SNS message attribute: either way the worker's ``Message.body`` and ``Message.attributes``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from worker.engine.message import Message, MessageAttribute, unwrap_sns
from worker.errors import DecodeError, PermanentError

#: The pointer class the current libraries write (payload-offloading-java-common-lib-for-aws).
POINTER_CLASS = "software.amazon.payloadoffloading.PayloadS3Pointer"
#: The pointer class of the extended client's 1.x Java versions and of the ``sqs-extended-client`` package.
LEGACY_POINTER_CLASS = "com.amazon.sqs.javamessaging.MessageS3Pointer"
POINTER_CLASSES = (POINTER_CLASS, LEGACY_POINTER_CLASS)
#: The Number attribute with the payload's size in bytes (reserved by the libraries).
SIZE_ATTRIBUTE = "ExtendedPayloadSize"
LEGACY_SIZE_ATTRIBUTE = "SQSLargePayloadSize"
SIZE_ATTRIBUTES = (SIZE_ATTRIBUTE, LEGACY_SIZE_ATTRIBUTE)
#: Bodies longer than this are never pointers (a class name, a bucket name and a 1,024-byte key, escaped).
MAX_POINTER_CHARS = 8192
#: S3 keys are at most 1,024 bytes of UTF-8.
MAX_KEY_BYTES = 1024
#: Bucket names a pointer may name: today's rules, plus the capitals and underscores of legacy
#: us-east-1 buckets (up to 255 characters); no slash, so a name never changes the request's path.
_READABLE_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]$")
#: Bucket names the worker may write to: 3-63 lower-case letters, digits, dots and hyphens.
_WRITABLE_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class PointerError(DecodeError):
    """A body that claims to be a payload pointer (class name or size attribute) but cannot be read as one."""


class PayloadMissing(PermanentError):  # noqa: N818 - the record's error type, named for what it says
    """The object a pointer names does not exist (NoSuchKey, NoSuchBucket): it never will; dead-letter."""


class PayloadTooLarge(PermanentError):  # noqa: N818 - the record's error type
    """The payload is larger than WORKER_EXTENDED_PAYLOADS__MAX_BYTES: dead-lettered, its pointer kept."""


class PayloadNotAllowed(PermanentError):  # noqa: N818 - the record's error type
    """The pointer names a bucket outside WORKER_EXTENDED_PAYLOADS__ALLOWED_BUCKETS."""


class PayloadUnavailable(Exception):  # noqa: N818 - named for what the records say: a transient failure
    """The payload could not be read this time (throttling, 5xx, access denied, network): retried."""


@dataclass(frozen=True, slots=True)
class PayloadPointer:
    """Where a payload lives: ``s3://bucket/key``; ``pointer_class`` is the class name the body gave."""

    bucket: str
    key: str
    pointer_class: str = POINTER_CLASS

    @property
    def uri(self) -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.bucket}/{self.key}"

    def to_body(self) -> str:
        """The message body: the wrapper array, compact and ASCII-only (what Jackson writes)."""
        fields = {"s3BucketName": self.bucket, "s3Key": self.key}
        return json.dumps([self.pointer_class, fields], separators=(",", ":"), ensure_ascii=True)


def bucket_problem(name: str, *, writable: bool = False) -> str | None:
    """Why ``name`` cannot be a pointer's bucket (``writable``: a bucket the worker writes to), or None."""
    pattern = _WRITABLE_BUCKET if writable else _READABLE_BUCKET
    if not pattern.fullmatch(name):
        limit = (
            "3-63 lower-case letters, digits, dots and hyphens"
            if writable
            else "3-255 letters, digits, . _ -"
        )
        return f"must be {limit}, starting and ending with a letter or digit, got {name!r}"
    if ".." in name:
        return f"must not contain '..', got {name!r}"
    return None


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be an S3 object key (empty, over 1,024 bytes, not encodable), or None."""
    if not key:
        return "the object key is empty"
    try:
        size = len(key.encode())
    except UnicodeEncodeError:
        return "the object key is not valid Unicode"
    if size > MAX_KEY_BYTES:
        return f"the object key has {size} bytes (at most {MAX_KEY_BYTES})"
    return None


def _claims_pointer(body: str) -> bool:
    """Cheap test before a JSON parse: only short arrays naming a pointer class are parsed."""
    return len(body) <= MAX_POINTER_CHARS and body.lstrip()[:1] == "[" and "S3Pointer" in body


def parse_pointer(body: str) -> PayloadPointer | None:
    """The pointer ``body`` holds, or None when it holds none.

    A body that names a pointer class as its first element but does not carry a valid bucket and key raises
    PointerError; unknown properties next to them are ignored (as Jackson is configured to).
    """
    if not _claims_pointer(body):
        return None
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, list) or not doc or doc[0] not in POINTER_CLASSES:
        return None
    if len(doc) != 2 or not isinstance(doc[1], dict):
        raise PointerError(f"{doc[0]} pointer is not [class, {{s3BucketName, s3Key}}]", body)
    fields: dict[str, Any] = doc[1]
    bucket, key = fields.get("s3BucketName"), fields.get("s3Key")
    if not isinstance(bucket, str) or not isinstance(key, str):
        raise PointerError("payload pointer lacks a string s3BucketName or s3Key", body)
    problem = bucket_problem(bucket)
    if problem is not None:
        raise PointerError(f"payload pointer bucket {problem}", body)
    problem = key_problem(key)
    if problem is not None:
        raise PointerError(f"payload pointer: {problem}", body)
    return PayloadPointer(bucket=bucket, key=key, pointer_class=str(doc[0]))


def declared_size(attributes: Mapping[str, MessageAttribute]) -> int | None:
    """The size an ``ExtendedPayloadSize`` (or legacy) attribute declares; None when absent or invalid."""
    for name in SIZE_ATTRIBUTES:
        attr = attributes.get(name)
        if attr is None:
            continue
        value = attr.value.decode(errors="replace") if isinstance(attr.value, bytes) else attr.value
        try:
            size = int(value.strip())
        except ValueError:
            return None
        return size if size >= 0 else None
    return None


def find_pointer(message: Message) -> PayloadPointer | None:
    """The pointer a received message carries in its payload, or None for an ordinary message.

    The body decides (a pointer without the size attribute is still resolved); a size attribute on a body
    that is not a pointer raises PointerError: the extended client libraries would fail on it too.
    """
    pointer = parse_pointer(message.body)
    if pointer is None and any(name in message.attributes for name in SIZE_ATTRIBUTES):
        raise PointerError(
            "message has an ExtendedPayloadSize attribute but its body is not a payload pointer"
        )
    return pointer


def check_allowed(pointer: PayloadPointer, allowed: Collection[str]) -> None:
    """Raise PayloadNotAllowed when ``allowed`` is not empty and does not name the pointer's bucket."""
    if allowed and pointer.bucket not in allowed:
        raise PayloadNotAllowed(f"payload bucket {pointer.bucket!r} is not in the allowed buckets")


def check_size(pointer: PayloadPointer, size: int | None, max_bytes: int) -> None:
    """Raise PayloadTooLarge when ``size`` (declared or read) is above ``max_bytes``."""
    if size is not None and size > max_bytes:
        raise PayloadTooLarge(f"payload {pointer.uri} has {size} bytes (at most {max_bytes})")


def decode_payload(pointer: PayloadPointer, data: bytes) -> str:
    """The payload's text: UTF-8, as every extended client library writes it; else PointerError."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PointerError(f"payload {pointer.uri} is not UTF-8 text", cause=exc) from exc


def resolved(message: Message, payload: str) -> Message:
    """The message the handler sees: ``body`` is the payload, ``raw_body`` still the pointer.

    The size attributes are dropped from ``attributes`` (the libraries remove them too); ``sqs_attributes``
    is kept as received. A payload that was a whole SQS body (a pointer straight in the body, no SNS around
    it) and is an SNS notification is unwrapped like any received body.
    """
    attributes: Mapping[str, MessageAttribute] = message.attributes
    body, sns = payload, message.sns
    if sns is None:
        unwrapped = unwrap_sns(payload)
        if unwrapped is not None:
            body, sns, sns_attributes = unwrapped
            attributes = {**attributes, **sns_attributes}
    kept = {name: attr for name, attr in attributes.items() if name not in SIZE_ATTRIBUTES}
    return replace(message, body=body, sns=sns, attributes=MappingProxyType(kept), _json_cache=[])


def size_attribute(size: int) -> dict[str, MessageAttribute]:
    """The ``ExtendedPayloadSize`` attribute of a payload of ``size`` bytes."""
    return {SIZE_ATTRIBUTE: MessageAttribute("Number", str(size))}


def object_key(prefix: str, *parts: str) -> str:
    """An object key under ``prefix`` (``a/b`` + ``c`` is ``a/b/c``; an empty prefix adds nothing)."""
    head = prefix.strip("/")
    tail = "/".join(part.strip("/") for part in parts if part.strip("/"))
    return f"{head}/{tail}" if head else tail
