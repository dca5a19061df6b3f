"""Time of a step on one device: per operator the slower of compute and memory, plus overheads.

t_op = max(FLOPs / (peak x compute_efficiency), bytes / (bandwidth x memory_efficiency))
       + kernels x kernel_overhead_s
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
        tc = op.flops / (np.asarray(peak_flop_per_s[op.compute], dtype=float) * profile.compute_efficiency)
        tm = (op.bytes + (profile.kv_traffic_factor - 1.0) * op.kv_bytes) / bw
        kernels = op.kernels + profile.kernels_per_activated_expert * op.activated_per_layer
        ov = kernels * profile.kernel_overhead_s
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
