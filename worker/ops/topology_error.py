"""``TopologyError``: a ``worker topology`` argument AWS would refuse, or a topology that cannot be built."""

from __future__ import annotations


class TopologyError(ValueError):
    """An argument AWS would refuse, or a topology that cannot be built; the message is one line."""
