"""The service shell of `worker run`: start-up checks, task groups, signals, HTTP, IAM check."""
