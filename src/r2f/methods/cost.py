"""Cost accounting: wall time and peak memory per stage.

Peak memory is the process RSS on CPU (sampled by a background thread every ``interval`` seconds and at
every stage boundary, plus the kernel's lifetime high-water mark for the whole run) and
``torch.cuda.max_memory_allocated`` on GPU.
"""

from __future__ import annotations

import contextlib
import resource
import threading
import time
from typing import Iterator

import psutil
import torch


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


class CostMeter:
    def __init__(self, interval: float = 0.05, device: torch.device | str = "cpu", previous: dict | None = None):
        self.interval = interval
        self.cuda = torch.device(device).type == "cuda"
        self.stages: dict[str, dict] = {k: dict(v) for k, v in (previous or {}).get("stages", {}).items()}
        self._peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.perf_counter()
        self._prev_wall = float((previous or {}).get("wall_s", 0.0))
        self._prev_peak = float((previous or {}).get("peak_mem_mb", 0.0))

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_mb())

    def __enter__(self) -> "CostMeter":
        if not self.cuda:
            self._thread = threading.Thread(target=self._sample, daemon=True, name="r2f-cost")
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self._peak = _rss_mb()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() / 2**20
            else:
                peak = max(self._peak, _rss_mb())
            rec = self.stages.setdefault(name, {"wall_s": 0.0, "peak_mem_mb": 0.0})
            rec["wall_s"] = round(rec["wall_s"] + time.perf_counter() - t0, 4)
            rec["peak_mem_mb"] = round(max(rec["peak_mem_mb"], peak), 2)

    def summary(self) -> dict:
        if self.cuda:
            peak = max([s["peak_mem_mb"] for s in self.stages.values()] + [self._prev_peak])
            kind = "cuda_max_memory_allocated"
        else:
            peak = max([s["peak_mem_mb"] for s in self.stages.values()] + [self._prev_peak])
            kind = "rss"
        out = {
            "wall_s": round(self._prev_wall + time.perf_counter() - self._t0, 4),
            "peak_mem_mb": round(peak, 2),
            "memory_kind": kind,
            "stages": self.stages,
        }
        if not self.cuda:  # the kernel's high-water mark of the whole process (includes earlier work)
            out["process_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 2)
        return out
