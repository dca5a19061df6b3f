"""Each layout over a grid of batch sizes: TTFT, TPOT, output tokens/s and device memory use.

Layouts with every weight on the devices go through the sweep's vectorised path
(:func:`capsim.sweep.evaluate.metrics`: one simulator call for all batch sizes, the numbers of ``capsim
predict`` to 1e-9). Layouts with offloaded experts are predicted one batch size at a time with
:func:`capsim.predict.predict` (the offload path is not vectorised). Batch 1 is always evaluated: it gives the
prefill of one arriving request (TTFT in ``arrival`` mode, :mod:`capsim.provision.requirements`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capsim.errors import CapsimError
from capsim.hardware.db import HardwareDB
from capsim.predict import Query, predict
from capsim.provision.candidates import Layout
from capsim.sweep.evaluate import configure, metrics


@dataclass(frozen=True)
class Workload:
    model: str
    input_len: int
    output_len: int
    engine: str = "roofline"


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


def _vectorised(lay: Layout, w: Workload, grid: np.ndarray, db: HardwareDB) -> Curve:
    key = (w.model, lay.hardware, lay.devices, lay.nodes, lay.precision or "native", "auto", w.engine,
           lay.tp, lay.ep, 1)
    cfg = configure(key, db)
    if cfg.error is not None:
        return _failed(lay, cfg.error)
    batch = np.concatenate([[1], grid]).astype(np.int64)
    ones = np.ones_like(batch)
    m = metrics(cfg, batch, ones * w.input_len, ones * w.output_len)
    cap = float(m["memory_capacity_bytes"][0])
    total, kv = np.asarray(m["memory_per_device_bytes"]), np.asarray(m["kv_cache_per_device_bytes"])
    sc = cfg.r["scenario"]
    return Curve(lay, grid, np.asarray(m["ttft_s"][1:]), float(m["ttft_s"][0]), np.asarray(m["tpot_s"][1:]),
                 total[1:], kv[1:], float(total[0]), float(kv[0]), np.inf if np.isnan(cap) else cap,
                 sc["precision"], sc["model"])


def _one(lay: Layout, w: Workload, b: int, db: HardwareDB) -> dict:
    q = Query(model=w.model, hardware=lay.hardware, devices=lay.devices, nodes=lay.nodes, engine=w.engine,
              precision=lay.precision, batch=int(b), input_len=w.input_len, output_len=w.output_len, tp=lay.tp,
              ep=lay.ep, offload=lay.offload, check_memory=False)
    return predict(q, db)


def _scalar(lay: Layout, w: Workload, grid: np.ndarray, db: HardwareDB) -> Curve:
    """One prediction per batch size. A batch size the placement cannot hold (its KV cache and activations
    leave no room on the device even with every routed expert off it) is an operating point that does not
    fit: infinite memory use and step times; only a failure at batch 1 drops the layout."""
    try:
        one = _one(lay, w, 1, db)
    except CapsimError as err:
        return _failed(lay, str(err))
    n = len(grid)
    ttft, tpot, total, kv = (np.full(n, np.inf) for _ in range(4))
    for i, b in enumerate(grid):
        try:
            rep = one if b == 1 else _one(lay, w, b, db)
        except CapsimError:
            continue
        d = rep["memory_bytes"]["device"]
        ttft[i], tpot[i], total[i], kv[i] = rep["ttft_s"], rep["tpot_s"], d["total"], d["kv_cache"]
    d1, sc = one["memory_bytes"]["device"], one["scenario"]
    cap = d1["capacity"]
    return Curve(lay, grid, ttft, one["ttft_s"], tpot, total, kv, d1["total"], d1["kv_cache"],
                 np.inf if cap is None else float(cap), sc["precision"], sc["model"])


def curve(lay: Layout, w: Workload, grid: np.ndarray, db: HardwareDB) -> Curve:
    """The operating points of ``lay`` at every batch size of ``grid``; ``error`` set if it cannot run."""
    return (_scalar if lay.offload else _vectorised)(lay, w, grid, db)
