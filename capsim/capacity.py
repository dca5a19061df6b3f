"""Capacity planning: the largest batch and context a scenario's devices can hold.

The same per-device memory model the prediction checks (:func:`capsim.sim.memory.memory_use`:
weights, KV cache at the final length, prefill activations, engine reserve) is searched for
the largest batch at the query's lengths, and the largest total context (input + output, the
output length kept) at the query's batch. Memory grows monotonically in both, so a binary
search over integers is exact.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from capsim import pipeline
from capsim.sim.memory import MemoryUse, memory_use

SEARCH_LIMIT = 1 << 24  # 16.7 M sequences or tokens: beyond any device's memory for a real model


def per_device(r: dict[str, Any], q, batch: int, input_len: int, expert_fraction: float = 1.0) -> MemoryUse:
    """Memory of one device of the busiest pipeline stage (capsim.pipeline): its share of the weights and
    KV cache, the activations of one micro-batch."""
    t, pp = r["target"], getattr(q, "pp", 1)

    def use(b):
        return memory_use(r["shape"], batch=b, input_len=input_len, output_len=q.output_len,
                          kv_bytes_per_element=r["kv_bytes"], capacity_bytes=t.memory_capacity_bytes,
                          reserve_fraction=r["profile"].memory_reserve_fraction, tp=r["tp"], ep=r["ep"],
                          n=t.n_devices, expert_fraction=expert_fraction)

    m = use(batch)
    if pp == 1:
        return m
    f = pipeline.stage_fraction(r["shape"].layers, pp)
    return replace(m, weights=m.weights * f, kv_cache=m.kv_cache * f,
                   activations=use(pipeline.microbatch(batch, pp)).activations)


def _fits(r: dict[str, Any], q, expert_fraction: float, batch: int, input_len: int) -> bool:
    return bool(np.all(per_device(r, q, batch, input_len, expert_fraction).fits))


def _largest(ok) -> int | None:
    """Largest x in [1, SEARCH_LIMIT] with ok(x) (ok monotone decreasing); 0 if none, None if unbounded."""
    if not ok(1):
        return 0
    if ok(SEARCH_LIMIT):
        return None
    lo, hi = 1, SEARCH_LIMIT
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def limits(r: dict[str, Any], q, expert_fraction: float = 1.0) -> dict[str, Any]:
    """{"max_batch": at the query's lengths, "max_input_len": at the query's batch and output length};
    None means no limit found (a device without a stated memory size)."""
    return {
        "max_batch": _largest(lambda b: _fits(r, q, expert_fraction, b, q.input_len)),
        "max_input_len": _largest(lambda i: _fits(r, q, expert_fraction, q.batch, i)),
        "at_input_len": q.input_len, "at_output_len": q.output_len, "at_batch": q.batch,
    }
