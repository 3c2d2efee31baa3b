"""Upkeep beside the pipeline: retention cleanup, GPU monitor, status publisher, log handler."""
