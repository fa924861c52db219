"""Parsing destination URIs (placeholder: replaced by the destinations work)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DestinationUri:
    """A parsed destination."""

    kind: str
    target: str


def parse_destination(uri: str) -> DestinationUri:
    """Parse one destination URI; raise ValueError naming what is wrong."""
    for prefix, kind in (
        ("sqs://", "sqs"),
        ("https://", "sqs"),
        ("http://", "sqs"),
        ("sns:", "sns"),
        ("s3://", "s3"),
        ("events:", "events"),
        ("python:", "python"),
    ):
        if uri.startswith(prefix):
            return DestinationUri(kind, uri)
    raise ValueError(f"unknown destination {uri!r}")
