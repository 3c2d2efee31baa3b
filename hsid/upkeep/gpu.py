"""GPU monitor: reads the NVIDIA GPU through NVML (nvidia-ml-py) into gpu_stats and gauges."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import asdict, astuple, dataclass
from typing import TypeVar

import pynvml
import structlog
from prometheus_client import Gauge

from hsid.core import metrics
from hsid.core.context import StageContext
from hsid.core.duty import run_duty

log = structlog.get_logger(__name__)

T = TypeVar("T")

MEBIBYTE = 1024 * 1024
NO_GPU = "no GPU"  # health.info["gpu"] on a machine without an NVIDIA GPU or driver

INSERT_GPU_STATS = """
INSERT INTO gpu_stats (gpu_name, gpu_utilization, memory_used, memory_total, temperature,
                       power_usage, inference_fps)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""

# Errors that mean "this sample was not stored"; the monitor carries on and tries again.


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One reading of the first GPU; a field is None when the GPU cannot report it."""

    gpu_name: str | None
    gpu_utilization: float | None  # percent
    memory_used: int | None  # MB
    memory_total: int | None  # MB
    temperature: float | None  # Celsius
    power_usage: float | None  # W


def _query(read: Callable[[], T]) -> T | None:
    """One NVML query; None when the GPU or driver does not support it (many consumer cards
    report no power draw, for example), so that one missing figure never loses the others."""
    try:
        return read()
    except pynvml.NVMLError:
        return None


def sample_gpu() -> GpuSample | None:
    """Read the first GPU; None when there is no NVIDIA driver or no GPU. Blocking (NVML
    calls the driver), so run it in a thread. Each call initialises NVML and shuts it down,
    which is cheap while someone else (GpuMonitor) holds it initialised."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        if not _query(pynvml.nvmlDeviceGetCount):
            return None
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = _query(lambda: pynvml.nvmlDeviceGetName(handle))
        memory = _query(lambda: pynvml.nvmlDeviceGetMemoryInfo(handle))
        utilization = _query(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        temperature = _query(
            lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))
        power_mw = _query(lambda: pynvml.nvmlDeviceGetPowerUsage(handle))
        return GpuSample(
            gpu_name=name.decode() if isinstance(name, bytes) else name,
            gpu_utilization=None if utilization is None else float(utilization),
            memory_used=None if memory is None else int(memory.used // MEBIBYTE),
            memory_total=None if memory is None else int(memory.total // MEBIBYTE),
            temperature=None if temperature is None else float(temperature),
            power_usage=None if power_mw is None else power_mw / 1000.0,
        )
    finally:
        pynvml.nvmlShutdown()


def _nvml_hold() -> bool:
    """Initialise NVML for the monitor's lifetime; False when there is no driver."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    return True


def _nvml_release() -> None:
    with contextlib.suppress(pynvml.NVMLError):
        pynvml.nvmlShutdown()


def _set_gauge(gauge: Gauge, value: float | None) -> None:
    if value is not None:
        gauge.set(value)


class GpuMonitor:
    """Stage: a gpu_stats row, the GPU gauges and health.info["gpu"] every poll_seconds.

    Runs one per host (it reads the local GPU). Without a GPU it says so once and idles,
    so that a CPU-only home server is a normal, quiet configuration rather than an error.
    """

    def __init__(self, context: StageContext, fps: Callable[[], float | None], *,
                 sampler: Callable[[], GpuSample | None] = sample_gpu) -> None:
        """`fps` reports the detector's current throughput; `sampler` is the GPU (tests
        stand a fake GPU in for a machine without one)."""
        self._config = context.config.gpu
        self._pool = context.pool
        self._health = context.health
        self._fps = fps
        self._stopping = context.stopping
        self._sample = sampler
        self._first: GpuSample | None = None

    async def run(self) -> None:
        held = await asyncio.to_thread(_nvml_hold)
        try:
            sample = await asyncio.to_thread(self._sample)
            if sample is None:
                log.info("gpu_monitoring_off", reason="no NVIDIA GPU: GPU monitoring off")
                self._health.info["gpu"] = NO_GPU
                await self._stopping.wait()
                return
            log.info("gpu_monitoring_on", gpu=sample.gpu_name, every_s=self._config.poll_seconds)
            self._first = sample
            await run_duty("gpu_stats", self._sample_and_record, self._config.poll_seconds,
                           self._stopping)
        finally:
            if held:
                await asyncio.to_thread(_nvml_release)

    async def _sample_and_record(self) -> None:
        """Record the sample that told the monitor there is a GPU, then a new one each time."""
        sample, self._first = self._first or await asyncio.to_thread(self._sample), None
        await self._record(sample)

    async def _record(self, sample: GpuSample | None) -> None:
        """Publish one sample to health and the gauges, then store it. Raises a store error
        when the row could not be stored (the duty says the outage once)."""
        if sample is None:  # the GPU fell off the bus or the driver was unloaded
            self._health.info["gpu"] = NO_GPU
            return
        fps = self._fps()
        self._health.info["gpu"] = {**asdict(sample), "inference_fps": fps}
        _set_gauge(metrics.GPU_UTILIZATION, sample.gpu_utilization)
        _set_gauge(metrics.GPU_MEMORY_USED, sample.memory_used)
        _set_gauge(metrics.GPU_TEMPERATURE, sample.temperature)
        _set_gauge(metrics.GPU_POWER, sample.power_usage)
        await self._pool.execute(INSERT_GPU_STATS, *astuple(sample), fps)
