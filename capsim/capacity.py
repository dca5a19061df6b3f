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


WINDOW = 64  # candidates checked at once around a guess (and per round of the search)


def _search(total_of, capacity: float) -> int | None:
    """Largest x in [1, SEARCH_LIMIT] with total_of(x) <= capacity (total_of: arrays of x -> bytes, growing
    with x); 0 if none, None if unbounded. Exact: memory is affine in the sequences (or tokens) between the
    rounding steps of the data-parallel and pipeline splits, so interpolating the totals at the two ends guesses
    the edge and one window of candidates around it confirms it; otherwise (windowed layers bend the KV cache
    curve) a search that narrows [lo, hi] WINDOW-fold per round finds it."""
    t = total_of(np.array([1.0, float(SEARCH_LIMIT)]))
    if not t[0] <= capacity:
        return 0
    if t[1] <= capacity:
        return None
    lo, hi = 1, SEARCH_LIMIT  # fits at lo, not at hi
    slope = (t[1] - t[0]) / (SEARCH_LIMIT - 1)
    if slope > 0:
        guess = int(1 + (capacity - t[0]) / slope)
        xs = np.clip(np.arange(guess - WINDOW // 2, guess + WINDOW // 2), lo, hi)
        ok = total_of(xs.astype(float)) <= capacity
        if ok[0] and not ok[-1]:
            return int(xs[np.flatnonzero(ok)[-1]])
    while hi - lo > 1:
        xs = np.unique(np.linspace(lo, hi, WINDOW + 2).astype(np.int64))[1:-1]
        ok = total_of(xs.astype(float)) <= capacity
        lo = int(xs[ok][-1]) if ok.any() else lo
        hi = int(xs[~ok][0]) if (~ok).any() else hi
    return lo


def largest_batch(sc: Scenario, input_len: int, output_len: int, expert_fraction=1.0) -> int | None:
    """The most sequences of ``input_len`` + ``output_len`` tokens that fit (None: no memory limit known)."""
    cap = float(sc.target.memory_capacity_bytes)
    return _search(lambda b: per_device(sc, b, input_len, output_len, expert_fraction).total, cap)


def largest_input(sc: Scenario, batch: int, output_len: int, expert_fraction=1.0) -> int | None:
    """The longest prompt at ``batch`` sequences and ``output_len`` output tokens that fits."""
    cap = float(sc.target.memory_capacity_bytes)
    return _search(lambda i: per_device(sc, batch, i, output_len, expert_fraction).total, cap)


def limits(sc: Scenario, expert_fraction=1.0) -> dict[str, Any]:
    """{"max_batch": at the query's lengths, "max_input_len": at the query's batch and output length};
    None means no limit found (a device without a stated memory size)."""
    q = sc.query
    return {
        "max_batch": largest_batch(sc, q.input_len, q.output_len, expert_fraction),
        "max_input_len": largest_input(sc, q.batch, q.output_len, expert_fraction),
        "at_input_len": q.input_len, "at_output_len": q.output_len, "at_batch": q.batch,
    }
