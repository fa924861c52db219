"""The Message handed to handlers, and parsing of SQS messages and SNS envelopes."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from worker.errors import DecodeError, SchemaError
from worker.timestamps import parse_iso

ModelT = TypeVar("ModelT", bound=BaseModel)

#: Keys an SNS notification envelope always has when delivered without raw message delivery.
_SNS_REQUIRED = ("Type", "MessageId", "TopicArn", "Message")
_EMPTY: Mapping[str, Any] = MappingProxyType({})
#: The epoch milliseconds a datetime can hold (years 1 to 9999); others are not timestamps.
_MIN_EPOCH_MS = -62_135_596_800_000
_MAX_EPOCH_MS = 253_402_300_799_999


@dataclass(frozen=True, slots=True)
class MessageAttribute:
    """One message attribute: ``data_type`` is String, Number or Binary (optionally ``.custom``)."""

    data_type: str
    value: str | bytes

    @property
    def kind(self) -> str:
        """The base type without its custom suffix: String, Number or Binary."""
        return self.data_type.split(".", 1)[0]

    def to_sqs(self) -> dict[str, Any]:
        """The attribute in the shape SendMessage expects."""
        if self.kind == "Binary":
            value = self.value if isinstance(self.value, bytes) else self.value.encode()
            return {"DataType": self.data_type, "BinaryValue": value}
        text = self.value.decode() if isinstance(self.value, bytes) else self.value
        return {"DataType": self.data_type, "StringValue": text}

    def size(self) -> int:
        """Bytes this attribute counts toward the SQS message size (name excluded)."""
        raw = self.value if isinstance(self.value, bytes) else self.value.encode()
        return len(self.data_type.encode()) + len(raw)


@dataclass(frozen=True, slots=True)
class SnsInfo:
    """Metadata of the SNS notification a message arrived in (non-raw delivery)."""

    topic_arn: str
    message_id: str
    subject: str | None
    timestamp: datetime | None
    type: str = "Notification"


@dataclass(frozen=True, slots=True, eq=False)
class Message:
    """A received message; ``body`` is the payload, ``raw_body`` the exact SQS body."""

    id: str
    receipt_handle: str
    raw_body: str
    body: str
    queue_url: str
    attributes: Mapping[str, MessageAttribute] = field(default_factory=lambda: _EMPTY)
    system_attributes: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    sns: SnsInfo | None = None
    #: Attributes as they came on the SQS message itself (without SNS ones); what a dead-letter keeps.
    sqs_attributes: Mapping[str, MessageAttribute] = field(default_factory=lambda: _EMPTY)
    _json_cache: list[Any] = field(default_factory=list, repr=False, compare=False)

    @property
    def receive_count(self) -> int:
        """ApproximateReceiveCount: deliveries so far, this one included (survives worker restarts)."""
        return int(self.system_attributes.get("ApproximateReceiveCount", "1"))

    @property
    def sent_at(self) -> datetime | None:
        """When SQS accepted the message."""
        return _epoch_ms(self.system_attributes.get("SentTimestamp"))

    @property
    def first_received_at(self) -> datetime | None:
        """When any consumer first received the message."""
        return _epoch_ms(self.system_attributes.get("ApproximateFirstReceiveTimestamp"))

    @property
    def group_id(self) -> str | None:
        """FIFO message group id, or None on a standard queue."""
        return self.system_attributes.get("MessageGroupId")

    @property
    def deduplication_id(self) -> str | None:
        """FIFO deduplication id, or None."""
        return self.system_attributes.get("MessageDeduplicationId")

    @property
    def sequence_number(self) -> str | None:
        """FIFO sequence number, or None."""
        return self.system_attributes.get("SequenceNumber")

    def json(self) -> Any:
        """The payload decoded as JSON; raises DecodeError when it is not JSON."""
        if not self._json_cache:
            try:
                self._json_cache.append(json.loads(self.body))
            except (ValueError, RecursionError) as exc:
                raise DecodeError(f"body is not valid JSON: {exc}", self.body, exc) from exc
        return self._json_cache[0]

    def model(self, model: type[ModelT]) -> ModelT:
        """The payload validated by a pydantic model: SchemaError with the reason; DecodeError if not JSON."""
        try:
            return model.model_validate_json(self.body)
        except ValidationError as exc:
            if any(error["type"] == "json_invalid" for error in exc.errors()):
                raise DecodeError(f"body is not valid JSON: {_first_error(exc)}", self.body, exc) from exc
            raise SchemaError(
                f"payload does not match {model.__name__}: {_first_error(exc)}", self.body, exc
            ) from exc


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    loc = ".".join(str(part) for part in first["loc"]) or "<root>"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc}: {first['msg']}{more}"


def epoch_millis(value: object) -> int | None:
    """Epoch milliseconds of an SQS timestamp attribute, or None when absent or not a valid timestamp."""
    if value is None:
        return None
    try:
        ms = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
    return ms if _MIN_EPOCH_MS <= ms <= _MAX_EPOCH_MS else None


def _epoch_ms(value: str | None) -> datetime | None:
    ms = epoch_millis(value)
    if ms is None:
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def parse_sqs_attributes(raw: Mapping[str, Mapping[str, Any]] | None) -> dict[str, MessageAttribute]:
    """Message attributes from a ReceiveMessage entry."""
    out: dict[str, MessageAttribute] = {}
    for name, attr in (raw or {}).items():
        data_type = str(attr.get("DataType", "String"))
        if data_type.startswith("Binary"):
            out[name] = MessageAttribute(data_type, bytes(attr.get("BinaryValue", b"")))
        else:
            out[name] = MessageAttribute(data_type, str(attr.get("StringValue", "")))
    return out


def parse_sns_attributes(raw: object) -> dict[str, MessageAttribute]:
    """Message attributes from an SNS envelope (``{"name": {"Type": ..., "Value": ...}}``)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise DecodeError("SNS envelope MessageAttributes is not an object")
    out: dict[str, MessageAttribute] = {}
    for name, attr in raw.items():
        if not isinstance(attr, dict) or not isinstance(attr.get("Value"), str):
            raise DecodeError(f"SNS envelope attribute {name!r} is malformed")
        data_type = str(attr.get("Type", "String"))
        if data_type.startswith("Binary"):
            try:
                out[name] = MessageAttribute(data_type, base64.b64decode(attr["Value"], validate=True))
            except (binascii.Error, ValueError) as exc:
                raise DecodeError(f"SNS envelope attribute {name!r} is not base64", cause=exc) from exc
        else:
            out[name] = MessageAttribute(data_type, attr["Value"])
    return out


