"""The /metrics body: the format the scraper asks for (Prometheus text or OpenMetrics), gzipped on request."""

from __future__ import annotations

import gzip
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted


@dataclass(frozen=True, slots=True)
class Exposition:
    """One rendered scrape: the bytes to send and the headers that describe them."""

    body: bytes
    content_type: str
    #: "gzip" when the body is compressed, else None
    content_encoding: str | None


def render(registry: CollectorRegistry, accept: str, accept_encoding: str) -> Exposition:
    """The registry as prometheus-client's own handlers would serve it for these request headers.

    ``Accept: application/openmetrics-text; version=1.0.0`` gives OpenMetrics (ending with ``# EOF``),
    anything else the Prometheus text format; ``Accept-Encoding: gzip`` compresses it.
    """
    encoder, content_type = choose_encoder(accept)
    body = encoder(registry)
    if gzip_accepted(accept_encoding):
        return Exposition(gzip.compress(body, compresslevel=6), content_type, "gzip")
    return Exposition(body, content_type, None)
