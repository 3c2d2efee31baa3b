"""GPU monitor: reads the NVIDIA GPU through NVML (nvidia-ml-py)."""

from __future__ import annotations

import pynvml
import structlog

log = structlog.get_logger(__name__)


def gpu_names() -> list[str]:
    """Names of the visible NVIDIA GPUs; empty when there is no driver or no GPU."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        count = pynvml.nvmlDeviceGetCount()
        return [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
    finally:
        pynvml.nvmlShutdown()
