"""botocore's User-Agent header, built once per feature set instead of twice per request.

botocore (1.36+) rebuilds the whole User-Agent string for every request, twice: when it builds the request
and again just before signing, to add the "features" the call used (retry mode, pagination, ...). That is
about 6 % of the worker's CPU with a no-op handler. The string only depends on the client's settings, which
do not change, and on the set of features, so it is cached per feature set: the header stays byte for byte
what botocore would send. If botocore's internals ever differ from what this expects, nothing is changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("worker.useragent")

#: Feature sets seen by one client are few (a handful of flags); the bound only guards against surprises.
_CACHE_MAX = 64


def cache_user_agent(client: Any) -> bool:
    """Make ``client`` reuse its User-Agent string per feature set; False (and no change) if unsupported."""
    try:
        from botocore.context import get_context
    except ImportError:  # pragma: no cover - botocore older than the pinned one
        return False
    creator = getattr(client, "_user_agent_creator", None)
    build: Callable[[], str] | None = getattr(creator, "to_string", None)
    if creator is None or build is None or not hasattr(creator, "_client_features"):
        return False
    cache: dict[tuple[frozenset[str], frozenset[str]], str] = {}

    def to_string() -> str:
        context = get_context()
        key = (
            frozenset(creator._client_features or ()),
            frozenset(context.features) if context is not None else frozenset(),
        )
        value = cache.get(key)
        if value is None:
            value = build()
            if len(cache) < _CACHE_MAX:
                cache[key] = value
        return value

    creator.to_string = to_string
    return True
