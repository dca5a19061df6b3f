"""Time of a step on one device: per operator the slower of compute and memory, plus overheads.

t_op = max(FLOPs / (peak x compute_efficiency x gemm_fraction), bytes / (bandwidth x memory_efficiency))
       (attention: bandwidth x attention_efficiency)
       + kernels x kernel_overhead_s + fresh bytes x first_touch_s_per_byte
gemm_fraction = rows / (rows + gemm_half_rows) for matmuls (1 for other work): a GEMM whose weight
multiplies few rows (decode, or an expert that got few tokens) runs far below the peak; Hockney's
n_1/2 (R. Hockney, Parallel Computing 1991) is the rows at which it reaches half of it. An engine
profile with measured curves (``gemm_curves``, from ``capsim probe``, at two weight sizes: small-M
efficiency falls when the weight no longer fits the caches) interpolates them instead.
t_collective = bytes / (link bandwidth x link_efficiency) + calls x collective_latency_s
t_step = sum(t_op) + (1 - transfer_overlap) x sum(t_collective) + step_overhead_s

Operators run one after another within a layer; collectives (TP all-reduce, EP
all-to-all) sit on the critical path unless the engine overlaps them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capsim.engines import EngineProfile
from capsim.sim.ops import ALLREDUCES_PER_LAYER, Step

CATEGORIES = ("compute", "memory", "transfer", "overhead")


@dataclass(frozen=True)
class Timing:
    op_s: dict[str, np.ndarray]  # per operator, overhead included
    op_compute_s: dict[str, np.ndarray]
    op_memory_s: dict[str, np.ndarray]
    transfer_s: dict[str, np.ndarray]  # exposed (not overlapped) collective time
    by_category_s: dict[str, np.ndarray]  # compute-bound time, memory-bound time, transfer, overhead
    step_s: np.ndarray

    def bottleneck(self) -> np.ndarray:
        """Index into CATEGORIES of the largest share of the step (broadcast over scenarios)."""
        return np.argmax(np.stack([self.by_category_s[c] for c in CATEGORIES]), axis=0)


def gemm_fraction(rows, weight_bytes, curves) -> np.ndarray:
    """Fraction of the peak a GEMM of ``rows`` over a weight of ``weight_bytes`` reaches on measured curves
    ((weight bytes, ((rows, fraction), ...)), ...): linear in log rows within a curve and in log weight
    bytes between curves, flat beyond the ends (inf rows: a curve's last point)."""
    per_size = []
    for _, pts in curves:
        r = np.log(np.clip(np.asarray(rows, dtype=float), pts[0][0], pts[-1][0]))
        per_size.append(np.interp(r, np.log([p[0] for p in pts]), [p[1] for p in pts]))
    if len(curves) == 1:
        return per_size[0]
    sizes = np.log([c[0] for c in curves])
    w = np.log(np.clip(np.asarray(weight_bytes, dtype=float), np.exp(sizes[0]), np.exp(sizes[-1])))
    out = per_size[0]
    for i in range(1, len(curves)):  # piecewise linear in log size
        t = np.clip((w - sizes[i - 1]) / (sizes[i] - sizes[i - 1]), 0.0, 1.0)
        seg = per_size[i - 1] + t * (per_size[i] - per_size[i - 1])
        out = np.where(w >= sizes[i - 1], seg, out)
    return out


def fresh_page_s(op, profile: EngineProfile) -> np.ndarray | float:
    """First-touch time of the op's tensors above the allocator's mmap threshold (fresh pages each step)."""
    if not profile.first_touch_s_per_byte or not op.allocs:
        return 0.0
    fresh = sum(np.where(size > profile.fresh_alloc_threshold_bytes, size * count, 0.0) for size, count in op.allocs)
    return fresh * profile.first_touch_s_per_byte


def step_time(
    step: Step,
    *,
    peak_flop_per_s: dict[str, np.ndarray],  # "matmul", "attention", "vector"
    bandwidth_bytes_per_s,
    ring_bandwidth_bytes_per_s,
    alltoall_bandwidth_bytes_per_s,
    layers: int,
    moe_layers: int,
    profile: EngineProfile,
) -> Timing:
    bw = np.asarray(bandwidth_bytes_per_s, dtype=float) * profile.memory_efficiency
    op_s, comp_s, mem_s = {}, {}, {}
    compute_bound = memory_bound = overhead = 0.0
    for name, op in step.ops.items():
        peak = np.asarray(peak_flop_per_s[op.compute], dtype=float) * profile.compute_efficiency
        if op.compute == "matmul" and profile.gemm_curves:
            frac = gemm_fraction(op.rows, op.matrix_bytes, profile.gemm_curves)
            tc = np.where(op.flops > 0, op.flops / (peak * frac), 0.0)
        elif op.compute == "matmul" and profile.gemm_half_rows > 0:
            with np.errstate(divide="ignore", invalid="ignore"):
                slow = 1.0 + profile.gemm_half_rows / np.asarray(op.rows, dtype=float)  # 1 / gemm_fraction
            tc = np.where(op.flops > 0, op.flops * slow / peak, 0.0)
        else:
            tc = op.flops / peak
        op_bw = bw if op.compute != "attention" else bw / profile.memory_efficiency * profile.attention_efficiency
        tm = (op.bytes + (profile.kv_traffic_factor - 1.0) * op.kv_bytes) / op_bw
        kernels = op.kernels + profile.kernels_per_activated_expert * op.activated_per_layer
        ov = kernels * profile.kernel_overhead_s + fresh_page_s(op, profile)
        comp_s[name], mem_s[name] = tc, tm
        op_s[name] = np.maximum(tc, tm) + ov
        compute_bound = compute_bound + np.where(tc > tm, tc, 0.0)
        memory_bound = memory_bound + np.where(tc > tm, 0.0, tm)
        overhead = overhead + ov
    link = profile.link_efficiency
    with np.errstate(divide="ignore"):
        ar = step.transfer_bytes["tp_allreduce"]
        a2a = step.transfer_bytes["ep_alltoall"]
        t_ar = np.where(ar > 0, ar / (np.asarray(ring_bandwidth_bytes_per_s, float) * link)
                        + ALLREDUCES_PER_LAYER * layers * profile.collective_latency_s, 0.0)
        t_a2a = np.where(a2a > 0, a2a / (np.asarray(alltoall_bandwidth_bytes_per_s, float) * link)
                         + 2 * moe_layers * profile.collective_latency_s, 0.0)
    exposed = 1.0 - profile.transfer_overlap
    transfer = {"tp_allreduce": t_ar * exposed, "ep_alltoall": t_a2a * exposed}
    t_transfer = transfer["tp_allreduce"] + transfer["ep_alltoall"]
    overhead = overhead + profile.step_overhead_s
    step_s = sum(op_s.values()) + t_transfer + profile.step_overhead_s
    cats = {"compute": compute_bound + 0 * step_s, "memory": memory_bound + 0 * step_s,
            "transfer": t_transfer + 0 * step_s, "overhead": overhead + 0 * step_s}
    return Timing(op_s, comp_s, mem_s, transfer, cats, step_s)
