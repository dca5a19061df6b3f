"""Capacity planning: the memory one device needs, and the largest batch and context a scenario can hold.

The per-device memory model (:func:`capsim.sim.memory.memory_use`: weights, KV cache at the final length,
prefill activations, engine reserve) of the busiest pipeline stage is searched for the largest batch at the
query's lengths, and the largest total context (input + output, the output length kept) at the query's
batch. Memory grows monotonically in both, so a binary search over integers is exact.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from capsim.sim import pipeline
from capsim.sim.memory import MemoryUse, memory_use

if TYPE_CHECKING:
    from capsim.scenario import Scenario

SEARCH_LIMIT = 1 << 24  # 16.7 M sequences or tokens: beyond any device's memory for a real model


def per_device(sc: Scenario, batch, input_len, output_len, expert_fraction=1.0) -> MemoryUse:
    """Memory of one device of the busiest pipeline stage (capsim.sim.pipeline): its share of the weights and
    KV cache, the activations of one micro-batch. Arrays broadcast."""
    t = sc.target

    def use(b):
        return memory_use(sc.shape, batch=b, input_len=input_len, output_len=output_len,
                          kv_bytes_per_element=sc.kv_bytes, capacity_bytes=t.memory_capacity_bytes,
                          reserve_fraction=sc.profile.memory_reserve_fraction, tp=sc.tp, ep=sc.ep,
                          n=t.n_devices, expert_fraction=expert_fraction)

    m = use(batch)
    if sc.pp == 1:
        return m
    f = pipeline.stage_fraction(sc.shape.layers, sc.pp)
    return replace(m, weights=m.weights * f, kv_cache=m.kv_cache * f,
                   activations=use(pipeline.microbatch(batch, sc.pp)).activations)


def _fits(sc: Scenario, expert_fraction, batch: int, input_len: int, output_len: int) -> bool:
    return bool(np.all(per_device(sc, batch, input_len, output_len, expert_fraction).fits))


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


def largest_batch(sc: Scenario, input_len: int, output_len: int, expert_fraction=1.0) -> int | None:
    """The most sequences of ``input_len`` + ``output_len`` tokens that fit (None: no memory limit known)."""
    return _largest(lambda b: _fits(sc, expert_fraction, b, input_len, output_len))


def limits(sc: Scenario, expert_fraction=1.0) -> dict[str, Any]:
    """{"max_batch": at the query's lengths, "max_input_len": at the query's batch and output length};
    None means no limit found (a device without a stated memory size)."""
    q = sc.query
    return {
        "max_batch": largest_batch(sc, q.input_len, q.output_len, expert_fraction),
        "max_input_len": _largest(lambda i: _fits(sc, expert_fraction, q.batch, i, q.output_len)),
        "at_input_len": q.input_len, "at_output_len": q.output_len, "at_batch": q.batch,
    }
