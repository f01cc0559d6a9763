"""Machinery every training stage shares: optimizer and schedules, distributed setup, checkpoints, metrics."""
