"""Machine metrics of every rank, reduced to min/mean/max over ranks (and the steps since the last log).

On GPUs, from NVML (nvidia-ml-py): utilisation (%), device memory used, memory reserved by PyTorch's caching
allocator, and power draw (W). On CPU: the process's resident set size and CPU utilisation (%, 100 = one core).
Sampled at the start of each step that will be logged, so they land in that step's record as
`gpu_util_pct_min`, `gpu_util_pct_mean`, `gpu_util_pct_max`, ...
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import psutil
import torch

from megatron_llm.training.callbacks.base import Callback

if TYPE_CHECKING:
    from megatron_llm.training.loop import Trainer


class _Nvml:
    """This process's GPU through NVML, found by PCI bus id (CUDA_VISIBLE_DEVICES renumbers devices)."""

    def __init__(self) -> None:
        import pynvml

        self.nvml = pynvml
        pynvml.nvmlInit()
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        bus_id = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
        self.handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)

    def sample(self) -> dict[str, float]:
        n, h = self.nvml, self.handle
        return {
            "gpu_util_pct": float(n.nvmlDeviceGetUtilizationRates(h).gpu),
            "gpu_mem_used_bytes": float(n.nvmlDeviceGetMemoryInfo(h).used),
            "gpu_mem_reserved_bytes": float(torch.cuda.memory_reserved()),
            "gpu_power_w": n.nvmlDeviceGetPowerUsage(h) / 1000.0,
        }


class _Process:
    def __init__(self) -> None:
        self.process = psutil.Process(os.getpid())
        self.process.cpu_percent(None)  # the first call starts the measuring interval

    def sample(self) -> dict[str, float]:
        return {"rss_bytes": float(self.process.memory_info().rss),
                "cpu_util_pct": float(self.process.cpu_percent(None))}


class SystemMetrics(Callback):
    def __init__(self) -> None:
        self.source: _Nvml | _Process | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        if torch.cuda.is_available():
            try:
                self.source = _Nvml()
            except Exception as exc:  # noqa: BLE001 - no NVML (driver, container): say so once, go on without
                if trainer.is_logging_rank:
                    print(f"warning: no GPU metrics (NVML unavailable: {exc}); pip install nvidia-ml-py",
                          file=sys.stderr, flush=True)
                return
        else:
            self.source = _Process()

    def on_step_start(self, trainer: Trainer) -> None:
        step, interval = trainer.state.step + 1, trainer.config.logging.log_interval
        if self.source is None or (step % interval and step != trainer.train_iters):
            return
        for name, value in self.source.sample().items():
            for reduce in ("min", "mean", "max"):
                trainer.record_metric(f"{name}_{reduce}", value, reduce)
