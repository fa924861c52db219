"""The development kit: the embedded LocalStack launcher and `worker demo`."""
