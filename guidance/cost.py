"""What a generator costs: parameters (total and trainable), MACs per sampling step, peak memory.

MACs come from `torch.utils.flop_counter.FlopCounterMode` (MACs = FLOPs / 2; convolutions, matmuls and
their backward passes, which guided steps and gradient taps include). Peak memory is the CUDA allocator's
peak on a GPU; on the CPU, where PyTorch keeps no allocator statistics and tracemalloc does not see tensor
memory, it is the peak resident set size above the level before the measured block, polled every
2 ms after returning freed heap memory to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch.utils.flop_counter import FlopCounterMode


class _GlobalOnly:
    """Stands in for FlopCounterMode's per-module tracker, whose backward hooks break torch.autograd.grad
    with respect to a leaf input (what every guide gradient is); only the global total is needed here."""

    parents = {"Global"}

    def __enter__(self) -> "_GlobalOnly":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def count_macs(fn: Callable[[], object]) -> int:
    """Multiply-accumulates of everything `fn` runs, forward and backward alike."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    return int(counter.get_total_flops()) // 2


def unique_parameters(modules: Iterable[torch.nn.Module]) -> dict[int, torch.nn.Parameter]:
    """Parameters of several modules, each counted once (a guide may be the denoiser's own backbone)."""
    out: dict[int, torch.nn.Parameter] = {}
    for m in modules:
        for p in m.parameters():
            out[id(p)] = p
    return out


def parameter_counts(modules: Iterable[torch.nn.Module]) -> tuple[int, int]:
    """(total, trainable) parameters of a generator made of `modules`.

    Trainable means trained for this generator: everything except a ScoreSubnet's frozen backbone, which
    is a classifier reused as it is (for U-Net + classifier both networks were trained for generation).
    """
    modules = list(modules)
    params = unique_parameters(modules)
    frozen = unique_parameters(getattr(m, "backbone") for m in modules if hasattr(m, "backbone") and hasattr(m, "subnet"))
    total = sum(p.numel() for p in params.values())
    return total, total - sum(p.numel() for p in frozen.values())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim_heap() -> None:
    """Give freed heap memory back to the system so the next block's peak is measured from a low base."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):
            pass


@dataclass
class PeakMemory:
    """Context manager: `peak_bytes` is the peak memory the block added (see module docstring)."""

    device: torch.device = torch.device("cpu")
    interval_s: float = 0.002
    peak_bytes: int = 0
    method: str = ""

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return self
        _trim_heap()
        self._base = self._peak = _rss_bytes()
        self._stop = threading.Event()
        self.method = "peak RSS above baseline (polled)"

        def poll() -> None:
            while not self._stop.is_set():
                self._peak = max(self._peak, _rss_bytes())
                time.sleep(self.interval_s)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
            return
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self._peak, _rss_bytes()) - self._base
