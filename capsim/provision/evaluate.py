"""Each layout over a grid of batch sizes: TTFT, TPOT, output tokens/s and device memory use.

Every layout, offloaded experts included, goes through the sweep's vectorised path
(:func:`capsim.sweep.evaluate.metrics`: one call of the request pipeline for all batch sizes, the numbers of
``capsim predict``). Batch 1 is always evaluated: it gives the prefill of one arriving request (TTFT in
``arrival`` mode, :mod:`capsim.provision.requirements`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capsim import engines
from capsim.errors import CapsimError
from capsim.hardware.db import HardwareDB
from capsim.provision.candidates import Layout
from capsim.sweep.evaluate import configure, metrics
from capsim.sweep.grid import AUTO, AUTO_CACHE, CONFIG_COLUMNS, NONE


@dataclass(frozen=True)
class Workload:
    model: str
    input_len: int
    output_len: int
    engine: str = engines.DEFAULT_ENGINE
    routing: str = "real"  # capsim.traces.sources: "real", "uniform", or a trace / routing model path


@dataclass
class Curve:
    """One layout's operating points, one per batch size (arrays of the same length)."""

    layout: Layout
    batch: np.ndarray
    ttft_batch_s: np.ndarray  # the whole batch's prompts prefilled together (capsim predict's TTFT)
    prefill_one_s: float  # one request's prompt prefilled alone
    tpot_s: np.ndarray
    memory_bytes: np.ndarray  # per device, the batch's prompts prefilled together (capsim predict's memory)
    kv_bytes: np.ndarray  # per device, the KV cache of the batch
    one_memory_bytes: float  # per device at batch 1 (one request's prompt prefilled)
    one_kv_bytes: float
    capacity_bytes: float  # per device (inf: no limit known)
    precision: str  # the weight format resolved
    model_id: str
    error: str | None = None

    @property
    def tokens_per_s(self) -> np.ndarray:
        return self.batch / self.tpot_s

    @property
    def ttft_arrival_s(self) -> np.ndarray:
        return self.prefill_one_s + self.tpot_s

    def memory_use(self, mode: str) -> np.ndarray:
        """Device memory needed / capacity. ``batch``: as capsim predict counts it (activations of the whole
        batch's prefill). ``arrival``: the activations of one request's prefill instead (weights, reserve and
        the batch's KV cache unchanged): total(b) - kv(b) is weights + reserve + activations(b), so the
        arrival total is kv(b) + total(1) - kv(1)."""
        need = self.memory_bytes if mode == "batch" else self.kv_bytes + self.one_memory_bytes - self.one_kv_bytes
        return need / self.capacity_bytes if np.isfinite(self.capacity_bytes) else np.zeros_like(need)


def batch_grid(max_batch: int, users: int | None) -> np.ndarray:
    """Powers of two from 1 to ``max_batch``, plus the number of users asked for (so that it is tried exactly)."""
    if max_batch < 1:
        raise CapsimError(f"--max-batch {max_batch}: expected a positive integer")
    grid = {1 << k for k in range(max_batch.bit_length()) if 1 << k <= max_batch}
    if users is not None and users <= max_batch:
        grid.add(users)
    return np.array(sorted(grid), np.int64)


def _failed(lay: Layout, err: str) -> Curve:
    empty = np.zeros(0)
    return Curve(lay, empty.astype(np.int64), empty, np.nan, empty, empty, empty, np.nan, np.nan, np.inf,
                 lay.precision or "native", "", err)


def curve(lay: Layout, w: Workload, grid: np.ndarray, db: HardwareDB) -> Curve:
    """The operating points of ``lay`` at every batch size of ``grid`` (one vectorised call through the request
    pipeline, offload included); ``error`` set if it cannot run. A batch size the placement cannot hold (its KV
    cache and activations leave no room on the device even with every routed expert off it) is an operating
    point that does not fit: infinite memory use and step times; only a failure at batch 1 drops the layout."""
    key = dict(model=w.model, hardware=lay.hardware, devices=lay.devices, nodes=lay.nodes,
               precision=lay.precision or "native", kv_precision="auto", engine=w.engine, tp=lay.tp, ep=lay.ep, pp=1,
               dp=AUTO, offload=lay.offload or NONE, expert_cache=AUTO_CACHE, expert_tier="dram", cache_policy="lru",
               trace=w.routing)
    cfg = configure(tuple(key[c] for c in CONFIG_COLUMNS), db)
    if cfg.error is not None:
        return _failed(lay, cfg.error)
    batch = np.concatenate([[1], grid]).astype(np.int64)
    ones = np.ones_like(batch)
    m = metrics(cfg, batch, ones * w.input_len, ones * w.output_len)
    if m["error"][0] is not None:
        return _failed(lay, m["error"][0])
    bad = np.array([e is not None for e in m["error"]])
    ttft, tpot, total, kv = (np.where(bad, np.inf, np.asarray(m[k], float)) for k in
                             ("ttft_s", "tpot_s", "memory_per_device_bytes", "kv_cache_per_device_bytes"))
    cap = float(m["memory_capacity_bytes"][0])
    d = cfg.sc.describe()
    return Curve(lay, grid, ttft[1:], float(ttft[0]), tpot[1:], total[1:], kv[1:], float(total[0]), float(kv[0]),
                 np.inf if np.isnan(cap) else cap, d["precision"], d["model"])
