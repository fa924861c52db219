"""Example handlers shipped with the package (used by `worker demo`)."""
