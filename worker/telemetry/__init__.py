"""Metrics, health state, logs and the live status line."""
