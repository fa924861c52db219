"""Operator tools: `worker config`, `worker dlq`, `worker redrive` and `worker topology`."""
