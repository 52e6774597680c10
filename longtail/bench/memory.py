"""Peak memory of a block of work, as growth over what was held when the block began.

CUDA: the caching allocator's peak (``torch.cuda.max_memory_allocated``) after a reset.
CPU (Linux): the process's peak resident set (``VmHWM``), after ``malloc_trim`` has handed freed heap
pages back and ``/proc/self/clear_refs`` has reset the peak; so a block is not hidden by an earlier,
larger one, even with ``MALLOC_TRIM_THRESHOLD_`` set high. Without ``/proc``: ``ru_maxrss`` growth,
a process-lifetime high-water mark, so only growth beyond every earlier peak shows.
"""
from __future__ import annotations

import ctypes
import gc
import os
import resource
from pathlib import Path

import torch

CLEAR_REFS = Path("/proc/self/clear_refs")


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.mib``: the block's peak above its starting level, in MiB."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.exact_cpu = os.access(CLEAR_REFS, os.W_OK)
        self.base = 0
        self.mib = 0.0

    @property
    def method(self) -> str:
        if self.cuda:
            return "cuda: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory_allocated before"
        if self.exact_cpu:
            return "cpu: peak RSS (VmHWM) after malloc_trim and a /proc/self/clear_refs peak reset, minus VmRSS before"
        return "cpu: ru_maxrss growth (a process-lifetime high-water mark: only growth beyond earlier peaks shows)"

    def _peak(self) -> int:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device)
        if self.exact_cpu:
            return _status_bytes("VmHWM")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        elif self.exact_cpu:
            _trim_heap()
            CLEAR_REFS.write_text("5")  # peak RSS := current RSS
            self.base = _status_bytes("VmRSS")
        else:
            self.base = self._peak()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.mib = max(0, self._peak() - self.base) / 2**20
