"""Operator tools: `worker dlq` and `worker redrive`."""
