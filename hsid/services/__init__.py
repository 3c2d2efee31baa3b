"""Services beside the pipeline: health, cleanup, GPU monitor, system status."""
