"""AWS plumbing: the client factory, names and ARNs, queue look-ups, batched calls."""
