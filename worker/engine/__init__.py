"""The engine: messages, the retry policy, handlers, leases, one message's processing, the consumer."""