def looks_like_sns_envelope(raw_body: str) -> bool:
    """Cheap test before a JSON parse: only bodies that could be an SNS notification are parsed."""
    return raw_body[:1] == "{" and '"TopicArn"' in raw_body and '"Type"' in raw_body


def unwrap_sns(raw_body: str) -> tuple[str, SnsInfo, dict[str, MessageAttribute]] | None:
    """The payload, SNS metadata and attributes of an SNS envelope, or None when it is not one.

    A body that claims to be an SNS notification but is malformed raises DecodeError.
    """
    if not looks_like_sns_envelope(raw_body):
        return None
    try:
        doc = json.loads(raw_body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("Type") != "Notification" or "TopicArn" not in doc:
        return None
    missing = [key for key in _SNS_REQUIRED if key not in doc]
    if missing:
        raise DecodeError(f"SNS envelope lacks {', '.join(missing)}", raw_body)
    payload = doc["Message"]
    if not isinstance(payload, str):
        raise DecodeError("SNS envelope Message is not a string", raw_body)
    subject = doc.get("Subject")
    info = SnsInfo(
        topic_arn=str(doc["TopicArn"]),
        message_id=str(doc["MessageId"]),
        subject=subject if isinstance(subject, str) else None,
        timestamp=parse_iso(doc.get("Timestamp")),
    )
    return payload, info, parse_sns_attributes(doc.get("MessageAttributes"))


def parse_message(entry: Mapping[str, Any], queue_url: str, *, unwrap: bool = True) -> Message:
    """Build a Message from one ReceiveMessage entry; raises DecodeError for a malformed SNS envelope.

    With ``unwrap=False`` the body is taken as it is (the fallback for an envelope that cannot be decoded).
    """
    raw_body = str(entry.get("Body", ""))
    raw_attributes = entry.get("MessageAttributes")
    sqs_attributes = parse_sqs_attributes(raw_attributes) if raw_attributes else {}
    system = {str(k): str(v) for k, v in (entry.get("Attributes") or {}).items()}
    sqs_view = MappingProxyType(sqs_attributes) if sqs_attributes else _EMPTY
    body, sns, attributes = raw_body, None, sqs_view
    unwrapped = unwrap_sns(raw_body) if unwrap else None
    if unwrapped is not None:
        body, sns, sns_attributes = unwrapped
        attributes = MappingProxyType({**sqs_attributes, **sns_attributes})
    return Message(
        id=str(entry["MessageId"]),
        receipt_handle=str(entry["ReceiptHandle"]),
        raw_body=raw_body,
        body=body,
        queue_url=queue_url,
        attributes=attributes,
        system_attributes=MappingProxyType(system),
        sns=sns,
        sqs_attributes=sqs_view,
    )


def sent_timestamp_ms(entry: Mapping[str, Any]) -> int | None:
    """SentTimestamp (epoch ms) read straight from a ReceiveMessage entry, or None when absent or invalid."""
    return epoch_millis((entry.get("Attributes") or {}).get("SentTimestamp"))


def parse_or_fallback(entry: Mapping[str, Any], queue_url: str) -> tuple[Message, DecodeError | None]:
    """Parse an entry; on a decode error return a raw Message plus the error, so it can be dead-lettered."""
    try:
        return parse_message(entry, queue_url), None
    except DecodeError as exc:
        return parse_message(entry, queue_url, unwrap=False), exc
