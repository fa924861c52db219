"""Operator tools: `worker config`, `worker dlq` and `worker redrive`."""
