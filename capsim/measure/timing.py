"""Timing helpers of the probe: warm up, then the median of repeated calls (CPU clock or CUDA events)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

Log = Callable[[str], None]


def silent(_: str) -> None:
    pass


def median_time(fn: Callable[[], Any], timer: Callable[[Callable[[], Any]], float], s: Any) -> dict:
    """Warm up, then time ``fn`` up to ``s.repeats`` times (at least 3; fewer past the point budget).
    ``s``: the probe's Settings (warmup, repeats, point_budget_s)."""
    first = timer(fn)  # also a warm-up
    for _ in range(s.warmup - 1 if first < s.point_budget_s / 4 else 0):
        timer(fn)
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < s.repeats:
        samples.append(timer(fn))
        if len(samples) >= 3 and time.perf_counter() - start > s.point_budget_s:
            break
    return {"median_s": statistics.median(samples), "samples_s": samples}


def cpu_timer(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cuda_timer(fn: Callable[[], Any]) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def timer_for(device: str) -> Callable[[Callable[[], Any]], float]:
    return cuda_timer if device.startswith("cuda") else cpu_timer


def first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
