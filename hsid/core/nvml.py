"""NVIDIA devices as NVML (nvidia-ml-py) sees them; empty on a machine without a driver."""

from __future__ import annotations

import pynvml


def gpu_names() -> list[str]:
    """Names of the visible NVIDIA GPUs; empty when there is no driver or no GPU."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        handles = map(pynvml.nvmlDeviceGetHandleByIndex, range(pynvml.nvmlDeviceGetCount()))
        return [pynvml.nvmlDeviceGetName(handle) for handle in handles]
    finally:
        pynvml.nvmlShutdown()
