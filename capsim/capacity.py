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

from capsim.engines import scheduler
from capsim.sim import pipeline
from capsim.sim.memory import MemoryUse, memory_use
from capsim.sim.shape import weight_bytes

if TYPE_CHECKING:
    from capsim.scenario import Scenario

SEARCH_LIMIT = 1 << 24  # 16.7 M sequences or tokens: beyond any device's memory for a real model


def per_device(sc: Scenario, batch, input_len, output_len, expert_fraction=1.0,
               startup_rows: float | None = None) -> MemoryUse:
    """Memory of one device of the busiest pipeline stage (capsim.sim.pipeline): its share of the weights and
    KV cache, the activations of one micro-batch (or the engine's start-up peak where higher, its dummy sampler
    over ``startup_rows`` requests: default the device's scheduler defaults). Arrays broadcast."""
    t = sc.target

    def use(b):
        return memory_use(sc.shape, batch=b, input_len=input_len, output_len=output_len,
                          kv_bytes_per_element=0.0 if sc.profile.kv_on_host else sc.kv_bytes,
                          capacity_bytes=t.memory_capacity_bytes,
                          reserve_fraction=sc.profile.memory_reserve_fraction, tp=sc.tp, ep=sc.ep,
                          n=t.n_devices, expert_fraction=expert_fraction,
                          max_batched_tokens=sc.profile.max_batched_tokens)

    m = use(batch)
    if sc.pp > 1:
        f = pipeline.stage_fraction(sc.shape.layers, sc.pp)
        m = replace(m, weights=m.weights * f, kv_cache=m.kv_cache * f,
                    activations=use(pipeline.microbatch(batch, sc.pp)).activations)
    # an engine that sizes its KV cache after a start-up profiling run holds that run's peak out of it where it
    # exceeds the forward pass's activations (capsim.engines.scheduler.startup_peak_bytes; vLLM samples on its
    # last pipeline stage only, which the busiest stage stands for here)
    peak = scheduler.startup_peak_bytes(sc.profile, t.memory_capacity_bytes, t.device_id, sc.shape.vocab, startup_rows)
    return replace(m, activations=np.maximum(m.activations, peak)) if peak else m


def host_kv_bytes(sc: Scenario, batch, input_len, output_len):
    """The KV cache an engine that keeps it in host memory (``kv_on_host``) holds there at the final length, over
    every device's sequences; 0 for every other engine."""
    if not sc.profile.kv_on_host:
        return 0.0
    m = memory_use(sc.shape, batch=batch, input_len=input_len, output_len=output_len,
                   kv_bytes_per_element=sc.kv_bytes, capacity_bytes=sc.target.memory_capacity_bytes,
                   reserve_fraction=0.0, tp=sc.tp, ep=sc.ep, n=sc.target.n_devices)
    return m.kv_cache * sc.target.n_devices


WINDOW = 64  # candidates checked at once around a guess (and per round of the search)


def _search(totals, capacity: float, k: int) -> list[int | None]:
    """k searches at once: per search j the largest x in [1, SEARCH_LIMIT] with totals(xs)[j] <= capacity
    (``totals``: a (k, m) array of candidates -> their (k, m) memory totals, growing along each row); 0 if none,
    None if unbounded. Exact: memory is affine in the sequences (or tokens) between the rounding steps of the
    data-parallel and pipeline splits, so interpolating the totals at the two ends guesses the edge and one
    window of candidates around it confirms it; otherwise (windowed layers bend the KV cache curve) a search
    that narrows [lo, hi] WINDOW-fold per round finds it."""
    t = totals(np.tile([1.0, float(SEARCH_LIMIT)], (k, 1)))
    out: list[int | None] = [None] * k
    lo, hi = np.ones(k, np.int64), np.full(k, SEARCH_LIMIT, np.int64)  # fits at lo, not at hi
    open_ = np.zeros(k, bool)
    guess = np.ones(k, np.int64)
    for j in range(k):
        if not t[j, 0] <= capacity:
            out[j] = 0
        elif not t[j, 1] <= capacity:
            open_[j] = True
            slope = (t[j, 1] - t[j, 0]) / (SEARCH_LIMIT - 1)
            guess[j] = int(1 + (capacity - t[j, 0]) / slope) if slope > 0 else 1
    if open_.any():
        xs = np.clip(guess[:, None] + np.arange(-(WINDOW // 2), WINDOW // 2)[None, :], lo[:, None], hi[:, None])
        ok = totals(xs.astype(float)) <= capacity
        for j in np.flatnonzero(open_):
            if ok[j, 0] and not ok[j, -1]:
                out[j], open_[j] = int(xs[j][np.flatnonzero(ok[j])[-1]]), False
    while open_.any() and np.any(hi[open_] - lo[open_] > 1):
        xs = np.round(lo[:, None] + (hi - lo)[:, None] * np.linspace(0, 1, WINDOW + 2)[None, 1:-1]).astype(np.int64)
        ok = totals(xs.astype(float)) <= capacity
        for j in np.flatnonzero(open_):
            fit, miss = xs[j][ok[j]], xs[j][~ok[j]]
            lo[j] = max(lo[j], fit.max()) if len(fit) else lo[j]
            hi[j] = min(hi[j], miss.min()) if len(miss) else hi[j]
    for j in np.flatnonzero(open_):
        out[j] = int(lo[j])
    return out


def largest_batch(sc: Scenario, input_len: int, output_len: int, expert_fraction=1.0) -> int | None:
    """The most sequences of ``input_len`` + ``output_len`` tokens that fit (None: no memory limit known)."""
    cap = float(sc.target.memory_capacity_bytes)
    return _search(lambda b: per_device(sc, b, input_len, output_len, expert_fraction).total, cap, 1)[0]


def limits(sc: Scenario, expert_fraction=1.0) -> dict[str, Any]:
    """{"max_batch": at the query's lengths, "max_input_len": at the query's batch and output length};
    None means no limit found (a device without a stated memory size). Both searches share their memory
    evaluations."""
    q = sc.query

    def totals(xs: np.ndarray) -> np.ndarray:  # row 0: batches at the query's prompt; row 1: prompts at its batch
        b = np.stack([xs[0], np.full(xs.shape[1], float(q.batch))])
        i = np.stack([np.full(xs.shape[1], float(q.input_len)), xs[1]])
        return per_device(sc, b, i, q.output_len, expert_fraction).total

    max_batch, max_input = _search(totals, float(sc.target.memory_capacity_bytes), 2)
    off = sc.offload
    if sc.profile.kv_on_host and off is not None and off.tier == "dram" and off.tier_capacity_bytes is not None:
        # the KV cache lives in host DRAM beside the experts off the device: its limit may come first
        experts = weight_bytes(sc.shape)["routed_experts"] * (1.0 - expert_fraction)

        def host(xs: np.ndarray) -> np.ndarray:
            b = np.stack([xs[0], np.full(xs.shape[1], float(q.batch))])
            i = np.stack([np.full(xs.shape[1], float(q.input_len)), xs[1]])
            return experts + np.asarray(host_kv_bytes(sc, b, i, q.output_len))

        hb, hi = _search(host, float(off.tier_capacity_bytes), 2)
        max_batch = hb if max_batch is None else min(max_batch, hb if hb is not None else max_batch)
        max_input = hi if max_input is None else min(max_input, hi if hi is not None else max_input)
    return {"max_batch": max_batch, "max_input_len": max_input,
            "at_input_len": q.input_len, "at_output_len": q.output_len, "at_batch": q.batch}
